//! `diffedit edit`.

use std::path::{Path, PathBuf};

use clap::Args;

use super::shared::{check_outputs, check_prompts, edit_noise, load};
use super::{default_out, path_str, ModelArgs, OutputArgs};
use crate::diffedit::{experiments, Alignment, DiffEdit, EditParams, ModelEditDefaults};
use crate::error::{Error, Result};
use crate::image_io::{self, image_to_tensor, resize, save_image, tensor_to_image};
use crate::models::loading::StableDiffusion;
use crate::paste::paste_edit;
use crate::viz;

#[derive(Args, Debug)]
pub struct EditArgs {
    /// The picture to edit.
    #[arg(long, value_name = "IN")]
    pub image: PathBuf,
    /// What the picture shows now ("a horse on a grass field").
    #[arg(long)]
    pub source: String,
    /// What it should show ("a zebra on a grass field").
    #[arg(long)]
    pub target: String,
    /// The edited picture (default: IN_edit.png next to the input).
    #[arg(long, value_name = "OUT.png")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub edit: EditFlags,
    /// Write the binary mask at the picture's size.
    #[arg(long, value_name = "PATH")]
    pub save_mask: Option<PathBuf>,
    /// Write the normalised difference map in a colour map.
    #[arg(long, value_name = "PATH")]
    pub save_heatmap: Option<PathBuf>,
    /// Write the mask tinted over the picture.
    #[arg(long, value_name = "PATH")]
    pub save_overlay: Option<PathBuf>,
    /// Take the random draws (vae_noise, mask_noise) from this safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub noise: Option<PathBuf>,
    /// Write every intermediate tensor (f32) to this safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub trace: Option<PathBuf>,
    /// Process at exactly this pixel size (default: the model's native long side, aspect kept).
    #[arg(long, value_name = "WxH")]
    pub size: Option<String>,
    /// Write the decoding's intermediates (every 10 steps and the last), decoded, as a strip.
    #[arg(long, value_name = "PATH")]
    pub save_steps: Option<PathBuf>,
    /// Decode with the mask blurred by a Gaussian of this sigma (latent cells): a soft mask.
    #[arg(long, value_name = "SIGMA", allow_negative_numbers = true)]
    pub mask_blur: Option<f64>,
    /// Paste the edit into the input picture: outside the mask and a feathered band around it,
    /// every pixel is the input's own at its full size, instead of the VAE's reconstruction
    /// resized (which is what the reference writes).
    #[arg(long)]
    pub keep_background: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The tutorial's parameters as flags.
#[derive(Args, Debug, Clone)]
pub struct EditFlags {
    /// DDIM inference steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Share of the schedule inverted and re-decoded (0, 1] [default: 0.8, or the model's diffedit.json].
    #[arg(long)]
    pub encode_ratio: Option<f64>,
    /// Classifier-free guidance of the decoding [default: 7.5, or the model's diffedit.json].
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Guidance of the inversion (classifier-free with the empty prompt when > 1).
    #[arg(long, default_value_t = 1.0)]
    pub inversion_guidance: f64,
    /// Noise samples averaged for the mask.
    #[arg(long, default_value_t = 10)]
    pub mask_samples: usize,
    /// Noise level of the mask (0, 1] [default: 0.5, or the model's diffedit.json].
    #[arg(long)]
    pub mask_noise_level: Option<f64>,
    /// Threshold of the normalised difference [0, 1] [default: 0.5, or the model's diffedit.json].
    #[arg(long)]
    pub mask_threshold: Option<f64>,
    /// exact (latents paired with their own noise level) or notebook (the tutorial's code).
    #[arg(long, default_value = "exact")]
    pub alignment: String,
    /// Seed of the random draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// UNet batch size of the mask evaluations (lower it to save memory).
    #[arg(long, default_value_t = 4)]
    pub mask_batch_size: usize,
}

impl EditFlags {
    /// The parameters with the tutorial's defaults for flags left out (checked before any model
    /// loads, so that a bad flag fails at once).
    pub fn params(&self) -> Result<EditParams> {
        self.params_with(&ModelEditDefaults::default())
    }

    /// The parameters for `model`: flags left out take the model folder's `diffedit.json`, then the
    /// tutorial's defaults.
    pub fn params_for(&self, model: &StableDiffusion) -> Result<EditParams> {
        self.params_with(&model.edit_defaults)
    }

    fn params_with(&self, model: &ModelEditDefaults) -> Result<EditParams> {
        let base = model.apply_to(EditParams::default());
        let p = EditParams {
            steps: self.steps,
            encode_ratio: self.encode_ratio.unwrap_or(base.encode_ratio),
            guidance: self.guidance.unwrap_or(base.guidance),
            inversion_guidance: self.inversion_guidance,
            mask_samples: self.mask_samples,
            mask_noise_level: self.mask_noise_level.unwrap_or(base.mask_noise_level),
            mask_threshold: self.mask_threshold.unwrap_or(base.mask_threshold),
            alignment: self.alignment.parse::<Alignment>()?,
            seed: self.seed,
            mask_batch_size: self.mask_batch_size,
        };
        p.validate()?;
        Ok(p)
    }
}

pub fn run(args: &EditArgs) -> Result<()> {
    // Checked before the model loads, so a bad flag fails at once.
    args.edit.params()?;
    check_prompts(&args.source, &args.target)?;
    let out_path = args.out.clone().unwrap_or_else(|| default_out(&args.image, "edit"));
    let outputs: Vec<(&str, &Path)> = [
        ("--out", Some(out_path.as_path())),
        ("--save-mask", args.save_mask.as_deref()),
        ("--save-heatmap", args.save_heatmap.as_deref()),
        ("--save-overlay", args.save_overlay.as_deref()),
        ("--trace", args.trace.as_deref()),
        ("--save-steps", args.save_steps.as_deref()),
    ]
    .into_iter()
    .filter_map(|(flag, p)| p.map(|p| (flag, p)))
    .collect();
    check_outputs(&outputs)?;
    if let Some(sigma) = args.mask_blur {
        experiments::check_sigma(sigma)?;
    }
    if let Some(noise) = &args.noise {
        if !noise.is_file() {
            return Err(Error::io(noise, std::io::Error::new(std::io::ErrorKind::NotFound, "noise file not found")));
        }
    }

    let o = &args.output;
    let loaded = load(&args.model, Some(&args.image), args.size.as_deref(), o)?;
    let (model, original, processed) = (&loaded.model, &loaded.original, &loaded.processed);
    let (width, height, load_s) = (loaded.width, loaded.height, loaded.load_s);
    let params = args.edit.params_for(model)?;
    let pipeline = DiffEdit::new(model, params.clone())?;
    let noise = edit_noise(&pipeline, &params, args.noise.as_deref(), &loaded)?;
    let image = image_to_tensor(processed)?;
    let progress = o.progress();
    let (result, soft_mask) = match args.mask_blur {
        Some(sigma) => {
            let (r, soft) = experiments::edit_with_blurred_mask(
                &pipeline,
                &image,
                &args.source,
                &args.target,
                &noise,
                sigma,
                progress.as_ref(),
            )?;
            (r, Some(soft))
        }
        None => (pipeline.edit(&image, &args.source, &args.target, &noise, progress.as_ref())?, None),
    };
    for p in &result.embeddings.truncated {
        o.say(format!("warning: prompt longer than {} tokens was truncated: {p:?}", model.tokenizer.max_length()));
    }

    let (ow, oh) = original.dimensions();
    let edited = tensor_to_image(&result.decoded)?;
    let (mh, mw, mask) = image_io::map_values(&result.mask.mask)?;
    let picture = if args.keep_background {
        // The mask the decoding used: the soft one when the mask was blurred.
        match &soft_mask {
            Some(soft) => {
                let (sh, sw, values) = image_io::map_values(soft)?;
                paste_edit(original, &edited, &values, sh, sw)?
            }
            None => paste_edit(original, &edited, &mask, mh, mw)?,
        }
    } else {
        resize(&edited, ow as usize, oh as usize)
    };
    save_image(&picture, &out_path)?;
    let mut written = vec![path_str(&out_path)];
    if let Some(p) = &args.save_mask {
        let picture = match &soft_mask {
            Some(soft) => {
                let (sh, sw, values) = image_io::map_values(soft)?;
                viz::figure::gray_image(&values, sh, sw, ow, oh)
            }
            None => viz::mask_image(&mask, mh, mw, ow, oh),
        };
        save_image(&picture, p)?;
        written.push(path_str(p));
    }
    if let Some(p) = &args.save_heatmap {
        let (h, w, values) = image_io::map_values(&result.mask.normalized)?;
        save_image(&viz::heatmap_image(&values, h, w, ow, oh), p)?;
        written.push(path_str(p));
    }
    if let Some(p) = &args.save_overlay {
        save_image(&viz::overlay_image(original, &mask, mh, mw), p)?;
        written.push(path_str(p));
    }
    if let Some(p) = &args.save_steps {
        save_steps_strip(&pipeline, &result, p)?;
        written.push(path_str(p));
    }
    if let Some(p) = &args.trace {
        crate::trace::write_trace(&result, p)?;
        written.push(path_str(p));
    }
    let coverage = viz::coverage(&mask);
    o.say(format!("mask covers {:.1}% of the picture; wrote {}", coverage * 100.0, written.join(", ")));
    if o.json {
        let summary = serde_json::json!({
            "command": "edit",
            "files": written,
            "input_size": [ow, oh],
            "processing_size": [width, height],
            "mask_coverage": coverage,
            "keep_background": args.keep_background,
            "mask_timestep": result.mask.timestep,
            "unet_evaluations": result.unet_evaluations,
            "timings_s": {
                "load": load_s,
                "encode": result.timings.encode_s,
                "mask": result.timings.mask_s,
                "inversion": result.timings.inversion_s,
                "decoding": result.timings.decoding_s,
                "vae_decode": result.timings.vae_decode_s,
            },
            "model": model.origins,
            "params": params,
            "precision": model.compute.precision, "isa": model.compute.isa, "fallback": model.compute.fallback,
        });
        println!("{summary}");
    }
    Ok(())
}

/// The strip of `--save-steps`: the decoding's latents after every 10th step and the last, decoded.
fn save_steps_strip(pipeline: &DiffEdit, result: &crate::diffedit::EditOutput, path: &Path) -> Result<()> {
    let s = result.decoded_latents.len() - 1;
    let style = viz::figure::Style::default();
    let tiles = experiments::saved_steps(s, 10)
        .into_iter()
        .map(|k| {
            let picture = experiments::latents_to_image(pipeline, &result.decoded_latents[k])?;
            Ok(viz::figure::Tile::picture(format!("step {k}/{s}"), &picture, &style))
        })
        .collect::<Result<Vec<_>>>()?;
    let fig = viz::figure::strip(&tiles, Some("masked DDIM decoding"), &style);
    save_image(&fig.image, path)
}
