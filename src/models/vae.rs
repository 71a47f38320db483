//! diffusers' `AutoencoderKL`: the Stable Diffusion VAE that maps images in [-1, 1] to a
//! diagonal Gaussian over latents (`encode`) and latents back to images (`decode`).
//!
//! Module and weight names follow diffusers (`encoder.down_blocks.0.resnets.0.conv1`,
//! `decoder.mid_block.attentions.0.to_q`, `quant_conv`, ...). Scaling latents by
//! `scaling_factor` (and `shift_factor`) is the caller's business, as in diffusers.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, Linear, VarBuilder};

use crate::models::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};

/// The VAE's `config.json`. Absent keys take diffusers' defaults; unknown keys are ignored.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AutoencoderKLConfig {
    #[serde(default = "default_image_channels")]
    pub in_channels: usize,
    #[serde(default = "default_image_channels")]
    pub out_channels: usize,
    #[serde(default = "default_down_block_types")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_up_block_types")]
    pub up_block_types: Vec<String>,
    #[serde(default = "default_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: usize,
    #[serde(default = "default_act_fn")]
    pub act_fn: String,
    #[serde(default = "default_latent_channels")]
    pub latent_channels: usize,
    #[serde(default = "default_norm_num_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,
    #[serde(default = "default_scaling_factor")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel latent statistics some VAEs publish for the pipeline's latent normalisation
    /// (not used by encode/decode themselves).
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// diffusers runs this VAE in f32 even in f16 pipelines when set (SD 1.x/2.x VAEs overflow
    /// in f16 at high resolution).
    #[serde(default = "default_true")]
    pub force_upcast: bool,
    #[serde(default = "default_true")]
    pub use_quant_conv: bool,
    #[serde(default = "default_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "default_true")]
    pub mid_block_add_attention: bool,
}

fn default_image_channels() -> usize {
    3
}
fn default_down_block_types() -> Vec<String> {
    vec!["DownEncoderBlock2D".to_string()]
}
fn default_up_block_types() -> Vec<String> {
    vec!["UpDecoderBlock2D".to_string()]
}
fn default_block_out_channels() -> Vec<usize> {
    vec![64]
}
fn default_layers_per_block() -> usize {
    1
}
fn default_act_fn() -> String {
    "silu".to_string()
}
fn default_latent_channels() -> usize {
    4
}
fn default_norm_num_groups() -> usize {
    32
}
fn default_sample_size() -> usize {
    32
}
fn default_scaling_factor() -> f64 {
    0.18215
}
fn default_true() -> bool {
    true
}

impl AutoencoderKLConfig {
    /// Checks that the config describes the architecture implemented here; the message names
    /// the offending key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("key `block_out_channels`: must not be empty".to_string());
        }
        if self.down_block_types.len() != n {
            return Err(format!(
                "key `down_block_types`: has {} entries, `block_out_channels` has {n}",
                self.down_block_types.len()
            ));
        }
        if self.up_block_types.len() != n {
            return Err(format!(
                "key `up_block_types`: has {} entries, `block_out_channels` has {n}",
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != "DownEncoderBlock2D") {
            return Err(format!("key `down_block_types`: unsupported block type {t:?} (only \"DownEncoderBlock2D\")"));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != "UpDecoderBlock2D") {
            return Err(format!("key `up_block_types`: unsupported block type {t:?} (only \"UpDecoderBlock2D\")"));
        }
        // diffusers' get_activation treats both names as SiLU.
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return Err(format!("key `act_fn`: unsupported activation {:?} (only \"silu\")", self.act_fn));
        }
        if self.layers_per_block == 0 {
            return Err("key `layers_per_block`: must be at least 1".to_string());
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            return Err("keys `in_channels`, `out_channels`, `latent_channels`: must be positive".to_string());
        }
        if self.norm_num_groups == 0 {
            return Err("key `norm_num_groups`: must be positive".to_string());
        }
        if let Some(c) = self.block_out_channels.iter().find(|c| **c == 0 || **c % self.norm_num_groups != 0) {
            return Err(format!(
                "key `block_out_channels`: {c} channels cannot be split into `norm_num_groups` = {} groups",
                self.norm_num_groups
            ));
        }
        Ok(())
    }

    /// Image pixels per latent pixel along each side: one halving per block but the last.
    pub fn downscale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    fn resnet(&self, in_channels: usize, out_channels: usize) -> ResnetConfig {
        ResnetConfig {
            in_channels,
            out_channels,
            temb_channels: None,
            groups: self.norm_num_groups,
            eps: VAE_EPS,
            output_scale_factor: 1.0,
        }
    }
}

/// diffusers builds every VAE norm with this epsilon, whatever the config says.
const VAE_EPS: f64 = 1e-6;

/// Largest attention score block (bytes, f32) computed at once in the mid-block attention.
/// A 512x512 image gives 4096 latent tokens at the mid block, 64 MiB of scores per image;
/// larger images or batches are processed in query chunks instead.
const ATTENTION_SCORE_BUDGET: usize = 256 << 20;

/// The diagonal Gaussian the encoder predicts.
#[derive(Debug, Clone)]
pub struct LatentDistribution {
    pub mean: Tensor,
    /// Clamped to [-30, 20], as diffusers does, so `std` neither vanishes nor overflows.
    pub logvar: Tensor,
    /// exp(0.5 * logvar).
    pub std: Tensor,
}

impl LatentDistribution {
    /// Splits the encoder's `[B, 2C, h, w]` moments into mean and log-variance.
    fn from_moments(moments: &Tensor) -> Result<Self> {
        let c = moments.dim(1)? / 2;
        let mean = moments.narrow(1, 0, c)?.contiguous()?;
        let logvar = moments.narrow(1, c, c)?.clamp(-30f32, 20f32)?.contiguous()?;
        let std = (&logvar * 0.5)?.exp()?;
        Ok(Self { mean, logvar, std })
    }

    /// A draw mean + std * eps with eps ~ N(0, 1) from the device's generator.
    pub fn sample(&self) -> Result<Tensor> {
        let eps = self.mean.randn_like(0.0, 1.0)?;
        self.mean.add(&self.std.mul(&eps)?)
    }
}

/// The mid block's self-attention over all spatial positions: diffusers' `Attention` with one
/// head, a group norm in front, Linear q/k/v/out and a residual connection.
#[derive(Debug, Clone)]
struct SpatialSelfAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    score_budget: usize,
}

impl SpatialSelfAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: candle_nn::group_norm(groups, channels, VAE_EPS, vb.pp("group_norm"))?,
            to_q: candle_nn::linear(channels, channels, vb.pp("to_q"))?,
            to_k: candle_nn::linear(channels, channels, vb.pp("to_k"))?,
            to_v: candle_nn::linear(channels, channels, vb.pp("to_v"))?,
            to_out: candle_nn::linear(channels, channels, vb.pp("to_out.0"))?,
            score_budget: ATTENTION_SCORE_BUDGET,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let n = h * w;
        let tokens = self.group_norm.forward(xs)?.reshape((b, c, n))?.transpose(1, 2)?.contiguous()?;
        // Scaling q before the product (rather than the scores after) keeps f16 scores in range.
        let q = (self.to_q.forward(&tokens)? * (c as f64).powf(-0.5))?;
        let k_t = self.to_k.forward(&tokens)?.transpose(1, 2)?.contiguous()?;
        let v = self.to_v.forward(&tokens)?;
        // Each query row's softmax only needs its own scores, so chunking queries changes nothing
        // but peak memory.
        let chunk = (self.score_budget / (b * n * DType::F32.size_in_bytes()).max(1)).clamp(1, n);
        let mut outs = Vec::with_capacity(n.div_ceil(chunk));
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let scores = q.narrow(1, start, len)?.matmul(&k_t)?.to_dtype(DType::F32)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
            outs.push(probs.matmul(&v)?);
        }
        let attended = Tensor::cat(&outs, 1)?;
        let out = self.to_out.forward(&attended)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        out + xs
    }
}

/// diffusers' `UNetMidBlock2D` as the VAE configures it: resnet, attention, resnet.
#[derive(Debug, Clone)]
struct MidBlock {
    resnet_in: ResnetBlock2D,
    attention: Option<SpatialSelfAttention>,
    resnet_out: ResnetBlock2D,
}

impl MidBlock {
    fn new(vb: VarBuilder, config: &AutoencoderKLConfig, channels: usize) -> Result<Self> {
        let resnet_in = ResnetBlock2D::new(vb.pp("resnets.0"), config.resnet(channels, channels))?;
        let attention = config
            .mid_block_add_attention
            .then(|| SpatialSelfAttention::new(vb.pp("attentions.0"), channels, config.norm_num_groups))
            .transpose()?;
        let resnet_out = ResnetBlock2D::new(vb.pp("resnets.1"), config.resnet(channels, channels))?;
        Ok(Self { resnet_in, attention, resnet_out })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.resnet_in.forward(xs, None)?;
        if let Some(attention) = &self.attention {
            xs = attention.forward(&xs)?;
        }
        self.resnet_out.forward(&xs, None)
    }
}

/// `DownEncoderBlock2D`: resnets, then (except in the last block) a stride-2 convolution.
#[derive(Debug, Clone)]
struct DownEncoderBlock {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock {
    fn new(
        vb: VarBuilder,
        config: &AutoencoderKLConfig,
        in_ch: usize,
        out_ch: usize,
        downsample: bool,
    ) -> Result<Self> {
        let resnets = (0..config.layers_per_block)
            .map(|i| {
                let in_ch = if i == 0 { in_ch } else { out_ch };
                ResnetBlock2D::new(vb.pp(format!("resnets.{i}")), config.resnet(in_ch, out_ch))
            })
            .collect::<Result<Vec<_>>>()?;
        // Padding 0 = diffusers' `downsample_padding=0`: pad right and bottom only.
        let downsampler =
            downsample.then(|| Downsample2D::new(vb.pp("downsamplers.0"), out_ch, out_ch, 0)).transpose()?;
        Ok(Self { resnets, downsampler })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
        for resnet in &self.resnets {
            xs = resnet.forward(&xs, None)?;
        }
        match &self.downsampler {
            Some(down) => down.forward(&xs),
            None => Ok(xs),
        }
    }
}

/// `UpDecoderBlock2D`: `layers_per_block + 1` resnets, then (except in the last block) a x2
/// nearest upsampling with a convolution.
#[derive(Debug, Clone)]
struct UpDecoderBlock {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock {
    fn new(vb: VarBuilder, config: &AutoencoderKLConfig, in_ch: usize, out_ch: usize, upsample: bool) -> Result<Self> {
        let resnets = (0..config.layers_per_block + 1)
            .map(|i| {
                let in_ch = if i == 0 { in_ch } else { out_ch };
                ResnetBlock2D::new(vb.pp(format!("resnets.{i}")), config.resnet(in_ch, out_ch))
            })
            .collect::<Result<Vec<_>>>()?;
        let upsampler = upsample.then(|| Upsample2D::new(vb.pp("upsamplers.0"), out_ch, out_ch)).transpose()?;
        Ok(Self { resnets, upsampler })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
        for resnet in &self.resnets {
            xs = resnet.forward(&xs, None)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&xs, None),
            None => Ok(xs),
        }
    }
}

fn conv3x3(vb: VarBuilder, in_ch: usize, out_ch: usize) -> Result<Conv2d> {
    candle_nn::conv2d(in_ch, out_ch, 3, Conv2dConfig { padding: 1, ..Default::default() }, vb)
}

#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: VarBuilder, config: &AutoencoderKLConfig) -> Result<Self> {
        let channels = &config.block_out_channels;
        let last = *channels.last().expect("validated: block_out_channels is not empty");
        let conv_in = conv3x3(vb.pp("conv_in"), config.in_channels, channels[0])?;
        let down_blocks = (0..channels.len())
            .map(|i| {
                let in_ch = if i == 0 { channels[0] } else { channels[i - 1] };
                let downsample = i + 1 < channels.len();
                DownEncoderBlock::new(vb.pp(format!("down_blocks.{i}")), config, in_ch, channels[i], downsample)
            })
            .collect::<Result<Vec<_>>>()?;
        let mid_block = MidBlock::new(vb.pp("mid_block"), config, last)?;
        let conv_norm_out = candle_nn::group_norm(config.norm_num_groups, last, VAE_EPS, vb.pp("conv_norm_out"))?;
        // Mean and log-variance for every latent channel.
        let conv_out = conv3x3(vb.pp("conv_out"), last, 2 * config.latent_channels)?;
        Ok(Self { conv_in, down_blocks, mid_block, conv_norm_out, conv_out })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = self.conv_in.forward(xs)?;
        for block in &self.down_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = self.mid_block.forward(&xs)?;
        let xs = candle_nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}

#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock,
    up_blocks: Vec<UpDecoderBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: VarBuilder, config: &AutoencoderKLConfig) -> Result<Self> {
        let reversed: Vec<usize> = config.block_out_channels.iter().rev().copied().collect();
        let conv_in = conv3x3(vb.pp("conv_in"), config.latent_channels, reversed[0])?;
        let mid_block = MidBlock::new(vb.pp("mid_block"), config, reversed[0])?;
        let up_blocks = (0..reversed.len())
            .map(|i| {
                let in_ch = if i == 0 { reversed[0] } else { reversed[i - 1] };
                let upsample = i + 1 < reversed.len();
                UpDecoderBlock::new(vb.pp(format!("up_blocks.{i}")), config, in_ch, reversed[i], upsample)
            })
            .collect::<Result<Vec<_>>>()?;
        let first = config.block_out_channels[0];
        let conv_norm_out = candle_nn::group_norm(config.norm_num_groups, first, VAE_EPS, vb.pp("conv_norm_out"))?;
        let conv_out = conv3x3(vb.pp("conv_out"), first, config.out_channels)?;
        Ok(Self { conv_in, mid_block, up_blocks, conv_norm_out, conv_out })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = self.conv_in.forward(xs)?;
        let mut xs = self.mid_block.forward(&xs)?;
        for block in &self.up_blocks {
            xs = block.forward(&xs)?;
        }
        let xs = candle_nn::ops::silu(&self.conv_norm_out.forward(&xs)?)?;
        self.conv_out.forward(&xs)
    }
}

/// The VAE. Runs in the dtype and on the device of its `VarBuilder`.
#[derive(Debug, Clone)]
pub struct AutoencoderKL {
    pub config: AutoencoderKLConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
}

impl AutoencoderKL {
    pub fn new(vb: VarBuilder, config: &AutoencoderKLConfig) -> Result<Self> {
        config.validate().map_err(|msg| candle_core::Error::Msg(format!("vae config: {msg}")))?;
        let latent = config.latent_channels;
        let encoder = Encoder::new(vb.pp("encoder"), config)?;
        let decoder = Decoder::new(vb.pp("decoder"), config)?;
        let quant_conv = config
            .use_quant_conv
            .then(|| candle_nn::conv2d(2 * latent, 2 * latent, 1, Default::default(), vb.pp("quant_conv")))
            .transpose()?;
        let post_quant_conv = config
            .use_post_quant_conv
            .then(|| candle_nn::conv2d(latent, latent, 1, Default::default(), vb.pp("post_quant_conv")))
            .transpose()?;
        Ok(Self { config: config.clone(), encoder, decoder, quant_conv, post_quant_conv })
    }

    /// `image`: `[B, in_channels, H, W]` in [-1, 1]. The latents are `H / f x W / f` for the
    /// `downscale_factor` f (rounded up when a side is not a multiple of f).
    pub fn encode(&self, image: &Tensor) -> Result<LatentDistribution> {
        let (_, c, _, _) = image.dims4()?;
        if c != self.config.in_channels {
            return Err(candle_core::Error::Msg(format!(
                "AutoencoderKL::encode: image has {c} channels, the VAE expects {} ([B, C, H, W])",
                self.config.in_channels
            )));
        }
        let moments = self.encoder.forward(image)?;
        let moments = match &self.quant_conv {
            Some(conv) => conv.forward(&moments)?,
            None => moments,
        };
        LatentDistribution::from_moments(&moments)
    }

    /// `latents`: unscaled `[B, latent_channels, h, w]` (divide the scheduler's latents by
    /// `scaling_factor` first). Returns `[B, out_channels, h * f, w * f]`, nominally in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = latents.dims4()?;
        if c != self.config.latent_channels {
            return Err(candle_core::Error::Msg(format!(
                "AutoencoderKL::decode: latents have {c} channels, the VAE expects {} ([B, C, h, w])",
                self.config.latent_channels
            )));
        }
        let z = match &self.post_quant_conv {
            Some(conv) => conv.forward(latents)?,
            None => latents.clone(),
        };
        self.decoder.forward(&z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    /// Chunking the queries must not change the result.
    #[test]
    fn chunked_attention_matches_full() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let mut attn = SpatialSelfAttention::new(vb, 8, 4)?;
        let xs = Tensor::randn(0f32, 1.0, (2, 8, 5, 7), &dev)?;
        let full = attn.forward(&xs)?;
        // 2 images x 35 keys x 4 bytes x 3 queries: 35 queries in 12 chunks, the last one short.
        attn.score_budget = 2 * 35 * 4 * 3;
        let chunked = attn.forward(&xs)?;
        let diff = (full - chunked)?.abs()?.flatten_all()?.max(D::Minus1)?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "chunked attention differs by {diff}");
        Ok(())
    }

    #[test]
    fn validate_names_the_key() {
        let mut config: AutoencoderKLConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.downscale_factor(), 1);
        config.act_fn = "gelu".into();
        assert_eq!(config.validate().unwrap_err(), "key `act_fn`: unsupported activation \"gelu\" (only \"silu\")");
        config.act_fn = "silu".into();
        config.up_block_types = vec!["AttnUpDecoderBlock2D".into()];
        assert_eq!(
            config.validate().unwrap_err(),
            "key `up_block_types`: unsupported block type \"AttnUpDecoderBlock2D\" (only \"UpDecoderBlock2D\")"
        );
    }
}
