"""Makes the image-file preprocessing fixtures (tests/fixtures/preprocess/): PNG files of several
sizes, aspect ratios and modes (RGB, grey, RGBA, grey+alpha; downscaling, upscaling, unchanged
size, crop offsets that round differently) and the pixels three Python pipelines make of them:

- pil_transforms: torchvision transforms on a PIL image, as OpenAI CLIP's `_transform`,
  open_clip's `image_transform` (HPSv2), ImageReward and the LAION aesthetic scripts write it:
  Resize(short, BICUBIC), CenterCrop(crop), convert("RGB"), ToTensor, Normalize.
- pil_processor: transformers' PIL image processor (`CLIPImageProcessorPil`) on the image
  converted to RGB first, as transformers 4's `CLIPProcessor` does it (PickScore's published
  code; transformers 5 composites transparency onto white instead, the torchvision case below).
- torchvision: transformers 5's default `CLIPImageProcessor` (torchvision backend).

Each output is stored as the uint8 image it normalises (exact: the script checks that
(u / 255 - mean) / std reproduces the pipeline's float output), so the fixture stays small.
Most cases use a 64 px crop (the arithmetic does not depend on the size); one uses CLIP's 224.
Run from the repository root:

    python tests/reference/make_preprocess_fixtures.py
"""

import json
import os
import shutil

import numpy as np
import open_clip
import PIL
import torch
import torchvision
import transformers
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms as T
from transformers import CLIPImageProcessor, CLIPImageProcessorPil

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "preprocess")
MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]

# (file, mode, width, height, [(shortest_edge, crop), ...])
CASES = [
    ("rgb-93x60.png", "RGB", 93, 60, [(64, 64)]),  # upscale; crop offset 17.5: rounds to 18, floors to 17
    ("rgb-301x200.png", "RGB", 301, 200, [(64, 64), (72, 64), (224, 224)]),  # downscale ~3x
    ("rgb-67x64.png", "RGB", 67, 64, [(64, 64)]),  # size unchanged; offset 1.5 -> 2 vs 1
    ("rgb-25x160.png", "RGB", 25, 160, [(64, 64)]),  # tall, upscale 2.6x
    ("rgb-800x260.png", "RGB", 800, 260, [(64, 64)]),  # wide, downscale 4x
    ("grey-181x257.png", "L", 181, 257, [(64, 64)]),
    ("rgba-120x90.png", "RGBA", 120, 90, [(64, 64)]),
    ("rgba-64x70.png", "RGBA", 64, 70, [(64, 64)]),  # size unchanged: Pillow copies, no premultiply
    ("greyalpha-50x40.png", "LA", 50, 40, [(64, 64)]),
]


def make_image(mode, w, h, seed):
    """Smooth gradients plus noise (compresses well, exercises every filter tap)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([
        127 + 120 * np.sin(x / 7.0 + seed),
        127 + 120 * np.cos(y / 5.0),
        127 + 120 * np.sin((x + y) / 11.0),
        # alpha: fully transparent, fully opaque and everything between
        np.clip(300 * np.sin(x / 9.0) * np.cos(y / 13.0), -40, 300),
    ], -1)
    px = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
    rgba = Image.fromarray(px, "RGBA")
    if mode == "RGBA":
        return rgba
    if mode == "RGB":
        return rgba.convert("RGB")
    if mode == "L":
        return rgba.convert("L")
    return Image.merge("LA", (rgba.convert("L"), rgba.getchannel("A")))


def pil_transforms(short, crop):
    return T.Compose([
        T.Resize(short, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(crop),
        lambda im: im.convert("RGB"),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])


def processor_kwargs(short, crop):
    return dict(size={"shortest_edge": short}, crop_size={"height": crop, "width": crop},
                image_mean=MEAN, image_std=STD)


def as_uint8(pixels, what):
    """The uint8 image a normalised [3, c, c] tensor came from, checked to be exact."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    u = torch.round((pixels * std + mean) * 255).clamp(0, 255)
    back = (u / 255 - mean) / std
    err = (back - pixels).abs().max().item()
    assert err < 2e-6, f"{what}: not a normalised uint8 image ({err})"
    return u.to(torch.uint8)


def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    os.makedirs(ROOT)
    tensors, cases = {}, []
    for seed, (name, mode, w, h, sizes) in enumerate(CASES):
        make_image(mode, w, h, seed).save(os.path.join(ROOT, name))
        img = Image.open(os.path.join(ROOT, name))  # as the scoring code gets it
        assert img.mode == mode and img.size == (w, h), (name, img.mode, img.size)
        for short, crop in sizes:
            key = f"{name}.{short}.{crop}"
            outs = {
                "pil_transforms": pil_transforms(short, crop)(img),
                "pil_processor": CLIPImageProcessorPil(**processor_kwargs(short, crop))(
                    images=[img.convert("RGB")], return_tensors="pt")["pixel_values"][0],
                "torchvision": CLIPImageProcessor(**processor_kwargs(short, crop))(
                    images=[img], return_tensors="pt")["pixel_values"][0],
            }
            if short == crop:
                # open_clip's eval transform (HPSv2) is the same pipeline.
                oc = open_clip.image_transform(crop, is_train=False, mean=MEAN, std=STD)(img)
                assert torch.equal(oc, outs["pil_transforms"]), key
            for path, px in outs.items():
                tensors[f"{key}.{path}"] = as_uint8(px, f"{key} {path}")
            cases.append({"file": name, "shortest_edge": short, "crop": crop, "key": key})
            diff = (outs["pil_transforms"] - outs["torchvision"]).abs().max().item()
            print(f"{key}: max |pil - torchvision| {diff:.3f}")

    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(ROOT, "reference.safetensors"))
    with open(os.path.join(ROOT, "reference.json"), "w") as f:
        json.dump({"mean": MEAN, "std": STD, "cases": cases, "versions": {
            "torch": torch.__version__, "torchvision": torchvision.__version__,
            "transformers": transformers.__version__, "open_clip": open_clip.__version__,
            "pillow": PIL.__version__, "numpy": np.__version__}}, f, indent=1)
    print("wrote", ROOT)


if __name__ == "__main__":
    main()
