//! `diffedit compare`: naive img2img (no mask) beside DiffEdit, and the soft mask beside the hard.

use std::path::PathBuf;

use clap::Args;

use super::edit::EditFlags;
use super::shared::{
    check_outputs, edit_heading, load, picture_tile, print_summary, start_experiment, Experiment, PictureArgs, Written,
};
use super::{default_out, ModelArgs, OutputArgs};
use crate::diffedit::experiments::{check_sigma, compare, latents_to_image, Stream};
use crate::error::{Error, Result};
use crate::image_io::map_values;
use crate::viz::{self, figure};

#[derive(Args, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    pub picture: PictureArgs,
    /// The strip: source, mask, img2img, DiffEdit (default: IN_compare.png).
    #[arg(long, value_name = "OUT.png")]
    pub out: Option<PathBuf>,
    /// Also decode with the mask blurred by a Gaussian of this sigma (latent cells) and show the
    /// soft mask and its result beside the hard ones.
    #[arg(long, value_name = "SIGMA", allow_negative_numbers = true)]
    pub mask_blur: Option<f64>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub edit: EditFlags,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(args: &CompareArgs) -> Result<()> {
    // Checked before the model loads, so a bad flag fails at once.
    args.edit.params()?;
    args.picture.check()?;
    if let Some(sigma) = args.mask_blur {
        check_sigma(sigma)?;
    }
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.picture.image, "compare"));
    check_outputs(&[("--out", &out)])?;

    let o = &args.output;
    let l = load(&args.model, Some(&args.picture.image), args.picture.size.as_deref(), o)?;
    let Experiment { params, pipeline, prepared, mut ledger, progress } =
        start_experiment(&l, &args.picture, &args.edit, o)?;
    let img2img_noise = crate::rng::standard_normal(
        params.rng,
        params.seed,
        Stream::Img2img,
        pipeline.latent_shape(l.width, l.height),
    )?;
    let (source, target) = (&args.picture.source, &args.picture.target);
    let c = compare(&pipeline, &prepared, Some(&img2img_noise), args.mask_blur, &mut ledger, progress.as_ref())?;

    let style = figure::Style::default();
    let (w, h) = (l.width as u32, l.height as u32);
    let (mh, mw, mask) = map_values(&prepared.mask.mask)?;
    let coverage = viz::coverage(&mask);
    let mut decode = |z: &candle_core::Tensor| ledger.run(&pipeline, "vae_decode", || latents_to_image(&pipeline, z));
    let diffedit = decode(&c.diffedit)?;
    let naive = decode(c.img2img.as_ref().ok_or_else(|| Error::invalid("img2img did not run"))?)?;
    let ratio = params.encode_ratio;
    let mut tiles = vec![
        picture_tile("source", &l.processed, &style),
        picture_tile(format!("mask · {:.1}%", coverage * 100.0), &viz::mask_image(&mask, mh, mw, w, h), &style),
    ];
    let mut soft_tiles = Vec::new();
    if let (Some((soft_mask, z)), Some(sigma)) = (&c.soft, args.mask_blur) {
        let (sh, sw, soft) = map_values(soft_mask)?;
        tiles.push(picture_tile(format!("soft mask (σ = {sigma})"), &figure::gray_image(&soft, sh, sw, w, h), &style));
        soft_tiles.push(picture_tile(format!("DiffEdit, soft mask (σ = {sigma})"), &decode(z)?, &style));
    }
    tiles.push(picture_tile(format!("img2img (r = {ratio}, no mask)"), &naive, &style));
    tiles.push(picture_tile(if soft_tiles.is_empty() { "DiffEdit" } else { "DiffEdit, hard mask" }, &diffedit, &style));
    tiles.extend(soft_tiles);
    let fig = figure::strip(&tiles, Some(&edit_heading(source, target)), &style);
    let mut written = Written::default();
    written.figure(&fig, &tiles, &out)?;
    let extra = serde_json::json!({
        "processing_size": [l.width, l.height],
        "mask_coverage": coverage,
        "mask_blur": args.mask_blur,
        "inversion_steps": c.inverted.len() - 1,
        "decode_steps": params.start_step(),
    });
    print_summary(o, "compare", &written, &ledger, &pipeline, l.load_s, extra);
    Ok(())
}
