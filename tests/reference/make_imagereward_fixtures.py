"""Makes the ImageReward parity fixtures (tests/fixtures/rewards/imagereward-tiny): a tiny random
ImageReward built by image-reward 1.5's own classes, saved the way the published checkpoint is
(`torch.save(model.state_dict())` as `ImageReward.pt`, beside `med_config.json` and a BERT
`vocab.txt`), and the package's own scores, token ids and image gradients on it.

Only the sizes are shrunk: the ViT keeps BLIP's 224 px, 16 px patches and 64-wide heads (width 128,
2 blocks); the BERT keeps its cross-attention layout (hidden 32, 2 layers, 4 heads) and reads a
small WordPiece vocabulary written here; the MLP head keeps its five Linears (input 32).

image-reward 1.5 needs transformers 4.x, so this runs in its own environment:

    python -m venv venv-ir && venv-ir/bin/pip install torch torchvision numpy pillow safetensors
    venv-ir/bin/pip install --no-deps transformers==4.46.3 tokenizers==0.20.3 \
        huggingface_hub==0.26.5 timm==0.6.13 image-reward==1.5 openai-clip \
        open_clip_torch==3.3.0 ftfy regex wcwidth
    venv-ir/bin/pip install wheel setuptools
    venv-ir/bin/pip install --no-deps --no-build-isolation fairscale==0.4.13
    venv-ir/bin/python tests/reference/make_imagereward_fixtures.py   # from the repository root

Images, the float path and file path are those of make_reward_fixtures.py: the float batch goes
through torchvision's resize (bicubic, antialias) + centre crop + normalise, as ReNO does; files
(make_fixtures.file_images()) through ImageReward's own PIL preprocessing (`inference_rank`).
"""

import importlib.util
import json
import os
import shutil
import sys
import types

import numpy as np
import PIL
import timm
import torch
import torchvision
import transformers
from safetensors.torch import save_file
from transformers import BertTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_fixtures import ROOT, file_images  # noqa: E402
from make_reward_fixtures import PROMPT, differentiable_pixels, float_images  # noqa: E402

OUT = os.path.join(ROOT, "rewards", "imagereward-tiny")

# The package's __init__ imports its ReFL trainer (diffusers, datasets): register the packages
# empty and import only the model modules.
_spec = importlib.util.find_spec("ImageReward")
for _name, _path in (("ImageReward", _spec.submodule_search_locations[0]),
                     ("ImageReward.models", os.path.join(_spec.submodule_search_locations[0], "models"))):
    _module = types.ModuleType(_name)
    _module.__path__ = [_path]
    sys.modules[_name] = _module
import ImageReward.ImageReward as ir  # noqa: E402
import ImageReward.models.BLIP.blip_pretrain as blip_pretrain  # noqa: E402
from ImageReward.models.BLIP.blip import init_tokenizer  # noqa: E402,F401  (the real one, for reference)
from ImageReward.models.BLIP.vit import VisionTransformer  # noqa: E402

VISION_WIDTH, TEXT_WIDTH = 128, 32

MED_CONFIG = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": TEXT_WIDTH, "initializer_range": 0.02,
    "intermediate_size": 64, "layer_norm_eps": 1e-12, "max_position_embeddings": 40,
    "model_type": "bert", "num_attention_heads": 4, "num_hidden_layers": 2, "pad_token_id": 0,
    "type_vocab_size": 2, "encoder_width": 768, "add_cross_attention": True,
}

WORDS = ["a", "an", "the", "of", "and", "in", "on", "with", "photo", "cat", "dog", "red", "blue",
         "cafe", "creme", "naive", "resume", "new", "line", "lines", "painting", "city", "night",
         "un", "##known", "##s", "##ing", "##ed", "##er", "big", "small", "house", "tree", "sky"]

TOKEN_CASES = [
    PROMPT,
    "A Photo of a CAT!",
    "café crème, naïve résumé",
    "new-lines\tand\ntabs  and   spaces",
    "夜 city 多 night",
    "emoji 😀 then [SEP] and [DEC] mid-prompt",
    "painting paintings unknownword xyz",
    " ".join(["a big red house in the city at night"] * 5),
]


def write_vocab(path):
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(3)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += ["夜", "多"]
    vocab += [w for w in WORDS if w not in vocab]
    with open(path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    return len(vocab)


def tiny_tokenizer(vocab_file):
    """blip.init_tokenizer with the small vocabulary in place of bert-base-uncased's."""
    tok = BertTokenizer(vocab_file, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.additional_special_tokens_ids[0]
    return tok


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    vocab_file = os.path.join(OUT, "vocab.txt")
    MED_CONFIG["vocab_size"] = write_vocab(vocab_file) + 2  # + [DEC], [ENC] as init_tokenizer adds
    med_config = os.path.join(OUT, "med_config.json")
    with open(med_config, "w") as f:
        json.dump(MED_CONFIG, f, indent=1)

    blip_pretrain.create_vit = lambda *args: (
        VisionTransformer(img_size=224, patch_size=16, embed_dim=VISION_WIDTH, depth=2,
                          num_heads=VISION_WIDTH // 64), VISION_WIDTH)
    blip_pretrain.init_tokenizer = lambda: tiny_tokenizer(vocab_file)
    real_mlp = ir.MLP
    ir.MLP = lambda _input_size: real_mlp(TEXT_WIDTH)
    model = ir.ImageReward(med_config=med_config, device="cpu").eval()
    with torch.no_grad():  # every tensor away from its init, so each one matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for layer in model.mlp.layers:  # unit gain, so differences between images show in the score
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0, layer.in_features ** -0.5)
                layer.bias.normal_(0, 0.1)
    torch.save(model.state_dict(), os.path.join(OUT, "ImageReward.pt"))

    tok = model.blip.tokenizer
    ref = {"prompt": PROMPT, "versions": {
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "transformers": transformers.__version__, "timm": timm.__version__,
        "image-reward": "1.5", "pillow": PIL.__version__, "numpy": np.__version__},
        "tokens": [{"text": t, "ids": tok(t, padding="max_length", truncation=True, max_length=35).input_ids}
                   for t in TOKEN_CASES]}

    text = tok(PROMPT, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    tensors = {}
    x = float_images().requires_grad_(True)
    s = model.score_gard(text.input_ids, text.attention_mask, differentiable_pixels(x))[:, 0]
    s.sum().backward()
    tensors["imagereward.float_scores"] = s.detach().clone()
    tensors["imagereward.grad"] = x.grad.detach().clone()
    with torch.no_grad():
        _, file_scores = model.inference_rank(PROMPT, file_images())
    tensors["imagereward.file_scores"] = torch.tensor(file_scores)

    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f, indent=1)
    print("wrote", OUT, {k: v.tolist() if v.numel() < 4 else list(v.shape) for k, v in tensors.items()})


if __name__ == "__main__":
    main()
