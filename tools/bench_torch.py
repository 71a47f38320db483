#!/usr/bin/env python3
"""PyTorch side of `diffedit bench`: the same full-size SD 1.5 components with random weights,
the same shapes, timed the same way (one warm-up, median of N), one JSON line per measurement.

  /work/venv-ref/bin/python tools/bench_torch.py unet --batch 1 --latent 64 --dtype f32 --runs 3
  /work/venv-ref/bin/python tools/bench_torch.py vae --latent 64 [--encode] --dtype f32
  /work/venv-ref/bin/python tools/bench_torch.py clip --dtype f32
  /work/venv-ref/bin/python tools/bench_torch.py flops   # FlopCounterMode totals, for checking ours
  /work/venv-ref/bin/python tools/bench_torch.py edit --size 256 --steps 10 --runs 1 [--dtype bf16]
        # one whole edit with ../shared/reference/seed_reference.py's functions (the PyTorch
        # reference of the same algorithm, exact alignment, tutorial settings) on random SD 1.5;
        # bf16 runs it under CPU autocast
  /work/venv-ref/bin/python tools/bench_torch.py edit-diffusers --size 256 --runs 1
        # diffusers' StableDiffusionDiffEditPipeline at its defaults (generate_mask, invert, __call__;
        # 50 steps, CFG 7.5 in all three stages) on the same random SD 1.5

Edits are timed after a 2-step warm-up edit with one mask sample (as `diffedit bench edit` does).

Threads: torch.set_num_threads(--threads, default 2). GFLOP/s use the same analytic counts as
the Rust side (passed with --gflop) when given, else torch's FlopCounterMode count.
"""
import argparse
import json
import os
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
    """Warm-up time, wall times and process CPU times (all threads) of the timed runs."""
    with torch.inference_mode():
        t0 = time.perf_counter()
        fn()
        warm = time.perf_counter() - t0
        ts, cpu = [], []
        for _ in range(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            ts.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return warm, ts, cpu


def count_flops(fn):
    from torch.utils.flop_counter import FlopCounterMode
    fc = FlopCounterMode(display=False)
    with torch.inference_mode(), fc:
        fn()
    return fc.get_total_flops()


CLIP_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                 projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1)


def random_sd15(tokenizer_dir):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
    torch.manual_seed(0)
    parts = dict(
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_TEXT)).eval(),
        vae=AutoencoderKL(**VAE).eval(),
        unet=UNet2DConditionModel(**UNET).eval(),
        # The tutorial's scheduler.
        scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                clip_sample=False, set_alpha_to_one=False),
    )
    return parts


def bench_edit(a):
    """The reference's generate_mask / ddim_inversion / diffedit_decode, or diffusers' pipeline."""
    sys.path.insert(0, a.reference)
    import seed_reference as ref
    parts = random_sd15(a.tokenizer)
    width, height = hw(a.size)[::-1]
    img = ref.synthetic_image(width, height, "disc")
    source, target = "a red disc on a gradient", "a large red disc on a gradient"
    if a.what == "edit":
        m = ref.Model.__new__(ref.Model)
        m.dtype = torch.float32
        for k, v in parts.items():
            setattr(m, k, v)
        m.vae_scale_factor, m.scaling_factor = 8, 0.18215

        def edit(steps, n):
            rec = {}
            img_t = ref.image_to_tensor(img, width, height, rec)
            latents = ref.encode_image(m, img_t, torch.Generator().manual_seed(0), rec)
            mask, _ = ref.generate_mask(m, latents, target, source, n, 0.5, 0.5, steps, rec)
            start = int(a.encode_ratio * steps)
            lat = ref.ddim_inversion(m, latents, source, steps, 1.0, start - 1, rec)
            x = ref.diffedit_decode(m, lat, mask, target, steps, start, 7.5, "exact", rec)
            ref.decode_latents(m, x, rec)
        rows = lambda steps, n: 2 * n + 2 * int(a.encode_ratio * steps) + int(a.encode_ratio * steps) - 1
    else:
        from diffusers import DDIMInverseScheduler, StableDiffusionDiffEditPipeline
        pipe = StableDiffusionDiffEditPipeline(
            **parts, inverse_scheduler=DDIMInverseScheduler.from_config(parts["scheduler"].config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)

        def edit(steps, n):
            # diffusers' defaults except the step count (50) and maps (10) when told otherwise.
            g = torch.Generator().manual_seed(0)
            mask = pipe.generate_mask(image=img, source_prompt=source, target_prompt=target,
                                      num_maps_per_mask=n, num_inference_steps=steps, generator=g)
            inv = pipe.invert(prompt=source, image=img, num_inference_steps=steps, generator=g).latents
            pipe(prompt=target, mask_image=mask, image_latents=inv, num_inference_steps=steps,
                 negative_prompt=source, generator=g)
        rows = lambda steps, n: 4 * n + 4 * int(0.8 * steps)
    # bf16: the reference code under CPU autocast (bf16 products, f32 elsewhere), the way a
    # PyTorch user runs it in bf16 on a CPU; the random model itself stays f32.
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bf16")
    with torch.inference_mode(), amp:
        t0 = time.perf_counter()
        edit(2, 1)
        warm = time.perf_counter() - t0
        ts, cpu = [], []
        for _ in range(a.runs):
            t0, c0 = time.perf_counter(), time.process_time()
            edit(a.steps, a.mask_samples)
            ts.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    med = statistics.median(ts)
    rec = {"what": a.what, "impl": "torch", "dtype": a.dtype, "size": [width, height], "steps": a.steps,
           "mask_samples": a.mask_samples, "unet_evaluations": rows(a.steps, a.mask_samples),
           "warmup_s": round(warm, 3), "times_s": [round(t, 3) for t in ts], "median_s": round(med, 3),
           "cpu_times_s": [round(t, 3) for t in cpu], "peak_rss_mb": round(peak_rss_mb(), 1),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
    print(json.dumps(rec), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["unet", "vae", "clip", "flops", "edit", "edit-diffusers"])
    ap.add_argument("--size", default="256", help="edit: picture size S or HxW")
    ap.add_argument("--steps", type=int, default=10, help="edit: DDIM steps")
    ap.add_argument("--encode-ratio", type=float, default=0.8)
    ap.add_argument("--mask-samples", type=int, default=10)
    ap.add_argument("--reference", default="../shared/reference", help="folder of seed_reference.py")
    ap.add_argument("--tokenizer", default="models/diffedit-shapes/tokenizer", help="real CLIP tokenizer files")
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
    if a.what.startswith("edit"):
        return bench_edit(a)
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
    warm, ts, cpu = run(fn, a.runs)
    med = statistics.median(ts)
    gflop = a.gflop
    rec = {"what": {"unet": "unet", "clip": "clip_text"}.get(a.what, "vae_encode" if a.encode else "vae_decode"),
           "impl": "torch", "dtype": a.dtype, "shape": shape, "warmup_s": round(warm, 4),
           "times_s": [round(t, 4) for t in ts], "median_s": round(med, 4),
           "cpu_times_s": [round(t, 4) for t in cpu], "gflop": gflop, "gflops_per_s": round(gflop / med, 2) if gflop else None,
           "peak_rss_mb": round(peak_rss_mb(), 1), "build_s": round(build_s, 2), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
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
