//! `diffedit batch MANIFEST --out DIR` and `diffedit batch status DIR`: argument parsing, then
//! [`crate::batch::run_batch`] / [`crate::batch::status`].

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::edit::{EditFlags, MaskFlags};
use super::shared::load_engine;
use super::{ModelArgs, OutputArgs};
use crate::batch::manifest::{Manifest, RowSettings};
use crate::batch::shard::Shard;
use crate::batch::{merge, run_batch, status, BatchObserver, BatchOptions, BatchStatus, ExtraOutputs, Quiet};
use crate::diffedit::engine::DEFAULT_CACHE_MB;
use crate::diffedit::fields::EditOptions;
use crate::diffedit::{Progress, Stage};
use crate::error::{Error, Result};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BatchArgs {
    #[command(subcommand)]
    pub command: Option<BatchCommand>,
    /// JSON Lines (or CSV with a header, for a .csv file): one edit per row with `image` (relative
    /// to the manifest), `source`, `target`, optional `id` (default: the line number) and any edit
    /// parameter by its flag's long name with underscores (seed, steps, mask_threshold, mask, ...).
    #[arg(value_name = "MANIFEST", required_unless_present = "merge")]
    pub manifest: Option<PathBuf>,
    /// Output folder: DIR/<id>.png per row, and the results (results.jsonl, or
    /// results-K-of-N.jsonl per shard).
    #[arg(long, value_name = "DIR", required = true)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Defaults for the rows' parameters (a row's own value wins).
    #[command(flatten)]
    pub edit: EditFlags,
    #[command(flatten)]
    pub mask: MaskFlags,
    /// Process every row at exactly this pixel size (default: the model's native long side).
    #[arg(long, value_name = "WxH")]
    pub size: Option<String>,
    /// Paste each edit into its input at full size (see `edit --keep-background`).
    #[arg(long)]
    pub keep_background: bool,
    /// Also write DIR/<id>_mask.png.
    #[arg(long)]
    pub save_mask: bool,
    /// Also write DIR/<id>_heatmap.png.
    #[arg(long)]
    pub save_heatmap: bool,
    /// Also write DIR/<id>_overlay.png.
    #[arg(long)]
    pub save_overlay: bool,
    /// Run part K of N of the manifest (rows sharing a picture and source stay together).
    /// Without it: a Slurm array task's part (SLURM_ARRAY_TASK_ID/_COUNT/_MIN), or a Kubernetes
    /// Indexed Job's (JOB_COMPLETION_INDEX with --shards N), else the whole manifest.
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// The number of parts of a Kubernetes Indexed Job (its completions).
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Print the combined progress and failures of every shard in DIR and write DIR/merged.jsonl
    /// (the latest result of every row); runs nothing.
    #[arg(long)]
    pub merge: bool,
    /// Memory for reused stage results, in MB.
    #[arg(long, value_name = "MB", default_value_t = DEFAULT_CACHE_MB)]
    pub cache_mb: usize,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Subcommand, Debug)]
pub enum BatchCommand {
    /// The combined progress and failures of every shard that wrote to DIR.
    Status(StatusArgs),
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The batch's output folder.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Print the status as one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &BatchArgs) -> Result<()> {
    if let Some(BatchCommand::Status(s)) = &args.command {
        return print_status(&s.dir, s.json).map(|_| ());
    }
    let out = args.out.as_ref().ok_or_else(|| Error::invalid("--out DIR is required"))?;
    if args.merge {
        print_status(out, args.output.json)?;
        let merged = merge(out)?;
        args.output.say(format!("wrote {}", merged.display()));
        return Ok(());
    }
    let manifest_path = args.manifest.as_ref().ok_or_else(|| Error::invalid("a MANIFEST is required"))?;
    // Checked before the model loads, so a bad flag fails at once.
    args.edit.params()?;
    let (mask, mask_dilate, mask_blur) = args.mask.mask_options()?;
    let size = args.size.as_deref().map(crate::image_io::parse_size).transpose()?;
    let shard = Shard::resolve(args.shard.as_deref(), args.shards, &|name| std::env::var(name).ok())?;
    let manifest = Manifest::read(manifest_path)?;
    if out.exists() && !out.is_dir() {
        return Err(Error::invalid(format!("--out {}: is a file, a folder is needed", out.display())));
    }
    // Read once here to fail before the model loads; rows read their own (or this) mask again.
    drop(mask);

    let o = &args.output;
    let (engine, _) = load_engine(&args.model, o, args.cache_mb)?;
    let options = BatchOptions {
        out_dir: out.clone(),
        shard,
        defaults: RowSettings {
            params: args.edit.params_for(&engine)?,
            mask: args.mask.mask.clone(),
            size,
            options: EditOptions {
                mask_dilate,
                mask_blur,
                negative_prompt: args.mask.negative_prompt.clone(),
                keep_background: args.keep_background,
            },
        },
        extra: ExtraOutputs { mask: args.save_mask, heatmap: args.save_heatmap, overlay: args.save_overlay },
    };
    o.say(format!(
        "manifest {}: {} rows; shard {} -> {}",
        manifest.path.display(),
        manifest.rows.len(),
        shard.label(),
        out.join(shard.results_name()).display()
    ));
    let summary = if o.quiet {
        run_batch(&engine, &manifest, &options, &Quiet)?
    } else {
        run_batch(&engine, &manifest, &options, &RowBar::default())?
    };
    o.say(format!(
        "{} rows: {} ok, {} failed, {} skipped (already done); {} UNet evaluations; {:.1} s",
        summary.rows, summary.ok, summary.failed, summary.skipped, summary.unet_evaluations, summary.seconds
    ));
    if o.json {
        let mut json = serde_json::to_value(&summary).map_err(|e| Error::invalid(e.to_string()))?;
        let c = &engine.model().compute;
        if let Some(m) = json.as_object_mut() {
            m.insert("precision".into(), serde_json::to_value(c.precision).unwrap_or_default());
            m.insert("isa".into(), serde_json::to_value(c.isa).unwrap_or_default());
            m.insert("fallback".into(), serde_json::to_value(&c.fallback).unwrap_or_default());
        }
        println!("{json}");
    }
    if summary.failed > 0 {
        let list: Vec<String> =
            summary.failures.iter().map(|f| format!("{} (line {}): {}", f.id, f.line, f.error)).collect();
        return Err(Error::invalid(format!(
            "{} of {} rows failed; results in {}:\n  {}",
            summary.failed,
            summary.rows,
            summary.results,
            list.join("\n  ")
        )));
    }
    Ok(())
}

fn print_status(dir: &Path, json: bool) -> Result<BatchStatus> {
    let st = status(dir)?;
    if json {
        println!("{}", serde_json::to_string(&st).map_err(|e| Error::invalid(e.to_string()))?);
        return Ok(st);
    }
    let total = if st.manifest_rows > 0 { st.manifest_rows.to_string() } else { "?".into() };
    println!(
        "{}: {} ok, {} failed, {} pending of {total} rows; {} UNet evaluations",
        st.dir, st.ok, st.failed, st.pending, st.unet_evaluations
    );
    for s in &st.shards {
        let state = match s.finished_at {
            Some(_) => "finished".to_string(),
            None => format!("running or stopped (pid {} on {})", s.pid, s.host),
        };
        println!(
            "  shard {}: {} rows, {} ok, {} failed, {} skipped; {state}",
            s.shard, s.shard_rows, s.ok, s.failed, s.skipped
        );
    }
    if st.ignored_lines > 0 {
        println!("  {} torn or unreadable result lines ignored (their rows are redone)", st.ignored_lines);
    }
    for f in &st.failures {
        println!("  failed {} (line {}): {}", f.id, f.line, f.error);
    }
    Ok(st)
}

/// One bar over the rows with ETA; its message names the current row and its stage.
#[derive(Default)]
struct RowBar {
    bar: Mutex<Option<ProgressBar>>,
    row: Mutex<(String, &'static str, usize, usize)>,
}

impl RowBar {
    fn show(&self) {
        let (id, stage, pos, len) = self.row.lock().map(|g| g.clone()).unwrap_or_default();
        if let Some(bar) = self.bar.lock().ok().and_then(|b| b.clone()) {
            let detail = if len > 1 { format!(" {pos}/{len}") } else { String::new() };
            bar.set_message(format!("row {id}: {stage}{detail}"));
        }
    }
}

impl Progress for RowBar {
    fn start(&self, stage: Stage, total: usize) {
        if let Ok(mut r) = self.row.lock() {
            (r.1, r.2, r.3) = (stage.name(), 0, total);
        }
        self.show();
    }
    fn advance(&self, _stage: Stage, by: usize) {
        if let Ok(mut r) = self.row.lock() {
            r.2 += by;
        }
        self.show();
    }
}

impl BatchObserver for RowBar {
    fn begin(&self, rows: usize, skipped: usize) {
        let bar = ProgressBar::new(rows as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>7} [{bar:30}] {pos}/{len} rows {elapsed_precise} eta {eta} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix("batch");
        if skipped > 0 {
            bar.println(format!("{skipped} rows already done: skipped"));
        }
        if let Ok(mut b) = self.bar.lock() {
            *b = Some(bar);
        }
    }
    fn row_started(&self, id: &str) {
        if let Ok(mut r) = self.row.lock() {
            *r = (id.to_string(), "reading", 0, 0);
        }
        self.show();
    }
    fn row_finished(&self, id: &str, ok: bool) {
        if let Some(bar) = self.bar.lock().ok().and_then(|b| b.clone()) {
            if !ok {
                bar.println(format!("row {id} failed (see the results file)"));
            }
            bar.inc(1);
        }
    }
    fn end(&self) {
        if let Some(bar) = self.bar.lock().ok().and_then(|b| b.clone()) {
            bar.finish();
        }
    }
}
