//! Edit parameters given as a JSON object (a batch manifest's row, an HTTP request's body): each
//! by its command-line flag's long name with underscores (`mask_threshold` for
//! `--mask-threshold`), numbers as JSON numbers or as text (CSV cells are text).

use serde_json::{Map, Value};

use super::{Alignment, EditParams};

/// The keys of [`EditParams`] fields.
pub const PARAM_KEYS: &[&str] = &[
    "steps",
    "encode_ratio",
    "guidance",
    "inversion_guidance",
    "mask_samples",
    "mask_noise_level",
    "mask_threshold",
    "alignment",
    "seed",
    "mask_batch_size",
    "rng",
];

/// The keys of [`EditOptions`] fields.
pub const OPTION_KEYS: &[&str] = &["mask_dilate", "mask_blur", "negative_prompt", "keep_background"];

/// How an edit treats its mask and guidance beyond [`EditParams`] (the `edit` flags of the same
/// names); checked with the rest of the edit by `PictureEdit::check`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EditOptions {
    pub mask_dilate: f64,
    pub mask_blur: Option<f64>,
    pub negative_prompt: Option<String>,
    pub keep_background: bool,
}

/// Typed reads of a JSON object's fields; messages name the field.
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    /// Text, or `None` when absent or null.
    pub fn text(&self, key: &str) -> Result<Option<String>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("`{key}` must be text, got {other}")),
        }
    }

    pub fn number(&self, key: &str) -> Result<Option<f64>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(Value::String(s)) => {
                s.trim().parse::<f64>().map(Some).map_err(|_| format!("`{key}` must be a number, got {s:?}"))
            }
            Some(other) => Err(format!("`{key}` must be a number, got {other}")),
        }
    }

    /// A whole number >= 0 (seeds up to 2^64 - 1 are read exactly, also from text).
    pub fn count(&self, key: &str) -> Result<Option<u64>, String> {
        let bad = |v: &dyn std::fmt::Display| format!("`{key}` must be a whole number >= 0, got {v}");
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) => Ok(Some(v)),
                None => Err(bad(n)),
            },
            Some(Value::String(s)) => s.trim().parse::<u64>().map(Some).map_err(|_| bad(&format!("{s:?}"))),
            Some(other) => Err(bad(other)),
        }
    }

    pub fn boolean(&self, key: &str) -> Result<Option<bool>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(Some(true)),
                "false" | "0" | "no" => Ok(Some(false)),
                _ => Err(format!("`{key}` must be true or false, got {s:?}")),
            },
            Some(other) => Err(format!("`{key}` must be true or false, got {other}")),
        }
    }

    /// Fails on the first key outside `known`.
    pub fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(format!("unknown field `{k}` (known: {})", known.join(", "))),
            None => Ok(()),
        }
    }

    /// The parameters these fields set, every missing one from `base`, checked as `edit` checks
    /// its flags (the range messages name the flags, as `edit` gives them).
    pub fn edit_params(&self, base: &EditParams) -> Result<EditParams, String> {
        let alignment = match self.text("alignment")? {
            Some(a) => a.parse::<Alignment>().map_err(|e| e.to_string())?,
            None => base.alignment,
        };
        let params = EditParams {
            steps: self.count("steps")?.map_or(base.steps, |v| v as usize),
            encode_ratio: self.number("encode_ratio")?.unwrap_or(base.encode_ratio),
            guidance: self.number("guidance")?.unwrap_or(base.guidance),
            inversion_guidance: self.number("inversion_guidance")?.unwrap_or(base.inversion_guidance),
            mask_samples: self.count("mask_samples")?.map_or(base.mask_samples, |v| v as usize),
            mask_noise_level: self.number("mask_noise_level")?.unwrap_or(base.mask_noise_level),
            mask_threshold: self.number("mask_threshold")?.unwrap_or(base.mask_threshold),
            alignment,
            seed: self.count("seed")?.unwrap_or(base.seed),
            mask_batch_size: self.count("mask_batch_size")?.map_or(base.mask_batch_size, |v| v as usize),
            rng: match self.text("rng")? {
                Some(r) => r.parse().map_err(|e: crate::Error| e.to_string())?,
                None => base.rng,
            },
        };
        params.validate().map_err(|e| e.to_string())?;
        Ok(params)
    }
}

impl Fields<'_> {
    /// The options these fields set, every missing one from `base`.
    pub fn edit_options(&self, base: &EditOptions) -> Result<EditOptions, String> {
        Ok(EditOptions {
            mask_dilate: self.number("mask_dilate")?.unwrap_or(base.mask_dilate),
            mask_blur: self.number("mask_blur")?.or(base.mask_blur),
            negative_prompt: self.text("negative_prompt")?.or_else(|| base.negative_prompt.clone()),
            keep_background: self.boolean("keep_background")?.unwrap_or(base.keep_background),
        })
    }
}

/// A message naming command-line flags (`--mask-threshold`) rewritten with the JSON keys
/// (`mask_threshold`), for files whose keys the user wrote.
pub fn flags_as_keys(msg: &str, keys: &[&str]) -> String {
    let mut out = msg.to_string();
    // Longest first: `--mask-dilate` is not `--mask` followed by `-dilate`.
    let mut keys = keys.to_vec();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    for key in keys {
        out = out.replace(&format!("--{}", key.replace('_', "-")), key);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn numbers_text_and_messages() {
        let base = EditParams::default();
        let f = fields(r#"{"steps": "20", "guidance": 3, "seed": 18446744073709551615, "alignment": "notebook"}"#);
        let p = Fields(&f).edit_params(&base).unwrap();
        assert_eq!((p.steps, p.guidance, p.seed, p.alignment), (20, 3.0, u64::MAX, Alignment::Notebook));
        let err = |json: &str| Fields(&fields(json)).edit_params(&base).unwrap_err();
        assert_eq!(err(r#"{"mask_threshold": 1.5}"#), "--mask-threshold must be in [0, 1], got 1.5");
        assert_eq!(err(r#"{"steps": -1}"#), "`steps` must be a whole number >= 0, got -1");
        assert_eq!(err(r#"{"guidance": "lots"}"#), "`guidance` must be a number, got \"lots\"");
        assert_eq!(err(r#"{"alignment": 3}"#), "`alignment` must be text, got 3");
        assert_eq!(Fields(&fields(r#"{"x": 1}"#)).only(&["y"]).unwrap_err(), "unknown field `x` (known: y)");
        assert_eq!(flags_as_keys("--mask-threshold must be", PARAM_KEYS), "mask_threshold must be");
        assert_eq!(flags_as_keys("--mask-dilate and --mask", &["mask", "mask_dilate"]), "mask_dilate and mask");
    }
}
