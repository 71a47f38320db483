//! A small f32 GEMM for x86-64 with AVX-512: `C[M x N] += A[M x K] * B[K x N]` with C row-major
//! and N the contiguous (vectorised) direction, which is the layout of an NCHW convolution's
//! output (`[C_out, H*W]`). B is never materialised: a caller-supplied packer writes each
//! `KC x NC` block straight into the micro-kernel's panel layout, so a convolution's im2col
//! happens block by block in cache instead of as one huge matrix.
//!
//! Blocking: 12 x 32 register tiles (24 zmm accumulators), K blocks of [`KC`] so a B micro-panel
//! (KC x 32 floats, 32 KiB) stays in L1, N tiles of [`NC`] columns per task; tasks (N tiles x
//! M chunks x batch items) are spread over rayon's pool.

use rayon::prelude::*;

/// Rows of a register tile (broadcast operand, A).
pub const MR: usize = 12;
/// Columns of a register tile (two zmm vectors of B / C).
pub const NR: usize = 32;
/// Depth of one K block.
pub const KC: usize = 256;
/// Columns per task.
pub const NC: usize = 256;
/// How many K steps ahead the micro-kernels prefetch their B micro-panel (8 steps: 1 KiB) and,
/// where packed, their A panel (16 steps: 768 bytes). The hardware prefetchers of the Intel Xeon
/// these were measured on leave the kernel waiting on L2 without them: convolutions ran 8-12%
/// faster with both and the C prefetch, a whole SD UNet forward 7% (BENCHMARKS.md, 2026-12-01).
const B_AHEAD: usize = 8;
const A_AHEAD: usize = 16;

/// Whether the AVX-512 kernels can run on this CPU.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A packed in MR-row panels: panel p holds, for every k, the MR values `A[p*MR + r][k]`
/// (rows past M are zero), so the kernel reads it sequentially.
pub struct PackedA {
    data: Vec<f32>,
    pub m: usize,
    pub k: usize,
}

impl PackedA {
    /// `a[i * rs + j * cs]` is `A[i][j]`.
    pub fn new(a: &[f32], m: usize, k: usize, rs: usize, cs: usize) -> Self {
        let panels = m.div_ceil(MR);
        let mut data = vec![0f32; panels * k * MR];
        data.par_chunks_mut(k * MR).enumerate().for_each(|(p, panel)| {
            for r in 0..MR.min(m - p * MR) {
                let row = (p * MR + r) * rs;
                for j in 0..k {
                    panel[j * MR + r] = a[row + j * cs];
                }
            }
        });
        Self { data, m, k }
    }

    fn panel(&self, p: usize, k0: usize) -> &[f32] {
        &self.data[p * self.k * MR + k0 * MR..]
    }
}

/// Writes the block `B[k0 .. k0+kc][n0 .. n0+nc]` of batch item `b` into `buf` as NR-column
/// panels: `buf[(c / NR) * kc * NR + kk * NR + c % NR] = B[k0 + kk][n0 + c]`, zero past N.
pub trait PackB: Sync {
    fn pack(&self, b: usize, k0: usize, kc: usize, n0: usize, nc: usize, buf: &mut [f32]);
}

/// B packed once (a layer's constant weights): panel j holds, for every k, the NR values
/// `B[k][j*NR + c]` (zero past N), so any `kc x NR` micro-panel is a contiguous slice.
pub struct PackedB {
    data: Vec<f32>,
    pub k: usize,
    pub n: usize,
}

impl PackedB {
    /// `b[kk * ks + nn * ns]` is `B[kk][nn]`.
    pub fn new(b: &[f32], k: usize, n: usize, ks: usize, ns: usize) -> Self {
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        data.par_chunks_mut(k * NR).enumerate().for_each(|(j, panel)| {
            for c in 0..NR.min(n - j * NR) {
                let col = (j * NR + c) * ns;
                for kk in 0..k {
                    panel[kk * NR + c] = b[col + kk * ks];
                }
            }
        });
        Self { data, k, n }
    }
}

/// Where the GEMM's B comes from.
pub enum BSrc<'a> {
    /// Packed block by block as the GEMM goes (convolution inputs).
    Pack(&'a dyn PackB),
    /// Packed beforehand (weights).
    Packed(&'a PackedB),
    /// Read where it lies: row-major `[K, N]` with rows `ldb` apart, `ldb` a multiple of [`NR`]
    /// and at least N rounded up to it (the kernel reads whole panels; the columns past N only
    /// feed sums that are never stored). Attention's probabilities, already laid out this way.
    InPlace { data: &'a [f32], ldb: usize },
}

/// Shares the output between tasks that write disjoint tiles of it (every GEMM here, and
/// attention's heads).
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer. Tasks call this rather than read the field, so that their closures capture the
    /// Send + Sync wrapper and not the bare pointer inside it.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// How many ranges to split M into, and how many of `m_units` (register panels, or pair rows)
/// each range gets: M is split only when `col_tasks` (batch items x column tiles) are fewer than
/// `want` tasks, since a range that packs B itself repeats that work.
pub(crate) fn split_m(col_tasks: usize, m_units: usize, want: usize) -> (usize, usize) {
    let chunks = if col_tasks >= want { 1 } else { want.div_ceil(col_tasks).min(m_units) };
    let per_chunk = m_units.div_ceil(chunks);
    (m_units.div_ceil(per_chunk), per_chunk)
}

/// `C_b += A * B_b` for every batch item b; C_b is `c[b * m * n ..]`, row-major `[M, N]`.
pub fn gemm_packed(a: &PackedA, bsrc: BSrc, batch: usize, n: usize, c: &mut [f32]) {
    let (m, k) = (a.m, a.k);
    assert!(c.len() >= batch * m * n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let n_tiles = n.div_ceil(NC);
    let m_panels = m.div_ceil(MR);
    // Split M only when there are too few column tiles to keep every thread busy: each M chunk
    // packs its own copy of B (prepacked B costs nothing to share, so split more freely).
    let want = match bsrc {
        BSrc::Pack(_) => 3 * threads,
        BSrc::Packed(_) | BSrc::InPlace { .. } => 8 * threads,
    };
    let (m_chunks, panels_per_chunk) = split_m(batch * n_tiles, m_panels, want);
    let out = OutPtr(c.as_mut_ptr());
    let tasks = batch * n_tiles * m_chunks;
    let buf_len = if matches!(bsrc, BSrc::Pack(_)) { KC * NC } else { 0 };
    (0..tasks).into_par_iter().for_each_init(
        || vec![0f32; buf_len],
        |buf, t| {
            let mc = t % m_chunks;
            let nt = (t / m_chunks) % n_tiles;
            let b = t / (m_chunks * n_tiles);
            let p0 = mc * panels_per_chunk;
            let p1 = (p0 + panels_per_chunk).min(m_panels);
            // SAFETY: tasks write disjoint tiles (batch item, column tile, panel range) of C.
            unsafe { tile_task(a, &bsrc, b, out.get().add(b * m * n), n, nt * NC, p0..p1, buf, true) };
        },
    );
}

/// `C_0 += A * B_0` (one batch item) on the calling thread, for products too small to be worth
/// spreading, or already inside a parallel task (attention's blocks). With `accumulate` false,
/// `C_0 = A * B_0`: C's contents are never read, so it needs no zeroing first.
pub fn gemm_serial(a: &PackedA, bsrc: BSrc, n: usize, c: &mut [f32], buf: &mut Vec<f32>, accumulate: bool) {
    assert!(c.len() >= a.m * n);
    if let BSrc::InPlace { data, ldb } = bsrc {
        assert!(
            ldb.is_multiple_of(NR) && ldb >= n.div_ceil(NR) * NR && data.len() >= (a.k - 1) * ldb + n.div_ceil(NR) * NR
        );
    }
    if a.m == 0 || n == 0 || a.k == 0 {
        return;
    }
    if matches!(bsrc, BSrc::Pack(_)) && buf.len() < KC * NC {
        buf.resize(KC * NC, 0.0);
    }
    for n0 in (0..n).step_by(NC) {
        // SAFETY: `c` holds the whole M x N product.
        unsafe { tile_task(a, &bsrc, 0, c.as_mut_ptr(), n, n0, 0..a.m.div_ceil(MR), buf, accumulate) };
    }
}

/// Columns per task of [`gemm_rows`]: a K block of B this wide (256 x 1024 floats, 1 MiB) stays
/// in L2 while every A panel of the task passes over it.
const NC_ROWS: usize = 1024;

/// `C += A * B` with A row-major in place (`a[i * rs + j]` is `A[i][j]`, a linear layer's
/// activations) and B packed beforehand (its weights). The kernel broadcasts A straight from its
/// rows: packing A, as [`gemm_packed`] needs, would read and write the whole activation once more
/// per call, which costs a quarter of a 4096 x 1280 -> 320 product.
pub fn gemm_rows(a: &[f32], m: usize, k: usize, rs: usize, b: &PackedB, c: &mut [f32]) {
    let n = b.n;
    assert!(b.k == k && c.len() >= m * n && rs >= k);
    assert!(m == 0 || a.len() >= (m - 1) * rs + k);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let want = 8 * threads;
    // Tasks are (M chunk x N chunk). Each task streams its N chunk of B (the weights) through
    // L2 once per K block for all its A panels, so an M chunk keeps at least MIN_PANELS panels
    // where M allows it, and the tasks a short M (77 text tokens) cannot fill come from cutting
    // N finer: split over M alone, each weight was read for 12 rows and the product waited on L3.
    const MIN_PANELS: usize = 8;
    let (m_panels, n_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let n_min = n.div_ceil(NC_ROWS);
    let m_chunks = want.div_ceil(n_min).min((m_panels / MIN_PANELS).max(1));
    let panels_per_m = m_panels.div_ceil(m_chunks);
    let m_chunks = m_panels.div_ceil(panels_per_m);
    let n_chunks = want.div_ceil(m_chunks).max(n_min).min(n_panels);
    let panels_per_n = n_panels.div_ceil(n_chunks);
    let n_chunks = n_panels.div_ceil(panels_per_n);
    let out = OutPtr(c.as_mut_ptr());
    (0..m_chunks * n_chunks).into_par_iter().for_each(|t| {
        let (mc, nch) = (t % m_chunks, t / m_chunks);
        let (p0, p1) = (mc * panels_per_m, ((mc + 1) * panels_per_m).min(m_panels));
        let (j0, j1) = (nch * panels_per_n, ((nch + 1) * panels_per_n).min(n_panels));
        let mut k0 = 0;
        while k0 < k {
            let kc = KC.min(k - k0);
            for p in p0..p1 {
                let rows = MR.min(m - p * MR);
                let ap = a[p * MR * rs + k0..].as_ptr();
                for j in j0..j1 {
                    let cols = NR.min(n - j * NR);
                    let bp = &b.data[j * k * NR + k0 * NR..];
                    // SAFETY: tasks write disjoint tiles (panel range x column chunk) of C; A's
                    // rows `rows` and B's micro-panel hold kc values from the pointers on.
                    unsafe {
                        let cp = out.get().add(p * MR * n + j * NR);
                        micro_rows(kc, ap, rs, bp.as_ptr(), cp, n, rows, cols)
                    };
                }
            }
            k0 += kc;
        }
    });
}

/// [`micro`] with A read from `rows` rows of stride `rs` instead of a packed panel.
///
/// # Safety
/// As [`micro`], with `a + r * rs .. + kc` valid for every `r < rows`.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn micro_rows(
    kc: usize,
    a: *const f32,
    rs: usize,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        micro_rows_avx512(kc, a, rs, bp, c, ldc, rows, cols)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        for r in 0..rows {
            for col in 0..cols {
                let mut s = 0f32;
                for kk in 0..kc {
                    s += *a.add(r * rs + kk) * *bp.add(kk * NR + col);
                }
                *c.add(r * ldc + col) += s;
            }
        }
    }
}

/// Columns `n0 .. n0 + NC` of `C_b += A * B_b` for the A panels `panels`, K block by K block
/// (`C_b = A * B_b` without `accumulate`: the first K block writes C instead of adding to it).
///
/// # Safety
/// `c_b` is batch item b's C (M x N, row stride N); no other thread writes these tiles.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_task(
    a: &PackedA,
    bsrc: &BSrc,
    b: usize,
    c_b: *mut f32,
    n: usize,
    n0: usize,
    panels: std::ops::Range<usize>,
    buf: &mut [f32],
    accumulate: bool,
) {
    let (m, k) = (a.m, a.k);
    let nc = NC.min(n - n0);
    let mut k0 = 0;
    while k0 < k {
        let kc = KC.min(k - k0);
        if let BSrc::Pack(p) = bsrc {
            p.pack(b, k0, kc, n0, nc, buf);
        }
        for p in panels.clone() {
            let rows = MR.min(m - p * MR);
            let ap = a.panel(p, k0);
            for j in 0..nc.div_ceil(NR) {
                let cols = NR.min(nc - j * NR);
                let (bp, ldb) = match bsrc {
                    BSrc::Pack(_) => (&buf[j * kc * NR..], NR),
                    BSrc::Packed(pb) => (&pb.data[(n0 / NR + j) * k * NR + k0 * NR..], NR),
                    BSrc::InPlace { data, ldb } => (&data[k0 * ldb + n0 + j * NR..], *ldb),
                };
                let cp = c_b.add(p * MR * n + n0 + j * NR);
                micro(kc, ap.as_ptr(), bp.as_ptr(), ldb, cp, n, rows, cols, accumulate || k0 > 0);
            }
        }
        k0 += kc;
    }
}

/// One register tile: `C[rows x cols] += Ap (kc x MR) * Bp (kc x NR)`, or `=` without `add`.
///
/// # Safety
/// `ap` holds `kc * MR` floats, `bp` `kc` rows of NR floats `ldb` apart, and `c` is valid for
/// `rows` rows of `ldc` stride with `cols` columns each.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn micro(
    kc: usize,
    ap: *const f32,
    bp: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    add: bool,
) {
    #[cfg(target_arch = "x86_64")]
    {
        micro_avx512(kc, ap, bp, ldb, c, ldc, rows, cols, add)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        for r in 0..rows {
            for col in 0..cols {
                let mut s = 0f32;
                for kk in 0..kc {
                    s += *ap.add(kk * MR + r) * *bp.add(kk * ldb + col);
                }
                let cr = c.add(r * ldc + col);
                *cr = if add { *cr + s } else { s };
            }
        }
    }
}

/// `C[rows x cols] += acc` (`= acc` when `add` is false), the register tile's sums: a macro, so
/// the 24 accumulators stay in registers (a function taking them by reference spills them).
#[cfg(target_arch = "x86_64")]
macro_rules! store_tile {
    ($acc:ident, $c:ident, $ldc:ident, $rows:ident, $cols:ident, $add:expr) => {
        if !$add {
            let m0: __mmask16 = if $cols >= 16 { 0xffff } else { ((1u32 << $cols) - 1) as __mmask16 };
            let m1: __mmask16 = if $cols <= 16 { 0 } else { ((1u32 << ($cols - 16)) - 1) as __mmask16 };
            for r in 0..$rows {
                let cr = $c.add(r * $ldc);
                _mm512_mask_storeu_ps(cr, m0, $acc[r][0]);
                _mm512_mask_storeu_ps(cr.add(16), m1, $acc[r][1]);
            }
        } else if $cols == NR {
            for r in 0..$rows {
                let cr = $c.add(r * $ldc);
                _mm512_storeu_ps(cr, _mm512_add_ps(_mm512_loadu_ps(cr), $acc[r][0]));
                _mm512_storeu_ps(cr.add(16), _mm512_add_ps(_mm512_loadu_ps(cr.add(16)), $acc[r][1]));
            }
        } else {
            let m0: __mmask16 = if $cols >= 16 { 0xffff } else { ((1u32 << $cols) - 1) as __mmask16 };
            let m1: __mmask16 = if $cols <= 16 { 0 } else { ((1u32 << ($cols - 16)) - 1) as __mmask16 };
            for r in 0..$rows {
                let cr = $c.add(r * $ldc);
                let v0 = _mm512_maskz_loadu_ps(m0, cr);
                _mm512_mask_storeu_ps(cr, m0, _mm512_add_ps(v0, $acc[r][0]));
                let v1 = _mm512_maskz_loadu_ps(m1, cr.add(16));
                _mm512_mask_storeu_ps(cr.add(16), m1, _mm512_add_ps(v1, $acc[r][1]));
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use store_tile;

/// Asks for the cache line at `p` in L1. A hint: it never faults, so `p` may lie past the end of
/// a buffer (the last steps of a panel prefetch the next panel, or nothing).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch(p: *const f32) {
    // SAFETY: prefetching reads no memory the program can observe and cannot fault.
    unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8) }
}

/// Prefetches the C tile the micro-kernel adds its sums to at the end, so its loads (rows a whole
/// C row apart, often from L3) overlap the K loop instead of following it.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_tile(c: *const f32, ldc: usize, rows: usize) {
    for r in 0..rows {
        prefetch(c.wrapping_add(r * ldc));
        prefetch(c.wrapping_add(r * ldc + 16));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_avx512(
    kc: usize,
    ap: *const f32,
    bp: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    add: bool,
) {
    use std::arch::x86_64::*;
    let z = _mm512_setzero_ps();
    let mut acc = [[z; 2]; MR];
    let mut a = ap;
    let mut b = bp;
    prefetch_tile(c, ldc, rows);
    for _ in 0..kc {
        prefetch(b.wrapping_add(B_AHEAD * ldb));
        prefetch(b.wrapping_add(B_AHEAD * ldb + 16));
        prefetch(a.wrapping_add(A_AHEAD * MR));
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        // Fully unrolled by the compiler: MR is a constant (an index, not an iterator, so that it is).
        #[allow(clippy::needless_range_loop)]
        for r in 0..MR {
            let av = _mm512_set1_ps(*a.add(r));
            acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
        }
        a = a.add(MR);
        b = b.add(ldb);
    }
    store_tile!(acc, c, ldc, rows, cols, add);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_rows_avx512(
    kc: usize,
    a: *const f32,
    rs: usize,
    bp: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    // Rows past the panel's end read the last real row again: their sums are never stored.
    let row = |r: usize| a.add(r.min(rows - 1) * rs);
    let (r0, r4, r8) = (row(0), row(4), row(8));
    let (d1, d2, d3) = (row(1).offset_from(r0), row(2).offset_from(r0), row(3).offset_from(r0));
    let (e1, e2, e3) = (row(5).offset_from(r4), row(6).offset_from(r4), row(7).offset_from(r4));
    let (f1, f2, f3) = (row(9).offset_from(r8), row(10).offset_from(r8), row(11).offset_from(r8));
    let z = _mm512_setzero_ps();
    let mut acc = [[z; 2]; MR];
    let mut b = bp;
    prefetch_tile(c, ldc, rows);
    for kk in 0..kc {
        prefetch(b.wrapping_add(B_AHEAD * NR));
        prefetch(b.wrapping_add(B_AHEAD * NR + 16));
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        let (p0, p4, p8) = (r0.add(kk), r4.add(kk), r8.add(kk));
        let src = [
            p0,
            p0.offset(d1),
            p0.offset(d2),
            p0.offset(d3),
            p4,
            p4.offset(e1),
            p4.offset(e2),
            p4.offset(e3),
            p8,
            p8.offset(f1),
            p8.offset(f2),
            p8.offset(f3),
        ];
        for r in 0..MR {
            let av = _mm512_set1_ps(*src[r]);
            acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
        }
        b = b.add(NR);
    }
    store_tile!(acc, c, ldc, rows, cols, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `gemm_rows` (A read in place, with a row stride wider than K), `gemm_packed` (A packed)
    /// and `gemm_serial` writing C from B in place, against sums in f64, on shapes with partial register tiles, several K blocks and, for
    /// `gemm_rows`, several column chunks; C starts non-zero to check that both add to it.
    #[test]
    fn products_match_f64_sums() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512");
            return;
        }
        for &(m, k, n, rs) in
            &[(1, 1, 1, 1), (12, 256, 32, 256), (13, 257, 33, 300), (25, 600, 1100, 611), (7, 40, 2100, 40)]
        {
            let a = crate::kernels::test_matrix((m - 1) * rs + k, 1);
            let b = crate::kernels::test_matrix(k * n, 2);
            let c0 = crate::kernels::test_matrix(m * n, 3);
            let pb = PackedB::new(&b, k, n, n, 1);
            let mut rows = c0.clone();
            gemm_rows(&a, m, k, rs, &pb, &mut rows);
            let mut packed = c0.clone();
            let pa = PackedA::new(&a, m, k, rs, 1);
            gemm_packed(&pa, BSrc::Packed(&pb), 1, n, &mut packed);
            // B in place, rows a panel wider than needed; C starts as NaN, which writing it
            // (`accumulate` false) must not read.
            let ldb = n.div_ceil(NR) * NR + NR;
            let mut b_rows = vec![f32::NAN; (k - 1) * ldb + n.div_ceil(NR) * NR];
            for kk in 0..k {
                b_rows[kk * ldb..kk * ldb + n].copy_from_slice(&b[kk * n..(kk + 1) * n]);
            }
            let mut written = vec![f32::NAN; m * n];
            gemm_serial(&pa, BSrc::InPlace { data: &b_rows, ldb }, n, &mut written, &mut Vec::new(), false);
            for (x, w) in written.iter_mut().zip(&c0) {
                *x += w;
            }
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut scale) = (c0[i * n + j] as f64, c0[i * n + j].abs() as f64);
                    for kk in 0..k {
                        let p = a[i * rs + kk] as f64 * b[kk * n + j] as f64;
                        want += p;
                        scale += p.abs();
                    }
                    for (name, got) in
                        [("gemm_rows", &rows), ("gemm_packed", &packed), ("gemm_serial in place", &written)]
                    {
                        let err = (got[i * n + j] as f64 - want).abs();
                        assert!(
                            err <= 1e-6 * scale,
                            "{name} {:?} at ({i}, {j}): {} vs {want}",
                            (m, k, n, rs),
                            got[i * n + j]
                        );
                    }
                }
            }
        }
    }
}
