//! diffusers' spatial transformer as used by the Stable Diffusion UNet: `Transformer2DModel`
//! (continuous input), `BasicTransformerBlock` (self-attention, cross-attention, GEGLU
//! feed-forward, each behind a pre-LayerNorm and a residual) and `Attention`, with diffusers'
//! weight names.
//!
//! All the attention arithmetic goes through [`scaled_dot_product_attention`], so that a fused
//! kernel (flash attention on CUDA, say) can replace it in one place.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{LayerNorm, VarBuilder};

use crate::kernels::{self, Conv2d, GroupNorm, Linear};

/// Upper bound, in bytes, for one block of f32 attention scores. Queries are processed in chunks
/// so that `batch * heads * chunk * keys * 4` stays under it: SD at 64x64 latents has 4096 tokens,
/// and the whole score matrix for a batch of 2 with 8 heads would take 1 GiB.
pub const ATTENTION_SCORE_BUDGET_BYTES: usize = 256 << 20;

/// `softmax(q k^T * scale) v` for `q` `[N, Lq, d]`, `k` `[N, Lk, d]`, `v` `[N, Lk, dv]` (N =
/// batch x heads), returning `[N, Lq, dv]` in `v`'s dtype.
///
/// The softmax always runs in f32. With `upcast` (diffusers' `upcast_attention`) the scores
/// themselves are computed in f32 too, which matters for half-precision models whose logits
/// overflow f16 (SD 2.1 at 768 px). Queries are processed in chunks that keep one block of scores
/// under [`ATTENTION_SCORE_BUDGET_BYTES`]; rows of the softmax are independent, so chunking
/// changes the result only by the GEMM's rounding (its blocking depends on the row count).
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, upcast: bool) -> Result<Tensor> {
    // f32 throughout on the kernel path, so `upcast` changes nothing there.
    if kernels::use_kernels(q) && k.dtype() == DType::F32 && v.dtype() == DType::F32 {
        return kernels::attention::attention_f32(q, k, v, scale);
    }
    attention_in_chunks(q, k, v, scale, upcast, ATTENTION_SCORE_BUDGET_BYTES)
}

/// [`scaled_dot_product_attention`] with an explicit score budget (exposed for tests).
pub fn attention_in_chunks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    upcast: bool,
    budget_bytes: usize,
) -> Result<Tensor> {
    let (n, lq, _) = q.dims3()?;
    let lk = k.dim(1)?;
    let dtype = v.dtype();
    let score_dtype = if upcast { DType::F32 } else { dtype };
    let k_t = k.to_dtype(score_dtype)?.t()?;
    let row_bytes = n * lk * DType::F32.size_in_bytes();
    let chunk = (budget_bytes / row_bytes.max(1)).clamp(1, lq.max(1));
    let mut outs = Vec::with_capacity(lq.div_ceil(chunk));
    let mut start = 0;
    while start < lq {
        let len = chunk.min(lq - start);
        let q_chunk = q.narrow(1, start, len)?.to_dtype(score_dtype)?;
        let scores = (q_chunk.matmul(&k_t)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?;
        outs.push(probs.to_dtype(dtype)?.matmul(v)?);
        start += len;
    }
    if outs.len() == 1 {
        Ok(outs.remove(0))
    } else {
        Tensor::cat(&outs, 1)
    }
}

/// diffusers' `Attention` as built by `BasicTransformerBlock`: bias-free q/k/v projections,
/// `to_out.0` with bias, `heads` heads of `dim_head` channels.
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    dim_head: usize,
    upcast: bool,
    /// The products' precision and unit, as the layer was built ([`kernels::with_matmul_precision`]).
    products: kernels::Products,
}

impl Attention {
    /// `context_dim` = `None` for self-attention (keys and values from the queries' input).
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: Option<usize>,
        heads: usize,
        dim_head: usize,
        upcast: bool,
    ) -> Result<Self> {
        let inner = heads * dim_head;
        let context_dim = context_dim.unwrap_or(query_dim);
        Ok(Self {
            to_q: kernels::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: kernels::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: kernels::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: kernels::linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
            dim_head,
            upcast,
            products: kernels::building_products()?,
        })
    }

    /// `[B, L, C]` -> `[B * heads, L, dim_head]`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        xs.reshape((b, l, self.heads, self.dim_head))?.transpose(1, 2)?.contiguous()?.reshape((
            b * self.heads,
            l,
            self.dim_head,
        ))
    }

    /// `xs` `[B, L, query_dim]`; `context` `[B, S, context_dim]` or `None` for self-attention.
    pub fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let context = context.unwrap_or(xs);
        let q = self.split_heads(&self.to_q.forward(xs)?)?;
        let k = self.split_heads(&self.to_k.forward(context)?)?;
        let v = self.split_heads(&self.to_v.forward(context)?)?;
        let scale = 1.0 / (self.dim_head as f64).sqrt();
        let out = match self.products {
            kernels::Products::Bf16(isa) if kernels::use_kernels(&q) => {
                kernels::attention::attention_bf16(&q, &k, &v, scale, isa)?
            }
            _ => scaled_dot_product_attention(&q, &k, &v, scale, self.upcast)?,
        };
        let out = out.reshape((b, self.heads, l, self.dim_head))?.transpose(1, 2)?.reshape((
            b,
            l,
            self.heads * self.dim_head,
        ))?;
        self.to_out.forward(&out)
    }
}

/// diffusers' `FeedForward` with `activation_fn = "geglu"`: `net.0.proj` maps to twice the inner
/// width, the first half is gated by the exact (erf) GELU of the second, `net.2` maps back.
#[derive(Debug, Clone)]
pub struct GegluFeedForward {
    proj: Linear,
    out: Linear,
    inner: usize,
}

impl GegluFeedForward {
    pub fn new(vb: VarBuilder, dim: usize, mult: usize) -> Result<Self> {
        let inner = dim * mult;
        let proj = kernels::linear(dim, 2 * inner, vb.pp("net").pp("0").pp("proj"))?;
        let out = kernels::linear(inner, dim, vb.pp("net").pp("2"))?;
        Ok(Self { proj, out, inner })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.proj.forward(xs)?;
        debug_assert_eq!(h.dim(D::Minus1)?, 2 * self.inner);
        self.out.forward(&kernels::geglu(&h)?)
    }
}

/// diffusers' `BasicTransformerBlock` with `norm_type = "layer_norm"`: pre-norm self-attention
/// (or cross-attention when `only_cross_attention`), pre-norm cross-attention on the text, and
/// a pre-norm GEGLU feed-forward, each added to its input.
#[derive(Debug, Clone)]
pub struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: GegluFeedForward,
    only_cross_attention: bool,
}

impl BasicTransformerBlock {
    pub fn new(vb: VarBuilder, dim: usize, cfg: &TransformerConfig) -> Result<Self> {
        let ln = |name: &str| candle_nn::layer_norm(dim, 1e-5, vb.pp(name));
        let attn1_context = cfg.only_cross_attention.then_some(cfg.cross_attention_dim);
        let attn1 = Attention::new(vb.pp("attn1"), dim, attn1_context, cfg.heads, cfg.dim_head, cfg.upcast_attention)?;
        let attn2 = Attention::new(
            vb.pp("attn2"),
            dim,
            Some(cfg.cross_attention_dim),
            cfg.heads,
            cfg.dim_head,
            cfg.upcast_attention,
        )?;
        Ok(Self {
            norm1: ln("norm1")?,
            attn1,
            norm2: ln("norm2")?,
            attn2,
            norm3: ln("norm3")?,
            ff: GegluFeedForward::new(vb.pp("ff"), dim, 4)?,
            only_cross_attention: cfg.only_cross_attention,
        })
    }

    /// `xs` `[B, L, dim]`, `context` `[B, S, cross_attention_dim]`.
    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let attn1_context = self.only_cross_attention.then_some(context);
        let xs = (self.attn1.forward(&self.norm1.forward(xs)?, attn1_context)? + xs)?;
        let xs = (self.attn2.forward(&self.norm2.forward(&xs)?, Some(context))? + xs)?;
        self.ff.forward(&self.norm3.forward(&xs)?)? + xs
    }
}

/// What a `Transformer2DModel` inside a UNet block is built from (diffusers passes these from the
/// UNet config; `dim_head` = channels / heads).
#[derive(Debug, Clone, Copy)]
pub struct TransformerConfig {
    pub heads: usize,
    pub dim_head: usize,
    pub num_layers: usize,
    pub cross_attention_dim: usize,
    pub norm_num_groups: usize,
    pub use_linear_projection: bool,
    pub only_cross_attention: bool,
    pub upcast_attention: bool,
}

/// `proj_in`/`proj_out`: 1x1 convolutions on `[B, C, h, w]` (SD 1.x) or linear layers on the
/// flattened `[B, h*w, C]` tokens (SD 2.x, `use_linear_projection`).
#[derive(Debug, Clone)]
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(vb: VarBuilder, linear: bool, in_dim: usize, out_dim: usize) -> Result<Self> {
        if linear {
            Ok(Self::Linear(kernels::linear(in_dim, out_dim, vb)?))
        } else {
            Ok(Self::Conv(kernels::conv2d(in_dim, out_dim, 1, Default::default(), vb)?))
        }
    }
}

/// diffusers' `Transformer2DModel` for continuous (latent image) input: GroupNorm (eps 1e-6),
/// `proj_in`, `num_layers` `BasicTransformerBlock`s over the h*w tokens, `proj_out`, plus the
/// block's input.
#[derive(Debug, Clone)]
pub struct Transformer2DModel {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

impl Transformer2DModel {
    pub fn new(vb: VarBuilder, in_channels: usize, cfg: &TransformerConfig) -> Result<Self> {
        let inner_dim = cfg.heads * cfg.dim_head;
        let norm = kernels::group_norm(cfg.norm_num_groups, in_channels, 1e-6, vb.pp("norm"))?;
        let proj_in = Projection::new(vb.pp("proj_in"), cfg.use_linear_projection, in_channels, inner_dim)?;
        let blocks = (0..cfg.num_layers)
            .map(|i| BasicTransformerBlock::new(vb.pp("transformer_blocks").pp(i), inner_dim, cfg))
            .collect::<Result<Vec<_>>>()?;
        let proj_out = Projection::new(vb.pp("proj_out"), cfg.use_linear_projection, inner_dim, in_channels)?;
        Ok(Self { norm, proj_in, blocks, proj_out })
    }

    /// `xs` `[B, C, h, w]`, `context` `[B, S, cross_attention_dim]`; returns `[B, C, h, w]`.
    pub fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, _, h, w) = xs.dims4()?;
        let normed = self.norm.forward(xs)?;
        // channels-last tokens: [B, C, h, w] -> [B, h*w, C]
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(1)?;
            t.permute((0, 2, 3, 1))?.reshape((b, h * w, c))
        };
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)?)?,
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)?)?,
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context)?;
        }
        let from_tokens = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(2)?;
            t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?.contiguous()
        };
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&from_tokens(&tokens)?)?,
            Projection::Linear(lin) => from_tokens(&lin.forward(&tokens)?)?,
        };
        out + xs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Chunking the queries changes the result only by float rounding: the CPU GEMM's blocking
    /// depends on the number of rows, so bits may differ (by ~1 ulp), the maths does not.
    #[test]
    fn chunked_attention_matches_whole() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (6, 37, 8), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (6, 11, 8), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (6, 11, 5), &dev)?;
        let whole = attention_in_chunks(&q, &k, &v, 0.35, false, usize::MAX)?;
        assert_eq!(whole.dims(), &[6, 37, 5]);
        let row = 6 * 11 * 4;
        for rows in [1, 2, 3, 4, 8, 16, 36] {
            let chunked = attention_in_chunks(&q, &k, &v, 0.35, false, rows * row)?;
            let diff = (&chunked - &whole)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff <= 1e-6, "{rows} rows per chunk: max abs diff {diff}");
        }
        Ok(())
    }

    /// Against the textbook formula, computed naively.
    #[test]
    fn attention_matches_naive_softmax() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 4, 3), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, 5, 3), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (1, 5, 2), &dev)?;
        let out = scaled_dot_product_attention(&q, &k, &v, 0.5, false)?.to_vec3::<f32>()?;
        let (q, k, v) = (q.to_vec3::<f32>()?, k.to_vec3::<f32>()?, v.to_vec3::<f32>()?);
        for i in 0..4 {
            let s: Vec<f32> = (0..5).map(|j| 0.5 * (0..3).map(|c| q[0][i][c] * k[0][j][c]).sum::<f32>()).collect();
            let m = s.iter().cloned().fold(f32::MIN, f32::max);
            let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f32 = e.iter().sum();
            for c in 0..2 {
                let want: f32 = (0..5).map(|j| e[j] / z * v[0][j][c]).sum();
                assert!((out[0][i][c] - want).abs() < 1e-5, "{} vs {want}", out[0][i][c]);
            }
        }
        Ok(())
    }
}
