//! `sahara report`: one self-contained HTML page of a study's outputs.
//!
//! The page is built from the files the commands write (a ships JSON Lines file and its
//! summary, an attribute output, an eval output and its summary, attention outputs) and their
//! run records. It holds everything inline — CSS, SVG, a little JavaScript and the numbers it
//! redraws from — and a content security policy that forbids every request, so it opens
//! offline and can be mailed. With JavaScript off the static heatmaps and tables remain; the
//! selectors (one query's Ships, one query's answers side by side) need it.
//!
//! Heatmaps are SVG grids of `<rect class="cell">`, one per head, each with a `<title>` (the
//! tooltip: layer, head, value, rank and appearance count) and `data-l`, `data-h`, `data-v`
//! attributes; the colour scale is viridis in [`PALETTE`] steps, the same in Rust and in the
//! page's script.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::io::formats::{AttentionOutput, AttributeOutput, EvalLine, RunRecord, ShipsLine};
use crate::io::runlog::{read_lines, record_of, sibling};
use crate::methods::ships::{HeadGrid, Summary};

/// Colour steps of the heatmaps.
pub const PALETTE: usize = 64;

/// One output file of a study and what produced it.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    /// The run record beside it (`None` for an attention output, which carries its model).
    pub record: Option<RunRecord>,
    /// The model as named and its fingerprint.
    pub model: String,
    pub model_fingerprint: String,
    /// When its run record was written (the run's start) and when the output was last written.
    pub started: Option<SystemTime>,
    pub finished: Option<SystemTime>,
}

impl Source {
    fn of(path: &Path, record: Option<RunRecord>, model: String, fingerprint: String) -> Self {
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let record_path = sibling(path, "run.json");
        Source {
            path: path.to_path_buf(),
            started: record.as_ref().and_then(|_| mtime(&record_path)),
            finished: mtime(path),
            record,
            model,
            model_fingerprint: fingerprint,
        }
    }
}

/// A ships run: its lines and summary.
#[derive(Debug, Clone)]
pub struct ShipsInput {
    pub source: Source,
    pub lines: Vec<ShipsLine>,
    pub summary: Summary,
    pub kl: String,
}

/// An attribute run.
#[derive(Debug, Clone)]
pub struct AttributeInput {
    pub source: Source,
    pub output: AttributeOutput,
}

/// An eval run: its lines and summary (as JSON, the eval summary's fields).
#[derive(Debug, Clone)]
pub struct EvalInput {
    pub source: Source,
    pub lines: Vec<EvalLine>,
    pub summary: Value,
}

/// An attention output.
#[derive(Debug, Clone)]
pub struct AttentionInput {
    pub source: Source,
    pub output: AttentionOutput,
}

/// A comparison of two rankings (`sahara compare --out`).
#[derive(Debug, Clone)]
pub struct CompareInput {
    pub path: PathBuf,
    pub output: crate::io::formats::CompareOutput,
}

/// Everything a page shows.
#[derive(Debug, Clone, Default)]
pub struct Study {
    pub ships: Option<ShipsInput>,
    pub attribute: Option<AttributeInput>,
    pub eval: Option<EvalInput>,
    pub attention: Vec<AttentionInput>,
    pub compare: Vec<CompareInput>,
}

fn read_json_file(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The run record beside `path`, required, of `command`.
fn record_for(path: &Path, command: &str) -> Result<RunRecord> {
    let record = record_of(path)?.ok_or_else(|| {
        Error::data(
            path,
            format!(
                "no run record beside it ({}): is it the --out file of a finished run?",
                sibling(path, "run.json").display()
            ),
        )
    })?;
    if record.command != command {
        return Err(Error::data(
            path,
            format!(
                "was written by `sahara {}`, not `sahara {command}`",
                record.command
            ),
        ));
    }
    Ok(record)
}

/// The source of an output of `command`, from the run record beside it (required).
fn recorded(path: &Path, command: &str) -> Result<Source> {
    let record = record_for(path, command)?;
    let (model, fingerprint) = (record.model.clone(), record.model_fingerprint.clone());
    Ok(Source::of(path, Some(record), model, fingerprint))
}

/// The complete lines of a JSON Lines output.
fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(read_lines::<T>(path, &text, |_, _| Ok(()))?.0)
}

/// Reads a ships output: its lines, summary and run record.
pub fn load_ships(path: &Path) -> Result<ShipsInput> {
    let source = recorded(path, "ships")?;
    let summary_path = sibling(path, "summary.json");
    let summary: crate::io::formats::ShipsSummary =
        serde_json::from_value(read_json_file(&summary_path)?)
            .map_err(|e| Error::data(&summary_path, format!("not a ships summary ({e})")))?;
    Ok(ShipsInput {
        source,
        lines: read_jsonl(path)?,
        kl: summary.kl,
        summary: summary.summary,
    })
}

/// Reads an attribute output and its run record.
pub fn load_attribute(path: &Path) -> Result<AttributeInput> {
    Ok(AttributeInput {
        source: recorded(path, "attribute")?,
        output: AttributeOutput::read(path)?,
    })
}

/// Reads an eval output: its lines, summary and run record.
pub fn load_eval(path: &Path) -> Result<EvalInput> {
    Ok(EvalInput {
        source: recorded(path, "eval")?,
        lines: read_jsonl(path)?,
        summary: read_json_file(&sibling(path, "summary.json"))?,
    })
}

/// Reads an attention output (`sahara attention --out FILE.json`).
pub fn load_attention(path: &Path) -> Result<AttentionInput> {
    let output: AttentionOutput = serde_json::from_value(read_json_file(path)?).map_err(|e| {
        Error::data(
            path,
            format!("not the output of `sahara attention --out` ({e})"),
        )
    })?;
    Ok(AttentionInput {
        source: Source::of(
            path,
            None,
            output.model.clone(),
            output.model_fingerprint.clone(),
        ),
        output,
    })
}

/// Reads a comparison (`sahara compare A B --out FILE.json`).
pub fn load_compare(path: &Path) -> Result<CompareInput> {
    let output = serde_json::from_value(read_json_file(path)?).map_err(|e| {
        Error::data(
            path,
            format!("not the output of `sahara compare --out` ({e})"),
        )
    })?;
    Ok(CompareInput {
        path: path.to_path_buf(),
        output,
    })
}

/// The ranking of heads an output gives, for `sahara compare`: a ships run's mean Ships (its
/// `--out` JSON Lines file, or the summary beside it) or the scores of an attribute run's
/// first step. The run record beside the output says which it is.
pub fn load_ranking(path: &Path) -> Result<crate::io::formats::RankingSide> {
    let name = path.to_string_lossy();
    let path = match name.strip_suffix(".summary.json") {
        Some(lines) => PathBuf::from(lines),
        None => path.to_path_buf(),
    };
    let record = record_of(&path)?.ok_or_else(|| {
        Error::data(
            &path,
            format!(
                "no run record beside it ({}): give the --out file of a finished ships or attribute run",
                sibling(&path, "run.json").display()
            ),
        )
    })?;
    let scores = match record.command.as_str() {
        "ships" => load_ships(&path)?.summary.mean,
        "attribute" => load_attribute(&path)?
            .output
            .steps
            .first()
            .map(|s| s.scores.clone())
            .ok_or_else(|| Error::data(&path, "has no finished step"))?,
        other => {
            return Err(Error::data(
                &path,
                format!("was written by `sahara {other}`; a ranking of heads comes from `sahara ships` or `sahara attribute`"),
            ))
        }
    };
    Ok(crate::io::formats::RankingSide {
        path: path.display().to_string(),
        kind: record.command.clone(),
        mode: record.ablation()?.op.mode_str().to_string(),
        model: record.model.clone(),
        model_fingerprint: record.model_fingerprint.clone(),
        data: record.data.clone(),
        template: record
            .settings
            .get("template")
            .cloned()
            .unwrap_or(Value::Null),
        scores,
    })
}

impl Study {
    fn sources(&self) -> Vec<(&'static str, &Source)> {
        let mut v: Vec<(&'static str, &Source)> = Vec::new();
        if let Some(s) = &self.ships {
            v.push(("ships", &s.source));
        }
        if let Some(a) = &self.attribute {
            v.push(("attribute", &a.source));
        }
        if let Some(e) = &self.eval {
            v.push(("eval", &e.source));
        }
        for a in &self.attention {
            v.push(("attention", &a.source));
        }
        v
    }

    /// Whether the outputs are of more than one model; `Err` names two of them unless
    /// `allow_mixed`.
    pub fn check_one_model(&self, allow_mixed: bool) -> Result<bool> {
        let sources = self.sources();
        let Some((first_kind, first)) = sources.first() else {
            if !self.compare.is_empty() {
                // A comparison is of two models by design.
                return Ok(false);
            }
            return Err(Error::InvalidArgument(
                "a report needs at least one output".into(),
            ));
        };
        for (kind, s) in &sources[1..] {
            if s.model_fingerprint != first.model_fingerprint {
                if allow_mixed {
                    return Ok(true);
                }
                return Err(Error::MixedModels {
                    first: format!("{} ({first_kind}, {})", first.model, first.path.display()),
                    second: format!("{} ({kind}, {})", s.model, s.path.display()),
                });
            }
        }
        Ok(false)
    }
}

/// What the page says of the model, from its configuration where the model can be found.
#[derive(Debug, Clone, Default)]
pub struct ModelFacts {
    pub architecture: Option<String>,
    pub layers: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
}

impl ModelFacts {
    /// The facts of a model as named in a run record, or none when it cannot be resolved here.
    pub fn of(model: &str) -> Self {
        match crate::Checkpoint::resolve(model).and_then(|c| c.config()) {
            Ok(cfg) => ModelFacts {
                architecture: Some(cfg.architecture.clone()),
                layers: Some(cfg.num_layers),
                heads: Some(cfg.num_heads),
                kv_heads: Some(cfg.num_kv_heads),
            },
            Err(_) => ModelFacts::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// HTML-escapes text for element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number with 4 significant digits, in its shortest form (`0.01234`, `3.5`, `1.2e-7`).
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "null".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let rounded: f64 = format!("{v:.3e}").parse().unwrap_or(v);
    // As JavaScript's `String(number)` writes it: exponent form below 1e-6 and from 1e21.
    if rounded.abs() < 1e-6 || rounded.abs() >= 1e21 {
        format!("{rounded:e}")
    } else {
        format!("{rounded}")
    }
}

/// The viridis palette in [`PALETTE`] steps, as `#rrggbb`.
pub fn palette() -> Vec<String> {
    use plotters::style::colors::colormaps::ColorMap;
    use plotters::style::colors::colormaps::ViridisRGB;
    (0..PALETTE)
        .map(|i| {
            let c = ViridisRGB.get_color(i as f64 / (PALETTE - 1) as f64);
            format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
        })
        .collect()
}

/// The palette step of `v` on `[lo, hi]` (the middle for a flat range), as the page's script
/// computes it.
pub fn step(v: f64, lo: f64, hi: f64) -> usize {
    let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    (t.clamp(0.0, 1.0) * (PALETTE - 1) as f64).round() as usize
}

/// The range of a grid's values.
fn range(grid: &HeadGrid) -> (f64, f64) {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for v in grid.iter().flatten().flatten() {
        if v.is_finite() {
            lo = lo.min(*v);
            hi = hi.max(*v);
        }
    }
    if lo > hi {
        (0.0, 0.0)
    } else {
        (lo, hi)
    }
}

/// How a heatmap maps values to colours.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    /// log10, values at or below zero drawn as the smallest positive one: for Ships, whose
    /// few large heads would leave every other head one colour on a linear scale.
    Log,
}

/// The palette step of each value of a grid on its scale.
fn steps_of(grid: &HeadGrid, scale: Scale) -> Vec<Vec<Option<usize>>> {
    let (lo, hi) = range(grid);
    let floor = grid
        .iter()
        .flatten()
        .flatten()
        .filter(|v| v.is_finite() && **v > 0.0)
        .fold(f64::INFINITY, |a, &b| a.min(b));
    let f = |v: f64| match scale {
        Scale::Linear => v,
        Scale::Log if floor.is_finite() => v.max(floor).log10(),
        Scale::Log => 0.0,
    };
    let (a, b) = match scale {
        Scale::Linear => (lo, hi),
        Scale::Log if floor.is_finite() => (floor.log10(), hi.max(floor).log10()),
        Scale::Log => (0.0, 0.0),
    };
    grid.iter()
        .map(|row| {
            row.iter()
                .map(|v| v.filter(|v| v.is_finite()).map(|v| step(f(v), a, b)))
                .collect()
        })
        .collect()
}

/// Pixels per heatmap cell: smaller for larger models, so that a page stays readable.
fn cell_px(layers: usize, heads: usize) -> usize {
    let n = layers.max(heads);
    if n <= 12 {
        36
    } else if n <= 32 {
        16
    } else {
        10
    }
}

/// A layer × head heatmap as inline SVG: one `rect.cell` per head with its tooltip; `marked`
/// heads outlined; `label` names the value. `extra(l, h)` adds to a cell's tooltip.
#[allow(clippy::too_many_arguments)]
fn heatmap(
    id: &str,
    grid: &HeadGrid,
    marked: &[[usize; 2]],
    label: &str,
    scale: Scale,
    pal: &[String],
    extra: &dyn Fn(usize, usize) -> String,
) -> String {
    let layers = grid.len();
    let heads = grid.first().map_or(0, Vec::len);
    let c = cell_px(layers, heads);
    let (lo, hi) = range(grid);
    let steps = steps_of(grid, scale);
    let (left, top) = (34, 18);
    let w = left + heads * c + 8;
    let h = top + layers * c + 8;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<figure class="heat"><svg id="{id}" class="heatmap" role="img" tabindex="0" aria-label="{label}: layers down, heads across; arrow keys move between heads" width="{w}" height="{h}" viewBox="0 0 {w} {h}" data-layers="{layers}" data-heads="{heads}" data-scale="{}">"#,
        if scale == Scale::Log { "log" } else { "linear" }
    );
    // Axis labels every few heads and layers.
    let every = |n: usize| {
        if n <= 16 {
            1
        } else if n <= 40 {
            4
        } else {
            8
        }
    };
    for hd in (0..heads).step_by(every(heads)) {
        let _ = write!(
            s,
            r#"<text x="{}" y="12" class="tick" text-anchor="middle">{hd}</text>"#,
            left + hd * c + c / 2
        );
    }
    for l in (0..layers).step_by(every(layers)) {
        let _ = write!(
            s,
            r#"<text x="{}" y="{}" class="tick" text-anchor="end">{l}</text>"#,
            left - 4,
            top + l * c + c / 2 + 4
        );
    }
    for (l, row) in grid.iter().enumerate() {
        for (hd, v) in row.iter().enumerate() {
            let (x, y) = (left + hd * c, top + l * c);
            match v.filter(|v| v.is_finite()) {
                Some(v) => {
                    let _ = write!(
                        s,
                        r#"<rect class="cell" x="{x}" y="{y}" width="{c}" height="{c}" fill="{}" data-l="{l}" data-h="{hd}" data-v="{}"><title>layer {l} head {hd}: {label} {}{}</title></rect>"#,
                        pal[steps[l][hd].expect("a value has a step")],
                        num(v),
                        num(v),
                        extra(l, hd)
                    );
                }
                None => {
                    let _ = write!(
                        s,
                        r##"<rect class="cell none" x="{x}" y="{y}" width="{c}" height="{c}" fill="#d0d0d0" data-l="{l}" data-h="{hd}" data-v=""><title>layer {l} head {hd}: not scored</title></rect>"##
                    );
                }
            }
        }
    }
    for [l, hd] in marked {
        let _ = write!(
            s,
            r##"<rect class="mark" x="{}" y="{}" width="{c}" height="{c}" fill="none" stroke="#e8112d" stroke-width="2"/>"##,
            left + hd * c,
            top + l * c
        );
    }
    s.push_str(r##"<rect class="cursor" x="0" y="0" width="0" height="0" fill="none" stroke="#fff" stroke-width="2" visibility="hidden"/>"##);
    s.push_str("</svg>");
    // The legend: the palette as a bar with the range.
    let _ = write!(
        s,
        r#"<figcaption style="max-width:{}px"><span class="legend" aria-hidden="true">"#,
        w.max(300)
    );
    for p in pal.iter().step_by(4) {
        let _ = write!(s, r#"<i style="background:{p}"></i>"#);
    }
    let _ = write!(
        s,
        r#"</span> {label}: <span class="lo">{}</span> to <span class="hi">{}</span>{}; grey: not scored. <span class="focus" aria-live="polite"></span></figcaption></figure>"#,
        num(lo),
        num(hi),
        if scale == Scale::Log {
            " (log scale)"
        } else {
            ""
        }
    );
    s
}

/// A flat `[l * heads + h]` array of a grid for the page's script (`null` where unscored).
fn flat(grid: &HeadGrid) -> Value {
    Value::Array(
        grid.iter()
            .flatten()
            .map(|v| match v.filter(|v| v.is_finite()) {
                Some(v) => serde_json::from_str(&num(v)).unwrap_or(Value::Null),
                None => Value::Null,
            })
            .collect(),
    )
}

fn time_text(t: Option<SystemTime>) -> Option<String> {
    let secs = t?.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() as i64;
    // Civil date of a day count (Howard Hinnant's algorithm), UTC.
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    Some(format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

fn setting_text(record: &RunRecord, keys: &[&str]) -> String {
    keys.iter()
        .filter_map(|k| {
            record
                .settings
                .get(*k)
                .filter(|v| !v.is_null())
                .map(|v| match v {
                    Value::String(s) => format!("{k} {s}"),
                    other => format!("{k} {other}"),
                })
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The header lines of one output: its file, model, data, settings and times.
fn source_rows(kind: &str, s: &Source, facts: &ModelFacts) -> String {
    let mut rows = String::new();
    let mut row = |k: &str, v: String| {
        let _ = write!(rows, "<tr><th>{}</th><td>{}</td></tr>", esc(k), v);
    };
    row(
        "output",
        format!(
            "<code>{}</code> ({kind})",
            esc(&s.path.display().to_string())
        ),
    );
    let mut model = format!("<code>{}</code>", esc(&s.model));
    if let (Some(a), Some(l), Some(h), Some(kv)) = (
        &facts.architecture,
        facts.layers,
        facts.heads,
        facts.kv_heads,
    ) {
        let _ = write!(
            model,
            " · {} · {l} layers × {h} heads, {kv} key/value heads",
            esc(a)
        );
    }
    let _ = write!(
        model,
        " · fingerprint <code>{}</code>",
        esc(&s.model_fingerprint)
    );
    row("model", model);
    if let Some(r) = &s.record {
        row(
            "data",
            format!(
                "<code>{}</code> · {} queries · fingerprint <code>{}</code>",
                esc(&r.data),
                r.queries,
                esc(&r.data_fingerprint)
            ),
        );
        row(
            "settings",
            esc(&setting_text(
                r,
                &[
                    "template",
                    "system",
                    "template_args",
                    "target",
                    "mode",
                    "epsilon",
                    "dtype",
                    "weights",
                    "kl",
                    "layers",
                    "heads",
                    "top",
                    "rank",
                    "max_new_tokens",
                    "sampling",
                    "benign",
                    "reasoning",
                ],
            )),
        );
        row("sahara", esc(&r.version));
    }
    if let Some(f) = time_text(s.finished) {
        let ran = match (s.started, s.finished) {
            (Some(a), Some(b)) => b
                .duration_since(a)
                .ok()
                .map(|d| {
                    format!(
                        " · ran {:.1} s since its run record was written",
                        d.as_secs_f64()
                    )
                })
                .unwrap_or_default(),
            _ => String::new(),
        };
        row(
            "written",
            format!(
                "{}{}{}",
                time_text(s.started).map_or(String::new(), |t| format!("started {t} · ")),
                format_args!("finished {f}"),
                ran
            ),
        );
    }
    rows
}

const STYLE: &str = r#"
:root{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1f;background:#fff;line-height:1.4}
body{max-width:1180px;margin:0 auto;padding:0 20px 40px}
h1{font-size:1.5rem;margin:18px 0 6px}h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}h3{font-size:1rem;margin:18px 0 6px}
nav a{margin-right:14px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:.9rem}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f7;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:.85em}
.meta th{width:90px}
figure.heat{margin:6px 0 14px;display:inline-block;vertical-align:top}
svg.heatmap{display:block;max-width:100%;height:auto}
svg .tick{font-size:9px;fill:#555}
svg:focus{outline:2px solid #0a66c2}
.legend i{display:inline-block;width:6px;height:12px}
figcaption{font-size:.85rem;color:#333}
.grid2{display:flex;flex-wrap:wrap;gap:24px}
.answers{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:10px}
.answer{border:1px solid #ddd;border-radius:6px;padding:8px}
.answer h4{margin:0 0 4px;font-size:.9rem}
.answer pre{white-space:pre-wrap;word-break:break-word;margin:4px 0;font-family:inherit;font-size:.88rem}
.verdict{font-size:.8rem;margin-right:6px;padding:1px 5px;border-radius:3px;background:#eee}
.verdict.harmful{background:#fde2e1}.verdict.refusal{background:#dff3e3}.verdict.undecided{background:#fff4ce}
.query{background:#f5f5f7;padding:6px 8px;border-radius:4px;white-space:pre-wrap}
label{font-size:.9rem;margin-right:8px}
.nojs{color:#555;font-size:.85rem}
@media print{@page{size:A4;margin:12mm}body{max-width:none;padding:0}nav,.controls{display:none}section{break-inside:avoid-page}svg{max-width:100%}}
"#;

const SCRIPT: &str = r#"
(function(){
  document.documentElement.classList.add('js');
  var data = JSON.parse(document.getElementById('sahara-data').textContent);
  var pal = data.palette;
  function step(v, lo, hi){ var t = hi > lo ? (v - lo) / (hi - lo) : 0.5; t = Math.min(1, Math.max(0, t)); return Math.round(t * (pal.length - 1)); }
  function fmt(v){ if (v === null) return 'not scored'; if (v === 0) return '0'; return String(Number(v.toPrecision(4))); }
  // Arrow keys move a cursor over a focused heatmap; the caption says which head it is on.
  document.querySelectorAll('svg.heatmap').forEach(function(svg){
    var L = +svg.dataset.layers, H = +svg.dataset.heads, at = [0, 0];
    var cursor = svg.querySelector('rect.cursor');
    var focus = svg.parentNode.querySelector('.focus');
    function show(){
      var cell = svg.querySelector('rect.cell[data-l="' + at[0] + '"][data-h="' + at[1] + '"]');
      if (!cell) return;
      ['x','y','width','height'].forEach(function(k){ cursor.setAttribute(k, cell.getAttribute(k)); });
      cursor.setAttribute('visibility', 'visible');
      var t = cell.querySelector('title');
      if (focus) focus.textContent = t ? t.textContent : '';
    }
    svg.addEventListener('keydown', function(e){
      var d = {ArrowUp:[-1,0], ArrowDown:[1,0], ArrowLeft:[0,-1], ArrowRight:[0,1]}[e.key];
      if (!d) return;
      e.preventDefault();
      at = [Math.min(L - 1, Math.max(0, at[0] + d[0])), Math.min(H - 1, Math.max(0, at[1] + d[1]))];
      show();
    });
    svg.addEventListener('focus', show);
    svg.addEventListener('blur', function(){ cursor.setAttribute('visibility', 'hidden'); });
  });
  function redraw(svg, values, label, extra){
    var lo = Infinity, hi = -Infinity, floor = Infinity;
    values.forEach(function(v){ if (v !== null) { lo = Math.min(lo, v); hi = Math.max(hi, v); if (v > 0) floor = Math.min(floor, v); } });
    if (lo > hi) { lo = 0; hi = 0; }
    var log = svg.dataset.scale === 'log';
    var f = function(v){ return log ? (isFinite(floor) ? Math.log10(Math.max(v, floor)) : 0) : v; };
    var a = log ? (isFinite(floor) ? Math.log10(floor) : 0) : lo, b = log ? (isFinite(floor) ? Math.log10(Math.max(hi, floor)) : 0) : hi;
    var H = +svg.dataset.heads;
    svg.querySelectorAll('rect.cell').forEach(function(c){
      var l = +c.dataset.l, h = +c.dataset.h, v = values[l * H + h];
      var t = c.querySelector('title');
      if (v === null || v === undefined) { c.setAttribute('fill', '#d0d0d0'); c.dataset.v = ''; t.textContent = 'layer ' + l + ' head ' + h + ': not scored'; return; }
      c.setAttribute('fill', pal[step(f(v), a, b)]);
      c.dataset.v = fmt(v);
      t.textContent = 'layer ' + l + ' head ' + h + ': ' + label + ' ' + fmt(v) + extra(l, h);
    });
    var cap = svg.parentNode.querySelector('figcaption');
    cap.querySelector('.lo').textContent = fmt(lo);
    cap.querySelector('.hi').textContent = fmt(hi);
  }
  var ships = data.ships;
  if (ships) {
    var sel = document.getElementById('ships-query');
    var svg = document.getElementById('ships-heatmap');
    var prompt = document.getElementById('ships-prompt');
    sel.addEventListener('change', function(){
      var i = sel.value;
      if (i === 'mean') {
        redraw(svg, ships.mean, 'mean Ships', function(l, h){ return ships.extra[l * ships.heads + h]; });
        prompt.textContent = 'Mean over ' + ships.queries.length + ' queries.';
      } else {
        var q = ships.queries[+i];
        redraw(svg, q.scores, 'Ships', function(){ return ''; });
        prompt.textContent = 'Query ' + (q.index + 1) + ' (' + q.prompt_tokens + ' prompt tokens): ' + q.query;
      }
    });
  }
  var ev = data.eval;
  if (ev) {
    var esel = document.getElementById('eval-query');
    var box = document.getElementById('eval-answers');
    var qbox = document.getElementById('eval-querytext');
    function card(cond, a){
      var div = document.createElement('div'); div.className = 'answer';
      var h = document.createElement('h4'); h.textContent = cond; div.appendChild(h);
      a.verdicts.forEach(function(v){
        var s = document.createElement('span');
        s.className = 'verdict ' + (v[1] === true ? 'harmful' : v[1] === false ? 'refusal' : 'undecided');
        s.textContent = v[0] + ': ' + (v[1] === true ? 'harmful' : v[1] === false ? 'refusal' : 'undecided');
        div.appendChild(s);
      });
      var pre = document.createElement('pre'); pre.textContent = a.response; div.appendChild(pre);
      return div;
    }
    esel.addEventListener('change', function(){
      var q = ev.queries[+esel.value];
      qbox.textContent = q.query;
      box.textContent = '';
      ev.conditions.forEach(function(c, k){ if (q.answers[k]) box.appendChild(card(c, q.answers[k])); });
    });
  }
})();
"#;

/// Renders the page. `facts` describes the model (see [`ModelFacts::of`]); `mixed` labels each
/// section with its model.
pub fn render(study: &Study, facts: &ModelFacts, mixed: bool) -> Result<String> {
    let pal = palette();
    let sources = study.sources();
    let title = match (sources.first(), study.compare.first()) {
        (Some((_, first)), _) => format!("sahara report: {}", first.model),
        (None, Some(c)) => format!(
            "sahara report: {} and {}",
            c.output.a.model, c.output.b.model
        ),
        (None, None) => {
            return Err(Error::InvalidArgument(
                "a report needs at least one output".into(),
            ))
        }
    };
    let mut body = String::new();
    let mut data = serde_json::Map::new();
    data.insert("palette".into(), json!(pal));
    let _ = write!(
        body,
        "<header><h1>{}</h1><table class=\"meta\">",
        esc(&title)
    );
    for (kind, s) in &sources {
        let f = if mixed {
            ModelFacts::of(&s.model)
        } else {
            facts.clone()
        };
        body.push_str(&source_rows(kind, s, &f));
    }
    body.push_str("</table></header><nav>");
    for (id, name, present) in [
        ("ships", "Ships", study.ships.is_some()),
        ("sahara", "Sahara", study.attribute.is_some()),
        ("eval", "Evaluation", study.eval.is_some()),
        ("attention", "Attention", !study.attention.is_empty()),
        ("compare", "Comparison", !study.compare.is_empty()),
    ] {
        if present {
            let _ = write!(body, "<a href=\"#{id}\">{name}</a>");
        }
    }
    body.push_str("</nav><p class=\"nojs\">With JavaScript off the heatmaps and tables below are complete; the query selectors need it.</p>");
    let label = |s: &Source| {
        if mixed {
            format!(" <small>({})</small>", esc(&s.model))
        } else {
            String::new()
        }
    };
    if let Some(s) = &study.ships {
        body.push_str(&ships_section(s, &pal, &label(&s.source), &mut data));
    }
    if let Some(a) = &study.attribute {
        body.push_str(&attribute_section(a, &pal, &label(&a.source)));
    }
    if let Some(e) = &study.eval {
        body.push_str(&eval_section(e, &label(&e.source), &mut data)?);
    }
    if !study.attention.is_empty() {
        body.push_str("<section id=\"attention\"><h2>Attention</h2>");
        for a in &study.attention {
            body.push_str(&attention_figure(a, &pal, &label(&a.source)));
        }
        body.push_str("</section>");
    }
    if !study.compare.is_empty() {
        body.push_str("<section id=\"compare\"><h2>Comparison</h2>");
        for (i, c) in study.compare.iter().enumerate() {
            body.push_str(&compare_figure(i, c, &pal));
        }
        body.push_str("</section>");
    }
    // `</` cannot end the data's script element early: JSON escapes it.
    let data_text = serde_json::to_string(&Value::Object(data))
        .expect("the page's data serializes")
        .replace("</", "<\\/");
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"generator\" content=\"sahara {}\"><title>{}</title><style>{STYLE}</style></head><body>{body}\
         <script id=\"sahara-data\" type=\"application/json\">{data_text}</script><script>{SCRIPT}</script></body></html>\n",
        env!("CARGO_PKG_VERSION"),
        esc(&title)
    );
    Ok(page)
}

fn ships_section(
    s: &ShipsInput,
    pal: &[String],
    label: &str,
    data: &mut serde_json::Map<String, Value>,
) -> String {
    let sum = &s.summary;
    let heads = sum.mean.first().map_or(0, Vec::len);
    let rank: std::collections::HashMap<(usize, usize), (usize, usize)> = sum
        .by_mean
        .iter()
        .enumerate()
        .map(|(i, r)| ((r.layer, r.head), (i + 1, r.count)))
        .collect();
    let extra = |l: usize, h: usize| match rank.get(&(l, h)) {
        Some((r, c)) => format!(" · rank {r} · in the top {} of {c} queries", sum.top_k),
        None => String::new(),
    };
    let patching = s.lines.first().is_some_and(|l| l.patch.is_some());
    let mut out = if patching {
        format!(
            "<section id=\"ships\"><h2>Head patching{label}</h2><p>Restoration 1 − KL(p_source ‖ p_patched) / KL(p_source ‖ p_base) ({} KL) when one head's output is replaced by its output on the paired source prompt, over {} queries; the mean per head, or one query's (select it).</p>",
            esc(&s.kl),
            sum.queries
        )
    } else {
        format!(
            "<section id=\"ships\"><h2>Ships{label}</h2><p>KL divergence ({}) of the next-token distribution when one head is ablated, over {} queries; the mean per head, or one query's (select it).</p>",
            esc(&s.kl),
            sum.queries
        )
    };
    out.push_str("<div class=\"controls\"><label for=\"ships-query\">Heatmap of</label><select id=\"ships-query\"><option value=\"mean\">mean over the queries</option>");
    for (i, l) in s.lines.iter().enumerate() {
        let q: String = l.query.chars().take(70).collect();
        let _ = write!(
            out,
            "<option value=\"{i}\">query {}: {}</option>",
            l.index + 1,
            esc(&q)
        );
    }
    out.push_str("</select></div>");
    let _ = write!(
        out,
        "<p id=\"ships-prompt\" class=\"query\">Mean over {} queries.</p>",
        s.lines.len()
    );
    let top: Vec<[usize; 2]> = sum
        .by_mean
        .iter()
        .take(sum.top_k)
        .map(|r| [r.layer, r.head])
        .collect();
    out.push_str("<div class=\"grid2\">");
    // Restorations can be negative: a linear scale.
    let (what, scale) = match patching {
        true => ("mean restoration", Scale::Linear),
        false => ("mean Ships", Scale::Log),
    };
    out.push_str(&heatmap(
        "ships-heatmap",
        &sum.mean,
        &top,
        what,
        scale,
        pal,
        &extra,
    ));
    // The appearance counts as a second grid.
    let mut counts: HeadGrid = vec![vec![Some(0.0); heads]; sum.mean.len()];
    for r in &sum.by_count {
        counts[r.layer][r.head] = Some(r.count as f64);
    }
    out.push_str(&heatmap(
        "ships-counts",
        &counts,
        &[],
        &format!("queries with the head in their top {}", sum.top_k),
        Scale::Linear,
        pal,
        &|_, _| String::new(),
    ));
    out.push_str("</div>");
    // With a bootstrap, each head's intervals and P(top K) as three more columns.
    let boot = |l: usize, h: usize| {
        sum.bootstrap
            .as_ref()
            .and_then(|b| b.heads.iter().find(|x| x.layer == l && x.head == h))
    };
    let boot_header = match &sum.bootstrap {
        Some(b) => format!(
            "<th>{:.0}% interval</th><th>rank interval</th><th>P(top {})</th>",
            b.level * 100.0,
            b.top_k
        ),
        None => String::new(),
    };
    let _ = write!(
        out,
        "<h3>Top {} heads by {what}</h3><table id=\"ships-top\"><tr><th>rank</th><th>head</th><th>{what}</th>{boot_header}<th>in top {} of</th></tr>",
        sum.top_k, sum.top_k
    );
    for (i, r) in sum.by_mean.iter().take(sum.top_k.max(10)).enumerate() {
        let cells = match boot(r.layer, r.head) {
            Some(b) => format!(
                "<td class=\"n\">[{}, {}]</td><td class=\"n\">{}–{}</td><td class=\"n\">{}</td>",
                num(b.mean_lo),
                num(b.mean_hi),
                b.rank_lo,
                b.rank_hi,
                num(b.p_top)
            ),
            None if sum.bootstrap.is_some() => "<td></td><td></td><td></td>".into(),
            None => String::new(),
        };
        let _ = write!(
            out,
            "<tr><td class=\"n\">{}</td><td>{}:{}</td><td class=\"n\">{}</td>{cells}<td class=\"n\">{} queries</td></tr>",
            i + 1,
            r.layer,
            r.head,
            num(r.mean),
            r.count
        );
    }
    out.push_str("</table>");
    if let Some(b) = &sum.bootstrap {
        let _ = write!(
            out,
            "<p class=\"note\">Intervals: central {:.0}% percentile intervals over {} bootstrap resamples of the queries (seed {}); P(top {}): the share of resamples in which the head ranks in the top {}.</p>",
            b.level * 100.0,
            b.resamples,
            b.seed,
            b.top_k,
            b.top_k
        );
    }
    let _ = write!(
        out,
        "<h3>Heads most often in a query's top {}</h3><table id=\"ships-count\"><tr><th>head</th><th>queries</th><th>mean Ships</th></tr>",
        sum.top_k
    );
    for r in sum.by_count.iter().take(10) {
        let _ = write!(
            out,
            "<tr><td>{}:{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            r.layer,
            r.head,
            r.count,
            num(r.mean)
        );
    }
    out.push_str("</table></section>");
    let extras: Vec<String> = (0..sum.mean.len())
        .flat_map(|l| (0..heads).map(move |h| (l, h)))
        .map(|(l, h)| extra(l, h))
        .collect();
    data.insert(
        "ships".into(),
        json!({
            "heads": heads,
            "mean": flat(&sum.mean),
            "extra": extras,
            "queries": s.lines.iter().map(|l| json!({
                "index": l.index,
                "query": l.query,
                "prompt_tokens": l.prompt_tokens,
                "scores": flat(&l.scores),
            })).collect::<Vec<_>>(),
        }),
    );
    out
}

/// Two rankings side by side (`sahara compare`): the overlap table and both heatmaps, the
/// heads in both first top-K lists outlined.
fn compare_figure(i: usize, c: &CompareInput, pal: &[String]) -> String {
    let o = &c.output;
    let what = |s: &crate::io::formats::RankingSide| match (s.kind.as_str(), s.mode.as_str()) {
        ("attribute", _) => ("Sahara step 1", "step-1 score (deg)", Scale::Linear),
        (_, "patch") => ("mean patch restoration", "mean restoration", Scale::Linear),
        _ => ("mean Ships", "mean Ships (nats)", Scale::Log),
    };
    let heads = |v: &[[usize; 2]]| {
        v.iter()
            .map(|[l, h]| format!("{l}:{h}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut out = format!(
        "<div class=\"compare\"><p>A: {} of <b>{}</b> on {}<br>B: {} of <b>{}</b> on {}<br>Spearman over {} heads: {}</p>",
        what(&o.a).0,
        esc(&o.a.model),
        esc(&o.a.data),
        what(&o.b).0,
        esc(&o.b.model),
        esc(&o.b.data),
        o.comparison.heads,
        o.comparison
            .spearman
            .map_or("undefined (constant scores)".into(), |r| format!("{r:.4}"))
    );
    out.push_str("<table class=\"compare-top\"><tr><th>K</th><th>Jaccard</th><th>shared</th><th>only A</th><th>only B</th></tr>");
    for t in &o.comparison.top {
        let _ = write!(
            out,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            t.k,
            num(t.jaccard),
            heads(&t.shared),
            heads(&t.only_a),
            heads(&t.only_b)
        );
    }
    out.push_str("</table><div class=\"grid2\">");
    let shared = o
        .comparison
        .top
        .first()
        .map(|t| t.shared.clone())
        .unwrap_or_default();
    for (name, side) in [("A", &o.a), ("B", &o.b)] {
        let (title, label, scale) = what(side);
        let _ = write!(out, "<div><h3>{name}: {title}</h3>");
        out.push_str(&heatmap(
            &format!("compare-{i}-{}", name.to_ascii_lowercase()),
            &side.scores,
            &shared,
            label,
            scale,
            pal,
            &|_, _| String::new(),
        ));
        out.push_str("</div>");
    }
    out.push_str("</div></div>");
    out
}

fn attribute_section(a: &AttributeInput, pal: &[String], label: &str) -> String {
    let o = &a.output;
    let mut out = format!(
        "<section id=\"sahara\"><h2>Sahara{label}</h2><p>Heads chosen greedily by generalized Ships (rank {}, {} queries): each step adds the head whose ablation, with the heads before it, turns the top singular subspace of the final hidden states most (the principal angle, in degrees).</p>",
        o.rank, o.queries
    );
    out.push_str(
        "<table id=\"sahara-steps\"><tr><th>step</th><th>head</th><th>score (deg)</th></tr>",
    );
    for (i, s) in o.steps.iter().enumerate() {
        let _ = write!(
            out,
            "<tr><td class=\"n\">{}</td><td>{}:{}</td><td class=\"n\">{}</td></tr>",
            i + 1,
            s.selected[0],
            s.selected[1],
            num(s.score)
        );
    }
    out.push_str("</table>");
    if let Some(b) = o.steps.first().and_then(|s| s.bootstrap.as_ref()) {
        let mut heads: Vec<_> = b.heads.iter().collect();
        heads.sort_by(|x, y| {
            y.p_chosen
                .total_cmp(&x.p_chosen)
                .then(y.score.total_cmp(&x.score))
        });
        let _ = write!(
            out,
            "<h3>Step 1 over {} bootstrap resamples of the queries</h3><table id=\"sahara-bootstrap\"><tr><th>head</th><th>score (deg)</th><th>{:.0}% interval</th><th>P(chosen)</th></tr>",
            b.resamples,
            b.level * 100.0
        );
        for h in heads.iter().take(10) {
            let _ = write!(
                out,
                "<tr><td>{}:{}</td><td class=\"n\">{}</td><td class=\"n\">[{}, {}]</td><td class=\"n\">{}</td></tr>",
                h.layer,
                h.head,
                num(h.score),
                num(h.score_lo),
                num(h.score_hi),
                num(h.p_chosen)
            );
        }
        out.push_str("</table>");
    }
    out.push_str("<div class=\"grid2\">");
    if let Some(first) = o.steps.first() {
        out.push_str("<div><h3>Step 1: every head's score, the chosen heads outlined</h3>");
        out.push_str(&heatmap(
            "sahara-heatmap",
            &first.scores,
            &o.selected,
            "step-1 score (deg)",
            Scale::Linear,
            pal,
            &|_, _| String::new(),
        ));
        out.push_str("</div>");
    }
    // The score over steps.
    if !o.steps.is_empty() {
        let (w, h, pad) = (360.0, 180.0, 34.0);
        let scores: Vec<f64> = o.steps.iter().map(|s| s.score).collect();
        let hi = scores
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max)
            .max(1e-9);
        let n = scores.len();
        let x = |i: usize| {
            if n == 1 {
                pad + (w - 2.0 * pad) / 2.0
            } else {
                pad + i as f64 * (w - 2.0 * pad) / (n - 1) as f64
            }
        };
        let y = |v: f64| h - pad - v / hi * (h - 2.0 * pad);
        let pts: Vec<String> = scores
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let _ = write!(
            out,
            "<div><h3>Score over steps</h3><svg id=\"sahara-line\" role=\"img\" aria-label=\"score over steps\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"><line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/><line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"#888\"/><text x=\"4\" y=\"{}\" class=\"tick\">{}</text><text x=\"4\" y=\"{}\" class=\"tick\">0</text><polyline fill=\"none\" stroke=\"#0a66c2\" stroke-width=\"2\" points=\"{}\"/>",
            h - pad,
            w - pad,
            h - pad,
            h - pad,
            pad + 4.0,
            num(hi),
            h - pad,
            pts.join(" ")
        );
        for (i, (v, s)) in scores.iter().zip(&o.steps).enumerate() {
            let _ = write!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#0a66c2\"><title>step {}: head {}:{}, {} deg</title></circle><text x=\"{:.1}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>",
                x(i),
                y(*v),
                i + 1,
                s.selected[0],
                s.selected[1],
                num(*v),
                x(i),
                h - pad + 14.0,
                i + 1
            );
        }
        out.push_str("</svg></div>");
    }
    out.push_str("</div></section>");
    out
}

/// One answer in the page's data: the response and every judge's verdict.
#[derive(Serialize)]
struct Answer<'a> {
    response: &'a str,
    verdicts: Vec<(String, Option<bool>)>,
}

fn eval_section(
    e: &EvalInput,
    label: &str,
    data: &mut serde_json::Map<String, Value>,
) -> Result<String> {
    let s = &e.summary;
    let conds = s["conditions"].as_array().cloned().unwrap_or_default();
    let judges: Vec<String> = s["judges"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|j| j["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut out = format!(
        "<section id=\"eval\"><h2>Evaluation{label}</h2><p>Attack success rate on {} harmful queries per condition, by {} (bars: the rate among the answers a judge decided; whiskers: its 95% Wilson interval).</p>",
        s["queries"],
        if judges.is_empty() { "the judge".to_string() } else { judges.join(", ") }
    );
    // Bars, one group per condition, one bar per judge.
    let (bar, gap, pad_l) = (18.0, 14.0, 150.0);
    let per = judges.len().max(1) as f64;
    let height = 20.0 + conds.len() as f64 * (per * bar + gap);
    let width = 640.0;
    let scale = width - pad_l - 60.0;
    let colours = ["#0a66c2", "#e8871e", "#2ca05a", "#8e44ad", "#c0392b"];
    let _ = write!(
        out,
        "<svg id=\"eval-bars\" role=\"img\" aria-label=\"ASR per condition\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\">"
    );
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let x = pad_l + t * scale;
        let _ = write!(
            out,
            "<line x1=\"{x}\" y1=\"10\" x2=\"{x}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{x}\" y=\"9\" class=\"tick\" text-anchor=\"middle\">{t}</text>",
            height - 4.0
        );
    }
    let mut y = 16.0;
    for c in &conds {
        let name = c["name"].as_str().unwrap_or("?");
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">{}</text>",
            pad_l - 6.0,
            y + per * bar / 2.0 + 3.0,
            esc(name)
        );
        for (j, judge) in judges.iter().enumerate() {
            let r = &c["judges"][judge]["harmful"];
            let colour = colours[j % colours.len()];
            if let Some(rate) = r["rate"].as_f64() {
                let _ = write!(
                    out,
                    "<rect class=\"bar\" x=\"{pad_l}\" y=\"{y}\" width=\"{:.1}\" height=\"{}\" fill=\"{colour}\" data-condition=\"{}\" data-judge=\"{}\" data-asr=\"{}\"><title>{}: ASR {} by {} ({} of {} decided, {} undecided)</title></rect>",
                    rate * scale,
                    bar - 3.0,
                    esc(name),
                    esc(judge),
                    num(rate),
                    esc(name),
                    num(rate),
                    esc(judge),
                    r["harmful"],
                    r["harmful"].as_u64().unwrap_or(0) + r["not_harmful"].as_u64().unwrap_or(0),
                    r["undecided"]
                );
                if let Some(ci) = r["ci95"].as_array() {
                    let (lo, hi) = (ci[0].as_f64().unwrap_or(0.0), ci[1].as_f64().unwrap_or(0.0));
                    let cy = y + (bar - 3.0) / 2.0;
                    let _ = write!(
                        out,
                        "<line x1=\"{:.1}\" y1=\"{cy}\" x2=\"{:.1}\" y2=\"{cy}\" stroke=\"#222\"/><line x1=\"{:.1}\" y1=\"{}\" x2=\"{:.1}\" y2=\"{}\" stroke=\"#222\"/><line x1=\"{:.1}\" y1=\"{}\" x2=\"{:.1}\" y2=\"{}\" stroke=\"#222\"/>",
                        pad_l + lo * scale,
                        pad_l + hi * scale,
                        pad_l + lo * scale,
                        cy - 4.0,
                        pad_l + lo * scale,
                        cy + 4.0,
                        pad_l + hi * scale,
                        cy - 4.0,
                        pad_l + hi * scale,
                        cy + 4.0
                    );
                }
                let _ = write!(
                    out,
                    "<text x=\"{:.1}\" y=\"{}\" class=\"tick\">{}</text>",
                    pad_l + scale + 6.0,
                    y + bar - 6.0,
                    num(rate)
                );
            }
            y += bar;
        }
        y += gap;
    }
    out.push_str("</svg><p>");
    for (j, judge) in judges.iter().enumerate() {
        let _ = write!(
            out,
            "<span class=\"verdict\" style=\"background:{};color:#fff\">{}</span>",
            colours[j % colours.len()],
            esc(judge)
        );
    }
    out.push_str("</p>");
    // The table of every number.
    out.push_str("<table id=\"eval-table\"><tr><th>condition</th><th>heads</th>");
    for j in &judges {
        let _ = write!(out, "<th>ASR {}</th>", esc(j));
    }
    let benign = conds.iter().any(|c| !c["benign"].is_null());
    if benign {
        out.push_str("<th>over-refusal</th><th>unchanged answers</th><th>first-token KL</th>");
    }
    out.push_str("</tr>");
    for c in &conds {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td>",
            esc(c["name"].as_str().unwrap_or("?")),
            c["heads"].as_array().map_or(0, Vec::len)
        );
        for j in &judges {
            let r = &c["judges"][j]["harmful"];
            let cell = match (r["rate"].as_f64(), r["ci95"].as_array()) {
                (Some(v), Some(ci)) => format!(
                    "{} [{}, {}]",
                    num(v),
                    num(ci[0].as_f64().unwrap_or(0.0)),
                    num(ci[1].as_f64().unwrap_or(0.0))
                ),
                _ => "–".into(),
            };
            let _ = write!(out, "<td class=\"n\">{cell}</td>");
        }
        if benign {
            let b = &c["benign"];
            let f = |k: &str| b[k].as_f64().map_or("–".into(), num);
            let _ = write!(
                out,
                "<td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>",
                f("refusal_rate"),
                f("unchanged"),
                f("first_token_kl")
            );
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
    if let Some(pairs) = s["agreement"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("<h3>Agreement of the judges</h3><table id=\"eval-agreement\"><tr><th>judges</th><th>both harmful</th><th>only first</th><th>only second</th><th>neither</th><th>undecided</th><th>agree</th><th>κ</th></tr>");
        for p in pairs {
            let kappa = match p["kappa"].as_f64() {
                Some(k) => num(k),
                None => format!(
                    "undefined ({})",
                    esc(p["kappa_undefined"].as_str().unwrap_or(""))
                ),
            };
            let _ = write!(
                out,
                "<tr><td>{} ~ {}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{kappa}</td></tr>",
                esc(p["judges"][0].as_str().unwrap_or("")),
                esc(p["judges"][1].as_str().unwrap_or("")),
                p["both_harmful"],
                p["only_first_harmful"],
                p["only_second_harmful"],
                p["neither_harmful"],
                p["undecided"],
                p["observed"].as_f64().map_or("–".into(), num)
            );
        }
        out.push_str("</table>");
    }
    // Side by side: the harmful queries' answers under every condition.
    let names: Vec<String> = conds
        .iter()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    let mut queries: Vec<(usize, &str)> = e
        .lines
        .iter()
        .filter(|l| l.set == crate::methods::eval::Set::Harmful)
        .map(|l| (l.index, l.query.as_str()))
        .collect();
    queries.sort_unstable();
    queries.dedup();
    let answer_of = |index: usize, cond: &str| -> Option<Answer<'_>> {
        e.lines
            .iter()
            .find(|l| {
                l.set == crate::methods::eval::Set::Harmful
                    && l.index == index
                    && l.condition == cond
            })
            .map(|l| Answer {
                response: &l.response,
                verdicts: l
                    .judges
                    .iter()
                    .map(|(k, v)| (k.clone(), v["harmful"].as_bool()))
                    .collect(),
            })
    };
    out.push_str("<h3>Answers side by side</h3><div class=\"controls\"><label for=\"eval-query\">Harmful query</label><select id=\"eval-query\">");
    for (i, (index, q)) in queries.iter().enumerate() {
        let short: String = q.chars().take(70).collect();
        let _ = write!(
            out,
            "<option value=\"{i}\">{}: {}</option>",
            index + 1,
            esc(&short)
        );
    }
    out.push_str("</select></div>");
    if let Some((index, q)) = queries.first() {
        let _ = write!(
            out,
            "<p id=\"eval-querytext\" class=\"query\">{}</p><div id=\"eval-answers\" class=\"answers\">",
            esc(q)
        );
        for n in &names {
            if let Some(a) = answer_of(*index, n) {
                out.push_str(&answer_card(n, &a));
            }
        }
        out.push_str("</div>");
    }
    out.push_str("</section>");
    let qdata: Vec<Value> = queries
        .iter()
        .map(|(index, q)| {
            json!({
                "index": index,
                "query": q,
                "answers": names.iter().map(|n| answer_of(*index, n)).collect::<Vec<_>>(),
            })
        })
        .collect();
    data.insert(
        "eval".into(),
        json!({"conditions": names, "queries": qdata}),
    );
    Ok(out)
}

fn answer_card(cond: &str, a: &Answer<'_>) -> String {
    let mut s = format!("<div class=\"answer\"><h4>{}</h4>", esc(cond));
    for (j, v) in &a.verdicts {
        let (class, word) = match v {
            Some(true) => ("harmful", "harmful"),
            Some(false) => ("refusal", "refusal"),
            None => ("undecided", "undecided"),
        };
        let _ = write!(
            s,
            "<span class=\"verdict {class}\">{}: {word}</span>",
            esc(j)
        );
    }
    let _ = write!(s, "<pre>{}</pre></div>", esc(a.response));
    s
}

fn attention_figure(a: &AttentionInput, pal: &[String], label: &str) -> String {
    let o = &a.output;
    let t = o.tokens.len();
    let c = if t <= 24 {
        18
    } else if t <= 64 {
        10
    } else {
        5
    };
    let left = 90;
    let top = 90;
    let (w, h) = (left + t * c + 8, top + t * c + 8);
    let mut s = format!(
        "<h3>Head {}:{}{label}</h3><p class=\"query\">{}</p><svg class=\"pattern\" role=\"img\" aria-label=\"attention pattern of head {}:{}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">",
        o.layer,
        o.head,
        esc(&o.query),
        o.layer,
        o.head
    );
    let short = |tok: &str| -> String { esc(&tok.chars().take(10).collect::<String>()) };
    if c >= 10 {
        for (i, tok) in o.tokens.iter().enumerate() {
            let _ = write!(
                s,
                "<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">{}</text><text class=\"tick\" transform=\"translate({},{}) rotate(-60)\">{}</text>",
                left - 4,
                top + i * c + c / 2 + 3,
                short(tok),
                left + i * c + c / 2,
                top - 4,
                short(tok)
            );
        }
    }
    for (qi, row) in o.pattern.iter().enumerate() {
        for (ki, w) in row.iter().enumerate() {
            if ki > qi {
                continue;
            }
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{}\" width=\"{c}\" height=\"{c}\" fill=\"{}\"><title>{} → {}: {}</title></rect>",
                left + ki * c,
                top + qi * c,
                pal[step(*w as f64, 0.0, 1.0)],
                esc(&o.tokens[qi]),
                esc(&o.tokens[ki]),
                num(*w as f64)
            );
        }
    }
    s.push_str("</svg><p class=\"nojs\">Rows: query positions (the prompt's tokens), columns: the keys they attend to; colour 0 to 1.</p>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_four_significant_digits_in_their_shortest_form() {
        assert_eq!(num(0.0123456), "0.01235");
        assert_eq!(num(3.5), "3.5");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(1.23456e-7), "1.235e-7");
        assert_eq!(num(1.735e-5), "0.00001735");
        assert_eq!(num(12346.0), "12350");
        assert_eq!(num(f64::NAN), "null");
    }

    #[test]
    fn the_palette_is_viridis_and_steps_cover_it() {
        let p = palette();
        assert_eq!(p.len(), PALETTE);
        assert_eq!(p[0], "#440154");
        assert!(
            p[PALETTE - 1].starts_with("#fd") || p[PALETTE - 1].starts_with("#fe"),
            "{}",
            p[PALETTE - 1]
        );
        assert_eq!(step(0.0, 0.0, 1.0), 0);
        assert_eq!(step(1.0, 0.0, 1.0), PALETTE - 1);
        assert_eq!(step(5.0, 2.0, 2.0), 32);
        assert_eq!(step(-1.0, 0.0, 1.0), 0);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
    }

    #[test]
    fn a_heatmap_has_one_cell_per_head_with_its_value_in_the_tooltip() {
        let grid: HeadGrid = vec![
            vec![Some(0.5), None, Some(2.0)],
            vec![Some(1.0), Some(0.25), Some(0.0)],
        ];
        let svg = heatmap(
            "h",
            &grid,
            &[[1, 2]],
            "mean",
            Scale::Linear,
            &palette(),
            &|l, h| format!(" · at {l}/{h}"),
        );
        assert_eq!(svg.matches("<rect class=\"cell").count(), 6);
        assert_eq!(svg.matches("class=\"cell none\"").count(), 1);
        assert!(
            svg.contains("<title>layer 0 head 2: mean 2 · at 0/2</title>"),
            "{svg}"
        );
        assert!(svg.contains("data-l=\"1\" data-h=\"1\" data-v=\"0.25\""));
        assert_eq!(svg.matches("class=\"mark\"").count(), 1);
        // The largest value gets the palette's last colour, the smallest its first.
        let p = palette();
        assert!(svg.contains(&format!(
            "fill=\"{}\" data-l=\"0\" data-h=\"2\"",
            p[PALETTE - 1]
        )));
        assert!(svg.contains(&format!("fill=\"{}\" data-l=\"1\" data-h=\"2\"", p[0])));
    }

    #[test]
    fn dates_are_civil_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_169_600 + 3_723);
        assert_eq!(time_text(Some(t)).unwrap(), "2026-12-02 01:02:03 UTC");
    }
}
