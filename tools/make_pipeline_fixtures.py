#!/usr/bin/env python3
"""Make the pipeline parity fixtures in tests/fixtures/pipeline/ with the PyTorch reference
(../shared/reference/seed_reference.py), then keep only what the Rust tests compare, so the
committed files stay small.

Usage (from the repository root, with the reference venv of ../shared/reference/setup_venv.sh):
  .venv-ref/bin/python tools/make_pipeline_fixtures.py [--reference ../shared/reference/seed_reference.py]

Each case writes CASE.safetensors (the trace tensors the tests compare), CASE_noise.safetensors
(vae_noise, mask_noise), CASE_in.png (the input picture) and CASE.json (the parameters).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "pipeline")
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
KEEP = ["emb_target", "emb_reference", "emb_uncond", "latents", "mask_norm", "mask", "inv_latents",
        "dec_latents", "decoded", "timesteps", "mask_t", "dec_timesteps", "dec_blend_index"]

# name -> (model, seed_reference arguments)
CASES = {
    # the reference's example, both alignments, all defaults but steps
    "sd1_exact_default": ("tiny-sd", ["--size", "64x64", "--steps", "10", "--alignment", "exact"]),
    "sd1_notebook_default": ("tiny-sd", ["--size", "64x64", "--steps", "10", "--alignment", "notebook"]),
    # non-square, other parameters everywhere
    "sd1_exact_96x64": ("tiny-sd", ["--size", "96x64", "--steps", "12", "--r", "0.6", "--guidance", "5.0",
                                    "--mask-samples", "4", "--threshold", "0.4", "--noise-level", "0.7",
                                    "--alignment", "exact", "--synthetic", "blocks",
                                    "--source", "a bowl of fruit on a table", "--target", "a basket of fruit on a table"]),
    # second architecture: r = 1 (S = steps), CFG inversion, noise level 1 (clamped), portrait size
    "sd2_notebook_64x96": ("tiny-sd2", ["--size", "64x96", "--steps", "8", "--r", "1.0", "--guidance", "3.0",
                                        "--inv-guidance", "2.0", "--mask-samples", "3", "--threshold", "0.6",
                                        "--noise-level", "1.0", "--alignment", "notebook"]),
    "sd2_exact_r058": ("tiny-sd2", ["--size", "64x64", "--steps", "10", "--r", "0.58", "--alignment", "exact",
                                    "--source", "a red circle on a green background",
                                    "--target", "a blue square on a green background"]),
    # the reference's own draws from one seed (no injected noise): `diffedit edit --seed 42` must
    # reproduce this run from the seed alone (PyTorch's generator, src/rng/)
    "sd1_exact_seed42": ("tiny-sd", ["--size", "64x64", "--steps", "8", "--mask-samples", "4",
                                     "--synthetic", "blocks", "--vae-seed", "42", "--mask-seed", "42",
                                     "--alignment", "exact", "--source", "a bowl of fruit on a table",
                                     "--target", "a basket of fruit on a table"]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", default=os.path.join(ROOT, "..", "shared", "reference", "seed_reference.py"))
    ap.add_argument("--only", nargs="*", default=None)
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    for name, (model, args) in CASES.items():
        if a.only and name not in a.only:
            continue
        with tempfile.TemporaryDirectory() as td:
            full = os.path.join(td, name + ".safetensors")
            subprocess.run([sys.executable, a.reference, "--model", os.path.join(MODELS, model), "--out", full] + args,
                           check=True)
            tensors = load_file(full)
            save_file({k: tensors[k] for k in KEEP}, os.path.join(OUT, name + ".safetensors"))
            shutil.copy(os.path.join(td, name + "_noise.safetensors"), os.path.join(OUT, name + "_noise.safetensors"))
            shutil.copy(os.path.join(td, name + "_in.png"), os.path.join(OUT, name + "_in.png"))
            shutil.copy(os.path.join(td, name + "_out.png"), os.path.join(OUT, name + "_out.png"))
            meta = json.load(open(os.path.join(td, name + ".json")))
            json.dump({"model": model, "args": args, "params": meta["params"], "mask_fraction": meta["mask_fraction"]},
                      open(os.path.join(OUT, name + ".json"), "w"), indent=1)
        print("wrote", name)


if __name__ == "__main__":
    main()
