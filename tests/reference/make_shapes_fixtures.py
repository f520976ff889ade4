"""Parity references on the shipped shapes-world models (models/shapes/): trained weights work
the numerics far harder than the random fixtures.

- generator/: diffusers' own StableDiffusionPipeline (f32 compute on the f16 files) from fixed
  noise, 1 and 2 steps, no guidance -> PNGs that `tastebud generate --noise` must match to +-1.
- clip/: transformers' CLIPModel scores of those pictures against their prompts (the folder's
  saved processor; at 64 px no resizing happens, so every preprocessing path agrees).
- proxy/: the same pipeline with the proxy decoder (AutoencoderTiny) as its VAE, as TAESD is
  swapped in -> PNGs that `tastebud generate --noise --decoder models/shapes/proxy` must match.

Run from the repository root after models/shapes/train/export.py:

    python tests/reference/make_shapes_fixtures.py

Writes tests/fixtures/shapes/ (noise*.npy, image*.png, proxy*.png, reference.json).
"""

import json
import os
import shutil
import sys

import diffusers
import numpy as np
import PIL
import torch
import transformers
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "..", "models", "shapes")
OUT = os.path.join(HERE, "..", "fixtures", "shapes")

CASES = [
    # (prompt, steps, noise seed)
    ("a photo of a red circle", 1, 0),
    ("a blue square to the left of a yellow triangle", 1, 1),
    ("three green triangles", 1, 2),
    ("a photo of an orange disc and a purple square", 2, 3),
]


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(
        os.path.join(MODELS, "generator"), torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    proxy = diffusers.AutoencoderTiny.from_pretrained(os.path.join(MODELS, "proxy"), torch_dtype=torch.float32)
    proxy_pipe = diffusers.StableDiffusionPipeline(**{**pipe.components, "vae": proxy})
    proxy_pipe.set_progress_bar_config(disable=True)
    clip = CLIPModel.from_pretrained(os.path.join(MODELS, "clip"), torch_dtype=torch.float32).eval()
    processor = CLIPProcessor.from_pretrained(os.path.join(MODELS, "clip"))
    cases = []
    for i, (prompt, steps, seed) in enumerate(CASES):
        noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(seed))
        np.save(os.path.join(OUT, f"noise{i}.npy"), noise.numpy())
        images = []
        for pipeline, name in ((pipe, f"image{i}.png"), (proxy_pipe, f"proxy{i}.png")):
            with torch.no_grad():
                out = pipeline(prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=0.0,
                               latents=noise.clone(), output_type="np").images
            images.append(Image.fromarray((out[0] * 255).round().astype(np.uint8)))
            images[-1].save(os.path.join(OUT, name))
        image = images[0]
        inputs = processor(text=[prompt], images=[image], return_tensors="pt", padding="max_length")
        with torch.no_grad():
            logit = clip(**inputs).logits_per_image[0, 0].item()
        cases.append({"prompt": prompt, "steps": steps, "noise": f"noise{i}.npy",
                      "image": f"image{i}.png", "proxy_image": f"proxy{i}.png",
                      "clip_logit": logit})
    versions = {"python": sys.version.split()[0], "torch": torch.__version__,
                "diffusers": diffusers.__version__, "transformers": transformers.__version__,
                "pillow": PIL.__version__, "numpy": np.__version__}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"versions": versions, "cases": cases}, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
