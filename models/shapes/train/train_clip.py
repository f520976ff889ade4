"""Stage 1: the world's CLIP, trained contrastively with hard negatives.

Each picture is scored against every caption of the batch plus its own hard negatives (the same
caption with a colour, shape, count, size or relation changed, or the two objects' roles or
colours swapped), so the reward learns what the judge checks. Reported: accuracy at ranking the
true caption above all of its hard negatives, on held-out pictures.

Three phases: uniform batches; then (from FOCUS_FROM) a third of each batch is position
captions, each with its flipped relation and swapped roles as its negatives; then (from
MIRROR_FROM) those pictures also come mirrored in the same batch, with left/right (or, without
triangles, above/below) swapped in their captions: minimal pairs that differ only in where
things are. Plain contrastive training learns a bag of words first: after phase one a flipped
relation was told apart half the time, after phase two a third.
"""

import random

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPModel

import common

STAGE = "clip"
STEPS = common.scaled(6500)
FOCUS_FROM = common.scaled(3000)
MIRROR_FROM = common.scaled(5000)
MIRRORS = 24  # mirrored position pictures per batch
FOCUS_SHARE = 0.35
BATCH = 128
NEGATIVES = 2  # per picture and step
LR = 1e-3


RELATION_WORDS = {"left", "right", "above", "below", "over", "under"}


def relational_negatives(row):
    """A position caption's negatives that change only where things are: the relation flipped,
    the roles (or colours) swapped."""
    words = row["caption"].split()
    out = []
    for n in row["negatives"]:
        nw = n.split()
        flipped = len(nw) == len(words) and all(
            a == b or (a in RELATION_WORDS and b in RELATION_WORDS) for a, b in zip(words, nw))
        if flipped or sorted(nw) == sorted(words):
            out.append(n)
    return out or row["negatives"]


SWAPS = {"left": "right", "right": "left", "above": "below", "below": "above", "over": "under",
         "under": "over"}


def mirrored(image, row):
    """The picture mirrored with its captions' relation swapped, or None when mirroring would
    turn a triangle upside down."""
    text = row["caption"]
    horizontal = " left " in f" {text} " or " right " in f" {text} "
    if not horizontal and "triangle" in text:
        return None
    flip = lambda c: " ".join(SWAPS.get(w, w) for w in c.split())  # noqa: E731
    pixels = image[:, ::-1] if horizontal else image[::-1]
    return pixels, dict(row, caption=flip(text), negatives=[flip(n) for n in row["negatives"]])


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
    position = [i for i, r in enumerate(rows) if r["tag"] == "position"]
    others = [i for i, r in enumerate(rows) if r["tag"] != "position"]
    while step < STEPS:
        if step < FOCUS_FROM:
            idx = sorted(rng.sample(range(len(rows)), BATCH))
        else:
            focus = rng.sample(position, int(BATCH * FOCUS_SHARE))
            idx = sorted(focus + rng.sample(others, BATCH - len(focus)))
        batch = [rows[i] for i in idx]
        pictures = images[idx]
        if step >= MIRROR_FROM:
            pairs = [m for m in (mirrored(images[i], rows[i]) for i in focus[:MIRRORS]) if m]
            # The mirrors replace the last pictures of the batch (not position ones).
            keep = [k for k, i in enumerate(idx) if i not in set(focus)][:BATCH - len(focus) - len(pairs)]
            keep = sorted([k for k, i in enumerate(idx) if i in set(focus)] + keep)
            pictures = np.concatenate([pictures[keep], np.stack([p for p, _ in pairs])])
            batch = [batch[k] for k in keep] + [r for _, r in pairs]
        pixels = common.to_pixels(pictures)
        captions = [r["caption"] for r in batch]
        negatives = []
        for r in batch:
            pool = r["negatives"] or [r["caption"]]
            if step >= FOCUS_FROM and r["tag"] == "position":
                pool = relational_negatives(r)
            negatives += [rng.choice(pool) if len(pool) > NEGATIVES else pool[k % len(pool)]
                          for k in range(NEGATIVES)]
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


def report():
    """Held-out accuracy per task, and on flipped relations alone, of the trained CLIP."""
    tok = common.tokenizer()
    images, rows = common.dataset("val", 2000, 2)
    model = CLIPModel.from_pretrained(f"{common.WORK}/clip").eval()
    by_task = {}
    flips = []
    with torch.no_grad():
        img = torch.cat([model.get_image_features(pixel_values=common.to_pixels(images[s:s + 100])).pooler_output
                         for s in range(0, len(rows), 100)])
        img = F.normalize(img, dim=-1)
        for i, row in enumerate(rows):
            texts = [row["caption"]] + row["negatives"]
            t = F.normalize(model.get_text_features(input_ids=common.tokenize(tok, texts)).pooler_output, dim=-1)
            s = t @ img[i]
            by_task.setdefault(row["tag"], []).append(int(len(texts) == 1 or bool(s[0] > s[1:].max())))
            if row["tag"] == "position":
                flipped = [k + 1 for k, n in enumerate(row["negatives"]) if n in relational_negatives(row)]
                flips += [int(bool(s[0] > s[k])) for k in flipped]
    for tag, hits in sorted(by_task.items()):
        print(f"{tag}: {sum(hits) / len(hits):.3f} ({len(hits)} pictures)")
    print(f"position, relation flipped or roles swapped (pairwise): {sum(flips) / len(flips):.3f} ({len(flips)} pairs)")


if __name__ == "__main__":
    import sys
    report() if sys.argv[1:] == ["report"] else main()
