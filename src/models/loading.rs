//! Assembling a Stable Diffusion model from its components: a diffusers folder or hub repo for
//! the whole model, or component by component (as the tutorial takes its UNet from
//! CompVis/stable-diffusion-v1-4, its VAE from stabilityai/sd-vae-ft-ema and its text encoder
//! from openai/clip-vit-large-patch14).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::clip::{ClipTextConfig, ClipTextModel};
use super::config::read_config;
use super::hub::{Fetcher, ModelSource};
use super::single_file::{self, Checkpoint};
use super::tokenizer::ClipTokenizer;
use super::unet::{UNet2DConditionConfig, UNet2DConditionModel};
use super::vae::{AutoencoderKL, AutoencoderKLConfig};
use super::weights::Weights;
use crate::error::{Error, Result};
use crate::scheduler::{DdimSchedule, DdimSchedulerConfig};

/// The tutorial's components.
pub const DEFAULT_UNET: &str = "CompVis/stable-diffusion-v1-4";
pub const DEFAULT_VAE: &str = "stabilityai/sd-vae-ft-ema";
pub const DEFAULT_TEXT_ENCODER: &str = "openai/clip-vit-large-patch14";

/// Which model, and optionally which component from elsewhere. Each field is a local folder or a
/// hub repo id (`owner/name[@revision]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSpec {
    /// A whole diffusers model; `None` means the tutorial's combination.
    pub model: Option<String>,
    pub unet: Option<String>,
    pub vae: Option<String>,
    pub text_encoder: Option<String>,
    /// Defaults to the text encoder's source.
    pub tokenizer: Option<String>,
    /// A diffusers folder whose component configs (and tokenizer) a single-file checkpoint
    /// (`model` or `vae` naming a `.safetensors` file) uses instead of inferring them.
    pub config: Option<String>,
}

/// Where each component was loaded from, for messages and summaries.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ComponentOrigins {
    pub unet: String,
    pub vae: String,
    pub text_encoder: String,
    pub tokenizer: String,
    pub scheduler: String,
}

pub struct StableDiffusion {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub vae: AutoencoderKL,
    pub unet: UNet2DConditionModel,
    pub schedule: DdimSchedule,
    pub device: Device,
    /// Compute dtype of the UNet and the text encoder.
    pub dtype: DType,
    /// Compute dtype of the VAE: f32 when its config asks for `force_upcast` and the compute
    /// dtype is f16 (SD's VAE overflows in f16), as diffusers' pipelines do.
    pub vae_dtype: DType,
    /// How the CPU kernels' matrix products run: bf16 when bf16 was asked for on a CPU with a
    /// bf16 unit (`dtype` is then f32: the tensors between the products), else f32.
    pub matmul: crate::kernels::MatmulPrecision,
    /// What runs for the dtype asked for (`precision`, `isa`, a `fallback` line), for messages
    /// and the commands' `--json`.
    pub compute: crate::kernels::ComputeInfo,
    pub origins: ComponentOrigins,
    /// The whole model's local folder, when it was loaded from one (not for hub repos or models
    /// put together component by component); where its `diffedit.json` would be.
    pub model_dir: Option<PathBuf>,
}

/// What `--model tutorial` names: the tutorial's combination, even when it must be downloaded.
pub const TUTORIAL_MODEL_KEYWORD: &str = "tutorial";

/// The project's small trained model, shipped in the repository (see its README), for machines
/// without Stable Diffusion weights.
pub const BUNDLED_MODEL_DIR: &str = "models/diffedit-shapes";

/// Where the shipped model is: `$DIFFEDIT_BUNDLED_MODEL`, else `models/diffedit-shapes` in the
/// current folder, beside the executable's repository (`target/<profile>/diffedit` -> `../..`)
/// or in the source tree the binary was built from. `None` when none of them holds a model.
pub fn bundled_model_dir() -> Option<PathBuf> {
    let is_model = |p: &Path| p.join("model_index.json").is_file();
    if let Some(dir) = std::env::var_os("DIFFEDIT_BUNDLED_MODEL").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(dir)).filter(|p| is_model(p));
    }
    let mut candidates = vec![PathBuf::from(BUNDLED_MODEL_DIR)];
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        candidates.push(exe_dir.join(BUNDLED_MODEL_DIR));
        candidates.extend(exe_dir.ancestors().nth(2).map(|root| root.join(BUNDLED_MODEL_DIR)));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(BUNDLED_MODEL_DIR));
    candidates.into_iter().find(|p| is_model(p))
}

/// Which model a [`ModelSpec`] ended up naming, for the message that says which one ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelChoice {
    /// The user named a model or a component.
    Named,
    /// Nothing named, and the tutorial's Stable Diffusion is in the Hugging Face cache.
    TutorialCached,
    /// `--model tutorial`: the tutorial's combination, downloaded if missing.
    TutorialRequested,
    /// Nothing named and Stable Diffusion not cached: the shipped small model.
    Bundled(PathBuf),
    /// Nothing named, not cached and no shipped model found: the tutorial's, downloaded if allowed.
    TutorialFallback,
}

impl ModelChoice {
    /// One line for the user; `None` when they named the model themselves.
    pub fn explain(&self) -> Option<String> {
        match self {
            ModelChoice::Named | ModelChoice::TutorialRequested => None,
            ModelChoice::TutorialCached => Some(format!(
                "using Stable Diffusion from the Hugging Face cache (the tutorial's {DEFAULT_UNET}, \
                 {DEFAULT_VAE}, {DEFAULT_TEXT_ENCODER})"
            )),
            ModelChoice::Bundled(dir) => Some(format!(
                "using the small bundled model diffedit-shapes ({}): Stable Diffusion is not in the Hugging Face \
                 cache; it edits 32x32 synthetic shapes only. For real photos name a model with --model \
                 (a diffusers folder or repo id), or --model {TUTORIAL_MODEL_KEYWORD} to download the tutorial's",
                dir.display()
            )),
            ModelChoice::TutorialFallback => Some(
                "no model named, Stable Diffusion not cached and no bundled model found: using the tutorial's \
                 Stable Diffusion"
                    .to_string(),
            ),
        }
    }
}

/// Whether every component of the tutorial's combination, weights included, is in the cache
/// (looked up without touching the network).
pub fn tutorial_model_cached(fetcher: &Fetcher) -> bool {
    let offline = fetcher.clone().with_offline(true).with_progress(false);
    let has = |repo: &str, name: &str| -> bool {
        let Ok(src) = ModelSource::parse(repo) else { return false };
        component_subfolder(&offline, &src, name, "config.json")
            .and_then(|sub| offline.weight_files(&src, &sub))
            .is_ok()
    };
    let tokenizer = ModelSource::parse(DEFAULT_TEXT_ENCODER)
        .and_then(|src| {
            let sub = component_subfolder(&offline, &src, "tokenizer", "tokenizer_config.json")
                .or_else(|_| component_subfolder(&offline, &src, "tokenizer", "vocab.json"))?;
            fetch_tokenizer_files(&offline, &src, &sub)
        })
        .is_ok();
    tokenizer && has(DEFAULT_UNET, "unet") && has(DEFAULT_VAE, "vae") && has(DEFAULT_TEXT_ENCODER, "text_encoder")
}

impl ModelSpec {
    /// True when nothing at all is named.
    pub fn is_unnamed(&self) -> bool {
        self.model.is_none()
            && self.unet.is_none()
            && self.vae.is_none()
            && self.text_encoder.is_none()
            && self.tokenizer.is_none()
            && self.config.is_none()
    }

    /// Settles what "no model named" means: Stable Diffusion (the tutorial's) whenever it is in
    /// the Hugging Face cache, else the shipped small model, so that a machine without network
    /// or weights still edits. `--model tutorial` asks for the tutorial's combination outright.
    pub fn resolve(&self, fetcher: &Fetcher) -> (ModelSpec, ModelChoice) {
        if self.model.as_deref() == Some(TUTORIAL_MODEL_KEYWORD) && !Path::new(TUTORIAL_MODEL_KEYWORD).exists() {
            return (ModelSpec { model: None, ..self.clone() }, ModelChoice::TutorialRequested);
        }
        if !self.is_unnamed() {
            return (self.clone(), ModelChoice::Named);
        }
        if tutorial_model_cached(fetcher) {
            return (self.clone(), ModelChoice::TutorialCached);
        }
        match bundled_model_dir() {
            Some(dir) => {
                let spec = ModelSpec { model: Some(dir.display().to_string()), ..ModelSpec::default() };
                (spec, ModelChoice::Bundled(dir))
            }
            None => (self.clone(), ModelChoice::TutorialFallback),
        }
    }
}

/// The tutorial's scheduler: DDIMScheduler(beta_start=0.00085, beta_end=0.012,
/// beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False), steps_offset 0.
pub fn tutorial_scheduler_config() -> DdimSchedulerConfig {
    let json = r#"{"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                  "clip_sample": false, "set_alpha_to_one": false, "num_train_timesteps": 1000}"#;
    serde_json::from_str(json).expect("the built-in scheduler config parses")
}

/// Like `get_optional`, but offline a file that is not cached counts as absent: probing for a
/// layout must not fail on the layout the repo does not have. The error is kept for the message.
fn probe(fetcher: &Fetcher, src: &ModelSource, sub: &str, file: &str) -> Result<(Option<PathBuf>, Option<Error>)> {
    match fetcher.get_optional(src, sub, file) {
        Ok(found) => Ok((found, None)),
        Err(e) if fetcher.is_offline() => Ok((None, Some(e))),
        Err(e) => Err(e),
    }
}

/// The subfolder holding a component inside `src`: `name/` when it has `probe_file` there (a
/// whole diffusers model), else the root (a repo that holds only this component).
fn component_subfolder(fetcher: &Fetcher, src: &ModelSource, name: &str, probe_file: &str) -> Result<String> {
    let (in_sub, sub_err) = probe(fetcher, src, name, probe_file)?;
    if in_sub.is_some() {
        return Ok(name.to_string());
    }
    let (at_root, _) = probe(fetcher, src, "", probe_file)?;
    if at_root.is_some() {
        return Ok(String::new());
    }
    Err(sub_err.unwrap_or_else(|| {
        Error::Model(format!("{}: no {name} found (looked for {name}/{probe_file} and {probe_file})", src.describe()))
    }))
}

fn origin(src: &ModelSource, sub: &str) -> String {
    if sub.is_empty() {
        src.describe()
    } else {
        format!("{} ({sub})", src.describe())
    }
}

fn open_weights(files: &[PathBuf]) -> Result<Arc<Weights>> {
    Ok(Arc::new(Weights::open(files)?))
}

/// Validation failures of a config name the file.
fn check(path: &Path, v: std::result::Result<(), String>) -> Result<()> {
    v.map_err(|msg| Error::config(path, msg))
}

impl StableDiffusion {
    /// Loads every component, reading each architecture from its `config.json`.
    pub fn load(spec: &ModelSpec, fetcher: &Fetcher, device: &Device, dtype: DType) -> Result<Self> {
        // bf16 on a CPU with a bf16 unit: f32 tensors whose matrix products run in bf16; f16 on the
        // CPU: f32 (kernels::compute_info).
        let compute = crate::kernels::compute_info(device, dtype);
        crate::kernels::with_matmul_precision(compute.matmul, || Self::load_as(spec, fetcher, device, compute.clone()))
    }

    fn load_as(
        spec: &ModelSpec,
        fetcher: &Fetcher,
        device: &Device,
        compute: crate::kernels::ComputeInfo,
    ) -> Result<Self> {
        // `--model FILE.safetensors` / `--vae FILE.safetensors`: single-file checkpoints.
        let config_dir = spec.config.as_deref().map(Path::new);
        let checkpoint = match spec.model.as_deref() {
            Some(m) if single_file::names_a_file(m) => Some(Checkpoint::open(Path::new(m), config_dir)?),
            _ => None,
        };
        let vae_file = match spec.vae.as_deref() {
            Some(v) if single_file::names_a_file(v) => Some(Checkpoint::open(Path::new(v), config_dir)?),
            _ => None,
        };
        if config_dir.is_some() && checkpoint.is_none() && vae_file.is_none() {
            return Err(Error::invalid(
                "--config applies to single-file checkpoints: pass --model FILE.safetensors or --vae FILE.safetensors",
            ));
        }
        // A component named on its own wins; then the checkpoint; then the whole model.
        let (dtype, matmul) = (compute.tensors, compute.matmul);
        let pick = |own: &Option<String>, default: &str| -> Result<ModelSource> {
            let whole = if checkpoint.is_some() { None } else { spec.model.as_deref() };
            ModelSource::parse(own.as_deref().or(whole).unwrap_or(default))
        };
        let from_checkpoint = |own: &Option<String>| if own.is_none() { checkpoint.as_ref() } else { None };

        // Tokenizer first: it is cheap and its errors are the quickest to report.
        let (tokenizer, tokenizer_origin) = match from_checkpoint(&spec.tokenizer.clone().or(spec.text_encoder.clone()))
        {
            Some(ckpt) => ckpt.tokenizer()?,
            None => {
                let tok_src = match (&spec.tokenizer, &spec.text_encoder) {
                    (Some(t), _) => ModelSource::parse(t)?,
                    (None, Some(t)) => ModelSource::parse(t)?,
                    (None, None) => pick(&None, DEFAULT_TEXT_ENCODER)?,
                };
                let tok_sub = component_subfolder(fetcher, &tok_src, "tokenizer", "tokenizer_config.json")
                    .or_else(|_| component_subfolder(fetcher, &tok_src, "tokenizer", "vocab.json"))?;
                let tok_dir = fetch_tokenizer_files(fetcher, &tok_src, &tok_sub)?;
                (ClipTokenizer::from_dir(&tok_dir)?, origin(&tok_src, &tok_sub))
            }
        };

        let (text_encoder, text_cfg, text_origin) = match from_checkpoint(&spec.text_encoder) {
            Some(ckpt) => ckpt.text_encoder(dtype, device)?,
            None => {
                let text_src = pick(&spec.text_encoder, DEFAULT_TEXT_ENCODER)?;
                let text_sub = component_subfolder(fetcher, &text_src, "text_encoder", "config.json")?;
                let text_cfg_path = fetcher.get(&text_src, &text_sub, "config.json")?;
                let text_cfg = ClipTextConfig::from_file(&text_cfg_path)?;
                let text_weights = open_weights(&fetcher.weight_files(&text_src, &text_sub)?)?;
                let text_encoder = ClipTextModel::new(text_weights.var_builder(dtype, device), &text_cfg)?;
                (text_encoder, text_cfg, origin(&text_src, &text_sub))
            }
        };

        let (vae, vae_dtype, vae_origin) = match vae_file.as_ref().or(from_checkpoint(&spec.vae)) {
            Some(ckpt) => ckpt.vae(dtype, device)?,
            None => {
                let vae_src = pick(&spec.vae, DEFAULT_VAE)?;
                let vae_sub = component_subfolder(fetcher, &vae_src, "vae", "config.json")?;
                let vae_cfg_path = fetcher.get(&vae_src, &vae_sub, "config.json")?;
                let vae_cfg: AutoencoderKLConfig = read_config(&vae_cfg_path)?;
                check(&vae_cfg_path, vae_cfg.validate())?;
                let vae_weights = open_weights(&fetcher.weight_files(&vae_src, &vae_sub)?)?;
                let vae_dtype = if vae_cfg.force_upcast && dtype == DType::F16 { DType::F32 } else { dtype };
                let vae = AutoencoderKL::new(vae_weights.var_builder(vae_dtype, device), &vae_cfg)?;
                (vae, vae_dtype, origin(&vae_src, &vae_sub))
            }
        };
        let vae_cfg = vae.config.clone();

        let (unet, unet_origin) = match from_checkpoint(&spec.unet) {
            Some(ckpt) => ckpt.unet(dtype, device)?,
            None => {
                let unet_src = pick(&spec.unet, DEFAULT_UNET)?;
                let unet_sub = component_subfolder(fetcher, &unet_src, "unet", "config.json")?;
                let unet_cfg_path = fetcher.get(&unet_src, &unet_sub, "config.json")?;
                let unet_cfg: UNet2DConditionConfig = read_config(&unet_cfg_path)?;
                check(&unet_cfg_path, unet_cfg.validate())?;
                let unet_weights = open_weights(&fetcher.weight_files(&unet_src, &unet_sub)?)?;
                let unet = UNet2DConditionModel::new(unet_weights.var_builder(dtype, device), &unet_cfg)?;
                (unet, origin(&unet_src, &unet_sub))
            }
        };
        let unet_cfg = unet.config.clone();

        // A whole model brings its scheduler config (read as diffusers' DDIMScheduler.from_pretrained
        // would); the tutorial's combination uses the tutorial's explicit DDIM settings.
        let (schedule, scheduler_origin) = match (&checkpoint, &spec.model) {
            (Some(ckpt), _) => ckpt.schedule()?,
            (None, Some(m)) => {
                let src = ModelSource::parse(m)?;
                match fetcher.get_optional(&src, "scheduler", "scheduler_config.json")? {
                    Some(path) => (DdimSchedule::from_file(&path)?, origin(&src, "scheduler")),
                    None => (DdimSchedule::new(tutorial_scheduler_config())?, "tutorial DDIM settings".to_string()),
                }
            }
            (None, None) => (DdimSchedule::new(tutorial_scheduler_config())?, "tutorial DDIM settings".to_string()),
        };

        if text_cfg.hidden_size != cross_attention_width(&unet_cfg) {
            return Err(Error::Model(format!(
                "the text encoder ({text_origin}) has hidden size {} but the UNet ({unet_origin}) expects cross_attention_dim {}",
                text_cfg.hidden_size,
                cross_attention_width(&unet_cfg)
            )));
        }
        if vae_cfg.latent_channels != unet_cfg.in_channels {
            return Err(Error::Model(format!(
                "the VAE ({vae_origin}) has {} latent channels but the UNet ({unet_origin}) takes {}",
                vae_cfg.latent_channels, unet_cfg.in_channels
            )));
        }

        let origins = ComponentOrigins {
            unet: unet_origin,
            vae: vae_origin,
            text_encoder: text_origin,
            tokenizer: tokenizer_origin,
            scheduler: scheduler_origin,
        };
        let model_dir = match spec.model.as_deref() {
            Some(m) if checkpoint.is_none() => match ModelSource::parse(m)? {
                ModelSource::Dir(dir) => Some(dir),
                _ => None,
            },
            _ => None,
        };
        Ok(Self {
            tokenizer,
            text_encoder,
            vae,
            unet,
            schedule,
            device: device.clone(),
            dtype,
            vae_dtype,
            matmul,
            compute,
            origins,
            model_dir,
        })
    }

    /// Pixels per latent cell.
    pub fn vae_factor(&self) -> usize {
        self.vae.config.downscale_factor()
    }

    /// The picture's long side the UNet was trained at (512 for SD 1.x, 768 for SD 2.x-v).
    pub fn native_size(&self) -> usize {
        let (h, w) = self.unet.config.default_latent_size().unwrap_or((64, 64));
        h.max(w) * self.vae_factor()
    }

    /// The factor by which the UNet downsamples its latents.
    pub fn unet_factor(&self) -> usize {
        1 << (self.unet.config.block_out_channels.len() - 1)
    }

    /// The text encoder's last hidden state for one prompt, [1, 77, D]. A prompt longer than the
    /// tokenizer's limit is truncated (`TokenizedPrompt::truncated` tells).
    pub fn encode_prompt(&self, prompt: &str) -> Result<(Tensor, super::tokenizer::TokenizedPrompt)> {
        let tokens = self.tokenizer.encode(prompt);
        let ids = Tensor::new(tokens.ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let emb = self.text_encoder.forward(&ids)?;
        Ok((emb, tokens))
    }
}

/// The width of the text embeddings the UNet attends to.
fn cross_attention_width(cfg: &UNet2DConditionConfig) -> usize {
    match &cfg.cross_attention_dim {
        super::config::PerBlock::One(v) => *v,
        super::config::PerBlock::Each(v) => v.first().copied().unwrap_or(0),
    }
}

/// Fetches the tokenizer files of `src/sub` that exist and returns the folder holding them.
fn fetch_tokenizer_files(fetcher: &Fetcher, src: &ModelSource, sub: &str) -> Result<PathBuf> {
    let mut dir = None;
    let mut have_vocab = true;
    for name in ["tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"] {
        match probe(fetcher, src, sub, name)?.0 {
            Some(p) => dir = p.parent().map(Path::to_path_buf),
            None if name == "vocab.json" || name == "merges.txt" => have_vocab = false,
            None => {}
        }
    }
    if !have_vocab {
        // No vocab.json + merges.txt: tokenizer.json must be there (its error names it).
        let p = fetcher.get(src, sub, "tokenizer.json")?;
        dir = p.parent().map(Path::to_path_buf);
    }
    dir.ok_or_else(|| {
        Error::Model(format!(
            "{}: no tokenizer files in {}",
            src.describe(),
            if sub.is_empty() { "the root" } else { sub }
        ))
    })
}

impl crate::diffedit::Denoiser for StableDiffusion {
    fn predict(&self, x: &Tensor, t: i64, emb: &Tensor) -> candle_core::Result<Tensor> {
        let b = x.dim(0)?;
        let emb = if emb.dim(0)? == 1 && b > 1 { emb.repeat((b, 1, 1))? } else { emb.clone() };
        self.unet.forward(x, t as f64, &emb)
    }
}
