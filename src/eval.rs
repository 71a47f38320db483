//! `diffedit eval`: DiffEdit against naive img2img on the held-out synthetic edits of
//! [`crate::synth`], with the ground truth the generator knows.
//!
//! Per edit, both methods share the encoding, the inversion and the encode ratio; they differ
//! only in the mask: DiffEdit blends the decoded latents with the inverted ones outside its mask,
//! img2img decodes the whole picture from the inverted latent (its "mask" is the whole picture).
//! Metrics, averaged over edits:
//! - mask IoU: the method's edit region (DiffEdit's latent mask upsampled to pixels with nearest
//!   neighbours) against the ground-truth region, the union of the object's source and target
//!   masks;
//! - background PSNR: the edited picture against the source outside the ground-truth region
//!   (8-bit pictures, peak 255; an exact match counts as 100 dB);
//! - edit success: the share of edits whose region [`synth::classify`] reads as the target
//!   object (colour and shape).

use candle_core::Tensor;
use image::RgbImage;

use crate::diffedit::{DiffEdit, EditParams, Noise, Progress};
use crate::error::{Error, Result};
use crate::image_io::{image_to_tensor, map_values, tensor_to_image};
use crate::models::loading::StableDiffusion;
use crate::synth::{self, Edit, EditKind};

/// PSNR of identical pictures.
pub const PSNR_CAP_DB: f64 = 100.0;

/// One method's result on one edit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MethodResult {
    pub mask_iou: f64,
    pub background_psnr_db: f64,
    pub success: bool,
    /// What the classifier read: colour name and shape name, if it found an object.
    pub read_colour: Option<&'static str>,
    pub read_shape: Option<&'static str>,
    #[serde(skip)]
    pub image: RgbImage,
    /// The method's edit region at picture size.
    #[serde(skip)]
    pub region: Vec<bool>,
}

/// Both methods on one held-out edit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EditRecord {
    pub index: u64,
    pub kind: EditKind,
    pub source_caption: String,
    pub target_caption: String,
    pub diffedit: MethodResult,
    pub img2img: MethodResult,
}

/// Means over a set of edits.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    pub mask_iou: f64,
    pub background_psnr_db: f64,
    pub edit_success: f64,
    pub n_edits: usize,
}

impl Summary {
    pub fn of<'a>(results: impl IntoIterator<Item = &'a MethodResult>) -> Self {
        let mut s = Summary::default();
        for r in results {
            s.mask_iou += r.mask_iou;
            s.background_psnr_db += r.background_psnr_db;
            s.edit_success += r.success as u8 as f64;
            s.n_edits += 1;
        }
        if s.n_edits > 0 {
            let n = s.n_edits as f64;
            s.mask_iou /= n;
            s.background_psnr_db /= n;
            s.edit_success /= n;
        }
        s
    }
}

/// Intersection over union of two pixel sets (1 when both are empty).
pub fn iou(a: &[bool], b: &[bool]) -> f64 {
    let inter = a.iter().zip(b).filter(|(x, y)| **x && **y).count();
    let union = a.iter().zip(b).filter(|(x, y)| **x || **y).count();
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// PSNR (dB, peak 255) between two RGB pictures over the pixels where `keep` is true; capped at
/// [`PSNR_CAP_DB`], which is also the value when no pixel is kept.
pub fn psnr_where(a: &RgbImage, b: &RgbImage, keep: &[bool]) -> f64 {
    let (mut se, mut n) = (0.0f64, 0usize);
    for (i, (pa, pb)) in a.pixels().zip(b.pixels()).enumerate() {
        if keep[i] {
            for c in 0..3 {
                let d = pa.0[c] as f64 - pb.0[c] as f64;
                se += d * d;
            }
            n += 3;
        }
    }
    if n == 0 || se == 0.0 {
        return PSNR_CAP_DB;
    }
    (10.0 * (255.0f64 * 255.0 / (se / n as f64)).log10()).min(PSNR_CAP_DB)
}

/// A latent-resolution mask [1,1,h,w] as a pixel region `size` x `size` (nearest neighbour).
fn mask_to_region(mask: &Tensor, size: usize) -> Result<Vec<bool>> {
    let (h, w, values) = map_values(mask)?;
    Ok((0..size * size)
        .map(|i| {
            let (x, y) = (i % size, i / size);
            values[(y * h / size) * w + x * w / size] > 0.5
        })
        .collect())
}

fn rgb(size: usize, bytes: Vec<u8>) -> RgbImage {
    RgbImage::from_raw(size as u32, size as u32, bytes).expect("size*size*3 bytes")
}

fn judge(edit: &Edit, image: RgbImage, region: Vec<bool>, source: &RgbImage) -> MethodResult {
    let size = edit.source.size;
    let gt = edit.region();
    let outside: Vec<bool> = gt.iter().map(|b| !b).collect();
    let background = edit.target.render_background();
    let reading = synth::classify(image.as_raw(), &background, &gt, size);
    let success = synth::is_success(&reading, edit.target_object());
    MethodResult {
        mask_iou: iou(&region, &gt),
        background_psnr_db: psnr_where(&image, source, &outside),
        success,
        read_colour: reading.colour.map(|c| synth::OBJECT_COLOURS[c].name),
        read_shape: reading.shape.map(|s| s.name()),
        image,
        region,
    }
}

/// Runs DiffEdit and img2img on one held-out edit.
pub fn evaluate_edit(pipeline: &DiffEdit, edit: &Edit, progress: &dyn Progress) -> Result<EditRecord> {
    let size = edit.source.size;
    let params: &EditParams = &pipeline.params;
    let source = rgb(size, edit.source.render());
    let image = image_to_tensor(&source)?;
    let latent = pipeline.latent_shape(size, size);
    let noise = Noise::drawn(params.rng, params.seed.wrapping_add(edit.index), latent, params.mask_samples)?;
    let (src_caption, tgt_caption) = (edit.source_caption(), edit.target_caption());
    let out = pipeline.edit(&image, &src_caption, &tgt_caption, &noise, progress)?;

    let diffedit_img = tensor_to_image(&out.decoded)?;
    let diffedit_region = mask_to_region(&out.mask.mask, size)?;

    // img2img: the same inverted latents and steps, decoded without the mask.
    let s = params.start_step();
    let plain = pipeline.decode(&out.inverted, None, s, &out.embeddings, progress)?;
    let plain = pipeline.decode_latents(plain.last().expect("decoding keeps its start latent"))?;
    let img2img_img = tensor_to_image(&plain)?;

    Ok(EditRecord {
        index: edit.index,
        kind: edit.kind,
        source_caption: src_caption,
        target_caption: tgt_caption,
        diffedit: judge(edit, diffedit_img, diffedit_region, &source),
        img2img: judge(edit, img2img_img, vec![true; size * size], &source),
    })
}

/// The first `n` held-out (or, with `validation`, validation) edits at the model's native picture
/// size, checked against the model's factors.
pub fn edits_for(model: &StableDiffusion, n: usize, validation: bool) -> Result<Vec<Edit>> {
    let size = model.native_size();
    let multiple = model.vae_factor() * model.unet_factor();
    if size < 16 || !size.is_multiple_of(multiple) {
        return Err(Error::invalid(format!(
            "the model's native size {size} px is not usable for the synthetic scenes (at least 16, a multiple of {multiple})"
        )));
    }
    Ok(if validation { synth::validation_edits(n, size) } else { synth::heldout_edits(n, size) })
}

/// A figure of the first `rows` edits, one row each under the column titles source, expected
/// (the ground-truth target), mask (DiffEdit's, over the source, with its IoU), DiffEdit and
/// img2img: above the pictures the edit's prompts, under each method whether the classifier
/// passed it (or what it read instead); every picture magnified `zoom` times. `title` starts the
/// heading, which adds how many of the shown edits each method passed.
pub fn grid_figure(records: &[EditRecord], edits: &[Edit], rows: usize, zoom: u32, title: &str) -> RgbImage {
    use crate::viz::edit_grid::{edit_grid, EditRow, Note};
    let shown: Vec<(&EditRecord, &Edit)> = records.iter().zip(edits).take(rows.max(1)).collect();
    let verdict = |m: &MethodResult| {
        let text = if m.success {
            "✓ passed".to_string()
        } else {
            match (m.read_colour, m.read_shape) {
                (Some(c), Some(s)) => format!("✗ read {c} {s}"),
                (Some(c), None) => format!("✗ read {c}, no shape"),
                _ => "✗ no object read".to_string(),
            }
        };
        Some(Note { text, passed: Some(m.success) })
    };
    let grid_rows: Vec<EditRow> = shown
        .iter()
        .map(|(rec, edit)| {
            let n = edit.source.size;
            let source = rgb(n, edit.source.render());
            let target = rgb(n, edit.target.render());
            let mut overlay = source.clone();
            for (i, p) in overlay.pixels_mut().enumerate() {
                if rec.diffedit.region[i] {
                    p.0 = std::array::from_fn(|c| ((p.0[c] as u16 + [255u16, 0, 255][c]) / 2) as u8);
                }
            }
            EditRow {
                lines: [
                    format!("#{} {} · source: {}", rec.index, rec.kind.name(), rec.source_caption),
                    format!("target: {}", rec.target_caption),
                ],
                pictures: vec![source, target, overlay, rec.diffedit.image.clone(), rec.img2img.image.clone()],
                notes: vec![
                    None,
                    None,
                    Some(Note { text: format!("IoU {:.2}", rec.diffedit.mask_iou), passed: None }),
                    verdict(&rec.diffedit),
                    verdict(&rec.img2img),
                ],
            }
        })
        .collect();
    let passed = |f: fn(&EditRecord) -> bool| shown.iter().filter(|(r, _)| f(r)).count();
    let heading = format!(
        "{title}: DiffEdit passed {}/{n}, img2img {}/{n}",
        passed(|r| r.diffedit.success),
        passed(|r| r.img2img.success),
        n = shown.len()
    );
    let style = crate::viz::figure::Style { margin: 12, heading_px: 17.0, ..Default::default() };
    edit_grid(&heading, &["source", "expected", "mask", "DiffEdit", "img2img"], &grid_rows, zoom, &style)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_and_psnr() {
        assert_eq!(iou(&[true, true, false, false], &[true, false, true, false]), 1.0 / 3.0);
        assert_eq!(iou(&[false, false], &[false, false]), 1.0);
        let a = RgbImage::from_pixel(2, 1, image::Rgb([10, 10, 10]));
        let mut b = a.clone();
        assert_eq!(psnr_where(&a, &b, &[true, true]), PSNR_CAP_DB);
        b.put_pixel(1, 0, image::Rgb([20, 20, 20]));
        assert_eq!(psnr_where(&a, &b, &[true, false]), PSNR_CAP_DB);
        // MSE over the kept pixel is 100: 10 log10(65025 / 100).
        let p = psnr_where(&a, &b, &[false, true]);
        assert!((p - 10.0 * (650.25f64).log10()).abs() < 1e-12);
    }

    #[test]
    fn the_ground_truth_scores_perfectly() {
        // A method that paints exactly the target scene inside the exact region: IoU 1, no
        // background change, success.
        for edit in synth::heldout_edits(9, 32) {
            let source = rgb(32, edit.source.render());
            let r = judge(&edit, rgb(32, edit.target.render()), edit.region(), &source);
            assert_eq!(r.mask_iou, 1.0);
            assert_eq!(r.background_psnr_db, PSNR_CAP_DB);
            assert!(r.success, "edit {}", edit.index);
            let r = judge(&edit, source.clone(), edit.region(), &source);
            assert!(!r.success);
        }
    }

    #[test]
    fn summary_means() {
        let edit = synth::edit(1, 0, 32);
        let source = rgb(32, edit.source.render());
        let good = judge(&edit, rgb(32, edit.target.render()), edit.region(), &source);
        let bad = judge(&edit, source.clone(), vec![false; 32 * 32], &source);
        let s = Summary::of([&good, &bad]);
        assert_eq!(s.n_edits, 2);
        assert_eq!(s.edit_success, 0.5);
        assert_eq!(s.mask_iou, 0.5);
        assert_eq!(s.background_psnr_db, PSNR_CAP_DB);
    }
}
