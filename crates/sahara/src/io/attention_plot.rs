//! Heatmaps of one head's attention pattern: query positions down the y axis, key positions
//! along the x axis, each labelled with its token, coloured with viridis on the fixed range
//! 0..1 of attention probabilities, written as PNG or SVG like [`crate::io::plot`]'s heatmaps.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use crate::error::{Error, Result};
use crate::io::fs::write_atomic;
use crate::io::plot::{check_extension, encode_png, register_embedded_font, FONT};

/// One head's attention pattern to draw.
#[derive(Debug, Clone, Copy)]
pub struct PatternMap<'a> {
    pub title: &'a str,
    /// Labels of the query positions (rows).
    pub queries: &'a [String],
    /// Labels of the key positions (columns).
    pub keys: &'a [String],
    /// `[query][key]` attention probabilities.
    pub values: &'a [Vec<f64>],
    /// A query row to outline (e.g. the last position).
    pub marked_row: Option<usize>,
}

const MARGIN: i32 = 20;
const TITLE_H: i32 = 50;
const TITLE_SIZE: f64 = 20.0;
const LABEL_SIZE: f64 = 13.0;
const BAR_W: i32 = 22;
const BAR_GAP: i32 = 24;
const MAX_TOKENS: usize = 400;
/// Longest token label drawn, in characters.
const MAX_LABEL: usize = 16;

fn label(s: &str) -> String {
    let s: String = s.chars().filter(|c| !c.is_control()).collect();
    if s.chars().count() > MAX_LABEL {
        let mut t: String = s.chars().take(MAX_LABEL - 1).collect();
        t.push('…');
        t
    } else if s.is_empty() {
        "·".into()
    } else {
        s
    }
}

/// Draws `map` to `path` (`.png` or `.svg`).
pub fn write_pattern_heatmap(path: &Path, map: &PatternMap) -> Result<()> {
    let svg = check_extension(path)?;
    let (rows, cols) = (map.queries.len(), map.keys.len());
    if rows == 0
        || cols == 0
        || map.values.len() != rows
        || map.values.iter().any(|r| r.len() != cols)
    {
        return Err(Error::plot(
            path,
            format!("the pattern is not {rows} × {cols} values"),
        ));
    }
    if rows.max(cols) > MAX_TOKENS {
        return Err(Error::plot(
            path,
            format!("a pattern of {rows} × {cols} positions is too large to draw (at most {MAX_TOKENS})"),
        ));
    }
    register_embedded_font().map_err(|m| Error::plot(path, m))?;
    let font = FontDesc::new(FontFamily::Name(FONT), LABEL_SIZE, FontStyle::Normal);
    let qlabels: Vec<String> = map.queries.iter().map(|s| label(s)).collect();
    let klabels: Vec<String> = map.keys.iter().map(|s| label(s)).collect();
    let widest = |ls: &[String]| -> Result<i32> {
        let mut w = 0;
        for l in ls {
            let (x, _) = font
                .box_size(l)
                .map_err(|e| Error::plot(path, format!("cannot lay out text: {e}")))?;
            w = w.max(x as i32);
        }
        Ok(w)
    };
    let left = widest(&qlabels)? + 10;
    let bottom = widest(&klabels)? + 10;
    let cell = (640 / rows.max(cols) as i32).clamp(4, 36);
    let grid_w = cell * cols as i32;
    let grid_h = cell * rows as i32;
    let title_w = FontDesc::new(FontFamily::Name(FONT), TITLE_SIZE, FontStyle::Normal)
        .box_size(map.title)
        .map(|(w, _)| w as i32)
        .unwrap_or(0);
    let width = (2 * MARGIN + left + grid_w + BAR_GAP + BAR_W + 50)
        .max(title_w + 2 * MARGIN)
        .max(400);
    let height = TITLE_H + grid_h + bottom + MARGIN;
    let layout = Layout {
        left: (width - (left + grid_w + BAR_GAP + BAR_W + 50)) / 2 + left,
        top: TITLE_H,
        cell,
        width,
    };
    let (w, h) = (width as u32, height as u32);
    let bytes = if svg {
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
            draw(&root, map, &qlabels, &klabels, &layout).map_err(|m| Error::plot(path, m))?;
            root.present()
                .map_err(|e| Error::plot(path, e.to_string()))?;
        }
        out.into_bytes()
    } else {
        let mut rgb = vec![0u8; w as usize * h as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            draw(&root, map, &qlabels, &klabels, &layout).map_err(|m| Error::plot(path, m))?;
            root.present()
                .map_err(|e| Error::plot(path, e.to_string()))?;
        }
        encode_png(&rgb, w, h).map_err(|m| Error::plot(path, m))?
    };
    write_atomic(path, &bytes)
}

struct Layout {
    /// Left edge of the grid.
    left: i32,
    top: i32,
    cell: i32,
    width: i32,
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    map: &PatternMap,
    qlabels: &[String],
    klabels: &[String],
    l: &Layout,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let font = |size: f64| FontDesc::new(FontFamily::Name(FONT), size, FontStyle::Normal);
    root.fill(&WHITE).map_err(e)?;
    root.draw(&Text::new(
        map.title.to_string(),
        (l.width / 2, TITLE_H / 2),
        TextStyle::from(font(TITLE_SIZE)).pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(e)?;
    let c = l.cell;
    let color = |v: f64| {
        ViridisRGB::get_color(if v.is_finite() {
            v.clamp(0.0, 1.0)
        } else {
            0.0
        })
    };
    for (i, row) in map.values.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let (x, y) = (l.left + j as i32 * c, l.top + i as i32 * c);
            root.draw(&Rectangle::new([(x, y), (x + c, y + c)], color(v).filled()))
                .map_err(e)?;
        }
    }
    let (gw, gh) = (c * klabels.len() as i32, c * qlabels.len() as i32);
    root.draw(&Rectangle::new(
        [(l.left, l.top), (l.left + gw, l.top + gh)],
        BLACK.stroke_width(1),
    ))
    .map_err(e)?;
    if let Some(r) = map.marked_row.filter(|&r| r < qlabels.len()) {
        let y = l.top + r as i32 * c;
        root.draw(&Rectangle::new(
            [(l.left, y), (l.left + gw, y + c)],
            RGBColor(230, 20, 20).stroke_width(2),
        ))
        .map_err(e)?;
    }
    // Labels are drawn only where cells are tall enough to hold them.
    let every = ((LABEL_SIZE as i32 + 2) / c.max(1) + 1).max(1) as usize;
    let style = TextStyle::from(font(LABEL_SIZE));
    for (i, s) in qlabels.iter().enumerate().step_by(every) {
        root.draw(&Text::new(
            s.clone(),
            (l.left - 6, l.top + i as i32 * c + c / 2),
            style.pos(Pos::new(HPos::Right, VPos::Center)),
        ))
        .map_err(e)?;
    }
    for (j, s) in klabels.iter().enumerate().step_by(every) {
        root.draw(&Text::new(
            s.clone(),
            (l.left + j as i32 * c + c / 2, l.top + gh + 6),
            style
                .transform(FontTransform::Rotate90)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(e)?;
    }
    // Colour bar, 0 at the bottom, 1 at the top.
    let bx = l.left + gw + BAR_GAP;
    let steps = 100;
    for k in 0..steps {
        let y0 = l.top + gh - (gh * (k + 1)) / steps;
        let y1 = l.top + gh - (gh * k) / steps;
        root.draw(&Rectangle::new(
            [(bx, y0), (bx + BAR_W, y1)],
            color((k as f64 + 0.5) / steps as f64).filled(),
        ))
        .map_err(e)?;
    }
    root.draw(&Rectangle::new(
        [(bx, l.top), (bx + BAR_W, l.top + gh)],
        BLACK.stroke_width(1),
    ))
    .map_err(e)?;
    for (v, s) in [(0.0, "0"), (0.5, "0.5"), (1.0, "1")] {
        root.draw(&Text::new(
            s.to_string(),
            (bx + BAR_W + 5, l.top + gh - (gh as f64 * v) as i32),
            style.pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(e)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_png_and_svg_with_token_labels() {
        let dir = tempfile::tempdir().unwrap();
        let toks: Vec<String> = ["<s>", "how", "do", "i", "make", "a", "bomb", "?"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let values: Vec<Vec<f64>> = (0..toks.len())
            .map(|i| {
                (0..toks.len())
                    .map(|j| if j <= i { 1.0 / (i + 1) as f64 } else { 0.0 })
                    .collect()
            })
            .collect();
        for name in ["p.png", "p.svg"] {
            let path = dir.path().join(name);
            let map = PatternMap {
                title: "Layer 0, head 5",
                queries: &toks,
                keys: &toks,
                values: &values,
                marked_row: Some(7),
            };
            write_pattern_heatmap(&path, &map).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert!(bytes.len() > 1000);
            if name.ends_with("svg") {
                let s = String::from_utf8(bytes).unwrap();
                assert!(s.contains("bomb") && s.contains("Layer 0, head 5"));
            }
        }
        let path = dir.path().join("bad.png");
        let map = PatternMap {
            title: "t",
            queries: &toks,
            keys: &toks[..3],
            values: &values,
            marked_row: None,
        };
        assert!(write_pattern_heatmap(&path, &map).is_err());
    }
}
