#!/usr/bin/env python3
"""How far PyTorch's own bf16 autocast (CPU) lands from its f32 result on the parity fixtures of
the two tiny models: the yardstick for the tolerance of our bf16 product path
(tests/parity_unet.rs, tests/parity_vae.rs). Run by hand with the reference environment:

    /work/venv-ref/bin/python tools/bf16_autocast_error.py
"""
import torch
from safetensors.torch import load_file
from diffusers import AutoencoderKL, UNet2DConditionModel

torch.set_num_threads(2)


def rel(a, b):
    return ((a.float() - b).norm() / b.norm()).item()


def autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


for model in ["tiny-sd", "tiny-sd2"]:
    unet = UNet2DConditionModel.from_pretrained(f"tests/fixtures/models/{model}/unet").float().eval()
    t = load_file(f"tests/fixtures/parity/unet_{model}.safetensors")
    for n in sorted({k.rsplit(".", 1)[0] for k in t if k.endswith(".out")}):
        with torch.no_grad(), autocast():
            out = unet(t[n + ".sample"], t[n + ".timestep"].item(), encoder_hidden_states=t[n + ".encoder_hidden_states"]).sample
        print(f"{model} unet {n}: rel_l2 {rel(out, t[n + '.out']):.3e}")
    vae = AutoencoderKL.from_pretrained(f"tests/fixtures/models/{model}/vae").float().eval()
    f = load_file(f"tests/fixtures/parity/vae_{model}.safetensors")
    with torch.no_grad(), autocast():
        dist = vae.encode(f["image"]).latent_dist
        dec = vae.decode(f["latents"]).sample
    print(f"{model} vae encode mean: rel_l2 {rel(dist.mean, f['mean']):.3e}")
    print(f"{model} vae encode logvar: rel_l2 {rel(dist.logvar, f['logvar']):.3e}")
    print(f"{model} vae decode: rel_l2 {rel(dec, f['decoded']):.3e}")
