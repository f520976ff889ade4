"""Stage 2b: a proxy decoder for pruning (what TAESD is to SD's VAE).

`tastebud optimize --method pruned` scores many candidate noises through a cheap decoder and only
the best few through the real one. This stage trains that cheap decoder for the shapes world: a
diffusers AutoencoderTiny with three 24-channel stages (two 2x upsamplings: 16x16x4 latents ->
64 px, as the VAE; a quarter of the VAE decoder's multiply-adds), taking the pipeline's scaled latents (scaling factor 1, as TAESD) to the
world's pictures. Only its decoder is trained and used; the encoder exists because diffusers'
class has one. Reported: PSNR on held-out pictures against the pictures and against the VAE's
own decoding of the same latents (what the proxy stands in for).
"""

import random

import numpy as np
import torch
from diffusers import AutoencoderKL, AutoencoderTiny

import common

STAGE = "proxy"
STEPS = common.scaled(1200)
BATCH = 32
LR = 1e-3


def proxy_model():
    return AutoencoderTiny(
        in_channels=3, out_channels=3, latent_channels=4,
        encoder_block_out_channels=(24, 24, 24), decoder_block_out_channels=(24, 24, 24),
        num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(2, 1, 1), upsampling_scaling_factor=2,
        act_fn="relu", upsample_fn="nearest", scaling_factor=1.0)


def held_out(vae, proxy, images, n=500):
    """PSNR of the proxy's pictures against the pictures and against the VAE's decoding."""
    proxy.eval()
    with torch.no_grad():
        x = common.to_pixels(images[:n])
        latents = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
        full = vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)
        cheap = proxy.decode(latents).sample.clamp(-1, 1)
    proxy.train()
    return common.psnr(cheap, x), common.psnr(cheap, full)


def main():
    common.setup(21)
    images, rows = common.dataset("train", 60000, 1)
    val_images, _ = common.dataset("val", 2000, 2)
    if common.done(STAGE):
        return
    vae = AutoencoderKL.from_pretrained(f"{common.WORK}/vae").eval()
    latents = np.load(f"{common.WORK}/train-encoded.npz")["latents"]  # stage 3's cache, scaled
    proxy = proxy_model()
    opt = torch.optim.AdamW(proxy.decoder.parameters(), lr=LR, weight_decay=0.0)
    sched = common.schedule(opt, STEPS, 0.05)
    step, _ = common.load_checkpoint(STAGE, {"model": proxy, "opt": opt, "sched": sched})
    rng = random.Random(step)
    while step < STEPS:
        idx = sorted(rng.sample(range(len(rows)), BATCH))
        x = common.to_pixels(images[idx])
        y = proxy.decode(torch.from_numpy(latents[idx]).float()).sample
        loss = (y - x).abs().mean() + (y - x).pow(2).mean()
        common.train_step(proxy, opt, sched, loss)
        step += 1
        if step % 100 == 0:
            common.log(STAGE, f"step {step} loss {loss.item():.5f}")
        if step % 500 == 0 or step == STEPS:
            common.save_checkpoint(STAGE, step, {"model": proxy, "opt": opt, "sched": sched})
    proxy.save_pretrained(f"{common.WORK}/proxy")
    to_pictures, to_vae = held_out(vae, proxy, val_images, 2000)
    report = {"steps": STEPS, "psnr_db": to_pictures, "psnr_vs_vae_db": to_vae}
    common.mark_done(STAGE, report)
    common.log(STAGE, f"done: {report}")


if __name__ == "__main__":
    main()
