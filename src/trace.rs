//! The `--trace` file: an edit's intermediates as f32 tensors, named as in the reference fixtures.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::diffedit::EditOutput;
use crate::error::Result;
use crate::image_io::write_atomic;

fn f32_cpu(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.contiguous()?)
}

/// The trace tensors: `emb_target`, `emb_reference`, `emb_uncond` [1,77,D]; `latents` [1,4,h,w];
/// `mask_norm`, `mask` [1,1,h,w]; `inv_latents` [K+1,1,4,h,w]; `dec_latents` [S+1,1,4,h,w];
/// `decoded` [1,3,H,W].
pub fn trace_tensors(out: &EditOutput) -> Result<HashMap<String, Tensor>> {
    let mut m = HashMap::new();
    m.insert("emb_target".into(), f32_cpu(&out.embeddings.target)?);
    m.insert("emb_reference".into(), f32_cpu(&out.embeddings.reference)?);
    m.insert("emb_uncond".into(), f32_cpu(&out.embeddings.uncond)?);
    m.insert("latents".into(), f32_cpu(&out.latents)?);
    m.insert("mask_norm".into(), f32_cpu(&out.mask.normalized)?);
    m.insert("mask".into(), f32_cpu(&out.mask.mask)?);
    m.insert("inv_latents".into(), f32_cpu(&Tensor::stack(&out.inverted, 0)?)?);
    m.insert("dec_latents".into(), f32_cpu(&Tensor::stack(&out.decoded_latents, 0)?)?);
    m.insert("decoded".into(), f32_cpu(&out.decoded)?);
    Ok(m)
}

/// Writes the trace atomically.
pub fn write_trace(out: &EditOutput, path: &Path) -> Result<()> {
    let tensors = trace_tensors(out)?;
    write_atomic(path, |tmp| Ok(candle_core::safetensors::save(&tensors, tmp)?))
}
