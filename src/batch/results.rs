//! The results of a batch run: one JSON line per finished row, in a file per shard.
//!
//! A line is appended only after the row's pictures are complete on disk (written to a temporary
//! file, synced, renamed), and is itself written in one call and synced. A run killed at any
//! moment can leave at most one torn last line; readers ignore it, and the next writer starts on
//! a fresh line, so no torn or partial line is ever trusted.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One finished row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResultLine {
    pub id: String,
    /// 1-based line of the row in the manifest.
    pub line: usize,
    /// `ok` or `error`.
    pub status: String,
    pub error: Option<String>,
    /// The edited picture (relative to the output folder), when ok.
    pub output: Option<String>,
    /// Every file written for the row (relative to the output folder), with their SHA-256.
    #[serde(default)]
    pub files: Vec<WrittenFile>,
    pub mask_coverage: Option<f64>,
    /// UNet evaluations spent on this row (after reuse).
    pub unet_evaluations: usize,
    pub seconds: f64,
    pub image: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    /// The parameters used (null when the row could not be read).
    pub params: Option<serde_json::Value>,
    /// Digest of everything the row's result depends on (inputs' bytes, parameters, model).
    pub fingerprint: Option<String>,
    /// The shard that wrote the line, `K/N`.
    pub shard: String,
    /// Seconds since the Unix epoch when the row finished.
    pub finished_at: f64,
}

/// A file written for a row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WrittenFile {
    pub path: String,
    pub sha256: String,
}

impl ResultLine {
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }
}

/// The lines of a results file that can be trusted: complete (ending in a newline) and parsed.
/// Returns them with the count of lines ignored (torn or unreadable).
pub fn read_lines(path: &Path) -> Result<(Vec<ResultLine>, usize)> {
    let mut text = String::new();
    File::open(path).and_then(|mut f| f.read_to_string(&mut text)).map_err(|e| Error::io(path, e))?;
    let mut lines = Vec::new();
    let mut ignored = 0;
    let mut rest = text.as_str();
    while let Some(end) = rest.find('\n') {
        let raw = &rest[..end];
        rest = &rest[end + 1..];
        if raw.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<ResultLine>(raw) {
            Ok(l) => lines.push(l),
            Err(_) => ignored += 1,
        }
    }
    // A last line without its newline was cut by a kill: not trusted.
    if !rest.trim().is_empty() {
        ignored += 1;
    }
    Ok((lines, ignored))
}

/// Every results file in `dir` (`results.jsonl` and `results-K-of-N.jsonl`), sorted.
pub fn results_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name == "results.jsonl" || (name.starts_with("results-") && name.ends_with(".jsonl")) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Every trusted line of every results file in `dir`, and the number of lines ignored.
pub fn read_all(dir: &Path) -> Result<(Vec<ResultLine>, usize)> {
    let mut all = Vec::new();
    let mut ignored = 0;
    for f in results_files(dir)? {
        let (lines, bad) = read_lines(&f)?;
        all.extend(lines);
        ignored += bad;
    }
    Ok((all, ignored))
}

/// The latest line of each id (by `finished_at`).
pub fn latest_by_id(lines: &[ResultLine]) -> HashMap<String, ResultLine> {
    let mut latest: HashMap<String, ResultLine> = HashMap::new();
    for l in lines {
        match latest.get(&l.id) {
            Some(old) if old.finished_at > l.finished_at => {}
            _ => {
                latest.insert(l.id.clone(), l.clone());
            }
        }
    }
    latest
}

/// Appends lines to one results file.
pub struct ResultsWriter {
    path: PathBuf,
    file: File,
}

impl ResultsWriter {
    /// Opens (or creates) `path` for appending. When a kill left the file without a final
    /// newline, one is written first, so the torn fragment stays a line of its own.
    pub fn open(path: &Path) -> Result<Self> {
        let mut file =
            OpenOptions::new().create(true).read(true).append(true).open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1)).and_then(|_| file.read_exact(&mut last)).map_err(|e| Error::io(path, e))?;
            if last[0] != b'\n' {
                file.write_all(b"\n").and_then(|_| file.sync_data()).map_err(|e| Error::io(path, e))?;
            }
        }
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// Appends one line in a single write and syncs it to disk.
    pub fn append(&mut self, line: &ResultLine) -> Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(|e| Error::invalid(format!("cannot encode a result: {e}")))?;
        bytes.push(b'\n');
        self.file.write_all(&bytes).and_then(|_| self.file.sync_data()).map_err(|e| Error::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The SHA-256 of a file's bytes in hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, at: f64) -> ResultLine {
        ResultLine {
            id: id.into(),
            line: 1,
            status: "ok".into(),
            error: None,
            output: Some(format!("{id}.png")),
            files: vec![],
            mask_coverage: Some(0.1),
            unet_evaluations: 3,
            seconds: 0.5,
            image: None,
            source: None,
            target: None,
            params: None,
            fingerprint: Some("f".into()),
            shard: "1/1".into(),
            finished_at: at,
        }
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_the_next_append_starts_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        let mut w = ResultsWriter::open(&path).unwrap();
        w.append(&line("a", 1.0)).unwrap();
        drop(w);
        // A kill in the middle of the second line's write.
        let full = serde_json::to_string(&line("b", 2.0)).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&full.as_bytes()[..full.len() / 2]).unwrap();
        drop(f);
        let (lines, ignored) = read_lines(&path).unwrap();
        assert_eq!((lines.len(), ignored), (1, 1));
        let mut w = ResultsWriter::open(&path).unwrap();
        w.append(&line("b", 3.0)).unwrap();
        let (lines, ignored) = read_lines(&path).unwrap();
        assert_eq!(lines.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(ignored, 1, "the torn fragment is its own, ignored, line");
        let latest = latest_by_id(&[line("a", 1.0), line("a", 5.0), line("a", 2.0)]);
        assert_eq!(latest["a"].finished_at, 5.0);
        assert_eq!(results_files(dir.path()).unwrap(), vec![path]);
    }
}
