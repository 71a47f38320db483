//! The `diffedit` command line: argument parsing, then one call into the library per command.

mod ablate;
mod batch;
mod bench;
mod compare;
mod edit;
pub mod eval;
mod generate;
mod invert;
mod mask;
mod progress;
mod report;
pub mod scenes;
mod serve;
mod shared;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::diffedit::engine::Engine;
use crate::diffedit::{Progress, Silent};
use crate::error::{Error, Result};
use crate::models::hub::Fetcher;
use crate::models::loading::{ModelSpec, StableDiffusion};

#[derive(Parser, Debug)]
#[command(name = "diffedit", version, args_override_self = true)]
#[command(about = "DiffEdit: edit a picture with two prompts, no mask to draw")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Edit a picture: find where SOURCE and TARGET disagree and repaint only there.
    Edit(edit::EditArgs),
    /// A local web app for editing by looking (find the mask, move the threshold, paint, edit).
    Serve(serve::ServeArgs),
    /// Edit every row of a manifest (JSON Lines or CSV): resumable, shardable over array jobs.
    Batch(batch::BatchArgs),
    /// Draw a picture from a prompt (DDIM with classifier-free guidance).
    Generate(generate::GenerateArgs),
    /// The mask step alone: heat map, mask, overlay, and a strip of thresholds.
    Mask(mask::MaskArgs),
    /// DDIM inversion alone: its latents decoded, and with --check the reconstruction and its PSNR.
    Invert(invert::InvertArgs),
    /// The encode ratio's effect: one mask, one inversion, one decoding per ratio.
    Ablate(ablate::AblateArgs),
    /// Naive img2img (no mask) beside DiffEdit; with --mask-blur the soft mask beside the hard one.
    Compare(compare::CompareArgs),
    /// One panel for a slide: source, heat map, mask, overlay, result (and img2img).
    Report(report::ReportArgs),
    /// Time the full-size SD 1.5 components with random weights (nothing downloaded).
    Bench(bench::BenchArgs),
    /// Evaluate DiffEdit and img2img on held-out synthetic edits (default: the shipped model).
    Eval(eval::EvalArgs),
    /// Write synthetic training scenes (pictures, masks, captions) for tools/train_tiny_sd.py.
    Scenes(scenes::ScenesArgs),
}

/// Which model to run, and where.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Whole model: a diffusers folder, a Hugging Face repo id, or a single-file checkpoint
    /// (FILE.safetensors in the original Stable Diffusion layout; .ckpt pickles are refused).
    /// Default: Stable Diffusion as the tutorial combines it (CompVis/stable-diffusion-v1-4,
    /// stabilityai/sd-vae-ft-ema, openai/clip-vit-large-patch14) when it is in the Hugging Face
    /// cache, else the bundled small model (models/diffedit-shapes). `tutorial` asks for the
    /// tutorial's, downloading it if needed.
    #[arg(long, value_name = "ID|DIR|FILE")]
    pub model: Option<String>,
    /// UNet from another folder or repo.
    #[arg(long, value_name = "ID|DIR")]
    pub unet: Option<String>,
    /// VAE from another folder or repo, or a VAE file (FILE.safetensors, original layout).
    #[arg(long, value_name = "ID|DIR|FILE")]
    pub vae: Option<String>,
    /// Text encoder (and, unless --tokenizer, tokenizer) from another folder or repo.
    #[arg(long, value_name = "ID|DIR")]
    pub text_encoder: Option<String>,
    /// Tokenizer from another folder or repo.
    #[arg(long, value_name = "ID|DIR")]
    pub tokenizer: Option<String>,
    /// A diffusers model folder whose configs (unet/, vae/, text_encoder/, scheduler/) and
    /// tokenizer a single-file checkpoint uses, instead of inferring them from its tensors.
    #[arg(long, value_name = "DIR")]
    pub config: Option<String>,
    /// cpu, cuda (build with --features cuda) or metal (--features metal).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, f16 or bf16 (default: f32 on CPU, f16 on GPUs).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Never use the network; only local folders and the Hugging Face cache.
    #[arg(long)]
    pub offline: bool,
}

impl ModelArgs {
    pub fn spec(&self) -> ModelSpec {
        ModelSpec {
            model: self.model.clone(),
            unet: self.unet.clone(),
            vae: self.vae.clone(),
            text_encoder: self.text_encoder.clone(),
            tokenizer: self.tokenizer.clone(),
            config: self.config.clone(),
        }
    }

    pub fn device(&self) -> Result<(candle_core::Device, candle_core::DType)> {
        use candle_core::{DType, Device};
        let device = match self.device.as_str() {
            "cpu" => Device::Cpu,
            "cuda" => Device::new_cuda(0).map_err(|e| Error::invalid(format!("--device cuda: {e}")))?,
            "metal" => Device::new_metal(0).map_err(|e| Error::invalid(format!("--device metal: {e}")))?,
            other => return Err(Error::invalid(format!("--device must be cpu, cuda or metal, got `{other}`"))),
        };
        let dtype = match self.dtype.as_deref() {
            None if device.is_cpu() => DType::F32,
            None => DType::F16,
            Some("f32") => DType::F32,
            Some("f16") => DType::F16,
            Some("bf16") => DType::BF16,
            Some(other) => return Err(Error::invalid(format!("--dtype must be f32, f16 or bf16, got `{other}`"))),
        };
        Ok((device, dtype))
    }

    /// Loads the named model, or with none named Stable Diffusion from the cache, else the
    /// bundled small model; says which unless `quiet`.
    pub fn load(&self, quiet: bool) -> Result<StableDiffusion> {
        let (device, dtype) = self.device()?;
        let mut fetcher = Fetcher::from_env().with_progress(!quiet);
        if self.offline {
            fetcher = fetcher.with_offline(true);
        }
        let (spec, choice) = self.spec().resolve(&fetcher);
        if let (false, Some(why)) = (quiet, choice.explain()) {
            eprintln!("{why}");
        }
        let model = StableDiffusion::load(&spec, &fetcher, &device, dtype)?;
        // Never silently slow: a dtype with no fast path here says what runs instead, even with --quiet.
        if let Some(line) = &model.compute.fallback {
            eprintln!("warning: {line}");
        }
        Ok(model)
    }

    /// [`ModelArgs::load`] into an [`Engine`] with a stage cache of `cache_mb`; says where the
    /// model's recommended edit settings come from unless `quiet`.
    pub fn engine(&self, quiet: bool, cache_mb: usize) -> Result<Engine> {
        let engine = Engine::new(self.load(quiet)?, cache_mb)?;
        if let (false, Some(file)) = (quiet, engine.edit_defaults_file()) {
            eprintln!(
                "edit settings from {}: {} (flags given on the command line win)",
                file.display(),
                engine.edit_defaults().describe()
            );
        }
        Ok(engine)
    }
}

/// Output options every command shares.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// No progress bars or messages.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

impl OutputArgs {
    pub fn progress(&self) -> Box<dyn Progress> {
        if self.quiet || self.json && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            Box::new(Silent)
        } else {
            Box::new(progress::Bars::default())
        }
    }

    pub fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Edit(args) => edit::run(&args),
        Command::Batch(args) => batch::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Mask(args) => mask::run(&args),
        Command::Invert(args) => invert::run(&args),
        Command::Ablate(args) => ablate::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Report(args) => report::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Scenes(args) => scenes::run(&args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

pub(crate) fn path_str(p: &std::path::Path) -> String {
    p.display().to_string()
}

pub(crate) fn default_out(input: &std::path::Path, suffix: &str) -> PathBuf {
    let stem = input.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    input.with_file_name(format!("{stem}_{suffix}.png"))
}
