//! `diffedit eval`: DiffEdit against img2img on the held-out synthetic edits.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use clap::Args;
use rayon::prelude::*;

use super::edit::EditFlags;
use super::{path_str, ModelArgs, OutputArgs};
use crate::diffedit::engine::DEFAULT_CACHE_MB;
use crate::diffedit::Silent;
use crate::error::{Error, Result};
use crate::eval::{edits_for, evaluate_edit, grid_figure, EditRecord, Summary};
use crate::image_io::{check_output_path, save_image, write_atomic};
use crate::models::loading::{bundled_model_dir, BUNDLED_MODEL_DIR};
use crate::synth::EditKind;

/// The targets `--check` enforces.
pub const TARGET_MASK_IOU: f64 = 0.6;
pub const TARGET_BACKGROUND_PSNR_DB: f64 = 30.0;
pub const TARGET_EDIT_SUCCESS: f64 = 0.8;
/// How far DiffEdit's background PSNR must be above img2img's.
pub const TARGET_PSNR_MARGIN_DB: f64 = 5.0;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Evaluate the first N held-out edits (colour change, shape change, object swap in turn).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub limit: usize,
    /// Which edits: `heldout` (the fixed evaluation set) or `validation` (drawn from another seed,
    /// for choosing parameters without looking at the held-out edits).
    #[arg(long, default_value = "heldout")]
    pub split: String,
    /// Write a grid figure, titled: per edit its prompts above the source, the ground truth,
    /// DiffEdit's mask, DiffEdit and img2img, and under each method whether it passed.
    #[arg(long, value_name = "PATH.png")]
    pub figure: Option<PathBuf>,
    /// Write one JSON line per edit: its kind, captions and, for both methods, mask IoU,
    /// background PSNR, success and what the classifier read.
    #[arg(long, value_name = "PATH.jsonl")]
    pub records: Option<PathBuf>,
    /// Edits shown in the figure.
    #[arg(long, default_value_t = 8)]
    pub figure_rows: usize,
    /// Exit with an error when a metric misses its target (mask IoU >= 0.6, background PSNR >= 30 dB,
    /// edit success >= 80%, DiffEdit's background PSNR >= img2img's + 5 dB).
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub edit: EditFlags,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn shipped_model() -> Result<String> {
    bundled_model_dir().map(|p| p.display().to_string()).ok_or_else(|| {
        Error::invalid(format!(
            "the bundled model ({BUNDLED_MODEL_DIR}) was not found here, beside the executable or in the source tree; \
             name one with --model or set DIFFEDIT_BUNDLED_MODEL"
        ))
    })
}

/// The failed targets, as sentences.
pub fn missed_targets(diffedit: &Summary, img2img: &Summary) -> Vec<String> {
    let mut missed = vec![];
    if diffedit.mask_iou < TARGET_MASK_IOU {
        missed.push(format!("mask IoU {:.3} < {TARGET_MASK_IOU}", diffedit.mask_iou));
    }
    if diffedit.background_psnr_db < TARGET_BACKGROUND_PSNR_DB {
        missed.push(format!("background PSNR {:.2} dB < {TARGET_BACKGROUND_PSNR_DB} dB", diffedit.background_psnr_db));
    }
    if diffedit.edit_success < TARGET_EDIT_SUCCESS {
        missed.push(format!(
            "edit success {:.1}% < {:.0}%",
            diffedit.edit_success * 100.0,
            TARGET_EDIT_SUCCESS * 100.0
        ));
    }
    if diffedit.background_psnr_db < img2img.background_psnr_db + TARGET_PSNR_MARGIN_DB {
        missed.push(format!(
            "DiffEdit's background PSNR {:.2} dB is not {TARGET_PSNR_MARGIN_DB} dB above img2img's {:.2} dB",
            diffedit.background_psnr_db, img2img.background_psnr_db
        ));
    }
    missed
}

fn table(records: &[EditRecord]) -> String {
    let mut out =
        format!("{:<17} {:>5} {:>9} {:>14} {:>13}\n", "method", "edits", "mask IoU", "bg PSNR (dB)", "edit success");
    let kinds: [(&str, Option<EditKind>); 4] = [
        ("all", None),
        ("colour", Some(EditKind::Colour)),
        ("shape", Some(EditKind::Shape)),
        ("swap", Some(EditKind::Swap)),
    ];
    for (label, kind) in kinds {
        let rows: Vec<&EditRecord> = records.iter().filter(|r| kind.is_none_or(|k| r.kind == k)).collect();
        if rows.is_empty() {
            continue;
        }
        for (name, s) in [
            ("diffedit", Summary::of(rows.iter().map(|r| &r.diffedit))),
            ("img2img", Summary::of(rows.iter().map(|r| &r.img2img))),
        ] {
            let method = if kind.is_none() { name.to_string() } else { format!("{name}/{label}") };
            out += &format!(
                "{:<17} {:>5} {:>9.3} {:>14.2} {:>12.1}%\n",
                method,
                s.n_edits,
                s.mask_iou,
                s.background_psnr_db,
                s.edit_success * 100.0
            );
        }
    }
    out
}

fn write_records(records: &[EditRecord], path: &std::path::Path) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text += &serde_json::to_string(r).map_err(|e| Error::invalid(format!("--records: {e}")))?;
        text.push('\n');
    }
    write_atomic(path, |tmp| std::fs::write(tmp, &text).map_err(|e| Error::io(tmp, e)))
}

pub fn run(args: &EvalArgs) -> Result<()> {
    // Checked before the model loads, so a bad flag fails at once.
    args.edit.params()?;
    if args.limit == 0 {
        return Err(Error::invalid("--limit must be at least 1, got 0"));
    }
    let validation = match args.split.as_str() {
        "heldout" => false,
        "validation" => true,
        other => return Err(Error::invalid(format!("--split must be `heldout` or `validation`, got `{other}`"))),
    };
    if let Some(p) = &args.figure {
        check_output_path(p, "--figure")?;
    }
    if let Some(p) = &args.records {
        check_output_path(p, "--records")?;
    }
    let mut model_args = args.model.clone();
    if model_args.model.is_none() {
        model_args.model = Some(shipped_model()?);
    }
    let o = &args.output;
    let clock = Instant::now();
    let engine = model_args.engine(o.quiet, DEFAULT_CACHE_MB)?;
    let model = engine.model();
    o.say(format!("model: {} ({:.1} s)", model.origins.unet, clock.elapsed().as_secs_f64()));
    let edits = edits_for(model, args.limit, validation)?;
    let params = args.edit.params_for(&engine)?;
    let pipeline = engine.pipeline(params.clone())?;
    let clock = Instant::now();
    // Edits are independent and small (a 16x16 latent barely feeds one core's kernels), so they
    // run side by side on rayon's pool; each draws its own seeded noise, so the results do not
    // depend on the number of threads or the order in which edits finish.
    let finished: Mutex<Vec<EditRecord>> = Mutex::new(Vec::with_capacity(edits.len()));
    let records = edits
        .par_iter()
        .map(|edit| {
            let record = evaluate_edit(&pipeline, edit, &Silent)?;
            if !o.quiet {
                let mut done = finished.lock().unwrap_or_else(|e| e.into_inner());
                done.push(record.clone());
                if done.len().is_multiple_of(10) || done.len() == edits.len() {
                    let so_far = Summary::of(done.iter().map(|r| &r.diffedit));
                    eprintln!(
                        "{}/{} edits ({:.1} s each): DiffEdit IoU {:.3}, bg PSNR {:.2} dB, success {:.1}%",
                        done.len(),
                        edits.len(),
                        clock.elapsed().as_secs_f64() / done.len() as f64,
                        so_far.mask_iou,
                        so_far.background_psnr_db,
                        so_far.edit_success * 100.0
                    );
                }
            }
            Ok(record)
        })
        .collect::<Result<Vec<EditRecord>>>()?;
    let diffedit = Summary::of(records.iter().map(|r| &r.diffedit));
    let img2img = Summary::of(records.iter().map(|r| &r.img2img));
    if let Some(p) = &args.figure {
        let split = if validation { "validation" } else { "held-out" };
        let title = format!("{} on {split} edits", model_name(model));
        save_image(&grid_figure(&records, &edits, args.figure_rows, 4, &title), p)?;
        o.say(format!("wrote {}", path_str(p)));
    }
    if let Some(p) = &args.records {
        write_records(&records, p)?;
        o.say(format!("wrote {}", path_str(p)));
    }
    let missed = missed_targets(&diffedit, &img2img);
    if o.json {
        let by_kind = |k: EditKind, f: fn(&EditRecord) -> &crate::eval::MethodResult| {
            Summary::of(records.iter().filter(|r| r.kind == k).map(f))
        };
        let kinds: serde_json::Map<String, serde_json::Value> = EditKind::ALL
            .iter()
            .map(|&k| {
                let v = serde_json::json!({
                    "diffedit": by_kind(k, |r| &r.diffedit),
                    "img2img": by_kind(k, |r| &r.img2img),
                });
                (k.name().to_string(), v)
            })
            .collect();
        let summary = serde_json::json!({
            "command": "eval",
            "split": args.split,
            "diffedit": diffedit,
            "img2img": img2img,
            "by_kind": kinds,
            "targets_met": missed.is_empty(),
            "missed_targets": missed,
            "seconds": clock.elapsed().as_secs_f64(),
            "model": model.origins,
            "params": params,
            "precision": model.compute.precision,
            "isa": model.compute.isa,
            "fallback": model.compute.fallback,
        });
        println!("{summary}");
    } else {
        print!("{}", table(&records));
    }
    if args.check && !missed.is_empty() {
        return Err(Error::invalid(format!("evaluation below target: {}", missed.join("; "))));
    }
    Ok(())
}

/// The model's folder name for the figure's heading (`diffedit-shapes`), else what its UNet
/// came from.
fn model_name(model: &crate::models::loading::StableDiffusion) -> String {
    let unet = &model.origins.unet;
    let path = unet.strip_suffix(" (unet)").unwrap_or(unet);
    std::path::Path::new(path).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| unet.clone())
}
