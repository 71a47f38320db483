//! Finding model files: local folders, the Hugging Face cache (offline), and downloads from a
//! fake hub on 127.0.0.1 that answers the way huggingface.co does for hf-hub's sync client.
//! Everything runs in temporary folders; the real hub is never contacted.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diffedit::models::hub::{Fetcher, ModelSource};
use diffedit::models::weights::Weights;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn tiny_sd() -> PathBuf {
    common::tiny_model("tiny-sd")
}

fn hub(repo: &str) -> ModelSource {
    ModelSource::Hub { repo: repo.to_string(), revision: "main".to_string() }
}

/// A fetcher that cannot reach anything real: explicit cache, unreachable endpoint.
fn fetcher(cache: &Path, endpoint: &str) -> Fetcher {
    Fetcher::from_env()
        .with_cache_dir(cache.to_path_buf())
        .with_endpoint(endpoint.to_string())
        .with_token(None)
        .with_progress(false)
        .with_offline(false)
}

fn err_string<T: std::fmt::Debug>(r: diffedit::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

/// Writes a small f32 safetensors file with the given tensors (name, shape).
fn write_safetensors(path: &Path, tensors: &[(&str, &[usize])]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        let start = data.len();
        for i in 0..n {
            data.extend_from_slice(&(i as f32).to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&data);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn touch(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

// ---------------------------------------------------------------------------------------------
// ModelSource::parse

#[test]
fn parse_specs() {
    let dir = tiny_sd();
    assert_eq!(ModelSource::parse(dir.to_str().unwrap()).unwrap(), ModelSource::Dir(dir.clone()));
    assert_eq!(ModelSource::parse("CompVis/stable-diffusion-v1-4").unwrap(), hub("CompVis/stable-diffusion-v1-4"));
    assert_eq!(
        ModelSource::parse("stabilityai/stable-diffusion-2-1-base@refs/pr/5").unwrap(),
        ModelSource::Hub { repo: "stabilityai/stable-diffusion-2-1-base".into(), revision: "refs/pr/5".into() }
    );
    assert_eq!(
        ModelSource::parse("CompVis/stable-diffusion-v1-4").unwrap().describe(),
        "CompVis/stable-diffusion-v1-4"
    );
    assert_eq!(ModelSource::parse("a/b@v1.0").unwrap().describe(), "a/b@v1.0");
    assert_eq!(ModelSource::Dir(dir.clone()).describe(), dir.display().to_string());

    // Tests run in the crate root, where `tests/` is a folder: `tests/nothing` is a path.
    assert_eq!(
        err_string(ModelSource::parse("tests/nothing")),
        "tests/nothing: folder does not exist (read as a path because `tests` is a local folder, not as a Hugging Face repo id)"
    );
    for spec in ["no/such/folder", "./missing", "bad--name/x", "owner/name@", "owner/name@../../etc"] {
        assert_eq!(
            err_string(ModelSource::parse(spec)),
            format!(
                "{spec}: folder does not exist (and it is not a Hugging Face repo id of the form owner/name[@revision])"
            )
        );
    }
    assert_eq!(
        err_string(ModelSource::parse("Cargo.toml")),
        "Cargo.toml: not a folder (expected a diffusers model folder or a Hugging Face repo id owner/name)"
    );
    assert_eq!(
        err_string(ModelSource::parse("")),
        "empty model path (expected a folder or a Hugging Face repo id owner/name)"
    );
}

// ---------------------------------------------------------------------------------------------
// Local folders

#[test]
fn dir_source_finds_files() {
    let dir = tiny_sd();
    let src = ModelSource::Dir(dir.clone());
    let tmp = tempfile::tempdir().unwrap();
    // Offline and with an unusable endpoint: a folder never touches either.
    let f = fetcher(tmp.path(), "http://127.0.0.1:9").with_offline(true);

    assert_eq!(f.get(&src, "unet", "config.json").unwrap(), dir.join("unet/config.json"));
    assert_eq!(f.get(&src, "", "model_index.json").unwrap(), dir.join("model_index.json"));
    assert_eq!(f.get_optional(&src, "unet", "nope.json").unwrap(), None);
    assert_eq!(
        err_string(f.get(&src, "unet", "nope.json")),
        format!("{}: file not found", dir.join("unet/nope.json").display())
    );
    assert_eq!(
        err_string(f.get(&src, "unet", "../../secret")),
        "`unet/../../secret`: not a relative file path inside a model"
    );
    assert_eq!(f.weight_files(&src, "unet").unwrap(), vec![dir.join("unet/diffusion_pytorch_model.safetensors")]);
    assert_eq!(f.weight_files(&src, "text_encoder").unwrap(), vec![dir.join("text_encoder/model.safetensors")]);
    assert_eq!(
        err_string(f.weight_files(&src, "tokenizer")),
        format!(
            "{}: no safetensors weights found (looked for diffusion_pytorch_model.safetensors or model.safetensors, sharded (.safetensors.index.json) or fp16)",
            dir.join("tokenizer").display()
        )
    );
}

#[test]
fn sharded_fp16_and_pickle_resolution() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let src = ModelSource::Dir(root.to_path_buf());
    let f = fetcher(&root.join("cache"), "http://127.0.0.1:9").with_offline(true);

    // Sharded: the index's weight_map names two shards (one twice); shards come back sorted.
    let unet = root.join("unet");
    write_safetensors(&unet.join("diffusion_pytorch_model-00002-of-00002.safetensors"), &[("b", &[3])]);
    write_safetensors(&unet.join("diffusion_pytorch_model-00001-of-00002.safetensors"), &[("a", &[2]), ("c", &[1])]);
    touch(
        &unet.join("diffusion_pytorch_model.safetensors.index.json"),
        r#"{"metadata": {"total_size": 24}, "weight_map": {
            "b": "diffusion_pytorch_model-00002-of-00002.safetensors",
            "a": "diffusion_pytorch_model-00001-of-00002.safetensors",
            "c": "diffusion_pytorch_model-00001-of-00002.safetensors"}}"#,
    );
    let files = f.weight_files(&src, "unet").unwrap();
    assert_eq!(
        files,
        vec![
            unet.join("diffusion_pytorch_model-00001-of-00002.safetensors"),
            unet.join("diffusion_pytorch_model-00002-of-00002.safetensors"),
        ]
    );
    let weights = Weights::open(&files).unwrap();
    let mut names: Vec<&str> = weights.names().collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);

    // A shard the index lists but the folder lacks.
    std::fs::remove_file(unet.join("diffusion_pytorch_model-00002-of-00002.safetensors")).unwrap();
    assert_eq!(
        err_string(f.weight_files(&src, "unet")),
        format!(
            "{}: shard `diffusion_pytorch_model-00002-of-00002.safetensors` listed in `weight_map` not found",
            unet.join("diffusion_pytorch_model.safetensors.index.json").display()
        )
    );
    // A malformed index names the file and the key.
    touch(&unet.join("diffusion_pytorch_model.safetensors.index.json"), r#"{"weight_map": {"a": 3}}"#);
    assert_eq!(
        err_string(f.weight_files(&src, "unet")),
        format!(
            "{}: key `weight_map.a`: invalid type: integer `3`, expected a string at line 1 column 22",
            unet.join("diffusion_pytorch_model.safetensors.index.json").display()
        )
    );

    // fp16 variant only (transformers stem).
    let te = root.join("text_encoder");
    write_safetensors(&te.join("model.fp16.safetensors"), &[("x", &[1])]);
    assert_eq!(f.weight_files(&src, "text_encoder").unwrap(), vec![te.join("model.fp16.safetensors")]);
    // The full-precision file wins when both are there.
    write_safetensors(&te.join("model.safetensors"), &[("x", &[1])]);
    assert_eq!(f.weight_files(&src, "text_encoder").unwrap(), vec![te.join("model.safetensors")]);

    // PyTorch pickles only.
    touch(&root.join("vae/diffusion_pytorch_model.bin"), "pickle");
    assert_eq!(
        err_string(f.weight_files(&src, "vae")),
        format!(
            "{}: only PyTorch weights found (diffusion_pytorch_model.bin); .bin pickles are not supported, safetensors weights are needed (convert them with diffusers/transformers `save_pretrained(..., safe_serialization=True)`)",
            root.join("vae").display()
        )
    );
    touch(&root.join("safety/pytorch_model.bin"), "pickle");
    assert!(err_string(f.weight_files(&src, "safety")).contains("only PyTorch weights found (pytorch_model.bin)"));
}

// ---------------------------------------------------------------------------------------------
// The cache, offline

/// Lays out `models--owner--name` as huggingface_hub does: blobs named by etag, snapshot
/// entries as relative symlinks to them (copies where symlinks are unavailable).
fn cache_file(cache: &Path, repo: &str, commit: &str, rel: &str, bytes: &[u8]) {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let etag = format!("{:016x}{:016x}", bytes.len(), fnv(bytes));
    let blob = repo_dir.join("blobs").join(&etag);
    std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
    std::fs::write(&blob, bytes).unwrap();
    let link = repo_dir.join("snapshots").join(commit).join(rel);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    let depth = rel.matches('/').count() + 2;
    let target = format!("{}blobs/{etag}", "../".repeat(depth));
    #[cfg(unix)]
    std::os::unix::fs::symlink(target, &link).unwrap();
    #[cfg(not(unix))]
    {
        let _ = target;
        std::fs::copy(&blob, &link).unwrap();
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3))
}

#[test]
fn cache_is_used_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let repo = "owner/tiny";
    let repo_dir = cache.join("models--owner--tiny");
    let config = std::fs::read(tiny_sd().join("unet/config.json")).unwrap();
    cache_file(&cache, repo, COMMIT, "unet/config.json", &config);
    cache_file(&cache, repo, COMMIT, "unet/diffusion_pytorch_model.safetensors", b"unet weights");
    cache_file(&cache, repo, COMMIT, "text_encoder/model.fp16.safetensors", b"fp16 weights");
    cache_file(&cache, repo, COMMIT, "vae/diffusion_pytorch_model.safetensors.index.json",
        br#"{"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors", "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}"#);
    cache_file(&cache, repo, COMMIT, "vae/diffusion_pytorch_model-00001-of-00002.safetensors", b"1");
    cache_file(&cache, repo, COMMIT, "vae/diffusion_pytorch_model-00002-of-00002.safetensors", b"2");
    cache_file(&cache, repo, COMMIT, "safety_checker/pytorch_model.bin", b"pickle");
    // Python writes the ref without a newline; tolerate one anyway.
    touch(&repo_dir.join("refs/main"), &format!("{COMMIT}\n"));
    // The hub said 404 for this one at that commit.
    touch(&repo_dir.join(".no_exist").join(COMMIT).join("unet/absent.json"), "");

    let f = fetcher(&cache, "http://127.0.0.1:9").with_offline(true);
    let src = hub(repo);
    let snap = repo_dir.join("snapshots").join(COMMIT);

    let got = f.get(&src, "unet", "config.json").unwrap();
    assert_eq!(got, snap.join("unet/config.json"));
    assert_eq!(std::fs::read(&got).unwrap(), config);
    assert_eq!(f.get_optional(&src, "unet", "absent.json").unwrap(), None);
    assert_eq!(
        err_string(f.get(&src, "unet", "absent.json")),
        "owner/tiny: unet/absent.json not found (no such file in the repository at revision main)"
    );
    assert_eq!(
        err_string(f.get(&src, "unet", "other.json")),
        format!(
            "owner/tiny: unet/other.json is not in the Hugging Face cache at {}, and the network is off (HF_HUB_OFFLINE)",
            cache.display()
        )
    );

    assert_eq!(f.weight_files(&src, "unet").unwrap(), vec![snap.join("unet/diffusion_pytorch_model.safetensors")]);
    assert_eq!(f.weight_files(&src, "text_encoder").unwrap(), vec![snap.join("text_encoder/model.fp16.safetensors")]);
    assert_eq!(
        f.weight_files(&src, "vae").unwrap(),
        vec![
            snap.join("vae/diffusion_pytorch_model-00001-of-00002.safetensors"),
            snap.join("vae/diffusion_pytorch_model-00002-of-00002.safetensors"),
        ]
    );
    assert!(err_string(f.weight_files(&src, "safety_checker")).starts_with(
        "owner/tiny (safety_checker/): only PyTorch weights found (pytorch_model.bin); .bin pickles are not supported"
    ));
    assert_eq!(
        err_string(f.weight_files(&src, "scheduler")),
        format!(
            "owner/tiny (scheduler/): no weights in the Hugging Face cache at {} (looked for diffusion_pytorch_model.safetensors or model.safetensors, sharded (.safetensors.index.json) or fp16), and the network is off (HF_HUB_OFFLINE)",
            cache.display()
        )
    );

    // A commit hash as revision needs no ref; an unknown branch is not in the cache.
    let pinned = ModelSource::Hub { repo: repo.into(), revision: COMMIT.into() };
    assert_eq!(f.get(&pinned, "unet", "config.json").unwrap(), snap.join("unet/config.json"));
    let branch = ModelSource::Hub { repo: repo.into(), revision: "fp16".into() };
    assert_eq!(
        err_string(f.get(&branch, "unet", "config.json")),
        format!(
            "owner/tiny@fp16: unet/config.json is not in the Hugging Face cache at {}, and the network is off (HF_HUB_OFFLINE)",
            cache.display()
        )
    );

    // A snapshot entry whose blob was deleted is not a hit.
    #[cfg(unix)]
    {
        std::fs::remove_file(std::fs::canonicalize(snap.join("unet/config.json")).unwrap()).unwrap();
        assert!(err_string(f.get(&src, "unet", "config.json")).contains("is not in the Hugging Face cache"));
    }
}

// ---------------------------------------------------------------------------------------------
// A fake hub

struct HubFile {
    bytes: Vec<u8>,
    etag: String,
    /// Large files live in LFS: the hub answers with a redirect to its file storage.
    lfs: bool,
}

struct FakeHub {
    base: String,
    log: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    /// Serves `repo` at commit `COMMIT`, at most `max_requests` connections and for at most
    /// 30 s, whichever comes first; dropping it stops it.
    fn start(repo: &str, files: Vec<(&str, Vec<u8>)>, max_requests: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let files: HashMap<String, HubFile> = files
            .into_iter()
            .map(|(rel, bytes)| {
                let lfs = rel.ends_with(".safetensors");
                // LFS etags are sha256 hex, git ones sha1 hex; any distinct hex will do here.
                let etag = if lfs {
                    format!("{:016x}{:016x}{:016x}{:016x}", fnv(&bytes), bytes.len(), fnv(rel.as_bytes()), 1)
                } else {
                    format!("{:016x}{:016x}{:08x}", fnv(&bytes), fnv(rel.as_bytes()), bytes.len())
                };
                (rel.to_string(), HubFile { bytes, etag, lfs })
            })
            .collect();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (repo, base2, log2, stop2) = (repo.to_string(), base.clone(), log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut served = 0;
            while served < max_requests && Instant::now() < deadline && !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        served += 1;
                        serve(stream, &repo, &files, &base2, &log2);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => break,
                }
            }
        });
        Self { base, log, stop, thread: Some(thread) }
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut stream: TcpStream, repo: &str, files: &HashMap<String, HubFile>, base: &str, log: &Mutex<Vec<String>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.lines();
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let path = request_line.split(' ').nth(1).unwrap_or_default().to_string();
    let range = headers.get("range").cloned();
    log.lock().unwrap().push(format!("{path} {}", range.as_deref().unwrap_or("-")));

    let not_found = |code: &str| {
        (
            404,
            vec![("X-Error-Code".to_string(), code.to_string()), ("X-Repo-Commit".to_string(), COMMIT.to_string())],
            Vec::new(),
        )
    };
    let (status, extra, body): (u16, Vec<(String, String)>, Vec<u8>) = if let Some(etag) = path.strip_prefix("/cdn/") {
        match files.values().find(|f| f.etag == etag) {
            Some(f) => ranged(&f.bytes, range.as_deref(), vec![]),
            None => (404, vec![], vec![]),
        }
    } else if let Some(rest) = path.strip_prefix(&format!("/{repo}/resolve/")) {
        let (rev, rel) = rest.split_once('/').unwrap_or((rest, ""));
        if rev != "main" && rev != COMMIT {
            not_found("RevisionNotFound")
        } else if let Some(f) = files.get(rel) {
            if f.lfs {
                let h = vec![
                    ("Location".to_string(), format!("{base}/cdn/{}", f.etag)),
                    ("X-Linked-Etag".to_string(), format!("\"{}\"", f.etag)),
                    ("X-Linked-Size".to_string(), f.bytes.len().to_string()),
                    ("X-Repo-Commit".to_string(), COMMIT.to_string()),
                    ("ETag".to_string(), "\"pointer-etag\"".to_string()),
                ];
                (302, h, Vec::new())
            } else {
                let h = vec![
                    ("ETag".to_string(), format!("\"{}\"", f.etag)),
                    ("X-Repo-Commit".to_string(), COMMIT.to_string()),
                ];
                ranged(&f.bytes, range.as_deref(), h)
            }
        } else {
            not_found("EntryNotFound")
        }
    } else if path.starts_with("/test-org/gated/") {
        (401, vec![("X-Error-Code".to_string(), "GatedRepo".to_string())], Vec::new())
    } else {
        // huggingface.co answers 401 for repos it does not know (or may not show).
        (401, vec![("X-Error-Code".to_string(), "RepoNotFound".to_string())], b"Repository not found".to_vec())
    };
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Other",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
}

/// Answers a `Range: bytes=a-` or `bytes=a-b` request with 206, as the hub and its storage do.
fn ranged(
    bytes: &[u8],
    range: Option<&str>,
    mut headers: Vec<(String, String)>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return (200, headers, bytes.to_vec());
    };
    let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
    let start: usize = a.parse().unwrap_or(0);
    let end: usize = if b.is_empty() { bytes.len().saturating_sub(1) } else { b.parse().unwrap_or(0) };
    if start >= bytes.len() || end < start {
        return (416, headers, Vec::new());
    }
    let end = end.min(bytes.len() - 1);
    headers.push(("Content-Range".to_string(), format!("bytes {start}-{end}/{}", bytes.len())));
    (206, headers, bytes[start..=end].to_vec())
}

/// hf-hub's HTTP client routes every request, 127.0.0.1 included, through a proxy named in
/// the environment (ureq 2 has no NO_PROXY), so the fake hub is unreachable behind one.
fn proxy_in_env() -> bool {
    let set = ["ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()));
    if set {
        eprintln!("SKIPPED: a proxy is set in the environment; hf-hub would send 127.0.0.1 requests through it");
    }
    set
}

fn tiny_sd_files(rels: &[&str]) -> Vec<(&'static str, Vec<u8>)> {
    rels.iter()
        .map(|rel| {
            let rel: &'static str = Box::leak(rel.to_string().into_boxed_str());
            (rel, std::fs::read(tiny_sd().join(rel)).unwrap())
        })
        .collect()
}

#[test]
fn download_into_standard_cache() {
    if proxy_in_env() {
        return;
    }
    let server = FakeHub::start(
        "test-org/tiny-sd",
        tiny_sd_files(&[
            "model_index.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
        ]),
        60,
    );
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let f = fetcher(&cache, &server.base);
    let src = ModelSource::parse("test-org/tiny-sd").unwrap();
    let repo_dir = cache.join("models--test-org--tiny-sd");
    let snap = repo_dir.join("snapshots").join(COMMIT);

    // A small file: one metadata request (first byte), one download.
    let config = f.get(&src, "unet", "config.json").unwrap();
    assert_eq!(config, snap.join("unet/config.json"));
    assert_eq!(std::fs::read(&config).unwrap(), std::fs::read(tiny_sd().join("unet/config.json")).unwrap());
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT);
    assert_eq!(
        server.take_log(),
        [
            "/test-org/tiny-sd/resolve/main/unet/config.json bytes=0-0",
            "/test-org/tiny-sd/resolve/main/unet/config.json bytes=0-"
        ]
    );

    // Weights through the LFS redirect; pinned to the commit the cache already holds.
    let weights = f.weight_files(&src, "unet").unwrap();
    let original = std::fs::read(tiny_sd().join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    assert_eq!(weights, vec![snap.join("unet/diffusion_pytorch_model.safetensors")]);
    assert_eq!(std::fs::read(&weights[0]).unwrap(), original);
    let log = server.take_log();
    assert_eq!(log.len(), 4, "{log:?}");
    assert_eq!(
        log[0],
        format!("/test-org/tiny-sd/resolve/{COMMIT}/unet/diffusion_pytorch_model.safetensors bytes=0-0")
    );
    assert!(log[1].starts_with("/cdn/") && log[1].ends_with(" bytes=0-0"), "{log:?}");
    assert_eq!(log[2], format!("/test-org/tiny-sd/resolve/{COMMIT}/unet/diffusion_pytorch_model.safetensors bytes=0-"));
    assert!(log[3].starts_with("/cdn/") && log[3].ends_with(" bytes=0-"), "{log:?}");
    // No ref named after the commit is left behind (huggingface_hub writes none).
    assert!(!repo_dir.join("refs").join(COMMIT).exists());

    // Standard layout: snapshot entries are relative links into blobs/, named by etag.
    #[cfg(unix)]
    {
        let target = std::fs::read_link(snap.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
        let target = target.to_str().unwrap();
        assert!(target.starts_with("../../../blobs/"), "{target}");
        let blob = repo_dir.join("blobs").join(target.trim_start_matches("../../../blobs/"));
        assert_eq!(std::fs::read(blob).unwrap(), original);
        assert_eq!(
            std::fs::read_link(snap.join("unet/config.json")).unwrap().parent().unwrap(),
            Path::new("../../../blobs")
        );
    }
    let mut blobs: Vec<String> = std::fs::read_dir(repo_dir.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    blobs.sort();
    assert_eq!(blobs.len(), 4, "{blobs:?}"); // two blobs and their (unlocked) .lock files
    assert_eq!(blobs.iter().filter(|b| b.ends_with(".lock")).count(), 2);

    // transformers stem: diffusion_pytorch_model.safetensors is a 404 (remembered), then model.safetensors.
    let te = f.weight_files(&src, "text_encoder").unwrap();
    assert_eq!(te, vec![snap.join("text_encoder/model.safetensors")]);
    assert_eq!(
        std::fs::read(&te[0]).unwrap(),
        std::fs::read(tiny_sd().join("text_encoder/model.safetensors")).unwrap()
    );
    assert!(repo_dir.join(".no_exist").join(COMMIT).join("text_encoder/diffusion_pytorch_model.safetensors").is_file());
    assert_eq!(server.take_log().len(), 5);

    // A missing file: Ok(None), then the exact error (from the cache's .no_exist, no request).
    assert_eq!(f.get_optional(&src, "unet", "missing.json").unwrap(), None);
    assert_eq!(server.take_log(), [format!("/test-org/tiny-sd/resolve/{COMMIT}/unet/missing.json bytes=0-0")]);
    assert_eq!(
        err_string(f.get(&src, "unet", "missing.json")),
        "test-org/tiny-sd: unet/missing.json not found (no such file in the repository at revision main)"
    );
    assert!(server.take_log().is_empty());

    // Everything again with the network off: all from the cache.
    let off = f.clone().with_offline(true);
    assert_eq!(off.get(&src, "unet", "config.json").unwrap(), config);
    assert_eq!(off.weight_files(&src, "unet").unwrap(), weights);
    assert_eq!(off.weight_files(&src, "text_encoder").unwrap(), te);
    // Online too: cached files cost no request.
    assert_eq!(f.weight_files(&src, "unet").unwrap(), weights);
    assert!(server.take_log().is_empty());
}

#[test]
fn download_errors() {
    if proxy_in_env() {
        return;
    }
    let server = FakeHub::start(
        "test-org/pickles",
        vec![("unet/config.json", b"{}".to_vec()), ("unet/diffusion_pytorch_model.bin", b"pickle".to_vec())],
        40,
    );
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    let f = fetcher(&cache, &server.base);

    // First request to a repo with no cache entry: a 404 still records the commit.
    let src = hub("test-org/pickles");
    assert_eq!(f.get_optional(&src, "", "model_index.json").unwrap(), None);
    let repo_dir = cache.join("models--test-org--pickles");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT);
    assert!(repo_dir.join(".no_exist").join(COMMIT).join("model_index.json").is_file());

    // Only a .bin on the hub: refused without downloading it (a first-byte probe only).
    server.take_log();
    assert_eq!(
        err_string(f.weight_files(&src, "unet")),
        "test-org/pickles (unet/): only PyTorch weights found (diffusion_pytorch_model.bin); .bin pickles are not supported, safetensors weights are needed (convert them with diffusers/transformers `save_pretrained(..., safe_serialization=True)`)"
    );
    let log = server.take_log();
    assert_eq!(
        log.last().unwrap(),
        &format!("/test-org/pickles/resolve/{COMMIT}/unet/diffusion_pytorch_model.bin bytes=0-0")
    );
    assert!(!log.iter().any(|l| l.ends_with("bytes=0-")), "{log:?}");
    assert!(!cache
        .join("models--test-org--pickles/snapshots")
        .join(COMMIT)
        .join("unet/diffusion_pytorch_model.bin")
        .exists());

    // Unknown repo and unknown revision.
    assert_eq!(
        err_string(f.get(&hub("test-org/nope"), "unet", "config.json")),
        format!(
            "test-org/nope: repository not found on {} (HTTP 401); check the name, or for a private or gated repo set HF_TOKEN or run `huggingface-cli login`",
            server.base
        )
    );
    assert_eq!(
        err_string(f.get(&hub("test-org/gated"), "unet", "config.json")),
        "test-org/gated: the repository is gated (HTTP 401); accept its terms on the hub, then set HF_TOKEN or run `huggingface-cli login`"
    );
    let branch = ModelSource::Hub { repo: "test-org/pickles".into(), revision: "v9".into() };
    assert_eq!(err_string(f.get(&branch, "unet", "config.json")), "test-org/pickles@v9: revision `v9` not found");
    drop(server);

    // Nothing listens: the message says where the cache is and that the network failed.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let f = fetcher(&cache, &closed);
    let msg = err_string(f.get(&hub("test-org/other"), "unet", "config.json"));
    let expected = format!(
        "test-org/other: unet/config.json is not in the Hugging Face cache at {}, and downloading it from {closed} failed (network off or unreachable?): ",
        cache.display()
    );
    assert!(msg.starts_with(&expected), "{msg}");
}
