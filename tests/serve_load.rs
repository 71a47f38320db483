//! `diffedit serve` under load, on 127.0.0.1 only, bounded in count and time: 32 clients at once
//! send 640 mixed requests (health, uploads, bad uploads, malformed JSON, edits beyond the
//! queue's size, cancels) within 60 s. Every answer must be one of the documented ones, the
//! server must be alive and answering at the end, every accepted job must end (done or
//! cancelled), and the server's peak memory must stay under the stated bound. The figures are
//! printed for BENCHMARKS.md (no time is asserted).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::serve::Server;
use serde_json::{json, Value};

const CLIENTS: usize = 32;
const PER_CLIENT: usize = 20;
/// The server's peak resident memory must stay below this (model, stage cache, stores, runtime).
const MEMORY_BOUND_MB: f64 = 1024.0;

#[derive(Default)]
struct Tally {
    /// (kind, status) -> count
    statuses: BTreeMap<(String, u16), usize>,
    accepted_jobs: Vec<String>,
    unexpected: Vec<String>,
}

fn status_of(r: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match r {
        Ok(resp) => (resp.status(), resp.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, resp)) => (s, resp.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

#[test]
fn thirty_two_clients_and_mixed_requests_get_only_documented_answers() {
    let mut server = Server::start(&["-q", "--queue", "4", "--cache-mb", "256", "--store-mb", "128"]);
    let picture = std::fs::read(common::repo_root().join("docs/example/shapes.png")).unwrap();
    let base = server.base.clone();
    let image_id = server.upload(&picture)["id"].as_str().unwrap().to_string();

    // The cheap path alone: health from all clients for about 2 s.
    let clock = Instant::now();
    let done = Arc::new(Mutex::new(0usize));
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            let (base, done) = (&base, done.clone());
            s.spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
                while clock.elapsed() < Duration::from_secs(2) {
                    let (status, _) = status_of(agent.get(&format!("{base}/api/health")).call());
                    assert_eq!(status, 200);
                    *done.lock().unwrap() += 1;
                }
            });
        }
    });
    let health_rps = *done.lock().unwrap() as f64 / clock.elapsed().as_secs_f64();

    // The mixed load.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clock = Instant::now();
    std::thread::scope(|s| {
        for client in 0..CLIENTS {
            let (base, tally, picture, image_id) = (&base, tally.clone(), &picture, &image_id);
            s.spawn(move || {
                let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
                let mut mine: Vec<String> = Vec::new();
                for k in 0..PER_CLIENT {
                    if clock.elapsed() > Duration::from_secs(50) {
                        break;
                    }
                    let kind = ["health", "upload", "bad-upload", "bad-json", "edit", "cancel", "edit", "unknown-job"][(client + k) % 8];
                    let (status, body) = match kind {
                        "health" => status_of(agent.get(&format!("{base}/api/health")).call()),
                        "upload" => status_of(agent.post(&format!("{base}/api/images")).send_bytes(picture)),
                        "bad-upload" => status_of(agent.post(&format!("{base}/api/images")).send_bytes(b"\x89PNG but not really")),
                        "bad-json" => status_of(
                            agent.post(&format!("{base}/api/edits")).set("Content-Type", "application/json").send_string("{\"image\": [1, 2"),
                        ),
                        "edit" => {
                            let r = json!({"image": image_id, "source": "a green circle on a gray background",
                                           "target": format!("a shape number {client}-{k}"), "steps": 10, "mask_samples": 2, "seed": k});
                            status_of(agent.post(&format!("{base}/api/edits")).send_json(r))
                        }
                        "cancel" => match mine.pop() {
                            Some(job) => status_of(agent.delete(&format!("{base}/api/jobs/{job}")).call()),
                            None => status_of(agent.delete(&format!("{base}/api/jobs/{}", "f".repeat(32))).call()),
                        },
                        _ => status_of(agent.get(&format!("{base}/api/jobs/{}", "0".repeat(32))).call()),
                    };
                    let documented: &[u16] = match kind {
                        "health" => &[200],
                        "upload" => &[200],
                        "bad-upload" => &[415, 422],
                        "bad-json" => &[400],
                        "edit" => &[202, 429],
                        "cancel" => &[200, 404],
                        _ => &[404],
                    };
                    let mut t = tally.lock().unwrap();
                    *t.statuses.entry((kind.to_string(), status)).or_default() += 1;
                    if !documented.contains(&status) {
                        t.unexpected.push(format!("{kind}: {status} {body}"));
                    }
                    if kind == "edit" && status == 202 {
                        let job = serde_json::from_str::<Value>(&body).unwrap()["job"].as_str().unwrap().to_string();
                        t.accepted_jobs.push(job.clone());
                        mine.push(job);
                    }
                    if status != 200 && status != 202 {
                        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                        if !v["error"].is_string() {
                            t.unexpected.push(format!("{kind}: {status} without an error message: {body}"));
                        }
                    }
                }
            });
        }
    });
    let mixed_s = clock.elapsed().as_secs_f64();
    let tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    let total: usize = tally.statuses.values().sum();
    assert!(tally.unexpected.is_empty(), "undocumented answers: {:#?}", tally.unexpected);
    assert!(total >= 500, "only {total} requests");
    assert!(mixed_s < 60.0, "the load must stop by itself within 60 s");
    assert!(tally.statuses.contains_key(&("edit".to_string(), 429)), "the queue never filled: {:?}", tally.statuses);

    // Every accepted job ends: every other one still waiting is cancelled, the rest run to the
    // end, and all reach a final state.
    for job in tally.accepted_jobs.iter().step_by(2) {
        server.json("DELETE", &format!("/api/jobs/{job}"), None);
    }
    let mut finals: BTreeMap<String, usize> = BTreeMap::new();
    for job in &tally.accepted_jobs {
        let j = server.wait(job);
        *finals.entry(j["status"].as_str().unwrap().to_string()).or_default() += 1;
        assert!(j["status"] == "done" || j["status"] == "cancelled", "{j}");
    }
    // Alive and answering.
    assert!(server.alive(), "the server died: {}", server.log.lock().unwrap());
    let (status, health) = server.json("GET", "/api/health", None);
    assert_eq!(status, 200);
    assert_eq!(health["queue"]["length"], 0, "{health}");
    // ... and computing: an edit after the storm runs to the end.
    let after = server.run_job(
        "/api/edits",
        &json!({"image": image_id, "source": "a green circle on a gray background", "target": "a red square",
                "steps": 10, "mask_samples": 2}),
    );
    assert_eq!(after["status"], "done", "{after}");
    let peak = server.peak_rss_mb();
    eprintln!(
        "load: {total} mixed requests from {CLIENTS} clients in {mixed_s:.1} s ({:.0} req/s); health alone {health_rps:.0} req/s; \
         answers {:?}; jobs {finals:?}; server peak RSS {peak:.0} MB; held {}",
        total as f64 / mixed_s,
        tally.statuses,
        health["held"]
    );
    assert!(peak > 0.0 && peak < MEMORY_BOUND_MB, "peak RSS {peak:.0} MB over the {MEMORY_BOUND_MB} MB bound");
}
