//! Memory accounting. MLX's counters are process-wide, so these tests live in
//! their own binary and take turns.

use std::collections::HashMap;
use std::sync::Mutex;

use safeguard_mlx::mlx::{memory, safetensors, Array, Dtype};

static ALONE: Mutex<()> = Mutex::new(());

#[test]
fn memory_counters_track_allocations_and_limits() {
    let _alone = ALONE.lock().unwrap();
    let before = memory::active();
    let a = Array::ones(&[1024, 1024], Dtype::Float32).unwrap(); // 4 MiB
    a.eval().unwrap();
    assert!(memory::active() >= before + (4 << 20));
    assert!(memory::peak() >= memory::active());
    memory::reset_peak();
    assert!(memory::peak() <= memory::active() + (1 << 20));

    let previous = memory::set_cache_limit(0);
    assert_eq!(
        memory::set_cache_limit(previous),
        0,
        "set returns the previous limit"
    );
    drop(a);
    memory::clear_cache();
    assert_eq!(memory::cache(), 0);

    let previous = memory::set_memory_limit(1 << 40);
    assert_eq!(memory::set_memory_limit(previous), 1 << 40);
    // The wired limit only means something on Metal; elsewhere it is accepted and ignored.
    memory::set_wired_limit(0).unwrap();
}

#[test]
fn loading_safetensors_is_lazy_until_evaluation() {
    let _alone = ALONE.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    let big = Array::ones(&[2048, 2048], Dtype::Float32).unwrap(); // 16 MiB
    safetensors::save(&path, &HashMap::from([("big".to_string(), big)]), &HashMap::new()).unwrap();

    let before = memory::active();
    let loaded = safetensors::load(&path).unwrap();
    let tensor = &loaded.tensors["big"];
    assert!(
        memory::active().saturating_sub(before) < 1 << 20,
        "nothing is read before eval"
    );
    tensor.eval().unwrap();
    assert!(
        memory::active().saturating_sub(before) >= 16 << 20,
        "eval reads the data"
    );
    assert_eq!(
        tensor.sum(&[0, 1], false).unwrap().item::<f32>().unwrap(),
        (2048 * 2048) as f32
    );
}

#[test]
fn wiring_memory_is_metal_only() {
    let _alone = ALONE.lock().unwrap();
    let wired = memory::WiredLimit::recommended();
    let metal = safeguard_mlx::mlx::default_device().backend == safeguard_mlx::mlx::Backend::Metal;
    assert_eq!(wired.limit().is_some(), metal);
}
