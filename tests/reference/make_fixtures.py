"""Makes Tastebud's parity fixtures: tiny random-initialised models with the real
architectures and key names, and the reference outputs of the Python libraries on them.

No downloads: models are built at random init, the CLIP BPE vocabulary comes from the
open_clip_torch package. Run from the repository root:

    python tests/reference/make_fixtures.py

Writes tests/fixtures/ (models, images, reference.json, reference.safetensors).
"""

import gzip
import json
import math
import os
import shutil
import sys

import numpy as np
import open_clip
import PIL
import safetensors
import tokenizers
import torch
import torchvision
import transformers
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms.v2 import functional as tvF
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPTextModel,
                          CLIPTextModelWithProjection, CLIPTokenizer)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
torch.manual_seed(0)
torch.set_num_threads(1)

PROMPTS = [
    "a photo of a cat",
    "A Watercolor PAINTING of an old lighthouse, at dusk!!",
    "café naïve résumé — 東京タワー 🚀🐱",
    "   spaces\tand\nnewlines   ",
    "don't stop: it's 3.14 o'clock; x=y+2 (really?) #tags @you",
    "!",
    "hello! world!",
    "a " * 100 + "very long prompt",
]


def clip_vocab_and_merges():
    """CLIP's BPE vocabulary exactly as openai/clip builds it (49408 tokens)."""
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = merges[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def tiny_clip_config(act, layers):
    return CLIPConfig(
        text_config=dict(
            vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
            num_attention_heads=2, max_position_embeddings=77, hidden_act=act,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=16,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
            image_size=224, patch_size=32, hidden_act=act, projection_dim=16,
        ),
        projection_dim=16,
        logit_scale_init_value=2.6592,
    )


def save_clip(model, folder, fp16):
    """Writes the checkpoint with the key names real hub files have (text_model., ...)."""
    os.makedirs(folder, exist_ok=True)
    model.config.save_pretrained(folder)
    state = {}
    for k, v in model.state_dict().items():
        state[k] = v.detach().contiguous().clone()
    if isinstance(model, (CLIPTextModel, CLIPTextModelWithProjection)) and not any(
            k.startswith("text_model.") for k in state):
        # transformers 5 drops the prefix that hub checkpoints (SD's text_encoder/) have.
        state = {k if k.startswith("text_projection.") else "text_model." + k: v for k, v in state.items()}
    assert any(k.startswith("text_model.") for k in state), sorted(state)[:5]
    if fp16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, os.path.join(folder, "model.fp16.safetensors"), metadata={"format": "pt"})
    else:
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


def test_images():
    """Two smooth-but-busy RGB images of odd sizes, deterministic."""
    out = []
    for (w, h, seed) in [(300, 200, 1), (181, 257, 2)]:
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([
            127 + 120 * np.sin(x / 13.0 + seed),
            127 + 120 * np.cos(y / 9.0),
            127 + 120 * np.sin((x + y) / 21.0),
        ], -1)
        img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        out.append(Image.fromarray(img, "RGB"))
    return out


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    os.makedirs(ROOT)
    tensors, ref = {}, {"versions": {
        "python": sys.version.split()[0], "torch": torch.__version__,
        "torchvision": torchvision.__version__, "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__, "open_clip_torch": open_clip.__version__,
        "safetensors": safetensors.__version__, "pillow": PIL.__version__, "numpy": np.__version__,
    }, "prompts": PROMPTS}

    vocab, merges = clip_vocab_and_merges()
    processor = CLIPImageProcessor()
    images = test_images()
    for i, img in enumerate(images):
        img.save(os.path.join(ROOT, f"image{i}.png"))
    pixels = processor(images=images, return_tensors="pt").pixel_values
    tensors["pixel_values"] = pixels

    # OpenAI flavour: quick_gelu, tokenizer.json, f32 weights, pad = <|endoftext|>.
    # OpenCLIP flavour (SD 2.x text encoders): gelu, vocab.json + merges.txt, f16 weights,
    # pad = "!", a non-default logit scale.
    flavours = [
        ("clip-openai", "quick_gelu", 2, False, "<|endoftext|>", None),
        ("clip-openclip", "gelu", 3, True, "!", math.log(50.0)),
    ]
    for name, act, layers, fp16, pad, logit_scale in flavours:
        folder = os.path.join(ROOT, name)
        model = CLIPModel(tiny_clip_config(act, layers)).eval()
        if logit_scale is not None:
            model.logit_scale.data.fill_(logit_scale)
        save_clip(model, folder, fp16)
        processor.save_pretrained(folder)
        if fp16:
            # References are computed from the weights as stored (f16), in f32.
            model = model.half().float()
            with open(os.path.join(folder, "vocab.json"), "w") as f:
                json.dump(vocab, f, ensure_ascii=False)
            with open(os.path.join(folder, "merges.txt"), "w") as f:
                f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
            with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
                json.dump({"model_max_length": 77, "pad_token": pad,
                           "tokenizer_class": "CLIPTokenizer"}, f)
            with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
                json.dump({"pad_token": {"content": pad, "lstrip": False, "normalized": True,
                                         "rstrip": False, "single_word": False}}, f)
            tokenizer = CLIPTokenizer.from_pretrained(folder)
        else:
            tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges],
                                      pad_token=pad, model_max_length=77)
            tokenizer.save_pretrained(folder)
            for extra in ("vocab.json", "merges.txt"):  # keep the tokenizer.json path honest
                p = os.path.join(folder, extra)
                if os.path.exists(p):
                    os.remove(p)
            tokenizer = CLIPTokenizer.from_pretrained(folder)
        assert len(tokenizer) == 49408, len(tokenizer)
        assert tokenizer.pad_token == pad

        ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True).input_ids
        unpadded = tokenizer(PROMPTS).input_ids
        ref[name] = {"ids": ids, "unpadded_lengths": [len(u) for u in unpadded],
                     "logit_scale": float(model.logit_scale.item())}

        scored = PROMPTS[:3]
        with torch.no_grad():
            tok = torch.tensor(ids[:3])
            text_out = model.text_model(input_ids=tok)
            tensors[f"{name}.text_last_hidden"] = text_out.last_hidden_state
            tensors[f"{name}.text_embeds"] = model.text_projection(text_out.pooler_output)
            vis_out = model.vision_model(pixel_values=pixels)
            tensors[f"{name}.image_embeds"] = model.visual_projection(vis_out.pooler_output)
            out = model(input_ids=tok, pixel_values=pixels)
            tensors[f"{name}.logits_per_image"] = out.logits_per_image
            ie = tensors[f"{name}.image_embeds"]
            te = tensors[f"{name}.text_embeds"]
            tensors[f"{name}.cosine"] = (ie / ie.norm(dim=-1, keepdim=True)) @ (te / te.norm(dim=-1, keepdim=True)).T
        ref[name]["scored_prompts"] = scored

    # A standalone SD 2.x-style text encoder (the `text_encoder/` folder of a diffusers
    # snapshot): CLIPTextModel, gelu, pad "!" (its tokenizer is clip-openclip's), f16 weights.
    folder = os.path.join(ROOT, "sd2-text-encoder")
    text_model = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=16)).eval()
    save_clip(text_model, folder, fp16=True)
    text_model = text_model.half().float()
    ids = ref["clip-openclip"]["ids"][:3]
    with torch.no_grad():
        out = text_model(input_ids=torch.tensor(ids))
    tensors["sd2-text-encoder.last_hidden_state"] = out.last_hidden_state
    tensors["sd2-text-encoder.pooler_output"] = out.pooler_output

    # The differentiable reward-path preprocess: torchvision on float images in [0, 1].
    mean, std = processor.image_mean, processor.image_std
    for i, (h, w) in enumerate([(200, 300), (240, 244), (96, 80)]):
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(10 + i))
        y = tvF.resize(x, [224], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
        y = tvF.center_crop(y, [224, 224])
        y = tvF.normalize(y, mean, std)
        tensors[f"resize{i}.input"] = x
        tensors[f"resize{i}.output"] = y

    # SDXL's second text encoder (CLIPTextModelWithProjection, bigG-style gelu): the penultimate
    # hidden state (no final LayerNorm) and the projected pooled output. Narrow, f16.
    folder = os.path.join(ROOT, "sdxl-text-encoder-2")
    model2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=8)).eval()
    save_clip(model2, folder, fp16=True)
    model2 = model2.half().float()
    with torch.no_grad():
        out = model2(input_ids=torch.tensor(ids), output_hidden_states=True)
    tensors["sdxl-text-encoder-2.penultimate"] = out.hidden_states[-2]
    tensors["sdxl-text-encoder-2.text_embeds"] = out.text_embeds

    # Euler scheduler tables and one step (diffusers EulerDiscreteScheduler), SD-Turbo's config
    # (scaled_linear, epsilon, trailing) for 1-4 steps, plus v_prediction and linspace variants.
    from diffusers import EulerDiscreteScheduler
    import diffusers
    ref["versions"]["diffusers"] = diffusers.__version__
    ref["schedulers"] = []
    turbo = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon", timestep_spacing="trailing")
    cases = [(turbo, n) for n in (1, 2, 3, 4)]
    cases += [(dict(turbo, prediction_type="v_prediction"), 2), (dict(beta_schedule="linear", timestep_spacing="linspace"), 3)]
    g = torch.Generator().manual_seed(42)
    for i, (config, steps) in enumerate(cases):
        sched = EulerDiscreteScheduler(**config)
        sched.set_timesteps(steps)
        sample = torch.randn(1, 4, 8, 8, generator=g) * float(sched.init_noise_sigma)
        eps = torch.randn(1, 4, 8, 8, generator=g)
        t0 = sched.timesteps[0]
        scaled = sched.scale_model_input(sample, t0)
        prev = sched.step(eps, t0, sample).prev_sample
        ref["schedulers"].append({"config": config, "steps": steps, "timesteps": sched.timesteps.tolist(),
                                  "sigmas": sched.sigmas.tolist(), "init_noise_sigma": float(sched.init_noise_sigma)})
        tensors[f"scheduler{i}.sample"] = sample
        tensors[f"scheduler{i}.model_output"] = eps
        tensors[f"scheduler{i}.scaled"] = scaled
        tensors[f"scheduler{i}.prev_sample"] = prev

    # TAESD (diffusers AutoencoderTiny) with the real block layout and narrow channels, decoding
    # non-square latents.
    from diffusers import AutoencoderTiny
    taesd = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8)).eval()
    taesd.save_pretrained(os.path.join(ROOT, "taesd"))
    latents = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(7)) * 2
    with torch.no_grad():
        tensors["taesd.latents"] = latents
        tensors["taesd.image"] = taesd.decode(latents).sample

    # The SD VAE (diffusers AutoencoderKL) with the real layout, two narrow blocks.
    from diffusers import AutoencoderKL
    vae = AutoencoderKL(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2).eval()
    vae.save_pretrained(os.path.join(ROOT, "vae"))
    latents = torch.randn(1, 4, 5, 6, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        tensors["vae.latents"] = latents
        tensors["vae.image"] = vae.decode(latents).sample

    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()},
              os.path.join(ROOT, "reference.safetensors"))
    with open(os.path.join(ROOT, "reference.json"), "w") as f:
        json.dump(ref, f, ensure_ascii=False, indent=1)
    print("wrote", ROOT)


if __name__ == "__main__":
    main()
