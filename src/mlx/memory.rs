//! MLX's allocator: usage counters and limits (bytes).

use super::error::Context;
use super::ffi::bridge as ffi;
use super::Result;

/// Bytes held by live arrays.
pub fn active() -> usize {
    ffi::get_active_memory()
}

/// The most bytes held by live arrays since start or [`reset_peak`].
pub fn peak() -> usize {
    ffi::get_peak_memory()
}

pub fn reset_peak() {
    ffi::reset_peak_memory()
}

/// Bytes freed by arrays but kept by MLX's buffer cache for reuse.
pub fn cache() -> usize {
    ffi::get_cache_memory()
}

/// Caps the buffer cache; returns the previous limit.
pub fn set_cache_limit(bytes: usize) -> usize {
    ffi::set_cache_limit(bytes)
}

/// Caps total allocation (a guideline MLX enforces by waiting on work in
/// flight before allocating more); returns the previous limit.
pub fn set_memory_limit(bytes: usize) -> usize {
    ffi::set_memory_limit(bytes)
}

/// Keeps up to `bytes` of model memory wired (resident) on Metal, as mlx-lm
/// does for large models; a no-op elsewhere. Returns the previous limit.
pub fn set_wired_limit(bytes: usize) -> Result<usize> {
    ffi::set_wired_limit(bytes).op("set_wired_limit")
}

/// On Metal, lets MLX keep up to the GPU's recommended working set wired, as
/// mlx-lm does while a model runs, so the weights are not paged out between
/// steps. Returns the limit set, or None on backends without wired memory.
pub fn wire_recommended_working_set() -> Result<Option<usize>> {
    if super::default_device().backend != super::Backend::Metal {
        return Ok(None);
    }
    let recommended = ffi::device_info_number("max_recommended_working_set_size").op("device_info")?;
    set_wired_limit(recommended)?;
    Ok(Some(recommended))
}

/// Returns the buffer cache to the system.
pub fn clear_cache() {
    ffi::clear_cache()
}
