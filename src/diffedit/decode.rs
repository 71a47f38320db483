//! Step 3 of DiffEdit: DDIM decoding on the target prompt, with the background taken from the
//! inversion at every step. With no mask it is plain guided DDIM sampling (text-to-image when
//! the start is pure noise, img2img when it is a noised source).

use candle_core::{Result, Tensor};

use super::{check_cancelled, guided_prediction, Alignment, Denoiser, Progress, Stage};
use crate::scheduler::{ddim_step, DdimSchedule};

/// The blend of a masked decoding: `x = mask*d + (1-mask)*inverted[index]` after each step.
pub struct Blend<'a> {
    /// [1,1,h,w] (or [1,C,h,w]), 1 where the picture may change; soft values are allowed.
    pub mask: &'a Tensor,
    /// The inversion's latents `[z0, z1, ...]`.
    pub inverted: &'a [Tensor],
    pub alignment: Alignment,
}

/// Index of the start latent in the inversion for `s` decoding steps.
pub fn start_index(alignment: Alignment, s: usize) -> usize {
    match alignment {
        Alignment::Notebook => s,
        Alignment::Exact => s - 1,
    }
}

/// Index of the inverted latent blended after decoding step `i` of `s`.
pub fn blend_index(alignment: Alignment, s: usize, i: usize) -> usize {
    match alignment {
        Alignment::Notebook => s - 1 - i,
        // The last step blends with the clean latent z0 (not Python's z[-1]).
        Alignment::Exact => (s as i64 - 2 - i as i64).max(0) as usize,
    }
}

/// The decode timesteps: the last `s` of the schedule's descending list.
pub fn decode_timesteps(timesteps: &[i64], s: usize) -> &[i64] {
    &timesteps[timesteps.len() - s..]
}

/// Decodes `s` steps from `start` [1,C,h,w]. Returns `[start, x1, ..., xS]` (after blending).
/// `on_step(i, x)` is called after each step with the new latent.
#[allow(clippy::too_many_arguments)]
pub fn ddim_decode(
    den: &(impl Denoiser + ?Sized),
    schedule: &DdimSchedule,
    timesteps: &[i64],
    steps: usize,
    start: &Tensor,
    s: usize,
    emb_cond: &Tensor,
    emb_uncond: &Tensor,
    guidance: f64,
    blend: Option<&Blend>,
    progress: &dyn Progress,
) -> Result<Vec<Tensor>> {
    let ts = decode_timesteps(timesteps, s);
    let ratio = schedule.step_ratio(steps);
    let inverse_mask = match blend {
        Some(b) => Some(b.mask.affine(-1.0, 1.0)?),
        None => None,
    };
    progress.start(Stage::Decoding, s);
    let mut history = Vec::with_capacity(s + 1);
    let mut x = start.clone();
    history.push(x.clone());
    for (i, &t) in ts.iter().enumerate() {
        check_cancelled(progress)?;
        let out = guided_prediction(den, &x, t, emb_uncond, emb_cond, guidance)?;
        let d = ddim_step(schedule, &out, t, t - ratio, &x)?;
        x = match (blend, &inverse_mask) {
            (Some(b), Some(inv)) => {
                let background = &b.inverted[blend_index(b.alignment, s, i)];
                (d.broadcast_mul(b.mask)? + background.broadcast_mul(inv)?)?
            }
            _ => d,
        };
        history.push(x.clone());
        progress.advance(Stage::Decoding, 1);
    }
    progress.finish(Stage::Decoding);
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_formulas_md() {
        // steps 10, r 0.8: S = 8
        assert_eq!(start_index(Alignment::Notebook, 8), 8);
        assert_eq!(start_index(Alignment::Exact, 8), 7);
        let nb: Vec<usize> = (0..8).map(|i| blend_index(Alignment::Notebook, 8, i)).collect();
        assert_eq!(nb, vec![7, 6, 5, 4, 3, 2, 1, 0]);
        let ex: Vec<usize> = (0..8).map(|i| blend_index(Alignment::Exact, 8, i)).collect();
        assert_eq!(ex, vec![6, 5, 4, 3, 2, 1, 0, 0]);
        let ts: Vec<i64> = (0..10).rev().map(|k| k * 100 + 1).collect();
        assert_eq!(decode_timesteps(&ts, 8), &[701, 601, 501, 401, 301, 201, 101, 1]);
    }
}
