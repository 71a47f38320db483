//! The edit engine: one loaded model, its edit settings and a bounded cache of stage results,
//! shared by `diffedit edit`, the experiment commands, `diffedit batch` and `diffedit serve`.
//!
//! [`Engine::edit_picture`] is the whole road from a picture as read to the edited picture at the
//! input's size: processing size, seeded or supplied draws, the mask (DiffEdit's, a given one,
//! grown or blurred), inversion, decoding and the paste-back. Each stage goes through the
//! [`StageCache`], keyed by the contents of what it depends on, so repeated work (a second target
//! on the same picture, a new threshold, a new guidance) costs only what changed, and the bytes
//! are those of a fresh run.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};

use super::cache::{CacheStats, StageCache};
use super::mask::threshold_mask;
use super::pipeline::{DiffEdit, EditOutput, EditRequest, MaskChoice, Noise};
use super::{EditParams, ModelEditDefaults, Progress, Stage};
use crate::error::{Error, Result};
use crate::image_io::{check_processing_size, image_to_tensor, map_values, processing_size, resize, tensor_to_image};
use crate::models::loading::StableDiffusion;
use crate::paste::paste_edit;
use crate::viz;

/// Default size of the stage cache.
pub const DEFAULT_CACHE_MB: usize = 1024;

/// A loaded model with its edit settings and a cache of stage results.
pub struct Engine {
    model: StableDiffusion,
    edit_defaults: ModelEditDefaults,
    edit_defaults_file: Option<PathBuf>,
    cache: StageCache,
}

/// Where an edit's random draws come from.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum NoiseSource {
    /// Drawn from `params.seed` with `params.rng`.
    #[default]
    Seeded,
    /// `vae_noise` and `mask_noise` from a safetensors file (shapes checked against the edit).
    File(PathBuf),
}

/// The mask an edit decodes with, as a user gives it.
#[derive(Clone, Debug, Default)]
pub enum MaskSpec {
    /// DiffEdit's own.
    #[default]
    Automatic,
    /// A picture (any size; white where the picture may change, any grey above half counts),
    /// resized to the latent grid by area averaging.
    Given(GrayImage),
}

/// One edit of a picture, as a user asks it.
#[derive(Clone, Debug)]
pub struct PictureEdit {
    pub source: String,
    pub target: String,
    pub params: EditParams,
    /// Process at exactly this size (width, height); default: the model's native long side, the
    /// aspect kept.
    pub size: Option<(usize, usize)>,
    pub noise: NoiseSource,
    pub mask: MaskSpec,
    /// Grows the mask by this many pixels of the input picture (rounded to latent cells, at least
    /// one cell when positive).
    pub mask_dilate_px: f64,
    /// Decodes with the (grown) mask blurred by a Gaussian of this sigma (latent cells).
    pub mask_blur: Option<f64>,
    /// Replaces the empty prompt of the guidance.
    pub negative_prompt: Option<String>,
    /// Paste the edit into the input at its full size instead of resizing the VAE's picture.
    pub keep_background: bool,
}

impl PictureEdit {
    pub fn new(source: impl Into<String>, target: impl Into<String>, params: EditParams) -> Self {
        Self {
            source: source.into(),
            target: target.into(),
            params,
            size: None,
            noise: NoiseSource::Seeded,
            mask: MaskSpec::Automatic,
            mask_dilate_px: 0.0,
            mask_blur: None,
            negative_prompt: None,
            keep_background: false,
        }
    }

    /// The edit with `options` applied.
    pub fn with_options(self, options: &super::fields::EditOptions) -> Self {
        Self {
            mask_dilate_px: options.mask_dilate,
            mask_blur: options.mask_blur,
            negative_prompt: options.negative_prompt.clone(),
            keep_background: options.keep_background,
            ..self
        }
    }

    /// Checks what can be checked without the model: parameters, prompts, dilation.
    pub fn check(&self) -> Result<()> {
        self.params.validate()?;
        check_prompts(&self.source, &self.target)?;
        if !(self.mask_dilate_px.is_finite() && self.mask_dilate_px >= 0.0) {
            return Err(Error::invalid(format!(
                "--mask-dilate must be a finite number of pixels >= 0, got {}",
                self.mask_dilate_px
            )));
        }
        if let Some(sigma) = self.mask_blur {
            super::experiments::check_sigma(sigma)?;
        }
        if let Some(n) = &self.negative_prompt {
            if n.trim().is_empty() {
                return Err(Error::invalid("--negative-prompt is empty: leave it out for the empty prompt"));
            }
        }
        Ok(())
    }
}

/// The two prompts must say something.
pub fn check_prompts(source: &str, target: &str) -> Result<()> {
    if source.trim().is_empty() {
        return Err(Error::invalid("--source prompt is empty: describe the picture as it is"));
    }
    if target.trim().is_empty() {
        return Err(Error::invalid("--target prompt is empty: describe the picture as it should become"));
    }
    Ok(())
}

/// A picture ready for the model: as read, and at its processing size.
pub struct PreparedPicture {
    pub original: RgbImage,
    pub processed: RgbImage,
    /// `processed` as [1,3,H,W] in [-1,1].
    pub tensor: Tensor,
    pub width: usize,
    pub height: usize,
}

/// What an edit of a picture produced.
pub struct PictureResult {
    /// The edited picture at the input's size.
    pub picture: RgbImage,
    pub output: EditOutput,
    /// The processing size (width, height).
    pub processing_size: (usize, usize),
    /// The input's size.
    pub input_size: (u32, u32),
    /// Share of latent cells in the (grown) binary mask.
    pub coverage: f64,
    /// Whether the decoding's mask is soft (blurred).
    pub soft: bool,
}

impl PictureResult {
    /// The mask the decoding used, at the input's size: binary white/black, or the soft mask in
    /// greys when blurred.
    pub fn mask_image(&self) -> Result<RgbImage> {
        let (w, h) = self.input_size;
        if self.soft {
            let (mh, mw, values) = map_values(&self.output.decode_mask)?;
            Ok(viz::figure::gray_image(&values, mh, mw, w, h))
        } else {
            let (mh, mw, values) = map_values(&self.output.region)?;
            Ok(viz::mask_image(&values, mh, mw, w, h))
        }
    }

    /// The normalised difference in the magma colour map, at the input's size.
    pub fn heatmap_image(&self) -> Result<RgbImage> {
        let (w, h) = self.input_size;
        let (mh, mw, values) = map_values(&self.output.mask.normalized)?;
        Ok(viz::heatmap_image(&values, mh, mw, w, h))
    }

    /// The binary mask tinted over `original`.
    pub fn overlay_image(&self, original: &RgbImage) -> Result<RgbImage> {
        let (mh, mw, values) = map_values(&self.output.region)?;
        Ok(viz::overlay_image(original, &values, mh, mw))
    }
}

/// The mask step alone on a picture (find mask, re-threshold).
pub struct MaskResult {
    pub normalized: Tensor,
    /// The binary mask, [1,1,h,w].
    pub mask: Tensor,
    pub coverage: f64,
    pub timestep: i64,
    pub unet_evaluations: usize,
    pub input_size: (u32, u32),
    pub processing_size: (usize, usize),
}

impl MaskResult {
    pub fn mask_image(&self) -> Result<RgbImage> {
        let (w, h) = self.input_size;
        let (mh, mw, values) = map_values(&self.mask)?;
        Ok(viz::mask_image(&values, mh, mw, w, h))
    }

    pub fn heatmap_image(&self) -> Result<RgbImage> {
        let (w, h) = self.input_size;
        let (mh, mw, values) = map_values(&self.normalized)?;
        Ok(viz::heatmap_image(&values, mh, mw, w, h))
    }

    pub fn overlay_image(&self, original: &RgbImage) -> Result<RgbImage> {
        let (mh, mw, values) = map_values(&self.mask)?;
        Ok(viz::overlay_image(original, &values, mh, mw))
    }
}

impl Engine {
    /// An engine for `model` with a cache of `cache_megabytes`. Reads the model folder's
    /// `diffedit.json` (edit settings the model recommends), if it has one.
    pub fn new(model: StableDiffusion, cache_megabytes: usize) -> Result<Self> {
        Self::with_cache_bytes(model, cache_megabytes.saturating_mul(1 << 20))
    }

    /// [`Engine::new`] with the cache's size in bytes.
    pub fn with_cache_bytes(model: StableDiffusion, cache_bytes: usize) -> Result<Self> {
        let file = model.model_dir.as_ref().map(|d| d.join(ModelEditDefaults::FILE)).filter(|p| p.is_file());
        let edit_defaults = match &file {
            Some(p) => ModelEditDefaults::from_file(p)?,
            None => ModelEditDefaults::default(),
        };
        Ok(Self { model, edit_defaults, edit_defaults_file: file, cache: StageCache::new(cache_bytes) })
    }

    pub fn model(&self) -> &StableDiffusion {
        &self.model
    }

    /// The model folder's recommended edit settings (empty when it has none).
    pub fn edit_defaults(&self) -> &ModelEditDefaults {
        &self.edit_defaults
    }

    /// The `diffedit.json` the settings came from.
    pub fn edit_defaults_file(&self) -> Option<&Path> {
        self.edit_defaults_file.as_deref()
    }

    /// The tutorial's parameters with the model's recommended settings applied.
    pub fn default_params(&self) -> EditParams {
        self.edit_defaults.apply_to(EditParams::default())
    }

    /// A pipeline with `params` that reads and fills this engine's cache.
    pub fn pipeline(&self, params: EditParams) -> Result<DiffEdit<'_>> {
        DiffEdit::with_cache(&self.model, params, &self.cache)
    }

    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Forgets every cached stage result.
    pub fn clear_cache(&self) {
        self.cache.clear()
    }

    /// The picture at its processing size: `size`, or the model's native long side with the
    /// aspect kept; checked against the model's limits.
    pub fn prepare_picture(&self, original: RgbImage, size: Option<(usize, usize)>) -> Result<PreparedPicture> {
        let m = &self.model;
        let native = m.native_size();
        let (width, height) = match size {
            Some(s) => s,
            None => processing_size(original.width(), original.height(), native, m.vae_factor()),
        };
        check_processing_size(width, height, m.vae_factor(), m.unet_factor(), native)?;
        let processed = resize(&original, width, height);
        let tensor = image_to_tensor(&processed)?;
        Ok(PreparedPicture { original, processed, tensor, width, height })
    }

    /// The edit's random draws for a picture processed at `width` x `height`.
    pub fn noise(&self, params: &EditParams, source: &NoiseSource, width: usize, height: usize) -> Result<Noise> {
        let f = self.model.vae_factor();
        let latent = (self.model.unet.config.in_channels, height / f, width / f);
        match source {
            NoiseSource::Seeded => Noise::drawn(params.rng, params.seed, latent, params.mask_samples),
            NoiseSource::File(path) => Noise::from_file(path, latent, params.mask_samples),
        }
    }

    /// The whole edit of `picture` (as read) as `edit` asks, through the cache.
    pub fn edit_picture(
        &self,
        picture: &RgbImage,
        edit: &PictureEdit,
        progress: &dyn Progress,
    ) -> Result<PictureResult> {
        edit.check()?;
        let prepared = self.prepare_picture(picture.clone(), edit.size)?;
        self.edit_prepared(&prepared, edit, progress)
    }

    /// [`Engine::edit_picture`] on a picture already at its processing size.
    pub fn edit_prepared(
        &self,
        prepared: &PreparedPicture,
        edit: &PictureEdit,
        progress: &dyn Progress,
    ) -> Result<PictureResult> {
        edit.check()?;
        let pipeline = self.pipeline(edit.params.clone())?;
        let noise = self.noise(&edit.params, &edit.noise, prepared.width, prepared.height)?;
        let (_, lh, lw) = pipeline.latent_shape(prepared.width, prepared.height);
        let mask = match &edit.mask {
            MaskSpec::Automatic => MaskChoice::Automatic,
            MaskSpec::Given(gray) => MaskChoice::Given(mask_from_picture(gray, lh, lw)?),
        };
        let input_size = prepared.original.dimensions();
        let request = EditRequest {
            image: &prepared.tensor,
            source: &edit.source,
            target: &edit.target,
            noise: &noise,
            mask,
            mask_dilate_cells: dilation_cells(edit.mask_dilate_px, input_size.0, lw),
            mask_blur: edit.mask_blur,
            negative_prompt: edit.negative_prompt.as_deref(),
        };
        let output = pipeline.run(&request, progress)?;
        let edited = tensor_to_image(&output.decoded)?;
        let (ow, oh) = input_size;
        let picture = if edit.keep_background {
            let (mh, mw, values) = map_values(&output.decode_mask)?;
            paste_edit(&prepared.original, &edited, &values, mh, mw)?
        } else {
            resize(&edited, ow as usize, oh as usize)
        };
        let (_, _, region) = map_values(&output.region)?;
        Ok(PictureResult {
            picture,
            coverage: viz::coverage(&region),
            soft: edit.mask_blur.is_some(),
            output,
            processing_size: (prepared.width, prepared.height),
            input_size,
        })
    }

    /// The mask step alone (encode, mask, threshold), through the cache: re-thresholding a mask
    /// found before costs no UNet evaluation.
    pub fn mask_picture(
        &self,
        prepared: &PreparedPicture,
        edit: &PictureEdit,
        progress: &dyn Progress,
    ) -> Result<MaskResult> {
        edit.check()?;
        self.mask_with(self.pipeline(edit.params.clone())?, prepared, edit, progress)
    }

    /// [`Engine::mask_picture`] when every stage it needs is cached (a new threshold for a mask
    /// found before): `None`, having computed nothing, when something is missing.
    pub fn mask_picture_cached(&self, prepared: &PreparedPicture, edit: &PictureEdit) -> Result<Option<MaskResult>> {
        edit.check()?;
        let pipeline = self.pipeline(edit.params.clone())?.cache_only();
        match self.mask_with(pipeline, prepared, edit, &super::Silent) {
            Ok(m) => Ok(Some(m)),
            Err(Error::NotCached) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn mask_with(
        &self,
        pipeline: DiffEdit<'_>,
        prepared: &PreparedPicture,
        edit: &PictureEdit,
        progress: &dyn Progress,
    ) -> Result<MaskResult> {
        let noise = self.noise(&edit.params, &edit.noise, prepared.width, prepared.height)?;
        pipeline.check_noise(&prepared.tensor, &noise)?;
        progress.start(Stage::Encode, 1);
        let emb = pipeline.encode_prompts_with(&edit.source, &edit.target, edit.negative_prompt.as_deref())?;
        let latents = pipeline.encode_image(&prepared.tensor, &noise.vae_noise)?;
        progress.advance(Stage::Encode, 1);
        progress.finish(Stage::Encode);
        let out = pipeline.mask(&latents, &emb, &noise.mask_noise, progress)?;
        let (_, lw) = (out.mask.dim(2)?, out.mask.dim(3)?);
        let cells = dilation_cells(edit.mask_dilate_px, prepared.original.width(), lw);
        let mask = if cells > 0 { super::pipeline::dilate(&out.mask, cells)? } else { out.mask };
        let (_, _, values) = map_values(&mask)?;
        Ok(MaskResult {
            normalized: out.normalized,
            coverage: viz::coverage(&values),
            mask,
            timestep: out.timestep,
            unet_evaluations: pipeline.unet_evaluations(),
            input_size: prepared.original.dimensions(),
            processing_size: (prepared.width, prepared.height),
        })
    }
}

/// Latent cells for a dilation of `px` pixels of a picture `input_width` wide whose latent grid
/// is `latent_width` cells wide: rounded, at least one cell for any positive dilation.
pub fn dilation_cells(px: f64, input_width: u32, latent_width: usize) -> usize {
    if px <= 0.0 || latent_width == 0 {
        return 0;
    }
    let per_cell = input_width as f64 / latent_width as f64;
    ((px / per_cell).round() as usize).max(1)
}

/// A mask picture on the latent grid (`h` x `w`): each cell is the area average of the picture's
/// grey levels over it (in [0,1]); cells above one half are set.
pub fn mask_from_picture(gray: &GrayImage, h: usize, w: usize) -> Result<Tensor> {
    let (gw, gh) = (gray.width() as usize, gray.height() as usize);
    if gw == 0 || gh == 0 {
        return Err(Error::invalid("the mask picture is empty"));
    }
    let values: Vec<f32> = gray.as_raw().iter().map(|&v| v as f32 / 255.0).collect();
    // Separable area averaging: columns to w cells, then rows to h cells.
    let columns = area_average_rows(&values, gh, gw, w);
    let transposed = transpose(&columns, gh, w);
    let cells = transpose(&area_average_rows(&transposed, w, gh, h), w, h);
    let map = Tensor::from_vec(cells, (1, 1, h, w), &Device::Cpu)?;
    Ok(threshold_mask(&map, 0.5)?.to_dtype(DType::F32)?)
}

/// Each of `rows` rows of `n` values averaged down (or up) to `m` values, each output value
/// the mean of the input over its share of the row (fractional overlaps weighted).
fn area_average_rows(values: &[f32], rows: usize, n: usize, m: usize) -> Vec<f32> {
    let scale = n as f64 / m as f64;
    let mut out = vec![0f32; rows * m];
    for r in 0..rows {
        let row = &values[r * n..(r + 1) * n];
        for j in 0..m {
            let (a, b) = (j as f64 * scale, (j + 1) as f64 * scale);
            let (mut sum, mut weight) = (0f64, 0f64);
            let mut i = a.floor() as usize;
            while (i as f64) < b && i < n {
                let overlap = (b.min(i as f64 + 1.0) - a.max(i as f64)).max(0.0);
                sum += overlap * row[i] as f64;
                weight += overlap;
                i += 1;
            }
            out[r * m + j] = if weight > 0.0 { (sum / weight) as f32 } else { 0.0 };
        }
    }
    out
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_pictures_are_area_averaged_to_the_latent_grid() {
        // 8x8 picture, left 3 columns white: on a 2x2 grid the left cells average 0.75 (set), the
        // right ones 0 (clear).
        let gray = GrayImage::from_fn(8, 8, |x, _| image::Luma([if x < 3 { 255 } else { 0 }]));
        let m: Vec<f32> = mask_from_picture(&gray, 2, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(m, vec![1.0, 0.0, 1.0, 0.0]);
        // Left 2 columns: exactly half, not above it.
        let gray = GrayImage::from_fn(8, 8, |x, _| image::Luma([if x < 2 { 255 } else { 0 }]));
        let m: Vec<f32> = mask_from_picture(&gray, 2, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(m, vec![0.0, 0.0, 0.0, 0.0]);
        // Mid grey above half counts; a 3x3 picture onto 2x2 weighs fractional overlaps.
        let gray = GrayImage::from_pixel(3, 3, image::Luma([140]));
        let m: Vec<f32> = mask_from_picture(&gray, 2, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(m, vec![1.0; 4]);
    }

    #[test]
    fn dilation_is_counted_in_input_pixels() {
        // A 512-px-wide input on a 64-cell grid: 8 px per cell.
        assert_eq!(dilation_cells(0.0, 512, 64), 0);
        assert_eq!(dilation_cells(3.0, 512, 64), 1);
        assert_eq!(dilation_cells(16.0, 512, 64), 2);
        assert_eq!(dilation_cells(20.0, 512, 64), 3);
    }
}
