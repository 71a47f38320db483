//! Step 2 of DiffEdit: deterministic DDIM inversion of the source latent.

use candle_core::{Result, Tensor};

use super::{guided_prediction, Denoiser, Progress, Stage};
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
    let ts_asc: Vec<i64> = timesteps.iter().rev().copied().collect();
    let n_steps = n_steps.min(ts_asc.len());
    progress.start(Stage::Inversion, n_steps);
    let mut all = Vec::with_capacity(n_steps + 1);
    all.push(latents.clone());
    let mut x = latents.clone();
    for i in 0..n_steps {
        let t = ts_asc[i];
        let t_next = if i + 1 < ts_asc.len() { ts_asc[i + 1] } else { ts_asc[ts_asc.len() - 1] };
        let out = if guidance > 1.0 {
            guided_prediction(den, &x, t, emb_uncond, emb_cond, guidance)?
        } else {
            den.predict(&x, t, emb_cond)?
        };
        let eps = to_epsilon(schedule, &out, t, &x)?;
        x = inversion_step(schedule, &eps, t, t_next, &x)?;
        all.push(x.clone());
        progress.advance(Stage::Inversion, 1);
    }
    progress.finish(Stage::Inversion);
    Ok(all)
}
