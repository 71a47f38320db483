//! Attention `softmax(q k^T * scale) v` in blocks of query rows: each task computes the scores of
//! [`QB`] queries against all keys (a few hundred KiB, in cache), takes the softmax in place and
//! multiplies by `v`, so the `Lq x Lk` score matrix never exists as a whole (SD 1.5 at 64x64
//! latents: 4096 x 4096 per head).

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Query rows per task.
pub const QB: usize = 64;

struct AttentionOp {
    scale: f32,
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&d[a..b]),
        _ => candle_core::bail!("attention kernel: contiguous f32 expected"),
    }
}

#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "diffedit-attention"
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
        let (q, k, v) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (n, lq, d) = l1.shape().dims3()?;
        let (nk, lk, dk) = l2.shape().dims3()?;
        let (nv, lv, dv) = l3.shape().dims3()?;
        if nk != n || nv != n || dk != d || lv != lk {
            candle_core::bail!("attention kernel: shapes {:?} {:?} {:?}", l1.shape(), l2.shape(), l3.shape());
        }
        let mut out = vec![0f32; n * lq * dv];
        let blocks = lq.div_ceil(QB);
        let optr = OutPtr(out.as_mut_ptr());
        let scale = self.scale;
        (0..n * blocks).into_par_iter().for_each_init(
            || vec![0f32; QB * lk],
            |scores, t| {
                let optr = optr;
                let (h, blk) = (t / blocks, t % blocks);
                let q0 = blk * QB;
                let rows = QB.min(lq - q0);
                let qh = &q[(h * lq + q0) * d..];
                let kh = &k[h * lk * d..];
                let vh = &v[h * lk * dv..];
                unsafe {
                    // scores[rows, lk] = q_blk[rows, d] * k^T[d, lk]; the scale goes into the exp
                    gemm(
                        rows,
                        lk,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        lk as isize,
                        false,
                        qh.as_ptr(),
                        1,
                        d as isize,
                        kh.as_ptr(),
                        d as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                let mut inv = [0f32; QB];
                for (r, row) in scores.chunks_mut(lk).take(rows).enumerate() {
                    // The caller has checked AVX-512 (kernels::enabled).
                    inv[r] = 1.0 / unsafe { super::vmath::softmax_exp_row(row, scale) };
                }
                let o = unsafe { optr.0.add((h * lq + q0) * dv) };
                unsafe {
                    // out_blk[rows, dv] = p[rows, lk] * v[lk, dv]
                    gemm(
                        rows,
                        dv,
                        lk,
                        o,
                        1,
                        dv as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        lk as isize,
                        vh.as_ptr(),
                        1,
                        dv as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                    for (r, &f) in inv.iter().enumerate().take(rows) {
                        for c in 0..dv {
                            *o.add(r * dv + c) *= f;
                        }
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((n, lq, dv))))
    }
}

/// `softmax(q k^T * scale) v` for contiguous f32 `q [N, Lq, d]`, `k [N, Lk, d]`, `v [N, Lk, dv]`.
pub fn attention_f32(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &AttentionOp { scale: scale as f32 })
}
