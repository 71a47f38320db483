//! `diffedit ablate`: the encode ratio's effect, from one mask and one inversion.

use std::path::PathBuf;

use clap::Args;

use super::edit::EditFlags;
use super::shared::{
    check_outputs, edit_heading, load, parse_list, picture_tile, print_summary, start_experiment, Experiment,
    PictureArgs, Written,
};
use super::{default_out, ModelArgs, OutputArgs};
use crate::diffedit::experiments::{ablate, latents_to_image, ratio_steps};
use crate::error::Result;
use crate::image_io::map_values;
use crate::viz::{self, figure};

#[derive(Args, Debug)]
pub struct AblateArgs {
    #[command(flatten)]
    pub picture: PictureArgs,
    /// Encode ratios to compare, comma-separated; each decodes int(ratio*steps) steps.
    #[arg(long, default_value = "0.3,0.5,0.7,0.8,0.9")]
    pub ratios: String,
    /// The strip: the source, then one result per ratio (default: IN_ablation.png).
    #[arg(long, value_name = "OUT.png")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub edit: EditFlags,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub fn run(args: &AblateArgs) -> Result<()> {
    let params = args.edit.params()?;
    args.picture.check()?;
    let ratios = parse_list("--ratios", &args.ratios)?;
    for &r in &ratios {
        ratio_steps(r, params.steps)?;
    }
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.picture.image, "ablation"));
    check_outputs(&[("--out", &out)])?;

    let o = &args.output;
    let l = load(&args.model, Some(&args.picture.image), args.picture.size.as_deref(), o)?;
    let Experiment { pipeline, prepared, mut ledger, progress, .. } =
        start_experiment(&l, &args.picture, &args.edit, o)?;
    let (source, target) = (&args.picture.source, &args.picture.target);
    let (inverted, runs) = ablate(&pipeline, &prepared, &ratios, &mut ledger, progress.as_ref())?;

    let style = figure::Style::default();
    let (_, _, mask) = map_values(&prepared.mask.mask)?;
    let mut tiles =
        vec![picture_tile(format!("source · mask {:.1}%", viz::coverage(&mask) * 100.0), &l.processed, &style)];
    let mut rows = Vec::with_capacity(runs.len());
    for run in &runs {
        let picture = ledger.run(&pipeline, "vae_decode", || latents_to_image(&pipeline, &run.latents))?;
        tiles.push(picture_tile(format!("r = {} · {} steps", run.ratio, run.decode_steps), &picture, &style));
        rows.push(serde_json::json!({"ratio": run.ratio, "decode_steps": run.decode_steps}));
    }
    let heading = format!("encode ratio: {}", edit_heading(source, target));
    let fig = figure::strip(&tiles, Some(&heading), &style);
    let mut written = Written::default();
    written.figure(&fig, &tiles, &out)?;
    let extra = serde_json::json!({
        "processing_size": [l.width, l.height],
        "inversion_steps": inverted.len() - 1,
        "ratios": rows,
    });
    print_summary(o, "ablate", &written, &ledger, &pipeline, l.load_s, extra);
    Ok(())
}
