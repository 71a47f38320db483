//! transformers' `CLIPTextModel`: the text encoder whose last hidden state conditions Stable
//! Diffusion's UNet. Weight names follow transformers (`embeddings.token_embedding`,
//! `encoder.layers.0.self_attn.q_proj`, `final_layer_norm`, ...), with or without the
//! `text_model.` prefix of checkpoints saved from the full `CLIPModel`.

use std::path::Path;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};

use crate::kernels::{self, Linear};

use crate::error::Error;
use crate::models::config::parse_config;

/// A text encoder `config.json`. Absent keys take transformers' `CLIPTextConfig` defaults;
/// unknown keys are ignored.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// Width of the text projection of `CLIPTextModelWithProjection`; unused here.
    #[serde(default)]
    pub projection_dim: Option<usize>,
    #[serde(default = "default_num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// "quick_gelu" (x * sigmoid(1.702 x)), "gelu" (exact, erf) or "gelu_new" (tanh approximation).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pad_token_id", deserialize_with = "token_id::deserialize")]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_bos_token_id", deserialize_with = "token_id::deserialize")]
    pub bos_token_id: Option<u32>,
    #[serde(default = "default_eos_token_id", deserialize_with = "token_id::deserialize")]
    pub eos_token_id: Option<u32>,
}

fn default_vocab_size() -> usize {
    49408
}
fn default_hidden_size() -> usize {
    512
}
fn default_intermediate_size() -> usize {
    2048
}
fn default_num_hidden_layers() -> usize {
    12
}
fn default_num_attention_heads() -> usize {
    8
}
fn default_max_position_embeddings() -> usize {
    77
}
fn default_hidden_act() -> String {
    "quick_gelu".to_string()
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
// transformers' CLIPTextConfig defaults (pad 1 differs from the tokenizer's, as upstream notes).
fn default_pad_token_id() -> Option<u32> {
    Some(1)
}
fn default_bos_token_id() -> Option<u32> {
    Some(49406)
}
fn default_eos_token_id() -> Option<u32> {
    Some(49407)
}

/// Token ids in transformers configs may be a number, `null`, or (for `eos_token_id`) a list
/// whose first entry is the one the model uses.
mod token_id {
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(u32),
        Many(Vec<u32>),
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        Ok(match Option::<Raw>::deserialize(d)? {
            None => None,
            Some(Raw::One(id)) => Some(id),
            Some(Raw::Many(ids)) => ids.first().copied(),
        })
    }
}

/// A `CLIPConfig` (text and vision towers) whose text part we want.
#[derive(serde::Deserialize)]
struct FullClipConfig {
    text_config: ClipTextConfig,
}

impl Default for ClipTextConfig {
    /// transformers' `CLIPTextConfig()` (the openai/clip-vit-base-patch32 text tower).
    fn default() -> Self {
        serde_json::from_str("{}").expect("every key has a default")
    }
}

impl ClipTextConfig {
    /// Parses a text encoder config.json: either a `CLIPTextConfig` (SD's
    /// `text_encoder/config.json`) or a full `CLIPConfig` with a nested `text_config` object, as
    /// in openai/clip-vit-large-patch14's config.json. Errors name the file and key.
    pub fn from_file(path: &Path) -> crate::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::config(path, format!("invalid JSON: {e}")))?;
        let config = if value.get("text_config").is_some_and(|v| v.is_object()) {
            parse_config::<FullClipConfig>(&text, path)?.text_config
        } else {
            parse_config::<ClipTextConfig>(&text, path)?
        };
        config.validate().map_err(|msg| Error::config(path, msg))?;
        Ok(config)
    }

    /// Checks that the config describes what is implemented here; the message names the key.
    pub fn validate(&self) -> std::result::Result<(), String> {
        Activation::parse(&self.hidden_act)?;
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "key `num_attention_heads`: {} does not divide `hidden_size` = {}",
                self.num_attention_heads, self.hidden_size
            ));
        }
        for (key, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if value == 0 {
                return Err(format!("key `{key}`: must be positive"));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    QuickGelu,
    GeluErf,
    GeluTanh,
}

impl Activation {
    fn parse(name: &str) -> std::result::Result<Self, String> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::GeluErf),
            // Both are transformers' names for the tanh approximation.
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            other => Err(format!(
                "key `hidden_act`: unsupported activation {other:?} (expected \"quick_gelu\", \"gelu\" or \"gelu_new\")"
            )),
        }
    }

    fn forward(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::QuickGelu => xs.mul(&candle_nn::ops::sigmoid(&(xs * 1.702)?)?),
            Self::GeluErf => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
        }
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        let d = config.hidden_size;
        Ok(Self {
            q_proj: kernels::linear(d, d, vb.pp("q_proj"))?,
            k_proj: kernels::linear(d, d, vb.pp("k_proj"))?,
            v_proj: kernels::linear(d, d, vb.pp("v_proj"))?,
            out_proj: kernels::linear(d, d, vb.pp("out_proj"))?,
            heads: config.num_attention_heads,
            head_dim: d / config.num_attention_heads,
        })
    }

    /// `causal_mask`: `[L, L]` f32, 0 on and below the diagonal, -inf above.
    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let (b, l, d) = xs.dims3()?;
        let split = |t: Tensor| t.reshape((b, l, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous();
        // Scaling q before the product (rather than the scores after) keeps f16 scores in range.
        let q = split((self.q_proj.forward(xs)? * (self.head_dim as f64).powf(-0.5))?)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?.broadcast_add(causal_mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, l, d))?;
        self.out_proj.forward(&out)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: SelfAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, config: &ClipTextConfig, activation: Activation) -> Result<Self> {
        let (d, eps) = (config.hidden_size, config.layer_norm_eps);
        Ok(Self {
            layer_norm1: candle_nn::layer_norm(d, eps, vb.pp("layer_norm1"))?,
            self_attn: SelfAttention::new(vb.pp("self_attn"), config)?,
            layer_norm2: candle_nn::layer_norm(d, eps, vb.pp("layer_norm2"))?,
            fc1: kernels::linear(d, config.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: kernels::linear(config.intermediate_size, d, vb.pp("mlp.fc2"))?,
            activation,
        })
    }

    /// Pre-norm transformer block: attention and MLP each add onto the residual stream.
    fn forward(&self, xs: &Tensor, causal_mask: &Tensor) -> Result<Tensor> {
        let h = self.self_attn.forward(&self.layer_norm1.forward(xs)?, causal_mask)?;
        let xs = (xs + h)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let h = self.fc2.forward(&self.activation.forward(&h)?)?;
        xs + h
    }
}

/// The CLIP text transformer. Runs in the dtype and on the device of its `VarBuilder`.
#[derive(Debug, Clone)]
pub struct ClipTextModel {
    pub config: ClipTextConfig,
    token_embedding: Embedding,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
}

impl ClipTextModel {
    /// Weights saved with or without the `text_model.` prefix (openai/clip-vit-large-patch14's
    /// model.safetensors also holds vision weights and a projection, which are ignored).
    pub fn new(vb: VarBuilder, config: &ClipTextConfig) -> Result<Self> {
        config.validate().map_err(|msg| candle_core::Error::Msg(format!("text encoder config: {msg}")))?;
        let activation = Activation::parse(&config.hidden_act).map_err(candle_core::Error::Msg)?;
        let vb =
            if vb.contains_tensor("text_model.embeddings.token_embedding.weight") { vb.pp("text_model") } else { vb };
        let d = config.hidden_size;
        let token_embedding = candle_nn::embedding(config.vocab_size, d, vb.pp("embeddings.token_embedding"))?;
        let position_embedding =
            vb.pp("embeddings.position_embedding").get((config.max_position_embeddings, d), "weight")?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(vb.pp(format!("encoder.layers.{i}")), config, activation))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = candle_nn::layer_norm(d, config.layer_norm_eps, vb.pp("final_layer_norm"))?;
        Ok(Self { config: config.clone(), token_embedding, position_embedding, layers, final_layer_norm })
    }

    /// `input_ids` `[B, L]` (u32), L <= max_position_embeddings; returns the last hidden state
    /// after the final layer norm, `[B, L, hidden]`. Every position attends to itself and the
    /// positions before it only (no padding mask, as Stable Diffusion uses it).
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, l) = input_ids.dims2()?;
        if l == 0 || l > self.config.max_position_embeddings {
            return Err(candle_core::Error::Msg(format!(
                "ClipTextModel::forward: {l} tokens, expected 1 to {} (max_position_embeddings)",
                self.config.max_position_embeddings
            )));
        }
        let tokens = self.token_embedding.forward(input_ids)?;
        let mut xs = tokens.broadcast_add(&self.position_embedding.narrow(0, 0, l)?)?;
        let mask = causal_mask(l, input_ids.device())?;
        for layer in &self.layers {
            xs = layer.forward(&xs, &mask)?;
        }
        self.final_layer_norm.forward(&xs)
    }
}

fn causal_mask(l: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mask: Vec<f32> =
        (0..l).flat_map(|i| (0..l).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(mask, (l, l), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_transformers_clip_text_config() {
        let c = ClipTextConfig::default();
        assert_eq!(
            (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads),
            (49408, 512, 2048, 12, 8)
        );
        assert_eq!((c.max_position_embeddings, c.hidden_act.as_str(), c.layer_norm_eps), (77, "quick_gelu", 1e-5));
    }

    #[test]
    fn unsupported_activation_names_the_key() {
        let c = ClipTextConfig { hidden_act: "relu".into(), ..Default::default() };
        assert_eq!(
            c.validate().unwrap_err(),
            "key `hidden_act`: unsupported activation \"relu\" (expected \"quick_gelu\", \"gelu\" or \"gelu_new\")"
        );
    }
}
