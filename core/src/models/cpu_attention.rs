//! Multi-head attention on the CPU in one pass per (batch item, head, block of queries).
//!
//! burn's path (`layers::attention_heads`) splits the heads with transposed copies of q, k and
//! v, runs a batched product, a softmax of several passes and a second product, and copies the
//! heads back together: 3.6x PyTorch's fused scaled-dot-product attention on the UNet
//! (BENCHMARKS.md, "Where the time goes"). Here gemm reads each head in place from the
//! `[batch, tokens, heads * d]` layout through strides (k read transposed the same way), the
//! softmax runs on a block of scores while it is in cache, and the second product writes the
//! head's columns of the output directly. Blocks run in parallel.
//!
//! Like `cpu_conv`, this runs only for f32 tensors on flex, natively, never on an autodiff
//! device; the caller runs burn's ops otherwise.

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::cpu_fused::exp;
use super::cpu_gemm::{
    Out, Strided, Values, applies, per_task_parallelism, product, rows as row_major,
};

/// Scores computed at once per task, in elements (4 MiB of f32: stays in a core's cache level
/// that matters while the softmax and the second product read it).
const BLOCK_SCORES: usize = 1 << 20;

/// softmax(q k^T / sqrt(d)) v per head; q `[batch, queries, heads * d]`, k and v
/// `[batch, keys, heads * d]`, output like q. `None` where this kernel does not apply.
pub(crate) fn attention(
    q: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
    heads: usize,
) -> Option<Tensor<3>> {
    let device = q.device();
    if ![q, k, v].iter().all(|t| applies(*t)) {
        return None;
    }
    let [b, n, inner] = q.dims();
    let [kb, m, kinner] = k.dims();
    if heads == 0
        || inner % heads != 0
        || [kb, kinner] != [b, inner]
        || v.dims() != [b, m, inner]
        || m == 0
    {
        return None;
    }
    // Borrowed from flex's storage: the values are read in place.
    let (qs, ks, vs) = (Values::of(q)?, Values::of(k)?, Values::of(v)?);
    let (qs, ks, vs) = (qs.slice(), ks.slice(), vs.slice());
    let d = inner / heads;
    let scale = (d as f32).powf(-0.5);

    let rows = (BLOCK_SCORES / m).clamp(1, n.max(1));
    let blocks = n.div_ceil(rows);
    let tasks = b * heads * blocks;
    let parallelism = per_task_parallelism(tasks);
    let mut out = vec![0f32; b * n * inner];
    let dst = Out::new(&mut out);
    (0..tasks).into_par_iter().for_each(|task| {
        let (bi, rest) = (task / (heads * blocks), task % (heads * blocks));
        let (h, block) = (rest / blocks, rest % blocks);
        let (q0, q1) = (block * rows, ((block + 1) * rows).min(n));
        let nq = q1 - q0;
        let q_head = &qs[(bi * n + q0) * inner + h * d..];
        let k_head = &ks[bi * m * inner + h * d..];
        let v_head = &vs[bi * m * inner + h * d..];
        let mut scores = vec![0f32; nq * m];
        // SAFETY (both products): every operand is read within its slice by the strides given
        // (row stride `inner`, `d` columns from the head's offset); the destination of the
        // second is rows `q0..q1`, columns `h * d..(h + 1) * d` of this batch item's output,
        // which no other task writes.
        unsafe {
            // scores [nq, m] = scale * q_head [nq, d] . k_head^T [d, m]
            product(
                [nq, m, d],
                row_major(scores.as_mut_ptr(), m),
                false,
                row_major(q_head.as_ptr(), inner),
                // k read transposed: its rows are the product's columns.
                Strided {
                    ptr: k_head.as_ptr(),
                    row: 1,
                    col: inner,
                },
                scale,
                parallelism,
            );
        }
        for row in scores.chunks_mut(m) {
            softmax(row);
        }
        unsafe {
            // out rows [nq, d] = scores [nq, m] . v_head [m, d]
            product(
                [nq, d, m],
                row_major(dst.at((bi * n + q0) * inner + h * d), inner),
                false,
                row_major(scores.as_ptr(), m),
                row_major(v_head.as_ptr(), inner),
                1.0,
                parallelism,
            );
        }
    });
    Some(Tensor::from_data(
        TensorData::new(out, [b, n, inner]),
        &device,
    ))
}

/// In place, as torch's: the maximum subtracted first so no exponential overflows.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for x in row.iter_mut() {
        *x = exp(*x - max);
        sum += *x;
    }
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn random(dims: [usize; 3], device: &Device) -> Tensor<3> {
        Tensor::random(dims, Distribution::Normal(0.0, 1.0), device)
    }

    #[test]
    fn equals_burns_attention() {
        // (batch, queries, keys, heads, d): UNet self- and cross-attention sizes, one head,
        // odd sizes, more queries than one block holds.
        let cases = [
            (1, 64, 64, 5, 8),
            (2, 16, 7, 2, 16),
            (1, 9, 13, 1, 3),
            (1, 1100, 1000, 1, 4),
        ];
        let device = Device::flex();
        for (b, n, m, heads, d) in cases {
            let q = random([b, n, heads * d], &device) * 2.0;
            let k = random([b, m, heads * d], &device);
            let v = random([b, m, heads * d], &device);
            let expected =
                super::super::layers::attention_heads(q.clone(), k.clone(), v.clone(), heads);
            let got = attention(&q, &k, &v, heads).expect("applies");
            assert_eq!(got.dims(), expected.dims());
            let diff = (got - expected).abs().max().into_scalar::<f32>();
            assert!(
                diff <= 1e-5,
                "b{b} n{n} m{m} heads{heads} d{d}: off by {diff}"
            );
        }
    }

    #[test]
    fn hands_back_what_it_does_not_run() {
        let device = Device::flex();
        let x = random([1, 4, 6], &device);
        assert!(attention(&x, &x, &x, 4).is_none(), "6 features in 4 heads");
        assert!(attention(&x, &random([2, 4, 6], &device), &x, 2).is_none());
        let autodiff = Tensor::<3>::ones([1, 4, 6], &device.autodiff());
        assert!(attention(&autodiff, &autodiff, &autodiff, 2).is_none());
    }
}
