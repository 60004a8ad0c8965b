//! A safe Rust API over MLX's C++ API.
//!
//! The C++ side (`shim.h`/`shim.cc`, bridged by `ffi.rs`) only forwards calls;
//! everything here is plain Rust over an [`Array`] handle. MLX is lazy: ops
//! build a graph and nothing runs until [`eval`], [`async_eval`] or a read
//! back to the host. Every MLX exception surfaces as an [`Error`].

mod array;
mod device;
pub mod distributed;
mod dtype;
mod error;
pub mod fast;
pub(crate) mod ffi;
pub mod memory;
mod ops;
mod quant;
pub mod random;
pub mod safetensors;

pub use array::{async_eval, eval, Array};
pub use device::{default_device, device_info_number, synchronize, use_cpu, version, Backend, Device};
pub use dtype::{Dtype, Element};
pub use error::{Error, Result};
pub use ops::{concatenate, where_};
pub use quant::{QuantMode, QuantSpec, Quantized};
