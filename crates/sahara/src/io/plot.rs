//! Layer × head heatmaps of per-head scores, written as PNG or SVG.
//!
//! Heads run along the x axis and layers down the y axis (layer 0 at the top, as in a
//! matrix). Values are coloured with viridis on the range of the computed values; cells
//! without a value are drawn grey and hatched; marked cells get a red outline. A colour bar
//! with numeric ticks and its label stands on the right. The image size follows the grid,
//! from a 2 × 4 toy model up to 80 layers × 64 heads.
//!
//! Text is drawn with DejaVu Sans, embedded in the crate (`assets/`), so no system font is
//! needed.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

use crate::error::{one_line, Error, Result};
use crate::io::fs::write_atomic;

/// DejaVu Sans (Bitstream Vera license, see `assets/DejaVuSans-LICENSE.txt`).
static FONT_TTF: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/DejaVuSans.ttf"
));
pub(crate) const FONT: &str = "sans-serif";

/// A layer × head grid of values to draw.
#[derive(Debug, Clone, Copy)]
pub struct Heatmap<'a> {
    /// e.g. "Mean Ships — model X on data Y".
    pub title: &'a str,
    /// `[layer][head]`; `None` (or a value that is not finite) = not computed, drawn grey and
    /// hatched. Every layer must have the same number of heads.
    pub values: &'a [Vec<Option<f64>>],
    /// (layer, head) cells to outline, e.g. the chosen heads.
    pub marked: &'a [(usize, usize)],
    pub colorbar_label: &'a str,
}

/// Checks that `path` ends in `.png` or `.svg` (before any work is done); true for SVG.
pub fn check_extension(path: &Path) -> Result<bool> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => Ok(false),
        Some("svg") => Ok(true),
        Some(other) => Err(Error::plot(
            path,
            format!("unsupported extension .{other}; expected .png or .svg"),
        )),
        None => Err(Error::plot(
            path,
            "no file extension; expected .png or .svg",
        )),
    }
}

/// Draws `map` to `path`, as PNG or SVG by the extension (`.png`, `.svg`). The image is
/// written to `path` with `.tmp` appended, then renamed over `path`.
pub fn write_heatmap(path: &Path, map: &Heatmap) -> Result<()> {
    let svg = check_extension(path)?;
    let bytes = if svg {
        render_svg(map)
            .map_err(|m| Error::plot(path, m))?
            .2
            .into_bytes()
    } else {
        let (w, h, rgb) = render_rgb(map).map_err(|m| Error::plot(path, m))?;
        encode_png(&rgb, w, h).map_err(|m| Error::plot(path, m))?
    };
    write_atomic(path, &bytes)
}

/// Draws several heatmaps side by side, left to right, each with its own colour bar and
/// title, into one PNG or SVG (by the extension of `path`).
pub fn write_heatmaps(path: &Path, maps: &[Heatmap]) -> Result<()> {
    let svg = check_extension(path)?;
    let bytes = if svg {
        let panels = maps
            .iter()
            .map(render_svg)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|m| Error::plot(path, m))?;
        let width: u32 = panels.iter().map(|p| p.0).sum();
        let height = panels.iter().map(|p| p.1).max().unwrap_or(0);
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">\n<rect width=\"{width}\" height=\"{height}\" fill=\"#ffffff\"/>\n"
        );
        let mut x = 0;
        for (w, _, text) in panels {
            // Each panel is a complete SVG document; nested, it is placed by its group.
            let body = text.trim_start();
            let body = match body.strip_prefix("<?xml") {
                Some(rest) => rest.split_once("?>").map_or(rest, |(_, b)| b),
                None => body,
            };
            out.push_str(&format!(
                "<g transform=\"translate({x},0)\">\n{body}\n</g>\n"
            ));
            x += w;
        }
        out.push_str("</svg>\n");
        out.into_bytes()
    } else {
        let panels = maps
            .iter()
            .map(render_rgb)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|m| Error::plot(path, m))?;
        let width: u32 = panels.iter().map(|p| p.0).sum();
        let height = panels.iter().map(|p| p.1).max().unwrap_or(0);
        let mut rgb = vec![255u8; width as usize * height as usize * 3];
        let mut x0 = 0usize;
        for (w, h, panel) in &panels {
            let (w, h) = (*w as usize, *h as usize);
            for y in 0..h {
                let src = &panel[y * w * 3..(y + 1) * w * 3];
                let at = (y * width as usize + x0) * 3;
                rgb[at..at + w * 3].copy_from_slice(src);
            }
            x0 += w;
        }
        encode_png(&rgb, width, height).map_err(|m| Error::plot(path, m))?
    };
    write_atomic(path, &bytes)
}

/// One heatmap as an SVG document: (width, height, text).
fn render_svg(map: &Heatmap) -> std::result::Result<(u32, u32, String), String> {
    let grid = Grid::check(map)?;
    register_embedded_font()?;
    let layout = Layout::new(&grid, map)?;
    let (w, h) = (layout.width, layout.height);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (w, h)).into_drawing_area();
        draw(&root, map, &grid, &layout)?;
        root.present().map_err(|e| one_line(&e.to_string()))?;
    }
    Ok((w, h, out))
}

/// One heatmap as RGB pixels: (width, height, rows of 3 bytes a pixel).
fn render_rgb(map: &Heatmap) -> std::result::Result<(u32, u32, Vec<u8>), String> {
    let grid = Grid::check(map)?;
    register_embedded_font()?;
    let layout = Layout::new(&grid, map)?;
    let (w, h) = (layout.width, layout.height);
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(&root, map, &grid, &layout)?;
        root.present().map_err(|e| one_line(&e.to_string()))?;
    }
    Ok((w, h, rgb))
}

pub(crate) fn encode_png(rgb: &[u8], w: u32, h: u32) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(|e| format!("PNG encoding: {e}"))?;
    writer
        .write_image_data(rgb)
        .map_err(|e| format!("PNG encoding: {e}"))?;
    writer.finish().map_err(|e| format!("PNG encoding: {e}"))?;
    Ok(out)
}

pub(crate) fn register_embedded_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_TTF).is_ok()) {
        Ok(())
    } else {
        Err("the embedded font DejaVuSans.ttf cannot be loaded".to_string())
    }
}

/// The checked shape and value range of a heatmap.
struct Grid {
    layers: usize,
    heads: usize,
    /// Colour range (min < max).
    lo: f64,
    hi: f64,
    any_missing: bool,
}

impl Grid {
    fn check(map: &Heatmap) -> std::result::Result<Self, String> {
        let layers = map.values.len();
        let heads = map.values.first().map_or(0, Vec::len);
        if layers == 0 || heads == 0 {
            return Err(format!(
                "heatmap {:?} is empty ({layers} layers × {heads} heads)",
                map.title
            ));
        }
        if let Some((l, row)) = map
            .values
            .iter()
            .enumerate()
            .find(|(_, row)| row.len() != heads)
        {
            return Err(format!(
                "layer {l} has {} heads, layer 0 has {heads}",
                row.len()
            ));
        }
        if let Some((l, h)) = map.marked.iter().find(|(l, h)| *l >= layers || *h >= heads) {
            return Err(format!(
                "marked head {l}:{h} is outside the grid of {layers} layers × {heads} heads"
            ));
        }
        let computed = map.values.iter().flatten().filter_map(|v| finite(*v));
        let (mut lo, mut hi) = computed.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        let any_missing = map.values.iter().flatten().any(|v| finite(*v).is_none());
        if lo > hi {
            // Nothing computed.
            (lo, hi) = (0.0, 1.0);
        } else {
            // Keep the range and its padding finite for absurdly large values.
            const BIG: f64 = 1e300;
            (lo, hi) = (lo.clamp(-BIG, BIG), hi.clamp(-BIG, BIG));
            if hi - lo <= f64::EPSILON * hi.abs().max(lo.abs()) {
                // One value: centre it in a small range.
                let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
                (lo, hi) = (lo - pad, lo + pad);
                if hi <= lo {
                    // Too small a value for a tenth of it to show.
                    (lo, hi) = (lo - 1.0, lo + 1.0);
                }
            }
        }
        Ok(Grid {
            layers,
            heads,
            lo,
            hi,
            any_missing,
        })
    }
}

fn finite(v: Option<f64>) -> Option<f64> {
    v.filter(|x| x.is_finite())
}

const MARGIN: u32 = 20;
const TITLE_SIZE: f64 = 22.0;
const DESC_SIZE: f64 = 17.0;
const TICK_SIZE: f64 = 13.0;
const TITLE_H: u32 = 56;
const X_LABEL_AREA: u32 = 52;
const FOOTER_H: u32 = 28;
const BAR_GAP: u32 = 28;
const BAR_W: u32 = 26;
/// Tick marks point outwards; plotters puts labels twice this far from the axis.
const TICK_MARK: u32 = 5;
/// Largest side of the grid in pixels, and smallest cell.
const MAX_GRID_PX: u32 = 4000;
const MIN_CELL: u32 = 2;
const BAR_TICKS: usize = 6;
/// Room for a rotated axis description beside its tick labels.
const DESC_ROOM: u32 = DESC_SIZE as u32 + 16;
const MARK_COLOR: RGBColor = RGBColor(230, 20, 20);
const MISSING_FILL: RGBColor = RGBColor(215, 215, 215);
const MISSING_HATCH: RGBColor = RGBColor(140, 140, 140);

/// Pixel sizes of one image.
struct Layout {
    width: u32,
    height: u32,
    /// Side of one (square) cell.
    cell: u32,
    /// Width of the layer tick labels and description, left of the grid.
    y_label_area: u32,
    /// Width of the colour-bar tick labels and description, right of the bar.
    bar_label_area: u32,
    /// Tick every `x_step` heads and `y_step` layers.
    x_step: usize,
    y_step: usize,
    footer: Option<String>,
}

impl Layout {
    fn new(grid: &Grid, map: &Heatmap) -> std::result::Result<Self, String> {
        if grid.layers.max(grid.heads) > MAX_GRID_PX as usize / MIN_CELL as usize {
            return Err(format!(
                "a grid of {} layers × {} heads is too large to draw (at most {} a side)",
                grid.layers,
                grid.heads,
                MAX_GRID_PX / MIN_CELL
            ));
        }
        let (layers, heads) = (grid.layers as u32, grid.heads as u32);
        // Square cells: 12 to 64 px for usual models, larger for toy ones so that the
        // grid is at least 240 px tall, smaller (down to 2 px) for very large grids.
        let mut cell = (900 / heads).min(800 / layers).clamp(12, 64);
        if cell * layers < 240 {
            cell = cell.max((240 / layers).min(100));
        }
        cell = cell
            .min(MAX_GRID_PX / heads)
            .min(MAX_GRID_PX / layers)
            .max(MIN_CELL);
        let grid_w = cell * heads;
        let grid_h = cell * layers;
        let x_step = tick_step(cell, 30);
        let y_step = tick_step(cell, 18);

        let mut notes = Vec::new();
        if !map.marked.is_empty() {
            notes.push("red outline: marked heads");
        }
        if grid.any_missing {
            notes.push("grey hatched: not computed");
        }
        let footer = (!notes.is_empty()).then(|| notes.join("    "));

        let text_w = |s: &str, size: f64| -> std::result::Result<u32, String> {
            FontDesc::new(FontFamily::Name(FONT), size, FontStyle::Normal)
                .box_size(s)
                .map(|(w, _)| w)
                .map_err(|e| format!("cannot lay out text {s:?}: {e}"))
        };
        let title_w = text_w(map.title, TITLE_SIZE)? + 2 * MARGIN;
        let y_label_area =
            2 * TICK_MARK + text_w(&(grid.layers - 1).to_string(), TICK_SIZE)? + DESC_ROOM;
        let format = format_ticks(grid.lo, grid.hi);
        // The ticks plotters draws for `y_labels(BAR_TICKS)`, to measure their labels.
        let mut widest = 0;
        for v in RangedCoordf64::from(grid.lo..grid.hi).key_points(BAR_TICKS) {
            widest = widest.max(text_w(&format(&v), TICK_SIZE)?);
        }
        let bar_label_area = 2 * TICK_MARK + widest + DESC_ROOM;
        let footer_w = match &footer {
            Some(f) => text_w(f, TICK_SIZE)? + 2 * MARGIN,
            None => 0,
        };
        let plot_w = MARGIN + y_label_area + grid_w + BAR_GAP + BAR_W + bar_label_area + MARGIN;
        let width = plot_w.max(title_w).max(footer_w).max(480);
        let height =
            TITLE_H + grid_h + X_LABEL_AREA + if footer.is_some() { FOOTER_H } else { 0 } + MARGIN;
        Ok(Layout {
            width,
            height,
            cell,
            y_label_area,
            bar_label_area,
            x_step,
            y_step,
            footer,
        })
    }
}

/// The smallest round step that puts ticks at least `min_px` apart.
fn tick_step(cell: u32, min_px: u32) -> usize {
    [
        1, 2, 4, 5, 8, 10, 16, 20, 25, 32, 50, 64, 100, 128, 250, 500, 1000,
    ]
    .into_iter()
    .find(|s| s * cell >= min_px)
    .unwrap_or(1000) as usize
}

/// A cell axis: values 0..n in cell units, ticks at cell centres every `step` cells, drawn
/// reversed (value 0 at the far end) when `reversed`.
#[derive(Clone)]
struct CellAxis {
    n: usize,
    step: usize,
    reversed: bool,
}

impl Ranged for CellAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let mut t = v / self.n as f64;
        if self.reversed {
            t = 1.0 - t;
        }
        (limit.0 as f64 + t * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        (0..self.n)
            .step_by(self.step.max(1))
            .map(|i| i as f64 + 0.5)
            .collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.n as f64
    }
}

/// Drawing errors of any backend, as one line.
fn de<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> String {
    one_line(&e.to_string())
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    map: &Heatmap,
    grid: &Grid,
    layout: &Layout,
) -> std::result::Result<(), String>
where
    DB::ErrorType: 'static,
{
    let font = |size: f64| FontDesc::new(FontFamily::Name(FONT), size, FontStyle::Normal);
    root.fill(&WHITE).map_err(de)?;

    let title_style = TextStyle::from(font(TITLE_SIZE))
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Center));
    root.draw(&Text::new(
        map.title.to_string(),
        ((layout.width / 2) as i32, (TITLE_H / 2) as i32 + 4),
        title_style,
    ))
    .map_err(de)?;

    let grid_w = layout.cell * grid.heads as u32;
    let grid_h = layout.cell * grid.layers as u32;
    // Centre the heatmap and its colour bar horizontally.
    let used = layout.y_label_area + grid_w + BAR_GAP + BAR_W + layout.bar_label_area;
    let left = (layout.width - used) / 2;
    let top = TITLE_H;

    // The heatmap.
    let area = root.margin(
        top,
        layout.height - top - grid_h - X_LABEL_AREA,
        left,
        layout.width - left - layout.y_label_area - grid_w,
    );
    let mut chart = ChartBuilder::on(&area)
        .set_label_area_size(LabelAreaPosition::Left, layout.y_label_area)
        .set_label_area_size(LabelAreaPosition::Bottom, X_LABEL_AREA)
        .build_cartesian_2d(
            CellAxis {
                n: grid.heads,
                step: layout.x_step,
                reversed: false,
            },
            CellAxis {
                n: grid.layers,
                step: layout.y_step,
                reversed: true,
            },
        )
        .map_err(de)?;
    let label = |v: &f64| format!("{}", v.floor() as usize);
    chart
        .configure_mesh()
        .disable_mesh()
        .set_all_tick_mark_size(TICK_MARK)
        .x_desc("Head")
        .y_desc("Layer")
        .axis_desc_style(font(DESC_SIZE))
        .label_style(font(TICK_SIZE))
        .x_label_formatter(&label)
        .y_label_formatter(&label)
        .draw()
        .map_err(de)?;

    let color = |v: f64| {
        let t = (v - grid.lo) / (grid.hi - grid.lo);
        ViridisRGB::get_color(if t.is_nan() { 0.5 } else { t.clamp(0.0, 1.0) })
    };
    let mut cells = Vec::with_capacity(grid.layers * grid.heads);
    let mut hatches = Vec::new();
    // Hatch lines in cell units, about 7 px apart.
    let per_cell = (layout.cell / 7).clamp(2, 8) as usize;
    for (l, row) in map.values.iter().enumerate() {
        for (h, v) in row.iter().enumerate() {
            let (x0, y0) = (h as f64, l as f64);
            match finite(*v) {
                Some(v) => cells.push(Rectangle::new(
                    [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                    color(v).filled(),
                )),
                None => {
                    cells.push(Rectangle::new(
                        [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                        MISSING_FILL.filled(),
                    ));
                    // Lines of slope -1 across the cell: x + y = x0 + y0 + f, f in (0, 2).
                    for k in 1..2 * per_cell {
                        let f = k as f64 / per_cell as f64;
                        let (a, b) = if f <= 1.0 {
                            ((x0 + f, y0), (x0, y0 + f))
                        } else {
                            ((x0 + 1.0, y0 + f - 1.0), (x0 + f - 1.0, y0 + 1.0))
                        };
                        hatches.push(PathElement::new(vec![a, b], MISSING_HATCH.stroke_width(1)));
                    }
                }
            }
        }
    }
    chart.draw_series(cells).map_err(de)?;
    chart.draw_series(hatches).map_err(de)?;

    // Outlines inside the marked cells (so that neighbouring marks stay apart), as four
    // filled bands for clean corners.
    let band = (layout.cell / 8).clamp(2, 6) as f64 / layout.cell as f64;
    chart
        .draw_series(map.marked.iter().flat_map(|&(l, h)| {
            let (x0, y0, x1, y1) = (h as f64, l as f64, h as f64 + 1.0, l as f64 + 1.0);
            [
                [(x0, y0), (x1, y0 + band)],
                [(x0, y1 - band), (x1, y1)],
                [(x0, y0), (x0 + band, y1)],
                [(x1 - band, y0), (x1, y1)],
            ]
            .map(|corners| Rectangle::new(corners, MARK_COLOR.filled()))
        }))
        .map_err(de)?;
    // A frame around the grid.
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(0.0, 0.0), (grid.heads as f64, grid.layers as f64)],
            BLACK.stroke_width(1),
        )))
        .map_err(de)?;

    // The colour bar, as tall as the grid.
    let bar_left = left + layout.y_label_area + grid_w + BAR_GAP;
    let bar_area = root.margin(
        top,
        layout.height - top - grid_h,
        bar_left,
        layout.width - bar_left - BAR_W - layout.bar_label_area,
    );
    let mut bar = ChartBuilder::on(&bar_area)
        .set_label_area_size(LabelAreaPosition::Right, layout.bar_label_area)
        .build_cartesian_2d(0.0..1.0, grid.lo..grid.hi)
        .map_err(de)?;
    let ticks = format_ticks(grid.lo, grid.hi);
    bar.configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .set_all_tick_mark_size(TICK_MARK)
        .y_labels(BAR_TICKS)
        .y_desc(map.colorbar_label)
        .axis_desc_style(font(DESC_SIZE))
        .label_style(font(TICK_SIZE))
        .y_label_formatter(&ticks)
        .draw()
        .map_err(de)?;
    let steps = 256;
    bar.draw_series((0..steps).map(|i| {
        let span = grid.hi - grid.lo;
        let a = grid.lo + span * i as f64 / steps as f64;
        let b = grid.lo + span * (i + 1) as f64 / steps as f64;
        Rectangle::new([(0.0, a), (1.0, b)], color((a + b) / 2.0).filled())
    }))
    .map_err(de)?;
    bar.draw_series(std::iter::once(Rectangle::new(
        [(0.0, grid.lo), (1.0, grid.hi)],
        BLACK.stroke_width(1),
    )))
    .map_err(de)?;

    if let Some(footer) = &layout.footer {
        let style = TextStyle::from(font(TICK_SIZE))
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Center));
        root.draw(&Text::new(
            footer.clone(),
            (
                (layout.width / 2) as i32,
                (layout.height - MARGIN / 2 - FOOTER_H / 2) as i32,
            ),
            style,
        ))
        .map_err(de)?;
    }
    Ok(())
}

/// Formats colour-bar ticks with as many decimals as the range needs.
fn format_ticks(lo: f64, hi: f64) -> impl Fn(&f64) -> String {
    let span = hi - lo;
    let magnitude = lo.abs().max(hi.abs());
    let scientific = magnitude >= 1e5 || (magnitude > 0.0 && magnitude < 1e-3);
    let decimals = if span > 0.0 {
        (-(span / 5.0).log10()).ceil().clamp(0.0, 6.0) as usize
    } else {
        2
    };
    move |v: &f64| {
        if scientific {
            format!("{v:.2e}")
        } else {
            // Avoid "-0.00".
            let s = format!("{v:.decimals$}");
            if s.trim_start_matches('-')
                .chars()
                .all(|c| c == '0' || c == '.')
            {
                s.trim_start_matches('-').to_string()
            } else {
                s
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_grid() -> Vec<Vec<Option<f64>>> {
        vec![
            vec![Some(0.1), None, Some(0.5), Some(1.2)],
            vec![Some(-0.3), Some(0.9), None, Some(0.0)],
        ]
    }

    #[test]
    fn writes_png_with_png_magic_and_no_leftover_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.png");
        let values = small_grid();
        let map = Heatmap {
            title: "Mean Ships — tiny model on toy data",
            values: &values,
            marked: &[(0, 3), (1, 1)],
            colorbar_label: "Ships (KL)",
        };
        write_heatmap(&path, &map).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 2000, "PNG is only {} bytes", bytes.len());
        assert!(!dir.path().join("map.png.tmp").exists());
        let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert!(
            info.width >= 480 && info.height >= 240,
            "{}x{}",
            info.width,
            info.height
        );
    }

    #[test]
    fn writes_svg_containing_the_title_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.svg");
        let values = small_grid();
        let map = Heatmap {
            title: "Mean Ships on advbench",
            values: &values,
            marked: &[(1, 0)],
            colorbar_label: "Ships score",
        };
        write_heatmap(&path, &map).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(svg.contains("Mean Ships on advbench"));
        assert!(svg.contains("Ships score"));
        assert!(svg.contains("Layer") && svg.contains("Head"));
        assert!(svg.contains("not computed"));
    }

    #[test]
    fn unknown_or_missing_extension_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let values = small_grid();
        let map = Heatmap {
            title: "t",
            values: &values,
            marked: &[],
            colorbar_label: "v",
        };
        let path = dir.path().join("map.jpg");
        let e = write_heatmap(&path, &map).unwrap_err().to_string();
        assert!(
            e.contains("map.jpg") && e.contains("unsupported extension .jpg"),
            "{e}"
        );
        let e = write_heatmap(&dir.path().join("map"), &map)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no file extension"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn ragged_empty_or_out_of_range_input_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        let ragged = vec![vec![Some(1.0), Some(2.0)], vec![Some(1.0)]];
        let mut map = Heatmap {
            title: "t",
            values: &ragged,
            marked: &[],
            colorbar_label: "v",
        };
        let e = write_heatmap(&path, &map).unwrap_err().to_string();
        assert!(e.contains("layer 1 has 1 heads, layer 0 has 2"), "{e}");
        let empty: Vec<Vec<Option<f64>>> = vec![];
        map.values = &empty;
        let e = write_heatmap(&path, &map).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let ok = small_grid();
        map.values = &ok;
        map.marked = &[(2, 0)];
        let e = write_heatmap(&path, &map).unwrap_err().to_string();
        assert!(e.contains("marked head 2:0 is outside"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn one_cell_wide_grid_empty_title_missing_constant_and_non_finite_values_still_draw() {
        let dir = tempfile::tempdir().unwrap();
        for (i, values) in [
            vec![vec![Some(0.5); 1]; 1],
            vec![vec![Some(0.5); 700]; 3],
            vec![vec![None; 4]; 2],
            vec![vec![Some(3.0); 4]; 2],
            vec![vec![Some(0.0), Some(f64::NAN), Some(f64::INFINITY), None]; 2],
            vec![vec![Some(f64::MAX), Some(-f64::MAX), Some(1.0), None]; 2],
            vec![vec![Some(f64::MAX); 4]; 2],
            vec![vec![Some(-1e-300); 4]; 2],
            vec![vec![Some(5e-324); 4]; 2],
        ]
        .iter()
        .enumerate()
        {
            let path = dir.path().join(format!("m{i}.png"));
            let map = Heatmap {
                title: if i == 0 { "" } else { "edge" },
                values,
                marked: &[],
                colorbar_label: "v",
            };
            write_heatmap(&path, &map).unwrap();
            assert!(path.exists());
        }
    }

    #[test]
    fn large_grid_of_80_layers_by_64_heads_draws_in_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        let values: Vec<Vec<Option<f64>>> = (0..80)
            .map(|l| {
                (0..64)
                    .map(|h| Some((l * 64 + h) as f64 / 5120.0))
                    .collect()
            })
            .collect();
        let map = Heatmap {
            title: "80 layers × 64 heads",
            values: &values,
            marked: &[(0, 0), (79, 63)],
            colorbar_label: "v",
        };
        write_heatmap(&path, &map).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let reader = png::Decoder::new(std::io::Cursor::new(&bytes))
            .read_info()
            .unwrap();
        let (w, h) = (reader.info().width, reader.info().height);
        assert!(w <= 2000 && h <= 2000, "{w}x{h}");
        assert!(w >= 64 * 12 && h >= 80 * 12, "{w}x{h}");
    }

    #[test]
    fn grid_too_large_to_draw_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.png");
        let values = vec![vec![Some(1.0); 2001]; 2];
        let map = Heatmap {
            title: "huge",
            values: &values,
            marked: &[],
            colorbar_label: "v",
        };
        let e = write_heatmap(&path, &map).unwrap_err().to_string();
        assert!(e.contains("2 layers × 2001 heads is too large"), "{e}");
        assert!(!path.exists());
    }

    #[test]
    fn tick_labels_use_enough_decimals_or_an_exponent() {
        let f = format_ticks(0.0, 1.0);
        assert_eq!(f(&0.2), "0.2");
        let f = format_ticks(-0.01, 0.02);
        assert_eq!(f(&0.005), "0.005");
        assert_eq!(f(&-0.0), "0.000");
        let f = format_ticks(0.0, 2e6);
        assert_eq!(f(&1e6), "1.00e6");
    }
}
