"""Stage 4c: the one-step student sharpened by a critic on latents (adversarial distillation).

Regressing onto the teacher's pictures (stage 4; and stage 4b's 128,000 fresh ones on a GPU, which
did not help) leaves the one-step student's shapes soft: where the noise does not decide exactly
where the teacher puts an edge, the squared error is smallest for the average, so squares come
out rounded and triangles blurred, and the judge finds no square at all ("found 0 squares" is
most one-step failures). A small critic learns to tell the latents of real world pictures (with
their captions) from the student's; its hinge loss on the student, beside stage 4's losses and
weighted against them by their gradients at the last layer (as VQGAN weighs its critic), pulls
the student to sharp shapes the teacher's pictures also have, as ADD does for SD-Turbo.
"""

import os
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import common
from train_distill import PAIRS, TIMESTEPS, distill_loss, sigmas, training_set

STAGE = "distill-adversarial"
START = os.environ.get("SHAPES_ADVERSARIAL_START", f"{common.WORK}/unet")
STEPS = common.scaled(int(os.environ.get("SHAPES_ADVERSARIAL_STEPS", "600")))
ADV_WEIGHT = float(os.environ.get("SHAPES_ADVERSARIAL_WEIGHT", "0.3"))
BATCH = 64
LR = 5e-5
CRITIC_LR = 2e-4
DIFFUSION_WEIGHT = 0.25
EMA_DECAY = 0.995


class LatentCritic(nn.Module):
    """A patch critic on 16x16x4 latents: a score per 4x4 patch, plus a projection onto the
    caption's mean text state so that it judges the picture against its caption."""

    def __init__(self, text_dim=128):
        super().__init__()
        sn = nn.utils.spectral_norm
        self.body = nn.Sequential(
            sn(nn.Conv2d(4, 64, 3, 1, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(64, 128, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(128, 256, 4, 2, 1)), nn.LeakyReLU(0.2),
            sn(nn.Conv2d(256, 256, 3, 1, 1)), nn.LeakyReLU(0.2))
        self.score = sn(nn.Conv2d(256, 1, 1))
        self.text = sn(nn.Linear(text_dim, 256))

    def forward(self, latents, ctx):
        h = self.body(latents)
        projection = (h * self.text(ctx.mean(1))[:, :, None, None]).sum(1, keepdim=True)
        return (self.score(h) + projection).flatten(1)


def critic_step(critic, opt_critic, real, real_ctx, fake, fake_ctx):
    """One hinge-loss step of the critic: real latents with their captions against the student's."""
    loss = F.relu(1 - critic(real, real_ctx)).mean() + F.relu(1 + critic(fake.detach(), fake_ctx)).mean()
    opt_critic.zero_grad()
    loss.backward()
    opt_critic.step()
    return loss


def critic_pull(critic, fake, ctx, rec, student, scale):
    """The critic's loss on the student's pictures and its weight: scale * ||d rec / d last|| /
    ||d adv / d last|| at the UNet's last layer, the critic's pull sized to the regression's."""
    for p in critic.parameters():
        p.requires_grad_(False)
    adv = -critic(fake, ctx).mean()
    for p in critic.parameters():
        p.requires_grad_(True)
    last = student.conv_out.weight
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0]
    return adv, scale * (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, 1e3).detach()


def main():
    common.setup(7)
    if common.done(STAGE):
        return
    latents, text, _, _ = training_set()
    pairs = np.load(os.path.join(common.WORK, f"distill-pairs-{PAIRS}.npz"))  # stage 4's
    z, pair_idx, x0_teacher = pairs["z"], pairs["idx"], pairs["x0"]
    student = UNet2DConditionModel.from_pretrained(START, torch_dtype=torch.float32).train()
    critic = LatentCritic(text.shape[-1])
    ema = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY))
    opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.01)
    opt_critic = torch.optim.Adam(critic.parameters(), lr=CRITIC_LR, betas=(0.0, 0.99))
    sched = common.schedule(opt, STEPS, 0.05)
    modules = {"model": student, "ema": ema, "opt": opt, "sched": sched, "critic": critic,
               "opt_critic": opt_critic}
    step, _ = common.load_checkpoint(STAGE, modules)
    sig = sigmas()
    alphas = common.alphas_cumprod()
    rng = random.Random(step)
    while step < STEPS:
        b = sorted(rng.sample(range(len(z)), BATCH))
        zb, target = torch.from_numpy(z[b]), torch.from_numpy(x0_teacher[b])
        ctx = torch.from_numpy(text[pair_idx[b]]).float()
        t = torch.tensor([rng.choice(TIMESTEPS) for _ in b])
        loss_distill, x0_student = distill_loss(student, zb, target, ctx, t,
                                                torch.tensor([sig[int(v)] for v in t]), sig[999])

        # The critic: real pictures' latents with their captions against the student's.
        r = sorted(rng.sample(range(len(latents)), BATCH))
        real, real_ctx = torch.from_numpy(latents[r]), torch.from_numpy(text[r]).float()
        loss_critic = critic_step(critic, opt_critic, real, real_ctx, x0_student, ctx)

        # The student: stage 4's losses and the critic's.
        loss_plain = common.diffusion_loss(student, real[:BATCH // 2], real_ctx[:BATCH // 2], alphas)
        rec = loss_distill + DIFFUSION_WEIGHT * loss_plain
        adv, weight = critic_pull(critic, x0_student, ctx, rec, student, ADV_WEIGHT)
        common.train_step(student, opt, sched, rec + weight * adv)
        ema.update_parameters(student)
        step += 1
        if step % 25 == 0:
            common.log(STAGE, f"step {step} distill {loss_distill.item():.4f} plain {loss_plain.item():.4f} "
                       f"critic {loss_critic.item():.3f} adv {adv.item():.3f} weight {weight.item():.4f}")
        if step % 100 == 0 or step == STEPS:
            common.save_checkpoint(STAGE, step, modules)
    ema.module.save_pretrained(f"{common.WORK}/unet-adversarial")
    common.mark_done(STAGE, {"steps": STEPS, "start": os.path.basename(os.path.normpath(START)),
                             "adversarial_weight": ADV_WEIGHT, "lr": LR, "critic_lr": CRITIC_LR,
                             "final_distill_loss": loss_distill.item(), "final_critic_loss": loss_critic.item()})
    common.log(STAGE, "done")


if __name__ == "__main__":
    main()
