//! `diffedit serve`: argument parsing, then [`crate::server::serve`].

use std::time::Duration;

use clap::Args;

use super::shared::load_engine;
use super::{ModelArgs, OutputArgs};
use crate::diffedit::engine::DEFAULT_CACHE_MB;
use crate::error::{Error, Result};
use crate::server::{serve, ServeOptions};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the one chosen is printed).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Memory for reused stage results, in MB.
    #[arg(long, value_name = "MB", default_value_t = DEFAULT_CACHE_MB)]
    pub cache_mb: usize,
    /// Jobs that may wait for the worker; more get 429.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub queue: usize,
    /// Largest upload, in MB.
    #[arg(long, value_name = "MB", default_value_t = 20)]
    pub max_upload_mb: usize,
    /// Largest picture, in megapixels (checked from its header, before decoding).
    #[arg(long, value_name = "MP", default_value_t = 50.0)]
    pub max_megapixels: f64,
    /// Token every API request must carry (Authorization: Bearer T, or ?token=T) [env: DIFFEDIT_TOKEN].
    #[arg(long, value_name = "T")]
    pub token: Option<String>,
    /// Minutes uploads, results and finished jobs are kept.
    #[arg(long, value_name = "MIN", default_value_t = 60)]
    pub ttl_minutes: u64,
    /// Memory for uploads, and as much again for result pictures, in MB.
    #[arg(long, value_name = "MB", default_value_t = 1024)]
    pub store_mb: usize,
    /// A job running longer is stopped.
    #[arg(long, value_name = "S", default_value_t = 3600)]
    pub max_job_seconds: u64,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The model flags as given, for the page's "copy as command" line.
fn model_flags(m: &ModelArgs) -> Vec<String> {
    let mut flags = Vec::new();
    for (name, value) in [
        ("--model", &m.model),
        ("--unet", &m.unet),
        ("--vae", &m.vae),
        ("--text-encoder", &m.text_encoder),
        ("--tokenizer", &m.tokenizer),
        ("--dtype", &m.dtype),
    ] {
        if let Some(v) = value {
            flags.push(name.to_string());
            flags.push(v.clone());
        }
    }
    if m.device != "cpu" {
        flags.extend(["--device".to_string(), m.device.clone()]);
    }
    flags
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let token = args.token.clone().or_else(|| std::env::var("DIFFEDIT_TOKEN").ok()).filter(|t| !t.is_empty());
    if !crate::server::is_loopback_host(&args.host) && token.is_none() {
        return Err(Error::invalid(format!(
            "--host {} is reachable from other machines: give a --token (or DIFFEDIT_TOKEN) that every request must carry",
            args.host
        )));
    }
    if !(args.max_megapixels.is_finite() && args.max_megapixels > 0.0) {
        return Err(Error::invalid(format!("--max-megapixels must be a positive number, got {}", args.max_megapixels)));
    }
    if args.max_upload_mb == 0 || args.queue == 0 {
        return Err(Error::invalid("--max-upload-mb and --queue must be at least 1"));
    }
    let o = &args.output;
    let (engine, _) = load_engine(&args.model, o, args.cache_mb)?;
    let model_name = match &engine.model().model_dir {
        Some(dir) => {
            dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| dir.display().to_string())
        }
        None => engine.model().origins.unet.split(" (").next().unwrap_or("model").to_string(),
    };
    let options = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        queue: args.queue,
        max_upload_bytes: args.max_upload_mb << 20,
        max_pixels: (args.max_megapixels * 1e6) as u64,
        token: token.clone(),
        ttl: Duration::from_secs(args.ttl_minutes.max(1) * 60),
        store_bytes: args.store_mb << 20,
        max_job_time: Duration::from_secs(args.max_job_seconds.max(1)),
        model_flags: model_flags(&args.model),
        model_name,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::invalid(format!("cannot start the server's runtime: {e}")))?;
    runtime.block_on(serve(
        engine,
        options,
        |addr| {
            let host = if addr.ip().is_ipv6() { format!("[{}]", addr.ip()) } else { addr.ip().to_string() };
            let query = token.as_ref().map(|t| format!("/?token={t}")).unwrap_or_default();
            // Always printed (also with -q): scripts wait for this line.
            eprintln!("listening on http://{host}:{}{query}", addr.port());
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    ))
}
