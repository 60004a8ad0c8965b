//! The cxx bridge to the kernels' primitive glue (`primitive.cc`). Arrays are
//! the MLX binding's own handle type, shared with `crate::mlx`'s bridge.

#[allow(clippy::too_many_arguments)]
#[cxx::bridge(namespace = "safeguard_kernels")]
pub(crate) mod bridge {
    unsafe extern "C++" {
        include!("safeguard-mlx/src/kernels/primitive.h");

        #[namespace = "safeguard_mlx"]
        type Array = crate::mlx::ffi::bridge::Array;

        fn quantized_matmul(
            x: &Array,
            w: &Array,
            scales: &Array,
            biases: UniquePtr<Array>,
            group_size: i32,
            bits: i32,
            mode: &str,
            fast: bool,
            isa: &str,
        ) -> Result<UniquePtr<Array>>;
        fn gather_matmul(
            x: &Array,
            w: &Array,
            scales: &Array,
            biases: UniquePtr<Array>,
            lhs: &Array,
            rhs: &Array,
            skip_foreign: bool,
            group_size: i32,
            bits: i32,
            mode: &str,
            fast: bool,
            isa: &str,
        ) -> Result<UniquePtr<Array>>;
        fn support_error(mode: &str, bits: i32, group_size: i32, in_dims: i32) -> String;
        fn available_isas_list() -> Vec<String>;
        fn default_isa_name() -> String;
        fn threads() -> usize;
    }
}
