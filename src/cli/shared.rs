//! What the experiment commands share with `edit`: the picture and prompts, checks made before
//! any computation, model loading, the noise, figures written atomically, and the JSON summary.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use image::RgbImage;

use super::edit::EditFlags;
use super::{path_str, ModelArgs, OutputArgs};
use crate::diffedit::engine::{check_prompts, Engine, DEFAULT_CACHE_MB};
use crate::diffedit::experiments::{prepare, Ledger, Prepared};
use crate::diffedit::{DiffEdit, EditParams, Noise, Progress};
use crate::error::{Error, Result};
use crate::image_io::{
    self, check_output_path, check_processing_size, image_to_tensor, load_rgb, processing_size, resize, save_image,
};
use crate::models::loading::StableDiffusion;
use crate::viz::figure::{Figure, Style, Tile};

/// The picture and the two prompts, as `edit` takes them.
#[derive(Args, Debug)]
pub struct PictureArgs {
    /// The picture.
    #[arg(long, value_name = "IN")]
    pub image: PathBuf,
    /// What the picture shows now ("a horse on a grass field").
    #[arg(long)]
    pub source: String,
    /// What it should show ("a zebra on a grass field").
    #[arg(long)]
    pub target: String,
    /// Take the random draws (vae_noise, mask_noise) from this safetensors file.
    #[arg(long, value_name = "FILE.safetensors")]
    pub noise: Option<PathBuf>,
    /// Process at exactly this pixel size (default: the model's native long side, aspect kept).
    #[arg(long, value_name = "WxH")]
    pub size: Option<String>,
}

impl PictureArgs {
    /// The checks `edit` makes before loading anything: prompts, noise file, size syntax.
    pub fn check(&self) -> Result<()> {
        check_prompts(&self.source, &self.target)?;
        if let Some(noise) = &self.noise {
            if !noise.is_file() {
                return Err(Error::io(
                    noise,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "noise file not found"),
                ));
            }
        }
        if let Some(s) = &self.size {
            image_io::parse_size(s)?;
        }
        Ok(())
    }
}

/// Fails before any computation when an output cannot be written.
pub fn check_outputs(outputs: &[(&str, &Path)]) -> Result<()> {
    for (flag, p) in outputs {
        check_output_path(p, flag)?;
    }
    Ok(())
}

/// A comma-separated list of numbers, e.g. `0.3,0.5,0.7`.
pub fn parse_list(flag: &str, s: &str) -> Result<Vec<f64>> {
    let values: Vec<f64> = s
        .split(',')
        .map(|v| v.trim().parse::<f64>().ok().filter(|x| x.is_finite()))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::invalid(format!("{flag} must be a comma-separated list of numbers, got `{s}`")))?;
    if values.is_empty() {
        return Err(Error::invalid(format!("{flag} needs at least one value")));
    }
    Ok(values)
}

/// The engine (model, edit settings, stage cache) and the picture at its processing size.
pub struct Loaded {
    pub engine: Engine,
    /// The picture at the processing size.
    pub processed: RgbImage,
    pub width: usize,
    pub height: usize,
    pub load_s: f64,
}

/// Loads the model, then reads `image` (if any) and settles the processing size: `size`, or the
/// picture's at the model's native long side, or the native square without a picture.
pub fn load(model: &ModelArgs, image: Option<&Path>, size: Option<&str>, o: &OutputArgs) -> Result<Loaded> {
    let requested = size.map(image_io::parse_size).transpose()?;
    let original = image.map(load_rgb).transpose()?;
    let (engine, load_s) = load_engine(model, o, DEFAULT_CACHE_MB)?;
    let model = engine.model();
    let native = model.native_size();
    let (width, height) = match (requested, &original) {
        (Some(s), _) => s,
        (None, Some(img)) => processing_size(img.width(), img.height(), native, model.vae_factor()),
        (None, None) => (native, native),
    };
    check_processing_size(width, height, model.vae_factor(), model.unet_factor(), native)?;
    let processed = match original {
        Some(original) => resize(&original, width, height),
        None => RgbImage::new(width as u32, height as u32),
    };
    Ok(Loaded { engine, processed, width, height, load_s })
}

/// Loads the model into an engine with a cache of `cache_mb`, saying which model and settings;
/// returns it with the seconds it took.
pub fn load_engine(model: &ModelArgs, o: &OutputArgs, cache_mb: usize) -> Result<(Engine, f64)> {
    o.say("loading model ...");
    let clock = Instant::now();
    let engine = model.engine(o.quiet, cache_mb)?;
    let load_s = clock.elapsed().as_secs_f64();
    let m = engine.model();
    o.say(format!(
        "model: unet {}, vae {}, text encoder {}, scheduler {} ({load_s:.1} s)",
        m.origins.unet, m.origins.vae, m.origins.text_encoder, m.origins.scheduler
    ));
    Ok((engine, load_s))
}

/// The edit's random draws: from `--noise`, or seeded.
pub fn edit_noise(pipeline: &DiffEdit, params: &EditParams, file: Option<&Path>, l: &Loaded) -> Result<Noise> {
    let latent = pipeline.latent_shape(l.width, l.height);
    match file {
        Some(path) => Noise::from_file(path, latent, params.mask_samples),
        None => Noise::drawn(params.rng, params.seed, latent, params.mask_samples),
    }
}

/// Where `mask`, `ablate`, `compare` and `report` all start on one picture: the edit settings,
/// the pipeline on the engine's stage cache, and the prompts and picture encoded and the mask
/// computed (stages "encode" and "mask" in `ledger`).
pub struct Experiment<'e> {
    pub params: EditParams,
    pub pipeline: DiffEdit<'e>,
    pub prepared: Prepared,
    pub ledger: Ledger,
    pub progress: Box<dyn Progress>,
}

/// Settles the settings on the loaded model, draws (or reads) the noise and computes the mask of
/// `picture`, warning about prompts cut to the tokenizer's limit.
pub fn start_experiment<'e>(
    l: &'e Loaded,
    picture: &PictureArgs,
    edit: &EditFlags,
    o: &OutputArgs,
) -> Result<Experiment<'e>> {
    let params = edit.params_for(&l.engine)?;
    let pipeline = l.engine.pipeline(params.clone())?;
    let noise = edit_noise(&pipeline, &params, picture.noise.as_deref(), l)?;
    let image = image_to_tensor(&l.processed)?;
    let progress = o.progress();
    let mut ledger = Ledger::default();
    let prepared =
        prepare(&pipeline, &image, &picture.source, &picture.target, &noise, &mut ledger, progress.as_ref())?;
    warn_truncated(o, l.engine.model(), &prepared.embeddings.truncated);
    Ok(Experiment { params, pipeline, prepared, ledger, progress })
}

/// Files and figures a command wrote, for its summary.
#[derive(Default)]
pub struct Written {
    pub files: Vec<String>,
    pub figures: Vec<serde_json::Value>,
}

impl Written {
    /// Saves a picture atomically.
    pub fn image(&mut self, img: &RgbImage, path: &Path) -> Result<()> {
        save_image(img, path)?;
        self.files.push(path_str(path));
        Ok(())
    }

    /// Saves a figure atomically and records its size, its tiles' titles and where they are.
    pub fn figure(&mut self, fig: &Figure, tiles: &[Tile], path: &Path) -> Result<()> {
        save_image(&fig.image, path)?;
        self.files.push(path_str(path));
        let rects: Vec<[u32; 4]> = fig.tiles.iter().map(|r| [r.x, r.y, r.width, r.height]).collect();
        let titles: Vec<&str> = tiles.iter().map(|t| t.title.as_str()).collect();
        self.figures.push(serde_json::json!({
            "path": path_str(path),
            "width": fig.image.width(),
            "height": fig.image.height(),
            "tiles": fig.tiles.len(),
            "titles": titles,
            "tile_rects": rects,
        }));
        Ok(())
    }
}

/// Prints `{"command", "files", "figures", "unet_evaluations", "unet_evaluations_by_stage",
/// "timings_s", ...extra}` on stdout when `--json` is set.
pub fn print_summary(
    o: &OutputArgs,
    command: &str,
    written: &Written,
    ledger: &Ledger,
    pipeline: &DiffEdit,
    load_s: f64,
    extra: serde_json::Value,
) {
    o.say(format!("wrote {}", written.files.join(", ")));
    if !o.json {
        return;
    }
    let mut timings = ledger.seconds_by_stage();
    timings.insert("load".into(), load_s.into());
    let mut summary = serde_json::json!({
        "command": command,
        "files": written.files,
        "figures": written.figures,
        "unet_evaluations": pipeline.unet_evaluations(),
        "unet_evaluations_by_stage": ledger.evaluations_by_stage(),
        "timings_s": timings,
        "model": pipeline.model.origins,
        "params": pipeline.params,
        "precision": pipeline.model.compute.precision, "isa": pipeline.model.compute.isa,
        "fallback": pipeline.model.compute.fallback,
    });
    if let (Some(m), serde_json::Value::Object(extra)) = (summary.as_object_mut(), extra) {
        m.extend(extra);
    }
    println!("{summary}");
}

/// Warns about prompts cut to the tokenizer's limit.
pub fn warn_truncated(o: &OutputArgs, model: &StableDiffusion, prompts: &[String]) {
    for p in prompts {
        o.say(format!("warning: prompt longer than {} tokens was truncated: {p:?}", model.tokenizer.max_length()));
    }
}

/// A tile for a picture at the processing size.
pub fn picture_tile(title: impl Into<String>, img: &RgbImage, style: &Style) -> Tile {
    Tile::picture(title, img, style)
}

/// `"source" → "target"`, the heading of figures about an edit.
pub fn edit_heading(source: &str, target: &str) -> String {
    format!("\u{201c}{source}\u{201d} \u{2192} \u{201c}{target}\u{201d}")
}
