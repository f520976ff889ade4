"""Quantization error on the SD-Turbo UNet architecture (SD 2.1, 866 M parameters) with
random weights (no pretrained weights can be downloaded here): per layer type, the relative
error ||W - dequant(quant(W))|| / ||W|| of every tensor `tastebud quantize` would quantize
(same rule: 2+ dimensions, rows of whole 32-value blocks, `conv_out` kept), through the `gguf`
package's Q8_0/Q5_0/Q4_0 (bit-exact with core/src/quant.rs), and the relative error of the
UNet's output for one denoising call at 512 px (64x64 latents) against f32.

    python tests/bench/quant_error_sdturbo.py      # ~4 minutes, ~10 GB of memory, 2 cores

Random weights are diffusers' default initialisation, so these are the block formats' errors
on that distribution; trained weights (outliers, per-channel scales) do worse, which is why
the shapes model's measured sensitivity (tests/bench/quant_sensitivity.py) decides recipes.
"""
import math
from collections import defaultdict

import gguf
import numpy as np
import torch
from diffusers import UNet2DConditionModel
from gguf import GGMLQuantizationType as T

from quant_sizes import MIXED, SD_TURBO_UNET

FORMATS = {"q8_0": T.Q8_0, "q5_0": T.Q5_0, "q4_0": T.Q4_0}


def kind(name, shape):
    if len(shape) == 4:
        return f"conv {shape[2]}x{shape[3]}"
    if "attn" in name:
        return "attention q/k/v/out"
    if ".ff." in name:
        return "feed-forward"
    if "proj_in" in name or "proj_out" in name:
        return "attention in/out projection"
    return "other linear"


def quantizable(name, shape):
    return len(shape) >= 2 and math.prod(shape[1:]) % 32 == 0 and "conv_out" not in name


def roundtrip(w, fmt):
    rows = w.reshape(w.shape[0], -1).numpy()
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(rows, fmt), fmt)).reshape(w.shape)


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    unet = UNet2DConditionModel(**SD_TURBO_UNET).eval()
    state = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    sample = torch.randn(1, 4, 64, 64)
    context = torch.randn(1, 77, 1024)
    with torch.no_grad():
        want = unet(sample, 999, context).sample
    print("| format | " + " | ".join(sorted({kind(n, tuple(v.shape)) for n, v in state.items()
                                               if quantizable(n, tuple(v.shape))})) + " | UNet output |")
    header_done = False
    for name, fmt in list(FORMATS.items()) + [("q4_0 mixed", None)]:
        errors = defaultdict(lambda: [0.0, 0.0])
        quantized = {}
        for n, w in state.items():
            shape = tuple(w.shape)
            if not quantizable(n, shape):
                quantized[n] = w
                continue
            f = fmt or FORMATS[next((k for part, k in MIXED if n.startswith(part)), "q4_0")]
            q = roundtrip(w, f)
            e = errors[kind(n, shape)]
            e[0] += float(((w - q) ** 2).sum())
            e[1] += float((w ** 2).sum())
            quantized[n] = q
        unet.load_state_dict(quantized)
        with torch.no_grad():
            got = unet(sample, 999, context).sample
        out = float((got - want).norm() / want.norm())
        if not header_done:
            print("|---" * (len(errors) + 2) + "|")
            header_done = True
        cells = [f"{math.sqrt(e / n):.4f}" for _, (e, n) in sorted(errors.items())]
        print(f"| {name} | " + " | ".join(cells) + f" | {out:.4f} |", flush=True)
        unet.load_state_dict(state)


if __name__ == "__main__":
    main()
