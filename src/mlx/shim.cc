// Forwarding definitions for shim.h. Conversions only: cxx types in, MLX calls,
// cxx types out. MLX exceptions propagate to cxx, which turns them into Rust errors.
#include "safeguard-mlx/src/mlx/shim.h"

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>


namespace mx = mlx::core;

namespace safeguard_mlx {
namespace {

// Indexed by the dtype codes of ffi.rs: the order of mx::Dtype::Val.
const mx::Dtype kDtypes[] = {
    mx::bool_, mx::uint8,   mx::uint16,  mx::uint32,   mx::uint64,
    mx::int8,  mx::int16,   mx::int32,   mx::int64,    mx::float16,
    mx::float32, mx::float64, mx::bfloat16, mx::complex64,
};

mx::Dtype to_mlx(uint8_t code) {
  auto index = static_cast<size_t>(code);
  if (index >= std::size(kDtypes)) {
    throw std::invalid_argument("unknown dtype code " + std::to_string(index));
  }
  return kDtypes[index];
}

mx::Shape to_shape(rust::Slice<const int32_t> s) { return mx::Shape(s.begin(), s.end()); }
std::vector<int> to_ints(rust::Slice<const int32_t> s) { return std::vector<int>(s.begin(), s.end()); }

std::optional<Array> opt(const ArrayPtr& p) {
  return p ? std::optional<Array>(*p) : std::nullopt;
}

ArrayPtr own(Array a) { return std::make_unique<Array>(std::move(a)); }

std::string str(rust::Str s) { return std::string(s); }

}  // namespace

ArrayPtr array_clone(const Array& a) { return own(a); }

rust::Vec<int32_t> array_shape(const Array& a) {
  rust::Vec<int32_t> out;
  for (auto d : a.shape()) out.push_back(d);
  return out;
}

uint8_t array_dtype(const Array& a) { return static_cast<uint8_t>(a.dtype().val()); }

size_t array_nbytes(const Array& a) { return a.nbytes(); }

ArrayPtr array_from_bytes(rust::Slice<const uint8_t> data, rust::Slice<const int32_t> shape,
                          uint8_t dtype) {
  auto t = to_mlx(dtype);
  size_t count = 1;
  for (auto d : shape) count *= static_cast<size_t>(d);
  if (data.size() != count * mx::size_of(t)) {
    throw std::invalid_argument("array_from_bytes: " + std::to_string(data.size()) +
                                " bytes do not fill the requested shape");
  }
  // MLX takes ownership of the buffer and frees it with the deleter.
  void* buffer = std::malloc(data.size() ? data.size() : 1);
  if (!buffer) throw std::bad_alloc();
  std::memcpy(buffer, data.data(), data.size());
  return own(Array(buffer, to_shape(shape), t, [](void* p) { std::free(p); }));
}

void array_copy_to(const Array& a, rust::Slice<uint8_t> out) {
  auto c = mx::contiguous(a);
  c.eval();
  if (out.size() != c.nbytes()) {
    throw std::invalid_argument("array_copy_to: output buffer has the wrong size");
  }
  std::memcpy(out.data(), c.data<uint8_t>(), c.nbytes());
}

ArrayPtr scalar_f64(double value, uint8_t dtype) {
  return own(Array(value, to_mlx(dtype)));
}
ArrayPtr scalar_i64(int64_t value, uint8_t dtype) { return own(Array(value, to_mlx(dtype))); }
ArrayPtr zeros(rust::Slice<const int32_t> shape, uint8_t dtype) {
  return own(mx::zeros(to_shape(shape), to_mlx(dtype)));
}
ArrayPtr ones(rust::Slice<const int32_t> shape, uint8_t dtype) {
  return own(mx::ones(to_shape(shape), to_mlx(dtype)));
}
ArrayPtr arange(double start, double stop, double step, uint8_t dtype) {
  return own(mx::arange(start, stop, step, to_mlx(dtype)));
}
ArrayPtr astype(const Array& a, uint8_t dtype) { return own(mx::astype(a, to_mlx(dtype))); }
ArrayPtr view(const Array& a, uint8_t dtype) { return own(mx::view(a, to_mlx(dtype))); }
ArrayPtr contiguous(const Array& a) { return own(mx::contiguous(a)); }

void eval(const ArrayList& arrays) { mx::eval(arrays); }
void async_eval(const ArrayList& arrays) { mx::async_eval(arrays); }
std::unique_ptr<ArrayList> new_array_list() { return std::make_unique<ArrayList>(); }
void array_list_push(ArrayList& list, const Array& a) { list.push_back(a); }

ArrayPtr reshape(const Array& a, rust::Slice<const int32_t> shape) {
  return own(mx::reshape(a, to_shape(shape)));
}
ArrayPtr transpose(const Array& a, rust::Slice<const int32_t> axes) {
  return own(mx::transpose(a, to_ints(axes)));
}
ArrayPtr swapaxes(const Array& a, int32_t axis1, int32_t axis2) {
  return own(mx::swapaxes(a, axis1, axis2));
}
ArrayPtr expand_dims(const Array& a, int32_t axis) { return own(mx::expand_dims(a, axis)); }
ArrayPtr squeeze(const Array& a, int32_t axis) { return own(mx::squeeze(a, axis)); }
ArrayPtr broadcast_to(const Array& a, rust::Slice<const int32_t> shape) {
  return own(mx::broadcast_to(a, to_shape(shape)));
}
ArrayPtr slice(const Array& a, rust::Slice<const int32_t> start, rust::Slice<const int32_t> stop,
               rust::Slice<const int32_t> strides) {
  return own(mx::slice(a, to_shape(start), to_shape(stop), to_shape(strides)));
}
ArrayPtr slice_update(const Array& src, const Array& update, rust::Slice<const int32_t> start,
                      rust::Slice<const int32_t> stop, rust::Slice<const int32_t> strides) {
  return own(mx::slice_update(src, update, to_shape(start), to_shape(stop), to_shape(strides)));
}
ArrayPtr concatenate(const ArrayList& arrays, int32_t axis) {
  return own(mx::concatenate(arrays, axis));
}
ArrayPtr take(const Array& a, const Array& indices, int32_t axis) {
  return own(mx::take(a, indices, axis));
}
ArrayPtr take_along_axis(const Array& a, const Array& indices, int32_t axis) {
  return own(mx::take_along_axis(a, indices, axis));
}
ArrayPtr put_along_axis(const Array& a, const Array& indices, const Array& values, int32_t axis) {
  return own(mx::put_along_axis(a, indices, values, axis));
}
ArrayPtr where_(const Array& condition, const Array& x, const Array& y) {
  return own(mx::where(condition, x, y));
}

#define FORWARD_BINARY(name) \
  ArrayPtr name(const Array& a, const Array& b) { return own(mx::name(a, b)); }
#define FORWARD_UNARY(name) \
  ArrayPtr name(const Array& a) { return own(mx::name(a)); }

FORWARD_BINARY(add)
FORWARD_BINARY(subtract)
FORWARD_BINARY(multiply)
FORWARD_BINARY(divide)
FORWARD_BINARY(floor_divide)
FORWARD_BINARY(power)
FORWARD_BINARY(maximum)
FORWARD_BINARY(minimum)
FORWARD_BINARY(equal)
FORWARD_BINARY(not_equal)
FORWARD_BINARY(less)
FORWARD_BINARY(less_equal)
FORWARD_BINARY(greater)
FORWARD_BINARY(greater_equal)
FORWARD_BINARY(logical_and)
FORWARD_BINARY(logical_or)
FORWARD_UNARY(logical_not)
FORWARD_UNARY(negative)
FORWARD_UNARY(abs)
FORWARD_UNARY(exp)
FORWARD_UNARY(log)
FORWARD_UNARY(sqrt)
FORWARD_UNARY(rsqrt)
FORWARD_UNARY(square)
FORWARD_UNARY(sigmoid)
FORWARD_UNARY(tanh)

ArrayPtr clip(const Array& a, ArrayPtr min, ArrayPtr max) {
  return own(mx::clip(a, opt(min), opt(max)));
}

#define FORWARD_AXES_KEEPDIMS(name)                                                  \
  ArrayPtr name(const Array& a, rust::Slice<const int32_t> axes, bool keepdims) { \
    return own(mx::name(a, to_ints(axes), keepdims));                            \
  }

FORWARD_AXES_KEEPDIMS(sum)
FORWARD_AXES_KEEPDIMS(max)
FORWARD_AXES_KEEPDIMS(min)
FORWARD_AXES_KEEPDIMS(mean)
FORWARD_AXES_KEEPDIMS(logsumexp)

ArrayPtr softmax(const Array& a, rust::Slice<const int32_t> axes, bool precise) {
  return own(mx::softmax(a, to_ints(axes), precise));
}
ArrayPtr argmax(const Array& a, int32_t axis, bool keepdims) {
  return own(mx::argmax(a, axis, keepdims));
}
ArrayPtr argmin(const Array& a, int32_t axis, bool keepdims) {
  return own(mx::argmin(a, axis, keepdims));
}
ArrayPtr argpartition(const Array& a, int32_t kth, int32_t axis) {
  return own(mx::argpartition(a, kth, axis));
}
ArrayPtr topk(const Array& a, int32_t k, int32_t axis) { return own(mx::topk(a, k, axis)); }
ArrayPtr sort(const Array& a, int32_t axis) { return own(mx::sort(a, axis)); }
ArrayPtr argsort(const Array& a, int32_t axis) { return own(mx::argsort(a, axis)); }
ArrayPtr cumsum(const Array& a, int32_t axis, bool reverse, bool inclusive) {
  return own(mx::cumsum(a, axis, reverse, inclusive));
}

ArrayPtr matmul(const Array& a, const Array& b) { return own(mx::matmul(a, b)); }
ArrayPtr addmm(const Array& c, const Array& a, const Array& b, float alpha, float beta) {
  return own(mx::addmm(c, a, b, alpha, beta));
}
ArrayPtr gather_mm(const Array& a, const Array& b, ArrayPtr lhs_indices, ArrayPtr rhs_indices,
                   bool sorted_indices) {
  return own(mx::gather_mm(a, b, opt(lhs_indices), opt(rhs_indices), sorted_indices));
}
std::unique_ptr<ArrayList> quantize(const Array& w, int32_t group_size, int32_t bits, rust::Str mode) {
  return std::make_unique<ArrayList>(mx::quantize(w, group_size, bits, str(mode)));
}
ArrayPtr dequantize(const Array& w, const Array& scales, ArrayPtr biases, int32_t group_size,
                    int32_t bits, rust::Str mode, bool has_dtype, uint8_t dtype) {
  auto out_dtype = has_dtype ? std::optional<mx::Dtype>(to_mlx(dtype)) : std::nullopt;
  return own(mx::dequantize(w, scales, opt(biases), group_size, bits, str(mode), std::nullopt, out_dtype));
}
ArrayPtr quantized_matmul(const Array& x, const Array& w, const Array& scales, ArrayPtr biases,
                          bool transpose, int32_t group_size, int32_t bits, rust::Str mode) {
  return own(mx::quantized_matmul(x, w, scales, opt(biases), transpose, group_size, bits, str(mode)));
}
ArrayPtr gather_qmm(const Array& x, const Array& w, const Array& scales, ArrayPtr biases,
                    ArrayPtr lhs_indices, ArrayPtr rhs_indices, bool transpose, int32_t group_size,
                    int32_t bits, rust::Str mode, bool sorted_indices) {
  return own(mx::gather_qmm(x, w, scales, opt(biases), opt(lhs_indices), opt(rhs_indices), transpose,
                            group_size, bits, str(mode), std::nullopt, sorted_indices));
}

ArrayPtr rms_norm(const Array& x, ArrayPtr weight, float eps) {
  return own(mx::fast::rms_norm(x, opt(weight), eps));
}
ArrayPtr rope(const Array& x, int32_t dims, bool traditional, float base, float scale, int32_t offset) {
  return own(mx::fast::rope(x, dims, traditional, base, scale, offset));
}
ArrayPtr rope_with_freqs(const Array& x, int32_t dims, bool traditional, float scale, int32_t offset,
                         const Array& freqs) {
  return own(mx::fast::rope(x, dims, traditional, std::nullopt, scale, offset, freqs));
}
ArrayPtr scaled_dot_product_attention(const Array& queries, const Array& keys, const Array& values,
                                      float scale, rust::Str mask_mode, ArrayPtr mask, ArrayPtr sinks) {
  return own(mx::fast::scaled_dot_product_attention(queries, keys, values, scale, str(mask_mode),
                                                    opt(mask), opt(sinks)));
}

ArrayPtr random_key(uint64_t seed) { return own(mx::random::key(seed)); }
ArrayPtr random_split(const Array& key, int32_t num) { return own(mx::random::split(key, num)); }
ArrayPtr random_uniform(rust::Slice<const int32_t> shape, uint8_t dtype, const Array& key) {
  return own(mx::random::uniform(to_shape(shape), to_mlx(dtype), key));
}
ArrayPtr random_normal(rust::Slice<const int32_t> shape, uint8_t dtype, const Array& key) {
  return own(mx::random::normal(to_shape(shape), to_mlx(dtype), key));
}
ArrayPtr random_categorical(const Array& logits, int32_t axis, const Array& key) {
  return own(mx::random::categorical(logits, axis, key));
}

void load_safetensors(rust::Str path, rust::Vec<rust::String>& names, ArrayList& arrays,
                      rust::Vec<rust::String>& metadata_keys, rust::Vec<rust::String>& metadata_values) {
  auto [tensors, metadata] = mx::load_safetensors(str(path));
  for (auto& [name, array] : tensors) {
    names.push_back(rust::String(name));
    arrays.push_back(array);
  }
  for (auto& [key, value] : metadata) {
    metadata_keys.push_back(rust::String(key));
    metadata_values.push_back(rust::String(value));
  }
}

void save_safetensors(rust::Str path, rust::Slice<const rust::String> names, const ArrayList& arrays,
                      rust::Slice<const rust::String> metadata_keys,
                      rust::Slice<const rust::String> metadata_values) {
  std::unordered_map<std::string, Array> tensors;
  for (size_t i = 0; i < names.size(); ++i) tensors.insert({std::string(names[i]), arrays.at(i)});
  std::unordered_map<std::string, std::string> metadata;
  for (size_t i = 0; i < metadata_keys.size(); ++i) {
    metadata.insert({std::string(metadata_keys[i]), std::string(metadata_values[i])});
  }
  mx::save_safetensors(str(path), std::move(tensors), std::move(metadata));
}

size_t get_active_memory() { return mx::get_active_memory(); }
size_t get_peak_memory() { return mx::get_peak_memory(); }
void reset_peak_memory() { mx::reset_peak_memory(); }
size_t get_cache_memory() { return mx::get_cache_memory(); }
size_t set_cache_limit(size_t limit) { return mx::set_cache_limit(limit); }
size_t set_memory_limit(size_t limit) { return mx::set_memory_limit(limit); }
size_t set_wired_limit(size_t limit) { return mx::set_wired_limit(limit); }
void clear_cache() { mx::clear_cache(); }

rust::String mlx_version() { return rust::String(mx::version()); }
bool default_device_is_gpu() { return mx::default_device() == mx::Device::gpu; }
bool metal_is_available() { return mx::metal::is_available(); }
bool cuda_is_available() { return mx::cu::is_available(); }

// Device properties are a variant map whose keys differ per backend; a missing
// key is an exception, which reaches Rust as an error the caller can fall back on.
rust::String device_info_string(rust::Str key) {
  return rust::String(std::get<std::string>(mx::device_info().at(str(key))));
}
size_t device_info_number(rust::Str key) { return std::get<size_t>(mx::device_info().at(str(key))); }

void set_default_device_cpu() { mx::set_default_device(mx::Device::cpu); }
void synchronize() { mx::synchronize(); }

namespace dist = mx::distributed;

bool distributed_is_available(rust::Str backend) { return dist::is_available(str(backend)); }
// Strict: a process launched as a rank must fail rather than run alone.
std::unique_ptr<Group> distributed_init(rust::Str backend) {
  return std::make_unique<Group>(dist::init(true, str(backend)));
}
int32_t group_rank(const Group& group) { return group.rank(); }
int32_t group_size(const Group& group) { return group.size(); }
ArrayPtr all_sum(const Array& x, const Group& group) { return own(dist::all_sum(x, group)); }
ArrayPtr all_gather(const Array& x, const Group& group) { return own(dist::all_gather(x, group)); }
ArrayPtr send(const Array& x, int32_t dst, const Group& group) { return own(dist::send(x, dst, group)); }
ArrayPtr recv(rust::Slice<const int32_t> shape, uint8_t dtype, int32_t src, const Group& group) {
  return own(dist::recv(to_shape(shape), to_mlx(dtype), src, group));
}

}  // namespace safeguard_mlx
