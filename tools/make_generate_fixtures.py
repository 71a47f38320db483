#!/usr/bin/env python3
"""Text-to-image pictures made by diffusers' own StableDiffusionPipeline with DDIM, seeded the way
diffusers' documentation recommends (generator=torch.Generator("cpu").manual_seed(SEED)), for
tests/rng_torch.rs: `diffedit generate --seed SEED` must draw the same start latents and
give the same picture within 2 levels.

Usage (from the repository root, with the reference venv of ../shared/reference/setup_venv.sh):
  /work/venv/bin/python tools/make_generate_fixtures.py

For each case writes tests/fixtures/generate/CASE.png (the pipeline's picture, PIL output),
CASE_latents.safetensors (the start latents the pipeline drew, `latents` [1,4,h,w], captured in
prepare_latents) and CASE.json (model, prompt, seed, steps, guidance, size).
"""
import json
import os

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "generate")
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")

CASES = {
    "sd1_seed42": dict(model="tiny-sd", prompt="a horse on a grass field", seed=42, steps=10, guidance=7.5,
                       width=64, height=64),
    "sd2_seed7_48x32": dict(model="tiny-sd2", prompt="a red circle", seed=7, steps=8, guidance=5.0,
                            width=48, height=32),
}


def main():
    torch.set_grad_enabled(False)
    os.makedirs(OUT, exist_ok=True)
    for name, c in CASES.items():
        folder = os.path.join(MODELS, c["model"])
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                       dtype=torch.float32)
        pipe.scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
        pipe.set_progress_bar_config(disable=True)
        captured = {}
        original = pipe.prepare_latents

        def prepare_latents(*args, **kwargs):
            lat = original(*args, **kwargs)
            captured["latents"] = lat.clone()
            return lat

        pipe.prepare_latents = prepare_latents
        generator = torch.Generator("cpu").manual_seed(c["seed"])
        image = pipe(c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"], width=c["width"],
                     height=c["height"], generator=generator, output_type="pil").images[0]
        image.save(os.path.join(OUT, name + ".png"))
        save_file({"latents": captured["latents"].contiguous()}, os.path.join(OUT, name + "_latents.safetensors"))
        json.dump(dict(c, torch=torch.__version__), open(os.path.join(OUT, name + ".json"), "w"), indent=1)
        print("wrote", name, np.asarray(image).shape)


if __name__ == "__main__":
    main()
