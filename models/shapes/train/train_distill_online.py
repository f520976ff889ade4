"""Stage 4b (a GPU stage): distillation on teacher pictures made fresh every step.

Stage 4 regresses the student onto 8,000 teacher pictures made once: on 2 CPU cores each 1,000
cost ~4 minutes, so every picture is seen 16 times and the student memorises them. On a GPU the
teacher is cheap, so here it draws new captions and noise as it goes (GEN per step, made CHUNK at a
time, into a replay buffer of BUFFER pictures: each is seen about BATCH / GEN = 4 times) and the
student, starting from stage 4's, learns stage 4's targets: the teacher's picture from every point
the 1-4 step trailing schedules visit on the straight Euler path to it, plus SD's epsilon loss at
all timesteps (on the teacher's pictures: the real training latents stay with the CPU stages).

Steps: SHAPES_ONLINE_STEPS, or as many as fit SHAPES_ONLINE_SECONDS (from the start) once the
teacher and the student have been timed; the number is logged and recorded in the report, so a
rerun can fix it. A resumed run refills the replay buffer with new pictures. It runs on a CPU too,
about a thousand times slower.

Inputs (each overridable, so the stage can run where only these files were copied): the teacher
(stage 3b), its guidance (stage 4's guidance.json), the student to start from (stage 4's EMA),
the text tower the teacher learnt on and the training captions (`tastebud shapes dataset`).
"""

import json
import os
import time

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import CLIPModel, CLIPTextModel

import common
from train_distill import TIMESTEPS, distill_loss, sigmas, teacher_sample
from train_distill_adversarial import CRITIC_LR, LatentCritic, critic_pull, critic_step

STAGE = "distill-online"
TEACHER = os.environ.get("SHAPES_TEACHER", f"{common.WORK}/unet-teacher-1b")
START = os.environ.get("SHAPES_DISTILL_START", f"{common.WORK}/unet")
TEXT = os.environ.get("SHAPES_TEXT_ENCODER", f"{common.WORK}/clip-reward")
CAPTIONS = f"{common.WORK}/data/train/captions.jsonl"
FIXED_STEPS = os.environ.get("SHAPES_ONLINE_STEPS")
SECONDS = float(os.environ.get("SHAPES_ONLINE_SECONDS", "600"))
BATCH = 256
GEN = 64  # new teacher pictures per step
BUFFER = common.scaled(32768)
PREFILL = common.scaled(8192)
CHUNK = min(1024, BUFFER)  # teacher pictures per sampling call
LR = 1e-4
DIFFUSION_WEIGHT = 0.25
EMA_DECAY = 0.999
SEED = 6
# Stage 4c's critic beside the regression when > 0 (its scale; the teacher's pictures are its reals).
CRITIC = float(os.environ.get("SHAPES_ONLINE_CRITIC", "0"))


def caption_ids():
    """The distinct training captions (sorted) and the empty prompt as token ids, cached."""
    path = os.path.join(common.WORK, "online-captions.npz")
    if not os.path.exists(path):
        with open(CAPTIONS) as f:
            captions = sorted({json.loads(line)["caption"] for line in f})
        tok = common.tokenizer()
        np.savez(path + ".tmp.npz", ids=common.tokenize(tok, captions).numpy().astype(np.int32),
                 empty=common.tokenize(tok, [""]).numpy().astype(np.int32))
        os.replace(path + ".tmp.npz", path)
    data = np.load(path)
    return torch.from_numpy(data["ids"]).long(), torch.from_numpy(data["empty"]).long()


def text_states(ids, empty_ids, dev):
    """Last hidden states of the teacher's text tower (a CLIPModel folder or its text tower alone),
    rounded to f16 as stage 3b's cache holds them."""
    with open(os.path.join(TEXT, "config.json")) as f:
        whole = "text_config" in json.load(f)
    if whole:
        tower = CLIPModel.from_pretrained(TEXT, torch_dtype=torch.float32).text_model
    else:
        tower = CLIPTextModel.from_pretrained(TEXT, torch_dtype=torch.float32)
    tower = tower.to(dev).eval()
    with torch.no_grad():
        text = torch.cat([tower(input_ids=ids[i:i + 2048].to(dev)).last_hidden_state.half()
                          for i in range(0, len(ids), 2048)])
        empty = tower(input_ids=empty_ids.to(dev)).last_hidden_state.half().float()
    return text, empty


class ReplayBuffer:
    """The newest teacher pictures (noise, caption index, picture), on the training device."""

    def __init__(self, size, dev):
        self.z = torch.zeros(size, 4, 16, 16, device=dev)
        self.x0 = torch.zeros(size, 4, 16, 16, device=dev)
        self.caption = torch.zeros(size, dtype=torch.long, device=dev)
        self.size, self.filled, self.next = size, 0, 0

    def add(self, z, caption, x0):
        at = (self.next + torch.arange(len(z), device=z.device)) % self.size
        self.z[at], self.caption[at], self.x0[at] = z, caption, x0
        self.next = (self.next + len(z)) % self.size
        self.filled = min(self.filled + len(z), self.size)


def main():
    common.setup(SEED)
    if common.done(STAGE):
        return
    started = time.time()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    # The student learns in bf16 on the GPU (weights, optimiser and losses stay f32); the teacher
    # samples in f32 (TF32 matmuls), so its pictures are those the judge scored.
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")  # noqa: E731
    ids, empty_ids = caption_ids()
    text, empty = text_states(ids, empty_ids, dev)
    with open(os.path.join(common.WORK, "guidance.json")) as f:
        guidance = json.load(f)["guidance"]
    teacher = UNet2DConditionModel.from_pretrained(TEACHER, torch_dtype=torch.float32).to(dev).eval()
    student = UNet2DConditionModel.from_pretrained(START, torch_dtype=torch.float32).to(dev).train()
    ema = AveragedModel(student, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY))
    opt = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=0.01)
    modules = {"model": student, "ema": ema, "opt": opt}
    if CRITIC > 0:
        critic = LatentCritic(text.shape[-1]).to(dev)
        opt_critic = torch.optim.Adam(critic.parameters(), lr=CRITIC_LR, betas=(0.0, 0.99))
        modules.update(critic=critic, opt_critic=opt_critic)
    sig = sigmas()
    timesteps = torch.tensor(TIMESTEPS, device=dev)
    noise_level = torch.tensor([sig[t] for t in TIMESTEPS], device=dev)
    alphas = common.alphas_cumprod()
    step, extra = common.load_checkpoint(STAGE, modules)
    gen = torch.Generator(device=dev).manual_seed(SEED * 1_000_003 + step)
    buffer = ReplayBuffer(BUFFER, dev)
    made = extra.get("pictures", 0)

    def refill(count):
        nonlocal made
        for start in range(0, count, CHUNK):
            n = min(CHUNK, count - start)
            caption = torch.randint(len(text), (n,), generator=gen, device=dev)
            z = torch.randn(n, 4, 16, 16, generator=gen, device=dev)
            x0 = teacher_sample(teacher, z, text[caption].float(), empty, guidance)
            buffer.add(z, caption, x0)
        made += count

    def loss_on_batch():
        b = torch.randint(buffer.filled, (BATCH,), generator=gen, device=dev)
        ctx = text[buffer.caption[b]].float()
        k = torch.randint(len(TIMESTEPS), (BATCH,), generator=gen, device=dev)
        with autocast():
            distill, picture = distill_loss(student, buffer.z[b], buffer.x0[b], ctx, timesteps[k],
                                            noise_level[k], sig[999])
            half = BATCH // 2
            plain = common.diffusion_loss(student, buffer.x0[b[:half]], ctx[:half], alphas)
        rec = distill + DIFFUSION_WEIGHT * plain
        if CRITIC <= 0:
            return rec, distill
        r = torch.randint(buffer.filled, (BATCH,), generator=gen, device=dev)
        critic_step(critic, opt_critic, buffer.x0[r], text[buffer.caption[r]].float(), picture, ctx)
        adv, weight = critic_pull(critic, picture, ctx, rec, student, CRITIC)
        return rec + weight * adv, distill

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    sync()
    t0 = time.time()
    refill(PREFILL)
    sync()
    per_picture = (time.time() - t0) / PREFILL
    for timed in (False, True):  # the first passes autotune the kernels: not timed
        sync()
        t0 = time.time()
        for _ in range(5):
            loss, _ = loss_on_batch()
            loss.backward()
        opt.zero_grad()
        sync()
    per_update = (time.time() - t0) / 5
    per_step = GEN * per_picture + per_update
    if FIXED_STEPS:
        steps = int(FIXED_STEPS)
    elif "steps" in extra:
        steps = extra["steps"]
    else:
        steps = max(10, int((SECONDS - (time.time() - started)) * 0.93 / per_step))
    common.log(STAGE, f"{device_name}: teacher {per_picture * 1e3:.3f} ms per picture, student "
               f"update {per_update * 1e3:.1f} ms at batch {BATCH}; {steps} steps of {GEN} new pictures")
    sched = common.schedule(opt, steps, 0.03)
    if "sched" in extra:
        sched.load_state_dict(extra["sched"])
    t_loop, step_at_start = time.time(), step
    half_saved = step >= steps // 2

    def checkpoint():
        common.save_checkpoint(STAGE, step, modules,
                               {"steps": steps, "sched": sched.state_dict(), "pictures": made})

    while step < steps:
        if not FIXED_STEPS and time.time() - started > SECONDS * 1.15:
            common.log(STAGE, f"slower than timed: stopping at step {step} of {steps}")
            break
        if step % (CHUNK // GEN) == 0:  # the teacher runs on full chunks: small batches idle a GPU
            refill(CHUNK)
        loss, distill = loss_on_batch()
        common.train_step(student, opt, sched, loss)
        ema.update_parameters(student)
        step += 1
        if step % 100 == 0:
            common.log(STAGE, f"step {step}/{steps} loss {loss.item():.4f} distill {distill.item():.4f} "
                       f"pictures {made}")
        if not half_saved and step >= steps // 2:
            ema.module.save_pretrained(f"{common.WORK}/unet-online-half")
            half_saved = True
        if step % 2000 == 0:
            checkpoint()
    checkpoint()
    sync()
    seconds = time.time() - t_loop
    ema.module.save_pretrained(f"{common.WORK}/unet-online")
    common.mark_done(STAGE, {
        "steps": step, "planned_steps": steps, "batch": BATCH, "new_pictures_per_step": GEN, "buffer": BUFFER,
        "teacher_pictures": made, "guidance": guidance, "lr": LR, "ema": EMA_DECAY, "critic": CRITIC,
        "start": os.path.basename(os.path.normpath(START)), "device": device_name,
        "loop_seconds": round(seconds, 1), "ms_per_step": round(1e3 * seconds / max(1, step - step_at_start), 2),
        "teacher_ms_per_picture": round(per_picture * 1e3, 4), "final_loss": loss.item(),
        "final_distill_loss": distill.item()})
    common.log(STAGE, f"done: {step} steps in {seconds:.0f} s, {made} teacher pictures")


if __name__ == "__main__":
    main()
