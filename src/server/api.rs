//! The HTTP face of the server: routes, the guard (Host names, token), and one handler per
//! endpoint, each a thin call into [`AppState`] and the engine.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use super::assets::{asset, CONTENT_SECURITY_POLICY, INDEX_HTML};
use super::jobs::{Job, JobKind, JobRequest, Status};
use super::uploads::{accept, clean_name};
use super::{command_line, is_loopback_host, publish_mask, store, ApiError, AppState};
use crate::diffedit::engine::{check_prompts, MaskSpec, PictureEdit};
use crate::diffedit::fields::{EditOptions, Fields, OPTION_KEYS, PARAM_KEYS};
use crate::image_io::encode_png;

type Shared = State<Arc<AppState>>;

/// Largest JSON body of a mask or edit request.
const MAX_JSON_BYTES: usize = 64 << 10;

pub fn router(state: Arc<AppState>, _addr: SocketAddr) -> Router {
    // Requests that answer at once get a time limit; the event stream lives as long as its job.
    let quick = Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(static_asset))
        .route("/api/health", get(health))
        .route("/api/images", axum::routing::post(upload))
        .route("/api/images/{id}", get(image))
        .route("/api/masks", axum::routing::post(create_mask))
        .route("/api/edits", axum::routing::post(create_edit))
        .route("/api/jobs/{id}", get(job).delete(cancel))
        .route("/api/files/{name}", get(file))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, Duration::from_secs(60)));
    let streams = Router::new().route("/api/jobs/{id}/events", get(events));
    quick
        .merge(streams)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such page or API endpoint") })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the server's log)").into_response()
        }))
        .with_state(state)
}

/// Refuses requests for other Host names when bound to loopback (DNS rebinding), and API
/// requests without the token when one is set.
async fn guard(State(st): Shared, req: Request, next: Next) -> Response {
    if is_loopback_host(&st.options.host) {
        let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let name = if host.starts_with('[') {
            host.split_inclusive(']').next().unwrap_or("")
        } else {
            host.split(':').next().unwrap_or("")
        };
        if !is_loopback_host(name) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "Host `{host}` is not a loopback name: this server answers only to localhost or 127.0.0.1 \
                     (protection against DNS rebinding)"
                ),
            )
            .into_response();
        }
    }
    if let Some(token) = st.options.token.as_deref().filter(|t| !t.is_empty()) {
        if req.uri().path().starts_with("/api/") && !carries_token(&req, token) {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this server needs its token: `Authorization: Bearer TOKEN` or `?token=TOKEN`",
            )
            .into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

fn carries_token(req: &Request, token: &str) -> bool {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    let query = req.uri().query().and_then(|q| url_pairs(q).into_iter().find(|(k, _)| k == "token").map(|(_, v)| v));
    [bearer.map(str::to_string), query].into_iter().flatten().any(|t| same(t.as_bytes(), token.as_bytes()))
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `k=v&...` with percent-decoding.
fn url_pairs(q: &str) -> Vec<(String, String)> {
    let decode = |s: &str| -> String {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn page_headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 4] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::CACHE_CONTROL, "no-cache"),
    ]
}

async fn index() -> Response {
    (page_headers("text/html; charset=utf-8"), INDEX_HTML).into_response()
}

async fn static_asset(Path(name): Path<String>) -> Response {
    match asset(&name) {
        Some((content_type, body)) => (page_headers(content_type), body).into_response(),
        None => ApiError::not_found("asset").into_response(),
    }
}

async fn health(State(st): Shared) -> Json<Value> {
    let e = &st.engine;
    let o = &st.options;
    Json(json!({
        "ok": true,
        "model": e.model().origins,
        "model_name": o.model_name,
        "native_size": e.model().native_size(),
        "compute": e.model().compute,
        "defaults": e.default_params(),
        "queue": { "capacity": o.queue, "length": st.queue_length() },
        "limits": {
            "max_upload_mb": o.max_upload_bytes as f64 / (1 << 20) as f64,
            "max_pixels": o.max_pixels,
            "ttl_s": o.ttl.as_secs(),
        },
        "version": env!("CARGO_PKG_VERSION"),
        "held": st.holdings(),
    }))
}

/// `POST /api/images[?name=FILE]`: the picture's bytes -> `{id, width, height}`.
async fn upload(
    State(st): Shared,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let max = st.options.max_upload_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the upload is larger than this server takes ({} MB, --max-upload-mb)", max >> 20),
        )
    };
    // Refused before reading when the client says how much it sends; otherwise reading stops at
    // the limit.
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, max).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit"))
            || e.to_string().contains("length limit")
        {
            too_large()
        } else {
            ApiError::bad_request(format!("could not read the upload: {e}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the body is empty: send the picture's bytes"));
    }
    let name = clean_name(q.get("name").map(String::as_str));
    let _permit =
        st.decoding.acquire().await.map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let engine = st.engine.clone();
    let max_pixels = st.options.max_pixels;
    let upload = tokio::task::spawn_blocking(move || accept(&engine, bytes.to_vec(), name, max_pixels))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error while decoding"))??;
    let (width, height) = (upload.width(), upload.height());
    let id = st.keep_upload(upload)?;
    Ok(Json(json!({ "id": id, "width": width, "height": height })))
}

fn png_response(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "private, max-age=3600")], bytes).into_response()
}

/// `GET /api/images/ID`: the uploaded picture as PNG.
async fn image(State(st): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let upload = st.upload(&id).ok_or_else(|| ApiError::not_found("image"))?;
    let png = tokio::task::spawn_blocking(move || encode_png(&upload.prepared.original))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(png_response(png))
}

/// `GET /api/files/ID.png`.
async fn file(State(st): Shared, Path(name): Path<String>) -> Result<Response, ApiError> {
    let id = name.strip_suffix(".png").unwrap_or(&name);
    let bytes = st.file(id).ok_or_else(|| ApiError::not_found("file"))?;
    Ok(png_response(bytes.as_ref().clone()))
}

/// Reads a mask or edit request; errors are 400 with the message `diffedit edit` gives, 404 for
/// unknown ids.
fn parse_request(st: &AppState, body: &[u8], kind: JobKind) -> Result<JobRequest, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    let obj = value.as_object().ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let f = Fields(obj);
    let mut known = [&["image", "source", "target"][..], PARAM_KEYS, OPTION_KEYS].concat();
    if kind == JobKind::Edit {
        known.push("mask");
    }
    let bad = ApiError::bad_request;
    f.only(&known).map_err(bad)?;
    let image_id = f
        .text("image")
        .map_err(bad)?
        .ok_or_else(|| bad("the request has no `image` (an id from POST /api/images)".into()))?;
    let image = st.upload(&image_id).ok_or_else(|| ApiError::not_found("image"))?;
    let source = f.text("source").map_err(bad)?.unwrap_or_default();
    let target = f.text("target").map_err(bad)?.unwrap_or_default();
    check_prompts(&source, &target).map_err(|e| bad(e.to_string()))?;
    let params = f.edit_params(&st.engine.default_params()).map_err(bad)?;
    let options = f.edit_options(&EditOptions::default()).map_err(bad)?;
    let mut edit = PictureEdit::new(source, target, params).with_options(&options);
    let mask_id = f.text("mask").map_err(bad)?;
    let mut mask_name = None;
    if let Some(id) = &mask_id {
        let m = st.upload(id).ok_or_else(|| ApiError::not_found("mask image"))?;
        edit.mask = MaskSpec::Given(m.as_mask()?);
        mask_name = Some(m.name.clone());
    }
    edit.check().map_err(|e| bad(e.to_string()))?;
    let command = command_line(&st.options, &image.name, mask_name.as_deref(), &edit);
    Ok(JobRequest { kind, image_id, image, mask_id, edit, command })
}

fn new_job(st: &AppState, request: JobRequest) -> Arc<Job> {
    let ticket = st.next_ticket.fetch_add(1, Ordering::Relaxed);
    Job::new(store::new_id(), request, ticket, st.options.max_job_time)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error (see the server's log)"))?
}

fn json_body(body: &Bytes) -> Result<(), ApiError> {
    if body.len() > MAX_JSON_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a request body is at most {MAX_JSON_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// `POST /api/masks`: find the mask (a job). A mask whose stages are all cached (only the
/// threshold changed) is answered before the response, with 0 UNet evaluations.
async fn create_mask(State(st): Shared, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    json_body(&body)?;
    let st2 = st.clone();
    let job = blocking(move || {
        let request = parse_request(&st2, &body, JobKind::Mask)?;
        let cached = st2
            .engine
            .mask_picture_cached(&request.image.prepared, &request.edit)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let job = new_job(&st2, request);
        if let Some(m) = cached {
            publish_mask(&st2, &job, &m, &job.request.image.prepared)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            job.update(None, |s| {
                s.status = Status::Done;
                s.stage = "done";
                s.progress = 1.0;
                s.eta_s = Some(0.0);
                s.seconds = Some(job.created.elapsed().as_secs_f64());
            });
            st2.remember(job.clone());
            return Ok((job, false));
        }
        Ok((job, true))
    })
    .await?;
    let (job, queue) = job;
    if queue {
        st.submit(job.clone())?;
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": job.id }))))
}

/// `POST /api/edits`: an edit (a job).
async fn create_edit(State(st): Shared, body: Bytes) -> Result<(StatusCode, Json<Value>), ApiError> {
    json_body(&body)?;
    let st2 = st.clone();
    let request = blocking(move || parse_request(&st2, &body, JobKind::Edit)).await?;
    let job = new_job(&st, request);
    st.submit(job.clone())?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "job": job.id }))))
}

async fn job(State(st): Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let job = st.job(&id).ok_or_else(|| ApiError::not_found("job"))?;
    Ok(Json(job.to_json(Some(st.serving_ticket()))))
}

/// `DELETE /api/jobs/ID`: a queued job is cancelled at once, a running one within a step.
async fn cancel(State(st): Shared, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let job = st.job(&id).ok_or_else(|| ApiError::not_found("job"))?;
    if !job.state().status.is_final() {
        job.cancel();
    }
    Ok(Json(job.to_json(Some(st.serving_ticket()))))
}

/// `GET /api/jobs/ID/events`: the job's JSON now, then on every change, until it ends.
async fn events(State(st): Shared, Path(id): Path<String>) -> Result<Response, ApiError> {
    let job = st.job(&id).ok_or_else(|| ApiError::not_found("job"))?;
    let rx = job.subscribe();
    let stream =
        futures_util::stream::unfold((rx, job, st, false, true), |(mut rx, job, st, done, first)| async move {
            if done {
                return None;
            }
            if !first && rx.changed().await.is_err() {
                return None;
            }
            rx.borrow_and_update();
            let value = job.to_json(Some(st.serving_ticket()));
            let finished = job.state().status.is_final();
            let event = Event::default().data(value.to_string());
            Some((Ok::<_, Infallible>(event), (rx, job, st, finished, false)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}
