"""Stage 2: the autoencoder (diffusers AutoencoderKL, 64 px <-> 16x16x4 latents).

Trained on the world's pictures with an L1 + L2 reconstruction loss and SD's tiny KL weight.
Only the decoder ships; the encoder makes the diffusion stage's latents. Reported: PSNR on
held-out pictures, and the latents' scaling factor (1 / their standard deviation, as SD's).
"""

import random

import torch

import common

STAGE = "vae"
STEPS = common.scaled(1500)
BATCH = 32
LR = 1e-3
KL_WEIGHT = 1e-6


def psnr(vae, images, n=500):
    vae.eval()
    with torch.no_grad():
        x = common.to_pixels(images[:n])
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
    vae.train()
    return common.psnr(y, x)


def main():
    common.setup(2)
    images, rows = common.dataset("train", 60000, 1)
    val_images, _ = common.dataset("val", 2000, 2)
    if common.done(STAGE):
        return
    vae = common.vae_model()
    opt = torch.optim.AdamW(vae.parameters(), lr=LR, weight_decay=0.0)
    sched = common.schedule(opt, STEPS, 0.05)
    step, _ = common.load_checkpoint(STAGE, {"model": vae, "opt": opt, "sched": sched})
    rng = random.Random(step)
    while step < STEPS:
        idx = sorted(rng.sample(range(len(rows)), BATCH))
        x = common.to_pixels(images[idx])
        posterior = vae.encode(x).latent_dist
        y = vae.decode(posterior.sample()).sample
        loss = (y - x).abs().mean() + (y - x).pow(2).mean() + KL_WEIGHT * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 50 == 0:
            common.log(STAGE, f"step {step} loss {loss.item():.5f}")
        if step % 500 == 0 or step == STEPS:
            common.save_checkpoint(STAGE, step, {"model": vae, "opt": opt, "sched": sched})
            common.log(STAGE, f"step {step} held-out PSNR {psnr(vae, val_images):.2f} dB")
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(common.to_pixels(images[i:i + 250])).latent_dist.mode()
                       for i in range(0, min(2000, len(rows)), 250)])
    scale = 1.0 / z.std().item()
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(f"{common.WORK}/vae")
    report = {"steps": STEPS, "psnr_db": psnr(vae, val_images, 2000), "scaling_factor": scale}
    common.mark_done(STAGE, report)
    common.log(STAGE, f"done: {report}")


if __name__ == "__main__":
    main()
