//! The tutorial's parameters, their defaults and their validation.

use crate::error::{Error, Result};

/// How decoding pairs latents with timesteps (see FORMULAS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Alignment {
    /// Every blended latent is at the noise level of the step's output (one inversion step fewer).
    #[default]
    Exact,
    /// The tutorial's code verbatim: latents and timesteps one level apart.
    Notebook,
}

impl std::str::FromStr for Alignment {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "exact" => Ok(Alignment::Exact),
            "notebook" => Ok(Alignment::Notebook),
            other => Err(Error::invalid(format!("alignment must be `exact` or `notebook`, got `{other}`"))),
        }
    }
}

impl std::fmt::Display for Alignment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Alignment::Exact => "exact",
            Alignment::Notebook => "notebook",
        })
    }
}

/// Everything that shapes an edit, with the tutorial's defaults.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EditParams {
    /// DDIM inference steps.
    pub steps: usize,
    /// Share of the schedule that is inverted and re-decoded: S = int(encode_ratio * steps).
    pub encode_ratio: f64,
    /// Classifier-free guidance of the decoding.
    pub guidance: f64,
    /// Guidance of the inversion; classifier-free guidance with the empty prompt only when > 1.
    pub inversion_guidance: f64,
    /// Noise samples averaged for the mask.
    pub mask_samples: usize,
    /// Mask timestep as a share of the schedule: timesteps[-(min(int(L*steps), steps-1)+1)].
    pub mask_noise_level: f64,
    /// mask = normalised difference > threshold.
    pub mask_threshold: f64,
    pub alignment: Alignment,
    /// Seed of the random draws (VAE posterior sample, mask noise) when no noise file is given.
    pub seed: u64,
    /// UNet batch size for the 2N mask evaluations (memory vs speed).
    pub mask_batch_size: usize,
}

impl Default for EditParams {
    fn default() -> Self {
        Self {
            steps: 50,
            encode_ratio: 0.8,
            guidance: 7.5,
            inversion_guidance: 1.0,
            mask_samples: 10,
            mask_noise_level: 0.5,
            mask_threshold: 0.5,
            alignment: Alignment::Exact,
            seed: 0,
            mask_batch_size: 4,
        }
    }
}

/// `int(x * n)` as Python computes it: the product in double precision, truncated toward zero.
pub fn python_int_of_product(x: f64, n: usize) -> i64 {
    (x * n as f64).trunc() as i64
}

impl EditParams {
    /// Checks every parameter's range; the message names the parameter (as the CLI flag).
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 {
            return Err(Error::invalid("--steps must be at least 1, got 0"));
        }
        if self.steps > 1000 {
            return Err(Error::invalid(format!(
                "--steps must be at most 1000 (the training timesteps), got {}",
                self.steps
            )));
        }
        if !(self.encode_ratio > 0.0 && self.encode_ratio <= 1.0) {
            return Err(Error::invalid(format!("--encode-ratio must be in (0, 1], got {}", self.encode_ratio)));
        }
        if self.start_step() < 1 {
            return Err(Error::invalid(format!(
                "--encode-ratio {} with --steps {} gives int(ratio*steps) = 0 decoding steps; raise one of them",
                self.encode_ratio, self.steps
            )));
        }
        if !self.guidance.is_finite() {
            return Err(Error::invalid(format!("--guidance must be a finite number, got {}", self.guidance)));
        }
        if !self.inversion_guidance.is_finite() {
            return Err(Error::invalid(format!(
                "--inversion-guidance must be a finite number, got {}",
                self.inversion_guidance
            )));
        }
        if self.mask_samples == 0 {
            return Err(Error::invalid("--mask-samples must be at least 1, got 0"));
        }
        if !(self.mask_noise_level > 0.0 && self.mask_noise_level <= 1.0) {
            return Err(Error::invalid(format!("--mask-noise-level must be in (0, 1], got {}", self.mask_noise_level)));
        }
        if !(0.0..=1.0).contains(&self.mask_threshold) {
            return Err(Error::invalid(format!("--mask-threshold must be in [0, 1], got {}", self.mask_threshold)));
        }
        if self.mask_batch_size == 0 {
            return Err(Error::invalid("--mask-batch-size must be at least 1, got 0"));
        }
        Ok(())
    }

    /// S = int(encode_ratio * steps): the number of decoding steps.
    pub fn start_step(&self) -> usize {
        python_int_of_product(self.encode_ratio, self.steps).clamp(0, self.steps as i64) as usize
    }

    /// Inversion steps decoding needs: S (notebook) or S - 1 (exact).
    pub fn inversion_steps(&self) -> usize {
        let s = self.start_step();
        match self.alignment {
            Alignment::Notebook => s,
            Alignment::Exact => s.saturating_sub(1),
        }
    }

    /// Index into the schedule's timesteps (ascending) of the mask's noise level.
    pub fn mask_timestep_index(&self) -> usize {
        (python_int_of_product(self.mask_noise_level, self.steps).max(0) as usize).min(self.steps - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_step_uses_double_precision_truncation() {
        let p = EditParams { encode_ratio: 0.58, steps: 50, ..Default::default() };
        assert_eq!(p.start_step(), 28);
        let p = EditParams { encode_ratio: 0.8, steps: 10, ..Default::default() };
        assert_eq!(p.start_step(), 8);
        assert_eq!(p.inversion_steps(), 7);
        let p = EditParams { alignment: Alignment::Notebook, ..p };
        assert_eq!(p.inversion_steps(), 8);
    }

    #[test]
    fn mask_index_is_clamped() {
        let p = EditParams { mask_noise_level: 1.0, steps: 10, ..Default::default() };
        assert_eq!(p.mask_timestep_index(), 9);
        let p = EditParams { mask_noise_level: 0.5, steps: 10, ..Default::default() };
        assert_eq!(p.mask_timestep_index(), 5);
    }

    #[test]
    fn validation_names_the_parameter() {
        let bad = |p: EditParams| p.validate().unwrap_err().to_string();
        let d = EditParams::default;
        assert_eq!(bad(EditParams { steps: 0, ..d() }), "--steps must be at least 1, got 0");
        assert_eq!(bad(EditParams { encode_ratio: 0.0, ..d() }), "--encode-ratio must be in (0, 1], got 0");
        assert_eq!(bad(EditParams { encode_ratio: 1.5, ..d() }), "--encode-ratio must be in (0, 1], got 1.5");
        assert_eq!(bad(EditParams { mask_threshold: -0.1, ..d() }), "--mask-threshold must be in [0, 1], got -0.1");
        assert_eq!(bad(EditParams { mask_samples: 0, ..d() }), "--mask-samples must be at least 1, got 0");
        assert_eq!(bad(EditParams { mask_noise_level: 0.0, ..d() }), "--mask-noise-level must be in (0, 1], got 0");
        assert_eq!(
            bad(EditParams { encode_ratio: 0.05, steps: 10, ..d() }),
            "--encode-ratio 0.05 with --steps 10 gives int(ratio*steps) = 0 decoding steps; raise one of them"
        );
        assert!(EditParams::default().validate().is_ok());
    }
}
