//! Multi-head attention on the CPU in one pass per (batch item, head, block of queries), and
//! its own backward step under autodiff.
//!
//! burn's path (`layers::attention_heads`) splits the heads with transposed copies of q, k and
//! v, runs a batched product, a softmax of several passes and a second product, and copies the
//! heads back together: 3.6x PyTorch's fused scaled-dot-product attention on the UNet
//! (BENCHMARKS.md, "Where the time goes"). Here gemm reads each head in place from the
//! `[batch, tokens, heads * d]` layout through strides (k read transposed the same way), the
//! softmax runs on a block of scores while it is in cache, and the second product writes the
//! head's columns of the output directly. Blocks run in parallel.
//!
//! Under autodiff (ReNO's gradient through the UNet) burn's path keeps every layer's scores and
//! softmax for the backward pass: `[heads, 4096, 4096]` per self-attention at 512 px, 335 MB
//! each. Here the forward keeps only q, k, v, its output and each row's log-sum-exp; the
//! backward recomputes one block of scores at a time (as PyTorch's memory-efficient
//! scaled-dot-product attention and FlashAttention do) and derives dq, dk, dv from it.
//!
//! Like `cpu_conv`, this runs only for f32 tensors on flex, natively; the caller runs burn's
//! ops otherwise (GPUs, f16, wasm).

use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use rayon::prelude::*;

use super::cpu_fused::exp;
use super::cpu_gemm::{
    Out, Strided, Values, applies, applies_autodiff, contiguous, per_task_parallelism, product,
    rows as row_major, values,
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
    let shape = Shape::of(q.dims(), k.dims(), v.dims(), heads)?;
    if [q, k, v].iter().all(|t| applies(*t)) {
        let (qs, ks, vs) = (Values::of(q)?, Values::of(k)?, Values::of(v)?);
        let out = forward(shape, qs.slice(), ks.slice(), vs.slice(), None);
        return Some(Tensor::from_data(
            TensorData::new(out, [shape.b, shape.n, shape.inner()]),
            &q.device(),
        ));
    }
    if [q, k, v].iter().all(|t| applies_autodiff(t)) {
        return attention_autodiff(shape, q, k, v);
    }
    None
}

/// The sizes of one attention call, checked once.
#[derive(Clone, Copy, Debug)]
struct Shape {
    b: usize,
    /// Queries.
    n: usize,
    /// Keys (and values).
    m: usize,
    heads: usize,
    /// Features per head.
    d: usize,
}

impl Shape {
    fn of(q: [usize; 3], k: [usize; 3], v: [usize; 3], heads: usize) -> Option<Self> {
        let [b, n, inner] = q;
        let [kb, m, kinner] = k;
        if heads == 0 || inner % heads != 0 || [kb, kinner] != [b, inner] || v != k || m == 0 {
            return None;
        }
        Some(Self {
            b,
            n,
            m,
            heads,
            d: inner / heads,
        })
    }

    fn inner(&self) -> usize {
        self.heads * self.d
    }

    fn scale(&self) -> f32 {
        (self.d as f32).powf(-0.5)
    }

    /// Queries per block: a block's scores fit `BLOCK_SCORES`.
    fn rows(&self) -> usize {
        (BLOCK_SCORES / self.m).clamp(1, self.n.max(1))
    }

    fn blocks(&self) -> usize {
        self.n.div_ceil(self.rows())
    }
}

/// The attention output `[b, n, inner]`; with `lse`, also each row's log-sum-exp of its scaled
/// scores, `[b, heads, n]` (what the backward step needs to recompute the softmax).
fn forward(shape: Shape, qs: &[f32], ks: &[f32], vs: &[f32], lse: Option<&mut [f32]>) -> Vec<f32> {
    let Shape { b, n, m, heads, d } = shape;
    let (inner, scale, rows, blocks) = (shape.inner(), shape.scale(), shape.rows(), shape.blocks());
    let tasks = b * heads * blocks;
    let parallelism = per_task_parallelism(tasks);
    let mut out = vec![0f32; b * n * inner];
    let dst = Out::new(&mut out);
    let lse = lse.map(Out::new);
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
                transposed(k_head.as_ptr(), inner),
                scale,
                parallelism,
            );
        }
        for (i, row) in scores.chunks_mut(m).enumerate() {
            let log_sum = softmax(row);
            if let Some(lse) = lse {
                // SAFETY: position (bi, h, q0 + i) belongs to this task alone.
                unsafe { *lse.at((bi * heads + h) * n + q0 + i) = log_sum };
            }
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
    out
}

/// A row-major `[rows, cols]` operand (row stride `stride`) read as its transpose.
fn transposed(ptr: *const f32, stride: usize) -> Strided<*const f32> {
    Strided {
        ptr,
        row: 1,
        col: stride,
    }
}

/// In place, as torch's: the maximum subtracted first so no exponential overflows. Returns the
/// row's log-sum-exp.
fn softmax(row: &mut [f32]) -> f32 {
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
    max + sum.ln()
}

/// The forward pass on autodiff's flex tensors, registered with the backward step below.
fn attention_autodiff(
    shape: Shape,
    q: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
) -> Option<Tensor<3>> {
    let primitive = |t: &Tensor<3>| t.clone().try_into_primitive::<Autodiff<Flex>>().ok();
    let (q, k, v) = (primitive(q)?, primitive(k)?, primitive(v)?);
    let inputs = [q.primitive(), k.primitive(), v.primitive()].map(contiguous);
    let mut lse = vec![0f32; shape.b * shape.heads * shape.n];
    let [qs, ks, vs] = inputs.each_ref().map(values);
    let out = forward(shape, qs, ks, vs, Some(&mut lse));
    let out = FlexTensor::from_data(TensorData::new(out, [shape.b, shape.n, shape.inner()]));
    let output = match AttentionBackward
        .prepare::<NoCheckpointing>([q.node(), k.node(), v.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let [q, k, v] = inputs;
            let lse = FlexTensor::from_data(TensorData::new(lse, [shape.b, shape.heads, shape.n]));
            let state = State {
                shape,
                q,
                k,
                v,
                out: out.clone(),
                lse,
            };
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex>>(output))
}

/// What the backward step keeps from the forward pass: the inputs, the output and each row's
/// log-sum-exp; never the scores.
#[derive(Clone, Debug)]
struct State {
    shape: Shape,
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    out: FlexTensor,
    lse: FlexTensor,
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    type State = State;

    fn backward(self, ops: Ops<State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let state = ops.state;
        let shape = state.shape;
        let grad = grads.consume::<Flex>(&ops.node);
        let grad = contiguous(&grad);
        let [dq, dk, dv] = backward(
            shape,
            [&state.q, &state.k, &state.v, &state.out, &grad].map(values),
            values(&state.lse),
        );
        let [p_q, p_k, p_v] = ops.parents;
        let (query_dims, key_dims) = (
            [shape.b, shape.n, shape.inner()],
            [shape.b, shape.m, shape.inner()],
        );
        for (parent, grad, dims) in [
            (p_q, dq, query_dims),
            (p_k, dk, key_dims),
            (p_v, dv, key_dims),
        ] {
            if let Some(parent) = parent {
                grads.register::<Flex>(
                    parent.id,
                    FlexTensor::from_data(TensorData::new(grad, dims)),
                );
            }
        }
    }
}

/// dq, dk, dv from the output's gradient `grad`, one task per (batch item, head), its query
/// blocks in turn: per block the scores are recomputed from q and k, the softmax from the saved
/// log-sum-exp, then
/// `dv += P^T dO`, `dP = dO v^T`, `dS = P * (dP - rowsum(dO * O))`, `dq = scale dS k`,
/// `dk += scale dS^T q`.
fn backward(shape: Shape, [qs, ks, vs, outs, grad]: [&[f32]; 5], lse: &[f32]) -> [Vec<f32>; 3] {
    let Shape { b, n, m, heads, d } = shape;
    let (inner, scale, rows) = (shape.inner(), shape.scale(), shape.rows());
    let tasks = b * heads;
    let parallelism = per_task_parallelism(tasks);
    let mut dq = vec![0f32; b * n * inner];
    let (mut dk, mut dv) = (vec![0f32; b * m * inner], vec![0f32; b * m * inner]);
    let (dq_out, dk_out, dv_out) = (Out::new(&mut dq), Out::new(&mut dk), Out::new(&mut dv));
    (0..tasks).into_par_iter().for_each(|task| {
        let (bi, h) = (task / heads, task % heads);
        let keys = bi * m * inner + h * d;
        let (k_head, v_head) = (&ks[keys..], &vs[keys..]);
        let mut p = vec![0f32; rows * m];
        let mut ds = vec![0f32; rows * m];
        for q0 in (0..n).step_by(rows) {
            let nq = rows.min(n - q0);
            let queries = (bi * n + q0) * inner + h * d;
            let (q_blk, o_blk, g_blk) = (&qs[queries..], &outs[queries..], &grad[queries..]);
            let (p, ds) = (&mut p[..nq * m], &mut ds[..nq * m]);
            // SAFETY (every product): operands are read within their slices through the
            // strides given (row stride `inner`, `d` columns from the head's offset; `m`
            // for the block buffers); this task alone writes this batch item's and head's
            // columns of dq, dk and dv.
            unsafe {
                // P [nq, m] = softmax(scale * q_blk . k_head^T), from each row's log-sum-exp.
                product(
                    [nq, m, d],
                    row_major(p.as_mut_ptr(), m),
                    false,
                    row_major(q_blk.as_ptr(), inner),
                    transposed(k_head.as_ptr(), inner),
                    scale,
                    parallelism,
                );
            }
            for (i, row) in p.chunks_mut(m).enumerate() {
                let log_sum = lse[(bi * heads + h) * n + q0 + i];
                for x in row.iter_mut() {
                    *x = exp(*x - log_sum);
                }
            }
            unsafe {
                // dv [m, d] += P^T [m, nq] . dO [nq, d]
                product(
                    [m, d, nq],
                    row_major(dv_out.at(keys), inner),
                    true,
                    transposed(p.as_ptr(), m),
                    row_major(g_blk.as_ptr(), inner),
                    1.0,
                    parallelism,
                );
                // dP [nq, m] = dO [nq, d] . v_head^T [d, m]
                product(
                    [nq, m, d],
                    row_major(ds.as_mut_ptr(), m),
                    false,
                    row_major(g_blk.as_ptr(), inner),
                    transposed(v_head.as_ptr(), inner),
                    1.0,
                    parallelism,
                );
            }
            for i in 0..nq {
                let (g_row, o_row) = (
                    &g_blk[i * inner..i * inner + d],
                    &o_blk[i * inner..i * inner + d],
                );
                let delta: f32 = g_row.iter().zip(o_row).map(|(g, o)| g * o).sum();
                for (s, &p) in ds[i * m..(i + 1) * m]
                    .iter_mut()
                    .zip(&p[i * m..(i + 1) * m])
                {
                    *s = p * (*s - delta);
                }
            }
            unsafe {
                // dq rows [nq, d] = scale * dS [nq, m] . k_head [m, d]
                product(
                    [nq, d, m],
                    row_major(dq_out.at(queries), inner),
                    false,
                    row_major(ds.as_ptr(), m),
                    row_major(k_head.as_ptr(), inner),
                    scale,
                    parallelism,
                );
                // dk [m, d] += scale * dS^T [m, nq] . q_blk [nq, d]
                product(
                    [m, d, nq],
                    row_major(dk_out.at(keys), inner),
                    true,
                    transposed(ds.as_ptr(), m),
                    row_major(q_blk.as_ptr(), inner),
                    scale,
                    parallelism,
                );
            }
        }
    });
    [dq, dk, dv]
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
    fn gradients_equal_burns_autodiff() {
        // (batch, queries, keys, heads, d, whether k and v need gradients): self-attention
        // with several query blocks, cross-attention to constant text states (ReNO's case).
        let cases = [
            (1, 64, 64, 5, 8, true),
            (2, 1100, 1000, 2, 3, true),
            (1, 37, 7, 2, 16, false),
        ];
        let device = Device::flex().autodiff();
        for (b, n, m, heads, d, keys_tracked) in cases {
            let inner = heads * d;
            let (q, k, v, w) = (
                random([b, n, inner], &Device::flex()) * 2.0,
                random([b, m, inner], &Device::flex()),
                random([b, m, inner], &Device::flex()),
                random([b, n, inner], &Device::flex()),
            );
            let leaf = |t: &Tensor<3>, tracked: bool| {
                let t = Tensor::<3>::from_data(t.to_data(), &device);
                if tracked { t.require_grad() } else { t }
            };
            let grads_of = |ours: bool| {
                let (q, k, v) = (
                    leaf(&q, true),
                    leaf(&k, keys_tracked),
                    leaf(&v, keys_tracked),
                );
                let out = if ours {
                    attention(&q, &k, &v, heads).expect("applies under autodiff")
                } else {
                    super::super::layers::attention_heads(q.clone(), k.clone(), v.clone(), heads)
                };
                let loss = (out.clone() * Tensor::from_data(w.to_data(), &device)).sum();
                let grads = loss.backward();
                let out = out.inner();
                [q.grad(&grads), k.grad(&grads), v.grad(&grads)]
                    .map(|g| g.map(|g| g.to_data()))
                    .into_iter()
                    .chain([Some(out.to_data())])
                    .collect::<Vec<_>>()
            };
            let (got, expected) = (grads_of(true), grads_of(false));
            for (what, (got, expected)) in ["dq", "dk", "dv", "output"]
                .iter()
                .zip(got.iter().zip(&expected))
            {
                match (got, expected) {
                    (Some(got), Some(expected)) => {
                        let (got, expected): (Vec<f32>, Vec<f32>) =
                            (got.iter().collect(), expected.iter().collect());
                        let scale = expected.iter().fold(0f32, |a, x| a.max(x.abs()));
                        let diff = got
                            .iter()
                            .zip(&expected)
                            .fold(0f32, |a, (g, e)| a.max((g - e).abs()));
                        assert!(
                            diff <= 1e-5 * scale.max(1.0),
                            "b{b} n{n} m{m} heads{heads} d{d} {what}: off by {diff} (max {scale})"
                        );
                    }
                    (None, None) => assert!(!keys_tracked && *what != "dq"),
                    _ => panic!("b{b} n{n} m{m} {what}: gradient present on one side only"),
                }
            }
        }
    }

    #[test]
    fn hands_back_what_it_does_not_run() {
        let device = Device::flex();
        let x = random([1, 4, 6], &device);
        assert!(attention(&x, &x, &x, 4).is_none(), "6 features in 4 heads");
        assert!(attention(&x, &random([2, 4, 6], &device), &x, 2).is_none());
        let f16 = random([1, 4, 6], &device).cast(burn::tensor::DType::F16);
        assert!(
            attention(&f16, &f16, &f16, 2).is_none(),
            "f16 runs burn's ops"
        );
    }
}
