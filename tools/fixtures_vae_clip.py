#!/usr/bin/env python3
"""Reference outputs of diffusers' AutoencoderKL and transformers' CLIPTextModel for the parity
tests `tests/parity_vae.rs` and `tests/parity_clip.rs`.

For each committed tiny model (tests/fixtures/models/tiny-sd, tiny-sd2) this runs, in float32 on
the CPU:
- the VAE: `encode` of a deterministic non-square image batch in [-1, 1] (mean, logvar, std of the
  latent distribution) and `decode` of a deterministic non-square latent batch;
- the CLIP text encoder: the last hidden state for three prompts tokenized by the model's own
  tokenizer (padded to 77 tokens; the long prompt, over 77 tokens, truncated), ids stored alongside.

Outputs: tests/fixtures/parity/vae_<model>.safetensors and clip_<model>.safetensors.

Rerun from the repository root:
    /work/venv-ref/bin/python tools/fixtures_vae_clip.py
Deterministic: the same library versions give the same bytes.
"""
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file
from transformers import AutoTokenizer, CLIPTextModel

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests/fixtures/models"
OUT = ROOT / "tests/fixtures/parity"

# (model, encode input H x W, decode latent h x w): non-square, both orientations.
VAE_CASES = [("tiny-sd", (48, 80), (20, 28)), ("tiny-sd2", (64, 48), (12, 20))]

PROMPTS = [
    "a photo of a cat",
    "",
    "a highly detailed oil painting of a majestic bowl of fruit on a wooden table next to an open "
    "window, soft morning light, dust in the air, a sleeping tabby cat, a vase of sunflowers, "
    "a half-eaten loaf of bread and a glass of red wine, in the style of the Dutch golden age masters, "
    "rich warm colours, dramatic chiaroscuro, fine brush strokes, museum quality, 8k",
]


def smooth_image(batch, h, w, seed):
    """Smooth gradients plus a little noise, like a natural image, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xs = torch.linspace(0, 1, w).view(1, 1, 1, w)
    phase = torch.rand(batch, 3, 1, 1, generator=g) * 2 * math.pi
    freq = 1 + 3 * torch.rand(batch, 3, 1, 1, generator=g)
    img = 0.8 * torch.sin(freq * (2 * xs + ys) * math.pi + phase)
    img = img + 0.2 * (torch.rand(batch, 3, h, w, generator=g) * 2 - 1)
    return img.clamp(-1, 1).contiguous()


@torch.no_grad()
def vae_fixture(name, enc_hw, dec_hw):
    vae = AutoencoderKL.from_pretrained(MODELS / name / "vae", torch_dtype=torch.float32).eval()
    image = smooth_image(2, *enc_hw, seed=1)
    dist = vae.encode(image).latent_dist
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(2, vae.config.latent_channels, *dec_hw, generator=g)
    decoded = vae.decode(latents).sample
    tensors = {
        "image": image,
        "mean": dist.mean,
        "logvar": dist.logvar,
        "std": dist.std,
        "latents": latents,
        "decoded": decoded,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / f"vae_{name}.safetensors")
    print(name, {k: tuple(v.shape) for k, v in tensors.items()})


@torch.no_grad()
def clip_fixture(name):
    tok = AutoTokenizer.from_pretrained(MODELS / name / "tokenizer")
    model = CLIPTextModel.from_pretrained(MODELS / name / "text_encoder", torch_dtype=torch.float32).eval()
    ids = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    hidden = model(input_ids=ids).last_hidden_state
    tensors = {"input_ids": ids.to(torch.int64), "last_hidden_state": hidden}
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / f"clip_{name}.safetensors")
    print(name, {k: tuple(v.shape) for k, v in tensors.items()}, ids[:, :8].tolist())


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name, enc_hw, dec_hw in VAE_CASES:
        vae_fixture(name, enc_hw, dec_hw)
    for name in ["tiny-sd", "tiny-sd2"]:
        clip_fixture(name)


if __name__ == "__main__":
    main()
