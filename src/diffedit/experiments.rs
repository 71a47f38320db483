//! The tutorial's experiments around the edit: text-to-image, the inversion check, threshold
//! sweeps, the encode-ratio ablation, naive img2img and the blurred (soft) mask. Each reuses the
//! work it can: a sweep thresholds one normalised difference, an ablation decodes every ratio
//! from one mask and one inversion.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::decode::{ddim_decode, decode_timesteps};
use super::mask::{threshold_mask, MaskOutput};
use super::params::python_int_of_product;
use super::pipeline::{DiffEdit, Noise, PromptEmbeddings};
use super::{check_cancelled, guided_prediction, Alignment, Denoiser, Progress, Stage};
use crate::error::{Error, Result};
use crate::image_io::tensor_to_image;
use crate::scheduler::{add_noise, ddim_step};

/// Random draws beyond the edit's own ([`Noise::seeded`]): each experiment has its own stream,
/// so adding one never changes another's numbers for the same seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The start latent of text-to-image.
    Generation = 1,
    /// The noise img2img adds to the source latent.
    Img2img = 2,
}

/// Standard normal draws of shape [1,C,h,w] (f32, CPU) from the stream's seeded generator.
pub fn standard_normal(seed: u64, stream: Stream, latent: (usize, usize, usize)) -> Result<Tensor> {
    let (c, h, w) = latent;
    // The golden-ratio multiplier spreads stream ids over the seed's bits.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (stream as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let v: Vec<f32> = (0..c * h * w).map(|_| StandardNormal.sample(&mut rng)).collect();
    Ok(Tensor::from_vec(v, (1, c, h, w), &Device::Cpu)?)
}

/// Seconds and UNet evaluations of one stage of a command.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageRecord {
    pub stage: String,
    pub seconds: f64,
    pub unet_evaluations: usize,
}

/// What each stage of a command cost, in order.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Ledger {
    pub stages: Vec<StageRecord>,
}

impl Ledger {
    /// Runs `f` as stage `stage`, recording its time and the UNet evaluations `pipeline` made.
    pub fn run<T>(&mut self, pipeline: &DiffEdit, stage: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let before = pipeline.unet_evaluations();
        let clock = Instant::now();
        let out = f()?;
        self.stages.push(StageRecord {
            stage: stage.to_string(),
            seconds: clock.elapsed().as_secs_f64(),
            unet_evaluations: pipeline.unet_evaluations() - before,
        });
        Ok(out)
    }

    /// UNet evaluations of every record of `stage`.
    pub fn evaluations(&self, stage: &str) -> usize {
        self.stages.iter().filter(|r| r.stage == stage).map(|r| r.unet_evaluations).sum()
    }

    /// Stage name -> UNet evaluations, summed over repeated stages, in first-seen order.
    pub fn evaluations_by_stage(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        for r in &self.stages {
            if !m.contains_key(&r.stage) {
                m.insert(r.stage.clone(), self.evaluations(&r.stage).into());
            }
        }
        m
    }

    /// Stage name -> seconds, summed over repeated stages.
    pub fn seconds_by_stage(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        for r in &self.stages {
            let s: f64 = self.stages.iter().filter(|x| x.stage == r.stage).map(|x| x.seconds).sum();
            m.insert(r.stage.clone(), s.into());
        }
        m
    }
}

/// The embedding of one prompt and of the empty prompt, for commands with a single prompt.
pub struct SinglePrompt {
    pub cond: Tensor,
    pub uncond: Tensor,
    /// The prompt was cut to the tokenizer's limit.
    pub truncated: bool,
}

/// Encodes `prompt` (which must not be blank; `flag` names it in the error) and "".
pub fn encode_single(pipeline: &DiffEdit, prompt: &str, flag: &str) -> Result<SinglePrompt> {
    if prompt.trim().is_empty() {
        return Err(Error::invalid(format!("{flag} prompt is empty")));
    }
    let (cond, tokens) = pipeline.model.encode_prompt(prompt)?;
    let (uncond, _) = pipeline.model.encode_prompt("")?;
    Ok(SinglePrompt { cond, uncond, truncated: tokens.truncated })
}

/// Text-to-image: guided DDIM over the whole schedule from `noise` [1,C,h,w] (DDIM's initial
/// noise sigma is 1). Returns every latent, `[noise, x1, ..., x_steps]`.
pub fn generate(
    pipeline: &DiffEdit,
    prompt: &SinglePrompt,
    noise: &Tensor,
    progress: &dyn Progress,
) -> Result<Vec<Tensor>> {
    let m = pipeline.model;
    let start = noise.to_device(&m.device)?.to_dtype(m.dtype)?;
    let steps = pipeline.params.steps;
    Ok(ddim_decode(
        pipeline.denoiser(),
        &m.schedule,
        pipeline.timesteps(),
        steps,
        &start,
        steps,
        &prompt.cond,
        &prompt.uncond,
        pipeline.params.guidance,
        None,
        progress,
    )?)
}

/// Plain DDIM decoding of the last `s` timesteps from `start`, without a mask: with
/// `guidance <= 1` one conditional evaluation per step (the tutorial's `ddim_decode_simple`),
/// otherwise classifier-free guidance. Returns `[start, x1, ..., xS]`.
#[allow(clippy::too_many_arguments)]
pub fn plain_decode(
    pipeline: &DiffEdit,
    start: &Tensor,
    s: usize,
    emb_cond: &Tensor,
    emb_uncond: &Tensor,
    guidance: f64,
    progress: &dyn Progress,
) -> Result<Vec<Tensor>> {
    let schedule = &pipeline.model.schedule;
    let den = pipeline.denoiser();
    let ratio = schedule.step_ratio(pipeline.params.steps);
    let ts = decode_timesteps(pipeline.timesteps(), s.min(pipeline.timesteps().len()));
    progress.start(Stage::Decoding, ts.len());
    let mut history = vec![start.clone()];
    let mut x = start.clone();
    for &t in ts {
        check_cancelled(progress)?;
        let out = if guidance > 1.0 {
            guided_prediction(den, &x, t, emb_uncond, emb_cond, guidance)?
        } else {
            den.predict(&x, t, emb_cond)?
        };
        x = ddim_step(schedule, &out, t, t - ratio, &x)?;
        history.push(x.clone());
        progress.advance(Stage::Decoding, 1);
    }
    progress.finish(Stage::Decoding);
    Ok(history)
}

/// The inversion check: decode the last inverted latent over the whole schedule on the same
/// prompt at guidance 1; a faithful inversion gives the source back.
pub fn reconstruct(
    pipeline: &DiffEdit,
    inverted: &[Tensor],
    prompt: &SinglePrompt,
    progress: &dyn Progress,
) -> Result<Tensor> {
    let last = inverted.last().ok_or_else(|| Error::invalid("the inversion produced no latent"))?;
    let history = plain_decode(pipeline, last, pipeline.params.steps, &prompt.cond, &prompt.uncond, 1.0, progress)?;
    Ok(history.last().cloned().unwrap_or_else(|| last.clone()))
}

/// Peak signal-to-noise ratio in dB between two 8-bit pictures of the same size (infinite when
/// they are identical).
pub fn psnr(a: &RgbImage, b: &RgbImage) -> Result<f64> {
    if a.dimensions() != b.dimensions() {
        return Err(Error::invalid(format!(
            "PSNR of pictures of different sizes: {:?} and {:?}",
            a.dimensions(),
            b.dimensions()
        )));
    }
    let n = a.as_raw().len() as f64;
    let se: f64 = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let mse = se / n;
    Ok(if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() })
}

/// `n` indices evenly spaced over `0..len`, first and last included, truncated to integers as
/// `np.linspace(0, len-1, n, dtype=int)` does.
pub fn evenly_spaced(len: usize, n: usize) -> Vec<usize> {
    if len == 0 || n == 0 {
        return Vec::new();
    }
    if n == 1 {
        return vec![0];
    }
    let step = (len - 1) as f64 / (n - 1) as f64;
    (0..n).map(|i| ((i as f64 * step) as usize).min(len - 1)).collect()
}

/// Decoding steps whose latent the tutorial shows: every `every`-th (1-based) and the last.
pub fn saved_steps(s: usize, every: usize) -> Vec<usize> {
    (1..=s).filter(|k| (every > 0 && k % every == 0) || *k == s).collect()
}

/// One binary mask of a threshold sweep.
pub struct ThresholdMask {
    pub threshold: f64,
    /// [1,1,h,w], 1 where normalised difference > threshold.
    pub mask: Tensor,
    /// Mean of `mask`.
    pub coverage: f64,
}

/// Thresholds one normalised difference at each of `thresholds` (no UNet evaluation).
pub fn threshold_sweep(normalized: &Tensor, thresholds: &[f64]) -> Result<Vec<ThresholdMask>> {
    thresholds
        .iter()
        .map(|&threshold| {
            if !(0.0..=1.0).contains(&threshold) {
                return Err(Error::invalid(format!("thresholds must be in [0, 1], got {threshold}")));
            }
            let mask = threshold_mask(normalized, threshold)?;
            let coverage = mask.to_dtype(DType::F64)?.mean_all()?.to_scalar::<f64>()?;
            Ok(ThresholdMask { threshold, mask, coverage })
        })
        .collect()
}

/// Gaussian smoothing of an `h` x `w` map with standard deviation `sigma` cells, as scipy's
/// `gaussian_filter` (mode "reflect": the edge cell repeated, kernel cut at 4 sigma). The
/// separable kernel runs along rows, then columns.
pub fn gaussian_blur(values: &[f32], h: usize, w: usize, sigma: f64) -> Vec<f32> {
    if sigma <= 0.0 || h == 0 || w == 0 {
        return values.to_vec();
    }
    let radius = (4.0 * sigma + 0.5) as i64;
    let mut kernel: Vec<f64> = (-radius..=radius).map(|x| (-0.5 * (x as f64 / sigma).powi(2)).exp()).collect();
    let sum: f64 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    // Half-sample symmetric reflection: ... b a | a b c ... c b a | a b ...
    let reflect = |i: i64, n: usize| -> usize {
        let n = n as i64;
        let period = 2 * n;
        let m = i.rem_euclid(period);
        (if m < n { m } else { period - 1 - m }) as usize
    };
    let mut rows = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let acc: f64 = kernel
                .iter()
                .enumerate()
                .map(|(k, &kv)| kv * values[y * w + reflect(x as i64 + k as i64 - radius, w)] as f64)
                .sum();
            rows[y * w + x] = acc as f32;
        }
    }
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let acc: f64 = kernel
                .iter()
                .enumerate()
                .map(|(k, &kv)| kv * rows[reflect(y as i64 + k as i64 - radius, h) * w + x] as f64)
                .sum();
            out[y * w + x] = acc as f32;
        }
    }
    out
}

/// A blur's sigma must be a finite number >= 0 (0 leaves the mask as it is).
pub fn check_sigma(sigma: f64) -> Result<()> {
    if !(sigma.is_finite() && sigma >= 0.0) {
        return Err(Error::invalid(format!("--mask-blur must be a finite number >= 0, got {sigma}")));
    }
    Ok(())
}

/// The soft mask: `mask` [1,1,h,w] blurred with [`gaussian_blur`], same dtype and device.
pub fn blur_mask(mask: &Tensor, sigma: f64) -> Result<Tensor> {
    check_sigma(sigma)?;
    let (h, w) = (mask.dim(mask.rank() - 2)?, mask.dim(mask.rank() - 1)?);
    let values = mask.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let blurred = gaussian_blur(&values, h, w, sigma);
    Ok(Tensor::from_vec(blurred, mask.shape(), &Device::Cpu)?.to_dtype(mask.dtype())?.to_device(mask.device())?)
}

/// The edit's first half: prompts and picture encoded, mask computed.
pub struct Prepared {
    pub embeddings: PromptEmbeddings,
    /// The scaled source latent, [1,C,h,w].
    pub latents: Tensor,
    pub mask: MaskOutput,
}

/// Encodes the prompts and `image` [1,3,H,W] and computes the mask, recording the stages
/// "encode" and "mask" in `ledger`.
pub fn prepare(
    pipeline: &DiffEdit,
    image: &Tensor,
    source: &str,
    target: &str,
    noise: &Noise,
    ledger: &mut Ledger,
    progress: &dyn Progress,
) -> Result<Prepared> {
    pipeline.check_noise(image, noise)?;
    let (embeddings, latents) = ledger.run(pipeline, "encode", || {
        let embeddings = pipeline.encode_prompts(source, target)?;
        let latents = pipeline.encode_image(image, &noise.vae_noise)?;
        Ok((embeddings, latents))
    })?;
    let mask = ledger.run(pipeline, "mask", || pipeline.mask(&latents, &embeddings, &noise.mask_noise, progress))?;
    Ok(Prepared { embeddings, latents, mask })
}

/// Inversion steps decoding `s` steps needs under `alignment`.
pub fn inversion_steps_for(alignment: Alignment, s: usize) -> usize {
    match alignment {
        Alignment::Notebook => s,
        Alignment::Exact => s.saturating_sub(1),
    }
}

/// S = int(ratio * steps), checked as `--encode-ratio` is.
pub fn ratio_steps(ratio: f64, steps: usize) -> Result<usize> {
    if !(ratio > 0.0 && ratio <= 1.0) {
        return Err(Error::invalid(format!("--ratios must be in (0, 1], got {ratio}")));
    }
    let s = python_int_of_product(ratio, steps).clamp(0, steps as i64) as usize;
    if s < 1 {
        return Err(Error::invalid(format!(
            "ratio {ratio} with --steps {steps} gives int(ratio*steps) = 0 decoding steps; raise one of them"
        )));
    }
    Ok(s)
}

/// One decoding of an ablation.
pub struct AblationRun {
    pub ratio: f64,
    /// Decoding steps, int(ratio * steps).
    pub decode_steps: usize,
    /// The final latent.
    pub latents: Tensor,
}

/// The encode-ratio ablation: one inversion deep enough for the largest ratio, then one masked
/// decoding per ratio, all from `prepared`'s mask. Stages "inversion" and "decoding".
pub fn ablate(
    pipeline: &DiffEdit,
    prepared: &Prepared,
    ratios: &[f64],
    ledger: &mut Ledger,
    progress: &dyn Progress,
) -> Result<(Vec<Tensor>, Vec<AblationRun>)> {
    if ratios.is_empty() {
        return Err(Error::invalid("--ratios needs at least one ratio"));
    }
    let steps = pipeline.params.steps;
    let decode_steps: Vec<usize> = ratios.iter().map(|&r| ratio_steps(r, steps)).collect::<Result<_>>()?;
    let deepest = decode_steps.iter().copied().max().unwrap_or(1);
    let k = inversion_steps_for(pipeline.params.alignment, deepest);
    let inverted =
        ledger.run(pipeline, "inversion", || pipeline.invert(&prepared.latents, &prepared.embeddings, k, progress))?;
    let mut runs = Vec::with_capacity(ratios.len());
    for (&ratio, &s) in ratios.iter().zip(&decode_steps) {
        let history = ledger.run(pipeline, "decoding", || {
            pipeline.decode(&inverted, Some(&prepared.mask.mask), s, &prepared.embeddings, progress)
        })?;
        let latents = history.last().cloned().ok_or_else(|| Error::invalid("decoding produced no latent"))?;
        runs.push(AblationRun { ratio, decode_steps: s, latents });
    }
    Ok((inverted, runs))
}

/// img2img's start: the source latent noised to the level of the first decoding step,
/// `timesteps[-S]`, as the tutorial's `naive_img2img`.
pub fn img2img_start(pipeline: &DiffEdit, latents: &Tensor, noise: &Tensor, s: usize) -> Result<Tensor> {
    let t = decode_timesteps(pipeline.timesteps(), s)[0];
    let noise = noise.to_device(latents.device())?.to_dtype(latents.dtype())?;
    Ok(add_noise(&pipeline.model.schedule, latents, &noise, t)?)
}

/// Naive img2img: the noised source decoded `s` steps on the target prompt with the edit's
/// guidance and no mask, so everything may change. Returns `[start, x1, ..., xS]`.
pub fn img2img(
    pipeline: &DiffEdit,
    latents: &Tensor,
    embeddings: &PromptEmbeddings,
    noise: &Tensor,
    s: usize,
    progress: &dyn Progress,
) -> Result<Vec<Tensor>> {
    let start = img2img_start(pipeline, latents, noise, s)?;
    let m = pipeline.model;
    Ok(ddim_decode(
        pipeline.denoiser(),
        &m.schedule,
        pipeline.timesteps(),
        pipeline.params.steps,
        &start,
        s,
        &embeddings.target,
        &embeddings.uncond,
        pipeline.params.guidance,
        None,
        progress,
    )?)
}

/// DiffEdit beside its variants, all from one mask and one inversion.
pub struct Comparison {
    /// The inversion's latents.
    pub inverted: Vec<Tensor>,
    /// DiffEdit's final latent with the hard mask.
    pub diffedit: Tensor,
    /// Naive img2img's final latent, when asked.
    pub img2img: Option<Tensor>,
    /// The soft mask and DiffEdit's final latent with it, when a blur was asked.
    pub soft: Option<(Tensor, Tensor)>,
}

/// Inverts once and decodes DiffEdit with the hard mask, then (if `img2img_noise` is given) naive
/// img2img from the same noise level, and (if `blur` is given) DiffEdit with the blurred mask.
/// Stages "inversion", "decoding", "img2img", "decoding_soft".
pub fn compare(
    pipeline: &DiffEdit,
    prepared: &Prepared,
    img2img_noise: Option<&Tensor>,
    blur: Option<f64>,
    ledger: &mut Ledger,
    progress: &dyn Progress,
) -> Result<Comparison> {
    let soft_mask = blur.map(|sigma| blur_mask(&prepared.mask.mask, sigma)).transpose()?;
    let k = pipeline.params.inversion_steps();
    let s = pipeline.params.start_step();
    let emb = &prepared.embeddings;
    let inverted = ledger.run(pipeline, "inversion", || pipeline.invert(&prepared.latents, emb, k, progress))?;
    let last = |h: Vec<Tensor>| h.last().cloned().ok_or_else(|| Error::invalid("decoding produced no latent"));
    let diffedit = last(
        ledger.run(pipeline, "decoding", || pipeline.decode(&inverted, Some(&prepared.mask.mask), s, emb, progress))?,
    )?;
    let img2img = match img2img_noise {
        Some(noise) => Some(last(
            ledger.run(pipeline, "img2img", || img2img(pipeline, &prepared.latents, emb, noise, s, progress))?,
        )?),
        None => None,
    };
    let soft = match soft_mask {
        Some(m) => {
            let z = last(
                ledger.run(pipeline, "decoding_soft", || pipeline.decode(&inverted, Some(&m), s, emb, progress))?,
            )?;
            Some((m, z))
        }
        None => None,
    };
    Ok(Comparison { inverted, diffedit, img2img, soft })
}

/// The VAE decoding of scaled latents as an 8-bit picture.
pub fn latents_to_image(pipeline: &DiffEdit, latents: &Tensor) -> Result<RgbImage> {
    tensor_to_image(&pipeline.decode_latents(latents)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_matches_numpy_linspace_int() {
        // np.linspace(0, 50, 5, dtype=int) -> [0, 12, 25, 37, 50]
        assert_eq!(evenly_spaced(51, 5), vec![0, 12, 25, 37, 50]);
        assert_eq!(evenly_spaced(4, 5), vec![0, 0, 1, 2, 3]);
        assert_eq!(evenly_spaced(7, 1), vec![0]);
        assert!(evenly_spaced(0, 5).is_empty());
    }

    #[test]
    fn saved_steps_every_ten_and_the_last() {
        assert_eq!(saved_steps(40, 10), vec![10, 20, 30, 40]);
        assert_eq!(saved_steps(28, 10), vec![10, 20, 28]);
        assert_eq!(saved_steps(3, 10), vec![3]);
    }

    #[test]
    fn psnr_of_known_error() {
        let a = RgbImage::from_pixel(4, 4, image::Rgb([100, 100, 100]));
        let b = RgbImage::from_pixel(4, 4, image::Rgb([110, 100, 100]));
        // MSE = 100/3
        let expected = 10.0 * (255.0f64 * 255.0 / (100.0 / 3.0)).log10();
        assert!((psnr(&a, &b).unwrap() - expected).abs() < 1e-12);
        assert_eq!(psnr(&a, &a).unwrap(), f64::INFINITY);
        assert!(psnr(&a, &RgbImage::new(2, 2)).is_err());
    }

    #[test]
    fn gaussian_blur_keeps_constants_and_spreads_an_impulse_symmetrically() {
        let ones = vec![1.0f32; 6 * 5];
        assert!(gaussian_blur(&ones, 6, 5, 1.5).iter().all(|&v| (v - 1.0).abs() < 1e-6));
        let (h, w) = (21, 21);
        let mut impulse = vec![0.0f32; h * w];
        impulse[10 * w + 10] = 1.0;
        let b = gaussian_blur(&impulse, h, w, 2.0);
        let total: f32 = b.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert!((b[10 * w + 12] - b[10 * w + 8]).abs() < 1e-7);
        assert!((b[12 * w + 10] - b[10 * w + 12]).abs() < 1e-7);
        // Centre weight of a sampled 2-D Gaussian of sigma 2 cut at radius 8.
        let k: Vec<f64> = (-8..=8).map(|x: i32| (-0.5 * (x as f64 / 2.0).powi(2)).exp()).collect();
        let s: f64 = k.iter().sum();
        assert!((b[10 * w + 10] as f64 - (1.0 / s).powi(2)).abs() < 1e-6);
        assert_eq!(gaussian_blur(&impulse, h, w, 0.0), impulse);
    }

    #[test]
    fn gaussian_blur_reflects_at_the_edges() {
        // scipy.ndimage.gaussian_filter1d([1, 0, 0, 0, 0], 1.0, mode="reflect")[0]: the edge
        // cell counts for itself and its mirror image.
        let v = gaussian_blur(&[1.0, 0.0, 0.0, 0.0, 0.0], 1, 5, 1.0);
        let k: Vec<f64> = (-4..=4).map(|x: i32| (-0.5 * (x as f64).powi(2)).exp()).collect();
        let s: f64 = k.iter().sum();
        let expected0 = (k[4] + k[3]) / s; // weights at offsets 0 and -1 (mirror of index 0)
        assert!((v[0] as f64 - expected0).abs() < 1e-6, "{} vs {expected0}", v[0]);
    }

    #[test]
    fn ratio_steps_are_checked() {
        assert_eq!(ratio_steps(0.8, 10).unwrap(), 8);
        assert_eq!(ratio_steps(0.58, 50).unwrap(), 28);
        assert_eq!(ratio_steps(1.5, 10).unwrap_err().to_string(), "--ratios must be in (0, 1], got 1.5");
        assert!(ratio_steps(0.05, 10).unwrap_err().to_string().contains("0 decoding steps"));
        assert_eq!(inversion_steps_for(Alignment::Exact, 8), 7);
        assert_eq!(inversion_steps_for(Alignment::Notebook, 8), 8);
    }
}
