//! The page in a real browser: Debian's headless Chromium driven through WebDriver
//! (chromedriver) against `diffedit serve` with the bundled model. A person's loop: open
//! `docs/example/shapes.png`, type the prompts, find the mask, move the threshold slider (the
//! coverage changes and the job cost 0 UNet evaluations), paint a stroke, edit, and download the
//! result, which must be the API's bytes. Screenshots go to target/tmp/browser/.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::serve::Server;
use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_chromedriver() -> (Driver, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "chromedriver: {e}; install Debian's chromium and chromium-driver (tools/test.sh does it with apt-get)"
            )
        });
    let driver = Driver(child);
    let clock = Instant::now();
    while ureq::get(&format!("http://127.0.0.1:{port}/status")).call().is_err() {
        assert!(clock.elapsed() < Duration::from_secs(30), "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (driver, port)
}

async fn browser(port: u16, profile: &std::path::Path) -> Client {
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,860",
    ];
    let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), json!({ "binary": "/usr/bin/chromium", "args": args }));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session")
}

async fn text(c: &Client, id: &str) -> String {
    c.find(Locator::Id(id)).await.unwrap_or_else(|e| panic!("#{id}: {e}")).text().await.unwrap()
}

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// Waits until the page is idle (`data-busy="false"`) and `ready` holds.
async fn wait_until(c: &Client, what: &str, timeout: Duration, ready: impl Fn(&Value) -> bool, probe: &str) -> Value {
    let clock = Instant::now();
    loop {
        let busy = js(c, "return document.body.dataset.busy").await;
        let v = js(c, probe).await;
        if busy == "false" && ready(&v) {
            return v;
        }
        if clock.elapsed() > timeout {
            let error = js(c, "return document.getElementById('error').textContent").await;
            panic!("{what}: not ready after {timeout:?}: {v} (busy {busy}, error {error})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn shot(c: &Client, dir: &std::path::Path, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn type_into(c: &Client, id: &str, value: &str) {
    let e = c.find(Locator::Id(id)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(value).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_finds_the_mask_moves_the_threshold_paints_and_edits() {
    let server = Server::start(&["-q"]);
    let (_driver, port) = start_chromedriver();
    let shots: PathBuf = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let profile = tempfile::tempdir().unwrap();
    let c = browser(port, profile.path()).await;

    c.goto(&server.url("/")).await.unwrap();
    let name = wait_until(
        &c,
        "the model's name",
        Duration::from_secs(30),
        |v| v == "diffedit-shapes",
        "return document.getElementById('model-name').textContent.trim()",
    )
    .await;
    assert_eq!(name, "diffedit-shapes");
    assert!(text(&c, "native-size").await.contains("32"), "the native size is shown");
    shot(&c, &shots, "01-empty").await;

    // Open the picture through the file input, as the "Open…" button does.
    let picture = common::repo_root().join("docs/example/shapes.png");
    c.find(Locator::Id("file")).await.unwrap().send_keys(&picture.display().to_string()).await.unwrap();
    wait_until(
        &c,
        "the upload",
        Duration::from_secs(30),
        |v| v.as_str().is_some_and(|s| s.contains("128")),
        "return document.getElementById('picture-info').textContent",
    )
    .await;
    type_into(&c, "source", "a green circle on a gray background").await;
    type_into(&c, "target", "a red square on a gray background").await;
    c.find(Locator::Css("#advanced summary")).await.unwrap().click().await.unwrap();
    type_into(&c, "steps", "10").await;
    type_into(&c, "mask_samples", "4").await;

    // Find the mask: 2N = 8 UNet evaluations.
    c.find(Locator::Id("find-mask")).await.unwrap().click().await.unwrap();
    wait_until(
        &c,
        "the mask",
        Duration::from_secs(60),
        |v| v == "done",
        "return document.getElementById('status').textContent.trim()",
    )
    .await;
    let coverage_before = text(&c, "coverage").await;
    assert!(coverage_before.contains('%'), "{coverage_before}");
    let evals = text(&c, "job-evals").await;
    assert!(evals.contains("8 UNet evaluations"), "{evals}");
    shot(&c, &shots, "02-mask").await;

    // The threshold slider, moved with the keyboard: the coverage changes at once, for free.
    let slider = c.find(Locator::Id("mask_threshold")).await.unwrap();
    slider.send_keys(&"\u{E014}".repeat(15)).await.unwrap(); // ArrowRight: +0.15
    let coverage_after = wait_until(
        &c,
        "the new coverage",
        Duration::from_secs(30),
        |v| v.as_str().is_some_and(|s| s != coverage_before),
        "return document.getElementById('coverage').textContent",
    )
    .await;
    let evals = text(&c, "job-evals").await;
    assert!(evals.contains(" 0 UNet evaluations"), "re-thresholding must cost nothing: {evals}");
    eprintln!("coverage {coverage_before} -> {coverage_after}; {evals}");
    shot(&c, &shots, "03-threshold").await;

    // A brush stroke across the canvas.
    let canvas = c.find(Locator::Id("mask-canvas")).await.unwrap();
    let stroke = MouseActions::new("mouse".into())
        .then(PointerAction::MoveToElement { element: canvas, duration: None, x: -60.0, y: 60.0 })
        .then(PointerAction::Down { button: MOUSE_BUTTON_LEFT })
        .then(PointerAction::MoveBy { duration: Some(Duration::from_millis(200)), x: 50.0, y: 0.0 })
        .then(PointerAction::MoveBy { duration: Some(Duration::from_millis(200)), x: 50.0, y: 10.0 })
        .then(PointerAction::Up { button: MOUSE_BUTTON_LEFT });
    c.perform_actions(stroke).await.unwrap();
    let kind = js(&c, "return document.getElementById('mask-source').dataset.kind").await;
    assert_eq!(kind, "painted", "the stroke marks the mask as painted");
    shot(&c, &shots, "04-painted").await;

    // Edit with the painted mask.
    c.find(Locator::Id("edit")).await.unwrap().click().await.unwrap();
    wait_until(
        &c,
        "the edit",
        Duration::from_secs(120),
        |v| v == "done",
        "return document.getElementById('status').textContent.trim()",
    )
    .await;
    let evals = text(&c, "job-evals").await;
    // No mask is computed for a painted mask: the inversion (K = 7) and the decoding (2S = 16).
    assert!(evals.contains("edit: 23 UNet evaluations"), "{evals}");
    shot(&c, &shots, "05-result").await;

    // The download is the API's result.
    let href = c.find(Locator::Id("download")).await.unwrap().attr("href").await.unwrap().expect("a download link");
    let href = href.strip_prefix(&server.base).unwrap_or(&href).to_string();
    let downloaded = server.get_bytes(&href);
    let job_id = js(&c, "return document.querySelector('#history li').dataset.job").await;
    let (status, job) = server.json("GET", &format!("/api/jobs/{}", job_id.as_str().unwrap()), None);
    assert_eq!(status, 200);
    assert_eq!(job["status"], "done");
    assert_eq!(
        downloaded,
        server.get_bytes(job["result"].as_str().unwrap()),
        "the download differs from the API's PNG"
    );
    let picture = image::load_from_memory(&downloaded).unwrap();
    assert_eq!((picture.width(), picture.height()), (128, 128));
    let command = text(&c, "history").await;
    assert!(command.contains("diffedit edit --image shapes.png") && command.contains("--mask"), "{command}");

    // An error is shown in words, not as a blank page.
    type_into(&c, "steps", "0").await;
    c.find(Locator::Id("edit")).await.unwrap().click().await.unwrap();
    let error = wait_until(
        &c,
        "the error",
        Duration::from_secs(30),
        |v| v.as_str().is_some_and(|s| !s.trim().is_empty()),
        "return document.getElementById('error').textContent",
    )
    .await;
    eprintln!("error shown: {error}");
    shot(&c, &shots, "06-error").await;
    c.close().await.unwrap();
}
