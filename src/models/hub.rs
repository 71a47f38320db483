//! Finding a model's files: a local diffusers folder, or a Hugging Face repo read through the
//! standard cache (`models--owner--name/{blobs,snapshots/<commit>,refs/<revision>}`, the layout
//! Python's `huggingface_hub` uses, so downloads are shared both ways), downloading what is
//! missing when the network is allowed.
//!
//! Policy: the cache comes first. A revision that already resolves to a commit in the cache is
//! used as is and further downloads are pinned to that commit, so one model never mixes files
//! of two commits; only a revision not yet in the cache is resolved on the hub.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// Where a model (or one component) comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Dir(PathBuf),
    Hub { repo: String, revision: String },
}

impl ModelSource {
    /// An existing directory -> `Dir`. Otherwise `owner/name` or `owner/name@revision` -> `Hub`
    /// (revision default `main`). Anything else is an error saying the folder does not exist.
    ///
    /// A spec shaped like a repo id whose first part is a local folder (`models/sd15` where
    /// `models/` exists) is taken as a mistyped path, not a repo.
    pub fn parse(spec: &str) -> Result<Self> {
        if spec.is_empty() {
            return Err(Error::invalid("empty model path (expected a folder or a Hugging Face repo id owner/name)"));
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(ModelSource::Dir(path.to_path_buf()));
        }
        if path.exists() {
            return Err(Error::Model(format!(
                "{spec}: not a folder (expected a diffusers model folder or a Hugging Face repo id owner/name)"
            )));
        }
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, rev),
            None => (spec, "main"),
        };
        if is_repo_id(id) && is_revision(revision) {
            let owner = id.split('/').next().unwrap_or_default();
            if Path::new(owner).is_dir() {
                return Err(Error::Model(format!(
                    "{spec}: folder does not exist (read as a path because `{owner}` is a local folder, not as a Hugging Face repo id)"
                )));
            }
            return Ok(ModelSource::Hub { repo: id.to_string(), revision: revision.to_string() });
        }
        Err(Error::Model(format!(
            "{spec}: folder does not exist (and it is not a Hugging Face repo id of the form owner/name[@revision])"
        )))
    }

    /// For messages: the path, or the repo id (with `@revision` unless it is `main`).
    pub fn describe(&self) -> String {
        match self {
            ModelSource::Dir(dir) => dir.display().to_string(),
            ModelSource::Hub { repo, revision } if revision == "main" => repo.clone(),
            ModelSource::Hub { repo, revision } => format!("{repo}@{revision}"),
        }
    }
}

/// `owner/name` as the hub accepts it: word characters, `-` and `.`, at most 96 characters
/// per part, neither part starting or ending with `-` or `.`, no `--` or `..`.
fn is_repo_id(id: &str) -> bool {
    let mut parts = id.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    part_ok(owner) && part_ok(name)
}

/// A branch, tag, `refs/pr/N` or commit; it becomes a path under `refs/`, so nothing that
/// could leave that folder.
fn is_revision(rev: &str) -> bool {
    !rev.is_empty()
        && !rev.starts_with('/')
        && !rev.contains('\\')
        && rev.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A repo-relative file path (from our callers or a shard index): relative, no `..`.
fn check_relative(rel: &str) -> Result<()> {
    let ok = !rel.is_empty()
        && !rel.starts_with('/')
        && !rel.contains('\\')
        && rel.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!("`{rel}`: not a relative file path inside a model")))
    }
}

fn join_rel(subfolder: &str, filename: &str) -> String {
    let sub = subfolder.trim_matches('/');
    if sub.is_empty() {
        filename.to_string()
    } else {
        format!("{sub}/{filename}")
    }
}

/// What the cache knows about one file.
enum Cached {
    Present(PathBuf),
    /// `huggingface_hub` records files the hub answered 404 for under `.no_exist/<commit>/`.
    KnownMissing,
    Unknown {
        commit: Option<String>,
    },
}

/// Finds model files locally, in the Hugging Face cache, or on the hub.
#[derive(Debug, Clone)]
pub struct Fetcher {
    cache_dir: PathBuf,
    endpoint: String,
    offline: bool,
    progress: bool,
    token: Option<String>,
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn env_true(key: &str) -> bool {
    env_nonempty(key).is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface` (as Python does).
fn hf_home() -> PathBuf {
    if let Some(home) = env_nonempty("HF_HOME") {
        return PathBuf::from(home);
    }
    if let Some(xdg) = env_nonempty("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("huggingface");
    }
    let home = env_nonempty("HOME").or_else(|| env_nonempty("USERPROFILE")).unwrap_or_else(|| ".".to_string());
    PathBuf::from(home).join(".cache").join("huggingface")
}

impl Fetcher {
    /// Settings from the environment, as `huggingface_hub` reads them: `HF_HUB_CACHE` (else
    /// `HF_HOME/hub`), `HF_ENDPOINT`, `HF_HUB_OFFLINE`, `HF_TOKEN` (else the token file saved
    /// by `huggingface-cli login`), `HF_HUB_DISABLE_PROGRESS_BARS`.
    pub fn from_env() -> Self {
        let home = hf_home();
        let cache_dir = env_nonempty("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| home.join("hub"));
        let endpoint = env_nonempty("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".to_string());
        let token = env_nonempty("HF_TOKEN").or_else(|| {
            let file = env_nonempty("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| home.join("token"));
            std::fs::read_to_string(file).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
        });
        Self {
            cache_dir,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            offline: env_true("HF_HUB_OFFLINE"),
            progress: !env_true("HF_HUB_DISABLE_PROGRESS_BARS"),
            token,
        }
    }

    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    pub fn with_offline(mut self, on: bool) -> Self {
        self.offline = on;
        self
    }

    pub fn with_cache_dir(mut self, dir: PathBuf) -> Self {
        self.cache_dir = dir;
        self
    }

    pub fn with_endpoint(mut self, url: String) -> Self {
        self.endpoint = url.trim_end_matches('/').to_string();
        self
    }

    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// Path of `subfolder/filename` (subfolder "" = the root): for `Dir`, the file if it exists;
    /// for `Hub`, the cached snapshot file, else downloaded unless offline. `Ok(None)` when the
    /// file does not exist (locally, or the hub says so).
    pub fn get_optional(&self, src: &ModelSource, subfolder: &str, filename: &str) -> Result<Option<PathBuf>> {
        let rel = join_rel(subfolder, filename);
        check_relative(&rel)?;
        match src {
            ModelSource::Dir(dir) => {
                let path = dir.join(&rel);
                Ok(path.is_file().then_some(path))
            }
            ModelSource::Hub { repo, revision } => match self.lookup(repo, revision, &rel) {
                Cached::Present(path) => Ok(Some(path)),
                Cached::KnownMissing => Ok(None),
                Cached::Unknown { .. } if self.offline => Err(Error::Model(format!(
                    "{}: {rel} is not in the Hugging Face cache at {}, and the network is off (HF_HUB_OFFLINE)",
                    src.describe(),
                    self.cache_dir.display()
                ))),
                Cached::Unknown { commit } => self.download(src, repo, revision, commit, &rel),
            },
        }
    }

    /// Same as [`Fetcher::get_optional`], but a missing file is an error naming the folder or
    /// repo and the file.
    pub fn get(&self, src: &ModelSource, subfolder: &str, filename: &str) -> Result<PathBuf> {
        match self.get_optional(src, subfolder, filename)? {
            Some(path) => Ok(path),
            None => Err(self.not_found(src, &join_rel(subfolder, filename))),
        }
    }

    fn not_found(&self, src: &ModelSource, rel: &str) -> Error {
        match src {
            ModelSource::Dir(dir) => Error::Model(format!("{}: file not found", dir.join(rel).display())),
            ModelSource::Hub { repo, revision } => {
                Error::Model(format!("{repo}: {rel} not found (no such file in the repository at revision {revision})"))
            }
        }
    }

    /// The weights of a component, in order: `<stem>.safetensors`, else the shards listed by
    /// `<stem>.safetensors.index.json`, else the fp16 variant (`<stem>.fp16.safetensors`, then
    /// its sharded index), for stem `diffusion_pytorch_model` (diffusers) or `model`
    /// (transformers). PyTorch `.bin` pickles are refused with an error saying so.
    pub fn weight_files(&self, src: &ModelSource, subfolder: &str) -> Result<Vec<PathBuf>> {
        let candidates = weight_candidates();
        // Whatever is already cached wins, so a model downloaded by Python as fp16 only, or
        // used offline, needs no network round trips for the names it lacks.
        if let ModelSource::Hub { repo, revision } = src {
            for (name, sharded) in &candidates {
                if let Cached::Present(path) = self.lookup(repo, revision, &join_rel(subfolder, name)) {
                    if !sharded {
                        return Ok(vec![path]);
                    }
                    let shards = shard_names(&path)?;
                    let cached: Option<Vec<PathBuf>> = shards
                        .iter()
                        .map(|s| match self.lookup(repo, revision, &join_rel(subfolder, s)) {
                            Cached::Present(p) => Some(p),
                            _ => None,
                        })
                        .collect();
                    if let Some(files) = cached {
                        return Ok(files);
                    }
                    if !self.offline {
                        return self.fetch_shards(src, subfolder, &path, &shards);
                    }
                }
            }
        }
        let may_fetch = matches!(src, ModelSource::Dir(_)) || !self.offline;
        if may_fetch {
            for (name, sharded) in &candidates {
                if let Some(path) = self.get_optional(src, subfolder, name)? {
                    if !sharded {
                        return Ok(vec![path]);
                    }
                    let shards = shard_names(&path)?;
                    return self.fetch_shards(src, subfolder, &path, &shards);
                }
            }
        }
        if let Some(bin) = self.find_pickle(src, subfolder) {
            return Err(Error::Model(format!(
                "{}: only PyTorch weights found ({bin}); .bin pickles are not supported, safetensors weights are needed \
                 (convert them with diffusers/transformers `save_pretrained(..., safe_serialization=True)`)",
                self.place(src, subfolder)
            )));
        }
        let looked_for =
            "diffusion_pytorch_model.safetensors or model.safetensors, sharded (.safetensors.index.json) or fp16";
        match src {
            ModelSource::Hub { .. } if self.offline => Err(Error::Model(format!(
                "{}: no weights in the Hugging Face cache at {} (looked for {looked_for}), and the network is off (HF_HUB_OFFLINE)",
                self.place(src, subfolder),
                self.cache_dir.display()
            ))),
            _ => Err(Error::Model(format!(
                "{}: no safetensors weights found (looked for {looked_for})",
                self.place(src, subfolder)
            ))),
        }
    }

    fn fetch_shards(
        &self,
        src: &ModelSource,
        subfolder: &str,
        index: &Path,
        shards: &[String],
    ) -> Result<Vec<PathBuf>> {
        shards
            .iter()
            .map(|s| match self.get_optional(src, subfolder, s)? {
                Some(p) => Ok(p),
                None => Err(Error::config(index, format!("shard `{s}` listed in `weight_map` not found"))),
            })
            .collect()
    }

    /// A folder for messages: the component folder, or `repo (subfolder/)`.
    fn place(&self, src: &ModelSource, subfolder: &str) -> String {
        let sub = subfolder.trim_matches('/');
        match src {
            ModelSource::Dir(dir) => dir.join(sub).display().to_string(),
            ModelSource::Hub { .. } if sub.is_empty() => src.describe(),
            ModelSource::Hub { .. } => format!("{} ({sub}/)", src.describe()),
        }
    }

    /// The first PyTorch weight file present, without downloading it.
    fn find_pickle(&self, src: &ModelSource, subfolder: &str) -> Option<String> {
        const PICKLES: [&str; 6] = [
            "diffusion_pytorch_model.bin",
            "pytorch_model.bin",
            "diffusion_pytorch_model.bin.index.json",
            "pytorch_model.bin.index.json",
            "diffusion_pytorch_model.fp16.bin",
            "pytorch_model.fp16.bin",
        ];
        PICKLES
            .iter()
            .find(|name| {
                let rel = join_rel(subfolder, name);
                match src {
                    ModelSource::Dir(dir) => dir.join(&rel).is_file(),
                    ModelSource::Hub { repo, revision } => match self.lookup(repo, revision, &rel) {
                        Cached::Present(_) => true,
                        Cached::KnownMissing => false,
                        Cached::Unknown { commit } => {
                            !self.offline && self.probe(repo, commit.as_deref().unwrap_or(revision), &rel)
                        }
                    },
                }
            })
            .map(|s| s.to_string())
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.cache_dir.join(format!("models--{}", repo.replace('/', "--")))
    }

    /// The commit a revision points to in the cache: `refs/<revision>`, or the revision itself
    /// when it is a commit hash with a snapshot (Python writes no ref for those).
    fn cached_commit(&self, repo: &str, revision: &str) -> Option<String> {
        let dir = self.repo_dir(repo);
        if let Ok(text) = std::fs::read_to_string(dir.join("refs").join(revision)) {
            let commit = text.trim();
            if !commit.is_empty() {
                return Some(commit.to_string());
            }
        }
        (is_commit_hash(revision) && dir.join("snapshots").join(revision).is_dir()).then(|| revision.to_string())
    }

    fn lookup(&self, repo: &str, revision: &str, rel: &str) -> Cached {
        let Some(commit) = self.cached_commit(repo, revision) else {
            return Cached::Unknown { commit: None };
        };
        let dir = self.repo_dir(repo);
        // `is_file` follows the snapshot's symlink, so a dangling link (blob deleted) counts as
        // absent and is downloaded again.
        let path = dir.join("snapshots").join(&commit).join(rel);
        if path.is_file() {
            return Cached::Present(path);
        }
        if dir.join(".no_exist").join(&commit).join(rel).exists() {
            return Cached::KnownMissing;
        }
        Cached::Unknown { commit: Some(commit) }
    }

    fn download(
        &self,
        src: &ModelSource,
        repo: &str,
        revision: &str,
        commit: Option<String>,
        rel: &str,
    ) -> Result<Option<PathBuf>> {
        let pinned = commit.unwrap_or_else(|| revision.to_string());
        let repo_dir = self.repo_dir(repo);
        let pinned_ref = repo_dir.join("refs").join(&pinned);
        // hf-hub writes `refs/<revision>` after each download; for a commit hash Python keeps
        // no such ref, so one we caused is removed again.
        let stray_ref = is_commit_hash(&pinned) && !pinned_ref.exists();
        let api = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_endpoint(self.endpoint.clone())
            .with_token(self.token.clone())
            .with_progress(false)
            .build()
            .map_err(|e| Error::Model(format!("{}: cannot set up downloads: {e}", src.describe())))?;
        let api_repo = api.repo(Repo::with_revision(repo.to_string(), RepoType::Model, pinned.clone()));
        let result = if self.progress {
            api_repo.download_with_progress(rel, Bar::new(format!("{} {rel}", src.describe())))
        } else {
            api_repo.download_with_progress(rel, ())
        };
        if stray_ref {
            let _ = std::fs::remove_file(&pinned_ref);
        }
        match result {
            Ok(path) => Ok(Some(path)),
            Err(ApiError::RequestError(err)) => match *err {
                ureq::Error::Status(code, response) => self.status_error(src, revision, &pinned, rel, code, &response),
                ureq::Error::Transport(t) => Err(Error::Model(format!(
                    "{}: {rel} is not in the Hugging Face cache at {}, and downloading it from {} failed (network off or unreachable?): {t}",
                    src.describe(),
                    self.cache_dir.display(),
                    self.endpoint
                ))),
            },
            Err(e) => Err(Error::Model(format!("{}: downloading {rel} failed: {e}", src.describe()))),
        }
    }

    fn status_error(
        &self,
        src: &ModelSource,
        revision: &str,
        pinned: &str,
        rel: &str,
        code: u16,
        response: &ureq::Response,
    ) -> Result<Option<PathBuf>> {
        let repo = src.describe();
        let error_code = response.header("X-Error-Code").unwrap_or_default();
        match (code, error_code) {
            (401 | 403, "GatedRepo") => Err(Error::Model(format!(
                "{repo}: the repository is gated (HTTP {code}); accept its terms on the hub, then set HF_TOKEN or run `huggingface-cli login`"
            ))),
            (401, _) | (404, "RepoNotFound") => Err(Error::Model(format!(
                "{repo}: repository not found on {} (HTTP {code}); check the name, or for a private or gated repo set HF_TOKEN or run `huggingface-cli login`",
                self.endpoint
            ))),
            (404, "RevisionNotFound") => Err(Error::Model(format!("{repo}: revision `{revision}` not found"))),
            (403, _) => Err(Error::Model(format!(
                "{repo}: access to {rel} denied (HTTP 403); for a gated repo accept its terms on the hub and set HF_TOKEN"
            ))),
            (404, _) => {
                // Remember the answer the way huggingface_hub does, so later runs (also
                // offline, also Python's) know the file is absent at this commit.
                let commit = response.header("X-Repo-Commit").map(str::to_string).filter(|c| is_commit_hash(c));
                if let (Some(commit), ModelSource::Hub { repo, .. }) = (commit, src) {
                    let dir = self.repo_dir(repo);
                    let marker = dir.join(".no_exist").join(&commit).join(rel);
                    if let Some(parent) = marker.parent() {
                        let _ = std::fs::create_dir_all(parent).and_then(|_| std::fs::File::create(&marker));
                    }
                    let head = dir.join("refs").join(pinned);
                    if !is_commit_hash(pinned) && !head.exists() {
                        let _ = std::fs::create_dir_all(dir.join("refs").join(pinned).parent().unwrap_or(&dir))
                            .and_then(|_| std::fs::write(&head, &commit));
                    }
                }
                Ok(None)
            }
            _ => Err(Error::Model(format!(
                "{repo}: downloading {rel} from {} failed: HTTP {code} {}",
                self.endpoint,
                response.status_text()
            ))),
        }
    }

    /// Whether the hub has `rel`, asking for its first byte without following the redirect to
    /// the file storage. Any failure counts as "no".
    fn probe(&self, repo: &str, revision: &str, rel: &str) -> bool {
        let agent = ureq::AgentBuilder::new().try_proxy_from_env(true).redirects(0).build();
        let url = format!("{}/{repo}/resolve/{}/{rel}", self.endpoint, revision.replace('/', "%2F"));
        let mut request = agent.get(&url).set("Range", "bytes=0-0");
        if let Some(token) = &self.token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        matches!(request.call(), Ok(r) if r.status() < 400)
    }
}

/// Weight file names in order of preference, with whether each is a shard index. Both stems
/// are tried at each step so a transformers component costs one miss, not four.
fn weight_candidates() -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for (pattern, sharded) in [
        ("{}.safetensors", false),
        ("{}.safetensors.index.json", true),
        ("{}.fp16.safetensors", false),
        ("{}.safetensors.index.fp16.json", true),
    ] {
        for stem in ["diffusion_pytorch_model", "model"] {
            out.push((pattern.replace("{}", stem), sharded));
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// The distinct shard files of an index, sorted (`-00001-of-00003` first).
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let parsed: ShardIndex = crate::models::config::read_config(index)?;
    let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    if shards.is_empty() {
        return Err(Error::config(index, "`weight_map` lists no shard files"));
    }
    for s in &shards {
        if s.contains('/') || s.contains('\\') || s == "." || s == ".." {
            return Err(Error::config(index, format!("shard `{s}` is not a file name next to the index")));
        }
    }
    Ok(shards)
}

/// A download progress bar on stderr (indicatif hides it when stderr is not a terminal).
struct Bar {
    label: String,
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    fn new(label: String) -> Self {
        Self { label, bar: None }
    }
}

impl hf_hub::api::Progress for Bar {
    fn init(&mut self, size: usize, _filename: &str) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(size as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(self.label.clone());
            bar
        });
        // Called again when a transfer (re)starts; `update` then reports the resumed offset.
        bar.set_length(size as u64);
        bar.set_position(0);
    }

    fn update(&mut self, size: usize) {
        if let Some(bar) = &self.bar {
            bar.inc(size as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
