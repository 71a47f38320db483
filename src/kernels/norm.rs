//! GroupNorm with the following SiLU fused in (one read for the statistics, one read and one
//! write for the normalised, activated output), parallel over (batch, group).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

struct GroupNormOp {
    groups: usize,
    eps: f64,
    silu: bool,
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&d[a..b]),
        _ => candle_core::bail!("group norm kernel: contiguous f32 expected"),
    }
}

/// Sum of a slice with 16 independent accumulators (vectorisable; the order differs from a
/// sequential sum only by rounding).
fn sum16(v: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut acc = [0f32; 16];
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..16 {
            acc[i] += f(c[i]);
        }
    }
    let mut s: f64 = acc.iter().map(|&a| a as f64).sum();
    for &x in rest {
        s += f(x) as f64;
    }
    s
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "diffedit-group-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1)?;
        let gamma = slice(s2, l2)?;
        let beta = slice(s3, l3)?;
        let dims = l1.shape().dims();
        if dims.len() < 2 {
            candle_core::bail!("group norm kernel: expected [B, C, ...]");
        }
        let c = dims[1];
        let hw: usize = dims[2..].iter().product();
        let g = self.groups;
        if !c.is_multiple_of(g) || gamma.len() != c || beta.len() != c {
            candle_core::bail!("group norm kernel: {c} channels, {g} groups");
        }
        let cpg = c / g;
        let group_len = cpg * hw;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(group_len).zip(x.par_chunks(group_len)).enumerate().for_each(|(i, (o, xs))| {
            let n = group_len as f64;
            let mean = sum16(xs, |v| v) / n;
            let mf = mean as f32;
            let var = sum16(xs, |v| (v - mf) * (v - mf)) / n;
            let rstd = 1.0 / (var + self.eps).sqrt();
            let c0 = (i % g) * cpg;
            for j in 0..cpg {
                let scale = (gamma[c0 + j] as f64 * rstd) as f32;
                let shift = (beta[c0 + j] as f64 - mean * gamma[c0 + j] as f64 * rstd) as f32;
                let src = &xs[j * hw..(j + 1) * hw];
                let dst = &mut o[j * hw..(j + 1) * hw];
                if self.silu {
                    // The caller has checked AVX-512 (kernels::enabled).
                    unsafe { super::vmath::affine_silu(dst, src, scale, shift) };
                } else {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = v * scale + shift;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

pub fn group_norm_f32(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(gamma, beta, &GroupNormOp { groups, eps, silu })
}
