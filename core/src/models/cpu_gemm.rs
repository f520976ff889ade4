//! What the CPU product kernels (`cpu_conv`, `cpu_linear`, `cpu_attention`) share: where they
//! apply (plain, or as differentiable ops under autodiff), tensor values borrowed from flex's
//! storage, an output several threads write parts of, and one gemm call described by strides.
//!
//! gemm is the crate flex itself calls; its `x86-v4` feature (core's Cargo.toml) adds AVX-512
//! micro-kernels chosen at run time.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Device, Tensor};

/// Whether the kernels can stand in for burn's ops: f32 on flex, natively, never on an
/// autodiff device (they compute on the host, which a gradient could not follow).
pub(super) fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    let device = x.device();
    !cfg!(target_arch = "wasm32")
        && x.dtype() == DType::F32
        && !device.is_autodiff()
        && device == Device::flex()
}

/// Where the kernels run as their own differentiable ops (custom backward steps): f32 on flex
/// under autodiff, natively.
pub(super) fn applies_autodiff<const D: usize>(x: &Tensor<D>) -> bool {
    let device = x.device();
    !cfg!(target_arch = "wasm32")
        && x.dtype() == DType::F32
        && device.is_autodiff()
        && device.without_autodiff() == Device::flex()
}

/// The tensor's f32 values in row-major order, borrowed from flex's storage (no copy when it is
/// already contiguous, which activations and loaded weights are).
pub(super) struct Values(FlexTensor);

impl Values {
    pub(super) fn of<const D: usize>(x: &Tensor<D>) -> Option<Self> {
        Some(Self(contiguous(
            &x.clone().try_into_primitive::<Flex>().ok()?,
        )))
    }

    pub(super) fn slice(&self) -> &[f32] {
        values(&self.0)
    }
}

/// The tensor itself when contiguous (a shared handle, no copy), else a contiguous copy.
pub(super) fn contiguous(t: &FlexTensor) -> FlexTensor {
    if t.is_contiguous() {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// A contiguous f32 flex tensor's values.
pub(super) fn values(t: &FlexTensor) -> &[f32] {
    let layout = t.layout();
    let start = layout.start_offset();
    &t.storage::<f32>()[start..start + layout.num_elements()]
}

/// An output buffer that parallel tasks write, each to its own positions.
#[derive(Clone, Copy)]
pub(super) struct Out(*mut f32);
// SAFETY: the kernels give every task a disjoint set of positions (checked at each use).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    pub(super) fn new(values: &mut [f32]) -> Self {
        Self(values.as_mut_ptr())
    }

    /// Through a method, so closures capture the whole (shareable) `Out`, not its pointer.
    pub(super) fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// gemm's own threading for each of `tasks` products run in parallel: none when there are
/// enough tasks to keep every core busy, else gemm splits each product over the cores (few
/// tiles, as at small latents).
pub(super) fn per_task_parallelism(tasks: usize) -> gemm::Parallelism {
    if tasks >= 2 * rayon::current_num_threads() {
        gemm::Parallelism::None
    } else {
        gemm::Parallelism::Rayon(0)
    }
}

/// A matrix operand in memory: its first element and the steps to the next row and column.
#[derive(Clone, Copy)]
pub(super) struct Strided<T> {
    pub ptr: T,
    pub row: usize,
    pub col: usize,
}

/// `dst [m, n] = (dst if accumulate) + scale * lhs [m, k] . rhs [k, n]`.
///
/// # Safety
/// Every position the three strided views reach must be in bounds, and no other thread may
/// touch `dst`'s positions meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product(
    [m, n, k]: [usize; 3],
    dst: Strided<*mut f32>,
    accumulate: bool,
    lhs: Strided<*const f32>,
    rhs: Strided<*const f32>,
    scale: f32,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.col as isize,
            dst.row as isize,
            accumulate,
            lhs.ptr,
            lhs.col as isize,
            lhs.row as isize,
            rhs.ptr,
            rhs.col as isize,
            rhs.row as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// Row-major `[.., cols]` from `ptr`: rows `cols` apart, columns adjacent.
pub(super) fn rows<T>(ptr: T, cols: usize) -> Strided<T> {
    Strided {
        ptr,
        row: cols,
        col: 1,
    }
}
