//! Jobs: what a request asked the one compute worker to do, and what it has done so far.
//!
//! A job's state is published on a watch channel as the JSON the API returns, so the page's event
//! stream sees every stage and progress step; the worker polls the job's cancel flag between UNet
//! evaluations (through [`Progress::cancelled`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;

use super::uploads::Upload;
use crate::diffedit::engine::PictureEdit;
use crate::diffedit::{Progress, Stage};

/// Find a mask, or edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Mask,
    Edit,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Mask => "mask",
            JobKind::Edit => "edit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done => "done",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Done | Status::Failed | Status::Cancelled)
    }
}

/// What a job asks.
pub struct JobRequest {
    pub kind: JobKind,
    pub image_id: String,
    pub image: Arc<Upload>,
    pub mask_id: Option<String>,
    pub edit: PictureEdit,
    /// The `diffedit edit` command line that reproduces the edit.
    pub command: String,
}

/// What a job has done so far.
#[derive(Debug, Clone)]
pub struct JobState {
    pub status: Status,
    pub stage: &'static str,
    pub progress: f64,
    pub eta_s: Option<f64>,
    pub queue_ticket: u64,
    pub unet_evaluations: usize,
    pub error: Option<String>,
    pub result: Option<String>,
    pub mask: Option<String>,
    pub heatmap: Option<String>,
    pub overlay: Option<String>,
    pub coverage: Option<f64>,
    pub started: Option<Instant>,
    pub seconds: Option<f64>,
}

pub struct Job {
    pub id: String,
    pub request: JobRequest,
    pub created: Instant,
    state: Mutex<JobState>,
    cancel: AtomicBool,
    /// The JSON of the state, sent on every change.
    published: watch::Sender<Value>,
    /// Stops a running job past this time.
    pub deadline: Duration,
}

impl Job {
    pub fn new(id: String, request: JobRequest, queue_ticket: u64, deadline: Duration) -> Arc<Self> {
        let state = JobState {
            status: Status::Queued,
            stage: "queued",
            progress: 0.0,
            eta_s: None,
            queue_ticket,
            unet_evaluations: 0,
            error: None,
            result: None,
            mask: None,
            heatmap: None,
            overlay: None,
            coverage: None,
            started: None,
            seconds: None,
        };
        let (published, _) = watch::channel(Value::Null);
        let job = Arc::new(Self {
            id,
            request,
            created: Instant::now(),
            state: Mutex::new(state),
            cancel: AtomicBool::new(false),
            published,
            deadline,
        });
        job.publish(None);
        job
    }

    pub fn state(&self) -> JobState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the state and publishes it (`serving`: the ticket the worker is on, for the queue
    /// position).
    pub fn update(&self, serving: Option<u64>, change: impl FnOnce(&mut JobState)) {
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            change(&mut s);
        }
        self.publish(serving);
    }

    fn publish(&self, serving: Option<u64>) {
        let json = self.to_json(serving);
        self.published.send_replace(json);
    }

    pub fn subscribe(&self) -> watch::Receiver<Value> {
        self.published.subscribe()
    }

    /// Asks the job to stop. A queued job is cancelled at once; a running one when the worker
    /// next looks (within one UNet evaluation).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        let queued = self.state().status == Status::Queued;
        if queued {
            self.update(None, |s| {
                s.status = Status::Cancelled;
                s.stage = "cancelled";
            });
        }
    }

    pub fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// The job as the API shows it.
    pub fn to_json(&self, serving: Option<u64>) -> Value {
        let s = self.state();
        let r = &self.request;
        let p = &r.edit.params;
        let queue_position = match (s.status, serving) {
            (Status::Queued, Some(now)) => Some(s.queue_ticket.saturating_sub(now)),
            (Status::Queued, None) => None,
            _ => None,
        };
        json!({
            "id": self.id,
            "kind": r.kind.name(),
            "status": s.status.name(),
            "stage": s.stage,
            "progress": s.progress,
            "eta_s": s.eta_s,
            "queue_position": queue_position,
            "unet_evaluations": s.unet_evaluations,
            "error": s.error,
            "result": s.result,
            "mask": s.mask,
            "heatmap": s.heatmap,
            "overlay": s.overlay,
            "coverage": s.coverage,
            "params": p,
            "negative_prompt": r.edit.negative_prompt,
            "mask_dilate": r.edit.mask_dilate_px,
            "mask_blur": r.edit.mask_blur,
            "keep_background": r.edit.keep_background,
            "source": r.edit.source,
            "target": r.edit.target,
            "image": r.image_id,
            "mask_image": r.mask_id,
            "command": r.command,
            "seconds": s.seconds.or_else(|| s.started.map(|t| t.elapsed().as_secs_f64())),
        })
    }
}

/// The worker's [`Progress`] for one job: stage, overall progress (stages weighted by the UNet
/// evaluations they would cost, a cached stage counting as done) and ETA, published as they
/// change; and the job's cancel flag and deadline.
pub struct JobProgress<'a> {
    pub job: &'a Job,
    /// Weights of Encode, Mask, Inversion, Decoding, VaeDecode.
    weights: [f64; 5],
    current: Mutex<(usize, usize, usize)>,
    started: Instant,
}

fn stage_index(stage: Stage) -> usize {
    match stage {
        Stage::Encode => 0,
        Stage::Mask => 1,
        Stage::Inversion => 2,
        Stage::Decoding => 3,
        Stage::VaeDecode => 4,
    }
}

impl<'a> JobProgress<'a> {
    pub fn new(job: &'a Job) -> Self {
        let p = &job.request.edit.params;
        let weights = match job.request.kind {
            JobKind::Mask => [1.0, 2.0 * p.mask_samples as f64, 0.0, 0.0, 0.0],
            JobKind::Edit => {
                let g = if p.inversion_guidance > 1.0 { 2.0 } else { 1.0 };
                [1.0, 2.0 * p.mask_samples as f64, g * p.inversion_steps() as f64, 2.0 * p.start_step() as f64, 1.0]
            }
        };
        Self { job, weights, current: Mutex::new((0, 0, 0)), started: Instant::now() }
    }

    fn publish(&self, stage: Stage) {
        let (index, pos, total) = *self.current.lock().unwrap_or_else(|p| p.into_inner());
        let all: f64 = self.weights.iter().sum();
        let before: f64 = self.weights[..index].iter().sum();
        let frac = if total > 0 { pos as f64 / total as f64 } else { 0.0 };
        let progress = ((before + frac * self.weights[index]) / all.max(1e-9)).clamp(0.0, 1.0);
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = (progress > 0.02).then(|| elapsed / progress * (1.0 - progress));
        self.job.update(None, |s| {
            s.stage = stage.name();
            // Never backwards: a cached stage is skipped, not redone.
            s.progress = s.progress.max(progress);
            s.eta_s = eta;
        });
    }
}

impl Progress for JobProgress<'_> {
    fn start(&self, stage: Stage, total: usize) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = (stage_index(stage), 0, total);
        self.publish(stage);
    }
    fn advance(&self, stage: Stage, by: usize) {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).1 += by;
        self.publish(stage);
    }
    fn cancelled(&self) -> bool {
        self.job.cancel_requested() || self.started.elapsed() > self.job.deadline
    }
}
