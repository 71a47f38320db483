#!/usr/bin/env python3
"""Draws made by real PyTorch on the CPU, for tests/rng_torch.rs (bit-for-bit checks of src/rng/).

Usage (from the repository root, with the reference venv of ../shared/reference/setup_venv.sh):
  /work/venv/bin/python tools/make_rng_fixtures.py

Writes tests/fixtures/rng/torch_randn.safetensors. Every tensor is float32, flattened in memory
order, and named CASE/SEED. Cases (each from a fresh torch.Generator("cpu").manual_seed(SEED)):
  randn_D1xD2...   torch.randn(shape, generator=g): sizes below 16 (the serial double path),
                   16 and above (the float32 fill16 path), multiples of 16 and ragged ones
                   (whose last 16 values are redrawn), and sizes that cross the Mersenne
                   Twister's 624-word regeneration many times
  cache            randn([7]), randn([16]), randn([1]) on one generator, concatenated: the
                   serial path's cached value survives the fill16 call in between
  like             randn([1,4,8,8]) then 10 x randn_like of it (global generator after
                   torch.manual_seed), concatenated: calls continue the stream
  channels_last    randn_like of a channels_last [1,4,4,4] tensor (a non-contiguous output goes
                   through the serial path), in memory order (NHWC)
  global           torch.manual_seed(SEED); torch.randn([3,100]): the global generator's stream
  diffusers_latents  diffusers' randn_tensor((1,4,8,8), generator=g, device=cpu,
                   dtype=float32), as StableDiffusionPipeline.prepare_latents calls it
The metadata records torch's version and the shape of every case.
"""
import json
import os

import torch
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "rng", "torch_randn.safetensors")

SEEDS = [0, 1, 42, 1234, 2**32 + 5, 18446744073709551557]
SHAPES = [[1], [7], [15], [16], [17], [31], [32], [33], [2, 3], [1, 4, 8, 8], [3, 100], [2049]]
# Large draws only for a few seeds, to keep the file small.
LARGE = {42: [[1, 4, 32, 48], [1, 4, 64, 64]], 0: [[1, 4, 32, 48]], 1234: [[5, 1000]]}


def name(shape):
    return "x".join(str(d) for d in shape)


def main():
    torch.set_grad_enabled(False)
    out, shapes = {}, {}

    def put(key, t, shape):
        out[key] = t.detach().float().contiguous().reshape(-1).clone()
        shapes[key] = list(shape)

    for seed in SEEDS:
        for shape in SHAPES + LARGE.get(seed, []):
            g = torch.Generator("cpu").manual_seed(seed)
            put(f"randn_{name(shape)}/{seed}", torch.randn(shape, generator=g), shape)
        g = torch.Generator("cpu").manual_seed(seed)
        seq = [torch.randn([7], generator=g), torch.randn([16], generator=g), torch.randn([1], generator=g)]
        put(f"cache/{seed}", torch.cat(seq), [24])
        torch.manual_seed(seed)
        x = torch.randn([1, 4, 8, 8])
        seq = [x] + [torch.randn_like(x) for _ in range(10)]
        put(f"like/{seed}", torch.cat([s.reshape(-1) for s in seq]), [11, 1, 4, 8, 8])
        torch.manual_seed(seed)
        cl = torch.empty([1, 4, 4, 4]).to(memory_format=torch.channels_last)
        y = torch.randn_like(cl)
        assert not y.is_contiguous()
        put(f"channels_last/{seed}", y.permute(0, 2, 3, 1).contiguous(), [1, 4, 4, 4])
        torch.manual_seed(seed)
        put(f"global/{seed}", torch.randn([3, 100]), [3, 100])
        g = torch.Generator("cpu").manual_seed(seed)
        lat = randn_tensor((1, 4, 8, 8), generator=g, device=torch.device("cpu"), dtype=torch.float32)
        put(f"diffusers_latents/{seed}", lat, [1, 4, 8, 8])

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    meta = {"torch": torch.__version__, "shapes": json.dumps(shapes), "seeds": json.dumps(SEEDS)}
    save_file(out, OUT, metadata=meta)
    total = sum(t.numel() for t in out.values())
    print(f"wrote {OUT}: {len(out)} tensors, {total} values, torch {torch.__version__}")


if __name__ == "__main__":
    main()
