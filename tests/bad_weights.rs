//! Bad input for weights and configs: each error names the file, and the tensor or key, and
//! says what is wrong. Files are written to temporary folders byte by byte, so every kind of
//! damage can be made exactly.

// `&[path.clone()]` reads better here than `std::slice::from_ref(&path)`.
#![allow(clippy::cloned_ref_to_slice_refs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use diffedit::models::config::{read_config, PerBlock};
use diffedit::models::weights::Weights;

/// One tensor as stored: name, safetensors dtype string, shape, raw little-endian bytes.
type Stored<'a> = (&'a str, &'a str, &'a [usize], Vec<u8>);

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn safetensors_bytes(tensors: &[Stored]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&data);
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn open_err(paths: &[PathBuf]) -> String {
    match Weights::open(paths) {
        Ok(_) => panic!("{paths:?} opened without error"),
        Err(e) => e.to_string(),
    }
}

fn one_matrix() -> Vec<u8> {
    safetensors_bytes(&[("w", "F32", &[3, 2], f32_bytes(&[0., 1., 2., 3., 4., 5.]))])
}

#[test]
fn missing_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let weights = tmp.path().join("unet/diffusion_pytorch_model.safetensors");
    let config = tmp.path().join("unet/config.json");
    let w = open_err(&[weights.clone()]);
    let c = read_config::<serde_json::Value>(&config).unwrap_err().to_string();
    assert!(w.starts_with(&format!("{}: ", weights.display())), "{w}");
    assert!(c.starts_with(&format!("{}: ", config.display())), "{c}");
    #[cfg(unix)]
    {
        assert_eq!(w, format!("{}: No such file or directory (os error 2)", weights.display()));
        assert_eq!(c, format!("{}: No such file or directory (os error 2)", config.display()));
    }
}

#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)]
struct TestConfig {
    block_out_channels: Vec<usize>,
    #[serde(default = "default_groups")]
    norm_num_groups: usize,
    attention_head_dim: PerBlock<usize>,
    #[serde(default)]
    act_fn: Option<String>,
}

fn default_groups() -> usize {
    32
}

#[test]
fn config_errors_name_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.json");
    let err = |text: &str| {
        std::fs::write(&path, text).unwrap();
        read_config::<TestConfig>(&path).unwrap_err().to_string()
    };
    let p = path.display();

    // Good, with unknown keys ignored and a default filled in.
    std::fs::write(&path, r#"{"block_out_channels": [32, 64], "attention_head_dim": [2, 4], "_class_name": "X"}"#)
        .unwrap();
    let ok: TestConfig = read_config(&path).unwrap();
    assert_eq!(ok.norm_num_groups, 32);
    assert_eq!(ok.attention_head_dim.get(1, 2, "attention_head_dim"), Ok(4));
    assert_eq!(
        ok.attention_head_dim.get(0, 3, "attention_head_dim"),
        Err("`attention_head_dim` has 2 entries, expected one per block (3)".to_string())
    );

    assert_eq!(
        err(r#"{"block_out_channels": [32, "64"], "attention_head_dim": 8}"#),
        format!("{p}: key `block_out_channels[1]`: invalid type: string \"64\", expected usize at line 1 column 32")
    );
    assert_eq!(
        err(r#"{"block_out_channels": [32, 64], "attention_head_dim": 8, "norm_num_groups": -1}"#),
        format!("{p}: key `norm_num_groups`: invalid value: integer `-1`, expected usize at line 1 column 79")
    );
    assert_eq!(
        err(r#"{"block_out_channels": [32], "attention_head_dim": "8"}"#),
        format!("{p}: key `attention_head_dim`: invalid type: string \"8\", expected usize (one value, or a list with one per block) at line 1 column 55")
    );
    assert_eq!(
        err(r#"{"block_out_channels": [32], "attention_head_dim": [2, 4.5]}"#),
        format!("{p}: key `attention_head_dim`: invalid type: floating point `4.5`, expected usize (one value, or a list with one per block) at line 1 column 60")
    );
    assert_eq!(
        err(r#"{"block_out_channels": [32], "attention_head_dim": 8, "act_fn": 3}"#),
        format!("{p}: key `act_fn`: invalid type: integer `3`, expected a string at line 1 column 65")
    );
    assert_eq!(
        err(r#"{"attention_head_dim": 8}"#),
        format!("{p}: missing field `block_out_channels` at line 1 column 25")
    );
    assert_eq!(
        err(r#"{"block_out_channels": [32,"#),
        format!("{p}: invalid JSON: EOF while parsing a value at line 1 column 27")
    );
    assert_eq!(err(""), format!("{p}: invalid JSON: EOF while parsing a value at line 1 column 0"));
    assert_eq!(
        err(r#""unet""#),
        format!("{p}: invalid type: string \"unet\", expected struct TestConfig at line 1 column 6")
    );
}

#[test]
fn wrong_shape_names_file_tensor_and_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "model.safetensors", &one_matrix());
    let vb = Arc::new(Weights::open(&[path.clone()]).unwrap()).var_builder(DType::F32, &Device::Cpu);
    let err = vb.get((2, 3), "w").unwrap_err();
    let expected = format!("{}: weight `w` has shape [3, 2], the config implies [2, 3]", path.display());
    assert_eq!(err.to_string(), expected);
    // Model code returns it through `?` as the crate's error, unchanged.
    assert_eq!(diffedit::Error::from(err).to_string(), expected);

    // Prefixes from `pp` are part of the name.
    let bytes = safetensors_bytes(&[("down.0.w", "F32", &[4], f32_bytes(&[1., 2., 3., 4.]))]);
    let path = write(tmp.path(), "prefixed.safetensors", &bytes);
    let vb = Arc::new(Weights::open(&[path.clone()]).unwrap()).var_builder(DType::F32, &Device::Cpu);
    assert_eq!(
        vb.pp("down").pp("0").get(5, "w").unwrap_err().to_string(),
        format!("{}: weight `down.0.w` has shape [4], the config implies [5]", path.display())
    );
    let t = vb.pp("down").pp("0").get(4, "w").unwrap();
    assert_eq!(t.to_vec1::<f32>().unwrap(), [1., 2., 3., 4.]);
}

#[test]
fn missing_weight_names_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write(tmp.path(), "a.safetensors", &one_matrix());
    let vb = Arc::new(Weights::open(&[a.clone()]).unwrap()).var_builder(DType::F32, &Device::Cpu);
    assert!(!vb.contains_tensor("conv.bias"));
    assert_eq!(vb.get(4, "conv.bias").unwrap_err().to_string(), format!("{}: missing weight `conv.bias`", a.display()));
    // Over shards, the message lists them all.
    let b = write(tmp.path(), "b.safetensors", &safetensors_bytes(&[("v", "F32", &[1], f32_bytes(&[7.]))]));
    let vb = Arc::new(Weights::open(&[a.clone(), b.clone()]).unwrap()).var_builder(DType::F32, &Device::Cpu);
    assert_eq!(vb.get(1, "v").unwrap().to_vec1::<f32>().unwrap(), [7.]);
    assert_eq!(
        vb.get(4, "conv.bias").unwrap_err().to_string(),
        format!("{}, {}: missing weight `conv.bias`", a.display(), b.display())
    );
}

#[test]
fn damaged_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let good = one_matrix();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;

    // Cut inside the data (an interrupted download).
    let p = write(tmp.path(), "cut_data.safetensors", &good[..good.len() - 4]);
    assert_eq!(
        open_err(&[p.clone()]),
        format!(
            "{}: not a valid safetensors file: its size does not match the tensors its header lists (truncated or incomplete download?)",
            p.display()
        )
    );
    // Cut inside the header, and cut before the length prefix ends.
    let p = write(tmp.path(), "cut_header.safetensors", &good[..8 + header_len / 2]);
    assert_eq!(
        open_err(&[p.clone()]),
        format!(
            "{}: not a valid safetensors file: file too short for its header ({} bytes; truncated?)",
            p.display(),
            8 + header_len / 2
        )
    );
    let p = write(tmp.path(), "stub.safetensors", &good[..5]);
    assert_eq!(
        open_err(&[p.clone()]),
        format!("{}: not a valid safetensors file: file too short for its header (5 bytes; truncated?)", p.display())
    );
    let p = write(tmp.path(), "empty.safetensors", b"");
    assert_eq!(
        open_err(&[p.clone()]),
        format!("{}: not a valid safetensors file: file too short for its header (0 bytes; truncated?)", p.display())
    );

    // Header bytes overwritten.
    let mut corrupt = good.clone();
    corrupt[8..8 + header_len].fill(b'#');
    let p = write(tmp.path(), "corrupt.safetensors", &corrupt);
    assert_eq!(
        open_err(&[p.clone()]),
        format!(
            "{}: not a valid safetensors file: invalid JSON in header: expected value at line 1 column 1",
            p.display()
        )
    );
    // A header whose shape and offsets disagree.
    let mut bytes = safetensors_bytes(&[("w", "F32", &[2, 3], f32_bytes(&[0.; 2]))]);
    let p = write(tmp.path(), "inconsistent.safetensors", &bytes);
    assert_eq!(
        open_err(&[p.clone()]),
        format!("{}: not a valid safetensors file: invalid shape, data type, or offset for tensor", p.display())
    );
    // Not safetensors at all: a pickle, and a Git LFS pointer left by a clone without git-lfs.
    bytes = b"\x80\x02}q\x00(X\x06\x00\x00\x00weightq\x01ctorch._utils".to_vec();
    let p = write(tmp.path(), "pytorch_model.safetensors", &bytes);
    assert_eq!(open_err(&[p.clone()]), format!("{}: not a valid safetensors file: header too large", p.display()));
    let pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:4d3a0a9bb6a5e3c7d1e4b6b0\nsize 3438167534\n";
    let p = write(tmp.path(), "lfs.safetensors", pointer.as_bytes());
    assert_eq!(
        open_err(&[p.clone()]),
        format!(
            "{}: is a Git LFS pointer, not the weights (run `git lfs pull` in the model folder, or download it again)",
            p.display()
        )
    );

    // A damaged shard among good ones is the one named.
    let ok = write(tmp.path(), "ok.safetensors", &good);
    let bad = tmp.path().join("cut_data.safetensors");
    assert!(open_err(&[ok, bad.clone()]).starts_with(&format!("{}: not a valid safetensors file", bad.display())));
}

#[test]
fn refused_dtypes_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    for (dtype, bytes) in [("I32", vec![0u8; 8]), ("BOOL", vec![0u8; 2]), ("F8_E4M3", vec![0u8; 2])] {
        let st = safetensors_bytes(&[("ok", "F32", &[1], f32_bytes(&[1.])), ("idx", dtype, &[2], bytes)]);
        let p = write(tmp.path(), &format!("{dtype}.safetensors"), &st);
        assert_eq!(
            open_err(&[p.clone()]),
            format!("{}: tensor `idx`: unsupported dtype {dtype} (f32, f16 or bf16 expected)", p.display())
        );
    }
}

#[test]
fn half_precision_is_converted_on_load() {
    let tmp = tempfile::tempdir().unwrap();
    let values = [0.5f32, -1.25, 3.0, 1024.0];
    let f16: Vec<u8> = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let bf16: Vec<u8> = values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
    let st = safetensors_bytes(&[("h", "F16", &[2, 2], f16), ("b", "BF16", &[2, 2], bf16)]);
    let p = write(tmp.path(), "half.safetensors", &st);
    let weights = Arc::new(Weights::open(&[p]).unwrap());
    let vb = weights.var_builder(DType::F32, &Device::Cpu);
    for name in ["h", "b"] {
        let t = vb.get((2, 2), name).unwrap();
        assert_eq!(t.dtype(), DType::F32);
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);
    }
    let t: Tensor = weights.var_builder(DType::F16, &Device::Cpu).get((2, 2), "b").unwrap();
    assert_eq!(t.dtype(), DType::F16);
}
