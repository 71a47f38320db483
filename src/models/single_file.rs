//! Single-file checkpoints in the original Stable Diffusion (CompVis/LDM) layout, as community
//! checkpoints are shared: the UNet under `model.diffusion_model.`, the VAE under
//! `first_stage_model.` (or with bare `encoder.`/`decoder.` keys in a VAE-only file), and the text
//! encoder under `cond_stage_model.transformer.` (SD 1.x, OpenAI CLIP in transformers' layout) or
//! `cond_stage_model.model.` (SD 2.x, OpenCLIP). Tensors keep their stored names; each component
//! sees them under diffusers' names through a renaming view, so the models load unchanged.
//!
//! Each component's architecture comes from a diffusers folder given with `--config`, else it is
//! inferred from the tensors' shapes with Stable Diffusion's conventions for what shapes cannot
//! tell (attention heads, group norms, the VAE's scaling factor, v-prediction for SD 2.x).
//! Pickled checkpoints (`.ckpt`, `.pt`, ...) are refused without being opened.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use serde_json::{json, Value};

use super::config::parse_config;
use super::weights::Weights;
use crate::error::{Error, Result};

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
pub const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";

/// Extensions of PyTorch's pickle-based formats: loading them can run arbitrary code.
const PICKLE_EXTENSIONS: [&str; 6] = ["ckpt", "pt", "pth", "bin", "pkl", "pickle"];

/// Whether a `--model`/`--vae` value names a weight file rather than a folder or a repo id: an
/// existing file, or a path with a weight file's extension.
pub fn names_a_file(spec: &str) -> bool {
    let path = Path::new(spec);
    if path.is_dir() {
        return false;
    }
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    path.is_file() || ext.is_some_and(|e| e == "safetensors" || PICKLE_EXTENSIONS.contains(&e.as_str()))
}

/// Refuses a pickle by its extension or its first bytes (pickle protocol 2-5, or the zip
/// archive `torch.save` writes), before anything else reads it.
pub fn refuse_pickle(path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let mut head = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut head)).unwrap_or(0);
    let pickle_bytes = read >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]);
    let zip_bytes = read == 4 && head == *b"PK\x03\x04";
    if ext.is_some_and(|e| PICKLE_EXTENSIONS.contains(&e.as_str())) || pickle_bytes || zip_bytes {
        return Err(Error::weights(
            path,
            "is a PyTorch pickle checkpoint; loading a pickle can run any code it holds, so diffedit never opens \
             one. Convert it to .safetensors (in an environment you trust) and pass that file",
        ));
    }
    Ok(())
}

/// Names and shapes of stored tensors: the checkpoint, or a list in tests.
pub trait TensorShapes {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>>;
    fn tensor_names(&self) -> Vec<String>;
}

impl TensorShapes for Weights {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.shape(name).map(<[usize]>::to_vec)
    }
    fn tensor_names(&self) -> Vec<String> {
        self.names().map(str::to_owned).collect()
    }
}

impl TensorShapes for HashMap<String, Vec<usize>> {
    fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.get(name).cloned()
    }
    fn tensor_names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

/// How the text encoder is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextLayout {
    /// transformers' `CLIPTextModel` under `prefix` (`cond_stage_model.transformer.` plus
    /// `text_model.` in most files).
    Clip { prefix: String },
    /// OpenCLIP's text tower under `cond_stage_model.model.`: fused q/k/v, `resblocks`.
    OpenClip,
}

/// What a checkpoint holds, found from its tensor names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub unet: bool,
    /// `first_stage_model.`, or "" for a VAE file with bare keys.
    pub vae_prefix: Option<&'static str>,
    pub text: Option<TextLayout>,
}

impl Contents {
    pub fn of(shapes: &dyn TensorShapes) -> Self {
        let names = shapes.tensor_names();
        let any = |p: &str| names.iter().any(|n| n.starts_with(p));
        let vae_prefix = if any(&format!("{VAE_PREFIX}encoder.")) {
            Some(VAE_PREFIX)
        } else if any("encoder.conv_in.") && any("decoder.conv_in.") {
            Some("")
        } else {
            None
        };
        let text = if any(&format!("{CLIP_PREFIX}text_model.")) {
            Some(TextLayout::Clip { prefix: format!("{CLIP_PREFIX}text_model.") })
        } else if any(CLIP_PREFIX) {
            Some(TextLayout::Clip { prefix: CLIP_PREFIX.to_string() })
        } else if any(OPEN_CLIP_PREFIX) {
            Some(TextLayout::OpenClip)
        } else {
            None
        };
        Self { unet: any(UNET_PREFIX), vae_prefix, text }
    }

    /// SD 2.x conventions (v-prediction at 768 px, `!` padding) when the text encoder is
    /// OpenCLIP's, or the UNet attends to 1024-wide embeddings.
    pub fn is_sd2(&self, shapes: &dyn TensorShapes) -> bool {
        self.text == Some(TextLayout::OpenClip) || cross_attention_dim(shapes).is_some_and(|d| d == 1024)
    }
}

// ------------------------------------------------------------------------------- renaming
//
// diffusers name -> stored name. The UNet's input_blocks list conv_in, then per level its
// resnets (each followed by its attention in the same block) and a downsampler; output_blocks
// list per level (deepest first) layers_per_block + 1 resnets and the upsampler after the last.

/// How a stored tensor becomes the one the model asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Same,
    /// A 1x1 convolution kernel [C,C,1,1] read as a linear weight [C,C] (LDM's VAE attention).
    Linear,
    /// Rows `k*n/3..(k+1)*n/3` of a fused q/k/v projection (OpenCLIP's `in_proj`).
    ThirdOfRows(usize),
}

/// What the UNet renaming needs to know of the architecture.
#[derive(Debug, Clone)]
pub struct UNetLayout {
    pub layers_per_block: usize,
    /// Per up block (deepest first): whether it has attentions (its upsampler moves one slot).
    pub up_has_attention: Vec<bool>,
}

fn resnet_name(rest: &str) -> Option<String> {
    let (head, tail) = rest.split_once('.')?;
    let ldm = match head {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    Some(format!("{ldm}.{tail}"))
}

/// Splits `"{a}.{n}.{rest}"` after `prefix` into the number and the rest.
fn indexed<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let (n, rest) = name.strip_prefix(prefix)?.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// The stored name (without `model.diffusion_model.`) of a diffusers UNet tensor.
pub fn unet_ldm_name(name: &str, layout: &UNetLayout) -> Option<String> {
    let per = layout.layers_per_block + 1;
    for (diffusers, ldm) in [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
    ] {
        if let Some(rest) = name.strip_prefix(diffusers) {
            return Some(format!("{ldm}{rest}"));
        }
    }
    if let Some((b, rest)) = indexed(name, "down_blocks.") {
        if let Some((j, rest)) = indexed(rest, "resnets.") {
            return Some(format!("input_blocks.{}.0.{}", 1 + b * per + j, resnet_name(rest)?));
        }
        if let Some((j, rest)) = indexed(rest, "attentions.") {
            return Some(format!("input_blocks.{}.1.{rest}", 1 + b * per + j));
        }
        let rest = rest.strip_prefix("downsamplers.0.conv.")?;
        return Some(format!("input_blocks.{}.0.op.{rest}", b * per + per));
    }
    if let Some(rest) = name.strip_prefix("mid_block.") {
        if let Some((j, rest)) = indexed(rest, "resnets.") {
            return Some(format!("middle_block.{}.{}", 2 * j, resnet_name(rest)?));
        }
        let (_, rest) = indexed(rest, "attentions.")?;
        return Some(format!("middle_block.1.{rest}"));
    }
    if let Some((b, rest)) = indexed(name, "up_blocks.") {
        if let Some((j, rest)) = indexed(rest, "resnets.") {
            return Some(format!("output_blocks.{}.0.{}", b * per + j, resnet_name(rest)?));
        }
        if let Some((j, rest)) = indexed(rest, "attentions.") {
            return Some(format!("output_blocks.{}.1.{rest}", b * per + j));
        }
        let rest = rest.strip_prefix("upsamplers.0.conv.")?;
        let slot = if *layout.up_has_attention.get(b)? { 2 } else { 1 };
        return Some(format!("output_blocks.{}.{slot}.conv.{rest}", b * per + per - 1));
    }
    None
}

/// The stored name (without the VAE prefix) of a diffusers AutoencoderKL tensor; `levels` is
/// the number of blocks (the decoder's `up` list is numbered from the top, diffusers' from the
/// bottom).
pub fn vae_ldm_name(name: &str, levels: usize) -> Option<(String, Op)> {
    let resnet = |rest: &str| rest.replacen("conv_shortcut", "nin_shortcut", 1);
    let (side, rest) = name.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return matches!(side, "quant_conv" | "post_quant_conv").then(|| (name.to_string(), Op::Same));
    }
    if let Some(rest) = rest.strip_prefix("conv_norm_out.") {
        return Some((format!("{side}.norm_out.{rest}"), Op::Same));
    }
    if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        return Some((name.to_string(), Op::Same));
    }
    if let Some(rest) = rest.strip_prefix("mid_block.") {
        if let Some((k, rest)) = indexed(rest, "resnets.") {
            return Some((format!("{side}.mid.block_{}.{}", k + 1, resnet(rest)), Op::Same));
        }
        let (_, rest) = indexed(rest, "attentions.")?;
        let (part, leaf) = rest.rsplit_once('.')?;
        let ldm = match part {
            "group_norm" => "norm",
            "to_q" => "q",
            "to_k" => "k",
            "to_v" => "v",
            "to_out.0" => "proj_out",
            _ => return None,
        };
        let op = if ldm != "norm" && leaf == "weight" { Op::Linear } else { Op::Same };
        return Some((format!("{side}.mid.attn_1.{ldm}.{leaf}"), op));
    }
    let (list, block) = if side == "encoder" { ("down_blocks.", "down") } else { ("up_blocks.", "up") };
    let (i, rest) = indexed(rest, list)?;
    let i = if side == "encoder" { i } else { levels.checked_sub(i + 1)? };
    if let Some((j, rest)) = indexed(rest, "resnets.") {
        return Some((format!("{side}.{block}.{i}.block.{j}.{}", resnet(rest)), Op::Same));
    }
    let sampler = if side == "encoder" { "downsamplers.0.conv." } else { "upsamplers.0.conv." };
    let rest = rest.strip_prefix(sampler)?;
    Some((format!("{side}.{block}.{i}.{block}sample.conv.{rest}"), Op::Same))
}

/// The stored name (without `cond_stage_model.model.`) of a diffusers CLIP text model tensor
/// (without `text_model.`) in OpenCLIP's layout.
pub fn open_clip_ldm_name(name: &str) -> Option<(String, Op)> {
    let same = |s: &str| Some((s.to_string(), Op::Same));
    match name {
        "embeddings.token_embedding.weight" => return same("token_embedding.weight"),
        "embeddings.position_embedding.weight" => return same("positional_embedding"),
        "final_layer_norm.weight" => return same("ln_final.weight"),
        "final_layer_norm.bias" => return same("ln_final.bias"),
        _ => {}
    }
    let (i, rest) = indexed(name, "encoder.layers.")?;
    let block = format!("transformer.resblocks.{i}");
    let (part, leaf) = rest.rsplit_once('.')?;
    let fused = |k: usize| Some((format!("{block}.attn.in_proj_{leaf}"), Op::ThirdOfRows(k)));
    let ldm = match part {
        "layer_norm1" => "ln_1",
        "layer_norm2" => "ln_2",
        "mlp.fc1" => "mlp.c_fc",
        "mlp.fc2" => "mlp.c_proj",
        "self_attn.out_proj" => "attn.out_proj",
        "self_attn.q_proj" => return fused(0),
        "self_attn.k_proj" => return fused(1),
        "self_attn.v_proj" => return fused(2),
        _ => return None,
    };
    Some((format!("{block}.{ldm}.{leaf}"), Op::Same))
}

// ----------------------------------------------------------------------- config inference

fn shape_or(shapes: &dyn TensorShapes, name: &str) -> std::result::Result<Vec<usize>, String> {
    shapes.shape_of(name).ok_or_else(|| format!("missing weight `{name}`"))
}

/// The distinct numbers `n` of stored names `{prefix}{n}.{suffix}`.
fn indices(shapes: &dyn TensorShapes, prefix: &str, suffix: &str) -> BTreeSet<usize> {
    shapes
        .tensor_names()
        .iter()
        .filter_map(|n| indexed(n, prefix))
        .filter(|(_, rest)| rest.starts_with(suffix))
        .map(|(i, _)| i)
        .collect()
}

/// Width of the text embeddings the UNet attends to (`attn2.to_k` takes them).
fn cross_attention_dim(shapes: &dyn TensorShapes) -> Option<usize> {
    let names = shapes.tensor_names();
    let key = names.iter().filter(|n| n.starts_with(UNET_PREFIX) && n.ends_with(".attn2.to_k.weight")).min()?;
    shapes.shape_of(key).and_then(|s| s.get(1).copied())
}

/// A diffusers `unet/config.json` for the UNet under `model.diffusion_model.`. Heads: 8 per
/// block for SD 1.x (convolutional projections), 64 channels per head for SD 2.x (linear ones);
/// sample size 64 (512 px) for SD 1.x, 96 (768 px) for SD 2.x.
pub fn infer_unet_config(shapes: &dyn TensorShapes) -> std::result::Result<Value, String> {
    let p = UNET_PREFIX;
    let conv_in = shape_or(shapes, &format!("{p}input_blocks.0.0.weight"))?;
    let downsamplers = indices(shapes, &format!("{p}input_blocks."), "0.op.weight").len();
    let levels = downsamplers + 1;
    let blocks = indices(shapes, &format!("{p}input_blocks."), "").into_iter().max().unwrap_or(0) + 1;
    // blocks = 1 (conv_in) + levels * layers + (levels - 1) downsamplers.
    let layers = (blocks - 1 - downsamplers) / levels;
    if layers == 0 || 1 + levels * layers + downsamplers != blocks {
        return Err(format!("{blocks} input blocks do not split into {levels} levels of resnets and downsamplers"));
    }
    let first = |b: usize| 1 + b * (layers + 1);
    let mut channels = Vec::new();
    let (mut down, mut up) = (Vec::new(), Vec::new());
    for b in 0..levels {
        channels.push(shape_or(shapes, &format!("{p}input_blocks.{}.0.out_layers.3.weight", first(b)))?[0]);
        let attn = shapes.shape_of(&format!("{p}input_blocks.{}.1.proj_in.weight", first(b))).is_some();
        down.push(if attn { "CrossAttnDownBlock2D" } else { "DownBlock2D" });
        let attn = shapes.shape_of(&format!("{p}output_blocks.{}.1.proj_in.weight", b * (layers + 1))).is_some();
        up.push(if attn { "CrossAttnUpBlock2D" } else { "UpBlock2D" });
    }
    let context = cross_attention_dim(shapes).ok_or("no cross-attention weights (`attn2.to_k`) in the UNet")?;
    let names = shapes.tensor_names();
    let proj_in = names
        .iter()
        .filter(|n| n.starts_with(p) && n.ends_with(".proj_in.weight"))
        .min()
        .ok_or("no attention blocks (`proj_in`) in the UNet")?;
    let linear = shape_or(shapes, proj_in)?.len() == 2;
    let attention_prefix = proj_in.trim_end_matches("proj_in.weight");
    let depth = indices(shapes, &format!("{attention_prefix}transformer_blocks."), "").len().max(1);
    let heads: Value = if linear {
        // SD 2.x: 64 channels per head.
        let per_block: Option<Vec<usize>> = channels.iter().map(|c| c.is_multiple_of(64).then_some(c / 64)).collect();
        json!(per_block.ok_or("block widths are not multiples of 64 (SD 2.x heads); pass --config")?)
    } else {
        json!(8)
    };
    let out = shape_or(shapes, &format!("{p}out.2.weight"))?;
    Ok(json!({
        "sample_size": if linear || context == 1024 { 96 } else { 64 },
        "in_channels": conv_in[1],
        "out_channels": out[0],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": down,
        "up_block_types": up,
        "cross_attention_dim": context,
        "attention_head_dim": heads,
        "use_linear_projection": linear,
        "transformer_layers_per_block": depth,
    }))
}

/// A diffusers `vae/config.json` for the VAE under `prefix`, with SD's scaling factor 0.18215
/// and 32 groups per norm.
pub fn infer_vae_config(shapes: &dyn TensorShapes, prefix: &str) -> std::result::Result<Value, String> {
    let levels = indices(shapes, &format!("{prefix}encoder.down."), "block.0.conv1.weight");
    if levels.is_empty() || levels.len() != levels.iter().max().map_or(0, |m| m + 1) {
        return Err(format!("no encoder blocks `{prefix}encoder.down.N.block.0.conv1.weight`"));
    }
    let channels: Vec<usize> = levels
        .iter()
        .map(|i| shape_or(shapes, &format!("{prefix}encoder.down.{i}.block.0.conv1.weight")).map(|s| s[0]))
        .collect::<std::result::Result<_, _>>()?;
    let layers = indices(shapes, &format!("{prefix}encoder.down.0.block."), "conv1.weight").len();
    let n = channels.len();
    Ok(json!({
        "in_channels": shape_or(shapes, &format!("{prefix}encoder.conv_in.weight"))?[1],
        "out_channels": shape_or(shapes, &format!("{prefix}decoder.conv_out.weight"))?[0],
        "latent_channels": shape_or(shapes, &format!("{prefix}decoder.conv_in.weight"))?[1],
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": vec!["DownEncoderBlock2D"; n],
        "up_block_types": vec!["UpDecoderBlock2D"; n],
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
        "sample_size": 512,
        "force_upcast": true,
        "use_quant_conv": shapes.shape_of(&format!("{prefix}quant_conv.weight")).is_some(),
        "use_post_quant_conv": shapes.shape_of(&format!("{prefix}post_quant_conv.weight")).is_some(),
        "mid_block_add_attention": shapes.shape_of(&format!("{prefix}encoder.mid.attn_1.q.weight")).is_some(),
    }))
}

/// A transformers `CLIPTextConfig` for the stored text encoder: 64 channels per head; quick GELU
/// for OpenAI's CLIP (SD 1.x), exact GELU for OpenCLIP (SD 2.x), whose last block SD 2 skips (it
/// takes the penultimate layer's output).
pub fn infer_text_config(shapes: &dyn TensorShapes, layout: &TextLayout) -> std::result::Result<Value, String> {
    let (token, position, blocks, fc1, act, skip) = match layout {
        TextLayout::Clip { prefix } => (
            format!("{prefix}embeddings.token_embedding.weight"),
            format!("{prefix}embeddings.position_embedding.weight"),
            indices(shapes, &format!("{prefix}encoder.layers."), "layer_norm1.weight").len(),
            format!("{prefix}encoder.layers.0.mlp.fc1.weight"),
            "quick_gelu",
            0,
        ),
        TextLayout::OpenClip => (
            format!("{OPEN_CLIP_PREFIX}token_embedding.weight"),
            format!("{OPEN_CLIP_PREFIX}positional_embedding"),
            indices(shapes, &format!("{OPEN_CLIP_PREFIX}transformer.resblocks."), "ln_1.weight").len(),
            format!("{OPEN_CLIP_PREFIX}transformer.resblocks.0.mlp.c_fc.weight"),
            "gelu",
            1,
        ),
    };
    let token = shape_or(shapes, &token)?;
    let hidden = token[1];
    if blocks <= skip {
        return Err("no text encoder layers".to_string());
    }
    if !hidden.is_multiple_of(64) {
        return Err(format!("hidden size {hidden} is not a multiple of 64 (CLIP heads); pass --config"));
    }
    Ok(json!({
        "vocab_size": token[0],
        "hidden_size": hidden,
        "intermediate_size": shape_or(shapes, &fc1)?[0],
        "num_hidden_layers": blocks - skip,
        "num_attention_heads": hidden / 64,
        "max_position_embeddings": shape_or(shapes, &position)?[0],
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
    }))
}

/// Stable Diffusion's DDIM settings for a checkpoint without a scheduler config (those of the
/// SD 1.5 and SD 2.1 repositories' schedulers).
pub fn default_scheduler_config(sd2: bool) -> Value {
    json!({
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "clip_sample": false, "set_alpha_to_one": false, "steps_offset": 1,
        "prediction_type": if sd2 { "v_prediction" } else { "epsilon" },
    })
}

// ----------------------------------------------------------------------- the view

type Rename = Box<dyn Fn(&str) -> Option<(String, Op)> + Send + Sync>;

/// One component's tensors under diffusers' names.
struct Renamed {
    weights: Arc<Weights>,
    path: PathBuf,
    /// "UNet", "VAE", "text encoder": for messages.
    component: &'static str,
    rename: Rename,
}

impl Renamed {
    fn source(&self, name: &str) -> std::result::Result<(String, Op), Error> {
        (self.rename)(name).ok_or_else(|| {
            Error::weights(
                &self.path,
                format!("the {} asks for `{name}`, which has no place in the layout", self.component),
            )
        })
    }

    fn fetch(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let (stored, op) = self.source(name)?;
        if !self.weights.contains(&stored) {
            return Err(Error::weights(
                &self.path,
                format!("missing weight `{stored}` (the {}'s `{name}`)", self.component),
            ));
        }
        let t = self.weights.load(&stored, dtype, &Device::Cpu)?;
        let t = match op {
            Op::Same => t,
            Op::Linear => match t.dims() {
                [o, i, 1, 1] => t.reshape((*o, *i))?,
                [_, _] => t,
                d => {
                    return Err(Error::weights(
                        &self.path,
                        format!("weight `{stored}` has shape {d:?}, expected [C, C, 1, 1]"),
                    ))
                }
            },
            Op::ThirdOfRows(k) => {
                let rows = t.dim(0)?;
                if rows % 3 != 0 {
                    return Err(Error::weights(
                        &self.path,
                        format!("weight `{stored}` has {rows} rows, not three equal q, k, v parts"),
                    ));
                }
                t.narrow(0, k * rows / 3, rows / 3)?.contiguous()?
            }
        };
        Ok(t.to_device(device)?)
    }

    fn fetch_shaped(&self, name: &str, shape: &Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = self.fetch(name, dtype, device)?;
        if t.dims() != shape.dims() {
            let (stored, _) = self.source(name)?;
            return Err(Error::weights(
                &self.path,
                format!(
                    "weight `{stored}` (the {}'s `{name}`) has shape {:?}, the configuration implies {:?} \
                     (pass --config DIR if the inferred one is wrong)",
                    self.component,
                    t.dims(),
                    shape.dims()
                ),
            ));
        }
        Ok(t)
    }
}

impl SimpleBackend for Renamed {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.fetch_shaped(name, &s, dtype, dev).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.fetch(name, dtype, dev).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        (self.rename)(name).is_some_and(|(stored, _)| self.weights.contains(&stored))
    }
}

// ----------------------------------------------------------------------- the checkpoint

/// Where a component's configuration came from, for the origins line.
fn config_origin(file: &Option<PathBuf>, inferred: &str) -> String {
    match file {
        Some(f) => format!("config {}", f.display()),
        None => format!("config inferred: {inferred}"),
    }
}

/// An opened single-file checkpoint.
pub struct Checkpoint {
    pub path: PathBuf,
    weights: Arc<Weights>,
    pub contents: Contents,
    /// A diffusers folder whose component configs override the inferred ones.
    config_dir: Option<PathBuf>,
}

impl Checkpoint {
    /// Opens `path` (refusing pickles) and finds what it holds.
    pub fn open(path: &Path, config_dir: Option<&Path>) -> Result<Self> {
        refuse_pickle(path)?;
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "checkpoint file not found"),
            ));
        }
        if let Some(dir) = config_dir {
            if !dir.is_dir() {
                return Err(Error::Model(format!(
                    "--config {}: not a folder (a diffusers model folder)",
                    dir.display()
                )));
            }
        }
        let weights = Arc::new(Weights::open(&[path.to_path_buf()])?);
        let contents = Contents::of(weights.as_ref());
        if !contents.unet && contents.vae_prefix.is_none() && contents.text.is_none() {
            return Err(Error::weights(
                path,
                format!(
                    "not a Stable Diffusion checkpoint in the original layout: no tensor under `{UNET_PREFIX}`, \
                     `{VAE_PREFIX}` or `cond_stage_model.` (a diffusers component file goes with its folder)"
                ),
            ));
        }
        Ok(Self { path: path.to_path_buf(), weights, contents, config_dir: config_dir.map(Path::to_path_buf) })
    }

    pub fn is_sd2(&self) -> bool {
        self.contents.is_sd2(self.weights.as_ref())
    }

    fn family(&self) -> &'static str {
        if self.is_sd2() {
            "SD 2.x"
        } else {
            "SD 1.x"
        }
    }

    /// `--config DIR`'s file for a component, if it has one.
    fn config_file(&self, component: &str, file: &str) -> Option<PathBuf> {
        self.config_dir.as_ref().map(|d| d.join(component).join(file)).filter(|p| p.is_file())
    }

    /// The component's config: from `--config` when it has one, else inferred (errors name the
    /// checkpoint and say what to pass).
    fn config<T: serde::de::DeserializeOwned>(
        &self,
        component: &str,
        infer: impl FnOnce() -> std::result::Result<Value, String>,
    ) -> Result<(T, Option<PathBuf>)> {
        if let Some(file) = self.config_file(component, "config.json") {
            return Ok((super::config::read_config(&file)?, Some(file)));
        }
        let value = infer()
            .map_err(|msg| Error::weights(&self.path, format!("cannot infer the {component} configuration: {msg}")))?;
        Ok((parse_config(&value.to_string(), &self.path)?, None))
    }

    fn require(&self, what: &str, present: bool, prefix: &str) -> Result<()> {
        if present {
            Ok(())
        } else {
            Err(Error::weights(&self.path, format!("holds no {what} (no tensor under `{prefix}`)")))
        }
    }

    fn view(&self, component: &'static str, rename: Rename, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend = Renamed { weights: self.weights.clone(), path: self.path.clone(), component, rename };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// The UNet, its config and where each came from.
    pub fn unet(&self, dtype: DType, device: &Device) -> Result<(super::unet::UNet2DConditionModel, String)> {
        use super::unet::{UNet2DConditionConfig, UNet2DConditionModel};
        self.require("UNet", self.contents.unet, UNET_PREFIX)?;
        let (cfg, file): (UNet2DConditionConfig, _) =
            self.config("unet", || infer_unet_config(self.weights.as_ref()))?;
        let at = file.clone().unwrap_or_else(|| self.path.clone());
        cfg.validate().map_err(|msg| Error::config(&at, msg))?;
        let n = cfg.block_out_channels.len();
        let per_block: Vec<usize> = (0..n)
            .map(|i| cfg.layers_per_block.get(i, n, "layers_per_block"))
            .collect::<std::result::Result<_, _>>()
            .map_err(|m| Error::config(&at, m))?;
        let layers = per_block[0];
        if per_block.iter().any(|&l| l != layers) {
            return Err(Error::config(
                &at,
                "key `layers_per_block`: differs between blocks, which the original layout cannot hold",
            ));
        }
        let layout = UNetLayout {
            layers_per_block: layers,
            up_has_attention: cfg.up_block_types.iter().map(|t| t.starts_with("CrossAttn")).collect(),
        };
        let rename: Rename =
            Box::new(move |name| unet_ldm_name(name, &layout).map(|s| (format!("{UNET_PREFIX}{s}"), Op::Same)));
        let unet = UNet2DConditionModel::new(self.view("UNet", rename, dtype, device), &cfg)?;
        let origin = format!("{} ({UNET_PREFIX}; {})", self.path.display(), config_origin(&file, self.family()));
        Ok((unet, origin))
    }

    /// The VAE (under `first_stage_model.`, or bare keys in a VAE-only file).
    pub fn vae(&self, dtype: DType, device: &Device) -> Result<(super::vae::AutoencoderKL, DType, String)> {
        use super::vae::{AutoencoderKL, AutoencoderKLConfig};
        let prefix = self.contents.vae_prefix;
        self.require("VAE", prefix.is_some(), VAE_PREFIX)?;
        let prefix = prefix.unwrap_or_default();
        let (cfg, file): (AutoencoderKLConfig, _) =
            self.config("vae", || infer_vae_config(self.weights.as_ref(), prefix))?;
        let at = file.clone().unwrap_or_else(|| self.path.clone());
        cfg.validate().map_err(|msg| Error::config(&at, msg))?;
        let levels = cfg.block_out_channels.len();
        let rename: Rename =
            Box::new(move |name| vae_ldm_name(name, levels).map(|(s, op)| (format!("{prefix}{s}"), op)));
        let vae_dtype = if cfg.force_upcast && dtype == DType::F16 { DType::F32 } else { dtype };
        let vae = AutoencoderKL::new(self.view("VAE", rename, vae_dtype, device), &cfg)?;
        let shown = if prefix.is_empty() { "VAE" } else { prefix };
        let origin = format!("{} ({shown}; {})", self.path.display(), config_origin(&file, self.family()));
        Ok((vae, vae_dtype, origin))
    }

    /// The text encoder and its config.
    pub fn text_encoder(
        &self,
        dtype: DType,
        device: &Device,
    ) -> Result<(super::clip::ClipTextModel, super::clip::ClipTextConfig, String)> {
        use super::clip::{ClipTextConfig, ClipTextModel};
        let layout = self.contents.text.clone();
        self.require("text encoder", layout.is_some(), "cond_stage_model.")?;
        let layout = layout.expect("checked");
        let file = self.config_file("text_encoder", "config.json");
        let cfg = match &file {
            // Its own reader: a CLIPConfig nests the text tower's settings.
            Some(f) => ClipTextConfig::from_file(f)?,
            None => {
                let (c, _) = self
                    .config::<ClipTextConfig>("text_encoder", || infer_text_config(self.weights.as_ref(), &layout))?;
                c.validate().map_err(|msg| Error::config(&self.path, msg))?;
                c
            }
        };
        let (rename, shown): (Rename, &str) = match layout {
            TextLayout::Clip { prefix } => (
                Box::new(move |name: &str| {
                    Some((format!("{prefix}{}", name.strip_prefix("text_model.").unwrap_or(name)), Op::Same))
                }),
                CLIP_PREFIX,
            ),
            TextLayout::OpenClip => (
                Box::new(|name: &str| {
                    let (s, op) = open_clip_ldm_name(name.strip_prefix("text_model.").unwrap_or(name))?;
                    Some((format!("{OPEN_CLIP_PREFIX}{s}"), op))
                }),
                OPEN_CLIP_PREFIX,
            ),
        };
        let model = ClipTextModel::new(self.view("text encoder", rename, dtype, device), &cfg)?;
        let origin = format!("{} ({shown}; {})", self.path.display(), config_origin(&file, self.family()));
        Ok((model, cfg, origin))
    }

    /// The scheduler: `--config`'s, else Stable Diffusion's DDIM settings for the family.
    pub fn schedule(&self) -> Result<(crate::scheduler::DdimSchedule, String)> {
        use crate::scheduler::DdimSchedule;
        if let Some(file) = self.config_file("scheduler", "scheduler_config.json") {
            let origin = file.display().to_string();
            return Ok((DdimSchedule::from_file(&file)?, origin));
        }
        let value = default_scheduler_config(self.is_sd2());
        let config = parse_config(&value.to_string(), &self.path)?;
        let origin = format!(
            "Stable Diffusion's DDIM settings for {} ({})",
            self.family(),
            value["prediction_type"].as_str().unwrap_or_default()
        );
        Ok((DdimSchedule::new(config)?, origin))
    }

    /// The tokenizer: `--config`'s, else CLIP's vocabulary shipped with the project (the bundled
    /// model's), padded as the family pads (`!` for SD 2.x's OpenCLIP, end-of-text for SD 1.x).
    pub fn tokenizer(&self) -> Result<(super::tokenizer::ClipTokenizer, String)> {
        use super::tokenizer::ClipTokenizer;
        if let Some(dir) = self.config_dir.as_ref().map(|d| d.join("tokenizer")).filter(|d| d.is_dir()) {
            return Ok((ClipTokenizer::from_dir(&dir)?, dir.display().to_string()));
        }
        let dir = super::loading::bundled_model_dir().map(|d| d.join("tokenizer")).ok_or_else(|| {
            Error::Model(format!(
                "{}: a checkpoint holds no tokenizer, and the CLIP tokenizer shipped in {}/tokenizer was not found; \
                 pass --tokenizer DIR or --config DIR",
                self.path.display(),
                super::loading::BUNDLED_MODEL_DIR
            ))
        })?;
        let tokenizer = ClipTokenizer::from_dir(&dir)?;
        if self.contents.text == Some(TextLayout::OpenClip) {
            let tokenizer = tokenizer.with_pad_token("!").map_err(|msg| Error::config(&dir, msg))?;
            return Ok((tokenizer, format!("{} (CLIP vocabulary, padded with `!` as SD 2.x)", dir.display())));
        }
        Ok((tokenizer, format!("{} (CLIP vocabulary)", dir.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(layers: usize, up: &[bool]) -> UNetLayout {
        UNetLayout { layers_per_block: layers, up_has_attention: up.to_vec() }
    }

    #[test]
    fn unet_names_follow_the_ldm_block_numbering() {
        let sd = layout(2, &[false, true, true, true]);
        let cases = [
            ("conv_in.weight", "input_blocks.0.0.weight"),
            ("time_embedding.linear_2.bias", "time_embed.2.bias"),
            ("down_blocks.0.resnets.1.norm1.weight", "input_blocks.2.0.in_layers.0.weight"),
            ("down_blocks.1.attentions.0.proj_in.weight", "input_blocks.4.1.proj_in.weight"),
            ("down_blocks.1.resnets.0.conv_shortcut.weight", "input_blocks.4.0.skip_connection.weight"),
            ("down_blocks.2.downsamplers.0.conv.weight", "input_blocks.9.0.op.weight"),
            ("mid_block.resnets.1.time_emb_proj.bias", "middle_block.2.emb_layers.1.bias"),
            (
                "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                "middle_block.1.transformer_blocks.0.attn2.to_k.weight",
            ),
            ("up_blocks.0.upsamplers.0.conv.weight", "output_blocks.2.1.conv.weight"),
            ("up_blocks.1.upsamplers.0.conv.bias", "output_blocks.5.2.conv.bias"),
            ("up_blocks.3.resnets.2.conv2.weight", "output_blocks.11.0.out_layers.3.weight"),
            ("conv_out.weight", "out.2.weight"),
        ];
        for (d, ldm) in cases {
            assert_eq!(unet_ldm_name(d, &sd).as_deref(), Some(ldm), "{d}");
        }
        assert_eq!(unet_ldm_name("down_blocks.0.resnets.0.nonsense.weight", &sd), None);
    }

    #[test]
    fn vae_names_reverse_the_decoder_and_read_1x1_attention_as_linear() {
        let cases = [
            ("encoder.conv_norm_out.weight", "encoder.norm_out.weight", Op::Same),
            (
                "encoder.down_blocks.1.resnets.0.conv_shortcut.bias",
                "encoder.down.1.block.0.nin_shortcut.bias",
                Op::Same,
            ),
            ("encoder.down_blocks.0.downsamplers.0.conv.weight", "encoder.down.0.downsample.conv.weight", Op::Same),
            ("decoder.up_blocks.0.resnets.2.conv1.weight", "decoder.up.3.block.2.conv1.weight", Op::Same),
            ("decoder.up_blocks.2.upsamplers.0.conv.bias", "decoder.up.1.upsample.conv.bias", Op::Same),
            ("decoder.mid_block.resnets.0.norm1.weight", "decoder.mid.block_1.norm1.weight", Op::Same),
            ("encoder.mid_block.attentions.0.to_out.0.weight", "encoder.mid.attn_1.proj_out.weight", Op::Linear),
            ("encoder.mid_block.attentions.0.to_q.bias", "encoder.mid.attn_1.q.bias", Op::Same),
            ("decoder.mid_block.attentions.0.group_norm.weight", "decoder.mid.attn_1.norm.weight", Op::Same),
            ("post_quant_conv.weight", "post_quant_conv.weight", Op::Same),
        ];
        for (d, ldm, op) in cases {
            assert_eq!(vae_ldm_name(d, 4), Some((ldm.to_string(), op)), "{d}");
        }
    }

    #[test]
    fn open_clip_names_split_the_fused_projection() {
        assert_eq!(
            open_clip_ldm_name("encoder.layers.3.self_attn.k_proj.weight"),
            Some(("transformer.resblocks.3.attn.in_proj_weight".into(), Op::ThirdOfRows(1)))
        );
        assert_eq!(
            open_clip_ldm_name("encoder.layers.0.mlp.fc2.bias"),
            Some(("transformer.resblocks.0.mlp.c_proj.bias".into(), Op::Same))
        );
        assert_eq!(open_clip_ldm_name("embeddings.position_embedding.weight").unwrap().0, "positional_embedding");
    }

    #[test]
    fn weight_file_names_and_pickles() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("model.ckpt");
        assert!(names_a_file(ckpt.to_str().unwrap()), "a missing .ckpt still names a file");
        assert!(!names_a_file(dir.path().to_str().unwrap()));
        assert!(!names_a_file("owner/repo"));
        std::fs::write(&ckpt, b"anything").unwrap();
        let err = refuse_pickle(&ckpt).unwrap_err().to_string();
        assert!(err.starts_with(&ckpt.display().to_string()) && err.contains("never opens"), "{err}");
        // A pickle by its bytes, whatever its name.
        let disguised = dir.path().join("model.safetensors");
        std::fs::write(&disguised, [0x80, 0x04, 0x95, 0x00]).unwrap();
        assert!(refuse_pickle(&disguised).is_err());
        std::fs::write(&disguised, b"PK\x03\x04rest").unwrap();
        assert!(refuse_pickle(&disguised).is_err());
        std::fs::write(&disguised, [8, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert!(refuse_pickle(&disguised).is_ok());
    }
}
