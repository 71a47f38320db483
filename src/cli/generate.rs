//! `diffedit generate`: text-to-image with DDIM and classifier-free guidance, to make sources.

use std::path::PathBuf;

use clap::Args;

use super::shared::{check_outputs, load, print_summary, warn_truncated, Written};
use super::{ModelArgs, OutputArgs};
use crate::diffedit::experiments::{encode_single, generate, latents_to_image, Ledger, Stream};
use crate::diffedit::EditParams;
use crate::error::{Error, Result};
use crate::image_io;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// What to draw ("a photograph of a horse on a grass field").
    #[arg(long)]
    pub prompt: String,
    /// The picture.
    #[arg(long, value_name = "OUT.png")]
    pub out: PathBuf,
    /// DDIM inference steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Classifier-free guidance.
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Seed of the start noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Generator of the start noise: torch (the latents diffusers draws with
    /// `generator=torch.Generator("cpu").manual_seed(SEED)`) or native.
    #[arg(long, default_value = "torch")]
    pub rng: String,
    /// Pixel size (default: the model's native square).
    #[arg(long, value_name = "WxH")]
    pub size: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let params = EditParams {
        steps: args.steps,
        guidance: args.guidance,
        seed: args.seed,
        rng: args.rng.parse()?,
        ..EditParams::default()
    };
    params.validate()?;
    if args.prompt.trim().is_empty() {
        return Err(Error::invalid("--prompt is empty: describe the picture to generate"));
    }
    if let Some(s) = &args.size {
        image_io::parse_size(s)?;
    }
    check_outputs(&[("--out", &args.out)])?;

    let o = &args.output;
    let l = load(&args.model, None, args.size.as_deref(), o)?;
    let pipeline = l.engine.pipeline(params.clone())?;
    let mut ledger = Ledger::default();
    let prompt = ledger.run(&pipeline, "encode", || encode_single(&pipeline, &args.prompt, "--prompt"))?;
    if prompt.truncated {
        warn_truncated(o, l.engine.model(), std::slice::from_ref(&args.prompt));
    }
    let noise = crate::rng::standard_normal(
        params.rng,
        args.seed,
        Stream::Generation,
        pipeline.latent_shape(l.width, l.height),
    )?;
    let progress = o.progress();
    let history = ledger.run(&pipeline, "decoding", || generate(&pipeline, &prompt, &noise, progress.as_ref()))?;
    let last = history.last().ok_or_else(|| Error::invalid("generation produced no latent"))?;
    let picture = ledger.run(&pipeline, "vae_decode", || latents_to_image(&pipeline, last))?;
    let mut written = Written::default();
    written.image(&picture, &args.out)?;
    let extra = serde_json::json!({ "size": [l.width, l.height], "prompt": args.prompt });
    print_summary(o, "generate", &written, &ledger, &pipeline, l.load_s, extra);
    Ok(())
}
