//! `diffedit edit`: argument parsing, then [`Engine::edit_picture`] once per target.

use std::path::{Path, PathBuf};

use clap::Args;

use super::shared::{check_outputs, load_engine};
use super::{default_out, path_str, ModelArgs, OutputArgs};
use crate::diffedit::engine::{check_prompts, Engine, MaskSpec, NoiseSource, PictureEdit, PictureResult};
use crate::diffedit::{experiments, Alignment, EditParams, ModelEditDefaults};
use crate::error::{Error, Result};
use crate::image_io::{self, load_rgb, save_image};
use crate::viz;

#[derive(Args, Debug)]
pub struct EditArgs {
    /// The picture to edit.
    #[arg(long, value_name = "IN")]
    pub image: PathBuf,
    /// What the picture shows now ("a horse on a grass field").
    #[arg(long)]
    pub source: String,
    /// What it should show ("a zebra on a grass field"). Repeat it for several edits of the same
    /// picture: they share the mask's source half and the inversion, and each output file gets
    /// the target's number as a suffix (OUT_1.png, OUT_2.png, ...).
    #[arg(long, required = true, num_args = 1)]
    pub target: Vec<String>,
    /// The edited picture (default: IN_edit.png next to the input).
    #[arg(long, value_name = "OUT.png")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub edit: EditFlags,
    #[command(flatten)]
    pub mask: MaskFlags,
    /// Write the mask the decoding used, at the picture's size.
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
    /// Paste the edit into the input picture: outside the mask and a feathered band around it,
    /// every pixel is the input's own at its full size, instead of the VAE's reconstruction
    /// resized (which is what the reference writes).
    #[arg(long)]
    pub keep_background: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The tutorial's parameters as flags, shared by the edit and experiment commands.
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
    /// Generator of the seeded draws: torch (PyTorch's CPU generator, bit for bit) or native.
    #[arg(long, default_value = "torch")]
    pub rng: String,
    /// UNet batch size of the mask evaluations (lower it to save memory).
    #[arg(long, default_value_t = 4)]
    pub mask_batch_size: usize,
}

/// The mask and guidance options of `edit` and `batch`.
#[derive(Args, Debug, Clone, Default)]
pub struct MaskFlags {
    /// Decode with this mask instead of computing one (a picture of any size; white where the
    /// picture may change, any grey above half counts; resized to the latent grid).
    #[arg(long, value_name = "FILE.png")]
    pub mask: Option<PathBuf>,
    /// Grow the mask (computed or given) by this many pixels of the input picture.
    #[arg(long, value_name = "PX", allow_negative_numbers = true)]
    pub mask_dilate: Option<f64>,
    /// Decode with the mask blurred by a Gaussian of this sigma (latent cells): a soft mask.
    #[arg(long, value_name = "SIGMA", allow_negative_numbers = true)]
    pub mask_blur: Option<f64>,
    /// Replaces the empty prompt of the decoding's guidance (and of the inversion's when its
    /// guidance is above 1).
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt: Option<String>,
}

impl EditFlags {
    /// The parameters with the tutorial's defaults for flags left out (checked before any model
    /// loads, so that a bad flag fails at once).
    pub fn params(&self) -> Result<EditParams> {
        self.params_with(&ModelEditDefaults::default())
    }

    /// The parameters for the engine's model: flags left out take the model folder's
    /// `diffedit.json`, then the tutorial's defaults.
    pub fn params_for(&self, engine: &Engine) -> Result<EditParams> {
        self.params_with(engine.edit_defaults())
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
            rng: self.rng.parse()?,
            mask_batch_size: self.mask_batch_size,
        };
        p.validate()?;
        Ok(p)
    }
}

impl MaskFlags {
    /// The mask options of an edit (reads the given mask picture): (mask, dilation px, blur).
    pub fn mask_options(&self) -> Result<(MaskSpec, f64, Option<f64>)> {
        if let Some(sigma) = self.mask_blur {
            experiments::check_sigma(sigma)?;
        }
        let dilate = self.mask_dilate.unwrap_or(0.0);
        if !(dilate.is_finite() && dilate >= 0.0) {
            return Err(Error::invalid(format!("--mask-dilate must be a finite number of pixels >= 0, got {dilate}")));
        }
        let mask = match &self.mask {
            Some(path) => MaskSpec::Given(image_io::load_gray(path)?),
            None => MaskSpec::Automatic,
        };
        Ok((mask, dilate, self.mask_blur))
    }

    /// The whole edit request for `source` -> `target` with these flags and `params`; `mask` is
    /// what [`MaskFlags::mask_options`] read (read once for several targets).
    pub fn picture_edit(
        &self,
        mask: &(MaskSpec, f64, Option<f64>),
        source: &str,
        target: &str,
        params: EditParams,
    ) -> PictureEdit {
        PictureEdit {
            mask: mask.0.clone(),
            mask_dilate_px: mask.1,
            mask_blur: mask.2,
            negative_prompt: self.negative_prompt.clone(),
            ..PictureEdit::new(source, target, params)
        }
    }
}

/// The outputs of target `index` (0-based) of `count`: `path` itself for a single target, else
/// `stem_<index+1>.ext`.
pub fn numbered(path: &Path, index: usize, count: usize) -> PathBuf {
    if count <= 1 {
        return path.to_path_buf();
    }
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("out");
    let name = match path.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}_{}.{ext}", index + 1),
        None => format!("{stem}_{}", index + 1),
    };
    path.with_file_name(name)
}

pub fn run(args: &EditArgs) -> Result<()> {
    // Checked before the model loads, so a bad flag fails at once.
    let flag_params = args.edit.params()?;
    let mask = args.mask.mask_options()?;
    for target in &args.target {
        check_prompts(&args.source, target)?;
        args.mask.picture_edit(&mask, &args.source, target, flag_params.clone()).check()?;
    }
    let out_path = args.out.clone().unwrap_or_else(|| default_out(&args.image, "edit"));
    let count = args.target.len();
    let named: Vec<(&str, &Path)> = [
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
    check_outputs(&named)?;
    if let Some(noise) = &args.noise {
        if !noise.is_file() {
            return Err(Error::io(noise, std::io::Error::new(std::io::ErrorKind::NotFound, "noise file not found")));
        }
    }
    let size = args.size.as_deref().map(image_io::parse_size).transpose()?;
    let original = load_rgb(&args.image)?;

    let o = &args.output;
    let (engine, load_s) = load_engine(&args.model, o, crate::diffedit::engine::DEFAULT_CACHE_MB)?;
    let params = args.edit.params_for(&engine)?;
    let prepared = engine.prepare_picture(original, size)?;
    let progress = o.progress();
    let mut summaries = Vec::with_capacity(count);
    for (index, target) in args.target.iter().enumerate() {
        let mut edit = args.mask.picture_edit(&mask, &args.source, target, params.clone());
        edit.size = size;
        edit.keep_background = args.keep_background;
        if let Some(noise) = &args.noise {
            edit.noise = NoiseSource::File(noise.clone());
        }
        if count > 1 {
            o.say(format!("target {}/{count}: {target:?}", index + 1));
        }
        let result = engine.edit_prepared(&prepared, &edit, progress.as_ref())?;
        for p in &result.output.embeddings.truncated {
            o.say(format!(
                "warning: prompt longer than {} tokens was truncated: {p:?}",
                engine.model().tokenizer.max_length()
            ));
        }
        let out = |p: &Path| numbered(p, index, count);
        let written = write_outputs(args, &engine, &edit, &result, &prepared.original, &out(&out_path), &out)?;
        o.say(format!("mask covers {:.1}% of the picture; wrote {}", result.coverage * 100.0, written.join(", ")));
        summaries.push(summary(args, &engine, &edit, &result, written, load_s));
    }
    if o.json {
        let line = if count == 1 {
            summaries.pop().expect("one target")
        } else {
            let total: u64 = summaries.iter().filter_map(|s| s["unet_evaluations"].as_u64()).sum();
            serde_json::json!({
                "command": "edit",
                "edits": summaries,
                "unet_evaluations": total,
                "model": engine.model().origins,
                "precision": engine.model().compute.precision,
                "isa": engine.model().compute.isa,
                "fallback": engine.model().compute.fallback,
            })
        };
        println!("{line}");
    }
    Ok(())
}

/// Writes the picture and every file asked for; returns their paths.
fn write_outputs(
    args: &EditArgs,
    engine: &Engine,
    edit: &PictureEdit,
    result: &PictureResult,
    original: &image::RgbImage,
    out_path: &Path,
    out: &dyn Fn(&Path) -> PathBuf,
) -> Result<Vec<String>> {
    save_image(&result.picture, out_path)?;
    let mut written = vec![path_str(out_path)];
    if let Some(p) = &args.save_mask {
        save_image(&result.mask_image()?, &out(p))?;
        written.push(path_str(&out(p)));
    }
    if let Some(p) = &args.save_heatmap {
        save_image(&result.heatmap_image()?, &out(p))?;
        written.push(path_str(&out(p)));
    }
    if let Some(p) = &args.save_overlay {
        save_image(&result.overlay_image(original)?, &out(p))?;
        written.push(path_str(&out(p)));
    }
    if let Some(p) = &args.save_steps {
        let pipeline = engine.pipeline(edit.params.clone())?;
        save_steps_strip(&pipeline, &result.output, &out(p))?;
        written.push(path_str(&out(p)));
    }
    if let Some(p) = &args.trace {
        crate::trace::write_trace(&result.output, &out(p))?;
        written.push(path_str(&out(p)));
    }
    Ok(written)
}

/// The `--json` object of one target's edit.
fn summary(
    args: &EditArgs,
    engine: &Engine,
    edit: &PictureEdit,
    result: &PictureResult,
    written: Vec<String>,
    load_s: f64,
) -> serde_json::Value {
    let r = &result.output;
    serde_json::json!({
        "command": "edit",
        "target": edit.target,
        "files": written,
        "input_size": [result.input_size.0, result.input_size.1],
        "processing_size": [result.processing_size.0, result.processing_size.1],
        "mask_coverage": result.coverage,
        "mask_given": matches!(edit.mask, MaskSpec::Given(_)),
        "keep_background": args.keep_background,
        "mask_timestep": r.mask.timestep,
        "unet_evaluations": r.unet_evaluations,
        "unet_evaluations_by_stage": r.evaluations,
        "timings_s": {
            "load": load_s,
            "encode": r.timings.encode_s,
            "mask": r.timings.mask_s,
            "inversion": r.timings.inversion_s,
            "decoding": r.timings.decoding_s,
            "vae_decode": r.timings.vae_decode_s,
        },
        "model": engine.model().origins,
        "params": edit.params,
        "precision": engine.model().compute.precision,
        "isa": engine.model().compute.isa,
        "fallback": engine.model().compute.fallback,
    })
}

/// The strip of `--save-steps`: the decoding's latents after every 10th step and the last, decoded.
fn save_steps_strip(
    pipeline: &crate::diffedit::DiffEdit,
    result: &crate::diffedit::EditOutput,
    path: &Path,
) -> Result<()> {
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
