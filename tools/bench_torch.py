#!/usr/bin/env python3
"""PyTorch side of `diffedit bench`: the same full-size SD 1.5 components with random weights,
the same shapes, timed the same way (one warm-up, median of N), one JSON line per measurement.

  /work/venv-ref/bin/python tools/bench_torch.py unet --batch 1 --latent 64 --dtype f32 --runs 3
  /work/venv-ref/bin/python tools/bench_torch.py vae --latent 64 [--encode] --dtype f32
  /work/venv-ref/bin/python tools/bench_torch.py clip --dtype f32
  /work/venv-ref/bin/python tools/bench_torch.py flops   # FlopCounterMode totals, for checking ours

Threads: torch.set_num_threads(--threads, default 2). GFLOP/s use the same analytic counts as
the Rust side (passed with --gflop) when given, else torch's FlopCounterMode count.
"""
import argparse
import json
import resource
import statistics
import sys
import time

import torch

UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32, norm_eps=1e-5)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           block_out_channels=(128, 256, 512, 512), norm_num_groups=32, scaling_factor=0.18215)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def hw(s):
    h, _, w = s.lower().partition("x")
    return int(h), int(w or h)


def run(fn, runs):
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn()
        warm = time.perf_counter() - t0
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return warm, ts


def count_flops(fn):
    from torch.utils.flop_counter import FlopCounterMode
    fc = FlopCounterMode(display=False)
    with torch.inference_mode(), fc:
        fn()
    return fc.get_total_flops()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["unet", "vae", "clip", "flops"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--latent", default="64")
    ap.add_argument("--encode", action="store_true")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gflop", type=float, default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    h, w = hw(a.latent)
    t0 = time.perf_counter()
    if a.what in ("unet", "flops"):
        from diffusers import UNet2DConditionModel
        m = UNet2DConditionModel(**UNET).eval().to(dtype)
        x = torch.randn(a.batch, 4, h, w).to(dtype)
        e = torch.randn(a.batch, 77, 768).to(dtype)
        fn = lambda: m(x, 500, encoder_hidden_states=e).sample
        shape = [a.batch, 4, h, w]
    elif a.what == "vae":
        from diffusers import AutoencoderKL
        m = AutoencoderKL(**VAE).eval().to(dtype)
        if a.encode:
            x = (torch.rand(a.batch, 3, 8 * h, 8 * w) * 2 - 1).to(dtype)
            fn = lambda: m.encode(x).latent_dist.mean
            shape = [a.batch, 3, 8 * h, 8 * w]
        else:
            z = torch.randn(a.batch, 4, h, w).to(dtype)
            fn = lambda: m.decode(z).sample
            shape = [a.batch, 4, h, w]
    else:
        from transformers import CLIPTextConfig, CLIPTextModel
        cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                             projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1)
        m = CLIPTextModel(cfg).eval().to(dtype)
        ids = torch.randint(0, 49408, (a.batch, 77))
        fn = lambda: m(ids)[0]
        shape = [a.batch, 77]
    build_s = time.perf_counter() - t0
    if a.what == "flops":
        print(json.dumps({"what": "unet_flops", "shape": shape, "gflop": round(count_flops(fn) / 1e9, 2)}))
        return
    warm, ts = run(fn, a.runs)
    med = statistics.median(ts)
    gflop = a.gflop
    rec = {"what": {"unet": "unet", "clip": "clip_text"}.get(a.what, "vae_encode" if a.encode else "vae_decode"),
           "impl": "torch", "dtype": a.dtype, "shape": shape, "warmup_s": round(warm, 4),
           "times_s": [round(t, 4) for t in ts], "median_s": round(med, 4),
           "gflop": gflop, "gflops_per_s": round(gflop / med, 2) if gflop else None,
           "peak_rss_mb": round(peak_rss_mb(), 1), "build_s": round(build_s, 2), "threads": torch.get_num_threads(),
           "torch": torch.__version__}
    try:
        import diffusers
        import transformers
        rec["diffusers"] = diffusers.__version__
        rec["transformers"] = transformers.__version__
    except Exception:
        pass
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    sys.exit(main())
