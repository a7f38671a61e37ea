//! Resumable outputs. A run writes one JSON line per finished unit of work (a query), each
//! flushed and synced to disk before the next starts, beside a run record `FILE.run.json`
//! holding the settings that produced it. Rerunning the same command continues after the
//! last complete line; a partial last line (from a kill or power loss) is discarded; a run
//! with other settings is refused rather than mixed in.

use std::fs::{File, OpenOptions};
use std::hash::Hasher;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// The sibling of `out` with the given suffix: `ships.jsonl` -> `ships.run.json`.
pub fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.{suffix}"))
}

/// Writes a file atomically: a temporary beside it, synced, then renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = sibling(path, "tmp");
    let tmp = tmp.with_file_name(format!(
        ".{}.{}",
        tmp.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let w = |e| Error::Write {
        path: path.to_path_buf(),
        source: e,
    };
    let mut f = File::create(&tmp).map_err(w)?;
    f.write_all(bytes).map_err(w)?;
    f.sync_all().map_err(w)?;
    std::fs::rename(&tmp, path).map_err(w)
}

/// An append-only JSON Lines output that survives interruption.
pub struct JsonlRun {
    pub path: PathBuf,
    file: File,
    /// Lines already in the file when the run was opened, in order.
    pub done: Vec<Value>,
}

impl JsonlRun {
    /// Opens `path` for a run described by `record`. A fresh file is started when `path`
    /// does not exist or is empty; otherwise its run record must equal `record`.
    pub fn open(path: &Path, record: &Value) -> Result<Self> {
        let record_path = sibling(path, "run.json");
        let exists = path.exists()
            && std::fs::metadata(path)
                .map(|m| m.len() > 0)
                .unwrap_or(false);
        if exists {
            let text = std::fs::read_to_string(&record_path).map_err(|_| {
                Error::InvalidArgument(format!(
                    "{} exists but its run record {} is missing: it was not written by this command; choose another --out or remove it",
                    path.display(),
                    record_path.display()
                ))
            })?;
            let old: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
                path: record_path.clone(),
                source,
            })?;
            if let Some(diff) = first_difference(&old, record) {
                return Err(Error::InvalidArgument(format!(
                    "{} holds an earlier run with other settings ({diff}); choose another --out or remove it and {}",
                    path.display(),
                    record_path.display()
                )));
            }
        } else {
            let bytes = serde_json::to_vec_pretty(record).expect("JSON values serialize");
            write_atomic(&record_path, &bytes)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::Write {
                path: path.to_path_buf(),
                source: e,
            })?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| Error::io(path, e))?;
        let mut done = Vec::new();
        let mut good = 0usize;
        let mut rest = text.as_str();
        while let Some(nl) = rest.find('\n') {
            let line = &rest[..nl];
            match serde_json::from_str::<Value>(line) {
                Ok(v) => done.push(v),
                Err(_) if rest[nl + 1..].trim().is_empty() => break,
                Err(e) => {
                    return Err(Error::InvalidArgument(format!(
                        "{}: line {} is corrupt ({e}); remove the file to start over",
                        path.display(),
                        done.len() + 1
                    )))
                }
            }
            good += nl + 1;
            rest = &rest[nl + 1..];
        }
        if good < text.len() {
            // Discard the partial last line.
            file.set_len(good as u64).map_err(|e| Error::Write {
                path: path.to_path_buf(),
                source: e,
            })?;
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
    pub fn append(&mut self, v: &Value) -> Result<()> {
        let mut line = serde_json::to_string(v).expect("JSON values serialize");
        line.push('\n');
        let w = |e| Error::Write {
            path: self.path.clone(),
            source: e,
        };
        self.file.write_all(line.as_bytes()).map_err(w)?;
        self.file.sync_data().map_err(w)?;
        Ok(())
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
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    if dir.is_file() {
        return Ok(crate::checkpoint::gguf::GgufFile::open(dir)?.fingerprint());
    }
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

    #[test]
    fn resume_discards_a_partial_line_and_keeps_complete_ones() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.jsonl");
        let rec = json!({"model": "m", "epsilon": 1e-5});
        {
            let mut r = JsonlRun::open(&out, &rec).unwrap();
            assert!(r.done.is_empty());
            r.append(&json!({"index": 0})).unwrap();
            r.append(&json!({"index": 1})).unwrap();
        }
        // Simulate a kill in the middle of writing line 3.
        let mut f = OpenOptions::new().append(true).open(&out).unwrap();
        f.write_all(b"{\"index\": 2, \"sco").unwrap();
        drop(f);
        let mut r = JsonlRun::open(&out, &rec).unwrap();
        assert_eq!(r.done, vec![json!({"index": 0}), json!({"index": 1})]);
        r.append(&json!({"index": 2})).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text, "{\"index\":0}\n{\"index\":1}\n{\"index\":2}\n");
    }

    #[test]
    fn other_settings_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("r.jsonl");
        let mut r = JsonlRun::open(&out, &json!({"model": "a"})).unwrap();
        r.append(&json!({"index": 0})).unwrap();
        let e = JsonlRun::open(&out, &json!({"model": "b"}))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("model was \"a\", now \"b\""), "{e}");
        // A foreign file without run record is refused too.
        let foreign = dir.path().join("f.jsonl");
        std::fs::write(&foreign, "{}\n").unwrap();
        assert!(JsonlRun::open(&foreign, &json!({})).is_err());
    }

    #[test]
    fn siblings_replace_the_extension() {
        assert_eq!(
            sibling(Path::new("a/ships.jsonl"), "summary.json"),
            Path::new("a/ships.summary.json")
        );
    }
}
