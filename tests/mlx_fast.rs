//! mlx::core::fast kernels against their closed forms written in numpy.

mod common;

use common::*;
use safeguard_mlx::mlx::fast::{self, AttentionMask, RopeFrequencies};
use safeguard_mlx::mlx::{Array, Dtype};

#[test]
fn rms_norm_matches_closed_form() {
    let (x, dx) = rand_array(&[2, 3, 16], 80);
    let (w, dw) = rand_array(&[16], 81);
    let inputs = [f32_input("x", &dx, &[2, 3, 16]), f32_input("w", &dw, &[16])];
    let normed = "x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5)";
    assert_close(
        &fast::rms_norm(&x, Some(&w), 1e-5).unwrap(),
        &numpy1(&format!("out = {normed} * w"), &inputs),
        1e-6,
        1e-5,
    );
    assert_close(
        &fast::rms_norm(&x, None, 1e-5).unwrap(),
        &numpy1(&format!("out = {normed}"), &inputs),
        1e-6,
        1e-5,
    );
}

/// RoPE in numpy: positions offset.., angle = pos·scale/wavelength per pair;
/// `traditional` pairs adjacent features, otherwise the two halves.
const ROPE: &str = r#"
def rope(x, dims, traditional, wavelengths, scale, offset):
    L = x.shape[-2]
    pos = (np.arange(L) + offset)[:, None] * scale
    theta = pos / wavelengths[None, :]
    cos, sin = np.cos(theta), np.sin(theta)
    r, rest = x[..., :dims].astype(np.float64), x[..., dims:]
    if traditional:
        a, b = r[..., 0::2], r[..., 1::2]
        out = np.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(r.shape)
    else:
        a, b = r[..., : dims // 2], r[..., dims // 2 :]
        out = np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return np.concatenate([out, rest], axis=-1)
"#;

#[test]
fn rope_with_base_matches_closed_form() {
    let (x, dx) = rand_array(&[1, 2, 5, 32], 82);
    let inputs = [f32_input("x", &dx, &[1, 2, 5, 32])];
    for (dims, traditional, scale, offset) in [(32, false, 1.0, 0), (32, false, 1.0, 7), (16, true, 0.5, 3)] {
        let ours = fast::rope(
            &x,
            dims,
            traditional,
            RopeFrequencies::Base(10000.0),
            scale,
            offset,
        )
        .unwrap();
        let expected = numpy1(
            &format!(
                "{ROPE}\nwl = 10000.0 ** (np.arange(0, {dims}, 2) / {dims})\n\
                 out = rope(x, {dims}, {}, wl, {scale}, {offset})",
                if traditional { "True" } else { "False" }
            ),
            &inputs,
        );
        assert_close(&ours, &expected, 2e-5, 1e-4);
    }
}

#[test]
fn rope_with_explicit_frequencies_matches_closed_form() {
    // YaRN hands fast::rope one wavelength per rotated pair.
    let (x, dx) = rand_array(&[2, 1, 4, 16], 83);
    let wavelengths: Vec<f32> = (0..8).map(|i| 1.0 + 3.7f32.powi(i)).collect();
    let freqs = Array::from_slice(&wavelengths, &[8]).unwrap();
    let ours = fast::rope(&x, 16, false, RopeFrequencies::Explicit(&freqs), 1.0, 11).unwrap();
    let expected = numpy1(
        &format!("{ROPE}\nout = rope(x, 16, False, wl.astype(np.float64), 1.0, 11)"),
        &[
            f32_input("x", &dx, &[2, 1, 4, 16]),
            f32_input("wl", &wavelengths, &[8]),
        ],
    );
    assert_close(&ours, &expected, 2e-5, 1e-4);
}

/// Attention in numpy: GQA by repeating kv heads, masks, and sinks as one
/// extra logit per head that joins the softmax and is then dropped.
const ATTENTION: &str = r#"
def attention(q, k, v, scale, mask=None, sinks=None):
    q, k, v = (t.astype(np.float64) for t in (q, k, v))
    rep = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = q @ k.swapaxes(-1, -2) * scale
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    if sinks is not None:
        sink = np.broadcast_to(sinks.reshape(1, -1, 1, 1), s.shape[:-1] + (1,))
        s = np.concatenate([s, sink], axis=-1)
    p = np.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    if sinks is not None:
        p = p[..., :-1]
    return p @ v

def causal(lq, lk):
    return np.arange(lk)[None, :] <= np.arange(lq)[:, None] + (lk - lq)
"#;

struct Qkv {
    q: Array,
    k: Array,
    v: Array,
    inputs: Vec<Input<'static>>,
}

fn qkv(heads: i32, kv_heads: i32, lq: i32, lk: i32, seed: u64) -> Qkv {
    let d = 64;
    let (q, dq) = rand_array(&[1, heads, lq, d], seed);
    let (k, dk) = rand_array(&[1, kv_heads, lk, d], seed + 1);
    let (v, dv) = rand_array(&[1, kv_heads, lk, d], seed + 2);
    let inputs = vec![
        f32_input("q", &dq, &[1, heads, lq, d]),
        f32_input("k", &dk, &[1, kv_heads, lk, d]),
        f32_input("v", &dv, &[1, kv_heads, lk, d]),
    ];
    Qkv { q, k, v, inputs }
}

#[test]
fn attention_without_mask_or_sinks() {
    let t = qkv(4, 4, 3, 3, 90);
    let ours =
        fast::scaled_dot_product_attention(&t.q, &t.k, &t.v, 0.125, AttentionMask::None, None).unwrap();
    let expected = numpy1(
        &format!("{ATTENTION}\nout = attention(q, k, v, 0.125)"),
        &t.inputs,
    );
    assert_close(&ours, &expected, 1e-5, 1e-4);
}

#[test]
fn causal_grouped_attention_with_sinks_matches_naive_formula() {
    let sink_values = [0.5f32, -1.0, 2.0, 0.0];
    let sinks = Array::from_slice(&sink_values, &[4]).unwrap();
    // Prefill continuing a cache (3 new queries over 7 keys) and a one-token decode step.
    for (lq, lk) in [(3, 7), (1, 9), (6, 6)] {
        let mut t = qkv(4, 2, lq, lk, 91 + lq as u64);
        t.inputs.push(f32_input("sinks", &sink_values, &[4]));
        let ours =
            fast::scaled_dot_product_attention(&t.q, &t.k, &t.v, 0.125, AttentionMask::Causal, Some(&sinks))
                .unwrap();
        let expected = numpy1(
            &format!("{ATTENTION}\nout = attention(q, k, v, 0.125, causal({lq}, {lk}), sinks)"),
            &t.inputs,
        );
        assert_close(&ours, &expected, 1e-5, 1e-4);
    }
}

#[test]
fn boolean_and_additive_array_masks_with_sinks() {
    // A sliding window of 3: query i sees keys i-2..=i.
    let (lq, lk) = (5, 5);
    let window: Vec<u8> = (0..lq)
        .flat_map(|i| (0..lk).map(move |j| u8::from(j <= i && i - j < 3)))
        .collect();
    let mask = Array::from_slice(&window, &[lq, lk])
        .unwrap()
        .astype(Dtype::Bool)
        .unwrap();
    let sink_values = [1.5f32, -0.5];
    let sinks = Array::from_slice(&sink_values, &[2]).unwrap();
    let mut t = qkv(2, 1, lq, lk, 95);
    t.inputs.push(f32_input("sinks", &sink_values, &[2]));
    t.inputs.push(input("window", &window, &[lq, lk], "bool"));
    let ours = fast::scaled_dot_product_attention(
        &t.q,
        &t.k,
        &t.v,
        0.125,
        AttentionMask::Array(&mask),
        Some(&sinks),
    )
    .unwrap();
    let expected = numpy1(
        &format!("{ATTENTION}\nout = attention(q, k, v, 0.125, window, sinks)"),
        &t.inputs,
    );
    assert_close(&ours, &expected, 1e-5, 1e-4);

    let bias_values = rand_vec((lq * lk) as usize, 96, 2.0);
    let bias = Array::from_slice(&bias_values, &[lq, lk]).unwrap();
    t.inputs.push(f32_input("bias", &bias_values, &[lq, lk]));
    let ours = fast::scaled_dot_product_attention(
        &t.q,
        &t.k,
        &t.v,
        0.125,
        AttentionMask::Array(&bias),
        Some(&sinks),
    )
    .unwrap();
    let expected = numpy1(
        &format!("{ATTENTION}\nout = attention(q, k, v, 0.125, bias, sinks)"),
        &t.inputs,
    );
    assert_close(&ours, &expected, 1e-5, 1e-4);
}

#[test]
fn attention_shape_errors_are_reported() {
    let t = qkv(4, 3, 2, 2, 97); // 4 query heads cannot share 3 kv heads
    let err =
        fast::scaled_dot_product_attention(&t.q, &t.k, &t.v, 0.125, AttentionMask::None, None).unwrap_err();
    assert!(
        err.to_string().contains("fast::scaled_dot_product_attention"),
        "{err}"
    );
}
