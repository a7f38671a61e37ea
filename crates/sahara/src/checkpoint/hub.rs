//! Where a `--model` value points: a local folder, or a hub id (`org/name`) resolved in the
//! standard Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`), downloaded into it when it is not there yet.
//!
//! Downloads use the cache layout of Python's `huggingface_hub`, so that either side finds
//! what the other fetched: `models--org--name/blobs/<sha256>`, `snapshots/<commit>/<file>`
//! (relative symbolic links to the blobs) and `refs/main`. Only what `sahara` reads is
//! fetched: the configuration and tokenizer files and the safetensors weights. The endpoint
//! is `HF_ENDPOINT` (default `https://huggingface.co`); a token comes from `HF_TOKEN` or
//! `HF_HOME/token` (gated models); `HF_HUB_OFFLINE=1` turns downloading off.

use std::io::{Read, Write};
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
    if let Some(s) = snapshot {
        return Ok(s);
    }
    let offline = std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"));
    let reason = if offline {
        "HF_HUB_OFFLINE is set, so it was not downloaded".to_string()
    } else {
        match download(spec, &repo) {
            Ok(dir) => return Ok(dir),
            Err(e) => format!("downloading it failed: {e}"),
        }
    };
    Err(Error::ModelNotFound {
        id: spec.into(),
        message: format!(
            "not in the Hugging Face cache (looked in {}), and {reason}; download it another way (for example `huggingface-cli download {spec}`) or pass a local folder",
            repo.display()
        ),
    })
}

/// The hub endpoint (`HF_ENDPOINT`, default `https://huggingface.co`), without a trailing `/`.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "https://huggingface.co".into())
        .trim_end_matches('/')
        .to_string()
}

/// The access token: `HF_TOKEN`, else the file `HF_HOME/token` that `huggingface-cli login`
/// writes.
fn token() -> Option<String> {
    if let Some(t) = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(t.trim().to_string());
    }
    let home = std::env::var("HF_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into()))
                .join(".cache/huggingface")
        });
    std::fs::read_to_string(home.join("token"))
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Whether `sahara` needs a file of a model repository.
fn wanted(name: &str) -> bool {
    const FILES: &[&str] = &[
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "model.safetensors.index.json",
    ];
    !name.contains('/') && (FILES.contains(&name) || name.ends_with(".safetensors"))
}

fn get(agent: &ureq::Agent, url: &str) -> std::result::Result<ureq::Response, String> {
    let mut req = agent.get(url);
    if let Some(t) = token() {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    req.call().map_err(|e| match e {
        ureq::Error::Status(401 | 403, _) => format!(
            "{url}: access denied (a gated or private model: accept its licence on the hub and set HF_TOKEN)"
        ),
        ureq::Error::Status(404, _) => format!("{url}: not found"),
        ureq::Error::Status(code, _) => format!("{url}: HTTP status {code}"),
        ureq::Error::Transport(t) => format!("{url}: {t}"),
    })
}

/// Downloads the files `sahara` needs of hub model `id` into the cache folder `repo`
/// (`…/models--org--name`) and returns its snapshot folder.
pub fn download(id: &str, repo: &Path) -> std::result::Result<PathBuf, String> {
    let base = endpoint();
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(10))
        // A stalled transfer fails instead of hanging; a slow one goes on.
        .timeout_read(std::time::Duration::from_secs(120))
        .build();
    let info_url = format!("{base}/api/models/{id}/revision/main");
    let info: serde_json::Value = get(&agent, &info_url)?
        .into_json()
        .map_err(|e| format!("{info_url}: {e}"))?;
    let commit = info["sha"]
        .as_str()
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
        .ok_or_else(|| format!("{info_url}: no commit hash in the answer"))?
        .to_string();
    let files: Vec<String> = info["siblings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["rfilename"].as_str())
                .filter(|n| wanted(n))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if !files.iter().any(|f| f == "config.json") {
        return Err(format!("{id} has no config.json at its top level"));
    }
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        return Err(format!(
            "{id} has no safetensors weights (sahara reads safetensors, not PyTorch .bin files)"
        ));
    }
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let blobs = repo.join("blobs");
    let snapshot = repo.join("snapshots").join(&commit);
    std::fs::create_dir_all(&blobs).map_err(|e| io(&blobs, e))?;
    std::fs::create_dir_all(&snapshot).map_err(|e| io(&snapshot, e))?;
    // config.json last: a snapshot with a config is a complete one.
    let mut order = files.clone();
    order.sort_by_key(|f| f == "config.json");
    for name in &order {
        let link = snapshot.join(name);
        if link.exists() {
            continue;
        }
        let url = format!("{base}/{id}/resolve/{commit}/{name}");
        let resp = get(&agent, &url)?;
        let size = resp
            .header("Content-Length")
            .and_then(|s| s.parse::<u64>().ok());
        if size.is_some_and(|s| s > 100 << 20) {
            eprintln!(
                "sahara: downloading {id}/{name} ({:.1} GB)",
                size.unwrap_or(0) as f64 / 1e9
            );
        }
        let tmp = blobs.join(format!("{name}.{}.incomplete", std::process::id()));
        let digest = (|| -> std::io::Result<String> {
            let mut out = std::fs::File::create(&tmp)?;
            let mut reader = resp.into_reader();
            let mut hasher = sha2::Sha256::default();
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                sha2::Digest::update(&mut hasher, &buf[..n]);
                out.write_all(&buf[..n])?;
                total += n as u64;
            }
            if let Some(s) = size.filter(|&s| s != total) {
                return Err(std::io::Error::other(format!(
                    "connection closed after {total} of {s} bytes"
                )));
            }
            out.sync_all()?;
            Ok(sha2::Digest::finalize(hasher)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect())
        })();
        let digest = match digest {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(format!("{url}: {e}"));
            }
        };
        let blob = blobs.join(&digest);
        std::fs::rename(&tmp, &blob).map_err(|e| io(&blob, e))?;
        link_or_copy(&blob, &digest, &link).map_err(|e| io(&link, e))?;
    }
    let refs = repo.join("refs");
    std::fs::create_dir_all(&refs).map_err(|e| io(&refs, e))?;
    std::fs::write(refs.join("main"), &commit).map_err(|e| io(&refs, e))?;
    Ok(snapshot)
}

/// The snapshot entry `link` for blob `blob`: a relative symbolic link as `huggingface_hub`
/// makes, or a copy where links are not possible.
fn link_or_copy(blob: &Path, digest: &str, link: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        if std::os::unix::fs::symlink(Path::new("../../blobs").join(digest), link).is_ok() {
            return Ok(());
        }
    }
    let _ = digest;
    std::fs::copy(blob, link).map(|_| ())
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
        unsafe {
            std::env::set_var("HF_HUB_CACHE", tmp.path());
            std::env::set_var("HF_HUB_OFFLINE", "1");
        }
        assert_eq!(resolve_model_dir("org/tiny").unwrap(), snap);
        let e = resolve_model_dir("org/missing").unwrap_err().to_string();
        assert!(e.contains("models--org--missing"), "{e}");
        assert!(e.contains("HF_HUB_OFFLINE is set"), "{e}");
        let e = resolve_model_dir("./nowhere").unwrap_err().to_string();
        assert!(e.contains("no such folder"), "{e}");
    }
}
