use std::fmt;

use cxx::{CxxVector, UniquePtr};

use super::error::Context;
use super::ffi::bridge as ffi;
use super::{Dtype, Element, Error, Result};

/// A handle to an MLX array: a node of MLX's lazy graph.
///
/// Cloning is cheap (MLX arrays share their data); dropping frees the handle.
///
/// An `Array` is neither `Send` nor `Sync`. MLX 0.32 binds each default stream
/// to the thread that created it: evaluating an array on another thread fails
/// with "There is no Stream(cpu, 0) in current thread", and clones share graph
/// nodes that evaluation mutates without locks. So one thread owns all MLX
/// work (the engine) and other threads exchange plain data with it.
///
/// ```compile_fail
/// fn assert_send<T: Send>() {}
/// assert_send::<safeguard_mlx::mlx::Array>();
/// ```
pub struct Array {
    raw: UniquePtr<ffi::Array>,
}

impl Array {
    pub(crate) fn from_raw(raw: UniquePtr<ffi::Array>) -> Array {
        Array { raw }
    }

    pub(crate) fn raw(&self) -> &ffi::Array {
        // A handle is only ever built from a pointer that MLX returned.
        self.raw.as_ref().expect("array handles are never null")
    }

    /// A pointer the shim reads as an optional argument (`None` is null).
    pub(crate) fn optional(array: Option<&Array>) -> UniquePtr<ffi::Array> {
        array.map_or_else(UniquePtr::null, |a| ffi::array_clone(a.raw()))
    }

    /// Copies `data` into a new array of the given shape.
    pub fn from_slice<T: Element>(data: &[T], shape: &[i32]) -> Result<Array> {
        let expected: i64 = shape.iter().map(|&d| i64::from(d)).product();
        if shape.iter().any(|&d| d < 0) || expected != data.len() as i64 {
            return Err(Error::Invalid {
                op: "from_slice",
                message: format!("{} elements cannot fill shape {shape:?}", data.len()),
            });
        }
        ffi::array_from_bytes(bytemuck::cast_slice(data), shape, T::DTYPE.code())
            .op("from_slice")
            .map(Array::from_raw)
    }

    /// A 0-d array holding `value` converted to `dtype`.
    pub fn scalar(value: f64, dtype: Dtype) -> Result<Array> {
        ffi::scalar_f64(value, dtype.code())
            .op("scalar")
            .map(Array::from_raw)
    }

    /// A 0-d integer array; exact for values a float would round.
    pub fn scalar_int(value: i64, dtype: Dtype) -> Result<Array> {
        ffi::scalar_i64(value, dtype.code())
            .op("scalar")
            .map(Array::from_raw)
    }

    /// A 0-d array of this array's dtype, so arithmetic with it keeps the dtype
    /// (like a Python scalar in MLX) instead of promoting to float32.
    pub fn scalar_like(&self, value: f64) -> Result<Array> {
        Array::scalar(value, self.dtype())
    }

    pub fn zeros(shape: &[i32], dtype: Dtype) -> Result<Array> {
        ffi::zeros(shape, dtype.code()).op("zeros").map(Array::from_raw)
    }

    pub fn ones(shape: &[i32], dtype: Dtype) -> Result<Array> {
        ffi::ones(shape, dtype.code()).op("ones").map(Array::from_raw)
    }

    /// Values from `start` up to (excluding) `stop` in steps of `step`.
    pub fn arange(start: f64, stop: f64, step: f64, dtype: Dtype) -> Result<Array> {
        ffi::arange(start, stop, step, dtype.code())
            .op("arange")
            .map(Array::from_raw)
    }

    pub fn shape(&self) -> Vec<i32> {
        ffi::array_shape(self.raw())
    }

    /// The size of one axis; negative axes count from the end.
    pub fn dim(&self, axis: i32) -> Result<i32> {
        let shape = self.shape();
        let index = if axis < 0 { axis + shape.len() as i32 } else { axis };
        usize::try_from(index)
            .ok()
            .and_then(|i| shape.get(i).copied())
            .ok_or_else(|| Error::Invalid {
                op: "dim",
                message: format!("axis {axis} is out of range for shape {shape:?}"),
            })
    }

    pub fn ndim(&self) -> usize {
        self.shape().len()
    }

    /// The number of elements.
    pub fn size(&self) -> usize {
        self.shape().iter().map(|&d| d as usize).product()
    }

    pub fn dtype(&self) -> Dtype {
        Dtype::from_code(ffi::array_dtype(self.raw()))
    }

    pub fn nbytes(&self) -> usize {
        ffi::array_nbytes(self.raw())
    }

    pub fn astype(&self, dtype: Dtype) -> Result<Array> {
        ffi::astype(self.raw(), dtype.code())
            .op("astype")
            .map(Array::from_raw)
    }

    /// The same bytes read as another dtype; the last axis scales by the size
    /// ratio (e.g. uint8 `[.., 16]` viewed as uint32 is `[.., 4]`).
    pub fn view(&self, dtype: Dtype) -> Result<Array> {
        ffi::view(self.raw(), dtype.code())
            .op("view")
            .map(Array::from_raw)
    }

    /// Evaluates the array (and the graph it depends on).
    pub fn eval(&self) -> Result<()> {
        eval(&[self])
    }

    /// Evaluates and copies the elements out in row-major order.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let found = self.dtype();
        if found != T::DTYPE {
            return Err(Error::Dtype {
                op: "to_vec",
                expected: T::DTYPE,
                found,
            });
        }
        let mut out = vec![T::zeroed(); self.size()];
        ffi::array_copy_to(self.raw(), bytemuck::cast_slice_mut(&mut out)).op("to_vec")?;
        Ok(out)
    }

    /// The single element of a one-element array.
    pub fn item<T: Element>(&self) -> Result<T> {
        let values = self.to_vec::<T>()?;
        match values.as_slice() {
            [value] => Ok(*value),
            _ => Err(Error::Invalid {
                op: "item",
                message: format!(
                    "array of shape {:?} has {} elements, not 1",
                    self.shape(),
                    values.len()
                ),
            }),
        }
    }
}

impl Clone for Array {
    fn clone(&self) -> Self {
        Array::from_raw(ffi::array_clone(self.raw()))
    }
}

impl fmt::Debug for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Array({:?}, {})", self.shape(), self.dtype())
    }
}

pub(crate) fn array_list<'a>(
    arrays: impl IntoIterator<Item = &'a Array>,
) -> UniquePtr<CxxVector<ffi::Array>> {
    let mut list = ffi::new_array_list();
    for array in arrays {
        ffi::array_list_push(list.pin_mut(), array.raw());
    }
    list
}

pub(crate) fn arrays_from_list(list: &CxxVector<ffi::Array>) -> Vec<Array> {
    list.iter()
        .map(|a| Array::from_raw(ffi::array_clone(a)))
        .collect()
}

/// Evaluates all arrays together, sharing common subgraphs.
pub fn eval(arrays: &[&Array]) -> Result<()> {
    ffi::eval(&array_list(arrays.iter().copied())).op("eval")
}

/// Starts evaluating the arrays and returns at once; a later [`eval`] or read
/// waits for the result. This lets the host prepare the next step meanwhile.
pub fn async_eval(arrays: &[&Array]) -> Result<()> {
    ffi::async_eval(&array_list(arrays.iter().copied())).op("async_eval")
}
