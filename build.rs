//! Finds MLX, compiles the C++ shim of `src/mlx/` with cxx, and links `libmlx`.
//!
//! MLX is looked up in this order: `MLX_DIR` (a prefix holding `include/mlx/mlx.h`
//! and `lib/libmlx.*`, e.g. Homebrew's), the repository's `.venv` (what `make setup`
//! installs), then whatever `python3` imports.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SHIM_FILES: [&str; 3] = ["src/mlx/ffi.rs", "src/mlx/shim.h", "src/mlx/shim.cc"];
const KERNEL_FILES: [&str; 8] = [
    "src/kernels/ffi.rs",
    "src/kernels/primitive.h",
    "src/kernels/primitive.cc",
    "src/kernels/qmm.h",
    "src/kernels/qmm.cc",
    "src/kernels/qmm_isa.cc",
    "src/kernels/pool.h",
    "src/kernels/pool.cc",
];

fn main() {
    for file in SHIM_FILES.iter().chain(&KERNEL_FILES) {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=MLX_DIR");
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let venv_python = manifest_dir.join(".venv/bin/python");
    println!("cargo:rerun-if-changed={}", venv_python.display());

    let prefix = match find_mlx(&venv_python) {
        Ok(prefix) => prefix,
        Err(tried) => {
            // One message that says what to run; cargo prints it with the failure.
            eprintln!(
                "error: MLX was not found (looked in: {tried}).\n\
                 Run `make setup` in {} to install the pinned MLX into .venv,\n\
                 or set MLX_DIR to a prefix that contains include/mlx/mlx.h and lib/libmlx.*",
                manifest_dir.display()
            );
            std::process::exit(1);
        }
    };
    let include = prefix.join("include");
    let lib = prefix.join("lib");
    println!(
        "cargo:rerun-if-changed={}",
        include.join("mlx/version.h").display()
    );
    println!("cargo:rerun-if-changed={}", lib.display());

    cxx_build::bridge("src/mlx/ffi.rs")
        .file("src/mlx/shim.cc")
        .include(&include)
        .std("c++20")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .compile("safeguard_mlx_shim");
    build_kernels(&include);

    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    // The binary and the tests find libmlx where it was at build time.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-env=SAFEGUARD_MLX_PREFIX={}", prefix.display());
    link_openblas();
}

/// MLX's Linux CPU wheel bundles the reference (netlib) BLAS, and MLX's
/// float32 matmuls — attention's scores and values — run through its naive
/// `cblas_sgemm`: 65% of a 512-token prefill of the 20b's shapes. With
/// SAFEGUARD_OPENBLAS_DIR naming a folder that holds a serial
/// libopenblas.so.0, the binary links it, and it comes first in the global
/// symbol scope, ahead of that copy (a dependency of libmlx), so libmlx calls
/// OpenBLAS instead: 1.6x the prefill. Opt-in, because OpenBLAS picks its
/// kernels by shape, so a prompt prefilled in chunks, or a row decoded beside
/// others, no longer gives the same bits as alone (the reference BLAS adds
/// every product in one order whatever the shape). Serial: a threaded OpenBLAS
/// keeps its threads spinning after each call, on the cores our kernels' pool
/// needs.
fn link_openblas() {
    println!("cargo:rerun-if-env-changed=SAFEGUARD_OPENBLAS_DIR");
    let Some(dir) = env::var_os("SAFEGUARD_OPENBLAS_DIR").map(PathBuf::from) else {
        return;
    };
    let library = dir.join("libopenblas.so.0");
    if env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") || !library.exists() {
        println!(
            "cargo:warning=SAFEGUARD_OPENBLAS_DIR: no {} to link (Linux only; Debian's libopenblas0-serial \
             puts it in /usr/lib/<arch>-linux-gnu/openblas-serial): MLX keeps its bundled BLAS",
            library.display()
        );
        return;
    }
    println!("cargo:rerun-if-changed={}", library.display());
    // Linked by path and kept although nothing of ours calls it: it is there
    // for libmlx's calls.
    println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed");
    println!("cargo:rustc-link-arg={}", library.display());
    println!("cargo:rustc-link-arg=-Wl,--pop-state");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
}

/// The CPU kernels: the primitive glue, then the inner loops once per
/// instruction set, each in its own namespace with its own target flags (the
/// binary picks one at run time). Always optimized, even in debug builds: the
/// tests run models through them.
fn build_kernels(include: &Path) {
    let base = |build: &mut cc::Build| {
        build
            .cpp(true)
            .std("c++20")
            .opt_level(3)
            .include(include)
            .flag_if_supported("-Wno-unused-parameter")
            // 64-byte vectors cross only internal functions, never an ABI.
            .flag_if_supported("-Wno-psabi")
            // GCC 12's own AVX-512 headers trip it (their `__Y = __Y` idiom).
            .flag_if_supported("-Wno-maybe-uninitialized");
    };
    let mut glue = cxx_build::bridge("src/kernels/ffi.rs");
    base(&mut glue);
    glue.file("src/kernels/primitive.cc")
        .file("src/kernels/qmm.cc")
        .file("src/kernels/pool.cc")
        .compile("safeguard_kernels");

    let x86 = env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64");
    let mut isas: Vec<(&str, &[&str])> = vec![("generic", &[])];
    if x86 {
        isas.push(("avx2", &["-mavx2", "-mfma"]));
        isas.push((
            "avx512",
            &[
                "-mavx512f",
                "-mavx512bw",
                "-mavx512vnni",
                "-mavx512vl",
                "-mavx2",
                "-mfma",
                "-DQMM_WIDE",
            ],
        ));
    }
    for (isa, flags) in isas {
        let mut build = cc::Build::new();
        base(&mut build);
        build
            .file("src/kernels/qmm_isa.cc")
            .define("QMM_ISA", isa)
            // Fused multiply-adds wherever the instruction set has them.
            .flag("-ffp-contract=fast");
        for flag in flags {
            build.flag(flag);
        }
        build.compile(&format!("safeguard_qmm_{isa}"));
    }
}

fn find_mlx(venv_python: &Path) -> Result<PathBuf, String> {
    let mut tried = Vec::new();
    if let Some(dir) = env::var_os("MLX_DIR") {
        let dir = PathBuf::from(dir);
        if is_mlx_prefix(&dir) {
            return Ok(dir);
        }
        tried.push(format!("MLX_DIR={}", dir.display()));
    }
    for python in [venv_python.as_os_str(), "python3".as_ref()] {
        if let Some(dir) = python_mlx_prefix(python.as_ref()) {
            return Ok(dir);
        }
        tried.push(format!("the `mlx` package of {}", python.to_string_lossy()));
    }
    Err(tried.join(", "))
}

/// Where `python`'s `mlx` package lies, found without importing `mlx.core`:
/// the CUDA build of that extension cannot load without an NVIDIA driver,
/// which a build machine need not have.
fn python_mlx_prefix(python: &Path) -> Option<PathBuf> {
    let output = Command::new(python)
        .args([
            "-c",
            "import importlib.util; print(*importlib.util.find_spec('mlx').submodule_search_locations, sep='\\n')",
        ])
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(PathBuf::from)
        .find(|dir| is_mlx_prefix(dir))
}

fn is_mlx_prefix(dir: &Path) -> bool {
    dir.join("include/mlx/mlx.h").is_file()
        && ["libmlx.so", "libmlx.dylib"]
            .iter()
            .any(|lib| dir.join("lib").join(lib).is_file())
}
