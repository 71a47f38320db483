//! Throughput of single convolutions and linear layers (kernel path vs stock candle), measured
//! as wall time and as process CPU time (the latter stays meaningful on a busy machine).
//!
//!   cargo run --release --example kernel_probe            # uses all rayon threads
//!   RAYON_NUM_THREADS=1 cargo run --release --example kernel_probe
//!   PROBE=bf16 cargo run --release --example kernel_probe   # f32 vs bf16 products (AMX), ours

use candle_core::{Device, Module, Tensor};
use diffedit::kernels;

fn cpu_time() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn probe(name: &str, flops: f64, f: &dyn Fn() -> candle_core::Result<Tensor>) -> candle_core::Result<()> {
    f()?;
    let runs = 5;
    let (t0, c0) = (std::time::Instant::now(), cpu_time());
    for _ in 0..runs {
        f()?;
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64() / runs as f64, (cpu_time() - c0) / runs as f64);
    let thr = rayon::current_num_threads() as f64;
    println!(
        "{name:48} wall {:8.2} ms {:7.1} GFLOP/s | cpu {:8.2} ms -> {:6.1} GFLOP/s/thread",
        wall * 1e3,
        flops / wall / 1e9,
        cpu * 1e3,
        flops / (cpu / thr) / 1e9 / thr
    );
    Ok(())
}

/// (in, out, side, kernel) of the SD VAE decoder's convolutions at 512x512 output.
const VAE_CONVS: &[(usize, usize, usize, usize)] = &[
    (4, 512, 64, 3),
    (512, 512, 64, 3),
    (512, 512, 128, 3),
    (512, 512, 256, 3),
    (512, 256, 256, 3),
    (256, 256, 256, 3),
    (512, 256, 256, 1),
    (256, 256, 512, 3),
    (256, 128, 512, 3),
    (128, 128, 512, 3),
    (256, 128, 512, 1),
    (128, 3, 512, 3),
];

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    // PROBE=vae: the SD VAE decoder's convolutions, ours only (tools/conv_probe_torch.py times
    // the same shapes in PyTorch).
    if std::env::var("PROBE").as_deref() == Ok("vae") {
        for &(ci, co, hw, k) in VAE_CONVS {
            let x = Tensor::randn(0f32, 1.0, (1, ci, hw, hw), &dev)?;
            let w = Tensor::randn(0f32, 0.05, (co, ci, k, k), &dev)?;
            let b = Tensor::randn(0f32, 0.05, co, &dev)?;
            let cfg = candle_nn::Conv2dConfig { padding: k / 2, ..Default::default() };
            let flops = 2.0 * (ci * co * k * k * hw * hw) as f64;
            let ours = kernels::Conv2d::new(w, Some(b), cfg)?;
            probe(&format!("conv {ci}->{co} {k}x{k} @{hw}x{hw} ours"), flops, &|| ours.forward(&x))?;
        }
        for &(c, hw) in &[(512usize, 128usize), (256, 256)] {
            let x = Tensor::randn(0f32, 1.0, (1, c, hw, hw), &dev)?;
            let t0 = std::time::Instant::now();
            x.upsample_nearest2d(2 * hw, 2 * hw)?;
            println!("upsample_nearest2d {c}x{hw}x{hw} -> x2: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3);
        }
        return Ok(());
    }
    // PROBE=bf16: each layer with f32 products and with bf16 products on the tile units.
    if std::env::var("PROBE").as_deref() == Ok("bf16") {
        use kernels::MatmulPrecision::{Bf16, F32};
        if !kernels::bf16_matmul_available() {
            println!("this CPU has no AMX: no bf16 products");
            return Ok(());
        }
        for &(ci, co, hw, k) in &[
            (320, 320, 64, 3),
            (640, 640, 32, 3),
            (1280, 1280, 16, 3),
            (512, 512, 128, 3),
            (320, 320, 64, 1),
            (4, 320, 64, 3),
        ] {
            let x = Tensor::randn(0f32, 1.0, (1, ci, hw, hw), &dev)?;
            let w = Tensor::randn(0f32, 0.05, (co, ci, k, k), &dev)?;
            let cfg = candle_nn::Conv2dConfig { padding: k / 2, ..Default::default() };
            let flops = 2.0 * (ci * co * k * k * hw * hw) as f64;
            for p in [F32, Bf16] {
                let conv = kernels::with_matmul_precision(p, || kernels::Conv2d::new(w.clone(), None, cfg))?;
                probe(&format!("conv {ci}->{co} {k}x{k} @{hw}x{hw} {p:?}"), flops, &|| conv.forward(&x))?;
            }
        }
        for &(t, din, dout) in &[(4096, 320, 2560), (4096, 1280, 320), (1024, 640, 640), (77, 768, 320)] {
            let x = Tensor::randn(0f32, 1.0, (1, t, din), &dev)?;
            let w = Tensor::randn(0f32, 0.05, (dout, din), &dev)?;
            let flops = 2.0 * (t * din * dout) as f64;
            for p in [F32, Bf16] {
                let lin = kernels::with_matmul_precision(p, || kernels::Linear::new(w.clone(), None))?;
                probe(&format!("linear {t}x{din}->{dout} {p:?}"), flops, &|| lin.forward(&x))?;
            }
        }
        return Ok(());
    }
    for &(ci, co, hw, k) in &[
        (320, 320, 64, 3),
        (640, 640, 32, 3),
        (1280, 1280, 16, 3),
        (1280, 1280, 8, 3),
        (512, 512, 128, 3),
        (320, 320, 64, 1),
    ] {
        let x = Tensor::randn(0f32, 1.0, (1, ci, hw, hw), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (co, ci, k, k), &dev)?;
        let b = Tensor::randn(0f32, 0.05, co, &dev)?;
        let cfg = candle_nn::Conv2dConfig { padding: k / 2, ..Default::default() };
        let flops = 2.0 * (ci * co * k * k * hw * hw) as f64;
        let ours = kernels::Conv2d::new(w.clone(), Some(b.clone()), cfg)?;
        let stock = candle_nn::Conv2d::new(w, Some(b), cfg);
        probe(&format!("conv {ci}->{co} {k}x{k} @{hw}x{hw} ours"), flops, &|| ours.forward(&x))?;
        probe(&format!("conv {ci}->{co} {k}x{k} @{hw}x{hw} candle"), flops, &|| stock.forward(&x))?;
    }
    for &(t, din, dout) in &[(4096, 320, 2560), (4096, 1280, 320), (1024, 640, 640)] {
        let x = Tensor::randn(0f32, 1.0, (1, t, din), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (dout, din), &dev)?;
        let flops = 2.0 * (t * din * dout) as f64;
        let ours = kernels::Linear::new(w.clone(), None)?;
        let stock = candle_nn::Linear::new(w, None);
        probe(&format!("linear {t}x{din}->{dout} ours"), flops, &|| ours.forward(&x))?;
        probe(&format!("linear {t}x{din}->{dout} candle"), flops, &|| stock.forward(&x))?;
    }
    for &(n, l, d) in &[(8, 4096, 40), (8, 1024, 80)] {
        let q = Tensor::randn(0f32, 1.0, (n, l, d), &dev)?;
        let flops = 4.0 * (n * l * l * d) as f64;
        let s = (d as f64).powf(-0.5);
        probe(&format!("attention {n}x{l}x{d} ours"), flops, &|| kernels::attention::attention_f32(&q, &q, &q, s))?;
        probe(&format!("attention {n}x{l}x{d} candle (whole scores)"), flops, &|| {
            candle_nn::ops::softmax_last_dim(&(q.matmul(&q.t()?)? * s)?)?.matmul(&q)
        })?;
    }
    Ok(())
}
