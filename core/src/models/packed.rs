//! Linear and 2-D convolution layers whose weights may stay quantized on the device.
//!
//! A layer holds its weight either dense (`weight`, as burn's layers do) or as ggml blocks
//! (`qwords`: each block's packed codes as i32 words, `qscales`: its f16 scale, and minimum for
//! the `_1` formats, widened to the device's float type), filled by
//! [`crate::weights::load_remapped`] when a GGUF file stores the weight quantized. A packed layer
//! rebuilds its weight when it runs, bit-exactly as [`crate::quant::dequantize`] does, so device
//! memory holds 1.125 (Q8_0) to 0.625 (Q4_0) bytes a weight instead of 4. Both representations
//! start lazy (nothing allocated) and the one the file did not fill stays so.
//!
//! The struct names matter: burn-store's PyTorch adapter transposes the `weight` of a struct
//! named `Linear`, as PyTorch stores `[out, in]` and burn computes with `[in, out]`.

use burn::module::{Module, Param, ParamId};
use burn::nn::Initializer;
use burn::tensor::module::{conv2d, linear};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Int, Shape, Tensor, TensorData};

use crate::profile::scope;
use crate::quant::BLOCK;

/// What burn's own Linear and Conv2d initialise with (weights are always loaded; this only
/// matters for a module used without loading).
fn kaiming() -> Initializer {
    Initializer::KaimingUniform {
        gain: 1.0 / 3f64.sqrt(),
        fan_out_only: false,
    }
}

/// Placeholders for the packed words and scales: never allocated unless a file fills them. The
/// declared shape is the weight's `[rows, values per row]`, which the loader checks.
fn lazy_words(rows: usize, per_row: usize, device: &Device) -> Param<Tensor<2, Int>> {
    Param::uninitialized(
        ParamId::new(),
        |device, _| Tensor::empty([0, 1], device),
        device.clone(),
        false,
        Shape::new([rows, per_row]),
    )
}

fn lazy_scales(rows: usize, per_row: usize, device: &Device) -> Param<Tensor<2>> {
    Param::uninitialized(
        ParamId::new(),
        |device, _| Tensor::empty([0, 1], device),
        device.clone(),
        false,
        Shape::new([rows, per_row]),
    )
}

/// A Linear layer: `y = x W^T + b` with PyTorch's `[out, in]` weight.
#[derive(Module, Debug)]
pub struct Linear {
    /// Dense, in burn's `[in, out]` layout.
    weight: Param<Tensor<2>>,
    bias: Option<Param<Tensor<1>>>,
    /// Packed ggml blocks of the `[out, in]` weight: `[blocks, words]` and `[blocks, 1 or 2]`.
    qwords: Param<Tensor<2, Int>>,
    qscales: Param<Tensor<2>>,
}

impl Linear {
    pub fn new(d_input: usize, d_output: usize, bias: bool, device: &Device) -> Self {
        let init = kaiming();
        Self {
            weight: init.init_with([d_input, d_output], Some(d_input), Some(d_output), device),
            bias: bias.then(|| init.init_with([d_output], Some(d_input), Some(d_output), device)),
            qwords: lazy_words(d_output, d_input, device),
            qscales: lazy_scales(d_output, d_input, device),
        }
    }

    /// The width of the input this layer takes.
    pub fn d_input(&self) -> usize {
        self.weight.lazy_shape()[0]
    }

    /// Whether the weight is held as quantized blocks.
    pub fn is_packed(&self) -> bool {
        self.qwords.is_initialized()
    }

    /// The weight in burn's `[in, out]` layout (rebuilt from its blocks when packed).
    pub fn weight(&self) -> Tensor<2> {
        if self.is_packed() {
            let [d_input, d_output] = self.weight.lazy_shape().dims();
            let words = self.qwords.val();
            scope("unpack quantized", &words.device(), || {
                unpack(words, self.qscales.val(), [d_output, d_input]).transpose()
            })
        } else {
            self.weight.val()
        }
    }

    /// `[..., in]` -> `[..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let weight = self.weight();
        let bias = self.bias.as_ref().map(|b| b.val());
        scope("linear", &x.device(), || {
            #[cfg(not(target_arch = "wasm32"))]
            if let Some(y) = super::cpu_linear::linear(&x, &weight, bias.as_ref()) {
                return y;
            }
            linear(x, weight, bias)
        })
    }
}

/// A 2-D convolution with symmetric zero padding (all diffusers and CLIP use).
#[derive(Module, Debug)]
pub struct Conv2d {
    /// `[out, in, kh, kw]`.
    weight: Param<Tensor<4>>,
    bias: Option<Param<Tensor<1>>>,
    /// Packed ggml blocks of the weight flattened to `[out, in * kh * kw]`.
    qwords: Param<Tensor<2, Int>>,
    qscales: Param<Tensor<2>>,
    stride: [usize; 2],
    padding: [usize; 2],
}

impl Conv2d {
    /// A square `kernel` x `kernel` convolution.
    pub fn new(
        [cin, cout]: [usize; 2],
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
        device: &Device,
    ) -> Self {
        let init = kaiming();
        let fan_in = cin * kernel * kernel;
        let fan_out = cout * kernel * kernel;
        Self {
            weight: init.init_with(
                [cout, cin, kernel, kernel],
                Some(fan_in),
                Some(fan_out),
                device,
            ),
            bias: bias.then(|| init.init_with([cout], Some(fan_in), Some(fan_out), device)),
            qwords: lazy_words(cout, fan_in, device),
            qscales: lazy_scales(cout, fan_in, device),
            stride: [stride; 2],
            padding: [padding; 2],
        }
    }

    /// Whether the weight is held as quantized blocks.
    pub fn is_packed(&self) -> bool {
        self.qwords.is_initialized()
    }

    /// The weight, `[out, in, kh, kw]` (rebuilt from its blocks when packed).
    pub fn weight(&self) -> Tensor<4> {
        if self.is_packed() {
            let shape: [usize; 4] = self.weight.lazy_shape().dims();
            let [o, i, kh, kw] = shape;
            let words = self.qwords.val();
            scope("unpack quantized", &words.device(), || {
                unpack(words, self.qscales.val(), [o, i * kh * kw]).reshape(shape)
            })
        } else {
            self.weight.val()
        }
    }

    /// `[batch, in, h, w]` -> `[batch, out, h', w']`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let options = ConvOptions::new(self.stride, self.padding, [1, 1], 1);
        let weight = self.weight();
        let kind = match weight.dims()[2..] {
            [1, 1] => "conv2d 1x1",
            [3, 3] => "conv2d 3x3",
            _ => "conv2d other",
        };
        let bias = self.bias.as_ref().map(|b| b.val());
        scope(kind, &x.device(), || {
            #[cfg(not(target_arch = "wasm32"))]
            if let Some(y) =
                super::cpu_conv::conv2d(&x, &weight, bias.as_ref(), self.stride, self.padding)
            {
                return y;
            }
            conv2d(x, weight, bias, options)
        })
    }
}

/// ggml blocks back to values, in the graph: `words` `[blocks, 8]` is Q8_0 (four signed bytes a
/// word), `[blocks, 4]` Q4_0/Q4_1 (16 bytes of nibbles: value `j` in the low nibble of byte `j`,
/// value `j + 16` in its high nibble), `[blocks, 5]` Q5_0/Q5_1 (the 32 fifth bits, then the
/// nibbles); `scales` `[blocks, 1]` is `d` (codes centred: Q8_0 signed, Q4_0 minus 8, Q5_0 minus
/// 16), `[blocks, 2]` is `d, m` (codes unsigned, plus `m`). Width-agnostic integer arithmetic
/// (shift right, mask), so it is the same whatever integer type the backend uses.
pub fn unpack(words: Tensor<2, Int>, scales: Tensor<2>, [rows, cols]: [usize; 2]) -> Tensor<2> {
    let [blocks, width] = words.dims();
    let device = words.device();
    let with_min = scales.dims()[1] == 2;
    let codes = match width {
        8 => {
            let u = bytes_of(words);
            // Two's complement of a byte: 128..255 are -128..-1.
            u.clone() - u.bitwise_right_shift_scalar(7).mul_scalar(256)
        }
        4 => {
            let nibbles = nibbles_of(bytes_of(words));
            if with_min {
                nibbles
            } else {
                nibbles.sub_scalar(8)
            }
        }
        _ => {
            let fifth = words.clone().narrow(1, 0, 1).expand([blocks, BLOCK]);
            let positions: Vec<i32> = (0..BLOCK as i32).collect();
            let positions = TensorData::new(positions, [BLOCK]);
            let positions = Tensor::<1, Int>::from_data(positions, (&device, words.dtype()))
                .reshape([1, BLOCK])
                .expand([blocks, BLOCK]);
            let fifth = fifth.bitwise_right_shift(positions).bitwise_and_scalar(1);
            let nibbles = nibbles_of(bytes_of(words.narrow(1, 1, 4)));
            let codes = nibbles + fifth.mul_scalar(16);
            if with_min {
                codes
            } else {
                codes.sub_scalar(16)
            }
        }
    };
    let d = scales.clone().narrow(1, 0, 1);
    let values = codes.float() * d;
    let values = if with_min {
        values + scales.narrow(1, 1, 1)
    } else {
        values
    };
    values.reshape([rows, cols])
}

/// `[blocks, w]` little-endian words as `[blocks, 4 w]` bytes (0..255).
fn bytes_of(words: Tensor<2, Int>) -> Tensor<2, Int> {
    let [blocks, width] = words.dims();
    let shifts = TensorData::new(vec![0i32, 8, 16, 24], [4]);
    let shifts = Tensor::<1, Int>::from_data(shifts, (&words.device(), words.dtype()))
        .reshape([1, 1, 4])
        .expand([blocks, width, 4]);
    words
        .reshape([blocks, width, 1])
        .expand([blocks, width, 4])
        .bitwise_right_shift(shifts)
        .bitwise_and_scalar(0xff)
        .reshape([blocks, width * 4])
}

/// `[blocks, 16]` bytes as the block's 32 four-bit codes: low nibbles first, then high ones.
fn nibbles_of(bytes: Tensor<2, Int>) -> Tensor<2, Int> {
    let low = bytes.clone().bitwise_and_scalar(0xf);
    let high = bytes.bitwise_right_shift_scalar(4);
    Tensor::cat(vec![low, high], 1)
}

/// How many layers of `module` hold their weight as quantized blocks (a check for tests and
/// benchmarks: a GGUF file's quantized layers should all stay packed).
pub fn packed_layers<M: Module>(module: &M) -> usize {
    #[derive(Default)]
    struct Count {
        path: Vec<String>,
        packed: usize,
    }
    impl burn::module::ModuleVisitor for Count {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
            if self.path.last().is_some_and(|n| n == "qwords") && param.is_initialized() {
                self.packed += 1;
            }
        }
    }
    let mut count = Count::default();
    module.visit(&mut count);
    count.packed
}
