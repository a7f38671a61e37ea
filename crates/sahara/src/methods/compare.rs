//! Two rankings of the same heads side by side (`sahara compare`): a base model and its chat
//! model, two fine-tunes, two templates of one model, two runs.
//!
//! A ranking is a `[layer][head]` grid of scores (mean Ships, or a Sahara step's scores).
//! The comparison gives, for each K, the top-K heads of both, their Jaccard overlap and which
//! heads are shared and which are not, and Spearman's rank correlation over every head scored
//! in both. Grids of different shapes are not compared.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::ships::{top_heads, HeadGrid};
use crate::methods::stats::{jaccard, spearman};

/// The K of the top-K overlaps unless others are asked for.
pub const DEFAULT_KS: [usize; 3] = [5, 10, 20];

/// The overlap of two top-K lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopOverlap {
    pub k: usize,
    /// |A ∩ B| / |A ∪ B| of the two top-K sets.
    pub jaccard: f64,
    /// Heads in both top-K lists, `[layer, head]`, in A's order.
    pub shared: Vec<[usize; 2]>,
    /// Heads in A's top K only, in A's order; and in B's only, in B's order.
    pub only_a: Vec<[usize; 2]>,
    pub only_b: Vec<[usize; 2]>,
}

/// What [`compare`] finds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Heads scored in both grids.
    pub heads: usize,
    /// Spearman's rank correlation of the two scores over those heads (ties: average ranks);
    /// null when either side is constant.
    pub spearman: Option<f64>,
    pub top: Vec<TopOverlap>,
}

/// "L layers × H heads" of a grid.
pub fn shape_of(grid: &HeadGrid) -> String {
    format!(
        "{} layers × {} heads",
        grid.len(),
        grid.first().map_or(0, Vec::len)
    )
}

/// Compares two grids of the same shape at each K of `ks` (K larger than the number of heads
/// is cut to it).
pub fn compare(a: &HeadGrid, b: &HeadGrid, ks: &[usize]) -> Result<Comparison> {
    let same_shape = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.len() == y.len());
    if !same_shape {
        return Err(Error::DifferentShapes {
            first: shape_of(a),
            second: shape_of(b),
        });
    }
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for (ra, rb) in a.iter().zip(b) {
        for (x, y) in ra.iter().zip(rb) {
            if let (Some(x), Some(y)) = (x, y) {
                xs.push(*x);
                ys.push(*y);
            }
        }
    }
    let pairs = |grid: &HeadGrid, k: usize| -> Vec<[usize; 2]> {
        top_heads(grid, k)
            .into_iter()
            .map(|h| [h.layer, h.head])
            .collect()
    };
    let top = ks
        .iter()
        .map(|&k| {
            let (ta, tb) = (pairs(a, k), pairs(b, k));
            TopOverlap {
                k,
                jaccard: jaccard(&ta, &tb),
                shared: ta.iter().filter(|h| tb.contains(h)).copied().collect(),
                only_a: ta.iter().filter(|h| !tb.contains(h)).copied().collect(),
                only_b: tb.iter().filter(|h| !ta.contains(h)).copied().collect(),
            }
        })
        .collect();
    Ok(Comparison {
        heads: xs.len(),
        spearman: spearman(&xs, &ys),
        top,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(rows: &[&[f64]]) -> HeadGrid {
        rows.iter()
            .map(|r| r.iter().map(|&v| Some(v)).collect())
            .collect()
    }

    #[test]
    fn identical_rankings_agree_fully() {
        let a = grid(&[&[1.0, 5.0], &[3.0, 2.0]]);
        let c = compare(&a, &a, &[2]).unwrap();
        assert_eq!(c.spearman, Some(1.0));
        assert_eq!(c.top[0].jaccard, 1.0);
        assert_eq!(c.top[0].shared, vec![[0, 1], [1, 0]]);
        assert!(c.top[0].only_a.is_empty() && c.top[0].only_b.is_empty());
    }

    #[test]
    fn a_hand_computed_overlap() {
        // A's top 2: 0:1, 1:0; B's top 2: 0:1, 1:1.
        let a = grid(&[&[1.0, 5.0], &[3.0, 2.0]]);
        let b = grid(&[&[1.0, 9.0], &[2.0, 4.0]]);
        let c = compare(&a, &b, &[2, 10]).unwrap();
        assert!((c.top[0].jaccard - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(c.top[0].shared, vec![[0, 1]]);
        assert_eq!(c.top[0].only_a, vec![[1, 0]]);
        assert_eq!(c.top[0].only_b, vec![[1, 1]]);
        // K beyond the heads: all four on both sides.
        assert_eq!(c.top[1].jaccard, 1.0);
        // Ranks A (1, 4, 3, 2) against B (1, 4, 2, 3): rho = 1 - 6·2 / (4·15) = 0.8.
        assert!((c.spearman.unwrap() - 0.8).abs() < 1e-12);
    }

    #[test]
    fn grids_of_different_shapes_are_refused_with_both_shapes() {
        let a = grid(&[&[1.0, 5.0]]);
        let b = grid(&[&[1.0], &[2.0]]);
        let e = compare(&a, &b, &[5]).unwrap_err().to_string();
        assert!(e.contains("1 layers × 2 heads"), "{e}");
        assert!(e.contains("2 layers × 1 heads"), "{e}");
    }
}
