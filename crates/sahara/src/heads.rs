//! Head lists from earlier outputs: an `attribute` result (`selected`) or a `ships` summary
//! (`by_mean`).

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

/// Reads heads from an `attribute` output (its `selected` heads, in order) or a `ships`
/// summary (its `by_mean` ranking). `top` keeps the first K (default: every selected head of
/// an attribute output, or the single best head of a ships summary).
pub fn heads_from_file(path: &Path, top: Option<usize>) -> Result<Vec<(usize, usize)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |what: &str| {
        Error::Config {
        path: path.to_path_buf(),
        message: format!(
            "not a sahara attribute output (with `selected`) or ships summary (with `by_mean`): {what}"
        ),
    }
    };
    let heads: Vec<(usize, usize)> = if let Some(sel) = v.get("selected") {
        sel.as_array()
            .ok_or_else(|| bad("`selected` is not a list"))?
            .iter()
            .map(|p| {
                let l = p.get(0).and_then(Value::as_u64);
                let h = p.get(1).and_then(Value::as_u64);
                match (l, h) {
                    (Some(l), Some(h)) => Ok((l as usize, h as usize)),
                    _ => Err(bad("an entry of `selected` is not [layer, head]")),
                }
            })
            .collect::<Result<_>>()?
    } else if let Some(ranked) = v.get("by_mean") {
        ranked
            .as_array()
            .ok_or_else(|| bad("`by_mean` is not a list"))?
            .iter()
            .map(|e| {
                let l = e.get("layer").and_then(Value::as_u64);
                let h = e.get("head").and_then(Value::as_u64);
                match (l, h) {
                    (Some(l), Some(h)) => Ok((l as usize, h as usize)),
                    _ => Err(bad("an entry of `by_mean` lacks layer/head")),
                }
            })
            .collect::<Result<_>>()?
    } else {
        return Err(bad("neither key is present"));
    };
    if heads.is_empty() {
        return Err(bad("the head list is empty"));
    }
    let k = match (top, v.get("selected").is_some()) {
        (Some(0), _) => return Err(Error::InvalidArgument("--top must be at least 1".into())),
        (Some(k), _) => k,
        (None, true) => heads.len(),
        (None, false) => 1,
    };
    if k > heads.len() {
        return Err(Error::InvalidArgument(format!(
            "--top {k} but {} lists only {} heads",
            path.display(),
            heads.len()
        )));
    }
    Ok(heads[..k].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_attribute_outputs_and_ships_summaries() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.json");
        std::fs::write(&a, r#"{"selected": [[2, 3], [0, 1]], "steps": []}"#).unwrap();
        assert_eq!(heads_from_file(&a, None).unwrap(), vec![(2, 3), (0, 1)]);
        assert_eq!(heads_from_file(&a, Some(1)).unwrap(), vec![(2, 3)]);
        assert!(heads_from_file(&a, Some(3)).is_err());
        let s = dir.path().join("s.summary.json");
        std::fs::write(&s, r#"{"by_mean": [{"layer": 1, "head": 0, "mean": 0.5, "count": 2}, {"layer": 0, "head": 2, "mean": 0.1, "count": 0}]}"#).unwrap();
        assert_eq!(heads_from_file(&s, None).unwrap(), vec![(1, 0)]);
        assert_eq!(heads_from_file(&s, Some(2)).unwrap(), vec![(1, 0), (0, 2)]);
        let x = dir.path().join("x.json");
        std::fs::write(&x, r#"{"something": 1}"#).unwrap();
        let e = heads_from_file(&x, None).unwrap_err().to_string();
        assert!(
            e.contains("x.json") && e.contains("attribute output"),
            "{e}"
        );
    }
}
