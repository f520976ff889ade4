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


def save_clip(model, folder, fp16, name=None):
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
    name = name or ("model.fp16.safetensors" if fp16 else "model.safetensors")
    save_file(state, os.path.join(folder, name), metadata={"format": "pt"})


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


def file_images():
    """The image files rewards score (make_reward_fixtures.py, make_imagereward_fixtures.py): the
    two test images, plus an upscaled RGB one and a transparent one from
    make_preprocess_fixtures.py, opened as the scoring code opens files."""
    extra = [os.path.join(ROOT, "preprocess", n) for n in ("rgb-93x60.png", "rgba-120x90.png")]
    return test_images() + [Image.open(p) for p in extra]


def write_tokenizer(folder, vocab, merges, pad, as_json):
    """A `tokenizer/` folder as hub snapshots have it: vocab.json + merges.txt (SD 1.x/2.x,
    SDXL) or tokenizer.json (newer snapshots). Replaces what save_pretrained wrote."""
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    if as_json:
        tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], pad_token=pad,
                            model_max_length=77)
        tok.save_pretrained(folder)
        for extra in ("vocab.json", "merges.txt"):
            p = os.path.join(folder, extra)
            if os.path.exists(p):
                os.remove(p)
    else:
        with open(os.path.join(folder, "vocab.json"), "w") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(os.path.join(folder, "merges.txt"), "w") as f:
            f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump({"model_max_length": 77, "pad_token": pad, "tokenizer_class": "CLIPTokenizer"}, f)
        with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
            json.dump({"pad_token": {"content": pad, "lstrip": False, "normalized": True,
                                     "rstrip": False, "single_word": False}}, f)
    tok = CLIPTokenizer.from_pretrained(folder)
    assert tok.pad_token == pad and len(tok) == 49408
    return tok


def tiny_vae():
    """AutoencoderKL with SD's four-level layout (8x upsampling) and narrow channels."""
    from diffusers import AutoencoderKL
    return AutoencoderKL(block_out_channels=(4, 4, 8, 8), layers_per_block=1, norm_num_groups=4,
                         down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, sample_size=32).eval()


def half_roundtrip(module):
    """The module with its weights rounded through f16, as a fp16 file stores them."""
    return module.half().float()


# Whole one-step pipelines, saved by diffusers as hub snapshots and reloaded from disk for the
# references. Sizes are non-square, and latent sides are odd where the UNet must upsample to a
# recorded size.
PIPELINE_CASES = [
    # (folder, prompt, height, width, steps, noise seed)
    ("sd1-tiny", "a photo of a cat", 32, 56, 1, 21),
    ("sd-turbo-tiny", "A Watercolor PAINTING of an old lighthouse, at dusk!!", 48, 40, 1, 22),
    ("sd-turbo-tiny", "a photo of a cat", 48, 40, 2, 23),
    ("sdxl-turbo-tiny", "a photo of a cat", 40, 48, 1, 24),
    ("sdxl-turbo-tiny", "a " * 100 + "very long prompt", 40, 48, 1, 25),
    ("sd-turbo-tf5", "a photo of a cat", 48, 40, 1, 26),
]


def small_vocab_and_merges(n=1000):
    """CLIP's BPE with only its first n merges: the byte alphabet, n merged tokens and the two
    specials (a real CLIP tokenizer, small enough to commit several times)."""
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : n + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def make_transformers5_snapshot():
    """An SD-Turbo-style snapshot exactly as diffusers + transformers 5 `save_pretrained` leave it
    (no key rewriting: the text encoder's keys lack the `text_model.` prefix hub files have, the
    tokenizer is transformers 5's tokenizer.json), with a small real BPE vocabulary."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    vocab, merges = small_vocab_and_merges()
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=1,
        projection_dim=8)).eval()
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=[1, 2], use_linear_projection=True).eval()
    turbo = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text, tokenizer=memory_tokenizer(vocab, merges, "!"),
                                   unet=unet, scheduler=EulerDiscreteScheduler(**turbo), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    folder = os.path.join(ROOT, "sd-turbo-tf5")
    pipe.save_pretrained(folder, safe_serialization=True)
    from safetensors import safe_open
    with safe_open(os.path.join(folder, "text_encoder", "model.safetensors"), "pt") as f:
        assert not any(k.startswith("text_model.") for k in f.keys()), "transformers 5 layout expected"


def make_transformers5_clip(tensors, ref, images):
    """A CLIP reward folder exactly as transformers 5's `CLIPModel.save_pretrained` and
    `CLIPProcessor.save_pretrained` leave it, and its scores through the processor it saved."""
    from transformers import CLIPProcessor
    vocab, merges = small_vocab_and_merges()
    config = tiny_clip_config("quick_gelu", 2)
    config.text_config.vocab_size = len(vocab)
    config.text_config.bos_token_id = vocab["<|startoftext|>"]
    config.text_config.eos_token_id = vocab["<|endoftext|>"]
    model = CLIPModel(config).eval()
    folder = os.path.join(ROOT, "clip-tf5")
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(),
                  tokenizer=memory_tokenizer(vocab, merges, "<|endoftext|>")).save_pretrained(folder)
    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder)
    prompt = "a photo of a cat"
    inputs = processor(text=[prompt], images=images, return_tensors="pt", padding="max_length")
    with torch.no_grad():
        tensors["clip-tf5.logits_per_image"] = model(**inputs).logits_per_image
    ref["clip-tf5"] = {"prompt": prompt, "ids": inputs["input_ids"][0].tolist(),
                       "processor": type(processor.image_processor).__name__}


def memory_tokenizer(vocab, merges, pad):
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], pad_token=pad,
                         model_max_length=77)


def make_pipelines(tensors, ref, vocab, merges, sd2_text, sdxl_text_2):
    from diffusers import (EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    turbo = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1)

    # SD 1.x: CLIP-L-like quick_gelu text encoder (last hidden state), tokenizer.json, conv
    # proj_in, one head count, f32 weights.
    folder = os.path.join(ROOT, "sd1-tiny")
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=1, projection_dim=8)).eval()
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2).eval()
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text, tokenizer=memory_tokenizer(
        vocab, merges, "<|endoftext|>"), unet=unet, scheduler=EulerDiscreteScheduler(**turbo),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(os.path.join(folder, "tokenizer"), vocab, merges, "<|endoftext|>", True)
    save_clip(text, os.path.join(folder, "text_encoder"), fp16=False)

    # SD 2.x / SD-Turbo: OpenCLIP-style gelu encoder (f16, pad "!"), vocab.json + merges.txt,
    # linear projections, per-block heads; f16 tensors in the default file names.
    folder = os.path.join(ROOT, "sd-turbo-tiny")
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=[1, 2, 4], use_linear_projection=True).eval()
    unet = half_roundtrip(unet)
    pipe = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=sd2_text, tokenizer=memory_tokenizer(
        vocab, merges, "!"), unet=unet, scheduler=EulerDiscreteScheduler(**turbo), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(os.path.join(folder, "tokenizer"), vocab, merges, "!", False)
    save_clip(sd2_text, os.path.join(folder, "text_encoder"), fp16=True, name="model.safetensors")
    unet_state = {k: v.half().contiguous() for k, v in unet.state_dict().items()}
    save_file(unet_state, os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})

    # SDXL / SDXL-Turbo: two encoders (quick_gelu CLIPTextModel + gelu WithProjection),
    # text_time conditioning, transformer_layers_per_block, a first block without attention,
    # Euler ancestral scheduler, VAE scale 0.13025.
    folder = os.path.join(ROOT, "sdxl-turbo-tiny")
    text_1 = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=1, projection_dim=8)).eval()
    text_1 = half_roundtrip(text_1)
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=[1, 1, 2], cross_attention_dim=8 + 16, attention_head_dim=[1, 2, 4],
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=8 + 6 * 4).eval()
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=0.13025, force_upcast=False)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_1, text_encoder_2=sdxl_text_2,
        tokenizer=memory_tokenizer(vocab, merges, "<|endoftext|>"), tokenizer_2=memory_tokenizer(vocab, merges, "!"),
        unet=unet, scheduler=EulerAncestralDiscreteScheduler(**turbo), force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(os.path.join(folder, "tokenizer"), vocab, merges, "<|endoftext|>", False)
    write_tokenizer(os.path.join(folder, "tokenizer_2"), vocab, merges, "!", False)
    for sub, model in (("text_encoder", text_1), ("text_encoder_2", sdxl_text_2)):
        save_clip(model, os.path.join(folder, sub), fp16=True, name="model.safetensors")

    make_transformers5_snapshot()

    ref["pipelines"] = []
    for i, (name, prompt, height, width, steps, seed) in enumerate(PIPELINE_CASES):
        cls = StableDiffusionXLPipeline if name.startswith("sdxl") else StableDiffusionPipeline
        pipe = cls.from_pretrained(os.path.join(ROOT, name), torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        noise = torch.randn(1, 4, height // 8, width // 8, generator=torch.Generator().manual_seed(seed))
        np.save(os.path.join(ROOT, f"noise{i}.npy"), noise.numpy())
        with torch.no_grad():
            out = pipe(prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=0.0,
                       latents=noise.clone(), output_type="np").images
            pixels = (out[0] * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(ROOT, f"{name}-{i}.png"))
            # Components for the first step, as the pipeline calls them.
            sched = pipe.scheduler
            sched.set_timesteps(steps)
            t = sched.timesteps[0]
            sample = sched.scale_model_input(noise * sched.init_noise_sigma, t)
            if cls is StableDiffusionXLPipeline:
                embeds, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
                time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
                cond = {"text_embeds": pooled, "time_ids": time_ids}
                tensors[f"pipeline{i}.pooled"] = pooled
            else:
                embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
                cond = None
            eps = pipe.unet(sample, t, encoder_hidden_states=embeds, added_cond_kwargs=cond).sample
        tensors[f"pipeline{i}.prompt_embeds"] = embeds
        tensors[f"pipeline{i}.unet_input"] = sample
        tensors[f"pipeline{i}.unet_output"] = eps
        ref["pipelines"].append({"model": name, "prompt": prompt, "height": height, "width": width,
                                 "steps": steps, "noise": f"noise{i}.npy", "image": f"{name}-{i}.png",
                                 "timestep": float(t)})

    # The decoder swap: sd-turbo-tiny with TAESD instead of its VAE.
    from diffusers import AutoencoderTiny
    pipe = StableDiffusionPipeline.from_pretrained(os.path.join(ROOT, "sd-turbo-tiny"),
                                                   vae=AutoencoderTiny.from_pretrained(os.path.join(ROOT, "taesd")))
    pipe.set_progress_bar_config(disable=True)
    case = ref["pipelines"][1]
    noise = torch.from_numpy(np.load(os.path.join(ROOT, case["noise"])))
    with torch.no_grad():
        out = pipe(case["prompt"], height=case["height"], width=case["width"], num_inference_steps=1,
                   guidance_scale=0.0, latents=noise, output_type="np").images
    Image.fromarray((out[0] * 255).round().astype(np.uint8)).save(os.path.join(ROOT, "sd-turbo-tiny-taesd.png"))
    ref["taesd_swap"] = dict(case, image="sd-turbo-tiny-taesd.png", decoder="taesd")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
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

    # The SD 2.x-style text encoder of the sd-turbo-tiny snapshot (`text_encoder/`):
    # CLIPTextModel, gelu, pad "!" (its tokenizer is clip-openclip's), f16 weights.
    text_model = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=16)).eval()
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
    model2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
        num_attention_heads=2, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1, projection_dim=8)).eval()
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

    make_pipelines(tensors, ref, vocab, merges, text_model, model2)
    make_transformers5_clip(tensors, ref, images)

    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()},
              os.path.join(ROOT, "reference.safetensors"))
    with open(os.path.join(ROOT, "reference.json"), "w") as f:
        json.dump(ref, f, ensure_ascii=False, indent=1)
    print("wrote", ROOT)


if __name__ == "__main__":
    main()
