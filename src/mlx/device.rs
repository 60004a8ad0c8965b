use std::fmt;

use super::error::Context;
use super::ffi::bridge as ffi;
use super::Result;

/// The compute backend MLX was built with and will use by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Metal,
    Cuda,
    Cpu,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Metal => "Metal",
            Backend::Cuda => "CUDA",
            Backend::Cpu => "CPU",
        })
    }
}

/// The device MLX runs new work on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub backend: Backend,
    /// What the backend calls the device, e.g. "Apple M3 Max"; empty when it
    /// does not say.
    pub name: String,
    /// Memory the backend reports for the device, when it reports any.
    pub memory_bytes: Option<usize>,
}

impl Device {
    pub fn is_gpu(&self) -> bool {
        self.backend != Backend::Cpu
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.backend, self.name.is_empty()) {
            (backend, true) => write!(f, "{backend}"),
            (backend, false) => write!(f, "{backend} ({})", self.name),
        }
    }
}

/// MLX's default device: the GPU when this build of MLX has one, else the CPU.
pub fn default_device() -> Device {
    let backend = match (
        ffi::default_device_is_gpu(),
        ffi::metal_is_available(),
        ffi::cuda_is_available(),
    ) {
        (true, true, _) => Backend::Metal,
        (true, _, true) => Backend::Cuda,
        _ => Backend::Cpu,
    };
    // Backends differ in which keys they report; missing ones are not errors.
    let name = ffi::device_info_string("device_name").unwrap_or_default();
    let memory_bytes = ffi::device_info_number("memory_size")
        .or_else(|_| ffi::device_info_number("total_memory"))
        .ok();
    Device {
        backend,
        name,
        memory_bytes,
    }
}

/// Sends all later work to the CPU, e.g. to compare against a GPU run.
pub fn use_cpu() -> Result<()> {
    ffi::set_default_device_cpu().op("set_default_device")
}

/// Waits for all queued work on the default stream.
pub fn synchronize() -> Result<()> {
    ffi::synchronize().op("synchronize")
}

/// The version of the linked MLX library.
pub fn version() -> String {
    ffi::mlx_version()
}

/// A number from MLX's device info (e.g. `max_recommended_working_set_size`
/// on Metal), when this backend reports that key.
pub fn device_info_number(key: &str) -> Option<usize> {
    ffi::device_info_number(key).ok()
}
