//! Our own CPU kernels for the operations that dominate Stable Diffusion on CPU, as candle
//! custom ops: convolution as an implicit GEMM ([`conv`]), GroupNorm with a fused SiLU
//! ([`norm`]) and attention that never holds the whole score matrix ([`attention`]).
//!
//! The model code calls the wrappers here; each takes the kernel path only for f32 tensors on
//! the CPU of an x86-64 machine with AVX-512 and otherwise runs the stock candle ops, so CUDA,
//! Metal and other dtypes behave exactly as before. `DIFFEDIT_KERNELS=0` turns the kernels off
//! (for timing the stock path in the same build).

pub mod amx;
pub mod attention;
pub mod avx512bf16;
pub mod conv;
pub mod gemm;
pub mod linear;
pub mod norm;
pub mod precision;
pub mod vmath;

pub use precision::{
    bf16_isa, bf16_isas_supported, bf16_matmul_available, building_precision, building_products, compute_info,
    compute_mode, with_bf16_isa, with_matmul_precision, Bf16Isa, ComputeInfo, Isa, MatmulPrecision, Precision,
    Products,
};

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

/// Whether the kernels are usable at all here (CPU features, `DIFFEDIT_KERNELS`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("DIFFEDIT_KERNELS").map(|v| v == "0" || v == "off").unwrap_or(false);
        let on = !off && gemm::available();
        if on {
            tune_allocator();
        }
        on
    })
}

/// candle allocates a fresh buffer for every op's output; glibc serves large ones with mmap and
/// unmaps them on free, so every op page-faults its output in again (a fifth of the UNet's time
/// went to the kernel's page-fault path). Raising the mmap threshold to glibc's maximum (32 MiB)
/// and not trimming the heap lets freed buffers be reused.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Whether `t` takes the kernel path: f32 on the CPU, kernels enabled.
pub fn use_kernels(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && enabled()
}

/// A 2-D convolution layer with candle-nn's weight names and init hints. Where the kernels apply
/// (f32 weights on the CPU, groups 1, dilation 1) the weights are packed for the GEMM at load
/// time and only the packed copy is kept; elsewhere it is candle-nn's `Conv2d`.
#[derive(Clone)]
pub enum Conv2d {
    Packed { w: Arc<conv::PackedConv>, bias: Option<Tensor> },
    Stock(candle_nn::Conv2d),
}

impl std::fmt::Debug for Conv2d {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Packed { w, .. } => write!(f, "Conv2d(packed {}x{}x{}x{})", w.c_out, w.c_in, w.kh, w.kw),
            Self::Stock(c) => write!(f, "{c:?}"),
        }
    }
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv2dConfig) -> Result<Self> {
        if use_kernels(&weight) && cfg.groups == 1 && cfg.dilation == 1 {
            let p = conv::ConvParams { stride: cfg.stride, padding: cfg.padding };
            Ok(Self::Packed { w: Arc::new(conv::PackedConv::new(&weight, p, building_products()?)?), bias })
        } else {
            Ok(Self::Stock(candle_nn::Conv2d::new(weight, bias, cfg)))
        }
    }

    /// The dtype the layer computes in.
    pub fn dtype(&self) -> DType {
        match self {
            Self::Packed { .. } => DType::F32,
            Self::Stock(c) => c.weight().dtype(),
        }
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Packed { w, bias } => {
                if x.dtype() != DType::F32 || !x.device().is_cpu() {
                    candle_core::bail!(
                        "conv2d: the layer is f32 on the CPU, input is {:?} on {:?}",
                        x.dtype(),
                        x.device()
                    );
                }
                conv::conv2d_packed(x, w, bias.as_ref(), None)
            }
            Self::Stock(c) => c.forward(x),
        }
    }
}

impl Conv2d {
    /// `conv(x) + extra_bias[:, :, None, None] + residual`, fused into the GEMM on the kernel path
    /// (`extra_bias`: `[1 or B, C_out]`; `residual`: the output's shape).
    pub fn forward_fused(&self, x: &Tensor, extra_bias: Option<&Tensor>, residual: Option<&Tensor>) -> Result<Tensor> {
        match self {
            Self::Packed { w, bias } if x.dtype() == DType::F32 && x.device().is_cpu() => {
                let bias = match (bias, extra_bias) {
                    (Some(b), Some(e)) => Some(e.broadcast_add(&b.unsqueeze(0)?)?),
                    (None, Some(e)) => Some(e.clone()),
                    (b, None) => b.clone(),
                };
                conv::conv2d_packed(x, w, bias.as_ref(), residual)
            }
            _ => {
                let mut h = self.forward(x)?;
                if let Some(e) = extra_bias {
                    h = h.broadcast_add(&e.unsqueeze(2)?.unsqueeze(3)?)?;
                }
                match residual {
                    Some(r) => r + h,
                    None => Ok(h),
                }
            }
        }
    }
}

/// A linear layer with candle-nn's weight names and init hints; on the kernel path the weight is
/// packed for the GEMM at load time (only the packed copy is kept).
#[derive(Clone)]
pub enum Linear {
    Packed { w: Arc<linear::PackedLinear>, bias: Option<Tensor> },
    Stock(candle_nn::Linear),
}

impl std::fmt::Debug for Linear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Packed { w, .. } => write!(f, "Linear(packed {} -> {})", w.d_in, w.d_out),
            Self::Stock(l) => write!(f, "{l:?}"),
        }
    }
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Result<Self> {
        if use_kernels(&weight) {
            Ok(Self::Packed { w: Arc::new(linear::PackedLinear::new(&weight, building_products()?)?), bias })
        } else {
            Ok(Self::Stock(candle_nn::Linear::new(weight, bias)))
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Packed { w, bias } => {
                if x.dtype() != DType::F32 || !x.device().is_cpu() {
                    candle_core::bail!(
                        "linear: the layer is f32 on the CPU, input is {:?} on {:?}",
                        x.dtype(),
                        x.device()
                    );
                }
                linear::linear_packed(x, w, bias.as_ref())
            }
            Self::Stock(l) => l.forward(x),
        }
    }
}

/// `candle_nn::linear` returning our [`Linear`].
pub fn linear(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((d_out, d_in), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
    let bound = 1. / (d_in as f64).sqrt();
    let bias = vb.get_with_hints(d_out, "bias", candle_nn::Init::Uniform { lo: -bound, up: bound })?;
    Linear::new(weight, Some(bias))
}

/// `candle_nn::linear_no_bias` returning our [`Linear`].
pub fn linear_no_bias(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((d_out, d_in), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
    Linear::new(weight, None)
}

/// `candle_nn::conv2d` (same weight names and init hints) returning our [`Conv2d`].
pub fn conv2d(c_in: usize, c_out: usize, k: usize, cfg: Conv2dConfig, vb: VarBuilder) -> Result<Conv2d> {
    let weight =
        vb.get_with_hints((c_out, c_in / cfg.groups, k, k), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
    let bound = 1. / ((c_in / cfg.groups * k * k) as f64).sqrt();
    let bias = vb.get_with_hints(c_out, "bias", candle_nn::Init::Uniform { lo: -bound, up: bound })?;
    Conv2d::new(weight, Some(bias), cfg)
}

/// candle-nn's `GroupNorm` (same weights, same arithmetic) with a fused-SiLU variant.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
        let inner = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(Self { inner, weight, bias, groups, eps })
    }

    fn kernel(&self, x: &Tensor, silu: bool) -> Option<Result<Tensor>> {
        (use_kernels(x) && x.rank() >= 2 && self.weight.dtype() == DType::F32)
            .then(|| norm::group_norm_f32(x, &self.weight, &self.bias, self.groups, self.eps, silu))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.kernel(x, false).unwrap_or_else(|| self.inner.forward(x))
    }

    /// `silu(group_norm(x))`.
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.kernel(x, true).unwrap_or_else(|| candle_nn::ops::silu(&self.inner.forward(x)?))
    }
}

struct GegluOp;

impl candle_core::CustomOp1 for GegluOp {
    fn name(&self) -> &'static str {
        "diffedit-geglu"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let h = match (s, l.contiguous_offsets()) {
            (candle_core::CpuStorage::F32(d), Some((a, b))) => &d[a..b],
            _ => candle_core::bail!("geglu kernel: contiguous f32 expected"),
        };
        let dims = l.shape().dims();
        let width = *dims.last().unwrap_or(&0);
        if !width.is_multiple_of(2) {
            candle_core::bail!("geglu kernel: last dimension {width} is odd");
        }
        let inner = width / 2;
        let mut out = vec![0f32; h.len() / 2];
        if inner > 0 {
            out.par_chunks_mut(inner).zip(h.par_chunks(width)).for_each(|(o, row)| {
                // SAFETY: the kernels (and so AVX-512) are enabled where this op is used.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    vmath::geglu_row(&row[..inner], &row[inner..], o)
                };
            });
        }
        let mut odims = dims.to_vec();
        *odims.last_mut().expect("rank >= 1") = inner;
        Ok((candle_core::CpuStorage::F32(out), candle_core::Shape::from(odims)))
    }
}

/// diffusers' GEGLU on the projection `h` `[..., 2 * inner]`: `h[..., :inner] *
/// gelu(h[..., inner:])` (exact GELU), in one pass on the kernel path.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    let inner = h.dim(candle_core::D::Minus1)? / 2;
    if use_kernels(h) {
        return h.contiguous()?.apply_op1_no_bwd(&GegluOp);
    }
    let value = h.narrow(candle_core::D::Minus1, 0, inner)?;
    let gate = h.narrow(candle_core::D::Minus1, inner, inner)?.gelu_erf()?;
    value * gate
}

/// `candle_nn::group_norm` returning our [`GroupNorm`].
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    GroupNorm::new(groups, channels, eps, vb)
}

/// A B stored as `[K, N]` per batch item, through the f32 packers' interface: the plain B the
/// GEMM tests feed every packer path with.
#[cfg(test)]
pub(crate) struct DenseB<'a>(pub &'a [f32], pub usize, pub usize);

#[cfg(test)]
impl gemm::PackB for DenseB<'_> {
    fn pack(&self, b: usize, k0: usize, kc: usize, n0: usize, nc: usize, buf: &mut [f32]) {
        use gemm::NR;
        let (k, n) = (self.1, self.2);
        for p in 0..nc.div_ceil(NR) {
            for kk in 0..kc {
                for l in 0..NR {
                    let col = n0 + p * NR + l;
                    buf[p * kc * NR + kk * NR + l] =
                        if p * NR + l < nc { self.0[b * k * n + (k0 + kk) * n + col] } else { 0.0 };
                }
            }
        }
    }
}

/// A deterministic pseudo-random matrix in [-1, 1) for the kernels' unit tests (no random-number
/// dependency, the same values on every machine).
#[cfg(test)]
pub(crate) fn test_matrix(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Module};

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        let n = b.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
        d / n.max(1e-30)
    }

    #[test]
    fn conv_matches_candle() -> Result<()> {
        if !enabled() {
            return Ok(());
        }
        let dev = Device::Cpu;
        // (batch, c_in, c_out, h, w, k, stride, padding)
        for &(b, ci, co, h, w, k, s, p) in &[
            (1, 4, 320, 17, 9, 3, 1, 1),
            (2, 13, 7, 33, 40, 3, 1, 1),
            (1, 16, 24, 9, 9, 3, 2, 1),
            (1, 16, 24, 10, 11, 3, 2, 0),
            (2, 40, 50, 19, 21, 1, 1, 0),
            (1, 300, 29, 70, 5, 3, 1, 1),
            (1, 3, 5, 8, 8, 1, 2, 0),
        ] {
            let x = Tensor::randn(0f32, 1.0, (b, ci, h, w), &dev)?;
            let wt = Tensor::randn(0f32, 0.2, (co, ci, k, k), &dev)?;
            let bias = Tensor::randn(0f32, 1.0, co, &dev)?;
            let cfg = candle_nn::Conv2dConfig { padding: p, stride: s, ..Default::default() };
            let want = candle_nn::Conv2d::new(wt.clone(), Some(bias.clone()), cfg).forward(&x)?;
            let conv = Conv2d::new(wt, Some(bias), cfg)?;
            assert!(matches!(conv, Conv2d::Packed { .. }));
            let got = conv.forward(&x)?;
            assert_eq!(got.dims(), want.dims());
            let r = rel(&got, &want);
            assert!(r < 1e-5, "{:?}: rel {r}", (b, ci, co, h, w, k, s, p));
        }
        Ok(())
    }

    #[test]
    fn fused_conv_and_linear_match_candle() -> Result<()> {
        if !enabled() {
            return Ok(());
        }
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 21, 13, 11), &dev)?;
        let wt = Tensor::randn(0f32, 0.2, (37, 21, 3, 3), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, 37, &dev)?;
        let extra = Tensor::randn(0f32, 1.0, (1, 37), &dev)?;
        let cfg = candle_nn::Conv2dConfig { padding: 1, ..Default::default() };
        let stock = candle_nn::Conv2d::new(wt.clone(), Some(bias.clone()), cfg).forward(&x)?;
        let res = Tensor::randn(0f32, 1.0, stock.dims(), &dev)?;
        let want = (stock.broadcast_add(&extra.unsqueeze(2)?.unsqueeze(3)?)? + &res)?;
        let conv = Conv2d::new(wt, Some(bias), cfg)?;
        assert!(rel(&conv.forward_fused(&x, Some(&extra), Some(&res))?, &want) < 1e-5);
        let extra2 = Tensor::randn(0f32, 1.0, (2, 37), &dev)?;
        let want2 = (conv.forward(&x)?.broadcast_add(&extra2.unsqueeze(2)?.unsqueeze(3)?))?;
        assert!(rel(&conv.forward_fused(&x, Some(&extra2), None)?, &want2) < 1e-5);

        for (t, din, dout) in [(3, 5, 7), (77, 768, 320), (130, 40, 70)] {
            let x = Tensor::randn(0f32, 1.0, (2, t, din), &dev)?;
            let w = Tensor::randn(0f32, 0.1, (dout, din), &dev)?;
            let b = Tensor::randn(0f32, 1.0, dout, &dev)?;
            let want = candle_nn::Linear::new(w.clone(), Some(b.clone())).forward(&x)?;
            let got = Linear::new(w.clone(), Some(b))?.forward(&x)?;
            assert_eq!(got.dims(), want.dims());
            assert!(rel(&got, &want) < 1e-5, "{t} {din} {dout}");
            let want = candle_nn::Linear::new(w.clone(), None).forward(&x)?;
            assert!(rel(&Linear::new(w, None)?.forward(&x)?, &want) < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn group_norm_silu_matches_candle() -> Result<()> {
        if !enabled() {
            return Ok(());
        }
        let dev = Device::Cpu;
        let x = (Tensor::randn(0f32, 2.0, (2, 64, 7, 9), &dev)? + 3.0)?;
        let g = Tensor::randn(1f32, 0.3, 64, &dev)?;
        let bb = Tensor::randn(0f32, 0.3, 64, &dev)?;
        let vb = candle_nn::VarBuilder::from_tensors(
            [("weight".to_string(), g), ("bias".to_string(), bb)].into_iter().collect(),
            DType::F32,
            &dev,
        );
        let gn = GroupNorm::new(16, 64, 1e-5, vb)?;
        let want = candle_nn::ops::silu(&gn.inner.forward(&x)?)?;
        assert!(rel(&gn.forward_silu(&x)?, &want) < 1e-6);
        assert!(rel(&gn.forward(&x)?, &gn.inner.forward(&x)?) < 1e-6);
        Ok(())
    }

    #[test]
    fn attention_matches_reference() -> Result<()> {
        if !enabled() {
            return Ok(());
        }
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (3, 150, 40), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (3, 77, 40), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (3, 77, 24), &dev)?;
        let s = 40f64.powf(-0.5);
        let want = candle_nn::ops::softmax_last_dim(&(q.matmul(&k.t()?)? * s)?)?.matmul(&v)?;
        let got = attention::attention_f32(&q, &k, &v, s)?;
        assert!(rel(&got, &want) < 1e-5);
        Ok(())
    }

    /// bf16 products, on every unit this CPU has: against the same arithmetic done exactly
    /// (operands and unnormalised probabilities rounded to bf16, sums in f64), and against f32
    /// attention; shapes with partial blocks of queries, keys and channels.
    #[test]
    fn bf16_attention_matches_rounded_reference() -> Result<()> {
        let isas = bf16_isas_supported();
        if isas.is_empty() {
            eprintln!("skipped: this CPU has neither AMX nor AVX512-BF16");
            return Ok(());
        }
        let dev = Device::Cpu;
        for isa in isas {
            for &(n, lq, lk, d, dv) in
                &[(3, 150, 77, 40, 24), (2, 64, 300, 80, 80), (1, 5, 3, 8, 33), (2, 97, 130, 7, 40)]
            {
                let what = (isa, n, lq, lk, d, dv);
                let q = Tensor::randn(0f32, 1.0, (n, lq, d), &dev)?;
                let k = Tensor::randn(0f32, 1.0, (n, lk, d), &dev)?;
                let v = Tensor::randn(0f32, 1.0, (n, lk, dv), &dev)?;
                let s = (d as f64).powf(-0.5);
                let got = attention::attention_bf16(&q, &k, &v, s, isa)?;
                assert_eq!(got.dims(), &[n, lq, dv]);
                let f32_ref = attention::attention_f32(&q, &k, &v, s)?;
                let r = rel(&got, &f32_ref);
                assert!(r < 2e-2, "{what:?}: vs f32 {r}");
                let b = |x: f32| amx::f32_of(amx::bf16(x)) as f64;
                let (qv, kv, vv) = (
                    q.flatten_all()?.to_vec1::<f32>()?,
                    k.flatten_all()?.to_vec1::<f32>()?,
                    v.flatten_all()?.to_vec1::<f32>()?,
                );
                let mut want = vec![0f32; n * lq * dv];
                for h in 0..n {
                    for i in 0..lq {
                        let scores: Vec<f64> = (0..lk)
                            .map(|j| {
                                (0..d).map(|c| b(qv[(h * lq + i) * d + c]) * b(kv[(h * lk + j) * d + c])).sum::<f64>()
                            })
                            .collect();
                        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let e: Vec<f64> = scores.iter().map(|x| ((x - max) * s).exp()).collect();
                        let sum: f64 = e.iter().sum();
                        for c in 0..dv {
                            let acc: f64 = (0..lk).map(|j| b(e[j] as f32) * b(vv[(h * lk + j) * dv + c])).sum();
                            want[(h * lq + i) * dv + c] = (acc / sum) as f32;
                        }
                    }
                }
                let r = rel(&got, &Tensor::from_vec(want, (n, lq, dv), &dev)?);
                assert!(r < 1e-3, "{what:?}: vs rounded reference {r}");
            }
        }
        Ok(())
    }

    /// Convolutions and linear layers built for bf16 products on each unit this CPU has: against
    /// candle's f32 layers within bf16's rounding (relative L2 ~ 2^-9), clearly apart from f32.
    #[test]
    fn bf16_layers_match_f32_within_bf16_rounding() -> Result<()> {
        let isas = bf16_isas_supported();
        if isas.is_empty() {
            eprintln!("skipped: this CPU has neither AMX nor AVX512-BF16");
            return Ok(());
        }
        let dev = Device::Cpu;
        for isa in isas {
            let bf16 = |f: &mut dyn FnMut() -> Result<Tensor>| {
                with_bf16_isa(isa, || with_matmul_precision(MatmulPrecision::Bf16, f))
            };
            for &(b, ci, co, h, w, k, s, p) in
                &[(2, 13, 7, 33, 40, 3, 1, 1), (1, 16, 24, 10, 11, 3, 2, 0), (2, 40, 50, 19, 21, 1, 1, 0)]
            {
                let x = Tensor::randn(0f32, 1.0, (b, ci, h, w), &dev)?;
                let wt = Tensor::randn(0f32, 0.2, (co, ci, k, k), &dev)?;
                let bias = Tensor::randn(0f32, 1.0, co, &dev)?;
                let cfg = candle_nn::Conv2dConfig { padding: p, stride: s, ..Default::default() };
                let want = candle_nn::Conv2d::new(wt.clone(), Some(bias.clone()), cfg).forward(&x)?;
                let got = bf16(&mut || Conv2d::new(wt.clone(), Some(bias.clone()), cfg)?.forward(&x))?;
                let r = rel(&got, &want);
                assert!(r > 1e-5 && r < 1e-2, "{isa:?} conv {:?}: rel {r}", (b, ci, co, h, w, k, s, p));
            }
            for (t, din, dout) in [(3, 5, 7), (77, 768, 320), (130, 41, 70)] {
                let x = Tensor::randn(0f32, 1.0, (2, t, din), &dev)?;
                let wt = Tensor::randn(0f32, 0.1, (dout, din), &dev)?;
                let bias = Tensor::randn(0f32, 0.1, dout, &dev)?;
                let want = candle_nn::Linear::new(wt.clone(), Some(bias.clone())).forward(&x)?;
                let got = bf16(&mut || Linear::new(wt.clone(), Some(bias.clone()))?.forward(&x))?;
                let r = rel(&got, &want);
                assert!(r > 1e-5 && r < 1e-2, "{isa:?} linear {t} {din} {dout}: rel {r}");
            }
        }
        Ok(())
    }
}
