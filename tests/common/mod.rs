//! Shared helpers for the binding tests: seeded inputs, the numpy reference,
//! and tolerant comparisons.
#![allow(dead_code)] // each test binary uses its own subset

pub mod ranks;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use safeguard_mlx::mlx::{Array, Element, QuantMode, QuantSpec, Quantized};
use serde_json::{json, Value};

/// The Python of `make setup`, which holds numpy and the other references.
pub fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run `make setup` first (the tests compare against its numpy)",
        python.display()
    );
    python
}

/// Runs the Python client `tests/SCRIPT` with `args`; it prints "ok" last
/// when every check passed.
pub fn run_client(script: &str, args: &[&str]) {
    let output = Command::new(python())
        .arg(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests")
                .join(script),
        )
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A folder `make fixtures` generated under `target/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/fixtures")
        .join(name);
    assert!(
        dir.is_dir(),
        "fixture {} is missing: run `make fixtures` (or `make test`, which runs it)",
        dir.display()
    );
    dir
}

/// A folder that links to every file of a fixture model; tests replace the
/// files they change with [`write`].
pub fn model_copy(name: &str) -> tempfile::TempDir {
    let source = fixture(name);
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::os::unix::fs::symlink(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Replaces a (linked) file by a real one holding `contents`.
pub fn write(dir: &std::path::Path, file: &str, contents: &[u8]) {
    let path = dir.join(file);
    let _ = std::fs::remove_file(&path);
    std::fs::write(path, contents).unwrap();
}

/// Rewrites a JSON file of a [`model_copy`].
pub fn edit_json(dir: &std::path::Path, file: &str, edit: impl FnOnce(&mut Value)) {
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
    edit(&mut value);
    write(dir, file, value.to_string().as_bytes());
}

/// A fixture model's config.json.
pub fn config(dir: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// A deterministic pseudo-random vector in [-scale, scale) (xorshift64*).
pub fn rand_vec(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
            (bits as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A float32 array of the given shape filled by [`rand_vec`].
pub fn rand_array(shape: &[i32], seed: u64) -> (Array, Vec<f32>) {
    let len = shape.iter().product::<i32>() as usize;
    let data = rand_vec(len, seed, 1.0);
    (Array::from_slice(&data, shape).unwrap(), data)
}

/// An input for [`numpy`]: name, values, shape and numpy dtype name.
pub struct Input<'a> {
    pub name: &'a str,
    pub data: Vec<f64>,
    pub shape: Vec<i32>,
    pub dtype: &'a str,
}

pub fn input<'a, T: Copy + Into<f64>>(name: &'a str, data: &[T], shape: &[i32], dtype: &'a str) -> Input<'a> {
    Input {
        name,
        data: data.iter().map(|&v| v.into()).collect(),
        shape: shape.to_vec(),
        dtype,
    }
}

pub fn f32_input<'a>(name: &'a str, data: &[f32], shape: &[i32]) -> Input<'a> {
    input(name, data, shape, "float32")
}

/// Runs a reference script of `tests/` with `.venv`'s Python: one JSON
/// request on stdin, one JSON answer on stdout.
fn run_reference(script: &str, request: &Value, what: &str) -> Value {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let mut child = Command::new(python())
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start the {what} reference: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{what} reference failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs the openai-harmony reference (`tests/harmony_ref.py`, which says
/// what `request` holds) and returns its answer.
pub fn harmony(request: Value) -> Value {
    run_reference("harmony_ref.py", &request, "openai-harmony")
}

/// Runs the `jsonschema` judge (`tests/jsonschema_ref.py`, which says what
/// `request` holds) and returns its answer.
pub fn jsonschema(request: Value) -> Value {
    run_reference("jsonschema_ref.py", &request, "jsonschema")
}

/// One numpy result: values as f64 in row-major order, and the shape.
#[derive(Debug)]
pub struct Reference {
    pub data: Vec<f64>,
    pub shape: Vec<i32>,
}

/// Runs `code` in numpy with the inputs bound by name; `code` assigns `out`.
pub fn numpy(code: &str, inputs: &[Input<'_>]) -> Vec<Reference> {
    let inputs: serde_json::Map<String, Value> = inputs
        .iter()
        .map(|i| {
            (
                i.name.to_string(),
                json!({"data": i.data, "shape": i.shape, "dtype": i.dtype}),
            )
        })
        .collect();
    let request = json!({"inputs": inputs, "code": code});
    let results = run_reference("common/numpy_ref.py", &request, &format!("numpy (`{code}`)"));
    let results = results.as_array().expect("a list of results").clone();
    results
        .into_iter()
        .map(|r| Reference {
            data: r["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect(),
            shape: r["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap() as i32)
                .collect(),
        })
        .collect()
}

/// The one result of a numpy expression.
pub fn numpy1(code: &str, inputs: &[Input<'_>]) -> Reference {
    let mut results = numpy(code, inputs);
    assert_eq!(results.len(), 1, "`{code}` should give one output");
    results.remove(0)
}

/// Reads an array back as f64 through float32 (exact for integers below 2^24),
/// which every backend supports; Metal has no float64.
pub fn values(a: &Array) -> Vec<f64> {
    use safeguard_mlx::mlx::Dtype;
    let a = a.astype(Dtype::Float32).unwrap();
    a.to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
}

/// Asserts shape equality and |ours - reference| <= atol + rtol * |reference|.
pub fn assert_close(ours: &Array, reference: &Reference, atol: f64, rtol: f64) {
    assert_eq!(ours.shape(), reference.shape, "shape differs from numpy");
    assert_values_close(&values(ours), &reference.data, atol, rtol);
}

pub fn assert_values_close(ours: &[f64], expected: &[f64], atol: f64, rtol: f64) {
    assert_eq!(ours.len(), expected.len(), "element count differs");
    let worst = ours
        .iter()
        .zip(expected)
        .enumerate()
        .map(|(i, (a, b))| (i, (a - b).abs() - (atol + rtol * b.abs())))
        .fold(
            (0, f64::NEG_INFINITY),
            |best, cur| if cur.1 > best.1 { cur } else { best },
        );
    assert!(
        worst.1 <= 0.0,
        "element {} differs: ours {} vs reference {} (atol {atol}, rtol {rtol})",
        worst.0,
        ours[worst.0],
        expected[worst.0]
    );
}

/// Exact equality with a reference (for integer results).
pub fn assert_exact(ours: &Array, reference: &Reference) {
    assert_eq!(ours.shape(), reference.shape, "shape differs from numpy");
    assert_eq!(values(ours), reference.data);
}

pub fn to_f64<T: Element + Into<f64>>(v: &[T]) -> Vec<f64> {
    v.iter().map(|&x| x.into()).collect()
}

/// numpy decoders of MLX's packing: uint32 words, lowest bits first.
pub const DECODERS: &str = r#"
def unpack(w, bits):
    w = w.astype(np.uint64)
    per_word = 32 // bits
    parts = [(w >> (bits * i)) & ((1 << bits) - 1) for i in range(per_word)]
    return np.stack(parts, axis=-1).reshape(*w.shape[:-1], w.shape[-1] * per_word)

E2M1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])

def deq_mxfp4(w, scales, group=32):
    codes = E2M1[unpack(w, 4)]
    scale = np.exp2(scales.astype(np.float64) - 127.0)
    grouped = codes.reshape(*codes.shape[:-1], -1, group) * scale[..., None]
    return grouped.reshape(codes.shape)

def deq_affine(w, scales, biases, bits, group):
    q = unpack(w, bits).astype(np.float64)
    grouped = q.reshape(*q.shape[:-1], -1, group) * scales[..., None] + biases[..., None]
    return grouped.reshape(q.shape)
"#;

/// The quantized parts as numpy inputs named w, scales (and biases).
pub fn quant_inputs(q: &Quantized) -> Vec<Input<'static>> {
    let mut inputs = vec![
        input(
            "w",
            &q.weight.to_vec::<u32>().unwrap(),
            &q.weight.shape(),
            "uint32",
        ),
        Input {
            name: "scales",
            data: values(&q.scales),
            shape: q.scales.shape(),
            dtype: if q.spec.mode == QuantMode::Mxfp4 {
                "uint8"
            } else {
                "float64"
            },
        },
    ];
    if let Some(b) = &q.biases {
        inputs.push(Input {
            name: "biases",
            data: values(b),
            shape: b.shape(),
            dtype: "float64",
        });
    }
    inputs
}

pub fn decode_expr(s: QuantSpec) -> String {
    match s.mode {
        QuantMode::Mxfp4 => "deq_mxfp4(w, scales)".into(),
        QuantMode::Affine => format!("deq_affine(w, scales, biases, {}, {})", s.bits, s.group_size),
    }
}

/// The sha256 of `bytes` by Python's hashlib, in hex.
pub fn sha256_by_python(bytes: &[u8]) -> String {
    let output = Command::new(python())
        .args([
            "-c",
            "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}
