//! `diffedit bench unet|vae|clip`: timings of the full-size SD 1.5 components with random
//! weights (nothing downloaded). One warm-up call, then `--runs` timed calls; the median, the
//! GFLOP/s it implies and the peak resident memory are printed (one JSON object with `--json`).

use clap::{Args, Subcommand};

use crate::bench::{self, Timing};
use crate::diffedit::EditParams;
use crate::error::{Error, Result};
use crate::models::loading::bundled_model_dir;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand, Debug)]
pub enum BenchWhat {
    /// UNet forward on random latents with a 77-token text context.
    Unet(UnetArgs),
    /// VAE decode from latents (default) or encode of an image 8x the latent size.
    Vae(VaeArgs),
    /// CLIP ViT-L/14 text encoder on 77 tokens.
    Clip(CommonArgs),
    /// One whole edit (prompts, VAE encode, mask, inversion, masked decoding, VAE decode) of a
    /// synthetic picture, at the tutorial's settings unless told otherwise.
    Edit(EditBenchArgs),
}

#[derive(Args, Debug)]
pub struct EditBenchArgs {
    /// Picture size: S or WxH (multiples of 64).
    #[arg(long, default_value = "256")]
    pub size: String,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Encode ratio r (start step S = int(r*steps)).
    #[arg(long, default_value_t = 0.8)]
    pub encode_ratio: f64,
    /// Mask samples N (2N UNet rows).
    #[arg(long, default_value_t = 10)]
    pub mask_samples: usize,
    /// UNet batch of the mask rows.
    #[arg(long, default_value_t = 4)]
    pub mask_batch_size: usize,
    /// Folder with the CLIP tokenizer files (default: the bundled model's, the real CLIP vocabulary).
    #[arg(long, value_name = "DIR")]
    pub tokenizer: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Timed runs after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// cpu, cuda or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct UnetArgs {
    /// Latent size: H or HxW.
    #[arg(long, default_value = "64")]
    pub latent: String,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args, Debug)]
pub struct VaeArgs {
    /// Latent size: H or HxW (the image is 8x larger).
    #[arg(long, default_value = "64")]
    pub latent: String,
    /// Time the encoder on the image instead of the decoder.
    #[arg(long)]
    pub encode: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

fn parse_hw(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::invalid(format!("--latent must be H or HxW with positive sizes, got `{s}`"));
    let (h, w) = match s.split_once(['x', 'X']) {
        Some((h, w)) => (h.trim().parse().map_err(|_| bad())?, w.trim().parse().map_err(|_| bad())?),
        None => {
            let h: usize = s.trim().parse().map_err(|_| bad())?;
            (h, h)
        }
    };
    if h == 0 || w == 0 {
        return Err(bad());
    }
    Ok((h, w))
}

impl CommonArgs {
    fn device(&self) -> Result<(candle_core::Device, candle_core::DType)> {
        if self.batch == 0 || self.runs == 0 {
            return Err(Error::invalid("--batch and --runs must be at least 1"));
        }
        let m = super::ModelArgs {
            model: None,
            unet: None,
            vae: None,
            text_encoder: None,
            tokenizer: None,
            config: None,
            device: self.device.clone(),
            dtype: Some(self.dtype.clone()),
            offline: true,
        };
        let (device, dtype) = m.device()?;
        // Never silently slow: a dtype with no fast path here says what runs instead.
        if let Some(line) = crate::kernels::compute_info(&device, dtype).fallback {
            eprintln!("warning: {line}");
        }
        Ok((device, dtype))
    }

    fn report(&self, t: &Timing) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(t).map_err(|e| Error::invalid(e.to_string()))?);
        } else {
            println!(
                "{} {} {:?}: median {:.3} s over {} runs (warm-up {:.3} s), {:.1} GFLOP -> {:.1} GFLOP/s, peak RSS {:.0} MiB, {} threads",
                t.what,
                t.dtype,
                t.shape,
                t.median_s,
                t.times_s.len(),
                t.warmup_s,
                t.gflop,
                t.gflops_per_s,
                t.peak_rss_mb,
                t.threads
            );
        }
        Ok(())
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.what {
        BenchWhat::Unet(a) => {
            let (h, w) = parse_hw(&a.latent)?;
            let (dev, dtype) = a.common.device()?;
            let t = bench::bench_unet(a.common.batch, h, w, dtype, &dev, a.common.runs)?;
            a.common.report(&t)
        }
        BenchWhat::Vae(a) => {
            let (h, w) = parse_hw(&a.latent)?;
            let (dev, dtype) = a.common.device()?;
            let t = bench::bench_vae(a.encode, a.common.batch, h, w, dtype, &dev, a.common.runs)?;
            a.common.report(&t)
        }
        BenchWhat::Clip(a) => {
            let (dev, dtype) = a.device()?;
            let t = bench::bench_clip(a.batch, dtype, &dev, a.runs)?;
            a.report(&t)
        }
        BenchWhat::Edit(a) => bench_edit(a),
    }
}

fn bench_edit(a: &EditBenchArgs) -> Result<()> {
    let (width, height) = match a.size.trim().parse::<usize>() {
        Ok(side) => (side, side),
        Err(_) => crate::image_io::parse_size(&a.size)?,
    };
    if width % 64 != 0 || height % 64 != 0 {
        return Err(Error::invalid(format!("--size must be multiples of 64 for SD 1.5, got {width}x{height}")));
    }
    let params = EditParams {
        steps: a.steps,
        encode_ratio: a.encode_ratio,
        mask_samples: a.mask_samples,
        mask_batch_size: a.mask_batch_size,
        ..EditParams::default()
    };
    params.validate()?;
    let tokenizer = match &a.tokenizer {
        Some(dir) => dir.clone(),
        None => bundled_model_dir()
            .map(|m| m.join("tokenizer"))
            .ok_or_else(|| Error::invalid("no bundled model found for its tokenizer; pass --tokenizer DIR"))?,
    };
    let (dev, dtype) = a.common.device()?;
    let t = bench::bench_edit(&tokenizer, width, height, params, dtype, &dev, a.common.runs)?;
    if a.common.json {
        println!("{}", serde_json::to_string(&t).map_err(|e| Error::invalid(e.to_string()))?);
    } else {
        println!(
            "edit {} {}x{}, {} steps, r {}, N {}: median {:.2} s over {} runs ({} UNet rows; encode {:.2} s, mask {:.2} s, \
             inversion {:.2} s, decoding {:.2} s, VAE decode {:.2} s), {:.1} GFLOP/s, peak RSS {:.0} MiB, {} threads",
            t.dtype,
            width,
            height,
            t.steps,
            t.encode_ratio,
            t.mask_samples,
            t.median_s,
            t.times_s.len(),
            t.unet_evaluations,
            t.stages.encode_s,
            t.stages.mask_s,
            t.stages.inversion_s,
            t.stages.decoding_s,
            t.stages.vae_decode_s,
            t.gflops_per_s,
            t.peak_rss_mb,
            t.threads
        );
    }
    Ok(())
}
