//! Reductions, normalisations, selection and matrix products against numpy.

mod common;

use common::*;
use safeguard_mlx::mlx::{Array, Dtype};

#[test]
fn reductions_match_numpy() {
    let (a, data) = rand_array(&[3, 4, 5], 20);
    let inputs = [f32_input("a", &data, &[3, 4, 5])];
    let cases: [(&str, Array); 7] = [
        ("a.sum(axis=1)", a.sum(&[1], false).unwrap()),
        ("a.sum(axis=(0, 2), keepdims=True)", a.sum(&[0, 2], true).unwrap()),
        ("a.max(axis=-1)", a.max(&[-1], false).unwrap()),
        ("a.min(axis=0)", a.min(&[0], false).unwrap()),
        ("a.mean(axis=(1, 2))", a.mean(&[1, 2], false).unwrap()),
        (
            "np.log(np.exp(a).sum(axis=-1, keepdims=True))",
            a.logsumexp(&[-1], true).unwrap(),
        ),
        ("a.sum(axis=(0, 1, 2))", a.sum(&[0, 1, 2], false).unwrap()),
    ];
    for (expr, ours) in cases {
        assert_close(&ours, &numpy1(&format!("out = {expr}"), &inputs), 1e-5, 1e-5);
    }
}

#[test]
fn softmax_and_log_softmax_match_numpy() {
    let data = rand_vec(2 * 7, 21, 30.0); // large logits: needs the max-subtracting form
    let a = Array::from_slice(&data, &[2, 7]).unwrap();
    let inputs = [f32_input("a", &data, &[2, 7])];
    let softmax = numpy1(
        "e = np.exp(a.astype(np.float64) - a.max(-1, keepdims=True)); out = e / e.sum(-1, keepdims=True)",
        &inputs,
    );
    assert_close(&a.softmax(&[-1], false).unwrap(), &softmax, 1e-7, 1e-5);
    assert_close(&a.softmax(&[-1], true).unwrap(), &softmax, 1e-7, 1e-5);
    let log_softmax = numpy1(
        "x = a.astype(np.float64); m = x.max(-1, keepdims=True); \
         out = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))",
        &inputs,
    );
    assert_close(&a.log_softmax(-1).unwrap(), &log_softmax, 1e-5, 1e-6);

    // `precise` keeps bf16 logits' softmax accurate to bf16's resolution.
    let bf = a.astype(Dtype::Bfloat16).unwrap();
    let precise = bf.softmax(&[-1], true).unwrap();
    assert_eq!(precise.dtype(), Dtype::Bfloat16);
    let reference = numpy1(
        "x = a.astype(np.float64); e = np.exp(x - x.max(-1, keepdims=True)); out = e / e.sum(-1, keepdims=True)",
        &[f32_input("a", &values(&bf).iter().map(|&v| v as f32).collect::<Vec<_>>(), &[2, 7])],
    );
    assert_close(&precise, &reference, 1e-3, 8e-3);
}

#[test]
fn argmax_argmin_sort_and_cumsum_match_numpy() {
    let (a, data) = rand_array(&[4, 9], 22);
    let inputs = [f32_input("a", &data, &[4, 9])];
    assert_exact(
        &a.argmax(-1, false).unwrap(),
        &numpy1("out = a.argmax(-1)", &inputs),
    );
    assert_exact(
        &a.argmax(0, true).unwrap(),
        &numpy1("out = a.argmax(0)[None, :]", &inputs),
    );
    assert_exact(
        &a.argmin(1, false).unwrap(),
        &numpy1("out = a.argmin(1)", &inputs),
    );
    assert_close(
        &a.sort(-1).unwrap(),
        &numpy1("out = np.sort(a, -1)", &inputs),
        0.0,
        0.0,
    );
    assert_exact(
        &a.argsort(-1).unwrap(),
        &numpy1("out = np.argsort(a, -1)", &inputs),
    );
    assert_close(
        &a.cumsum(1, false, true).unwrap(),
        &numpy1("out = np.cumsum(a, 1)", &inputs),
        1e-6,
        1e-5,
    );
    assert_close(
        &a.cumsum(1, true, true).unwrap(),
        &numpy1("out = np.cumsum(a[:, ::-1], 1)[:, ::-1]", &inputs),
        1e-6,
        1e-5,
    );
    assert_close(
        &a.cumsum(1, false, false).unwrap(),
        &numpy1("out = np.cumsum(a, 1) - a", &inputs),
        1e-6,
        1e-5,
    );
}

#[test]
fn argpartition_and_topk_select_the_largest() {
    let (a, data) = rand_array(&[3, 32], 23);
    let inputs = [f32_input("a", &data, &[3, 32])];
    let k = 4;
    // mlx-lm's router idiom: partition so the k largest sit last, then take them.
    let part = a.argpartition(32 - k, -1).unwrap();
    let top = part.slice_axis(-1, 32 - k, 32).unwrap();
    let ours = a.take_along_axis(&top, -1).unwrap().sort(-1).unwrap();
    let expected = numpy1("out = np.sort(np.sort(a, -1)[:, -4:], -1)", &inputs);
    assert_close(&ours, &expected, 0.0, 0.0);
    // Everything before the kth is no larger than it, everything after no smaller.
    let reordered = values(&a.take_along_axis(&part, -1).unwrap());
    for row in reordered.chunks(32) {
        let kth = row[32 - k as usize];
        assert!(row[..32 - k as usize].iter().all(|&v| v <= kth));
        assert!(row[32 - k as usize..].iter().all(|&v| v >= kth));
    }
    assert_close(&a.topk(k, -1).unwrap().sort(-1).unwrap(), &expected, 0.0, 0.0);
}

#[test]
fn matmul_and_addmm_match_numpy() {
    let (a, da) = rand_array(&[2, 3, 8], 24);
    let (b, db) = rand_array(&[8, 5], 25);
    let (c, dc) = rand_array(&[5], 26);
    let inputs = [
        f32_input("a", &da, &[2, 3, 8]),
        f32_input("b", &db, &[8, 5]),
        f32_input("c", &dc, &[5]),
    ];
    assert_close(
        &a.matmul(&b).unwrap(),
        &numpy1("out = a @ b", &inputs),
        1e-5,
        1e-5,
    );
    let a2 = a.reshape(&[6, 8]).unwrap();
    assert_close(
        &c.addmm(&a2, &b, 0.5, 2.0).unwrap(),
        &numpy1("out = 0.5 * (a.reshape(6, 8) @ b) + 2.0 * c", &inputs),
        1e-5,
        1e-5,
    );
}

#[test]
fn gather_mm_picks_batch_entries_by_index() {
    // x: [tokens, 1, in], w: [experts, in, out]; each token uses the expert its index names.
    let (x, dx) = rand_array(&[5, 1, 6], 27);
    let (w, dw) = rand_array(&[3, 6, 4], 28);
    let idx = [2u32, 0, 1, 2, 2];
    let rhs = Array::from_slice(&idx, &[5]).unwrap();
    let inputs = [
        f32_input("x", &dx, &[5, 1, 6]),
        f32_input("w", &dw, &[3, 6, 4]),
        input("idx", &idx, &[5], "int64"),
    ];
    let expected = numpy1(
        "out = np.stack([x[t] @ w[e] for t, e in enumerate(idx)])",
        &inputs,
    );
    assert_close(
        &x.gather_mm(&w, None, Some(&rhs), false).unwrap(),
        &expected,
        1e-5,
        1e-5,
    );
    // Explicit lhs indices, and sorted rhs indices, give the same result.
    let sorted = [0u32, 1, 2, 2, 2];
    let order = [1u32, 2, 0, 3, 4];
    let got = x
        .gather_mm(
            &w,
            Some(&Array::from_slice(&order, &[5]).unwrap()),
            Some(&Array::from_slice(&sorted, &[5]).unwrap()),
            true,
        )
        .unwrap();
    let expected_sorted = numpy1(
        "out = np.stack([x[t] @ w[e] for t, e in zip(order, sorted_)])",
        &[
            f32_input("x", &dx, &[5, 1, 6]),
            f32_input("w", &dw, &[3, 6, 4]),
            input("order", &order, &[5], "int64"),
            input("sorted_", &sorted, &[5], "int64"),
        ],
    );
    assert_close(&got, &expected_sorted, 1e-5, 1e-5);
}
