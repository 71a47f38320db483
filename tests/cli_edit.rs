//! `diffedit edit` as a user runs it, on the committed tiny models: the files it writes, their
//! sizes, its trace against the PyTorch reference, and every bad input of issue 3 (message,
//! non-zero exit, nothing half-written).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{fixtures, load_fixture, rel_l2, tiny_model};

fn diffedit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffedit"));
    c.env("HF_HUB_OFFLINE", "1");
    c
}

fn run(args: &[&str]) -> Output {
    diffedit().args(args).output().expect("diffedit runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn tiny() -> String {
    tiny_model("tiny-sd").display().to_string()
}

fn fixture(name: &str) -> String {
    fixtures().join("pipeline").join(name).display().to_string()
}

/// Files in `dir`, to check that a failed run left nothing behind.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    v.sort();
    v
}

/// A quick edit's arguments (2 steps, 1 mask sample) with `image` and outputs in `dir`.
fn quick(dir: &Path, image: &str) -> Vec<String> {
    let out = dir.join("out.png").display().to_string();
    ["edit", "--model", &tiny(), "--image", image, "--source", "a horse", "--target", "a zebra", "--out", &out]
        .iter()
        .map(|s| s.to_string())
        .chain(["--steps", "2", "--mask-samples", "1", "-q"].iter().map(|s| s.to_string()))
        .collect()
}

fn expect_failure(args: &[String], dir: &Path, message: &str) {
    let before = listing(dir);
    let o = diffedit().args(args).output().unwrap();
    assert!(!o.status.success(), "expected failure for {args:?}");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(message), "stderr {err:?} does not contain {message:?}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert_eq!(listing(dir), before, "a failed run must leave no file behind");
}

#[test]
fn edit_writes_every_file_at_input_size_and_trace_matches_reference() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).display().to_string();
    let o = run(&[
        "edit",
        "--model",
        &tiny(),
        "--image",
        &fixture("sd1_exact_96x64_in.png"),
        "--source",
        "a bowl of fruit on a table",
        "--target",
        "a basket of fruit on a table",
        "--steps",
        "12",
        "--encode-ratio",
        "0.6",
        "--guidance",
        "5.0",
        "--mask-samples",
        "4",
        "--mask-threshold",
        "0.4",
        "--mask-noise-level",
        "0.7",
        "--alignment",
        "exact",
        "--noise",
        &fixture("sd1_exact_96x64_noise.safetensors"),
        "--size",
        "96x64",
        "--out",
        &p("out.png"),
        "--save-mask",
        &p("mask.png"),
        "--save-heatmap",
        &p("heat.png"),
        "--save-overlay",
        &p("overlay.png"),
        "--trace",
        &p("trace.safetensors"),
        "--json",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["out.png", "mask.png", "heat.png", "overlay.png"] {
        let img = image::open(dir.path().join(f)).unwrap();
        assert_eq!((img.width(), img.height()), (96, 64), "{f}");
        #[cfg(unix)]
        {
            // Ordinary files (0666 less the umask), not the temp file's 0600.
            use std::os::unix::fs::PermissionsExt;
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let umask = status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
                .unwrap_or(0o022);
            let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o666 & !umask, "{f}: mode {mode:o}");
        }
    }
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json prints one JSON object");
    assert_eq!(summary["unet_evaluations"], 2 * 4 + 6 + 2 * 7);
    assert_eq!(summary["files"].as_array().unwrap().len(), 5);
    let coverage = summary["mask_coverage"].as_f64().unwrap();
    let mask = image::open(dir.path().join("mask.png")).unwrap().to_luma8();
    let white = mask.pixels().filter(|p| p.0[0] == 255).count() as f64 / mask.len() as f64;
    assert!((coverage - white).abs() < 1e-9, "coverage {coverage} vs mask image {white}");

    let ours = load_fixture(&dir.path().join("trace.safetensors"));
    let expected = load_fixture(&fixtures().join("pipeline/sd1_exact_96x64.safetensors"));
    for key in
        ["emb_target", "emb_reference", "emb_uncond", "latents", "mask_norm", "inv_latents", "dec_latents", "decoded"]
    {
        assert_eq!(ours[key].dims(), expected[key].dims(), "{key}");
        let err = rel_l2(&ours[key], &expected[key]);
        assert!(err <= 1e-3, "{key}: rel_l2 {err:.3e}");
    }
    // The output picture is the decoded tensor, as the reference writes it.
    let ref_out = image::open(fixtures().join("pipeline/sd1_exact_96x64_out.png")).unwrap().to_rgb8();
    let our_out = image::open(dir.path().join("out.png")).unwrap().to_rgb8();
    let max_diff = ref_out
        .pixels()
        .zip(our_out.pixels())
        .flat_map(|(a, b)| (0..3).map(move |c| (a.0[c] as i32 - b.0[c] as i32).abs()))
        .max()
        .unwrap();
    assert!(max_diff <= 2, "output PNG differs from the reference's by up to {max_diff} levels");
}

#[test]
fn any_input_size_is_processed_at_model_size_and_written_back() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("odd.png");
    image::RgbImage::from_fn(50, 70, |x, y| image::Rgb([(x * 5) as u8, (y * 3) as u8, 128])).save(&input).unwrap();
    let mut args = quick(dir.path(), input.to_str().unwrap());
    let mask = dir.path().join("mask.png").display().to_string();
    args.extend(["--save-mask".to_string(), mask.clone(), "--json".to_string()]);
    let o = diffedit().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // tiny-sd: native 64 px, VAE factor 2 -> long side 64, short side 50*64/70 = 45.7 -> 46
    assert_eq!(summary["processing_size"], serde_json::json!([46, 64]));
    for f in ["out.png", "mask.png"] {
        let img = image::open(dir.path().join(f)).unwrap();
        assert_eq!((img.width(), img.height()), (50, 70), "{f}");
    }
}

#[test]
fn keep_background_pastes_the_edit_into_the_input_at_its_full_size() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 256x128 is processed at 64x32 (tiny-sd: native 64 px, VAE factor 2): a latent cell is 8
    // pixels of the output.
    let input_path = d.join("wide.png");
    let input =
        image::RgbImage::from_fn(256, 128, |x, y| image::Rgb([(x % 256) as u8, (y * 2) as u8, ((x * y) % 251) as u8]));
    input.save(&input_path).unwrap();
    let mut plain = quick(d, input_path.to_str().unwrap());
    // Threshold 0.55: with seed 0's (torch) draws the mask leaves both pixels far from it (720)
    // and whole masked cells (848); at 0.5 it left too few far pixels.
    plain.extend(["--mask-threshold", "0.55", "--save-mask"].iter().map(|s| s.to_string()));
    plain.push(d.join("mask.png").display().to_string());
    let o = diffedit().args(&plain).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::rename(d.join("out.png"), d.join("plain.png")).unwrap();
    let mut pasted = plain.clone();
    pasted.push("--keep-background".to_string());
    let o = diffedit().args(&pasted).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let plain = image::open(d.join("plain.png")).unwrap().to_rgb8();
    let out = image::open(d.join("out.png")).unwrap().to_rgb8();
    let mask = image::open(d.join("mask.png")).unwrap().to_luma8();
    assert_eq!(out.dimensions(), (256, 128));
    // Masked pixels within a square of radius r around (x, y), from a summed-area table.
    let (w, h) = (256i64, 128i64);
    let mut sat = vec![0i64; ((w + 1) * (h + 1)) as usize];
    for y in 0..h {
        for x in 0..w {
            let m = (mask.get_pixel(x as u32, y as u32).0[0] > 127) as i64;
            let i = ((y + 1) * (w + 1) + x + 1) as usize;
            sat[i] = m + sat[i - 1] + sat[i - (w + 1) as usize] - sat[i - (w + 2) as usize];
        }
    }
    let masked_near = |x: i64, y: i64, r: i64| {
        let (x0, y0, x1, y1) = ((x - r).max(0), (y - r).max(0), (x + r + 1).min(w), (y + r + 1).min(h));
        let at = |x: i64, y: i64| sat[(y * (w + 1) + x) as usize];
        at(x1, y1) - at(x0, y1) - at(x1, y0) + at(x0, y0)
    };
    let (mut kept, mut edited) = (0, 0);
    for y in 0..h {
        for x in 0..w {
            let p = (x as u32, y as u32);
            // More than three cells (24 px) from the mask: the input's own pixel.
            if masked_near(x, y, 28) == 0 {
                assert_eq!(out.get_pixel(p.0, p.1), input.get_pixel(p.0, p.1), "{p:?} is far from the mask");
                kept += 1;
            }
            // The middle of a masked cell, where alpha is 1 between all the pixels it is
            // interpolated from: the edit, as written without the flag.
            let (cx, cy) = (x / 8 * 8 + 4, y / 8 * 8 + 4);
            if (2..6).contains(&(x % 8)) && (2..6).contains(&(y % 8)) && masked_near(cx, cy, 0) == 1 {
                assert_eq!(out.get_pixel(p.0, p.1), plain.get_pixel(p.0, p.1), "{p:?} is inside the mask");
                edited += 1;
            }
        }
    }
    eprintln!("{kept} pixels kept, {edited} edited");
    assert!(kept > 500 && edited > 500, "the mask must leave both kinds of pixels: {kept} kept, {edited} edited");
    assert_ne!(out, plain, "outside the mask the input's pixels replace the VAE's reconstruction");
}

fn write_png(
    path: &Path,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
    palette: Option<Vec<u8>>,
    (w, h): (u32, u32),
) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    if let Some(p) = palette {
        enc.set_palette(p);
    }
    enc.write_header().unwrap().write_image_data(data).unwrap();
}

#[test]
fn grayscale_rgba_palette_and_16_bit_images_are_converted() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (32u32, 24u32);
    let n = (w * h) as usize;
    // (file, colour type, bit depth, pixel bytes, palette)
    type Case = (&'static str, png::ColorType, png::BitDepth, Vec<u8>, Option<Vec<u8>>);
    let cases: Vec<Case> = vec![
        ("gray.png", png::ColorType::Grayscale, png::BitDepth::Eight, (0..n).map(|i| (i % 256) as u8).collect(), None),
        ("rgba.png", png::ColorType::Rgba, png::BitDepth::Eight, (0..4 * n).map(|i| (i % 251) as u8).collect(), None),
        (
            "palette.png",
            png::ColorType::Indexed,
            png::BitDepth::Eight,
            (0..n).map(|i| (i % 3) as u8).collect(),
            Some(vec![255, 0, 0, 0, 255, 0, 0, 0, 255]),
        ),
        ("rgb16.png", png::ColorType::Rgb, png::BitDepth::Sixteen, (0..6 * n).map(|i| (i % 256) as u8).collect(), None),
    ];
    for (name, color, depth, data, palette) in cases {
        let input = dir.path().join(name);
        write_png(&input, color, depth, &data, palette, (w, h));
        let o = diffedit().args(quick(dir.path(), input.to_str().unwrap())).output().unwrap();
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let img = image::open(dir.path().join("out.png")).unwrap();
        assert_eq!((img.width(), img.height()), (w, h), "{name}");
    }
}

#[test]
fn bad_images_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let missing = d.join("missing.png");
    expect_failure(
        &quick(d, missing.to_str().unwrap()),
        d,
        &format!("{}: No such file or directory", missing.display()),
    );

    let corrupt = d.join("corrupt.png");
    let mut bytes = std::fs::read(fixtures().join("pipeline/sd1_exact_default_in.png")).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    expect_failure(&quick(d, corrupt.to_str().unwrap()), d, &format!("{}: cannot decode image", corrupt.display()));

    let text = d.join("notes.txt");
    std::fs::write(&text, "not a picture at all\n").unwrap();
    expect_failure(
        &quick(d, text.to_str().unwrap()),
        d,
        &format!("{}: not a supported image format (PNG, JPEG, BMP, GIF, TIFF or WebP expected)", text.display()),
    );

    // Unreadable: a folder where a picture was expected (and, below, a file without read permission
    // when the tests do not run as root).
    let folder = d.join("folder.png");
    std::fs::create_dir(&folder).unwrap();
    expect_failure(&quick(d, folder.to_str().unwrap()), d, &format!("{}: Is a directory", folder.display()));

    let small = d.join("small.png");
    image::RgbImage::new(8, 12).save(&small).unwrap();
    expect_failure(
        &quick(d, small.to_str().unwrap()),
        d,
        &format!("{}: image is 8x12; each side must be at least 16 pixels", small.display()),
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if !is_root() {
            let locked = d.join("locked.png");
            std::fs::copy(fixtures().join("pipeline/sd1_exact_default_in.png"), &locked).unwrap();
            std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
            expect_failure(&quick(d, locked.to_str().unwrap()), d, &format!("{}: Permission denied", locked.display()));
        }
    }
}

#[cfg(unix)]
fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

#[test]
fn sizes_outside_the_model_limits_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = fixture("sd1_exact_default_in.png");
    let with = |extra: &[&str]| {
        let mut a = quick(d, &input);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    expect_failure(
        &with(&["--size", "63x64"]),
        d,
        "size 63x64: both sides must be multiples of 2 (the VAE's downscale factor)",
    );
    expect_failure(
        &with(&["--size", "2x64"]),
        d,
        "size 2x64 is too small for this model: each side must be at least 4 pixels",
    );
    expect_failure(
        &with(&["--size", "512x64"]),
        d,
        "size 512x64 is too large for this model: each side must be at most 256 pixels (4x its native 64)",
    );
    expect_failure(&with(&["--size", "64by64"]), d, "--size must look like 512x384 (width x height), got `64by64`");
}

#[test]
fn bad_parameters_and_prompts_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = fixture("sd1_exact_default_in.png");
    let with = |extra: &[&str]| {
        let mut a = quick(d, &input);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    expect_failure(&with(&["--encode-ratio", "0"]), d, "--encode-ratio must be in (0, 1], got 0");
    expect_failure(&with(&["--encode-ratio", "1.2"]), d, "--encode-ratio must be in (0, 1], got 1.2");
    expect_failure(&with(&["--mask-threshold", "1.5"]), d, "--mask-threshold must be in [0, 1], got 1.5");
    expect_failure(&with(&["--steps", "0"]), d, "--steps must be at least 1, got 0");
    expect_failure(&with(&["--mask-samples", "0"]), d, "--mask-samples must be at least 1, got 0");
    expect_failure(&with(&["--mask-noise-level", "0"]), d, "--mask-noise-level must be in (0, 1], got 0");
    expect_failure(&with(&["--mask-noise-level", "1.01"]), d, "--mask-noise-level must be in (0, 1], got 1.01");
    expect_failure(&with(&["--alignment", "sideways"]), d, "alignment must be `exact` or `notebook`, got `sideways`");

    let mut empty_source = quick(d, &input);
    let i = empty_source.iter().position(|a| a == "--source").unwrap();
    empty_source[i + 1] = "  ".into();
    expect_failure(&empty_source, d, "--source prompt is empty: describe the picture as it is");
    let mut empty_target = quick(d, &input);
    let i = empty_target.iter().position(|a| a == "--target").unwrap();
    empty_target[i + 1] = "".into();
    expect_failure(&empty_target, d, "--target prompt is empty: describe the picture as it should become");
}

#[test]
fn missing_output_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut a = quick(d, &fixture("sd1_exact_default_in.png"));
    let nowhere = d.join("no/such/dir/out.png");
    let i = a.iter().position(|x| x == "--out").unwrap();
    a[i + 1] = nowhere.display().to_string();
    expect_failure(
        &a,
        d,
        &format!("--out {}: the directory {} does not exist", nowhere.display(), nowhere.parent().unwrap().display()),
    );
    let mut b = quick(d, &fixture("sd1_exact_default_in.png"));
    let heat = d.join("missing/heat.png");
    b.extend(["--save-heatmap".to_string(), heat.display().to_string()]);
    expect_failure(
        &b,
        d,
        &format!(
            "--save-heatmap {}: the directory {} does not exist",
            heat.display(),
            heat.parent().unwrap().display()
        ),
    );
}

#[test]
fn bad_noise_files_are_refused() {
    use candle_core::{Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = fixture("sd1_exact_default_in.png");
    let noise_dir = tempfile::tempdir().unwrap();
    let write = |name: &str, tensors: Vec<(&str, Tensor)>| -> PathBuf {
        let p = noise_dir.path().join(name);
        let map: std::collections::HashMap<String, Tensor> =
            tensors.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        candle_core::safetensors::save(&map, &p).unwrap();
        p
    };
    let z = |shape: &[usize]| Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap();
    let with_noise = |p: &Path| {
        let mut a = quick(d, &input);
        a.extend(["--noise".to_string(), p.display().to_string()]);
        a
    };
    let only_vae = write("only_vae.safetensors", vec![("vae_noise", z(&[1, 4, 32, 32]))]);
    expect_failure(
        &with_noise(&only_vae),
        d,
        &format!("{}: missing tensor `mask_noise` (expected shape [1, 1, 4, 32, 32])", only_vae.display()),
    );
    let wrong =
        write("wrong.safetensors", vec![("vae_noise", z(&[1, 4, 16, 16])), ("mask_noise", z(&[1, 1, 4, 32, 32]))]);
    expect_failure(
        &with_noise(&wrong),
        d,
        &format!("{}: tensor `vae_noise` has shape [1, 4, 16, 16], expected [1, 4, 32, 32]", wrong.display()),
    );
    let samples =
        write("samples.safetensors", vec![("vae_noise", z(&[1, 4, 32, 32])), ("mask_noise", z(&[3, 1, 4, 32, 32]))]);
    expect_failure(
        &with_noise(&samples),
        d,
        &format!("{}: tensor `mask_noise` has shape [3, 1, 4, 32, 32], expected [1, 1, 4, 32, 32]", samples.display()),
    );
    let garbage = noise_dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    expect_failure(&with_noise(&garbage), d, &format!("{}: cannot read noise file", garbage.display()));
}

/// `--seed 42` alone (no `--noise`) is the reference's run with `--vae-seed 42 --mask-seed 42`:
/// PyTorch's generator draws the same VAE sample and mask noises, so the trace matches the
/// reference within the pipeline tolerance and not one mask cell flips. `--rng native` draws
/// other numbers (the check can fail).
#[test]
fn seed_alone_reproduces_the_reference_run_with_torch_draws() {
    let dir = tempfile::tempdir().unwrap();
    let trace_of = |rng: &str| {
        let trace = dir.path().join(format!("trace_{rng}.safetensors"));
        let out = dir.path().join(format!("out_{rng}.png"));
        let o = run(&[
            "edit",
            "--model",
            &tiny(),
            "--image",
            &fixture("sd1_exact_seed42_in.png"),
            "--source",
            "a bowl of fruit on a table",
            "--target",
            "a basket of fruit on a table",
            "--steps",
            "8",
            "--mask-samples",
            "4",
            "--alignment",
            "exact",
            "--seed",
            "42",
            "--rng",
            rng,
            "--out",
            out.to_str().unwrap(),
            "--trace",
            trace.to_str().unwrap(),
            "-q",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        (load_fixture(&trace), image::open(out).unwrap().to_rgb8())
    };
    let expected = load_fixture(&fixtures().join("pipeline/sd1_exact_seed42.safetensors"));
    let (ours, picture) = trace_of("torch");
    for key in ["emb_target", "emb_reference", "latents", "mask_norm", "inv_latents", "dec_latents", "decoded"] {
        let err = rel_l2(&ours[key], &expected[key]);
        eprintln!("{key:14} rel_l2 {err:.2e}");
        assert!(err <= 1e-3, "{key}: rel_l2 {err:.3e}");
    }
    let cells = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (ours_mask, ref_mask) = (cells(&ours["mask"]), cells(&expected["mask"]));
    let flipped = ours_mask.iter().zip(&ref_mask).filter(|(a, b)| a != b).count();
    assert_eq!(flipped, 0, "mask cells flipped against the reference");
    let ref_out = image::open(fixture("sd1_exact_seed42_out.png")).unwrap().to_rgb8();
    let max_diff = ref_out.as_raw().iter().zip(picture.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(max_diff <= 2, "output differs from the reference's by up to {max_diff} levels");

    let (native, _) = trace_of("native");
    let err = rel_l2(&native["latents"], &expected["latents"]);
    assert!(err > 0.1, "the native generator's latents should differ from torch's, rel_l2 {err:.3e}");
}

/// `--mask` and `--negative-prompt` against the reference run with both features
/// (tools/make_mask_negative_fixture.py): the given mask is the trace's mask (no mask UNet
/// evaluation), the negative prompt's embedding is the unconditional one, and with inversion
/// guidance 2 both the inversion and the decoding match the reference within 1e-3.
#[test]
fn a_given_mask_and_a_negative_prompt_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.safetensors");
    let out = dir.path().join("out.png");
    let args: Vec<String> = [
        "edit",
        "--model",
        &tiny(),
        "--image",
        &fixture("sd1_mask_negative_in.png"),
        "--source",
        "a bowl of fruit on a table",
        "--target",
        "a basket of fruit on a table",
        "--steps",
        "10",
        "--mask-samples",
        "4",
        "--inversion-guidance",
        "2.0",
        "--guidance",
        "6.0",
        "--alignment",
        "exact",
        "--seed",
        "42",
        "--mask",
        &fixture("sd1_mask_negative_mask.png"),
        "--negative-prompt",
        "a blurry dark picture",
        "--out",
        out.to_str().unwrap(),
        "--trace",
        trace.to_str().unwrap(),
        "--json",
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(&refs);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["unet_evaluations_by_stage"]["mask"], 0, "a given mask costs no UNet evaluation");
    assert_eq!(summary["mask_given"], true);
    let ours = load_fixture(&trace);
    let expected = load_fixture(&fixtures().join("pipeline/sd1_mask_negative.safetensors"));
    let cells = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(cells(&ours["mask"]), cells(&expected["mask"]), "the trace's mask is the given one");
    assert!((summary["mask_coverage"].as_f64().unwrap() - 210.0 / 1024.0).abs() < 1e-12, "{summary}");
    for key in ["emb_target", "emb_reference", "emb_uncond", "latents", "inv_latents", "dec_latents", "decoded"] {
        let err = rel_l2(&ours[key], &expected[key]);
        eprintln!("{key:14} rel_l2 {err:.2e}");
        assert!(err <= 1e-3, "{key}: rel_l2 {err:.3e}");
    }
    // Without the negative prompt the unconditional side is the empty prompt's, and the
    // inversion (guidance 2) and the result change.
    let plain_trace = dir.path().join("plain.safetensors");
    let mut plain: Vec<&str> =
        refs.iter().copied().filter(|a| *a != "--negative-prompt" && *a != "a blurry dark picture").collect();
    let pos = plain.iter().position(|a| *a == "--trace").unwrap();
    plain[pos + 1] = plain_trace.to_str().unwrap();
    assert!(run(&plain).status.success());
    let plain = load_fixture(&plain_trace);
    assert!(rel_l2(&plain["emb_uncond"], &ours["emb_uncond"]) > 0.01);
    assert!(rel_l2(&plain["inv_latents"], &ours["inv_latents"]) > 1e-4);
    assert_eq!(cells(&plain["mask"]), cells(&ours["mask"]));
}

/// `--json` says which path ran (`precision`, `isa`), and a dtype without a fast path on this
/// CPU says on stderr what runs instead: f16 always (the f32 kernels), bf16 where the CPU has no
/// bf16 unit or `DIFFEDIT_BF16_ISA=none` turns it off; each bf16 unit this CPU has runs when named.
#[test]
fn every_dtype_reports_the_path_it_ran_and_slow_ones_say_what_runs_instead() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixture("sd1_exact_default_in.png");
    let edit_with = |dtype: &str, env: &[(&str, &str)]| {
        let mut args = quick(dir.path(), &image);
        args.extend(["--dtype", dtype, "--json"].iter().map(|s| s.to_string()));
        let mut cmd = diffedit();
        cmd.env_remove("DIFFEDIT_BF16_ISA").env_remove("DIFFEDIT_KERNELS");
        cmd.envs(env.iter().copied());
        let o = cmd.args(&args).output().unwrap();
        assert!(o.status.success(), "{dtype} {env:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v, stderr(&o))
    };
    let edit = |dtype: &str, isa: Option<&str>| match isa {
        Some(isa) => edit_with(dtype, &[("DIFFEDIT_BF16_ISA", isa)]),
        None => edit_with(dtype, &[]),
    };
    let f32_isa = if diffedit::kernels::enabled() { "avx512f" } else { "stock" };
    let (v, err) = edit("f32", None);
    assert_eq!(
        (&v["precision"], &v["isa"], &v["fallback"]),
        (&"f32".into(), &f32_isa.into(), &serde_json::Value::Null)
    );
    assert!(!err.contains("warning"), "{err}");

    let (v, err) = edit("f16", None);
    assert_eq!((&v["precision"], &v["isa"]), (&"f32".into(), &f32_isa.into()));
    let line = err.lines().find(|l| l.starts_with("warning: --dtype f16:")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.ends_with("instead") && line.contains("running "), "{line}");
    assert_eq!(v["fallback"].as_str(), line.strip_prefix("warning: "));

    let (v, err) = edit("bf16", Some("none"));
    assert_eq!((&v["precision"], &v["isa"]), (&"f32".into(), &f32_isa.into()));
    let line = err.lines().find(|l| l.starts_with("warning: --dtype bf16:")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.ends_with("instead"), "{line}");

    // A CPU without any bf16 unit (or AVX-512), as the kernels' switch makes any CPU look: candle's f32 ops.
    let (v, err) = edit_with("bf16", &[("DIFFEDIT_KERNELS", "0")]);
    assert_eq!((&v["precision"], &v["isa"]), (&"f32".into(), &"stock".into()));
    let line = err.lines().find(|l| l.starts_with("warning: --dtype bf16:")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.ends_with("running candle's f32 ops instead"), "{line}");

    for isa in diffedit::kernels::bf16_isas_supported() {
        let (v, err) = edit("bf16", Some(isa.name()));
        assert_eq!(
            (&v["precision"], &v["isa"], &v["fallback"]),
            (&"bf16".into(), &isa.name().into(), &serde_json::Value::Null)
        );
        assert!(!err.contains("warning"), "{err}");
    }
}

/// On a CPU whose tile units Linux refuses the process (what a Zen 4, or a kernel without AMX
/// support, looks like), `--dtype bf16` picks the AVX512-BF16 products by itself, without any
/// override, and says so in `--json`; a CPU without AVX512-BF16 either falls back to f32 with the
/// warning line. On an Intel Xeon with AMX this is the path that stands in for a Zen 4.
#[test]
fn bf16_without_tile_units_picks_avx512_bf16_by_itself() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let image = fixture("sd1_exact_default_in.png");
    let mut args = quick(dir.path(), &image);
    args.extend(["--dtype", "bf16", "--json"].iter().map(|s| s.to_string()));
    let mut cmd = diffedit();
    cmd.env_remove("DIFFEDIT_BF16_ISA").env_remove("DIFFEDIT_KERNELS").args(&args);
    // SAFETY: the hook makes raw prctl calls only (no allocation, no locks).
    unsafe { cmd.pre_exec(diffedit::kernels::amx::refuse_tile_state) };
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let has_avx512_bf16 = diffedit::kernels::bf16_isas_supported().contains(&diffedit::kernels::Bf16Isa::Avx512Bf16);
    if has_avx512_bf16 {
        assert_eq!(
            (&v["precision"], &v["isa"], &v["fallback"]),
            (&"bf16".into(), &"avx512bf16".into(), &serde_json::Value::Null)
        );
        assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    } else {
        assert_eq!(v["precision"], "f32");
        assert!(stderr(&o).contains("warning: --dtype bf16:"), "{}", stderr(&o));
    }
}
