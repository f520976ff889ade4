"""GGUF sizes of SD-Turbo's UNet (SD 2.1 architecture, 865 M parameters) under Tastebud's
quantization policy and under stable-diffusion.cpp's, computed from the architecture's tensor
shapes (no weights needed: the model is built on torch's meta device).

    python tests/bench/quant_sizes.py

Tastebud (`tastebud quantize`): a tensor of two or more dimensions is quantized when its values
per output row (all but the first dimension: a 3x3 convolution's in_channels * 9) fill whole
32-value blocks. stable-diffusion.cpp: only when the innermost dimension (a convolution's
kernel width, 3) does, and never biases, so every 3x3 convolution stays f16 (REFERENCE.md).
Tensors left out stay f16 in both. Header and metadata bytes are ignored (kilobytes).
"""
import math

import torch
from diffusers import UNet2DConditionModel

SD_TURBO_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
BYTES_PER_VALUE = {"f16": 2.0, "q8_0": 34 / 32, "q5_0": 22 / 32, "q4_0": 18 / 32}
# The mixed q4_0 recipe measured on the shapes model (BENCHMARKS.md), by UNet level: the
# outermost level (first down block, last up block) q8_0, the next q5_0, the rest q4_0.
MIXED = [("down_blocks.0.", "q8_0"), ("up_blocks.3.", "q8_0"), ("down_blocks.1.", "q5_0"),
         ("up_blocks.2.", "q5_0")]


def tastebud(shape):
    return len(shape) >= 2 and math.prod(shape[1:]) % 32 == 0


def sd_cpp(shape):
    return len(shape) >= 2 and shape[-1] % 32 == 0


def size(shapes, policy, kind, mix=()):
    total = 0.0
    for name, shape in shapes.items():
        n = math.prod(shape)
        chosen = next((k for part, k in mix if name.startswith(part)), kind)
        total += n * (BYTES_PER_VALUE[chosen] if policy(shape) else 2.0)
    return total


def main():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD_TURBO_UNET)
    shapes = {name: tuple(p.shape) for name, p in unet.state_dict().items()}
    params = sum(math.prod(s) for s in shapes.values())
    f16 = params * 2.0
    print(f"SD-Turbo UNet: {params / 1e6:.1f} M parameters, f16 {f16 / 1e9:.3f} GB")
    print("| format | Tastebud (GB, x f16) | stable-diffusion.cpp policy (GB, x f16) |")
    print("|---|---|---|")
    for kind in ["q8_0", "q4_0"]:
        ours, theirs = size(shapes, tastebud, kind), size(shapes, sd_cpp, kind)
        print(f"| {kind} | {ours / 1e9:.3f} ({ours / f16:.2f}x) | {theirs / 1e9:.3f} ({theirs / f16:.2f}x) |")
    mixed = size(shapes, tastebud, "q4_0", MIXED)
    print(f"| q4_0 mixed (outer level q8_0, next q5_0) | {mixed / 1e9:.3f} ({mixed / f16:.3f}x) | - |")
    left = sum(math.prod(s) for s in shapes.values() if not tastebud(s))
    conv = sum(math.prod(s) for s in shapes.values() if len(s) == 4 and s[-1] == 3)
    print(f"left in f16 by Tastebud: {left / 1e6:.2f} M values; 3x3 convolutions: {conv / 1e6:.1f} M values "
          f"({conv / params:.0%} of the UNet), all quantized by Tastebud, none by stable-diffusion.cpp")


if __name__ == "__main__":
    main()
