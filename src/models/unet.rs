//! diffusers' `UNet2DConditionModel` as used by Stable Diffusion 1.x and 2.x: the noise
//! predictor conditioned on a timestep and on text embeddings.
//!
//! Supported: `CrossAttnDownBlock2D` / `DownBlock2D` down blocks, `CrossAttnUpBlock2D` /
//! `UpBlock2D` up blocks, the `UNetMidBlock2DCrossAttn` mid block (or none), positional timestep
//! embeddings, conv or linear transformer projections, per-block head counts, cross-attention
//! widths, layer counts and `only_cross_attention`, `upcast_attention`. Everything else that
//! would change the numbers (class or added embeddings, encoder projections, Fourier time
//! embeddings, scale-shift ResNets, ...) is refused by [`UNet2DConditionConfig::validate`] with
//! a message naming the config key.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::kernels::{self, Conv2d, GroupNorm, Linear};
use crate::models::attention::{Transformer2DModel, TransformerConfig};
use crate::models::config::PerBlock;
use crate::models::resnet::{Downsample2D, ResnetBlock2D, ResnetConfig, Upsample2D};

/// `unet/config.json`. Field names and defaults are diffusers' (`UNet2DConditionModel.__init__`);
/// keys not listed here are ignored.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct UNet2DConditionConfig {
    /// Latent side the model was trained at: one number, or `[height, width]`; see
    /// [`UNet2DConditionConfig::default_latent_size`].
    #[serde(default)]
    pub sample_size: Option<PerBlock<usize>>,
    #[serde(default = "d_four")]
    pub in_channels: usize,
    #[serde(default = "d_four")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "d_down_block_types")]
    pub down_block_types: Vec<String>,
    #[serde(default = "d_mid_block_type")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_up_block_types")]
    pub up_block_types: Vec<String>,
    #[serde(default = "d_false_per_block")]
    pub only_cross_attention: PerBlock<bool>,
    #[serde(default = "d_block_out_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers_per_block")]
    pub layers_per_block: PerBlock<usize>,
    #[serde(default = "d_one")]
    pub downsample_padding: usize,
    #[serde(default = "d_one_f64")]
    pub mid_block_scale_factor: f64,
    /// Training only.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "d_silu")]
    pub act_fn: String,
    #[serde(default = "d_norm_num_groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "d_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross_attention_dim")]
    pub cross_attention_dim: PerBlock<usize>,
    #[serde(default = "d_one_per_block")]
    pub transformer_layers_per_block: PerBlock<usize>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// For SD 1.x/2.x configs this is really the number of heads (a historical misnomer kept by
    /// diffusers); it is used as such when `num_attention_heads` is null.
    #[serde(default = "d_attention_head_dim")]
    pub attention_head_dim: PerBlock<usize>,
    /// The number of heads, when given (diffusers itself refuses it for this class; we take it
    /// at its word).
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    /// Only used by block types we do not support.
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    /// Only used by block types we do not support.
    #[serde(default = "d_one_f64")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "d_three")]
    pub conv_in_kernel: usize,
    #[serde(default = "d_three")]
    pub conv_out_kernel: usize,
    #[serde(default = "d_default")]
    pub attention_type: String,
    /// Only used by `UNetMidBlock2DSimpleCrossAttn`, which we do not support.
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    /// Only used by the `SimpleCrossAttn` block types, which we do not support.
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
}

fn d_four() -> usize {
    4
}
fn d_three() -> usize {
    3
}
fn d_one() -> usize {
    1
}
fn d_one_f64() -> f64 {
    1.0
}
fn d_true() -> bool {
    true
}
fn d_silu() -> String {
    "silu".into()
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_down_block_types() -> Vec<String> {
    ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"].map(String::from).to_vec()
}
fn d_up_block_types() -> Vec<String> {
    ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"].map(String::from).to_vec()
}
fn d_mid_block_type() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_false_per_block() -> PerBlock<bool> {
    PerBlock::One(false)
}
fn d_block_out_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn d_layers_per_block() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn d_norm_num_groups() -> Option<usize> {
    Some(32)
}
fn d_norm_eps() -> f64 {
    1e-5
}
fn d_cross_attention_dim() -> PerBlock<usize> {
    PerBlock::One(1280)
}
fn d_one_per_block() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn d_attention_head_dim() -> PerBlock<usize> {
    PerBlock::One(8)
}

/// The block kinds we implement, with diffusers' optional `UNetRes` prefix removed.
fn block_kind(name: &str) -> &str {
    name.strip_prefix("UNetRes").unwrap_or(name)
}

fn refuse_set<T: std::fmt::Debug>(key: &str, value: &Option<T>) -> std::result::Result<(), String> {
    match value {
        None => Ok(()),
        Some(v) => Err(format!("unsupported `{key}` = {v:?}: only null is supported")),
    }
}

impl UNet2DConditionConfig {
    /// Checks that every value is one this implementation computes exactly as diffusers does;
    /// the message of a refusal names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("`block_out_channels` is empty".into());
        }
        if self.down_block_types.len() != n {
            return Err(format!(
                "`down_block_types` has {} entries but `block_out_channels` has {n}",
                self.down_block_types.len()
            ));
        }
        if self.up_block_types.len() != n {
            return Err(format!(
                "`up_block_types` has {} entries but `block_out_channels` has {n}",
                self.up_block_types.len()
            ));
        }
        for (i, t) in self.down_block_types.iter().enumerate() {
            if !matches!(block_kind(t), "CrossAttnDownBlock2D" | "DownBlock2D") {
                return Err(format!(
                    "unsupported `down_block_types[{i}]` = {t:?}: only CrossAttnDownBlock2D and DownBlock2D are supported"
                ));
            }
        }
        for (i, t) in self.up_block_types.iter().enumerate() {
            if !matches!(block_kind(t), "CrossAttnUpBlock2D" | "UpBlock2D") {
                return Err(format!(
                    "unsupported `up_block_types[{i}]` = {t:?}: only CrossAttnUpBlock2D and UpBlock2D are supported"
                ));
            }
        }
        if let Some(t) = &self.mid_block_type {
            if t != "UNetMidBlock2DCrossAttn" {
                return Err(format!(
                    "unsupported `mid_block_type` = {t:?}: only UNetMidBlock2DCrossAttn (or null) is supported"
                ));
            }
        }
        for i in 0..n {
            self.layers_per_block.get(i, n, "layers_per_block")?;
            self.transformer_layers_per_block.get(i, n, "transformer_layers_per_block")?;
            self.cross_attention_dim.get(i, n, "cross_attention_dim")?;
            self.only_cross_attention.get(i, n, "only_cross_attention")?;
            let heads = self.heads(i)?;
            if heads == 0 || heads > self.block_out_channels[i] {
                let key = if self.num_attention_heads.is_some() { "num_attention_heads" } else { "attention_head_dim" };
                return Err(format!(
                    "`{key}` gives {heads} attention heads for block {i}, which has {} channels",
                    self.block_out_channels[i]
                ));
            }
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(format!("unsupported `act_fn` = {:?}: only \"silu\" is supported", self.act_fn));
        }
        match self.norm_num_groups {
            None => return Err("unsupported `norm_num_groups` = null: a group count is required".into()),
            Some(0) => return Err("`norm_num_groups` must be positive".into()),
            Some(_) => {}
        }
        if self.resnet_time_scale_shift != "default" {
            return Err(format!(
                "unsupported `resnet_time_scale_shift` = {:?}: only \"default\" is supported",
                self.resnet_time_scale_shift
            ));
        }
        if self.time_embedding_type != "positional" {
            return Err(format!(
                "unsupported `time_embedding_type` = {:?}: only \"positional\" is supported",
                self.time_embedding_type
            ));
        }
        if self.attention_type != "default" {
            return Err(format!(
                "unsupported `attention_type` = {:?}: only \"default\" is supported",
                self.attention_type
            ));
        }
        if self.dual_cross_attention {
            return Err("unsupported `dual_cross_attention` = true".into());
        }
        refuse_set("class_embed_type", &self.class_embed_type)?;
        refuse_set("num_class_embeds", &self.num_class_embeds)?;
        refuse_set("addition_embed_type", &self.addition_embed_type)?;
        refuse_set("encoder_hid_dim", &self.encoder_hid_dim)?;
        refuse_set("encoder_hid_dim_type", &self.encoder_hid_dim_type)?;
        refuse_set("time_embedding_act_fn", &self.time_embedding_act_fn)?;
        refuse_set("timestep_post_act", &self.timestep_post_act)?;
        refuse_set("time_cond_proj_dim", &self.time_cond_proj_dim)?;
        refuse_set("reverse_transformer_layers_per_block", &self.reverse_transformer_layers_per_block)?;
        for (key, k) in [("conv_in_kernel", self.conv_in_kernel), ("conv_out_kernel", self.conv_out_kernel)] {
            if k % 2 == 0 {
                return Err(format!("unsupported `{key}` = {k}: only odd kernel sizes are supported"));
            }
        }
        if self.time_embedding_dim == Some(0) {
            return Err("`time_embedding_dim` must be positive".into());
        }
        if let Some(PerBlock::Each(v)) = &self.sample_size {
            if v.len() != 2 {
                return Err(format!("`sample_size` has {} entries, expected one number or [height, width]", v.len()));
            }
        }
        Ok(())
    }

    /// Number of attention heads of down block `i` (the up blocks mirror it).
    fn heads(&self, i: usize) -> std::result::Result<usize, String> {
        let n = self.block_out_channels.len();
        match &self.num_attention_heads {
            Some(h) => h.get(i, n, "num_attention_heads"),
            None => self.attention_head_dim.get(i, n, "attention_head_dim"),
        }
    }

    /// `(height, width)` of the latents the model was trained at, from `sample_size`.
    pub fn default_latent_size(&self) -> Option<(usize, usize)> {
        match &self.sample_size {
            Some(PerBlock::One(s)) => Some((*s, *s)),
            Some(PerBlock::Each(v)) if v.len() == 2 => Some((v[0], v[1])),
            _ => None,
        }
    }

    /// Width of the time embedding fed to every ResNet.
    fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim.unwrap_or(4 * self.block_out_channels[0])
    }
}

fn config_error(msg: String) -> candle_core::Error {
    candle_core::Error::Msg(format!("unet config: {msg}"))
}

/// Sinusoidal embedding of one timestep, `[1, dim]`, computed as diffusers' `Timesteps` does (in
/// f32: `exp(-ln(10000) * i / (half - shift))` times the timestep, then sin and cos, swapped when
/// `flip_sin_to_cos`, zero-padded to an odd `dim`).
pub fn timestep_embedding(
    timestep: f64,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let t = timestep as f32;
    let neg_log_period = -(10000f64.ln()) as f32;
    let denom = (half as f64 - freq_shift) as f32;
    let args: Vec<f32> = (0..half).map(|i| t * ((neg_log_period * i as f32) / denom).exp()).collect();
    let sin = args.iter().map(|a| a.sin());
    let cos = args.iter().map(|a| a.cos());
    let mut emb: Vec<f32> = if flip_sin_to_cos { cos.chain(sin).collect() } else { sin.chain(cos).collect() };
    emb.resize(dim, 0.0);
    Tensor::from_vec(emb, (1, dim), device)
}

/// diffusers' `TimestepEmbedding`: `linear_1`, SiLU, `linear_2`.
#[derive(Debug, Clone)]
struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    fn new(vb: VarBuilder, in_dim: usize, dim: usize) -> Result<Self> {
        Ok(Self {
            linear_1: kernels::linear(in_dim, dim, vb.pp("linear_1"))?,
            linear_2: kernels::linear(dim, dim, vb.pp("linear_2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&candle_nn::ops::silu(&self.linear_1.forward(xs)?)?)
    }
}

/// Parameters shared by every block of one UNet.
#[derive(Debug, Clone, Copy)]
struct BlockCommon {
    temb_channels: usize,
    groups: usize,
    eps: f64,
}

impl BlockCommon {
    fn resnet(&self, vb: VarBuilder, in_channels: usize, out_channels: usize, scale: f64) -> Result<ResnetBlock2D> {
        ResnetBlock2D::new(
            vb,
            ResnetConfig {
                in_channels,
                out_channels,
                temb_channels: Some(self.temb_channels),
                groups: self.groups,
                eps: self.eps,
                output_scale_factor: scale,
            },
        )
    }
}

/// `CrossAttnDownBlock2D` (one transformer after each ResNet) or `DownBlock2D` (no
/// transformers), with a stride-2 downsampler on all but the last level.
#[derive(Debug, Clone)]
struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsampler: Option<Downsample2D>,
}

impl DownBlock {
    /// Returns the block's output and the skip connections it hands to the up path.
    fn forward(&self, xs: &Tensor, temb: &Tensor, context: &Tensor) -> Result<(Tensor, Vec<Tensor>)> {
        let mut xs = xs.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context)?;
            }
            skips.push(xs.clone());
        }
        if let Some(down) = &self.downsampler {
            xs = down.forward(&xs)?;
            skips.push(xs.clone());
        }
        Ok((xs, skips))
    }
}

/// `UNetMidBlock2DCrossAttn`: ResNet, then (transformer, ResNet) pairs.
#[derive(Debug, Clone)]
struct MidBlock {
    first: ResnetBlock2D,
    layers: Vec<(Transformer2DModel, ResnetBlock2D)>,
}

impl MidBlock {
    fn forward(&self, xs: &Tensor, temb: &Tensor, context: &Tensor) -> Result<Tensor> {
        let mut xs = self.first.forward(xs, Some(temb))?;
        for (attn, resnet) in &self.layers {
            xs = attn.forward(&xs, context)?;
            xs = resnet.forward(&xs, Some(temb))?;
        }
        Ok(xs)
    }
}

/// `CrossAttnUpBlock2D` / `UpBlock2D`: each ResNet takes the previous output concatenated (on
/// channels) with the most recent remaining skip connection; an upsampler on all but the last.
#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsampler: Option<Upsample2D>,
}

impl UpBlock {
    /// `skips` are this block's skip connections in the order the down path produced them.
    fn forward(
        &self,
        xs: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        context: &Tensor,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let mut xs = xs.clone();
        for (i, (resnet, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            xs = Tensor::cat(&[&xs, skip], 1)?;
            xs = resnet.forward(&xs, Some(temb))?;
            if let Some(attn) = self.attentions.get(i) {
                xs = attn.forward(&xs, context)?;
            }
        }
        match &self.upsampler {
            Some(up) => up.forward(&xs, upsample_size),
            None => Ok(xs),
        }
    }
}

/// diffusers' `UNet2DConditionModel` (see the module documentation for what is supported).
#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    pub config: UNet2DConditionConfig,
    conv_in: Conv2d,
    time_embedding: TimestepEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DConditionModel {
    /// Builds the model from `config` (validated first) and the weights under `vb`, whose dtype
    /// is the dtype the model computes in.
    pub fn new(vb: VarBuilder, config: &UNet2DConditionConfig) -> Result<Self> {
        config.validate().map_err(config_error)?;
        let c = config;
        let n = c.block_out_channels.len();
        let ch = &c.block_out_channels;
        // `validate` has checked every per-block list; these cannot fail.
        let per = |v: &PerBlock<usize>, i: usize, key: &str| v.get(i, n, key).map_err(config_error);
        let heads = |i: usize| c.heads(i).map_err(config_error);
        let only_cross = |i: usize| c.only_cross_attention.get(i, n, "only_cross_attention").map_err(config_error);
        let groups = c.norm_num_groups.unwrap_or(32);
        let common = BlockCommon { temb_channels: c.time_embed_dim(), groups, eps: c.norm_eps };
        let transformer = |i: usize, channels: usize, layers: usize, only_cross: bool| -> Result<TransformerConfig> {
            let heads = heads(i)?;
            Ok(TransformerConfig {
                heads,
                dim_head: channels / heads,
                num_layers: layers,
                cross_attention_dim: per(&c.cross_attention_dim, i, "cross_attention_dim")?,
                norm_num_groups: groups,
                use_linear_projection: c.use_linear_projection,
                only_cross_attention: only_cross,
                upcast_attention: c.upcast_attention,
            })
        };

        let conv_in = kernels::conv2d(
            c.in_channels,
            ch[0],
            c.conv_in_kernel,
            Conv2dConfig { padding: c.conv_in_kernel / 2, ..Default::default() },
            vb.pp("conv_in"),
        )?;
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), ch[0], c.time_embed_dim())?;

        let mut down_blocks = Vec::with_capacity(n);
        for i in 0..n {
            let vb = vb.pp("down_blocks").pp(i);
            let in_ch = if i == 0 { ch[0] } else { ch[i - 1] };
            let out_ch = ch[i];
            let layers = per(&c.layers_per_block, i, "layers_per_block")?;
            let with_attn = block_kind(&c.down_block_types[i]) == "CrossAttnDownBlock2D";
            let tcfg = transformer(
                i,
                out_ch,
                per(&c.transformer_layers_per_block, i, "transformer_layers_per_block")?,
                only_cross(i)?,
            )?;
            let mut resnets = Vec::with_capacity(layers);
            let mut attentions = Vec::new();
            for j in 0..layers {
                let rin = if j == 0 { in_ch } else { out_ch };
                resnets.push(common.resnet(vb.pp("resnets").pp(j), rin, out_ch, 1.0)?);
                if with_attn {
                    attentions.push(Transformer2DModel::new(vb.pp("attentions").pp(j), out_ch, &tcfg)?);
                }
            }
            let downsampler = (i + 1 < n)
                .then(|| Downsample2D::new(vb.pp("downsamplers").pp(0), out_ch, out_ch, c.downsample_padding))
                .transpose()?;
            down_blocks.push(DownBlock { resnets, attentions, downsampler });
        }

        let mid_block = match &c.mid_block_type {
            None => None,
            Some(_) => {
                let vb = vb.pp("mid_block");
                let last = ch[n - 1];
                let scale = c.mid_block_scale_factor;
                // diffusers builds the mid block's transformer without `only_cross_attention`.
                let tcfg = transformer(
                    n - 1,
                    last,
                    per(&c.transformer_layers_per_block, n - 1, "transformer_layers_per_block")?,
                    false,
                )?;
                let first = common.resnet(vb.pp("resnets").pp(0), last, last, scale)?;
                let attn = Transformer2DModel::new(vb.pp("attentions").pp(0), last, &tcfg)?;
                let resnet = common.resnet(vb.pp("resnets").pp(1), last, last, scale)?;
                Some(MidBlock { first, layers: vec![(attn, resnet)] })
            }
        };

        let mut up_blocks = Vec::with_capacity(n);
        for i in 0..n {
            // Up block i mirrors down block `rev`.
            let rev = n - 1 - i;
            let vb = vb.pp("up_blocks").pp(i);
            let prev_out = if i == 0 { ch[n - 1] } else { ch[rev + 1] };
            let out_ch = ch[rev];
            let skip_in = ch[rev.saturating_sub(1)];
            let layers = per(&c.layers_per_block, rev, "layers_per_block")? + 1;
            let with_attn = block_kind(&c.up_block_types[i]) == "CrossAttnUpBlock2D";
            let tcfg = transformer(
                rev,
                out_ch,
                per(&c.transformer_layers_per_block, rev, "transformer_layers_per_block")?,
                only_cross(rev)?,
            )?;
            let mut resnets = Vec::with_capacity(layers);
            let mut attentions = Vec::new();
            for j in 0..layers {
                let res_skip = if j + 1 == layers { skip_in } else { out_ch };
                let rin = if j == 0 { prev_out } else { out_ch };
                resnets.push(common.resnet(vb.pp("resnets").pp(j), rin + res_skip, out_ch, 1.0)?);
                if with_attn {
                    attentions.push(Transformer2DModel::new(vb.pp("attentions").pp(j), out_ch, &tcfg)?);
                }
            }
            let upsampler =
                (i + 1 < n).then(|| Upsample2D::new(vb.pp("upsamplers").pp(0), out_ch, out_ch)).transpose()?;
            up_blocks.push(UpBlock { resnets, attentions, upsampler });
        }

        let conv_norm_out = kernels::group_norm(groups, ch[0], c.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = kernels::conv2d(
            ch[0],
            c.out_channels,
            c.conv_out_kernel,
            Conv2dConfig { padding: c.conv_out_kernel / 2, ..Default::default() },
            vb.pp("conv_out"),
        )?;
        Ok(Self {
            config: config.clone(),
            conv_in,
            time_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// Predicts the noise (or v, per the scheduler's `prediction_type`) for `sample` `[B, C, h, w]`
    /// at one `timestep` shared by the whole batch (may be fractional), conditioned on
    /// `encoder_hidden_states` `[B, S, cross_attention_dim]`. A text batch of 1 is broadcast to
    /// the whole sample batch. Any `h`, `w` work: where a side is not divisible by
    /// `2^(levels-1)` the up path upsamples to each skip connection's size, as diffusers does.
    /// Returns `[B, out_channels, h, w]` in the model's dtype.
    pub fn forward(&self, sample: &Tensor, timestep: f64, encoder_hidden_states: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = sample.dims4()?;
        let dtype = sample.dtype();
        let context = match encoder_hidden_states.dim(0)? {
            cb if cb == b => encoder_hidden_states.clone(),
            1 => encoder_hidden_states.repeat((b, 1, 1))?,
            cb => candle_core::bail!("unet: encoder_hidden_states has batch {cb}, sample has batch {b}"),
        };
        let context = context.to_dtype(dtype)?;

        let factor = 1usize << self.up_blocks.iter().filter(|u| u.upsampler.is_some()).count();
        let forward_upsample_size = h % factor != 0 || w % factor != 0;

        let sample = if self.config.center_input_sample { ((sample * 2.0)? - 1.0)? } else { sample.clone() };

        let t_emb = timestep_embedding(
            timestep,
            self.config.block_out_channels[0],
            self.config.flip_sin_to_cos,
            self.config.freq_shift,
            sample.device(),
        )?
        .to_dtype(dtype)?;
        // [1, temb]: the ResNets broadcast it over the batch.
        let temb = self.time_embedding.forward(&t_emb)?;

        let mut xs = self.conv_in.forward(&sample)?;
        let mut skips = vec![xs.clone()];
        for block in &self.down_blocks {
            let (out, block_skips) = block.forward(&xs, &temb, &context)?;
            xs = out;
            skips.extend(block_skips);
        }

        if let Some(mid) = &self.mid_block {
            xs = mid.forward(&xs, &temb, &context)?;
        }

        for block in &self.up_blocks {
            let k = block.resnets.len();
            let block_skips = skips.split_off(skips.len() - k);
            let upsample_size = match (forward_upsample_size, skips.last()) {
                (true, Some(next)) => Some((next.dim(2)?, next.dim(3)?)),
                _ => None,
            };
            xs = block.forward(&xs, &block_skips, &temb, &context, upsample_size)?;
        }

        let xs = self.conv_norm_out.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }

    /// The dtype the weights were loaded in.
    pub fn dtype(&self) -> DType {
        self.conv_in.dtype()
    }
}
