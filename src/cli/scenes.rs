//! `diffedit scenes`: dumps synthetic training scenes for tools/train_tiny_sd.py.

use std::path::PathBuf;

use clap::Args;

use super::path_str;
use crate::error::{Error, Result};

#[derive(Args, Debug)]
pub struct ScenesArgs {
    /// Output folder (images/, masks/, scenes.jsonl).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Number of scenes.
    #[arg(long, default_value_t = 30000)]
    pub count: usize,
    /// Seed of the set (the held-out evaluation set has its own seed, never used for training).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Picture side in pixels (at least 16).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
}

pub fn run(args: &ScenesArgs) -> Result<()> {
    if args.size < 16 {
        return Err(Error::invalid(format!("--size must be at least 16, got {}", args.size)));
    }
    if args.seed == crate::synth::HELDOUT_SEED {
        return Err(Error::invalid("--seed is the held-out evaluation seed; pick another for training data"));
    }
    crate::synth::write_dataset(&args.out, args.count, args.seed, args.size).map_err(|e| Error::io(&args.out, e))?;
    eprintln!("wrote {} scenes to {}", args.count, path_str(&args.out));
    Ok(())
}
