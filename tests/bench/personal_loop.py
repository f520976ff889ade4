"""Personal taste, closed loop, on the shapes world: simulated people whose hidden utility is
defined on the judge's parse of a picture answer pairs of the shapes model's pictures; Tastebud
asks them 5 / 10 / 20 pairs (at random, or actively: `personalize next`), fits a linear head on
the world CLIP's embeddings (`personalize fit`) and steers generation with it (`optimize
--reward personal=HEAD,CLIP`, alone and mixed with the prompt's CLIP reward). Reported at equal
seeds: the person's hidden utility of plain vs steered pictures, the share of people whose
pictures improved, and the judge's prompt score (steering must not break the prompt).

    python tests/bench/personal_loop.py --out /tmp/loop                     # 4 people per kind
    python tests/bench/personal_loop.py --out /tmp/loop --people 1 --answers 5 --test-seeds 1  # smoke
    python tests/bench/personal_loop.py --out /tmp/loop --grid models/shapes/examples/grid.png  # + the grid
    python tests/bench/personal_loop.py --out /tmp/loop --modes personal+clip -- --prior-weight 0.1  # more `optimize` flags

People (all read the judge's objects: colour, size, centre):
- warm (linear): likes warm colours (red > orange > yellow; blue and purple least);
- cool (linear): the opposite: likes blue and purple, red least;
- large (linear): likes large objects;
- left (linear): likes things on the left;
- mix (linear): a random signed mix of warmth, size and leftness;
- two-styles (non-linear): likes large blue things or small red ones, nothing in between.
A picture in which the judge finds nothing is worth the least (a broken picture). Answers are
Bradley-Terry with a temperature of 0.1 x the spread of the person's utility over the pool.

--grid draws prompts x {plain, ReNO with the CLIP reward, each of the first two kinds' first
person steering with their head (most answers, last selection) and the CLIP reward}, one seed.

Needs the `tastebud` binary (`cargo build --bin tastebud`, or pass --tastebud). Every step
writes into --out and is skipped when its output exists, so a stopped run resumes.
"""

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIP = os.path.join(REPO, "models", "shapes", "clip")
KINDS = ["warm", "cool", "large", "left", "mix", "two-styles"]
LINEAR = {"warm", "cool", "large", "left", "mix"}
# Prompts that leave colour, size and place free: a taste has room to show.
PROMPTS = ["a circle", "a square", "a triangle", "two circles"]
WARMTH = {"red": 1.0, "orange": 0.7, "yellow": 0.4, "green": -0.3, "blue": -1.0, "purple": -0.7}
BROKEN = -2.0  # the utility of a picture with nothing the judge can read


def run(args, *command):
    out = subprocess.run([args.tastebud, *command], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"tastebud {' '.join(command)} failed:\n{out.stderr}")
    return out.stdout


def steering(args):
    """The `optimize` arguments a head steers with (rewards are added by the caller)."""
    if args.method == "reno":
        return ["optimize", "--iters", args.iters, "--lr", args.lr, *args.optimize]
    return ["optimize", "--method", "best-of-n", "--budget", args.budget, *args.optimize]


def features(objects):
    """(warmth, large share, leftness) of a picture's objects, or None if it has none."""
    if not objects:
        return None
    n = len(objects)
    warm = sum(WARMTH.get(o["color"], 0.0) for o in objects) / n
    large = sum(o["size"] == "large" for o in objects) / n
    left = sum(1 - (o["bbox"][0] + o["bbox"][2]) / 64 for o in objects) / n  # +1 left edge
    return warm, large, left


class Person:
    def __init__(self, kind, rng):
        self.kind = kind
        if kind == "mix":
            self.weights = [rng.choice([-1, 1]) * rng.uniform(0.3, 1.0) for _ in range(3)]
        else:
            self.weights = {"warm": [1, 0, 0], "cool": [-1, 0, 0], "large": [0, 1, 0],
                            "left": [0, 0, 1]}.get(kind)
        self.temperature = 1.0

    def utility(self, objects):
        f = features(objects)
        if f is None:
            return BROKEN
        if self.kind == "two-styles":
            per = [max(float(o["color"] == "blue" and o["size"] == "large"),
                       float(o["color"] == "red" and o["size"] == "small")) for o in objects]
            return sum(per) / len(per)
        return sum(w * v for w, v in zip(self.weights, f))

    def answer(self, ua, ub, rng):
        p = 1 / (1 + math.exp(-(ua - ub) / self.temperature))
        return "a" if rng.random() <= p else "b"


def pictures(args, folder, prompt, seeds, extra=()):
    """`generate`/`optimize` over one prompt and several seeds, as a resumable batch run: the
    pictures' paths in seed order."""
    os.makedirs(folder, exist_ok=True)
    prompts = os.path.join(folder, "prompts.jsonl")
    with open(prompts, "w") as f:
        f.write(json.dumps({"prompt": prompt, "seeds": seeds}) + "\n")
    command = list(extra) if extra else ["generate"]
    run(args, *command, "--prompts", prompts, "--out-dir", folder)
    return [os.path.join(folder, f"00001-{s}.png") for s in seeds]


def judged(args, prompt, paths, cache):
    """Each picture's verdict on the prompt and the objects the judge found."""
    todo = [p for p in paths if p not in cache]
    if todo:
        out = json.loads(run(args, "judge", "--json", "--prompt", prompt, *todo))
        for path, v in zip(todo, out["verdicts"]):
            cache[path] = v
    return [cache[p] for p in paths]


def ask(args, person, prompt, pool, utilities, folder, count, active, rng):
    """The person's first `count` answers: the preference file."""
    prefs = os.path.join(folder, "prefs.json")
    if os.path.exists(prefs):
        with open(prefs) as f:
            if len(json.load(f)["records"]) >= count:
                return prefs  # asked in an earlier run
        os.remove(prefs)  # a run stopped while asking: ask again from the start
    asked = set()
    for t in range(count):
        pair = None
        if active and t >= 2:
            head = os.path.join(folder, "asking-head")
            run(args, "personalize", "fit", "--prefs", prefs, "--head", "linear", "--out", head)
            choice = json.loads(run(args, "personalize", "next", "--prefs", prefs, "--head", head,
                                    "--clip", CLIP, "--json", "--candidates", *pool))
            pair = (pool.index(choice["a"]), pool.index(choice["b"]))
        while pair is None or pair in asked or pair[::-1] in asked or pair[0] == pair[1]:
            pair = (rng.randrange(len(pool)), rng.randrange(len(pool)))
        asked.add(pair)
        i, j = pair
        run(args, "personalize", "record", "--prefs", prefs, "--prompt", prompt, "--clip", CLIP,
            "--a", pool[i], "--b", pool[j], "--choice", person.answer(utilities[i], utilities[j], rng))
    return prefs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--people", type=int, default=4, help="people per kind")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--answers", default="5,10,20")
    ap.add_argument("--selections", default="random,active")
    ap.add_argument("--pool", type=int, default=16, help="pictures a person is asked about")
    ap.add_argument("--test-seeds", type=int, default=2, help="seeds steered per person and count")
    ap.add_argument("--iters", default="10")
    ap.add_argument("--method", default="reno", choices=["reno", "best-of-n"],
                    help="how the head steers: ReNO (--iters, --lr) or best-of-N at --budget")
    ap.add_argument("--budget", default="30", help="best-of-n: forward passes (ReNO-10 costs 30)")
    ap.add_argument("--clip-weight", help="the CLIP reward's weight next to the head's 1 (default: "
                    "ReNO's 0.01 on CLIPScore x 100)")
    ap.add_argument("--lr", default="2")
    ap.add_argument("--modes", default="personal,personal+clip",
                    help="steering with the head alone (personal), with the CLIP reward too (personal+clip)")
    ap.add_argument("optimize", nargs="*", help="after --: more `tastebud optimize` flags for steering")
    ap.add_argument("--grid", help="also draw the picture grid into this PNG")
    ap.add_argument("--grid-seed", type=int, default=300)
    ap.add_argument("--tastebud", default=os.path.join(os.environ.get(
        "CARGO_TARGET_DIR", os.path.join(REPO, "target")), "debug", "tastebud"))
    args = ap.parse_args()
    if not os.path.exists(args.tastebud):
        ap.error(f"no tastebud binary at {args.tastebud}: cargo build --bin tastebud, or --tastebud")
    counts = [int(n) for n in args.answers.split(",")]
    selections = args.selections.split(",")
    os.makedirs(args.out, exist_ok=True)
    cache_path = os.path.join(args.out, "verdicts.json")
    cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
    rows = []
    for k, kind in enumerate(KINDS):
        if kind not in args.kinds.split(","):
            continue
        for p in range(args.people):
            rng = random.Random(1000 * k + p)
            person = Person(kind, rng)
            prompt = PROMPTS[p % len(PROMPTS)]
            base = os.path.join(args.out, "plain", prompt.replace(" ", "-"))
            pool = pictures(args, os.path.join(base, "pool"), prompt, list(range(100, 100 + args.pool)))
            pool_u = [person.utility(v["found"]) for v in judged(args, prompt, pool, cache)]
            spread = statistics.pstdev(pool_u) or 1.0
            person.temperature = 0.1 * spread
            test_seeds = list(range(200 + p * args.test_seeds, 200 + (p + 1) * args.test_seeds))
            plain = pictures(args, os.path.join(base, "test"), prompt, test_seeds)
            plain_v = judged(args, prompt, plain, cache)
            for selection in selections:
                folder = os.path.join(args.out, f"{kind}-{p}", selection)
                os.makedirs(folder, exist_ok=True)
                prefs = ask(args, person, prompt, pool, pool_u, folder, max(counts),
                            selection == "active", random.Random(rng.random()))
                with open(prefs) as f:
                    answers = json.load(f)
                for n in counts:
                    mine = os.path.join(folder, f"prefs-{n}.json")
                    with open(mine, "w") as f:
                        json.dump(dict(answers, records=answers["records"][:n]), f)
                    head = os.path.join(folder, f"head-{n}")
                    run(args, "personalize", "fit", "--prefs", mine, "--head", "linear", "--out", head)
                    personal = f"personal={head},{CLIP}"
                    clip = f"clip={CLIP}" + (f":{args.clip_weight}" if args.clip_weight else "")
                    for mode, rewards in [("personal", [personal]), ("personal+clip", [personal, clip])]:
                        if mode not in args.modes.split(","):
                            continue
                        extra = steering(args)
                        for r in rewards:
                            extra += ["--reward", r]
                        steered = pictures(args, os.path.join(folder, f"{mode}-{n}"), prompt, test_seeds, extra)
                        for s, pv, sv in zip(test_seeds, plain_v, judged(args, prompt, steered, cache)):
                            rows.append({"kind": kind, "person": p, "selection": selection, "answers": n,
                                         "mode": mode, "seed": s,
                                         "plain_utility": person.utility(pv["found"]),
                                         "steered_utility": person.utility(sv["found"]),
                                         "plain_holds": pv["holds"], "steered_holds": sv["holds"],
                                         "spread": spread})
            with open(cache_path + ".tmp", "w") as f:
                json.dump(cache, f)
            os.replace(cache_path + ".tmp", cache_path)
            print(f"{kind} person {p}: done", file=sys.stderr, flush=True)
    with open(os.path.join(args.out, "rows.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    report(rows, counts, selections)
    if args.grid:
        kinds = [k for k in KINDS if k in args.kinds.split(",")][:2]
        people = [(f"{k} person", os.path.join(args.out, f"{k}-0", selections[-1], f"head-{max(counts)}"))
                  for k in kinds]
        grid(args, people)


def grid(args, people):
    """Prompts x {plain, ReNO (CLIP), each person's steering + CLIP}: one seed, labelled, 2x."""
    from PIL import Image, ImageDraw
    steer = steering(args)
    name = f"ReNO-{args.iters}" if args.method == "reno" else f"best-of-{args.budget}"
    columns = [("plain", []), (f"{name} (CLIP)", steer + ["--reward", f"clip={CLIP}"])]
    columns += [(label, steer + ["--reward", f"personal={head},{CLIP}", "--reward", f"clip={CLIP}"])
                for label, head in people]
    cell, margin, top = 128, 150, 24
    sheet = Image.new("RGB", (margin + cell * len(columns), top + cell * len(PROMPTS)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, (label, _) in enumerate(columns):
        draw.text((margin + c * cell + 4, 6), label, fill="black")
    for r, prompt in enumerate(PROMPTS):
        draw.text((4, top + r * cell + cell // 2 - 6), prompt, fill="black")
        for c, (label, command) in enumerate(columns):
            folder = os.path.join(args.out, "grid", label.replace(" ", "-"), prompt.replace(" ", "-"))
            [path] = pictures(args, folder, prompt, [args.grid_seed], command)
            picture = Image.open(path).convert("RGB").resize((cell, cell), Image.NEAREST)
            sheet.paste(picture, (margin + c * cell, top + r * cell))
    sheet.save(args.grid + ".tmp.png")
    os.replace(args.grid + ".tmp.png", args.grid)
    print(f"grid: {args.grid}", file=sys.stderr)


LINEAR = ("warm", "cool", "large", "left", "mix")


def report(rows, counts, selections):
    """Per kind (and for the linear-taste people together), mode, selection and count: mean
    utility gain (in units of the person's spread), share of people whose steered pictures beat
    plain ones on average, prompt score plain -> steered."""
    print("| people | steering | pairs | answers | utility gain (spreads) | people improved | prompt holds, plain -> steered |")
    print("|---|---|---|---|---|---|---|")
    groups = {}
    for r in rows:
        groups.setdefault((r["kind"], r["mode"], r["selection"], r["answers"]), []).append(r)
        if r["kind"] in LINEAR:
            groups.setdefault(("all linear", r["mode"], r["selection"], r["answers"]), []).append(r)
    for (kind, mode, selection, n), rs in sorted(groups.items()):
        gain = statistics.mean((r["steered_utility"] - r["plain_utility"]) / r["spread"] for r in rs)
        people = {}
        for r in rs:
            people.setdefault((r["kind"], r["person"]), []).append(r["steered_utility"] - r["plain_utility"])
        improved = sum(statistics.mean(v) > 0 for v in people.values()) / len(people)
        held = statistics.mean(r["plain_holds"] for r in rs), statistics.mean(r["steered_holds"] for r in rs)
        print(f"| {kind} | {mode} | {selection} | {n} | {gain:+.2f} | {improved:.0%} | {held[0]:.2f} -> {held[1]:.2f} |")


if __name__ == "__main__":
    main()
