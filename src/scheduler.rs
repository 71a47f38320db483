//! The DDIM noise schedule of diffusers' `DDIMScheduler`, as data plus pure functions.
//!
//! [`DdimSchedule`] holds the config and the cumulative alphas; the sampling loop keeps its own
//! state and calls [`ddim_step`], [`add_noise`], [`inversion_step`] and [`to_epsilon`] with
//! explicit timesteps. Only deterministic DDIM (eta = 0) is provided, which is what DiffEdit uses.
//!
//! The alphas are reproduced bit for bit from torch's float32 computation: `torch.linspace` on
//! the CPU evaluates `start + step * i` for the first half and `end - step * (n - 1 - i)` for the
//! second, each as one fused multiply-add in the x86-64 builds of torch, and `torch.cumprod`
//! accumulates float32 inputs in double. The one exception is `rescale_betas_zero_snr`: torch's
//! vectorized float32 sqrt is not correctly rounded (about one value in five is 1 ulp off), so
//! there the values agree to within 5e-7 rather than exactly.

use std::path::Path;

use candle_core::Tensor;

use crate::error::{Error, Result};

fn default_num_train_timesteps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    0.0001
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> String {
    "linear".into()
}
fn default_true() -> bool {
    true
}
fn default_clip_sample_range() -> f64 {
    1.0
}
fn default_prediction_type() -> String {
    "epsilon".into()
}
fn default_timestep_spacing() -> String {
    "leading".into()
}

/// diffusers' `DDIMScheduler` config (`scheduler_config.json`); absent keys take diffusers'
/// defaults, unknown keys are ignored.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct DdimSchedulerConfig {
    #[serde(default = "default_num_train_timesteps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    /// "linear", "scaled_linear" or "squaredcos_cap_v2".
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "default_true")]
    pub clip_sample: bool,
    #[serde(default = "default_clip_sample_range")]
    pub clip_sample_range: f64,
    #[serde(default = "default_true")]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: i64,
    /// "epsilon", "v_prediction" or "sample".
    #[serde(default = "default_prediction_type")]
    pub prediction_type: String,
    /// "leading", "trailing" or "linspace".
    #[serde(default = "default_timestep_spacing")]
    pub timestep_spacing: String,
    /// Dynamic thresholding is not implemented; `true` is refused.
    #[serde(default)]
    pub thresholding: bool,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
}

impl Default for DdimSchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prediction {
    Epsilon,
    V,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

/// The schedule: config plus the float32 cumulative alphas, exactly as torch computes them.
#[derive(Debug, Clone)]
pub struct DdimSchedule {
    pub config: DdimSchedulerConfig,
    pub alphas_cumprod: Vec<f32>,
    /// Used for the step after the last timestep: 1 with `set_alpha_to_one`, else `alphas_cumprod[0]`.
    pub final_alpha_cumprod: f32,
    prediction: Prediction,
    spacing: Spacing,
}

/// `torch.linspace(start, end, n, dtype=torch.float32)` on the CPU, bit for bit.
fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((n - 1 - i) as f32, end) })
        .collect()
}

/// `torch.cumprod` of float32 values: the running product is kept in double.
fn cumprod_f32(xs: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    xs.iter()
        .map(|&x| {
            acc *= x as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` with the cosine schedule, computed in double like Python.
fn squaredcos_cap_v2(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, algorithm 1), in float32 with
/// torch's order of operations.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_ac: Vec<f32> = cumprod_f32(&alphas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = (sqrt_ac[0], sqrt_ac[sqrt_ac.len() - 1]);
    let scale = first / (first - last);
    for s in &mut sqrt_ac {
        *s = (*s - last) * scale;
    }
    let ac: Vec<f32> = sqrt_ac.iter().map(|s| s * s).collect();
    let mut out = Vec::with_capacity(ac.len());
    out.push(1.0 - ac[0]);
    out.extend(ac.windows(2).map(|w| 1.0 - w[1] / w[0]));
    out
}

fn one_of(key: &str, value: &str, allowed: &[&str]) -> std::result::Result<usize, String> {
    allowed.iter().position(|a| *a == value).ok_or_else(|| {
        let list = allowed.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
        format!("key `{key}`: \"{value}\" is not supported (expected one of {list})")
    })
}

impl DdimSchedule {
    /// Builds the schedule; an unsupported config value is an error naming its key.
    pub fn new(config: DdimSchedulerConfig) -> Result<Self> {
        Self::build(config).map_err(|msg| Error::invalid(format!("scheduler config: {msg}")))
    }

    /// Reads a `scheduler_config.json` (a DDIM config, or another diffusers scheduler's config
    /// whose shared keys describe the same training schedule).
    pub fn from_file(path: &Path) -> Result<Self> {
        let config: DdimSchedulerConfig = crate::models::config::read_config(path)?;
        Self::build(config).map_err(|msg| Error::config(path, msg))
    }

    fn build(config: DdimSchedulerConfig) -> std::result::Result<Self, String> {
        if config.thresholding {
            return Err("key `thresholding`: true (dynamic thresholding) is not supported".into());
        }
        let t = config.num_train_timesteps;
        if t == 0 {
            return Err("key `num_train_timesteps`: must be at least 1".into());
        }
        if config.steps_offset < 0 {
            return Err(format!("key `steps_offset`: {} is negative", config.steps_offset));
        }
        if config.clip_sample_range.is_nan() || config.clip_sample_range <= 0.0 {
            return Err(format!("key `clip_sample_range`: {} must be positive", config.clip_sample_range));
        }
        let prediction = [Prediction::Epsilon, Prediction::V, Prediction::Sample]
            [one_of("prediction_type", &config.prediction_type, &["epsilon", "v_prediction", "sample"])?];
        let spacing = [Spacing::Leading, Spacing::Trailing, Spacing::Linspace]
            [one_of("timestep_spacing", &config.timestep_spacing, &["leading", "trailing", "linspace"])?];
        let mut betas = match &config.trained_betas {
            Some(b) if b.len() != t => {
                return Err(format!("key `trained_betas`: {} values, but num_train_timesteps is {t}", b.len()))
            }
            Some(b) => b.iter().map(|&x| x as f32).collect(),
            None => {
                match one_of("beta_schedule", &config.beta_schedule, &["linear", "scaled_linear", "squaredcos_cap_v2"])?
                {
                    0 => linspace_f32(config.beta_start, config.beta_end, t),
                    1 => linspace_f32(config.beta_start.sqrt(), config.beta_end.sqrt(), t)
                        .into_iter()
                        .map(|b| b * b)
                        .collect(),
                    _ => squaredcos_cap_v2(t),
                }
            }
        };
        if config.rescale_betas_zero_snr {
            if t < 2 {
                return Err("key `rescale_betas_zero_snr`: needs num_train_timesteps >= 2".into());
            }
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let alphas_cumprod = cumprod_f32(&alphas);
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ok(Self { config, alphas_cumprod, final_alpha_cumprod, prediction, spacing })
    }

    /// The timesteps of an `steps`-step run, descending, as diffusers' `set_timesteps`.
    pub fn timesteps(&self, steps: usize) -> Result<Vec<i64>> {
        let t = self.config.num_train_timesteps;
        if steps == 0 || steps > t {
            return Err(Error::invalid(format!(
                "number of DDIM steps must be between 1 and num_train_timesteps ({t}), got {steps}"
            )));
        }
        let ts: Vec<i64> = match self.spacing {
            Spacing::Leading => {
                let ratio = (t / steps) as i64;
                (0..steps as i64).rev().map(|i| i * ratio + self.config.steps_offset).collect()
            }
            Spacing::Trailing => {
                // numpy's arange(T, 0, -T/steps): its length is ceil(T / step), and element i is
                // start + i * delta (element 1 is start - step itself) where delta is re-derived as
                // (start - step) - start.
                let step = t as f64 / steps as f64;
                let start = t as f64;
                let len = (start / step).ceil() as usize;
                let delta = (start - step) - start;
                (0..len)
                    .map(|i| match i {
                        1 => start - step,
                        _ => start + i as f64 * delta,
                    })
                    .map(|v| v.round_ties_even() as i64 - 1)
                    .collect()
            }
            Spacing::Linspace => {
                // numpy's linspace(0, T - 1, steps): i * step with the last value set to T - 1.
                let last = (t - 1) as f64;
                let step = if steps > 1 { last / (steps - 1) as f64 } else { 0.0 };
                (0..steps)
                    .rev()
                    .map(|i| if i + 1 == steps && steps > 1 { last } else { i as f64 * step })
                    .map(|v| v.round_ties_even() as i64)
                    .collect()
            }
        };
        if let Some(&bad) = ts.iter().find(|&&x| x < 0 || x >= t as i64) {
            return Err(Error::invalid(format!(
                "{steps} DDIM steps with steps_offset {} reach timestep {bad}, outside 0..{t}",
                self.config.steps_offset
            )));
        }
        Ok(ts)
    }

    /// `num_train_timesteps / steps`: diffusers' `step()` goes from `t` to `t - step_ratio`.
    pub fn step_ratio(&self, steps: usize) -> i64 {
        (self.config.num_train_timesteps / steps.max(1)) as i64
    }

    /// `alphas_cumprod[t]`, or `final_alpha_cumprod` for `t < 0`; `t` past the end is clamped to
    /// the last timestep (the tensor functions below refuse it instead).
    pub fn alpha_cumprod(&self, t: i64) -> f64 {
        if t < 0 {
            self.final_alpha_cumprod as f64
        } else {
            let i = (t as usize).min(self.alphas_cumprod.len() - 1);
            self.alphas_cumprod[i] as f64
        }
    }

    fn checked_alpha(&self, t: i64, allow_negative: bool, what: &str) -> candle_core::Result<f64> {
        let n = self.alphas_cumprod.len() as i64;
        if t >= n || (t < 0 && !allow_negative) {
            candle_core::bail!("{what} timestep {t} is outside 0..{n}");
        }
        Ok(self.alpha_cumprod(t))
    }
}

/// `a * x + b * y` for scalars computed in f64.
fn lin2(a: f64, x: &Tensor, b: f64, y: &Tensor) -> candle_core::Result<Tensor> {
    x.affine(a, 0.0)? + y.affine(b, 0.0)?
}

/// The predicted clean sample and noise for `model_output` at `t`, before any clipping.
fn x0_and_eps(
    s: &DdimSchedule,
    model_output: &Tensor,
    alpha: f64,
    sample: &Tensor,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (sa, sb) = (alpha.sqrt(), (1.0 - alpha).sqrt());
    Ok(match s.prediction {
        Prediction::Epsilon => (lin2(1.0 / sa, sample, -sb / sa, model_output)?, model_output.clone()),
        Prediction::V => (lin2(sa, sample, -sb, model_output)?, lin2(sa, model_output, sb, sample)?),
        Prediction::Sample => (model_output.clone(), lin2(1.0 / sb, sample, -sa / sb, model_output)?),
    })
}

/// One deterministic DDIM step (eta = 0) from `t` to `prev_t` (negative: the final alpha), as
/// diffusers' `DDIMScheduler.step`, including `prediction_type` and `clip_sample`.
pub fn ddim_step(
    s: &DdimSchedule,
    model_output: &Tensor,
    t: i64,
    prev_t: i64,
    sample: &Tensor,
) -> candle_core::Result<Tensor> {
    let a_t = s.checked_alpha(t, false, "current")?;
    let a_prev = s.checked_alpha(prev_t, true, "previous")?;
    let (mut x0, eps) = x0_and_eps(s, model_output, a_t, sample)?;
    if s.config.clip_sample {
        let r = s.config.clip_sample_range;
        x0 = x0.clamp(-r, r)?;
    }
    lin2(a_prev.sqrt(), &x0, (1.0 - a_prev).sqrt(), &eps)
}

/// The forward process: `sqrt(a_t) * original + sqrt(1 - a_t) * noise`.
pub fn add_noise(s: &DdimSchedule, original: &Tensor, noise: &Tensor, t: i64) -> candle_core::Result<Tensor> {
    let a = s.checked_alpha(t, false, "noise")?;
    lin2(a.sqrt(), original, (1.0 - a).sqrt(), noise)
}

/// DDIM inversion from level `t` up to `t_next` (`t < 0`: the final alpha):
/// `x_next = sqrt(a_next) * (x - sqrt(1 - a_t) * eps) / sqrt(a_t) + sqrt(1 - a_next) * eps`.
pub fn inversion_step(s: &DdimSchedule, eps: &Tensor, t: i64, t_next: i64, x: &Tensor) -> candle_core::Result<Tensor> {
    let a_t = s.checked_alpha(t, true, "current")?;
    let a_next = s.checked_alpha(t_next, false, "next")?;
    let x0 = lin2(1.0 / a_t.sqrt(), x, -(1.0 - a_t).sqrt() / a_t.sqrt(), eps)?;
    lin2(a_next.sqrt(), &x0, (1.0 - a_next).sqrt(), eps)
}

/// The noise prediction a model output stands for: itself for "epsilon",
/// `sqrt(a) * v + sqrt(1 - a) * x` for "v_prediction", `(x - sqrt(a) * x0) / sqrt(1 - a)` for
/// "sample".
pub fn to_epsilon(s: &DdimSchedule, model_output: &Tensor, t: i64, sample: &Tensor) -> candle_core::Result<Tensor> {
    let a = s.checked_alpha(t, false, "current")?;
    Ok(x0_and_eps(s, model_output, a, sample)?.1)
}
