//! DiffEdit: the automatic mask, DDIM inversion and masked DDIM decoding, as specified in
//! `FORMULAS.md` of the reference. The three samplers are pure functions over tensors, a
//! [`Denoiser`] and a [`DdimSchedule`](crate::scheduler::DdimSchedule); [`pipeline`] wires them to
//! a loaded model and does the bookkeeping (prompt encoding once, batching, tracing, progress).

pub mod cache;
pub mod decode;
pub mod engine;
pub mod experiments;
pub mod fields;
pub mod invert;
pub mod mask;
pub mod params;
pub mod pipeline;

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Result, Tensor};

pub use params::{Alignment, EditParams, ModelEditDefaults};
pub use pipeline::{DiffEdit, EditOutput, Noise, PromptEmbeddings, StageTimings};

/// A noise-prediction network: the UNet, or a stand-in in tests.
pub trait Denoiser {
    /// The model output for a batch `x` [B,C,h,w] at timestep `t` with text conditioning `emb`
    /// [B,77,D] (or [1,77,D], broadcast to the batch). The output is what the model predicts
    /// (epsilon or v, per the schedule's `prediction_type`).
    fn predict(&self, x: &Tensor, t: i64, emb: &Tensor) -> Result<Tensor>;
}

/// Wraps a [`Denoiser`] and counts the rows it evaluates (a batch of 2 counts 2), for the
/// summaries and for tests that check no work is repeated.
pub struct Counted<'a, D: Denoiser + ?Sized> {
    inner: &'a D,
    rows: AtomicUsize,
    calls: AtomicUsize,
}

impl<'a, D: Denoiser + ?Sized> Counted<'a, D> {
    pub fn new(inner: &'a D) -> Self {
        Self { inner, rows: AtomicUsize::new(0), calls: AtomicUsize::new(0) }
    }
    /// UNet evaluations so far, one per batch row.
    pub fn evaluations(&self) -> usize {
        self.rows.load(Ordering::Relaxed)
    }
    /// Forward calls so far (a batched call counts once).
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }
}

impl<D: Denoiser + ?Sized> Denoiser for Counted<'_, D> {
    fn predict(&self, x: &Tensor, t: i64, emb: &Tensor) -> Result<Tensor> {
        self.rows.fetch_add(x.dim(0)?, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.predict(x, t, emb)
    }
}

/// Classifier-free guidance: one batched call on `[uncond, cond]`, then
/// `e_u + g * (e_c - e_u)`. `x` is [1,C,h,w]; the embeddings are [1,77,D].
pub fn guided_prediction(
    den: &(impl Denoiser + ?Sized),
    x: &Tensor,
    t: i64,
    emb_uncond: &Tensor,
    emb_cond: &Tensor,
    guidance: f64,
) -> Result<Tensor> {
    let xs = Tensor::cat(&[x, x], 0)?;
    let embs = Tensor::cat(&[emb_uncond, emb_cond], 0)?;
    let out = den.predict(&xs, t, &embs)?;
    let e_u = out.narrow(0, 0, 1)?;
    let e_c = out.narrow(0, 1, 1)?;
    &e_u + ((e_c - &e_u)? * guidance)?
}

/// Which part of the work a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Prompts through the text encoder, the picture through the VAE encoder (one unit).
    Encode,
    /// The mask's UNet evaluations (one unit per row).
    Mask,
    /// DDIM inversion (one unit per step).
    Inversion,
    /// Masked DDIM decoding (one unit per step).
    Decoding,
    /// The VAE decoder (one unit).
    VaeDecode,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Encode => "encode",
            Stage::Mask => "mask",
            Stage::Inversion => "inversion",
            Stage::Decoding => "decoding",
            Stage::VaeDecode => "vae",
        }
    }

    /// Whether the stage is a loop of UNet evaluations (the stages worth a progress bar).
    pub fn is_unet_loop(self) -> bool {
        matches!(self, Stage::Mask | Stage::Inversion | Stage::Decoding)
    }
}

/// Receives progress from long computations, and may ask them to stop. The CLI draws bars; the
/// server streams them to the page; the library default is silent.
pub trait Progress {
    fn start(&self, _stage: Stage, _total: usize) {}
    fn advance(&self, _stage: Stage, _by: usize) {}
    fn finish(&self, _stage: Stage) {}
    /// Polled between UNet evaluations: `true` stops the computation with [`Error::Cancelled`]
    /// (crate::Error) within one step.
    fn cancelled(&self) -> bool {
        false
    }
}

/// The error a sampler returns when its [`Progress`] asks it to stop.
pub(crate) fn cancelled_error() -> candle_core::Error {
    candle_core::Error::Msg(CANCELLED.to_string())
}

/// The message of [`cancelled_error`], by which the pipeline recognises it.
pub(crate) const CANCELLED: &str = "cancelled";

/// Returns the cancellation error when `progress` asks to stop.
pub(crate) fn check_cancelled(progress: &dyn Progress) -> Result<()> {
    if progress.cancelled() {
        Err(cancelled_error())
    } else {
        Ok(())
    }
}

/// No progress output.
pub struct Silent;
impl Progress for Silent {}
