//! The file-system rules every writer follows: whole files appear atomically (a synced
//! temporary beside the target, then a rename) and leave no temporary behind on an error;
//! model folders are built in a staging folder beside their destination that is removed
//! unless it is moved into place.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An I/O error while writing `path`.
pub fn write_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// The temporary a write of `path` goes through: `.NAME.tmp.PID` beside it.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}", std::process::id()))
}

/// Whether process `pid` is alive. Where that cannot be told, every process counts as alive,
/// so nothing of another run is ever removed.
fn alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Removes the temporaries that writers of `target` left beside it when their process died
/// (killed, or out of disk): `.NAME.tmp.PID` files and `.NAME.sahara-tmp-PID` staging folders
/// of processes no longer alive. Those of live processes (a run writing now) are kept.
pub fn remove_stale_temporaries(target: &Path) {
    let Some(name) = target.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let pid = [".tmp.", ".sahara-tmp-"].iter().find_map(|sep| {
            file.strip_prefix(&format!(".{name}{sep}"))
                .and_then(|p| p.parse::<u32>().ok())
        });
        if pid.is_some_and(|p| p != std::process::id() && !alive(p)) {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// Writes a file atomically: a temporary beside it, synced, then renamed into place. On an
/// error the temporary is removed and `path` is unchanged.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    remove_stale_temporaries(path);
    let tmp = temporary(path);
    let result = (|| {
        let w = write_err(path);
        let mut f = File::create(&tmp).map_err(&w)?;
        f.write_all(bytes).map_err(&w)?;
        f.sync_all().map_err(&w)?;
        std::fs::rename(&tmp, path).map_err(&w)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Copies the file `src` to a new file `dst` whose mode follows the umask, as every other file
/// `sahara` writes does (`std::fs::copy` would give it the source's mode: a model downloaded
/// with mode 0600 would give an output others cannot read).
pub fn copy_file(src: &Path, dst: &Path) -> Result<u64> {
    let mut from = File::open(src).map_err(|e| Error::io(src, e))?;
    let mut to = File::create(dst).map_err(write_err(dst))?;
    std::io::copy(&mut from, &mut to).map_err(write_err(dst))
}

/// Writes a JSON value, pretty-printed and ending in a newline, atomically.
pub fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(v).expect("JSON values serialize");
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Creates the folder `dir` if needed and checks that a file can be written in it, so that a
/// long computation whose result goes there fails before it starts, not after.
pub fn check_writable_folder(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    let probe = dir.join(format!(".sahara-probe-{}", std::process::id()));
    File::create(&probe).map_err(write_err(dir))?;
    std::fs::remove_file(&probe).map_err(write_err(dir))
}

/// Removes a folder (or a file) on drop unless disarmed: no half-written model is left
/// behind.
pub struct Cleanup(Option<PathBuf>);

impl Cleanup {
    /// Keeps the folder (it was moved into place).
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}

/// Checks that the folder `out` may be written (absent, empty, or replaced with `force`) and
/// creates a fresh staging folder beside it, on the same file system, removed when the
/// returned guard drops unless [`move_into_place`] moves it to `out`.
pub fn staging_folder(out: &Path, force: bool) -> Result<(PathBuf, Cleanup)> {
    if out.exists() {
        let non_empty = std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
        if non_empty && !force {
            return Err(Error::OutputNotEmpty {
                path: out.to_path_buf(),
            });
        }
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(write_err(parent))?;
    remove_stale_temporaries(out);
    let tmp = parent.join(format!(
        ".{}.sahara-tmp-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(write_err(&tmp))?;
    Ok((tmp.clone(), Cleanup(Some(tmp))))
}

/// Renames the finished staging folder `tmp` (from [`staging_folder`]) to `out`; an existing
/// destination (replaced with `force`) is moved aside first and removed after, or put back if
/// the rename fails.
pub fn move_into_place(tmp: &Path, out: &Path, guard: &mut Cleanup) -> Result<()> {
    let parent = tmp.parent().unwrap_or(Path::new("."));
    let aside = parent.join(format!(".sahara-old-{}", std::process::id()));
    if out.exists() {
        std::fs::rename(out, &aside).map_err(write_err(out))?;
    }
    if let Err(e) = std::fs::rename(tmp, out) {
        if aside.exists() {
            let _ = std::fs::rename(&aside, out);
        }
        return Err(write_err(out)(e));
    }
    guard.disarm();
    if aside.exists() {
        let _ = std::fs::remove_dir_all(&aside);
    }
    Ok(())
}

/// Checks that the file `out` may be written (absent, or replaced with `force`; never a
/// folder) and returns the temporary beside it to write instead (`.NAME.tmp.PID`), removed
/// when the returned guard drops unless [`move_file_into_place`] renames it to `out`. For a
/// file too large to hold in memory ([`write_atomic`] takes the bytes).
pub fn staging_file(out: &Path, force: bool) -> Result<(PathBuf, Cleanup)> {
    if out.is_dir() {
        return Err(Error::OutputNotAFile {
            path: out.to_path_buf(),
            what: "a folder",
        });
    }
    if out.exists() && !force {
        return Err(Error::OutputNotEmpty {
            path: out.to_path_buf(),
        });
    }
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(write_err(parent))?;
    remove_stale_temporaries(out);
    let tmp = temporary(out);
    let _ = std::fs::remove_file(&tmp);
    Ok((tmp.clone(), Cleanup(Some(tmp))))
}

/// Renames the finished, synced temporary `tmp` (from [`staging_file`]) to `out`, replacing
/// an existing `out` in one step.
pub fn move_file_into_place(tmp: &Path, out: &Path, guard: &mut Cleanup) -> Result<()> {
    std::fs::rename(tmp, out).map_err(write_err(out))?;
    guard.disarm();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_write_replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_json(&p, &serde_json::json!({"k": 1})).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\n  \"k\": 1\n}\n");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_failed_write_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a folder: the rename fails after the temporary was written.
        let p = dir.path().join("sub");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("x"), "keep").unwrap();
        assert!(write_atomic(&p, b"data").is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("sub")]);
    }

    #[test]
    fn temporaries_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        // Above Linux's largest process id: never alive.
        let dead = 4_194_400u32;
        let mine = std::process::id();
        let stale_file = dir.path().join(format!(".s.json.tmp.{dead}"));
        let stale_folder = dir.path().join(format!(".model.sahara-tmp-{dead}"));
        let live = dir.path().join(format!(".s.json.tmp.{}", 1));
        let other = dir.path().join(format!(".other.json.tmp.{dead}"));
        std::fs::write(&stale_file, "x").unwrap();
        std::fs::create_dir(&stale_folder).unwrap();
        std::fs::write(stale_folder.join("w"), "x").unwrap();
        std::fs::write(&live, "x").unwrap();
        std::fs::write(&other, "x").unwrap();
        write_json(&dir.path().join("s.json"), &1).unwrap();
        assert!(!stale_file.exists());
        assert!(live.exists(), "a live process's temporary was removed");
        assert!(other.exists(), "another output's temporary was removed");
        let (tmp, _guard) = staging_folder(&dir.path().join("model"), false).unwrap();
        assert!(!stale_folder.exists());
        assert!(tmp.ends_with(format!(".model.sahara-tmp-{mine}")));
    }

    #[test]
    fn a_staging_folder_is_removed_unless_moved_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model");
        {
            let (tmp, _guard) = staging_folder(&out, false).unwrap();
            std::fs::write(tmp.join("w"), "x").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let (tmp, mut guard) = staging_folder(&out, false).unwrap();
        std::fs::write(tmp.join("w"), "x").unwrap();
        move_into_place(&tmp, &out, &mut guard).unwrap();
        drop(guard);
        assert!(out.join("w").exists());
        assert!(matches!(
            staging_folder(&out, false),
            Err(Error::OutputNotEmpty { .. })
        ));
        assert!(staging_folder(&out, true).is_ok());
    }

    #[test]
    fn a_staged_file_is_removed_unless_moved_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        {
            let (tmp, _guard) = staging_file(&out, false).unwrap();
            std::fs::write(&tmp, "x").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let (tmp, mut guard) = staging_file(&out, false).unwrap();
        std::fs::write(&tmp, "new").unwrap();
        move_file_into_place(&tmp, &out, &mut guard).unwrap();
        drop(guard);
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(matches!(
            staging_file(&out, false),
            Err(Error::OutputNotEmpty { .. })
        ));
        assert!(staging_file(&out, true).is_ok());
        assert!(matches!(
            staging_file(dir.path(), true),
            Err(Error::OutputNotAFile { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn a_copy_gets_the_mode_of_a_new_file_not_the_sources() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("private.safetensors");
        std::fs::write(&src, b"weights").unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o600)).unwrap();
        let fresh = dir.path().join("fresh");
        File::create(&fresh).unwrap();
        let dst = dir.path().join("copy.safetensors");
        assert_eq!(copy_file(&src, &dst).unwrap(), 7);
        assert_eq!(std::fs::read(&dst).unwrap(), b"weights");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        if mode(&fresh) == 0o600 {
            eprintln!("umask 077: a new file's mode is the source's; nothing to tell apart");
        }
        assert_eq!(mode(&dst), mode(&fresh));
    }
}
