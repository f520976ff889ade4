//! The k x k convolution (k > 1) on the CPU, without flex's per-call weight re-layout.
//!
//! flex lowers a convolution to im2col + gemm after re-laying out the weight to
//! `[out, kh, kw, in]` and the input to NHWC, both in single-threaded loops on every call: at the
//! UNet's small latents (8x8 to 32x32, 640-1280 channels) those copies took as long as the
//! product (BENCHMARKS.md, "Where the time goes"). Here the patches are gathered straight from
//! the NCHW input in the order `[in, kh, kw]`, which is the order the weight is already stored
//! in, so the weight is read in place, and gemm writes each output tile straight into the NCHW
//! result. Tiles of output rows run in parallel.
//!
//! It runs only where `cpu_gemm::applies` (f32 on flex, natively, never on an autodiff
//! device); the caller runs burn's `conv2d` otherwise (and for 1x1 kernels, which flex already
//! runs as one product).

use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

use super::cpu_gemm::{Out, Values, applies, per_task_parallelism, product, rows as row_major};

/// Output positions per tile (whole rows): large enough for gemm to run near its peak, small
/// enough that a tile's patches (`in * kh * kw` rows of it) stay a few MB.
const TILE: usize = 512;

/// `x` `[batch, in, h, w]` convolved with `weight` `[out, in, kh, kw]` (+ `bias` `[out]`),
/// zero padding `padding` on each side, `stride`; `None` where this kernel does not apply
/// (burn's `conv2d` then runs, and reports any mismatch).
pub(crate) fn conv2d(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Option<Tensor<4>> {
    let device = x.device();
    if !applies(x) || !applies(weight) || bias.is_some_and(|b| !applies(b)) {
        return None;
    }
    let [batch, cin, h, w] = x.dims();
    let [cout, wcin, kh, kw] = weight.dims();
    let [sh, sw] = stride;
    let [ph, pw] = padding;
    if wcin != cin
        || kh * kw <= 1
        || sh == 0
        || sw == 0
        || h + 2 * ph < kh
        || w + 2 * pw < kw
        || bias.is_some_and(|b| b.dims() != [cout])
    {
        return None;
    }
    let (oh, ow) = ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1);
    let (xs, ws) = (Values::of(x)?, Values::of(weight)?);
    let bias = match bias {
        Some(b) => Some(Values::of(b)?),
        None => None,
    };
    let (xs, ws) = (xs.slice(), ws.slice());
    let k = cin * kh * kw;
    let plane = oh * ow;

    // The bias first, so gemm adds the product to it in the same pass.
    let mut out = vec![0f32; batch * cout * plane];
    if let Some(b) = &bias {
        let b = b.slice();
        out.par_chunks_mut(plane.max(1))
            .enumerate()
            .for_each(|(i, p)| p.fill(b[i % cout]));
    }

    let rows = (TILE / ow.max(1)).clamp(1, oh.max(1));
    let tiles = oh.div_ceil(rows);
    let tasks = batch * tiles;
    let parallelism = per_task_parallelism(tasks);
    let dst = Out::new(&mut out);
    let geometry = Geometry {
        cin,
        h,
        w,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        ow,
    };
    (0..tasks).into_par_iter().for_each(|task| {
        let (b, t) = (task / tiles, task % tiles);
        let (oy0, oy1) = (t * rows, ((t + 1) * rows).min(oh));
        let n = (oy1 - oy0) * ow;
        let mut col = vec![0f32; k * n];
        geometry.patches(&xs[b * cin * h * w..][..cin * h * w], oy0..oy1, &mut col);
        // SAFETY: `col` is `[k, n]`, the weight `[cout, k]`, both row-major and in bounds;
        // the destination is columns `oy0 * ow .. oy1 * ow` of this batch item's
        // `[cout, plane]` output, which no other task writes.
        unsafe {
            product(
                [cout, n, k],
                row_major(dst.at(b * cout * plane + oy0 * ow), plane),
                bias.is_some(),
                row_major(ws.as_ptr(), k),
                row_major(col.as_ptr(), n),
                1.0,
                parallelism,
            );
        }
    });
    Some(Tensor::from_data(
        TensorData::new(out, [batch, cout, oh, ow]),
        &device,
    ))
}

/// The sizes that place a patch value: input channels and size, kernel, stride, padding and
/// output width.
#[derive(Clone, Copy)]
struct Geometry {
    cin: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    ow: usize,
}

impl Geometry {
    /// im2col of output rows `oys` of one image `[in, h, w]` into `col` `[in * kh * kw, n]`
    /// (row `(c * kh + ky) * kw + kx`, the weight's own order; `col` starts zeroed, so the
    /// padding is left as it is).
    fn patches(&self, image: &[f32], oys: std::ops::Range<usize>, col: &mut [f32]) {
        let Geometry { h, w, kh, kw, .. } = *self;
        let (cin, sh, sw, ph, pw, ow) = (self.cin, self.sh, self.sw, self.ph, self.pw, self.ow);
        let n = oys.len() * ow;
        for c in 0..cin {
            let channel = &image[c * h * w..][..h * w];
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = &mut col[((c * kh + ky) * kw + kx) * n..][..n];
                    // Output columns whose input column `ox * sw + kx - pw` is inside.
                    if w + pw < kx + 1 {
                        continue;
                    }
                    let first = pw.saturating_sub(kx).div_ceil(sw);
                    let last = ((w + pw - kx - 1) / sw + 1).min(ow);
                    if first >= last {
                        continue;
                    }
                    for (i, oy) in oys.clone().enumerate() {
                        let Some(iy) = (oy * sh + ky).checked_sub(ph).filter(|&iy| iy < h) else {
                            continue;
                        };
                        let src = &channel[iy * w..][..w];
                        let dst = &mut row[i * ow..][first..last];
                        let x0 = first * sw + kx - pw;
                        if sw == 1 {
                            dst.copy_from_slice(&src[x0..x0 + dst.len()]);
                        } else {
                            for (j, d) in dst.iter_mut().enumerate() {
                                *d = src[x0 + j * sw];
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Device, Distribution};

    fn random<const D: usize>(dims: [usize; D]) -> Tensor<D> {
        Tensor::random(dims, Distribution::Normal(0.0, 1.0), &Device::flex())
    }

    #[test]
    fn equals_burns_conv2d() {
        // (batch, in, out, h, w, kernel, stride, padding): the UNet/VAE 3x3s, the strided
        // downsamplers, odd sizes, no padding, a 7x7 stem, a row wider than a tile.
        let cases = [
            (1, 4, 8, 16, 16, 3, 1, 1),
            (2, 3, 5, 7, 9, 3, 1, 1),
            (1, 6, 4, 9, 8, 3, 2, 1),
            (2, 5, 3, 10, 11, 3, 2, 0),
            (1, 3, 4, 6, 5, 3, 1, 0),
            (1, 2, 3, 13, 12, 7, 2, 3),
            (1, 2, 2, 3, 700, 3, 1, 1),
            (1, 64, 32, 33, 20, 3, 1, 1),
        ];
        for (batch, cin, cout, h, w, kernel, stride, padding) in cases {
            let x = random([batch, cin, h, w]);
            let weight = random([cout, cin, kernel, kernel]);
            let bias = random([cout]);
            let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
            for bias in [None, Some(&bias)] {
                let expected =
                    module::conv2d(x.clone(), weight.clone(), bias.cloned(), options.clone());
                let got = conv2d(&x, &weight, bias, [stride; 2], [padding; 2]).expect("applies");
                assert_eq!(
                    got.dims(),
                    expected.dims(),
                    "{cin}->{cout} {h}x{w} k{kernel}"
                );
                let scale = expected.clone().abs().max().into_scalar::<f32>();
                let diff = (got - expected).abs().max().into_scalar::<f32>();
                assert!(
                    diff <= 1e-5 * scale.max(1.0),
                    "{cin}->{cout} {h}x{w} k{kernel} s{stride} p{padding}: off by {diff}"
                );
            }
        }
    }

    #[test]
    fn hands_back_what_it_does_not_run() {
        let x = random([1, 4, 8, 8]);
        let one_by_one = random([4, 4, 1, 1]);
        assert!(conv2d(&x, &one_by_one, None, [1, 1], [0, 0]).is_none());
        let wrong_channels = random([4, 3, 3, 3]);
        assert!(conv2d(&x, &wrong_channels, None, [1, 1], [1, 1]).is_none());
        let autodiff = Tensor::<4>::ones([1, 4, 8, 8], &Device::flex().autodiff());
        assert!(conv2d(&autodiff, &random([4, 4, 3, 3]), None, [1, 1], [1, 1]).is_none());
    }
}
