//! The whole edit against the PyTorch reference (../shared/reference/seed_reference.py), replayed
//! with each fixture's noise: every traced tensor within relative L2 1e-3, the mask within 1% of
//! its pixels. Fixtures: tools/make_pipeline_fixtures.py.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixtures, load_fixture, rel_l2, tiny_model};
use diffedit::diffedit::{Alignment, DiffEdit, EditParams, Noise, Silent};
use diffedit::image_io::{image_to_tensor, load_rgb};
use diffedit::models::hub::Fetcher;
use diffedit::models::loading::{ModelSpec, StableDiffusion};
use diffedit::trace::trace_tensors;

pub fn load_tiny(name: &str) -> StableDiffusion {
    let spec = ModelSpec { model: Some(tiny_model(name).display().to_string()), ..Default::default() };
    let fetcher = Fetcher::from_env().with_offline(true).with_progress(false);
    StableDiffusion::load(&spec, &fetcher, &Device::Cpu, DType::F32).expect("tiny model loads")
}

fn params_of(json: &serde_json::Value) -> EditParams {
    let p = &json["params"];
    EditParams {
        steps: p["steps"].as_u64().unwrap() as usize,
        encode_ratio: p["r"].as_f64().unwrap(),
        guidance: p["guidance"].as_f64().unwrap(),
        inversion_guidance: p["inv_guidance"].as_f64().unwrap(),
        mask_samples: p["mask_samples"].as_u64().unwrap() as usize,
        mask_noise_level: p["noise_level"].as_f64().unwrap(),
        mask_threshold: p["threshold"].as_f64().unwrap(),
        alignment: p["alignment"].as_str().unwrap().parse::<Alignment>().unwrap(),
        seed: 0,
        rng: Default::default(),
        mask_batch_size: 4,
    }
}

fn check_case(name: &str) {
    let dir = fixtures().join("pipeline");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    let model = load_tiny(json["model"].as_str().unwrap());
    let params = params_of(&json);
    let expected = load_fixture(&dir.join(format!("{name}.safetensors")));
    let pipeline = DiffEdit::new(&model, params.clone()).unwrap();

    let timesteps: Vec<i64> = expected["timesteps"].to_vec1().unwrap();
    assert_eq!(pipeline.timesteps(), timesteps.as_slice(), "{name}: timesteps");

    let img = load_rgb(&dir.join(format!("{name}_in.png"))).unwrap();
    let image = image_to_tensor(&img).unwrap();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let noise = Noise::from_file(
        &dir.join(format!("{name}_noise.safetensors")),
        pipeline.latent_shape(w, h),
        params.mask_samples,
    )
    .unwrap();
    let source = json["params"]["source"].as_str().unwrap();
    let target = json["params"]["target"].as_str().unwrap();
    let out = pipeline.edit(&image, source, target, &noise, &Silent).unwrap();

    let mask_t: Vec<i64> = expected["mask_t"].to_vec1().unwrap();
    assert_eq!(out.mask.timestep, mask_t[0], "{name}: mask timestep");
    let s = params.start_step();
    let k = params.inversion_steps();
    let evals = 2 * params.mask_samples + k * if params.inversion_guidance > 1.0 { 2 } else { 1 } + 2 * s;
    assert_eq!(out.unet_evaluations, evals, "{name}: UNet evaluations");

    let ours = trace_tensors(&out).unwrap();
    let mut worst = 0f64;
    for key in
        ["emb_target", "emb_reference", "emb_uncond", "latents", "mask_norm", "inv_latents", "dec_latents", "decoded"]
    {
        let (a, b) = (&ours[key], &expected[key]);
        assert_eq!(a.dims(), b.dims(), "{name}: {key} shape");
        let err = rel_l2(a, b);
        eprintln!("{name}: {key:14} rel_l2 {err:.2e}");
        assert!(err <= 1e-3, "{name}: {key} relative L2 {err:.3e} > 1e-3");
        worst = worst.max(err);
    }
    let differing = mask_mismatches(&ours["mask"], &expected["mask"]);
    let total = expected["mask"].elem_count();
    eprintln!("{name}: worst rel_l2 {worst:.2e}, mask mismatches {differing}/{total}");
    assert!(differing as f64 <= 0.01 * total as f64, "{name}: {differing}/{total} mask pixels differ");
}

fn mask_mismatches(a: &Tensor, b: &Tensor) -> usize {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    a.iter().zip(&b).filter(|(x, y)| x != y).count()
}

#[test]
fn sd1_exact_default_parameters() {
    check_case("sd1_exact_default");
}

#[test]
fn sd1_notebook_default_parameters() {
    check_case("sd1_notebook_default");
}

#[test]
fn sd1_exact_non_square_other_parameters() {
    check_case("sd1_exact_96x64");
}

#[test]
fn sd2_notebook_portrait_full_ratio_cfg_inversion() {
    check_case("sd2_notebook_64x96");
}

#[test]
fn sd2_exact_ratio_058() {
    check_case("sd2_exact_r058");
}
