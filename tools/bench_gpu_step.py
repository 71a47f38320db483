"""Pace of one graphed training step of the UNet (tools/train_tiny_sd.py's GraphedStep) on a CUDA
GPU, for UNet widths and batch sizes, to size a training recipe to a device call before spending it.
Run from the repository root on the GPU machine, with diffusers on PYTHONPATH (tools/gpu_train_pair.sh
says how): python3 tools/bench_gpu_step.py. About a minute on an H200; figures in the model card.
With --choose BATCH:CHANNELS, times that one recipe in each --precisions entry and prints last
`fastest: PRECISION` (a precision whose step fails is reported and skipped); gpu_train_pair.sh
uses it to pick the UNet stage's precision.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_tiny_sd as T  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel  # noqa: E402

RECIPES = [(512, (64, 128)), (256, (64, 128)), (1024, (64, 128)), (512, (96, 192)), (256, (48, 96))]


def bench(device, batch, channels, precision="fp32", steps=60, timed_from=10):
    """Milliseconds per training step (batch drawn on the CPU, copied, graph replayed, EMA), and per
    replay of the captured graph alone."""
    text_encoder = CLIPTextModel(T.text_config(64)).to(device)
    unet = UNet2DConditionModel(**T.unet_config(16, 64, list(channels))).to(device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = T.graphed_optimizer(unet, text_encoder, params, 1e-4, device)
    ema = T.Ema([unet, text_encoder], 0.999)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1000, 4, 16, 16)
    ids = torch.randint(0, 49000, (1000, 77))
    ac = T.alphas_cumprod()
    stepper = None
    for i in range(steps):
        if i == timed_from:
            torch.cuda.synchronize()
            t0 = time.time()
        b = T.unet_batch(latents, latents * 0.01, ids, ids[0], ac, 1.0, batch, 5.0, g)
        b = {k: v.to(device) for k, v in b.items()}
        if stepper is None:
            stepper = T.GraphedStep(unet, text_encoder, params, opt, b, precision)
        stepper.run(b, warmup=i < 3)
        ema.update(i)
    torch.cuda.synchronize()
    per_step = (time.time() - t0) / (steps - timed_from)
    t0 = time.time()
    for _ in range(30):
        stepper.graph.replay()
    torch.cuda.synchronize()
    return 1000 * per_step, 1000 * (time.time() - t0) / 30


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precisions", default="fp32", help="comma-separated: fp32, bf16")
    ap.add_argument("--choose", default=None, metavar="BATCH:CHANNELS", help="e.g. 512:64,128")
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True  # as train_tiny_sd.py does on a GPU
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    print(torch.cuda.get_device_name(device), "torch", torch.__version__, flush=True)
    recipes = RECIPES
    if args.choose:
        batch, channels = args.choose.split(":")
        recipes = [(int(batch), tuple(int(c) for c in channels.split(",")))]
    paces = {}
    for batch, channels in recipes:
        for precision in args.precisions.split(","):
            try:
                step_ms, replay_ms = bench(device, batch, channels, precision, steps=args.steps)
            except Exception as e:  # reported, and that precision is not chosen
                print(f"unet {channels[0]}/{channels[1]} batch {batch} {precision}: failed: {e!r}", flush=True)
                continue
            paces[precision] = step_ms
            print(f"unet {channels[0]}/{channels[1]} batch {batch} {precision}: {step_ms:.1f} ms/step "
                  f"(graph replay alone {replay_ms:.1f} ms)", flush=True)
    if args.choose:
        print(f"fastest: {min(paces, key=paces.get) if paces else 'none'}", flush=True)


if __name__ == "__main__":
    main()
