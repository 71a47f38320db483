"""Reference values for the DDIM schedule parity test (tests/parity_scheduler.rs).

Rerun from the repository root with the reference venv:

    /work/venv-ref/bin/python tools/fixtures_scheduler.py

Writes tests/fixtures/parity/scheduler_inputs.safetensors (fixed random tensors shared by every
config) and one tests/fixtures/parity/scheduler_<name>.safetensors per scheduler config, holding
  alphas_cumprod (f32 [T]), final_alpha_cumprod (f32 [1]),
  timesteps_<n> (i64) for each number of steps n,
  step_<n>_<i>: DDIMScheduler.step(model_output, timesteps_<n>[i], sample, eta=0).prev_sample,
  eps_<n>_<i>: the epsilon that step() derives from model_output (pred_epsilon),
  add_noise_<t>: add_noise(original, noise, t),
  invert_<n>_<i>: the inversion step from timesteps_<n>[i] - T//n (final_alpha_cumprod when
    negative) up to timesteps_<n>[i], x_next = sqrt(a_next)*(x - sqrt(1-a_t)*eps)/sqrt(a_t) + sqrt(1-a_next)*eps,
    with eps = model_output and x = sample, in float32 torch.
The config is stored as JSON in the file's metadata under "config", the step counts under "steps".
Values depend on how torch was built (its CPU linspace uses fused multiply-add on x86-64 AVX2/AVX512).
"""

import json
import os

import torch
from diffusers import DDIMScheduler
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "parity")
SHAPE = (2, 4, 4, 4)


def model_config(name):
    with open(os.path.join(ROOT, "tests", "fixtures", "models", name, "scheduler", "scheduler_config.json")) as f:
        cfg = json.load(f)
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


CONFIGS = {
    # tiny-sd: scaled_linear, leading, steps_offset 1, set_alpha_to_one false.
    "sd1": (model_config("tiny-sd"), [10, 50, 7]),
    # tiny-sd2: the same but trailing spacing.
    "sd2": (model_config("tiny-sd2"), [10, 50, 7]),
    # diffusers' defaults: linear betas, clip_sample true, set_alpha_to_one true, leading, offset 0.
    "default": ({}, [10, 50, 7]),
    "vpred_linspace": (
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
             timestep_spacing="linspace", steps_offset=1, clip_sample=False, set_alpha_to_one=False),
        [10, 50, 7],
    ),
    "vpred_zsnr_trailing": (
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
             timestep_spacing="trailing", rescale_betas_zero_snr=True, clip_sample=False, set_alpha_to_one=False),
        [10, 7],
    ),
    "cos_sample_clip": (
        dict(beta_schedule="squaredcos_cap_v2", prediction_type="sample", clip_sample=True, clip_sample_range=0.5,
             timestep_spacing="leading", steps_offset=1),
        [10, 7],
    ),
    "trained_betas": (
        dict(num_train_timesteps=20, trained_betas=[0.01 + 0.02 * i for i in range(20)], clip_sample=False,
             timestep_spacing="trailing"),
        [10, 7, 20],
    ),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    inputs = {
        "model_output": torch.randn(SHAPE, generator=g),
        # Large enough that predicted x0 leaves [-1, 1] and clip_sample has work to do.
        "sample": 2.0 * torch.randn(SHAPE, generator=g),
        "original": torch.randn(SHAPE, generator=g),
        "noise": torch.randn(SHAPE, generator=g),
    }
    save_file(inputs, os.path.join(OUT, "scheduler_inputs.safetensors"))
    mo, x = inputs["model_output"], inputs["sample"]

    for name, (cfg, steps_list) in CONFIGS.items():
        sched = DDIMScheduler(**cfg)
        T = sched.config.num_train_timesteps
        ac = sched.alphas_cumprod
        out = {
            "alphas_cumprod": ac.clone(),
            "final_alpha_cumprod": sched.final_alpha_cumprod.reshape(1).to(torch.float32).clone(),
        }
        for n in steps_list:
            sched.set_timesteps(n)
            ts = sched.timesteps.to(torch.int64)
            out[f"timesteps_{n}"] = ts.clone()
            ratio = T // n
            for i in sorted({0, len(ts) // 2, len(ts) - 1}):
                t = int(ts[i])
                out[f"step_{n}_{i}"] = sched.step(mo, t, x, eta=0.0).prev_sample
                a = ac[t]
                b = 1 - a
                pt = sched.config.prediction_type
                if pt == "epsilon":
                    eps = mo
                elif pt == "sample":
                    eps = (x - a**0.5 * mo) / b**0.5
                else:
                    eps = a**0.5 * mo + b**0.5 * x
                out[f"eps_{n}_{i}"] = eps.clone()
                # Inversion from the level below t (ac[t - ratio], or the final alpha) up to t.
                t_prev = t - ratio
                a_t = ac[t_prev] if t_prev >= 0 else sched.final_alpha_cumprod
                a_next = ac[t]
                out[f"invert_{n}_{i}"] = a_next.sqrt() * (x - (1 - a_t).sqrt() * mo) / a_t.sqrt() + (1 - a_next).sqrt() * mo
        for t in sorted({0, T // 2, T - 1}):
            out[f"add_noise_{t}"] = sched.add_noise(inputs["original"], inputs["noise"], torch.tensor([t]))
        out = {k: v.contiguous() for k, v in out.items()}
        meta = {"config": json.dumps(cfg), "steps": json.dumps(steps_list)}
        path = os.path.join(OUT, f"scheduler_{name}.safetensors")
        save_file(out, path, metadata=meta)
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
