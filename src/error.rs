//! One error type for the library. Every variant names the thing that is wrong (a file, a
//! tensor, a config key, a parameter) so the CLI can print it as is.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A `config.json` (or other JSON file) is missing a key, has a value of the wrong type, or
    /// describes something we do not support.
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    /// A weight is missing, has the wrong shape or dtype, or its file is not valid safetensors.
    #[error("{}: {msg}", path.display())]
    Weights { path: PathBuf, msg: String },
    /// A model folder or hub repo lacks a component or file.
    #[error("{0}")]
    Model(String),
    /// A user-supplied parameter is out of range or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// An input image cannot be used.
    #[error("{}: {msg}", path.display())]
    Image { path: PathBuf, msg: String },
    /// The computation was stopped on request (a cancelled job).
    #[error("cancelled")]
    Cancelled,
    /// A cache-only pipeline met a stage whose result is not cached.
    #[error("not cached")]
    NotCached,
    /// Errors raised inside candle's tensor operations. Weight errors raised through our
    /// `VarBuilder` backend also arrive here, already naming file and tensor.
    #[error("{0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config { path: path.into(), msg: msg.into() }
    }
    pub fn weights(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Weights { path: path.into(), msg: msg.into() }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}
