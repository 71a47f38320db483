//! Benchmarks of the full-size Stable Diffusion 1.5 components with random weights: nothing is
//! downloaded, the architectures come from embedded copies of the SD 1.5 `config.json` files.
//!
//! Used by `diffedit bench ...` (see `cli/bench.rs`); `tools/bench_torch.py` times the same shapes
//! with PyTorch and `tools/bench_compare.sh` runs both and prints the ratios.
//!
//! FLOPs are counted analytically (2 per multiply-add) for convolutions, linear layers and the two
//! attention products, as PyTorch's `FlopCounterMode` does; norms and activations are not counted.

use std::time::Instant;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::kernels;
use crate::models::clip::{ClipTextConfig, ClipTextModel};
use crate::models::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig};

/// `unet/config.json` of runwayml/stable-diffusion-v1-5.
pub const SD15_UNET_CONFIG: &str = r#"{
  "_class_name": "UNet2DConditionModel",
  "act_fn": "silu",
  "attention_head_dim": 8,
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "out_channels": 4,
  "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
}"#;

/// `vae/config.json` of runwayml/stable-diffusion-v1-5.
pub const SD15_VAE_CONFIG: &str = r#"{
  "_class_name": "AutoencoderKL",
  "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3,
  "latent_channels": 4,
  "layers_per_block": 2,
  "norm_num_groups": 32,
  "out_channels": 3,
  "sample_size": 512,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
}"#;

/// `text_encoder/config.json` of runwayml/stable-diffusion-v1-5 (CLIP ViT-L/14's text tower).
pub const SD15_CLIP_CONFIG: &str = r#"{
  "architectures": ["CLIPTextModel"],
  "attention_dropout": 0.0,
  "bos_token_id": 0,
  "dropout": 0.0,
  "eos_token_id": 2,
  "hidden_act": "quick_gelu",
  "hidden_size": 768,
  "initializer_factor": 1.0,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "layer_norm_eps": 1e-05,
  "max_position_embeddings": 77,
  "model_type": "clip_text_model",
  "num_attention_heads": 12,
  "num_hidden_layers": 12,
  "pad_token_id": 1,
  "projection_dim": 768,
  "vocab_size": 49408
}"#;

pub fn sd15_unet_config() -> crate::Result<UNet2DConditionConfig> {
    crate::models::config::parse_config(SD15_UNET_CONFIG, "sd15/unet/config.json".as_ref())
}
pub fn sd15_vae_config() -> crate::Result<AutoencoderKLConfig> {
    crate::models::config::parse_config(SD15_VAE_CONFIG, "sd15/vae/config.json".as_ref())
}
pub fn sd15_clip_config() -> crate::Result<ClipTextConfig> {
    crate::models::config::parse_config(SD15_CLIP_CONFIG, "sd15/text_encoder/config.json".as_ref())
}

/// A `VarBuilder` backend that draws every tensor it is asked for: constants stay constants
/// (norm scales 1, biases 0), everything else is uniform with the variance the layer's init hint
/// asks for. Values only need to be finite and of a sane scale: a benchmark must not run into
/// denormals or NaNs, which would change the timings.
pub struct RandomWeights {
    seed: u64,
}

impl RandomWeights {
    pub fn new(seed: u64) -> Self {
        Self { seed }
    }

    pub fn var_builder(seed: u64, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(Self::new(seed)), dtype, device.clone())
    }
}

/// splitmix64: cheap, stateless per index, so generation parallelises trivially.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        use rayon::prelude::*;
        let n = s.elem_count();
        let fan_in = s.dims().iter().skip(1).product::<usize>().max(1) as f64;
        // (centre, half-width) of a uniform distribution with the hinted mean and variance.
        let (centre, half) = match h {
            Init::Const(c) => return Tensor::full(c as f32, s, dev)?.to_dtype(dtype),
            Init::Uniform { lo, up } => ((lo + up) / 2.0, (up - lo) / 2.0),
            Init::Randn { mean, stdev } => (mean, stdev * 3f64.sqrt()),
            // PyTorch's default for Linear and Conv2d weights: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            Init::Kaiming { .. } => (0.0, 1.0 / fan_in.sqrt()),
        };
        let base = splitmix(self.seed ^ name_hash(name));
        let mut data = vec![0f32; n];
        data.par_chunks_mut(1 << 16).enumerate().for_each(|(c, chunk)| {
            let mut state = splitmix(base ^ (c as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
            for v in chunk.iter_mut() {
                state = splitmix(state);
                let u = (state >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                *v = (centre + half * (2.0 * u as f64 - 1.0)) as f32;
            }
        });
        Tensor::from_vec(data, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights: `{name}` requested without a shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        // Answering "no" for every optional tensor picks the plain (unprefixed) layouts.
        false
    }
}

// ---------------------------------------------------------------------------------------------
// FLOP counts

fn conv_flops(b: usize, cin: usize, cout: usize, k: usize, oh: usize, ow: usize) -> f64 {
    2.0 * (b * cin * cout * k * k * oh * ow) as f64
}
fn linear_flops(tokens: usize, din: usize, dout: usize) -> f64 {
    2.0 * (tokens * din * dout) as f64
}
/// Q K^T plus P V over all heads: `2 * lq * lk * c` each.
fn attention_flops(b: usize, lq: usize, lk: usize, c: usize) -> f64 {
    4.0 * (b * lq * lk * c) as f64
}

fn resnet_flops(b: usize, cin: usize, cout: usize, h: usize, w: usize, temb: Option<usize>) -> f64 {
    let mut f = conv_flops(b, cin, cout, 3, h, w) + conv_flops(b, cout, cout, 3, h, w);
    if cin != cout {
        f += conv_flops(b, cin, cout, 1, h, w);
    }
    if let Some(t) = temb {
        f += linear_flops(1, t, cout);
    }
    f
}

/// One `Transformer2DModel` with one `BasicTransformerBlock` (GEGLU x4) over `h*w` tokens.
fn transformer_flops(b: usize, c: usize, h: usize, w: usize, ctx_len: usize, ctx_dim: usize) -> f64 {
    let l = b * h * w;
    let proj = 2.0 * linear_flops(l, c, c);
    let attn1 = 4.0 * linear_flops(l, c, c) + attention_flops(b, h * w, h * w, c);
    let attn2 = 2.0 * linear_flops(l, c, c)
        + 2.0 * linear_flops(b * ctx_len, ctx_dim, c)
        + attention_flops(b, h * w, ctx_len, c);
    let ff = linear_flops(l, c, 8 * c) + linear_flops(l, 4 * c, c);
    proj + attn1 + attn2 + ff
}

/// FLOPs of one SD 1.x-style UNet forward (uniform `layers_per_block`, one transformer layer per
/// attention block, a cross-attention mid block), batch `b`, latents `h x w`, `ctx_len` text tokens.
pub fn unet_flops(cfg: &UNet2DConditionConfig, b: usize, h: usize, w: usize, ctx_len: usize) -> f64 {
    let ch = &cfg.block_out_channels;
    let n = ch.len();
    let layers = cfg.layers_per_block.get(0, n, "layers_per_block").unwrap_or(2);
    let ctx_dim = cfg.cross_attention_dim.get(0, n, "cross_attention_dim").unwrap_or(768);
    let temb = Some(4 * ch[0]);
    let attn = |t: &str| t.contains("CrossAttn");
    let mut f = linear_flops(1, ch[0], 4 * ch[0]) + linear_flops(1, 4 * ch[0], 4 * ch[0]);
    f += conv_flops(b, cfg.in_channels, ch[0], cfg.conv_in_kernel, h, w);
    let (mut rh, mut rw) = (h, w);
    let mut sizes = vec![(rh, rw)];
    for i in 0..n {
        let cin = if i == 0 { ch[0] } else { ch[i - 1] };
        for j in 0..layers {
            f += resnet_flops(b, if j == 0 { cin } else { ch[i] }, ch[i], rh, rw, temb);
            if attn(&cfg.down_block_types[i]) {
                f += transformer_flops(b, ch[i], rh, rw, ctx_len, ctx_dim);
            }
        }
        if i + 1 < n {
            let (oh, ow) = (rh.div_ceil(2), rw.div_ceil(2));
            f += conv_flops(b, ch[i], ch[i], 3, oh, ow);
            rh = oh;
            rw = ow;
            sizes.push((rh, rw));
        }
    }
    let last = ch[n - 1];
    if cfg.mid_block_type.is_some() {
        f += 2.0 * resnet_flops(b, last, last, rh, rw, temb) + transformer_flops(b, last, rh, rw, ctx_len, ctx_dim);
    }
    sizes.pop();
    for i in 0..n {
        let rev = n - 1 - i;
        let prev_out = if i == 0 { last } else { ch[rev + 1] };
        let skip_in = ch[rev.saturating_sub(1)];
        for j in 0..=layers {
            let rin = if j == 0 { prev_out } else { ch[rev] };
            let skip = if j == layers { skip_in } else { ch[rev] };
            f += resnet_flops(b, rin + skip, ch[rev], rh, rw, temb);
            if attn(&cfg.up_block_types[i]) {
                f += transformer_flops(b, ch[rev], rh, rw, ctx_len, ctx_dim);
            }
        }
        if i + 1 < n {
            let (nh, nw) = sizes.pop().unwrap_or((2 * rh, 2 * rw));
            f += conv_flops(b, ch[rev], ch[rev], 3, nh, nw);
            rh = nh;
            rw = nw;
        }
    }
    f + conv_flops(b, ch[0], cfg.out_channels, cfg.conv_out_kernel, h, w)
}

fn vae_mid_flops(b: usize, c: usize, h: usize, w: usize, attention: bool) -> f64 {
    let mut f = 2.0 * resnet_flops(b, c, c, h, w, None);
    if attention {
        f += 4.0 * linear_flops(b * h * w, c, c) + attention_flops(b, h * w, h * w, c);
    }
    f
}

/// FLOPs of the VAE encoder (with `quant_conv`) on a `b x C x h x w` image.
pub fn vae_encode_flops(cfg: &AutoencoderKLConfig, b: usize, h: usize, w: usize) -> f64 {
    let ch = &cfg.block_out_channels;
    let n = ch.len();
    let mut f = conv_flops(b, cfg.in_channels, ch[0], 3, h, w);
    let (mut rh, mut rw) = (h, w);
    for i in 0..n {
        let cin = if i == 0 { ch[0] } else { ch[i - 1] };
        for j in 0..cfg.layers_per_block {
            f += resnet_flops(b, if j == 0 { cin } else { ch[i] }, ch[i], rh, rw, None);
        }
        if i + 1 < n {
            // padding (0, 1, 0, 1) then a 3x3 stride-2 convolution
            rh = (rh + 1 - 3) / 2 + 1;
            rw = (rw + 1 - 3) / 2 + 1;
            f += conv_flops(b, ch[i], ch[i], 3, rh, rw);
        }
    }
    let last = ch[n - 1];
    f += vae_mid_flops(b, last, rh, rw, cfg.mid_block_add_attention);
    let lat2 = 2 * cfg.latent_channels;
    f += conv_flops(b, last, lat2, 3, rh, rw);
    if cfg.use_quant_conv {
        f += conv_flops(b, lat2, lat2, 1, rh, rw);
    }
    f
}

/// FLOPs of the VAE decoder (with `post_quant_conv`) from `b x latent x h x w` latents.
pub fn vae_decode_flops(cfg: &AutoencoderKLConfig, b: usize, h: usize, w: usize) -> f64 {
    let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
    let n = rev.len();
    let lat = cfg.latent_channels;
    let mut f = if cfg.use_post_quant_conv { conv_flops(b, lat, lat, 1, h, w) } else { 0.0 };
    f += conv_flops(b, lat, rev[0], 3, h, w);
    let (mut rh, mut rw) = (h, w);
    f += vae_mid_flops(b, rev[0], rh, rw, cfg.mid_block_add_attention);
    for i in 0..n {
        let cin = if i == 0 { rev[0] } else { rev[i - 1] };
        for j in 0..=cfg.layers_per_block {
            f += resnet_flops(b, if j == 0 { cin } else { rev[i] }, rev[i], rh, rw, None);
        }
        if i + 1 < n {
            rh *= 2;
            rw *= 2;
            f += conv_flops(b, rev[i], rev[i], 3, rh, rw);
        }
    }
    f + conv_flops(b, rev[n - 1], cfg.out_channels, 3, rh, rw)
}

/// FLOPs of the CLIP text encoder on `b x l` tokens.
pub fn clip_flops(cfg: &ClipTextConfig, b: usize, l: usize) -> f64 {
    let d = cfg.hidden_size;
    let t = b * l;
    let per_layer =
        4.0 * linear_flops(t, d, d) + attention_flops(b, l, l, d) + 2.0 * linear_flops(t, d, cfg.intermediate_size);
    cfg.num_hidden_layers as f64 * per_layer
}

// ---------------------------------------------------------------------------------------------
// Timing

/// Peak resident set size of this process so far (VmHWM), in MiB; 0 where /proc is unavailable.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Timing {
    pub what: String,
    pub dtype: String,
    /// Whether the matrix products ran on the CPU's tile units (`--dtype bf16` on a CPU with AMX:
    /// bf16 products, f32 tensors between them) rather than in the dtype's own arithmetic.
    pub tile_units: bool,
    /// What ran for `dtype`: `precision`, `isa` and a `fallback` line (kernels::ComputeInfo).
    #[serde(flatten)]
    pub compute: kernels::ComputeInfo,
    pub shape: Vec<usize>,
    pub warmup_s: f64,
    pub times_s: Vec<f64>,
    pub median_s: f64,
    /// Process CPU time of each timed run, all threads together.
    pub cpu_times_s: Vec<f64>,
    pub gflop: f64,
    pub gflops_per_s: f64,
    pub peak_rss_mb: f64,
    pub build_s: f64,
    pub threads: usize,
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => 0.5 * (s[n / 2 - 1] + s[n / 2]),
    }
}

/// CPU time (user + system) this process has used so far, in seconds; 0 where unavailable.
pub fn cpu_time_s() -> f64 {
    #[cfg(unix)]
    {
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes the struct it is given.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            return tv(ru.ru_utime) + tv(ru.ru_stime);
        }
    }
    0.0
}

/// Wall and CPU times of timed runs.
pub struct RunTimes {
    pub warm: f64,
    pub times: Vec<f64>,
    /// Process CPU time of each run (all threads): on a machine shared with other work it moves
    /// far less than the wall time, so comparisons made there can use it.
    pub cpu_times: Vec<f64>,
}

/// Runs `f` once to warm up, then `runs` times; the device is synchronised after each call.
pub fn time_runs<T>(device: &Device, runs: usize, mut f: impl FnMut() -> Result<T>) -> Result<RunTimes> {
    let t0 = Instant::now();
    f()?;
    device.synchronize()?;
    let warm = t0.elapsed().as_secs_f64();
    let (mut times, mut cpu_times) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        let (t0, c0) = (Instant::now(), cpu_time_s());
        f()?;
        device.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
        cpu_times.push(cpu_time_s() - c0);
    }
    Ok(RunTimes { warm, times, cpu_times })
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

#[allow(clippy::too_many_arguments)]
fn timing(
    what: &str,
    dtype: DType,
    compute: kernels::ComputeInfo,
    shape: Vec<usize>,
    flops: f64,
    build_s: f64,
    runs: RunTimes,
) -> Timing {
    let RunTimes { warm, times, cpu_times } = runs;
    let med = median(&times);
    Timing {
        what: what.into(),
        dtype: format!("{dtype:?}").to_lowercase(),
        tile_units: compute.isa == kernels::Isa::Amx,
        compute,
        shape,
        warmup_s: round(warm, 4),
        times_s: times.iter().map(|t| round(*t, 4)).collect(),
        median_s: round(med, 4),
        cpu_times_s: cpu_times.iter().map(|t| round(*t, 4)).collect(),
        gflop: round(flops / 1e9, 2),
        gflops_per_s: round(flops / 1e9 / med, 2),
        peak_rss_mb: round(peak_rss_mb(), 1),
        build_s: round(build_s, 2),
        threads: rayon::current_num_threads(),
    }
}

/// UNet forward on random `[batch, 4, h, w]` latents with a `[batch, 77, 768]` text context.
pub fn bench_unet(
    batch: usize,
    h: usize,
    w: usize,
    dtype: DType,
    device: &Device,
    runs: usize,
) -> crate::Result<Timing> {
    let cfg = sd15_unet_config()?;
    let compute = kernels::compute_info(device, dtype);
    let (tensors, matmul) = (compute.tensors, compute.matmul);
    let t0 = Instant::now();
    let unet = kernels::with_matmul_precision(matmul, || {
        UNet2DConditionModel::new(RandomWeights::var_builder(0, tensors, device), &cfg)
    })?;
    let build_s = t0.elapsed().as_secs_f64();
    let ctx_dim = cfg.cross_attention_dim.get(0, cfg.block_out_channels.len(), "cross_attention_dim").unwrap_or(768);
    let x = Tensor::randn(0f32, 1.0, (batch, cfg.in_channels, h, w), device)?.to_dtype(tensors)?;
    let ctx = Tensor::randn(0f32, 1.0, (batch, 77, ctx_dim), device)?.to_dtype(tensors)?;
    let runs = time_runs(device, runs, || unet.forward(&x, 500.0, &ctx))?;
    let flops = unet_flops(&cfg, batch, h, w, 77);
    Ok(timing("unet", dtype, compute, vec![batch, cfg.in_channels, h, w], flops, build_s, runs))
}

/// VAE decode from `[batch, 4, h, w]` latents, or encode of a `[batch, 3, 8h, 8w]` image.
pub fn bench_vae(
    encode: bool,
    batch: usize,
    h: usize,
    w: usize,
    dtype: DType,
    device: &Device,
    runs: usize,
) -> crate::Result<Timing> {
    let cfg = sd15_vae_config()?;
    let compute = kernels::compute_info(device, dtype);
    let (tensors, matmul) = (compute.tensors, compute.matmul);
    let t0 = Instant::now();
    let vae = kernels::with_matmul_precision(matmul, || {
        AutoencoderKL::new(RandomWeights::var_builder(0, tensors, device), &cfg)
    })?;
    let build_s = t0.elapsed().as_secs_f64();
    if encode {
        let f = cfg.downscale_factor();
        let (ih, iw) = (h * f, w * f);
        let x = Tensor::rand(-1f32, 1.0, (batch, cfg.in_channels, ih, iw), device)?.to_dtype(tensors)?;
        let runs = time_runs(device, runs, || vae.encode(&x).map(|d| d.mean))?;
        let flops = vae_encode_flops(&cfg, batch, ih, iw);
        Ok(timing("vae_encode", dtype, compute, vec![batch, cfg.in_channels, ih, iw], flops, build_s, runs))
    } else {
        let z = Tensor::randn(0f32, 1.0, (batch, cfg.latent_channels, h, w), device)?.to_dtype(tensors)?;
        let runs = time_runs(device, runs, || vae.decode(&z))?;
        let flops = vae_decode_flops(&cfg, batch, h, w);
        Ok(timing("vae_decode", dtype, compute, vec![batch, cfg.latent_channels, h, w], flops, build_s, runs))
    }
}

/// CLIP text encoder on `[batch, 77]` token ids.
pub fn bench_clip(batch: usize, dtype: DType, device: &Device, runs: usize) -> crate::Result<Timing> {
    let cfg = sd15_clip_config()?;
    let compute = kernels::compute_info(device, dtype);
    let (tensors, matmul) = (compute.tensors, compute.matmul);
    let t0 = Instant::now();
    let clip = kernels::with_matmul_precision(matmul, || {
        ClipTextModel::new(RandomWeights::var_builder(0, tensors, device), &cfg)
    })?;
    let build_s = t0.elapsed().as_secs_f64();
    let l = cfg.max_position_embeddings;
    let ids: Vec<u32> = (0..batch * l).map(|i| (splitmix(i as u64) % cfg.vocab_size as u64) as u32).collect();
    let ids = Tensor::from_vec(ids, (batch, l), device)?;
    let runs = time_runs(device, runs, || clip.forward(&ids))?;
    let flops = clip_flops(&cfg, batch, l);
    Ok(timing("clip_text", dtype, compute, vec![batch, l], flops, build_s, runs))
}

/// The whole-edit benchmark's result: wall time of `DiffEdit::edit` (prompts, VAE encode, mask,
/// inversion, decoding, VAE decode) with its stages and UNet rows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EditTiming {
    pub what: String,
    pub dtype: String,
    /// What ran for `dtype`: `precision`, `isa` and a `fallback` line (kernels::ComputeInfo).
    #[serde(flatten)]
    pub compute: kernels::ComputeInfo,
    /// Width, height of the picture.
    pub size: [usize; 2],
    pub steps: usize,
    pub encode_ratio: f64,
    pub mask_samples: usize,
    pub mask_batch_size: usize,
    pub unet_evaluations: usize,
    pub times_s: Vec<f64>,
    pub median_s: f64,
    /// Process CPU time of each timed edit, all threads together.
    pub cpu_times_s: Vec<f64>,
    /// Stage times of the median run.
    pub stages: crate::diffedit::StageTimings,
    pub gflop: f64,
    pub gflops_per_s: f64,
    pub peak_rss_mb: f64,
    pub build_s: f64,
    pub threads: usize,
}

/// Random full-size SD 1.5 (UNet, VAE, CLIP ViT-L/14 text tower) with the real CLIP tokenizer
/// read from `tokenizer_dir` and the tutorial's DDIM schedule.
pub fn random_sd15(
    tokenizer_dir: &std::path::Path,
    dtype: DType,
    device: &Device,
) -> crate::Result<crate::models::loading::StableDiffusion> {
    use crate::models::loading::{tutorial_scheduler_config, ComponentOrigins, StableDiffusion};
    let tokenizer = crate::models::tokenizer::ClipTokenizer::from_dir(tokenizer_dir)?;
    let compute = kernels::compute_info(device, dtype);
    let (tensors, matmul) = (compute.tensors, compute.matmul);
    let (text_encoder, vae, unet) = kernels::with_matmul_precision(matmul, || -> crate::Result<_> {
        Ok((
            ClipTextModel::new(RandomWeights::var_builder(1, tensors, device), &sd15_clip_config()?)?,
            AutoencoderKL::new(RandomWeights::var_builder(2, tensors, device), &sd15_vae_config()?)?,
            UNet2DConditionModel::new(RandomWeights::var_builder(3, tensors, device), &sd15_unet_config()?)?,
        ))
    })?;
    let schedule = crate::scheduler::DdimSchedule::new(tutorial_scheduler_config())?;
    let random = "random SD 1.5 weights".to_string();
    let origins = ComponentOrigins {
        unet: random.clone(),
        vae: random.clone(),
        text_encoder: random,
        tokenizer: tokenizer_dir.display().to_string(),
        scheduler: "tutorial DDIM settings".into(),
    };
    Ok(StableDiffusion {
        tokenizer,
        text_encoder,
        vae,
        unet,
        schedule,
        device: device.clone(),
        dtype: tensors,
        vae_dtype: tensors,
        matmul,
        compute,
        origins,
        model_dir: None,
    })
}

/// One whole DiffEdit edit of a `width` x `height` synthetic picture on random full-size SD 1.5
/// with `params` (the tutorial's settings by default), timed `runs` times after a short warm-up edit.
pub fn bench_edit(
    tokenizer_dir: &std::path::Path,
    width: usize,
    height: usize,
    params: crate::diffedit::EditParams,
    dtype: DType,
    device: &Device,
    runs: usize,
) -> crate::Result<EditTiming> {
    use crate::diffedit::{DiffEdit, Noise, Silent};
    let t0 = Instant::now();
    let model = random_sd15(tokenizer_dir, dtype, device)?;
    let build_s = t0.elapsed().as_secs_f64();
    let pipeline = DiffEdit::new(&model, params.clone())?;
    let scene = crate::synth::scene(7, 0, width.max(height));
    let picture = image::RgbImage::from_raw(scene.size as u32, scene.size as u32, scene.render())
        .ok_or_else(|| crate::Error::invalid("synthetic scene has the wrong number of pixels"))?;
    let picture = crate::image_io::resize(&picture, width, height);
    let image = crate::image_io::image_to_tensor(&picture)?.to_device(device)?.to_dtype(model.dtype)?;
    let noise = Noise::drawn(params.rng, params.seed, pipeline.latent_shape(width, height), params.mask_samples)?;
    let source = scene.caption();
    let target = source.replacen("a ", "a large ", 1);
    // Warm-up: a 2-step edit with one mask sample touches every kernel, weight packing and
    // allocation path the timed edits use, at a fraction of their cost.
    let warm_params = crate::diffedit::EditParams { steps: 2, mask_samples: 1, ..params.clone() };
    let warm = DiffEdit::new(&model, warm_params.clone())?;
    let warm_noise = Noise::drawn(params.rng, params.seed, warm.latent_shape(width, height), 1)?;
    warm.edit(&image, &source, &target, &warm_noise, &Silent)?;
    device.synchronize()?;
    let (mut runs_out, mut cpu_times) = (vec![], vec![]);
    for _ in 0..runs {
        let before = pipeline.unet_evaluations();
        let (clock, cpu0) = (Instant::now(), cpu_time_s());
        let out = pipeline.edit(&image, &source, &target, &noise, &Silent)?;
        device.synchronize()?;
        cpu_times.push(cpu_time_s() - cpu0);
        runs_out.push((clock.elapsed().as_secs_f64(), out.timings, pipeline.unet_evaluations() - before));
    }
    let times: Vec<f64> = runs_out.iter().map(|r| r.0).collect();
    let med = median(&times);
    let (_, stages, evaluations) =
        runs_out.iter().min_by(|a, b| (a.0 - med).abs().total_cmp(&(b.0 - med).abs())).cloned().expect("runs >= 1");
    let (_, h, w) = pipeline.latent_shape(width, height);
    let vae = sd15_vae_config()?;
    let flops = evaluations as f64 * unet_flops(&sd15_unet_config()?, 1, h, w, 77)
        + vae_encode_flops(&vae, 1, height, width)
        + vae_decode_flops(&vae, 1, h, w)
        + 3.0 * clip_flops(&sd15_clip_config()?, 1, 77);
    Ok(EditTiming {
        what: "edit".into(),
        dtype: format!("{dtype:?}").to_lowercase(),
        compute: model.compute.clone(),
        size: [width, height],
        steps: params.steps,
        encode_ratio: params.encode_ratio,
        mask_samples: params.mask_samples,
        mask_batch_size: params.mask_batch_size,
        unet_evaluations: evaluations,
        times_s: times.iter().map(|t| round(*t, 3)).collect(),
        median_s: round(med, 3),
        cpu_times_s: cpu_times.iter().map(|t| round(*t, 3)).collect(),
        stages,
        gflop: round(flops / 1e9, 1),
        gflops_per_s: round(flops / 1e9 / med, 2),
        peak_rss_mb: round(peak_rss_mb(), 1),
        build_s: round(build_s, 2),
        threads: rayon::current_num_threads(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// torch.utils.flop_counter.FlopCounterMode (torch 2.15, diffusers 0.42.1) counts 180.11 GFLOP
    /// for the SD 1.5 UNet on 1x4x32x32 latents (`tools/bench_torch.py flops --latent 32`).
    #[test]
    fn unet_flops_match_pytorch_count() {
        let cfg = sd15_unet_config().unwrap();
        let g = unet_flops(&cfg, 1, 32, 32, 77) / 1e9;
        assert!((g - 180.11).abs() < 0.5, "{g} GFLOP");
    }

    #[test]
    fn random_weights_follow_hints() -> Result<()> {
        let vb = RandomWeights::var_builder(1, DType::F32, &Device::Cpu);
        let ones = vb.get_with_hints(7, "norm.weight", Init::Const(1.0))?;
        assert_eq!(ones.to_vec1::<f32>()?, vec![1.0; 7]);
        let w = vb.get_with_hints((64, 100), "w", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
        let max = w.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(max <= 0.1 + 1e-6 && max > 0.09, "{max}");
        Ok(())
    }
}
