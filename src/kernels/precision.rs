//! Which arithmetic the kernels' products run in, and on which instructions: chosen at run time
//! by CPU feature, so one build serves every x86-64 CPU.
//!
//! `--dtype bf16` on the CPU keeps the tensors in f32 and rounds the operands of convolutions,
//! linear layers and attention products to bf16 with f32 sums (PyTorch's bf16 autocast splits
//! the work the same way), on the fastest unit the CPU has: the tile units (AMX, Intel Xeon since
//! Sapphire Rapids), else the AVX-512 BF16 dot products (`vdpbf16ps`: AMD Zen 4 and later). With
//! neither, and for `--dtype f16` (candle's f16 ops on the CPU are several times slower than our
//! f32 kernels), the f32 kernels run and [`ComputeInfo::fallback`] says so.
//!
//! `DIFFEDIT_BF16_ISA=amx|avx512bf16|none` picks the bf16 path by hand (a CPU with AMX can then
//! run, test and time what a Zen 4 runs; `none` shows the fallback).

use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::{DType, Device};

/// How the kernels' matrix products (convolutions, linear layers, attention) treat their operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    /// f32 operands and sums.
    #[default]
    F32,
    /// Operands rounded to bf16, sums in f32 (on the unit [`bf16_isa`] names): the arithmetic of
    /// PyTorch's bf16 autocast on the CPU. Everything between the products stays f32.
    Bf16,
}

/// The instructions bf16 products can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bf16Isa {
    /// The tile units (`tdpbf16ps`, [`super::amx`]).
    Amx,
    /// AVX-512 BF16 dot products (`vdpbf16ps`, [`super::avx512bf16`]).
    Avx512Bf16,
}

impl Bf16Isa {
    /// The name `DIFFEDIT_BF16_ISA` and the JSON use.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Isa::Amx => "amx",
            Bf16Isa::Avx512Bf16 => "avx512bf16",
        }
    }

    /// Whether this CPU (and the kernels' switch) lets it run.
    pub fn supported(self) -> bool {
        super::enabled()
            && match self {
                Bf16Isa::Amx => super::amx::available(),
                Bf16Isa::Avx512Bf16 => super::avx512bf16::available(),
            }
    }
}

/// The bf16 paths this CPU supports, fastest first (for tests that check each one).
pub fn bf16_isas_supported() -> Vec<Bf16Isa> {
    [Bf16Isa::Amx, Bf16Isa::Avx512Bf16].into_iter().filter(|i| i.supported()).collect()
}

/// The bf16 path of this process: `DIFFEDIT_BF16_ISA` where it names a supported one (or `none`),
/// else the fastest supported; with a note when the variable was not followed as written.
fn process_choice() -> &'static (Option<Bf16Isa>, Option<String>) {
    static CHOICE: OnceLock<(Option<Bf16Isa>, Option<String>)> = OnceLock::new();
    CHOICE.get_or_init(|| {
        let best = bf16_isas_supported().first().copied();
        let asked = std::env::var("DIFFEDIT_BF16_ISA").unwrap_or_default();
        match asked.trim().to_ascii_lowercase().as_str() {
            "" => (best, None),
            "none" | "off" => (None, Some("DIFFEDIT_BF16_ISA=none turns bf16 products off".into())),
            name => match [Bf16Isa::Amx, Bf16Isa::Avx512Bf16].into_iter().find(|i| i.name() == name) {
                Some(isa) if isa.supported() => (Some(isa), None),
                Some(isa) => (
                    best,
                    Some(format!(
                        "DIFFEDIT_BF16_ISA={}: this CPU has no {}; {}",
                        isa.name(),
                        isa.name(),
                        match best {
                            Some(b) => format!("bf16 products run on {}", b.name()),
                            None => "it has no bf16 path at all".into(),
                        }
                    )),
                ),
                None => (best, Some(format!("DIFFEDIT_BF16_ISA={asked} ignored (amx, avx512bf16 or none)"))),
            },
        }
    })
}

/// The instructions bf16 products run on in this process (see [`process_choice`]); `None` when
/// they cannot run here.
pub fn bf16_isa() -> Option<Bf16Isa> {
    process_choice().0
}

/// Whether products in bf16 can run here (on any unit).
pub fn bf16_matmul_available() -> bool {
    current_bf16_isa().is_some()
}

thread_local! {
    /// The precision layers built now pack their weights for ([`with_matmul_precision`]).
    static BUILDING: Cell<MatmulPrecision> = const { Cell::new(MatmulPrecision::F32) };
    /// A bf16 path chosen for this thread ([`with_bf16_isa`]).
    static BUILDING_ISA: Cell<Option<Bf16Isa>> = const { Cell::new(None) };
}

/// Runs `build` (a model's constructor) with the kernel layers it creates packing their weights
/// for products in `precision`; each layer keeps the precision it was built with.
pub fn with_matmul_precision<T>(precision: MatmulPrecision, build: impl FnOnce() -> T) -> T {
    let before = BUILDING.replace(precision);
    let out = build();
    BUILDING.set(before);
    out
}

/// Runs `build` with bf16 layers built in it using `isa` (which must be supported) instead of the
/// process's choice, and [`compute_info`] reporting it: tests and probes check every path this way.
pub fn with_bf16_isa<T>(isa: Bf16Isa, build: impl FnOnce() -> T) -> T {
    assert!(isa.supported(), "{} is not supported on this CPU", isa.name());
    let before = BUILDING_ISA.replace(Some(isa));
    let out = build();
    BUILDING_ISA.set(before);
    out
}

/// The precision layers built now take ([`with_matmul_precision`]).
pub fn building_precision() -> MatmulPrecision {
    BUILDING.get()
}

/// The bf16 path layers built now take: this thread's ([`with_bf16_isa`]), else the process's.
fn current_bf16_isa() -> Option<Bf16Isa> {
    BUILDING_ISA.get().or_else(bf16_isa)
}

/// How a kernel layer's products run, fixed when it is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    F32,
    Bf16(Bf16Isa),
}

/// The products layers built now run ([`with_matmul_precision`], [`with_bf16_isa`]); an error
/// when bf16 is asked for where it cannot run.
pub fn building_products() -> candle_core::Result<Products> {
    match building_precision() {
        MatmulPrecision::F32 => Ok(Products::F32),
        MatmulPrecision::Bf16 => match current_bf16_isa() {
            Some(isa) => Ok(Products::Bf16(isa)),
            None => candle_core::bail!("bf16 products need a CPU with AMX or AVX512-BF16"),
        },
    }
}

/// The operands' precision of the products as they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

/// Where the products run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isa {
    /// bf16 on the tile units.
    Amx,
    /// bf16 on AVX-512 BF16 dot products.
    Avx512Bf16,
    /// Our f32 AVX-512 kernels.
    Avx512F,
    /// candle's own ops (GPUs; CPUs without AVX-512; `DIFFEDIT_KERNELS=0`).
    Stock,
}

/// What a requested compute dtype becomes on a device, for the model loaders and the `--json`
/// of every command (`precision`, `isa`, `fallback`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComputeInfo {
    /// The dtype asked for.
    #[serde(skip)]
    pub requested: DType,
    /// The tensors' dtype (f32 for bf16 products on the CPU).
    #[serde(skip)]
    pub tensors: DType,
    /// How the kernel layers pack their weights and run their products.
    #[serde(skip)]
    pub matmul: MatmulPrecision,
    pub precision: Precision,
    pub isa: Isa,
    /// One line when what runs is not what was asked for (or the bf16 override was not followed),
    /// naming what runs instead; `None` otherwise.
    pub fallback: Option<String>,
}

fn precision_of(dtype: DType) -> Precision {
    match dtype {
        DType::BF16 => Precision::Bf16,
        DType::F16 => Precision::F16,
        _ => Precision::F32,
    }
}

/// What `dtype` becomes on `device`: on the CPU, bf16 is f32 tensors with bf16 products where a
/// bf16 unit exists, and otherwise (like f16, whose candle CPU ops are slow) f32 with a
/// `fallback` line saying so; on GPUs every dtype runs as asked.
pub fn compute_info(device: &Device, dtype: DType) -> ComputeInfo {
    let info = |tensors: DType, matmul, isa, fallback: Option<String>| ComputeInfo {
        requested: dtype,
        tensors,
        matmul,
        precision: if matmul == MatmulPrecision::Bf16 { Precision::Bf16 } else { precision_of(tensors) },
        isa,
        fallback,
    };
    if !device.is_cpu() {
        return info(dtype, MatmulPrecision::F32, Isa::Stock, None);
    }
    let (f32_isa, f32_name) =
        if super::enabled() { (Isa::Avx512F, "the f32 kernels (AVX-512)") } else { (Isa::Stock, "candle's f32 ops") };
    match dtype {
        DType::BF16 => {
            let note = BUILDING_ISA.get().is_none().then(|| process_choice().1.clone()).flatten();
            match current_bf16_isa() {
                Some(isa) => {
                    let isa = match isa {
                        Bf16Isa::Amx => Isa::Amx,
                        Bf16Isa::Avx512Bf16 => Isa::Avx512Bf16,
                    };
                    info(DType::F32, MatmulPrecision::Bf16, isa, note)
                }
                None => {
                    let why = if !bf16_isas_supported().is_empty() {
                        // The CPU has a bf16 unit; DIFFEDIT_BF16_ISA turned it off.
                        note.unwrap_or_default()
                    } else if !super::enabled() {
                        "the kernels are off (DIFFEDIT_KERNELS=0) or this CPU has no AVX-512, so bf16 products have \
                         no fast path"
                            .to_string()
                    } else {
                        "this CPU has neither AMX nor AVX512-BF16, so bf16 products have no fast path".to_string()
                    };
                    let line = format!("--dtype bf16: {why}; running {f32_name} instead");
                    info(DType::F32, MatmulPrecision::F32, f32_isa, Some(line))
                }
            }
        }
        DType::F16 => {
            let line = format!(
                "--dtype f16: the CPU has no fast f16 path (candle's f16 ops run several times slower than f32); \
                 running {f32_name} instead"
            );
            info(DType::F32, MatmulPrecision::F32, f32_isa, Some(line))
        }
        other => info(other, MatmulPrecision::F32, if other == DType::F32 { f32_isa } else { Isa::Stock }, None),
    }
}

/// [`compute_info`]'s tensor dtype and product precision.
pub fn compute_mode(device: &Device, dtype: DType) -> (DType, MatmulPrecision) {
    let info = compute_info(device, dtype);
    (info.tensors, info.matmul)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What each dtype becomes on the CPU: bf16 on the best unit (or f32 with a line saying so),
    /// f16 always f32 with a line, f32 as asked; every path of this CPU reported as it runs.
    #[test]
    fn cpu_dtypes_become_what_runs_fastest() {
        let dev = Device::Cpu;
        let f32_info = compute_info(&dev, DType::F32);
        assert_eq!(
            (f32_info.tensors, f32_info.precision, f32_info.fallback.as_deref()),
            (DType::F32, Precision::F32, None)
        );
        assert_eq!(f32_info.isa, if crate::kernels::enabled() { Isa::Avx512F } else { Isa::Stock });

        let f16 = compute_info(&dev, DType::F16);
        assert_eq!(
            (f16.tensors, f16.matmul, f16.precision, f16.isa),
            (DType::F32, MatmulPrecision::F32, Precision::F32, f32_info.isa)
        );
        assert!(f16.fallback.as_deref().is_some_and(|l| l.starts_with("--dtype f16:") && l.contains("running ")));

        let bf16 = compute_info(&dev, DType::BF16);
        assert_eq!(bf16.tensors, DType::F32);
        match bf16_isa() {
            Some(_) => assert_eq!((bf16.matmul, bf16.precision), (MatmulPrecision::Bf16, Precision::Bf16)),
            None => {
                assert_eq!(
                    (bf16.matmul, bf16.precision, bf16.isa),
                    (MatmulPrecision::F32, Precision::F32, f32_info.isa)
                );
                assert!(bf16.fallback.as_deref().is_some_and(|l| l.starts_with("--dtype bf16:")), "{bf16:?}");
            }
        }
        for isa in bf16_isas_supported() {
            let info = with_bf16_isa(isa, || compute_info(&dev, DType::BF16));
            let want = if isa == Bf16Isa::Amx { Isa::Amx } else { Isa::Avx512Bf16 };
            assert_eq!((info.matmul, info.isa, info.fallback.as_deref()), (MatmulPrecision::Bf16, want, None));
            let json = serde_json::to_value(&info).unwrap();
            assert_eq!(json, serde_json::json!({"precision": "bf16", "isa": isa.name(), "fallback": null}));
        }
    }
}
