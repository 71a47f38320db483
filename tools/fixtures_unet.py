"""PyTorch reference outputs for the UNet parity tests (tests/parity_unet.rs).

Rerun from the repository root with the reference venv:

    /work/venv-ref/bin/python tools/fixtures_unet.py

For each committed tiny model it loads `unet/` with diffusers' UNet2DConditionModel (float32,
CPU), draws deterministic random inputs and writes `tests/fixtures/parity/unet_<model>.safetensors`
holding, per case `<case>`: `<case>.sample` [B,C,h,w], `<case>.timestep` [1] (f64),
`<case>.encoder_hidden_states` [B,77,D] and `<case>.out` [B,C,h,w]; the file's metadata key
`cases` lists the case names, comma separated.
"""

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "tests" / "fixtures" / "models"
OUT = ROOT / "tests" / "fixtures" / "parity"

# (model, case name, batch, latent height, latent width, timestep, seed)
CASES = [
    # SD 1.x layout: 2 levels, so the overall factor is 2; 32x24 is divisible, 17x9 is not.
    ("tiny-sd", "nonsquare", 2, 32, 24, 501.0, 0),
    ("tiny-sd", "odd", 2, 17, 9, 250.5, 1),
    # SD 2.x layout: 3 levels, overall factor 4; 20x12 is divisible, 18x10 is not.
    ("tiny-sd2", "div4", 2, 20, 12, 1.0, 2),
    ("tiny-sd2", "notdiv4", 2, 18, 10, 999.0, 3),
]


def main():
    torch.set_grad_enabled(False)
    OUT.mkdir(parents=True, exist_ok=True)
    for model in sorted({c[0] for c in CASES}):
        unet = UNet2DConditionModel.from_pretrained(MODELS / model / "unet", torch_dtype=torch.float32).eval()
        cfg = unet.config
        cross_dim = cfg.cross_attention_dim
        tensors = {}
        names = []
        for m, name, b, h, w, t, seed in CASES:
            if m != model:
                continue
            g = torch.Generator().manual_seed(seed)
            sample = torch.randn(b, cfg.in_channels, h, w, generator=g)
            ehs = torch.randn(b, 77, cross_dim, generator=g)
            out = unet(sample, torch.tensor(t, dtype=torch.float64), encoder_hidden_states=ehs).sample
            tensors[f"{name}.sample"] = sample.contiguous()
            tensors[f"{name}.timestep"] = torch.tensor([t], dtype=torch.float64)
            tensors[f"{name}.encoder_hidden_states"] = ehs.contiguous()
            tensors[f"{name}.out"] = out.contiguous()
            names.append(name)
            print(f"{model} {name}: sample {tuple(sample.shape)} t={t} -> out {tuple(out.shape)} std {out.std():.4f}")
        path = OUT / f"unet_{model}.safetensors"
        save_file(tensors, str(path), metadata={"cases": ",".join(names)})
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
