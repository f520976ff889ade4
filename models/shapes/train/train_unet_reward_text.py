"""Stage 3b: the UNet continued on stage 1b's text states, the teacher the distillation uses.

Stage 1's text tower is a bag of words ("A left of B" and "A right of B" embed alike), so the
UNet of stage 3 cannot learn where to put things. This stage switches the generator's text
encoder to stage 1b's tower (the shipped reward's, which tells the relations apart) and keeps
training the UNet on it, with two levers that matter on this budget:

- min-SNR loss weighting (Hang et al. 2023, gamma 5): epsilon-prediction's loss is dominated by
  the nearly clean timesteps; weighting each by min(SNR, 5) / SNR moves the effort to the noisy
  ones, where the layout (which shapes, how many, where, what colour) is decided;
- an exponential moving average of the weights (decay 0.999), which is what is sampled: a
  short run's last iterate is noisy, its average is not.
"""

import os
import random

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import CLIPModel

import common
from train_unet import DROP_CAPTION, empty_text, encoded

STAGE = "unet-1b"
STEPS = common.scaled(2000)
BATCH = 64
LR = 2e-4
SNR_GAMMA = 5.0
EMA_DECAY = 0.999
# Where it starts: stage 3's UNet, unless the run names another (the committed run continued a
# tried UNet that had already seen 1,500 steps of stage 1b's text; README.md).
START = os.environ.get("SHAPES_UNET_1B_START", f"{common.WORK}/unet-teacher")


def main():
    common.setup(31)
    if common.done(STAGE):
        return
    tok = common.tokenizer()
    images, rows = common.dataset("train", 60000, 1)
    clip = CLIPModel.from_pretrained(f"{common.WORK}/clip-reward").eval()
    vae = AutoencoderKL.from_pretrained(f"{common.WORK}/vae").eval()
    latents, text = encoded("train-clip-reward", images, rows, vae, clip, tok)
    empty = empty_text(clip, tok)
    unet = UNet2DConditionModel.from_pretrained(START).train()
    ema = AveragedModel(unet, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY))
    alphas = common.alphas_cumprod()
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=SNR_GAMMA) / snr
    opt = torch.optim.AdamW(unet.parameters(), lr=LR, weight_decay=0.01)
    sched = common.schedule(opt, STEPS, 0.03)
    modules = {"model": unet, "ema": ema, "opt": opt, "sched": sched}
    step, _ = common.load_checkpoint(STAGE, modules)
    rng = random.Random(1000 + step)
    while step < STEPS:
        idx = sorted(rng.sample(range(len(rows)), BATCH))
        x0 = torch.from_numpy(latents[idx])
        ctx = torch.from_numpy(text[idx]).float()
        ctx[torch.rand(BATCH) < DROP_CAPTION] = empty
        loss = common.diffusion_loss(unet, x0, ctx, alphas, weight)
        common.train_step(unet, opt, sched, loss)
        ema.update_parameters(unet)
        step += 1
        if step % 50 == 0:
            common.log(STAGE, f"step {step} loss {loss.item():.4f}")
        if step % 250 == 0 or step == STEPS:
            common.save_checkpoint(STAGE, step, modules)
    ema.module.save_pretrained(f"{common.WORK}/unet-teacher-1b")
    common.mark_done(STAGE, {"steps": STEPS, "batch": BATCH, "start": START, "final_loss": loss.item()})
    common.log(STAGE, "done")


if __name__ == "__main__":
    main()
