//! `diffedit scenes`: dumps synthetic training scenes for tools/train_tiny_sd.py, or (`--edits`)
//! the held-out or validation edits as pictures and captions, to run the CLI's commands on them.

use std::path::PathBuf;

use clap::Args;

use super::path_str;
use crate::error::{Error, Result};

#[derive(Args, Debug)]
pub struct ScenesArgs {
    /// Output folder (images/, masks/, scenes.jsonl).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Number of scenes.
    #[arg(long, default_value_t = 30000)]
    pub count: usize,
    /// Seed of the set (the held-out evaluation set has its own seed, never used for training).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Picture side in pixels (at least 16).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Instead of training scenes, write the first COUNT edits of `heldout` or `validation`:
    /// SPLIT_NNN_source.png, SPLIT_NNN_expected.png, their captions in SPLIT_NNN_source.txt and
    /// SPLIT_NNN_target.txt, and edits.jsonl (index, kind, captions, files).
    #[arg(long, value_name = "SPLIT")]
    pub edits: Option<String>,
}

pub fn run(args: &ScenesArgs) -> Result<()> {
    if args.size < 16 {
        return Err(Error::invalid(format!("--size must be at least 16, got {}", args.size)));
    }
    if let Some(split) = &args.edits {
        return write_edits(args, split);
    }
    if args.seed == crate::synth::HELDOUT_SEED {
        return Err(Error::invalid("--seed is the held-out evaluation seed; pick another for training data"));
    }
    crate::synth::write_dataset(&args.out, args.count, args.seed, args.size).map_err(|e| Error::io(&args.out, e))?;
    eprintln!("wrote {} scenes to {}", args.count, path_str(&args.out));
    Ok(())
}

fn write_edits(args: &ScenesArgs, split: &str) -> Result<()> {
    let edits = match split {
        "heldout" => crate::synth::heldout_edits(args.count, args.size),
        "validation" => crate::synth::validation_edits(args.count, args.size),
        other => return Err(Error::invalid(format!("--edits must be `heldout` or `validation`, got `{other}`"))),
    };
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let mut lines = String::new();
    for edit in &edits {
        let stem = format!("{split}_{:03}", edit.index);
        let file = |suffix: &str| args.out.join(format!("{stem}_{suffix}"));
        let n = args.size as u32;
        for (suffix, scene) in [("source.png", &edit.source), ("expected.png", &edit.target)] {
            let img = image::RgbImage::from_raw(n, n, scene.render()).expect("size*size*3 bytes");
            crate::image_io::save_image(&img, &file(suffix))?;
        }
        for (suffix, text) in [("source.txt", edit.source_caption()), ("target.txt", edit.target_caption())] {
            write_text(&file(suffix), &text)?;
        }
        let line = serde_json::json!({
            "index": edit.index,
            "kind": edit.kind.name(),
            "source_caption": edit.source_caption(),
            "target_caption": edit.target_caption(),
            "source": format!("{stem}_source.png"),
            "expected": format!("{stem}_expected.png"),
        });
        lines.push_str(&format!("{line}\n"));
    }
    write_text(&args.out.join("edits.jsonl"), &lines)?;
    eprintln!("wrote {} {split} edits to {}", edits.len(), path_str(&args.out));
    Ok(())
}

fn write_text(path: &std::path::Path, text: &str) -> Result<()> {
    crate::image_io::write_atomic(path, |tmp| std::fs::write(tmp, text).map_err(|e| Error::io(path, e)))
}
