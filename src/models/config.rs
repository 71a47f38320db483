//! Reading a component's `config.json` into its typed struct. Each model file defines its own
//! config struct (mirroring the upstream keys, `serde` defaults for absent ones); this module only
//! turns a JSON parse failure into an error naming the file and the offending key.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Reads and parses a JSON config file. On a type error the message names the key path, e.g.
/// `unet/config.json: block_out_channels[1]: invalid type: string "64", expected usize`.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_config(&text, path)
}

/// Parses JSON text as the config of `path` (used for errors only).
pub fn parse_config<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Error::config(path, format!("invalid JSON: {inner}"))
        } else if key == "." {
            Error::config(path, inner.to_string())
        } else {
            Error::config(path, format!("key `{key}`: {inner}"))
        }
    })
}

/// A value that is either one number for every block or one per block (diffusers'
/// `attention_head_dim`, `num_attention_heads`, `transformer_layers_per_block`, ...).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    One(T),
    Each(Vec<T>),
}

// By hand rather than `#[serde(untagged)]`, whose only error is "data did not match any variant
// of untagged enum PerBlock": this one says what was found and what was expected.
impl<'de, T: serde::de::DeserializeOwned> serde::Deserialize<'de> for PerBlock<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let value = serde_json::Value::deserialize(deserializer)?;
        let parsed = if value.is_array() {
            Vec::<T>::deserialize(value).map(PerBlock::Each)
        } else {
            T::deserialize(value).map(PerBlock::One)
        };
        parsed.map_err(|e| D::Error::custom(format!("{e} (one value, or a list with one per block)")))
    }
}

impl<T: Copy> PerBlock<T> {
    /// The value for block `i` (`n` blocks in all); a list of the wrong length is an error.
    pub fn get(&self, i: usize, n: usize, key: &str) -> std::result::Result<T, String> {
        match self {
            PerBlock::One(v) => Ok(*v),
            PerBlock::Each(vs) if vs.len() == n => Ok(vs[i]),
            PerBlock::Each(vs) => Err(format!("`{key}` has {} entries, expected one per block ({n})", vs.len())),
        }
    }
}
