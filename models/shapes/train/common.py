"""Shared pieces of the shapes-world training recipe (see README.md beside this file).

The world itself (spec, renderer, captions, hard negatives, judge) is Tastebud's Rust code; the
training data comes from `tastebud shapes dataset`. This file holds paths, the tokenizer built
from the spec's words, the model configurations and resumable checkpoints.
"""

import json
import os
import random
import subprocess
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
SPEC = os.path.join(REPO, "models", "shapes", "world.json")
OUT = os.path.join(REPO, "models", "shapes")
WORK = os.environ.get("SHAPES_WORK", os.path.expanduser("~/.cache/tastebud/shapes-train"))
TASTEBUD = os.environ.get("TASTEBUD_BIN", os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tastebud/target")), "debug", "tastebud"))

MAX_TOKENS = 32  # the longest caption is ~18 tokens with its start and end
# SHAPES_SCALE=0.01 shrinks every step and sample count (a smoke run of the whole recipe).
SCALE = float(os.environ.get("SHAPES_SCALE", "1"))


def scaled(n):
    return max(2, int(n * SCALE))


def world():
    with open(SPEC) as f:
        return json.load(f)


def setup(seed, threads=2):
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.makedirs(WORK, exist_ok=True)


def log(stage, message):
    line = f"{time.strftime('%H:%M:%S')} [{stage}] {message}"
    print(line, flush=True)
    with open(os.path.join(WORK, "train.log"), "a") as f:
        f.write(line + "\n")


# ---------------------------------------------------------------- data

def dataset(name, count, seed):
    """`tastebud shapes dataset` output (images.npy, captions.jsonl), made once."""
    count = max(scaled(count), 600)
    folder = os.path.join(WORK, "data", name)
    if not os.path.exists(os.path.join(folder, "captions.jsonl")):
        subprocess.run([TASTEBUD, "shapes", "dataset", "--count", str(count), "--seed", str(seed),
                        "--out", folder], check=True)
    images = np.load(os.path.join(folder, "images.npy"), mmap_mode="r")
    with open(os.path.join(folder, "captions.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == images.shape[0], folder
    return images, rows


def to_pixels(images):
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def psnr(a, b):
    """Mean PSNR (dB) of pictures a against b, both in [-1, 1]."""
    mse = ((a - b) / 2).pow(2).mean(dim=(1, 2, 3))
    return (10 * torch.log10(1 / mse)).mean().item()


# ---------------------------------------------------------------- tokenizer

def vocabulary_words(spec):
    """Every word a caption of the world can use."""
    words = {"a", "an", "and", "one"}
    for s in spec["shapes"]:
        words.update(s["words"] + s["plurals"])
    for s in spec["sizes"]:
        words.update(s["words"])
    words.update(c["name"] for c in spec["colors"])
    words.update(spec["numbers"])
    for r in spec["relations"]:
        for w in r["words"]:
            words.update(w.split())
    for p in spec["prefixes"]:
        words.update(p.split())
    return sorted(words)


def bpe_vocab_and_merges(words):
    """CLIP's byte-level BPE over the world's words: the byte alphabet (so any text tokenizes),
    then merges that build each word left to right into one token, then CLIP's specials."""
    from open_clip.tokenizer import bytes_to_unicode
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [v + "</w>" for v in alphabet]
    merges, known = [], set(vocab)
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            merged = symbols[0] + symbols[1]
            if merged not in known:
                merges.append(f"{symbols[0]} {symbols[1]}")
                vocab.append(merged)
                known.add(merged)
            symbols = [merged] + symbols[2:]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(vocab)}, merges


def tokenizer():
    """The world's CLIPTokenizer (fast, tokenizer.json), padding with <|endoftext|> as SD 1.x."""
    from transformers import CLIPTokenizer
    vocab, merges = bpe_vocab_and_merges(vocabulary_words(world()))
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges],
                         pad_token="<|endoftext|>", model_max_length=MAX_TOKENS)


def tokenize(tok, captions):
    return tok(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
               return_tensors="pt").input_ids


# ---------------------------------------------------------------- models

def clip_config(tok):
    from transformers import CLIPConfig
    spec = world()
    return CLIPConfig(
        text_config=dict(
            vocab_size=len(tok), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
            num_attention_heads=4, max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu",
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
            image_size=spec["image_size"], patch_size=8, hidden_act="quick_gelu",
        ),
        projection_dim=128,
    )


def vae_model():
    from diffusers import AutoencoderKL
    # Three levels: 64 px pictures <-> 16x16x4 latents (f = 4).
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=32,
        sample_size=world()["image_size"])


def unet_model():
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128, attention_head_dim=8, norm_num_groups=32)


TURBO_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                       beta_schedule="scaled_linear", prediction_type="epsilon",
                       timestep_spacing="trailing", steps_offset=1)


def alphas_cumprod():
    """SD's training noise schedule (1000 steps, scaled-linear betas): alpha-bar per timestep."""
    from diffusers import DDPMScheduler
    return DDPMScheduler(**{k: v for k, v in TURBO_SCHEDULER.items()
                            if k not in ("timestep_spacing", "steps_offset")}).alphas_cumprod


def diffusion_loss(unet, x0, ctx, alphas, weight=None):
    """SD's epsilon loss on clean latents x0 at uniformly drawn timesteps (timesteps, then noise,
    from torch's RNG), each picture's error scaled by weight[t] when given (min-SNR)."""
    t = torch.randint(0, len(alphas), (x0.shape[0],)).to(x0.device)
    eps = torch.randn_like(x0)
    a = alphas.to(x0.device)[t].view(-1, 1, 1, 1)
    pred = unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t, encoder_hidden_states=ctx).sample
    per_picture = (pred.float() - eps).pow(2).mean(dim=(1, 2, 3))
    return (per_picture if weight is None else weight.to(x0.device)[t] * per_picture).mean()


def train_step(model, opt, sched, loss):
    """One optimiser step with the recipe's gradient clipping (norm 1)."""
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()


def schedule(opt, total, warmup=0.05):
    """Linear warm-up, then cosine decay to zero over `total` steps."""
    import math
    warm = max(1, int(total * warmup))
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(name, step, modules, extra=None):
    """Every module's and optimiser's state, the step and the RNG states, written atomically."""
    path = os.path.join(WORK, f"{name}.ckpt")
    state = {"step": step, "modules": {k: m.state_dict() for k, m in modules.items()},
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                     "python": random.getstate()}, "extra": extra or {}}
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(name, modules):
    """Restores a checkpoint if there is one: the step to continue from (0 if none)."""
    path = os.path.join(WORK, f"{name}.ckpt")
    if not os.path.exists(path):
        return 0, {}
    state = torch.load(path, map_location="cpu", weights_only=False)
    for k, m in modules.items():
        m.load_state_dict(state["modules"][k])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["step"], state["extra"]


def done(name):
    return os.path.exists(os.path.join(WORK, f"{name}.done"))


def mark_done(name, report):
    with open(os.path.join(WORK, f"{name}.done"), "w") as f:
        json.dump(report, f, indent=1)
