//! Fused CPU kernels for the element-wise layers that burn's flex backend runs as several
//! single-threaded passes: GroupNorm (with the SiLU that follows it in every ResnetBlock),
//! SiLU, GELU and GEGLU's `value * gelu(gate)`, and 2x nearest upsampling. On flex each of those
//! was 3-12x PyTorch's time (BENCHMARKS.md, "Where the time goes"); here each is one parallel
//! pass over the data (two more reads for GroupNorm's statistics).
//!
//! They run only where they are exact stand-ins: f32 tensors on flex, natively, and never on an
//! autodiff device (they read the values on the host, which a gradient could not follow). Each
//! function returns the tensor back (`Err`) when it does not apply, and the caller runs burn's
//! ops instead, so every other device, precision and ReNO's backward pass are unchanged.

// Both variants hold the same tensor (the result, or the input handed back): boxing the error
// would only add an allocation.
#![allow(clippy::result_large_err)]

use burn::nn::GroupNorm;
use burn::tensor::{DType, Device, Tensor, TensorData};

/// Whether the fused kernels can stand in for burn's ops on this tensor.
fn applies<const D: usize>(x: &Tensor<D>) -> bool {
    if cfg!(target_arch = "wasm32") || x.dtype() != DType::F32 {
        return false;
    }
    let device = x.device();
    !device.is_autodiff() && device == Device::flex()
}

/// The tensor's values, moved out of it when nothing else holds them (else copied once).
fn values<const D: usize>(x: Tensor<D>) -> Option<(Vec<f32>, [usize; D], Device)> {
    let device = x.device();
    let dims = x.dims();
    let data = x.into_data();
    data.try_into_vec::<f32>().ok().map(|v| (v, dims, device))
}

fn tensor<const D: usize>(values: Vec<f32>, dims: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(values, dims), device)
}

/// Parameter values on the host (a few thousand floats).
fn param(p: &Option<burn::module::Param<Tensor<1>>>) -> Option<Vec<f32>> {
    p.as_ref().and_then(|p| {
        p.val()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .ok()
    })
}

/// e^x to about 2 ulp, branch-free so that loops over it vectorise (libm's `expf` is a call per
/// value): x = n ln2 + r with |r| <= ln2/2, e^r by its degree-6 Taylor polynomial (error
/// r^7/7! < 2e-7 relative), 2^n built in the exponent bits. Rounding uses the 1.5 * 2^23 trick,
/// which needs no rounding instruction.
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(
        (t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32 + 127).wrapping_shl(23) as u32,
    );
    p * scale
}

#[inline(always)]
fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// Sum and sum of squared deviations from `mean` in f32 lanes, totalled in f64 per block, so
/// the loop vectorises and long groups keep f64's accuracy.
fn sums(values: &[f32], mean: f32) -> (f64, f64) {
    const LANES: usize = 16;
    let (mut sum, mut squares) = (0f64, 0f64);
    for block in values.chunks(4096) {
        let (mut s, mut q) = ([0f32; LANES], [0f32; LANES]);
        let mut lanes = block.chunks_exact(LANES);
        for chunk in &mut lanes {
            for i in 0..LANES {
                let d = chunk[i] - mean;
                s[i] += chunk[i];
                q[i] += d * d;
            }
        }
        for &x in lanes.remainder() {
            s[0] += x;
            q[0] += (x - mean) * (x - mean);
        }
        sum += s.iter().map(|&x| x as f64).sum::<f64>();
        squares += q.iter().map(|&x| x as f64).sum::<f64>();
    }
    (sum, squares)
}

/// torch's exact GELU, 0.5 x (1 + erf(x / sqrt 2)).
#[inline]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(not(target_arch = "wasm32"))]
fn for_chunks(data: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    use rayon::prelude::*;
    data.par_chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| f(i, c));
}

#[cfg(target_arch = "wasm32")]
fn for_chunks(data: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    data.chunks_mut(chunk.max(1))
        .enumerate()
        .for_each(|(i, c)| f(i, c));
}

/// Element-wise work is split into pieces of this many values (a few per core, cache-sized).
const PIECE: usize = 1 << 16;

/// GroupNorm over `[batch, channels, h, w]`, then SiLU when `then_silu`; burn's statistics
/// (biased variance, two passes), accumulated in f64.
pub(crate) fn group_norm(
    x: Tensor<4>,
    norm: &GroupNorm,
    then_silu: bool,
) -> Result<Tensor<4>, Tensor<4>> {
    let [_, c, h, w] = x.dims();
    let groups = norm.num_groups;
    if !applies(&x) || groups == 0 || c != norm.num_channels || !c.is_multiple_of(groups) {
        return Err(x);
    }
    let (gamma, beta) = (param(&norm.gamma), param(&norm.beta));
    let Some((mut v, dims, device)) = values(x) else {
        unreachable_dtype()
    };
    let per_channel = h * w;
    let per_group = c / groups * per_channel;
    let eps = norm.epsilon;
    for_chunks(&mut v, per_group, |i, group| {
        let n = group.len().max(1) as f64;
        let mean = sums(group, 0.0).0 / n;
        let var = sums(group, mean as f32).1 / n;
        let inv = 1.0 / (var + eps).sqrt();
        let first = (i % groups) * (c / groups);
        for (j, plane) in group.chunks_mut(per_channel.max(1)).enumerate() {
            let ch = first + j;
            let g = gamma.as_ref().map_or(1.0, |g| g[ch] as f64);
            let b = beta.as_ref().map_or(0.0, |b| b[ch] as f64);
            let (scale, shift) = ((g * inv) as f32, (b - mean * g * inv) as f32);
            if then_silu {
                plane.iter_mut().for_each(|x| *x = silu(*x * scale + shift));
            } else {
                plane.iter_mut().for_each(|x| *x = *x * scale + shift);
            }
        }
    });
    Ok(tensor(v, dims, &device))
}

/// A tensor that passed `applies` is f32; its values always convert.
fn unreachable_dtype() -> ! {
    unreachable!("an f32 flex tensor's data is f32")
}

/// `f` on every value, in parallel pieces.
/// Generic over `f` (not a fn pointer) so it inlines and the loop vectorises.
fn map_values<const D: usize>(
    x: Tensor<D>,
    f: impl Fn(f32) -> f32 + Sync,
) -> Result<Tensor<D>, Tensor<D>> {
    if !applies(&x) {
        return Err(x);
    }
    let Some((mut v, dims, device)) = values(x) else {
        unreachable_dtype()
    };
    for_chunks(&mut v, PIECE, |_, p| p.iter_mut().for_each(|x| *x = f(*x)));
    Ok(tensor(v, dims, &device))
}

/// SiLU, x * sigmoid(x).
pub(crate) fn silu_tensor<const D: usize>(x: Tensor<D>) -> Result<Tensor<D>, Tensor<D>> {
    map_values(x, silu)
}

/// GELU (erf form).
pub(crate) fn gelu_tensor<const D: usize>(x: Tensor<D>) -> Result<Tensor<D>, Tensor<D>> {
    map_values(x, gelu)
}

/// GEGLU's activation: `h` is `[batch, tokens, 2 * inner]`, value then gate along the last
/// axis; returns value * gelu(gate), `[batch, tokens, inner]`.
pub(crate) fn geglu(h: Tensor<3>) -> Result<Tensor<3>, Tensor<3>> {
    let [b, n, two] = h.dims();
    if !applies(&h) || !two.is_multiple_of(2) {
        return Err(h);
    }
    let inner = two / 2;
    let Some((v, _, device)) = values(h) else {
        unreachable_dtype()
    };
    let mut out = vec![0f32; b * n * inner];
    let rows_per_piece = (PIECE / inner.max(1)).max(1);
    for_chunks(&mut out, rows_per_piece * inner, |i, piece| {
        for (r, row) in piece.chunks_mut(inner.max(1)).enumerate() {
            let src = &v[(i * rows_per_piece + r) * two..][..two];
            let (value, gate) = src.split_at(inner);
            for ((o, &x), &g) in row.iter_mut().zip(value).zip(gate) {
                *o = x * gelu(g);
            }
        }
    });
    Ok(tensor(out, [b, n, inner], &device))
}

/// Nearest-neighbour 2x upsampling of `[batch, channels, h, w]`.
pub(crate) fn upsample_nearest2(x: Tensor<4>) -> Result<Tensor<4>, Tensor<4>> {
    if !applies(&x) {
        return Err(x);
    }
    let Some((v, [b, c, h, w], device)) = values(x) else {
        unreachable_dtype()
    };
    let mut out = vec![0f32; b * c * h * w * 4];
    for_chunks(&mut out, 4 * h * w, |plane, dst| {
        let src = &v[plane * h * w..][..h * w];
        for (y, pair) in dst.chunks_mut(4 * w).enumerate() {
            let (top, bottom) = pair.split_at_mut(2 * w);
            for (x, &value) in src[y * w..][..w].iter().enumerate() {
                top[2 * x] = value;
                top[2 * x + 1] = value;
            }
            bottom.copy_from_slice(top);
        }
    });
    Ok(tensor(out, [b, c, 2 * h, 2 * w], &device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::GroupNormConfig;
    use burn::tensor::Distribution;
    use burn::tensor::activation;

    fn close<const D: usize>(a: Tensor<D>, b: Tensor<D>, tol: f32) {
        assert_eq!(a.dims(), b.dims());
        let diff = (a - b).abs().max().into_scalar::<f32>();
        assert!(diff <= tol, "max difference {diff} > {tol}");
    }

    fn random<const D: usize>(dims: [usize; D]) -> Tensor<D> {
        Tensor::random(dims, Distribution::Normal(0.5, 2.0), &Device::flex())
    }

    #[test]
    fn fused_kernels_match_burns_ops() {
        let device = Device::flex();
        let x = random([2, 8, 5, 3]);
        let mut norm = GroupNormConfig::new(4, 8).with_epsilon(1e-6).init(&device);
        norm.gamma = Some(burn::module::Param::from_tensor(random([8])));
        norm.beta = Some(burn::module::Param::from_tensor(random([8])));
        let reference = norm.forward(x.clone());
        close(
            group_norm(x.clone(), &norm, false).expect("applies"),
            reference.clone(),
            1e-5,
        );
        close(
            group_norm(x.clone(), &norm, true).expect("applies"),
            activation::silu(reference),
            1e-5,
        );
        close(
            silu_tensor(x.clone()).expect("applies"),
            activation::silu(x.clone()),
            1e-5,
        );
        close(
            gelu_tensor(x.clone()).expect("applies"),
            activation::gelu(x.clone()),
            1e-5,
        );
        let h = random([2, 3, 8]);
        let expected = h.clone().narrow(2, 0, 4) * activation::gelu(h.clone().narrow(2, 4, 4));
        close(geglu(h).expect("applies"), expected, 1e-5);
        let [b, c, hh, w] = x.dims();
        let expected = x
            .clone()
            .reshape([b, c, hh, 1, w, 1])
            .expand([b, c, hh, 2, w, 2])
            .reshape([b, c, hh * 2, w * 2]);
        close(upsample_nearest2(x).expect("applies"), expected, 0.0);
    }

    #[test]
    fn autodiff_tensors_are_handed_back() {
        let device = Device::flex().autodiff();
        let x = Tensor::<2>::ones([2, 2], &device).require_grad();
        assert!(silu_tensor(x).is_err());
    }
}
