//! The Array handle: creation, host transfer, shapes, indexing, element-wise
//! arithmetic and errors, each checked against numpy or exact values.

mod common;

use common::*;
use half::{bf16, f16};
use safeguard_mlx::mlx::{self, Array, Dtype, Error};

#[test]
fn round_trips_every_element_type() {
    fn check<T: mlx::Element + PartialEq + std::fmt::Debug>(data: &[T]) {
        let a = Array::from_slice(data, &[data.len() as i32]).unwrap();
        assert_eq!(a.dtype(), T::DTYPE);
        assert_eq!(a.to_vec::<T>().unwrap(), data);
        assert_eq!(a.nbytes(), std::mem::size_of_val(data));
    }
    check(&[0u8, 1, 127, 255]);
    check(&[0u32, 1, 0xDEAD_BEEF, u32::MAX]);
    check(&[i32::MIN, -1, 0, i32::MAX]);
    check(&[i64::MIN, 0, i64::MAX]);
    check(&[0.5f32, -1.25, f32::MAX, f32::MIN_POSITIVE]);
    check(&[
        bf16::from_f32(1.5),
        bf16::from_f32(-3.0e38),
        bf16::from_f32(1.0e-3),
    ]);
    check(&[f16::from_f32(0.1), f16::from_f32(-65504.0)]);
}

#[test]
fn scalars_and_constructors() {
    assert_eq!(
        Array::scalar(2.5, Dtype::Float32).unwrap().item::<f32>().unwrap(),
        2.5
    );
    assert_eq!(
        Array::scalar(2.5, Dtype::Float32).unwrap().shape(),
        Vec::<i32>::new()
    );
    // Integers above 2^24 survive exactly through the integer path.
    let big = Array::scalar_int(4_000_000_123, Dtype::Uint32).unwrap();
    assert_eq!(big.item::<u32>().unwrap(), 4_000_000_123);
    let bf = Array::scalar(1.0 / 3.0, Dtype::Bfloat16).unwrap();
    assert_eq!(bf.item::<bf16>().unwrap(), bf16::from_f64(1.0 / 3.0));
    assert_eq!(
        Array::zeros(&[2, 3], Dtype::Int32)
            .unwrap()
            .to_vec::<i32>()
            .unwrap(),
        vec![0; 6]
    );
    assert_eq!(
        Array::ones(&[4], Dtype::Float32)
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        vec![1.0; 4]
    );
    let r = Array::arange(2.0, 11.0, 3.0, Dtype::Int32).unwrap();
    assert_exact(&r, &numpy1("out = np.arange(2, 11, 3)", &[]));
    let x = Array::from_slice(&[1.0f32], &[1])
        .unwrap()
        .astype(Dtype::Bfloat16)
        .unwrap();
    assert_eq!(x.scalar_like(0.5).unwrap().dtype(), Dtype::Bfloat16);
}

#[test]
fn astype_converts_like_numpy() {
    let data = [-2.7f32, -0.5, 0.49, 1.5, 250.9];
    let a = Array::from_slice(&data, &[5]).unwrap();
    let reference = numpy1("out = a.astype(np.int32)", &[f32_input("a", &data, &[5])]);
    assert_exact(&a.astype(Dtype::Int32).unwrap(), &reference);
    let to_bf16 = a.astype(Dtype::Bfloat16).unwrap().to_vec::<bf16>().unwrap();
    let expected: Vec<bf16> = data.iter().map(|&v| bf16::from_f32(v)).collect();
    assert_eq!(
        to_bf16, expected,
        "float32 -> bfloat16 rounds to nearest even like `half`"
    );
}

#[test]
fn shape_ops_match_numpy() {
    let (a, data) = rand_array(&[2, 3, 4], 1);
    let inputs = [f32_input("a", &data, &[2, 3, 4])];
    assert_close(
        &a.reshape(&[6, 4]).unwrap(),
        &numpy1("out = a.reshape(6, 4)", &inputs),
        0.0,
        0.0,
    );
    assert_close(
        &a.reshape(&[-1, 2]).unwrap(),
        &numpy1("out = a.reshape(-1, 2)", &inputs),
        0.0,
        0.0,
    );
    assert_close(
        &a.transpose(&[2, 0, 1]).unwrap(),
        &numpy1("out = a.transpose(2, 0, 1)", &inputs),
        0.0,
        0.0,
    );
    assert_close(
        &a.swapaxes(0, 2).unwrap(),
        &numpy1("out = a.swapaxes(0, 2)", &inputs),
        0.0,
        0.0,
    );
    assert_close(
        &a.expand_dims(1).unwrap(),
        &numpy1("out = np.expand_dims(a, 1)", &inputs),
        0.0,
        0.0,
    );
    let e = a.expand_dims(-1).unwrap();
    assert_eq!(e.shape(), vec![2, 3, 4, 1]);
    assert_eq!(e.squeeze(-1).unwrap().shape(), vec![2, 3, 4]);
    assert_close(
        &a.slice(&[0, 1, 0], &[2, 3, 4], &[1, 1, 2]).unwrap(),
        &numpy1("out = a[:, 1:3, ::2]", &inputs),
        0.0,
        0.0,
    );
    assert_close(
        &a.slice_axis(-1, 1, 3).unwrap(),
        &numpy1("out = a[..., 1:3]", &inputs),
        0.0,
        0.0,
    );
    let b = Array::from_slice(&[7.0f32, 8.0], &[2, 1, 1]).unwrap();
    assert_close(
        &b.broadcast_to(&[2, 3, 4]).unwrap(),
        &numpy1(
            "out = np.broadcast_to(np.array([7., 8.]).reshape(2, 1, 1), (2, 3, 4))",
            &[],
        ),
        0.0,
        0.0,
    );
    assert_eq!(a.dim(-1).unwrap(), 4);
    assert_eq!(a.ndim(), 3);
    assert_eq!(a.size(), 24);
    assert!(matches!(a.dim(3), Err(Error::Invalid { .. })));
}

#[test]
fn slice_update_writes_a_window() {
    let (a, data) = rand_array(&[4, 5], 2);
    let update = Array::from_slice(&[10.0f32, 20.0, 30.0, 40.0], &[2, 2]).unwrap();
    let ours = a.slice_update(&update, &[1, 2], &[3, 4], &[1, 1]).unwrap();
    let reference = numpy1(
        "a = a.copy(); a[1:3, 2:4] = np.array([[10, 20], [30, 40]]); out = a",
        &[f32_input("a", &data, &[4, 5])],
    );
    assert_close(&ours, &reference, 0.0, 0.0);
    let row = Array::from_slice(&[1.0f32; 5], &[1, 5]).unwrap();
    let ours = a.slice_update_axis(&row, 0, 3, 4).unwrap();
    let reference = numpy1(
        "a = a.copy(); a[3:4] = 1; out = a",
        &[f32_input("a", &data, &[4, 5])],
    );
    assert_close(&ours, &reference, 0.0, 0.0);
    // The source is untouched: updates are functional.
    assert_eq!(a.to_vec::<f32>().unwrap(), data);
}

#[test]
fn concatenate_take_and_where_match_numpy() {
    let (a, da) = rand_array(&[2, 3], 3);
    let (b, db) = rand_array(&[2, 2], 4);
    let inputs = [f32_input("a", &da, &[2, 3]), f32_input("b", &db, &[2, 2])];
    assert_close(
        &mlx::concatenate(&[&a, &b], 1).unwrap(),
        &numpy1("out = np.concatenate([a, b], axis=1)", &inputs),
        0.0,
        0.0,
    );
    let idx = Array::from_slice(&[2u32, 0, 2, 1], &[2, 2]).unwrap();
    assert_close(
        &a.take(&idx, 1).unwrap(),
        &numpy1("out = np.take(a, np.array([[2, 0], [2, 1]]), axis=1)", &inputs),
        0.0,
        0.0,
    );
    let along = Array::from_slice(&[1i32, 1, 0, 2, 0, 1], &[2, 3]).unwrap();
    assert_close(
        &a.take_along_axis(&along, 1).unwrap(),
        &numpy1(
            "out = np.take_along_axis(a, np.array([[1, 1, 0], [2, 0, 1]]), axis=1)",
            &inputs,
        ),
        0.0,
        0.0,
    );
    let zero = a.scalar_like(0.0).unwrap();
    let cond = a.greater(&zero).unwrap();
    assert_close(
        &mlx::where_(
            &cond,
            &a,
            &a.negative()
                .unwrap()
                .multiply(&a.scalar_like(10.0).unwrap())
                .unwrap(),
        )
        .unwrap(),
        &numpy1("out = np.where(a > 0, a, -a * 10)", &inputs),
        0.0,
        1e-7,
    );
}

#[test]
fn arithmetic_broadcasts_like_numpy() {
    let (a, da) = rand_array(&[3, 1, 4], 5);
    let (b, db) = rand_array(&[2, 1], 6);
    let inputs = [f32_input("a", &da, &[3, 1, 4]), f32_input("b", &db, &[2, 1])];
    let cases: [(&str, Array); 7] = [
        ("a + b", a.add(&b).unwrap()),
        ("a - b", a.subtract(&b).unwrap()),
        ("a * b", a.multiply(&b).unwrap()),
        ("a / b", a.divide(&b).unwrap()),
        ("np.maximum(a, b)", a.maximum(&b).unwrap()),
        ("np.minimum(a, b)", a.minimum(&b).unwrap()),
        (
            "np.abs(a) ** np.abs(b)",
            a.abs().unwrap().power(&b.abs().unwrap()).unwrap(),
        ),
    ];
    for (expr, ours) in cases {
        assert_close(&ours, &numpy1(&format!("out = {expr}"), &inputs), 1e-6, 1e-5);
    }
}

#[test]
fn unary_math_matches_numpy() {
    let data = rand_vec(16, 7, 4.0);
    let a = Array::from_slice(&data, &[4, 4]).unwrap();
    let inputs = [f32_input("a", &data, &[4, 4])];
    let pos = a.abs().unwrap().add(&a.scalar_like(0.1).unwrap()).unwrap();
    let cases: [(&str, Array); 8] = [
        ("-a", a.negative().unwrap()),
        ("np.exp(a)", a.exp().unwrap()),
        ("np.log(np.abs(a) + np.float32(0.1))", pos.log().unwrap()),
        ("np.sqrt(np.abs(a) + np.float32(0.1))", pos.sqrt().unwrap()),
        ("1 / np.sqrt(np.abs(a) + np.float32(0.1))", pos.rsqrt().unwrap()),
        ("a * a", a.square().unwrap()),
        ("1 / (1 + np.exp(-a))", a.sigmoid().unwrap()),
        ("np.tanh(a)", a.tanh().unwrap()),
    ];
    for (expr, ours) in cases {
        assert_close(&ours, &numpy1(&format!("out = {expr}"), &inputs), 1e-6, 2e-6);
    }
    let lo = a.scalar_like(-1.0).unwrap();
    let hi = a.scalar_like(2.0).unwrap();
    assert_close(
        &a.clip(Some(&lo), Some(&hi)).unwrap(),
        &numpy1("out = np.clip(a, -1, 2)", &inputs),
        0.0,
        0.0,
    );
    assert_close(
        &a.clip(None, Some(&hi)).unwrap(),
        &numpy1("out = np.minimum(a, 2)", &inputs),
        0.0,
        0.0,
    );
}

#[test]
fn comparisons_and_logic_match_numpy() {
    let da = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let db = [3.0f32, 2.0, 1.0];
    let a = Array::from_slice(&da, &[2, 3]).unwrap();
    let b = Array::from_slice(&db, &[3]).unwrap();
    let inputs = [f32_input("a", &da, &[2, 3]), f32_input("b", &db, &[3])];
    let cases: [(&str, Array); 8] = [
        ("a == b", a.equal(&b).unwrap()),
        ("a != b", a.not_equal(&b).unwrap()),
        ("a < b", a.less(&b).unwrap()),
        ("a <= b", a.less_equal(&b).unwrap()),
        ("a > b", a.greater(&b).unwrap()),
        ("a >= b", a.greater_equal(&b).unwrap()),
        ("(a > 2) & (b < 3)", {
            let l = a.greater(&a.scalar_like(2.0).unwrap()).unwrap();
            l.logical_and(&b.less(&b.scalar_like(3.0).unwrap()).unwrap())
                .unwrap()
        }),
        ("~((a > 2) | (b < 2))", {
            let l = a.greater(&a.scalar_like(2.0).unwrap()).unwrap();
            l.logical_or(&b.less(&b.scalar_like(2.0).unwrap()).unwrap())
                .unwrap()
                .logical_not()
                .unwrap()
        }),
    ];
    for (expr, ours) in cases {
        assert_eq!(ours.dtype(), Dtype::Bool, "{expr}");
        assert_exact(&ours, &numpy1(&format!("out = {expr}"), &inputs));
    }
}

#[test]
fn mlx_errors_become_results_with_mlx_message() {
    let (a, _) = rand_array(&[2, 3], 8);
    let (b, _) = rand_array(&[4, 5], 9);
    match a.matmul(&b) {
        Err(Error::Mlx { op, message }) => {
            assert_eq!(op, "matmul");
            assert!(!message.is_empty());
        }
        other => panic!("expected an MLX error, got {other:?}"),
    }
    assert!(matches!(a.reshape(&[7]), Err(Error::Mlx { op: "reshape", .. })));
    assert!(matches!(a.add(&b), Err(Error::Mlx { op: "add", .. })));
    assert!(matches!(a.transpose(&[0, 0]), Err(Error::Mlx { .. })));
    assert!(matches!(
        Array::from_slice(&[1.0f32; 5], &[2, 3]),
        Err(Error::Invalid { op: "from_slice", .. })
    ));
    assert!(matches!(
        a.to_vec::<i32>(),
        Err(Error::Dtype {
            expected: Dtype::Int32,
            found: Dtype::Float32,
            ..
        })
    ));
    assert!(matches!(a.item::<f32>(), Err(Error::Invalid { op: "item", .. })));
    // The error text carries MLX's explanation for users.
    let text = a.matmul(&b).unwrap_err().to_string();
    assert!(text.starts_with("MLX matmul: "), "{text}");
}

#[test]
fn clones_share_the_graph_and_outlive_the_original() {
    let (a, data) = rand_array(&[8], 10);
    let twice = a.add(&a).unwrap();
    let copy = twice.clone();
    drop(twice);
    drop(a);
    let expected: Vec<f32> = data.iter().map(|v| v + v).collect();
    assert_eq!(copy.to_vec::<f32>().unwrap(), expected);
}

#[test]
fn each_thread_runs_its_own_arrays() {
    // MLX streams are per thread, so every thread builds and evaluates its own graph.
    let results: Vec<f32> = (0..2)
        .map(|i| {
            std::thread::spawn(move || {
                Array::scalar(f64::from(i), Dtype::Float32)
                    .unwrap()
                    .item()
                    .unwrap()
            })
        })
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(results, vec![0.0, 1.0]);
}

#[test]
fn eval_and_async_eval_compute_lazily_built_graphs() {
    let (a, data) = rand_array(&[64, 64], 11);
    let b = a.matmul(&a).unwrap().add(&a).unwrap();
    let c = b.sum(&[0, 1], false).unwrap();
    mlx::async_eval(&[&b, &c]).unwrap();
    mlx::eval(&[&c]).unwrap();
    b.eval().unwrap();
    let inputs = [f32_input("a", &data, &[64, 64])];
    assert_close(&b, &numpy1("out = a @ a + a", &inputs), 1e-4, 1e-4);
    assert_close(&c, &numpy1("out = (a @ a + a).sum()", &inputs), 1e-2, 1e-4);
}

#[test]
fn view_floor_divide_and_contiguous_match_numpy() {
    let bytes: Vec<u8> = (0..32u8).map(|b| b.wrapping_mul(37)).collect();
    let a = Array::from_slice(&bytes, &[2, 16]).unwrap();
    let viewed = a.view(Dtype::Uint32).unwrap();
    assert_eq!(viewed.shape(), vec![2, 4]);
    let expected = numpy1(
        "out = b.view(np.uint32).astype(np.float64)",
        &[input("b", &bytes, &[2, 16], "uint8")],
    );
    let words: Vec<f64> = viewed
        .to_vec::<u32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    assert_eq!(words, expected.data);

    let ints = [-7i32, -1, 0, 5, 9, 12];
    let x = Array::from_slice(&ints, &[6]).unwrap();
    let four = Array::scalar_int(4, Dtype::Int32).unwrap();
    assert_exact(
        &x.floor_divide(&four).unwrap(),
        &numpy1("out = x // 4", &[input("x", &ints, &[6], "int32")]),
    );

    let (m, data) = rand_array(&[3, 4], 12);
    let strided = m.slice(&[0, 0], &[3, 4], &[1, 2]).unwrap().contiguous().unwrap();
    assert_close(
        &strided,
        &numpy1(
            "out = np.ascontiguousarray(m[:, ::2])",
            &[f32_input("m", &data, &[3, 4])],
        ),
        0.0,
        0.0,
    );
}
