//! Helpers shared by the integration tests: fixture paths and tensor comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

/// The committed tiny models: `tiny-sd` (SD 1.x layout, copied from the reference) and
/// `tiny-sd2` (linear projection, per-block head dims, three levels, gelu text encoder).
pub fn tiny_model(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

/// Loads every tensor of a safetensors fixture as it is stored.
pub fn load_fixture(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot load fixture {}: {e}", path.display()))
}

/// ||a - b|| / ||b||, computed in f64.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch: {:?} vs {:?}", a.dims(), b.dims());
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Asserts rel_l2(actual, expected) <= tol, printing the figure either way.
pub fn assert_close(name: &str, actual: &Tensor, expected: &Tensor, tol: f64) {
    let err = rel_l2(actual, expected);
    eprintln!("{name}: rel_l2 {err:.3e} (tol {tol:.1e})");
    assert!(err <= tol, "{name}: relative L2 error {err:.3e} > {tol:.1e}");
}

pub mod serve;
