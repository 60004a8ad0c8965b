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

/// mlx-lm's `wired_limit`: while a model generates, Metal may keep up to the
/// GPU's recommended working set wired, so the weights are not paged out
/// between steps; the previous limit comes back when this is dropped, after
/// the work in flight. Nothing on backends without wired memory.
pub struct WiredLimit {
    /// (limit set, limit before).
    set: Option<(usize, usize)>,
}

impl WiredLimit {
    pub fn recommended() -> WiredLimit {
        if super::default_device().backend != super::Backend::Metal {
            return WiredLimit { set: None };
        }
        let wire = || -> Result<(usize, usize)> {
            let recommended =
                ffi::device_info_number("max_recommended_working_set_size").op("device_info")?;
            Ok((recommended, set_wired_limit(recommended)?))
        };
        // Wiring is an optimisation: generating without it is slower, not wrong.
        let set = wire()
            .inspect_err(|e| tracing::warn!("could not wire the model's memory: {e}"))
            .ok();
        WiredLimit { set }
    }

    /// The limit in force while this lives, if one was set.
    pub fn limit(&self) -> Option<usize> {
        self.set.map(|(limit, _)| limit)
    }
}

impl Drop for WiredLimit {
    fn drop(&mut self) {
        if let Some((_, before)) = self.set {
            let _ = super::synchronize();
            let _ = set_wired_limit(before);
        }
    }
}

/// Returns the buffer cache to the system.
pub fn clear_cache() {
    ffi::clear_cache()
}
