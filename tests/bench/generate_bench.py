"""One-step generation speed and memory: Tastebud vs diffusers on the same machine, in one run.

Builds a diffusers snapshot with SD-Turbo's real architecture (UNet 866 M, OpenCLIP-H text
encoder with 23 layers, SD VAE; configs as stabilityai/sd-turbo ships them) and random weights
(none can be downloaded here; speed and memory do not depend on the values), stored in f16 as
the hub's fp16 files are. Then, at 512x512 and 1 step, times each stage after a warm-up:
diffusers (float32, the same thread count) in this process, `tastebud bench` in a subprocess,
and reports peak resident memory of each.

    python tests/bench/generate_bench.py --tastebud $CARGO_TARGET_DIR/debug/tastebud \
        [--devices cpu,gpu] [--size 512] [--runs 3] [--warmup 1] [--taesd] [--snapshot DIR]

Prints a markdown table for BENCHMARKS.md.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import diffusers
import torch
from diffusers import (AutoencoderKL, AutoencoderTiny, EulerDiscreteScheduler, StableDiffusionPipeline,
                       UNet2DConditionModel)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from make_fixtures import clip_vocab_and_merges, write_tokenizer  # noqa: E402


def make_snapshot(folder):
    if os.path.exists(os.path.join(folder, "model_index.json")):
        return
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
        num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        sample_size=768)
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear", prediction_type="epsilon",
                                       timestep_spacing="trailing", steps_offset=1)
    vocab, merges = clip_vocab_and_merges()
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], pad_token="!", model_max_length=77)
    pipe = StableDiffusionPipeline(vae=vae.half(), text_encoder=text.half(), tokenizer=tok, unet=unet.half(),
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_tokenizer(os.path.join(folder, "tokenizer"), vocab, merges, "!", False)
    # Hub text encoders carry the `text_model.` prefix that transformers 5 drops on save.
    state = {("text_model." + k if not k.startswith("text_model.") else k): v.contiguous()
             for k, v in text.half().state_dict().items()}
    save_file(state, os.path.join(folder, "text_encoder", "model.safetensors"), metadata={"format": "pt"})


def make_taesd(folder):
    """TAESD's real architecture (diffusers AutoencoderTiny defaults: 64 channels), random weights."""
    if os.path.exists(os.path.join(folder, "config.json")):
        return
    torch.manual_seed(0)
    AutoencoderTiny().half().save_pretrained(folder, safe_serialization=True)


def diffusers_run(folder, size, runs, warmup, prompt, taesd=None):
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    if taesd:
        pipe.vae = AutoencoderTiny.from_pretrained(taesd, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(0)

    def once():
        t0 = time.perf_counter()
        with torch.no_grad():
            embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
            t1 = time.perf_counter()
            latents = pipe(prompt_embeds=embeds, height=size, width=size, num_inference_steps=1,
                           guidance_scale=0.0, output_type="latent", generator=gen).images
            t2 = time.perf_counter()
            image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
            pipe.image_processor.postprocess(image, output_type="pil")
            t3 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3

    for _ in range(warmup):
        once()
    rows = [once() for _ in range(runs)]
    med = [statistics.median(r[i] for r in rows) for i in range(3)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"text_ms": med[0], "denoise_ms": med[1], "decode_ms": med[2], "total_ms": sum(med),
            "peak_rss_mib": peak}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tastebud", required=True)
    ap.add_argument("--devices", default="cpu")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs first (Tastebud and diffusers)")
    ap.add_argument("--snapshot", default=os.path.expanduser("~/.cache/tastebud/sd-turbo-random"))
    ap.add_argument("--skip-diffusers", action="store_true")
    ap.add_argument("--taesd", action="store_true",
                    help="decode with TAESD's architecture (built in ~/.cache/tastebud/taesd-random) instead of the VAE")
    args = ap.parse_args()
    prompt = "a photo of a cat"
    make_snapshot(args.snapshot)
    taesd = os.path.expanduser("~/.cache/tastebud/taesd-random") if args.taesd else None
    if taesd:
        make_taesd(taesd)
    threads = torch.get_num_threads()
    rows = []
    for device in args.devices.split(","):
        cmd = [args.tastebud, "bench", "--model", args.snapshot, "--device", device, "--width", str(args.size),
               "--height", str(args.size), "--runs", str(args.runs), "--warmup", str(args.warmup),
               "--prompt", prompt] + (["--decoder", taesd] if taesd else [])
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        rows.append((f"Tastebud ({out['device']})", out))
    if not args.skip_diffusers:
        rows.append((f"diffusers {diffusers.__version__}, torch {torch.__version__} ({threads} threads)",
                     diffusers_run(args.snapshot, args.size, args.runs, args.warmup, prompt, taesd)))
    decoder = "TAESD" if taesd else "VAE"
    print(f"SD-Turbo architecture ({decoder} decoder), {args.size}x{args.size}, 1 step, f32 compute, median of {args.runs} "
          f"runs after {args.warmup} warm-up run(s); {platform.processor() or platform.machine()}, {os.cpu_count()} cores\n")
    print("| runtime | text (ms) | UNet step (ms) | VAE decode (ms) | total (ms) | peak RSS (MiB) | load (ms) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        load = f"{r['load_ms'] + r['read_ms']:.0f}" if "load_ms" in r else "-"
        print(f"| {name} | {r['text_ms']:.0f} | {r['denoise_ms']:.0f} | {r['decode_ms']:.0f} | "
              f"{r['total_ms']:.0f} | {r['peak_rss_mib']:.0f} | {load} |")


if __name__ == "__main__":
    main()
