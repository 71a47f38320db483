//! Building blocks shared by the UNet and the VAE: diffusers' `ResnetBlock2D`, `Downsample2D`
//! and `Upsample2D`, with diffusers' weight names.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::kernels::{self, Conv2d, GroupNorm, Linear};

/// diffusers' `ResnetBlock2D` with `time_embedding_norm = "default"` (additive time embedding,
/// or none for the VAE) and a 1x1 `conv_shortcut` when the channel count changes.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

#[derive(Debug, Clone, Copy)]
pub struct ResnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Width of the time embedding, `None` for blocks without one (the VAE's).
    pub temb_channels: Option<usize>,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, cfg: ResnetConfig) -> Result<Self> {
        let conv3 = Conv2dConfig { padding: 1, ..Default::default() };
        let norm1 = kernels::group_norm(cfg.groups, cfg.in_channels, cfg.eps, vb.pp("norm1"))?;
        let conv1 = kernels::conv2d(cfg.in_channels, cfg.out_channels, 3, conv3, vb.pp("conv1"))?;
        let time_emb_proj =
            cfg.temb_channels.map(|t| kernels::linear(t, cfg.out_channels, vb.pp("time_emb_proj"))).transpose()?;
        let norm2 = kernels::group_norm(cfg.groups, cfg.out_channels, cfg.eps, vb.pp("norm2"))?;
        let conv2 = kernels::conv2d(cfg.out_channels, cfg.out_channels, 3, conv3, vb.pp("conv2"))?;
        let conv_shortcut = (cfg.in_channels != cfg.out_channels)
            .then(|| kernels::conv2d(cfg.in_channels, cfg.out_channels, 1, Default::default(), vb.pp("conv_shortcut")))
            .transpose()?;
        Ok(Self {
            norm1,
            conv1,
            time_emb_proj,
            norm2,
            conv2,
            conv_shortcut,
            output_scale_factor: cfg.output_scale_factor,
        })
    }

    /// `temb` is the (not yet activated) time embedding `[B, temb_channels]`, or `None`.
    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let h = self.norm1.forward_silu(xs)?;
        // The time embedding is a per-channel bias of conv1, and the shortcut the starting value
        // of conv2's accumulator: both are fused into the convolutions where the kernels apply.
        let t = match (&self.time_emb_proj, temb) {
            (Some(proj), Some(temb)) => Some(proj.forward(&candle_nn::ops::silu(temb)?)?),
            _ => None,
        };
        let h = self.conv1.forward_fused(&h, t.as_ref(), None)?;
        let h = self.norm2.forward_silu(&h)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward(xs)?,
            None => xs.clone(),
        };
        if self.output_scale_factor == 1.0 {
            self.conv2.forward_fused(&h, None, Some(&shortcut))
        } else {
            (shortcut + self.conv2.forward(&h)?)? / self.output_scale_factor
        }
    }
}

/// diffusers' `Downsample2D` with a convolution: 3x3, stride 2. The UNet pads 1 on every side
/// (`downsample_padding = 1`); the VAE encoder uses padding 0 and pads right and bottom by one.
#[derive(Debug, Clone)]
pub struct Downsample2D {
    conv: Conv2d,
    padding: usize,
}

impl Downsample2D {
    pub fn new(vb: VarBuilder, in_channels: usize, out_channels: usize, padding: usize) -> Result<Self> {
        let cfg = Conv2dConfig { padding, stride: 2, ..Default::default() };
        let conv = kernels::conv2d(in_channels, out_channels, 3, cfg, vb.pp("conv"))?;
        Ok(Self { conv, padding })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            let xs = xs.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            self.conv.forward(&xs)
        } else {
            self.conv.forward(xs)
        }
    }
}

/// diffusers' `Upsample2D`: nearest-neighbour upsampling (x2, or to an explicit size when the
/// skip connection's size is odd) followed by a 3x3 convolution.
#[derive(Debug, Clone)]
pub struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: VarBuilder, in_channels: usize, out_channels: usize) -> Result<Self> {
        let cfg = Conv2dConfig { padding: 1, ..Default::default() };
        let conv = kernels::conv2d(in_channels, out_channels, 3, cfg, vb.pp("conv"))?;
        Ok(Self { conv })
    }

    /// `size` = (height, width) to upsample to; `None` doubles both sides.
    pub fn forward(&self, xs: &Tensor, size: Option<(usize, usize)>) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        let (oh, ow) = size.unwrap_or((2 * h, 2 * w));
        let xs = xs.upsample_nearest2d(oh, ow)?;
        self.conv.forward(&xs)
    }
}
