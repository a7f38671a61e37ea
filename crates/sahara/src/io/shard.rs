//! Sharded runs: N processes (a Slurm array job, a Kubernetes Indexed Job, or N shells) each
//! compute a fixed part of one run into a shared folder, and the parts merge into exactly
//! the file a single run writes. There is no coordinator: the shard a process is comes from
//! its arguments or its scheduler's environment, which part it computes depends only on the
//! data and that shard, and each part is an ordinary resumable output with its run record.
//!
//! - [`Shard`]: `I/N`, parsed or read from `SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN`
//!   with `SLURM_ARRAY_TASK_COUNT`, or `JOB_COMPLETION_INDEX` with a shard count.
//! - [`balanced_ranges`]: contiguous query ranges balanced by token count. Queries are
//!   computed one at a time, so a query's numbers do not depend on which shard computes it.
//! - [`collect`]: the shard files of a folder, checked to be one run (the same settings but
//!   the shard, every shard present once, ranges that tile the queries).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result, Setting};
use crate::io::formats::RunRecord;
use crate::io::runlog::record_of;

/// One of `count` shards, `index` counted from 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// A shard, checked: 0 ≤ index < count.
    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 || index >= count {
            return Err(Error::out_of_range(
                Setting::Shard,
                format!("{index}/{count}"),
                "I/N needs 0 ≤ I < N",
            ));
        }
        Ok(Shard { index, count })
    }

    /// `I/N`.
    pub fn parse(s: &str) -> Result<Shard> {
        let bad = || Error::bad_value(Setting::Shard, format!("{s:?}"), "expected I/N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let num = |x: &str| x.trim().parse::<usize>().map_err(|_| bad());
        Shard::new(num(i)?, num(n)?)
    }

    /// The shard of this process from its scheduler's environment (`get` reads a variable):
    /// a Slurm array task (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN` of
    /// `SLURM_ARRAY_TASK_COUNT`; an array with a step other than 1 is refused, as its IDs do
    /// not number the shards), else a Kubernetes Indexed Job's `JOB_COMPLETION_INDEX` of
    /// `count` shards (Kubernetes does not say how many there are). `None` outside both.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
        count: Option<usize>,
    ) -> Result<Option<Shard>> {
        let num =
            |name: &str| -> Result<Option<usize>> {
                match get(name) {
                    None => Ok(None),
                    Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                        Error::InvalidArgument(format!("{name}={v:?} is not a number"))
                    }),
                }
            };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            if let Some(step) = num("SLURM_ARRAY_TASK_STEP")? {
                if step != 1 {
                    return Err(Error::InvalidArgument(format!(
                        "the Slurm array has step {step} (SLURM_ARRAY_TASK_STEP): its task IDs do not number shards 0..N; submit it with --array=0-{} (step 1)",
                        num("SLURM_ARRAY_TASK_COUNT")?.map_or("N-1".into(), |n| (n.max(1) - 1).to_string())
                    )));
                }
            }
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let n = num("SLURM_ARRAY_TASK_COUNT")?.ok_or_else(|| {
                Error::InvalidArgument(
                    "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not".into(),
                )
            })?;
            let index = id.checked_sub(min).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"
                ))
            })?;
            if let Some(c) = count.filter(|&c| c != n) {
                return Err(Error::InvalidArgument(format!(
                    "the Slurm array has {n} tasks (SLURM_ARRAY_TASK_COUNT) but {c} shards were asked for"
                )));
            }
            return Shard::new(index, n).map(Some);
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let n = count.ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "JOB_COMPLETION_INDEX is {index} (a Kubernetes Indexed Job) but the number of shards is not given: pass the Job's completions"
                ))
            })?;
            return Shard::new(index, n).map(Some);
        }
        Ok(None)
    }

    /// The file this shard writes in the shared folder `dir`: `shard-00001-of-00004.jsonl`.
    pub fn file(&self, dir: &Path, ext: &str) -> PathBuf {
        dir.join(format!(
            "shard-{:05}-of-{:05}.{ext}",
            self.index, self.count
        ))
    }

    /// The queries this shard computes, of `weights` (one per query, e.g. token counts).
    pub fn range(&self, weights: &[usize]) -> Range<usize> {
        balanced_ranges(weights, self.count)[self.index].clone()
    }
}

/// `n` contiguous ranges of `weights.len()` items, in order, each as close as a contiguous cut
/// allows to `1/n` of the total weight: range i ends at the first item where the running sum
/// reaches `(i+1)/n` of the total (ranges may be empty when there are fewer items than shards).
/// Depends only on the weights and `n`.
pub fn balanced_ranges(weights: &[usize], n: usize) -> Vec<Range<usize>> {
    let n = n.max(1);
    let total: u128 = weights.iter().map(|&w| w.max(1) as u128).sum();
    let mut ranges = Vec::with_capacity(n);
    let mut start = 0;
    let mut sum: u128 = 0;
    let mut i = 0;
    for k in 1..=n {
        // The cut after which the running sum first reaches k/n of the total.
        let target = total * k as u128;
        while i < weights.len() && sum * (n as u128) < target {
            // Stop before an item that overshoots more than it fills, except for the last cut.
            let w = weights[i].max(1) as u128;
            let before = target - sum * n as u128;
            let after = (sum + w) * n as u128;
            if k < n && after > target && after - target > before && i > start {
                break;
            }
            sum += w;
            i += 1;
        }
        if k == n {
            i = weights.len();
        }
        ranges.push(start..i);
        start = i;
    }
    ranges
}

/// The shard setting a ships shard's run record holds: `{"index", "count", "queries": [start, end]}`.
pub fn record_setting(shard: Shard, range: &Range<usize>) -> Value {
    serde_json::json!({"index": shard.index, "count": shard.count, "queries": [range.start, range.end]})
}

/// The shard setting of a shard whose units are not queries but batches of a run's plan
/// (eval): `{"index", "count", "batches": [start, end], "of": total, "lines": n, …extra}`,
/// with `lines` the lines its file holds when it is done, and `extra` what every shard of
/// the run shares (eval: its conditions). [`collect`] checks the shards agree on all of it
/// but their index and range.
pub fn batches_setting(
    shard: Shard,
    range: &Range<usize>,
    of: usize,
    lines: usize,
    extra: serde_json::Map<String, Value>,
) -> Value {
    let mut v = serde_json::json!({"index": shard.index, "count": shard.count,
        "batches": [range.start, range.end], "of": of, "lines": lines});
    v.as_object_mut().expect("an object").extend(extra);
    v
}

/// One shard's output in a shared folder.
#[derive(Debug, Clone)]
pub struct ShardFile {
    pub shard: Shard,
    pub path: PathBuf,
    /// What it computed: a range of the queries (ships) or of the batches of the run's plan
    /// (eval).
    pub range: Range<usize>,
    /// The lines its file holds when it is done: the range's length for ships, its
    /// setting's `lines` for batches.
    pub lines: usize,
    /// Its run record.
    pub record: RunRecord,
}

impl ShardFile {
    /// The lines of this finished shard file and their text, each checked by `check` (given
    /// the line's number in this file). A shard with fewer than its lines has not finished:
    /// refused, naming it (`what` names its lines: `queries`, `responses`).
    pub fn read_finished<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        check: impl FnMut(usize, &T) -> std::result::Result<(), String>,
    ) -> Result<(Vec<T>, String)> {
        let mut body = std::fs::read_to_string(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let (lines, good) = crate::io::runlog::read_lines::<T>(&self.path, &body, check)?;
        if lines.len() != self.lines {
            return Err(Error::InvalidArgument(format!(
                "{} holds {} of its {} {what}: shard {}/{} has not finished; rerun it (it resumes) and merge again",
                self.path.display(),
                lines.len(),
                self.lines,
                self.shard.index,
                self.shard.count
            )));
        }
        body.truncate(good);
        Ok((lines, body))
    }
}

/// Refuses to merge into an existing non-empty `out`: a merge writes a new file.
pub fn check_new_output(out: &Path) -> Result<()> {
    if std::fs::metadata(out).is_ok_and(|m| m.len() > 0) {
        return Err(Error::InvalidArgument(format!(
            "{} exists; merge writes a new file",
            out.display()
        )));
    }
    Ok(())
}

/// Writes a merged run's lines `text` to `out` with the whole run's record beside it, as a
/// single run with `--out out` does (its summary is the caller's).
pub fn write_merged(out: &Path, whole: &RunRecord, text: &str) -> Result<()> {
    check_new_output(out)?;
    crate::io::fs::write_json(&crate::io::runlog::sibling(out, "run.json"), whole)?;
    crate::io::fs::write_atomic(out, text.as_bytes())
}

/// The shard files (`shard-*-of-*.EXT`) of `dir`, in shard order, checked to be the parts of
/// one run: every shard of the count present once, each with a run record, the records equal
/// but for their shard, the query ranges tiling 0..queries. Returns them and the record of
/// the whole run (the shard setting removed: the record a single run writes).
pub fn collect(dir: &Path, ext: &str) -> Result<(Vec<ShardFile>, RunRecord)> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<ShardFile> = Vec::new();
    let bad = |path: &Path, reason: String| Error::ResumeMismatch {
        path: path.to_path_buf(),
        line: None,
        reason,
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name
            .strip_prefix("shard-")
            .and_then(|s| s.strip_suffix(&format!(".{ext}")))
        else {
            continue;
        };
        let Some((i, n)) = stem.split_once("-of-") else {
            continue;
        };
        let (Ok(i), Ok(n)) = (i.parse::<usize>(), n.parse::<usize>()) else {
            continue;
        };
        let path = entry.path();
        let shard = Shard::new(i, n).map_err(|_| bad(&path, "is not a shard I of N".into()))?;
        let record = record_of(&path)?.ok_or_else(|| {
            bad(
                &path,
                "has no run record beside it: it was not written by a sharded run".into(),
            )
        })?;
        let setting = record.settings.get("shard").cloned().unwrap_or(Value::Null);
        let range_of = |key: &str| {
            setting[key]
                .as_array()
                .and_then(|a| Some(a.first()?.as_u64()? as usize..a.get(1)?.as_u64()? as usize))
        };
        let (range, lines) = match (range_of("queries"), range_of("batches")) {
            (Some(q), None) => (q.clone(), Some(q.len())),
            (None, Some(b)) => (b, setting["lines"].as_u64().map(|n| n as usize)),
            _ => (0..0, None),
        };
        let lines = match lines {
            Some(lines)
                if setting["index"].as_u64() == Some(i as u64)
                    && setting["count"].as_u64() == Some(n as u64) =>
            {
                lines
            }
            _ => {
                return Err(bad(
                    &path,
                    "its run record does not say it is this shard".into(),
                ))
            }
        };
        files.push(ShardFile {
            shard,
            path,
            range,
            lines,
            record,
        });
    }
    if files.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} holds no shard files (shard-I-of-N.{ext})",
            dir.display()
        )));
    }
    files.sort_by_key(|f| (f.shard.count, f.shard.index));
    let count = files[0].shard.count;
    if let Some(f) = files.iter().find(|f| f.shard.count != count) {
        return Err(bad(
            &f.path,
            format!(
                "is a shard of {} but {} is a shard of {count}: the folder mixes two runs",
                f.shard.count,
                files[0].path.display()
            ),
        ));
    }
    if let Some(w) = files.windows(2).find(|w| w[0].shard == w[1].shard) {
        return Err(bad(&w[1].path, "duplicates another shard's file".into()));
    }
    let missing: Vec<String> = (0..count)
        .filter(|i| !files.iter().any(|f| f.shard.index == *i))
        .map(|i| format!("{i}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{}: shard(s) {} missing (not run yet, or failed); run them and merge again",
            dir.display(),
            missing.join(", ")
        )));
    }
    let whole = without_shard(&files[0].record);
    let shared = shared_setting(&files[0].record);
    for f in &files[1..] {
        if shared_setting(&f.record) != shared {
            return Err(bad(
                &f.path,
                format!(
                    "is not a shard of the same run as {}: their shard settings differ beyond the shard",
                    files[0].path.display()
                ),
            ));
        }
        crate::io::runlog::same_run(&whole, &files[0].path, &without_shard(&f.record)).map_err(
            |why| {
                bad(
                    &f.path,
                    format!(
                        "is not a shard of the same run as {}: {why}",
                        files[0].path.display()
                    ),
                )
            },
        )?;
    }
    // Ranges of queries tile the run's queries; ranges of batches tile its plan.
    let (unit, total) = match shared.get("of").and_then(Value::as_u64) {
        Some(of) => ("batches", of as usize),
        None => ("queries", whole.queries),
    };
    let mut next = 0;
    for f in &files {
        if f.range.start != next {
            return Err(bad(
                &f.path,
                format!(
                    "covers {unit} {}..{} where {next}.. was expected: the shards overlap or leave a gap (written for other data?)",
                    f.range.start, f.range.end
                ),
            ));
        }
        next = f.range.end;
    }
    if next != total {
        return Err(bad(
            &files[files.len() - 1].path,
            format!("the shards cover {next} of the run's {total} {unit}"),
        ));
    }
    Ok((files, whole))
}

/// What every shard of a run shares in its shard setting: all of it but the index and the
/// range (and the lines, which depend on the range).
fn shared_setting(r: &RunRecord) -> serde_json::Map<String, Value> {
    let mut s = match r.settings.get("shard") {
        Some(Value::Object(m)) => m.clone(),
        _ => Default::default(),
    };
    for k in ["index", "queries", "batches", "lines"] {
        s.remove(k);
    }
    s
}

/// A shard's record without its shard: the record of the whole run.
fn without_shard(r: &RunRecord) -> RunRecord {
    let mut r = r.clone();
    r.settings.remove("shard");
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(a, _)| *a == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn shards_parse_and_come_from_slurm_or_kubernetes() {
        assert_eq!(Shard::parse("1/4").unwrap(), Shard { index: 1, count: 4 });
        assert!(Shard::parse("4/4").is_err());
        assert!(Shard::parse("x").is_err());
        assert_eq!(Shard::from_env(env(&[]), None).unwrap(), None);
        // Array IDs need not start at 0.
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "12"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        assert_eq!(
            Shard::from_env(env(&slurm), None).unwrap(),
            Some(Shard { index: 2, count: 3 })
        );
        let stepped = [
            ("SLURM_ARRAY_TASK_ID", "2"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
        ];
        let e = Shard::from_env(env(&stepped), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("step 2") && e.contains("--array=0-2"), "{e}");
        let k8s = [("JOB_COMPLETION_INDEX", "3")];
        assert_eq!(
            Shard::from_env(env(&k8s), Some(5)).unwrap(),
            Some(Shard { index: 3, count: 5 })
        );
        assert!(Shard::from_env(env(&k8s), None)
            .unwrap_err()
            .to_string()
            .contains("number of shards"));
        assert!(Shard::from_env(env(&k8s), Some(3)).is_err());
    }

    #[test]
    fn ranges_are_contiguous_balanced_and_depend_only_on_the_weights() {
        let w = [10, 10, 10, 10, 10, 10];
        assert_eq!(balanced_ranges(&w, 3), vec![0..2, 2..4, 4..6]);
        // A heavy query gets a shard of its own.
        let w = [100, 1, 1, 1, 1, 1];
        let r = balanced_ranges(&w, 2);
        assert_eq!(r, vec![0..1, 1..6]);
        // Every item once, in order, whatever the count.
        for n in 1..9 {
            let w: Vec<usize> = (0..7).map(|i| 5 + (i * 37) % 11).collect();
            let r = balanced_ranges(&w, n);
            assert_eq!(r.len(), n);
            assert_eq!(r[0].start, 0);
            assert_eq!(r[n - 1].end, 7);
            assert!(r.windows(2).all(|p| p[0].end == p[1].start));
        }
        // More shards than queries: some are empty.
        assert_eq!(
            balanced_ranges(&[3, 3], 3)
                .iter()
                .map(|r| r.len())
                .sum::<usize>(),
            2
        );
    }
}
