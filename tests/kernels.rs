//! Our CPU quantized matmul kernels against MLX's own `quantized_matmul` /
//! `gather_qmm` and against an independent numpy dequantize-and-matmul in
//! float64, for every format, group size, row count and instruction set.
//!
//! Tolerance: the largest difference divided by the largest magnitude of the
//! reference (so outputs that cancel to near zero are judged on the scale of
//! the whole product). Float32 sums of a few hundred terms stay near 1e-7 of
//! that; 1e-5 is the bound for "equal to float32 rounding".

mod common;

use common::*;
use safeguard_mlx::kernels::{self, ForeignExpert, Precision};
use safeguard_mlx::mlx::{Array, Dtype, QuantMode, QuantSpec, Quantized};

const EXACT: f64 = 1e-5;

fn specs() -> Vec<QuantSpec> {
    let mut specs = vec![QuantSpec {
        group_size: 32,
        bits: 4,
        mode: QuantMode::Mxfp4,
    }];
    for bits in [4, 8] {
        for group_size in [32, 64, 128] {
            specs.push(QuantSpec {
                group_size,
                bits,
                mode: QuantMode::Affine,
            });
        }
    }
    specs
}

fn quantized(shape: &[i32], spec: QuantSpec, seed: u64) -> Quantized {
    let (w, _) = rand_array(shape, seed);
    Quantized::quantize(&w, spec).unwrap()
}

/// Largest |a - b| over the largest |b|.
fn scaled_error(ours: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "element count differs");
    let scale = reference
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    let worst = ours
        .iter()
        .zip(reference)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    worst / scale
}

fn assert_scaled_close(label: &str, ours: &Array, reference: &Array) {
    assert_eq!(ours.shape(), reference.shape(), "{label}: shape");
    let err = scaled_error(&values(ours), &values(reference));
    assert!(err <= EXACT, "{label}: scaled error {err:e} > {EXACT:e}");
}

#[test]
fn dense_matmul_equals_mlx_and_numpy_for_every_format_and_row_count() {
    // 37 outputs: not a multiple of any tile width, SIMD width or thread count.
    let (n, k) = (37, 256);
    for (i, spec) in specs().into_iter().enumerate() {
        let q = quantized(&[n, k], spec, 100 + i as u64);
        for rows in [1, 3, 8, 64, 300] {
            let (x, xd) = rand_array(&[rows, k], 7 * rows as u64 + i as u64);
            let label = format!(
                "{:?} bits {} group {} rows {rows}",
                spec.mode, spec.bits, spec.group_size
            );
            let ours = kernels::quantized_matmul(&x, &q, Precision::Exact, None).unwrap();
            assert_scaled_close(&label, &ours, &q.matmul(&x, true).unwrap());
            if rows == 3 || rows == 64 {
                let mut inputs = quant_inputs(&q);
                inputs.push(f32_input("x", &xd, &[rows, k]));
                let reference = numpy1(
                    &format!("{DECODERS}\nout = x.astype(np.float64) @ {}.T", decode_expr(spec)),
                    &inputs,
                );
                assert_eq!(ours.shape(), reference.shape, "{label}");
                let err = scaled_error(&values(&ours), &reference.data);
                assert!(err <= EXACT, "{label} vs numpy: scaled error {err:e}");
            }
        }
    }
}

#[test]
fn leading_axes_are_kept() {
    let spec = specs()[0];
    let q = quantized(&[16, 64], spec, 3);
    let (x, _) = rand_array(&[2, 5, 64], 4);
    let ours = kernels::quantized_matmul(&x, &q, Precision::Exact, None).unwrap();
    assert_eq!(ours.shape(), vec![2, 5, 16]);
    assert_scaled_close("[2, 5, 64]", &ours, &q.matmul(&x, true).unwrap());
}

fn indices(values: &[u32], shape: &[i32]) -> Array {
    Array::from_slice(values, shape).unwrap()
}

#[test]
fn gathered_experts_equal_gather_qmm_with_repeated_unsorted_indices() {
    let (experts, n, k) = (6, 21, 128);
    for (i, spec) in specs().into_iter().enumerate() {
        let q = quantized(&[experts, n, k], spec, 200 + i as u64);
        let label = format!("{:?} bits {} group {}", spec.mode, spec.bits, spec.group_size);
        // The model's decode shape: x [B, L, 1, 1, K], indices [B, L, top_k]
        // with experts repeated across tokens, unsorted and out of order.
        let (x, _) = rand_array(&[2, 3, 1, 1, k], 300 + i as u64);
        let idx = indices(
            &[5, 0, 3, 3, 1, 5, 0, 2, 4, 1, 5, 2, 4, 4, 0, 2, 3, 1],
            &[2, 3, 3],
        );
        let ours =
            kernels::gather_matmul(&x, &q, &idx, ForeignExpert::Invalid, Precision::Exact, None).unwrap();
        let theirs = q.gather_matmul(&x, None, Some(&idx), true, false).unwrap();
        assert_eq!(ours.shape(), vec![2, 3, 3, 1, n], "{label}");
        assert_scaled_close(&format!("{label} decode"), &ours, &theirs);

        // The sorted prefill shape: x [P, 1, K] with one expert per row.
        let order = [0u32, 0, 0, 1, 2, 2, 4, 5, 5, 5, 5];
        let (x, _) = rand_array(&[order.len() as i32, 1, k], 400 + i as u64);
        let idx = indices(&order, &[order.len() as i32]);
        let ours =
            kernels::gather_matmul(&x, &q, &idx, ForeignExpert::Invalid, Precision::Exact, None).unwrap();
        let theirs = q.gather_matmul(&x, None, Some(&idx), true, true).unwrap();
        assert_scaled_close(&format!("{label} sorted"), &ours, &theirs);

        // Several rows per pair (M > 1).
        let (x, _) = rand_array(&[3, 4, k], 500 + i as u64);
        let idx = indices(&[2, 2, 0], &[3]);
        let ours =
            kernels::gather_matmul(&x, &q, &idx, ForeignExpert::Invalid, Precision::Exact, None).unwrap();
        let theirs = q.gather_matmul(&x, None, Some(&idx), true, false).unwrap();
        assert_eq!(ours.shape(), vec![3, 4, n]);
        assert_scaled_close(&format!("{label} M=4"), &ours, &theirs);
    }
}

#[test]
fn gathered_experts_equal_numpy() {
    let spec = specs()[0];
    let (experts, n, k) = (4, 9, 64);
    let q = quantized(&[experts, n, k], spec, 11);
    let (x, xd) = rand_array(&[5, 1, k], 12);
    let order = [3u32, 1, 3, 0, 2];
    let idx = indices(&order, &[5]);
    let ours = kernels::gather_matmul(&x, &q, &idx, ForeignExpert::Invalid, Precision::Exact, None).unwrap();
    let mut inputs = quant_inputs(&q);
    inputs.push(f32_input("x", &xd, &[5, 1, k]));
    inputs.push(input("idx", &order, &[5], "int64"));
    let reference = numpy1(
        &format!(
            "{DECODERS}\nW = {}\nout = np.stack([x[i].astype(np.float64) @ W[e].T for i, e in enumerate(idx)])",
            decode_expr(spec)
        ),
        &inputs,
    );
    assert_eq!(ours.shape(), reference.shape);
    let err = scaled_error(&values(&ours), &reference.data);
    assert!(err <= EXACT, "scaled error {err:e}");
}

/// Expert parallel: an index one past the last held expert names another
/// rank's. With [`ForeignExpert::Zero`] its pairs are exact zeros and the held
/// pairs equal MLX's `gather_qmm`; without it that index is an error naming
/// the pair, as any index out of range.
#[test]
fn foreign_expert_pairs_are_zeros_and_held_pairs_equal_gather_qmm() {
    let (experts, n, k) = (4u32, 21, 128);
    // Decode: repeated and unsorted, one token routed only elsewhere.
    let decode = [4u32, 0, 3, 3, 4, 4, 0, 2, 4, 1, 4, 2, 4, 4, 4, 2, 3, 1];
    // Sorted prefill: the model's sort puts the foreign pairs last.
    let sorted = [0u32, 0, 1, 2, 2, 3, 4, 4, 4];
    for (i, spec) in specs().into_iter().enumerate() {
        let q = quantized(&[experts as i32, n, k], spec, 1300 + i as u64);
        for m in [1, 5] {
            let label = format!(
                "{:?} bits {} group {} M={m}",
                spec.mode, spec.bits, spec.group_size
            );
            let (x, _) = rand_array(&[2, 3, 1, m, k], 1400 + 10 * i as u64 + m as u64);
            check_foreign_pairs(&label, &q, &x, &decode, &[2, 3, 3]);
            let (x, _) = rand_array(&[sorted.len() as i32, m, k], 1500 + 10 * i as u64 + m as u64);
            check_foreign_pairs(
                &format!("{label} sorted"),
                &q,
                &x,
                &sorted,
                &[sorted.len() as i32],
            );
        }
    }
    // The opt-in covers one index only: past it is still out of range.
    let q = quantized(&[2, 8, 64], specs()[0], 5);
    let (x, _) = rand_array(&[1, 1, 64], 6);
    let message = gather_error(&x, &q, &[3], &[1], ForeignExpert::Zero);
    assert!(
        message.contains("pair 0 names input 0 of 1 and expert 3 of 2"),
        "{message}"
    );
}

/// `order` (shaped `shape`) gathers `x` against `q`'s experts, where index
/// `experts` is foreign: zeros with the opt-in, an error without it.
fn check_foreign_pairs(label: &str, q: &Quantized, x: &Array, order: &[u32], shape: &[i32]) {
    let foreign = q.weight.dim(0).unwrap() as u32;
    let ours = kernels::gather_matmul(
        x,
        q,
        &indices(order, shape),
        ForeignExpert::Zero,
        Precision::Exact,
        None,
    )
    .unwrap();
    // MLX's reference on the held pairs; the foreign ones name expert 0 there.
    let held: Vec<u32> = order.iter().map(|&e| if e == foreign { 0 } else { e }).collect();
    let theirs = q
        .gather_matmul(x, None, Some(&indices(&held, shape)), true, false)
        .unwrap();
    assert_eq!(ours.shape(), theirs.shape(), "{label}");
    let (ours, theirs) = (values(&ours), values(&theirs));
    let per_pair = ours.len() / order.len();
    let (mut got, mut want) = (Vec::new(), Vec::new());
    for (pair, &e) in order.iter().enumerate() {
        let rows = pair * per_pair..(pair + 1) * per_pair;
        if e == foreign {
            assert!(
                ours[rows].iter().all(|&v| v == 0.0),
                "{label}: pair {pair} is another rank's but not zeros"
            );
        } else {
            got.extend_from_slice(&ours[rows.clone()]);
            want.extend_from_slice(&theirs[rows]);
        }
    }
    let err = scaled_error(&got, &want);
    assert!(
        err <= EXACT,
        "{label}: held pairs' scaled error {err:e} > {EXACT:e}"
    );

    let first = order.iter().position(|&e| e == foreign).unwrap();
    let message = gather_error(x, q, order, shape, ForeignExpert::Invalid);
    assert!(
        message.contains(&format!("pair {first} names"))
            && message.contains(&format!("expert {foreign} of {foreign}")),
        "{label}: {message}"
    );
}

/// The error evaluating the gather of `order` (shaped `shape`) fails with:
/// bad indices surface at evaluation, as an error rather than an abort.
fn gather_error(x: &Array, q: &Quantized, order: &[u32], shape: &[i32], foreign: ForeignExpert) -> String {
    kernels::gather_matmul(x, q, &indices(order, shape), foreign, Precision::Exact, None)
        .unwrap()
        .to_vec::<f32>()
        .unwrap_err()
        .to_string()
}

#[test]
fn every_instruction_set_agrees_with_the_portable_path() {
    let isas = kernels::instruction_sets();
    assert_eq!(isas.last().map(String::as_str), Some("generic"), "{isas:?}");
    assert_eq!(kernels::default_instruction_set(), isas[0]);
    for (i, spec) in specs().into_iter().enumerate() {
        let q = quantized(&[3, 45, 256], spec, 600 + i as u64);
        for rows in [1, 5, 40] {
            let (x, _) = rand_array(&[rows, 256], 700 + rows as u64);
            let idx = indices(&[2, 0], &[2]);
            let x3 = x.reshape(&[1, rows, 256]).unwrap();
            let run = |isa: &str| {
                let dense = kernels::quantized_matmul(&x, &first(&q), Precision::Exact, Some(isa)).unwrap();
                let gathered = kernels::gather_matmul(
                    &x3,
                    &q,
                    &idx,
                    ForeignExpert::Invalid,
                    Precision::Exact,
                    Some(isa),
                )
                .unwrap();
                (dense.to_vec::<f32>().unwrap(), gathered.to_vec::<f32>().unwrap())
            };
            let portable = run("generic");
            let mut fused: Option<(String, Outputs)> = None;
            for isa in &isas[..isas.len() - 1] {
                let got = run(isa);
                // Different lane counts per register, same arithmetic: bit for bit.
                if let Some((other, expected)) = &fused {
                    assert!(
                        bits_equal(&got, expected),
                        "{isa} differs from {other} ({spec:?}, rows {rows})"
                    );
                }
                fused.get_or_insert((isa.clone(), got.clone()));
                // The portable build may not fuse multiply-adds: float32 rounding apart.
                let err = scaled_error(&to_f64(&got.0), &to_f64(&portable.0))
                    .max(scaled_error(&to_f64(&got.1), &to_f64(&portable.1)));
                assert!(err <= 1e-6, "{isa} vs generic: {err:e} ({spec:?}, rows {rows})");
            }
        }
    }
}

fn first(q: &Quantized) -> Quantized {
    let take0 = |a: &Array| a.slice_axis(0, 0, 1).unwrap().squeeze(0).unwrap();
    Quantized {
        weight: take0(&q.weight),
        scales: take0(&q.scales),
        biases: q.biases.as_ref().map(take0),
        spec: q.spec,
    }
}

/// A dense and a gathered product, as read back.
type Outputs = (Vec<f32>, Vec<f32>);

fn bits_equal(a: &Outputs, b: &Outputs) -> bool {
    let same =
        |x: &[f32], y: &[f32]| x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
    same(&a.0, &b.0) && same(&a.1, &b.1)
}

#[test]
fn unsupported_inputs_are_errors_naming_the_problem() {
    let spec = |bits, group_size| QuantSpec {
        group_size,
        bits,
        mode: QuantMode::Affine,
    };
    let why = kernels::support(spec(3, 64), 256).unwrap_err();
    assert!(why.contains("3 bits"), "{why}");
    let why = kernels::support(spec(4, 16), 256).unwrap_err();
    assert!(why.contains("group size 16"), "{why}");
    assert!(kernels::support(spec(8, 128), 256).is_ok());

    let q = quantized(&[8, 64], spec(4, 32), 1);
    let (x, _) = rand_array(&[2, 64], 2);
    let message = kernels::quantized_matmul(&x.astype(Dtype::Bfloat16).unwrap(), &q, Precision::Exact, None)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("float32") && message.contains("bfloat16"),
        "{message}"
    );
    let (wrong_k, _) = rand_array(&[2, 96], 2);
    let message = kernels::quantized_matmul(&wrong_k, &q, Precision::Exact, None)
        .unwrap_err()
        .to_string();
    assert!(message.contains("96"), "{message}");
    let message = kernels::quantized_matmul(&x, &q, Precision::Exact, Some("sse9"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("sse9"), "{message}");

    // An expert index past the last expert fails the evaluation, not the process.
    let experts = quantized(&[2, 8, 64], spec(4, 32), 5);
    let (x, _) = rand_array(&[1, 1, 64], 6);
    let message = gather_error(&x, &experts, &[7], &[1], ForeignExpert::Invalid);
    assert!(message.contains("expert 7 of 2"), "{message}");
}

/// numpy: the exact product and the int8 rounding bound of the fast path,
/// stacked. Each input block of 32 is coded with step d = max|x| / 127, so an
/// input is off by at most d / 2, and the product by Σ_blocks d / 2 · Σ |w|.
fn exact_and_fast_bound(
    spec: QuantSpec,
    q: &Quantized,
    xd: &[f32],
    rows: i32,
    k: i32,
) -> (Vec<f64>, Vec<f64>) {
    let mut inputs = quant_inputs(q);
    inputs.push(f32_input("x", xd, &[rows, k]));
    let reference = numpy1(
        &format!(
            "{DECODERS}\nW = {}\nx = x.astype(np.float64)\n\
             d = np.abs(x.reshape(x.shape[0], -1, 32)).max(-1) / 127\n\
             wabs = np.abs(W).reshape(W.shape[0], -1, 32).sum(-1)\n\
             out = np.stack([x @ W.T, (d / 2) @ wabs.T])",
            decode_expr(spec)
        ),
        &inputs,
    );
    let half = reference.data.len() / 2;
    (reference.data[..half].to_vec(), reference.data[half..].to_vec())
}

#[test]
fn fast_products_stay_within_the_int8_rounding_bound() {
    let (n, k) = (37, 256);
    for (i, spec) in specs().into_iter().enumerate() {
        let q = quantized(&[n, k], spec, 800 + i as u64);
        for rows in [1, 3, 8, 64, 300] {
            let (x, xd) = rand_array(&[rows, k], 900 + rows as u64 + i as u64);
            let label = format!(
                "{:?} bits {} group {} rows {rows}",
                spec.mode, spec.bits, spec.group_size
            );
            let ours = values(&kernels::quantized_matmul(&x, &q, Precision::Fast, None).unwrap());
            let (exact, bound) = exact_and_fast_bound(spec, &q, &xd, rows, k);
            let scale = exact.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let mut differs = false;
            for (j, ((o, e), b)) in ours.iter().zip(&exact).zip(&bound).enumerate() {
                assert!(
                    (o - e).abs() <= b + EXACT * scale,
                    "{label}: element {j} is {o}, exact {e}, bound {b}"
                );
                differs |= (o - e).abs() > EXACT * scale;
            }
            assert!(
                differs,
                "{label}: int8 inputs should not reproduce float32 results exactly"
            );
        }
    }
}

#[test]
fn fast_gathered_experts_match_fast_dense_per_expert() {
    let (experts, n, k) = (5, 19, 128);
    for (i, spec) in specs().into_iter().enumerate() {
        let q = quantized(&[experts, n, k], spec, 1000 + i as u64);
        let order = [4u32, 1, 4, 0, 3, 3];
        let (x, _) = rand_array(&[order.len() as i32, 1, k], 1100 + i as u64);
        let idx = indices(&order, &[6]);
        let gathered = kernels::gather_matmul(&x, &q, &idx, ForeignExpert::Invalid, Precision::Fast, None)
            .unwrap()
            .to_vec::<f32>()
            .unwrap();
        for (p, &e) in order.iter().enumerate() {
            let take = |a: &Array| {
                a.slice_axis(0, e as i32, e as i32 + 1)
                    .unwrap()
                    .squeeze(0)
                    .unwrap()
            };
            let expert = Quantized {
                weight: take(&q.weight),
                scales: take(&q.scales),
                biases: q.biases.as_ref().map(take),
                spec,
            };
            let row = x
                .slice_axis(0, p as i32, p as i32 + 1)
                .unwrap()
                .reshape(&[1, k])
                .unwrap();
            let dense = kernels::quantized_matmul(&row, &expert, Precision::Fast, None)
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            let same = dense
                .iter()
                .zip(&gathered[p * n as usize..(p + 1) * n as usize])
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "{spec:?}: pair {p} (expert {e}) differs from the dense product"
            );
        }
    }
}

#[test]
fn fast_instruction_sets_agree_bit_for_bit() {
    let isas = kernels::instruction_sets();
    for (i, spec) in specs().into_iter().enumerate() {
        let q = quantized(&[45, 256], spec, 1200 + i as u64);
        for rows in [1, 5, 40] {
            let (x, _) = rand_array(&[rows, 256], 1300 + rows as u64);
            let run = |isa: &str| {
                kernels::quantized_matmul(&x, &q, Precision::Fast, Some(isa))
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap()
            };
            let portable = run("generic");
            for isa in &isas[..isas.len() - 1] {
                let got = run(isa);
                // Integer dot products are exact everywhere; the float steps
                // after them fuse or not with the instruction set.
                let err = scaled_error(&to_f64(&got), &to_f64(&portable));
                assert!(err <= 1e-6, "{isa} vs generic: {err:e} ({spec:?}, rows {rows})");
                if isa != &isas[0] {
                    let first = run(&isas[0]);
                    assert!(
                        got.iter().zip(&first).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{isa} differs from {} ({spec:?}, rows {rows})",
                        isas[0]
                    );
                }
            }
        }
    }
}

/// `safeguard generate` greedy on a fixture: (tokens, logprobs) as JSON text.
fn generate(model: &std::path::Path, kernels: &str, threads: &str) -> (Vec<u64>, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_safeguard"))
        .args(["generate", "-m", model.to_str().unwrap(), "--prompt-tokens"])
        .arg("200006,17360,200008,1000,2000,3000,4000,5000,6000,7000,8000,9000")
        .args(["--temp", "0", "--max-tokens", "24", "--logprobs", "3", "--json"])
        .args(["--cpu-kernels", kernels])
        .env("SAFEGUARD_THREADS", threads)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{stderr}");
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let tokens = out["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    (tokens, out["logprobs"].to_string(), stderr)
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let model = fixture("b-mxfp4");
    for kernels in ["exact", "fast"] {
        let one = generate(&model, kernels, "1");
        let three = generate(&model, kernels, "3");
        assert_eq!(one.0, three.0, "{kernels}: tokens");
        assert_eq!(one.1, three.1, "{kernels}: logprobs");
    }
}

/// A copy of the bf16 fixture with every matrix quantized to affine 3-bit:
/// MLX computes it, our kernels do not.
fn three_bit_model() -> tempfile::TempDir {
    use safeguard_mlx::mlx::safetensors;
    use std::collections::HashMap;
    let source = fixture("a-bf16");
    let dir = tempfile::tempdir().unwrap();
    let spec = QuantSpec {
        group_size: 64,
        bits: 3,
        mode: QuantMode::Affine,
    };
    let mut tensors = HashMap::new();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.ends_with(".safetensors") {
            for (tensor, array) in safetensors::load(&path).unwrap().tensors {
                match tensor.strip_suffix(".weight") {
                    Some(module) if array.shape().len() >= 2 => {
                        let q = Quantized::quantize(&array.astype(Dtype::Float32).unwrap(), spec).unwrap();
                        tensors.insert(tensor.clone(), q.weight);
                        tensors.insert(
                            format!("{module}.scales"),
                            q.scales.astype(Dtype::Bfloat16).unwrap(),
                        );
                        tensors.insert(
                            format!("{module}.biases"),
                            q.biases.unwrap().astype(Dtype::Bfloat16).unwrap(),
                        );
                    }
                    _ => {
                        tensors.insert(tensor, array);
                    }
                }
            }
        } else if path.is_file() && name != "config.json" && name != "model.safetensors.index.json" {
            std::os::unix::fs::symlink(&path, dir.path().join(&name)).unwrap();
        }
    }
    safetensors::save(&dir.path().join("model.safetensors"), &tensors, &HashMap::new()).unwrap();
    let mut config = common::config(&source);
    config["quantization"] = serde_json::json!({"group_size": 64, "bits": 3, "mode": "affine"});
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

#[test]
fn a_quantization_without_a_kernel_falls_back_to_mlx_with_a_warning() {
    let model = three_bit_model();
    let (tokens, logprobs, stderr) = generate(model.path(), "exact", "2");
    assert!(
        stderr.contains("no exact CPU kernel") && stderr.contains("3 bits") && stderr.contains(".weight"),
        "the fallback names the tensor and why: {stderr}"
    );
    let (mlx_tokens, mlx_logprobs, mlx_stderr) = generate(model.path(), "mlx", "2");
    assert!(!mlx_stderr.contains("CPU kernel"), "{mlx_stderr}");
    assert_eq!(tokens, mlx_tokens);
    assert_eq!(logprobs, mlx_logprobs);
}

/// A row's product must not depend on the rows computed beside it: batched
/// decoding and the experts' varying token counts rely on it to give every
/// sequence the tokens it gets alone. Rows that cross the panel and tiling
/// thresholds (1, 3, 8, 64, 300) against the same rows one at a time, bit for
/// bit, for every instruction set and precision.
#[test]
fn a_rows_product_does_not_depend_on_the_rows_beside_it() {
    let (n, k) = (37, 256);
    for (i, spec) in specs().into_iter().enumerate() {
        let q = quantized(&[n, k], spec, 1400 + i as u64);
        let (x, _) = rand_array(&[300, k], 1500 + i as u64);
        for isa in kernels::instruction_sets() {
            for precision in [Precision::Exact, Precision::Fast] {
                let product = |rows: &Array| {
                    kernels::quantized_matmul(rows, &q, precision, Some(&isa))
                        .unwrap()
                        .to_vec::<f32>()
                        .unwrap()
                };
                let alone: Vec<Vec<f32>> = (0..300)
                    .map(|r| product(&x.slice_axis(0, r, r + 1).unwrap()))
                    .collect();
                for rows in [1, 3, 8, 64, 300] {
                    let together = product(&x.slice_axis(0, 0, rows).unwrap());
                    for (r, row) in together.chunks(n as usize).enumerate() {
                        assert!(
                            row.iter().zip(&alone[r]).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{isa} {precision:?} {spec:?}: row {r} of {rows} differs from the row alone"
                        );
                    }
                }
            }
        }
    }
}
