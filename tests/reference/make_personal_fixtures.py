"""Makes the personal-head parity fixtures (tests/fixtures/personal/): every head of
core/src/personal fitted in PyTorch exactly as Tastebud fits it, from the same start.

- pairs.json: a preference file in Tastebud's format (3 people, 10 pairs each, one tie, unit
  prompt embeddings), written here so the format is read from a file Tastebud did not write.
- Initial weights come from a Python port of Tastebud's generator (noise.rs: splitmix64-seeded
  xoshiro256++, uniform = ((x >> 11) + 1) / 2^53, Box-Muller), drawn in the same order, so the
  PyTorch run starts where Tastebud's does; Adam is torch's (burn's with epsilon 1e-8).
- linear / linear_ctx: person 0's linear head (zero start; with and without the prompt).
- linear_prior: the population prior over linear heads as `--prior auto` makes it from three
  people (too few to hold any out: each person's linear head; mean, rank-1 principal directions,
  residual scale; the mean shrunk toward zero, James-Stein), linear_prior_user: person 1's MAP
  head under it; linear_prior_joint: `--prior joint` (mean and directions then refitted jointly
  on everyone's answers, mean shrunk by the people's spread).
- mlp: person 0's MLP head (hidden 6, seed 3).
- pal_base: PAL pretrained on all three people (K 2, d' 4, hidden 6), then pal_user: person 1's
  mixture fitted on it.
- vpl_base: VPL pretrained on all three (hidden 6, latent 3; random context subsets and latent
  noise from the same generator), vpl_user: person 2's posterior, bald: the pair BALD picks among
  the probe embeddings (16 latent samples, seed 7).

Each head's weights after fitting and its scores on `probes` are saved in reference.safetensors;
reference.json holds the settings and library versions.

    python tests/reference/make_personal_fixtures.py   # from the repository root
"""

import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file


ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")

OUT = os.path.join(ROOT, "personal")
D = 8
M64 = (1 << 64) - 1
f32 = np.float32


class Rng:
    """noise.rs's `Rng`."""

    def __init__(self, seed):
        x, self.s = seed, []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    @staticmethod
    def rotl(x, k):
        return ((x << k) | (x >> (64 - k))) & M64

    def next_u64(self):
        s = self.s
        out = (self.rotl((s[0] + s[3]) & M64, 23) + s[0]) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = self.rotl(s[3], 45)
        return out

    def uniform(self):
        return ((self.next_u64() >> 11) + 1) / float(1 << 53)

    def below(self, n):
        return min(int(self.uniform() * n), n - 1)

    def gaussian(self, n):
        out = []
        while len(out) < n:
            r = math.sqrt(-2.0 * math.log(self.uniform()))
            theta = 2.0 * math.pi * self.uniform()
            out += [f32(r * math.cos(theta)), f32(r * math.sin(theta))]
        return np.array(out[:n], dtype=np.float32)


def linear(rng, inp, out, bias=True):
    """heads.rs's `linear`: torch.nn.Linear's uniform init, values drawn in burn's [in, out]
    order (weight, then bias)."""
    bound = f32(1.0) / np.sqrt(f32(max(inp, 1)))
    draw = lambda n: np.array([(f32(rng.uniform()) * f32(2) - f32(1)) * bound for _ in range(n)], np.float32)
    layer = torch.nn.Linear(inp, out, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(draw(inp * out).reshape(inp, out).T.copy()))
        if bias:
            layer.bias.copy_(torch.from_numpy(draw(out)))
    return layer


def unit(v):
    v = np.asarray(v, np.float32)
    return v / max(np.sqrt(np.sum(v * v, dtype=np.float32)), f32(1e-12))


def features(x, t=None):
    return x if t is None else torch.cat([x, x * t], 1)


def bt_loss(ra, rb, y):
    m = ra - rb
    return -(F.logsigmoid(m) * y + F.logsigmoid(-m) * (1 - y)).mean()


def adam(params, steps, lr, loss):
    opt = torch.optim.Adam(params, lr=lr, eps=1e-8)
    for step in range(steps):
        opt.zero_grad()
        loss(step).backward()
        opt.step()


class Mlp(torch.nn.Module):
    def __init__(self, inp, hidden, rng):
        super().__init__()
        self.hidden = linear(rng, inp, hidden)
        self.out = linear(rng, hidden, 1, bias=False)

    def forward(self, phi):
        return self.out(F.gelu(self.hidden(phi)))[:, 0]


class Pal(torch.nn.Module):
    def __init__(self, inp, hidden, output, k, rng):
        super().__init__()
        self.hidden = linear(rng, inp, hidden)
        self.projection = linear(rng, hidden, output)
        self.prototypes = torch.nn.Parameter(torch.from_numpy(rng.gaussian(k * output).reshape(k, output)))
        self.user_logits = torch.nn.Parameter(torch.zeros(k))

    def embed(self, phi):
        return self.projection(F.gelu(self.hidden(phi)))

    def score_against(self, phi, points):
        return -((self.embed(phi) - points) ** 2).sum(1)

    def forward(self, phi):
        point = torch.softmax(self.user_logits, 0) @ self.prototypes
        return self.score_against(phi, point[None])


class Vpl(torch.nn.Module):
    def __init__(self, d, inp, hidden, latent, rng):
        super().__init__()
        self.encoder = linear(rng, 2 * d, hidden)
        self.mean = linear(rng, hidden, latent)
        self.log_var = linear(rng, hidden, latent)
        self.reward_hidden = linear(rng, inp + latent, hidden)
        self.reward_out = linear(rng, hidden, 1, bias=False)

    def encode(self, winners, losers, mask):
        h = F.gelu(self.encoder(torch.cat([winners, losers], 2)))
        pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        return self.mean(pooled), self.log_var(pooled)

    def reward(self, phi, z):
        return self.reward_out(F.gelu(self.reward_hidden(torch.cat([phi, z], 1))))[:, 0]


def make_store():
    rs = np.random.RandomState(0)
    records = []
    for u in range(3):
        direction = unit(rs.randn(D))
        for p in range(10):
            a, b, t = unit(rs.randn(D)), unit(rs.randn(D)), unit(rs.randn(D))
            choice = "a" if a @ direction > b @ direction else "b"
            if u == 0 and p == 4:
                choice = "tie"
            records.append({"prompt": f"prompt {p}", "a": {"embedding": [float(v) for v in a * 2.5]},
                            "b": {"image": f"user{u}-{p}.png", "embedding": [float(v) for v in b]},
                            "choice": choice, "timestamp": 1795000000 + p, "user": f"person-{u}",
                            "prompt_embedding": [float(v) for v in t]})
    return {"format": "tastebud-preferences", "version": 1, "embedding_model": "random-8d", "records": records}


class Pairs:
    """fit.rs's `Pairs::from_store`."""

    def __init__(self, records, context=False):
        self.a = torch.tensor(np.stack([unit(r["a"]["embedding"]) for r in records]))
        self.b = torch.tensor(np.stack([unit(r["b"]["embedding"]) for r in records]))
        self.y = torch.tensor([{"a": 1.0, "b": 0.0, "tie": 0.5}[r["choice"]] for r in records])
        self.t = torch.tensor(np.stack([unit(r["prompt_embedding"]) for r in records])) if context else None
        names = []
        for r in records:
            if r["user"] not in names:
                names.append(r["user"])
        self.users = torch.tensor([names.index(r["user"]) for r in records])
        self.names = names

    def phi(self):
        return features(self.a, self.t), features(self.b, self.t)


def user_batch(pairs):
    """fit.rs's `user_batch`: each user's directed pairs as (winner, loser) rows."""
    rows = [[] for _ in pairs.names]
    for i in range(len(pairs.y)):
        if pairs.y[i] != 0.5:
            rows[pairs.users[i]].append((i, bool(pairs.y[i] > 0.5)))
    per = max(1, max(len(r) for r in rows))
    u = len(rows)
    winners, losers, valid = torch.zeros(u, per, D), torch.zeros(u, per, D), torch.zeros(u, per)
    for k, lst in enumerate(rows):
        for slot, (i, a_won) in enumerate(lst):
            w, l = (pairs.a, pairs.b) if a_won else (pairs.b, pairs.a)
            winners[k, slot], losers[k, slot], valid[k, slot] = w[i], l[i], 1.0
    return winners, losers, valid


def context_mask(valid, rng):
    mask = torch.zeros_like(valid)
    for u in range(valid.shape[0]):
        slots = [i for i in range(valid.shape[1]) if valid[u, i] > 0]
        if not slots:
            continue
        keep = 1 + rng.below(len(slots))
        for i in range(len(slots) - 1, 0, -1):
            j = rng.below(i + 1)
            slots[i], slots[j] = slots[j], slots[i]
        for i in slots[:keep]:
            mask[u, i] = 1.0
    return mask


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.set_num_threads(1)
    store = make_store()
    with open(os.path.join(OUT, "pairs.json"), "w") as f:
        json.dump(store, f, indent=1)
    records = store["records"]
    person = lambda u: [r for r in records if r["user"] == f"person-{u}"]
    probes = torch.tensor(np.stack([unit(v) for v in np.random.RandomState(1).randn(6, D)]))
    probe_prompt = torch.tensor(unit(np.random.RandomState(2).randn(D)))[None].expand(6, D)
    settings = {"fit": {"steps": 50, "lr": 0.05, "l2": 1e-3},
                "mlp": {"hidden": 6, "seed": 3},
                "pretrain": {"steps": 40, "lr": 0.01, "hidden": 6, "output": 4, "prototypes": 2, "latent": 3,
                             "kl_weight": 0.01, "rank": 1, "seed": 5},
                # What a linear prior fits each population person with (`personalize fit`'s defaults).
                "prior_fit": {"steps": 200, "lr": 0.05, "l2": 1e-3},
                # prior.rs's JOINT_STEPS and JOINT_LR.
                "prior_joint": {"steps": 300, "lr": 0.02},
                "bald": {"samples": 16, "seed": 7}}
    fit, pre = settings["fit"], settings["pretrain"]
    out = {"probes": probes, "probe_prompt": probe_prompt[0]}

    # Linear heads of person 0, without and with the prompt.
    for name, context in [("linear", False), ("linear_ctx", True)]:
        p = Pairs(person(0), context)
        fa, fb = p.phi()
        w = torch.zeros(fa.shape[1], requires_grad=True)
        adam([w], fit["steps"], fit["lr"],
             lambda _: bt_loss(fa @ w, fb @ w, p.y) + fit["l2"] / 2 * (w ** 2).sum())
        out[f"{name}.weight"] = w.detach()[None]
        out[f"{name}.scores"] = (features(probes, probe_prompt if context else None) @ w).detach()

    # The linear head's Laplace posterior and the pair BALD picks among the probes by it
    # (explicit d x d inverse here; Tastebud uses Woodbury's identity).
    p = Pairs(person(0))
    fa, fb = p.phi()
    w = out["linear.weight"][0].double()
    diffs = (fa - fb).double()
    c = torch.sigmoid(diffs @ w) * (1 - torch.sigmoid(diffs @ w))
    h_inv = torch.linalg.inv(len(diffs) * fit["l2"] * torch.eye(D, dtype=torch.float64)
                             + diffs.T @ (c[:, None] * diffs))
    b = settings["bald"]
    eps = torch.from_numpy(Rng(b["seed"]).gaussian(b["samples"]).astype(np.float64))

    def laplace_bald(w, variance):
        """The probe pair BALD picks when margins are N(w . d, variance(d))."""
        ent = lambda q: -(q * q.clamp_min(1e-300).log() + (1 - q) * (1 - q).clamp_min(1e-300).log())
        best = None
        for i in range(6):
            for j in range(i + 1, 6):
                d = (probes[i] - probes[j]).double()
                ps = torch.sigmoid(w @ d + torch.sqrt(variance(d)) * eps)
                info = float(ent(ps.mean()) - ent(ps).mean())
                if best is None or info > best[2]:
                    best = (i, j, info, float(ps.mean()))
        return best

    settings["laplace_choice"] = laplace_bald(w, lambda d: d @ h_inv @ d)

    # Linear prior: every person's linear head, their mean and top principal directions (scaled
    # by their spread; compared as U U^T, which no eigenvector sign changes), then person 1's
    # head as the MAP under it: w = mean + U a + scale b, Adam on (a, b) from zero.
    heads = []
    for u in range(3):
        p = Pairs(person(u))
        fa, fb = p.phi()
        w = torch.zeros(D, requires_grad=True)
        pf = settings["prior_fit"]
        adam([w], pf["steps"], pf["lr"],
             lambda _: bt_loss(fa @ w, fb @ w, p.y) + pf["l2"] / 2 * (w ** 2).sum())
        heads.append(w.detach().double())
    heads = torch.stack(heads)
    mean = heads.mean(0)
    centred = heads - mean
    _, spread, directions = torch.linalg.svd(centred, full_matrices=False)
    r = pre["rank"]
    factors = (directions[:r].T * spread[:r] / math.sqrt(len(heads))).float()
    residual = centred - centred @ directions[:r].T @ directions[:r]
    scale = torch.tensor([math.sqrt(float((residual ** 2).mean()))])
    one_by_one_mean, one_by_one_factors = mean.float(), factors

    def shrink(mean, deviations, people):
        """prior.rs's `shrink_mean`: positive-part James-Stein toward zero."""
        norm = float((mean.double() ** 2).sum())
        noise = float(deviations) / ((max(people, 2) - 1) * people)
        keep = max(0.0, 1 - noise / norm) if norm > 0 else 0.0
        return (mean.double() * keep).float()

    # `--prior joint` (prior.rs's `joint_fit`): from there, the mean and directions refitted on
    # everyone's answers, w_i = mean + U a_i, Adam on (mean, U, a); BT summed per person, a, U
    # and the mean unit Gaussian; the mean then shrunk by the people's spread U a_i.
    everyone = Pairs(records)
    ea, eb = everyone.phi()
    jmean = one_by_one_mean.clone().requires_grad_(True)
    jfactors = one_by_one_factors.clone().requires_grad_(True)
    coefficients = torch.zeros(len(heads), r, requires_grad=True)
    share = len(everyone.y) / len(heads)

    def joint(_):
        rows = (coefficients @ jfactors.T + jmean)[everyone.users]
        penalty = (coefficients ** 2).sum() + (jfactors ** 2).sum() + (jmean ** 2).sum()
        return bt_loss((ea * rows).sum(1), (eb * rows).sum(1), everyone.y) * share + penalty / (2 * len(heads))

    pj = settings["prior_joint"]
    adam([jmean, jfactors, coefficients], pj["steps"], pj["lr"], joint)
    own = (coefficients @ jfactors.T).detach()
    jmean = shrink(jmean.detach(), ((own - own.mean(0)) ** 2).sum(), len(heads))
    out["linear_prior_joint.weight"] = jmean[None]
    out["linear_prior_joint.factors_outer"] = jfactors.detach() @ jfactors.detach().T
    # The default (`--prior auto`) with three people has no fifth to hold out: one by one, the
    # mean shrunk by the heads' spread.
    mean = shrink(one_by_one_mean, ((heads - heads.mean(0)) ** 2).sum(), len(heads))
    out["linear_prior.weight"] = mean[None]
    out["linear_prior.factors_outer"] = factors @ factors.T
    out["linear_prior.scale"] = scale
    out["linear_prior.scores"] = probes @ mean
    p = Pairs(person(1))
    fa, fb = p.phi()
    a = torch.zeros(r, requires_grad=True)
    b = torch.zeros(D, requires_grad=True)
    weight = lambda: mean + factors @ a + scale * b
    adam([a, b], fit["steps"], fit["lr"],
         lambda _: bt_loss(fa @ weight(), fb @ weight(), p.y)
         + ((a ** 2).sum() + (b ** 2).sum()) / (2 * len(p.y)))
    out["linear_prior_user.weight"] = weight().detach()[None]
    out["linear_prior_user.scores"] = (probes @ weight()).detach()
    # Its Laplace posterior is over (a, b): features [U^T d, scale d], unit prior precision.
    w = weight().detach().double()
    coords = lambda d: torch.cat([factors.double().T @ d, scale.double() * d])
    diffs = (fa - fb).double()
    c = torch.sigmoid(diffs @ w) * (1 - torch.sigmoid(diffs @ w))
    phis = torch.stack([coords(d) for d in diffs])
    h_inv = torch.linalg.inv(torch.eye(r + D, dtype=torch.float64) + phis.T @ (c[:, None] * phis))
    settings["laplace_prior_choice"] = laplace_bald(w, lambda d: coords(d) @ h_inv @ coords(d))

    # MLP head of person 0.
    p = Pairs(person(0))
    fa, fb = p.phi()
    mlp = Mlp(D, settings["mlp"]["hidden"], Rng(settings["mlp"]["seed"]))
    adam(mlp.parameters(), fit["steps"], fit["lr"],
         lambda _: bt_loss(mlp(fa), mlp(fb), p.y)
         + fit["l2"] / 2 * ((mlp.hidden.weight ** 2).sum() + (mlp.out.weight ** 2).sum()))
    out.update({f"mlp.{k}": v.detach() for k, v in mlp.state_dict().items()})
    out["mlp.scores"] = mlp(probes).detach()

    # PAL: population pretraining, then person 1's mixture.
    everyone = Pairs(records)
    fa, fb = everyone.phi()
    rng = Rng(pre["seed"])
    pal = Pal(D, pre["hidden"], pre["output"], pre["prototypes"], rng)
    logits = torch.zeros(len(everyone.names), pre["prototypes"], requires_grad=True)

    def pal_loss(_):
        points = (torch.softmax(logits, 1) @ pal.prototypes)[everyone.users]
        return bt_loss(pal.score_against(fa, points), pal.score_against(fb, points), everyone.y)

    adam([*pal.hidden.parameters(), *pal.projection.parameters(), pal.prototypes, logits],
         pre["steps"], pre["lr"], pal_loss)
    out.update({f"pal_base.{k}": v.detach().clone() for k, v in pal.state_dict().items()})
    out["pal_base.scores"] = pal(probes).detach()
    p = Pairs(person(1))
    fa, fb = p.phi()
    adam([pal.user_logits], fit["steps"], fit["lr"],
         lambda _: bt_loss(pal(fa), pal(fb), p.y) + fit["l2"] / 2 * (pal.user_logits ** 2).sum())
    out["pal_user.user_logits"] = pal.user_logits.detach()
    out["pal_user.scores"] = pal(probes).detach()

    # VPL: population pretraining with random context subsets, then person 2's posterior.
    rng = Rng(pre["seed"])
    vpl = Vpl(D, D, pre["hidden"], pre["latent"], rng)
    winners, losers, valid = user_batch(everyone)
    users, latent = valid.shape[0], pre["latent"]
    draws = []
    for _ in range(pre["steps"]):
        mask = context_mask(valid, rng)
        draws.append((mask, torch.from_numpy(rng.gaussian(users * latent).reshape(users, latent))))
    fa, fb = everyone.phi()

    def vpl_loss(step):
        mask, eps = draws[step]
        mean, log_var = vpl.encode(winners, losers, mask)
        z = (mean + torch.exp(0.5 * log_var) * eps)[everyone.users]
        bt = bt_loss(vpl.reward(fa, z), vpl.reward(fb, z), everyone.y)
        kl = (mean ** 2 + log_var.exp() - log_var - 1.0).sum(1).mean() * 0.5
        return bt + pre["kl_weight"] * kl

    adam(vpl.parameters(), pre["steps"], pre["lr"], vpl_loss)
    out.update({f"vpl_base.model.{k}": v.detach().clone() for k, v in vpl.state_dict().items()})
    with torch.no_grad():
        out["vpl_base.scores"] = vpl.reward(probes, torch.zeros(6, latent))
        w2, l2, v2 = user_batch(Pairs(person(2)))
        mean, log_var = vpl.encode(w2, l2, v2)
        out["vpl_user.user_mean"], out["vpl_user.user_log_var"] = mean[0], log_var[0]
        out["vpl_user.scores"] = vpl.reward(probes, mean.expand(6, latent))
        # BALD among the probes.
        b = settings["bald"]
        eps = Rng(b["seed"]).gaussian(b["samples"] * latent).reshape(b["samples"], latent)
        z = (mean[0] + torch.exp(0.5 * log_var[0]) * torch.from_numpy(eps))
        r = vpl.reward(probes.repeat(b["samples"], 1), z.repeat_interleave(6, 0)).reshape(b["samples"], 6).double()
        h = lambda q: -(q * q.clamp_min(1e-300).log() + (1 - q) * (1 - q).clamp_min(1e-300).log())
        best = None
        for i in range(6):
            for j in range(i + 1, 6):
                ps = torch.sigmoid(r[:, i] - r[:, j])
                info = float(h(ps.mean()) - h(ps).mean())
                if best is None or info > best[2]:
                    best = (i, j, info, float(ps.mean()))
        settings["bald"]["choice"] = best
    save_file({k: v.contiguous().float() for k, v in out.items()}, os.path.join(OUT, "reference.safetensors"))
    settings["versions"] = {"torch": torch.__version__, "numpy": np.__version__}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(settings, f, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
