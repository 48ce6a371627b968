//! Shared plumbing for the CPU side of the fused ops: the accumulator type per storage dtype, slices of
//! contiguous inputs, and the dispatch from a `CpuStorage` to a generic kernel.

use candle_core::{CpuStorage, Layout, Shape, WithDType};

/// The type a CPU kernel accumulates in: f64 for f64 inputs, f32 for f32, bf16 and f16.
pub(crate) trait Acc:
    num_traits::Float + std::iter::Sum + std::ops::AddAssign + Send + Sync + Copy + 'static
{
    /// Widens an element to the accumulator.
    fn load<T: WithDType>(x: T) -> Self;
    /// Rounds an accumulator value to the element type.
    fn store<T: WithDType>(self) -> T;
    /// A literal.
    fn lit(x: f64) -> Self;
}

impl Acc for f32 {
    #[inline(always)]
    fn load<T: WithDType>(x: T) -> Self {
        x.to_f64() as f32
    }
    #[inline(always)]
    fn store<T: WithDType>(self) -> T {
        T::from_f64(self as f64)
    }
    #[inline(always)]
    fn lit(x: f64) -> Self {
        x as f32
    }
}

impl Acc for f64 {
    #[inline(always)]
    fn load<T: WithDType>(x: T) -> Self {
        x.to_f64()
    }
    #[inline(always)]
    fn store<T: WithDType>(self) -> T {
        T::from_f64(self)
    }
    #[inline(always)]
    fn lit(x: f64) -> Self {
        x
    }
}

/// The contiguous part of `data` that `layout` covers, or an error naming the input.
pub(crate) fn contiguous<'a, T>(
    data: &'a [T],
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!(
            "{what} must be contiguous (got strides {:?})",
            layout.stride()
        ),
    }
}

/// Calls `$body` with `$t` bound to the element type and `$a` to the accumulator type of a float
/// `CpuStorage`, and `$s` bound to its slice. Fails for integer storages.
macro_rules! dispatch_float {
    ($storage:expr, $what:expr, |$s:ident : $t:ident, $a:ident| $body:expr) => {
        match $storage {
            candle_core::CpuStorage::F32($s) => {
                type $t = f32;
                type $a = f32;
                $body
            }
            candle_core::CpuStorage::F64($s) => {
                type $t = f64;
                type $a = f64;
                $body
            }
            candle_core::CpuStorage::BF16($s) => {
                type $t = half::bf16;
                type $a = f32;
                $body
            }
            candle_core::CpuStorage::F16($s) => {
                type $t = half::f16;
                type $a = f32;
                $body
            }
            other => candle_core::bail!(
                "{}: unsupported dtype {:?}",
                $what,
                candle_core::backend::BackendStorage::dtype(other)
            ),
        }
    };
}
pub(crate) use dispatch_float;

/// Borrows the slice of a storage known to hold `T` (the other inputs of an op once the first
/// input's dtype is known). Fails with both dtypes named.
pub(crate) fn same_dtype<'a, T: WithDType>(
    storage: &'a CpuStorage,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    match T::cpu_storage_as_slice(storage) {
        Ok(s) => Ok(s),
        Err(_) => candle_core::bail!(
            "{what}: dtype {:?} does not match the input's {:?}",
            candle_core::backend::BackendStorage::dtype(storage),
            T::DTYPE
        ),
    }
}

/// The contiguous slice of another input of an op whose first input holds `T`: `same_dtype` then
/// `contiguous`, both errors naming `what`.
pub(crate) fn contiguous_as<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    contiguous(same_dtype::<T>(storage, what)?, layout, what)
}

/// The shape of `parts` outputs of `l`'s shape stacked along a new leading dim (the packed outputs
/// of the fused ops that return two tensors in one storage).
pub(crate) fn stacked_shape(parts: usize, l: &Layout) -> Shape {
    let mut dims = vec![parts];
    dims.extend_from_slice(l.dims());
    Shape::from_dims(&dims)
}

/// Rows of at least this many elements are split across threads one row at a time; shorter rows
/// are grouped so each rayon task does a few thousand elements of work.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (4096 / row_len.max(1)).max(1)
}

/// Output storage from a vector of elements.
pub(crate) fn storage<T: WithDType>(data: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(data)
}
