//! Attention `softmax(q k^T * scale) v` in blocks of query rows, so the `Lq x Lk` score matrix
//! never exists as a whole (SD 1.5 at 64x64 latents: 4096 x 4096 per head).
//!
//! f32 ([`attention_f32`]): each task takes [`QB`] queries and keeps their scores transposed,
//! `S^T = K Q^T` (keys down the rows, one query per column, a few hundred KiB, in cache), so that
//! both products run on the AVX-512 GEMM of [`super::gemm`] with their big operand packed once per
//! head: K for the scores, V^T for `out^T = V^T P^T`, whose B is the probabilities' rows read
//! where the softmax left them (`BSrc::InPlace`, no packing). Both products write their output
//! rather than add to it, so neither buffer is zeroed first. The softmax runs down the columns.
//!
//! bf16 ([`attention_bf16`]): the same blocks with bf16 operands, on the tile units (AMX) or on
//! AVX512-BF16 dot products.

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{gemm_serial, BSrc, OutPtr, PackB, PackedA, NR};

/// Query rows per task (a multiple of the GEMM's column panel).
pub const QB: usize = 64;

const _: () = assert!(QB.is_multiple_of(NR));

struct AttentionOp {
    scale: f32,
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((a, b))) => Ok(&d[a..b]),
        _ => candle_core::bail!("attention kernel: contiguous f32 expected"),
    }
}

/// The operands of an attention op, checked: `q [N, Lq, d]`, `k [N, Lk, d]`, `v [N, Lk, dv]`.
struct Operands<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    n: usize,
    lq: usize,
    lk: usize,
    d: usize,
    dv: usize,
}

fn operands<'a>(
    q: (&'a CpuStorage, &Layout),
    k: (&'a CpuStorage, &Layout),
    v: (&'a CpuStorage, &Layout),
) -> Result<Operands<'a>> {
    let (n, lq, d) = q.1.shape().dims3()?;
    let (nk, lk, dk) = k.1.shape().dims3()?;
    let (nv, lv, dv) = v.1.shape().dims3()?;
    if nk != n || nv != n || dk != d || lv != lk {
        candle_core::bail!("attention kernel: shapes {:?} {:?} {:?}", q.1.shape(), k.1.shape(), v.1.shape());
    }
    Ok(Operands { q: slice(q.0, q.1)?, k: slice(k.0, k.1)?, v: slice(v.0, v.1)?, n, lq, lk, d, dv })
}

/// B = Q_blk^T for the scores: `B[k][j] = q[j][k]` for the block's `rows` queries (zero past them).
struct QueriesT<'a> {
    q: &'a [f32],
    rows: usize,
    d: usize,
}

impl PackB for QueriesT<'_> {
    fn pack(&self, _b: usize, k0: usize, kc: usize, n0: usize, nc: usize, buf: &mut [f32]) {
        for p in 0..nc.div_ceil(NR) {
            for kk in 0..kc {
                let dst = &mut buf[p * kc * NR + kk * NR..][..NR];
                for (l, v) in dst.iter_mut().enumerate() {
                    let j = n0 + p * NR + l;
                    *v = if j < self.rows && p * NR + l < nc { self.q[j * self.d + k0 + kk] } else { 0.0 };
                }
            }
        }
    }
}

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
        let Operands { q, k, v, n, lq, lk, d, dv } = operands((s1, l1), (s2, l2), (s3, l3))?;
        let mut out = vec![0f32; n * lq * dv];
        if n == 0 || lq == 0 || lk == 0 || d == 0 || dv == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((n, lq, dv))));
        }
        // Per head: K as the scores' A, V^T as the output's A.
        let packed: Vec<(PackedA, PackedA)> = (0..n)
            .into_par_iter()
            .map(|h| {
                (
                    PackedA::new(&k[h * lk * d..(h + 1) * lk * d], lk, d, d, 1),
                    PackedA::new(&v[h * lk * dv..(h + 1) * lk * dv], dv, lk, 1, dv),
                )
            })
            .collect();
        let blocks = lq.div_ceil(QB);
        let optr = OutPtr(out.as_mut_ptr());
        let scale = self.scale;
        (0..n * blocks).into_par_iter().for_each_init(
            || (vec![0f32; lk * QB], vec![0f32; dv * QB], Vec::new()),
            |(scores, acc, buf), t| {
                let (h, blk) = (t / blocks, t % blocks);
                let q0 = blk * QB;
                let rows = QB.min(lq - q0);
                let (kp, vtp) = &packed[h];
                let qt = QueriesT { q: &q[(h * lq + q0) * d..], rows, d };
                gemm_serial(kp, BSrc::Pack(&qt), QB, scores, buf, false);
                let mut sums = [0f32; QB];
                // SAFETY: the caller has checked AVX-512 (kernels::enabled).
                unsafe { super::vmath::softmax_exp_columns(scores, lk, QB, scale, &mut sums) };
                gemm_serial(vtp, BSrc::InPlace { data: scores, ldb: QB }, QB, acc, buf, false);
                for r in 0..rows {
                    let inv = 1.0 / sums[r];
                    for c in 0..dv {
                        // SAFETY: row q0 + r of head h, disjoint between tasks.
                        unsafe { *optr.get().add((h * lq + q0 + r) * dv + c) = acc[c * QB + r] * inv };
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((n, lq, dv))))
    }
}

/// The same attention with the two products in bf16 on the tile units ([`super::amx`]): per head,
/// q, k^T and v are packed into tiles once; per block of 32 queries the scores come out of the
/// tiles in f32, the softmax runs in f32, and the probabilities go back in as bf16 for the
/// product with v (PyTorch's bf16 autocast rounds them the same way).
struct AttentionBf16Op {
    scale: f32,
}

impl CustomOp3 for AttentionBf16Op {
    fn name(&self) -> &'static str {
        "diffedit-attention-bf16"
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
        use super::amx::{self, CTiles, PackedA16, PackedB16, TILE, TK, TM};
        let Operands { q, k, v, n, lq, lk, d, dv } = operands((s1, l1), (s2, l2), (s3, l3))?;
        if !amx::available() {
            candle_core::bail!("attention kernel: bf16 products need a CPU with AMX");
        }
        let mut out = vec![0f32; n * lq * dv];
        if n == 0 || lq == 0 || lk == 0 || d == 0 || dv == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((n, lq, dv))));
        }
        // Per head: q as A panels, k^T and v as B tiles.
        let packed: Vec<(PackedA16, PackedB16, PackedB16)> = (0..n)
            .into_par_iter()
            .map(|h| {
                (
                    PackedA16::new(&q[h * lq * d..(h + 1) * lq * d], lq, d, d, 1),
                    PackedB16::new(&k[h * lk * d..(h + 1) * lk * d], d, lk, 1, d),
                    PackedB16::new(&v[h * lk * dv..(h + 1) * lk * dv], lk, dv, dv, 1),
                )
            })
            .collect();
        let block = 2 * TM;
        let blocks = lq.div_ceil(block);
        let (lk_pad, dv_pad) = (lk.div_ceil(block) * block, dv.div_ceil(block) * block);
        let (d_chunks, k_chunks) = (d.div_ceil(TK), lk.div_ceil(TK));
        let optr = OutPtr(out.as_mut_ptr());
        let scale = self.scale;
        (0..n * blocks).into_par_iter().for_each(|t| {
            amx::with_scratch(block * lk_pad, 2 * k_chunks * TILE, block * dv_pad, |scores, probs, acc| {
                let (h, blk) = (t / blocks, t % blocks);
                let rows = block.min(lq - blk * block);
                let (qp, kp, vp) = &packed[h];
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    // scores[32, lk] = q_blk k^T (queries past lq are zero rows of the panels).
                    for jj in 0..lk_pad / block {
                        let c = CTiles::row_major(scores.as_mut_ptr().add(jj * block), lk_pad);
                        amx::block_32x32(
                            qp.at(2 * blk, 0),
                            qp.at(2 * blk + 1, 0),
                            kp.at(2 * jj, 0),
                            kp.at(2 * jj + 1, 0),
                            d_chunks,
                            None,
                            c,
                        );
                    }
                    let mut inv = [0f32; 32];
                    for r in 0..block {
                        let row = &mut scores[r * lk_pad..(r + 1) * lk_pad];
                        if r < rows {
                            inv[r] = 1.0 / super::vmath::softmax_exp_row(&mut row[..lk], scale);
                        } else {
                            row[..lk].fill(0.0);
                        }
                        for c in 0..k_chunks {
                            let len = TK.min(lk - c * TK);
                            let dst = &mut probs[((r / TM) * k_chunks + c) * TILE + (r % TM) * TK..][..TK];
                            amx::convert_row(&row[c * TK..c * TK + len], dst);
                        }
                    }
                    // out_blk[32, dv] = p v
                    for jj in 0..dv_pad / block {
                        let c = CTiles::row_major(acc.as_mut_ptr().add(jj * block), dv_pad);
                        let (p0, p1) = (probs.as_ptr(), probs.as_ptr().add(k_chunks * TILE));
                        amx::block_32x32(p0, p1, vp.at(2 * jj, 0), vp.at(2 * jj + 1, 0), k_chunks, None, c);
                    }
                    let o = optr.get().add((h * lq + blk * block) * dv);
                    for r in 0..rows {
                        for c in 0..dv {
                            *o.add(r * dv + c) = acc[r * dv_pad + c] * inv[r];
                        }
                    }
                }
            })
        });
        Ok((CpuStorage::F32(out), Shape::from((n, lq, dv))))
    }
}

/// The same attention with the two products on AVX512-BF16 dot products ([`super::avx512bf16`]),
/// laid out as the f32 op: per head, K and V^T are packed once as A (bf16 pairs) and Q^T as B; per
/// block of [`QB`] queries the scores come out transposed in f32, the softmax runs down their
/// columns in f32, and the unnormalised probabilities become bf16 pairs in place, the B of
/// `out^T = V^T P^T` (PyTorch's bf16 autocast rounds them to bf16 too).
struct AttentionPairsOp {
    scale: f32,
}

impl CustomOp3 for AttentionPairsOp {
    fn name(&self) -> &'static str {
        "diffedit-attention-avx512bf16"
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
        use super::avx512bf16::{self, gemm_serial_pairs, BView, PackedAPairs, PackedBPairs, NR};
        let Operands { q, k, v, n, lq, lk, d, dv } = operands((s1, l1), (s2, l2), (s3, l3))?;
        if !avx512bf16::available() {
            candle_core::bail!("attention kernel: bf16 products need a CPU with AVX512-BF16");
        }
        let mut out = vec![0f32; n * lq * dv];
        if n == 0 || lq == 0 || lk == 0 || d == 0 || dv == 0 {
            return Ok((CpuStorage::F32(out), Shape::from((n, lq, dv))));
        }
        // Per head: K (the scores' A), Q^T (their B), V^T (the output's A).
        let packed: Vec<(PackedAPairs, PackedBPairs, PackedAPairs)> = (0..n)
            .into_par_iter()
            .map(|h| {
                (
                    PackedAPairs::new(&k[h * lk * d..(h + 1) * lk * d], lk, d, d, 1),
                    PackedBPairs::new(&q[h * lq * d..(h + 1) * lq * d], d, lq, 1, d),
                    PackedAPairs::new(&v[h * lk * dv..(h + 1) * lk * dv], dv, lk, 1, dv),
                )
            })
            .collect();
        let blocks = lq.div_ceil(QB);
        let optr = OutPtr(out.as_mut_ptr());
        let scale = self.scale;
        (0..n * blocks).into_par_iter().for_each_init(
            || (vec![0f32; lk * QB], vec![0f32; dv * QB]),
            |(scores, acc), t| {
                let (h, blk) = (t / blocks, t % blocks);
                let q0 = blk * QB;
                let rows = QB.min(lq - q0);
                let (kp, qtp, vtp) = &packed[h];
                // S^T[lk, rows] = K Q_blk^T, one query per column.
                gemm_serial_pairs(kp, qtp.view().from_column(q0), rows, scores, QB, false);
                if rows < QB {
                    // The columns past the last query hold an earlier block's words: zero them.
                    for row in scores.chunks_mut(QB) {
                        row[rows..].fill(0.0);
                    }
                }
                let mut sums = [0f32; QB];
                // SAFETY: AVX512-BF16 (and so AVX-512 F and BW) checked above; `scores` holds
                // lk x QB values.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    super::vmath::softmax_exp_columns(scores, lk, QB, scale, &mut sums);
                    avx512bf16::rows_to_pairs_in_place(scores, lk, QB);
                }
                // SAFETY: the first lk.div_ceil(2) * QB values are now words of bf16 pairs.
                let words = unsafe { std::slice::from_raw_parts(scores.as_ptr() as *const u32, lk.div_ceil(2) * QB) };
                let p = BView { data: words, pair_stride: QB, panel_stride: NR };
                gemm_serial_pairs(vtp, p, rows, acc, QB, false);
                for r in 0..rows {
                    let inv = 1.0 / sums[r];
                    for c in 0..dv {
                        // SAFETY: row q0 + r of head h, disjoint between tasks.
                        unsafe { *optr.get().add((h * lq + q0 + r) * dv + c) = acc[c * QB + r] * inv };
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from((n, lq, dv))))
    }
}

/// [`attention_f32`] with bf16 products on `isa`, which must be supported here
/// ([`super::Bf16Isa::supported`]).
pub fn attention_bf16(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, isa: super::Bf16Isa) -> Result<Tensor> {
    let (q, k, v, scale) = (q.contiguous()?, k.contiguous()?, v.contiguous()?, scale as f32);
    match isa {
        super::Bf16Isa::Amx => q.apply_op3_no_bwd(&k, &v, &AttentionBf16Op { scale }),
        super::Bf16Isa::Avx512Bf16 => q.apply_op3_no_bwd(&k, &v, &AttentionPairsOp { scale }),
    }
}

/// `softmax(q k^T * scale) v` for contiguous f32 `q [N, Lq, d]`, `k [N, Lk, d]`, `v [N, Lk, dv]`.
pub fn attention_f32(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &AttentionOp { scale: scale as f32 })
}
