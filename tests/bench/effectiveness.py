"""Does it make images better? Every optimisation method on the shapes world's evaluation suite,
judged by its exact judge: GenEval's per-task and overall accuracy, how far the pictures left the
world (off-world pixel share: reward hacking), the reward (the shipped CLIP) before and after,
and time per image.

    python tests/bench/effectiveness.py --out /tmp/effect                        # the whole suite, 4 seeds
    python tests/bench/effectiveness.py --out /tmp/effect --per-task 5 --seeds 1 # a quick look
    python tests/bench/effectiveness.py --out /tmp/effect --jobs 8               # 8 shard processes

Each method is one `tastebud generate|optimize --prompts ... --out-dir OUT/METHOD` batch run,
split into --jobs shards (`--shard i/n`) that run side by side: resumable (run the same command
again after a stop; finished images are kept) and spreadable over machines (run the same
command with --shard-offset on each). The records merge by concatenation and
`tastebud shapes judge-set` judges them. Compute is counted as the CLI counts it (a gradient
pass is 3 forward passes), so the search methods get ReNO-50's 150.

Needs the `tastebud` binary (`cargo build --bin tastebud`: the dev profile is optimised; or pass --tastebud).
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
BUDGET = "150"  # ReNO-50's compute in forward passes: 50 gradient iterations at 3 each
# A candidate through the proxy decoder against one through the VAE, both scored by the CLIP
# (`tastebud bench` with and without `--decoder models/shapes/proxy`; BENCHMARKS.md).
PROXY_COST = "0.55"

# name -> the command's arguments after `tastebud`. ReNO's defaults: SGD with Nesterov momentum
# 0.9, lr 5, gradient clip 0.1, prior weight 0.01.
METHODS = {
    "plain": ["generate"],
    "reno-10": ["optimize", "--iters", "10"],
    "reno-20": ["optimize", "--iters", "20"],
    "reno-50": ["optimize", "--iters", "50"],
    "reno-50-no-prior": ["optimize", "--iters", "50", "--prior-weight", "0"],
    "reno-200": ["optimize", "--iters", "200"],
    "best-of-n": ["optimize", "--method", "best-of-n", "--budget", BUDGET],
    "zero-order": ["optimize", "--method", "zero-order", "--budget", BUDGET],
    "carinox": ["optimize", "--method", "carinox", "--budget", BUDGET],
    # Through the shipped proxy decoder (models/shapes/proxy) first, the best 2 in full.
    "pruned": ["optimize", "--method", "pruned", "--budget", BUDGET, "--proxy-cost", PROXY_COST],
}
DEFAULT = ["plain", "reno-10", "reno-20", "reno-50", "best-of-n", "zero-order", "carinox", "pruned"]


def suite(per_task, out):
    """The evaluation suite's first `per_task` prompts of each task, as a prompt file."""
    with open(os.path.join(REPO, "models", "shapes", "eval.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    seen, chosen = {}, []
    for row in rows:
        if per_task is None or seen.get(row["tag"], 0) < per_task:
            seen[row["tag"]] = seen.get(row["tag"], 0) + 1
            chosen.append(row)
    path = os.path.join(out, "prompts.jsonl")
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in chosen)
    os.replace(path + ".tmp", path)
    return path, len(chosen)


def run_method(args, name, prompts):
    folder = os.path.join(args.out, name)
    base = [args.tastebud] + METHODS[name] + ["--prompts", prompts, "--out-dir", folder,
                                              "--seeds-per-prompt", str(args.seeds)] + args.extra
    shards = [i for i in range(args.shard_offset, args.shard_offset + args.jobs)]
    procs = [subprocess.Popen(base + ["--shard", f"{i}/{args.shards}"]) for i in shards]
    failed = [p.args for p in procs if p.wait() != 0]
    if failed:
        sys.exit(f"{name}: a shard failed: {' '.join(failed[0])}")
    return folder


def judge(args, folder):
    records = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            records.append(json.load(f))
    manifest = os.path.join(folder, "all.jsonl")
    with open(manifest + ".tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(manifest + ".tmp", manifest)
    out = subprocess.run([args.tastebud, "shapes", "judge-set", "--manifest", manifest],
                         check=True, capture_output=True, text=True)
    report = json.loads(out.stdout)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    report["seconds_per_image"] = mean([r["ms"] / 1e3 for r in records])
    scored = [r for r in records if "best_scores" in r]
    report["reward_start"] = mean([r["start_scores"]["rewards"][0] for r in scored])
    report["reward_best"] = mean([r["best_scores"]["rewards"][0] for r in scored])
    return report


def table(results):
    head = ["method", "overall"] + TASKS + ["off-world", "reward start -> best", "s/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        tasks = [f"{r['tasks'][t]['accuracy']:.3f}" if t in r["tasks"] else "-" for t in TASKS]
        reward = (f"{r['reward_start']:.2f} -> {r['reward_best']:.2f}" if r["reward_best"] is not None else "-")
        lines.append("| " + " | ".join([name, f"**{r['overall']:.3f}**"] + tasks + [
            f"{r['off_world']:.3f}", reward, f"{r['seconds_per_image']:.2f}"]) + " |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="results folder (resumable)")
    p.add_argument("--methods", default=",".join(DEFAULT),
                   help=f"comma-separated, of: {', '.join(METHODS)}")
    p.add_argument("--per-task", type=int, default=None, help="prompts per task (default: all)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt")
    p.add_argument("--jobs", type=int, default=1, help="shard processes run side by side")
    p.add_argument("--shards", type=int, default=None, help="shards in all (default: --jobs)")
    p.add_argument("--shard-offset", type=int, default=0, help="first shard this machine runs")
    p.add_argument("--tastebud", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "debug", "tastebud"))
    p.add_argument("extra", nargs="*", help="after --: more flags for every command (e.g. --device gpu)")
    args = p.parse_args()
    args.shards = args.shards or args.jobs
    names = [m for m in args.methods.split(",") if m]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    if not os.path.exists(args.tastebud):
        p.error(f"no tastebud binary at {args.tastebud}: cargo build --bin tastebud, or --tastebud")
    os.makedirs(args.out, exist_ok=True)
    prompts, count = suite(args.per_task, args.out)
    print(f"{count} prompts x {args.seeds} seeds, methods: {', '.join(names)}", file=sys.stderr)
    results = {}
    for name in names:
        started = time.time()
        folder = run_method(args, name, prompts)
        if args.shards != args.jobs:
            continue  # this machine ran only its shards; judge once all are in one folder
        results[name] = judge(args, folder)
        print(f"{name}: overall {results[name]['overall']:.3f} ({time.time() - started:.0f} s)", file=sys.stderr)
    if results:
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        print(table(results))


if __name__ == "__main__":
    main()
