//! CLIPTextModel against transformers (float32, CPU) on the two tiny models' text encoders.
//! Reference outputs and token ids come from tools/fixtures_vae_clip.py.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, load_fixture, tiny_model};
use diffedit::models::clip::{ClipTextConfig, ClipTextModel};
use diffedit::models::weights::Weights;

fn encoder_dir(name: &str) -> PathBuf {
    tiny_model(name).join("text_encoder")
}

fn load_clip_from(weights: PathBuf, name: &str, dtype: DType) -> ClipTextModel {
    let config = ClipTextConfig::from_file(&encoder_dir(name).join("config.json")).unwrap();
    let weights = Arc::new(Weights::open(&[weights]).unwrap());
    ClipTextModel::new(weights.var_builder(dtype, &Device::Cpu), &config).unwrap()
}

fn load_clip(name: &str, dtype: DType) -> ClipTextModel {
    load_clip_from(encoder_dir(name).join("model.safetensors"), name, dtype)
}

/// Token ids (u32) and the reference last hidden state.
fn fixture(name: &str) -> (Tensor, Tensor) {
    let fx = load_fixture(&common::fixtures().join(format!("parity/clip_{name}.safetensors")));
    (fx["input_ids"].to_dtype(DType::U32).unwrap(), fx["last_hidden_state"].clone())
}

fn check_f32(name: &str) {
    let model = load_clip(name, DType::F32);
    let (ids, expected) = fixture(name);
    let hidden = model.forward(&ids).unwrap();
    assert_close(&format!("{name} last_hidden_state"), &hidden, &expected, 1e-4);
    // Row by row as well: the empty prompt is mostly padding, the long one is truncated.
    for row in 0..ids.dim(0).unwrap() {
        let one = model.forward(&ids.narrow(0, row, 1).unwrap()).unwrap();
        assert_close(&format!("{name} row {row}"), &one, &expected.narrow(0, row, 1).unwrap(), 1e-4);
    }
}

#[test]
fn tiny_sd_matches_transformers() {
    let model = load_clip("tiny-sd", DType::F32);
    assert_eq!((model.config.hidden_size, model.config.hidden_act.as_str()), (32, "quick_gelu"));
    check_f32("tiny-sd");
}

#[test]
fn tiny_sd2_matches_transformers() {
    // Stored in f16, computed in f32 here and in the reference.
    let model = load_clip("tiny-sd2", DType::F32);
    assert_eq!((model.config.hidden_size, model.config.hidden_act.as_str()), (48, "gelu"));
    check_f32("tiny-sd2");
}

#[test]
fn shorter_sequences_are_a_causal_prefix() {
    // With a causal mask the first k outputs depend on the first k tokens only.
    let model = load_clip("tiny-sd", DType::F32);
    let (ids, _) = fixture("tiny-sd");
    let full = model.forward(&ids).unwrap();
    let prefix = model.forward(&ids.narrow(1, 0, 10).unwrap()).unwrap();
    assert_eq!(prefix.dims(), &[3, 10, 32]);
    assert_close("prefix of 10 tokens", &prefix, &full.narrow(1, 0, 10).unwrap(), 1e-6);
}

#[test]
fn too_many_tokens_is_an_error() {
    let model = load_clip("tiny-sd", DType::F32);
    let ids = Tensor::zeros((1, 78), DType::U32, &Device::Cpu).unwrap();
    let err = model.forward(&ids).unwrap_err().to_string();
    assert_eq!(err, "ClipTextModel::forward: 78 tokens, expected 1 to 77 (max_position_embeddings)");
}

/// A full `CLIPConfig` as in openai/clip-vit-large-patch14: the text tower is `text_config`,
/// absent keys take transformers' defaults, vision keys are ignored.
#[test]
fn nested_text_config_parses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        r#"{
  "architectures": ["CLIPModel"],
  "model_type": "clip",
  "projection_dim": 768,
  "text_config": {
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
    "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "projection_dim": 768,
    "dropout": 0.0, "prefix": null, "model_type": "clip_text_model"
  },
  "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                    "num_hidden_layers": 24, "patch_size": 14}
}"#,
    )
    .unwrap();
    let c = ClipTextConfig::from_file(&path).unwrap();
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads),
        (49408, 768, 3072, 12, 12)
    );
    assert_eq!((c.max_position_embeddings, c.hidden_act.as_str(), c.layer_norm_eps), (77, "quick_gelu", 1e-5));
    assert_eq!((c.bos_token_id, c.eos_token_id, c.pad_token_id), (Some(0), Some(2), Some(1)));
    assert_eq!(c.projection_dim, Some(768));
}

#[test]
fn config_errors_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"text_config": {"hidden_size": "wide"}}"#).unwrap();
    let err = ClipTextConfig::from_file(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: key `text_config.hidden_size`: invalid type: string \"wide\", expected usize at line 1 column 38",
            path.display()
        )
    );
    std::fs::write(&path, r#"{"hidden_act": "relu"}"#).unwrap();
    let err = ClipTextConfig::from_file(&path).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: key `hidden_act`: unsupported activation \"relu\" (expected \"quick_gelu\", \"gelu\" or \"gelu_new\")",
            path.display()
        )
    );
    std::fs::write(&path, r#"{"hidden_size": 30, "num_attention_heads": 4}"#).unwrap();
    let err = ClipTextConfig::from_file(&path).unwrap_err().to_string();
    assert_eq!(err, format!("{}: key `num_attention_heads`: 4 does not divide `hidden_size` = 30", path.display()));
}

/// The tiny encoders are stored as `CLIPTextModel` saves them (no prefix); a full `CLIPModel`
/// checkpoint prefixes the text tower with `text_model.` and holds vision weights besides.
#[test]
fn text_model_prefixed_weights_load() {
    let src = encoder_dir("tiny-sd").join("model.safetensors");
    let tensors = candle_core::safetensors::load(&src, &Device::Cpu).unwrap();
    assert!(tensors.keys().all(|k| !k.starts_with("text_model.")));
    let mut prefixed: HashMap<String, Tensor> =
        tensors.into_iter().map(|(k, v)| (format!("text_model.{k}"), v)).collect();
    let dev = Device::Cpu;
    prefixed.insert("text_projection.weight".into(), Tensor::zeros((32, 32), DType::F32, &dev).unwrap());
    prefixed.insert(
        "vision_model.embeddings.patch_embedding.weight".into(),
        Tensor::zeros((16, 3, 4, 4), DType::F32, &dev).unwrap(),
    );
    // Vision weights are not part of the text model and must be left alone.
    prefixed.insert("vision_model.post_layernorm.weight".into(), Tensor::ones(16, DType::F32, &dev).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    candle_core::safetensors::save(&prefixed, &path).unwrap();

    let (ids, expected) = fixture("tiny-sd");
    let plain = load_clip("tiny-sd", DType::F32).forward(&ids).unwrap();
    let from_prefixed = load_clip_from(path, "tiny-sd", DType::F32).forward(&ids).unwrap();
    assert_close("text_model.-prefixed weights vs plain", &from_prefixed, &plain, 0.0);
    assert_close("text_model.-prefixed weights vs transformers", &from_prefixed, &expected, 1e-4);
}

/// The text encoder in f16 on candle's CPU against the f32 reference.
#[test]
fn f16_is_close_to_the_f32_reference() {
    for name in ["tiny-sd", "tiny-sd2"] {
        let model = load_clip(name, DType::F16);
        let (ids, expected) = fixture(name);
        let hidden = model.forward(&ids).unwrap();
        assert_eq!(hidden.dtype(), DType::F16);
        assert_close(&format!("{name} f16 last_hidden_state"), &hidden, &expected, 5e-3);
    }
}
