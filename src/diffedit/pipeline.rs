//! The whole edit on a loaded model: encode, mask, invert, decode, with every intermediate kept
//! for tracing and every random draw either seeded or supplied.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use super::decode::{ddim_decode, start_index, Blend};
use super::invert::ddim_invert;
use super::mask::{compute_mask, mask_timestep, MaskOutput};
use super::{Counted, EditParams, Progress};
use crate::error::{Error, Result};
use crate::models::loading::StableDiffusion;

/// Text embeddings, each [1,77,D], computed once per edit.
#[derive(Clone)]
pub struct PromptEmbeddings {
    pub target: Tensor,
    pub reference: Tensor,
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

/// Everything an edit computed.
pub struct EditOutput {
    pub embeddings: PromptEmbeddings,
    /// The scaled source latent, [1,C,h,w].
    pub latents: Tensor,
    pub mask: MaskOutput,
    /// `[z0, ..., zK]`, the inversion's latents.
    pub inverted: Vec<Tensor>,
    /// `[start, x1, ..., xS]`, decoding's latents after blending.
    pub decoded_latents: Vec<Tensor>,
    /// The VAE decoder's output before clamping, [1,3,H,W].
    pub decoded: Tensor,
    pub timings: StageTimings,
    pub unet_evaluations: usize,
}

/// DiffEdit on one model with one set of parameters.
pub struct DiffEdit<'m> {
    pub model: &'m StableDiffusion,
    pub params: EditParams,
    unet: Counted<'m, StableDiffusion>,
    timesteps: Vec<i64>,
}

impl<'m> DiffEdit<'m> {
    pub fn new(model: &'m StableDiffusion, params: EditParams) -> Result<Self> {
        params.validate()?;
        let timesteps = model.schedule.timesteps(params.steps)?;
        Ok(Self { model, params, unet: Counted::new(model), timesteps })
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

    /// Encodes the target, the source (reference) and the empty prompt once.
    pub fn encode_prompts(&self, source: &str, target: &str) -> Result<PromptEmbeddings> {
        if source.trim().is_empty() {
            return Err(Error::invalid("--source prompt is empty: describe the picture as it is"));
        }
        if target.trim().is_empty() {
            return Err(Error::invalid("--target prompt is empty: describe the picture as it should become"));
        }
        let mut truncated = Vec::new();
        let mut enc = |p: &str| -> Result<Tensor> {
            let (emb, tokens) = self.model.encode_prompt(p)?;
            if tokens.truncated {
                truncated.push(p.to_string());
            }
            Ok(emb)
        };
        let target_emb = enc(target)?;
        let reference = enc(source)?;
        let uncond = enc("")?;
        Ok(PromptEmbeddings { target: target_emb, reference, uncond, truncated })
    }

    /// `(mean + std * vae_noise) * scaling_factor` for `image` [1,3,H,W] in [-1,1].
    pub fn encode_image(&self, image: &Tensor, vae_noise: &Tensor) -> Result<Tensor> {
        let m = self.model;
        let image = image.to_device(&m.device)?.to_dtype(m.vae_dtype)?;
        let dist = m.vae.encode(&image)?;
        let noise = vae_noise.to_device(&m.device)?.to_dtype(m.vae_dtype)?;
        let sample = (&dist.mean + (&dist.std * noise)?)?;
        Ok((sample * m.vae.config.scaling_factor)?.to_dtype(m.dtype)?)
    }

    /// Step 1: the mask for `latents` under the two prompts.
    pub fn mask(
        &self,
        latents: &Tensor,
        emb: &PromptEmbeddings,
        mask_noise: &Tensor,
        progress: &dyn Progress,
    ) -> Result<MaskOutput> {
        let t = mask_timestep(&self.timesteps, self.params.mask_timestep_index());
        let noise = mask_noise.to_device(&self.model.device)?.to_dtype(self.model.dtype)?;
        Ok(compute_mask(
            &self.unet,
            &self.model.schedule,
            latents,
            &emb.target,
            &emb.reference,
            &noise,
            t,
            self.params.mask_threshold,
            self.params.mask_batch_size,
            progress,
        )?)
    }

    /// Step 2: `n_steps` inversion steps on the source prompt.
    pub fn invert(
        &self,
        latents: &Tensor,
        emb: &PromptEmbeddings,
        n_steps: usize,
        progress: &dyn Progress,
    ) -> Result<Vec<Tensor>> {
        Ok(ddim_invert(
            &self.unet,
            &self.model.schedule,
            &self.timesteps,
            latents,
            &emb.reference,
            &emb.uncond,
            self.params.inversion_guidance,
            n_steps,
            progress,
        )?)
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
        let blend = mask.map(|mask| Blend { mask, inverted, alignment });
        Ok(ddim_decode(
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
        )?)
    }

    /// The VAE decoder's output for scaled latents, before clamping: [1,3,H,W].
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let z = (latents.to_dtype(self.model.vae_dtype)? / self.model.vae.config.scaling_factor)?;
        Ok(self.model.vae.decode(&z)?)
    }

    /// The whole edit of `image` [1,3,H,W] in [-1,1].
    pub fn edit(
        &self,
        image: &Tensor,
        source: &str,
        target: &str,
        noise: &Noise,
        progress: &dyn Progress,
    ) -> Result<EditOutput> {
        self.edit_with_decode_mask(image, source, target, noise, |m| Ok(m.mask.clone()), progress)
    }

    /// The whole edit, decoding with the mask `decode_mask` makes from the computed one (e.g. a
    /// blurred, soft mask); the output keeps the computed mask.
    pub fn edit_with_decode_mask(
        &self,
        image: &Tensor,
        source: &str,
        target: &str,
        noise: &Noise,
        decode_mask: impl FnOnce(&MaskOutput) -> Result<Tensor>,
        progress: &dyn Progress,
    ) -> Result<EditOutput> {
        let (_, _, height, width) = image.dims4()?;
        let (c, h, w) = self.latent_shape(width, height);
        if noise.vae_noise.dims() != [1, c, h, w] {
            return Err(Error::invalid(format!(
                "vae_noise has shape {:?}, expected {:?}",
                noise.vae_noise.dims(),
                [1, c, h, w]
            )));
        }
        if noise.mask_noise.dims() != [self.params.mask_samples, 1, c, h, w] {
            return Err(Error::invalid(format!(
                "mask_noise has shape {:?}, expected {:?}",
                noise.mask_noise.dims(),
                [self.params.mask_samples, 1, c, h, w]
            )));
        }
        let mut timings = StageTimings::default();
        let clock = Instant::now();
        let embeddings = self.encode_prompts(source, target)?;
        let latents = self.encode_image(image, &noise.vae_noise)?;
        timings.encode_s = clock.elapsed().as_secs_f64();

        let clock = Instant::now();
        let mask = self.mask(&latents, &embeddings, &noise.mask_noise, progress)?;
        timings.mask_s = clock.elapsed().as_secs_f64();

        let clock = Instant::now();
        let inverted = self.invert(&latents, &embeddings, self.params.inversion_steps(), progress)?;
        timings.inversion_s = clock.elapsed().as_secs_f64();

        let clock = Instant::now();
        let s = self.params.start_step();
        let blend_mask = decode_mask(&mask)?;
        let decoded_latents = self.decode(&inverted, Some(&blend_mask), s, &embeddings, progress)?;
        timings.decoding_s = clock.elapsed().as_secs_f64();

        let clock = Instant::now();
        let decoded = self.decode_latents(decoded_latents.last().expect("decoding keeps its start latent"))?;
        timings.vae_decode_s = clock.elapsed().as_secs_f64();

        Ok(EditOutput {
            embeddings,
            latents,
            mask,
            inverted,
            decoded_latents,
            decoded,
            timings,
            unet_evaluations: self.unet.evaluations(),
        })
    }
}
