//! The whole edit on a loaded model: encode, mask, invert, decode, with every intermediate kept
//! for tracing and every random draw either seeded or supplied.
//!
//! A [`DiffEdit`] may carry a [`StageCache`]: each stage then looks up its result under a key
//! made from the contents of its inputs before computing it (see [`super::cache`]), so a second
//! target on the same picture, a new threshold or a new guidance costs only the stages they
//! change. Without a cache every stage computes; with one the results are the same bytes.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::cache::{tensor_key, Cached, Key, KeyBuilder, StageCache};
use super::decode::{blend_index, ddim_decode, start_index, Blend};
use super::invert::{invert_steps, InversionSpec};
use super::mask::{mask_difference, mask_predictions, mask_timestep, normalize_and_threshold, MaskOutput};
use super::{Counted, EditParams, Progress, Stage, CANCELLED};
use crate::error::{Error, Result};
use crate::models::loading::StableDiffusion;

/// Text embeddings, each [1,77,D], computed once per edit.
#[derive(Clone)]
pub struct PromptEmbeddings {
    pub target: Tensor,
    pub reference: Tensor,
    /// The unconditional side of classifier-free guidance: the empty prompt, or the negative
    /// prompt when one is given.
    pub uncond: Tensor,
    /// Prompts that were cut to the tokenizer's limit (for a warning).
    pub truncated: Vec<String>,
}

/// The random draws of an edit.
#[derive(Clone)]
pub struct Noise {
    /// [1,C,h,w]: the VAE posterior sample is mean + std * vae_noise.
    pub vae_noise: Tensor,
    /// [N,1,C,h,w]: sample k of the mask is noised with mask_noise[k].
    pub mask_noise: Tensor,
}

impl Noise {
    /// Standard normal draws from a seeded generator (ChaCha, platform independent): first the
    /// VAE noise, then the mask noise, row-major.
    pub fn seeded(seed: u64, latent: (usize, usize, usize), samples: usize) -> Result<Self> {
        let (c, h, w) = latent;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| StandardNormal.sample(&mut rng)).collect() };
        let vae_noise = Tensor::from_vec(draw(c * h * w), (1, c, h, w), &Device::Cpu)?;
        let mask_noise = Tensor::from_vec(draw(samples * c * h * w), (samples, 1, c, h, w), &Device::Cpu)?;
        Ok(Self { vae_noise, mask_noise })
    }

    /// Reads `vae_noise` and `mask_noise` from a safetensors file and checks their shapes.
    pub fn from_file(path: &std::path::Path, latent: (usize, usize, usize), samples: usize) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::Weights { path: path.into(), msg: format!("cannot read noise file: {e}") })?;
        let (c, h, w) = latent;
        let take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = tensors.get(name).ok_or_else(|| Error::Weights {
                path: path.into(),
                msg: format!("missing tensor `{name}` (expected shape {shape:?})"),
            })?;
            if t.dims() != shape {
                return Err(Error::Weights {
                    path: path.into(),
                    msg: format!("tensor `{name}` has shape {:?}, expected {shape:?}", t.dims()),
                });
            }
            Ok(t.to_dtype(DType::F32)?)
        };
        Ok(Self {
            vae_noise: take("vae_noise", &[1, c, h, w])?,
            mask_noise: take("mask_noise", &[samples, 1, c, h, w])?,
        })
    }
}

/// Seconds spent in each stage.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageTimings {
    pub encode_s: f64,
    pub mask_s: f64,
    pub inversion_s: f64,
    pub decoding_s: f64,
    pub vae_decode_s: f64,
}

/// UNet evaluations spent in each stage of one edit (after reuse).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StageEvaluations {
    pub mask: usize,
    pub inversion: usize,
    pub decoding: usize,
}

impl StageEvaluations {
    pub fn total(&self) -> usize {
        self.mask + self.inversion + self.decoding
    }
}

/// Which mask the decoding blends with.
#[derive(Clone, Debug)]
pub enum MaskChoice {
    /// DiffEdit's own: the thresholded difference of the two prompts' noise predictions.
    Automatic,
    /// A mask the user gives, [1,1,h,w] on the latent grid, 1 where the picture may change. No
    /// mask is computed.
    Given(Tensor),
    /// No blending: the whole picture is decoded from the inverted latent (img2img from the
    /// inversion). No mask is computed.
    Unmasked,
}

/// One edit: the picture, the prompts, the draws and the mask to decode with.
#[derive(Clone)]
pub struct EditRequest<'a> {
    /// [1,3,H,W] in [-1,1], at the processing size.
    pub image: &'a Tensor,
    pub source: &'a str,
    pub target: &'a str,
    pub noise: &'a Noise,
    pub mask: MaskChoice,
    /// Grows the mask (automatic or given) by this many latent cells (a disc), before any blur.
    pub mask_dilate_cells: usize,
    /// Blurs the (grown) mask by a Gaussian of this sigma (latent cells): a soft mask.
    pub mask_blur: Option<f64>,
    /// Replaces the empty prompt on the unconditional side of the guidance.
    pub negative_prompt: Option<&'a str>,
}

impl<'a> EditRequest<'a> {
    /// DiffEdit's own mask, no negative prompt.
    pub fn new(image: &'a Tensor, source: &'a str, target: &'a str, noise: &'a Noise) -> Self {
        Self {
            image,
            source,
            target,
            noise,
            mask: MaskChoice::Automatic,
            mask_dilate_cells: 0,
            mask_blur: None,
            negative_prompt: None,
        }
    }
}

/// Everything an edit computed.
pub struct EditOutput {
    pub embeddings: PromptEmbeddings,
    /// The scaled source latent, [1,C,h,w].
    pub latents: Tensor,
    /// The mask: the automatic one (before dilation and blur), or the given one.
    pub mask: MaskOutput,
    /// The binary mask of the region that may change: `mask.mask` grown by the dilation
    /// ([1,1,h,w]; all ones when unmasked).
    pub region: Tensor,
    /// The mask the decoding blended with: `region`, blurred when a blur was asked.
    pub decode_mask: Tensor,
    /// `[z0, ..., zK]`, the inversion's latents.
    pub inverted: Vec<Tensor>,
    /// `[start, x1, ..., xS]`, decoding's latents after blending.
    pub decoded_latents: Vec<Tensor>,
    /// The VAE decoder's output before clamping, [1,3,H,W].
    pub decoded: Tensor,
    pub timings: StageTimings,
    /// UNet evaluations this edit spent (after reuse).
    pub unet_evaluations: usize,
    pub evaluations: StageEvaluations,
}

/// DiffEdit on one model with one set of parameters.
pub struct DiffEdit<'m> {
    pub model: &'m StableDiffusion,
    pub params: EditParams,
    unet: Counted<'m, StableDiffusion>,
    timesteps: Vec<i64>,
    cache: Option<&'m StageCache>,
    /// False: a stage whose result is not cached fails with [`Error::NotCached`] instead of
    /// computing (for answering at once what needs no work).
    compute: bool,
}

/// A candle error raised because `progress` asked to stop becomes [`Error::Cancelled`].
fn lift(e: candle_core::Error, progress: &dyn Progress) -> Error {
    if progress.cancelled() && e.to_string().contains(CANCELLED) {
        Error::Cancelled
    } else {
        e.into()
    }
}

impl<'m> DiffEdit<'m> {
    /// A pipeline that computes every stage.
    pub fn new(model: &'m StableDiffusion, params: EditParams) -> Result<Self> {
        params.validate()?;
        let timesteps = model.schedule.timesteps(params.steps)?;
        Ok(Self { model, params, unet: Counted::new(model), timesteps, cache: None, compute: true })
    }

    /// A pipeline that reuses (and records) stage results in `cache`. The cache must only ever
    /// serve this one model.
    pub fn with_cache(model: &'m StableDiffusion, params: EditParams, cache: &'m StageCache) -> Result<Self> {
        Ok(Self { cache: Some(cache), ..Self::new(model, params)? })
    }

    /// This pipeline answering only from its cache: any stage not cached fails with
    /// [`Error::NotCached`], and nothing is computed.
    pub fn cache_only(self) -> Self {
        Self { compute: false, ..self }
    }

    fn may_compute(&self) -> Result<()> {
        if self.compute {
            Ok(())
        } else {
            Err(Error::NotCached)
        }
    }

    /// UNet rows evaluated through this pipeline so far.
    pub fn unet_evaluations(&self) -> usize {
        self.unet.evaluations()
    }

    /// The counted UNet, for samplers outside the edit (`experiments`).
    pub fn denoiser(&self) -> &Counted<'m, StableDiffusion> {
        &self.unet
    }

    /// The schedule's timesteps for `params.steps`, descending.
    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    /// Latent shape (C, h, w) for a picture of `width` x `height` pixels.
    pub fn latent_shape(&self, width: usize, height: usize) -> (usize, usize, usize) {
        let f = self.model.vae_factor();
        (self.model.unet.config.in_channels, height / f, width / f)
    }

    fn lookup(&self, key: &Key) -> Option<Cached> {
        self.cache.and_then(|c| c.get(key))
    }

    fn store(&self, key: Key, value: Cached) {
        if let Some(c) = self.cache {
            c.put(key, value);
        }
    }

    /// The key under which a result is cached, or `None` (no hashing) without a cache.
    fn key(&self, build: impl FnOnce() -> Result<Key>) -> Result<Option<Key>> {
        self.cache.map(|_| build()).transpose()
    }

    /// One prompt's embedding [1,77,D] and whether it was truncated.
    pub fn encode_prompt(&self, prompt: &str) -> Result<(Tensor, bool)> {
        let key = self.key(|| Ok(KeyBuilder::new("prompt").str(prompt).finish()))?;
        if let Some(Cached::Embedding { embedding, truncated }) = key.as_ref().and_then(|k| self.lookup(k)) {
            return Ok((embedding, truncated));
        }
        self.may_compute()?;
        let (embedding, tokens) = self.model.encode_prompt(prompt)?;
        if let Some(k) = key {
            self.store(k, Cached::Embedding { embedding: embedding.clone(), truncated: tokens.truncated });
        }
        Ok((embedding, tokens.truncated))
    }

    /// Encodes the target, the source (reference) and the empty prompt once.
    pub fn encode_prompts(&self, source: &str, target: &str) -> Result<PromptEmbeddings> {
        self.encode_prompts_with(source, target, None)
    }

    /// Encodes the target, the source and the unconditional prompt: `negative` when given, else
    /// the empty prompt.
    pub fn encode_prompts_with(&self, source: &str, target: &str, negative: Option<&str>) -> Result<PromptEmbeddings> {
        if source.trim().is_empty() {
            return Err(Error::invalid("--source prompt is empty: describe the picture as it is"));
        }
        if target.trim().is_empty() {
            return Err(Error::invalid("--target prompt is empty: describe the picture as it should become"));
        }
        let mut truncated = Vec::new();
        let mut enc = |p: &str| -> Result<Tensor> {
            let (emb, cut) = self.encode_prompt(p)?;
            if cut {
                truncated.push(p.to_string());
            }
            Ok(emb)
        };
        let target_emb = enc(target)?;
        let reference = enc(source)?;
        let uncond = enc(negative.unwrap_or(""))?;
        Ok(PromptEmbeddings { target: target_emb, reference, uncond, truncated })
    }

    /// `(mean + std * vae_noise) * scaling_factor` for `image` [1,3,H,W] in [-1,1].
    pub fn encode_image(&self, image: &Tensor, vae_noise: &Tensor) -> Result<Tensor> {
        let key =
            self.key(|| Ok(KeyBuilder::new("latents").key(&tensor_key(image)?).key(&tensor_key(vae_noise)?).finish()))?;
        if let Some(Cached::Tensor(t)) = key.as_ref().and_then(|k| self.lookup(k)) {
            return Ok(t);
        }
        self.may_compute()?;
        let m = self.model;
        let pixels = image.to_device(&m.device)?.to_dtype(m.vae_dtype)?;
        let dist = m.vae.encode(&pixels)?;
        let noise = vae_noise.to_device(&m.device)?.to_dtype(m.vae_dtype)?;
        let sample = (&dist.mean + (&dist.std * noise)?)?;
        let latents = (sample * m.vae.config.scaling_factor)?.to_dtype(m.dtype)?;
        if let Some(k) = key {
            self.store(k, Cached::Tensor(latents.clone()));
        }
        Ok(latents)
    }

    /// Step 1: the mask for `latents` under the two prompts. Each prompt's N noise predictions are
    /// cached on their own, so a second target on the same picture costs N evaluations, and a new
    /// threshold none.
    pub fn mask(
        &self,
        latents: &Tensor,
        emb: &PromptEmbeddings,
        mask_noise: &Tensor,
        progress: &dyn Progress,
    ) -> Result<MaskOutput> {
        let t = mask_timestep(&self.timesteps, self.params.mask_timestep_index());
        let noise = mask_noise.to_device(&self.model.device)?.to_dtype(self.model.dtype)?;
        let n = noise.dim(0)?;
        let batch = self.params.mask_batch_size;
        let shared = self.key(|| {
            Ok(KeyBuilder::new("mask-side")
                .key(&tensor_key(latents)?)
                .key(&tensor_key(&noise)?)
                .u64(t as u64)
                .u64(batch as u64)
                .finish())
        })?;
        let side_key = |emb: &Tensor| -> Result<Option<Key>> {
            match &shared {
                Some(k) => Ok(Some(KeyBuilder::new("mask-side").key(k).key(&tensor_key(emb)?).finish())),
                None => Ok(None),
            }
        };
        let (target_key, reference_key) = (side_key(&emb.target)?, side_key(&emb.reference)?);
        let found = |k: &Option<Key>| match k.as_ref().and_then(|k| self.lookup(k)) {
            Some(Cached::Tensor(t)) => Some(t),
            _ => None,
        };
        let (target_found, reference_found) = (found(&target_key), found(&reference_key));
        let missing = target_found.is_none() as usize + reference_found.is_none() as usize;
        progress.start(Stage::Mask, missing * n);
        let side = |found: Option<Tensor>, key: Option<Key>, emb: &Tensor| -> Result<Tensor> {
            if let Some(t) = found {
                return Ok(t);
            }
            self.may_compute()?;
            let p = mask_predictions(&self.unet, &self.model.schedule, latents, emb, &noise, t, batch, progress)
                .map_err(|e| lift(e, progress))?;
            if let Some(k) = key {
                self.store(k, Cached::Tensor(p.clone()));
            }
            Ok(p)
        };
        let target = side(target_found, target_key, &emb.target)?;
        let reference = side(reference_found, reference_key, &emb.reference)?;
        progress.finish(Stage::Mask);
        let diff = mask_difference(&target, &reference)?;
        let (normalized, mask) = normalize_and_threshold(&diff, self.params.mask_threshold)?;
        Ok(MaskOutput { timestep: t, diff, normalized, mask })
    }

    /// Step 2: `n_steps` inversion steps on the source prompt. A cached inversion of the same
    /// latents, prompt, steps and guidance serves any depth up to its own and is continued
    /// (not restarted) for a deeper one.
    pub fn invert(
        &self,
        latents: &Tensor,
        emb: &PromptEmbeddings,
        n_steps: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<Tensor>> {
        let guidance = self.params.inversion_guidance;
        let n_steps = n_steps.min(self.timesteps.len());
        let key = self.key(|| {
            let uncond = if guidance > 1.0 { Some(tensor_key(&emb.uncond)?) } else { None };
            Ok(KeyBuilder::new("inversion")
                .key(&tensor_key(latents)?)
                .key(&tensor_key(&emb.reference)?)
                .opt_key(uncond.as_ref())
                .f64(guidance)
                .u64(self.params.steps as u64)
                .finish())
        })?;
        let mut all = match key.as_ref().and_then(|k| self.lookup(k)) {
            Some(Cached::Sequence(seq)) if !seq.is_empty() => seq,
            _ => vec![latents.clone()],
        };
        if all.len() > n_steps {
            all.truncate(n_steps + 1);
            return Ok(all);
        }
        self.may_compute()?;
        let spec = InversionSpec {
            schedule: &self.model.schedule,
            timesteps: &self.timesteps,
            emb_cond: &emb.reference,
            emb_uncond: &emb.uncond,
            guidance,
        };
        let done = all.len() - 1;
        progress.start(Stage::Inversion, n_steps - done);
        let last = all.last().expect("the clean latent is always there").clone();
        let more = invert_steps(&self.unet, &spec, &last, done, n_steps, progress).map_err(|e| lift(e, progress))?;
        progress.finish(Stage::Inversion);
        all.extend(more);
        if let Some(k) = key {
            self.store(k, Cached::Sequence(all.clone()));
        }
        Ok(all)
    }

    /// Step 3: masked decoding of `s` steps on the target prompt. `mask` None decodes without
    /// blending (img2img from the inverted latent).
    pub fn decode(
        &self,
        inverted: &[Tensor],
        mask: Option<&Tensor>,
        s: usize,
        emb: &PromptEmbeddings,
        progress: &dyn Progress,
    ) -> Result<Vec<Tensor>> {
        let alignment = self.params.alignment;
        let start = inverted.get(start_index(alignment, s)).ok_or_else(|| {
            Error::invalid(format!(
                "decoding {s} steps needs {} inverted latents, got {}",
                start_index(alignment, s) + 1,
                inverted.len()
            ))
        })?;
        let key = self.key(|| {
            let mut b = KeyBuilder::new("decoding")
                .u64(self.params.steps as u64)
                .u64(s as u64)
                .str(&alignment.to_string())
                .f64(self.params.guidance)
                .key(&tensor_key(&emb.target)?)
                .key(&tensor_key(&emb.uncond)?)
                .key(&tensor_key(start)?);
            if let Some(m) = mask {
                b = b.key(&tensor_key(m)?);
                for i in 0..s {
                    let background = inverted.get(blend_index(alignment, s, i)).ok_or_else(|| {
                        Error::invalid(format!(
                            "decoding {s} steps needs more inverted latents than {}",
                            inverted.len()
                        ))
                    })?;
                    b = b.key(&tensor_key(background)?);
                }
            }
            Ok(b.finish())
        })?;
        if let Some(Cached::Sequence(history)) = key.as_ref().and_then(|k| self.lookup(k)) {
            return Ok(history);
        }
        self.may_compute()?;
        let blend = mask.map(|mask| Blend { mask, inverted, alignment });
        let history = ddim_decode(
            &self.unet,
            &self.model.schedule,
            &self.timesteps,
            self.params.steps,
            start,
            s,
            &emb.target,
            &emb.uncond,
            self.params.guidance,
            blend.as_ref(),
            progress,
        )
        .map_err(|e| lift(e, progress))?;
        if let Some(k) = key {
            self.store(k, Cached::Sequence(history.clone()));
        }
        Ok(history)
    }

    /// The VAE decoder's output for scaled latents, before clamping: [1,3,H,W].
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let key = self.key(|| Ok(KeyBuilder::new("vae-decode").key(&tensor_key(latents)?).finish()))?;
        if let Some(Cached::Tensor(t)) = key.as_ref().and_then(|k| self.lookup(k)) {
            return Ok(t);
        }
        self.may_compute()?;
        let z = (latents.to_dtype(self.model.vae_dtype)? / self.model.vae.config.scaling_factor)?;
        let decoded = self.model.vae.decode(&z)?;
        if let Some(k) = key {
            self.store(k, Cached::Tensor(decoded.clone()));
        }
        Ok(decoded)
    }

    /// Checks the draws against the picture and the parameters.
    pub fn check_noise(&self, image: &Tensor, noise: &Noise) -> Result<()> {
        let (_, _, height, width) = image.dims4()?;
        let (c, h, w) = self.latent_shape(width, height);
        if noise.vae_noise.dims() != [1, c, h, w] {
            return Err(Error::invalid(format!(
                "vae_noise has shape {:?}, expected {:?}",
                noise.vae_noise.dims(),
                [1, c, h, w]
            )));
        }
        let n = self.params.mask_samples;
        if noise.mask_noise.dims() != [n, 1, c, h, w] {
            return Err(Error::invalid(format!(
                "mask_noise has shape {:?}, expected {:?}",
                noise.mask_noise.dims(),
                [n, 1, c, h, w]
            )));
        }
        Ok(())
    }

    /// The whole edit of `image` [1,3,H,W] in [-1,1] with DiffEdit's own mask.
    pub fn edit(
        &self,
        image: &Tensor,
        source: &str,
        target: &str,
        noise: &Noise,
        progress: &dyn Progress,
    ) -> Result<EditOutput> {
        self.run(&EditRequest::new(image, source, target, noise), progress)
    }

    /// The whole edit as `request` asks: prompts and picture encoded, the mask computed (unless
    /// given), the source inverted, the target decoded with the mask, the result through the VAE.
    pub fn run(&self, request: &EditRequest, progress: &dyn Progress) -> Result<EditOutput> {
        let image = request.image;
        self.check_noise(image, request.noise)?;
        let before = self.unet.evaluations();
        let mut evaluations = StageEvaluations::default();
        let mut timings = StageTimings::default();

        let clock = Instant::now();
        progress.start(Stage::Encode, 1);
        let embeddings = self.encode_prompts_with(request.source, request.target, request.negative_prompt)?;
        let latents = self.encode_image(image, &request.noise.vae_noise)?;
        progress.advance(Stage::Encode, 1);
        progress.finish(Stage::Encode);
        timings.encode_s = clock.elapsed().as_secs_f64();

        let clock = Instant::now();
        let count = self.unet.evaluations();
        let mask = match &request.mask {
            MaskChoice::Automatic => self.mask(&latents, &embeddings, &request.noise.mask_noise, progress)?,
            MaskChoice::Given(m) => given_mask_output(&latents, m, self.mask_t())?,
            MaskChoice::Unmasked => {
                let ones = latents.narrow(1, 0, 1)?.ones_like()?;
                MaskOutput { timestep: self.mask_t(), diff: ones.clone(), normalized: ones.clone(), mask: ones }
            }
        };
        evaluations.mask = self.unet.evaluations() - count;
        timings.mask_s = clock.elapsed().as_secs_f64();
        let region = match request.mask_dilate_cells {
            0 => mask.mask.clone(),
            cells => dilate(&mask.mask, cells)?,
        };
        let decode_mask = match request.mask_blur {
            Some(sigma) => super::experiments::blur_mask(&region, sigma)?,
            None => region.clone(),
        };

        let clock = Instant::now();
        let count = self.unet.evaluations();
        let inverted = self.invert(&latents, &embeddings, self.params.inversion_steps(), progress)?;
        evaluations.inversion = self.unet.evaluations() - count;
        timings.inversion_s = clock.elapsed().as_secs_f64();

        let clock = Instant::now();
        let count = self.unet.evaluations();
        let s = self.params.start_step();
        let blend = match request.mask {
            MaskChoice::Unmasked => None,
            _ => Some(&decode_mask),
        };
        let decoded_latents = self.decode(&inverted, blend, s, &embeddings, progress)?;
        evaluations.decoding = self.unet.evaluations() - count;
        timings.decoding_s = clock.elapsed().as_secs_f64();

        let clock = Instant::now();
        progress.start(Stage::VaeDecode, 1);
        let decoded = self.decode_latents(decoded_latents.last().expect("decoding keeps its start latent"))?;
        progress.advance(Stage::VaeDecode, 1);
        progress.finish(Stage::VaeDecode);
        timings.vae_decode_s = clock.elapsed().as_secs_f64();

        Ok(EditOutput {
            embeddings,
            latents,
            mask,
            region,
            decode_mask,
            inverted,
            decoded_latents,
            decoded,
            timings,
            unet_evaluations: self.unet.evaluations() - before,
            evaluations,
        })
    }

    /// The mask's timestep for these parameters.
    fn mask_t(&self) -> i64 {
        mask_timestep(&self.timesteps, self.params.mask_timestep_index())
    }
}

/// A given mask as the edit's [`MaskOutput`]: its values stand for the map, the difference and
/// the mask alike. It must be [1,1,h,w] on the latents' grid.
fn given_mask_output(latents: &Tensor, mask: &Tensor, t: i64) -> Result<MaskOutput> {
    let (_, _, h, w) = latents.dims4()?;
    if mask.dims() != [1, 1, h, w] {
        return Err(Error::invalid(format!(
            "the given mask has shape {:?}, expected [1, 1, {h}, {w}] (the latent grid)",
            mask.dims()
        )));
    }
    let mask = mask.to_device(latents.device())?.to_dtype(latents.dtype())?;
    Ok(MaskOutput { timestep: t, diff: mask.clone(), normalized: mask.clone(), mask })
}

/// Grows a binary [1,1,h,w] mask by a disc of `radius` cells: a cell is set when any set cell
/// lies within that Euclidean distance.
pub fn dilate(mask: &Tensor, radius: usize) -> Result<Tensor> {
    let (h, w) = (mask.dim(2)?, mask.dim(3)?);
    let values = mask.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let r = radius as i64;
    let mut out = vec![0f32; h * w];
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let mut hit = false;
            'search: for dy in -r..=r {
                for dx in -r..=r {
                    let (yy, xx) = (y + dy, x + dx);
                    if dy * dy + dx * dx <= r * r
                        && (0..h as i64).contains(&yy)
                        && (0..w as i64).contains(&xx)
                        && values[(yy as usize) * w + xx as usize] > 0.5
                    {
                        hit = true;
                        break 'search;
                    }
                }
            }
            out[y as usize * w + x as usize] = if hit { 1.0 } else { 0.0 };
        }
    }
    Ok(Tensor::from_vec(out, mask.shape(), &Device::Cpu)?.to_dtype(mask.dtype())?.to_device(mask.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dilation_grows_by_a_disc() {
        let mut v = vec![0f32; 7 * 7];
        v[3 * 7 + 3] = 1.0;
        let m = Tensor::from_vec(v, (1, 1, 7, 7), &Device::Cpu).unwrap();
        let d: Vec<f32> = dilate(&m, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let set: usize = d.iter().filter(|&&x| x > 0.5).count();
        // Cells within distance 2 of the centre: 1 + 4 + 4 + 4 (the (±1,±1) and (±2,0) rings).
        assert_eq!(set, 13);
        assert_eq!(d[3 * 7 + 5], 1.0);
        assert_eq!(d[5 * 7 + 5], 0.0);
        assert_eq!(dilate(&m, 0).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().sum::<f32>(), 1.0);
    }
}
