"""GGUF UNet files as stable-diffusion.cpp and ComfyUI-GGUF write them: the tiny SD-Turbo UNet
(tests/fixtures/sd-turbo-tiny/unet) under its original LDM key names, for the key table in
core/src/models/unet/ldm.rs (tests/gguf_parity.rs draws diffusers' picture from each).

    pip install gguf==0.19.0 diffusers==0.42.1 safetensors torch
    python tests/reference/make_ldm_gguf_fixtures.py

The diffusers -> LDM table below is checked before anything is written: diffusers' own
`convert_ldm_unet_checkpoint` (diffusers.loaders.single_file_utils) must turn the LDM state
dict back into the original keys and tensors exactly.

- `sd-turbo-tiny-unet-sdcpp.gguf`: stable-diffusion.cpp's layout: a whole checkpoint's keys
  (`model.diffusion_model.` + the UNet's, and one `first_stage_model.` tensor that the UNet
  loader must leave alone), f16 except 1-D tensors (f32).
- `sd-turbo-tiny-unet-comfy.gguf`: ComfyUI-GGUF's `convert.py` layout: bare LDM keys, tensors
  whose size is a multiple of 256 but whose last dimension is not stored as `[n / 256, 256]`
  with `comfy.gguf.orig_shape.<key>` (int32 array), those quantized to Q8_0, the rest f16/f32.

Made with gguf 0.19.0, diffusers 0.42.1, torch 2.x.
"""
import json
import os

import gguf
import numpy as np
import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from gguf import GGMLQuantizationType as T
from safetensors.torch import load_file

HERE = os.path.dirname(__file__)
UNET = os.path.join(HERE, "..", "fixtures", "sd-turbo-tiny", "unet")
OUT = os.path.join(HERE, "..", "fixtures", "gguf")


def ldm_names(config):
    """diffusers key prefix -> LDM key prefix, built the way LDM's UNetModel lays out blocks."""
    table = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
             "time_embedding.linear_2.": "time_embed.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
             "mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
             "mid_block.resnets.1.": "middle_block.2."}
    layers = config["layers_per_block"]
    down = config["down_block_types"]
    i = 1
    for b, kind in enumerate(down):
        for l in range(layers):
            table[f"down_blocks.{b}.resnets.{l}."] = f"input_blocks.{i}.0."
            if kind.startswith("CrossAttn"):
                table[f"down_blocks.{b}.attentions.{l}."] = f"input_blocks.{i}.1."
            i += 1
        if b + 1 < len(down):
            table[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{i}.0.op."
            i += 1
    up = config["up_block_types"]
    j = 0
    for b, kind in enumerate(up):
        attention = kind.startswith("CrossAttn")
        for l in range(layers + 1):
            table[f"up_blocks.{b}.resnets.{l}."] = f"output_blocks.{j}.0."
            if attention:
                table[f"up_blocks.{b}.attentions.{l}."] = f"output_blocks.{j}.1."
            if l == layers and b + 1 < len(up):
                table[f"up_blocks.{b}.upsamplers.0.conv."] = f"output_blocks.{j}.{2 if attention else 1}.conv."
            j += 1
    return table


RESNET_PARTS = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "time_emb_proj.": "emb_layers.1.",
                "norm2.": "out_layers.0.", "conv2.": "out_layers.3.", "conv_shortcut.": "skip_connection."}


def to_ldm(key, table):
    prefix = max((p for p in table if key.startswith(p)), key=len)
    rest = key[len(prefix):]
    if ".resnets." in prefix:
        part = next(p for p in RESNET_PARTS if rest.startswith(p))
        rest = RESNET_PARTS[part] + rest[len(part):]
    return table[prefix] + rest


config = json.load(open(os.path.join(UNET, "config.json")))
state = load_file(os.path.join(UNET, "diffusion_pytorch_model.safetensors"))
table = ldm_names(config)
ldm = {to_ldm(k, table): v for k, v in state.items()}
assert len(ldm) == len(state), "two diffusers keys map to one LDM key"

# The proof: diffusers' converter takes the LDM names back to the original, tensor for tensor.
back = convert_ldm_unet_checkpoint({f"model.diffusion_model.{k}": v for k, v in ldm.items()}, config)
assert sorted(back) == sorted(state), sorted(set(back) ^ set(state))
for k, v in state.items():
    assert torch.equal(back[k], v), k

os.makedirs(OUT, exist_ok=True)

# stable-diffusion.cpp: whole-checkpoint keys, f16 weights, f32 1-D tensors.
path = os.path.join(OUT, "sd-turbo-tiny-unet-sdcpp.gguf")
writer = gguf.GGUFWriter(path, "stable-diffusion")
for k, v in sorted(ldm.items()):
    a = v.float().numpy()
    writer.add_tensor(f"model.diffusion_model.{k}", a if a.ndim == 1 else a.astype(np.float16))
writer.add_tensor("first_stage_model.decoder.conv_in.bias", np.zeros(4, np.float32))
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
print(f"{path}: {len(ldm)} UNet tensors")

# ComfyUI-GGUF: bare keys; its shape fix and orig_shape metadata; Q8_0 where the rows fill blocks.
path = os.path.join(OUT, "sd-turbo-tiny-unet-comfy.gguf")
writer = gguf.GGUFWriter(path, "sd1")
reshaped = 0
for k, v in sorted(ldm.items()):
    a = v.float().numpy()
    n = a.size
    if a.ndim > 1 and n % 256 == 0 and a.shape[-1] % 256 != 0:
        writer.add_array(f"comfy.gguf.orig_shape.{k}", [int(d) for d in a.shape])
        q = gguf.quants.quantize(a.reshape(n // 256, 256), T.Q8_0)
        writer.add_tensor(k, q, raw_dtype=T.Q8_0)
        reshaped += 1
    else:
        writer.add_tensor(k, a if a.ndim == 1 else a.astype(np.float16))
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
print(f"{path}: {len(ldm)} tensors, {reshaped} reshaped and Q8_0")
