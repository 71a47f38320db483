//! `diffedit invert`: DDIM inversion alone, what its latents look like, and (`--check`) whether
//! plain decoding gives the source back.

use std::path::PathBuf;

use clap::Args;

use super::shared::{check_outputs, load, picture_tile, print_summary, warn_truncated, Written};
use super::{default_out, ModelArgs, OutputArgs};
use crate::diffedit::experiments::{encode_single, evenly_spaced, latents_to_image, psnr, reconstruct, Ledger};
use crate::diffedit::{EditParams, Noise, PromptEmbeddings};
use crate::error::{Error, Result};
use crate::image_io::{self, image_to_tensor};
use crate::viz::figure;

#[derive(Args, Debug)]
pub struct InvertArgs {
    /// The picture.
    #[arg(long, value_name = "IN")]
    pub image: PathBuf,
    /// What the picture shows: the inversion's prompt.
    #[arg(long)]
    pub prompt: String,
    /// Also decode the last inverted latent back at guidance 1 and compare it with the source.
    #[arg(long)]
    pub check: bool,
    /// The check's figure: source beside the reconstruction and its PSNR (default:
    /// IN_reconstruction.png; needs --check).
    #[arg(long, value_name = "OUT.png")]
    pub out: Option<PathBuf>,
    /// Strip of evenly spaced inversion latents, decoded (default: IN_inversion.png).
    #[arg(long, value_name = "PATH")]
    pub strip: Option<PathBuf>,
    /// How many inversion latents the strip shows.
    #[arg(long, default_value_t = 5)]
    pub strip_tiles: usize,
    /// DDIM inference steps (the inversion runs all of them).
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Guidance of the inversion (classifier-free with the empty prompt when > 1).
    #[arg(long, default_value_t = 1.0)]
    pub inversion_guidance: f64,
    /// Seed of the VAE posterior sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Generator of the seeded draw: torch (PyTorch's CPU generator, bit for bit) or native.
    #[arg(long, default_value = "torch")]
    pub rng: String,
    /// Process at exactly this pixel size (default: the model's native long side, aspect kept).
    #[arg(long, value_name = "WxH")]
    pub size: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(args: &InvertArgs) -> Result<()> {
    let params = EditParams {
        steps: args.steps,
        inversion_guidance: args.inversion_guidance,
        seed: args.seed,
        rng: args.rng.parse()?,
        ..EditParams::default()
    };
    params.validate()?;
    if args.prompt.trim().is_empty() {
        return Err(Error::invalid("--prompt is empty: describe the picture as it is"));
    }
    if args.strip_tiles == 0 {
        return Err(Error::invalid("--strip-tiles must be at least 1, got 0"));
    }
    if args.out.is_some() && !args.check {
        return Err(Error::invalid("--out is the reconstruction figure of --check: add --check"));
    }
    if let Some(s) = &args.size {
        image_io::parse_size(s)?;
    }
    let strip_out = args.strip.clone().unwrap_or_else(|| default_out(&args.image, "inversion"));
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.image, "reconstruction"));
    let mut outputs = vec![("--strip", strip_out.as_path())];
    if args.check {
        outputs.push(("--out", out.as_path()));
    }
    check_outputs(&outputs)?;

    let o = &args.output;
    let l = load(&args.model, Some(&args.image), args.size.as_deref(), o)?;
    let pipeline = l.engine.pipeline(params.clone())?;
    let latent = pipeline.latent_shape(l.width, l.height);
    // The same VAE draw as `edit` with this seed (its mask noise comes after).
    let noise = Noise::drawn(params.rng, args.seed, latent, 0)?;
    let image = image_to_tensor(&l.processed)?;
    let progress = o.progress();
    let mut ledger = Ledger::default();
    let (prompt, latents) = ledger.run(&pipeline, "encode", || {
        let prompt = encode_single(&pipeline, &args.prompt, "--prompt")?;
        let latents = pipeline.encode_image(&image, &noise.vae_noise)?;
        Ok((prompt, latents))
    })?;
    if prompt.truncated {
        warn_truncated(o, l.engine.model(), std::slice::from_ref(&args.prompt));
    }
    let emb = PromptEmbeddings {
        target: prompt.cond.clone(),
        reference: prompt.cond.clone(),
        uncond: prompt.uncond.clone(),
        truncated: Vec::new(),
    };
    let inverted =
        ledger.run(&pipeline, "inversion", || pipeline.invert(&latents, &emb, args.steps, progress.as_ref()))?;

    let style = figure::Style::default();
    let mut written = Written::default();
    let n = inverted.len() - 1;
    let mut indices = evenly_spaced(inverted.len(), args.strip_tiles);
    // Fewer latents than tiles would repeat some.
    indices.dedup();
    let mut tiles = Vec::with_capacity(indices.len());
    for &k in &indices {
        let picture = ledger.run(&pipeline, "vae_decode", || latents_to_image(&pipeline, &inverted[k]))?;
        tiles.push(picture_tile(format!("step {k}/{n}"), &picture, &style));
    }
    let fig = figure::strip(&tiles, Some("DDIM inversion: latents decoded"), &style);
    written.figure(&fig, &tiles, &strip_out)?;

    let mut check = serde_json::Value::Null;
    if args.check {
        let z = ledger
            .run(&pipeline, "reconstruction", || reconstruct(&pipeline, &inverted, &prompt, progress.as_ref()))?;
        let rebuilt = ledger.run(&pipeline, "vae_decode", || latents_to_image(&pipeline, &z))?;
        let db = psnr(&l.processed, &rebuilt)?;
        let tiles = vec![
            picture_tile("source", &l.processed, &style),
            picture_tile(format!("reconstruction · PSNR {db:.2} dB"), &rebuilt, &style),
        ];
        let fig = figure::strip(&tiles, Some("inversion, then decoding at guidance 1"), &style);
        written.figure(&fig, &tiles, &out)?;
        o.say(format!("reconstruction PSNR {db:.2} dB"));
        check = serde_json::json!({ "psnr_db": if db.is_finite() { serde_json::json!(db) } else { serde_json::json!("inf") } });
    }
    let extra = serde_json::json!({
        "processing_size": [l.width, l.height],
        "inversion_steps": n,
        "strip_indices": indices,
        "check": check,
    });
    print_summary(o, "invert", &written, &ledger, &pipeline, l.load_s, extra);
    Ok(())
}
