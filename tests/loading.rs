//! Assembling a model: the tutorial's default combination from the Hugging Face cache (three
//! repos in their real layouts), components swapped one by one, and broken model folders through
//! the CLI (message naming the file, exit 1, no panic).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use common::tiny_model;
use diffedit::models::hub::Fetcher;
use diffedit::models::loading::{ModelChoice, ModelSpec, StableDiffusion};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// A snapshot folder of `repo` in a huggingface_hub-style cache, with refs/main pointing at it.
fn snapshot(cache: &Path, repo: &str) -> PathBuf {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), commit).unwrap();
    let snap = root.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    snap
}

/// The openai/clip-vit-large-patch14 layout: a CLIPConfig with `text_config`, weights with the
/// `text_model.` prefix next to vision weights, tokenizer files at the root.
fn write_clip_repo_layout(dir: &Path) {
    let tiny = tiny_model("tiny-sd");
    let text_cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("text_encoder/config.json")).unwrap()).unwrap();
    let clip_cfg = serde_json::json!({
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 32,
        "text_config": text_cfg, "vision_config": {"hidden_size": 16, "num_hidden_layers": 1},
    });
    std::fs::write(dir.join("config.json"), clip_cfg.to_string()).unwrap();
    let weights = candle_core::safetensors::load(tiny.join("text_encoder/model.safetensors"), &Device::Cpu).unwrap();
    let mut prefixed: HashMap<String, Tensor> = weights
        .into_iter()
        .map(|(k, v)| (if k.starts_with("text_model.") { k } else { format!("text_model.{k}") }, v))
        .collect();
    prefixed.insert("vision_model.post_layernorm.weight".into(), Tensor::ones(16, DType::F32, &Device::Cpu).unwrap());
    prefixed.insert("text_projection.weight".into(), Tensor::zeros((32, 32), DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&prefixed, dir.join("model.safetensors")).unwrap();
    for f in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(tiny.join("tokenizer").join(f), dir.join(f)).unwrap();
    }
}

/// A cache holding the tutorial's three repos, built from tiny-sd's files.
fn tutorial_cache(cache: &Path) {
    let tiny = tiny_model("tiny-sd");
    let sd = snapshot(cache, "CompVis/stable-diffusion-v1-4");
    copy_dir(&tiny.join("unet"), &sd.join("unet"));
    std::fs::copy(tiny.join("model_index.json"), sd.join("model_index.json")).unwrap();
    let vae = snapshot(cache, "stabilityai/sd-vae-ft-ema");
    copy_dir(&tiny.join("vae"), &vae);
    write_clip_repo_layout(&snapshot(cache, "openai/clip-vit-large-patch14"));
}

#[test]
fn tutorial_default_combination_loads_from_the_cache_offline() {
    let cache = tempfile::tempdir().unwrap();
    tutorial_cache(cache.path());
    let fetcher =
        Fetcher::from_env().with_cache_dir(cache.path().to_path_buf()).with_offline(true).with_progress(false);
    let model = StableDiffusion::load(&ModelSpec::default(), &fetcher, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(model.origins.unet, "CompVis/stable-diffusion-v1-4 (unet)");
    assert_eq!(model.origins.vae, "stabilityai/sd-vae-ft-ema");
    assert_eq!(model.origins.text_encoder, "openai/clip-vit-large-patch14");
    assert_eq!(model.origins.tokenizer, "openai/clip-vit-large-patch14");
    assert_eq!(model.origins.scheduler, "tutorial DDIM settings");
    // The tutorial's DDIMScheduler: steps_offset 0, so 10 steps are 900..0.
    let pipeline =
        diffedit::diffedit::DiffEdit::new(&model, diffedit::diffedit::EditParams { steps: 10, ..Default::default() })
            .unwrap();
    assert_eq!(pipeline.timesteps(), &[900, 800, 700, 600, 500, 400, 300, 200, 100, 0]);
    assert!(!model.schedule.config.clip_sample);

    // The same embeddings as tiny-sd's own text encoder: prefix and nested config were followed.
    let reference = StableDiffusion::load(
        &ModelSpec { model: Some(tiny_model("tiny-sd").display().to_string()), ..Default::default() },
        &fetcher,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    let (a, _) = model.encode_prompt("a zebra").unwrap();
    let (b, _) = reference.encode_prompt("a zebra").unwrap();
    assert_eq!(common::rel_l2(&a, &b), 0.0);
}

#[test]
fn default_combination_runs_through_the_cli_from_hf_home() {
    let home = tempfile::tempdir().unwrap();
    tutorial_cache(&home.path().join("hub"));
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_diffedit"))
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .args(["edit", "--image"])
        .arg(common::fixtures().join("pipeline/sd1_exact_default_in.png"))
        .args(["--source", "a horse", "--target", "a zebra", "--steps", "3", "--mask-samples", "2", "--json"])
        .arg("--out")
        .arg(out.path().join("zebra.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["model"]["vae"], "stabilityai/sd-vae-ft-ema");
    assert!(out.path().join("zebra.png").is_file());
    assert!(
        stderr.contains(
            "using Stable Diffusion from the Hugging Face cache (the tutorial's CompVis/stable-diffusion-v1-4, \
             stabilityai/sd-vae-ft-ema, openai/clip-vit-large-patch14)"
        ),
        "{stderr}"
    );
}

fn bundled_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/diffedit-shapes")
}

#[test]
fn unnamed_model_is_stable_diffusion_when_cached_else_the_bundled_model() {
    let cache = tempfile::tempdir().unwrap();
    let fetcher =
        Fetcher::from_env().with_cache_dir(cache.path().to_path_buf()).with_offline(true).with_progress(false);
    let unnamed = ModelSpec::default();

    // Empty cache: the shipped model, found through the source tree.
    let (spec, choice) = unnamed.resolve(&fetcher);
    let ModelChoice::Bundled(dir) = &choice else { panic!("{choice:?}") };
    assert_eq!(dir.canonicalize().unwrap(), bundled_dir().canonicalize().unwrap());
    assert_eq!(spec.model.as_deref(), Some(dir.to_str().unwrap()));
    // Even online: nothing is downloaded behind the user's back.
    let online = fetcher.clone().with_offline(false).with_endpoint("http://127.0.0.1:9".into());
    assert!(matches!(unnamed.resolve(&online).1, ModelChoice::Bundled(_)));

    // Configs cached but the UNet's weights missing: still not usable, still the bundled model.
    tutorial_cache(cache.path());
    let unet_weights = snapshot(cache.path(), "CompVis/stable-diffusion-v1-4").join("unet");
    let moved = cache.path().join("moved.safetensors");
    std::fs::rename(unet_weights.join("diffusion_pytorch_model.safetensors"), &moved).unwrap();
    assert!(matches!(unnamed.resolve(&fetcher).1, ModelChoice::Bundled(_)));

    // All of it cached: Stable Diffusion, as the tutorial combines it.
    std::fs::rename(&moved, unet_weights.join("diffusion_pytorch_model.safetensors")).unwrap();
    let (spec, choice) = unnamed.resolve(&fetcher);
    assert_eq!(choice, ModelChoice::TutorialCached);
    assert!(spec.is_unnamed());

    // Named: taken as is; `tutorial` asks for the tutorial's combination.
    let named = ModelSpec { vae: Some("stabilityai/sd-vae-ft-mse".into()), ..Default::default() };
    assert_eq!(named.resolve(&fetcher), (named.clone(), ModelChoice::Named));
    let tutorial = ModelSpec { model: Some("tutorial".into()), ..Default::default() };
    let empty = tempfile::tempdir().unwrap();
    let (spec, choice) = tutorial.resolve(&fetcher.clone().with_cache_dir(empty.path().to_path_buf()));
    assert_eq!(choice, ModelChoice::TutorialRequested);
    assert!(spec.is_unnamed());
}

#[test]
fn without_stable_diffusion_the_cli_edits_with_the_bundled_model_and_says_so() {
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_diffedit"))
        .env_remove("HF_HUB_CACHE")
        .env_remove("DIFFEDIT_BUNDLED_MODEL")
        .env("HF_HOME", home.path())
        .env("HF_HUB_OFFLINE", "1")
        .args(["edit", "--image"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/example/shapes.png"))
        .args(["--source", "a green circle on a gray background", "--target", "a red circle on a gray background"])
        .args(["--steps", "5", "--mask-samples", "2", "--json", "--out"])
        .arg(out.path().join("edited.png"))
        .arg("--save-mask")
        .arg(out.path().join("mask.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("using the small bundled model diffedit-shapes ("), "{stderr}");
    assert!(stderr.contains("Stable Diffusion is not in the Hugging Face cache"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let unet = summary["model"]["unet"].as_str().unwrap();
    assert!(unet.ends_with("models/diffedit-shapes (unet)"), "{unet}");
    let edited = image::open(out.path().join("edited.png")).unwrap();
    let source = image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/example/shapes.png")).unwrap();
    assert_eq!((edited.width(), edited.height()), (source.width(), source.height()));
    assert!(out.path().join("mask.png").is_file());
}

#[test]
fn components_swap_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip");
    std::fs::create_dir_all(&clip).unwrap();
    write_clip_repo_layout(&clip);
    let fetcher = Fetcher::from_env().with_offline(true).with_progress(false);
    let tiny = tiny_model("tiny-sd").display().to_string();
    let tiny2 = tiny_model("tiny-sd2");
    let spec = ModelSpec {
        model: Some(tiny.clone()),
        // A VAE from another model, given as its own folder (config.json at its root).
        vae: Some(tiny2.join("vae").display().to_string()),
        text_encoder: Some(clip.display().to_string()),
        ..Default::default()
    };
    let model = StableDiffusion::load(&spec, &fetcher, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(model.vae_factor(), 4, "tiny-sd2's VAE has factor 4");
    assert_eq!(model.vae.config.scaling_factor, 0.13025);
    assert_eq!(model.origins.text_encoder, clip.display().to_string());
    assert!(model.origins.scheduler.ends_with("(scheduler)"));

    // A text encoder whose width does not fit the UNet is refused with both names.
    let bad = ModelSpec { model: Some(tiny), text_encoder: Some(tiny2.display().to_string()), ..Default::default() };
    let err = StableDiffusion::load(&bad, &fetcher, &Device::Cpu, DType::F32).err().unwrap().to_string();
    assert!(err.contains("has hidden size 48 but the UNet") && err.contains("expects cross_attention_dim 32"), "{err}");
}

#[test]
fn f16_and_bf16_compute_dtypes_load_and_run() {
    let fetcher = Fetcher::from_env().with_offline(true).with_progress(false);
    let spec = ModelSpec { model: Some(tiny_model("tiny-sd2").display().to_string()), ..Default::default() };
    let f32m = StableDiffusion::load(&spec, &fetcher, &Device::Cpu, DType::F32).unwrap();
    let (e32, _) = f32m.encode_prompt("a red circle").unwrap();
    for dtype in [DType::F16, DType::BF16] {
        let m = StableDiffusion::load(&spec, &fetcher, &Device::Cpu, dtype).unwrap();
        let (e, _) = m.encode_prompt("a red circle").unwrap();
        // bf16 on a CPU with AMX: f32 tensors, bf16 products (kernels::compute_mode).
        let (tensors, matmul) = diffedit::kernels::compute_mode(&Device::Cpu, dtype);
        assert_eq!(e.dtype(), tensors);
        assert_eq!((m.dtype, m.matmul), (tensors, matmul));
        let err = common::rel_l2(&e.to_dtype(DType::F32).unwrap(), &e32);
        let tol = if dtype == DType::F16 { 5e-3 } else { 3e-2 };
        assert!(err <= tol, "{dtype:?}: rel_l2 {err}");
    }
}

/// `diffedit edit --model MODEL` of the pipeline fixture picture, prompts "a" -> "b", to `out`.
fn edit_with_model(model: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_diffedit"))
        .env("HF_HUB_OFFLINE", "1")
        .args(["edit", "--model"])
        .arg(model)
        .arg("--image")
        .arg(common::fixtures().join("pipeline/sd1_exact_default_in.png"))
        .args(["--source", "a", "--target", "b", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// A copy of tiny-sd with one file changed by `damage`; the CLI must name the damage.
fn broken_model_message(damage: impl FnOnce(&Path)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(&tiny_model("tiny-sd"), &model);
    damage(&model);
    let o = edit_with_model(&model, &dir.path().join("out.png"), &["--steps", "2", "-q"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(!dir.path().join("out.png").exists());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "{err}");
    err.replace(&model.display().to_string(), "MODEL")
}

#[test]
fn broken_model_folders_give_messages_naming_the_file() {
    let err =
        broken_model_message(|m| std::fs::remove_file(m.join("unet/diffusion_pytorch_model.safetensors")).unwrap());
    assert!(err.contains("MODEL") && err.contains("unet") && err.contains("diffusion_pytorch_model"), "{err}");

    let err = broken_model_message(|m| {
        let p = m.join("vae/config.json");
        let s = std::fs::read_to_string(&p).unwrap().replace("\"latent_channels\": 4", "\"latent_channels\": \"four\"");
        std::fs::write(p, s).unwrap();
    });
    assert!(err.contains("MODEL/vae/config.json: key `latent_channels`: invalid type: string \"four\""), "{err}");

    let err = broken_model_message(|m| {
        let p = m.join("unet/diffusion_pytorch_model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    });
    assert!(err.contains("MODEL/unet/diffusion_pytorch_model.safetensors:"), "{err}");

    let err = broken_model_message(|m| {
        let p = m.join("unet/config.json");
        let s = std::fs::read_to_string(&p).unwrap().replace("\"layers_per_block\": 2", "\"layers_per_block\": 3");
        std::fs::write(p, s).unwrap();
    });
    assert!(
        err.contains("MODEL/unet/diffusion_pytorch_model.safetensors: missing weight `down_blocks.0.resnets.2"),
        "{err}"
    );

    let err = broken_model_message(|m| {
        let p = m.join("unet/config.json");
        let s =
            std::fs::read_to_string(&p).unwrap().replace("\"cross_attention_dim\": 32", "\"cross_attention_dim\": 40");
        std::fs::write(p, s).unwrap();
    });
    assert!(
        err.contains("MODEL/unet/diffusion_pytorch_model.safetensors: weight `") && err.contains("has shape"),
        "{err}"
    );
}

#[test]
fn a_model_folders_diffedit_json_sets_edit_defaults_that_flags_override() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(&tiny_model("tiny-sd"), &model);
    std::fs::write(model.join("diffedit.json"), r#"{"mask_noise_level": 0.3, "mask_threshold": 0.25}"#).unwrap();
    let run = |extra: &[&str]| {
        let args = [&["--steps", "4", "--mask-samples", "1", "--json"], extra].concat();
        let o = edit_with_model(&model, &dir.path().join("out.png"), &args);
        let stderr = String::from_utf8_lossy(&o.stderr).replace(&model.display().to_string(), "MODEL");
        assert!(o.status.success(), "{stderr}");
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (summary["params"].clone(), stderr)
    };
    let (params, stderr) = run(&[]);
    assert_eq!(params["mask_noise_level"], 0.3);
    assert_eq!(params["mask_threshold"], 0.25);
    assert_eq!(params["encode_ratio"], 0.8);
    assert!(
        stderr.contains(
            "edit settings from MODEL/diffedit.json: mask_noise_level 0.3, mask_threshold 0.25 \
             (flags given on the command line win)"
        ),
        "{stderr}"
    );
    let (params, _) = run(&["--mask-threshold", "0.6", "--encode-ratio", "0.5"]);
    assert_eq!(params["mask_noise_level"], 0.3);
    assert_eq!(params["mask_threshold"], 0.6);
    assert_eq!(params["encode_ratio"], 0.5);

    std::fs::write(model.join("diffedit.json"), r#"{"mask_noise_level": 0}"#).unwrap();
    let o = edit_with_model(&model, &dir.path().join("out2.png"), &["-q"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr).replace(&model.display().to_string(), "MODEL");
    assert!(err.contains("MODEL/diffedit.json: mask_noise_level must be in (0, 1], got 0"), "{err}");
    assert!(!dir.path().join("out2.png").exists());
}
