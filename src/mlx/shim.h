// A thin forwarding layer from the cxx bridge (ffi.rs) to MLX's C++ API.
// One function per MLX call; the only work done here is converting between
// cxx types and MLX types. All model logic lives in Rust.
#pragma once

#include <memory>
#include <vector>

#include "mlx/mlx.h"
#include "rust/cxx.h"

namespace safeguard_mlx {

using Array = mlx::core::array;
using ArrayPtr = std::unique_ptr<Array>;
using ArrayList = std::vector<Array>;
using Group = mlx::core::distributed::Group;

ArrayPtr array_clone(const Array& a);
rust::Vec<int32_t> array_shape(const Array& a);
uint8_t array_dtype(const Array& a);
size_t array_nbytes(const Array& a);
ArrayPtr array_from_bytes(rust::Slice<const uint8_t> data, rust::Slice<const int32_t> shape, uint8_t dtype);
void array_copy_to(const Array& a, rust::Slice<uint8_t> out);
ArrayPtr scalar_f64(double value, uint8_t dtype);
ArrayPtr scalar_i64(int64_t value, uint8_t dtype);
ArrayPtr zeros(rust::Slice<const int32_t> shape, uint8_t dtype);
ArrayPtr ones(rust::Slice<const int32_t> shape, uint8_t dtype);
ArrayPtr arange(double start, double stop, double step, uint8_t dtype);
ArrayPtr astype(const Array& a, uint8_t dtype);
ArrayPtr view(const Array& a, uint8_t dtype);
ArrayPtr contiguous(const Array& a);

void eval(const ArrayList& arrays);
void async_eval(const ArrayList& arrays);
std::unique_ptr<ArrayList> new_array_list();
void array_list_push(ArrayList& list, const Array& a);

ArrayPtr reshape(const Array& a, rust::Slice<const int32_t> shape);
ArrayPtr transpose(const Array& a, rust::Slice<const int32_t> axes);
ArrayPtr swapaxes(const Array& a, int32_t axis1, int32_t axis2);
ArrayPtr expand_dims(const Array& a, int32_t axis);
ArrayPtr squeeze(const Array& a, int32_t axis);
ArrayPtr broadcast_to(const Array& a, rust::Slice<const int32_t> shape);
ArrayPtr slice(const Array& a, rust::Slice<const int32_t> start, rust::Slice<const int32_t> stop,
               rust::Slice<const int32_t> strides);
ArrayPtr slice_update(const Array& src, const Array& update, rust::Slice<const int32_t> start,
                      rust::Slice<const int32_t> stop, rust::Slice<const int32_t> strides);
ArrayPtr concatenate(const ArrayList& arrays, int32_t axis);
ArrayPtr take(const Array& a, const Array& indices, int32_t axis);
ArrayPtr take_along_axis(const Array& a, const Array& indices, int32_t axis);
ArrayPtr put_along_axis(const Array& a, const Array& indices, const Array& values, int32_t axis);
ArrayPtr where_(const Array& condition, const Array& x, const Array& y);

ArrayPtr add(const Array& a, const Array& b);
ArrayPtr subtract(const Array& a, const Array& b);
ArrayPtr multiply(const Array& a, const Array& b);
ArrayPtr divide(const Array& a, const Array& b);
ArrayPtr floor_divide(const Array& a, const Array& b);
ArrayPtr power(const Array& a, const Array& b);
ArrayPtr maximum(const Array& a, const Array& b);
ArrayPtr minimum(const Array& a, const Array& b);
ArrayPtr equal(const Array& a, const Array& b);
ArrayPtr not_equal(const Array& a, const Array& b);
ArrayPtr less(const Array& a, const Array& b);
ArrayPtr less_equal(const Array& a, const Array& b);
ArrayPtr greater(const Array& a, const Array& b);
ArrayPtr greater_equal(const Array& a, const Array& b);
ArrayPtr logical_and(const Array& a, const Array& b);
ArrayPtr logical_or(const Array& a, const Array& b);
ArrayPtr logical_not(const Array& a);
ArrayPtr negative(const Array& a);
ArrayPtr abs(const Array& a);
ArrayPtr exp(const Array& a);
ArrayPtr log(const Array& a);
ArrayPtr sqrt(const Array& a);
ArrayPtr rsqrt(const Array& a);
ArrayPtr square(const Array& a);
ArrayPtr sigmoid(const Array& a);
ArrayPtr tanh(const Array& a);
ArrayPtr clip(const Array& a, ArrayPtr min, ArrayPtr max);

ArrayPtr sum(const Array& a, rust::Slice<const int32_t> axes, bool keepdims);
ArrayPtr max(const Array& a, rust::Slice<const int32_t> axes, bool keepdims);
ArrayPtr min(const Array& a, rust::Slice<const int32_t> axes, bool keepdims);
ArrayPtr mean(const Array& a, rust::Slice<const int32_t> axes, bool keepdims);
ArrayPtr logsumexp(const Array& a, rust::Slice<const int32_t> axes, bool keepdims);
ArrayPtr softmax(const Array& a, rust::Slice<const int32_t> axes, bool precise);
ArrayPtr argmax(const Array& a, int32_t axis, bool keepdims);
ArrayPtr argmin(const Array& a, int32_t axis, bool keepdims);
ArrayPtr argpartition(const Array& a, int32_t kth, int32_t axis);
ArrayPtr topk(const Array& a, int32_t k, int32_t axis);
ArrayPtr sort(const Array& a, int32_t axis);
ArrayPtr argsort(const Array& a, int32_t axis);
ArrayPtr cumsum(const Array& a, int32_t axis, bool reverse, bool inclusive);

ArrayPtr matmul(const Array& a, const Array& b);
ArrayPtr addmm(const Array& c, const Array& a, const Array& b, float alpha, float beta);
ArrayPtr gather_mm(const Array& a, const Array& b, ArrayPtr lhs_indices, ArrayPtr rhs_indices,
                   bool sorted_indices);
std::unique_ptr<ArrayList> quantize(const Array& w, int32_t group_size, int32_t bits, rust::Str mode);
ArrayPtr dequantize(const Array& w, const Array& scales, ArrayPtr biases, int32_t group_size,
                    int32_t bits, rust::Str mode, bool has_dtype, uint8_t dtype);
ArrayPtr quantized_matmul(const Array& x, const Array& w, const Array& scales, ArrayPtr biases,
                          bool transpose, int32_t group_size, int32_t bits, rust::Str mode);
ArrayPtr gather_qmm(const Array& x, const Array& w, const Array& scales, ArrayPtr biases,
                    ArrayPtr lhs_indices, ArrayPtr rhs_indices, bool transpose, int32_t group_size,
                    int32_t bits, rust::Str mode, bool sorted_indices);

ArrayPtr rms_norm(const Array& x, ArrayPtr weight, float eps);
ArrayPtr rope(const Array& x, int32_t dims, bool traditional, float base, float scale, int32_t offset);
ArrayPtr rope_with_freqs(const Array& x, int32_t dims, bool traditional, float scale, int32_t offset,
                         const Array& freqs);
ArrayPtr scaled_dot_product_attention(const Array& queries, const Array& keys, const Array& values,
                                      float scale, rust::Str mask_mode, ArrayPtr mask, ArrayPtr sinks);

ArrayPtr random_key(uint64_t seed);
ArrayPtr random_split(const Array& key, int32_t num);
ArrayPtr random_uniform(rust::Slice<const int32_t> shape, uint8_t dtype, const Array& key);
ArrayPtr random_normal(rust::Slice<const int32_t> shape, uint8_t dtype, const Array& key);
ArrayPtr random_categorical(const Array& logits, int32_t axis, const Array& key);

void load_safetensors(rust::Str path, rust::Vec<rust::String>& names, ArrayList& arrays,
                      rust::Vec<rust::String>& metadata_keys, rust::Vec<rust::String>& metadata_values);
void save_safetensors(rust::Str path, rust::Slice<const rust::String> names, const ArrayList& arrays,
                      rust::Slice<const rust::String> metadata_keys,
                      rust::Slice<const rust::String> metadata_values);

size_t get_active_memory();
size_t get_peak_memory();
void reset_peak_memory();
size_t get_cache_memory();
size_t set_cache_limit(size_t limit);
size_t set_memory_limit(size_t limit);
size_t set_wired_limit(size_t limit);
void clear_cache();

rust::String mlx_version();
bool default_device_is_gpu();
bool metal_is_available();
bool cuda_is_available();
rust::String device_info_string(rust::Str key);
size_t device_info_number(rust::Str key);
void set_default_device_cpu();
void synchronize();

bool distributed_is_available(rust::Str backend);
std::unique_ptr<Group> distributed_init(rust::Str backend);
int32_t group_rank(const Group& group);
int32_t group_size(const Group& group);
ArrayPtr all_sum(const Array& x, const Group& group);
ArrayPtr all_gather(const Array& x, const Group& group);
ArrayPtr send(const Array& x, int32_t dst, const Group& group);
ArrayPtr recv(rust::Slice<const int32_t> shape, uint8_t dtype, int32_t src, const Group& group);

}  // namespace safeguard_mlx
