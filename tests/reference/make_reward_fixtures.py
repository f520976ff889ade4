"""Makes the reward parity fixtures: tiny random rewards in their published layouts and the
Python references' scores and image gradients on them.

- clip / pickscore: the transformers CLIP folders of make_fixtures.py (tests/fixtures/clip-openai,
  clip-openclip); scores exp(logit_scale) * cos.
- OpenCLIP layout (tests/fixtures/rewards/open-clip-tiny): one open_clip model saved both as the
  hub's open_clip_model.safetensors and as HPSv2's HPS_v2.1_compressed.pt
  (torch.save({"state_dict": ...}), f16), with open_clip_config.json and the BPE vocabulary;
  references from open_clip's own encode_image / encode_text and tokenizer.
- aesthetic (tests/fixtures/rewards/aesthetic-head): LAION's MLP class (nn.Sequential with
  dropouts, keys layers.0/2/4/6/7), scaled down, saved with torch.save like the published .pth;
  it runs on clip-openai's image embedding.
- dino (tests/fixtures/rewards/dinov2-tiny): a transformers Dinov2Model folder whose position
  grid (5x5, image_size 70) is interpolated to the 16x16 patches of a 224 crop; the reference
  image is tests/fixtures/image1.png, preprocessed by the folder's BitImageProcessor.
- bad checkpoints: a .pt whose pickle calls os.system, and one in torch's legacy format (the
  only file that differs between runs: the legacy format records random storage keys).

Images go through the differentiable path ReNO uses (torchvision resize bicubic antialias,
centre crop, normalise on float tensors). Image files (file_images(): the two fixture PNGs, an
upscaled RGB one and a transparent one) go through each reward's published preprocessing
(`.file_scores`: OpenAI CLIP's / open_clip's torchvision transforms on PIL images for clip, hps,
aesthetic and DINOv2's eval transform; transformers 4's PIL CLIPProcessor for PickScore) and
through transformers 5's default CLIPImageProcessor (`.file_scores_torchvision`). Gradients are
d(sum of scores)/d(images). Run after make_fixtures.py and make_preprocess_fixtures.py, from the
repository root:

    python tests/reference/make_reward_fixtures.py
"""

import json
import os
import shutil
import sys

import numpy as np
import open_clip
import torch
import torchvision
import transformers
from safetensors.torch import save_file
from torchvision.transforms.v2 import functional as tvF
from torchvision import transforms as T
from transformers import CLIPImageProcessor, CLIPModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import ROOT, file_images, half_roundtrip, test_images  # noqa: E402

OUT = os.path.join(ROOT, "rewards")
PROMPT = "a photo of a cat"
MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


class AestheticMLP(torch.nn.Module):
    """improved-aesthetic-predictor's MLP, with every width divided down (real: 768-1024-128-64-16-1)."""

    def __init__(self, input_size, widths=(24, 12, 8, 4)):
        super().__init__()
        a, b, c, d = widths
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(input_size, a), torch.nn.Dropout(0.2),
            torch.nn.Linear(a, b), torch.nn.Dropout(0.2),
            torch.nn.Linear(b, c), torch.nn.Dropout(0.1),
            torch.nn.Linear(c, d), torch.nn.Linear(d, 1))

    def forward(self, x):
        return self.layers(x)


class RunsCode:
    """What a malicious checkpoint pickles: unpickling it calls os.system."""

    def __reduce__(self):
        return (os.system, ("echo this checkpoint ran code",))


def float_images():
    """A batch of two float images in [0, 1] at a size that is neither square nor 224."""
    g = torch.Generator().manual_seed(7)
    return torch.rand(2, 3, 48, 64, generator=g)


def differentiable_pixels(x, short=224, mean=MEAN, std=STD):
    y = tvF.resize(x, [short], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
    y = tvF.center_crop(y, [224, 224])
    return tvF.normalize(y, mean, std)


def pil_transforms(short=224, crop=224, mean=MEAN, std=STD):
    """OpenAI CLIP's `_transform` (also open_clip's eval transform, ImageReward's, the LAION
    aesthetic scripts', and with ImageNet statistics DINOv2's eval transform)."""
    tf = T.Compose([T.Resize(short, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(crop),
                    lambda im: im.convert("RGB"), T.ToTensor(), T.Normalize(mean, std)])
    return lambda images: torch.stack([tf(im) for im in images])


def pil_processor(images):
    """transformers 4's CLIPProcessor (PickScore's code): RGB first, then the PIL processor."""
    from transformers import CLIPImageProcessorPil  # transformers 5 (this script's environment)
    proc = CLIPImageProcessorPil()
    return proc(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]


def file_pixels(images, proc=None):
    """transformers 5's default CLIPImageProcessor (torchvision backend)."""
    proc = proc or CLIPImageProcessor()  # CLIP's defaults: 224, bicubic, centre crop, CLIP mean/std
    return proc(images=images, return_tensors="pt")["pixel_values"]


def text_features(model, **inputs):
    return model.text_projection(model.text_model(**inputs).pooler_output)


def image_features(model, px):
    return model.visual_projection(model.vision_model(pixel_values=px).pooler_output)


def unit(t):
    return t / t.norm(dim=-1, keepdim=True)


def record(tensors, name, score_fn, grad=True, pixels=differentiable_pixels, published=pil_transforms(),
           proc=None):
    """Scores of the float batch (with their image gradient) and of the image files, through the
    reward's published preprocessing and through transformers 5's processor."""
    x = float_images().requires_grad_(grad)
    s = score_fn(pixels(x))
    tensors[f"{name}.float_scores"] = s.detach().clone()
    if grad:
        s.sum().backward()
        tensors[f"{name}.grad"] = x.grad.detach().clone()
    with torch.no_grad():
        tensors[f"{name}.file_scores"] = score_fn(published(file_images())).clone()
        tensors[f"{name}.file_scores_torchvision"] = score_fn(file_pixels(file_images(), proc)).clone()


def hf_clip_scores(folder, tensors, name, variant=None, published=pil_transforms()):
    model = CLIPModel.from_pretrained(os.path.join(ROOT, folder), variant=variant).float().eval()
    tok = transformers.AutoTokenizer.from_pretrained(os.path.join(ROOT, folder))
    with torch.no_grad():
        text = unit(text_features(model, **tok([PROMPT], return_tensors="pt")))
    scale = model.logit_scale.exp().item()
    record(tensors, name, lambda px: scale * (unit(image_features(model, px)) @ text.T)[:, 0],
           published=published)
    return model


def open_clip_model():
    torch.manual_seed(11)
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 40, "head_width": 20, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
    }
    model = open_clip.model.CLIP(**cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # open_clip zero-inits some tensors; make every one count
            p.add_(torch.randn_like(p) * 0.02)
        model.logit_scale.fill_(2.3)
    return half_roundtrip(model), cfg


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    # Everything but imagereward-tiny, which make_imagereward_fixtures.py writes.
    os.makedirs(OUT, exist_ok=True)
    for entry in os.listdir(OUT):
        if entry != "imagereward-tiny":
            path = os.path.join(OUT, entry)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    tensors = {}
    ref = {"prompt": PROMPT, "versions": {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "transformers": transformers.__version__, "open_clip": open_clip.__version__,
        "numpy": np.__version__}}

    # CLIPScore and PickScore on transformers folders.
    clip = hf_clip_scores("clip-openai", tensors, "clip")
    hf_clip_scores("clip-openclip", tensors, "pickscore", variant="fp16", published=pil_processor)

    # OpenCLIP layout: hub safetensors and HPSv2's .pt, one model.
    oc, cfg = open_clip_model()
    folder = os.path.join(OUT, "open-clip-tiny")
    os.makedirs(folder)
    state = {k: v.detach().half().contiguous() for k, v in oc.state_dict().items()}
    save_file(state, os.path.join(folder, "open_clip_model.safetensors"))
    torch.save({"state_dict": state, "epoch": 3}, os.path.join(folder, "HPS_v2.1_compressed.pt"))
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump({"model_cfg": cfg, "preprocess_cfg": {"mean": MEAN, "std": STD}}, f, indent=1)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(ROOT, "clip-openclip", name), folder)
    tokens = open_clip.get_tokenizer("ViT-H-14")([PROMPT])
    with torch.no_grad():
        text = unit(oc.encode_text(tokens))
    scale = oc.logit_scale.exp().item()
    cos = lambda px: (unit(oc.encode_image(px)) @ text.T)[:, 0]  # noqa: E731
    # HPSv2 scores through open_clip's own eval transform: the same pipeline as pil_transforms.
    oc_transform = open_clip.image_transform(224, is_train=False, mean=MEAN, std=STD)
    hps_files = lambda images: torch.stack([oc_transform(im) for im in images])  # noqa: E731
    record(tensors, "hps", cos, published=hps_files)
    record(tensors, "open_clip", lambda px: scale * cos(px), grad=False, published=hps_files)
    ref["open_clip_tokens"] = tokens[0][: int(tokens[0].argmax()) + 1].tolist()

    # LAION aesthetic head on clip-openai's image embedding.
    torch.manual_seed(5)
    head = AestheticMLP(clip.config.projection_dim).eval()
    os.makedirs(os.path.join(OUT, "aesthetic-head"))
    torch.save(head.state_dict(), os.path.join(OUT, "aesthetic-head", "sac+logos+ava1-l14-linearMSE.pth"))
    record(tensors, "aesthetic", lambda px: head(unit(image_features(clip, px)))[:, 0])

    # DINOv2 similarity to a reference image.
    from transformers import AutoImageProcessor, BitImageProcessor, Dinov2Config, Dinov2Model
    torch.manual_seed(13)
    folder = os.path.join(OUT, "dinov2-tiny")
    dino = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    image_size=70, patch_size=14)).eval()
    with torch.no_grad():
        for p in dino.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    dino.save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    proc = AutoImageProcessor.from_pretrained(folder)
    ref["dino_processor"] = type(proc).__name__
    # DINOv2's eval transform (Resize(256, BICUBIC), CenterCrop(224), ImageNet statistics) on PIL
    # images, for the reference image and scored files alike.
    dino_files = pil_transforms(256, 224, proc.image_mean, proc.image_std)
    with torch.no_grad():
        reference_feature = unit(dino(pixel_values=dino_files([test_images()[1]])).pooler_output)
    dino_pixels = lambda x: differentiable_pixels(x, 256, proc.image_mean, proc.image_std)  # noqa: E731
    record(tensors, "dino", lambda px: (unit(dino(pixel_values=px).pooler_output) @ reference_feature.T)[:, 0],
           pixels=dino_pixels, published=dino_files, proc=proc)

    # Checkpoints that must be refused.
    bad = os.path.join(OUT, "bad")
    os.makedirs(bad)
    torch.save({"state_dict": {"w": torch.ones(2)}, "payload": RunsCode()}, os.path.join(bad, "runs-code.pt"))
    torch.save({"w": torch.ones(2)}, os.path.join(bad, "legacy.pt"), _use_new_zipfile_serialization=False)

    tensors["images"] = float_images()
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print("wrote", OUT, sorted(tensors))


if __name__ == "__main__":
    main()
