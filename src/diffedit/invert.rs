//! Step 2 of DiffEdit: deterministic DDIM inversion of the source latent.

use candle_core::{Result, Tensor};

use super::{check_cancelled, guided_prediction, Denoiser, Progress, Stage};
use crate::scheduler::{inversion_step, to_epsilon, DdimSchedule};

/// Runs `n_steps` inversion steps from the clean `latents` [1,C,h,w] and returns every latent,
/// `[z0, z1, ..., z_n_steps]`. `timesteps` is the schedule's (descending) list; step i treats its
/// input as being at level `ts_asc[i]` and moves it to `ts_asc[i+1]` (the last step of a full
/// inversion stays at the top level). With `guidance > 1` each step uses classifier-free guidance
/// with `emb_uncond`, otherwise one conditional evaluation.
#[allow(clippy::too_many_arguments)]
pub fn ddim_invert(
    den: &(impl Denoiser + ?Sized),
    schedule: &DdimSchedule,
    timesteps: &[i64],
    latents: &Tensor,
    emb_cond: &Tensor,
    emb_uncond: &Tensor,
    guidance: f64,
    n_steps: usize,
    progress: &dyn Progress,
) -> Result<Vec<Tensor>> {
    let spec = InversionSpec { schedule, timesteps, emb_cond, emb_uncond, guidance };
    let n_steps = n_steps.min(timesteps.len());
    progress.start(Stage::Inversion, n_steps);
    let mut all = vec![latents.clone()];
    all.extend(invert_steps(den, &spec, latents, 0, n_steps, progress)?);
    progress.finish(Stage::Inversion);
    Ok(all)
}

/// What every inversion step shares.
pub struct InversionSpec<'a> {
    pub schedule: &'a DdimSchedule,
    /// The schedule's timesteps, descending.
    pub timesteps: &'a [i64],
    pub emb_cond: &'a Tensor,
    pub emb_uncond: &'a Tensor,
    pub guidance: f64,
}

/// Inversion steps `first..last` from `x`, the latent after step `first - 1` (the clean latent
/// when `first` is 0); returns the latents after each step. A deeper inversion continued this way
/// from a shallower one's last latent computes exactly what a fresh deep inversion does, since
/// each step depends only on its input and its index. Reports one [`Stage::Inversion`] unit per
/// step (the caller starts and finishes the stage).
pub fn invert_steps(
    den: &(impl Denoiser + ?Sized),
    spec: &InversionSpec,
    x: &Tensor,
    first: usize,
    last: usize,
    progress: &dyn Progress,
) -> Result<Vec<Tensor>> {
    let ts_asc: Vec<i64> = spec.timesteps.iter().rev().copied().collect();
    let last = last.min(ts_asc.len());
    let mut out = Vec::with_capacity(last.saturating_sub(first));
    let mut x = x.clone();
    for i in first..last {
        check_cancelled(progress)?;
        let t = ts_asc[i];
        let t_next = if i + 1 < ts_asc.len() { ts_asc[i + 1] } else { ts_asc[ts_asc.len() - 1] };
        let pred = if spec.guidance > 1.0 {
            guided_prediction(den, &x, t, spec.emb_uncond, spec.emb_cond, spec.guidance)?
        } else {
            den.predict(&x, t, spec.emb_cond)?
        };
        let eps = to_epsilon(spec.schedule, &pred, t, &x)?;
        x = inversion_step(spec.schedule, &eps, t, t_next, &x)?;
        out.push(x.clone());
        progress.advance(Stage::Inversion, 1);
    }
    Ok(out)
}
