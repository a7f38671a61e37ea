//! Work shared by any number of processes through files alone (a shared, possibly NFS,
//! folder): a unit of work is claimed by creating its claim file exclusively, kept alive by
//! touching it (the heartbeat), and done when its result file exists (written atomically).
//! A claim whose heartbeat stopped for longer than a timeout (its owner was killed or
//! pre-empted) is taken over by renaming it away, which exactly one process can do. Results
//! are found by opening their files, never by listing the folder (listings are cached on NFS).
//! No process coordinates the others, so any number of live workers, one alone included,
//! finishes the work.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// The environment variable of the claim fault point: with `SAHARA_FAULT_AFTER_CLAIM=N` the
/// process aborts (as `kill -9` would) right after its N-th claim, holding it without a result.
pub const FAULT_AFTER_CLAIM: &str = "SAHARA_FAULT_AFTER_CLAIM";

fn after_claim() {
    use std::sync::atomic::AtomicUsize;
    static CLAIMS: AtomicUsize = AtomicUsize::new(0);
    let n = CLAIMS.fetch_add(1, Ordering::SeqCst) + 1;
    if std::env::var(FAULT_AFTER_CLAIM)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        == Some(n)
    {
        std::process::abort();
    }
}

/// Claims the unit of `path` for `worker`: `true` when this call created the claim file.
pub fn try_claim(path: &Path, worker: &str) -> Result<bool> {
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(mut f) => {
            f.write_all(worker.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io(path, e))?;
            after_claim();
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Whether the claim at `path` exists and its heartbeat (modification time) is older than
/// `timeout`.
pub fn is_stale(path: &Path, timeout: Duration) -> bool {
    let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) else {
        return false;
    };
    SystemTime::now()
        .duration_since(modified)
        .is_ok_and(|age| age > timeout)
}

/// Takes over the stale claim at `path`: renames it away (only one process's rename of it
/// succeeds) and claims anew. `true` when this process now holds the claim.
pub fn take_over(path: &Path, worker: &str) -> Result<bool> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let away = path.with_file_name(format!("{name}.stale-{worker}"));
    match std::fs::rename(path, &away) {
        Ok(()) => {
            let _ = std::fs::remove_file(&away);
            try_claim(path, worker)
        }
        // Another process took it over first (or the owner finished and removed it).
        Err(_) => Ok(false),
    }
}

/// Touches a claim file every `interval` while it lives, so that others see its owner alive.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    pub fn start(path: &Path, interval: Duration) -> Heartbeat {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, path): (Arc<AtomicBool>, PathBuf) = (stop.clone(), path.to_path_buf());
        let step = Duration::from_millis(50).min(interval);
        let thread = std::thread::spawn(move || {
            let mut waited = Duration::ZERO;
            while !flag.load(Ordering::SeqCst) {
                std::thread::sleep(step);
                waited += step;
                if waited >= interval {
                    waited = Duration::ZERO;
                    if let Ok(f) = OpenOptions::new().append(true).open(&path) {
                        let _ = f.set_modified(SystemTime::now());
                    }
                }
            }
        });
        Heartbeat {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The JSON at `path`, or `None` when there is no such file (found by opening it).
pub fn read_if_present<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| Error::Json {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_claims_a_unit_and_one_takes_over_a_stale_claim() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("chunk-0.claim");
        assert!(try_claim(&c, "a").unwrap());
        assert!(!try_claim(&c, "b").unwrap());
        assert!(!is_stale(&c, Duration::from_secs(60)));
        // An old heartbeat.
        let old = SystemTime::now() - Duration::from_secs(120);
        OpenOptions::new()
            .append(true)
            .open(&c)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(is_stale(&c, Duration::from_secs(60)));
        assert!(take_over(&c, "b").unwrap());
        assert_eq!(std::fs::read_to_string(&c).unwrap(), "b");
        assert!(!is_stale(&c, Duration::from_secs(60)));
        // A heartbeat keeps it fresh.
        OpenOptions::new()
            .append(true)
            .open(&c)
            .unwrap()
            .set_modified(old)
            .unwrap();
        {
            let _h = Heartbeat::start(&c, Duration::from_millis(60));
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(!is_stale(&c, Duration::from_secs(60)));
        assert_eq!(
            read_if_present::<u32>(&dir.path().join("absent.json")).unwrap(),
            None
        );
    }
}
