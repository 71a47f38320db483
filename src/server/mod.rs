//! `diffedit serve`: a local web app on the edit [`Engine`], so that what was computed once is
//! never computed again while a person explores (a new threshold costs no UNet evaluation, a
//! second target only its half of the mask and its decoding).
//!
//! One worker thread computes (the CPU is saturated by one edit); requests wait in a bounded
//! queue. Everything a request can make the server hold is bounded: upload bytes and pixels,
//! queue length, stored pictures and files (by bytes and a time to live), jobs (by time to live
//! and count), a job's run time. Bound to loopback it refuses other Host names (DNS rebinding);
//! bound elsewhere it requires a token.

mod api;
mod assets;
pub mod jobs;
pub mod store;
pub mod uploads;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::diffedit::engine::{Engine, MaskSpec, PictureEdit};
use crate::error::{Error, Result};
use crate::image_io::encode_png;
use jobs::{Job, JobKind, JobProgress, Status};
use store::Store;
use uploads::Upload;

/// How the server runs and what it accepts.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// Jobs that may wait for the worker.
    pub queue: usize,
    pub max_upload_bytes: usize,
    pub max_pixels: u64,
    /// Required on every API request when set (`Authorization: Bearer T` or `?token=T`).
    pub token: Option<String>,
    /// How long uploads, result files and finished jobs are kept.
    pub ttl: Duration,
    /// Bytes of uploads kept, and separately of result files.
    pub store_bytes: usize,
    /// A job running longer is stopped.
    pub max_job_time: Duration,
    /// The model flags for the "copy as command" line (empty for the default model).
    pub model_flags: Vec<String>,
    /// The model's short name for the page.
    pub model_name: String,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 7860,
            queue: 8,
            max_upload_bytes: 20 << 20,
            max_pixels: 50_000_000,
            token: None,
            ttl: Duration::from_secs(3600),
            store_bytes: 1 << 30,
            max_job_time: Duration::from_secs(3600),
            model_flags: Vec::new(),
            model_name: "model".into(),
        }
    }
}

/// Most jobs kept (finished ones go first when there are more).
const MAX_JOBS: usize = 10_000;

/// An API error: a status and a message in words, sent as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), retry_after: None }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("no such {what} (unknown or expired id)"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(serde_json::json!({ "error": self.message }))).into_response();
        if let Some(s) = self.retry_after {
            if let Ok(v) = s.to_string().parse() {
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        r
    }
}

/// Everything the handlers and the worker share.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub options: ServeOptions,
    uploads: Mutex<Store<Arc<Upload>>>,
    files: Mutex<Store<Arc<Vec<u8>>>>,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    queue: SyncSender<Arc<Job>>,
    queued: AtomicUsize,
    next_ticket: AtomicU64,
    serving: AtomicU64,
    /// Uploads decoded at once (decoding is where an upload's memory goes).
    decoding: tokio::sync::Semaphore,
    pub started: Instant,
}

impl AppState {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn upload(&self, id: &str) -> Option<Arc<Upload>> {
        store::is_id(id).then(|| Self::lock(&self.uploads).get(id)).flatten()
    }

    pub fn file(&self, id: &str) -> Option<Arc<Vec<u8>>> {
        store::is_id(id).then(|| Self::lock(&self.files).get(id)).flatten()
    }

    pub fn job(&self, id: &str) -> Option<Arc<Job>> {
        store::is_id(id).then(|| Self::lock(&self.jobs).get(id).cloned()).flatten()
    }

    /// Keeps a PNG and returns its URL.
    fn keep_png(&self, png: Vec<u8>) -> Result<String> {
        let bytes = png.len();
        let id = Self::lock(&self.files)
            .insert(Arc::new(png), bytes)
            .ok_or_else(|| Error::invalid("the result is larger than the server's file store (--store-mb)"))?;
        Ok(format!("/api/files/{id}.png"))
    }

    fn keep_upload(&self, upload: Upload) -> std::result::Result<String, ApiError> {
        let bytes = upload.footprint();
        Self::lock(&self.uploads).insert(Arc::new(upload), bytes).ok_or_else(|| {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "the picture does not fit in the server's store (--store-mb)")
        })
    }

    pub fn serving_ticket(&self) -> u64 {
        self.serving.load(Ordering::Relaxed)
    }

    pub fn queue_length(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Registers a job and queues it; 429 when the queue is full.
    fn submit(&self, job: Arc<Job>) -> std::result::Result<(), ApiError> {
        self.remember(job.clone());
        self.queued.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(job.clone()) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                Self::lock(&self.jobs).remove(&job.id);
                let full = matches!(e, TrySendError::Full(_));
                let mut err = ApiError::new(
                    if full { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::SERVICE_UNAVAILABLE },
                    if full {
                        format!("the queue is full ({} jobs waiting); try again shortly", self.options.queue)
                    } else {
                        "the worker has stopped".to_string()
                    },
                );
                err.retry_after = Some(5);
                Err(err)
            }
        }
    }

    /// Keeps a job, forgetting expired finished ones (and the oldest finished beyond the cap).
    fn remember(&self, job: Arc<Job>) {
        let mut jobs = Self::lock(&self.jobs);
        let ttl = self.options.ttl;
        jobs.retain(|_, j| !(j.state().status.is_final() && j.created.elapsed() > ttl));
        if jobs.len() >= MAX_JOBS {
            let mut finished: Vec<(Instant, String)> =
                jobs.values().filter(|j| j.state().status.is_final()).map(|j| (j.created, j.id.clone())).collect();
            finished.sort();
            for (_, id) in finished.into_iter().take(jobs.len() + 1 - MAX_JOBS) {
                jobs.remove(&id);
            }
        }
        jobs.insert(job.id.clone(), job);
    }

    /// Drops expired uploads, files and jobs.
    fn sweep(&self) {
        Self::lock(&self.uploads).sweep();
        Self::lock(&self.files).sweep();
        let ttl = self.options.ttl;
        Self::lock(&self.jobs).retain(|_, j| !(j.state().status.is_final() && j.created.elapsed() > ttl));
    }

    /// Counts for the load test and the health answer.
    pub fn holdings(&self) -> serde_json::Value {
        let (u, f) = (Self::lock(&self.uploads), Self::lock(&self.files));
        serde_json::json!({
            "uploads": u.len(), "upload_bytes": u.bytes(),
            "files": f.len(), "file_bytes": f.bytes(),
            "jobs": Self::lock(&self.jobs).len(),
            "cache": self.engine.cache_stats(),
        })
    }
}

/// Runs jobs one at a time until the queue's sender is gone.
fn worker(state: Arc<AppState>, jobs: Receiver<Arc<Job>>) {
    while let Ok(job) = jobs.recv() {
        state.queued.fetch_sub(1, Ordering::Relaxed);
        state.serving.store(job.state().queue_ticket, Ordering::Relaxed);
        if job.state().status != Status::Queued {
            continue; // cancelled while it waited
        }
        let started = Instant::now();
        job.update(None, |s| {
            s.status = Status::Running;
            s.stage = "encode";
            s.started = Some(started);
        });
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_job(&state, &job)));
        let seconds = started.elapsed().as_secs_f64();
        let timed_out = started.elapsed() > job.deadline;
        match outcome {
            Ok(Ok(())) => job.update(None, |s| {
                s.status = Status::Done;
                s.stage = "done";
                s.progress = 1.0;
                s.eta_s = Some(0.0);
                s.seconds = Some(seconds);
            }),
            Ok(Err(Error::Cancelled)) if !timed_out => job.update(None, |s| {
                s.status = Status::Cancelled;
                s.stage = "cancelled";
                s.eta_s = None;
                s.seconds = Some(seconds);
            }),
            Ok(Err(e)) => {
                let message = if timed_out {
                    format!("stopped after {:.0} s (--max-job-seconds)", job.deadline.as_secs_f64())
                } else {
                    e.to_string()
                };
                job.update(None, |s| {
                    s.status = Status::Failed;
                    s.stage = "failed";
                    s.error = Some(message);
                    s.eta_s = None;
                    s.seconds = Some(seconds);
                })
            }
            Err(_) => job.update(None, |s| {
                s.status = Status::Failed;
                s.stage = "failed";
                s.error = Some("internal error while computing (see the server's log)".into());
                s.seconds = Some(seconds);
            }),
        }
    }
}

/// Computes a job and stores its pictures.
fn run_job(state: &AppState, job: &Job) -> Result<()> {
    let engine = &state.engine;
    let request = &job.request;
    let prepared = &request.image.prepared;
    let progress = JobProgress::new(job);
    match request.kind {
        JobKind::Mask => {
            let m = engine.mask_picture(prepared, &request.edit, &progress)?;
            publish_mask(state, job, &m, prepared)
        }
        JobKind::Edit => {
            let r = engine.edit_prepared(prepared, &request.edit, &progress)?;
            job.update(None, |s| s.stage = "writing");
            let result = state.keep_png(encode_png(&r.picture)?)?;
            let mask = state.keep_png(encode_png(&r.mask_image()?)?)?;
            let heatmap = match request.edit.mask {
                MaskSpec::Automatic => Some(state.keep_png(encode_png(&r.heatmap_image()?)?)?),
                MaskSpec::Given(_) => None,
            };
            let overlay = state.keep_png(encode_png(&r.overlay_image(&prepared.original)?)?)?;
            job.update(None, |s| {
                s.result = Some(result);
                s.mask = Some(mask);
                s.heatmap = heatmap;
                s.overlay = Some(overlay);
                s.coverage = Some(r.coverage);
                s.unet_evaluations = r.output.unet_evaluations;
            });
            Ok(())
        }
    }
}

/// Stores a mask's pictures and puts them on the job.
fn publish_mask(
    state: &AppState,
    job: &Job,
    m: &crate::diffedit::engine::MaskResult,
    prepared: &crate::diffedit::engine::PreparedPicture,
) -> Result<()> {
    let mask = state.keep_png(encode_png(&m.mask_image()?)?)?;
    let heatmap = state.keep_png(encode_png(&m.heatmap_image()?)?)?;
    let overlay = state.keep_png(encode_png(&m.overlay_image(&prepared.original)?)?)?;
    job.update(None, |s| {
        s.mask = Some(mask);
        s.heatmap = Some(heatmap);
        s.overlay = Some(overlay);
        s.coverage = Some(m.coverage);
        s.unet_evaluations = m.unet_evaluations;
    });
    Ok(())
}

/// A `diffedit edit` command line that reproduces an edit: every parameter spelled out, the
/// server's model flags, the picture (and painted mask) by name.
pub fn command_line(options: &ServeOptions, image: &str, mask: Option<&str>, edit: &PictureEdit) -> String {
    let p = &edit.params;
    let stem = image.rsplit_once('.').map_or(image, |(s, _)| s);
    let mut args: Vec<String> = vec!["diffedit".into(), "edit".into(), "--image".into(), sh_quote(image)];
    args.extend(["--source".into(), sh_quote(&edit.source), "--target".into(), sh_quote(&edit.target)]);
    args.extend(["--out".into(), sh_quote(&format!("{stem}_edit.png"))]);
    args.extend(options.model_flags.iter().map(|f| sh_quote(f)));
    let mut flag = |name: &str, value: String| {
        args.push(format!("--{name}"));
        args.push(value);
    };
    flag("steps", p.steps.to_string());
    flag("encode-ratio", p.encode_ratio.to_string());
    flag("guidance", p.guidance.to_string());
    flag("inversion-guidance", p.inversion_guidance.to_string());
    flag("mask-samples", p.mask_samples.to_string());
    flag("mask-noise-level", p.mask_noise_level.to_string());
    flag("mask-threshold", p.mask_threshold.to_string());
    flag("alignment", p.alignment.to_string());
    flag("seed", p.seed.to_string());
    flag("rng", p.rng.to_string());
    if p.mask_batch_size != crate::diffedit::EditParams::default().mask_batch_size {
        flag("mask-batch-size", p.mask_batch_size.to_string());
    }
    if let Some(n) = &edit.negative_prompt {
        flag("negative-prompt", sh_quote(n));
    }
    if edit.mask_dilate_px > 0.0 {
        flag("mask-dilate", edit.mask_dilate_px.to_string());
    }
    if let Some(b) = edit.mask_blur {
        flag("mask-blur", b.to_string());
    }
    if let Some(m) = mask {
        flag("mask", sh_quote(m));
    }
    if edit.keep_background {
        args.push("--keep-background".into());
    }
    args.join(" ")
}

/// `s` as one word for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "_./-=:,".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whether `host` names this machine's loopback interface.
pub fn is_loopback_host(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]") || host.starts_with("127.")
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
}

/// Binds, starts the worker and serves until `shutdown` resolves. `on_bound` is told the address
/// (with `--port 0`, the port the system picked) before the first request is taken.
pub async fn serve(
    engine: Engine,
    options: ServeOptions,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if !is_loopback_host(&options.host) && options.token.as_deref().is_none_or(str::is_empty) {
        return Err(Error::invalid(format!(
            "--host {} is reachable from other machines: give a --token (or DIFFEDIT_TOKEN) that every request must carry",
            options.host
        )));
    }
    if options.queue == 0 {
        return Err(Error::invalid("--queue must be at least 1"));
    }
    let bind = format!("{}:{}", options.host.trim_start_matches('[').trim_end_matches(']'), options.port);
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|e| Error::invalid(format!("cannot listen on {bind}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::invalid(e.to_string()))?;
    let (tx, rx) = sync_channel(options.queue);
    let state = Arc::new(AppState {
        uploads: Mutex::new(Store::new(options.store_bytes, options.ttl)),
        files: Mutex::new(Store::new(options.store_bytes, options.ttl)),
        jobs: Mutex::new(HashMap::new()),
        queue: tx,
        queued: AtomicUsize::new(0),
        next_ticket: AtomicU64::new(1),
        serving: AtomicU64::new(0),
        decoding: tokio::sync::Semaphore::new(2),
        engine: Arc::new(engine),
        options,
        started: Instant::now(),
    });
    {
        let state = state.clone();
        std::thread::Builder::new()
            .name("diffedit-worker".into())
            .spawn(move || worker(state, rx))
            .map_err(|e| Error::invalid(format!("cannot start the worker: {e}")))?;
    }
    {
        let state = Arc::downgrade(&state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                match state.upgrade() {
                    Some(s) => s.sweep(),
                    None => break,
                }
            }
        });
    }
    let app = api::router(state.clone(), addr);
    on_bound(addr);
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::invalid(format!("the server stopped: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_loopback_names() {
        assert_eq!(sh_quote("shapes.png"), "shapes.png");
        assert_eq!(sh_quote("a red square"), "'a red square'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
        assert!(is_loopback_host("127.0.0.1") && is_loopback_host("localhost") && is_loopback_host("[::1]"));
        assert!(!is_loopback_host("0.0.0.0") && !is_loopback_host("evil.example"));
    }
}
