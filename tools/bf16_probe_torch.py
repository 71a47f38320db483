#!/usr/bin/env python3
"""PyTorch side of `PROBE=bf16 cargo run --release --example kernel_probe`: the same convolutions,
linear layers and attention shapes in bf16 (the UNet's layers as diffusers runs them under bf16),
one warm-up then the best of 5, printed in the probe's format. Threads: --threads (default 1).

On an Intel Xeon with AMX, run it as `tools/noamx.sh PYTHON tools/bf16_probe_torch.py` to see what
a CPU without tile units (a Zen 4) runs: ONEDNN_MAX_CPU_ISA caps oneDNN's primitives but not
PyTorch's own flash attention, which takes the tile units whenever the process may use them.
"""
import argparse
import time

import torch

CONVS = [(320, 320, 64, 3), (640, 640, 32, 3), (1280, 1280, 16, 3), (1280, 1280, 8, 3), (512, 512, 128, 3),
         (256, 256, 256, 3), (320, 320, 64, 1), (4, 320, 64, 3)]
LINEARS = [(4096, 320, 2560), (4096, 1280, 320), (1024, 640, 640), (77, 768, 320)]
ATTENTION = [(8, 4096, 40), (8, 1024, 80), (8, 256, 160)]

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
a = ap.parse_args()
torch.set_num_threads(a.threads)
dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32


def probe(label, flops, f):
    f()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    print(f"{label} torch {a.dtype}".ljust(48), f"wall {best * 1e3:8.2f} ms {flops / best / 1e9:7.1f} GFLOP/s")


with torch.inference_mode():
    for ci, co, hw, k in CONVS:
        conv = torch.nn.Conv2d(ci, co, k, padding=k // 2).to(dt)
        x = torch.randn(1, ci, hw, hw, dtype=dt)
        probe(f"conv {ci}->{co} {k}x{k} @{hw}x{hw}", 2.0 * ci * co * k * k * hw * hw, lambda: conv(x))
    for t, din, dout in LINEARS:
        lin = torch.nn.Linear(din, dout).to(dt)
        x = torch.randn(1, t, din, dtype=dt)
        probe(f"linear {t}x{din}->{dout}", 2.0 * t * din * dout, lambda: lin(x))
    for n, l, d in ATTENTION:
        q = torch.randn(1, n, l, d, dtype=dt)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        probe(f"attention {n}x{l}x{d}", 4.0 * n * l * l * d, lambda: sdpa(q, q, q))
