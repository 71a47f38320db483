//! A bf16 GEMM on the tile units (AMX) of recent Intel CPUs: `C[M x N] += A[M x K] * B[K x N]`
//! with both operands rounded to bf16 and the products accumulated in f32, the arithmetic of
//! PyTorch's bf16 autocast on these CPUs. One tile instruction (`tdpbf16ps`) multiplies a 16 x 32
//! block of A by a 32 x 16 block of B into a 16 x 16 block of C, about 30 times the work of an
//! AVX-512 FMA, so the matrix products of a UNet step cost a fraction of their f32 time.
//!
//! Layouts (everything a tile reads is 16 rows of 64 bytes, 1 KiB contiguous):
//! - A (packed once for weights, per call for activations): panels of 16 rows; panel p holds, for
//!   every chunk of 32 k, the 16 x 32 bf16 values row by row. Rows past M and k past K are zero,
//!   and the panel count is even, so the kernel always works on two panels (32 rows).
//! - B, "VNNI" order: tiles of 16 columns; for every chunk of 32 k, 16 rows each holding the
//!   pairs `(B[2q][n], B[2q+1][n])` for the 16 columns n. Columns past N are zero; tiles come in
//!   pairs (32 columns).
//!
//! Blocking follows [`super::gemm`]: tasks of [`NC`] columns (times an M range, times the batch)
//! on rayon's pool, K in blocks of [`KC`]; a convolution's B comes from the same im2col packers
//! as the f32 GEMM (in f32, 32 k at a time so it stays in L1) and is converted to bf16 pairs
//! (or, when there are too few column blocks to go round, all of B once, shared). Each call of
//! the micro-kernel adds one K block's product to a 32 x 32 block of C held in the four C tiles:
//! read from C on the first K block (C may be prefilled: bias, residual), kept in a per-task
//! scratch in between, written to C on the last.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::gemm::{OutPtr, PackB, NR};

/// Rows of an A tile and of a C tile.
pub const TM: usize = 16;
/// k per tile (32 bf16 = 64 bytes per row).
pub const TK: usize = 32;
/// Columns of a B tile and of a C tile (16 f32 = 64 bytes per row).
pub const TN: usize = 16;
/// Elements of one tile's worth of bf16 operand (16 rows x 32 values).
pub(crate) const TILE: usize = TM * TK;
/// Depth of one K block (a multiple of [`TK`]).
pub const KC: usize = 256;
/// Columns per task (a multiple of 2 * [`TN`] and of the f32 packers' [`NR`]).
pub const NC: usize = 256;

const _: () = assert!(KC.is_multiple_of(TK) && NC.is_multiple_of(2 * TN) && NC.is_multiple_of(NR) && NR == 2 * TN);

/// Whether the tile units can be used: the CPU has AMX-TILE, AMX-BF16 and AVX-512 (with BW and
/// BF16, for the conversions), and Linux granted this process the tile state (asked once; a
/// kernel without AMX support refuses).
pub fn available() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            let cpu = edx & (1 << 22) != 0
                && edx & (1 << 24) != 0
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512bf16");
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            cpu && unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) } == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        {
            false
        }
    })
}

/// Makes Linux refuse this process (and what it execs) the tile state, as a kernel or CPU without
/// AMX would: a seccomp filter answers EPERM to `arch_prctl(ARCH_REQ_XCOMP_PERM, ..)` and lets
/// every other call through. For benchmarks and tests of what a CPU without tile units runs (an
/// AMD Zen 4) on an Intel Xeon with AMX: [`available`] then says no, and so does every library
/// that asks before it uses the tiles (oneDNN, PyTorch's flash attention). Call it before
/// anything asks (a `pre_exec` hook of a child process, or first thing in `main`). Only raw
/// syscalls and stack values: safe between `fork` and `exec`.
pub fn refuse_tile_state() -> std::io::Result<()> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use libc::{sock_filter, sock_fprog, BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
        const ARCH_REQ_XCOMP_PERM: u32 = 0x1023;
        // Offsets in `struct seccomp_data`: the call's number at 0, its first argument at 16.
        const NR_AT: u32 = 0;
        const ARG0_AT: u32 = 16;
        let stmt = |code: u32, k: u32| sock_filter { code: code as u16, jt: 0, jf: 0, k };
        let jump_eq = |k: u32, jt: u8, jf: u8| sock_filter { code: (BPF_JMP | BPF_JEQ | BPF_K) as u16, jt, jf, k };
        let filter = [
            stmt(BPF_LD | BPF_W | BPF_ABS, NR_AT),
            jump_eq(libc::SYS_arch_prctl as u32, 0, 3),
            stmt(BPF_LD | BPF_W | BPF_ABS, ARG0_AT),
            jump_eq(ARCH_REQ_XCOMP_PERM, 0, 1),
            stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
            stmt(BPF_RET | BPF_K, libc::SECCOMP_RET_ALLOW),
        ];
        let program = sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut sock_filter };
        // SAFETY: plain prctl calls; `program` and `filter` outlive them (the kernel copies the filter).
        let failed = unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program as *const sock_fprog) != 0
        };
        if failed {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    Ok(())
}

/// f32 to bf16, rounding to nearest even (NaN stays NaN).
#[inline(always)]
pub fn bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 back to f32 (exact).
#[inline(always)]
pub fn f32_of(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// A zeroed buffer whose start is 64-byte aligned: a tile row that straddles two cache lines
/// makes every tile load cost twice (measured here: a quarter of the speed 16 bytes off).
/// Allocated zeroed by the allocator (fresh pages from the OS for big ones, nothing written).
pub struct Aligned<T: Copy> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
}

// SAFETY: an owned buffer of plain numbers.
unsafe impl<T: Copy + Send> Send for Aligned<T> {}
unsafe impl<T: Copy + Sync> Sync for Aligned<T> {}

impl<T: Copy> Aligned<T> {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align((len * std::mem::size_of::<T>()).max(64), 64).expect("buffer size")
    }

    /// `len` zero values (T must be a plain number type: all-zero bytes are its zero).
    pub fn zeroed(len: usize) -> Self {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
        let ptr = std::ptr::NonNull::new(raw).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Self { ptr, len }
    }
}

impl<T: Copy> Drop for Aligned<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr() as *mut u8, Self::layout(self.len)) }
    }
}

impl<T: Copy> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` initialised (zeroed or since written) values.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as for Deref; the borrow is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

/// A in 16-row panels of bf16 tiles (module docs).
pub struct PackedA16 {
    data: Aligned<u16>,
    pub m: usize,
    pub k: usize,
    /// Chunks of [`TK`] along K (K rounded up).
    chunks: usize,
}

impl PackedA16 {
    /// `a[i * rs + j * cs]` is `A[i][j]`.
    pub fn new(a: &[f32], m: usize, k: usize, rs: usize, cs: usize) -> Self {
        let chunks = k.div_ceil(TK);
        let panels = m.div_ceil(2 * TM) * 2;
        let mut data = Aligned::zeroed(panels * chunks * TILE);
        data.par_chunks_mut(chunks * TILE).enumerate().for_each(|(p, panel)| {
            for r in 0..TM.min(m.saturating_sub(p * TM)) {
                let row = (p * TM + r) * rs;
                if cs == 1 {
                    for c in 0..chunks {
                        let len = TK.min(k - c * TK);
                        let src = &a[row + c * TK..row + c * TK + len];
                        // SAFETY: `available()` holds wherever a PackedA16 is made (the layers check
                        // it), and src / dst hold `len` and TK values.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            convert_row(src, &mut panel[c * TILE + r * TK..][..TK])
                        };
                    }
                } else {
                    for j in 0..k {
                        panel[(j / TK) * TILE + r * TK + j % TK] = bf16(a[row + j * cs]);
                    }
                }
            }
        });
        Self { data, m, k, chunks }
    }

    /// Start of panel `p` at chunk `c`.
    pub(crate) fn at(&self, p: usize, c: usize) -> *const u16 {
        self.data[(p * self.chunks + c) * TILE..].as_ptr()
    }
}

/// B in pairs of 16-column bf16 tiles (module docs), packed once (a layer's weights).
pub struct PackedB16 {
    data: Aligned<u16>,
    pub k: usize,
    pub n: usize,
    chunks: usize,
}

impl PackedB16 {
    /// `b[kk * ks + nn * ns]` is `B[kk][nn]`.
    pub fn new(b: &[f32], k: usize, n: usize, ks: usize, ns: usize) -> Self {
        let chunks = k.div_ceil(TK);
        let tiles = n.div_ceil(2 * TN) * 2;
        let mut data = Aligned::zeroed(tiles * chunks * TILE);
        data.par_chunks_mut(chunks * TILE).enumerate().for_each(|(j, tile)| {
            let cols = TN.min(n.saturating_sub(j * TN));
            if cols == 0 {
                return;
            }
            // SAFETY (both fast paths): `available()` holds wherever a PackedB16 is made (the
            // layers check it); the reads stay inside the k x n matrix `b` describes.
            #[cfg(target_arch = "x86_64")]
            if ks == 1 {
                unsafe { pack_b_columns(&b[j * TN * ns..], k, cols, ns, tile) };
                return;
            } else if ns == 1 {
                unsafe { pack_b_rows(&b[j * TN..], k, cols, ks, tile) };
                return;
            }
            for col in 0..cols {
                let src = (j * TN + col) * ns;
                for kk in 0..k {
                    tile[(kk / TK) * TILE + (kk % TK / 2) * 2 * TN + col * 2 + kk % 2] = bf16(b[src + kk * ks]);
                }
            }
        });
        Self { data, k, n, chunks }
    }

    /// Batch item `b` of an f32 packer's B (`k` x `n`), all of it, packed in parallel: for a
    /// product too narrow to give every thread its own columns, packing once and sharing beats
    /// each M range packing its own copy.
    pub fn from_packer(p: &dyn PackB, b: usize, k: usize, n: usize) -> Self {
        let chunks = k.div_ceil(TK);
        let tiles = n.div_ceil(2 * TN) * 2;
        let mut data = Aligned::zeroed(tiles * chunks * TILE);
        let group = NC / TN; // tiles per column block of NC
        data.par_chunks_mut(group * chunks * TILE).enumerate().for_each(|(g, tiles)| {
            let n0 = g * NC;
            let nc = NC.min(n - n0);
            let mut f = vec![0f32; TK * NC];
            for c in 0..chunks {
                let kk = TK.min(k - c * TK);
                p.pack(b, c * TK, kk, n0, nc, &mut f);
                // SAFETY: `available()` holds wherever the bf16 GEMM runs.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    to_vnni_chunk(&f, kk, nc, tiles, chunks, c)
                };
            }
        });
        Self { data, k, n, chunks }
    }

    /// Start of tile `j` at chunk `c`.
    pub(crate) fn at(&self, j: usize, c: usize) -> *const u16 {
        self.data[(j * self.chunks + c) * TILE..].as_ptr()
    }
}

/// One B tile (all its chunks) from `cols` columns that are each contiguous along k (`b[col *
/// ns + kk]`, a weight matrix `[d_out, d_in]` or the keys `[L, d]` of attention): every column's
/// 32 k of a chunk become 16 bf16 pairs, one 32-bit word per pair, and the tile's row q takes
/// word q of each column.
///
/// # Safety
/// AVX-512 F, BW and BF16 present; `b` holds `cols` columns of `k` values at stride `ns`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_b_columns(b: &[f32], k: usize, cols: usize, ns: usize, tile: &mut [u16]) {
    let mut words = [[0u32; TK / 2]; TN];
    for c in 0..k.div_ceil(TK) {
        let len = TK.min(k - c * TK);
        for (col, w) in words.iter_mut().enumerate().take(cols) {
            let src = &b[col * ns + c * TK..col * ns + c * TK + len];
            convert_row(src, std::slice::from_raw_parts_mut(w.as_mut_ptr() as *mut u16, TK));
        }
        let dst = tile[c * TILE..(c + 1) * TILE].as_mut_ptr() as *mut u32;
        for q in 0..TK / 2 {
            for (col, w) in words.iter().enumerate().take(cols) {
                *dst.add(q * TN + col) = w[q];
            }
        }
    }
}

/// One B tile from `cols` columns of rows contiguous along n (`b[kk * ks + col]`, the values
/// `[L, dv]` of attention): row q of chunk c pairs rows 2q and 2q+1 of the chunk.
///
/// # Safety
/// AVX-512 F, BW and BF16 present; `b` holds `k` rows of `cols` values at stride `ks`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_b_rows(b: &[f32], k: usize, cols: usize, ks: usize, tile: &mut [u16]) {
    use std::arch::x86_64::*;
    let m: __mmask16 = ((1u32 << cols) - 1) as __mmask16;
    let row = |kk: usize| {
        if kk < k {
            _mm512_maskz_loadu_ps(m, b[kk * ks..kk * ks + cols].as_ptr())
        } else {
            _mm512_setzero_ps()
        }
    };
    for c in 0..k.div_ceil(TK) {
        for q in 0..TK / 2 {
            let kk = c * TK + 2 * q;
            store_pairs(row(kk), row(kk + 1), tile[c * TILE + q * 2 * TN..].as_mut_ptr());
        }
    }
}

/// Where the GEMM's B comes from.
pub enum BSrc16<'a> {
    /// An f32 packer of [`super::gemm`] (convolution inputs), converted block by block.
    Pack(&'a dyn PackB),
    /// Packed beforehand (weights).
    Packed(&'a PackedB16),
}

/// Up to 32 f32 (`src`) as bf16 into `dst` (32 values; zeros past `src.len()`).
///
/// # Safety
/// AVX-512 F, BW and BF16 present ([`available`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn convert_row(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(TK);
    let mask = |from: usize| -> __mmask16 {
        let lanes = n.saturating_sub(from).min(16);
        ((1u32 << lanes) - 1) as __mmask16
    };
    let lo = _mm512_maskz_loadu_ps(mask(0), src.as_ptr());
    let hi = _mm512_maskz_loadu_ps(mask(16), src.as_ptr().wrapping_add(16));
    let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
    _mm512_storeu_si512(dst.as_mut_ptr() as *mut _, v);
}

/// The bf16 pairs of two rows of 16 f32: `[lo0, hi0, lo1, hi1, ...]` (64 bytes) at `dst`.
///
/// # Safety
/// AVX-512 F, BW and BF16 present; `dst` valid for 32 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(crate) unsafe fn store_pairs(lo: std::arch::x86_64::__m512, hi: std::arch::x86_64::__m512, dst: *mut u16) {
    use std::arch::x86_64::*;
    // cvtne2ps gives [lo0..lo15, hi0..hi15]; output lane 2n takes lane n, lane 2n+1 lane 16+n.
    const INTERLEAVE: [u16; 32] = {
        let mut idx = [0u16; 32];
        let mut n = 0;
        while n < 16 {
            idx[2 * n] = n as u16;
            idx[2 * n + 1] = 16 + n as u16;
            n += 1;
        }
        idx
    };
    let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
    let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr() as *const _);
    _mm512_storeu_si512(dst as *mut _, _mm512_permutexvar_epi16(idx, both));
}

/// Converts one chunk of an f32 block as the f32 packers write it (`kk` <= 32 rows, NR-column
/// panels, zero past the block's columns) to chunk `c` of the bf16 tile pairs of a block of
/// `chunks` chunks (tile j, chunk c at `(j * chunks + c) * TILE`); rows past `kk` are zero.
///
/// # Safety
/// AVX-512 F, BW and BF16 present; `src` holds the chunk, `dst` the block's tiles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn to_vnni_chunk(src: &[f32], kk: usize, nc: usize, dst: &mut [u16], chunks: usize, c: usize) {
    use std::arch::x86_64::*;
    let panels = nc.div_ceil(NR);
    assert!(kk <= TK && src.len() >= panels * kk * NR && dst.len() >= 2 * panels * chunks * TILE);
    let zero = _mm512_setzero_ps();
    for p in 0..panels {
        let panel = src.as_ptr().add(p * kk * NR);
        let row = |k: usize| {
            if k < kk {
                (_mm512_loadu_ps(panel.add(k * NR)), _mm512_loadu_ps(panel.add(k * NR + TN)))
            } else {
                (zero, zero)
            }
        };
        let t0 = dst.as_mut_ptr().add((2 * p * chunks + c) * TILE);
        let t1 = dst.as_mut_ptr().add(((2 * p + 1) * chunks + c) * TILE);
        for q in 0..TK / 2 {
            let ((l0, l1), (h0, h1)) = (row(2 * q), row(2 * q + 1));
            store_pairs(l0, h0, t0.add(q * 2 * TN));
            store_pairs(l1, h1, t1.add(q * 2 * TN));
        }
    }
}

/// The tile configuration: tmm0-3 hold C (16 x 16 f32), tmm4-5 A (16 x 32 bf16), tmm6-7 B
/// (16 pairs of rows x 16 columns); every tile is 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Loads the tile configuration in the calling thread (tile state is per thread).
///
/// # Safety
/// [`available`] must be true.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn configure_tiles() {
    let mut cfg = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    for t in 0..8 {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    std::arch::asm!("ldtilecfg [{0}]", in(reg) &cfg as *const TileConfig, options(nostack, readonly));
}

/// Where the four C tiles of a 32 x 32 block live: rows 0-15 / columns 0-15 at `c00`, rows 0-15
/// / columns 16-31 at `c01`, and so on, each tile's 16 rows `stride` bytes apart.
#[derive(Clone, Copy)]
pub(crate) struct CTiles {
    c00: *mut f32,
    c01: *mut f32,
    c10: *mut f32,
    c11: *mut f32,
    stride: usize,
}

impl CTiles {
    /// Tiles of 1 KiB each, contiguous: the row-0 pair at `c`, the row-1 pair at `c2`.
    ///
    /// # Safety
    /// `c` and `c2` valid for two tiles each.
    pub(crate) unsafe fn tile_major(c: *mut f32, c2: *mut f32) -> Self {
        Self { c00: c, c01: c.add(TM * TN), c10: c2, c11: c2.add(TM * TN), stride: TN * 4 }
    }

    /// The block at `c` of a row-major matrix with `ldc` floats per row.
    ///
    /// # Safety
    /// `c` valid for 32 rows of `ldc` stride, 32 columns each.
    pub(crate) unsafe fn row_major(c: *mut f32, ldc: usize) -> Self {
        let c2 = c.add(TM * ldc);
        Self { c00: c, c01: c.add(TN), c10: c2, c11: c2.add(TN), stride: ldc * 4 }
    }
}

/// `dst` = `src` (the four C tiles of [`CTiles`], or zero when `None`) + two A panels (`a0`,
/// `a1`: rows 0-15 and 16-31) times two B tiles (`b0`, `b1`: columns 0-15 and 16-31) over
/// `chunks` chunks of 32 k. `src` and `dst` may be the same tiles.
///
/// # Safety
/// Tiles configured ([`configure_tiles`]) in this thread; each A / B pointer reads `chunks`
/// tiles of 1 KiB one after the other; `src` and `dst` as their constructors require.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn block_32x32(
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    chunks: usize,
    src: Option<CTiles>,
    dst: CTiles,
) {
    debug_assert!(chunks > 0);
    // The C tiles are set up by one asm block and used by the next: no code the compiler emits
    // touches tile registers, so they keep their values in between.
    match src {
        None => std::arch::asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            options(nostack, nomem),
        ),
        Some(c) => std::arch::asm!(
            "tileloadd tmm0, [{c00} + {cs}*1]",
            "tileloadd tmm1, [{c01} + {cs}*1]",
            "tileloadd tmm2, [{c10} + {cs}*1]",
            "tileloadd tmm3, [{c11} + {cs}*1]",
            c00 = in(reg) c.c00,
            c01 = in(reg) c.c01,
            c10 = in(reg) c.c10,
            c11 = in(reg) c.c11,
            cs = in(reg) c.stride,
            out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
            options(nostack, readonly),
        ),
    }
    std::arch::asm!(
        "2:",
        "tileloadd tmm4, [{a0} + {stride}*1]",
        "tileloadd tmm6, [{b0} + {stride}*1]",
        "tileloadd tmm7, [{b1} + {stride}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tileloadd tmm5, [{a1} + {stride}*1]",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {a0}, 1024",
        "add {a1}, 1024",
        "add {b0}, 1024",
        "add {b1}, 1024",
        "dec {n}",
        "jnz 2b",
        "tilestored [{c00} + {cs}*1], tmm0",
        "tilestored [{c01} + {cs}*1], tmm1",
        "tilestored [{c10} + {cs}*1], tmm2",
        "tilestored [{c11} + {cs}*1], tmm3",
        a0 = inout(reg) a0 => _,
        a1 = inout(reg) a1 => _,
        b0 = inout(reg) b0 => _,
        b1 = inout(reg) b1 => _,
        n = inout(reg) chunks => _,
        c00 = in(reg) dst.c00,
        c01 = in(reg) dst.c01,
        c10 = in(reg) dst.c10,
        c11 = in(reg) dst.c11,
        cs = in(reg) dst.stride,
        stride = in(reg) 64usize,
        out("tmm0") _, out("tmm1") _, out("tmm2") _, out("tmm3") _,
        out("tmm4") _, out("tmm5") _, out("tmm6") _, out("tmm7") _,
        options(nostack),
    );
}

/// Adds a task's accumulator (tile-major: row tile `rt`, column tile `ct` at
/// `(rt * col_tiles + ct) * 256`) to C at `c` (row stride `ldc`), `rows` x `cols` of it, or with
/// `accumulate` false writes it there without reading C (a fresh zeroed output: reading its
/// pages first would map the shared zero page and fault again, with a TLB flush, on the write).
///
/// # Safety
/// AVX-512 present; `c` valid for `rows` rows of `ldc` stride, `cols` columns each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_tiles(
    acc: &[f32],
    col_tiles: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    for r in 0..rows {
        let (rt, rr) = (r / TM, r % TM);
        let cr = c.add(r * ldc);
        for ct in 0..cols.div_ceil(TN) {
            let lanes = TN.min(cols - ct * TN);
            let m: __mmask16 = ((1u32 << lanes) - 1) as __mmask16;
            let src = acc.as_ptr().add((rt * col_tiles + ct) * TM * TN + rr * TN);
            let dst = cr.add(ct * TN);
            let v = _mm512_maskz_loadu_ps(m, src);
            let v = if accumulate { _mm512_add_ps(_mm512_maskz_loadu_ps(m, dst), v) } else { v };
            _mm512_mask_storeu_ps(dst, m, v);
        }
    }
}

/// A thread's working buffers for the tile kernels, kept between calls: rayon's `for_each_init`
/// makes fresh ones for every split of the work, and zeroing them cost more than some products.
struct Scratch {
    a: Aligned<f32>,
    h: Aligned<u16>,
    b: Aligned<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch {
        a: Aligned::zeroed(0),
        h: Aligned::zeroed(0),
        b: Aligned::zeroed(0),
    });
    static TILES_CONFIGURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `body` with this thread's tiles configured and scratch buffers of at least the given
/// lengths (f32, bf16, f32; 64-byte aligned, contents left from earlier calls). Needs
/// [`available`].
pub(crate) fn with_scratch<R>(
    a: usize,
    h: usize,
    b: usize,
    body: impl FnOnce(&mut [f32], &mut [u16], &mut [f32]) -> R,
) -> R {
    assert!(available(), "the tile kernels need AMX");
    if !TILES_CONFIGURED.get() {
        // SAFETY: `available()` holds.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            configure_tiles()
        };
        TILES_CONFIGURED.set(true);
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            if s.a.len() < a {
                s.a = Aligned::zeroed(a);
            }
            if s.h.len() < h {
                s.h = Aligned::zeroed(h);
            }
            if s.b.len() < b {
                s.b = Aligned::zeroed(b);
            }
            let s = &mut *s;
            body(&mut s.a[..a], &mut s.h[..h], &mut s.b[..b])
        }
        // Re-entered (a kernel inside a kernel): buffers of its own.
        Err(_) => body(&mut Aligned::zeroed(a), &mut Aligned::zeroed(h), &mut Aligned::zeroed(b)),
    })
}

/// `C_b += A * B_b` for every batch item b (C_b is `c[b * m * n ..]`, row-major `[M, N]`), the
/// operands in bf16, sums in f32; with `accumulate` false `C_b = A * B_b` (C's values unread).
/// Needs [`available`].
///
/// Each task keeps its rows x [`NC`] columns of the sums between K blocks in a scratch block
/// laid out tile by tile (every C tile 1 KiB contiguous): tiles read and written in C on every K
/// block would have rows a whole C row apart, which for N = 4096 puts all 16 of a tile's rows in
/// the same L1 set. C itself is read once (first block) and written once (last block).
pub fn gemm_bf16(a: &PackedA16, bsrc: BSrc16, batch: usize, n: usize, c: &mut [f32], accumulate: bool) {
    let threads = rayon::current_num_threads().max(1);
    let want = match bsrc {
        BSrc16::Pack(_) => 3 * threads,
        BSrc16::Packed(_) => 8 * threads,
    };
    gemm_bf16_tasks(a, bsrc, batch, n, c, accumulate, want)
}

/// [`gemm_bf16`] aiming at `want` tasks (more M ranges when there are too few column blocks).
fn gemm_bf16_tasks(a: &PackedA16, bsrc: BSrc16, batch: usize, n: usize, c: &mut [f32], accumulate: bool, want: usize) {
    let (m, k) = (a.m, a.k);
    assert!(c.len() >= batch * m * n);
    assert!(available(), "the bf16 GEMM needs AMX");
    if let BSrc16::Packed(pb) = &bsrc {
        assert!(pb.k == k && pb.n == n, "B is {}x{}, the product needs {k}x{n}", pb.k, pb.n);
    }
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let n_tiles = n.div_ceil(NC);
    let pairs = m.div_ceil(2 * TM);
    if let BSrc16::Pack(p) = &bsrc {
        if want.div_ceil(batch * n_tiles).min(pairs) >= 3 {
            // So few column blocks that three or more M ranges would each pack all of B again:
            // pack it once, shared, and split M in as few ranges as keep the threads busy.
            for b in 0..batch {
                let pb = PackedB16::from_packer(*p, b, k, n);
                let cb = &mut c[b * m * n..(b + 1) * m * n];
                gemm_bf16_tasks(a, BSrc16::Packed(&pb), 1, n, cb, accumulate, 2 * threads);
            }
            return;
        }
    }
    let (m_chunks, pairs_per_chunk) = super::gemm::split_m(batch * n_tiles, pairs, want);
    let out = OutPtr(c.as_mut_ptr());
    let packing = matches!(bsrc, BSrc16::Pack(_));
    let (fbuf_len, vbuf_len) = if packing { (TK * NC, KC * NC) } else { (0, 0) };
    let acc_len = pairs_per_chunk * 2 * TM * NC;
    (0..batch * n_tiles * m_chunks).into_par_iter().for_each(|t| {
        with_scratch(fbuf_len, vbuf_len, acc_len, |fbuf, vbuf, acc| {
            let mc = t % m_chunks;
            let nt = (t / m_chunks) % n_tiles;
            let b = t / (m_chunks * n_tiles);
            let n0 = nt * NC;
            let nc = NC.min(n - n0);
            let col_pairs = nc.div_ceil(2 * TN);
            let col_tiles = 2 * col_pairs;
            let (q0, q1) = (mc * pairs_per_chunk, ((mc + 1) * pairs_per_chunk).min(pairs));
            let mut k0 = 0;
            while k0 < k {
                let kc = KC.min(k - k0);
                let chunks = kc.div_ceil(TK);
                let c0 = k0 / TK;
                if let BSrc16::Pack(p) = &bsrc {
                    // One chunk of 32 k at a time, so the f32 block stays in L1.
                    for ch in 0..chunks {
                        let kk = TK.min(kc - ch * TK);
                        p.pack(b, k0 + ch * TK, kk, n0, nc, fbuf);
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            to_vnni_chunk(fbuf, kk, nc, vbuf, chunks, ch)
                        };
                    }
                }
                for q in q0..q1 {
                    let (a0, a1) = (a.at(2 * q, c0), a.at(2 * q + 1, c0));
                    for jj in 0..col_pairs {
                        let (b0, b1) = match &bsrc {
                            BSrc16::Pack(_) => {
                                (vbuf[2 * jj * chunks * TILE..].as_ptr(), vbuf[(2 * jj + 1) * chunks * TILE..].as_ptr())
                            }
                            BSrc16::Packed(pb) => (pb.at(n0 / TN + 2 * jj, c0), pb.at(n0 / TN + 2 * jj + 1, c0)),
                        };
                        let rt = 2 * (q - q0);
                        let tile = |rt: usize| acc[(rt * col_tiles + 2 * jj) * TM * TN..].as_ptr() as *mut f32;
                        let (first, last) = (k0 == 0, k0 + kc == k);
                        let rows = (2 * TM).min(m - q * 2 * TM);
                        let cols = (2 * TN).min(nc - jj * 2 * TN);
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            let sums = CTiles::tile_major(tile(rt), tile(rt + 1));
                            // A whole 32 x 32 block of C is read (when prefilled) on the first K block and
                            // written on the last straight from the tiles; edge blocks go through `sums`.
                            let whole = rows == 2 * TM && cols == 2 * TN;
                            let c_blk =
                                CTiles::row_major(out.get().add(b * m * n + q * 2 * TM * n + n0 + jj * 2 * TN), n);
                            let src = match (first, whole && accumulate) {
                                (true, true) => Some(c_blk),
                                (true, false) => None,
                                (false, _) => Some(sums),
                            };
                            let dst = if last && whole { c_blk } else { sums };
                            block_32x32(a0, a1, b0, b1, chunks, src, dst);
                        }
                    }
                }
                k0 += kc;
            }
            // The edge blocks (past M or N), which stayed in `acc`.
            for q in q0..q1 {
                let rows = (2 * TM).min(m - q * 2 * TM);
                for jj in 0..col_pairs {
                    let cols = (2 * TN).min(nc - jj * 2 * TN);
                    if rows == 2 * TM && cols == 2 * TN {
                        continue;
                    }
                    let rt = 2 * (q - q0);
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let c_blk = out.get().add(b * m * n + q * 2 * TM * n + n0 + jj * 2 * TN);
                        add_tiles(
                            &acc[(rt * col_tiles + 2 * jj) * TM * TN..],
                            col_tiles,
                            c_blk,
                            n,
                            rows,
                            cols,
                            accumulate,
                        )
                    };
                }
            }
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product of the operands rounded to bf16, summed in f64: what the GEMM must give up to
    /// f32 rounding of its sums.
    fn reference(a: &[f32], b: &[f32], c0: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let r = |x: f32| f32_of(bf16(x)) as f64;
        (0..m * n)
            .map(|i| {
                let (row, col) = (i / n, i % n);
                c0[i] as f64 + (0..k).map(|j| r(a[row * k + j]) * r(b[j * n + col])).sum::<f64>()
            })
            .map(|v| v as f32)
            .collect()
    }

    fn max_rel(got: &[f32], want: &[f32]) -> f32 {
        let scale = want.iter().fold(0f32, |s, v| s.max(v.abs())).max(1e-30);
        got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max) / scale
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        assert_eq!(f32_of(bf16(1.0 + 1.0 / 256.0)), 1.0); // half way, even stays
        assert_eq!(f32_of(bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0); // half way, odd rounds up
        assert_eq!(f32_of(bf16(-(1.0 + 1.0 / 256.0 + 1.0 / 1024.0))), -(1.0 + 2.0 / 256.0)); // above half way
        assert!(f32_of(bf16(f32::NAN)).is_nan());
        assert_eq!(f32_of(bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// Both B sources, odd sizes (edges in every direction, K not a multiple of 32, several K
    /// blocks), a batch, and a prefilled C.
    #[test]
    fn products_match_the_rounded_operands() {
        if !available() {
            return;
        }
        // (320, 36, 256, 1) and (100, 300, 40, 2) are narrow enough for B to be packed once and shared.
        for &(m, k, n, batch) in
            &[(1, 1, 1, 1), (33, 45, 70, 2), (64, 1100, 300, 1), (17, 600, 33, 3), (320, 36, 256, 1), (100, 300, 40, 2)]
        {
            let a = crate::kernels::test_matrix(m * k, 1 + m as u64);
            let b = crate::kernels::test_matrix(batch * k * n, 7 + n as u64);
            let c0 = crate::kernels::test_matrix(batch * m * n, 11);
            let pa = PackedA16::new(&a, m, k, k, 1);
            // Through the packer path: a B already laid out as [K, N] per batch item.
            use crate::kernels::DenseB as Dense;
            let mut c = c0.clone();
            gemm_bf16(&pa, BSrc16::Pack(&Dense(&b, k, n)), batch, n, &mut c, true);
            for i in 0..batch {
                let want = reference(&a, &b[i * k * n..(i + 1) * k * n], &c0[i * m * n..(i + 1) * m * n], m, k, n);
                let r = max_rel(&c[i * m * n..(i + 1) * m * n], &want);
                assert!(r < 2e-6, "packer {m}x{k}x{n} item {i}: {r}");
            }
            let pb = PackedB16::new(&b[..k * n], k, n, n, 1);
            let mut c = c0[..m * n].to_vec();
            gemm_bf16(&pa, BSrc16::Packed(&pb), 1, n, &mut c, true);
            let r = max_rel(&c, &reference(&a, &b[..k * n], &c0[..m * n], m, k, n));
            assert!(r < 2e-6, "packed {m}x{k}x{n}: {r}");
            // B stored by columns (a weight matrix [N, K], or attention's keys).
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            let mut c = c0[..m * n].to_vec();
            gemm_bf16(&pa, BSrc16::Packed(&PackedB16::new(&bt, k, n, 1, k)), 1, n, &mut c, true);
            let r = max_rel(&c, &reference(&a, &b[..k * n], &c0[..m * n], m, k, n));
            assert!(r < 2e-6, "packed by columns {m}x{k}x{n}: {r}");
            // Overwriting: C's old values do not count.
            let mut c = c0[..m * n].to_vec();
            gemm_bf16(&pa, BSrc16::Packed(&pb), 1, n, &mut c, false);
            let r = max_rel(&c, &reference(&a, &b[..k * n], &vec![0.0; m * n], m, k, n));
            assert!(r < 2e-6, "packed, overwriting {m}x{k}x{n}: {r}");
        }
    }
}
