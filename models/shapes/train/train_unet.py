"""Stage 3: the UNet as a diffusion model in SD's parameterisation (1000 steps, scaled-linear
betas, epsilon prediction), conditioned on the world CLIP's text states (the pipeline's text
encoder is that CLIP's text tower). One caption in ten is dropped (the empty prompt), so the
distillation stage can sample the teacher with classifier-free guidance.
"""

import os
import random

import numpy as np
import torch
from diffusers import AutoencoderKL
from transformers import CLIPModel

import common

STAGE = "unet"
STEPS = common.scaled(3000)
BATCH = 64
LR = 5e-4
DROP_CAPTION = 0.1


def encoded(name, images, rows, vae, clip, tok):
    """Latents (scaled) and text states of a dataset, computed once and cached."""
    path = os.path.join(common.WORK, f"{name}-encoded.npz")
    if os.path.exists(path):
        data = np.load(path)
        return data["latents"], data["text"]
    latents, text = [], []
    with torch.no_grad():
        for i in range(0, len(rows), 250):
            x = common.to_pixels(images[i:i + 250])
            latents.append((vae.encode(x).latent_dist.mode() * vae.config.scaling_factor).numpy())
            ids = common.tokenize(tok, [r["caption"] for r in rows[i:i + 250]])
            text.append(clip.text_model(input_ids=ids).last_hidden_state.half().numpy())
            if i % 10000 == 0:
                common.log(STAGE, f"encoding {name}: {i}/{len(rows)}")
    latents, text = np.concatenate(latents), np.concatenate(text)
    np.savez(path + ".tmp.npz", latents=latents, text=text)
    os.replace(path + ".tmp.npz", path)
    return latents, text


def empty_text(clip, tok):
    with torch.no_grad():
        return clip.text_model(input_ids=common.tokenize(tok, [""])).last_hidden_state


def main():
    common.setup(3)
    if common.done(STAGE):
        return
    tok = common.tokenizer()
    images, rows = common.dataset("train", 60000, 1)
    vae = AutoencoderKL.from_pretrained(f"{common.WORK}/vae").eval()
    clip = CLIPModel.from_pretrained(f"{common.WORK}/clip").eval()
    latents, text = encoded("train", images, rows, vae, clip, tok)
    empty = empty_text(clip, tok)
    unet = common.unet_model()
    alphas = common.alphas_cumprod()
    opt = torch.optim.AdamW(unet.parameters(), lr=LR, weight_decay=0.01)
    sched = common.schedule(opt, STEPS, 0.03)
    step, _ = common.load_checkpoint(STAGE, {"model": unet, "opt": opt, "sched": sched})
    rng = random.Random(step)
    while step < STEPS:
        idx = sorted(rng.sample(range(len(rows)), BATCH))
        x0 = torch.from_numpy(latents[idx])
        ctx = torch.from_numpy(text[idx]).float()
        drop = torch.rand(BATCH) < DROP_CAPTION
        ctx[drop] = empty
        loss = common.diffusion_loss(unet, x0, ctx, alphas)
        common.train_step(unet, opt, sched, loss)
        step += 1
        if step % 50 == 0:
            common.log(STAGE, f"step {step} loss {loss.item():.4f}")
        if step % 250 == 0 or step == STEPS:
            common.save_checkpoint(STAGE, step, {"model": unet, "opt": opt, "sched": sched})
    unet.save_pretrained(f"{common.WORK}/unet-teacher")
    common.mark_done(STAGE, {"steps": STEPS, "batch": BATCH, "final_loss": loss.item()})
    common.log(STAGE, "done")


if __name__ == "__main__":
    main()
