//! Loading reads each weight once: MLX's peak memory after loading a model in
//! its own dtype stays within 5% of the safetensors bytes. (A binary of its
//! own: MLX's memory counters are process-wide.)

mod common;

use safeguard_mlx::mlx::memory;
use safeguard_mlx::model::{ComputeDtype, GptOss};

#[test]
fn peak_memory_after_load_is_about_the_checkpoint_size() {
    for name in ["a-mxfp4", "b-q4"] {
        let dir = common::fixture(name);
        let bytes: u64 = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .map(|p| p.metadata().unwrap().len())
            .sum();
        memory::clear_cache();
        memory::reset_peak();
        let before = memory::active();
        // The fixtures are bfloat16 checkpoints: load them without a cast.
        let model = GptOss::load(&dir, ComputeDtype::Bfloat16).unwrap();
        let peak = (memory::peak() - before) as f64;
        assert!(
            peak <= 1.05 * bytes as f64,
            "{name}: peak {peak} bytes while loading {bytes} bytes of safetensors"
        );
        eprintln!(
            "{name}: peak {:.3}× the {bytes} safetensors bytes",
            peak / bytes as f64
        );
        drop(model);
    }
}
