//! Linear layers on the CPU as one gemm call per block of output columns, the bias added in
//! the same pass.
//!
//! flex runs `x . W` as one gemm call split by gemm over the cores and adds the bias in a
//! second pass. For products with few rows (a prompt's 77 tokens in every text encoder) gemm's
//! own split reaches 123-157 GFLOP/s on this project's machine, while splitting the output
//! columns between the cores, each task a single-threaded gemm that packs only its own columns
//! of the weight, reaches 230-250 (measured with the gemm crate alone, 77 x 1024 -> 4096 and
//! similar; equal for 1024 rows). The weight is read in place from flex's storage.
//!
//! Like `cpu_conv`, this runs only for f32 tensors on flex, natively, never on an autodiff
//! device; the caller runs burn's `linear` otherwise.

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::cpu_gemm::{Out, Values, applies, product, rows as row_major};

/// The fewest output columns a task takes: below it gemm's micro-kernels run short.
const MIN_COLUMNS: usize = 128;

/// `x` `[.., in]` times `weight` `[in, out]` (+ `bias` `[out]`); `None` where this kernel does
/// not apply (burn's `linear` then runs, and reports any mismatch).
pub(crate) fn linear<const D: usize>(
    x: &Tensor<D>,
    weight: &Tensor<2>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<D>> {
    let device = x.device();
    if !applies(x) || D < 2 || !applies(weight) || bias.is_some_and(|b| !applies(b)) {
        return None;
    }
    let dims = x.dims();
    let inp = dims[D - 1];
    let [win, out] = weight.dims();
    if win != inp || out == 0 || bias.is_some_and(|b| b.dims() != [out]) {
        return None;
    }
    let rows: usize = dims[..D - 1].iter().product();
    let (xs, ws) = (Values::of(x)?, Values::of(weight)?);
    let bias = match bias {
        Some(b) => Some(Values::of(b)?),
        None => None,
    };
    let (xs, ws) = (xs.slice(), ws.slice());

    let mut y = vec![0f32; rows * out];
    if let Some(b) = &bias {
        let b = b.slice();
        y.par_chunks_mut(out).for_each(|row| row.copy_from_slice(b));
    }
    let parts = (out / MIN_COLUMNS).clamp(1, rayon::current_num_threads());
    let parallelism = match parts {
        1 => gemm::Parallelism::Rayon(0),
        _ => gemm::Parallelism::None,
    };
    let columns = out.div_ceil(parts);
    let dst = Out::new(&mut y);
    (0..parts).into_par_iter().for_each(|part| {
        let (c0, c1) = (part * columns, ((part + 1) * columns).min(out));
        if c0 >= c1 {
            return;
        }
        // SAFETY: x is `[rows, in]`, the weight `[in, out]`, y `[rows, out]`, all row-major
        // and in bounds; this task writes only columns `c0..c1` of y, which no other writes.
        unsafe {
            product(
                [rows, c1 - c0, inp],
                row_major(dst.at(c0), out),
                bias.is_some(),
                row_major(xs.as_ptr(), inp),
                row_major(ws.as_ptr().add(c0), out),
                1.0,
                parallelism,
            );
        }
    });
    let mut out_dims = dims;
    out_dims[D - 1] = out;
    Some(Tensor::from_data(TensorData::new(y, out_dims), &device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module;
    use burn::tensor::{Device, Distribution};

    fn random<const D: usize>(dims: [usize; D]) -> Tensor<D> {
        Tensor::random(dims, Distribution::Normal(0.0, 1.0), &Device::flex())
    }

    #[test]
    fn equals_burns_linear() {
        // (rows, in, out): a prompt's tokens, wide and narrow outputs, fewer columns than a
        // task takes, one row.
        for (rows, inp, out) in [(77, 64, 300), (5, 16, 1000), (33, 40, 7), (1, 8, 256)] {
            let x = random([1, rows, inp]);
            let weight = random([inp, out]);
            let bias = random([out]);
            for bias in [None, Some(&bias)] {
                let expected = module::linear(x.clone(), weight.clone(), bias.cloned());
                let got = linear(&x, &weight, bias).expect("applies");
                assert_eq!(got.dims(), expected.dims());
                let diff = (got - expected).abs().max().into_scalar::<f32>();
                assert!(diff <= 1e-4, "{rows}x{inp}->{out}: off by {diff}");
            }
        }
    }

    #[test]
    fn hands_back_what_it_does_not_run() {
        let x = random([2, 8]);
        assert!(linear(&x, &random([7, 4]), None).is_none(), "in 8 vs 7");
        assert!(linear(&x, &random([8, 4]), Some(&random([5]))).is_none());
        let autodiff = Tensor::<2>::ones([2, 8], &Device::flex().autodiff());
        assert!(linear(&autodiff, &random([8, 4]), None).is_none());
    }
}
