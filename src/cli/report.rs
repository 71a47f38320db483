//! `diffedit report`: one panel for a slide — source, heat map, mask, overlay, result and,
//! with `--img2img`, the naive baseline.

use std::path::PathBuf;

use clap::Args;

use super::edit::EditFlags;
use super::shared::{
    check_outputs, edit_heading, load, picture_tile, print_summary, start_experiment, Experiment, PictureArgs, Written,
};
use super::{default_out, ModelArgs, OutputArgs};
use crate::diffedit::experiments::{compare, latents_to_image, Stream};
use crate::error::Result;
use crate::image_io::map_values;
use crate::viz::{self, figure};

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    pub picture: PictureArgs,
    /// The panel (default: IN_report.png).
    #[arg(long, value_name = "OUT.png")]
    pub out: Option<PathBuf>,
    /// Add naive img2img (no mask) as a sixth tile.
    #[arg(long)]
    pub img2img: bool,
    /// Tiles per row.
    #[arg(long, default_value_t = 3)]
    pub columns: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub edit: EditFlags,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    // Checked before the model loads, so a bad flag fails at once.
    args.edit.params()?;
    args.picture.check()?;
    if args.columns == 0 {
        return Err(crate::error::Error::invalid("--columns must be at least 1, got 0"));
    }
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.picture.image, "report"));
    check_outputs(&[("--out", &out)])?;

    let o = &args.output;
    let l = load(&args.model, Some(&args.picture.image), args.picture.size.as_deref(), o)?;
    let Experiment { params, pipeline, prepared, mut ledger, progress } =
        start_experiment(&l, &args.picture, &args.edit, o)?;
    let latent = pipeline.latent_shape(l.width, l.height);
    let img2img_noise = if args.img2img {
        Some(crate::rng::standard_normal(params.rng, params.seed, Stream::Img2img, latent)?)
    } else {
        None
    };
    let (source, target) = (&args.picture.source, &args.picture.target);
    let c = compare(&pipeline, &prepared, img2img_noise.as_ref(), None, &mut ledger, progress.as_ref())?;

    let style = figure::Style::default();
    let (w, h) = (l.width as u32, l.height as u32);
    let (nh, nw, normalized) = map_values(&prepared.mask.normalized)?;
    let (mh, mw, mask) = map_values(&prepared.mask.mask)?;
    let coverage = viz::coverage(&mask);
    let result = ledger.run(&pipeline, "vae_decode", || latents_to_image(&pipeline, &c.diffedit))?;
    let mut tiles = vec![
        picture_tile("source", &l.processed, &style),
        figure::heatmap_tile("normalised difference", &normalized, nh, nw, w, h, &style),
        picture_tile(
            format!("mask > {} · {:.1}%", params.mask_threshold, coverage * 100.0),
            &viz::mask_image(&mask, mh, mw, w, h),
            &style,
        ),
        picture_tile("overlay", &viz::overlay_image(&l.processed, &mask, mh, mw), &style),
        picture_tile(format!("DiffEdit (r = {})", params.encode_ratio), &result, &style),
    ];
    if let Some(z) = &c.img2img {
        let naive = ledger.run(&pipeline, "vae_decode", || latents_to_image(&pipeline, z))?;
        tiles.push(picture_tile("img2img (no mask)", &naive, &style));
    }
    let fig = figure::grid(&tiles, args.columns, Some(&edit_heading(source, target)), &style);
    let mut written = Written::default();
    written.figure(&fig, &tiles, &out)?;
    let extra = serde_json::json!({
        "processing_size": [l.width, l.height],
        "mask_coverage": coverage,
        "img2img": args.img2img,
    });
    print_summary(o, "report", &written, &ledger, &pipeline, l.load_s, extra);
    Ok(())
}
