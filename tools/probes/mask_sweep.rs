//! Mask IoU of DiffEdit's mask on the validation edits, for several mask noise levels and
//! thresholds at once (the normalised difference is computed once per level and thresholded many
//! times): how `--mask-noise-level` and `--mask-threshold` were chosen for the bundled model
//! without looking at the held-out set.
//!
//!     cargo run --release --example mask_sweep -- MODEL_DIR [N_EDITS] [LEVELS] [THRESHOLDS]
//!     e.g. ... models/diffedit-shapes 60 0.5,0.6,0.7,0.8 0.3,0.4,0.5
use candle_core::{DType, Device};
use diffedit::diffedit::mask::threshold_mask;
use diffedit::diffedit::{DiffEdit, EditParams, Noise, Silent};
use diffedit::eval::iou;
use diffedit::image_io::image_to_tensor;
use diffedit::models::hub::Fetcher;
use diffedit::models::loading::{ModelSpec, StableDiffusion};
use diffedit::synth::{self, EditKind};

fn list(arg: Option<&String>, default: &str) -> Vec<f64> {
    arg.map(String::as_str).unwrap_or(default).split(',').map(|v| v.parse().expect("a number")).collect()
}

fn main() -> diffedit::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).expect("usage: mask_sweep MODEL_DIR [N] [LEVELS] [THRESHOLDS]");
    let n: usize = args.get(2).map(|v| v.parse().expect("N")).unwrap_or(60);
    let levels = list(args.get(3), "0.5,0.6,0.7,0.8");
    let thresholds = list(args.get(4), "0.2,0.3,0.4,0.5,0.6");
    let spec = ModelSpec { model: Some(dir.clone()), ..Default::default() };
    let model = StableDiffusion::load(&spec, &Fetcher::from_env().with_offline(true), &Device::Cpu, DType::F32)?;
    let size = model.native_size();
    let edits = synth::validation_edits(n, size);
    println!("level threshold  iou_all  iou_colour  iou_shape  iou_swap  coverage");
    for &level in &levels {
        let params = EditParams { mask_noise_level: level, ..Default::default() };
        let pipeline = DiffEdit::new(&model, params.clone())?;
        let latent = pipeline.latent_shape(size, size);
        // per threshold, per kind: (sum of IoU, count), and the mean mask coverage
        let mut sums = vec![[(0.0f64, 0usize); 3]; thresholds.len()];
        let mut coverage = vec![0.0f64; thresholds.len()];
        for edit in &edits {
            let image =
                image_to_tensor(&image::RgbImage::from_raw(size as u32, size as u32, edit.source.render()).unwrap())?;
            let noise = Noise::seeded(params.seed.wrapping_add(edit.index), latent, params.mask_samples)?;
            let emb = pipeline.encode_prompts(&edit.source_caption(), &edit.target_caption())?;
            let latents = pipeline.encode_image(&image, &noise.vae_noise)?;
            let mask = pipeline.mask(&latents, &emb, &noise.mask_noise, &Silent)?;
            let gt = edit.region();
            let k = EditKind::ALL.iter().position(|x| *x == edit.kind).unwrap();
            for (i, &th) in thresholds.iter().enumerate() {
                let m = threshold_mask(&mask.normalized, th)?.flatten_all()?.to_vec1::<f32>()?;
                let (h, w) = (latent.1, latent.2);
                let region: Vec<bool> =
                    (0..size * size).map(|p| m[((p / size) * h / size) * w + (p % size) * w / size] > 0.5).collect();
                sums[i][k].0 += iou(&region, &gt);
                sums[i][k].1 += 1;
                coverage[i] += region.iter().filter(|b| **b).count() as f64 / (size * size) as f64;
            }
        }
        for (i, &th) in thresholds.iter().enumerate() {
            let per: Vec<f64> = sums[i].iter().map(|(s, c)| s / (*c).max(1) as f64).collect();
            let all = sums[i].iter().map(|(s, _)| s).sum::<f64>() / edits.len() as f64;
            println!(
                "{level:5.2} {th:9.2} {all:8.3} {:11.3} {:10.3} {:9.3} {:9.3}",
                per[0],
                per[1],
                per[2],
                coverage[i] / edits.len() as f64
            );
        }
    }
    Ok(())
}
