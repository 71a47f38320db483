//! `diffedit mask`: the mask step alone, and how the threshold shapes it.

use std::path::PathBuf;

use clap::Args;

use super::edit::EditFlags;
use super::shared::{
    check_outputs, edit_heading, load, parse_list, picture_tile, print_summary, start_experiment, Experiment,
    PictureArgs, Written,
};
use super::{default_out, ModelArgs, OutputArgs};
use crate::diffedit::experiments::threshold_sweep;
use crate::error::{Error, Result};
use crate::image_io::map_values;
use crate::viz::{self, figure};

#[derive(Args, Debug)]
pub struct MaskArgs {
    #[command(flatten)]
    pub picture: PictureArgs,
    /// The figure: source, heat map of the normalised difference with a colour bar, binary mask,
    /// overlay (default: IN_mask.png next to the input).
    #[arg(long, value_name = "OUT.png")]
    pub out: Option<PathBuf>,
    /// The threshold strip, one mask per threshold titled with its coverage (default:
    /// IN_thresholds.png).
    #[arg(long, value_name = "PATH")]
    pub thresholds_out: Option<PathBuf>,
    /// Thresholds of the strip, comma-separated.
    #[arg(long, default_value = "0.3,0.4,0.5,0.6,0.7")]
    pub thresholds: String,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub edit: EditFlags,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(args: &MaskArgs) -> Result<()> {
    // Checked before the model loads, so a bad flag fails at once.
    args.edit.params()?;
    args.picture.check()?;
    let thresholds = parse_list("--thresholds", &args.thresholds)?;
    if let Some(t) = thresholds.iter().find(|t| !(0.0..=1.0).contains(*t)) {
        return Err(Error::invalid(format!("--thresholds must be in [0, 1], got {t}")));
    }
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.picture.image, "mask"));
    let strip_out = args.thresholds_out.clone().unwrap_or_else(|| default_out(&args.picture.image, "thresholds"));
    check_outputs(&[("--out", &out), ("--thresholds-out", &strip_out)])?;

    let o = &args.output;
    let l = load(&args.model, Some(&args.picture.image), args.picture.size.as_deref(), o)?;
    let Experiment { params, pipeline, prepared, ledger, .. } = start_experiment(&l, &args.picture, &args.edit, o)?;
    let (source, target) = (&args.picture.source, &args.picture.target);
    // Every threshold reuses the one normalised difference: no further UNet evaluation.
    let sweep = threshold_sweep(&prepared.mask.normalized, &thresholds)?;

    let style = figure::Style::default();
    let (w, h) = (l.width as u32, l.height as u32);
    let (nh, nw, normalized) = map_values(&prepared.mask.normalized)?;
    let (mh, mw, mask) = map_values(&prepared.mask.mask)?;
    let coverage = viz::coverage(&mask);
    let tiles = vec![
        picture_tile("source", &l.processed, &style),
        figure::heatmap_tile("normalised difference", &normalized, nh, nw, w, h, &style),
        picture_tile(
            format!("mask > {} · {:.1}%", params.mask_threshold, coverage * 100.0),
            &viz::mask_image(&mask, mh, mw, w, h),
            &style,
        ),
        picture_tile("overlay", &viz::overlay_image(&l.processed, &mask, mh, mw), &style),
    ];
    let mut written = Written::default();
    let fig = figure::strip(&tiles, Some(&edit_heading(source, target)), &style);
    written.figure(&fig, &tiles, &out)?;

    let mut strip_tiles = Vec::with_capacity(sweep.len());
    let mut rows = Vec::with_capacity(sweep.len());
    for t in &sweep {
        let (th, tw, values) = map_values(&t.mask)?;
        let title = format!("threshold {} · {:.1}%", t.threshold, t.coverage * 100.0);
        strip_tiles.push(picture_tile(title, &viz::mask_image(&values, th, tw, w, h), &style));
        rows.push(serde_json::json!({"threshold": t.threshold, "coverage": t.coverage}));
    }
    let fig = figure::strip(&strip_tiles, Some("mask coverage by threshold"), &style);
    written.figure(&fig, &strip_tiles, &strip_out)?;

    o.say(format!("mask covers {:.1}% of the picture at threshold {}", coverage * 100.0, params.mask_threshold));
    let extra = serde_json::json!({
        "processing_size": [l.width, l.height],
        "mask_coverage": coverage,
        "mask_timestep": prepared.mask.timestep,
        "thresholds": rows,
    });
    print_summary(o, "mask", &written, &ledger, &pipeline, l.load_s, extra);
    Ok(())
}
