"""Makes the ReNO parity fixture (tests/fixtures/reno/reference.safetensors + reference.json): the
reference optimisation loop of ReNO (Eyring et al. 2024, `LatentNoiseTrainer.train`) in PyTorch,
on the tiny SD-Turbo pipeline and two tiny rewards, recording every iteration.

- generator: tests/fixtures/sd-turbo-tiny through diffusers' own components (text encoder once,
  no gradient; Euler step; VAE decode; `(x / 2 + 0.5).clamp(0, 1)` as the pipeline's
  postprocess), 48x40 px, one step; the unit noise is the optimised parameter.
- rewards: CLIPScore (`exp(logit_scale) * cos`) on tests/fixtures/clip-openai and the LAION
  aesthetic head of tests/fixtures/rewards/aesthetic-head on the same CLIP, each through
  torchvision's resize (bicubic, antialias) + centre crop + normalise; loss
  `w_clip (100 - clip) + w_aesthetic (10 - aesthetic)`.
- loop: loss + prior_weight * (0.5 ||z||^2 - (d - 1) log ||z||) in f32; backward;
  clip_grad_norm_; SGD (momentum 0.9, Nesterov) or Adam; the last iteration takes no step;
  the best iterate is the one with the lowest reward-only loss.

Run from the repository root after make_fixtures.py and make_reward_fixtures.py:

    python tests/reference/make_reno_fixtures.py
"""

import json
import math
import os
import sys

import diffusers
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoTokenizer, CLIPModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import ROOT  # noqa: E402
from make_reward_fixtures import AestheticMLP, differentiable_pixels, image_features, text_features, unit  # noqa: E402

OUT = os.path.join(ROOT, "reno")
PROMPT = "a photo of a cat"
HEIGHT, WIDTH = 48, 40
WEIGHTS = {"clip": 0.1, "aesthetic": 1.0}
CONSTANTS = {"clip": 100.0, "aesthetic": 10.0}
RUNS = {
    # name: (optimizer, lr, iterations, grad clip, prior weight)
    "sgd": ("sgd", 5.0, 10, 0.025, 0.01),  # the gradient norm passes 0.025 at iteration 6
    "adam": ("adam", 0.05, 5, 0.1, 0.01),
}


def generator(folder=os.path.join(ROOT, "sd-turbo-tiny"), prompt=PROMPT, vae=None):
    """Unit noise -> image in [0, 1], differentiably: the snapshot's components (or `vae`) in
    f32, the prompt encoded once without gradient. Also returns the latent channel count."""
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    if vae is not None:
        pipe.vae = vae
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.float().eval().requires_grad_(False)
    with torch.no_grad():
        context, _ = pipe.encode_prompt(prompt, "cpu", 1, False)

    def generate(z):
        pipe.scheduler.set_timesteps(1)
        latents = z * pipe.scheduler.init_noise_sigma
        for t in pipe.scheduler.timesteps:
            eps = pipe.unet(pipe.scheduler.scale_model_input(latents, t), t, encoder_hidden_states=context).sample
            latents = pipe.scheduler.step(eps, t, latents).prev_sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        return (image / 2 + 0.5).clamp(0, 1)

    return generate, pipe.unet.config.in_channels


def rewards():
    folder = os.path.join(ROOT, "clip-openai")
    clip = CLIPModel.from_pretrained(folder).float().eval().requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        text = unit(text_features(clip, **tok([PROMPT], return_tensors="pt")))
    head = AestheticMLP(clip.config.projection_dim).eval().requires_grad_(False)
    head.load_state_dict(torch.load(os.path.join(ROOT, "rewards", "aesthetic-head",
                                                 "sac+logos+ava1-l14-linearMSE.pth")))
    scale = clip.logit_scale.exp()

    def score(image):
        e = unit(image_features(clip, differentiable_pixels(image)))
        return {"clip": scale * (e @ text.T)[0, 0], "aesthetic": head(e)[0, 0]}

    return score


def run(generate, score, z0, optimizer, lr, iterations, grad_clip, prior_weight, weights=WEIGHTS,
        constants=CONSTANTS):
    """ReNO's training loop, recording each iteration; `score(image)` gives a dict of rewards
    keyed like `weights`."""
    latents = torch.nn.Parameter(z0.clone())
    if optimizer == "sgd":
        opt = torch.optim.SGD([latents], lr=lr, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.Adam([latents], lr=lr)
    d = math.prod(latents.shape[1:])
    best_loss, best_iteration, best_latents = math.inf, None, None
    record = {k: [] for k in (*weights, "reward_loss", "prior", "noise_norm", "grad_norm")}
    first_grad = None
    for iteration in range(iterations):
        opt.zero_grad()
        r = score(generate(latents))
        total = sum(weights[k] * (constants[k] - r[k]) for k in weights)
        reward_loss = total.item()
        norm = torch.linalg.vector_norm(latents).to(torch.float32)
        prior = prior_weight * (0.5 * norm ** 2 - (d - 1) * torch.log(norm))
        total = total + prior
        for k in weights:
            record[k].append(r[k].item())
        record["reward_loss"].append(reward_loss)
        record["prior"].append(prior.item())
        record["noise_norm"].append(norm.item())
        if reward_loss < best_loss:
            best_loss, best_iteration, best_latents = reward_loss, iteration, latents.detach().clone()
        if iteration != iterations - 1:
            total.backward()
            if first_grad is None:
                first_grad = latents.grad.detach().clone()
            record["grad_norm"].append(torch.linalg.vector_norm(latents.grad).item())
            torch.nn.utils.clip_grad_norm_(latents, grad_clip)
            opt.step()
    return record, best_iteration, best_latents, first_grad


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    generate, channels = generator()
    score = rewards()
    z0 = torch.randn(1, channels, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(31))
    tensors = {"noise": z0}
    ref = {"prompt": PROMPT, "height": HEIGHT, "width": WIDTH, "weights": WEIGHTS,
           "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                        "transformers": transformers.__version__}, "runs": {}}
    for name, (optimizer, lr, iterations, grad_clip, prior_weight) in RUNS.items():
        record, best_iteration, best_latents, first_grad = run(
            generate, score, z0, optimizer, lr, iterations, grad_clip, prior_weight)
        for k, v in record.items():
            tensors[f"{name}.{k}"] = torch.tensor(v)
        tensors[f"{name}.best_noise"] = best_latents
        tensors[f"{name}.first_grad"] = first_grad
        ref["runs"][name] = {"optimizer": optimizer, "lr": lr, "iterations": iterations,
                             "grad_clip": grad_clip, "prior_weight": prior_weight,
                             "best_iteration": best_iteration}
        print(name, "best", best_iteration, [round(v, 4) for v in record["reward_loss"]])
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)


if __name__ == "__main__":
    main()
