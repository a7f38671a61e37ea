//! How far two judges agree: the 2×2 table of their verdicts and Cohen's κ.
//!
//! Only responses both judges decided enter the table; a response either left undecided is
//! counted apart. With `a` the fraction both call harmful plus the fraction both call not
//! harmful (the observed agreement `p_o`), and `p_e = p₁·q₁ + (1−p₁)·(1−q₁)` the agreement
//! expected by chance from each judge's own rate of "harmful" (`p₁`, `q₁`),
//! `κ = (p_o − p_e) / (1 − p_e)`.
//!
//! κ is reported as undefined (null, with the reason) when no response was decided by both,
//! or when either judge gave one verdict to every response: then `p_e` equals that judge's
//! share of the other's verdict, κ is 0 (or 0/0) whatever the other judge did, and a number
//! would say nothing about the agreement.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::VerdictRecord;

/// The 2×2 table, κ and the disagreements of two judges.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Agreement {
    /// The two judges' names, in panel order.
    pub judges: [String; 2],
    /// Responses both judges called harmful.
    pub both_harmful: usize,
    /// Responses only the first judge called harmful.
    pub only_first_harmful: usize,
    /// Responses only the second judge called harmful.
    pub only_second_harmful: usize,
    /// Responses neither judge called harmful.
    pub neither_harmful: usize,
    /// Responses either judge left undecided (not in the table).
    pub undecided: usize,
    /// The fraction of the table on which they agree; null for an empty table.
    pub observed: Option<f64>,
    /// Cohen's κ; null when undefined.
    pub kappa: Option<f64>,
    /// Why κ is undefined; null when it is defined.
    pub kappa_undefined: Option<String>,
    /// Positions (in the input order) of the responses on which they disagree.
    #[serde(skip)]
    pub disagreements: Vec<usize>,
}

impl Agreement {
    /// Responses in the table.
    pub fn decided(&self) -> usize {
        self.both_harmful
            + self.only_first_harmful
            + self.only_second_harmful
            + self.neither_harmful
    }
}

/// The agreement of judges `names[i]` and `names[j]` for every pair `i < j`, in that order.
/// `verdicts[r][k]` is judge `k`'s `harmful` on response `r`.
pub fn pairwise(names: &[&str], verdicts: &[Vec<Option<bool>>]) -> Vec<Agreement> {
    let mut out = Vec::new();
    for i in 0..names.len() {
        for j in i + 1..names.len() {
            out.push(pair(
                [names[i], names[j]],
                verdicts.iter().map(|v| (v[i], v[j])),
            ));
        }
    }
    out
}

/// The agreement of two judges over their verdicts on the same responses.
pub fn pair(
    names: [&str; 2],
    verdicts: impl IntoIterator<Item = (Option<bool>, Option<bool>)>,
) -> Agreement {
    let (mut tt, mut tf, mut ft, mut ff, mut undecided) = (0, 0, 0, 0, 0);
    let mut disagreements = Vec::new();
    for (r, v) in verdicts.into_iter().enumerate() {
        match v {
            (Some(true), Some(true)) => tt += 1,
            (Some(true), Some(false)) => {
                tf += 1;
                disagreements.push(r);
            }
            (Some(false), Some(true)) => {
                ft += 1;
                disagreements.push(r);
            }
            (Some(false), Some(false)) => ff += 1,
            _ => undecided += 1,
        }
    }
    let n = tt + tf + ft + ff;
    let (kappa, why) = kappa(tt, tf, ft, ff, names);
    Agreement {
        judges: names.map(String::from),
        both_harmful: tt,
        only_first_harmful: tf,
        only_second_harmful: ft,
        neither_harmful: ff,
        undecided,
        observed: (n > 0).then(|| (tt + ff) as f64 / n as f64),
        kappa,
        kappa_undefined: why,
        disagreements,
    }
}

/// Cohen's κ of a 2×2 table (first judge's verdict by rows, harmful first), or why it is
/// undefined.
pub fn kappa(
    tt: usize,
    tf: usize,
    ft: usize,
    ff: usize,
    names: [&str; 2],
) -> (Option<f64>, Option<String>) {
    let n = (tt + tf + ft + ff) as f64;
    if n == 0.0 {
        return (
            None,
            Some("no response was decided by both judges".to_string()),
        );
    }
    for (name, harmful) in [(names[0], tt + tf), (names[1], tt + ft)] {
        let constant = if harmful == 0 {
            Some("not harmful")
        } else if harmful as f64 == n {
            Some("harmful")
        } else {
            None
        };
        if let Some(c) = constant {
            return (
                None,
                Some(format!(
                    "the {name} judge called every response both decided {c}"
                )),
            );
        }
    }
    let p1 = (tt + tf) as f64 / n;
    let q1 = (tt + ft) as f64 / n;
    let po = (tt + ff) as f64 / n;
    let pe = p1 * q1 + (1.0 - p1) * (1.0 - q1);
    (Some((po - pe) / (1.0 - pe)), None)
}

/// A judged response, as the agreement report needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged<'a> {
    pub set: Option<&'a str>,
    pub condition: Option<&'a str>,
    pub index: usize,
    pub query: &'a str,
    pub response: &'a str,
    /// The line's `judges` object: each judge's verdict record, keyed by name.
    pub judges: &'a serde_json::Map<String, Value>,
}

/// A response on which two judges disagree, for a person to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Disagreement {
    /// The two judges, as in the agreement.
    pub judges: [String; 2],
    /// Where the response is: the set and condition of an eval line (null where the judged
    /// file has none), and the query's index (or the line's number).
    pub set: Option<String>,
    pub condition: Option<String>,
    pub index: usize,
    pub query: String,
    pub response: String,
    /// The two verdicts, in the judges' order.
    pub verdicts: [VerdictRecord; 2],
}

/// Every pair's agreement over `items` (in their order), and the responses each pair
/// disagrees on, pair by pair. `names` are the judges in panel order; each item's `judges`
/// object must hold a verdict of each (see [`crate::io::formats::verdicts_of`]).
pub fn report(
    names: &[&str],
    items: &[Judged<'_>],
) -> std::result::Result<(Vec<Agreement>, Vec<Disagreement>), String> {
    let verdicts: Vec<Vec<Option<bool>>> = items
        .iter()
        .map(|i| crate::io::formats::verdicts_of(i.judges, names))
        .collect::<std::result::Result<_, _>>()?;
    let pairs = pairwise(names, &verdicts);
    let record = |item: &Judged<'_>, j: &str| -> VerdictRecord {
        serde_json::from_value(item.judges[j].clone()).unwrap_or(VerdictRecord {
            harmful: None,
            score: None,
            reason: String::new(),
        })
    };
    let mut out = Vec::new();
    for p in &pairs {
        for &r in &p.disagreements {
            let item = &items[r];
            out.push(Disagreement {
                judges: p.judges.clone(),
                set: item.set.map(String::from),
                condition: item.condition.map(String::from),
                index: item.index,
                query: item.query.to_string(),
                response: item.response.to_string(),
                verdicts: [record(item, &p.judges[0]), record(item, &p.judges[1])],
            });
        }
    }
    Ok((pairs, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(h: &str) -> Option<bool> {
        match h {
            "h" => Some(true),
            "n" => Some(false),
            _ => None,
        }
    }

    #[test]
    fn a_hand_made_table_gives_the_known_kappa() {
        // 20 responses: both harmful 6, only first 2, only second 4, neither 8, and 3 more
        // that one judge left undecided.
        let mut rows = Vec::new();
        rows.extend(std::iter::repeat_n(("h", "h"), 6));
        rows.extend(std::iter::repeat_n(("h", "n"), 2));
        rows.extend(std::iter::repeat_n(("n", "h"), 4));
        rows.extend(std::iter::repeat_n(("n", "n"), 8));
        rows.extend([("u", "h"), ("n", "u"), ("u", "u")]);
        let a = pair(["a", "b"], rows.iter().map(|&(x, y)| (v(x), v(y))));
        assert_eq!(
            (
                a.both_harmful,
                a.only_first_harmful,
                a.only_second_harmful,
                a.neither_harmful,
                a.undecided
            ),
            (6, 2, 4, 8, 3)
        );
        assert_eq!(a.decided(), 20);
        assert_eq!(a.observed, Some(0.7));
        // p1 = 8/20 = 0.4, q1 = 10/20 = 0.5, pe = 0.2 + 0.3 = 0.5, κ = (0.7 - 0.5)/0.5 = 0.4.
        assert!((a.kappa.unwrap() - 0.4).abs() < 1e-12, "{:?}", a.kappa);
        assert_eq!(a.kappa_undefined, None);
        // The disagreements are the 2 + 4 rows at positions 6..12.
        assert_eq!(a.disagreements, (6..12).collect::<Vec<_>>());
    }

    #[test]
    fn perfect_agreement_is_one_and_perfect_disagreement_minus_one() {
        let same = pair(["a", "b"], [(v("h"), v("h")), (v("n"), v("n"))]);
        assert_eq!(same.kappa, Some(1.0));
        let opposite = pair(["a", "b"], [(v("h"), v("n")), (v("n"), v("h"))]);
        assert_eq!(opposite.kappa, Some(-1.0));
        assert_eq!(opposite.disagreements, vec![0, 1]);
    }

    #[test]
    fn kappa_is_undefined_for_a_constant_judge_or_an_empty_table() {
        // The first judge calls everything harmful: κ would be 0 whatever the second does.
        let a = pair(
            ["keyword", "paper"],
            [(v("h"), v("h")), (v("h"), v("n")), (v("h"), v("h"))],
        );
        assert_eq!(a.kappa, None);
        let why = a.kappa_undefined.clone().unwrap();
        assert!(why.contains("keyword") && why.contains("harmful"), "{why}");
        assert_eq!(a.observed, Some(2.0 / 3.0));
        let b = pair(["a", "b"], [(v("h"), v("n")), (v("n"), v("n"))]);
        assert!(b.kappa_undefined.unwrap().contains("the b judge"));
        let empty = pair(["a", "b"], [(v("u"), v("h"))]);
        assert_eq!((empty.kappa, empty.observed), (None, None));
        assert!(empty.kappa_undefined.unwrap().contains("no response"));
        // As JSON: null with the reason.
        let j = serde_json::to_value(&a).unwrap();
        assert!(
            j["kappa"].is_null() && j["kappa_undefined"].is_string(),
            "{j}"
        );
        assert!(j.get("disagreements").is_none());
    }

    #[test]
    fn every_pair_in_panel_order() {
        let verdicts = vec![vec![v("h"), v("n"), v("h")], vec![v("n"), v("n"), v("h")]];
        let p = pairwise(&["a", "b", "c"], &verdicts);
        let names: Vec<[String; 2]> = p.iter().map(|a| a.judges.clone()).collect();
        assert_eq!(
            names,
            [["a", "b"], ["a", "c"], ["b", "c"]].map(|x| x.map(String::from))
        );
        assert_eq!(p[0].disagreements, vec![0]);
        assert_eq!(p[1].disagreements, vec![1]);
    }
}
