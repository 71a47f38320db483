//! Throughput of single convolutions and linear layers (kernel path vs stock candle), measured
//! as wall time and as process CPU time (the latter stays meaningful on a busy machine).
//!
//!   cargo run --release --example kernel_probe            # uses all rayon threads
//!   RAYON_NUM_THREADS=1 cargo run --release --example kernel_probe
//!   PROBE=bf16 cargo run --release --example kernel_probe   # f32 vs bf16 products on each bf16
//!                                                           # unit of this CPU (AMX, AVX512-BF16)
//!   PROBE=peak cargo run --release --example kernel_probe   # the machine's peak: register-only
//!                                                           # FMA and vdpbf16ps loops

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
    // PROBE=bf16: each layer with f32 products and with bf16 products on every bf16 unit here.
    if std::env::var("PROBE").as_deref() == Ok("bf16") {
        use kernels::MatmulPrecision::{Bf16, F32};
        let isas = kernels::bf16_isas_supported();
        if isas.is_empty() {
            println!("this CPU has neither AMX nor AVX512-BF16: no bf16 products");
            return Ok(());
        }
        // (label, precision, unit): f32 first, then each bf16 unit.
        let paths: Vec<(String, kernels::MatmulPrecision, Option<kernels::Bf16Isa>)> =
            std::iter::once(("f32".to_string(), F32, None))
                .chain(isas.iter().map(|i| (format!("bf16 {}", i.name()), Bf16, Some(*i))))
                .collect();
        let build = |p: kernels::MatmulPrecision,
                     isa: Option<kernels::Bf16Isa>,
                     f: &mut dyn FnMut() -> candle_core::Result<Tensor>| {
            match isa {
                Some(i) => kernels::with_bf16_isa(i, || kernels::with_matmul_precision(p, f)),
                None => kernels::with_matmul_precision(p, f),
            }
        };
        // ONLY=conv|linear|attention limits the layers, PATHS=f32,avx512bf16,... the paths.
        let only = std::env::var("ONLY").unwrap_or_default();
        let wanted = std::env::var("PATHS").unwrap_or_default();
        let paths: Vec<_> = paths
            .into_iter()
            .filter(|(l, ..)| wanted.is_empty() || wanted.split(',').any(|w| l.ends_with(w)))
            .collect();
        for &(ci, co, hw, k) in &[
            (320, 320, 64, 3),
            (640, 640, 32, 3),
            (1280, 1280, 16, 3),
            (1280, 1280, 8, 3),
            (512, 512, 128, 3),
            (256, 256, 256, 3),
            (320, 320, 64, 1),
            (4, 320, 64, 3),
        ] {
            if !only.is_empty() && only != "conv" {
                break;
            }
            let x = Tensor::randn(0f32, 1.0, (1, ci, hw, hw), &dev)?;
            let w = Tensor::randn(0f32, 0.05, (co, ci, k, k), &dev)?;
            let cfg = candle_nn::Conv2dConfig { padding: k / 2, ..Default::default() };
            let flops = 2.0 * (ci * co * k * k * hw * hw) as f64;
            for (label, p, isa) in &paths {
                let mut conv = None;
                build(*p, *isa, &mut || {
                    conv = Some(kernels::Conv2d::new(w.clone(), None, cfg)?);
                    Ok(x.clone())
                })?;
                let conv = conv.expect("built");
                probe(&format!("conv {ci}->{co} {k}x{k} @{hw}x{hw} {label}"), flops, &|| conv.forward(&x))?;
            }
        }
        for &(t, din, dout) in &[(4096, 320, 2560), (4096, 1280, 320), (1024, 640, 640), (77, 768, 320)] {
            if !only.is_empty() && only != "linear" {
                continue;
            }
            let x = Tensor::randn(0f32, 1.0, (1, t, din), &dev)?;
            let w = Tensor::randn(0f32, 0.05, (dout, din), &dev)?;
            let flops = 2.0 * (t * din * dout) as f64;
            for (label, p, isa) in &paths {
                let mut lin = None;
                build(*p, *isa, &mut || {
                    lin = Some(kernels::Linear::new(w.clone(), None)?);
                    Ok(x.clone())
                })?;
                let lin = lin.expect("built");
                probe(&format!("linear {t}x{din}->{dout} {label}"), flops, &|| lin.forward(&x))?;
            }
        }
        for &(n, l, d) in &[(8, 4096, 40), (8, 1024, 80), (8, 256, 160)] {
            if !only.is_empty() && only != "attention" {
                continue;
            }
            let q = Tensor::randn(0f32, 1.0, (n, l, d), &dev)?;
            let flops = 4.0 * (n * l * l * d) as f64;
            let s = (d as f64).powf(-0.5);
            if wanted.is_empty() || wanted.contains("f32") {
                probe(&format!("attention {n}x{l}x{d} f32"), flops, &|| {
                    kernels::attention::attention_f32(&q, &q, &q, s)
                })?;
            }
            for isa in isas.iter().filter(|i| wanted.is_empty() || wanted.contains(i.name())) {
                probe(&format!("attention {n}x{l}x{d} bf16 {}", isa.name()), flops, &|| {
                    kernels::attention::attention_bf16(&q, &q, &q, s, *isa)
                })?;
            }
        }
        return Ok(());
    }
    if std::env::var("PROBE").as_deref() == Ok("peak") {
        peak();
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

/// The machine's peak: register-only loops of independent AVX-512 FMAs (32 flops each) and, where
/// the CPU has AVX512-BF16, `vdpbf16ps` (64 flops each), on one thread and on every rayon thread.
fn peak() {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f")]
        unsafe fn fma(n: usize) -> f32 {
            let mut acc = [_mm512_setzero_ps(); 24];
            let (a, b) = (_mm512_set1_ps(1.000_000_1), _mm512_set1_ps(0.999_999));
            for _ in 0..n {
                for x in acc.iter_mut() {
                    *x = _mm512_fmadd_ps(a, b, *x);
                }
                // Keeps the loop a loop of FMAs (nothing hoisted or folded).
                std::arch::asm!("", options(nomem, nostack));
            }
            acc.iter().fold(0.0, |s, v| s + _mm512_reduce_add_ps(*v))
        }
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn dp(n: usize) -> f32 {
            let mut acc = [_mm512_setzero_ps(); 24];
            let one: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f80));
            for _ in 0..n {
                for x in acc.iter_mut() {
                    *x = _mm512_dpbf16_ps(*x, one, one);
                }
                std::arch::asm!("", options(nomem, nostack));
            }
            acc.iter().fold(0.0, |s, v| s + _mm512_reduce_add_ps(*v))
        }
        let n = 20_000_000usize;
        let run = |threads: usize, f: unsafe fn(usize) -> f32, flops_per_op: f64| {
            let t0 = std::time::Instant::now();
            let hs: Vec<_> = (0..threads).map(|_| std::thread::spawn(move || unsafe { f(n) })).collect();
            let s: f32 = hs.into_iter().map(|h| h.join().expect("loop thread")).sum();
            std::hint::black_box(s);
            (threads * n * 24) as f64 * flops_per_op / t0.elapsed().as_secs_f64() / 1e9
        };
        let all = rayon::current_num_threads();
        let has_bf16 = std::is_x86_feature_detected!("avx512bf16");
        let mut last = (0.0, None);
        for threads in [1, all] {
            // The best of 3: the machine may be shared.
            let f = (0..3).map(|_| run(threads, fma, 32.0)).fold(0.0, f64::max);
            print!("{threads} thread(s): AVX-512 FMA {f:7.1} GFLOP/s");
            let d = has_bf16.then(|| (0..3).map(|_| run(threads, dp, 64.0)).fold(0.0, f64::max));
            if let Some(d) = d {
                print!(", vdpbf16ps {d:7.1} GFLOP/s ({:.2}x the FMA's)", d / f);
            }
            println!();
            last = (f, d);
        }
        // For tools/bench_compare.sh: the all-thread figures as one JSON line.
        let dp = last.1.map_or("null".to_string(), |d| format!("{d:.1}"));
        println!("{{\"what\":\"peak\",\"threads\":{all},\"fma_gflops\":{:.1},\"dpbf16_gflops\":{dp}}}", last.0);
    }
}
