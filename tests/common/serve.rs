//! A `diffedit serve` process on 127.0.0.1 for the tests, and a small HTTP client on ureq.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Server {
    pub child: Child,
    pub base: String,
    pub token: Option<String>,
    /// What the server wrote on stderr after its address.
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    /// Starts `diffedit serve --port 0 ARGS` (bundled model, offline) and waits for its address.
    pub fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_diffedit"))
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("DIFFEDIT_TOKEN")
            .args(["serve", "--port", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("diffedit serve starts");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let clock = Instant::now();
        let mut seen = String::new();
        let base = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("diffedit serve exited before listening: {seen}");
            }
            seen.push_str(&line);
            if let Some(rest) = line.trim().strip_prefix("listening on ") {
                break rest.to_string();
            }
            assert!(clock.elapsed() < Duration::from_secs(120), "no address after 120 s: {seen}");
        };
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = stderr.read_to_string(&mut rest);
            sink.lock().unwrap().push_str(&rest);
        });
        let (base, token) = match base.split_once("/?token=") {
            Some((b, t)) => (b.to_string(), Some(t.to_string())),
            None => (base, None),
        };
        Server { child, base, token, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn port(&self) -> u16 {
        self.base.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn auth(&self, r: ureq::Request) -> ureq::Request {
        match &self.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    /// (status, body) of any request; `body` None sends none.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> (u16, Vec<u8>, Option<String>) {
        let r = self.auth(ureq::request(method, &self.url(path)).timeout(Duration::from_secs(60)));
        let r = r.set("Content-Type", content_type);
        let result = match body {
            Some(b) => r.send_bytes(b),
            None => r.call(),
        };
        let resp = match result {
            Ok(resp) => resp,
            Err(ureq::Error::Status(_, resp)) => resp,
            Err(e) => panic!("{method} {path}: {e}"),
        };
        let status = resp.status();
        let retry = resp.header("Retry-After").map(str::to_string);
        let mut bytes = Vec::new();
        resp.into_reader().read_to_end(&mut bytes).unwrap();
        (status, bytes, retry)
    }

    pub fn json(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let text = body.map(|b| b.to_string());
        let (status, bytes, _) = self.call(method, path, "application/json", text.as_deref().map(str::as_bytes));
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub fn upload(&self, bytes: &[u8]) -> Value {
        let (status, body, _) = self.call("POST", "/api/images?name=picture.png", "image/png", Some(bytes));
        assert_eq!(status, 200, "upload: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// Posts a job and waits for it to end; returns its final JSON.
    pub fn run_job(&self, endpoint: &str, request: &Value) -> Value {
        let (status, r) = self.json("POST", endpoint, Some(request));
        assert_eq!(status, 202, "{endpoint}: {r}");
        self.wait(r["job"].as_str().unwrap())
    }

    pub fn wait(&self, job: &str) -> Value {
        let clock = Instant::now();
        loop {
            let (status, j) = self.json("GET", &format!("/api/jobs/{job}"), None);
            assert_eq!(status, 200, "{j}");
            if ["done", "failed", "cancelled"].contains(&j["status"].as_str().unwrap()) {
                return j;
            }
            assert!(clock.elapsed() < Duration::from_secs(300), "job {job} did not end: {j}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn get_bytes(&self, path: &str) -> Vec<u8> {
        let (status, bytes, _) = self.call("GET", path, "application/octet-stream", None);
        assert_eq!(status, 200, "GET {path}");
        bytes
    }

    /// Peak resident memory of the server process so far, in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().map(|s| s.is_none()).unwrap_or(false)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
