//! Single-file checkpoints (original Stable Diffusion layout) against the diffusers folders they
//! were made from. tools/make_single_file_fixtures.py wrote the tiny models in that layout and
//! checked with diffusers' `from_single_file` that they load to the folders' tensors; it committed
//! each file's recipe (which folder tensor, how) and the digest of its tensors. The tests rebuild
//! the files from the recipe, check the digest (so they are the files diffusers loaded), then:
//! edits through the CLI identical to the folder's, the configuration inferred from full-size SD
//! 1.5 / 2.1 shapes, and the messages for pickles, partial, wrong and foreign files.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device};
use common::{fixtures, tiny_model};
use diffedit::models::hub::Fetcher;
use diffedit::models::loading::{ModelSpec, StableDiffusion};
use diffedit::models::single_file::{self, Checkpoint, TensorShapes, TextLayout};
use serde_json::Value;
use sha2::Digest;

/// A tensor as stored: dtype, shape, little-endian bytes.
#[derive(Clone)]
struct Raw {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn read_raw(path: &Path) -> HashMap<String, Raw> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| (name, Raw { dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() }))
        .collect()
}

fn folder_tensors(model: &str) -> HashMap<String, HashMap<String, Raw>> {
    let dir = tiny_model(model);
    [
        ("unet", "unet/diffusion_pytorch_model.safetensors"),
        ("vae", "vae/diffusion_pytorch_model.safetensors"),
        ("text_encoder", "text_encoder/model.safetensors"),
    ]
    .into_iter()
    .map(|(c, f)| (c.to_string(), read_raw(&dir.join(f))))
    .collect()
}

/// One entry of the recipe applied to the folder's tensors.
fn build(entry: &Value, folder: &HashMap<String, HashMap<String, Raw>>) -> Raw {
    let sources: Vec<&Raw> = entry["from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let (component, name) = s.as_str().unwrap().split_once('/').unwrap();
            &folder[component][name]
        })
        .collect();
    match entry["op"].as_str().unwrap() {
        "copy" => sources[0].clone(),
        "conv1x1" => Raw { shape: [sources[0].shape.clone(), vec![1, 1]].concat(), ..sources[0].clone() },
        "qkv" => Raw {
            dtype: sources[0].dtype,
            shape: [vec![sources.iter().map(|s| s.shape[0]).sum()], sources[0].shape[1..].to_vec()].concat(),
            data: sources.iter().flat_map(|s| s.data.clone()).collect(),
        },
        "eye" => {
            let n = entry["size"].as_u64().unwrap() as usize;
            let (dtype, one): (_, Vec<u8>) = match entry["dtype"].as_str().unwrap() {
                "float32" => (safetensors::Dtype::F32, 1f32.to_le_bytes().to_vec()),
                "float16" => (safetensors::Dtype::F16, half::f16::ONE.to_le_bytes().to_vec()),
                other => panic!("eye of {other}"),
            };
            let zero = vec![0u8; one.len()];
            let data = (0..n * n).flat_map(|i| if i / n == i % n { one.clone() } else { zero.clone() }).collect();
            Raw { dtype, shape: vec![n, n], data }
        }
        other => panic!("unknown op {other}"),
    }
}

/// SHA-256 over the tensors in name order (name, dtype, shape, bytes), as the tool computes it.
fn digest(tensors: &HashMap<String, Raw>) -> String {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut h = sha2::Sha256::new();
    for name in names {
        let t = &tensors[name];
        let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        h.update(format!("{name}\0{:?}\0{}\0", t.dtype, shape.join(",")).as_bytes());
        h.update(&t.data);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn write(tensors: &HashMap<String, Raw>, path: &Path) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// The tiny model `model` as a checkpoint (`which`: "tensors", the whole model, or
/// "vae_tensors", the VAE alone), checked against the digest of the file diffusers loaded.
fn assemble(model: &str, which: &str) -> HashMap<String, Raw> {
    let recipe: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("single_file/{model}.layout.json"))).unwrap(),
    )
    .unwrap();
    let folder = folder_tensors(model);
    let tensors: HashMap<String, Raw> = recipe[which]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["ldm"].as_str().unwrap().to_string(), build(e, &folder)))
        .collect();
    let key = if which == "tensors" { "digest" } else { "vae_digest" };
    assert_eq!(digest(&tensors), recipe[key].as_str().unwrap(), "{model} {which}: not the file diffusers checked");
    tensors
}

fn checkpoint_file(dir: &Path, model: &str, which: &str) -> PathBuf {
    let path = dir.join(format!("{model}{}.safetensors", if which == "tensors" { "" } else { "-vae" }));
    write(&assemble(model, which), &path);
    path
}

fn diffedit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffedit")).env("HF_HUB_OFFLINE", "1").args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs a short seeded edit with `model_args`, returning the picture's bytes and the trace.
fn edit(dir: &Path, tag: &str, model_args: &[&str], size: &str) -> (Vec<u8>, HashMap<String, Vec<f32>>) {
    let image = fixtures().join("pipeline/sd1_exact_96x64_in.png");
    let (out, trace) = (dir.join(format!("{tag}.png")), dir.join(format!("{tag}.safetensors")));
    let mut args = vec!["edit", "--image", image.to_str().unwrap(), "--source", "a bowl of fruit"];
    args.extend(["--target", "a basket of fruit", "--steps", "4", "--mask-samples", "2", "--size", size, "-q"]);
    args.extend(["--out", out.to_str().unwrap(), "--trace", trace.to_str().unwrap()]);
    args.extend_from_slice(model_args);
    let o = diffedit(&args);
    assert!(o.status.success(), "{tag}: {}", stderr(&o));
    let tensors = common::load_fixture(&trace)
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    (std::fs::read(out).unwrap(), tensors)
}

fn assert_identical(tag: &str, a: &(Vec<u8>, HashMap<String, Vec<f32>>), b: &(Vec<u8>, HashMap<String, Vec<f32>>)) {
    assert_eq!(a.1.keys().len(), b.1.keys().len(), "{tag}: trace tensors");
    for (k, v) in &a.1 {
        assert!(v == &b.1[k], "{tag}: trace tensor {k} differs from the folder's");
    }
    assert!(a.0 == b.0, "{tag}: the picture differs from the folder's");
}

#[test]
fn checkpoints_edit_exactly_as_their_folders() {
    let dir = tempfile::tempdir().unwrap();
    for (model, size) in [("tiny-sd", "64x48"), ("tiny-sd2", "64x64")] {
        let folder = tiny_model(model).display().to_string();
        let file = checkpoint_file(dir.path(), model, "tensors");
        let vae = checkpoint_file(dir.path(), model, "vae_tensors");
        let reference = edit(dir.path(), &format!("{model}-folder"), &["--model", &folder], size);
        let single =
            edit(dir.path(), &format!("{model}-file"), &["--model", file.to_str().unwrap(), "--config", &folder], size);
        assert_identical(&format!("{model} single file with --config"), &single, &reference);
        let vae_only = edit(
            dir.path(),
            &format!("{model}-vae"),
            &["--model", &folder, "--vae", vae.to_str().unwrap(), "--config", &folder],
            size,
        );
        assert_identical(&format!("{model} --vae FILE"), &vae_only, &reference);
    }
}

/// tiny-sd's UNet and VAE follow SD 1.x's conventions (8 heads, 32 groups, scale 0.18215, DDIM
/// with steps_offset 1), so they load from the shapes alone; its 32-wide text encoder does not
/// (4 heads of 8), and is taken from the folder. The VAE-only file needs no --config either.
#[test]
fn inferred_configuration_runs_the_tiny_sd1_checkpoint_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let folder = tiny_model("tiny-sd").display().to_string();
    let file = checkpoint_file(dir.path(), "tiny-sd", "tensors");
    let vae = checkpoint_file(dir.path(), "tiny-sd", "vae_tensors");
    let reference = edit(dir.path(), "folder", &["--model", &folder], "64x48");
    let inferred =
        edit(dir.path(), "inferred", &["--model", file.to_str().unwrap(), "--text-encoder", &folder], "64x48");
    assert_identical("tiny-sd, configs inferred", &inferred, &reference);
    let vae_inferred = edit(dir.path(), "vae", &["--model", &folder, "--vae", vae.to_str().unwrap()], "64x48");
    assert_identical("tiny-sd VAE file, config inferred", &vae_inferred, &reference);

    // The text encoder alone cannot be inferred: the message says why and what to pass.
    let image = fixtures().join("pipeline/sd1_exact_96x64_in.png");
    let o = diffedit(&[
        "edit",
        "--model",
        file.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--source",
        "a",
        "--target",
        "b",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{}: cannot infer the text_encoder configuration: hidden size 32 is not a multiple of 64 (CLIP heads); pass --config",
            file.display()
        )),
        "{err}"
    );
}

fn shapes_fixture(name: &str) -> (HashMap<String, Vec<usize>>, Value) {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("single_file/{name}_shapes.json"))).unwrap(),
    )
    .unwrap();
    let shapes = serde_json::from_value(doc["shapes"].clone()).unwrap();
    (shapes, doc)
}

/// Every key of `expected` (a published config) has the same value in `inferred`.
fn assert_config_matches(what: &str, inferred: &Value, expected: &Value) {
    for (k, v) in expected.as_object().unwrap() {
        assert_eq!(&inferred[k], v, "{what}: `{k}`");
    }
}

#[test]
fn full_size_sd15_and_sd21_configurations_are_inferred_from_shapes() {
    for (name, text) in [("sd15", "clip"), ("sd21", "open_clip")] {
        let (shapes, doc) = shapes_fixture(name);
        let contents = single_file::Contents::of(&shapes);
        assert!(contents.unet);
        assert_eq!(contents.vae_prefix, Some(single_file::VAE_PREFIX));
        let layout = contents.text.clone().unwrap();
        assert_eq!(layout == TextLayout::OpenClip, text == "open_clip", "{name}");
        assert_eq!(contents.is_sd2(&shapes), name == "sd21");
        assert_config_matches(name, &single_file::infer_unet_config(&shapes).unwrap(), &doc["unet"]);
        let vae = single_file::infer_vae_config(&shapes, single_file::VAE_PREFIX).unwrap();
        assert_config_matches(name, &vae, &doc["vae"]);
        assert_config_matches(name, &single_file::infer_text_config(&shapes, &layout).unwrap(), &doc["text_encoder"]);
        // The renaming reaches every stored UNet tensor from a diffusers name of that config.
        let unet: diffedit::models::unet::UNet2DConditionConfig =
            serde_json::from_value(single_file::infer_unet_config(&shapes).unwrap()).unwrap();
        let n = unet.block_out_channels.len();
        let layout = single_file::UNetLayout {
            layers_per_block: 2,
            up_has_attention: unet.up_block_types.iter().map(|t| t.starts_with("CrossAttn")).collect(),
        };
        let stored: Vec<&String> = shapes.keys().filter(|k| k.starts_with(single_file::UNET_PREFIX)).collect();
        let reached: std::collections::HashSet<String> = diffusers_unet_names(n)
            .iter()
            .filter_map(|d| single_file::unet_ldm_name(d, &layout))
            .map(|s| format!("{}{s}", single_file::UNET_PREFIX))
            .collect();
        let missed: Vec<&&String> = stored.iter().filter(|k| !reached.contains(k.as_str())).collect();
        assert!(missed.is_empty(), "{name}: stored UNet tensors no diffusers name reaches: {missed:?}");
        eprintln!("{name}: {} UNet tensors reached, configs as published", stored.len());
    }
}

/// diffusers' UNet tensor names for an SD-shaped config (resnets, attentions with one
/// transformer block, samplers), enough to cover every stored name.
fn diffusers_unet_names(n: usize) -> Vec<String> {
    let mut v: Vec<String> =
        ["conv_in", "conv_out", "conv_norm_out", "time_embedding.linear_1", "time_embedding.linear_2"]
            .iter()
            .flat_map(|p| [format!("{p}.weight"), format!("{p}.bias")])
            .collect();
    let resnet = |p: String| -> Vec<String> {
        ["norm1", "conv1", "time_emb_proj", "norm2", "conv2", "conv_shortcut"]
            .iter()
            .flat_map(|l| [format!("{p}.{l}.weight"), format!("{p}.{l}.bias")])
            .collect()
    };
    let attention = |p: String| -> Vec<String> {
        let t = format!("{p}.transformer_blocks.0");
        let mut names: Vec<String> = ["norm", "proj_in", "proj_out"]
            .iter()
            .chain(&[
                "transformer_blocks.0.norm1",
                "transformer_blocks.0.norm2",
                "transformer_blocks.0.norm3",
                "transformer_blocks.0.attn1.to_out.0",
                "transformer_blocks.0.attn2.to_out.0",
                "transformer_blocks.0.ff.net.0.proj",
                "transformer_blocks.0.ff.net.2",
            ])
            .flat_map(|l| [format!("{p}.{l}.weight"), format!("{p}.{l}.bias")])
            .collect();
        for a in ["attn1", "attn2"] {
            for w in ["to_q", "to_k", "to_v"] {
                names.push(format!("{t}.{a}.{w}.weight"));
            }
        }
        names
    };
    for b in 0..n {
        for j in 0..2 {
            v.extend(resnet(format!("down_blocks.{b}.resnets.{j}")));
            v.extend(attention(format!("down_blocks.{b}.attentions.{j}")));
        }
        v.extend(["weight", "bias"].map(|w| format!("down_blocks.{b}.downsamplers.0.conv.{w}")));
        for j in 0..3 {
            v.extend(resnet(format!("up_blocks.{b}.resnets.{j}")));
            v.extend(attention(format!("up_blocks.{b}.attentions.{j}")));
        }
        v.extend(["weight", "bias"].map(|w| format!("up_blocks.{b}.upsamplers.0.conv.{w}")));
    }
    for j in 0..2 {
        v.extend(resnet(format!("mid_block.resnets.{j}")));
    }
    v.extend(attention("mid_block.attentions.0".to_string()));
    v
}

#[test]
fn sd2_checkpoints_pad_with_the_exclamation_mark_like_sd2s_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let file = checkpoint_file(dir.path(), "tiny-sd2", "tensors");
    let ckpt = Checkpoint::open(&file, None).unwrap();
    assert!(ckpt.is_sd2());
    let (ours, origin) = ckpt.tokenizer().unwrap();
    assert!(origin.contains("padded with `!`"), "{origin}");
    let reference =
        diffedit::models::tokenizer::ClipTokenizer::from_dir(&tiny_model("tiny-sd2").join("tokenizer")).unwrap();
    for prompt in ["a red circle", "wow! a cat!!", "", &"a very long prompt ".repeat(20)] {
        assert_eq!(ours.encode(prompt), reference.encode(prompt), "{prompt:?}");
    }
    let sd1 = Checkpoint::open(&checkpoint_file(dir.path(), "tiny-sd", "tensors"), None).unwrap();
    assert!(!sd1.is_sd2());
    let (sd1_tok, _) = sd1.tokenizer().unwrap();
    let reference =
        diffedit::models::tokenizer::ClipTokenizer::from_dir(&tiny_model("tiny-sd").join("tokenizer")).unwrap();
    assert_eq!(sd1_tok.encode("wow! a cat"), reference.encode("wow! a cat"));
}

fn load(spec: ModelSpec) -> Result<StableDiffusion, String> {
    let fetcher = Fetcher::from_env().with_offline(true).with_progress(false);
    StableDiffusion::load(&spec, &fetcher, &Device::Cpu, DType::F32).map_err(|e| e.to_string())
}

#[test]
fn partial_wrong_and_foreign_files_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let folder = tiny_model("tiny-sd").display().to_string();
    let full = assemble("tiny-sd", "tensors");
    let spec = |path: &Path| ModelSpec {
        model: Some(path.display().to_string()),
        config: Some(folder.clone()),
        ..Default::default()
    };

    // A tensor missing: the message names the stored key and the diffusers one.
    let partial = dir.path().join("partial.safetensors");
    let mut t = full.clone();
    t.remove("model.diffusion_model.input_blocks.1.1.proj_in.weight").unwrap();
    write(&t, &partial);
    let err = load(spec(&partial)).err().unwrap();
    assert!(
        err.contains(&format!(
            "{}: missing weight `model.diffusion_model.input_blocks.1.1.proj_in.weight` (the UNet's \
             `down_blocks.0.attentions.0.proj_in.weight`)",
            partial.display()
        )),
        "{err}"
    );

    // A tensor of the wrong shape.
    let wrong = dir.path().join("wrong.safetensors");
    let mut t = full.clone();
    let key = "first_stage_model.decoder.conv_in.weight";
    let mut bad = t[key].clone();
    bad.shape = vec![bad.shape[0] / 2, bad.shape[1] * 2, bad.shape[2], bad.shape[3]];
    t.insert(key.to_string(), bad);
    write(&t, &wrong);
    let err = load(spec(&wrong)).err().unwrap();
    assert!(
        err.contains(&format!("{}: weight `{key}` (the VAE's `decoder.conv_in.weight`) has shape", wrong.display())),
        "{err}"
    );

    // No text encoder at all.
    let no_text = dir.path().join("no_text.safetensors");
    let t: HashMap<String, Raw> =
        full.iter().filter(|(k, _)| !k.starts_with("cond_stage_model.")).map(|(k, v)| (k.clone(), v.clone())).collect();
    write(&t, &no_text);
    let err = load(ModelSpec { config: None, ..spec(&no_text) }).err().unwrap();
    assert!(err.contains("holds no text encoder (no tensor under `cond_stage_model.`)"), "{err}");

    // A diffusers component file is not a checkpoint.
    let unet_file = tiny_model("tiny-sd").join("unet/diffusion_pytorch_model.safetensors");
    let err = load(spec(&unet_file)).err().unwrap();
    assert!(err.contains("not a Stable Diffusion checkpoint in the original layout"), "{err}");

    // --config without a single file.
    let err = load(ModelSpec { model: Some(folder.clone()), config: Some(folder.clone()), ..Default::default() })
        .err()
        .unwrap();
    assert_eq!(
        err,
        "--config applies to single-file checkpoints: pass --model FILE.safetensors or --vae FILE.safetensors"
    );
}

#[test]
fn pickles_are_refused_unopened_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixtures().join("pipeline/sd1_exact_96x64_in.png");
    let out = dir.path().join("out.png");
    // A pickle the way torch.save writes one (protocol 2 header), named .ckpt, and the same bytes
    // under a .safetensors name.
    let ckpt = dir.path().join("model.ckpt");
    std::fs::write(&ckpt, [0x80, 0x02, 0x7d, 0x71, 0x00, 0x2e]).unwrap();
    let disguised = dir.path().join("model.safetensors");
    std::fs::copy(&ckpt, &disguised).unwrap();
    for (flag, file) in [("--model", &ckpt), ("--model", &disguised), ("--vae", &ckpt)] {
        let o = diffedit(&[
            "edit",
            flag,
            file.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--source",
            "a",
            "--target",
            "b",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{flag} {}", file.display());
        let err = stderr(&o);
        assert!(
            err.contains(&format!(
                "{}: is a PyTorch pickle checkpoint; loading a pickle can run any code",
                file.display()
            )),
            "{err}"
        );
        assert!(!out.exists(), "nothing written");
    }
    // A missing checkpoint is named as a file, not as a folder or repo.
    let missing = dir.path().join("missing.safetensors");
    let o = diffedit(&[
        "edit",
        "--model",
        missing.to_str().unwrap(),
        "--image",
        image.to_str().unwrap(),
        "--source",
        "a",
        "--target",
        "b",
    ]);
    assert!(stderr(&o).contains(&format!("{}: checkpoint file not found", missing.display())), "{}", stderr(&o));
}

#[test]
fn weights_report_shapes_for_inference() {
    let w = diffedit::models::weights::Weights::open(&[
        tiny_model("tiny-sd").join("vae/diffusion_pytorch_model.safetensors")
    ])
    .unwrap();
    assert_eq!(w.shape_of("decoder.conv_in.weight"), Some(vec![64, 4, 3, 3]));
    assert_eq!(w.shape_of("nothing"), None);
}
