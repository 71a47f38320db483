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
    /// The generator that turns `seed` into draws (PyTorch's by default).
    pub rng: crate::rng::RngKind,
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
            rng: crate::rng::RngKind::Torch,
            mask_batch_size: 4,
        }
    }
}

/// Edit settings a model folder recommends in its `diffedit.json`, for the parameters whose best
/// value depends on the model (the bundled model's were chosen on validation edits, see its
/// README). Only flags the user leaves out take them.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEditDefaults {
    #[serde(default)]
    pub mask_noise_level: Option<f64>,
    #[serde(default)]
    pub mask_threshold: Option<f64>,
    #[serde(default)]
    pub encode_ratio: Option<f64>,
    #[serde(default)]
    pub guidance: Option<f64>,
}

impl ModelEditDefaults {
    /// The file's name in a model folder, beside `model_index.json`.
    pub const FILE: &'static str = "diffedit.json";

    /// Reads and checks `path`; errors name the file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let d: Self = serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))?;
        d.apply_to(EditParams::default()).validate().map_err(|e| {
            // The range messages name CLI flags; in the file the keys are snake_case.
            let mut msg = e.to_string();
            for (flag, key) in [
                ("--mask-noise-level", "mask_noise_level"),
                ("--mask-threshold", "mask_threshold"),
                ("--encode-ratio", "encode_ratio"),
                ("--guidance", "guidance"),
            ] {
                msg = msg.replace(flag, key);
            }
            Error::config(path, msg)
        })?;
        Ok(d)
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `params` with every value this file sets.
    pub fn apply_to(&self, params: EditParams) -> EditParams {
        EditParams {
            mask_noise_level: self.mask_noise_level.unwrap_or(params.mask_noise_level),
            mask_threshold: self.mask_threshold.unwrap_or(params.mask_threshold),
            encode_ratio: self.encode_ratio.unwrap_or(params.encode_ratio),
            guidance: self.guidance.unwrap_or(params.guidance),
            ..params
        }
    }

    /// "mask_noise_level 0.6, mask_threshold 0.3": what the file sets, for messages.
    pub fn describe(&self) -> String {
        [
            ("mask_noise_level", self.mask_noise_level),
            ("mask_threshold", self.mask_threshold),
            ("encode_ratio", self.encode_ratio),
            ("guidance", self.guidance),
        ]
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k} {v}")))
        .collect::<Vec<_>>()
        .join(", ")
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
    fn model_edit_defaults_read_check_and_describe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diffedit.json");
        std::fs::write(&path, r#"{"mask_noise_level": 0.6, "mask_threshold": 0.3}"#).unwrap();
        let d = ModelEditDefaults::from_file(&path).unwrap();
        assert_eq!(d.mask_noise_level, Some(0.6));
        assert_eq!(d.encode_ratio, None);
        assert_eq!(d.describe(), "mask_noise_level 0.6, mask_threshold 0.3");
        assert!(!d.is_empty() && ModelEditDefaults::default().is_empty());

        let p = path.display().to_string();
        std::fs::write(&path, r#"{"mask_threshold": 1.5}"#).unwrap();
        let err = ModelEditDefaults::from_file(&path).unwrap_err().to_string();
        assert!(err.starts_with(&p) && err.ends_with("mask_threshold must be in [0, 1], got 1.5"), "{err}");
        std::fs::write(&path, r#"{"mask_treshold": 0.3}"#).unwrap();
        let err = ModelEditDefaults::from_file(&path).unwrap_err().to_string();
        assert!(err.starts_with(&p) && err.contains("unknown field `mask_treshold`"), "{err}");
    }

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
