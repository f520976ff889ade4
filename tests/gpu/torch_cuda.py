"""The PyTorch side of tests/gpu/check.sh: diffusers on CUDA, same snapshot and settings as
`tastebud bench` / `tastebud optimize` there, with peak GPU memory.

    python tests/gpu/torch_cuda.py --snapshot DIR --clip DIR --size 512 --out results.json
    python tests/gpu/torch_cuda.py --snapshot DIR --parity NOISE.npy PICTURE.png [--device cpu]

With --parity: saves a seeded unit-Gaussian noise and the picture diffusers' pipeline draws from
it (fp32, TF32 off: the reference `tastebud generate --noise` is compared with), then exits.

For fp32 and fp16: one-step generation timed by stage (text, UNet step, VAE decode; median of 3
after a warm-up, CUDA-synchronised), and ReNO iterations (reno_bench.py's loop: SGD-Nesterov
lr 5, clip 0.1, prior 0.01, CLIPScore weight 0.01 on the CLIP-H-sized reward, a backward pass
through reward, decoder and UNet), each with torch.cuda.max_memory_allocated.
"""

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from diffusers import StableDiffusionPipeline
from transformers import CLIPModel, CLIPTokenizer

PROMPT = "a photo of a cat"
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def sync():
    torch.cuda.synchronize()
    return time.perf_counter()


def generation(pipe, size, runs=3):
    gen = torch.Generator("cuda").manual_seed(0)

    def once():
        with torch.no_grad():
            t0 = sync()
            embeds, _ = pipe.encode_prompt(PROMPT, "cuda", 1, False)
            t1 = sync()
            latents = pipe(prompt_embeds=embeds, height=size, width=size, num_inference_steps=1,
                           guidance_scale=0.0, output_type="latent", generator=gen).images
            t2 = sync()
            pipe.vae.decode(latents / pipe.vae.config.scaling_factor)
            t3 = sync()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3

    once()
    torch.cuda.reset_peak_memory_stats()
    rows = [once() for _ in range(runs)]
    med = [statistics.median(r[i] for r in rows) for i in range(3)]
    return {"text_ms": med[0], "denoise_ms": med[1], "decode_ms": med[2], "total_ms": sum(med),
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}


def reno(pipe, clip, tok, size, iterations, dtype):
    with torch.no_grad():
        context, _ = pipe.encode_prompt(PROMPT, "cuda", 1, False)
        text = clip.get_text_features(**tok([PROMPT], return_tensors="pt").to("cuda"))
        text = text / text.norm(dim=-1, keepdim=True)
    scale = clip.logit_scale.exp()
    mean, std = MEAN.to("cuda", dtype), STD.to("cuda", dtype)

    def loss_of(z):
        pipe.scheduler.set_timesteps(1)
        latents = z.to(dtype) * pipe.scheduler.init_noise_sigma
        t = pipe.scheduler.timesteps[0]
        eps = pipe.unet(pipe.scheduler.scale_model_input(latents, t), t, encoder_hidden_states=context).sample
        latents = pipe.scheduler.step(eps, t, latents).prev_sample
        image = (pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
        pixels = (F.interpolate(image, size=224, mode="bicubic", align_corners=False) - mean) / std
        e = clip.get_image_features(pixel_values=pixels)
        e = e / e.norm(dim=-1, keepdim=True)
        score = (scale * (e @ text.T))[0, 0].float()
        norm = torch.linalg.vector_norm(z)
        d = math.prod(z.shape[1:])
        return 0.01 * (100.0 - score) + 0.01 * (0.5 * norm ** 2 - (d - 1) * torch.log(norm))

    z = torch.nn.Parameter(torch.randn(1, 4, size // 8, size // 8, device="cuda",
                                       generator=torch.Generator("cuda").manual_seed(0)))
    opt = torch.optim.SGD([z], lr=5.0, momentum=0.9, nesterov=True)

    def step():
        opt.zero_grad()
        loss_of(z).backward()
        torch.nn.utils.clip_grad_norm_(z, 0.1)
        opt.step()

    step()
    torch.cuda.reset_peak_memory_stats()
    t0 = sync()
    for _ in range(iterations):
        step()
    per = (sync() - t0) * 1e3 / iterations
    return {"per_iteration_ms": per, "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}


def parity(snapshot, size, noise_path, image_path, device):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    pipe = StableDiffusionPipeline.from_pretrained(snapshot, torch_dtype=torch.float32).to(device)
    pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    np.save(noise_path, noise.numpy())
    with torch.no_grad():
        out = pipe(PROMPT, height=size, width=size, num_inference_steps=1, guidance_scale=0.0,
                   latents=noise.to(device), output_type="np").images
    Image.fromarray((out[0] * 255).round().astype(np.uint8)).save(image_path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapshot", required=True)
    ap.add_argument("--clip")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--out")
    ap.add_argument("--parity", nargs=2, metavar=("NOISE", "PICTURE"))
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    if args.parity:
        parity(args.snapshot, args.size, *args.parity, args.device)
        return
    if not (args.clip and args.out):
        sys.exit("torch_cuda.py: --clip and --out are needed for the timings")
    if not torch.cuda.is_available():
        sys.exit("torch_cuda.py: no CUDA device")
    results = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        pipe = StableDiffusionPipeline.from_pretrained(args.snapshot, torch_dtype=dtype).to("cuda")
        pipe.set_progress_bar_config(disable=True)
        for m in (pipe.unet, pipe.vae, pipe.text_encoder):
            m.eval().requires_grad_(False)
        torch.cuda.reset_peak_memory_stats()
        results[f"generate_{name}"] = generation(pipe, args.size)
        clip = CLIPModel.from_pretrained(args.clip, torch_dtype=dtype).to("cuda").eval().requires_grad_(False)
        tok = CLIPTokenizer.from_pretrained(args.clip)
        results[f"reno_{name}"] = reno(pipe, clip, tok, args.size, args.iters, dtype)
        print(name, json.dumps({k: v for k, v in results.items() if k.endswith(name)}), flush=True)
        del pipe, clip
        torch.cuda.empty_cache()
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
