//! The shipped organism, embedded in the library (and so in every `sahara` binary), unpacked
//! on first use to `$XDG_CACHE_HOME/sahara/organism-<hash>` (else `~/.cache/sahara/…`, else
//! the system's temporary folder), where it is an ordinary Hugging Face model folder.
//!
//! Names: `builtin:organism` (the model), `builtin:harmful` and `builtin:benign` (its
//! held-out prompts, one a line).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The `--model` name of the built-in organism.
pub const MODEL: &str = "builtin:organism";
/// The `--data` name of its held-out harmful prompts.
pub const HARMFUL: &str = "builtin:harmful";
/// The `--data` name of its held-out benign prompts.
pub const BENIGN: &str = "builtin:benign";

macro_rules! embed {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/organism/", $name)) as &[u8])),*]
    };
}

/// The files of the organism folder (`crates/sahara/organism/`).
pub static FILES: &[(&str, &[u8])] = embed![
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "harmful.txt",
    "benign.txt",
    "organism.json",
];

/// Content hash of the embedded files.
pub fn hash() -> String {
    let parts: Vec<&[u8]> = FILES.iter().flat_map(|(n, b)| [n.as_bytes(), *b]).collect();
    crate::io::runlog::fingerprint(&parts)
}

/// Whether `spec` names the built-in organism.
pub fn is_model(spec: &str) -> bool {
    spec == MODEL
}

fn cache_root() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p).join("sahara"));
    }
    std::env::var_os("HOME")
        .filter(|p| !p.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/sahara"))
}

/// Whether `dir` holds exactly the embedded files.
fn is_complete(dir: &Path) -> bool {
    FILES
        .iter()
        .all(|(name, bytes)| std::fs::read(dir.join(name)).is_ok_and(|b| b == *bytes))
}

/// Unpacks the files into `root/organism-<hash>` (through a temporary folder renamed into
/// place, so that concurrent first uses do not see a half-written folder).
fn unpack_into(root: &Path) -> Result<PathBuf> {
    let dir = root.join(format!("organism-{}", hash()));
    if is_complete(&dir) {
        return Ok(dir);
    }
    let write_err = |path: &Path, source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(root).map_err(|e| write_err(root, e))?;
    let tmp = root.join(format!(
        ".organism-{}-{}-{}",
        hash(),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&tmp).map_err(|e| write_err(&tmp, e))?;
    for (name, bytes) in FILES {
        let p = tmp.join(name);
        if let Err(e) = std::fs::write(&p, bytes) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(write_err(&p, e));
        }
    }
    if dir.exists() && !is_complete(&dir) {
        // A damaged copy: replace it.
        let _ = std::fs::remove_dir_all(&dir);
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another process may have unpacked it first.
            if is_complete(&dir) {
                Ok(dir)
            } else {
                Err(write_err(&dir, e))
            }
        }
    }
}

/// The folder of the built-in organism, unpacked on first use.
pub fn model_dir() -> Result<PathBuf> {
    let mut first_err = None;
    if let Some(root) = cache_root() {
        match unpack_into(&root) {
            Ok(d) => return Ok(d),
            Err(e) => first_err = Some(e),
        }
    }
    unpack_into(&std::env::temp_dir().join("sahara")).map_err(|e| first_err.unwrap_or(e))
}

/// The file a `builtin:` data name stands for, or `None` for any other name.
pub fn data_path(spec: &str) -> Option<Result<PathBuf>> {
    let file = match spec {
        HARMFUL => "harmful.txt",
        BENIGN => "benign.txt",
        _ => return None,
    };
    Some(model_dir().map(|d| d.join(file)))
}

/// A `builtin:…` name that is none of the known ones.
pub fn unknown(spec: &str) -> Option<Error> {
    let rest = spec.strip_prefix("builtin:")?;
    if [MODEL, HARMFUL, BENIGN].contains(&spec) {
        return None;
    }
    Some(Error::InvalidArgument(format!(
        "unknown built-in {rest:?}; the built-ins are {MODEL}, {HARMFUL} and {BENIGN}"
    )))
}
