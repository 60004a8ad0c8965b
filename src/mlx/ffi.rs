//! The cxx bridge: one declaration per forwarded MLX call. Every call that can
//! throw returns `Result`, so an MLX exception becomes a Rust error carrying its
//! message instead of aborting the process. Optional arrays travel as possibly
//! null `UniquePtr`s; dtypes as the `u8` of `mlx::core::Dtype::Val`.

// The bridge mirrors MLX's own signatures, some of which are long.
#[allow(clippy::too_many_arguments)]
#[cxx::bridge(namespace = "safeguard_mlx")]
pub(crate) mod bridge {
    unsafe extern "C++" {
        include!("safeguard-mlx/src/mlx/shim.h");

        type Array;
        type Group;

        // Introspection and host transfer.
        fn array_clone(a: &Array) -> UniquePtr<Array>;
        fn array_shape(a: &Array) -> Vec<i32>;
        fn array_dtype(a: &Array) -> u8;
        fn array_nbytes(a: &Array) -> usize;
        fn array_from_bytes(data: &[u8], shape: &[i32], dtype: u8) -> Result<UniquePtr<Array>>;
        fn array_copy_to(a: &Array, out: &mut [u8]) -> Result<()>;
        fn scalar_f64(value: f64, dtype: u8) -> Result<UniquePtr<Array>>;
        fn scalar_i64(value: i64, dtype: u8) -> Result<UniquePtr<Array>>;
        fn zeros(shape: &[i32], dtype: u8) -> Result<UniquePtr<Array>>;
        fn ones(shape: &[i32], dtype: u8) -> Result<UniquePtr<Array>>;
        fn arange(start: f64, stop: f64, step: f64, dtype: u8) -> Result<UniquePtr<Array>>;
        fn astype(a: &Array, dtype: u8) -> Result<UniquePtr<Array>>;
        fn view(a: &Array, dtype: u8) -> Result<UniquePtr<Array>>;
        fn contiguous(a: &Array) -> Result<UniquePtr<Array>>;

        // Evaluation.
        fn eval(arrays: &CxxVector<Array>) -> Result<()>;
        fn async_eval(arrays: &CxxVector<Array>) -> Result<()>;
        fn new_array_list() -> UniquePtr<CxxVector<Array>>;
        fn array_list_push(list: Pin<&mut CxxVector<Array>>, a: &Array);

        // Shapes and indexing.
        fn reshape(a: &Array, shape: &[i32]) -> Result<UniquePtr<Array>>;
        fn transpose(a: &Array, axes: &[i32]) -> Result<UniquePtr<Array>>;
        fn swapaxes(a: &Array, axis1: i32, axis2: i32) -> Result<UniquePtr<Array>>;
        fn expand_dims(a: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn squeeze(a: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn broadcast_to(a: &Array, shape: &[i32]) -> Result<UniquePtr<Array>>;
        fn slice(a: &Array, start: &[i32], stop: &[i32], strides: &[i32]) -> Result<UniquePtr<Array>>;
        fn slice_update(
            src: &Array,
            update: &Array,
            start: &[i32],
            stop: &[i32],
            strides: &[i32],
        ) -> Result<UniquePtr<Array>>;
        fn concatenate(arrays: &CxxVector<Array>, axis: i32) -> Result<UniquePtr<Array>>;
        fn take(a: &Array, indices: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn take_along_axis(a: &Array, indices: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn put_along_axis(a: &Array, indices: &Array, values: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn where_(condition: &Array, x: &Array, y: &Array) -> Result<UniquePtr<Array>>;

        // Element-wise arithmetic and comparisons (numpy broadcasting).
        fn add(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn subtract(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn multiply(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn divide(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn floor_divide(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn power(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn maximum(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn minimum(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn equal(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn not_equal(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn less(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn less_equal(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn greater(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn greater_equal(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn logical_and(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn logical_or(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn logical_not(a: &Array) -> Result<UniquePtr<Array>>;
        fn negative(a: &Array) -> Result<UniquePtr<Array>>;
        fn abs(a: &Array) -> Result<UniquePtr<Array>>;
        fn exp(a: &Array) -> Result<UniquePtr<Array>>;
        fn log(a: &Array) -> Result<UniquePtr<Array>>;
        fn sqrt(a: &Array) -> Result<UniquePtr<Array>>;
        fn rsqrt(a: &Array) -> Result<UniquePtr<Array>>;
        fn square(a: &Array) -> Result<UniquePtr<Array>>;
        fn sigmoid(a: &Array) -> Result<UniquePtr<Array>>;
        fn tanh(a: &Array) -> Result<UniquePtr<Array>>;
        fn clip(a: &Array, min: UniquePtr<Array>, max: UniquePtr<Array>) -> Result<UniquePtr<Array>>;

        // Reductions, sorting and normalisation along axes.
        fn sum(a: &Array, axes: &[i32], keepdims: bool) -> Result<UniquePtr<Array>>;
        fn max(a: &Array, axes: &[i32], keepdims: bool) -> Result<UniquePtr<Array>>;
        fn min(a: &Array, axes: &[i32], keepdims: bool) -> Result<UniquePtr<Array>>;
        fn mean(a: &Array, axes: &[i32], keepdims: bool) -> Result<UniquePtr<Array>>;
        fn logsumexp(a: &Array, axes: &[i32], keepdims: bool) -> Result<UniquePtr<Array>>;
        fn softmax(a: &Array, axes: &[i32], precise: bool) -> Result<UniquePtr<Array>>;
        fn argmax(a: &Array, axis: i32, keepdims: bool) -> Result<UniquePtr<Array>>;
        fn argmin(a: &Array, axis: i32, keepdims: bool) -> Result<UniquePtr<Array>>;
        fn argpartition(a: &Array, kth: i32, axis: i32) -> Result<UniquePtr<Array>>;
        fn topk(a: &Array, k: i32, axis: i32) -> Result<UniquePtr<Array>>;
        fn sort(a: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn argsort(a: &Array, axis: i32) -> Result<UniquePtr<Array>>;
        fn cumsum(a: &Array, axis: i32, reverse: bool, inclusive: bool) -> Result<UniquePtr<Array>>;

        // Matrix products, dense and quantized.
        fn matmul(a: &Array, b: &Array) -> Result<UniquePtr<Array>>;
        fn addmm(c: &Array, a: &Array, b: &Array, alpha: f32, beta: f32) -> Result<UniquePtr<Array>>;
        fn gather_mm(
            a: &Array,
            b: &Array,
            lhs_indices: UniquePtr<Array>,
            rhs_indices: UniquePtr<Array>,
            sorted_indices: bool,
        ) -> Result<UniquePtr<Array>>;
        fn quantize(w: &Array, group_size: i32, bits: i32, mode: &str)
            -> Result<UniquePtr<CxxVector<Array>>>;
        fn dequantize(
            w: &Array,
            scales: &Array,
            biases: UniquePtr<Array>,
            group_size: i32,
            bits: i32,
            mode: &str,
            has_dtype: bool,
            dtype: u8,
        ) -> Result<UniquePtr<Array>>;
        fn quantized_matmul(
            x: &Array,
            w: &Array,
            scales: &Array,
            biases: UniquePtr<Array>,
            transpose: bool,
            group_size: i32,
            bits: i32,
            mode: &str,
        ) -> Result<UniquePtr<Array>>;
        fn gather_qmm(
            x: &Array,
            w: &Array,
            scales: &Array,
            biases: UniquePtr<Array>,
            lhs_indices: UniquePtr<Array>,
            rhs_indices: UniquePtr<Array>,
            transpose: bool,
            group_size: i32,
            bits: i32,
            mode: &str,
            sorted_indices: bool,
        ) -> Result<UniquePtr<Array>>;

        // mlx::core::fast kernels.
        fn rms_norm(x: &Array, weight: UniquePtr<Array>, eps: f32) -> Result<UniquePtr<Array>>;
        fn rope(
            x: &Array,
            dims: i32,
            traditional: bool,
            base: f32,
            scale: f32,
            offset: i32,
        ) -> Result<UniquePtr<Array>>;
        fn rope_with_freqs(
            x: &Array,
            dims: i32,
            traditional: bool,
            scale: f32,
            offset: i32,
            freqs: &Array,
        ) -> Result<UniquePtr<Array>>;
        fn scaled_dot_product_attention(
            queries: &Array,
            keys: &Array,
            values: &Array,
            scale: f32,
            mask_mode: &str,
            mask: UniquePtr<Array>,
            sinks: UniquePtr<Array>,
        ) -> Result<UniquePtr<Array>>;

        // Random numbers from explicit keys.
        fn random_key(seed: u64) -> Result<UniquePtr<Array>>;
        fn random_split(key: &Array, num: i32) -> Result<UniquePtr<Array>>;
        fn random_uniform(shape: &[i32], dtype: u8, key: &Array) -> Result<UniquePtr<Array>>;
        fn random_normal(shape: &[i32], dtype: u8, key: &Array) -> Result<UniquePtr<Array>>;
        fn random_categorical(logits: &Array, axis: i32, key: &Array) -> Result<UniquePtr<Array>>;

        // Safetensors files.
        fn load_safetensors(
            path: &str,
            names: &mut Vec<String>,
            arrays: Pin<&mut CxxVector<Array>>,
            metadata_keys: &mut Vec<String>,
            metadata_values: &mut Vec<String>,
        ) -> Result<()>;
        fn save_safetensors(
            path: &str,
            names: &[String],
            arrays: &CxxVector<Array>,
            metadata_keys: &[String],
            metadata_values: &[String],
        ) -> Result<()>;

        // Memory accounting and limits.
        fn get_active_memory() -> usize;
        fn get_peak_memory() -> usize;
        fn reset_peak_memory();
        fn get_cache_memory() -> usize;
        fn set_cache_limit(limit: usize) -> usize;
        fn set_memory_limit(limit: usize) -> usize;
        fn set_wired_limit(limit: usize) -> Result<usize>;
        fn clear_cache();

        // Library and device.
        fn mlx_version() -> String;
        fn default_device_is_gpu() -> bool;
        fn metal_is_available() -> bool;
        fn cuda_is_available() -> bool;
        fn device_info_string(key: &str) -> Result<String>;
        fn device_info_number(key: &str) -> Result<usize>;
        fn set_default_device_cpu() -> Result<()>;
        fn synchronize() -> Result<()>;

        // Collectives over a group of processes (mlx::core::distributed).
        fn distributed_is_available(backend: &str) -> bool;
        fn distributed_init(backend: &str) -> Result<UniquePtr<Group>>;
        fn group_rank(group: &Group) -> i32;
        fn group_size(group: &Group) -> i32;
        fn all_sum(x: &Array, group: &Group) -> Result<UniquePtr<Array>>;
        fn all_gather(x: &Array, group: &Group) -> Result<UniquePtr<Array>>;
        fn send(x: &Array, dst: i32, group: &Group) -> Result<UniquePtr<Array>>;
        fn recv(shape: &[i32], dtype: u8, src: i32, group: &Group) -> Result<UniquePtr<Array>>;
    }
}

// A group's handle only wraps MLX's shared state for the communication
// backend (sockets, an MPI communicator), which is not tied to the thread
// that made it; init runs on its own thread so that it can time out.
unsafe impl Send for bridge::Group {}
