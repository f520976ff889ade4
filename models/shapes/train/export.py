"""Stage 5: the shipped models, as unmodified Hugging Face layouts in f16 safetensors.

- models/shapes/generator/: a diffusers StableDiffusionPipeline snapshot (the distilled UNet,
  the VAE, stage 1b's CLIP text tower as `text_encoder/` (the states the UNet of stage 3b learnt
  from; the reward's own), the world's tokenizer, Euler with trailing timesteps), saved by
  diffusers' and transformers' own
  `save_pretrained`.
- models/shapes/clip/: the reward: stage 1b's CLIP (taught where things are) as a transformers
  CLIPModel folder.
- models/shapes/proxy/: stage 2b's proxy decoder (a diffusers AutoencoderTiny folder, as TAESD)
  that `optimize --method pruned` scores candidates through.
- models/shapes/manifest.json: every shipped file with its size and sha256, and the scores
  of the training run.
"""

import copy
import hashlib
import json
import os
import re
import shutil

import torch
from diffusers import (AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTextModel

import common


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def drop_work_paths(folder):
    """Removes the `_name_or_path` lines (a local path, not part of the model) from its configs."""
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".json"):
                path = os.path.join(root, name)
                with open(path) as f:
                    text = f.read()
                with open(path, "w") as f:
                    f.write(re.sub(r'\n\s*"_name_or_path": "[^"]*",', "", text))


def main():
    tok = common.tokenizer()
    spec = common.world()
    clip = CLIPModel.from_pretrained(f"{common.WORK}/clip-reward").eval()
    size = spec["image_size"]
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": size},
                                           crop_size={"height": size, "width": size}),
        tokenizer=tok)

    # transformers 5's CLIPModel holds its text tower as a CLIPTextModel: the generator's encoder.
    text = copy.deepcopy(CLIPModel.from_pretrained(f"{common.WORK}/clip-reward").text_model)
    assert isinstance(text, CLIPTextModel)
    clip_dir = os.path.join(common.OUT, "clip")
    shutil.rmtree(clip_dir, ignore_errors=True)
    clip.to(torch.float16).save_pretrained(clip_dir)
    processor.save_pretrained(clip_dir)

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(f"{common.WORK}/vae"),
        text_encoder=text.eval(),
        tokenizer=tok,
        unet=UNet2DConditionModel.from_pretrained(f"{common.WORK}/unet"),
        scheduler=EulerDiscreteScheduler(**common.TURBO_SCHEDULER),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    gen_dir = os.path.join(common.OUT, "generator")
    shutil.rmtree(gen_dir, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(gen_dir, safe_serialization=True)

    proxy_dir = os.path.join(common.OUT, "proxy")
    shutil.rmtree(proxy_dir, ignore_errors=True)
    AutoencoderTiny.from_pretrained(f"{common.WORK}/proxy").to(torch.float16).save_pretrained(proxy_dir)

    # save_pretrained records where the weights were read from (this machine's work folder).
    for folder in (gen_dir, clip_dir, proxy_dir):
        drop_work_paths(folder)

    reports = {}
    for stage in ("clip", "clip-position", "vae", "proxy", "unet", "unet-1b", "distill"):
        with open(os.path.join(common.WORK, f"{stage}.done")) as f:
            reports[stage] = json.load(f)
    files = []
    for folder in (gen_dir, clip_dir, proxy_dir):
        for root, _, names in os.walk(folder):
            for name in sorted(names):
                path = os.path.join(root, name)
                files.append({"file": os.path.relpath(path, common.OUT), "bytes": os.path.getsize(path),
                              "sha256": sha256(path)})
    files.sort(key=lambda f: f["file"])
    manifest = {"world": "world.json", "files": files, "total_bytes": sum(f["bytes"] for f in files),
                "training": reports}
    with open(os.path.join(common.OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    common.log("export", f"wrote {len(files)} files, {manifest['total_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
