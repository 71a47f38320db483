//! The experiment commands (`generate`, `mask`, `invert`, `ablate`, `compare`, `report`, and
//! `edit --save-steps/--mask-blur`) run on the committed tiny model: the files they write, their
//! pixel sizes and tile counts read back from the PNGs, the UNet evaluation counts that show no
//! work is repeated, the coverage printed on each threshold tile, and img2img being DiffEdit
//! with a mask of all ones.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use candle_core::{DType, Device, Tensor};
use common::{fixtures, tiny_model};
use diffedit::diffedit::experiments::{self, Ledger};
use diffedit::diffedit::{DiffEdit, EditParams, Noise, Silent};
use diffedit::models::hub::Fetcher;
use diffedit::models::loading::{ModelSpec, StableDiffusion};
use image::RgbImage;
use serde_json::Value;

/// The fixture picture is 96x64; the tiny model's native long side is 64, so by default it is
/// processed at 64x42 (latent 32x21) and figures show it enlarged 4x.
const TILE: (u32, u32) = (256, 168);
/// Most tests process at 32x32 (latent 16x16, quicker), shown enlarged 8x.
const SMALL: &str = "32x32";
const SMALL_TILE: (u32, u32) = (256, 256);
const MARGIN: u32 = 16;

fn tiny() -> String {
    tiny_model("tiny-sd").display().to_string()
}

fn input() -> String {
    fixtures().join("pipeline").join("sd1_exact_96x64_in.png").display().to_string()
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_diffedit")).env("HF_HUB_OFFLINE", "1").args(args).output().expect("diffedit runs")
}

/// Runs a command that must succeed with `--json -q` and returns its summary.
fn run_json(args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--json", "-q"]);
    let o = run(&all);
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("--json prints one JSON object")
}

fn edit_args<'a>(command: &'a str, model: &'a str, image: &'a str) -> Vec<&'a str> {
    vec![command, "--model", model, "--image", image, "--source", "a bowl of fruit", "--target", "a basket of fruit"]
}

fn evals(summary: &Value, stage: &str) -> u64 {
    summary["unet_evaluations_by_stage"][stage].as_u64().unwrap_or(0)
}

fn open(path: &Path) -> RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

/// Tiles counted from the pixels: within the rows of a tile's framed picture, runs of columns
/// that are not all background.
fn count_tiles_in_rows(img: &RgbImage, y0: u32, y1: u32) -> usize {
    let bg = image::Rgb([255u8, 255, 255]);
    let mut count = 0;
    let mut inside = false;
    for x in 0..img.width() {
        let blank = (y0..y1).all(|y| *img.get_pixel(x, y) == bg);
        if !blank && !inside {
            count += 1;
        }
        inside = !blank;
    }
    count
}

/// Checks a figure of the summary against its PNG: size, tile rects, tiles counted row by row
/// from the pixels. Returns the figure's JSON.
fn check_figure(summary: &Value, index: usize, expected_tiles: usize) -> Value {
    let fig = summary["figures"][index].clone();
    let path = fig["path"].as_str().unwrap();
    let img = open(Path::new(path));
    assert_eq!(
        (img.width() as u64, img.height() as u64),
        (fig["width"].as_u64().unwrap(), fig["height"].as_u64().unwrap())
    );
    assert_eq!(fig["tiles"].as_u64().unwrap() as usize, expected_tiles, "{path}");
    let rects: Vec<[u32; 4]> = serde_json::from_value(fig["tile_rects"].clone()).unwrap();
    assert_eq!(rects.len(), expected_tiles);
    assert_eq!(fig["titles"].as_array().unwrap().len(), expected_tiles);
    let mut rows: Vec<u32> = rects.iter().map(|r| r[1]).collect();
    rows.dedup();
    let mut counted = 0;
    for y in rows {
        let h = rects.iter().filter(|r| r[1] == y).map(|r| r[3]).max().unwrap();
        // The 1-pixel frame just outside the picture belongs to the tile.
        counted += count_tiles_in_rows(&img, y - 1, y + h + 1);
    }
    assert_eq!(counted, expected_tiles, "tiles counted in the pixels of {path}");
    let last = rects.iter().map(|r| r[1] + r[3]).max().unwrap();
    assert_eq!(img.height(), last + MARGIN, "{path}: bottom margin");
    fig
}

/// A strip of `n` pictures of the processing size: 4x enlarged, margins around and between.
fn strip_width(n: u32) -> u32 {
    n * TILE.0 + (n + 1) * MARGIN
}

fn crop(img: &RgbImage, r: [u32; 4]) -> RgbImage {
    image::imageops::crop_imm(img, r[0], r[1], r[2], r[3]).to_image()
}

#[test]
fn mask_runs_the_unet_once_for_every_threshold_and_titles_show_each_tiles_coverage() {
    let dir = tempfile::tempdir().unwrap();
    let (model, image) = (tiny(), input());
    let out = dir.path().join("mask.png").display().to_string();
    let strip = dir.path().join("thr.png").display().to_string();
    let mut args = edit_args("mask", &model, &image);
    args.extend(["--steps", "4", "--mask-samples", "3", "--out", &out, "--thresholds-out", &strip]);
    let s = run_json(&args);
    // 2 prompts x 3 samples, once for the figure and all five thresholds; nothing else.
    assert_eq!(evals(&s, "mask"), 6);
    assert_eq!(s["unet_evaluations"], 6);
    assert_eq!(s["files"].as_array().unwrap().len(), 2);

    let fig = check_figure(&s, 0, 4);
    let rects: Vec<[u32; 4]> = serde_json::from_value(fig["tile_rects"].clone()).unwrap();
    assert_eq!([rects[0][2], rects[0][3]], [TILE.0, TILE.1]);
    assert!(rects[1][2] > TILE.0, "the heat map tile carries its colour bar");
    assert_eq!(rects[1][3], TILE.1);
    let img = open(Path::new(&out));
    // The colour bar's ramp: magma's brightest at the top, darkest at the bottom.
    let bar_x = rects[1][0] + TILE.0 + 8 + 1 + 8;
    assert_eq!(img.get_pixel(bar_x, rects[1][1] + 1).0, diffedit::viz::colormaps::MAGMA[255]);
    assert_eq!(img.get_pixel(bar_x, rects[1][1] + TILE.1 - 2).0, diffedit::viz::colormaps::MAGMA[0]);

    let fig = check_figure(&s, 1, 5);
    assert_eq!(fig["width"].as_u64().unwrap() as u32, strip_width(5));
    let strip_img = open(Path::new(&strip));
    let rects: Vec<[u32; 4]> = serde_json::from_value(fig["tile_rects"].clone()).unwrap();
    let titles: Vec<String> = serde_json::from_value(fig["titles"].clone()).unwrap();
    let rows = s["thresholds"].as_array().unwrap();
    let thresholds: Vec<f64> = rows.iter().map(|r| r["threshold"].as_f64().unwrap()).collect();
    assert_eq!(thresholds, vec![0.3, 0.4, 0.5, 0.6, 0.7]);
    let mut previous = 1.0;
    for ((rect, title), row) in rects.iter().zip(&titles).zip(rows) {
        let tile = crop(&strip_img, *rect);
        assert!(tile.pixels().all(|p| p.0 == [0, 0, 0] || p.0 == [255, 255, 255]), "binary tile");
        let white = tile.pixels().filter(|p| p.0[0] == 255).count() as f64 / (rect[2] * rect[3]) as f64;
        let coverage = row["coverage"].as_f64().unwrap();
        assert!((white - coverage).abs() < 1e-12, "tile mean {white} vs coverage {coverage}");
        let shown = format!("{:.1}%", white * 100.0);
        assert!(title.ends_with(&shown), "title {title:?} should show {shown}");
        assert!(coverage <= previous);
        previous = coverage;
    }
    // The figure's mask is the 0.5 tile.
    let at_half = rows[2]["coverage"].as_f64().unwrap();
    assert!((s["mask_coverage"].as_f64().unwrap() - at_half).abs() < 1e-12);
}

#[test]
fn ablation_inverts_once_for_the_largest_ratio_and_decodes_once_per_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let (model, image) = (tiny(), input());
    let out = dir.path().join("ablation.png").display().to_string();
    // (alignment, ratios, S = int(r*4) per ratio, inversion steps for the largest S)
    let runs = [("exact", "0.25,0.5,1.0", vec![1u64, 2, 4], 3u64), ("notebook", "0.25,0.5", vec![1, 2], 2)];
    for (alignment, ratios, expected_steps, inversion) in runs {
        let mut args = edit_args("ablate", &model, &image);
        args.extend(["--steps", "4", "--mask-samples", "1", "--ratios", ratios, "--size", SMALL]);
        args.extend(["--alignment", alignment, "--out", &out]);
        let s = run_json(&args);
        let decode_steps: Vec<u64> =
            s["ratios"].as_array().unwrap().iter().map(|r| r["decode_steps"].as_u64().unwrap()).collect();
        assert_eq!(decode_steps, expected_steps);
        // One mask (2 prompts x 1 sample), one inversion of S_max (S_max - 1 when exact), two
        // evaluations per decoding step of every ratio.
        let decoding: u64 = 2 * expected_steps.iter().sum::<u64>();
        assert_eq!(evals(&s, "mask"), 2);
        assert_eq!(evals(&s, "inversion"), inversion);
        assert_eq!(evals(&s, "decoding"), decoding);
        assert_eq!(s["unet_evaluations"], 2 + inversion + decoding);
        assert_eq!(s["inversion_steps"], inversion);
        let stages: Vec<&str> =
            s["unet_evaluations_by_stage"].as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert!(
            stages.iter().all(|k| ["encode", "mask", "inversion", "decoding", "vae_decode"].contains(k)),
            "{stages:?}"
        );
        let n = expected_steps.len();
        let fig = check_figure(&s, 0, 1 + n);
        assert_eq!(fig["width"].as_u64().unwrap() as u32, strip_width(1 + n as u32));
        assert_eq!(fig["tile_rects"][0][3], SMALL_TILE.1);
        assert_eq!(fig["titles"][1], "r = 0.25 · 1 steps");
        assert_eq!(fig["titles"][2], "r = 0.5 · 2 steps");
    }
}

#[test]
fn compare_shows_img2img_beside_diffedit_and_the_soft_mask_beside_the_hard() {
    let dir = tempfile::tempdir().unwrap();
    let (model, image) = (tiny(), input());
    let out = dir.path().join("compare.png").display().to_string();
    let mut args = edit_args("compare", &model, &image);
    args.extend(["--steps", "4", "--mask-samples", "1", "--mask-blur", "1.5", "--size", SMALL, "--out", &out]);
    let s = run_json(&args);
    // S = int(0.8*4) = 3, exact alignment: 2 inversion steps; three guided decodings of 3 steps.
    assert_eq!(evals(&s, "mask"), 2);
    assert_eq!(evals(&s, "inversion"), 2);
    for stage in ["decoding", "img2img", "decoding_soft"] {
        assert_eq!(evals(&s, stage), 6, "{stage}");
    }
    assert_eq!(s["unet_evaluations"], 2 + 2 + 3 * 6);
    let fig = check_figure(&s, 0, 6);
    assert_eq!(fig["width"].as_u64().unwrap() as u32, strip_width(6));
    let titles: Vec<String> = serde_json::from_value(fig["titles"].clone()).unwrap();
    assert!(titles[2].starts_with("soft mask") && titles[3].starts_with("img2img") && titles[5].contains("soft"));
    // The soft mask has gray levels; the hard one has none.
    let img = open(Path::new(&out));
    let rects: Vec<[u32; 4]> = serde_json::from_value(fig["tile_rects"].clone()).unwrap();
    let levels = |r: [u32; 4]| {
        let mut v: Vec<u8> = crop(&img, r).pixels().map(|p| p.0[0]).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    assert_eq!(levels(rects[1]), 2);
    assert!(levels(rects[2]) > 10);

    // Without --mask-blur: source, mask, img2img, DiffEdit.
    let mut args = edit_args("compare", &model, &image);
    args.extend(["--steps", "4", "--mask-samples", "1", "--size", SMALL, "--out", &out]);
    let s = run_json(&args);
    assert_eq!(s["unet_evaluations"], 2 + 2 + 2 * 6);
    check_figure(&s, 0, 4);
}

#[test]
fn img2img_is_diffedit_with_a_mask_of_all_ones() {
    let fetcher = Fetcher::from_env().with_offline(true).with_progress(false);
    let spec = ModelSpec { model: Some(tiny()), ..Default::default() };
    let model = StableDiffusion::load(&spec, &fetcher, &Device::Cpu, DType::F32).unwrap();
    let params = EditParams { steps: 4, mask_samples: 1, ..EditParams::default() };
    let pipeline = DiffEdit::new(&model, params.clone()).unwrap();
    let picture = diffedit::image_io::load_rgb(Path::new(&input())).unwrap();
    let picture = diffedit::image_io::resize(&picture, 32, 32);
    let image = diffedit::image_io::image_to_tensor(&picture).unwrap();
    let latent = pipeline.latent_shape(32, 32);
    let noise = Noise::seeded(0, latent, params.mask_samples).unwrap();
    let mut ledger = Ledger::default();
    let prepared =
        experiments::prepare(&pipeline, &image, "a bowl of fruit", "a basket of fruit", &noise, &mut ledger, &Silent)
            .unwrap();
    let s = params.start_step();
    let extra = experiments::standard_normal(0, experiments::Stream::Img2img, latent).unwrap();
    let naive = experiments::img2img(&pipeline, &prepared.latents, &prepared.embeddings, &extra, s, &Silent).unwrap();

    // DiffEdit's decoding from the same start with a mask of ones: the inverted background is
    // multiplied by zero at every step.
    let mut inverted =
        pipeline.invert(&prepared.latents, &prepared.embeddings, params.inversion_steps(), &Silent).unwrap();
    let start = experiments::img2img_start(&pipeline, &prepared.latents, &extra, s).unwrap();
    let index = diffedit::diffedit::decode::start_index(params.alignment, s);
    inverted[index] = start;
    let ones = Tensor::ones((1, 1, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let masked = pipeline.decode(&inverted, Some(&ones), s, &prepared.embeddings, &Silent).unwrap();
    assert_eq!(naive.len(), s + 1);
    assert_eq!(masked.len(), s + 1);
    for (a, b) in naive.iter().zip(&masked) {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
    }
    // And it is not DiffEdit with the real mask, which keeps the background.
    let real = pipeline.decode(&inverted, Some(&prepared.mask.mask), s, &prepared.embeddings, &Silent).unwrap();
    let diff = (naive.last().unwrap() - real.last().unwrap()).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() > 0.0);
}

#[test]
fn invert_check_writes_the_reconstruction_with_its_psnr_and_a_strip_of_latents() {
    let dir = tempfile::tempdir().unwrap();
    let (model, image) = (tiny(), input());
    let out = dir.path().join("rec.png").display().to_string();
    let strip = dir.path().join("inv.png").display().to_string();
    let check = ["--steps", "4", "--check", "--size", SMALL, "--out", &out, "--strip", &strip];
    let s = run_json(
        &[&["invert", "--model", &model, "--image", &image, "--prompt", "a bowl of fruit"][..], &check].concat(),
    );
    assert_eq!(evals(&s, "inversion"), 4);
    assert_eq!(evals(&s, "reconstruction"), 4, "plain decoding at guidance 1: one evaluation per step");
    assert_eq!(s["unet_evaluations"], 8);
    assert_eq!(s["strip_indices"], serde_json::json!([0, 1, 2, 3, 4]));
    let fig = check_figure(&s, 0, 5);
    assert_eq!(fig["width"].as_u64().unwrap() as u32, strip_width(5));
    assert_eq!(fig["titles"][4], "step 4/4");
    let fig = check_figure(&s, 1, 2);
    // The PSNR in the title is that of the two pictures shown (each 4x enlarged).
    let img = open(Path::new(&out));
    let rects: Vec<[u32; 4]> = serde_json::from_value(fig["tile_rects"].clone()).unwrap();
    let shrink = |r: [u32; 4]| {
        let t = crop(&img, r);
        RgbImage::from_fn(32, 32, |x, y| *t.get_pixel(8 * x, 8 * y))
    };
    let db = experiments::psnr(&shrink(rects[0]), &shrink(rects[1])).unwrap();
    let reported = s["check"]["psnr_db"].as_f64().unwrap();
    assert!((db - reported).abs() < 1e-9, "{db} vs {reported}");
    assert_eq!(fig["titles"][1].as_str().unwrap(), format!("reconstruction · PSNR {db:.2} dB"));

    // Without --check: only the strip; --out alone is refused.
    let strip_only = ["--steps", "3", "--size", SMALL, "--strip", &strip];
    let s =
        run_json(&[&["invert", "--model", &model, "--image", &image, "--prompt", "a bowl"][..], &strip_only].concat());
    assert_eq!(s["unet_evaluations"], 3);
    assert_eq!(s["files"].as_array().unwrap().len(), 1);
    check_figure(&s, 0, 4);
}

#[test]
fn generate_writes_a_picture_of_the_asked_size() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny();
    let generate = |seed: &str, out: &Path| {
        let out = out.to_str().unwrap();
        run_json(&[
            "generate", "--model", &model, "--prompt", "a horse", "--steps", "2", "--size", "48x32", "--seed", seed,
            "--out", out,
        ])
    };
    let (first, again) = (dir.path().join("gen.png"), dir.path().join("again.png"));
    let s = generate("7", &first);
    assert_eq!(s["unet_evaluations"], 2 * 2);
    assert_eq!(s["files"][0], first.display().to_string());
    assert_eq!(open(&first).dimensions(), (48, 32));
    // Same seed, same picture; another seed, another picture.
    generate("7", &again);
    assert_eq!(open(&first), open(&again));
    generate("8", &again);
    assert_ne!(open(&first), open(&again));
}

#[test]
fn report_is_one_panel_of_titled_tiles() {
    let dir = tempfile::tempdir().unwrap();
    let (model, image) = (tiny(), input());
    let out = dir.path().join("report.png").display().to_string();
    let mut args = edit_args("report", &model, &image);
    args.extend(["--steps", "4", "--mask-samples", "1", "--img2img", "--size", SMALL, "--out", &out]);
    let s = run_json(&args);
    assert_eq!(s["unet_evaluations"], 2 + 2 + 2 * 3 + 2 * 3);
    let fig = check_figure(&s, 0, 6);
    let titles: Vec<String> = serde_json::from_value(fig["titles"].clone()).unwrap();
    assert_eq!(titles[0], "source");
    assert_eq!(titles[1], "normalised difference");
    assert!(titles[2].starts_with("mask"));
    assert_eq!(titles[3], "overlay");
    assert!(titles[4].starts_with("DiffEdit"));
    assert!(titles[5].starts_with("img2img"));
    let rects: Vec<[u32; 4]> = serde_json::from_value(fig["tile_rects"].clone()).unwrap();
    assert_eq!(rects[0][1], rects[2][1], "three tiles a row");
    assert!(rects[3][1] > rects[0][1]);

    let mut args = edit_args("report", &model, &image);
    args.extend(["--steps", "4", "--mask-samples", "1", "--size", SMALL, "--out", &out]);
    let s = run_json(&args);
    assert_eq!(s["unet_evaluations"], 2 + 2 + 2 * 3);
    check_figure(&s, 0, 5);
}

#[test]
fn edit_saves_decoding_steps_and_decodes_with_a_blurred_mask() {
    let dir = tempfile::tempdir().unwrap();
    let (model, image) = (tiny(), input());
    let p = |n: &str| dir.path().join(n).display().to_string();
    let (out, steps, mask) = (p("out.png"), p("steps.png"), p("mask.png"));
    let mut args = edit_args("edit", &model, &image);
    // S = 11 decoding steps: the strip shows steps 10 and 11.
    args.extend(["--steps", "11", "--encode-ratio", "1.0", "--mask-samples", "1", "--mask-blur", "1.0"]);
    args.extend(["--size", SMALL, "--out", &out, "--save-steps", &steps, "--save-mask", &mask]);
    let s = run_json(&args);
    assert_eq!(s["unet_evaluations"], 2 + 10 + 2 * 11);
    assert_eq!(open(Path::new(&out)).dimensions(), (96, 64));
    let strip = open(Path::new(&steps));
    assert_eq!(strip.width(), strip_width(2));
    let y = strip.height() - MARGIN - SMALL_TILE.1;
    assert_eq!(count_tiles_in_rows(&strip, y - 1, y + SMALL_TILE.1 + 1), 2);
    let mut levels: Vec<u8> = open(Path::new(&mask)).pixels().map(|p| p.0[0]).collect();
    levels.sort_unstable();
    levels.dedup();
    assert!(levels.len() > 10, "the saved mask is the soft one");
}

/// Every command shares `edit`'s bad-input behaviour: message, exit status 1, no panic, nothing
/// written.
#[test]
fn bad_input_fails_early_with_a_message_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (model, image) = (tiny(), input());
    let out = dir.path().join("x.png").display().to_string();
    let missing = dir.path().join("no/such/dir/x.png").display().to_string();
    let with = |command: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = edit_args(command, &model, &image).iter().map(|s| s.to_string()).collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with("mask", &["--source", " ", "--out", &out]), "--source prompt is empty"),
        (
            with("mask", &["--thresholds", "0.3,x", "--out", &out]),
            "--thresholds must be a comma-separated list of numbers",
        ),
        (with("mask", &["--thresholds", "0.3,1.2", "--out", &out]), "--thresholds must be in [0, 1], got 1.2"),
        (with("mask", &["--out", &missing]), "does not exist"),
        (with("mask", &["--steps", "0", "--out", &out]), "--steps must be at least 1, got 0"),
        (with("ablate", &["--ratios", "0.5,1.5", "--out", &out]), "--ratios must be in (0, 1], got 1.5"),
        (with("ablate", &["--ratios", "0.01", "--steps", "10", "--out", &out]), "0 decoding steps"),
        (with("ablate", &["--target", "", "--out", &out]), "--target prompt is empty"),
        (with("compare", &["--mask-blur", "-1", "--out", &out]), "--mask-blur must be a finite number >= 0, got -1"),
        (with("compare", &["--size", "65x64", "--out", &out]), "multiples of 2"),
        (with("report", &["--out", &missing]), "does not exist"),
        (with("report", &["--noise", "/no/such/noise.safetensors", "--out", &out]), "noise file not found"),
        (with("edit", &["--mask-blur", "nan", "--out", &out]), "--mask-blur must be a finite number >= 0"),
        (with("edit", &["--save-steps", &missing, "--out", &out]), "--save-steps"),
        (
            ["invert", "--model", &model, "--image", &image, "--prompt", "a", "--out", &out]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            "--out is the reconstruction figure of --check: add --check",
        ),
        (
            ["invert", "--model", &model, "--image", &image, "--prompt", "", "--check"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            "--prompt is empty",
        ),
        (
            ["generate", "--model", &model, "--prompt", "a", "--guidance", "inf", "--out", &out]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            "--guidance must be a finite number",
        ),
        (
            ["generate", "--model", &model, "--prompt", "a", "--size", "2x2", "--out", &out]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            "too small for this model",
        ),
        (
            ["mask", "--model", &model, "--image", "/no/such.png", "--source", "a", "--target", "b"]
                .iter()
                .chain(&["--out", &out, "--thresholds-out", &out])
                .map(|s| s.to_string())
                .collect(),
            "/no/such.png",
        ),
    ];
    for (args, message) in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_diffedit"))
            .env("HF_HUB_OFFLINE", "1")
            .args(&args)
            .arg("-q")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: stderr {err:?} does not contain {message:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "{args:?} left a file behind");
    }
}
