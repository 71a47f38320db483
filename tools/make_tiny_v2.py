#!/usr/bin/env python3
"""Build `tests/fixtures/models/tiny-sd2`: a second tiny random model in diffusers layout whose
architecture differs from tiny-sd (the SD 1.x-style one) everywhere the loader must follow the
config: weights stored in f16 (text encoder), SD 2.x-style linear projections, per-block attention head counts, three resolution
levels, 16 norm groups, a VAE with factor 4 and another scaling factor, a CLIP text encoder with
`gelu` and a hidden size different from the UNet's channels, a tokenizer padding with "!"
(as stabilityai/stable-diffusion-2 does), and a DDIM scheduler with "trailing" spacing.

Usage: .venv-ref/bin/python tools/make_tiny_v2.py OUT_DIR [--tokenizer-from tests/fixtures/models/tiny-sd/tokenizer]
Deterministic: the same library versions give the same bytes.
"""
import argparse

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SEED = 2


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--tokenizer-from", default="tests/fixtures/models/tiny-sd/tokenizer")
    a = ap.parse_args()

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 48, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=48,
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        norm_num_groups=16,
        flip_sin_to_cos=True,
        freq_shift=0,
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
        scaling_factor=0.13025,
    )
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
        hidden_size=48,
        intermediate_size=72,
        layer_norm_eps=1e-5,
        num_attention_heads=3,
        num_hidden_layers=3,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=48,
        hidden_act="gelu",
    ))
    tokenizer = CLIPTokenizer.from_pretrained(a.tokenizer_from, model_max_length=77, pad_token="!")
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=0,
        timestep_spacing="trailing",
    )
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(a.out, safe_serialization=True)
    # store the text encoder in float16, so that loading f16 weights into an f32 model is exercised
    from safetensors.torch import load_file, save_file
    te = f"{a.out}/text_encoder/model.safetensors"
    save_file({k: v.half() for k, v in load_file(te).items()}, te, metadata={"format": "pt"})
    p2 = StableDiffusionPipeline.from_pretrained(a.out, safety_checker=None)
    ids = p2.tokenizer("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[7] == 0, ids[:9]
    n = lambda m: sum(p.numel() for p in m.parameters())
    print(f"saved {a.out}: unet {n(p2.unet)} params, vae {n(p2.vae)}, text_encoder {n(p2.text_encoder)}")


if __name__ == "__main__":
    main()
