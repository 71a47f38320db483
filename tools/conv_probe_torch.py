#!/usr/bin/env python3
"""PyTorch side of `PROBE=vae cargo run --release --example kernel_probe`: the SD VAE decoder's
convolutions (f32, NCHW, as diffusers runs them), one warm-up then the mean of 5, printed in the
same format. Threads: --threads (default 1, so both sides can be compared on a busy machine).

  /work/venv-ref/bin/python tools/conv_probe_torch.py --threads 1
"""
import argparse
import time

import torch

VAE_CONVS = [(4, 512, 64, 3), (512, 512, 64, 3), (512, 512, 128, 3), (512, 512, 256, 3), (512, 256, 256, 3),
             (256, 256, 256, 3), (512, 256, 256, 1), (256, 256, 512, 3), (256, 128, 512, 3), (128, 128, 512, 3),
             (256, 128, 512, 1), (128, 3, 512, 3)]

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
a = ap.parse_args()
torch.set_num_threads(a.threads)
with torch.inference_mode():
    for ci, co, hw, k in VAE_CONVS:
        conv = torch.nn.Conv2d(ci, co, k, padding=k // 2)
        x = torch.randn(1, ci, hw, hw)
        conv(x)
        t0 = time.perf_counter()
        for _ in range(5):
            conv(x)
        wall = (time.perf_counter() - t0) / 5
        flops = 2.0 * ci * co * k * k * hw * hw
        print(f"conv {ci}->{co} {k}x{k} @{hw}x{hw} torch".ljust(48), f"wall {wall * 1e3:8.2f} ms {flops / wall / 1e9:7.1f} GFLOP/s")
