"""Prototype, not Tastebud code: would a linear head with the population as its prior reach
the personal bench's aim (>= 90% after 20 answers for linear people)?

Replays `tastebud personalize bench`'s world in numpy/PyTorch (same distributions, not the same
random numbers: 768-d unit embeddings over 16 attributes, 4 shared tastes, a person = Dirichlet
mix + 0.3 personal direction, Bradley-Terry answers at 0.1 x the utility spread, pools of 60,
400 held-out pairs, random pairs) and compares, for 10 linear people:
- `scratch`: the linear head as `personalize fit` fits it (L2 1e-3, 200 Adam steps, lr 0.05);
- `prior rR`: MAP under N(mu, U U^T + s^2 I), where mu and the rank-R factors U come from the
  linear heads of 240 population people (40 pairs each): their mean and top principal
  directions; s^2 their residual variance per dimension. Fitted as w = mu + U a + s b with
  a, b ~ N(0, I) (the joint MAP over (a, b) is the MAP over w).

    ~/.venvs/ref/bin/python tests/bench/personal_prior_prototype.py
"""
import numpy as np
import torch

rng = np.random.default_rng(0)
D, A, T = 768, 16, 4
basis = rng.standard_normal((D, A)) / np.sqrt(A)


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def direction():
    return unit(basis @ rng.standard_normal(A))


tastes = [direction() for _ in range(T)]


def images(n):
    x = rng.standard_normal((n, A)) @ basis.T
    return unit(x + 0.2 / np.sqrt(D) * rng.standard_normal((n, D)))


def person():
    w = -np.log(rng.uniform(size=T))
    taste = unit(sum(wi / w.sum() * t for wi, t in zip(w, tastes)) + 0.3 * direction())
    return taste, 0.1 * (images(200) @ taste).std()


def answer(taste, temperature, a, b):
    p = 1 / (1 + np.exp(-(a @ taste - b @ taste) / temperature))
    return (rng.uniform(size=len(p)) <= p).astype(np.float32)


def fit(a, b, y, prior=None, steps=200, lr=0.05, l2=1e-3):
    x = torch.tensor(a - b, dtype=torch.float32)
    y = torch.tensor(y)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    if prior is None:
        w = torch.zeros(D, requires_grad=True)
        params, weights = [w], lambda: w
        loss = lambda w: bce(x @ w, y) + l2 / 2 * (w * w).sum()
    else:
        mu, u, s = (torch.tensor(v, dtype=torch.float32) for v in prior)
        al = torch.zeros(u.shape[1], requires_grad=True)
        be = torch.zeros(D, requires_grad=True)
        params, weights = [al, be], lambda: mu + u @ al + s * be
        loss = lambda w: (bce(x @ w, y, reduction="sum") + 0.5 * (al @ al + be @ be)) / len(y)
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss(weights()).backward()
        opt.step()
    return weights().detach().numpy()


population = []
for _ in range(240):
    taste, temperature = person()
    im = images(80)
    population.append(fit(im[0::2], im[1::2], answer(taste, temperature, im[0::2], im[1::2])))
W = np.array(population)
mu = W.mean(0)
_, S, Vt = np.linalg.svd(W - mu, full_matrices=False)
priors = {}
for r in (8, 16):
    residual = (W - mu) - (W - mu) @ Vt[:r].T @ Vt[:r]
    priors[f"prior r{r}"] = (mu, Vt[:r].T * S[:r] / np.sqrt(len(W)), np.sqrt((residual**2).mean()))

answered = (5, 10, 20, 50)
accuracy = {}
pairs = [(i, j) for i in range(60) for j in range(i + 1, 60)]
for _ in range(10):
    taste, temperature = person()
    pool, ha, hb = images(60), images(400), images(400)
    truth = ha @ taste > hb @ taste
    chosen = [pairs[k] for k in rng.choice(len(pairs), max(answered), replace=False)]
    a, b = pool[[p[0] for p in chosen]], pool[[p[1] for p in chosen]]
    y = answer(taste, temperature, a, b)
    for n in answered:
        for name, prior in [("scratch", None), *priors.items()]:
            w = fit(a[:n], b[:n], y[:n], prior)
            accuracy.setdefault(name, {})[n] = accuracy.get(name, {}).get(n, 0) + (
                ((ha @ w > hb @ w) == truth).mean() / 10
            )
print("| head | " + " | ".join(f"{n} answered" for n in answered) + " |")
print("|---|" + "---|" * len(answered))
for name, row in accuracy.items():
    print(f"| {name} | " + " | ".join(f"{100 * row[n]:.1f}%" for n in answered) + " |")
