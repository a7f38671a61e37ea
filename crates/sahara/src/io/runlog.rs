//! Resumable outputs. A run writes one JSON line per finished unit of work (a query), each
//! flushed and synced to disk before the next starts, beside a run record `FILE.run.json`
//! holding the settings that produced it. Rerunning the same command continues after the
//! last complete line; a partial last line (from a kill or power loss) is discarded; a run
//! with other settings is refused rather than mixed in.

use std::fs::{File, OpenOptions};
use std::hash::Hasher;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::formats::RunRecord;
use crate::io::fs::{write_err, write_json};

/// The environment variable of the deterministic fault point: with `SAHARA_FAULT_AFTER=N`,
/// the process aborts (as `kill -9` would: no destructor runs, nothing is cleaned up) right
/// after the N-th unit of resumable output (a JSON line, an attribute step) is on disk. Tests
/// interrupt runs with it at exact moments.
pub const FAULT_AFTER: &str = "SAHARA_FAULT_AFTER";

/// Counts one unit of resumable output written, and aborts at the fault point.
pub fn unit_written() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static WRITTEN: AtomicUsize = AtomicUsize::new(0);
    let n = WRITTEN.fetch_add(1, Ordering::SeqCst) + 1;
    let limit = std::env::var(FAULT_AFTER)
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    if limit == Some(n) {
        std::process::abort();
    }
}

/// A side file of the output `out`, named from its whole name: `r.jsonl` -> `r.jsonl.run.json`,
/// `r.jsonl.summary.json`, so that the outputs of two commands in one folder never share one.
pub fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let name = out
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{name}.{suffix}"))
}

/// The name side files had before [`sibling`] (`r.jsonl` -> `r.run.json`), still read when a
/// run written then is resumed.
fn legacy_sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.{suffix}"))
}

/// The run record of the run that wrote `file`, when one lies beside it: `file.run.json`, or
/// for a summary `r.jsonl.summary.json` the record of `r.jsonl` (`r.jsonl.run.json`; also
/// under the names of an earlier sahara). `None` when there is none (a file copied without its record).
pub fn record_of(file: &Path) -> Result<Option<RunRecord>> {
    let name = file
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = match name.strip_suffix(".summary.json") {
        Some(stem) => file.with_file_name(stem),
        None => file.to_path_buf(),
    };
    // An earlier sahara's names: `r.summary.json` and `a.json` beside `r.run.json`, `a.run.json`.
    let candidates = [sibling(&out, "run.json"), legacy_sibling(&out, "run.json")];
    for path in candidates {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return RunRecord::parse(&path, &text).map(Some);
        }
    }
    Ok(None)
}

/// Claims `out` for a run described by `record`, the one rule of every resumable command:
/// when `out` is absent or empty, the record is written beside it (`out.run.json`) and
/// `false` returned (a fresh run); otherwise the record beside it (or, for a run of an earlier
/// sahara, `out`'s stem `.run.json`) must be the same run, and `true` is returned (a run to
/// resume). A file without a record, one written by another command, or with other settings,
/// is refused.
pub fn claim(out: &Path, record: &RunRecord) -> Result<bool> {
    let meta = std::fs::metadata(out).ok();
    if let Some(m) = meta.as_ref().filter(|m| !m.is_file()) {
        return Err(Error::OutputNotAFile {
            path: out.to_path_buf(),
            what: if m.is_dir() {
                "a folder"
            } else {
                "a device or other special file"
            },
        });
    }
    let record_path = sibling(out, "run.json");
    let exists = meta.is_some_and(|m| m.len() > 0);
    if !exists {
        write_json(&record_path, record)?;
        return Ok(false);
    }
    let mismatch = |reason: String| Error::ResumeMismatch {
        path: out.to_path_buf(),
        line: None,
        reason,
    };
    let legacy = legacy_sibling(out, "run.json");
    let (path, text) = match std::fs::read_to_string(&record_path) {
        Ok(t) => (record_path.clone(), t),
        Err(_) => match std::fs::read_to_string(&legacy) {
            Ok(t) => (legacy.clone(), t),
            Err(_) => {
                return Err(mismatch(format!(
                    "exists but its run record {} is missing: it was not written by this command; remove it to start over",
                    record_path.display()
                )))
            }
        },
    };
    let old = RunRecord::parse(&path, &text)?;
    same_run(&old, &path, record).map_err(mismatch)?;
    Ok(true)
}

/// Whether the record `old` read from `path` describes the same run as `record`; the error
/// says why not.
pub(crate) fn same_run(
    old: &RunRecord,
    path: &Path,
    record: &RunRecord,
) -> std::result::Result<(), String> {
    if old.command != record.command {
        return Err(format!(
            "was written by `sahara {}` (see {}), not `sahara {}`; remove it to start over",
            old.command,
            path.display(),
            record.command
        ));
    }
    // A record of an earlier sahara has no version; its settings still have to agree.
    let mut now = serde_json::to_value(record).expect("records serialize");
    let mut was = serde_json::to_value(old).expect("records serialize");
    if old.version.is_empty() {
        now["version"] = Value::Null;
        was["version"] = Value::Null;
    }
    if let Some(diff) = first_difference(&flatten(&was), &flatten(&now)) {
        return Err(format!(
            "holds an earlier run with other settings ({diff}); remove it and {} to start over",
            path.display()
        ));
    }
    Ok(())
}

/// A record with its settings at the top level, so that a difference names the setting.
fn flatten(v: &Value) -> Value {
    let mut out = v.clone();
    if let Some(Value::Object(settings)) = out.as_object_mut().and_then(|o| o.remove("settings")) {
        let o = out.as_object_mut().expect("an object");
        for (k, v) in settings {
            o.insert(k, v);
        }
    }
    out
}

/// An append-only JSON Lines output of lines `T` that survives interruption.
pub struct JsonlRun<T> {
    pub path: PathBuf,
    file: File,
    /// Lines already in the file when the run was opened, in order, each checked.
    pub done: Vec<T>,
}

impl<T: Serialize + DeserializeOwned> JsonlRun<T> {
    /// Opens `path` for a run described by `record` (see [`claim`]). The complete lines
    /// already there are read back as `T` and each passed to `check` with its 0-based number,
    /// which says why a line does not belong to this run; a partial last line (a kill while
    /// writing it) is discarded.
    pub fn open(
        path: &Path,
        record: &RunRecord,
        check: impl FnMut(usize, &T) -> std::result::Result<(), String>,
    ) -> Result<Self> {
        claim(path, record)?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(write_err(path))?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| Error::io(path, e))?;
        let (done, good) = read_lines(path, &text, check)?;
        if good < text.len() {
            // Discard the partial last line.
            file.set_len(good as u64).map_err(write_err(path))?;
            file.seek(SeekFrom::End(0))
                .map_err(|e| Error::io(path, e))?;
        }
        Ok(JsonlRun {
            path: path.to_path_buf(),
            file,
            done,
        })
    }

    /// Appends one line and syncs it to disk.
    pub fn append(&mut self, line: &T) -> Result<()> {
        let mut text = serde_json::to_string(line).expect("output lines serialize");
        text.push('\n');
        let w = write_err(&self.path);
        self.file.write_all(text.as_bytes()).map_err(&w)?;
        self.file.sync_data().map_err(&w)?;
        unit_written();
        Ok(())
    }
}

/// Reads back the text of a resumed output `path` as [`JsonlRun::open`] does: its complete
/// lines as `T`, each passed to `check` with its 0-based number, and the length of the text
/// they take up (shorter than `text` when the last line is partial and is to be discarded).
pub fn read_lines<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    mut check: impl FnMut(usize, &T) -> std::result::Result<(), String>,
) -> Result<(Vec<T>, usize)> {
    let mismatch = |line: usize, reason: String| Error::ResumeMismatch {
        path: path.to_path_buf(),
        line: Some(line),
        reason,
    };
    let mut done = Vec::new();
    let mut good = 0usize;
    let mut rest = text;
    while let Some(nl) = rest.find('\n') {
        let line = &rest[..nl];
        let n = done.len();
        match serde_json::from_str::<Value>(line) {
            Ok(v) => {
                let t: T = serde_json::from_value(v).map_err(|e| {
                    mismatch(
                        n + 1,
                        format!(
                            "is not a line of this command ({e}); remove the file to start over"
                        ),
                    )
                })?;
                check(n, &t).map_err(|why| {
                    mismatch(n + 1, format!("{why}; remove the file to start over"))
                })?;
                done.push(t);
            }
            Err(_) if rest[nl + 1..].trim().is_empty() => break,
            Err(e) => {
                return Err(mismatch(
                    n + 1,
                    format!("is corrupt ({e}); remove the file to start over"),
                ))
            }
        }
        good += nl + 1;
        rest = &rest[nl + 1..];
    }
    Ok((done, good))
}

/// Lines of a resumable run: appended to its file, or printed on stdout without one.
pub enum Lines<T> {
    File(JsonlRun<T>),
    Stdout,
}

impl<T: Serialize + DeserializeOwned> Lines<T> {
    /// The run's lines go to `out` when given (resuming it, see [`JsonlRun::open`]).
    pub fn open(
        out: Option<&Path>,
        record: &RunRecord,
        check: impl FnMut(usize, &T) -> std::result::Result<(), String>,
    ) -> Result<Self> {
        Ok(match out {
            Some(p) => Lines::File(JsonlRun::open(p, record, check)?),
            None => Lines::Stdout,
        })
    }

    /// Lines already written by an earlier run.
    pub fn done(&self) -> &[T] {
        match self {
            Lines::File(r) => &r.done,
            Lines::Stdout => &[],
        }
    }

    /// Writes one line.
    pub fn push(&mut self, line: &T) -> Result<()> {
        match self {
            Lines::File(r) => r.append(line),
            Lines::Stdout => {
                println!(
                    "{}",
                    serde_json::to_string(line).expect("output lines serialize")
                );
                Ok(())
            }
        }
    }
}

/// The first key whose value differs between two run records, described for a message.
fn first_difference(old: &Value, new: &Value) -> Option<String> {
    let (Some(a), Some(b)) = (old.as_object(), new.as_object()) else {
        return (old != new).then(|| "run record".to_string());
    };
    for (k, v) in b {
        match a.get(k) {
            Some(o) if o == v => {}
            Some(o) => return Some(format!("{k} was {o}, now {v}")),
            None => return Some(format!("{k} was not recorded")),
        }
    }
    a.keys()
        .find(|k| !b.contains_key(*k))
        .map(|k| format!("{k} is no longer set"))
}

/// Fingerprint of the queries a run used (their texts, in order).
pub fn queries_fingerprint(queries: &[crate::io::prompt::EncodedQuery]) -> String {
    let parts: Vec<&[u8]> = queries.iter().map(|q| q.text.as_bytes()).collect();
    fingerprint(&parts)
}

/// A 64-bit FNV-1a fingerprint, as 16 hex digits.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut h = Fnv(0xcbf29ce484222325);
    for p in parts {
        h.write(p);
        h.write(&[0xff]);
    }
    format!("{:016x}", h.finish())
}

struct Fnv(u64);
impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x100000001b3);
        }
    }
}

/// Identifies a model folder's content cheaply: config.json and, for each weight file, its
/// size and safetensors header.
pub fn folder_fingerprint(dir: &Path) -> Result<String> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let cfg = dir.join("config.json");
    parts.push(std::fs::read(&cfg).map_err(|e| Error::io(&cfg, e))?);
    for p in crate::checkpoint::safetensors::weight_files(dir)? {
        let mut f = File::open(&p).map_err(|e| Error::io(&p, e))?;
        let len = f.metadata().map_err(|e| Error::io(&p, e))?.len();
        let mut head = vec![0u8; 4096.min(len as usize)];
        f.read_exact(&mut head).map_err(|e| Error::io(&p, e))?;
        parts.push(len.to_le_bytes().to_vec());
        parts.push(head);
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Ok(fingerprint(&refs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(command: &str, model: &str) -> RunRecord {
        let mut r = RunRecord {
            schema: crate::io::formats::schema::RUN.into(),
            command: command.into(),
            version: "0.1.0".into(),
            model: model.into(),
            model_fingerprint: "f".into(),
            data: "d".into(),
            data_fingerprint: "g".into(),
            queries: 2,
            settings: Default::default(),
        };
        r.set("epsilon", 1e-5);
        r
    }

    fn open(out: &Path, r: &RunRecord) -> Result<JsonlRun<Value>> {
        JsonlRun::<Value>::open(out, r, |_, _| Ok(()))
    }

    #[test]
    fn resume_discards_a_partial_line_and_keeps_complete_ones() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.jsonl");
        let rec = rec("ships", "m");
        {
            let mut r = open(&out, &rec).unwrap();
            assert!(r.done.is_empty());
            r.append(&json!({"index": 0})).unwrap();
            r.append(&json!({"index": 1})).unwrap();
        }
        // Simulate a kill in the middle of writing line 3.
        let mut f = OpenOptions::new().append(true).open(&out).unwrap();
        f.write_all(b"{\"index\": 2, \"sco").unwrap();
        drop(f);
        let mut r = open(&out, &rec).unwrap();
        assert_eq!(r.done, vec![json!({"index": 0}), json!({"index": 1})]);
        r.append(&json!({"index": 2})).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text, "{\"index\":0}\n{\"index\":1}\n{\"index\":2}\n");
    }

    #[test]
    fn other_settings_or_another_command_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.jsonl");
        let mut r = open(&out, &rec("ships", "a")).unwrap();
        r.append(&json!({"index": 0})).unwrap();
        let e = open(&out, &rec("ships", "b")).err().unwrap().to_string();
        assert!(e.contains("model was \"a\", now \"b\""), "{e}");
        let mut eps = rec("ships", "a");
        eps.set("epsilon", 0.5);
        let e = open(&out, &eps).err().unwrap().to_string();
        assert!(e.contains("epsilon was"), "{e}");
        let e = open(&out, &rec("eval", "a")).err().unwrap().to_string();
        assert!(e.contains("written by `sahara ships`"), "{e}");
        // A foreign file without run record is refused too.
        let foreign = dir.path().join("f.jsonl");
        std::fs::write(&foreign, "{}\n").unwrap();
        assert!(open(&foreign, &rec("ships", "a")).is_err());
    }

    #[test]
    fn a_check_that_fails_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.jsonl");
        let mut r = open(&out, &rec("ships", "a")).unwrap();
        r.append(&json!({"index": 0})).unwrap();
        r.append(&json!({"index": 5})).unwrap();
        let e = JsonlRun::<Value>::open(&out, &rec("ships", "a"), |i, v| {
            (v["index"] == json!(i))
                .then_some(())
                .ok_or("is not in order".into())
        })
        .err()
        .unwrap();
        assert!(
            matches!(&e, Error::ResumeMismatch { line: Some(2), reason, .. } if reason.contains("not in order")),
            "{e}"
        );
    }

    #[test]
    fn a_run_of_an_earlier_sahara_resumes_from_its_old_record() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.jsonl");
        std::fs::write(&out, "{\"index\":0}\n").unwrap();
        // The flat record under the stem's name, as earlier versions wrote it.
        std::fs::write(
            dir.path().join("r.run.json"),
            r#"{"command": "ships", "model": "a", "model_fingerprint": "f", "data": "d",
                "data_fingerprint": "g", "queries": 2, "epsilon": 1e-5}"#,
        )
        .unwrap();
        // Earlier sahara had no `kl` setting: its runs were exact.
        let mut now = rec("ships", "a");
        now.set("kl", "exact");
        let r = open(&out, &now).unwrap();
        assert_eq!(r.done.len(), 1);
        now.set("kl", "paper");
        assert!(open(&out, &now).is_err());
        let e = open(&out, &rec("ships", "b")).err().unwrap().to_string();
        assert!(e.contains("model was"), "{e}");
    }

    #[test]
    fn side_files_are_named_from_the_whole_output_name() {
        assert_eq!(
            sibling(Path::new("a/ships.jsonl"), "summary.json"),
            Path::new("a/ships.jsonl.summary.json")
        );
        assert_ne!(
            sibling(Path::new("r.jsonl"), "run.json"),
            sibling(Path::new("r.json"), "run.json")
        );
    }
}
