//! Step 1 of DiffEdit: where do the two prompts disagree about the noise?

use candle_core::{DType, Result, Tensor};

use super::{check_cancelled, Denoiser, Progress, Stage};
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

/// One side of the mask: noises `latents` [1,C,h,w] to timestep `t` with each of `noises`
/// [N,1,C,h,w] and predicts the noise under one prompt's embedding `emb` [1,77,D]. Returns the N
/// predictions stacked, [N,C,h,w]. The N evaluations run in batches of `batch_size` rows; the
/// caller starts and finishes the [`Stage::Mask`] progress (both sides share one bar).
#[allow(clippy::too_many_arguments)]
pub fn mask_predictions(
    den: &(impl Denoiser + ?Sized),
    schedule: &DdimSchedule,
    latents: &Tensor,
    emb: &Tensor,
    noises: &Tensor,
    t: i64,
    batch_size: usize,
    progress: &dyn Progress,
) -> Result<Tensor> {
    let n = noises.dim(0)?;
    let noisy: Vec<Tensor> = (0..n).map(|k| add_noise(schedule, latents, &noises.get(k)?, t)).collect::<Result<_>>()?;
    let mut predictions: Vec<Tensor> = Vec::with_capacity(n);
    for chunk in noisy.chunks(batch_size.max(1)) {
        check_cancelled(progress)?;
        let embs: Vec<&Tensor> = chunk.iter().map(|_| emb).collect();
        let out = den.predict(&Tensor::cat(chunk, 0)?, t, &Tensor::cat(&embs, 0)?)?;
        predictions.push(out);
        progress.advance(Stage::Mask, chunk.len());
    }
    Tensor::cat(&predictions, 0)
}

/// Mean over the N samples of |target prediction - reference prediction|, [1,C,h,w], from the
/// two sides' predictions [N,C,h,w]: summed in sample order, as the reference does, then
/// divided once.
pub fn mask_difference(target: &Tensor, reference: &Tensor) -> Result<Tensor> {
    let n = target.dim(0)?;
    let mut diff = target.get(0)?.zeros_like()?.unsqueeze(0)?;
    for k in 0..n {
        let d = (target.narrow(0, k, 1)? - reference.narrow(0, k, 1)?)?.abs()?;
        diff = (diff + d)?;
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
