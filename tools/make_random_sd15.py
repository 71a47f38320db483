#!/usr/bin/env python3
"""A diffusers folder of Stable Diffusion 1.5's architecture with random weights (f32 safetensors,
4.2 GB), for measuring what loading real-size weights from files costs (peak memory, load time)
on a machine without the real ones:

  /work/venv/bin/python tools/make_random_sd15.py /tmp/sd15-random
  /usr/bin/time -v target/release/diffedit edit --model /tmp/sd15-random --image docs/example/shapes.png \
      --source "a circle" --target "a square" --steps 10 --size 256 --out /tmp/e.png --dtype bf16

The tokenizer is the bundled model's (the real CLIP vocabulary); the scheduler the tutorial's DDIM.
"""
import json
import pathlib
import shutil
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from bench_torch import UNET, VAE  # noqa: E402


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/sd15-random")
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    UNet2DConditionModel(**UNET).save_pretrained(out / "unet")
    AutoencoderKL(**VAE).save_pretrained(out / "vae")
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                         num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                         projection_dim=768, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    CLIPTextModel(cfg).save_pretrained(out / "text_encoder")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False).save_pretrained(out / "scheduler")
    repo = pathlib.Path(__file__).resolve().parent.parent
    shutil.copytree(repo / "models/diffedit-shapes/tokenizer", out / "tokenizer", dirs_exist_ok=True)
    (out / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDIMScheduler"]}, indent=1))
    print(out)


if __name__ == "__main__":
    main()
