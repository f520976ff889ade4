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
//! It runs where `cpu_gemm::applies` (f32 on flex, natively), and under autodiff on flex as its
//! own differentiable op when only the input needs a gradient (frozen weights, as in ReNO): the
//! forward is the same, and the backward step keeps only the weight (burn's keeps every input
//! for the weight's gradient) and derives the input's gradient as `W^T . dY` added back patch
//! by patch (col2im), tasks by blocks of input channels. The caller runs burn's `conv2d`
//! otherwise (GPUs, f16, wasm, trained weights, and 1x1 kernels, which flex already runs as one
//! product).

use burn::backend::flex::FlexTensor;
use burn::backend::{Autodiff, Flex};
use burn::tensor::{Tensor, TensorData};
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::NoCheckpointing;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use rayon::prelude::*;

use super::cpu_gemm::{
    Out, Strided, Values, applies, applies_autodiff, contiguous, per_task_parallelism, product,
    rows as row_major, values,
};

/// Output positions per tile (whole rows): large enough for gemm to run near its peak, small
/// enough that a tile's patches (`in * kh * kw` rows of it) stay a few MB.
const TILE: usize = 512;

/// Input channels per task of the input gradient (its patches: `16 * kh * kw` rows).
const CHANNEL_BLOCK: usize = 16;

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
    let geometry = Geometry::of(
        x.dims(),
        weight.dims(),
        bias.map(|b| b.dims()),
        stride,
        padding,
    )?;
    if applies(x) && applies(weight) && bias.is_none_or(applies) {
        let (xs, ws) = (Values::of(x)?, Values::of(weight)?);
        let bias = match bias {
            Some(b) => Some(Values::of(b)?),
            None => None,
        };
        let out = geometry.forward(xs.slice(), ws.slice(), bias.as_ref().map(Values::slice));
        return Some(Tensor::from_data(
            TensorData::new(out, geometry.output_dims()),
            &x.device(),
        ));
    }
    conv2d_autodiff(geometry, x, weight, bias)
}

/// Under autodiff on flex, where only `x` can need a gradient (frozen weights: ReNO's case):
/// the forward above, and a backward step that keeps the weight alone (burn's keeps `x` too,
/// for the weight's gradient). `None` otherwise (burn's `conv2d`, which derives both).
fn conv2d_autodiff(
    geometry: Geometry,
    x: &Tensor<4>,
    weight: &Tensor<4>,
    bias: Option<&Tensor<1>>,
) -> Option<Tensor<4>> {
    if !applies_autodiff(x)
        || !applies_autodiff(weight)
        || bias.is_some_and(|b| !applies_autodiff(b))
    {
        return None;
    }
    let x = x.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    let weight = weight.clone().try_into_primitive::<Autodiff<Flex>>().ok()?;
    let bias = match bias {
        Some(b) => Some(b.clone().try_into_primitive::<Autodiff<Flex>>().ok()?),
        None => None,
    };
    if weight.is_tracked() || bias.as_ref().is_some_and(|b| b.is_tracked()) {
        return None;
    }
    let (xs, ws) = (contiguous(x.primitive()), contiguous(weight.primitive()));
    let bs = bias.as_ref().map(|b| contiguous(b.primitive()));
    let out = geometry.forward(values(&xs), values(&ws), bs.as_ref().map(values));
    let out = FlexTensor::from_data(TensorData::new(out, geometry.output_dims()));
    let output = match InputGradient
        .prepare::<NoCheckpointing>([x.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((geometry, ws), out),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Some(Tensor::from_primitive::<Autodiff<Flex>>(output))
}

/// The backward step of a convolution with frozen weights: `x`'s gradient from the output's.
#[derive(Debug)]
struct InputGradient;

impl Backward<Flex, 1> for InputGradient {
    /// The convolution's sizes and its weight.
    type State = (Geometry, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (geometry, weight) = ops.state;
        let grad = grads.consume::<Flex>(&ops.node);
        let grad = contiguous(&grad);
        let [parent] = ops.parents;
        if let Some(parent) = parent {
            let dx = geometry.input_gradient(values(&weight), values(&grad));
            grads.register::<Flex>(
                parent.id,
                FlexTensor::from_data(TensorData::new(dx, geometry.input_dims())),
            );
        }
    }
}

/// A convolution's sizes: batch, input channels and size, output channels, kernel, stride,
/// padding and output size.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    /// The sizes when this kernel applies: k x k with k > 1, channels and bias matching.
    fn of(
        [batch, cin, h, w]: [usize; 4],
        [cout, wcin, kh, kw]: [usize; 4],
        bias: Option<[usize; 1]>,
        [sh, sw]: [usize; 2],
        [ph, pw]: [usize; 2],
    ) -> Option<Self> {
        if wcin != cin
            || kh * kw <= 1
            || sh == 0
            || sw == 0
            || h + 2 * ph < kh
            || w + 2 * pw < kw
            || bias.is_some_and(|b| b != [cout])
        {
            return None;
        }
        let (oh, ow) = ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1);
        Some(Self {
            batch,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            sh,
            sw,
            ph,
            pw,
            oh,
            ow,
        })
    }

    fn input_dims(&self) -> [usize; 4] {
        [self.batch, self.cin, self.h, self.w]
    }

    fn output_dims(&self) -> [usize; 4] {
        [self.batch, self.cout, self.oh, self.ow]
    }

    /// Output rows per tile.
    fn tile_rows(&self) -> usize {
        (TILE / self.ow.max(1)).clamp(1, self.oh.max(1))
    }

    /// The output `[batch, out, oh, ow]`: per tile of output rows, its patches, then one
    /// product with the weight read in place.
    fn forward(&self, xs: &[f32], ws: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let Geometry {
            batch,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            oh,
            ow,
            ..
        } = *self;
        let k = cin * kh * kw;
        let plane = oh * ow;
        // The bias first, so gemm adds the product to it in the same pass.
        let mut out = vec![0f32; batch * cout * plane];
        if let Some(b) = bias {
            out.par_chunks_mut(plane.max(1))
                .enumerate()
                .for_each(|(i, p)| p.fill(b[i % cout]));
        }
        let rows = self.tile_rows();
        let tiles = oh.div_ceil(rows);
        let tasks = batch * tiles;
        let parallelism = per_task_parallelism(tasks);
        let dst = Out::new(&mut out);
        (0..tasks).into_par_iter().for_each(|task| {
            let (b, t) = (task / tiles, task % tiles);
            let (oy0, oy1) = (t * rows, ((t + 1) * rows).min(oh));
            let n = (oy1 - oy0) * ow;
            let mut col = vec![0f32; k * n];
            self.patches(&xs[b * cin * h * w..][..cin * h * w], oy0..oy1, &mut col);
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
        out
    }

    /// `x`'s gradient `[batch, in, h, w]` from the output's `grad`: per (batch item, block of
    /// input channels, tile of output rows) the block's patch gradients `W_block^T . grad`,
    /// added back where each patch value came from (col2im). Tasks own disjoint channels.
    fn input_gradient(&self, ws: &[f32], grad: &[f32]) -> Vec<f32> {
        let (batch, cin, h, w, cout) = (self.batch, self.cin, self.h, self.w, self.cout);
        let (kh, kw, oh, ow) = (self.kh, self.kw, self.oh, self.ow);
        let k = cin * kh * kw;
        let plane = oh * ow;
        let mut dx = vec![0f32; batch * cin * h * w];
        let blocks = cin.div_ceil(CHANNEL_BLOCK);
        let tasks = batch * blocks;
        let parallelism = per_task_parallelism(tasks);
        let rows = self.tile_rows();
        let dst = Out::new(&mut dx);
        (0..tasks).into_par_iter().for_each(|task| {
            let (b, block) = (task / blocks, task % blocks);
            let channels = block * CHANNEL_BLOCK..((block + 1) * CHANNEL_BLOCK).min(cin);
            let kb = channels.len() * kh * kw;
            // SAFETY: channels `channels` of image `b`, which this task alone touches.
            let image = unsafe {
                std::slice::from_raw_parts_mut(
                    dst.at((b * cin + channels.start) * h * w),
                    channels.len() * h * w,
                )
            };
            let mut col = vec![0f32; kb * rows * ow];
            for oy0 in (0..oh).step_by(rows) {
                let oys = oy0..(oy0 + rows).min(oh);
                let n = oys.len() * ow;
                // SAFETY: the weight's rows for these channels, read transposed (`[kb, cout]`,
                // column stride `k`), and the gradient's columns of these output rows
                // (`[cout, n]`, row stride `plane`) are in bounds; `col` is `[kb, n]`.
                unsafe {
                    product(
                        [kb, n, cout],
                        row_major(col.as_mut_ptr(), n),
                        false,
                        Strided {
                            ptr: ws.as_ptr().add(channels.start * kh * kw),
                            row: 1,
                            col: k,
                        },
                        row_major(grad.as_ptr().add(b * cout * plane + oy0 * ow), plane),
                        1.0,
                        parallelism,
                    );
                }
                self.scatter(&col[..kb * n], channels.clone(), oys, image);
            }
        });
        dx
    }

    /// Every run of one patch row that lies inside the image, for `channels` channels and
    /// output rows `oys`: `f(patch row, position in it, input offset, length)`; the run's values
    /// sit at input offset, offset + `sw`, ... of the channels' `[channels, h, w]`, and at
    /// consecutive positions of the patch row `(c * kh + ky) * kw + kx`, `n` long.
    fn runs(
        &self,
        channels: usize,
        oys: std::ops::Range<usize>,
        mut f: impl FnMut(usize, usize, usize, usize),
    ) {
        let Geometry { h, w, kh, kw, .. } = *self;
        let (sh, sw, ph, pw, ow) = (self.sh, self.sw, self.ph, self.pw, self.ow);
        for c in 0..channels {
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = (c * kh + ky) * kw + kx;
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
                        let x0 = first * sw + kx - pw;
                        f(row, i * ow + first, (c * h + iy) * w + x0, last - first);
                    }
                }
            }
        }
    }

    /// im2col of output rows `oys` of one image `[in, h, w]` into `col` `[in * kh * kw, n]`
    /// (row `(c * kh + ky) * kw + kx`, the weight's own order; `col` starts zeroed, so the
    /// padding is left as it is).
    fn patches(&self, image: &[f32], oys: std::ops::Range<usize>, col: &mut [f32]) {
        let (n, sw) = (oys.len() * self.ow, self.sw);
        self.runs(self.cin, oys, |row, at, from, len| {
            let dst = &mut col[row * n + at..][..len];
            if sw == 1 {
                dst.copy_from_slice(&image[from..from + len]);
            } else {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = image[from + j * sw];
                }
            }
        });
    }

    /// The reverse of `patches` for channels `channels` (col2im): each value of `col`
    /// `[channels * kh * kw, n]` is added to the input position it was gathered from, in
    /// `image`, those channels' `[channels, h, w]`.
    fn scatter(
        &self,
        col: &[f32],
        channels: std::ops::Range<usize>,
        oys: std::ops::Range<usize>,
        image: &mut [f32],
    ) {
        let (n, sw) = (oys.len() * self.ow, self.sw);
        self.runs(channels.len(), oys, |row, at, from, len| {
            for (j, v) in col[row * n + at..][..len].iter().enumerate() {
                image[from + j * sw] += v;
            }
        });
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
    fn input_gradient_equals_burns_autodiff() {
        // (batch, in, out, h, w, kernel, stride, padding): as above, and more input channels
        // than one task's block.
        let cases = [
            (1, 4, 8, 16, 16, 3, 1, 1),
            (2, 3, 5, 7, 9, 3, 1, 1),
            (1, 6, 4, 9, 8, 3, 2, 1),
            (2, 5, 3, 10, 11, 3, 2, 0),
            (1, 2, 3, 13, 12, 7, 2, 3),
            (1, 2, 2, 3, 700, 3, 1, 1),
            (2, 37, 8, 12, 10, 3, 1, 1),
        ];
        let device = Device::flex().autodiff();
        let on = |t: &Tensor<4>| Tensor::<4>::from_data(t.to_data(), &device);
        for (batch, cin, cout, h, w, kernel, stride, padding) in cases {
            let x = random([batch, cin, h, w]);
            let weight = on(&random([cout, cin, kernel, kernel]));
            let bias = Tensor::<1>::from_data(random([cout]).to_data(), &device);
            let options = ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1);
            let (oh, ow) = (
                (h + 2 * padding - kernel) / stride + 1,
                (w + 2 * padding - kernel) / stride + 1,
            );
            // A loss whose gradient differs per output position.
            let w_out = on(&random([batch, cout, oh, ow]));
            let run = |ours: bool| {
                let x = on(&x).require_grad();
                let y = if ours {
                    conv2d(&x, &weight, Some(&bias), [stride; 2], [padding; 2])
                        .expect("applies under autodiff")
                } else {
                    module::conv2d(
                        x.clone(),
                        weight.clone(),
                        Some(bias.clone()),
                        options.clone(),
                    )
                };
                let grads = (y.clone() * w_out.clone()).sum().backward();
                (y.inner(), x.grad(&grads).expect("x's gradient"))
            };
            let ((y, dx), (y_ref, dx_ref)) = (run(true), run(false));
            for (what, got, expected) in [("output", y, y_ref), ("dx", dx, dx_ref)] {
                let scale = expected.clone().abs().max().into_scalar::<f32>();
                let diff = (got - expected).abs().max().into_scalar::<f32>();
                assert!(
                    scale > 0.0 && diff <= 1e-5 * scale.max(1.0),
                    "{cin}->{cout} {h}x{w} k{kernel} s{stride} p{padding} {what}: off by {diff} (max {scale})"
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
        let device = Device::flex().autodiff();
        let autodiff = Tensor::<4>::ones([1, 4, 8, 8], &device);
        assert!(
            conv2d(&autodiff, &random([4, 4, 3, 3]), None, [1, 1], [1, 1]).is_none(),
            "x and weight on different devices"
        );
        let trained = Tensor::<4>::ones([4, 4, 3, 3], &device).require_grad();
        assert!(
            conv2d(&autodiff, &trained, None, [1, 1], [1, 1]).is_none(),
            "a weight that needs its gradient runs burn's conv2d"
        );
    }
}
