//! Where the random draws come from. `torch` (the default) reproduces PyTorch's CPU generator
//! bit for bit, so a seed gives the same noise as the Python tools; `native` is the ChaCha
//! generator the project used before (kept so that older runs can be repeated).

pub mod mt19937;
pub mod torch;

use candle_core::{Device, Tensor};

pub use torch::TorchGenerator;

use crate::diffedit::experiments::{self, Stream};
use crate::diffedit::Noise;
use crate::error::{Error, Result};

/// Which generator turns a seed into normal draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RngKind {
    /// PyTorch's CPU generator (`torch.Generator("cpu").manual_seed(seed)`), bit for bit.
    #[default]
    Torch,
    /// The project's own ChaCha stream (platform independent, not PyTorch's numbers).
    Native,
}

impl std::str::FromStr for RngKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "torch" => Ok(RngKind::Torch),
            "native" => Ok(RngKind::Native),
            other => Err(Error::invalid(format!("--rng must be `torch` or `native`, got `{other}`"))),
        }
    }
}

impl std::fmt::Display for RngKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RngKind::Torch => "torch",
            RngKind::Native => "native",
        })
    }
}

impl TorchGenerator {
    /// `torch.randn(shape, generator=self)` as a contiguous f32 tensor on the CPU.
    pub fn randn_tensor(&mut self, shape: &[usize]) -> Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(self.randn(n), shape, &Device::Cpu)?)
    }
}

impl Noise {
    /// The draws the PyTorch reference (`seed_reference.py --vae-seed S --mask-seed S`) makes:
    /// the VAE posterior sample from a generator seeded `seed`, then the mask's `samples`
    /// `randn_like(latents)` from the global generator after `torch.manual_seed(seed)`. They
    /// are two generators with the same seed, so `mask_noise[0]` equals `vae_noise`.
    pub fn torch_seeded(seed: u64, latent: (usize, usize, usize), samples: usize) -> Result<Self> {
        let (c, h, w) = latent;
        let vae_noise = TorchGenerator::new(seed).randn_tensor(&[1, c, h, w])?;
        let mut global = TorchGenerator::new(seed);
        let draws: Vec<f32> = (0..samples).flat_map(|_| global.randn(c * h * w)).collect();
        let mask_noise = Tensor::from_vec(draws, (samples, 1, c, h, w), &Device::Cpu)?;
        Ok(Self { vae_noise, mask_noise })
    }

    /// The edit's draws from `seed` with the chosen generator.
    pub fn drawn(rng: RngKind, seed: u64, latent: (usize, usize, usize), samples: usize) -> Result<Self> {
        match rng {
            RngKind::Torch => Self::torch_seeded(seed, latent, samples),
            RngKind::Native => Self::seeded(seed, latent, samples),
        }
    }
}

/// Standard normal draws of shape [1,C,h,w] for the experiments beyond the edit. With `torch`
/// they are what diffusers draws with `generator=torch.Generator("cpu").manual_seed(seed)`:
/// text-to-image's start latent is the generator's first draw (StableDiffusionPipeline), and
/// img2img's noise its second, after the VAE posterior sample (StableDiffusionImg2ImgPipeline;
/// that first draw is the edit's own `vae_noise`).
pub fn standard_normal(rng: RngKind, seed: u64, stream: Stream, latent: (usize, usize, usize)) -> Result<Tensor> {
    let (c, h, w) = latent;
    match rng {
        RngKind::Native => experiments::standard_normal(seed, stream, latent),
        RngKind::Torch => {
            let mut g = TorchGenerator::new(seed);
            if stream == Stream::Img2img {
                g.randn(c * h * w);
            }
            g.randn_tensor(&[1, c, h, w])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_two_generators() {
        assert_eq!("torch".parse::<RngKind>().unwrap(), RngKind::Torch);
        assert_eq!("native".parse::<RngKind>().unwrap(), RngKind::Native);
        assert_eq!(
            "numpy".parse::<RngKind>().unwrap_err().to_string(),
            "--rng must be `torch` or `native`, got `numpy`"
        );
        assert_eq!(RngKind::default().to_string(), "torch");
        assert_eq!(serde_json::to_string(&RngKind::Native).unwrap(), "\"native\"");
    }

    #[test]
    fn torch_edit_noise_is_two_generators_with_one_seed() {
        let n = Noise::torch_seeded(7, (4, 4, 8), 3).unwrap();
        let vae: Vec<f32> = n.vae_noise.flatten_all().unwrap().to_vec1().unwrap();
        let mask: Vec<f32> = n.mask_noise.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(n.mask_noise.dims(), [3, 1, 4, 4, 8]);
        assert_eq!(vae, TorchGenerator::new(7).randn(128));
        assert_eq!(mask, TorchGenerator::new(7).randn(384));
    }

    #[test]
    fn img2img_noise_follows_the_vae_draw() {
        let latent = (4, 4, 4);
        let gen = standard_normal(RngKind::Torch, 9, Stream::Generation, latent).unwrap();
        let img = standard_normal(RngKind::Torch, 9, Stream::Img2img, latent).unwrap();
        let both = TorchGenerator::new(9).randn(128);
        assert_eq!(gen.flatten_all().unwrap().to_vec1::<f32>().unwrap(), both[..64]);
        assert_eq!(img.flatten_all().unwrap().to_vec1::<f32>().unwrap(), both[64..]);
    }
}
