//! `diffedit edit`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;

use super::{default_out, path_str, ModelArgs, OutputArgs};
use crate::diffedit::{Alignment, DiffEdit, EditParams, Noise};
use crate::error::{Error, Result};
use crate::image_io::{
    self, check_output_path, check_processing_size, image_to_tensor, load_rgb, processing_size, resize, save_image,
    tensor_to_image,
};
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
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The tutorial's parameters as flags.
#[derive(Args, Debug, Clone)]
pub struct EditFlags {
    /// DDIM inference steps.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Share of the schedule inverted and re-decoded (0, 1].
    #[arg(long, default_value_t = 0.8)]
    pub encode_ratio: f64,
    /// Classifier-free guidance of the decoding.
    #[arg(long, default_value_t = 7.5)]
    pub guidance: f64,
    /// Guidance of the inversion (classifier-free with the empty prompt when > 1).
    #[arg(long, default_value_t = 1.0)]
    pub inversion_guidance: f64,
    /// Noise samples averaged for the mask.
    #[arg(long, default_value_t = 10)]
    pub mask_samples: usize,
    /// Noise level of the mask (0, 1].
    #[arg(long, default_value_t = 0.5)]
    pub mask_noise_level: f64,
    /// Threshold of the normalised difference [0, 1].
    #[arg(long, default_value_t = 0.5)]
    pub mask_threshold: f64,
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
    pub fn params(&self) -> Result<EditParams> {
        let p = EditParams {
            steps: self.steps,
            encode_ratio: self.encode_ratio,
            guidance: self.guidance,
            inversion_guidance: self.inversion_guidance,
            mask_samples: self.mask_samples,
            mask_noise_level: self.mask_noise_level,
            mask_threshold: self.mask_threshold,
            alignment: self.alignment.parse::<Alignment>()?,
            seed: self.seed,
            mask_batch_size: self.mask_batch_size,
        };
        p.validate()?;
        Ok(p)
    }
}

pub fn run(args: &EditArgs) -> Result<()> {
    let params = args.edit.params()?;
    if args.source.trim().is_empty() {
        return Err(Error::invalid("--source prompt is empty: describe the picture as it is"));
    }
    if args.target.trim().is_empty() {
        return Err(Error::invalid("--target prompt is empty: describe the picture as it should become"));
    }
    let out_path = args.out.clone().unwrap_or_else(|| default_out(&args.image, "edit"));
    let outputs: Vec<(&str, &Path)> = [
        ("--out", Some(out_path.as_path())),
        ("--save-mask", args.save_mask.as_deref()),
        ("--save-heatmap", args.save_heatmap.as_deref()),
        ("--save-overlay", args.save_overlay.as_deref()),
        ("--trace", args.trace.as_deref()),
    ]
    .into_iter()
    .filter_map(|(flag, p)| p.map(|p| (flag, p)))
    .collect();
    for (flag, p) in &outputs {
        check_output_path(p, flag)?;
    }
    let requested_size = args.size.as_deref().map(image_io::parse_size).transpose()?;
    if let Some(noise) = &args.noise {
        if !noise.is_file() {
            return Err(Error::io(noise, std::io::Error::new(std::io::ErrorKind::NotFound, "noise file not found")));
        }
    }

    let original = load_rgb(&args.image)?;
    let o = &args.output;
    o.say("loading model ...");
    let clock = Instant::now();
    let model = args.model.load(o.quiet)?;
    let load_s = clock.elapsed().as_secs_f64();
    o.say(format!(
        "model: unet {}, vae {}, text encoder {}, scheduler {} ({load_s:.1} s)",
        model.origins.unet, model.origins.vae, model.origins.text_encoder, model.origins.scheduler
    ));

    let (width, height) = match requested_size {
        Some(s) => s,
        None => processing_size(original.width(), original.height(), model.native_size(), model.vae_factor()),
    };
    check_processing_size(width, height, model.vae_factor(), model.unet_factor(), model.native_size())?;
    let pipeline = DiffEdit::new(&model, params.clone())?;
    let latent = pipeline.latent_shape(width, height);
    let noise = match &args.noise {
        Some(path) => Noise::from_file(path, latent, params.mask_samples)?,
        None => Noise::seeded(params.seed, latent, params.mask_samples)?,
    };
    let processed = resize(&original, width, height);
    let image = image_to_tensor(&processed)?;
    let progress = o.progress();
    let result = pipeline.edit(&image, &args.source, &args.target, &noise, progress.as_ref())?;
    for p in &result.embeddings.truncated {
        o.say(format!("warning: prompt longer than {} tokens was truncated: {p:?}", model.tokenizer.max_length()));
    }

    let (ow, oh) = original.dimensions();
    let edited = tensor_to_image(&result.decoded)?;
    save_image(&resize(&edited, ow as usize, oh as usize), &out_path)?;
    let mut written = vec![path_str(&out_path)];
    let (mh, mw, mask) = image_io::map_values(&result.mask.mask)?;
    if let Some(p) = &args.save_mask {
        save_image(&viz::mask_image(&mask, mh, mw, ow, oh), p)?;
        written.push(path_str(p));
    }
    if let Some(p) = &args.save_heatmap {
        let (h, w, values) = image_io::map_values(&result.mask.normalized)?;
        save_image(&viz::heatmap_image(&values, h, w, ow, oh), p)?;
        written.push(path_str(p));
    }
    if let Some(p) = &args.save_overlay {
        save_image(&viz::overlay_image(&original, &mask, mh, mw), p)?;
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
        });
        println!("{summary}");
    }
    Ok(())
}
