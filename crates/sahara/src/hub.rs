//! Where a `--model` value points: a local folder, or a hub id (`org/name`) resolved in the
//! standard Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The hub cache folder, from the environment.
pub fn hub_cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Ok(p) = std::env::var("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache/huggingface/hub")
}

/// Resolves a `--model` value to a local folder holding `config.json`; `builtin:organism`
/// is the built-in model organism, unpacked on first use.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    if crate::organism::builtin::is_model(spec) {
        return crate::organism::builtin::model_dir();
    }
    if let Some(e) = crate::organism::builtin::unknown(spec) {
        return Err(e);
    }
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        return Err(Error::ModelNotFound {
            id: spec.into(),
            message: "not a folder (a model is a folder with config.json and weights)".into(),
        });
    }
    let looks_like_id = spec.split('/').count() == 2
        && !spec.starts_with('.')
        && !spec.starts_with('/')
        && spec.split('/').all(|p| !p.is_empty());
    if !looks_like_id {
        return Err(Error::ModelNotFound {
            id: spec.into(),
            message: "no such folder, and not a hub id of the form org/name".into(),
        });
    }
    let cache = hub_cache_dir();
    let repo = cache.join(format!("models--{}", spec.replace('/', "--")));
    let snapshot = std::fs::read_to_string(repo.join("refs/main"))
        .ok()
        .map(|h| repo.join("snapshots").join(h.trim()))
        .filter(|p| p.join("config.json").exists())
        .or_else(|| {
            // Any snapshot holding a config, newest first.
            let mut snaps: Vec<_> = std::fs::read_dir(repo.join("snapshots"))
                .ok()?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.join("config.json").exists())
                .collect();
            snaps.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
            snaps.pop()
        });
    snapshot.ok_or_else(|| Error::ModelNotFound {
        id: spec.into(),
        message: format!(
            "not in the Hugging Face cache (looked in {}); download it first (for example `huggingface-cli download {spec}`) or pass a local folder",
            repo.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_resolve_through_the_cache_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--tiny");
        let snap = repo.join("snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        // SAFETY: tests in this module are the only users of HF_HUB_CACHE.
        unsafe { std::env::set_var("HF_HUB_CACHE", tmp.path()) };
        assert_eq!(resolve_model_dir("org/tiny").unwrap(), snap);
        let e = resolve_model_dir("org/missing").unwrap_err().to_string();
        assert!(e.contains("models--org--missing"), "{e}");
        let e = resolve_model_dir("./nowhere").unwrap_err().to_string();
        assert!(e.contains("no such folder"), "{e}");
    }
}
