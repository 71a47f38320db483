//! The CLIP tokenizer against transformers' CLIPTokenizer: fixtures written by
//! tools/fixtures_tokenizer.py for both tiny models (vocab.json + merges.txt padding with
//! <|endoftext|>; tokenizer.json only, padding with "!").

mod common;

use diffedit::models::tokenizer::ClipTokenizer;
use serde_json::Value;

fn check_model(name: &str) {
    let tok =
        ClipTokenizer::from_dir(&common::tiny_model(name).join("tokenizer")).unwrap_or_else(|e| panic!("{name}: {e}"));
    let path = common::fixtures().join(format!("parity/tokenizer_{name}.json"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(tok.max_length() as u64, doc["max_length"].as_u64().unwrap());
    assert_eq!(tok.pad_id() as u64, doc["pad_id"].as_u64().unwrap());
    assert_eq!(tok.bos_id() as u64, doc["bos_id"].as_u64().unwrap());
    assert_eq!(tok.eos_id() as u64, doc["eos_id"].as_u64().unwrap());
    let cases = doc["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode(prompt);
        let want_n = case["n_tokens"].as_u64().unwrap() as usize;
        let want_trunc = case["truncated"].as_bool().unwrap();
        if got.ids != want || got.n_tokens != want_n || got.truncated != want_trunc {
            failures.push(format!(
                "{prompt:?}:\n  got  {:?} n={} truncated={}\n  want {:?} n={want_n} truncated={want_trunc}",
                got.ids, got.n_tokens, got.truncated, want
            ));
        }
    }
    eprintln!("{name}: {} / {} prompts match transformers exactly", cases.len() - failures.len(), cases.len());
    assert!(failures.is_empty(), "{name}: {} mismatches\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn tiny_sd_vocab_and_merges_match_transformers() {
    check_model("tiny-sd");
}

#[test]
fn tiny_sd2_tokenizer_json_matches_transformers() {
    check_model("tiny-sd2");
}

#[test]
fn both_layouts_agree_on_the_same_vocabulary() {
    // tiny-sd ships all three files; forcing tokenizer.json must give the same ids.
    let src = common::tiny_model("tiny-sd").join("tokenizer");
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let a = ClipTokenizer::from_dir(&src).unwrap();
    let b = ClipTokenizer::from_dir(dir.path()).unwrap();
    for p in ["a photo of a cat", "<|endoftext|> 3.14 caf\u{e9} \u{1f431}!!", ""] {
        assert_eq!(a.encode(p), b.encode(p), "{p:?}");
    }
}

#[test]
fn output_is_always_max_length_with_eos_last_when_truncated() {
    let tok = ClipTokenizer::from_dir(&common::tiny_model("tiny-sd").join("tokenizer")).unwrap();
    let long = "cat ".repeat(200);
    let t = tok.encode(&long);
    assert_eq!(t.ids.len(), 77);
    assert_eq!(t.n_tokens, 202);
    assert!(t.truncated);
    assert_eq!(t.ids[0], tok.bos_id());
    assert_eq!(t.ids[76], tok.eos_id());
    let t = tok.encode(&"cat ".repeat(75));
    assert_eq!((t.n_tokens, t.truncated, t.ids[76]), (77, false, tok.eos_id()));
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert_eq!(
        err,
        format!("tokenizer folder {} has neither vocab.json + merges.txt nor tokenizer.json", dir.path().display())
    );

    // merges.txt present, vocab.json missing: the error names vocab.json.
    let src = common::tiny_model("tiny-sd").join("tokenizer");
    std::fs::copy(src.join("merges.txt"), dir.path().join("merges.txt")).unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    let vocab = dir.path().join("vocab.json");
    assert!(err.starts_with(&format!("{}: ", vocab.display())), "{err}");

    let gone = dir.path().join("nope");
    let err = ClipTokenizer::from_dir(&gone).unwrap_err().to_string();
    assert_eq!(err, format!("tokenizer folder {} does not exist", gone.display()));
}

#[test]
fn corrupt_files_are_named() {
    let src = common::tiny_model("tiny-sd").join("tokenizer");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("merges.txt"), dir.path().join("merges.txt")).unwrap();
    std::fs::write(dir.path().join("vocab.json"), "{\"a\": ").unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}: expected a JSON object", dir.path().join("vocab.json").display())), "{err}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": {\"type\": \"WordPiece\"}}").unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: key `model.type`: Some(\"WordPiece\") is not supported, only \"BPE\"",
            dir.path().join("tokenizer.json").display()
        )
    );

    let dir = tempfile::tempdir().unwrap();
    for f in ["vocab.json", "merges.txt"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("tokenizer_config.json"), "{\"pad_token\": \"<|nope|>\"}").unwrap();
    let err = ClipTokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{}: key `pad_token`: \"<|nope|>\" is not in the vocabulary",
            dir.path().join("tokenizer_config.json").display()
        )
    );
}
