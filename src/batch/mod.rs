//! `diffedit batch`: many edits from a manifest on one loaded [`Engine`], resumable, and split
//! into shards for cluster array jobs.
//!
//! - Rows that share a picture and a source prompt form a group; groups are dealt to shards
//!   round-robin and each group runs in one go, so its rows share the picture's latents, the
//!   source half of the mask and the inversion through the engine's cache.
//! - Every row's draws come from its own seed, so results do not depend on the shard count, the
//!   order or resumes.
//! - A finished row leaves its pictures (written atomically) and then one line in its shard's
//!   results file ([`results`]). A rerun skips rows whose line and files are there for the same
//!   inputs (the line's fingerprint) and redoes the rest.

pub mod manifest;
pub mod results;
pub mod shard;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::diffedit::engine::{Engine, MaskSpec};
use crate::diffedit::Progress;
use crate::error::{Error, Result};
use crate::image_io::{load_gray, load_rgb, save_image, write_atomic};
use manifest::{Manifest, Row, RowSettings, RowSpec};
use results::{file_sha256, read_all, ResultLine, ResultsWriter, WrittenFile};
use shard::Shard;

/// What a batch run writes besides the edited pictures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtraOutputs {
    pub mask: bool,
    pub heatmap: bool,
    pub overlay: bool,
}

/// How to run a manifest.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub out_dir: PathBuf,
    pub shard: Shard,
    /// What rows take for the fields they leave out.
    pub defaults: RowSettings,
    pub extra: ExtraOutputs,
}

/// What a run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BatchSummary {
    /// Rows in this shard.
    pub rows: usize,
    pub ok: usize,
    pub failed: usize,
    /// Rows already done by an earlier run (same inputs, files in place).
    pub skipped: usize,
    pub unet_evaluations: usize,
    /// `(id, message)` of every failed row.
    pub failures: Vec<Failure>,
    pub shard: String,
    pub manifest_rows: usize,
    pub results: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Failure {
    pub id: String,
    pub line: usize,
    pub error: String,
}

/// Receives a run's progress: which row, and (as a [`Progress`]) the stages of the row's edit.
pub trait BatchObserver: Progress {
    /// The run will process `rows` rows (after skipping the finished ones).
    fn begin(&self, _rows: usize, _skipped: usize) {}
    fn row_started(&self, _id: &str) {}
    fn row_finished(&self, _id: &str, _ok: bool) {}
    fn end(&self) {}
}

/// Says nothing.
pub struct Quiet;
impl Progress for Quiet {}
impl BatchObserver for Quiet {}

/// The rows of `manifest` that `shard` runs, in the order it runs them: groups (same picture and
/// source prompt) in order of first appearance, dealt round-robin; rows in file order within a
/// group. Unusable rows form groups of their own.
pub fn shard_rows(manifest: &Manifest, shard: Shard) -> Vec<&Row> {
    let base = manifest.base_dir();
    let mut groups: Vec<Vec<&Row>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for row in &manifest.rows {
        let key = match &row.fields {
            Ok(f) => {
                let text = |k: &str| f.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                format!("{}\u{0}{}", base.join(text("image")).display(), text("source"))
            }
            Err(_) => format!("\u{1}line {}", row.line),
        };
        let g = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(row);
    }
    groups.into_iter().enumerate().filter(|(g, _)| shard.owns_group(*g)).flat_map(|(_, rows)| rows).collect()
}

/// The files a row writes, relative to the output folder: the picture first.
pub fn row_files(id: &str, extra: ExtraOutputs) -> Vec<String> {
    let mut files = vec![format!("{id}.png")];
    for (on, suffix) in [(extra.mask, "mask"), (extra.heatmap, "heatmap"), (extra.overlay, "overlay")] {
        if on {
            files.push(format!("{id}_{suffix}.png"));
        }
    }
    files
}

/// Digest of everything a row's pictures depend on: the program's version, the model, the
/// picture's and the mask's bytes, the prompts and every parameter.
fn fingerprint(engine: &Engine, spec: &RowSpec, image: &[u8], mask: Option<&[u8]>) -> String {
    let m = engine.model();
    let mut h = Sha256::new();
    let mut field = |name: &str, bytes: &[u8]| {
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field("version", env!("CARGO_PKG_VERSION").as_bytes());
    field("model", serde_json::to_string(&m.origins).unwrap_or_default().as_bytes());
    field("dtype", format!("{:?}/{:?}/{:?}", m.dtype, m.vae_dtype, m.matmul).as_bytes());
    field("device", format!("{:?}", m.device.location()).as_bytes());
    field("image", image);
    field("mask", mask.unwrap_or(b"-"));
    field("source", spec.source.as_bytes());
    field("target", spec.target.as_bytes());
    let s = &spec.settings;
    field("params", serde_json::to_string(&s.params).unwrap_or_default().as_bytes());
    field("options", format!("{:?}|{:?}", s.size, s.options).as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Whether `line` is a finished `ok` of the same inputs whose files are all in place.
fn already_done(line: &ResultLine, fp: &str, needed: &[String], dir: &Path) -> bool {
    line.ok()
        && line.fingerprint.as_deref() == Some(fp)
        && needed.iter().all(|name| {
            line.files
                .iter()
                .any(|f| &f.path == name && file_sha256(&dir.join(name)).map(|sha| sha == f.sha256).unwrap_or(false))
        })
}

/// The state of one shard's run, written beside its results (`batch.json` or
/// `batch-K-of-N.json`), read by [`status`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ShardState {
    pub manifest: String,
    pub manifest_rows: usize,
    pub shard: String,
    pub shard_rows: usize,
    pub started_at: f64,
    pub finished_at: Option<f64>,
    pub host: String,
    pub pid: u32,
    pub ok: usize,
    pub failed: usize,
    pub skipped: usize,
}

fn state_name(shard: Shard) -> String {
    if shard.count == 1 {
        "batch.json".into()
    } else {
        format!("batch-{}-of-{}.json", shard.index, shard.count)
    }
}

fn write_state(dir: &Path, shard: Shard, state: &ShardState) -> Result<()> {
    let path = dir.join(state_name(shard));
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::invalid(e.to_string()))?;
    write_atomic(&path, |tmp| std::fs::write(tmp, text.as_bytes()).map_err(|e| Error::io(tmp, e)))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs this shard of `manifest` on `engine`. Row failures are recorded, not returned; the error
/// is for what stops the whole run (the output folder cannot be written).
pub fn run_batch(
    engine: &Engine,
    manifest: &Manifest,
    options: &BatchOptions,
    observer: &dyn BatchObserver,
) -> Result<BatchSummary> {
    let clock = Instant::now();
    let dir = &options.out_dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let shard = options.shard;
    let rows = shard_rows(manifest, shard);
    let results_path = dir.join(shard.results_name());
    let (previous, _) = read_all(dir)?;
    let mut previous_by_id: HashMap<&str, Vec<&ResultLine>> = HashMap::new();
    for l in &previous {
        previous_by_id.entry(l.id.as_str()).or_default().push(l);
    }
    let mut writer = ResultsWriter::open(&results_path)?;
    let mut summary = BatchSummary {
        rows: rows.len(),
        shard: shard.label(),
        manifest_rows: manifest.rows.len(),
        results: results_path.display().to_string(),
        ..Default::default()
    };
    let mut state = ShardState {
        manifest: manifest.path.display().to_string(),
        manifest_rows: manifest.rows.len(),
        shard: shard.label(),
        shard_rows: rows.len(),
        started_at: now(),
        finished_at: None,
        host: hostname(),
        pid: std::process::id(),
        ok: 0,
        failed: 0,
        skipped: 0,
    };
    write_state(dir, shard, &state)?;

    // Read every row's inputs first: what is done is skipped, the rest is counted for the bar.
    let base = manifest.base_dir();
    let mut work: Vec<(&Row, std::result::Result<Prepared, String>)> = Vec::new();
    for row in rows {
        let prepared = prepare_row(engine, row, &options.defaults, &base);
        if let Ok(p) = &prepared {
            let needed = row_files(&row.id, options.extra);
            let done = previous_by_id
                .get(row.id.as_str())
                .is_some_and(|lines| lines.iter().any(|l| already_done(l, &p.fingerprint, &needed, dir)));
            if done {
                summary.skipped += 1;
                continue;
            }
        }
        work.push((row, prepared));
    }
    observer.begin(work.len(), summary.skipped);
    for (row, prepared) in work {
        observer.row_started(&row.id);
        let started = Instant::now();
        let outcome = prepared.and_then(|p| edit_row(engine, row, p, options, observer).map_err(|e| e.to_string()));
        let line = match outcome {
            Ok(mut line) => {
                line.seconds = started.elapsed().as_secs_f64();
                line
            }
            Err(message) => ResultLine {
                id: row.id.clone(),
                line: row.line,
                status: "error".into(),
                error: Some(message),
                output: None,
                files: vec![],
                mask_coverage: None,
                unet_evaluations: 0,
                seconds: started.elapsed().as_secs_f64(),
                image: row_text(row, "image"),
                source: row_text(row, "source"),
                target: row_text(row, "target"),
                params: None,
                fingerprint: None,
                shard: shard.label(),
                finished_at: now(),
            },
        };
        summary.unet_evaluations += line.unet_evaluations;
        if line.ok() {
            summary.ok += 1;
        } else {
            summary.failed += 1;
            summary.failures.push(Failure {
                id: line.id.clone(),
                line: line.line,
                error: line.error.clone().unwrap_or_default(),
            });
        }
        writer.append(&line)?;
        observer.row_finished(&row.id, line.ok());
    }
    observer.end();
    state.ok = summary.ok;
    state.failed = summary.failed;
    state.skipped = summary.skipped;
    state.finished_at = Some(now());
    write_state(dir, shard, &state)?;
    summary.seconds = clock.elapsed().as_secs_f64();
    Ok(summary)
}

fn row_text(row: &Row, key: &str) -> Option<String> {
    row.fields.as_ref().ok().and_then(|f| f.get(key)).and_then(|v| v.as_str()).map(str::to_string)
}

/// A row's inputs, read and checked before its edit.
struct Prepared {
    spec: RowSpec,
    picture: image::RgbImage,
    mask: Option<image::GrayImage>,
    fingerprint: String,
}

fn prepare_row(
    engine: &Engine,
    row: &Row,
    defaults: &RowSettings,
    base: &Path,
) -> std::result::Result<Prepared, String> {
    let spec = row.spec(defaults, base)?;
    let image_bytes = std::fs::read(&spec.image).map_err(|e| Error::io(&spec.image, e).to_string())?;
    let picture = load_rgb(&spec.image).map_err(|e| e.to_string())?;
    let (mask, mask_bytes) = match &spec.settings.mask {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e).to_string())?;
            (Some(load_gray(p).map_err(|e| e.to_string())?), Some(bytes))
        }
        None => (None, None),
    };
    let fingerprint = fingerprint(engine, &spec, &image_bytes, mask_bytes.as_deref());
    Ok(Prepared { spec, picture, mask, fingerprint })
}

fn edit_row(
    engine: &Engine,
    row: &Row,
    p: Prepared,
    options: &BatchOptions,
    progress: &dyn Progress,
) -> Result<ResultLine> {
    let spec = &p.spec;
    let mut edit = spec.picture_edit();
    if let Some(gray) = p.mask {
        edit.mask = MaskSpec::Given(gray);
    }
    let result = engine.edit_picture(&p.picture, &edit, progress)?;
    let dir = &options.out_dir;
    let names = row_files(&row.id, options.extra);
    let mut files = Vec::with_capacity(names.len());
    for name in &names {
        let picture = if name.ends_with("_mask.png") {
            result.mask_image()?
        } else if name.ends_with("_heatmap.png") {
            result.heatmap_image()?
        } else if name.ends_with("_overlay.png") {
            result.overlay_image(&p.picture)?
        } else {
            result.picture.clone()
        };
        let path = dir.join(name);
        save_image(&picture, &path)?;
        files.push(WrittenFile { path: name.clone(), sha256: file_sha256(&path)? });
    }
    let s = &spec.settings;
    let params = serde_json::json!({
        "params": s.params,
        "size": s.size.map(|(w, h)| format!("{w}x{h}")),
        "mask": s.mask.as_ref().map(|m| m.display().to_string()),
        "mask_dilate": s.options.mask_dilate,
        "mask_blur": s.options.mask_blur,
        "negative_prompt": s.options.negative_prompt,
        "keep_background": s.options.keep_background,
    });
    Ok(ResultLine {
        id: row.id.clone(),
        line: row.line,
        status: "ok".into(),
        error: None,
        output: Some(names[0].clone()),
        files,
        mask_coverage: Some(result.coverage),
        unet_evaluations: result.output.unet_evaluations,
        seconds: 0.0,
        image: Some(spec.image.display().to_string()),
        source: Some(spec.source.clone()),
        target: Some(spec.target.clone()),
        params: Some(params),
        fingerprint: Some(p.fingerprint),
        shard: options.shard.label(),
        finished_at: now(),
    })
}

/// The combined progress of every shard that wrote to `dir`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BatchStatus {
    pub dir: String,
    /// Rows in the manifest (from the shards' state files; 0 when none was found).
    pub manifest_rows: usize,
    pub ok: usize,
    pub failed: usize,
    /// Rows of the manifest with no result yet.
    pub pending: usize,
    pub unet_evaluations: usize,
    pub shards: Vec<ShardState>,
    /// The latest failure of every row whose latest result is a failure.
    pub failures: Vec<Failure>,
    /// Result lines ignored (torn by a kill, or unreadable).
    pub ignored_lines: usize,
}

/// Reads every shard's results and state in `dir`: each row counts by its latest line.
pub fn status(dir: &Path) -> Result<BatchStatus> {
    if !dir.is_dir() {
        return Err(Error::invalid(format!("{}: no such batch output folder", dir.display())));
    }
    let (lines, ignored) = read_all(dir)?;
    let latest = results::latest_by_id(&lines);
    let mut shards = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name == "batch.json" || (name.starts_with("batch-") && name.ends_with(".json")) {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let state: ShardState = serde_json::from_str(&text).map_err(|e| Error::config(&path, e.to_string()))?;
            shards.push(state);
        }
    }
    shards.sort_by(|a, b| a.shard.cmp(&b.shard));
    let manifest_rows = shards.iter().map(|s| s.manifest_rows).max().unwrap_or(0);
    let ok = latest.values().filter(|l| l.ok()).count();
    let mut failures: Vec<Failure> = latest
        .values()
        .filter(|l| !l.ok())
        .map(|l| Failure { id: l.id.clone(), line: l.line, error: l.error.clone().unwrap_or_default() })
        .collect();
    failures.sort_by_key(|f| f.line);
    Ok(BatchStatus {
        dir: dir.display().to_string(),
        manifest_rows,
        ok,
        failed: failures.len(),
        pending: manifest_rows.saturating_sub(latest.len()),
        unet_evaluations: lines.iter().map(|l| l.unet_evaluations).sum(),
        shards,
        failures,
        ignored_lines: ignored,
    })
}

/// Writes `merged.jsonl` in `dir`: the latest line of every row, in manifest order.
pub fn merge(dir: &Path) -> Result<PathBuf> {
    let (lines, _) = read_all(dir)?;
    let mut latest: Vec<ResultLine> = results::latest_by_id(&lines).into_values().collect();
    latest.sort_by(|a, b| a.line.cmp(&b.line).then(a.id.cmp(&b.id)));
    let mut text = String::new();
    for l in &latest {
        text.push_str(&serde_json::to_string(l).map_err(|e| Error::invalid(e.to_string()))?);
        text.push('\n');
    }
    let path = dir.join("merged.jsonl");
    write_atomic(&path, |tmp| std::fs::write(tmp, text.as_bytes()).map_err(|e| Error::io(tmp, e)))?;
    Ok(path)
}
