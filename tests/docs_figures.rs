//! The committed figures (docs/figures/) and the README's worked example (docs/example/) are what
//! tools/make_docs_figures.sh and tools/make_docs_example.sh make at this commit: the commands the
//! scripts list are rerun here (those that take seconds; the 9-edit evaluation grid is left to the
//! script) and their pictures compared byte for byte. And `diffedit scenes --edits`, which gives
//! the scripts their held-out pictures and captions.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn diffedit(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_diffedit"))
        .args(args)
        .current_dir(root())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("the diffedit binary runs")
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The held-out edits as the scripts get them: `diffedit scenes --edits heldout --count 9`.
fn heldout_scenes(dir: &Path) -> PathBuf {
    let out = dir.join("scenes");
    let o = diffedit(&strings(&["scenes", "--edits", "heldout", "--count", "9", "--out", out.to_str().unwrap()]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn caption(scenes: &Path, index: usize, which: &str) -> String {
    std::fs::read_to_string(scenes.join(format!("heldout_{index:03}_{which}.txt"))).unwrap()
}

/// One entry of the figures script's FIGURES list: the files it writes, the held-out edit it
/// runs on (None for eval) and its words.
struct FigureCommand {
    files: Vec<String>,
    edit: Option<usize>,
    words: Vec<String>,
}

fn figure_commands() -> Vec<FigureCommand> {
    let script = std::fs::read_to_string(root().join("tools/make_docs_figures.sh")).unwrap();
    let body = script.split("FIGURES=(\n").nth(1).expect("FIGURES=( in the script");
    let body = &body[..body.find("\n)").expect("the list ends with )")];
    body.lines()
        .map(|l| {
            let l = l.trim().trim_matches('"');
            let parts: Vec<&str> = l.split('|').collect();
            assert_eq!(parts.len(), 3, "{l}");
            FigureCommand {
                files: parts[0].split_whitespace().map(str::to_owned).collect(),
                edit: parts[1].parse().ok(),
                words: parts[2].split_whitespace().map(str::to_owned).collect(),
            }
        })
        .collect()
}

/// The command's arguments as the script runs them, writing into `out` instead of docs/figures.
fn arguments(c: &FigureCommand, scenes: &Path, out: &Path) -> Vec<String> {
    let mut args: Vec<String> = c
        .words
        .iter()
        .map(|w| match (w.as_str(), c.edit) {
            ("IN", Some(i)) => scenes.join(format!("heldout_{i:03}_source.png")).display().to_string(),
            ("SOURCE", Some(i)) => caption(scenes, i, "source"),
            ("TARGET", Some(i)) => caption(scenes, i, "target"),
            _ => w.replace("$OUT/", &format!("{}/", out.display())),
        })
        .collect();
    if args[0] == "eval" {
        args.push("--quiet".into());
    } else {
        args.extend(strings(&["--model", "models/diffedit-shapes", "-q"]));
    }
    args
}

fn assert_same_file(made: &Path, committed: &Path) {
    let (a, b) = (std::fs::read(made).unwrap(), std::fs::read(committed).unwrap());
    if a != b {
        let (ia, ib) = (image::open(made).unwrap().to_rgb8(), image::open(committed).unwrap().to_rgb8());
        let differing = if ia.dimensions() == ib.dimensions() {
            format!(
                "{} of {} pixels differ",
                ia.pixels().zip(ib.pixels()).filter(|(x, y)| x != y).count(),
                ia.len() / 3
            )
        } else {
            format!("sizes {:?} and {:?}", ia.dimensions(), ib.dimensions())
        };
        panic!("{} is not what its script makes now ({differing}); rerun the script", committed.display());
    }
}

/// The figures' f32 numbers come from the AVX-512 kernels they were made with; other kernels
/// round differently, and a picture can move by a level.
fn same_kernels_as_the_figures() -> bool {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        return true;
    }
    eprintln!("this CPU lacks AVX-512: its f32 kernels differ from the ones the figures were made with");
    false
}

#[test]
fn every_figure_the_script_lists_is_committed_and_described() {
    let commands = figure_commands();
    let listed: Vec<&String> = commands.iter().flat_map(|c| &c.files).collect();
    let readme = std::fs::read_to_string(root().join("docs/figures/README.md")).unwrap();
    for f in &listed {
        assert!(root().join("docs/figures").join(f).is_file(), "docs/figures/{f} missing");
        assert!(readme.contains(&format!("]({f})")), "docs/figures/README.md does not show {f}");
    }
    for e in std::fs::read_dir(root().join("docs/figures")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!name.ends_with(".png") || listed.contains(&&name), "docs/figures/{name}: no script command makes it");
    }
    // Every command runs on a held-out edit, or is the evaluation itself.
    assert!(commands.iter().all(|c| c.edit.is_some() || c.words[0] == "eval"));
    assert!(commands.iter().any(|c| c.words[0] == "eval" && c.files == ["eval_grid.png"]));
}

#[test]
fn committed_figures_are_what_the_script_makes() {
    if !same_kernels_as_the_figures() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scenes = heldout_scenes(dir.path());
    let mut checked = Vec::new();
    // The quick ones: the mask (2N UNet rows), generation (2 x 50), an edit (about 140).
    for c in figure_commands().iter().filter(|c| ["mask", "generate", "edit"].contains(&c.words[0].as_str())) {
        let o = diffedit(&arguments(c, &scenes, dir.path()));
        assert!(o.status.success(), "{:?}: {}", c.words, String::from_utf8_lossy(&o.stderr));
        for f in &c.files {
            assert_same_file(&dir.path().join(f), &root().join("docs/figures").join(f));
            checked.push(f.clone());
        }
    }
    eprintln!("identical to the committed files: {checked:?}");
    assert_eq!(checked.len(), 5);
}

#[test]
fn the_worked_example_is_what_its_script_makes() {
    let script = std::fs::read_to_string(root().join("tools/make_docs_example.sh")).unwrap();
    let picks: Vec<(String, usize)> = script
        .split("for pick in ")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split('"')
        .filter_map(|p| p.split_once(' ').map(|(k, i)| (k.to_string(), i.trim_end_matches(';').parse().ok())))
        .filter_map(|(k, i)| i.map(|i| (k, i)))
        .collect();
    assert_eq!(picks.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["colour", "shape", "swap"]);
    let dir = tempfile::tempdir().unwrap();
    let scenes = heldout_scenes(dir.path());
    let example = root().join("docs/example");
    for (kind, index) in &picks {
        // The inputs are the held-out pictures themselves.
        for (suffix, file) in [("source", format!("{kind}.png")), ("expected", format!("{kind}_expected.png"))] {
            assert_same_file(&scenes.join(format!("heldout_{index:03}_{suffix}.png")), &example.join(file));
        }
    }
    if !same_kernels_as_the_figures() {
        return;
    }
    // The README's first command on the colour edit, as the script runs it.
    let (kind, index) = &picks[0];
    let out = |s: &str| dir.path().join(format!("{kind}_{s}.png")).display().to_string();
    let o = diffedit(&[
        "edit".into(),
        "--image".into(),
        example.join(format!("{kind}.png")).display().to_string(),
        "--source".into(),
        caption(&scenes, *index, "source"),
        "--target".into(),
        caption(&scenes, *index, "target"),
        "--out".into(),
        out("edited"),
        "--save-mask".into(),
        out("mask"),
        "--save-heatmap".into(),
        out("heatmap"),
        "--save-overlay".into(),
        out("overlay"),
        "-q".into(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for s in ["edited", "mask", "heatmap", "overlay"] {
        assert_same_file(Path::new(&out(s)), &example.join(format!("{kind}_{s}.png")));
    }
    // The README shows what the script wrote, with the captions it used.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for (kind, index) in &picks {
        assert!(readme.contains(&format!("docs/example/{kind}_edited.png")), "README lacks the {kind} example");
        assert!(readme.contains(&caption(&scenes, *index, "target")), "README lacks the {kind} target prompt");
    }
}

#[test]
fn scenes_writes_the_heldout_edits_as_pictures_and_captions() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("edits");
    let o = diffedit(&strings(&["scenes", "--edits", "validation", "--count", "4", "--out", out.to_str().unwrap()]));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("edits.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (line, edit) in lines.iter().zip(diffedit::synth::validation_edits(4, 32)) {
        assert_eq!(line["kind"], edit.kind.name());
        assert_eq!(line["target_caption"], edit.target_caption());
        let stem = format!("validation_{:03}", edit.index);
        let source = image::open(out.join(format!("{stem}_source.png"))).unwrap().to_rgb8();
        assert_eq!(source.as_raw(), &edit.source.render());
        let expected = image::open(out.join(format!("{stem}_expected.png"))).unwrap().to_rgb8();
        assert_eq!(expected.as_raw(), &edit.target.render());
        assert_eq!(std::fs::read_to_string(out.join(format!("{stem}_source.txt"))).unwrap(), edit.source_caption());
    }
    let o = diffedit(&strings(&["scenes", "--edits", "training", "--out", out.to_str().unwrap()]));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "error: --edits must be `heldout` or `validation`, got `training`"
    );
}
