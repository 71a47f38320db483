//! Our own CPU kernels for the operations that dominate Stable Diffusion on CPU, as candle
//! custom ops: convolution as an implicit GEMM ([`conv`]), GroupNorm with a fused SiLU
//! ([`norm`]) and attention that never holds the whole score matrix ([`attention`]).
//!
//! The model code calls the wrappers here; each takes the kernel path only for f32 tensors on
//! the CPU of an x86-64 machine with AVX-512 and otherwise runs the stock candle ops, so CUDA,
//! Metal and other dtypes behave exactly as before. `DIFFEDIT_KERNELS=0` turns the kernels off
//! (for timing the stock path in the same build).

pub mod attention;
pub mod conv;
pub mod gemm;
pub mod norm;

use std::sync::OnceLock;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Whether the kernels are usable at all here (CPU features, `DIFFEDIT_KERNELS`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        let off = std::env::var("DIFFEDIT_KERNELS").map(|v| v == "0" || v == "off").unwrap_or(false);
        !off && gemm::available()
    })
}

/// Whether `t` takes the kernel path: f32 on the CPU, kernels enabled.
pub fn use_kernels(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && enabled()
}

/// `conv.forward(x)` through the implicit-GEMM kernel where it applies.
pub fn conv2d(conv: &candle_nn::Conv2d, x: &Tensor) -> Result<Tensor> {
    let cfg = conv.config();
    if use_kernels(x) && conv.weight().dtype() == DType::F32 && cfg.groups == 1 && cfg.dilation == 1 {
        let p = conv::ConvParams { stride: cfg.stride, padding: cfg.padding };
        conv::conv2d_f32(x, conv.weight(), conv.bias(), p)
    } else {
        conv.forward(x)
    }
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

/// `candle_nn::group_norm` returning our [`GroupNorm`].
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    GroupNorm::new(groups, channels, eps, vb)
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
            let conv = candle_nn::Conv2d::new(wt, Some(bias), cfg);
            let want = conv.forward(&x)?;
            let got = conv2d(&conv, &x)?;
            assert_eq!(got.dims(), want.dims());
            let r = rel(&got, &want);
            assert!(r < 1e-5, "{:?}: rel {r}", (b, ci, co, h, w, k, s, p));
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
}
