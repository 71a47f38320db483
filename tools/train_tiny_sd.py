#!/usr/bin/env python3
"""Trains `models/diffedit-shapes`: a small Stable-Diffusion-family model on the project's
synthetic scenes (src/synth.rs), saved in diffusers layout so the Rust loader reads it exactly as
it reads SD weights.

Run everything with one command from the repository root (it builds the Rust CLI, dumps the
scenes and calls this script):

    tools/train.sh

or, on a dataset already dumped with `diffedit scenes --out DIR --count N --seed S --size 32`:

    /work/venv-ref/bin/python tools/train_tiny_sd.py --data DIR --out models/diffedit-shapes

Why PyTorch and not candle: candle has no fused optimiser, no CUDA-graph capture and a CPU
backward pass several times slower than PyTorch's oneDNN kernels for these small convolutions; the
architecture is diffusers' own (AutoencoderKL, UNet2DConditionModel with cross-attention,
transformers' CLIPTextModel), so the committed weights exercise exactly the code paths real SD
weights do.

Devices: on a CUDA GPU when there is one (`--device auto`), else on the CPU. Every random draw
(batches, noise, timesteps, caption dropout) comes from CPU generators, so both follow the same
batches and differ only by rounding; the GPU replays the whole UNet step as one CUDA graph. On an
H200 the default run takes about 7.5 minutes (two runs side by side: tools/gpu_train_pair.sh); on
a 2-core CPU (--threads 2) about 18 hours (the UNet stage dominates: 2750 steps of batch 512, 24 s each).
`--precision bf16` runs the UNet stage's forward under bfloat16 autocast: 1.44x faster steps on an
H200, the same edit quality (model card); the shipped model was trained in f32 (with TF32).

Stages (all seeded; on the CPU the same command gives the same weights on the same torch build):
  1. VAE (AutoencoderKL, 2 levels: factor 2, 4 latent channels), trained on reconstruction with a
     tiny KL term, as SD's VAE was; scaling_factor = 1 / std of the training latents.
  1b. The decoder alone, the encoder frozen, on a longer low learning-rate schedule: the latent
     space stays the encoder's, and the decoder sets how faithfully a kept background returns.
  2. Text encoder (CLIPTextModel, 2 layers, width 64, the real CLIP vocabulary and tokenizer) and
     UNet (2 levels, channels 64/128, cross-attention at both levels and in the middle block)
     trained together from scratch on epsilon prediction with SD's scaled-linear betas, Min-SNR-5
     weighting, captions dropped 10% of the time (classifier-free guidance), EMA weights saved.
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


START = time.time()


def log(*a):
    print(*a, flush=True)


def load_dataset(data_dir, limit=None):
    rows = [json.loads(l) for l in open(os.path.join(data_dir, "scenes.jsonl"))]
    if limit:
        rows = rows[:limit]
    imgs = np.stack([np.asarray(Image.open(os.path.join(data_dir, r["image"])).convert("RGB")) for r in rows])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, [r["caption"] for r in rows], rows


def object_cells(data_dir, rows, factor):
    """[N,1,h,w] 0/1: the latent cells (factor x factor pixels) that hold any object pixel."""
    masks = np.stack([np.asarray(Image.open(os.path.join(data_dir, r["mask"]))) for r in rows])
    m = torch.from_numpy(masks > 0).float().unsqueeze(1)
    return F.max_pool2d(m, factor)


def vae_config(size, channels):
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        block_out_channels=channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=size,
        mid_block_add_attention=True,
    )


def unet_config(latent_size, text_dim, channels):
    # Cross-attention at both levels: the half-resolution level is where the shape is decided, and
    # the prompt's colour and shape words must reach it.
    return dict(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        block_out_channels=channels,
        layers_per_block=1,
        attention_head_dim=4,
        cross_attention_dim=text_dim,
        norm_num_groups=16,
    )


def text_config(width):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def psnr(a, b):
    mse = ((a - b) ** 2).mean().item() * 0.25  # [-1,1] -> [0,1]
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def share_step_count(path, fitted):
    """The step count of the first run to fit one: published atomically (a hard link fails when the
    file exists), so runs sharing a GPU and paced a little differently still train the same schedule."""
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(f"{fitted}\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        with open(path) as f:
            fitted = int(f.read())
    finally:
        os.unlink(tmp)
    return fitted


def cosine_lr(step, total, base, warmup):
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def train_vae(x, args):
    from diffusers import AutoencoderKL

    dev = args.device
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**vae_config(x.shape[-1], args.vae_channels)).to(dev)
    log(f"vae: {sum(p.numel() for p in vae.parameters())/1e6:.2f}M parameters")
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 1)
    held = x[-256:].to(dev)
    train = x[:-256]
    t0 = time.time()
    for step in range(args.vae_steps):
        for pg in opt.param_groups:
            pg["lr"] = cosine_lr(step, args.vae_steps, args.vae_lr, 100)
        idx = torch.randint(0, train.shape[0], (args.vae_batch,), generator=g)
        # Every random draw comes from CPU generators, so a GPU run sees the same batches and noise
        # as a CPU run of the same command; only the arithmetic's rounding differs.
        b = train[idx].to(dev)
        post = vae.encode(b).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(dev)
        rec = vae.decode(z).sample
        kl = post.kl().mean()
        # SD's VAE loss sums the reconstruction error over pixels and weighs the KL term 1e-6
        # against that sum; with per-pixel means the KL weight is divided by the pixel count.
        loss = F.mse_loss(rec, b) + 0.5 * F.l1_loss(rec, b) + args.vae_kl * kl / b[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.log_every == 0 or step == args.vae_steps - 1:
            with torch.no_grad():
                post = vae.encode(held).latent_dist
                rec = vae.decode(post.mean).sample
                p = psnr(rec.clamp(-1, 1), held)
            log(f"vae step {step} loss {loss.item():.5f} kl {kl.item():.1f} held-out psnr {p:.2f} dB "
                f"({time.time()-t0:.0f}s)")
    vae.eval()
    return vae


def finetune_decoder(vae, x, args):
    """Stage 1b: more training for the decoder alone, the encoder frozen. The latent space the UNet
    learns stays exactly the encoder's, while the decoder, which alone sets how faithfully an
    unedited background comes back, gets a longer, lower learning-rate schedule."""
    dev = args.device
    frozen = list(vae.encoder.parameters()) + list(vae.quant_conv.parameters())
    for p in frozen:
        p.requires_grad_(False)
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.decoder_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 4)
    held = x[-256:].to(dev)
    train = x[:-256]
    t0 = time.time()
    vae.train()
    for step in range(args.decoder_steps):
        for pg in opt.param_groups:
            pg["lr"] = cosine_lr(step, args.decoder_steps, args.decoder_lr, 50)
        idx = torch.randint(0, train.shape[0], (args.decoder_batch,), generator=g)
        b = train[idx].to(dev)
        with torch.no_grad():
            post = vae.encode(b).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g).to(dev)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, b) + 0.5 * F.l1_loss(rec, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.log_every == 0 or step == args.decoder_steps - 1:
            with torch.no_grad():
                rec = vae.decode(vae.encode(held).latent_dist.mean).sample
                p = psnr(rec.clamp(-1, 1), held)
            log(f"decoder step {step} loss {loss.item():.5f} held-out psnr {p:.2f} dB ({time.time()-t0:.0f}s)")
    for p in frozen:
        p.requires_grad_(True)
    vae.eval()
    return vae


@torch.no_grad()
def encode_all(vae, x, dev):
    means, stds = [], []
    for i in range(0, x.shape[0], 256):
        post = vae.encode(x[i:i + 256].to(dev)).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    return torch.cat(means), torch.cat(stds)


def tokenize(tokenizer, captions):
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


class Ema:
    def __init__(self, modules, decay):
        self.params = [p for m in modules for p in m.parameters()]
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step):
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_mul_(self.shadow, d)
        torch._foreach_add_(self.shadow, [p.detach() for p in self.params], alpha=1 - d)

    @torch.no_grad()
    def copy_to_params(self):
        for s, p in zip(self.shadow, self.params):
            p.copy_(s)


def alphas_cumprod():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


@torch.no_grad()
def sample(unet, text_encoder, tokenizer, vae, scale, captions, latent_size, dev, steps=25, guidance=5.0, seed=0):
    """Plain DDIM sampling (eta 0, leading spacing), for the progress pictures."""
    ac = alphas_cumprod()
    g = torch.Generator().manual_seed(seed)
    n = len(captions)
    cond = text_encoder(tokenize(tokenizer, captions).to(dev))[0]
    unc = text_encoder(tokenize(tokenizer, [""] * n).to(dev))[0]
    z = torch.randn((n, 4, latent_size, latent_size), generator=g).to(dev)
    ts = list(range(0, 1000, 1000 // steps))[::-1]
    ts = [t + 1 for t in ts]
    for i, t in enumerate(ts):
        e = unet(torch.cat([z, z]), t, encoder_hidden_states=torch.cat([unc, cond])).sample
        eu, ec = e.chunk(2)
        e = eu + guidance * (ec - eu)
        a = ac[t].item()
        a_prev = ac[ts[i + 1]].item() if i + 1 < len(ts) else ac[0].item()
        x0 = (z - math.sqrt(1 - a) * e) / math.sqrt(a)
        z = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * e
    return vae.decode(z / scale).sample.clamp(-1, 1).cpu()


def save_grid(imgs, path, cols=8):
    imgs = ((imgs + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    n, h, w, _ = imgs.shape
    rows = (n + cols - 1) // cols
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i in range(n):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = imgs[i]
    Image.fromarray(grid).resize((cols * w * 3, rows * h * 3), Image.NEAREST).save(path)


def unet_batch(lat_mean, lat_std, ids, empty, ac, scale, batch, min_snr, g, cells=None, object_weight=0.0):
    """One training batch, drawn on the CPU from generator `g` (the same draws on every device):
    noised latents, prompt tokens (10% dropped to the empty prompt, for classifier-free guidance),
    timesteps, the noise to predict, each sample's loss weight and each latent cell's weight
    (1, or 1 + `object_weight` on the cells `cells` marks as object)."""
    n = lat_mean.shape[0]
    idx = torch.randint(0, n, (batch,), generator=g)
    z0 = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g)) * scale
    tok = ids[idx].clone()
    drop = torch.rand(batch, generator=g) < 0.1
    tok[drop] = empty
    t = torch.randint(0, 1000, (batch,), generator=g)
    eps = torch.randn(z0.shape, generator=g)
    a = ac[t].view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
    # Min-SNR-gamma weighting (Hang et al. 2023): the low-noise steps, which only polish
    # detail, stop dominating the gradient, and the model learns the prompt's layout sooner.
    snr = a.view(-1) / (1 - a.view(-1))
    weight = snr.clamp(max=min_snr) / snr if min_snr > 0 else torch.ones_like(snr)
    b = dict(zt=zt, tok=tok, t=t, eps=eps, weight=weight)
    if cells is not None:
        cell_weight = 1.0 + object_weight * cells[idx]
        # Normalised per sample, so a scene's loss keeps its scale whatever its objects' area.
        b["cell_weight"] = cell_weight / cell_weight.mean(dim=(1, 2, 3), keepdim=True)
    return b


def weighted_loss(unet, text_encoder, b, precision="fp32"):
    # bf16: the forward's matrix products and convolutions in bfloat16 (autocast; the weights, the
    # optimizer and the loss stay f32). The autocast cache stays off: inside a captured CUDA graph
    # the cast copies must be remade by every replay.
    with torch.autocast(b["zt"].device.type, dtype=torch.bfloat16, enabled=precision == "bf16",
                        cache_enabled=False):
        emb = text_encoder(b["tok"])[0]
        pred = unet(b["zt"], b["t"], encoder_hidden_states=emb).sample
    err = (pred.float() - b["eps"]) ** 2
    if "cell_weight" in b:
        err = err * b["cell_weight"]
    return err.mean(dim=(1, 2, 3)).mul(b["weight"]).mean()


def gather_embedding(module):
    """Replaces an nn.Embedding's lookup by index_select: the same values, but its backward is an
    index_add, which a CUDA graph can capture (embedding's own backward sorts the indices and may
    read their count back to the host)."""
    module.forward = lambda ids: torch.index_select(module.weight, 0, ids.reshape(-1)).view(*ids.shape, -1)


def graphed_optimizer(unet, text_encoder, params, lr, dev):
    """Readies the text encoder and an AdamW for capture in a CUDA graph (GraphedStep): embedding
    lookups as gathers, the learning rate a device tensor the schedule fills in place."""
    # By name: transformers releases nest CLIPTextModel's modules differently.
    for name, module in text_encoder.named_modules():
        if name.endswith("token_embedding") or name.endswith("position_embedding"):
            gather_embedding(module)
    return torch.optim.AdamW(params, lr=torch.tensor(lr, device=dev), weight_decay=0.01, capturable=True,
                             foreach=True)


class GraphedStep:
    """The whole training step (text encoder and UNet forward, backward, gradient clipping, AdamW)
    captured once as a CUDA graph and replayed: this model's kernels are so small that launching
    them one by one from Python, not the GPU, would set the pace. Inputs are copied into static
    tensors before each replay; the learning rate is a device tensor the step reads."""

    def __init__(self, unet, text_encoder, params, opt, first, precision="fp32"):
        self.unet, self.text_encoder, self.params, self.opt = unet, text_encoder, params, opt
        self.precision = precision
        self.static = {k: v.clone() for k, v in first.items()}
        self.graph = None
        self.loss = None

    def _step(self):
        loss = weighted_loss(self.unet, self.text_encoder, self.static, self.precision)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return loss

    def run(self, batch, warmup):
        for k, v in batch.items():
            self.static[k].copy_(v)
        if warmup:
            # Eager steps on a side stream first (as PyTorch's whole-network capture recipe asks):
            # they are real training steps on real batches, and create AdamW's state.
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                self.opt.zero_grad(set_to_none=True)
                self.loss = self._step()
            torch.cuda.current_stream().wait_stream(s)
            return self.loss
        if self.graph is None:
            self.opt.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss = self._step()
        self.graph.replay()
        return self.loss


def train_unet(lat_mean, lat_std, captions, scale, vae, tokenizer, args, cells=None):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    dev = args.device
    torch.manual_seed(args.seed + 2)
    if args.unet_from:
        # Continue a trained model (its EMA weights; stored f16 matrices come back as f32).
        text_encoder = CLIPTextModel.from_pretrained(os.path.join(args.unet_from, "text_encoder")).float()
        unet = UNet2DConditionModel.from_pretrained(os.path.join(args.unet_from, "unet")).float()
        log(f"continuing {args.unet_from}")
    else:
        text_encoder = CLIPTextModel(text_config(args.text_width))
        unet = UNet2DConditionModel(**unet_config(lat_mean.shape[-1], args.text_width, args.unet_channels))
    log(f"unet: {sum(p.numel() for p in unet.parameters())/1e6:.2f}M parameters, text encoder: "
        f"{sum(p.numel() for p in text_encoder.parameters())/1e6:.2f}M, {args.precision}")
    text_encoder.to(dev), unet.to(dev)
    ids = tokenize(tokenizer, captions)
    empty = tokenize(tokenizer, [""])[0]
    params = list(unet.parameters()) + list(text_encoder.parameters())
    graphed = args.cuda_graph and dev.type == "cuda"
    if graphed:
        opt = graphed_optimizer(unet, text_encoder, params, args.unet_lr, dev)
    else:
        opt = torch.optim.AdamW(params, lr=args.unet_lr, weight_decay=0.01)
    ema = Ema([unet, text_encoder], args.ema)
    ac = alphas_cumprod()
    g = torch.Generator().manual_seed(args.seed + 3)
    t0 = time.time()
    avg = None
    probe = captions[:16]
    stepper = None
    total = args.unet_steps
    # With a deadline, the step count is fitted once, from the pace between two early steps; both
    # fall in the warm-up, whose learning rates do not depend on the count, so the run is exactly
    # the one `--unet-steps <fitted count>` gives (the log says the count).
    pace_from, pace_to = min(10, args.unet_warmup // 2), min(40, args.unet_warmup)
    step = 0
    while step < total:
        if args.deadline and step in (pace_from, pace_to):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if step == pace_from:
                paced = time.time()
            else:
                per_step = (time.time() - paced) / (pace_to - pace_from)
                # the final save and samples took under 10 s on an H200 (2026-11-28); 30 s leaves room for a
                # pace that drifts a little after the warm-up
                left = args.deadline - (time.time() - START) - 30
                fit = step + int(left / per_step)
                if fit < total:
                    total = max(pace_to + 1, fit // 50 * 50)
                if args.share_steps:
                    total = share_step_count(args.share_steps, total)
                log(f"unet: {1000 * per_step:.0f} ms/step, {left:.0f}s left before the deadline: "
                    f"{total} steps (reproduce with --unet-steps {total})")
        lr_now = cosine_lr(step, total, args.unet_lr, args.unet_warmup)
        b = unet_batch(lat_mean, lat_std, ids, empty, ac, scale, args.unet_batch, args.min_snr, g,
                       cells, args.object_weight)
        b = {k: v.to(dev) for k, v in b.items()}
        if graphed:
            opt.param_groups[0]["lr"].fill_(lr_now)
            if stepper is None:
                stepper = GraphedStep(unet, text_encoder, params, opt, b, args.precision)
            loss = stepper.run(b, warmup=step < 3).detach()
        else:
            for pg in opt.param_groups:
                pg["lr"] = lr_now
            loss = weighted_loss(unet, text_encoder, b, args.precision)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            loss = loss.detach()
        ema.update(step)
        # A running mean kept on the device: reading the loss back every step would stall the GPU.
        avg = loss.clone() if avg is None else avg.mul_(0.98).add_(loss, alpha=0.02)
        if step % args.log_every == 0 or step == total - 1:
            log(f"unet step {step} loss {avg.item():.4f} lr {lr_now:.2e} ({time.time()-t0:.0f}s)")
            if not math.isfinite(avg.item()):
                # A diverged run must fail (gpu_train_pair.sh then retrains in f32), not save NaNs.
                sys.exit(f"unet loss is not finite at step {step} ({args.precision}): stopped")
        snap = args.samples and (step % args.sample_every == 0 and step > 0 or step == total - 1)
        save = args.save_every and step % args.save_every == 0 and step > 0
        if snap or save:
            # Both use the EMA weights, then training resumes from the raw ones (copied in place:
            # a captured graph holds the parameters' addresses).
            backup = [p.detach().clone() for p in ema.params]
            ema.copy_to_params()
            unet.eval(), text_encoder.eval()
            if snap:
                imgs = sample(unet, text_encoder, tokenizer, vae, scale, probe, lat_mean.shape[-1], dev)
                save_grid(imgs, os.path.join(args.samples, f"samples_{step:06d}.png"))
                with open(os.path.join(args.samples, "captions.txt"), "w") as f:
                    f.write("\n".join(probe) + "\n")
            if save:
                save_model(args.out, vae, unet, text_encoder, args.tokenizer, scale, note=f"checkpoint at step {step}")
            with torch.no_grad():
                for b_, p in zip(backup, ema.params):
                    p.copy_(b_)
            unet.train(), text_encoder.train()
        step += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    log(f"unet: {total} steps in {time.time()-t0:.0f}s "
        f"({1000*(time.time()-t0)/max(1, total):.1f} ms/step)")
    ema.copy_to_params()
    unet.eval(), text_encoder.eval()
    return unet, text_encoder


def halve_large(module, min_numel):
    """Stores tensors of at least `min_numel` values as f16 (the token embedding, the UNet's
    weight matrices): the Rust loader converts them back to the compute dtype. Small tensors
    (norms, biases) stay f32."""
    return {k: (v.half() if v.numel() >= min_numel else v).cpu().contiguous() for k, v in module.state_dict().items()}


def save_model(out, vae, unet, text_encoder, tokenizer_dir, scale, note="final"):
    from safetensors.torch import save_file

    # CPU copies are saved: the live modules stay where they are (a captured CUDA graph holds the
    # addresses of their parameters).
    vae, unet, text_encoder = (copy.deepcopy(m).cpu() for m in (vae, unet, text_encoder))
    os.makedirs(out, exist_ok=True)
    for sub in ["unet", "text_encoder", "tokenizer", "scheduler"]:
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    vae.register_to_config(scaling_factor=float(scale))
    vae.save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    unet.save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    # The UNet's weight matrices in f16 (the loader converts them back to the compute dtype):
    # half the bytes, so the whole model stays under the repository's 25 MB budget.
    save_file(halve_large(unet, 1024), os.path.join(out, "unet", "diffusion_pytorch_model.safetensors"),
              metadata={"format": "pt"})
    te_dir = os.path.join(out, "text_encoder")
    text_encoder.save_pretrained(te_dir, safe_serialization=True)
    # Re-save the text encoder with its 49408 x D token embedding in f16 (3 MB saved).
    sd = halve_large(text_encoder, 1_000_000)
    save_file(sd, os.path.join(te_dir, "model.safetensors"), metadata={"format": "pt"})
    tok_out = os.path.join(out, "tokenizer")
    os.makedirs(tok_out)
    for name in ["vocab.json", "merges.txt", "tokenizer_config.json"]:
        shutil.copy(os.path.join(tokenizer_dir, name), tok_out)
    os.makedirs(os.path.join(out, "scheduler"))
    sched = {
        "_class_name": "DDIMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
    }
    json.dump(sched, open(os.path.join(out, "scheduler", "scheduler_config.json"), "w"), indent=2)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    json.dump(index, open(os.path.join(out, "model_index.json"), "w"), indent=2)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    log(f"saved {out} ({note}): {total/1e6:.1f} MB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder written by `diffedit scenes`")
    ap.add_argument("--out", default="models/diffedit-shapes")
    ap.add_argument("--tokenizer", default="tests/fixtures/models/tiny-sd/tokenizer",
                    help="the real CLIP tokenizer files (vocab.json, merges.txt)")
    ap.add_argument("--samples", default=None, help="folder for progress pictures")
    ap.add_argument("--sample-every", type=int, default=2500)
    ap.add_argument("--save-every", type=int, default=1000, help="write OUT every N UNet steps (0: only at the end)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N scenes")
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-batch", type=int, default=64)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-kl", type=float, default=1e-6)
    ap.add_argument("--vae-channels", type=lambda v: [int(c) for c in v.split(",")], default=[32, 64])
    ap.add_argument("--vae-from", default=None, help="reuse a trained VAE folder instead of stage 1")
    ap.add_argument("--decoder-steps", type=int, default=1500, help="stage 1b: decoder-only steps (0: none)")
    ap.add_argument("--decoder-batch", type=int, default=32)
    ap.add_argument("--decoder-lr", type=float, default=3e-4)
    ap.add_argument("--unet-steps", type=int, default=2750)
    ap.add_argument("--unet-channels", type=lambda v: [int(c) for c in v.split(",")], default=[64, 128])
    ap.add_argument("--min-snr", type=float, default=5.0, help="Min-SNR-gamma loss weighting (0: plain MSE)")
    ap.add_argument("--unet-batch", type=int, default=512)
    ap.add_argument("--unet-warmup", type=int, default=200, help="learning-rate warm-up steps")
    ap.add_argument("--deadline", type=float, default=0,
                    help="seconds from the start: fewer UNet steps (a multiple of 50) if --unet-steps would not "
                         "finish by then, chosen early in the warm-up (0: none)")
    ap.add_argument("--share-steps", default=None, metavar="FILE",
                    help="with --deadline: runs side by side take one step count, the first fitted one, "
                         "through FILE (so they stay the same run)")
    ap.add_argument("--unet-from", default=None,
                    help="continue the text encoder and UNet of this model folder (with --vae-from FOLDER/vae "
                         "--decoder-steps 0: stage 2 only)")
    ap.add_argument("--object-weight", type=float, default=0.0,
                    help="extra loss weight on latent cells that hold an object (0: plain MSE over the latent)")
    ap.add_argument("--unet-lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--text-width", type=int, default=64)
    ap.add_argument("--vae-only", action="store_true", help="stop after stage 1 (saves OUT/vae)")
    ap.add_argument("--device", default="auto", help="auto (a CUDA GPU when there is one), cpu or cuda")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="UNet stage: bf16 runs the text encoder's and UNet's forward under bfloat16 autocast "
                         "(f32 weights, optimizer and loss)")
    ap.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false",
                    help="on a GPU, launch the UNet step's kernels one by one instead of replaying a CUDA graph")
    args = ap.parse_args()
    if args.share_steps and not args.deadline:
        ap.error("--share-steps shares the count that --deadline fits: give --deadline too")
    if args.deadline and args.unet_warmup < 2:
        ap.error("--deadline fits the step count inside the warm-up: it needs --unet-warmup 2 or more")

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if args.device.type == "cuda":
        # TF32 tensor cores: 20% faster steps on an H200 (measured); the weights stay f32.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        log(f"device: {torch.cuda.get_device_name(args.device)}")
    else:
        # The graphed GPU step needs ops (index_add) that deterministic mode would alert on; on
        # the CPU every op here is deterministic and the same command gives the same weights.
        torch.use_deterministic_algorithms(True, warn_only=True)
    from transformers import CLIPTokenizer
    from diffusers import AutoencoderKL

    tokenizer = CLIPTokenizer.from_pretrained(args.tokenizer)
    if args.samples:
        os.makedirs(args.samples, exist_ok=True)
    t0 = time.time()
    x, captions, rows = load_dataset(args.data, args.limit)
    log(f"{x.shape[0]} scenes of {x.shape[-1]}x{x.shape[-1]} loaded ({time.time()-t0:.0f}s)")

    if args.vae_from:
        vae = AutoencoderKL.from_pretrained(args.vae_from).to(args.device)
    else:
        vae = train_vae(x, args)
    if args.decoder_steps > 0:
        vae = finetune_decoder(vae, x, args)
    # Saved at once, so a later run can skip stage 1 with --vae-from OUT/vae.
    os.makedirs(args.out, exist_ok=True)
    copy.deepcopy(vae).cpu().save_pretrained(os.path.join(args.out, "vae"), safe_serialization=True)
    if args.vae_only:
        return
    mean, std = encode_all(vae, x, args.device)
    scale = 1.0 / mean.std().item()
    if args.unet_from:
        # The continued UNet learned the latents at its own model's scale.
        scale = vae.config.scaling_factor
    log(f"latents {tuple(mean.shape[1:])}, std {mean.std().item():.4f} -> scaling_factor {scale:.5f}, "
        f"posterior std mean {std.mean().item():.2e}")
    cells = None
    if args.object_weight > 0:
        cells = object_cells(args.data, rows, x.shape[-1] // mean.shape[-1])
        log(f"object cells: {cells.mean().item():.3f} of the latent, weighted {1 + args.object_weight:g}x")
    unet, text_encoder = train_unet(mean, std, captions, scale, vae, tokenizer, args, cells)
    save_model(args.out, vae, unet, text_encoder, args.tokenizer, scale)
    log(f"total {time.time()-t0:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
