//! 2-D convolution (NCHW, f32, groups 1, dilation 1) as an implicit GEMM: `out_b[C_out, Ho*Wo] =
//! W[C_out, C_in*kh*kw] * im2col(x_b)`, where the im2col columns are produced one cache-sized
//! block at a time by the GEMM's B packer and the output is written in NCHW directly (no
//! transposes, no full im2col matrix).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::gemm::{gemm_packed, PackB, PackedA, NR};

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
                        if g.stride == 1 && x0 >= 0 && x0 as usize + run <= g.w {
                            dst[lane..lane + run].copy_from_slice(&row[x0 as usize..x0 as usize + run]);
                        } else {
                            for (i, d) in dst[lane..lane + run].iter_mut().enumerate() {
                                let ix = x0 + (i * g.stride) as isize;
                                *d = if ix >= 0 && (ix as usize) < g.w { row[ix as usize] } else { 0.0 };
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

fn conv_cpu(
    p: ConvParams,
    x: (&CpuStorage, &Layout),
    w: (&CpuStorage, &Layout),
    bias: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let xs = f32_slice(x.0, x.1, "input")?;
    let ws = f32_slice(w.0, w.1, "weight")?;
    let (batch, c_in, h, wd) = x.1.shape().dims4()?;
    let (c_out, wc_in, kh, kw) = w.1.shape().dims4()?;
    if wc_in != c_in {
        candle_core::bail!("conv2d kernel: input has {c_in} channels, weight expects {wc_in}");
    }
    if h + 2 * p.padding < kh || wd + 2 * p.padding < kw {
        candle_core::bail!("conv2d kernel: input smaller than the kernel");
    }
    let oh = (h + 2 * p.padding - kh) / p.stride + 1;
    let ow = (wd + 2 * p.padding - kw) / p.stride + 1;
    let n = oh * ow;
    let k = c_in * kh * kw;
    let mut out = vec![0f32; batch * c_out * n];
    if let Some((bs, bl)) = bias {
        let bv = f32_slice(bs, bl, "bias")?;
        for (i, row) in out.chunks_mut(n).enumerate() {
            row.fill(bv[i % c_out]);
        }
    }
    let a = PackedA::new(ws, c_out, k, k, 1);
    if kh == 1 && kw == 1 && p.stride == 1 && p.padding == 0 {
        gemm_packed(&a, &Plain { x: xs, k, n }, batch, n, &mut out);
    } else {
        let g = Geometry { c_in, h, w: wd, kh, kw, ow, stride: p.stride, pad: p.padding };
        gemm_packed(&a, &Im2Col { x: xs, g: &g }, batch, n, &mut out);
    }
    Ok((CpuStorage::F32(out), Shape::from((batch, c_out, oh, ow))))
}

struct ConvOp(ConvParams);

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "diffedit-conv2d"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        conv_cpu(self.0, (s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "diffedit-conv2d-bias"
    }
    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        conv_cpu(self.0, (s1, l1), (s2, l2), Some((s3, l3)))
    }
}

/// The convolution on the kernel path; the caller has checked [`super::use_kernels`].
pub fn conv2d_f32(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, p: ConvParams) -> Result<Tensor> {
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    match bias {
        Some(b) => x.apply_op3_no_bwd(&weight, &b.contiguous()?, &ConvOp(p)),
        None => x.apply_op2_no_bwd(&weight, &ConvOp(p)),
    }
}
