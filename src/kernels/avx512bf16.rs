//! A bf16 GEMM on AVX-512 with the BF16 extension (`vdpbf16ps`), for CPUs that have it but no
//! tile units (AMD Zen 4 and later; Intel Cooper Lake): `C[M x N] += A[M x K] * B[K x N]` with
//! both operands rounded to bf16 and the sums in f32, the arithmetic of [`super::amx`] and of
//! PyTorch's bf16 autocast. One `vdpbf16ps` multiplies 16 pairs of bf16 by 16 pairs and adds each
//! pair's two products to one f32 lane: 64 flops where an f32 FMA does 32. On Zen 4 it runs at
//! about the FMA's rate, so bf16 products can go at twice their f32 pace there; the Intel Xeons
//! with AMX run it at half the FMA's rate (measured: `PROBE=peak` of `examples/kernel_probe.rs`),
//! where the tile units serve instead and this path only runs when forced, to test what a Zen 4 runs.
//!
//! The blocking is the f32 GEMM's ([`super::gemm`]): 12 x 32 register tiles (24 zmm of sums),
//! K in blocks of [`KC`], tasks of [`NC`] columns over rayon's pool. Both operands hold k in
//! pairs, one 32-bit word per pair (bf16 of k = 2q in the low half, k = 2q + 1 in the high half;
//! an odd K gets a zero partner):
//! - A ([`PackedAPairs`]): panels of [`MR`] rows; for each pair q, the MR words of its rows;
//! - B ([`PackedBPairs`], or a convolution's f32 im2col blocks converted as the GEMM goes):
//!   panels of [`NR`] columns; for each pair q, the NR words of its columns (two vectors).
//!
//! The micro-kernel broadcasts one row's word of A and multiplies it into B's two vectors.

use std::cell::RefCell;

use rayon::prelude::*;

use super::amx::{bf16, Aligned};
use super::gemm::{OutPtr, PackB};

/// Rows of a register tile (A, broadcast).
pub const MR: usize = 12;
/// Columns of a register tile (two vectors of 16 f32 sums); also the f32 packers' panel width.
pub const NR: usize = super::gemm::NR;
/// Most k in one K block (an even number: blocks start on a pair). A B micro-panel of KC x NR
/// bf16 is 20 KiB, which stays in L1 (32 KiB on Zen 4) beside an A panel while every A panel of a
/// task passes over it.
pub const KC: usize = 320;

/// Most k per block of [`gemm_serial_pairs`]: attention's B holds all of a task's 64 queries (two
/// panels) per pair, so a block of 128 k keeps it at 16 KiB, in L1 beside the A panel.
const SERIAL_KC: usize = 128;

/// The K block length for a product of depth `k`: K in equal blocks of at most [`KC`] (even), so
/// that no short last block costs a whole pass over C (K = 320: one block, not 256 + 64).
fn k_block(k: usize) -> usize {
    let kc = k.div_ceil(k.div_ceil(KC).max(1));
    kc + kc % 2
}
/// Columns per task.
pub const NC: usize = 256;
/// k converted from a packer's f32 block at a time (so the f32 chunk stays in L1).
const CHUNK: usize = 32;
/// How many pairs ahead the micro-kernel prefetches B (8 pairs: 2 KiB) and A (16 pairs: 768 B).
const B_AHEAD: usize = 8;
const A_AHEAD: usize = 16;

const _: () = assert!(KC.is_multiple_of(2) && CHUNK.is_multiple_of(2) && NC.is_multiple_of(NR) && NR == 32);

/// Whether this CPU has AVX-512 F, BW and BF16.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Two bf16 as one word: `lo` (k = 2q) in the low half.
#[inline(always)]
fn word(lo: f32, hi: f32) -> u32 {
    bf16(lo) as u32 | (bf16(hi) as u32) << 16
}

/// A in [`MR`]-row panels of bf16 pairs: word `(q, r)` of panel p is `(A[p*MR + r][2q],
/// A[p*MR + r][2q + 1])`; rows past M and the partner of an odd K's last k are zero.
pub struct PackedAPairs {
    data: Aligned<u32>,
    pub m: usize,
    pub k: usize,
    /// Pairs along K (`k.div_ceil(2)`).
    pairs: usize,
}

impl PackedAPairs {
    /// `a[i * rs + j * cs]` is `A[i][j]`. Needs [`available`].
    pub fn new(a: &[f32], m: usize, k: usize, rs: usize, cs: usize) -> Self {
        assert!(available(), "bf16 pairs need AVX512-BF16");
        let pairs = k.div_ceil(2);
        let panels = m.div_ceil(MR);
        let mut data = Aligned::zeroed(panels * pairs * MR);
        if pairs > 0 {
            data.par_chunks_mut(pairs * MR).enumerate().for_each(|(p, panel)| {
                let rows = MR.min(m - p * MR);
                let src = &a[p * MR * rs..];
                // SAFETY: `available()` holds (asserted above); the reads stay inside the rows x k
                // block `src` starts.
                #[cfg(target_arch = "x86_64")]
                if cs == 1 {
                    unsafe { pack_contiguous_lines(src, rows, k, rs, panel, MR) };
                    return;
                } else if rs == 1 {
                    unsafe { pack_strided_lines(src, rows, k, cs, panel, MR) };
                    return;
                }
                for r in 0..rows {
                    for q in 0..pairs {
                        let hi = if 2 * q + 1 < k { src[r * rs + (2 * q + 1) * cs] } else { 0.0 };
                        panel[q * MR + r] = word(src[r * rs + 2 * q * cs], hi);
                    }
                }
            });
        }
        Self { data, m, k, pairs }
    }

    /// Panel `p` from pair `q`.
    fn at(&self, p: usize, q: usize) -> *const u32 {
        self.data[(p * self.pairs + q) * MR..].as_ptr()
    }
}

/// B in [`NR`]-column panels of bf16 pairs: word `(q, c)` of panel j is `(B[2q][j*NR + c],
/// B[2q + 1][j*NR + c])`; columns past N and an odd K's last partner are zero.
pub struct PackedBPairs {
    data: Aligned<u32>,
    pub k: usize,
    pub n: usize,
    pairs: usize,
}

impl PackedBPairs {
    /// `b[kk * ks + nn * ns]` is `B[kk][nn]`. Needs [`available`].
    pub fn new(b: &[f32], k: usize, n: usize, ks: usize, ns: usize) -> Self {
        assert!(available(), "bf16 pairs need AVX512-BF16");
        let pairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = Aligned::zeroed(panels * pairs * NR);
        if pairs > 0 {
            data.par_chunks_mut(pairs * NR).enumerate().for_each(|(j, panel)| {
                let cols = NR.min(n - j * NR);
                let src = &b[j * NR * ns..];
                // SAFETY: as for PackedAPairs::new.
                #[cfg(target_arch = "x86_64")]
                if ks == 1 {
                    unsafe { pack_contiguous_lines(src, cols, k, ns, panel, NR) };
                    return;
                } else if ns == 1 {
                    unsafe { pack_strided_lines(src, cols, k, ks, panel, NR) };
                    return;
                }
                for c in 0..cols {
                    for q in 0..pairs {
                        let hi = if 2 * q + 1 < k { src[(2 * q + 1) * ks + c * ns] } else { 0.0 };
                        panel[q * NR + c] = word(src[2 * q * ks + c * ns], hi);
                    }
                }
            });
        }
        Self { data, k, n, pairs }
    }

    /// The whole of B, for [`gemm_serial_pairs`].
    pub fn view(&self) -> BView<'_> {
        BView { data: &self.data, pair_stride: NR, panel_stride: self.pairs * NR }
    }
}

/// Lines (rows of A, columns of B) that are contiguous along k (`src[l * ls + kk]`), `lines` of
/// them, into a panel of `width` words per pair: each line's k is converted 32 at a time into 16
/// words, which go down the panel one pair apart.
///
/// # Safety
/// AVX-512 F, BW and BF16 present; `src` holds the lines, `panel` `k.div_ceil(2) * width` words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_contiguous_lines(src: &[f32], lines: usize, k: usize, ls: usize, panel: &mut [u32], width: usize) {
    let mut words = [0u32; CHUNK / 2];
    for l in 0..lines {
        let line = &src[l * ls..l * ls + k];
        for c in 0..k.div_ceil(CHUNK) {
            let part = &line[c * CHUNK..line.len().min((c + 1) * CHUNK)];
            super::amx::convert_row(part, std::slice::from_raw_parts_mut(words.as_mut_ptr() as *mut u16, CHUNK));
            for (w, v) in words.iter().enumerate().take(part.len().div_ceil(2)) {
                panel[(c * CHUNK / 2 + w) * width + l] = *v;
            }
        }
    }
}

/// Lines that are strided along k and contiguous across lines (`src[kk * ks + l]`: the columns
/// of V^T, the rows of B stored row-major), `lines` <= 32 of them: each pair of k is two masked
/// loads, interleaved into one word per line.
///
/// # Safety
/// AVX-512 F, BW and BF16 present; `src` holds k rows of `lines` values at stride `ks`, `panel`
/// `k.div_ceil(2) * width` words, `width` >= `lines`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_strided_lines(src: &[f32], lines: usize, k: usize, ks: usize, panel: &mut [u32], width: usize) {
    use std::arch::x86_64::*;
    assert!(lines <= 32 && width >= lines);
    let mut words = [0u32; 32];
    for q in 0..k.div_ceil(2) {
        for half in 0..lines.div_ceil(16) {
            let n = (lines - half * 16).min(16);
            let m: __mmask16 = ((1u32 << n) - 1) as __mmask16;
            let row = |kk: usize| {
                if kk < k {
                    _mm512_maskz_loadu_ps(m, src.as_ptr().add(kk * ks + half * 16))
                } else {
                    _mm512_setzero_ps()
                }
            };
            super::amx::store_pairs(row(2 * q), row(2 * q + 1), words.as_mut_ptr().add(half * 16) as *mut u16);
        }
        panel[q * width..q * width + lines].copy_from_slice(&words[..lines]);
    }
}

/// Converts one chunk of an f32 block as the packers write it (`kk` <= [`CHUNK`] rows of k, panels
/// of NR columns, `buf[p * kk * NR + r * NR + c]`) to pairs `q0 ..` of a block whose panels hold
/// `block_pairs` pairs each (`dst[(p * block_pairs + q) * NR + c]`).
///
/// # Safety
/// AVX-512 F, BW and BF16 present; `src` holds the chunk of `nc` columns, `dst` the block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn chunk_to_pairs(src: &[f32], kk: usize, nc: usize, dst: &mut [u32], block_pairs: usize, q0: usize) {
    use std::arch::x86_64::*;
    let panels = nc.div_ceil(NR);
    assert!(kk <= CHUNK && src.len() >= panels * kk * NR);
    assert!(dst.len() >= ((panels - 1) * block_pairs + q0 + kk.div_ceil(2)) * NR);
    for p in 0..panels {
        let panel = src.as_ptr().add(p * kk * NR);
        let row = |r: usize, half: usize| {
            if r < kk {
                _mm512_loadu_ps(panel.add(r * NR + half * 16))
            } else {
                _mm512_setzero_ps()
            }
        };
        for t in 0..kk.div_ceil(2) {
            let d = dst.as_mut_ptr().add((p * block_pairs + q0 + t) * NR);
            super::amx::store_pairs(row(2 * t, 0), row(2 * t + 1, 0), d as *mut u16);
            super::amx::store_pairs(row(2 * t, 1), row(2 * t + 1, 1), d.add(16) as *mut u16);
        }
    }
}

/// Rows `0 .. rows` of a row-major f32 block (`rows` x `cols`, row stride `ld`, `cols` a multiple
/// of 16) as pairs of rows, in place at the block's start: word `(t, c)` at `t * cols + c` is
/// `(row 2t, row 2t + 1)` of column c (a zero partner past `rows`). Attention's probabilities,
/// keys down the rows, become the B of the product with V this way. Pair t overwrites bytes of
/// rows up to t only, which are read before.
///
/// # Safety
/// AVX-512 F, BW and BF16 present; `block` holds `rows` rows of `cols` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn rows_to_pairs_in_place(block: &mut [f32], rows: usize, cols: usize) {
    use std::arch::x86_64::*;
    assert!(cols.is_multiple_of(16) && block.len() >= rows * cols);
    let p = block.as_mut_ptr();
    for t in 0..rows.div_ceil(2) {
        for c in (0..cols).step_by(16) {
            let lo = _mm512_loadu_ps(p.add(2 * t * cols + c));
            let hi =
                if 2 * t + 1 < rows { _mm512_loadu_ps(p.add((2 * t + 1) * cols + c)) } else { _mm512_setzero_ps() };
            super::amx::store_pairs(lo, hi, (p as *mut u32).add(t * cols + c) as *mut u16);
        }
    }
}

/// Where a GEMM's B comes from.
pub enum BPairs<'a> {
    /// An f32 packer of [`super::gemm`] (a convolution's im2col), converted block by block.
    Pack(&'a dyn PackB),
    /// Packed beforehand.
    Packed(&'a PackedBPairs),
}

/// B as words already in pairs: word `(q, col)` at `data[(col / NR) * panel_stride + q *
/// pair_stride + col % NR]`.
#[derive(Clone, Copy)]
pub struct BView<'a> {
    pub data: &'a [u32],
    pub pair_stride: usize,
    pub panel_stride: usize,
}

impl<'a> BView<'a> {
    /// The view from column `n0` on (a multiple of NR).
    pub fn from_column(self, n0: usize) -> Self {
        assert!(n0.is_multiple_of(NR));
        Self { data: &self.data[(n0 / NR) * self.panel_stride..], ..self }
    }
}

/// `C_b += A * B_b` for every batch item b (C_b is `c[b * m * n ..]`, row-major `[M, N]`), both
/// operands in bf16, sums in f32; with `accumulate` false `C_b = A * B_b` (C's values unread).
/// Needs [`available`].
pub fn gemm_pairs(a: &PackedAPairs, bsrc: BPairs, batch: usize, n: usize, c: &mut [f32], accumulate: bool) {
    let (m, k) = (a.m, a.k);
    assert!(c.len() >= batch * m * n);
    assert!(available(), "the bf16 GEMM needs AVX512-BF16");
    if let BPairs::Packed(pb) = &bsrc {
        assert!(pb.k == k && pb.n == n && batch == 1, "B is {}x{}, the product needs {k}x{n}", pb.k, pb.n);
    }
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let n_tiles = n.div_ceil(NC);
    let m_panels = m.div_ceil(MR);
    // As the f32 GEMM: split M only when the column tiles are too few to go round, since every M
    // chunk converts its own copy of a packer's B.
    let want = match bsrc {
        BPairs::Pack(_) => 3 * threads,
        BPairs::Packed(_) => 8 * threads,
    };
    let (m_chunks, panels_per_chunk) = super::gemm::split_m(batch * n_tiles, m_panels, want);
    let out = OutPtr(c.as_mut_ptr());
    let (f_len, w_len) = match bsrc {
        BPairs::Pack(_) => (CHUNK * NC, KC / 2 * NC),
        BPairs::Packed(_) => (0, 0),
    };
    (0..batch * n_tiles * m_chunks).into_par_iter().for_each(|t| {
        with_scratch(f_len, w_len, |fbuf, wbuf| {
            let mc = t % m_chunks;
            let nt = (t / m_chunks) % n_tiles;
            let b = t / (m_chunks * n_tiles);
            let (p0, p1) = (mc * panels_per_chunk, ((mc + 1) * panels_per_chunk).min(m_panels));
            let (n0, nc) = (nt * NC, NC.min(n - nt * NC));
            let block = k_block(k);
            let mut k0 = 0;
            while k0 < k {
                let kc = block.min(k - k0);
                let block_pairs = kc.div_ceil(2);
                let view = match &bsrc {
                    BPairs::Pack(p) => {
                        for ch in (0..kc).step_by(CHUNK) {
                            let kk = CHUNK.min(kc - ch);
                            p.pack(b, k0 + ch, kk, n0, nc, fbuf);
                            // SAFETY: `available()` holds (asserted above).
                            #[cfg(target_arch = "x86_64")]
                            unsafe {
                                chunk_to_pairs(fbuf, kk, nc, wbuf, block_pairs, ch / 2)
                            };
                        }
                        BView { data: wbuf, pair_stride: NR, panel_stride: block_pairs * NR }
                    }
                    BPairs::Packed(pb) => {
                        let v = pb.view().from_column(n0);
                        BView { data: &v.data[k0 / 2 * NR..], ..v }
                    }
                };
                // SAFETY: tasks write disjoint tiles (batch item, column tile, panel range) of C.
                unsafe {
                    block_product(a, k0, kc, view, out.get().add(b * m * n + n0), n, nc, p0..p1, accumulate || k0 > 0)
                };
                k0 += kc;
            }
        })
    });
}

thread_local! {
    /// A thread's buffers for converting a packer's B, kept between calls: rayon's
    /// `for_each_init` makes (and zeroes) fresh ones for every split of the work.
    static SCRATCH: RefCell<(Vec<f32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `body` with this thread's scratch buffers of at least the given lengths (contents left
/// from earlier calls).
fn with_scratch<R>(f_len: usize, w_len: usize, body: impl FnOnce(&mut [f32], &mut [u32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let (f, w) = &mut *s;
            if f.len() < f_len {
                f.resize(f_len, 0.0);
            }
            if w.len() < w_len {
                w.resize(w_len, 0);
            }
            body(&mut f[..f_len], &mut w[..w_len])
        }
        // Re-entered (a kernel inside a kernel): buffers of its own.
        Err(_) => body(&mut vec![0.0; f_len], &mut vec![0; w_len]),
    })
}

/// `C = A * B` (`+=` with `accumulate`) for one C of `n` columns (row stride `ldc`) on the calling
/// thread: for attention's products, already inside a parallel task. Needs [`available`].
pub fn gemm_serial_pairs(a: &PackedAPairs, b: BView, n: usize, c: &mut [f32], ldc: usize, accumulate: bool) {
    let (m, k) = (a.m, a.k);
    assert!(available(), "the bf16 GEMM needs AVX512-BF16");
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(ldc >= n && c.len() >= (m - 1) * ldc + n);
    let last = (n.div_ceil(NR) - 1) * b.panel_stride + (k.div_ceil(2) - 1) * b.pair_stride + NR;
    assert!(b.data.len() >= last, "B holds {} words, the product reads {last}", b.data.len());
    let block = k_block(k).min(SERIAL_KC);
    let mut k0 = 0;
    while k0 < k {
        let kc = block.min(k - k0);
        let view = BView { data: &b.data[k0 / 2 * b.pair_stride..], ..b };
        // SAFETY: `c` holds the M x N product at stride ldc.
        unsafe { block_product(a, k0, kc, view, c.as_mut_ptr(), ldc, n, 0..m.div_ceil(MR), accumulate || k0 > 0) };
        k0 += kc;
    }
}

/// One K block (`k0 .. k0 + kc`; B's view starts at pair k0 / 2) of the A panels `panels` times
/// `nc` columns of B into C at `c` (row stride `ldc`).
///
/// # Safety
/// `c` valid for the panels' rows (up to M) x `nc` columns; no other thread writes them.
#[allow(clippy::too_many_arguments)]
unsafe fn block_product(
    a: &PackedAPairs,
    k0: usize,
    kc: usize,
    b: BView,
    c: *mut f32,
    ldc: usize,
    nc: usize,
    panels: std::ops::Range<usize>,
    add: bool,
) {
    let pairs = kc.div_ceil(2);
    for p in panels {
        let rows = MR.min(a.m - p * MR);
        let ap = a.at(p, k0 / 2);
        for j in 0..nc.div_ceil(NR) {
            let cols = NR.min(nc - j * NR);
            let bp = b.data[j * b.panel_stride..].as_ptr();
            #[cfg(target_arch = "x86_64")]
            {
                // A panel's last rows (M not a multiple of MR: attention's 40 channels per head, a
                // 3-channel output) take a kernel with fewer sums, not a whole panel's work.
                let (ldb, cp) = (b.pair_stride, c.add(p * MR * ldc + j * NR));
                match rows {
                    1..=4 => micro::<4>(pairs, ap, bp, ldb, cp, ldc, rows, cols, add),
                    5..=8 => micro::<8>(pairs, ap, bp, ldb, cp, ldc, rows, cols, add),
                    _ => micro::<MR>(pairs, ap, bp, ldb, cp, ldc, rows, cols, add),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (bp, rows, cols, ldc, add, ap, pairs);
                unreachable!("the bf16 GEMM runs on x86-64 only");
            }
        }
    }
}

/// One register tile: `C[rows x cols] += A panel (pairs x MR words, of which the first R rows are
/// used) * B (pairs rows of NR words, `ldb` words apart)`, or `=` without `add`; `rows` <= R.
///
/// # Safety
/// AVX-512 F and BF16 present; `ap` holds `pairs * MR` words, `bp` `pairs` rows of NR words `ldb`
/// apart, `c` is valid for `rows` rows of `ldc` stride with `cols` columns each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const R: usize>(
    pairs: usize,
    ap: *const u32,
    bp: *const u32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    add: bool,
) {
    use super::gemm::{prefetch, prefetch_tile, store_tile};
    use std::arch::x86_64::*;
    debug_assert!(rows <= R && R <= MR);
    let z = _mm512_setzero_ps();
    let mut acc = [[z; 2]; R];
    let (mut a, mut b) = (ap, bp);
    prefetch_tile(c, ldc, rows);
    for _ in 0..pairs {
        prefetch(b.wrapping_add(B_AHEAD * ldb) as *const f32);
        prefetch(b.wrapping_add(B_AHEAD * ldb + 16) as *const f32);
        prefetch(a.wrapping_add(A_AHEAD * MR) as *const f32);
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b as *const __m512i));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16) as *const __m512i));
        // Fully unrolled by the compiler: R is a constant (an index, not an iterator, so that it is).
        #[allow(clippy::needless_range_loop)]
        for r in 0..R {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r) as i32));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
        }
        a = a.add(MR);
        b = b.add(ldb);
    }
    store_tile!(acc, c, ldc, rows, cols, add);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::amx::f32_of;

    /// `c0 + A * B` with the operands rounded to bf16, summed in f64, and the sum of the products'
    /// magnitudes (the scale an f32 sum's rounding error grows with).
    fn reference(a: &[f32], b: &[f32], c0: &[f32], m: usize, k: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
        let r = |x: f32| f32_of(bf16(x)) as f64;
        (0..m * n)
            .map(|i| {
                let (row, col) = (i / n, i % n);
                let (mut sum, mut scale) = (c0[i] as f64, c0[i].abs() as f64);
                for j in 0..k {
                    let p = r(a[row * k + j]) * r(b[j * n + col]);
                    sum += p;
                    scale += p.abs();
                }
                (sum, scale)
            })
            .unzip()
    }

    fn check(what: &str, got: &[f32], want: &(Vec<f64>, Vec<f64>)) {
        for (i, g) in got.iter().enumerate() {
            let err = (*g as f64 - want.0[i]).abs();
            assert!(err <= 2e-6 * want.1[i].max(1e-30), "{what} at {i}: {g} vs {}", want.0[i]);
        }
    }

    use crate::kernels::DenseB as Dense;

    /// Every B source and every packing path against the rounded operands summed in f64, on
    /// shapes with partial register tiles in M and N, odd K, several K blocks (equal ones, and an
    /// odd last one: 641 = 214 + 214 + 213) and column tiles, a batch, a prefilled C and an
    /// overwritten one.
    #[test]
    fn products_match_the_rounded_operands() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for &(m, k, n, batch) in &[
            (1, 1, 1, 1),
            (12, 2, 32, 1),
            (13, 45, 33, 2),
            (25, 600, 300, 1),
            (7, 257, 70, 3),
            (40, 1100, 520, 1),
            (3, 31, 17, 1),
            (5, 641, 40, 2),
        ] {
            let a = crate::kernels::test_matrix(m * k, 1 + m as u64);
            let b = crate::kernels::test_matrix(batch * k * n, 7 + n as u64);
            let c0 = crate::kernels::test_matrix(batch * m * n, 11);
            let shape = (m, k, n, batch);
            let pa = PackedAPairs::new(&a, m, k, k, 1);
            // A by columns (a[i + j * m]: strided along k, as V^T in attention).
            let at: Vec<f32> = (0..m * k).map(|i| a[(i % m) * k + i / m]).collect();
            let pa_t = PackedAPairs::new(&at, m, k, 1, m);
            let mut c = c0.clone();
            gemm_pairs(&pa, BPairs::Pack(&Dense(&b, k, n)), batch, n, &mut c, true);
            for i in 0..batch {
                let want = reference(&a, &b[i * k * n..(i + 1) * k * n], &c0[i * m * n..(i + 1) * m * n], m, k, n);
                check(&format!("packer {shape:?} item {i}"), &c[i * m * n..(i + 1) * m * n], &want);
            }
            let want = reference(&a, &b[..k * n], &c0[..m * n], m, k, n);
            let pb = PackedBPairs::new(&b[..k * n], k, n, n, 1);
            for (name, pa) in [("A by rows", &pa), ("A by columns", &pa_t)] {
                let mut c = c0[..m * n].to_vec();
                gemm_pairs(pa, BPairs::Packed(&pb), 1, n, &mut c, true);
                check(&format!("packed B, {name} {shape:?}"), &c, &want);
            }
            // B stored by columns (a weight matrix [N, K]).
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let pb_t = PackedBPairs::new(&bt, k, n, 1, k);
            let mut c = c0[..m * n].to_vec();
            gemm_pairs(&pa, BPairs::Packed(&pb_t), 1, n, &mut c, true);
            check(&format!("B by columns {shape:?}"), &c, &want);
            // Overwriting (C's old values unread: NaN must not show) and the serial product.
            let zero = reference(&a, &b[..k * n], &vec![0.0; m * n], m, k, n);
            let mut c = vec![f32::NAN; m * n];
            gemm_pairs(&pa, BPairs::Packed(&pb), 1, n, &mut c, false);
            check(&format!("overwriting {shape:?}"), &c, &zero);
            let ldc = n + 5;
            let mut c = vec![f32::NAN; (m - 1) * ldc + n];
            gemm_serial_pairs(&pa, pb.view(), n, &mut c, ldc, false);
            let rows: Vec<f32> = (0..m * n).map(|i| c[(i / n) * ldc + i % n]).collect();
            check(&format!("serial {shape:?}"), &rows, &zero);
        }
    }

    /// Pairs of rows in place, as attention's probabilities become B: against packing the same
    /// block as a row-major B.
    #[test]
    fn rows_to_pairs_in_place_matches_packing() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        for (rows, cols) in [(1, 16), (7, 64), (300, 64), (301, 32)] {
            let block = crate::kernels::test_matrix(rows * cols, 5);
            let mut in_place = block.clone();
            // SAFETY: `available()` holds.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                rows_to_pairs_in_place(&mut in_place, rows, cols)
            };
            let packed = PackedBPairs::new(&block, rows, cols, cols, 1);
            let view = packed.view();
            for t in 0..rows.div_ceil(2) {
                for c in 0..cols {
                    let got = in_place[t * cols + c].to_bits();
                    let want = view.data[(c / NR) * view.panel_stride + t * NR + c % NR];
                    assert_eq!(got, want, "{rows}x{cols}: pair {t}, column {c}");
                }
            }
        }
    }
}
