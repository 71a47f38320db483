//! The edit engine reuses what it computed, and only that: UNet evaluations counted per edit
//! (N mask samples, K inversion steps, S decoding steps), and every result byte-identical to the
//! same edit on a fresh engine.

mod common;

use candle_core::{DType, Device};
use common::tiny_model;
use diffedit::diffedit::engine::{Engine, PictureEdit};
use diffedit::diffedit::{EditParams, Silent};
use diffedit::image_io::load_rgb;
use diffedit::models::hub::Fetcher;
use diffedit::models::loading::{ModelSpec, StableDiffusion};
use image::RgbImage;

fn new_engine(name: &str) -> Engine {
    let spec = ModelSpec { model: Some(tiny_model(name).display().to_string()), ..Default::default() };
    let fetcher = Fetcher::from_env().with_offline(true).with_progress(false);
    let model = StableDiffusion::load(&spec, &fetcher, &Device::Cpu, DType::F32).expect("tiny model loads");
    Engine::new(model, 256).unwrap()
}

fn picture() -> RgbImage {
    load_rgb(&common::fixtures().join("pipeline").join("sd1_exact_96x64_in.png")).unwrap()
}

/// steps 10, ratio 0.8: S = 8 decoding steps, K = 7 inversion steps (exact); N = 4 mask samples.
fn params() -> EditParams {
    EditParams { steps: 10, mask_samples: 4, ..Default::default() }
}

const N: usize = 4;
const S: usize = 8;
const K: usize = 7;

fn edit(target: &str, params: EditParams) -> PictureEdit {
    PictureEdit { size: Some((32, 32)), ..PictureEdit::new("a bowl of fruit", target, params) }
}

/// The same edit on an engine that has never computed anything.
fn fresh(name: &str, picture: &RgbImage, e: &PictureEdit) -> RgbImage {
    let engine = new_engine(name);
    let r = engine.edit_picture(picture, e, &Silent).unwrap();
    let ev = r.output.evaluations;
    let expected = (2 * e.params.mask_samples, e.params.inversion_steps(), 2 * e.params.start_step());
    assert_eq!((ev.mask, ev.inversion, ev.decoding), expected, "a fresh engine computes every stage");
    r.picture
}

#[test]
fn second_targets_thresholds_guidance_and_ratios_cost_only_what_they_change() {
    let name = "tiny-sd";
    let engine = new_engine(name);
    let pic = picture();

    let first = edit("a basket of fruit", params());
    let r = engine.edit_picture(&pic, &first, &Silent).unwrap();
    let ev = r.output.evaluations;
    assert_eq!((ev.mask, ev.inversion, ev.decoding), (2 * N, K, 2 * S), "first edit computes everything");
    assert_eq!(r.output.unet_evaluations, 2 * N + K + 2 * S);
    assert_eq!(r.picture, fresh(name, &pic, &first));

    // The same edit again: everything from the cache.
    let again = engine.edit_picture(&pic, &first, &Silent).unwrap();
    assert_eq!(again.output.unet_evaluations, 0);
    assert_eq!(again.picture, r.picture);

    // A second target: only its own half of the mask (N) and its decoding (2S); no inversion.
    let second = edit("a plate of bread", params());
    let r2 = engine.edit_picture(&pic, &second, &Silent).unwrap();
    let ev = r2.output.evaluations;
    assert_eq!((ev.mask, ev.inversion, ev.decoding), (N, 0, 2 * S));
    assert_eq!(r2.picture, fresh(name, &pic, &second), "a reused edit gives the bytes of a fresh one");

    // A new threshold: the mask step alone costs nothing.
    let prepared = engine.prepare_picture(pic.clone(), Some((32, 32))).unwrap();
    let thresholds = edit("a plate of bread", EditParams { mask_threshold: 0.2, ..params() });
    let m = engine.mask_picture(&prepared, &thresholds, &Silent).unwrap();
    assert_eq!(m.unet_evaluations, 0);
    let m_fresh = new_engine(name).mask_picture(&prepared, &thresholds, &Silent).unwrap();
    assert_eq!(m_fresh.unet_evaluations, 2 * N);
    assert_eq!(m.mask.dims(), [1, 1, 16, 16], "the latent grid of 32x32 pixels");
    assert_eq!(
        m.mask.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        m_fresh.mask.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert!(m.coverage > r2.coverage, "a lower threshold covers more ({} vs {})", m.coverage, r2.coverage);
    // ... and the whole edit with it only decodes again.
    let r3 = engine.edit_picture(&pic, &thresholds, &Silent).unwrap();
    assert_eq!(r3.output.unet_evaluations, 2 * S);
    assert_eq!(r3.picture, fresh(name, &pic, &thresholds));

    // A new guidance: the decoding only.
    let guided = edit("a plate of bread", EditParams { guidance: 3.0, ..params() });
    let r4 = engine.edit_picture(&pic, &guided, &Silent).unwrap();
    assert_eq!(r4.output.unet_evaluations, 2 * S);
    assert_eq!(r4.picture, fresh(name, &pic, &guided));

    // A smaller encode ratio is served by the deeper inversion (S' = 5, K' = 4).
    let shallow = edit("a plate of bread", EditParams { encode_ratio: 0.5, ..params() });
    let r5 = engine.edit_picture(&pic, &shallow, &Silent).unwrap();
    assert_eq!((r5.output.evaluations.inversion, r5.output.evaluations.decoding), (0, 2 * 5));
    assert_eq!(r5.output.inverted.len(), 4 + 1, "the trace keeps the inversion's own depth");
    assert_eq!(r5.picture, fresh(name, &pic, &shallow));
    // A deeper one continues it (S'' = 10, K'' = 9: two more steps).
    let deep = edit("a plate of bread", EditParams { encode_ratio: 1.0, ..params() });
    let r6 = engine.edit_picture(&pic, &deep, &Silent).unwrap();
    assert_eq!((r6.output.evaluations.inversion, r6.output.evaluations.decoding), (K + 2 - K, 2 * 10));
    assert_eq!(r6.picture, fresh(name, &pic, &deep));

    // A different seed is a different picture latent: nothing of the mask or inversion is reused.
    let seeded = edit("a plate of bread", EditParams { seed: 7, ..params() });
    let r7 = engine.edit_picture(&pic, &seeded, &Silent).unwrap();
    assert_eq!(r7.output.unet_evaluations, 2 * N + K + 2 * S);
    assert_ne!(r7.picture, r2.picture);

    let stats = engine.cache_stats();
    assert!(stats.hits > 0 && stats.bytes <= stats.capacity_bytes, "{stats:?}");
}

#[test]
fn a_small_cache_evicts_but_never_changes_a_result() {
    // 40 kB holds a few of the 32x32 stage results, not all of them: edits alternate between two
    // targets, evicting each other's results, and must still give fresh bytes.
    let spec = ModelSpec { model: Some(tiny_model("tiny-sd2").display().to_string()), ..Default::default() };
    let fetcher = Fetcher::from_env().with_offline(true).with_progress(false);
    let model = StableDiffusion::load(&spec, &fetcher, &Device::Cpu, DType::F32).unwrap();
    let engine = Engine::with_cache_bytes(model, 40_000).unwrap();
    let pic = picture();
    let a = edit("a basket of fruit", params());
    let b = edit("a plate of bread", params());
    let mut outputs = Vec::new();
    for e in [&a, &b, &a, &b] {
        outputs.push(engine.edit_picture(&pic, e, &Silent).unwrap().picture);
    }
    assert_eq!(outputs[0], outputs[2]);
    assert_eq!(outputs[1], outputs[3]);
    assert_eq!(outputs[0], fresh("tiny-sd2", &pic, &a));
    let stats = engine.cache_stats();
    assert!(stats.evictions > 0 && stats.bytes <= 40_000, "{stats:?}");
}
