//! `diffedit batch` on the bundled model: a 14-row manifest (several pictures, sources and
//! targets, five bad rows) run whole in one process, as 3 shards in 3 concurrent processes (one
//! per way of naming the shard: the flag, a Slurm array's variables, a Kubernetes Indexed Job's
//! index), with a shard killed by SIGKILL part-way and rerun, and as a 3-task job array on a real
//! one-node Slurm cluster. The pictures must be byte-identical every time, each good row must have
//! exactly one `ok` line and each bad row an `error` line with its message, and reruns must redo
//! only what is missing.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

fn diffedit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_diffedit"));
    c.env("HF_HUB_OFFLINE", "1");
    for v in ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "JOB_COMPLETION_INDEX"] {
        c.env_remove(v);
    }
    c
}

/// Small and quick: 10 steps, 4 mask samples (31 UNet evaluations for a fresh row).
const FLAGS: [&str; 5] = ["--steps", "10", "--mask-samples", "4", "-q"];

/// The good rows' ids, and the bad rows' ids with (part of) their message.
const GOOD: [&str; 9] =
    ["p0-red", "p0-circle", "p0-blue", "p1-blue", "p1-seed3", "p2-green", "p2-guided", "p3-half", "p0-other-source"];
const BAD: [(&str, &str); 5] = [
    ("missing", "missing.png: No such file or directory"),
    ("broken", "broken.png: not a supported image format"),
    ("no-target", "target prompt is empty"),
    ("threshold", "mask_threshold must be in [0, 1], got 2"),
    ("unknown", "unknown field `treshold`"),
];

/// Four synthetic scenes and the manifest, in a folder that lives as long as the test binary.
fn workspace() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // Under cargo's temporary folder for tests, emptied by the next run.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("batch_cli");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let o = diffedit()
            .args(["scenes", "--out"])
            .arg(dir.join("scenes"))
            .args(["--count", "4", "--seed", "9"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::write(dir.join("broken.png"), b"this is not a picture").unwrap();
        let row = |id: &str, image: &str, source: &str, target: &str, extra: &str| {
            format!(r#"{{"id": "{id}", "image": "{image}", "source": "{source}", "target": "{target}"{extra}}}"#)
        };
        let (p0, p1, p2, p3) = (
            "scenes/images/000000.png",
            "scenes/images/000001.png",
            "scenes/images/000002.png",
            "scenes/images/000003.png",
        );
        let s0 = "a yellow triangle on a white background";
        let s1 = "a red square and a yellow cross on a white background";
        let rows = [
            row("p0-red", p0, s0, "a red triangle on a white background", ""),
            row("missing", "missing.png", s0, "a red triangle", ""),
            row("p1-blue", p1, s1, "a blue square and a yellow cross on a white background", ""),
            row("p0-circle", p0, s0, "a yellow circle on a white background", r#", "mask_threshold": 0.3"#),
            row("p2-green", p2, "a picture of shapes", "a picture of green shapes", ""),
            row("broken", "broken.png", s0, "a red triangle", ""),
            row("p0-blue", p0, s0, "a blue triangle on a white background", ""),
            row("p1-seed3", p1, s1, "a red square and a green cross on a white background", r#", "seed": 3"#),
            row("no-target", p0, s0, " ", ""),
            row("p2-guided", p2, "a picture of shapes", "a picture of red shapes", r#", "guidance": 5"#),
            row("threshold", p1, s1, "a red circle", r#", "mask_threshold": 2"#),
            row("p3-half", p3, "a picture", "a picture of a blue square", r#", "encode_ratio": 0.5"#),
            row("unknown", p3, "a picture", "a picture of a cross", r#", "treshold": 0.2"#),
            row("p0-other-source", p0, "a triangle on a white background", "a square on a white background", ""),
        ];
        std::fs::write(dir.join("manifest.jsonl"), rows.join("\n") + "\n").unwrap();
        dir
    })
}

fn manifest() -> PathBuf {
    workspace().join("manifest.jsonl")
}

/// Runs `diffedit batch MANIFEST --out DIR FLAGS extra` and returns its output.
fn batch(out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = diffedit();
    c.arg("batch").arg(manifest()).arg("--out").arg(out).args(FLAGS).arg("--json").args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn summary(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("no JSON summary ({e}): {}", String::from_utf8_lossy(&o.stderr)))
}

/// Every picture in `dir`, by name, with its bytes.
fn pictures(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name()?.to_str()?.to_string();
            (name.ends_with(".png") && !name.starts_with('.')).then(|| (name, std::fs::read(&p).unwrap()))
        })
        .collect()
}

/// Trusted result lines of every results file in `dir`.
fn result_lines(dir: &Path) -> Vec<Value> {
    let mut lines = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("results") && name.ends_with(".jsonl") {
            let text = std::fs::read_to_string(&p).unwrap();
            let complete = match text.rfind('\n') {
                Some(i) => &text[..i],
                None => "",
            };
            lines.extend(complete.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()));
        }
    }
    lines
}

/// Every good row has exactly one `ok` line, every bad row at least one `error` line with its
/// message and no `ok`.
fn check_lines(dir: &Path) {
    let lines = result_lines(dir);
    let mut by_id: HashMap<String, Vec<&Value>> = HashMap::new();
    for l in &lines {
        by_id.entry(l["id"].as_str().unwrap().to_string()).or_default().push(l);
    }
    for id in GOOD {
        let ok: Vec<_> = by_id.get(id).map(|v| v.iter().filter(|l| l["status"] == "ok").collect()).unwrap_or_default();
        assert_eq!(ok.len(), 1, "{}: row {id} has {} ok lines", dir.display(), ok.len());
        let l = ok[0];
        assert_eq!(l["output"], format!("{id}.png"));
        assert!(l["mask_coverage"].as_f64().unwrap() > 0.0);
        assert!(l["params"]["params"]["steps"] == 10, "{l}");
    }
    for (id, message) in BAD {
        let rows = by_id.get(id).unwrap_or_else(|| panic!("{}: no line for bad row {id}", dir.display()));
        assert!(rows.iter().all(|l| l["status"] == "error"), "{id}: {rows:?}");
        let error = rows[0]["error"].as_str().unwrap();
        assert!(error.contains(message), "{id}: {error:?} does not say {message:?}");
    }
    assert_eq!(by_id.len(), GOOD.len() + BAD.len());
}

/// The whole manifest in one process (the reference the other runs must equal).
fn reference() -> &'static (PathBuf, BTreeMap<String, Vec<u8>>) {
    static REF: OnceLock<(PathBuf, BTreeMap<String, Vec<u8>>)> = OnceLock::new();
    REF.get_or_init(|| {
        let out = workspace().join("whole");
        // Another test's attempt may have panicked half-way: start clean.
        let _ = std::fs::remove_dir_all(&out);
        let o = batch(&out, &[], &[]);
        assert_eq!(o.status.code(), Some(1), "bad rows make the exit status 1");
        let s = summary(&o);
        assert_eq!((s["rows"].as_u64(), s["ok"].as_u64(), s["failed"].as_u64()), (Some(14), Some(9), Some(5)), "{s}");
        // Reuse inside the group of picture 0 and its source: the first row pays 2N + K + 2S = 31,
        // the next two N + 2S = 20 each (same seed, so the same latents); rows of other groups or
        // seeds pay in full, or less (p3-half: 2N + 4 + 2*5 = 22).
        let evals: u64 = [31, 20, 20, 31, 31, 31, 20, 22, 31].iter().sum();
        assert_eq!(s["unet_evaluations"].as_u64(), Some(evals), "{s}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains("5 of 14 rows failed") && stderr.contains("missing (line 2)"), "{stderr}");
        check_lines(&out);
        let pics = pictures(&out);
        assert_eq!(pics.len(), GOOD.len());
        (out, pics)
    })
}

#[test]
fn three_concurrent_shards_and_a_killed_shard_give_the_same_pictures() {
    let (_, expected) = reference();
    // Three processes at once, each naming its shard another way.
    let out = workspace().join("sharded");
    let spawn = |extra: &[&str], env: &[(&str, &str)]| -> Child {
        let mut c = diffedit();
        c.arg("batch").arg(manifest()).arg("--out").arg(&out).args(FLAGS).arg("--json").args(extra);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let children = [
        spawn(&["--shard", "1/3"], &[]),
        spawn(&[], &[("SLURM_ARRAY_TASK_ID", "6"), ("SLURM_ARRAY_TASK_COUNT", "3"), ("SLURM_ARRAY_TASK_MIN", "5")]),
        spawn(&["--shards", "3"], &[("JOB_COMPLETION_INDEX", "2")]),
    ];
    let mut rows = 0;
    for (k, child) in children.into_iter().enumerate() {
        let o = child.wait_with_output().unwrap();
        let s = summary(&o);
        assert_eq!(s["shard"], format!("{}/3", k + 1), "{s}");
        rows += s["rows"].as_u64().unwrap();
    }
    assert_eq!(rows, 14, "the shards split the manifest");
    for k in 1..=3 {
        assert!(out.join(format!("results-{k}-of-3.jsonl")).is_file(), "each shard writes its own results file");
    }
    assert!(!out.join("results.jsonl").exists());
    check_lines(&out);
    assert_eq!(&pictures(&out), expected, "sharded pictures differ from the whole run's");

    // `batch status` combines the shards.
    let o = diffedit().args(["batch", "status"]).arg(&out).arg("--json").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let st = summary(&o);
    assert_eq!((st["ok"].as_u64(), st["failed"].as_u64(), st["pending"].as_u64()), (Some(9), Some(5), Some(0)), "{st}");
    assert_eq!(st["shards"].as_array().unwrap().len(), 3);
    assert!(st["failures"].as_array().unwrap().iter().any(|f| f["id"] == "broken"));

    // Shard 1 of 3 killed part-way (after its first result line), then rerun.
    let out = workspace().join("killed");
    let mut child = diffedit()
        .arg("batch")
        .arg(manifest())
        .arg("--out")
        .arg(&out)
        .args(FLAGS)
        .args(["--shard", "1/3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let results = out.join("results-1-of-3.jsonl");
    let clock = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&results).map(|t| t.matches('\n').count()).unwrap_or(0);
        if lines >= 1 || clock.elapsed() > Duration::from_secs(120) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let ok_before = result_lines(&out).iter().filter(|l| l["status"] == "ok").count() as u64;
    let o = batch(&out, &["--shard", "1/3"], &[]);
    let s = summary(&o);
    assert_eq!(
        s["skipped"].as_u64(),
        Some(ok_before),
        "the rerun skips exactly the rows finished before the kill: {s}"
    );
    assert_eq!(
        s["ok"].as_u64().unwrap() + s["failed"].as_u64().unwrap() + ok_before,
        s["rows"].as_u64().unwrap(),
        "and redoes the rest: {s}"
    );
    for shard in ["2/3", "3/3"] {
        batch(&out, &["--shard", shard], &[]);
    }
    check_lines(&out);
    assert_eq!(&pictures(&out), expected, "pictures after a kill and a rerun differ from the whole run's");
}

#[test]
fn a_torn_last_result_line_is_ignored_and_its_row_redone() {
    let (whole, expected) = reference();
    let out = workspace().join("torn");
    copy_dir(whole, &out);
    // Cut the last line in the middle, as a kill during its write would.
    let path = out.join("results.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let body = text.trim_end_matches('\n');
    let last_start = body.rfind('\n').map_or(0, |i| i + 1);
    let last: Value = serde_json::from_str(&body[last_start..]).unwrap();
    let cut = last_start + (body.len() - last_start) / 2;
    std::fs::write(&path, &text[..cut]).unwrap();
    let torn_id = last["id"].as_str().unwrap().to_string();

    let o = batch(&out, &[], &[]);
    let s = summary(&o);
    let torn_was_good = last["status"] == "ok";
    let expected_skipped = if torn_was_good { 8 } else { 9 };
    assert_eq!(s["skipped"].as_u64(), Some(expected_skipped), "only the torn row ({torn_id}) is redone: {s}");
    check_lines(&out);
    assert_eq!(&pictures(&out), expected);
    let st = summary(&diffedit().args(["batch", "status"]).arg(&out).arg("--json").output().unwrap());
    assert_eq!(st["ignored_lines"].as_u64(), Some(1), "{st}");

    // A rerun of a finished manifest does no work at all.
    let s = summary(&batch(&out, &[], &[]));
    assert_eq!((s["skipped"].as_u64(), s["unet_evaluations"].as_u64()), (Some(9), Some(0)), "{s}");
    // A changed parameter is a different row: it is redone.
    let s = summary(&batch(&out, &["--guidance", "6"], &[]));
    assert_eq!(s["skipped"].as_u64(), Some(1), "only p2-guided (its own guidance) keeps its inputs: {s}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// A one-node Slurm cluster from Debian's packages (munged, slurmctld, slurmd), started in a
/// private folder with its own ports, stopped when dropped.
struct Slurm {
    dir: PathBuf,
    munged_pid: Option<u32>,
}

impl Slurm {
    fn start() -> Slurm {
        for tool in ["munged", "slurmctld", "slurmd", "sbatch", "scontrol", "runuser"] {
            assert!(
                which(tool).is_some(),
                "`{tool}` is missing: install Debian's slurmctld slurmd slurm-client munge \
                 (tools/test.sh and .ci/run do it with apt-get)"
            );
        }
        assert!(is_root(), "the Slurm test starts slurmd, which must run as root (tools/test.sh runs as CI does)");
        let dir = tempfile::Builder::new().prefix("diffedit-slurm-").tempdir_in("/tmp").unwrap().keep();
        let run = |c: &mut Command| {
            let o = c.output().unwrap();
            assert!(o.status.success(), "{c:?}: {}", String::from_utf8_lossy(&o.stderr));
        };
        // munged insists on a key and folders owned by its user, and a socket folder all can enter.
        for sub in ["munge", "socket", "state", "spool"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let mut key = vec![0u8; 1024];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut key).unwrap();
        std::fs::write(dir.join("munge/munge.key"), key).unwrap();
        for sub in ["munge", "socket"] {
            run(Command::new("chown").args(["-R", "munge:munge"]).arg(dir.join(sub)));
        }
        run(Command::new("chmod").arg("0700").arg(dir.join("munge")));
        run(Command::new("chmod").arg("0400").arg(dir.join("munge/munge.key")));
        run(Command::new("chmod").arg("0755").arg(dir.join("socket")).arg(&dir));
        let socket = dir.join("socket/munge.socket");
        run(Command::new("runuser")
            .args(["-u", "munge", "--", "munged"])
            .arg(format!("--key-file={}", dir.join("munge/munge.key").display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.join("munge/munged.pid").display()))
            .arg(format!("--log-file={}", dir.join("munge/munged.log").display()))
            .arg(format!("--seed-file={}", dir.join("munge/seed").display())));
        let munged_pid = std::fs::read_to_string(dir.join("munge/munged.pid")).ok().and_then(|s| s.trim().parse().ok());
        let host =
            String::from_utf8(Command::new("hostname").arg("-s").output().unwrap().stdout).unwrap().trim().to_string();
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        // Ports away from Slurm's defaults, so a cluster already on this machine is not touched.
        let (ctl_port, d_port) = (free_port(), free_port());
        let d = dir.display();
        let conf = format!(
            "ClusterName=diffedittest\nSlurmctldHost={host}\nSlurmctldPort={ctl_port}\nSlurmdPort={d_port}\n\
             AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={socket}\n\
             StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
             SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
             SlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSchedulerType=sched/backfill\n\
             SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nSlurmUser=root\nSlurmdUser=root\n\
             MpiDefault=none\nJobAcctGatherType=jobacct_gather/none\nAccountingStorageType=accounting_storage/none\n\
             ReturnToService=2\nSchedulerParameters=sched_interval=1\n\
             NodeName={host} CPUs={cpus} RealMemory=1000 State=UNKNOWN\n\
             PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n",
            socket = socket.display()
        );
        std::fs::write(dir.join("slurm.conf"), conf).unwrap();
        let slurm = Slurm { dir, munged_pid };
        run(slurm.cmd("slurmctld").arg("-f").arg(slurm.conf()));
        run(slurm.cmd("slurmd").arg("-f").arg(slurm.conf()));
        // Up when the node answers as idle.
        let clock = Instant::now();
        loop {
            let o = slurm.cmd("sinfo").args(["-h", "-o", "%t"]).output().unwrap();
            if String::from_utf8_lossy(&o.stdout).trim() == "idle" {
                break;
            }
            assert!(clock.elapsed() < Duration::from_secs(60), "Slurm did not come up: {}", slurm.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
        slurm
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("slurm.conf")
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", self.conf());
        c
    }

    fn logs(&self) -> String {
        ["slurmctld.log", "slurmd.log"]
            .iter()
            .map(|f| format!("{f}:\n{}", std::fs::read_to_string(self.dir.join(f)).unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = self.cmd("scontrol").arg("shutdown").output();
        for pidfile in ["slurmctld.pid", "slurmd.pid"] {
            if let Some(pid) =
                std::fs::read_to_string(self.dir.join(pidfile)).ok().and_then(|s| s.trim().parse::<i32>().ok())
            {
                wait_gone(pid);
            }
        }
        if let Some(pid) = self.munged_pid {
            let _ = Command::new("kill").arg(pid.to_string()).output();
            wait_gone(pid as i32);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_gone(pid: i32) {
    let clock = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && clock.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if Path::new(&format!("/proc/{pid}")).exists() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_slurm_job_array_gives_the_same_pictures() {
    let (_, expected) = reference();
    let slurm = Slurm::start();
    let out = workspace().join("slurm");
    let script = workspace().join("job.sh");
    // The script names no shard: each array task takes its part from SLURM_ARRAY_TASK_*.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {} batch {} --out {} {}\n",
            env!("CARGO_BIN_EXE_diffedit"),
            manifest().display(),
            out.display(),
            FLAGS.join(" ")
        ),
    )
    .unwrap();
    let o = slurm
        .cmd("sbatch")
        .args(["--array=0-2", "--wait", "--export=ALL,HF_HUB_OFFLINE=1"])
        .arg(format!("--output={}/task-%a.log", workspace().display()))
        .arg(&script)
        .output()
        .unwrap();
    let logs: String = (0..3)
        .map(|k| std::fs::read_to_string(workspace().join(format!("task-{k}.log"))).unwrap_or_default())
        .collect();
    // The bad rows make some tasks exit 1, and sbatch --wait reports it; the rows are what count.
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("Submitted batch job"),
        "sbatch: {} {}\n{logs}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        slurm.logs()
    );
    for k in 1..=3 {
        assert!(out.join(format!("results-{k}-of-3.jsonl")).is_file(), "task {k} wrote no results:\n{logs}");
    }
    check_lines(&out);
    assert_eq!(&pictures(&out), expected, "the Slurm array's pictures differ from the whole run's");
    drop(slurm);
}
