#!/usr/bin/env python3
"""Single-file checkpoints in the original Stable Diffusion (CompVis/LDM) layout, for
tests/single_file.rs, made from the committed tiny diffusers models and checked with diffusers'
own `from_single_file` (offline, configs from the model folder): it must load every tensor
identical to `from_pretrained` on the folder.

Usage (from the repository root, with the reference venv of ../shared/reference/setup_venv.sh):
  /work/venv/bin/python tools/make_single_file_fixtures.py

The checkpoints themselves (about 14 and 11 MB, mostly the token embeddings) are not committed.
Instead tests/fixtures/single_file/MODEL.layout.json lists, for every tensor of the checkpoint,
where it comes from in the committed folder (`from`: component/name) and how (`op`: copy;
conv1x1: a linear weight [C,C] stored as a 1x1 convolution [C,C,1,1], as LDM's VAE attention;
qkv: OpenCLIP's in_proj, the q, k and v projections concatenated along rows; transpose; eye: an
identity matrix of the given size, for OpenCLIP's text projection, which the UNet never reads),
plus the SHA-256 `digest` of the checkpoint's tensors (names sorted; each name, dtype, shape and
little-endian bytes, see `digest()`). The test assembles the same file from that list and checks
the digest, so it is the file diffusers loaded. Layouts written:
  tiny-sd   SD 1.x: model.diffusion_model., first_stage_model., cond_stage_model.transformer.text_model.
  tiny-sd2  SD 2.x: the same UNet and VAE prefixes, OpenCLIP under cond_stage_model.model. (with one
            extra last resblock, as SD 2's checkpoints hold 24 blocks of which the UNet uses 23)
  *-vae     the VAE alone with bare keys (encoder., decoder., quant_conv.), as community VAE files
It also writes tests/fixtures/single_file/{sd15,sd21}_shapes.json: the tensor names and shapes of
full-size SD 1.5 and SD 2.1 checkpoints in the same layout (from the models' published configs,
instantiated without weights) and those configs, to test the configuration inferred from shapes.
"""
import hashlib
import json
import os
import re
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "tests", "fixtures", "models")
OUT = os.path.join(ROOT, "tests", "fixtures", "single_file")

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def unet_key(name, cfg):
    """diffusers UNet2DConditionModel name -> name under model.diffusion_model."""
    per = cfg["layers_per_block"] + 1
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for k, v in fixed.items():
        if name.startswith(k + "."):
            return v + name[len(k):]

    def resnet(rest):
        head, tail = rest.split(".", 1)
        return RESNET[head] + "." + tail

    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = 1 + b * per + j
        return f"input_blocks.{i}.0.{resnet(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", name)
    if m:
        return f"input_blocks.{1 + int(m[1]) * per + per - 1}.0.op.{m[2]}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{resnet(m[3])}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name)
    if m:
        b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        i = b * per + j
        return f"output_blocks.{i}.0.{resnet(rest)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", name)
    if m:
        b = int(m[1])
        slot = 2 if cfg["up_block_types"][b].startswith("CrossAttn") else 1
        return f"output_blocks.{b * per + per - 1}.{slot}.conv.{m[2]}"
    raise KeyError(name)


def vae_key(name, cfg):
    """diffusers AutoencoderKL name -> (LDM name, op)."""
    n = len(cfg["block_out_channels"])
    for side in ("encoder", "decoder"):
        if name.startswith(side + ".conv_norm_out."):
            return name.replace("conv_norm_out", "norm_out"), "copy"
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", name)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", "copy"
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", name)
    if m:
        ldm = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m[2]]
        op = "conv1x1" if m[3] == "weight" and ldm != "norm" else "copy"
        return f"{m[1]}.mid.attn_1.{ldm}.{m[3]}", op
    m = re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", name)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", "copy"
    m = re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", name)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", "copy"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", name)
    if m:
        return f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", "copy"
    m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", name)
    if m:
        return f"decoder.up.{n - 1 - int(m[1])}.upsample.conv.{m[2]}", "copy"
    if re.match(r"(encoder|decoder)\.conv_(in|out)\.|(post_)?quant_conv\.", name):
        return name, "copy"
    raise KeyError(name)


def open_clip_entries(text, layers):
    """OpenCLIP's layout of a CLIP text model with `layers` layers, plus the extra last block."""
    entries = []
    add = lambda ldm, src, op="copy": entries.append({"ldm": "cond_stage_model.model." + ldm, "from": src, "op": op})
    add("token_embedding.weight", ["text_encoder/embeddings.token_embedding.weight"])
    add("positional_embedding", ["text_encoder/embeddings.position_embedding.weight"])
    add("ln_final.weight", ["text_encoder/final_layer_norm.weight"])
    add("ln_final.bias", ["text_encoder/final_layer_norm.bias"])
    for i in range(layers + 1):
        src = min(i, layers - 1)  # the extra block repeats the last one
        p, q = f"transformer.resblocks.{i}.", f"text_encoder/encoder.layers.{src}."
        for a, b in [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                     ("mlp.c_proj", "mlp.fc2"), ("attn.out_proj", "self_attn.out_proj")]:
            for wb in ("weight", "bias"):
                add(f"{p}{a}.{wb}", [f"{q}{b}.{wb}"])
        for wb in ("weight", "bias"):
            add(f"{p}attn.in_proj_{wb}", [f"{q}self_attn.{x}_proj.{wb}" for x in "qkv"], "qkv")
    d = text["embeddings.token_embedding.weight"].shape[1]
    entries.append({"ldm": "cond_stage_model.model.text_projection", "from": [], "op": "eye", "size": d,
                    "dtype": str(text["embeddings.token_embedding.weight"].dtype).replace("torch.", "")})
    return entries


def layout(model):
    folder = os.path.join(MODELS, model)
    cfg = {c: json.load(open(os.path.join(folder, c, "config.json"))) for c in ("unet", "vae")}
    entries = []
    unet = load_file(os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors"))
    for name in sorted(unet):
        entries.append({"ldm": "model.diffusion_model." + unet_key(name, cfg["unet"]), "from": ["unet/" + name],
                        "op": "copy"})
    vae = load_file(os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors"))
    vae_entries = []
    for name in sorted(vae):
        ldm, op = vae_key(name, cfg["vae"])
        vae_entries.append({"ldm": ldm, "from": ["vae/" + name], "op": op})
    entries += [dict(e, ldm="first_stage_model." + e["ldm"]) for e in vae_entries]
    text = load_file(os.path.join(folder, "text_encoder", "model.safetensors"))
    if model == "tiny-sd":
        for name in sorted(text):
            entries.append({"ldm": "cond_stage_model.transformer.text_model." + name, "from": ["text_encoder/" + name],
                            "op": "copy"})
    else:
        layers = json.load(open(os.path.join(folder, "text_encoder", "config.json")))["num_hidden_layers"]
        entries += open_clip_entries(text, layers)
    return entries, vae_entries, {"unet": unet, "vae": vae, "text_encoder": text}


def assemble(entries, tensors):
    out = {}
    for e in entries:
        src = [tensors[s.split("/")[0]][s.split("/", 1)[1]] for s in e["from"]]
        op = e["op"]
        if op == "copy":
            t = src[0]
        elif op == "conv1x1":
            t = src[0][:, :, None, None]
        elif op == "qkv":
            t = torch.cat(src, 0)
        elif op == "transpose":
            t = src[0].T
        elif op == "eye":
            t = torch.eye(e["size"], dtype=getattr(torch, e["dtype"]))
        else:
            raise ValueError(op)
        assert e["ldm"] not in out, e["ldm"]
        out[e["ldm"]] = t.contiguous().clone()
    return out


def digest(tensors):
    """SHA-256 over the tensors in name order: name, dtype, shape, raw little-endian bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        dtype = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}[t.dtype]
        h.update(f"{name}\0{dtype}\0{','.join(map(str, t.shape))}\0".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def same_tensors(a, b, what):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), (what, set(sa) ^ set(sb))
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), f"{what}: {k} differs"
    return len(sa)


def check_with_diffusers(model, ckpt, vae_file):
    from diffusers import AutoencoderKL, StableDiffusionPipeline
    folder = os.path.join(MODELS, model)
    kw = dict(safety_checker=None, requires_safety_checker=False, local_files_only=True)
    ref = StableDiffusionPipeline.from_pretrained(folder, **kw)
    single = StableDiffusionPipeline.from_single_file(ckpt, config=folder, **kw)
    n = sum(same_tensors(getattr(single, c), getattr(ref, c), f"{model} {c}") for c in ("unet", "vae", "text_encoder"))
    vae = AutoencoderKL.from_single_file(vae_file, config=folder, subfolder="vae", local_files_only=True)
    n_vae = same_tensors(vae, ref.vae, f"{model} vae alone")
    print(f"{model}: diffusers from_single_file loads {n} tensors identical to the folder's; the VAE file {n_vae}")


# ------------------------------------------------------------------ full-size shapes
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, cross_attention_dim=768,
                 attention_head_dim=8, use_linear_projection=False)
SD21_UNET = dict(SD15_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                 use_linear_projection=True)
SD_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=[128, 256, 512, 512],
              down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32,
              sample_size=512, scaling_factor=0.18215)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu")
OPEN_CLIP_H = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                   num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu")


def shapes_of(model_cls, config):
    with torch.device("meta"):
        m = model_cls(config) if not isinstance(config, dict) else model_cls(**config)
    return {k: list(v.shape) for k, v in m.state_dict().items()}


def full_size_shapes(name, unet_cfg, text_cfg, open_clip):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    out = {}
    for k, s in shapes_of(UNet2DConditionModel, unet_cfg).items():
        out["model.diffusion_model." + unet_key(k, unet_cfg)] = s
    for k, s in shapes_of(AutoencoderKL, SD_VAE).items():
        ldm, op = vae_key(k, SD_VAE)
        out["first_stage_model." + ldm] = s + [1, 1] if op == "conv1x1" else s
    text = shapes_of(CLIPTextModel, CLIPTextConfig(**text_cfg))
    text = {k.removeprefix("text_model."): v for k, v in text.items() if "position_ids" not in k}
    if open_clip:
        fake = {k: torch.empty(s, device="meta") for k, s in text.items()}
        for e in open_clip_entries(fake, text_cfg["num_hidden_layers"]):
            if e["op"] == "eye":
                out[e["ldm"]] = [e["size"], e["size"]]
            else:
                shapes = [text[s.split("/", 1)[1]] for s in e["from"]]
                out[e["ldm"]] = [sum(s[0] for s in shapes)] + shapes[0][1:] if e["op"] == "qkv" else shapes[0]
    else:
        for k, s in text.items():
            out["cond_stage_model.transformer.text_model." + k] = s
    doc = {"about": f"tensor shapes of a full-size {name} checkpoint in the LDM layout (no weights)",
           "unet": unet_cfg, "vae": SD_VAE, "text_encoder": text_cfg, "shapes": dict(sorted(out.items()))}
    path = os.path.join(OUT, f"{name}_shapes.json")
    json.dump(doc, open(path, "w"), indent=0)
    print(f"wrote {path}: {len(out)} tensors")


def main():
    torch.set_grad_enabled(False)
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as td:
        for model in ("tiny-sd", "tiny-sd2"):
            entries, vae_entries, tensors = layout(model)
            ckpt_tensors = assemble(entries, tensors)
            vae_tensors = assemble(vae_entries, tensors)
            ckpt, vae_file = os.path.join(td, model + ".safetensors"), os.path.join(td, model + "-vae.safetensors")
            save_file(ckpt_tensors, ckpt)
            save_file(vae_tensors, vae_file)
            check_with_diffusers(model, ckpt, vae_file)
            doc = {"model": model, "tensors": entries, "digest": digest(load_file(ckpt)),
                   "vae_tensors": vae_entries, "vae_digest": digest(load_file(vae_file))}
            path = os.path.join(OUT, model + ".layout.json")
            with open(path, "w") as fh:
                json.dump(doc, fh, indent=0)
            print(f"wrote {path}: {len(entries)} tensors ({os.path.getsize(ckpt) / 1e6:.1f} MB as a file), "
                  f"VAE alone {len(vae_entries)}")
    full_size_shapes("sd15", SD15_UNET, CLIP_L, open_clip=False)
    full_size_shapes("sd21", SD21_UNET, OPEN_CLIP_H, open_clip=True)


if __name__ == "__main__":
    main()
