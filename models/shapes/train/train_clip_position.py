"""Stage 1b: teach the reward CLIP where things are.

Contrastive training alone leaves the CLIP (stage 1) at chance on "A left of B" against "A right
of B": the two captions' embeddings sit at cosine ~0.997, a symmetric saddle where neither tower
gets a gradient that tells them apart. This stage breaks it with shared linear probes in the
joint embedding space: on two-object position pictures, one probe reads the shape (and colour,
when the caption names it) of the left-hand object, another of the upper one, from the picture's
embedding and from the caption's alike ("A right of B" names B as the left-hand one). Both
towers must then put "which one is left" along the same directions, so the contrastive loss
(focused on position captions with their flipped relations as negatives, with mirrored copies)
can use it.

The generator first kept stage 1's text tower (stage 3's UNet was trained on those states;
stage 3b moves it to this one); this stage's model is the shipped reward, saved as `clip-reward/`.
"""

import random

import torch
import torch.nn.functional as F
from transformers import CLIPModel

import common
import train_clip as clip_stage

STAGE = "clip-position"
STEPS = common.scaled(1500)
LR = 3e-4
PROBE_LR = 3e-3
PROBE_WEIGHT = 1.0
PROBE_SCALE = 16.0  # the embeddings are unit vectors; logits need a range


def probe_targets(row, shapes, colors):
    """(axis, shape, colour) of the left-hand (axis 0) or upper (axis 1) object of a position
    caption, colour -100 when the caption does not name it; None for other captions."""
    if row["tag"] != "position":
        return None
    anchor, subject = row["metadata"]["include"][:2]
    relation = subject["position"][0]
    first = subject if relation in ("left of", "above") else anchor
    axis = 0 if relation in ("left of", "right of") else 1
    color = colors.index(first["color"]) if "color" in first else -100
    return axis, shapes.index(first["class"]), color


def probe_loss(probes, emb, targets):
    """Cross-entropy of the probes on the embeddings of the rows that have targets."""
    losses = []
    for axis in (0, 1):
        rows = [(k, t) for k, t in enumerate(targets) if t is not None and t[0] == axis]
        if not rows:
            continue
        x = PROBE_SCALE * emb[[k for k, _ in rows]]
        shape = torch.tensor([t[1] for _, t in rows])
        color = torch.tensor([t[2] for _, t in rows])
        losses.append(F.cross_entropy(probes[f"shape{axis}"](x), shape))
        if (color >= 0).any():
            losses.append(F.cross_entropy(probes[f"color{axis}"](x), color, ignore_index=-100))
    return sum(losses) / max(len(losses), 1)


def main():
    common.setup(11, threads=1)  # runs beside the distillation
    if common.done(STAGE):
        return
    tok = common.tokenizer()
    images, rows = common.dataset("train", 60000, 1)
    val_images, val_rows = common.dataset("val", 2000, 2)
    spec = common.world()
    shapes = [s["name"] for s in spec["shapes"]]
    colors = [c["name"] for c in spec["colors"]]
    model = CLIPModel.from_pretrained(f"{common.WORK}/clip").train()
    dim = model.config.projection_dim
    probes = torch.nn.ModuleDict({f"shape{a}": torch.nn.Linear(dim, len(shapes)) for a in (0, 1)}
                                 | {f"color{a}": torch.nn.Linear(dim, len(colors)) for a in (0, 1)})
    opt = torch.optim.AdamW([{"params": model.parameters(), "lr": LR},
                             {"params": probes.parameters(), "lr": PROBE_LR}], weight_decay=0.05)
    sched = common.schedule(opt, STEPS, 0.05)
    step, _ = common.load_checkpoint(STAGE, {"model": model, "probes": probes, "opt": opt, "sched": sched})
    rng = random.Random(1000 + step)
    position = [i for i, r in enumerate(rows) if r["tag"] == "position"]
    others = [i for i, r in enumerate(rows) if r["tag"] != "position"]
    while step < STEPS:
        pictures, batch = clip_stage.sample_batch(rng, images, rows, position, others, True, True)
        loss_c, img, cap = clip_stage.contrastive_loss(model, tok, pictures, batch, rng, True)
        targets = [probe_targets(r, shapes, colors) for r in batch]
        loss_p = probe_loss(probes, img, targets) + probe_loss(probes, cap, targets)
        loss = loss_c + PROBE_WEIGHT * loss_p
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 50 == 0:
            common.log(STAGE, f"step {step} loss {loss.item():.4f} contrastive {loss_c.item():.4f} "
                       f"probes {loss_p.item():.4f}")
        if step % 250 == 0 or step == STEPS:
            common.save_checkpoint(STAGE, step, {"model": model, "probes": probes, "opt": opt, "sched": sched})
        if step % 500 == 0 and step < STEPS:
            _, flips = clip_stage.task_accuracies(model, tok, val_images[:500], val_rows[:500])
            common.log(STAGE, f"step {step} held-out flipped-relation accuracy {flips:.3f}")
    acc = clip_stage.negatives_accuracy(model, tok, val_images, val_rows, n=2000)
    tasks, flips = clip_stage.task_accuracies(model, tok, val_images, val_rows)
    model.save_pretrained(f"{common.WORK}/clip-reward")
    tok.save_pretrained(f"{common.WORK}/clip-reward")
    common.mark_done(STAGE, {"steps": STEPS, "hard_negative_accuracy": acc, "tasks": tasks,
                             "flipped_relation_accuracy": flips})
    common.log(STAGE, f"done: hard-negative accuracy {acc:.3f}, flipped relations {flips:.3f}, "
               + " ".join(f"{t} {a:.3f}" for t, a in tasks.items()))


if __name__ == "__main__":
    main()
