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
    relation = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    include = [dict(o, position=[relation[o["position"][0]], o["position"][1]]) if "position" in o else o
               for o in row["metadata"]["include"]]
    return pixels, dict(row, caption=flip(text), negatives=[flip(n) for n in row["negatives"]],
                        metadata=dict(row["metadata"], include=include))


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


def sample_batch(rng, images, rows, position, others, focus, mirror):
    """A batch's pictures and rows: uniform, or (focus) a share of position captions, or
    (mirror) those with mirrored copies in the same batch."""
    if not focus:
        idx = sorted(rng.sample(range(len(rows)), BATCH))
        return images[idx], [rows[i] for i in idx]
    chosen = rng.sample(position, int(BATCH * FOCUS_SHARE))
    idx = sorted(chosen + rng.sample(others, BATCH - len(chosen)))
    batch, pictures = [rows[i] for i in idx], images[idx]
    if mirror:
        pairs = [m for m in (mirrored(images[i], rows[i]) for i in chosen[:MIRRORS]) if m]
        # The mirrors replace the last pictures of the batch (not position ones).
        keep = [k for k, i in enumerate(idx) if i not in set(chosen)][:BATCH - len(chosen) - len(pairs)]
        keep = sorted([k for k, i in enumerate(idx) if i in set(chosen)] + keep)
        pictures = np.concatenate([pictures[keep], np.stack([p for p, _ in pairs])])
        batch = [batch[k] for k in keep] + [r for _, r in pairs]
    return pictures, batch


def contrastive_loss(model, tok, pictures, batch, rng, relational):
    """Symmetric in-batch contrastive loss, each picture also against NEGATIVES of its own hard
    negatives (for position captions, with `relational`, only those that move things). Returns
    the loss and the normalised picture and caption embeddings."""
    pixels = common.to_pixels(pictures)
    captions = [r["caption"] for r in batch]
    negatives = []
    for r in batch:
        pool = r["negatives"] or [r["caption"]]
        if relational and r["tag"] == "position":
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
    return (loss_i + loss_t) / 2, img, cap


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
        pictures, batch = sample_batch(rng, images, rows, position, others,
                                       step >= FOCUS_FROM, step >= MIRROR_FROM)
        loss, _, _ = contrastive_loss(model, tok, pictures, batch, rng, step >= FOCUS_FROM)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        if step % 50 == 0:
            common.log(STAGE, f"step {step} loss {loss.item():.4f} scale {model.logit_scale.exp().item():.1f}")
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


def task_accuracies(model, tok, images, rows):
    """Held-out accuracy per task against each picture's hard negatives, and on position
    captions pairwise against the same caption with the relation flipped or roles swapped."""
    model.eval()
    by_task, flips = {}, []
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
    model.train()
    tasks = {tag: sum(h) / len(h) for tag, h in sorted(by_task.items())}
    return tasks, sum(flips) / max(len(flips), 1)


def report(folder="clip"):
    """Prints `task_accuracies` of a trained CLIP (a folder under the work directory)."""
    tok = common.tokenizer()
    images, rows = common.dataset("val", 2000, 2)
    model = CLIPModel.from_pretrained(f"{common.WORK}/{folder}")
    tasks, flips = task_accuracies(model, tok, images, rows)
    for tag, acc in tasks.items():
        print(f"{tag}: {acc:.3f}")
    print(f"position, relation flipped or roles swapped (pairwise): {flips:.3f}")


if __name__ == "__main__":
    import sys
    report(*sys.argv[2:]) if sys.argv[1:2] == ["report"] else main()
