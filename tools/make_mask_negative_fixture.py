#!/usr/bin/env python3
"""The reference run with a given mask and a negative prompt, for tests/cli_edit.rs.

The PyTorch reference (../shared/reference/seed_reference.py) has neither feature, so this script
runs it with two changes made from outside, as diffusers defines the features:
- the negative prompt replaces the empty prompt wherever the reference encodes it (the decoding's
  guidance, the inversion's when its guidance is above 1, the traced `emb_uncond`);
- the given mask picture, averaged over each latent cell (the picture is an integer multiple of the
  latent grid here) and thresholded above one half, replaces the computed mask after
  generate_mask (whose draws still happen, so the random stream is unchanged).

Usage (repository root, reference venv):
  /work/venv/bin/python tools/make_mask_negative_fixture.py [--reference-dir ../shared/reference]
Writes tests/fixtures/pipeline/sd1_mask_negative{.safetensors,_in.png,_mask.png,.json}.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "pipeline")
NAME = "sd1_mask_negative"
NEGATIVE = "a blurry dark picture"
ARGS = ["--size", "64x64", "--steps", "10", "--inv-guidance", "2.0", "--guidance", "6.0", "--mask-samples", "4",
        "--alignment", "exact", "--synthetic", "blocks", "--vae-seed", "42", "--mask-seed", "42",
        "--source", "a bowl of fruit on a table", "--target", "a basket of fruit on a table"]
KEEP = ["emb_target", "emb_reference", "emb_uncond", "latents", "mask", "inv_latents", "dec_latents", "decoded"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", default=os.path.join(ROOT, "..", "shared", "reference"))
    a = ap.parse_args()
    sys.path.insert(0, os.path.abspath(a.reference_dir))
    import seed_reference as ref

    # The given mask: a 64x64 picture, white in a rectangle (odd edges, so the cell averages matter).
    mask_png = os.path.join(OUT, f"{NAME}_mask.png")
    pic = np.zeros((64, 64), np.uint8)
    pic[9:41, 21:50] = 255
    Image.fromarray(pic).save(mask_png)

    encode_text = ref.encode_text

    def encode_with_negative(m, prompt, rec=None, name=None):
        return encode_text(m, NEGATIVE if prompt == "" else prompt, rec, name)

    generate_mask = ref.generate_mask

    def given_mask(m, latents, *args, **kwargs):
        rec = args[6] if len(args) > 6 else kwargs["rec"]
        _, t_idx = generate_mask(m, latents, *args, **kwargs)
        h, w = latents.shape[-2:]
        f = pic.shape[0] // h
        cells = pic.reshape(h, f, w, f).astype(np.float64).mean(axis=(1, 3)) / 255.0
        mask = torch.from_numpy((cells > 0.5).astype(np.float32)).reshape(1, 1, h, w).to(latents.dtype)
        rec["mask"] = mask
        return mask, t_idx

    ref.encode_text = encode_with_negative
    ref.generate_mask = given_mask
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, f"{NAME}.safetensors")
        model = os.path.join(ROOT, "tests", "fixtures", "models", "tiny-sd")
        sys.argv = ["seed_reference.py", "--model", model, "--out", out] + ARGS
        ref.main()
        tensors = load_file(out)
        save_file({k: tensors[k] for k in KEEP}, os.path.join(OUT, f"{NAME}.safetensors"))
        os.replace(os.path.join(tmp, f"{NAME}_in.png"), os.path.join(OUT, f"{NAME}_in.png"))
        with open(os.path.join(tmp, f"{NAME}.json")) as fh:
            params = json.load(fh)["params"]
    params["negative_prompt"] = NEGATIVE
    params["mask_png"] = f"{NAME}_mask.png"
    with open(os.path.join(OUT, f"{NAME}.json"), "w") as fh:
        json.dump({"params": params}, fh, indent=1)
    print(f"wrote {NAME}: mask cells {float(tensors['mask'].mean()):.3f}")


if __name__ == "__main__":
    main()
