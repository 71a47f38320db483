//! 2-D convolution (NCHW, f32, groups 1, dilation 1) as an implicit GEMM: `out_b[C_out, Ho*Wo] =
//! W[C_out, C_in*kh*kw] * im2col(x_b)`, where the im2col columns are produced one cache-sized
//! block at a time by the GEMM's B packer and the output is written in NCHW directly (no
//! transposes, no full im2col matrix).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::amx::{gemm_bf16, BSrc16, PackedA16};
use super::avx512bf16::{gemm_pairs, BPairs, PackedAPairs};
use super::gemm::{gemm_packed, BSrc, PackB, PackedA, NR};
use super::{Bf16Isa, Products};

#[derive(Debug, Clone, Copy)]
pub struct ConvParams {
    pub stride: usize,
    pub padding: usize,
}

struct Geometry {
    c_in: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    ow: usize,
    stride: usize,
    pad: usize,
}

struct Im2Col<'a> {
    x: &'a [f32],
    g: &'a Geometry,
}

impl PackB for Im2Col<'_> {
    fn pack(&self, b: usize, k0: usize, kc: usize, n0: usize, nc: usize, buf: &mut [f32]) {
        let g = self.g;
        let img = &self.x[b * g.c_in * g.h * g.w..];
        let khw = g.kh * g.kw;
        let panels = nc.div_ceil(NR);
        for kk in 0..kc {
            let k = k0 + kk;
            let ci = k / khw;
            let ky = (k % khw) / g.kw;
            let kx = k % g.kw;
            let chan = &img[ci * g.h * g.w..(ci + 1) * g.h * g.w];
            let mut oy = n0 / g.ow;
            let mut ox = n0 % g.ow;
            for p in 0..panels {
                let dst = &mut buf[p * kc * NR + kk * NR..p * kc * NR + kk * NR + NR];
                let lanes = NR.min(nc - p * NR);
                let mut lane = 0;
                while lane < lanes {
                    // one run along an output row
                    let run = (g.ow - ox).min(lanes - lane);
                    let iy = (oy * g.stride + ky) as isize - g.pad as isize;
                    if iy < 0 || iy >= g.h as isize {
                        dst[lane..lane + run].fill(0.0);
                    } else {
                        let row = &chan[iy as usize * g.w..(iy as usize + 1) * g.w];
                        let x0 = (ox * g.stride + kx) as isize - g.pad as isize;
                        // Lanes i with 0 <= x0 + i * stride < w read the row; the padding around
                        // them is zero (one or two lanes at each end of a run for 3x3 kernels).
                        let s = g.stride as isize;
                        let first = if x0 >= 0 { 0 } else { ((-x0 + s - 1) / s) as usize }.min(run);
                        let last = if x0 >= g.w as isize { 0 } else { ((g.w as isize - x0 + s - 1) / s) as usize };
                        let last = last.clamp(first, run);
                        let out = &mut dst[lane..lane + run];
                        out[..first].fill(0.0);
                        out[last..].fill(0.0);
                        let start = (x0 + first as isize * s) as usize;
                        if g.stride == 1 {
                            out[first..last].copy_from_slice(&row[start..start + (last - first)]);
                        } else {
                            for (i, d) in out[first..last].iter_mut().enumerate() {
                                *d = row[start + i * g.stride];
                            }
                        }
                    }
                    lane += run;
                    ox += run;
                    if ox == g.ow {
                        ox = 0;
                        oy += 1;
                    }
                }
                dst[lanes..].fill(0.0);
            }
        }
    }
}

/// 1x1, stride 1, no padding: B is the input itself, `[C_in, H*W]`.
struct Plain<'a> {
    x: &'a [f32],
    k: usize,
    n: usize,
}

impl PackB for Plain<'_> {
    fn pack(&self, b: usize, k0: usize, kc: usize, n0: usize, nc: usize, buf: &mut [f32]) {
        let img = &self.x[b * self.k * self.n..];
        for p in 0..nc.div_ceil(NR) {
            let lanes = NR.min(nc - p * NR);
            for kk in 0..kc {
                let src = &img[(k0 + kk) * self.n + n0 + p * NR..][..lanes];
                let dst = &mut buf[p * kc * NR + kk * NR..][..NR];
                dst[..lanes].copy_from_slice(src);
                dst[lanes..].fill(0.0);
            }
        }
    }
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(d) => d,
        _ => candle_core::bail!("conv2d kernel: {what} must be f32"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("conv2d kernel: {what} must be contiguous"),
    }
}

/// The packed weights, in the precision and layout of the unit the products run on (bf16 ones
/// hold half the memory of f32, and nothing else keeps the f32 weights).
enum Weights {
    F32(PackedA),
    Amx(PackedA16),
    Avx512Bf16(PackedAPairs),
}

/// A convolution's weights packed once for the GEMM (the layer keeps only these on the kernel
/// path, so packing costs neither time per call nor extra memory).
pub struct PackedConv {
    a: Weights,
    pub c_out: usize,
    pub c_in: usize,
    pub kh: usize,
    pub kw: usize,
    pub p: ConvParams,
}

impl PackedConv {
    /// `weight`: contiguous f32 `[C_out, C_in, kh, kw]`; bf16 `products` need their unit
    /// ([`Bf16Isa::supported`]).
    pub fn new(weight: &Tensor, p: ConvParams, products: Products) -> Result<Self> {
        let (c_out, c_in, kh, kw) = weight.dims4()?;
        let w = weight.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let k = c_in * kh * kw;
        let a = match products {
            Products::F32 => Weights::F32(PackedA::new(&w, c_out, k, k, 1)),
            Products::Bf16(isa) if !isa.supported() => {
                candle_core::bail!("conv2d kernel: bf16 products on {} need a CPU with it", isa.name())
            }
            Products::Bf16(Bf16Isa::Amx) => Weights::Amx(PackedA16::new(&w, c_out, k, k, 1)),
            Products::Bf16(Bf16Isa::Avx512Bf16) => Weights::Avx512Bf16(PackedAPairs::new(&w, c_out, k, k, 1)),
        };
        Ok(Self { a, c_out, c_in, kh, kw, p })
    }

    /// `out += W * B`, or `out = W * B` when `out` is a fresh zeroed buffer (`prefilled` false).
    fn gemm(&self, b: &dyn PackB, batch: usize, n: usize, out: &mut [f32], prefilled: bool) {
        match &self.a {
            Weights::F32(a) => gemm_packed(a, BSrc::Pack(b), batch, n, out),
            Weights::Amx(a) => gemm_bf16(a, BSrc16::Pack(b), batch, n, out, prefilled),
            Weights::Avx512Bf16(a) => gemm_pairs(a, BPairs::Pack(b), batch, n, out, prefilled),
        }
    }

    /// `bias`: `[C_out]`, `[1, C_out]` or `[B, C_out]` (the layer's bias with a per-item term
    /// folded in); `residual`: `[B, C_out, oh, ow]`, added to the output.
    fn run(
        &self,
        x: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(x.0, x.1, "input")?;
        let (batch, c_in, h, wd) = x.1.shape().dims4()?;
        let (p, kh, kw, c_out) = (self.p, self.kh, self.kw, self.c_out);
        if c_in != self.c_in {
            candle_core::bail!("conv2d kernel: input has {c_in} channels, weight expects {}", self.c_in);
        }
        if h + 2 * p.padding < kh || wd + 2 * p.padding < kw {
            candle_core::bail!("conv2d kernel: input smaller than the kernel");
        }
        let oh = (h + 2 * p.padding - kh) / p.stride + 1;
        let ow = (wd + 2 * p.padding - kw) / p.stride + 1;
        let n = oh * ow;
        let k = c_in * kh * kw;
        let bias = match bias {
            Some((bs, bl)) => {
                let bv = f32_slice(bs, bl, "bias")?;
                if bv.len() != c_out && bv.len() != batch * c_out {
                    candle_core::bail!("conv2d kernel: bias {:?} for {batch} x {c_out} outputs", bl.shape());
                }
                Some(bv)
            }
            None => None,
        };
        // Output row i (batch item i / c_out, channel i % c_out) starts as residual + bias, written
        // once (a zeroed buffer filled afterwards would be written twice).
        let row_bias = |i: usize| bias.map(|bv| if bv.len() == batch * c_out { bv[i] } else { bv[i % c_out] });
        let mut out = match residual {
            Some((rs, rl)) => {
                if rl.shape().dims() != [batch, c_out, oh, ow] {
                    candle_core::bail!(
                        "conv2d kernel: residual {:?}, output [{batch}, {c_out}, {oh}, {ow}]",
                        rl.shape()
                    );
                }
                let r = f32_slice(rs, rl, "residual")?;
                let mut out = Vec::with_capacity(batch * c_out * n);
                for (i, row) in r.chunks(n).enumerate() {
                    match row_bias(i) {
                        Some(b) => out.extend(row.iter().map(|v| v + b)),
                        None => out.extend_from_slice(row),
                    }
                }
                out
            }
            None if bias.is_some() => {
                let mut out = Vec::with_capacity(batch * c_out * n);
                for i in 0..batch * c_out {
                    out.resize(out.len() + n, row_bias(i).unwrap_or(0.0));
                }
                out
            }
            None => vec![0f32; batch * c_out * n],
        };
        let prefilled = bias.is_some() || residual.is_some();
        if kh == 1 && kw == 1 && p.stride == 1 && p.padding == 0 {
            self.gemm(&Plain { x: xs, k, n }, batch, n, &mut out, prefilled);
        } else {
            let g = Geometry { c_in, h, w: wd, kh, kw, ow, stride: p.stride, pad: p.padding };
            self.gemm(&Im2Col { x: xs, g: &g }, batch, n, &mut out, prefilled);
        }
        Ok((CpuStorage::F32(out), Shape::from((batch, c_out, oh, ow))))
    }
}

struct ConvOp<'a>(&'a PackedConv);

impl CustomOp1 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "diffedit-conv2d"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.run((s1, l1), None, None)
    }
}

impl CustomOp2 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "diffedit-conv2d-bias"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.run((s1, l1), Some((s2, l2)), None)
    }
}

impl CustomOp3 for ConvOp<'_> {
    fn name(&self) -> &'static str {
        "diffedit-conv2d-bias-residual"
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
        self.0.run((s1, l1), Some((s2, l2)), Some((s3, l3)))
    }
}

/// The convolution on the kernel path (`x`: f32 on the CPU), plus `bias` (`[C_out]` or
/// `[B, C_out]`) and `residual` (the output's shape) when given.
pub fn conv2d_packed(x: &Tensor, w: &PackedConv, bias: Option<&Tensor>, residual: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match (bias, residual) {
        (Some(b), Some(r)) => x.apply_op3_no_bwd(&b.contiguous()?, &r.contiguous()?, &ConvOp(w)),
        (None, Some(r)) => {
            let zero = Tensor::zeros(w.c_out, candle_core::DType::F32, x.device())?;
            x.apply_op3_no_bwd(&zero, &r.contiguous()?, &ConvOp(w))
        }
        (Some(b), None) => x.apply_op2_no_bwd(&b.contiguous()?, &ConvOp(w)),
        (None, None) => x.apply_op1_no_bwd(&ConvOp(w)),
    }
}
