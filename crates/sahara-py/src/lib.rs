//! Python bindings of `sahara`: the library's functions on numpy arrays and Python values.
//!
//! The module is `sahara._sahara`; the package `sahara` (python/sahara/__init__.py) re-exports
//! it. Every long call releases the GIL while Rust computes and checks for Ctrl-C between
//! units of work (a query of Ships, a step of Sahara, a generation batch), so that a notebook
//! can interrupt a sweep and keep the model. Errors become `ValueError` (bad arguments),
//! `FileNotFoundError` (a missing file) or `sahara.SaharaError` (the rest), with the
//! library's one-line message.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{IntoPyArray, PyArray1, PyArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use sahara::io::formats::{schema, AttributeOutput, AttributeStep, EvalLine, ShipsLine};
use sahara::io::prompt::EncodedQuery;
use sahara::methods::eval::{Condition, EvalOptions, Outcome, Set};
use sahara::methods::generate::{GenerateOptions, Sampling};
use sahara::methods::judge::reasoning::Format;
use sahara::methods::judge::Panel;
use sahara::methods::sahara::{greedy_step, reference_subspace, SaharaOptions};
use sahara::methods::ships::{ships_scores, summarize, top_heads, HeadGrid, ShipsOptions};
use sahara::model::ablation::{Ablation, HeadSet};
use sahara::{Batch, ForwardSpec, HeadAblation, LoadedModel, Op, Positions, Template};

create_exception!(
    _sahara,
    SaharaError,
    PyException,
    "An error of sahara that is not a bad argument or a missing file."
);

/// The library's error as a Python exception.
fn py_err(e: sahara::Error) -> PyErr {
    use sahara::Error as E;
    let msg = sahara::error::one_line(&e.to_string());
    match &e {
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(msg)
        }
        E::ModelNotFound { .. } => PyFileNotFoundError::new_err(msg),
        E::Tokenizer { message, .. } if message.contains("not found") => {
            PyFileNotFoundError::new_err(msg)
        }
        E::InvalidArgument(_)
        | E::OutOfRange { .. }
        | E::BadValue { .. }
        | E::Conflict { .. }
        | E::Ablation(_)
        | E::Prompt(_)
        | E::Template(_)
        | E::TooFewQueries { .. } => PyValueError::new_err(msg),
        _ => SaharaError::new_err(msg),
    }
}

trait OrPy<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> OrPy<T> for sahara::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(py_err)
    }
}

/// Raises KeyboardInterrupt (or whatever a signal handler raised) at a unit boundary.
fn check_signals() -> PyResult<()> {
    Python::with_gil(|py| py.check_signals())
}

/// A progress bar from tqdm when it is installed; nothing otherwise.
struct Progress(Option<PyObject>);

impl Progress {
    fn new(total: usize, desc: &str) -> Self {
        Python::with_gil(|py| {
            let bar = py
                .import("tqdm.auto")
                .and_then(|m| m.getattr("tqdm"))
                .and_then(|t| {
                    let kw = PyDict::new(py);
                    kw.set_item("total", total)?;
                    kw.set_item("desc", desc)?;
                    kw.set_item("leave", false)?;
                    t.call((), Some(&kw))
                })
                .ok()
                .map(|b| b.unbind());
            Progress(bar)
        })
    }

    fn update(&self, n: usize) {
        if let Some(b) = &self.0 {
            Python::with_gil(|py| {
                let _ = b.call_method1(py, "update", (n,));
            });
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            Python::with_gil(|py| {
                let _ = b.call_method0(py, "close");
            });
        }
    }
}

/// One head's ablation: what is scaled or replaced, and by what.
#[pyclass(name = "Ablation", module = "sahara", frozen)]
#[derive(Clone)]
struct PyAblation {
    #[pyo3(get)]
    layer: usize,
    #[pyo3(get)]
    head: usize,
    #[pyo3(get)]
    target: String,
    #[pyo3(get)]
    mode: String,
    #[pyo3(get)]
    epsilon: f64,
}

#[pymethods]
impl PyAblation {
    /// Ablation(layer, head, target="q", mode="scale", epsilon=1e-5): target q (query), k (the
    /// key/value group) or v (the head's attention output); mode scale (multiply by epsilon)
    /// or mean (replace by the mean over heads).
    #[new]
    #[pyo3(signature = (layer, head, target="q", mode="scale", epsilon=1e-5))]
    fn new(layer: usize, head: usize, target: &str, mode: &str, epsilon: f64) -> PyResult<Self> {
        ablation_of(target, mode, epsilon)?;
        Ok(PyAblation {
            layer,
            head,
            target: target.into(),
            mode: mode.into(),
            epsilon,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Ablation({}, {}, target={:?}, mode={:?}, epsilon={})",
            self.layer, self.head, self.target, self.mode, self.epsilon
        )
    }
}

fn ablation_of(target: &str, mode: &str, epsilon: f64) -> PyResult<Ablation> {
    Ablation::new(target.parse().py()?, Op::from_mode(mode, epsilon).py()?).py()
}

/// A query rendered and encoded for one model: reusable across calls.
#[pyclass(module = "sahara", frozen)]
#[derive(Clone)]
struct Prompt {
    /// The query as given.
    #[pyo3(get)]
    query: String,
    /// The rendered prompt text.
    #[pyo3(get)]
    text: String,
    /// The token ids.
    #[pyo3(get)]
    ids: Vec<u32>,
}

#[pymethods]
impl Prompt {
    fn __repr__(&self) -> String {
        format!("Prompt({:?}, {} tokens)", self.query, self.ids.len())
    }

    fn __len__(&self) -> usize {
        self.ids.len()
    }
}

/// A model, loaded once.
#[pyclass(module = "sahara", frozen)]
struct Model {
    inner: Arc<LoadedModel>,
}

/// Heads as Ablation objects, (layer, head) pairs, or an "L:H,L:H" string, with a default
/// ablation for the pairs.
fn head_ablations(
    heads: Option<&Bound<'_, PyAny>>,
    default: Ablation,
) -> PyResult<Vec<HeadAblation>> {
    let Some(heads) = heads else {
        return Ok(vec![]);
    };
    if heads.is_none() {
        return Ok(vec![]);
    }
    if let Ok(s) = heads.extract::<String>() {
        return Ok(default.of(&HeadSet::parse(&s).py()?.0));
    }
    let mut out = Vec::new();
    for item in heads.try_iter()? {
        let item = item?;
        if let Ok(a) = item.downcast::<PyAblation>() {
            let a = a.get();
            let ab = ablation_of(&a.target, &a.mode, a.epsilon)?;
            out.push(ab.at(a.layer, a.head));
        } else {
            let (l, h): (usize, usize) = item.extract().map_err(|_| {
                PyValueError::new_err(
                    "a head is an Ablation, a (layer, head) pair, or a string \"L:H,L:H\"",
                )
            })?;
            out.push(default.at(l, h));
        }
    }
    Ok(out)
}

/// NaN where a head has no score.
fn flat_grid(grid: &HeadGrid, out: &mut Vec<f64>) {
    for row in grid {
        for v in row {
            out.push(v.unwrap_or(f64::NAN));
        }
    }
}

impl Model {
    /// Prompts (see [`Model::queries`]) and the heads to ablate (q scale 1e-5 for pairs),
    /// checked against the model.
    fn prompts_and_heads(
        &self,
        prompts: &Bound<'_, PyAny>,
        ablate: Option<&Bound<'_, PyAny>>,
        template: Option<&str>,
    ) -> PyResult<(Vec<EncodedQuery>, Vec<HeadAblation>)> {
        let qs = self.queries(prompts, template, None)?;
        let abl = head_ablations(ablate, Ablation::paper_default())?;
        for a in &abl {
            a.validate(self.cfg()).py()?;
        }
        Ok((qs, abl))
    }

    fn cfg(&self) -> &sahara::ModelConfig {
        self.inner.cfg()
    }

    /// Queries as strings (encoded with `template`) or Prompts (used as they are).
    fn queries(
        &self,
        queries: &Bound<'_, PyAny>,
        template: Option<&str>,
        system: Option<String>,
    ) -> PyResult<Vec<EncodedQuery>> {
        let template = template.unwrap_or(default_template(&self.inner));
        let t = Template::parse(template, system).py()?;
        let mut out = Vec::new();
        for (i, item) in queries.try_iter()?.enumerate() {
            let item = item?;
            if let Ok(p) = item.downcast::<Prompt>() {
                let p = p.get();
                out.push(EncodedQuery {
                    index: i,
                    text: p.query.clone(),
                    tokens: p.ids.clone(),
                });
            } else {
                let q: String = item
                    .extract()
                    .map_err(|_| PyValueError::new_err("a query is a string or a Prompt"))?;
                let (_, tokens) = self.inner.prompts.encode_query(&t, &q).py()?;
                out.push(EncodedQuery {
                    index: i,
                    text: q,
                    tokens,
                });
            }
        }
        if out.is_empty() {
            return Err(PyValueError::new_err("no queries"));
        }
        Ok(out)
    }
}

/// The default template: chat for the built-in organism, raw otherwise (as the CLI).
fn default_template(m: &LoadedModel) -> &'static str {
    if sahara::organism::builtin::is_model(&m.source) {
        "chat"
    } else {
        "raw"
    }
}

#[pymethods]
impl Model {
    /// Model(source, dtype="auto", device="cpu", adapter=None): a model folder, a hub id in
    /// the local cache, a GGUF file, or "builtin:organism"; `adapter` a PEFT LoRA adapter
    /// folder merged into the weights at load.
    #[new]
    #[pyo3(signature = (source, dtype="auto", device="cpu", adapter=None))]
    fn new(
        py: Python<'_>,
        source: &str,
        dtype: &str,
        device: &str,
        adapter: Option<PathBuf>,
    ) -> PyResult<Self> {
        let (s, d, dev) = (source.to_string(), dtype.to_string(), device.to_string());
        let opts = sahara::LoadOptions {
            adapter,
            ..Default::default()
        };
        let m = py
            .allow_threads(|| sahara::device::load(&s, &d, &dev, opts))
            .py()?;
        Ok(Model { inner: Arc::new(m) })
    }

    /// The built-in safety-aligned model organism.
    #[staticmethod]
    fn organism(py: Python<'_>) -> PyResult<Self> {
        Self::new(py, "builtin:organism", "f32", "cpu", None)
    }

    #[getter]
    fn source(&self) -> String {
        self.inner.source.clone()
    }

    #[getter]
    fn layers(&self) -> usize {
        self.cfg().num_layers
    }

    #[getter]
    fn heads(&self) -> usize {
        self.cfg().num_heads
    }

    #[getter]
    fn kv_heads(&self) -> usize {
        self.cfg().num_kv_heads
    }

    #[getter]
    fn family(&self) -> String {
        format!("{:?}", self.cfg().family).to_lowercase()
    }

    /// The resolved configuration, every default filled in.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.cfg();
        let d = PyDict::new(py);
        d.set_item("architecture", &c.architecture)?;
        d.set_item("family", self.family())?;
        d.set_item("hidden_size", c.hidden_size)?;
        d.set_item("intermediate_size", c.intermediate_size)?;
        d.set_item("num_layers", c.num_layers)?;
        d.set_item("num_heads", c.num_heads)?;
        d.set_item("num_kv_heads", c.num_kv_heads)?;
        d.set_item("head_dim", c.head_dim)?;
        d.set_item("vocab_size", c.vocab_size)?;
        d.set_item("max_position_embeddings", c.max_position_embeddings)?;
        d.set_item("rope_theta", c.rope_theta)?;
        d.set_item("rms_norm_eps", c.rms_norm_eps)?;
        d.set_item("tie_word_embeddings", c.tie_word_embeddings)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Model({:?}: {} layers x {} heads)",
            self.inner.source,
            self.layers(),
            self.heads()
        )
    }

    /// encode(queries, template=None, system=None) -> list[Prompt]: render ("chat", "raw" or
    /// a format string with {query}; default chat for the organism, raw otherwise) and
    /// encode, once.
    #[pyo3(signature = (queries, template=None, system=None))]
    fn encode(
        &self,
        queries: &Bound<'_, PyAny>,
        template: Option<&str>,
        system: Option<String>,
    ) -> PyResult<Vec<Prompt>> {
        let t = Template::parse(template.unwrap_or(default_template(&self.inner)), system).py()?;
        let mut out = Vec::new();
        for item in queries.try_iter()? {
            let q: String = item?.extract()?;
            let (text, ids) = self.inner.prompts.encode_query(&t, &q).py()?;
            out.push(Prompt {
                query: q,
                text,
                ids,
            });
        }
        Ok(out)
    }

    /// ships(queries, target="q", mode="scale", epsilon=1e-5, layers=None, heads=None,
    /// template=None) -> Ships: every head's Ships for every query; `layers` and `heads` are
    /// (start, end) ranges.
    #[pyo3(signature = (queries, target="q", mode="scale", epsilon=1e-5, layers=None, heads=None, template=None, kl="exact"))]
    #[allow(clippy::too_many_arguments)]
    fn ships(
        &self,
        py: Python<'_>,
        queries: &Bound<'_, PyAny>,
        target: &str,
        mode: &str,
        epsilon: f64,
        layers: Option<(usize, usize)>,
        heads: Option<(usize, usize)>,
        template: Option<&str>,
        kl: &str,
    ) -> PyResult<Ships> {
        let qs = self.queries(queries, template, None)?;
        let mut opts = ShipsOptions::new(self.cfg());
        opts.ablation = ablation_of(target, mode, epsilon)?;
        opts.kl = kl.parse().py()?;
        if let Some((a, b)) = layers {
            opts.layers = a..b;
        }
        if let Some((a, b)) = heads {
            opts.heads = a..b;
        }
        opts.validate(self.cfg()).py()?;
        opts.engine.memory_budget =
            sahara::device::placement_budget(&self.inner.decoder.placement, None).py()?;
        let progress = Progress::new(qs.len(), "ships");
        let mut grids = Vec::with_capacity(qs.len());
        for q in &qs {
            let m = self.inner.clone();
            let g = py
                .allow_threads(|| ships_scores(&m.decoder, &q.tokens, &opts, &mut |_| {}))
                .py()?;
            grids.push(g);
            progress.update(1);
            check_signals()?;
        }
        Ok(Ships {
            grids,
            queries: qs,
            ablation: opts.ablation,
            layers: self.layers(),
            heads: self.heads(),
        })
    }

    /// attribute(queries, steps=3, rank=1, target="q", mode="scale", epsilon=1e-5,
    /// template=None) -> Attribution: the Sahara search, greedy over heads.
    #[pyo3(signature = (queries, steps=3, rank=1, target="q", mode="scale", epsilon=1e-5, template=None))]
    #[allow(clippy::too_many_arguments)]
    fn attribute(
        &self,
        py: Python<'_>,
        queries: &Bound<'_, PyAny>,
        steps: usize,
        rank: usize,
        target: &str,
        mode: &str,
        epsilon: f64,
        template: Option<&str>,
    ) -> PyResult<Attribution> {
        let template = template.unwrap_or(default_template(&self.inner));
        let qs = self.queries(queries, Some(template), None)?;
        let mut opts = SaharaOptions {
            ablation: ablation_of(target, mode, epsilon)?,
            rank,
            steps,
            engine: Default::default(),
            chunk: None,
        };
        opts.engine.memory_budget =
            sahara::device::placement_budget(&self.inner.decoder.placement, None).py()?;
        opts.validate(self.cfg(), qs.len()).py()?;
        let prompts: Vec<Vec<u32>> = qs.iter().map(|q| q.tokens.clone()).collect();
        let m = self.inner.clone();
        let reference = py
            .allow_threads(|| reference_subspace(&m.decoder, &prompts))
            .py()?;
        let progress = Progress::new(steps, "attribute");
        let mut out_steps: Vec<AttributeStep> = Vec::new();
        let mut selected: Vec<(usize, usize)> = Vec::new();
        for _ in 0..steps {
            let step = py
                .allow_threads(|| {
                    greedy_step(
                        &m.decoder,
                        &prompts,
                        &selected,
                        &reference,
                        &opts,
                        &mut |_| {},
                    )
                })
                .py()?;
            selected.push((step.selected[0], step.selected[1]));
            out_steps.push(step);
            progress.update(1);
            check_signals()?;
        }
        Ok(Attribution {
            output: AttributeOutput {
                schema: schema::ATTRIBUTE.into(),
                model: self.inner.source.clone(),
                data: "python".into(),
                queries: qs.len(),
                template: Template::parse(template, None).py()?.name(),
                target: opts.ablation.target,
                mode: opts.ablation.op.mode_str().into(),
                epsilon: opts.ablation.op.epsilon(),
                rank,
                selected: out_steps.iter().map(|s| s.selected).collect(),
                steps: out_steps,
            },
        })
    }

    /// generate(prompts, ablate=None, max_new_tokens=64, temperature=None, top_k=None,
    /// seed=0, batch_size=16, template=None) -> list[str]: batched generation with the heads
    /// ablated (Ablations, (layer, head) pairs with q scale 1e-5, or "L:H,L:H").
    #[pyo3(signature = (prompts, ablate=None, max_new_tokens=64, temperature=None, top_k=None, seed=0, batch_size=16, template=None))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompts: &Bound<'_, PyAny>,
        ablate: Option<&Bound<'_, PyAny>>,
        max_new_tokens: usize,
        temperature: Option<f64>,
        top_k: Option<usize>,
        seed: u64,
        batch_size: usize,
        template: Option<&str>,
    ) -> PyResult<Vec<String>> {
        let (qs, abl) = self.prompts_and_heads(prompts, ablate, template)?;
        let opts = GenerateOptions {
            max_new_tokens,
            sampling: sampling(temperature, top_k)?,
            seed,
            eos: self.inner.eos.clone(),
            simulate_oom_above: None,
        };
        if batch_size == 0 {
            return Err(PyValueError::new_err("batch_size must be at least 1"));
        }
        let progress = Progress::new(qs.len(), "generate");
        let mut out = Vec::with_capacity(qs.len());
        for chunk in qs.chunks(batch_size) {
            let m = self.inner.clone();
            let rows: Vec<Vec<u32>> = chunk.iter().map(|q| q.tokens.clone()).collect();
            let sets = vec![abl.clone(); rows.len()];
            let tokens = py
                .allow_threads(|| {
                    sahara::methods::generate::generate(
                        &m.decoder,
                        &rows,
                        &sets,
                        m.prompts.pad_id,
                        &opts,
                    )
                })
                .py()?;
            for t in tokens {
                out.push(self.inner.prompts.decode(&t).py()?);
            }
            progress.update(chunk.len());
            check_signals()?;
        }
        Ok(out)
    }

    /// logits(prompts, ablate=None, template=None) -> numpy float32 (N, vocab): the
    /// next-token logits at the last position of each prompt.
    #[pyo3(signature = (prompts, ablate=None, template=None))]
    fn logits<'py>(
        &self,
        py: Python<'py>,
        prompts: &Bound<'py, PyAny>,
        ablate: Option<&Bound<'py, PyAny>>,
        template: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (qs, abl) = self.prompts_and_heads(prompts, ablate, template)?;
        let m = self.inner.clone();
        let v = self.cfg().vocab_size;
        let flat: Vec<f32> = py
            .allow_threads(|| -> sahara::Result<Vec<f32>> {
                let plan = m.decoder.ablation_plan(std::slice::from_ref(&abl))?;
                let spec = ForwardSpec::logits(Positions::Last).with_ablations(&plan);
                let mut out = Vec::with_capacity(qs.len() * v);
                for q in &qs {
                    let b = Batch::new(std::slice::from_ref(&q.tokens), 0, &m.decoder.device)?;
                    let l = m.decoder.forward(&b, &spec, None)?.logits.expect("logits");
                    let row: Vec<f32> = l
                        .flatten_all()?
                        .to_dtype(candle_core::DType::F32)?
                        .to_vec1()?;
                    sahara::model::finite::check_output(
                        &m.decoder,
                        &q.tokens,
                        &abl,
                        &row,
                        || sahara::model::finite::describe(&abl),
                        None,
                    )?;
                    out.extend(row);
                }
                Ok(out)
            })
            .py()?;
        let n = qs.len();
        let width = flat.len() / n.max(1);
        Ok(flat.into_pyarray(py).reshape([n, width])?.into_any())
    }

    /// hidden_states(prompts, ablate=None, template=None) -> numpy float32 (N, hidden): the
    /// final hidden state (after the last norm) at the last position of each prompt.
    #[pyo3(signature = (prompts, ablate=None, template=None))]
    fn hidden_states<'py>(
        &self,
        py: Python<'py>,
        prompts: &Bound<'py, PyAny>,
        ablate: Option<&Bound<'py, PyAny>>,
        template: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (qs, abl) = self.prompts_and_heads(prompts, ablate, template)?;
        let m = self.inner.clone();
        let rows: Vec<Vec<u32>> = qs.iter().map(|q| q.tokens.clone()).collect();
        let hidden = py
            .allow_threads(|| sahara::methods::sahara::final_hidden(&m.decoder, &rows, &abl))
            .py()?;
        let n = hidden.len();
        let d = hidden.first().map_or(0, Vec::len);
        let flat: Vec<f32> = hidden.into_iter().flatten().collect();
        Ok(flat.into_pyarray(py).reshape([n, d])?.into_any())
    }

    /// evaluate(harmful, benign=None, conditions=None, judges=("keyword",),
    /// max_new_tokens=64, batch_size=16, target="q", mode="scale", epsilon=1e-5,
    /// template=None) -> Evaluation: generate and judge the answers of the unmodified model
    /// and of each condition ({name: heads}), as `sahara eval` does.
    #[pyo3(signature = (harmful, benign=None, conditions=None, judges=None, max_new_tokens=64, batch_size=16, target="q", mode="scale", epsilon=1e-5, template=None))]
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        py: Python<'_>,
        harmful: &Bound<'_, PyAny>,
        benign: Option<&Bound<'_, PyAny>>,
        conditions: Option<&Bound<'_, PyDict>>,
        judges: Option<Vec<String>>,
        max_new_tokens: usize,
        batch_size: usize,
        target: &str,
        mode: &str,
        epsilon: f64,
        template: Option<&str>,
    ) -> PyResult<Evaluation> {
        let template = template.unwrap_or(default_template(&self.inner));
        let h = self.queries(harmful, Some(template), None)?;
        let b = match benign {
            Some(b) if !b.is_none() => Some(self.queries(b, Some(template), None)?),
            _ => None,
        };
        let ablation = ablation_of(target, mode, epsilon)?;
        let mut conds = vec![Condition::unmodified()];
        if let Some(c) = conditions {
            for (name, heads) in c.iter() {
                let name: String = name.extract()?;
                let abl = head_ablations(Some(&heads), ablation)?;
                let set = HeadSet(abl.iter().map(|a| (a.layer, a.head)).collect());
                let mut cond = Condition::ablating(&set, ablation, self.cfg()).py()?;
                cond.ablations = abl;
                cond.name = name;
                conds.push(cond);
            }
        }
        let names = judges.unwrap_or_else(|| vec!["keyword".to_string()]);
        let panel = Panel::by_names(&names, None).py()?;
        let mut sets: Vec<(Set, &[EncodedQuery])> = vec![(Set::Harmful, &h)];
        if let Some(b) = &b {
            sets.push((Set::Benign, b));
        }
        let opts = EvalOptions {
            generate: GenerateOptions {
                max_new_tokens,
                sampling: Sampling::Greedy,
                seed: 0,
                eos: self.inner.eos.clone(),
                simulate_oom_above: None,
            },
            batch_size,
            reasoning: Format::of_vocabulary(|t| self.inner.prompts.has_token(t)),
        };
        let plan = sahara::methods::eval::plan(conds.len(), &sets, batch_size.max(1));
        let total: usize = plan.iter().map(|u| u.rows.len()).sum();
        let progress = Progress::new(total, "evaluate");
        let mut lines: Vec<EvalLine> = Vec::new();
        let mut outcomes: Vec<Outcome> = Vec::new();
        let m = self.inner.clone();
        // One unit of the plan at a time, so that Ctrl-C stops between batches.
        for u in 0..plan.len() {
            let mut rows = Vec::new();
            py.allow_threads(|| {
                sahara::methods::eval::run(
                    &m,
                    &conds,
                    &sets,
                    &panel,
                    &opts,
                    u..u + 1,
                    &|_, _, _| false,
                    &mut |r| {
                        rows.extend(r);
                        Ok(())
                    },
                )
            })
            .py()?;
            for g in &rows {
                let q = match g.set {
                    Set::Harmful => &h[g.query],
                    Set::Benign => &b.as_ref().expect("benign")[g.query],
                };
                lines.push(EvalLine::of(g, &conds[g.condition], q, &panel));
                outcomes.push(Outcome::from(g));
            }
            progress.update(rows.len());
            check_signals()?;
        }
        let summary = sahara::methods::eval::summarize(
            &conds,
            &panel.names(),
            h.len(),
            b.as_ref().map(Vec::len),
            &outcomes,
        )
        .py()?;
        Ok(Evaluation {
            summary: serde_json::to_value(&summary).expect("summaries serialize"),
            lines: serde_json::to_value(&lines).expect("lines serialize"),
        })
    }

    /// surgery(out_dir, heads, target="q", mode="scale", epsilon=1e-5, force=False) -> dict:
    /// fold the ablation into the weights and write a Hugging Face folder; returns its
    /// manifest (sahara-surgery.json).
    #[pyo3(signature = (out_dir, heads, target="q", mode="scale", epsilon=1e-5, force=false))]
    #[allow(clippy::too_many_arguments)]
    fn surgery<'py>(
        &self,
        py: Python<'py>,
        out_dir: PathBuf,
        heads: &Bound<'py, PyAny>,
        target: &str,
        mode: &str,
        epsilon: f64,
        force: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let ablation = ablation_of(target, mode, epsilon)?;
        let abl = head_ablations(Some(heads), ablation)?;
        let plan = sahara::checkpoint::surgery::SurgeryPlan {
            heads: HeadSet(abl.iter().map(|a| (a.layer, a.head)).collect()),
            ablation,
        };
        let source = self.inner.source.clone();
        let out = out_dir.clone();
        // The model's adapter, if any, is merged into the written weights too.
        let adapter = self.inner.adapter.as_ref().map(|a| a.dir.clone());
        py.allow_threads(|| {
            sahara::Checkpoint::resolve(&source)?.surgery_with(
                &source,
                &out,
                &plan,
                force,
                adapter.as_deref(),
            )
        })
        .py()?;
        let manifest = std::fs::read_to_string(out_dir.join("sahara-surgery.json"))
            .map_err(|e| py_err(sahara::Error::io(&out_dir, e)))?;
        json_to_py(py, &manifest)
    }
}

fn sampling(temperature: Option<f64>, top_k: Option<usize>) -> PyResult<Sampling> {
    Ok(match (temperature, top_k) {
        (None, None) => Sampling::Greedy,
        (t, k) => {
            let t = t.unwrap_or(1.0);
            if !(t.is_finite() && t > 0.0) {
                return Err(PyValueError::new_err("temperature must be positive"));
            }
            Sampling::Sample {
                temperature: t,
                top_k: k,
            }
        }
    })
}

/// JSON text as Python values (dicts, lists, numbers).
fn json_to_py<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (text,))
}

/// Every query's Ships.
#[pyclass(module = "sahara", frozen)]
struct Ships {
    grids: Vec<HeadGrid>,
    queries: Vec<EncodedQuery>,
    ablation: Ablation,
    layers: usize,
    heads: usize,
}

#[pymethods]
impl Ships {
    /// numpy float64 (queries, layers, heads): KL in nats; NaN where a head was not scored.
    #[getter]
    fn scores<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let mut flat = Vec::with_capacity(self.grids.len() * self.layers * self.heads);
        for g in &self.grids {
            flat_grid(g, &mut flat);
        }
        let shape = [self.grids.len(), self.layers, self.heads];
        Ok(flat.into_pyarray(py).reshape(shape)?.into_any())
    }

    /// numpy float64 (layers, heads): the mean over the queries.
    #[getter]
    fn mean<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let s = summarize(&self.grids, 1);
        let mut flat = Vec::with_capacity(self.layers * self.heads);
        flat_grid(&s.mean, &mut flat);
        Ok(PyArray1::from_vec(py, flat)
            .reshape([self.layers, self.heads])?
            .into_any())
    }

    /// top(k=10) -> list of (layer, head, mean Ships, queries with it in their top k),
    /// best first.
    #[pyo3(signature = (k=10))]
    fn top(&self, k: usize) -> Vec<(usize, usize, f64, usize)> {
        summarize(&self.grids, k)
            .by_mean
            .into_iter()
            .take(k)
            .map(|r| (r.layer, r.head, r.mean, r.count))
            .collect()
    }

    /// to_jsonl(path, top=10): the lines `sahara ships --out` writes.
    #[pyo3(signature = (path, top=10))]
    fn to_jsonl(&self, path: PathBuf, top: usize) -> PyResult<()> {
        let mut text = String::new();
        for (q, g) in self.queries.iter().zip(&self.grids) {
            let line = ShipsLine {
                schema: schema::SHIPS_LINE.into(),
                index: q.index,
                query: q.text.clone(),
                prompt_tokens: q.tokens.len(),
                target: self.ablation.target,
                mode: self.ablation.op.mode_str().into(),
                epsilon: self.ablation.op.epsilon(),
                scores: g.clone(),
                top: top_heads(g, top),
                patch: None,
                screen: None,
            };
            text.push_str(&serde_json::to_string(&line).expect("lines serialize"));
            text.push('\n');
        }
        sahara::io::fs::write_atomic(&path, text.as_bytes()).py()
    }

    fn __len__(&self) -> usize {
        self.grids.len()
    }
}

/// The heads of a Sahara search, step by step.
#[pyclass(module = "sahara", frozen)]
struct Attribution {
    output: AttributeOutput,
}

#[pymethods]
impl Attribution {
    /// The chosen heads in order, as (layer, head).
    #[getter]
    fn selected(&self) -> Vec<(usize, usize)> {
        self.output.selected.iter().map(|s| (s[0], s[1])).collect()
    }

    /// Each step's score (degrees) of its chosen head.
    #[getter]
    fn step_scores(&self) -> Vec<f64> {
        self.output.steps.iter().map(|s| s.score).collect()
    }

    /// numpy float64 (steps, layers, heads): every candidate's score at each step; NaN for
    /// heads already chosen.
    #[getter]
    fn scores<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let l = self.output.steps.first().map_or(0, |s| s.scores.len());
        let h = self
            .output
            .steps
            .first()
            .and_then(|s| s.scores.first())
            .map_or(0, Vec::len);
        let mut flat = Vec::new();
        for s in &self.output.steps {
            flat_grid(&s.scores, &mut flat);
        }
        Ok(flat
            .into_pyarray(py)
            .reshape([self.output.steps.len(), l, h])?
            .into_any())
    }

    /// to_json(path): the document `sahara attribute --out` writes.
    fn to_json(&self, path: PathBuf) -> PyResult<()> {
        sahara::io::fs::write_json(&path, &self.output).py()
    }
}

/// The result of `Model.evaluate`.
#[pyclass(module = "sahara", frozen)]
struct Evaluation {
    summary: serde_json::Value,
    lines: serde_json::Value,
}

#[pymethods]
impl Evaluation {
    /// One dict per condition: the fields of `sahara eval`'s summary (asr, asr_ci95,
    /// refused, undecided, total, asr_change, benign, judges).
    fn table<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &self.summary.to_string())
    }

    /// One dict per response: the fields of an eval line (set, condition, index, query,
    /// response, refusal, reason, matched, judges, first_token_kl, …).
    #[getter]
    fn responses<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        json_to_py(py, &self.lines.to_string())
    }
}

/// load_queries(data, column=None, limit=None) -> list[str]: the queries of a data file as
/// `--data` reads it (CSV, JSON Lines, JSON, text), or builtin:harmful / builtin:benign.
#[pyfunction]
#[pyo3(signature = (data, column=None, limit=None))]
fn load_queries(data: &str, column: Option<&str>, limit: Option<usize>) -> PyResult<Vec<String>> {
    let path = sahara::io::data::data_file(data).py()?;
    let d = sahara::io::data::load_queries(&path, column, limit).py()?;
    Ok(d.queries.into_iter().map(|q| q.text).collect())
}

#[pymodule]
fn _sahara(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The allocator setting the command line runs with (a sweep's buffers are reused).
    sahara::device::tune_allocator();
    m.add_function(wrap_pyfunction!(load_queries, m)?)?;
    m.add_class::<Model>()?;
    m.add_class::<Prompt>()?;
    m.add_class::<PyAblation>()?;
    m.add_class::<Ships>()?;
    m.add_class::<Attribution>()?;
    m.add_class::<Evaluation>()?;
    m.add("SaharaError", m.py().get_type::<SaharaError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
