//! Quantization: MLX's packed formats are decoded independently in numpy
//! (E2M1 codes with E8M0 scales for MXFP4; q·scale + bias for affine), then
//! the quantized matmuls are compared with dense matmuls on those weights.

mod common;

use common::*;
use safeguard_mlx::mlx::{Array, Dtype, Error, QuantMode, QuantSpec, Quantized};

fn spec(mode: QuantMode, group_size: i32, bits: i32) -> QuantSpec {
    QuantSpec {
        group_size,
        bits,
        mode,
    }
}

/// Asserts each dequantized value is a nearest point of the representable
/// values `grid` ([..., levels], built by `grid_code` from the inputs) to the
/// original: quantization rounded to nearest, clipping at the grid's ends.
fn assert_nearest_grid_point(
    dequantized: &Array,
    original: &[f32],
    grid_code: &str,
    inputs: &[Input<'_>],
    atol: f64,
) {
    let nearest = numpy1(
        &format!("{DECODERS}\n{grid_code}\nout = np.abs(x[..., None] - grid).min(-1)"),
        inputs,
    );
    let err: Vec<f64> = values(dequantized)
        .iter()
        .zip(original)
        .map(|(d, &x)| (d - f64::from(x)).abs())
        .collect();
    assert_values_close(&err, &nearest.data, atol, 0.0);
}

#[test]
fn mxfp4_round_trip_is_nearest_e2m1_with_e8m0_scales() {
    let (w, dw) = rand_array(&[8, 128], 40);
    let s = spec(QuantMode::Mxfp4, 32, 4);
    let q = Quantized::quantize(&w, s).unwrap();
    assert_eq!(q.weight.shape(), vec![8, 16]);
    assert_eq!(q.weight.dtype(), Dtype::Uint32);
    assert_eq!(q.scales.shape(), vec![8, 4]);
    assert_eq!(q.scales.dtype(), Dtype::Uint8, "E8M0 scales are bytes");
    assert!(q.biases.is_none(), "MXFP4 has no biases");

    let mut inputs = quant_inputs(&q);
    let ours = q.dequantize(Some(Dtype::Float32)).unwrap();
    assert_eq!(
        q.dequantize(None).unwrap().dtype(),
        Dtype::Bfloat16,
        "MLX's default for byte scales"
    );
    let decoded = numpy1(&format!("{DECODERS}\nout = deq_mxfp4(w, scales)"), &inputs);
    assert_close(&ours, &decoded, 0.0, 0.0);

    inputs.push(f32_input("x", &dw, &[8, 128]));
    assert_nearest_grid_point(
        &ours,
        &dw,
        "scale = np.repeat(np.exp2(scales.astype(np.float64) - 127.0), 32, axis=-1)\n\
         grid = E2M1[None, None, :] * scale[..., None]",
        &inputs,
        1e-7,
    );
}

#[test]
fn affine_round_trip_is_nearest_grid_point() {
    for bits in [4, 8] {
        let (w, dw) = rand_array(&[4, 256], 41 + bits as u64);
        let s = spec(QuantMode::Affine, 64, bits);
        let q = Quantized::quantize(&w, s).unwrap();
        assert_eq!(q.weight.shape(), vec![4, 256 * bits / 32]);
        assert_eq!(q.scales.shape(), vec![4, 4]);
        assert_eq!(q.biases.as_ref().unwrap().shape(), vec![4, 4]);

        let mut inputs = quant_inputs(&q);
        let ours = q.dequantize(Some(Dtype::Float32)).unwrap();
        assert_eq!(
            q.dequantize(None).unwrap().dtype(),
            Dtype::Float32,
            "the scales' dtype"
        );
        let decoded = numpy1(&format!("{DECODERS}\nout = {}", decode_expr(s)), &inputs);
        assert_close(&ours, &decoded, 1e-6, 1e-6);

        inputs.push(f32_input("x", &dw, &[4, 256]));
        assert_nearest_grid_point(
            &ours,
            &dw,
            &format!(
                "scale = np.repeat(scales, 64, axis=-1)[..., None]\n\
                 bias = np.repeat(biases, 64, axis=-1)[..., None]\n\
                 grid = bias + scale * np.arange(2 ** {bits})"
            ),
            &inputs,
            1e-6,
        );
    }
}

#[test]
fn quantized_matmul_equals_dense_matmul_on_decoded_weights() {
    let (x, dx) = rand_array(&[3, 128], 50);
    for s in [
        spec(QuantMode::Mxfp4, 32, 4),
        spec(QuantMode::Affine, 64, 4),
        spec(QuantMode::Affine, 64, 8),
    ] {
        let (w, _) = rand_array(&[16, 128], 51);
        let q = Quantized::quantize(&w, s).unwrap();
        let mut inputs = quant_inputs(&q);
        inputs.push(f32_input("x", &dx, &[3, 128]));
        let expected = numpy1(&format!("{DECODERS}\nout = x @ {}.T", decode_expr(s)), &inputs);
        assert_close(&q.matmul(&x, true).unwrap(), &expected, 1e-4, 1e-4);
    }
    // transpose = false multiplies by W as stored: [in, out] quantized along out.
    let (w, _) = rand_array(&[128, 64], 52);
    let s = spec(QuantMode::Affine, 64, 8);
    let q = Quantized::quantize(&w, s).unwrap();
    let mut inputs = quant_inputs(&q);
    inputs.push(f32_input("x", &dx, &[3, 128]));
    let expected = numpy1(&format!("{DECODERS}\nout = x @ {}", decode_expr(s)), &inputs);
    assert_close(&q.matmul(&x, false).unwrap(), &expected, 1e-4, 1e-4);
}

#[test]
fn gather_qmm_equals_gather_then_dense_matmul() {
    // The MoE shape: x [tokens, 1, 1, in], experts [E, out, in], one expert per row.
    let (x, dx) = rand_array(&[6, 1, 1, 64], 60);
    let experts = [3u32, 0, 3, 1, 2, 0];
    let rhs = Array::from_slice(&experts, &[6, 1]).unwrap();
    for s in [
        spec(QuantMode::Mxfp4, 32, 4),
        spec(QuantMode::Affine, 64, 4),
        spec(QuantMode::Affine, 32, 8),
    ] {
        let (w, _) = rand_array(&[4, 16, 64], 61);
        let q = Quantized::quantize(&w, s).unwrap();
        let mut inputs = quant_inputs(&q);
        inputs.push(f32_input("x", &dx, &[6, 1, 1, 64]));
        inputs.push(input("experts", &experts, &[6, 1], "int64"));
        let expected = numpy1(
            &format!(
                "{DECODERS}\nd = {}\n\
                 out = np.stack([[x[t, 0] @ d[experts[t, 0]].T] for t in range(6)])",
                decode_expr(s)
            ),
            &inputs,
        );
        let ours = q.gather_matmul(&x, None, Some(&rhs), true, false).unwrap();
        assert_close(&ours, &expected, 1e-4, 1e-4);

        // The same through MLX's dense path: take the decoded experts, then matmul.
        let dense = q.dequantize(Some(Dtype::Float32)).unwrap();
        let picked = dense.take(&rhs, 0).unwrap().swapaxes(-1, -2).unwrap();
        let via_dense = x.matmul(&picked).unwrap();
        let via_dense = Reference {
            data: values(&via_dense),
            shape: via_dense.shape(),
        };
        assert_close(&ours, &via_dense, 1e-4, 1e-4);

        // Sorted indices (what the MoE does for long inputs) give the same rows.
        let order = [1u32, 5, 3, 4, 0, 2];
        let sorted: Vec<u32> = order.iter().map(|&t| experts[t as usize]).collect();
        let x_rows = x.reshape(&[6, 1, 64]).unwrap();
        let got = q
            .gather_matmul(
                &x_rows,
                Some(&Array::from_slice(&order, &[6]).unwrap()),
                Some(&Array::from_slice(&sorted, &[6]).unwrap()),
                true,
                true,
            )
            .unwrap();
        let mut inputs = quant_inputs(&q);
        inputs.push(f32_input("x", &dx, &[6, 1, 1, 64]));
        inputs.push(input("order", &order, &[6], "int64"));
        inputs.push(input("sorted_", &sorted, &[6], "int64"));
        let want = numpy1(
            &format!(
                "{DECODERS}\nd = {}\nout = np.stack([x[t, 0] @ d[e].T for t, e in zip(order, sorted_)])",
                decode_expr(s)
            ),
            &inputs,
        );
        assert_close(&got, &want, 1e-4, 1e-4);
    }
}

#[test]
fn bad_quantization_requests_are_errors() {
    assert!(matches!("nvfp8".parse::<QuantMode>(), Err(Error::Invalid { .. })));
    assert_eq!("mxfp4".parse::<QuantMode>().unwrap(), QuantMode::Mxfp4);
    let (w, _) = rand_array(&[4, 64], 70);
    // MXFP4 is defined for groups of 32 only; MLX says so instead of aborting.
    let err = Quantized::quantize(&w, spec(QuantMode::Mxfp4, 64, 4)).unwrap_err();
    assert!(matches!(err, Error::Mlx { op: "quantize", .. }), "{err}");
    // An inner size that is not a multiple of the group.
    let (odd, _) = rand_array(&[4, 48], 71);
    assert!(Quantized::quantize(&odd, spec(QuantMode::Affine, 64, 4)).is_err());
}
