//! `diffedit serve`'s API on 127.0.0.1 with the bundled model: an edit through the API is the
//! bytes of `diffedit edit` (and its "copy as command" line reproduces them), reuse shows in
//! each job's UNet evaluations, and every limit and error answers with its documented status.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::serve::Server;
use serde_json::{json, Value};

fn example() -> Vec<u8> {
    std::fs::read(common::repo_root().join("docs/example/shapes.png")).unwrap()
}

/// 10 steps, 4 samples: N = 4, S = 8, K = 7.
fn request(image: &str, target: &str) -> Value {
    json!({"image": image, "source": "a green circle on a gray background", "target": target,
           "steps": 10, "mask_samples": 4, "seed": 5})
}
const N: u64 = 4;
const S: u64 = 8;
const K: u64 = 7;

#[test]
fn edits_match_the_cli_byte_for_byte_and_reuse_is_counted() {
    let server = Server::start(&["-q"]);
    let (status, health) = server.json("GET", "/api/health", None);
    assert_eq!(status, 200);
    assert_eq!(health["ok"], true);
    assert_eq!(health["model_name"], "diffedit-shapes");
    assert_eq!(health["native_size"], 32);
    assert_eq!(health["defaults"]["mask_threshold"], 0.35, "the model's diffedit.json applies: {health}");

    let img = server.upload(&example());
    assert_eq!((img["width"].as_u64(), img["height"].as_u64()), (Some(128), Some(128)));
    let id = img["id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(server.get_bytes(&format!("/api/images/{id}"))[..8], *b"\x89PNG\r\n\x1a\n");

    // A full edit, then the same through `diffedit edit`: the same bytes.
    let target = "a red square on a gray background";
    let job = server.run_job("/api/edits", &request(id, target));
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["unet_evaluations"].as_u64(), Some(2 * N + K + 2 * S));
    assert_eq!(job["progress"], 1.0);
    let result = server.get_bytes(job["result"].as_str().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cli.png");
    let o = Command::new(env!("CARGO_BIN_EXE_diffedit"))
        .env("HF_HUB_OFFLINE", "1")
        .args(["edit", "-q", "--image"])
        .arg(common::repo_root().join("docs/example/shapes.png"))
        .args(["--source", "a green circle on a gray background", "--target", target])
        .args(["--steps", "10", "--mask-samples", "4", "--seed", "5", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), result, "the API's PNG differs from diffedit edit's");

    // The page's "copy as command" line, run as it is shown, writes the same bytes too.
    let command = job["command"].as_str().unwrap();
    assert!(
        command.starts_with("diffedit edit --image picture.png --source 'a green circle on a gray background'"),
        "{command}"
    );
    std::fs::write(dir.path().join("picture.png"), example()).unwrap();
    let shell = command.replacen("diffedit", env!("CARGO_BIN_EXE_diffedit"), 1) + " -q";
    let o =
        Command::new("sh").arg("-c").arg(&shell).current_dir(dir.path()).env("HF_HUB_OFFLINE", "1").output().unwrap();
    assert!(o.status.success(), "{shell}: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(dir.path().join("picture_edit.png")).unwrap(), result, "{command}");

    // Reuse: a mask with a new threshold costs nothing and is answered before the response.
    let mut r = request(id, target);
    r["mask_threshold"] = json!(0.2);
    let m = server.run_job("/api/masks", &r);
    assert_eq!((m["status"].as_str(), m["unet_evaluations"].as_u64()), (Some("done"), Some(0)), "{m}");
    let coverage_low = m["coverage"].as_f64().unwrap();
    r["mask_threshold"] = json!(0.6);
    let m2 = server.run_job("/api/masks", &r);
    assert_eq!(m2["unet_evaluations"].as_u64(), Some(0));
    assert!(m2["coverage"].as_f64().unwrap() < coverage_low, "{m2}");
    for key in ["mask", "heatmap", "overlay"] {
        let png = server.get_bytes(m2[key].as_str().unwrap());
        let picture = image::load_from_memory(&png).unwrap();
        assert_eq!((picture.width(), picture.height()), (128, 128), "{key} at the input's size");
    }
    // A new guidance: only the decoding (2S).
    let mut g = request(id, target);
    g["guidance"] = json!(4.0);
    assert_eq!(server.run_job("/api/edits", &g)["unet_evaluations"].as_u64(), Some(2 * S));
    // A second target: its half of the mask and its decoding (N + 2S).
    let second = server.run_job("/api/edits", &request(id, "a blue circle on a gray background"));
    assert_eq!(second["unet_evaluations"].as_u64(), Some(N + 2 * S), "{second}");
    // A painted mask: the decoding only (2S); the command names the mask.
    let painted = image::GrayImage::from_fn(128, 128, |x, y| {
        image::Luma([if (40..90).contains(&x) && (30..80).contains(&y) { 255 } else { 0 }])
    });
    let mut png = Vec::new();
    painted.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let (status, body, _) = server.call("POST", "/api/images?name=mask.png", "image/png", Some(&png));
    assert_eq!(status, 200);
    let mask_id = serde_json::from_slice::<Value>(&body).unwrap()["id"].as_str().unwrap().to_string();
    let mut p = request(id, target);
    p["mask"] = json!(mask_id);
    let pj = server.run_job("/api/edits", &p);
    assert_eq!(pj["unet_evaluations"].as_u64(), Some(2 * S), "{pj}");
    assert!(pj["command"].as_str().unwrap().ends_with("--mask mask.png"), "{}", pj["command"]);
    assert_eq!(pj["heatmap"], Value::Null, "no heat map for a painted mask");
    // On the 8x8 latent grid (16 px cells), cells more than half inside the painted rectangle:
    // columns 3-5 (48..96, the last 10/16 inside), rows 2-4 (32..80).
    assert_eq!(pj["coverage"].as_f64(), Some(9.0 / 64.0), "{pj}");

    // The event stream: the job's state at once, then every change, closing at the end.
    let (status, r) = server.json("POST", "/api/edits", Some(&request(id, "a yellow square on a gray background")));
    assert_eq!(status, 202);
    let job_id = r["job"].as_str().unwrap();
    let resp = ureq::get(&server.url(&format!("/api/jobs/{job_id}/events"))).call().unwrap();
    assert_eq!(resp.header("Content-Type"), Some("text/event-stream"));
    let mut text = String::new();
    resp.into_reader().read_to_string(&mut text).unwrap();
    let events: Vec<Value> =
        text.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(events.len() >= 3, "{text}");
    assert_eq!(events.last().unwrap()["status"], "done");
    let stages: Vec<&str> = events.iter().filter_map(|e| e["stage"].as_str()).collect();
    assert!(stages.contains(&"mask") && stages.contains(&"decoding"), "{stages:?}");
    let progress: Vec<f64> = events.iter().map(|e| e["progress"].as_f64().unwrap()).collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "progress never goes back: {progress:?}");
}

#[test]
fn cancel_stops_a_running_job_within_a_step_and_a_queued_one_at_once() {
    let server = Server::start(&["-q", "--queue", "2"]);
    let id = server.upload(&example())["id"].as_str().unwrap().to_string();
    let long = |t: &str| {
        let mut r = request(&id, t);
        r["steps"] = json!(200);
        r["mask_samples"] = json!(20);
        server.json("POST", "/api/edits", Some(&r)).1["job"].as_str().unwrap().to_string()
    };
    let running = long("a red square");
    let queued = long("a blue square");
    // Wait until the first runs.
    let clock = Instant::now();
    while server.json("GET", &format!("/api/jobs/{running}"), None).1["status"] != "running" {
        assert!(clock.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, q) = server.json("DELETE", &format!("/api/jobs/{queued}"), None);
    assert_eq!((status, q["status"].as_str()), (200, Some("cancelled")), "a queued job is cancelled at once");
    let clock = Instant::now();
    server.json("DELETE", &format!("/api/jobs/{running}"), None);
    let end = server.wait(&running);
    assert_eq!(end["status"], "cancelled", "{end}");
    assert!(clock.elapsed() < Duration::from_secs(5), "cancelled within a step, not {:?}", clock.elapsed());
    // The worker goes on with new work.
    assert_eq!(server.run_job("/api/edits", &request(&id, "a red square"))["status"], "done");
}

#[test]
fn limits_and_errors_answer_with_their_status_and_a_message() {
    let server = Server::start(&["-q", "--queue", "1", "--max-upload-mb", "1", "--max-megapixels", "0.03"]);
    let err = |(status, body, _): (u16, Vec<u8>, Option<String>)| -> (u16, String) {
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{status}: not JSON: {}", String::from_utf8_lossy(&body)));
        (status, v["error"].as_str().unwrap_or_else(|| panic!("no error message: {v}")).to_string())
    };
    // 413: over --max-upload-mb, refused from its Content-Length before any of the body is read:
    // the head alone gets the answer. (Sending the body through an HTTP client raced the server's
    // early close: the client's write could fail with a broken pipe before it read the 413.)
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "POST /api/images HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nContent-Length: 1100000\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{}", answer.lines().next().unwrap_or(""));
    let json = &answer[answer.find('{').unwrap_or(0)..=answer.rfind('}').unwrap_or(0)];
    let m = serde_json::from_str::<Value>(json).unwrap_or_else(|_| panic!("not JSON: {answer}"))["error"].to_string();
    assert!(m.contains("larger than this server takes (1 MB"), "{m}");
    // 413 too when the client sends no length (chunked): reading stops at the limit.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    write!(
        stream,
        "POST /api/images HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b'x'; 65536];
    let mut answer = String::new();
    for _ in 0..40 {
        if write!(stream, "{:x}\r\n", chunk.len())
            .and_then(|_| stream.write_all(&chunk))
            .and_then(|_| stream.write_all(b"\r\n"))
            .is_err()
        {
            break;
        }
    }
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{}", answer.lines().next().unwrap_or(""));
    // 415: not a picture.
    let (s, m) = err(server.call("POST", "/api/images", "text/plain", Some(b"hello, I am not a picture at all")));
    assert_eq!((s, m.as_str()), (415, "not a supported image format (PNG, JPEG, BMP, GIF, TIFF or WebP expected)"));
    // 422: more pixels than --max-megapixels, said from the header.
    let large = image::RgbImage::new(300, 200);
    let mut png = Vec::new();
    large.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
    let (s, m) = err(server.call("POST", "/api/images", "image/png", Some(&png)));
    assert_eq!(s, 422, "{m}");
    assert_eq!(
        m,
        "picture.png: the picture is 300x200 (60000 pixels); this server takes at most 30000 pixels (--max-megapixels)"
    );
    // 422: a broken PNG.
    let mut broken = example();
    broken.truncate(60);
    let (s, _) = err(server.call("POST", "/api/images", "image/png", Some(&broken)));
    assert_eq!(s, 422);

    let id = server.upload(&example())["id"].as_str().unwrap().to_string();
    // 400: malformed JSON, unknown fields, bad parameters (the message edit gives).
    let (s, m) = err(server.call("POST", "/api/edits", "application/json", Some(b"{\"image\": ")));
    assert_eq!(s, 400);
    assert!(m.starts_with("malformed JSON"), "{m}");
    let mut r = request(&id, "a red square");
    r["mask_threshold"] = json!(1.5);
    let (s, v) = server.json("POST", "/api/edits", Some(&r));
    assert_eq!((s, v["error"].as_str()), (400, Some("--mask-threshold must be in [0, 1], got 1.5")));
    let mut r = request(&id, "");
    r["target"] = json!("  ");
    let (s, v) = server.json("POST", "/api/masks", Some(&r));
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("--target prompt is empty: describe the picture as it should become"))
    );
    let mut r = request(&id, "a red square");
    r["path"] = json!("/etc/passwd");
    let (s, v) = server.json("POST", "/api/edits", Some(&r));
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().starts_with("unknown field `path`"), "{v}");
    // 404: unknown ids, never a path.
    let unknown = "0123456789abcdef0123456789abcdef";
    for path in [
        format!("/api/jobs/{unknown}"),
        format!("/api/images/{unknown}"),
        format!("/api/files/{unknown}.png"),
        "/api/files/..%2F..%2Fetc%2Fpasswd".to_string(),
        "/api/nothing".to_string(),
    ] {
        let (s, v) = server.json("GET", &path, None);
        assert_eq!(s, 404, "{path}: {v}");
        assert!(v["error"].is_string());
    }
    let (s, v) = server.json("POST", "/api/edits", Some(&request(unknown, "a red square")));
    assert_eq!((s, v["error"].as_str()), (404, Some("no such image (unknown or expired id)")));

    // 429 with Retry-After once the queue (1) is full behind a running job.
    let mut slow = request(&id, "a red square");
    slow["steps"] = json!(200);
    let mut statuses = Vec::new();
    let mut retry = None;
    for k in 0..4 {
        let mut r = slow.clone();
        r["seed"] = json!(100 + k);
        let (s, body, ra) = server.call("POST", "/api/edits", "application/json", Some(r.to_string().as_bytes()));
        statuses.push(s);
        if s == 429 {
            retry = ra;
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert!(v["error"].as_str().unwrap().contains("queue is full"), "{v}");
        } else {
            let v: Value = serde_json::from_slice(&body).unwrap();
            server.json("DELETE", &format!("/api/jobs/{}", v["job"].as_str().unwrap()), None);
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(retry.as_deref().is_some_and(|r| r.parse::<u64>().is_ok()), "Retry-After: {retry:?}");

    // 403: a Host that is not a loopback name (DNS rebinding).
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    write!(stream, "GET /api/health HTTP/1.1\r\nHost: evil.example:{}\r\nConnection: close\r\n\r\n", server.port())
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("DNS rebinding"), "{answer}");
    for host in ["localhost", "127.0.0.1"] {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port())).unwrap();
        write!(stream, "GET /api/health HTTP/1.1\r\nHost: {host}:{}\r\nConnection: close\r\n\r\n", server.port())
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{host}: {answer}");
    }
}

#[test]
fn a_token_guards_the_api_and_other_addresses_need_one() {
    // Binding beyond loopback without a token is refused before anything loads.
    let o = Command::new(env!("CARGO_BIN_EXE_diffedit"))
        .env_remove("DIFFEDIT_TOKEN")
        .args(["serve", "--host", "0.0.0.0", "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("error: --host 0.0.0.0 is reachable from other machines: give a --token"), "{stderr}");

    let server = Server::start(&["-q", "--token", "s3cret"]);
    assert_eq!(server.token.as_deref(), Some("s3cret"), "the printed address carries the token");
    let plain = |path: &str| match ureq::get(&server.url(path)).call() {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(plain("/api/health"), 401);
    assert_eq!(plain("/api/health?token=wrong"), 401);
    assert_eq!(plain("/api/health?token=s3cret"), 200);
    assert_eq!(plain("/"), 200, "the page itself is public; it reads the token from its address");
    let (s, v) = server.json("GET", "/api/health", None);
    assert_eq!((s, v["ok"].as_bool()), (200, Some(true)), "with Authorization: Bearer");
    let r = ureq::post(&server.url("/api/images")).send_bytes(&example());
    assert!(matches!(r, Err(ureq::Error::Status(401, _))));
}

#[test]
fn the_page_and_its_assets_come_from_the_binary() {
    let server = Server::start(&["-q"]);
    let resp = ureq::get(&server.url("/")).call().unwrap();
    assert!(resp.header("Content-Security-Policy").unwrap().contains("default-src 'self'"));
    let html = resp.into_string().unwrap();
    assert!(html.contains("<script src=\"/assets/app.js\"") || html.contains("/assets/app.js"), "{html}");
    for (path, kind) in [("/assets/app.js", "text/javascript"), ("/assets/style.css", "text/css")] {
        let r = ureq::get(&server.url(path)).call().unwrap();
        assert!(r.header("Content-Type").unwrap().starts_with(kind));
    }
    // Nothing the page loads comes from elsewhere.
    for asset in ["index.html", "app.js", "style.css"] {
        let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server/assets").join(asset))
            .unwrap();
        assert!(!text.contains("https://") && !text.contains("http://"), "{asset} names an outside address");
    }
}
