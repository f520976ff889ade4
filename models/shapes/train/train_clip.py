"""Stage 1: the world's CLIP, trained contrastively with hard negatives.

Each picture is scored against every caption of the batch plus its own hard negatives (the same
caption with a colour, shape, count, size or relation changed, or the two objects' roles or
colours swapped), so the reward learns what the judge checks. Reported: accuracy at ranking the
true caption above all of its hard negatives, on held-out pictures.
"""

import random

import torch
import torch.nn.functional as F
from transformers import CLIPModel

import common

STAGE = "clip"
STEPS = common.scaled(3000)
BATCH = 128
NEGATIVES = 2  # per picture and step
LR = 1e-3


def negatives_accuracy(model, tok, images, rows, n=1000):
    """Share of pictures whose caption outscores every one of its hard negatives."""
    model.eval()
    n = min(n, len(rows))
    right = 0
    with torch.no_grad():
        for start in range(0, n, 100):
            batch = rows[start:start + 100]
            img = model.get_image_features(pixel_values=common.to_pixels(images[start:start + 100])).pooler_output
            img = F.normalize(img, dim=-1)
            for i, row in enumerate(batch):
                texts = [row["caption"]] + row["negatives"]
                t = model.get_text_features(input_ids=common.tokenize(tok, texts)).pooler_output
                s = F.normalize(t, dim=-1) @ img[i]
                right += int(s[0] > s[1:].max()) if len(texts) > 1 else 1
    model.train()
    return right / n


def main():
    common.setup(1)
    tok = common.tokenizer()
    images, rows = common.dataset("train", 60000, 1)
    val_images, val_rows = common.dataset("val", 2000, 2)
    if common.done(STAGE):
        return
    model = CLIPModel(common.clip_config(tok))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    sched = common.schedule(opt, STEPS, 0.05)
    step, _ = common.load_checkpoint(STAGE, {"model": model, "opt": opt, "sched": sched})
    rng = random.Random(step)
    while step < STEPS:
        idx = sorted(rng.sample(range(len(rows)), BATCH))
        batch = [rows[i] for i in idx]
        pixels = common.to_pixels(images[idx])
        captions = [r["caption"] for r in batch]
        negatives = []
        for r in batch:
            pool = r["negatives"] or [r["caption"]]
            negatives += [rng.choice(pool) for _ in range(NEGATIVES)]
        ids = common.tokenize(tok, captions + negatives)
        img = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        txt = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        cap, neg = txt[:BATCH], txt[BATCH:].view(BATCH, NEGATIVES, -1)
        scale = model.logit_scale.exp().clamp(max=100)
        in_batch = scale * img @ cap.T
        own = scale * torch.einsum("bd,bkd->bk", img, neg)
        # Another picture's caption that reads the same is right too: leave it out.
        same = torch.tensor([[a == b for b in captions] for a in captions])
        in_batch = in_batch.masked_fill(same & ~torch.eye(BATCH, dtype=torch.bool), float("-inf"))
        labels = torch.arange(BATCH)
        loss_i = F.cross_entropy(torch.cat([in_batch, own], 1), labels)
        loss_t = F.cross_entropy(in_batch.T, labels)
        loss = (loss_i + loss_t) / 2
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 50 == 0:
            common.log(STAGE, f"step {step} loss {loss.item():.4f} scale {scale.item():.1f}")
        if step % 500 == 0 or step == STEPS:
            common.save_checkpoint(STAGE, step, {"model": model, "opt": opt, "sched": sched})
        if step % 1000 == 0 or step == STEPS:
            acc = negatives_accuracy(model, tok, val_images, val_rows)
            common.log(STAGE, f"step {step} held-out hard-negative accuracy {acc:.3f}")
    acc = negatives_accuracy(model, tok, val_images, val_rows, n=2000)
    model.save_pretrained(f"{common.WORK}/clip")
    tok.save_pretrained(f"{common.WORK}/clip")
    common.mark_done(STAGE, {"steps": STEPS, "hard_negative_accuracy": acc})
    common.log(STAGE, f"done: hard-negative accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
