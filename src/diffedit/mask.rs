//! Step 1 of DiffEdit: where do the two prompts disagree about the noise?

use candle_core::{DType, Result, Tensor};

use super::{Denoiser, Progress, Stage};
use crate::scheduler::{add_noise, DdimSchedule};

/// The mask and what it was made from.
pub struct MaskOutput {
    /// Timestep the latents were noised to.
    pub timestep: i64,
    /// Mean over samples of |pred(target) - pred(reference)|, [1,C,h,w].
    pub diff: Tensor,
    /// Its channel mean, min-max normalised to [0,1], [1,1,h,w].
    pub normalized: Tensor,
    /// 1 where `normalized > threshold`, else 0, [1,1,h,w].
    pub mask: Tensor,
}

/// The mask timestep: `timesteps[-(t_idx + 1)]` with `t_idx = min(int(level*steps), steps-1)`.
pub fn mask_timestep(timesteps: &[i64], t_index: usize) -> i64 {
    let t_index = t_index.min(timesteps.len() - 1);
    timesteps[timesteps.len() - 1 - t_index]
}

/// Noises `latents` [1,C,h,w] to timestep `t` with each of `noises` [N,1,C,h,w], predicts under
/// the target and the reference prompt ([1,77,D] each) and averages |difference| over the N
/// samples. The 2N evaluations run in batches of `batch_size` rows.
#[allow(clippy::too_many_arguments)]
pub fn mask_difference(
    den: &(impl Denoiser + ?Sized),
    schedule: &DdimSchedule,
    latents: &Tensor,
    emb_target: &Tensor,
    emb_reference: &Tensor,
    noises: &Tensor,
    t: i64,
    batch_size: usize,
    progress: &dyn Progress,
) -> Result<Tensor> {
    let n = noises.dim(0)?;
    progress.start(Stage::Mask, 2 * n);
    // Row r of the 2N rows is sample r/2 under the target (even r) or the reference (odd r), so a
    // pair shares a batch whenever the batch size is even.
    let noisy: Vec<Tensor> = (0..n).map(|k| add_noise(schedule, latents, &noises.get(k)?, t)).collect::<Result<_>>()?;
    let mut predictions: Vec<Tensor> = Vec::with_capacity(2 * n);
    let rows: Vec<usize> = (0..2 * n).collect();
    for chunk in rows.chunks(batch_size.max(1)) {
        let xs: Vec<&Tensor> = chunk.iter().map(|r| &noisy[r / 2]).collect();
        let embs: Vec<&Tensor> = chunk.iter().map(|r| if r % 2 == 0 { emb_target } else { emb_reference }).collect();
        let out = den.predict(&Tensor::cat(&xs, 0)?, t, &Tensor::cat(&embs, 0)?)?;
        for i in 0..chunk.len() {
            predictions.push(out.narrow(0, i, 1)?);
        }
        progress.advance(Stage::Mask, chunk.len());
    }
    progress.finish(Stage::Mask);
    // Summed in sample order, as the reference does, then divided once.
    let mut diff = latents.zeros_like()?;
    for k in 0..n {
        diff = (diff + (&predictions[2 * k] - &predictions[2 * k + 1])?.abs()?)?;
    }
    diff / n as f64
}

/// Channel mean, min-max normalisation (with the reference's 1e-8) and the strict threshold.
/// Returns (normalized, mask), both [1,1,h,w] in the dtype of `diff`.
pub fn normalize_and_threshold(diff: &Tensor, threshold: f64) -> Result<(Tensor, Tensor)> {
    let m = diff.mean_keepdim(1)?;
    let min = m.min_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let max = m.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let normalized = ((m - min)? / (max - min + 1e-8))?;
    let mask = threshold_mask(&normalized, threshold)?;
    Ok((normalized, mask))
}

/// 1.0 where `normalized > threshold` (strictly), else 0.0.
pub fn threshold_mask(normalized: &Tensor, threshold: f64) -> Result<Tensor> {
    normalized.gt(threshold)?.to_dtype(normalized.dtype())
}

/// The whole mask step.
#[allow(clippy::too_many_arguments)]
pub fn compute_mask(
    den: &(impl Denoiser + ?Sized),
    schedule: &DdimSchedule,
    latents: &Tensor,
    emb_target: &Tensor,
    emb_reference: &Tensor,
    noises: &Tensor,
    t: i64,
    threshold: f64,
    batch_size: usize,
    progress: &dyn Progress,
) -> Result<MaskOutput> {
    let diff = mask_difference(den, schedule, latents, emb_target, emb_reference, noises, t, batch_size, progress)?;
    let (normalized, mask) = normalize_and_threshold(&diff, threshold)?;
    Ok(MaskOutput { timestep: t, diff, normalized, mask })
}
