//! Array operations as methods, one per MLX op. Binary ops broadcast like numpy.

use super::array::{array_list, Array};
use super::error::Context;
use super::ffi::bridge as ffi;
use super::Result;

macro_rules! unary_ops {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        impl Array {
            $($(#[$doc])* pub fn $name(&self) -> Result<Array> {
                ffi::$name(self.raw()).op(stringify!($name)).map(Array::from_raw)
            })*
        }
    };
}

macro_rules! binary_ops {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        impl Array {
            $($(#[$doc])* pub fn $name(&self, other: &Array) -> Result<Array> {
                ffi::$name(self.raw(), other.raw()).op(stringify!($name)).map(Array::from_raw)
            })*
        }
    };
}

macro_rules! reductions {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        impl Array {
            $($(#[$doc])* pub fn $name(&self, axes: &[i32], keepdims: bool) -> Result<Array> {
                ffi::$name(self.raw(), axes, keepdims).op(stringify!($name)).map(Array::from_raw)
            })*
        }
    };
}

unary_ops!(
    logical_not,
    negative,
    abs,
    exp,
    log,
    sqrt,
    rsqrt,
    square,
    sigmoid,
    tanh,
    /// A row-major copy when the array is a strided view, else the array itself.
    contiguous,
);

binary_ops!(
    add,
    subtract,
    multiply,
    divide,
    /// Integer division rounding toward negative infinity (numpy's `//`).
    floor_divide,
    power,
    maximum,
    minimum,
    equal,
    not_equal,
    less,
    less_equal,
    greater,
    greater_equal,
    logical_and,
    logical_or,
    /// Matrix product over the last two axes, batching over the others.
    matmul,
);

// Each reduces over the listed axes only: an empty list reduces nothing.
reductions!(sum, max, min, mean, logsumexp);

impl Array {
    pub fn reshape(&self, shape: &[i32]) -> Result<Array> {
        ffi::reshape(self.raw(), shape).op("reshape").map(Array::from_raw)
    }

    pub fn transpose(&self, axes: &[i32]) -> Result<Array> {
        ffi::transpose(self.raw(), axes)
            .op("transpose")
            .map(Array::from_raw)
    }

    pub fn swapaxes(&self, axis1: i32, axis2: i32) -> Result<Array> {
        ffi::swapaxes(self.raw(), axis1, axis2)
            .op("swapaxes")
            .map(Array::from_raw)
    }

    pub fn expand_dims(&self, axis: i32) -> Result<Array> {
        ffi::expand_dims(self.raw(), axis)
            .op("expand_dims")
            .map(Array::from_raw)
    }

    pub fn squeeze(&self, axis: i32) -> Result<Array> {
        ffi::squeeze(self.raw(), axis).op("squeeze").map(Array::from_raw)
    }

    pub fn broadcast_to(&self, shape: &[i32]) -> Result<Array> {
        ffi::broadcast_to(self.raw(), shape)
            .op("broadcast_to")
            .map(Array::from_raw)
    }

    /// `self[start[0]:stop[0]:strides[0], ...]`, one entry per axis.
    pub fn slice(&self, start: &[i32], stop: &[i32], strides: &[i32]) -> Result<Array> {
        ffi::slice(self.raw(), start, stop, strides)
            .op("slice")
            .map(Array::from_raw)
    }

    /// `self[start:stop]` along one axis, every other axis whole.
    pub fn slice_axis(&self, axis: i32, start: i32, stop: i32) -> Result<Array> {
        let (starts, stops) = self.axis_bounds(axis, start, stop)?;
        self.slice(&starts, &stops, &vec![1; starts.len()])
    }

    /// A copy of `self` with `self[start:stop:strides] = update`.
    pub fn slice_update(
        &self,
        update: &Array,
        start: &[i32],
        stop: &[i32],
        strides: &[i32],
    ) -> Result<Array> {
        ffi::slice_update(self.raw(), update.raw(), start, stop, strides)
            .op("slice_update")
            .map(Array::from_raw)
    }

    /// A copy of `self` with `self[start:stop] = update` along one axis.
    pub fn slice_update_axis(&self, update: &Array, axis: i32, start: i32, stop: i32) -> Result<Array> {
        let (starts, stops) = self.axis_bounds(axis, start, stop)?;
        self.slice_update(update, &starts, &stops, &vec![1; starts.len()])
    }

    fn axis_bounds(&self, axis: i32, start: i32, stop: i32) -> Result<(Vec<i32>, Vec<i32>)> {
        let shape = self.shape();
        let axis = if axis < 0 { axis + shape.len() as i32 } else { axis };
        self.dim(axis)?;
        let mut starts = vec![0; shape.len()];
        let mut stops = shape;
        starts[axis as usize] = start;
        stops[axis as usize] = stop;
        Ok((starts, stops))
    }

    /// Elements at `indices` along `axis` (the indices' shape replaces that axis).
    pub fn take(&self, indices: &Array, axis: i32) -> Result<Array> {
        ffi::take(self.raw(), indices.raw(), axis)
            .op("take")
            .map(Array::from_raw)
    }

    pub fn take_along_axis(&self, indices: &Array, axis: i32) -> Result<Array> {
        ffi::take_along_axis(self.raw(), indices.raw(), axis)
            .op("take_along_axis")
            .map(Array::from_raw)
    }

    /// A copy with `values` written at `indices` along `axis`.
    pub fn put_along_axis(&self, indices: &Array, values: &Array, axis: i32) -> Result<Array> {
        ffi::put_along_axis(self.raw(), indices.raw(), values.raw(), axis)
            .op("put_along_axis")
            .map(Array::from_raw)
    }

    /// Clamps to `[min, max]`; either bound may be absent.
    pub fn clip(&self, min: Option<&Array>, max: Option<&Array>) -> Result<Array> {
        ffi::clip(self.raw(), Array::optional(min), Array::optional(max))
            .op("clip")
            .map(Array::from_raw)
    }

    /// Softmax over `axes`; `precise` accumulates in float32 for half inputs.
    pub fn softmax(&self, axes: &[i32], precise: bool) -> Result<Array> {
        ffi::softmax(self.raw(), axes, precise)
            .op("softmax")
            .map(Array::from_raw)
    }

    /// `x - logsumexp(x)` along `axis`: log-probabilities from logits.
    pub fn log_softmax(&self, axis: i32) -> Result<Array> {
        self.subtract(&self.logsumexp(&[axis], true)?)
    }

    pub fn argmax(&self, axis: i32, keepdims: bool) -> Result<Array> {
        ffi::argmax(self.raw(), axis, keepdims)
            .op("argmax")
            .map(Array::from_raw)
    }

    pub fn argmin(&self, axis: i32, keepdims: bool) -> Result<Array> {
        ffi::argmin(self.raw(), axis, keepdims)
            .op("argmin")
            .map(Array::from_raw)
    }

    /// Indices that put the `kth` smallest element in place, smaller ones
    /// before it and larger ones after (each side unordered).
    pub fn argpartition(&self, kth: i32, axis: i32) -> Result<Array> {
        ffi::argpartition(self.raw(), kth, axis)
            .op("argpartition")
            .map(Array::from_raw)
    }

    /// The `k` largest values along `axis`, unordered.
    pub fn topk(&self, k: i32, axis: i32) -> Result<Array> {
        ffi::topk(self.raw(), k, axis).op("topk").map(Array::from_raw)
    }

    pub fn sort(&self, axis: i32) -> Result<Array> {
        ffi::sort(self.raw(), axis).op("sort").map(Array::from_raw)
    }

    pub fn argsort(&self, axis: i32) -> Result<Array> {
        ffi::argsort(self.raw(), axis).op("argsort").map(Array::from_raw)
    }

    pub fn cumsum(&self, axis: i32, reverse: bool, inclusive: bool) -> Result<Array> {
        ffi::cumsum(self.raw(), axis, reverse, inclusive)
            .op("cumsum")
            .map(Array::from_raw)
    }

    /// `alpha * (a @ b) + beta * self` in one op.
    pub fn addmm(&self, a: &Array, b: &Array, alpha: f32, beta: f32) -> Result<Array> {
        ffi::addmm(self.raw(), a.raw(), b.raw(), alpha, beta)
            .op("addmm")
            .map(Array::from_raw)
    }

    /// Batched matmul where each output picks its operands' batch entries by index.
    pub fn gather_mm(
        &self,
        b: &Array,
        lhs_indices: Option<&Array>,
        rhs_indices: Option<&Array>,
        sorted_indices: bool,
    ) -> Result<Array> {
        ffi::gather_mm(
            self.raw(),
            b.raw(),
            Array::optional(lhs_indices),
            Array::optional(rhs_indices),
            sorted_indices,
        )
        .op("gather_mm")
        .map(Array::from_raw)
    }
}

/// Joins arrays along an existing axis.
pub fn concatenate(arrays: &[&Array], axis: i32) -> Result<Array> {
    ffi::concatenate(&array_list(arrays.iter().copied()), axis)
        .op("concatenate")
        .map(Array::from_raw)
}

/// Element-wise `condition ? x : y`, broadcasting all three.
pub fn where_(condition: &Array, x: &Array, y: &Array) -> Result<Array> {
    ffi::where_(condition.raw(), x.raw(), y.raw())
        .op("where")
        .map(Array::from_raw)
}
