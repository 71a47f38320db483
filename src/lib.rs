//! diffedit: DiffEdit (Couairon et al., ICLR 2023) on Stable Diffusion, in Rust on candle.
//!
//! The library is layered: `models` (UNet, VAE, CLIP text encoder and tokenizer, loading from
//! diffusers folders or the Hugging Face cache), `scheduler` (the DDIM schedule as pure
//! functions), `diffedit` (mask, inversion, masked decoding, the whole edit), and the I/O and
//! figure helpers used by the command-line tool in `cli`.

pub mod batch;
pub mod bench;
pub mod cli;
pub mod diffedit;
pub mod error;
pub mod eval;
pub mod image_io;
pub mod kernels;
pub mod memory;
pub mod models;
pub mod paste;
pub mod rng;
pub mod scheduler;
pub mod server;
pub mod synth;
pub mod trace;
pub mod viz;

pub use error::{Error, Result};
