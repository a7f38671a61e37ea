//! The output formats, as types: every file a command writes and a later command (or a
//! resumed run) reads back is one of these, serialized with serde in the field order shown.
//! `docs/formats.md` describes them for users.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result, Setting};
use crate::io::prompt::EncodedQuery;
use crate::methods::eval::{ConditionSummary, Outcome, Set};
use crate::methods::ships::{HeadGrid, HeadScore, Summary};
use crate::model::ablation::Target;

/// The `schema` of each kind of output, `sahara.KIND/VERSION`: the first field of every JSON
/// document and JSON line sahara writes. A reader checks it; the version changes when a field
/// changes meaning or goes away (adding a field keeps it).
pub mod schema {
    pub const RUN: &str = "sahara.run/1";
    pub const SHIPS_LINE: &str = "sahara.ships/1";
    pub const SHIPS_SUMMARY: &str = "sahara.ships-summary/1";
    pub const ATTRIBUTE: &str = "sahara.attribute/1";
    pub const EVAL_LINE: &str = "sahara.eval/2";
    pub const EVAL_SUMMARY: &str = "sahara.eval-summary/2";
    pub const JUDGE_SUMMARY: &str = "sahara.judge-summary/1";
    pub const ATTENTION: &str = "sahara.attention/1";
    pub const COMPARE: &str = "sahara.compare/1";
    pub const SURGERY: &str = "sahara.surgery/1";
}

/// `FILE.run.json` beside a resumable output `FILE`: which command, model, data and
/// settings produced it. A rerun continues the output only when its record is equal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub schema: String,
    /// The command that wrote the output (`ships`, `attribute`, `eval`).
    pub command: String,
    /// sahara's version.
    pub version: String,
    /// The model as named (`--model`), and a fingerprint of its weights and configuration.
    pub model: String,
    pub model_fingerprint: String,
    /// The data as named (`--data`), a fingerprint of the queries used, and how many.
    pub data: String,
    pub data_fingerprint: String,
    pub queries: usize,
    /// Everything else that changes the numbers: template, ablation, dtype, and the
    /// command's own settings.
    pub settings: serde_json::Map<String, Value>,
}

impl RunRecord {
    /// A record of `command` over `queries`, with the settings every command has; the caller
    /// adds its own with [`RunRecord::set`].
    pub fn new(
        command: &str,
        model: &crate::LoadedModel,
        data: &str,
        queries: &[EncodedQuery],
    ) -> Result<Self> {
        Ok(RunRecord {
            schema: schema::RUN.into(),
            command: command.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            model: model.source.clone(),
            model_fingerprint: model.fingerprint()?,
            data: data.into(),
            data_fingerprint: crate::io::runlog::queries_fingerprint(queries),
            queries: queries.len(),
            settings: {
                let mut m = serde_json::Map::new();
                if model.decoder.has_quantized_weights() {
                    // Quantized products give other numbers than the dequantized weights.
                    m.insert("weights".into(), "quantized".into());
                }
                if let Some(a) = &model.adapter {
                    m.insert("adapter".into(), a.dir.display().to_string().into());
                }
                if model.cfg().attention_sinks {
                    // What q/k ablations do to the sinks changes the numbers.
                    m.insert("sink".into(), model.decoder.sink_policy.as_str().into());
                }
                m
            },
        })
    }

    /// A record of `command` over a data file that no model reads (judging saved responses):
    /// `fingerprint` identifies the data's content, `items` counts its lines.
    pub fn of_data(command: &str, data: &str, fingerprint: String, items: usize) -> Self {
        RunRecord {
            schema: schema::RUN.into(),
            command: command.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            model: String::new(),
            model_fingerprint: String::new(),
            data: data.into(),
            data_fingerprint: fingerprint,
            queries: items,
            settings: serde_json::Map::new(),
        }
    }

    /// Adds a setting.
    pub fn set(&mut self, key: &str, value: impl Serialize) -> &mut Self {
        self.settings.insert(
            key.into(),
            serde_json::to_value(value).expect("settings serialize"),
        );
        self
    }

    /// The template: its name, the system message, its chat-template variables (only when
    /// there are any, so that records of runs without them stay as they were), and for a chat
    /// template that writes the date into its prompts (GPT-OSS's `strftime_now`), the date it
    /// rendered (`template_date`): a run resumed on another day would prompt differently, and
    /// its record then differs from the first run's, which refuses the resume.
    pub fn set_template(
        &mut self,
        model: &crate::LoadedModel,
        template: &crate::io::prompt::Template,
        system: &Option<String>,
    ) -> &mut Self {
        self.set("template", template.name()).set("system", system);
        let args = template.args_record();
        if !args.is_empty() {
            self.set("template_args", args);
        }
        if matches!(template, crate::io::prompt::Template::Chat { .. }) {
            let date = model
                .prompts
                .chat_template()
                .ok()
                .and_then(|t| t.rendered_date());
            if let Some(date) = date {
                self.set("template_date", date);
            }
        }
        self
    }

    /// Target, mode and ε.
    pub fn set_ablation(&mut self, a: crate::model::ablation::Ablation) -> &mut Self {
        self.set("target", a.target)
            .set("mode", a.op.mode_str())
            .set("epsilon", a.op.epsilon())
    }

    /// The ablation [`RunRecord::set_ablation`] recorded.
    pub fn ablation(&self) -> Result<crate::model::ablation::Ablation> {
        let get = |k: &str| self.settings.get(k).cloned().unwrap_or_default();
        let target: crate::model::ablation::Target = serde_json::from_value(get("target"))
            .map_err(|e| Error::InvalidArgument(format!("a run record's target: {e}")))?;
        let op = crate::model::ablation::Op::from_mode(
            get("mode").as_str().unwrap_or_default(),
            get("epsilon").as_f64().unwrap_or(0.0),
        )?;
        crate::model::ablation::Ablation::new(target, op)
    }

    /// Reads a record, also in the flat layout of sahara before the `schema` field (every
    /// setting at the top level), which resumes as the same run.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |e: String| Error::ResumeMismatch {
            path: path.to_path_buf(),
            line: None,
            reason: format!("is not a run record ({e})"),
        };
        if v.get("schema").is_some() {
            return serde_json::from_value(v).map_err(|e| bad(e.to_string()));
        }
        let Value::Object(mut flat) = v else {
            return Err(bad("not a JSON object".into()));
        };
        let mut take = |k: &str| flat.remove(k).unwrap_or(Value::Null);
        let text_of = |v: Value| v.as_str().map(String::from).unwrap_or_default();
        let command = text_of(take("command"));
        let model = text_of(take("model"));
        let model_fingerprint = text_of(take("model_fingerprint"));
        let data = text_of(take("data"));
        let data_fingerprint = text_of(take("data_fingerprint"));
        let queries = take("queries").as_u64().unwrap_or(0) as usize;
        // Settings added since, at the value those runs used.
        if command == "ships" {
            flat.entry("kl").or_insert_with(|| Value::from("exact"));
        }
        Ok(RunRecord {
            schema: schema::RUN.into(),
            command,
            version: String::new(),
            model,
            model_fingerprint,
            data,
            data_fingerprint,
            queries,
            settings: flat,
        })
    }
}

/// One line of `sahara ships --out FILE.jsonl`: one query's Ships of every scored head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShipsLine {
    pub schema: String,
    /// The query's index in the data file (0-based).
    pub index: usize,
    pub query: String,
    pub prompt_tokens: usize,
    pub target: Target,
    pub mode: String,
    /// ε of mode scale; null for mode mean.
    pub epsilon: Option<f64>,
    /// KL in nats, `[layer][head]`; null where a head was not scored.
    pub scores: HeadGrid,
    /// The highest-scoring heads, best first.
    pub top: Vec<HeadScore>,
    /// Mode patch: the paired source prompt and both KLs; `scores` are then the restorations
    /// ([`crate::methods::ships::PatchScores`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<PatchLine>,
    /// Gradient screening (`--engine screen`): which scores are exact, and the estimates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<ScreenLine>,
}

/// What a ships line of the gradient screen adds: `scores` are exact where `exact` is true
/// (the screen's top heads, verified) and the screen's estimates elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScreenLine {
    /// `[layer][head]`: whether the head's score is exact (else screened).
    pub exact: Vec<Vec<bool>>,
    /// The screen's estimate of every scored head (nats), `[layer][head]`.
    pub estimates: HeadGrid,
    /// The next tokens the estimate's expectation ran over, and their total probability.
    pub tokens: usize,
    pub mass: f64,
}

/// What a ships line of mode patch adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchLine {
    /// The source prompt's query (row `index` of the source data).
    pub source: String,
    pub source_tokens: usize,
    /// `last`, or `all` when asked for and both prompts have the same token length.
    pub positions: crate::methods::ships::PatchPositions,
    /// KL(p_source ‖ p_base), nats.
    pub kl_base: f64,
    /// KL(p_source ‖ p_patched), nats, `[layer][head]`.
    pub kl_patched: HeadGrid,
}

impl ShipsLine {
    /// Whether a resumed line is the result for query `q` (same index and text).
    pub fn answers(&self, q: &EncodedQuery) -> bool {
        self.index == q.index && self.query == q.text
    }
}

/// `FILE.jsonl.summary.json` of `sahara ships`: mean Ships and appearance counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShipsSummary {
    pub schema: String,
    #[serde(flatten)]
    pub summary: Summary,
    pub model: String,
    pub data: String,
    pub target: Target,
    pub mode: String,
    pub epsilon: Option<f64>,
    /// `exact`, or `paper` (the paper's code's formula); summaries of sahara before this field
    /// are exact.
    #[serde(default = "exact")]
    pub kl: String,
    /// For target k with grouped-query attention: how the group shares its score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `sahara-surgery.json` in a folder written by `sahara surgery`: what was folded in, and the
/// check that the written model reproduces the in-memory ablation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SurgeryRecord {
    pub schema: String,
    pub tool: String,
    pub version: String,
    pub source: String,
    /// `gguf` for a GGUF source; absent for a Hugging Face folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_tensor_types: Option<Vec<String>>,
    pub source_weights_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_format: Option<String>,
    pub heads: Vec<[usize; 2]>,
    pub affected_query_heads: Vec<[usize; 2]>,
    pub target: Target,
    pub mode: String,
    pub epsilon: Option<f64>,
    pub changed_tensors: Vec<String>,
    pub changed_parameters: usize,
    pub total_parameters: usize,
    pub changed_fraction: f64,
    pub verify_relative_difference: f64,
    /// The LoRA adapter merged into the written weights (`--adapter`): its path,
    /// fingerprint, r, scale and the tensors it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<serde_json::Value>,
}

fn exact() -> String {
    "exact".into()
}

/// One greedy step of `sahara attribute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeStep {
    /// The head chosen at this step, `[layer, head]`.
    pub selected: [usize; 2],
    /// Its score, the principal-angle sum in degrees.
    pub score: f64,
    /// Every candidate's score at this step, `[layer][head]`; null for heads already chosen.
    pub scores: HeadGrid,
    /// Bootstrap intervals of the candidates' scores (`--bootstrap`, step 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<crate::methods::sahara::StepBootstrap>,
}

/// The output of `sahara attribute`: the heads of the Sahara search, step by step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeOutput {
    pub schema: String,
    pub model: String,
    pub data: String,
    pub queries: usize,
    pub template: String,
    pub target: Target,
    pub mode: String,
    pub epsilon: Option<f64>,
    pub rank: usize,
    /// The chosen heads in order, `[layer, head]`.
    pub selected: Vec<[usize; 2]>,
    pub steps: Vec<AttributeStep>,
}

impl AttributeOutput {
    /// Reads an output for a resumed run; a file that does not parse is a resume mismatch.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::ResumeMismatch {
            path: path.to_path_buf(),
            line: None,
            reason: format!("is not a complete attribute output ({e}); remove it to start over"),
        })
    }
}

/// One line of `sahara eval --out FILE.jsonl`: one response and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    pub schema: String,
    pub set: Set,
    /// `unmodified`, or the ablated heads as `L:H,L:H…`.
    pub condition: String,
    pub heads: Vec<[usize; 2]>,
    pub index: usize,
    pub query: String,
    pub prompt_tokens: usize,
    /// The final answer (after the reasoning of a reasoning model): what the judges saw.
    pub response: String,
    /// The reasoning before the answer, for a reasoning model; null otherwise.
    pub reasoning: Option<String>,
    pub tokens: Vec<u32>,
    /// `eos` or `length`.
    pub stop: String,
    /// The main (first) judge: true for a refusal, false for an answer, null when it could
    /// not decide.
    pub refusal: Option<bool>,
    /// The main judge's rule for a refusal or an undecided response (`phrase`, `short`,
    /// `repetitive`, `empty`, `unfinished_reasoning`, …); null for an answer.
    pub reason: Option<String>,
    /// The refusal phrase the main judge matched, or null.
    pub matched: Option<String>,
    /// Every judge's verdict, keyed by name in the order the judges were given:
    /// `{"harmful": true|false|null, "score": number|null, "reason": "…"}`.
    pub judges: serde_json::Map<String, Value>,
    /// Benign responses: KL of the first-token distribution from the unmodified model's.
    pub first_token_kl: Option<f64>,
}

impl EvalLine {
    /// The line of a generated, judged response `g` of condition `cond` to query `q`.
    pub fn of(
        g: &crate::methods::eval::Generation,
        cond: &crate::methods::eval::Condition,
        q: &EncodedQuery,
        panel: &crate::methods::judge::Panel,
    ) -> Self {
        let (refusal, reason, matched) = g.verdicts[0].main_fields();
        EvalLine {
            schema: schema::EVAL_LINE.into(),
            set: g.set,
            condition: cond.name.clone(),
            heads: crate::model::ablation::HeadSet(cond.heads.clone()).pairs(),
            index: q.index,
            query: q.text.clone(),
            prompt_tokens: q.tokens.len(),
            response: g.response.clone(),
            reasoning: g.reasoning.clone(),
            tokens: g.tokens.clone(),
            stop: if g.stopped_at_eos { "eos" } else { "length" }.into(),
            refusal,
            reason,
            matched,
            judges: panel.records(&g.verdicts),
            first_token_kl: g.first_token_kl,
        }
    }

    /// The outcome a resumed line records, checked against the run: `conditions` maps a
    /// condition's name to its index, `sets` holds each set's queries. `Ok(None)` for a
    /// condition this run does not ask for; `Err` says why the line does not fit.
    pub fn outcome(
        &self,
        conditions: &std::collections::HashMap<&str, usize>,
        sets: &[(Set, &[EncodedQuery])],
        judges: &[&str],
    ) -> std::result::Result<Option<Outcome>, String> {
        let Some(&condition) = conditions.get(self.condition.as_str()) else {
            return Ok(None);
        };
        let qs = sets
            .iter()
            .find(|(s, _)| *s == self.set)
            .map(|(_, q)| *q)
            .ok_or_else(|| {
                format!(
                    "is a {} response, but no such set is given",
                    self.set.as_str()
                )
            })?;
        let query = qs
            .iter()
            .position(|q| q.index == self.index && q.text == self.query)
            .ok_or_else(|| {
                format!(
                    "does not match {} query {} of the data",
                    self.set.as_str(),
                    self.index + 1
                )
            })?;
        if self.set == Set::Benign && self.first_token_kl.is_none() {
            return Err("has no \"first_token_kl\"".into());
        }
        Ok(Some(Outcome {
            set: self.set,
            condition,
            query,
            response: self.response.clone(),
            harmful: self.verdicts(judges)?,
            first_token_kl: match self.set {
                Set::Benign => self.first_token_kl,
                Set::Harmful => None,
            },
        }))
    }

    /// Each judge's `harmful` in the order of `judges`, from the line's `judges` object,
    /// which must hold exactly these judges.
    pub fn verdicts(&self, judges: &[&str]) -> std::result::Result<Vec<Option<bool>>, String> {
        verdicts_of(&self.judges, judges)
    }
}

/// Each judge's `harmful` in the order of `judges`, from a line's `judges` object, which must
/// hold exactly these judges, each with a `harmful` of true, false or null.
pub fn verdicts_of(
    object: &serde_json::Map<String, Value>,
    judges: &[&str],
) -> std::result::Result<Vec<Option<bool>>, String> {
    let names: Vec<&str> = object.keys().map(String::as_str).collect();
    if names != judges {
        return Err(format!(
            "was judged by {names:?}, not by this run's judges {judges:?}"
        ));
    }
    judges
        .iter()
        .map(|j| match object[*j].get("harmful") {
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Null) => Ok(None),
            _ => Err(format!("has no verdict of the {j} judge")),
        })
        .collect()
}

/// `FILE.jsonl.summary.json` of `sahara eval`: every condition's ASR and benign cost.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSummary {
    pub schema: String,
    pub model: String,
    pub data: String,
    pub queries: usize,
    pub benign: Option<String>,
    pub benign_queries: Option<usize>,
    pub template: String,
    pub target: Target,
    pub mode: String,
    pub epsilon: Option<f64>,
    pub max_new_tokens: usize,
    pub sampling: Value,
    /// The main judge's description.
    pub judge: Value,
    /// Every judge's description, in order.
    pub judges: Value,
    pub conditions: Vec<ConditionSummary>,
    /// Every pair of judges: their 2×2 counts and Cohen's κ over all responses of the run.
    pub agreement: Vec<crate::methods::judge::agreement::Agreement>,
    /// The responses on which two judges disagree.
    pub disagreements: Vec<Disagreement>,
}

pub use crate::methods::judge::agreement::{Disagreement, Judged};

/// The output of `sahara attention --json` (or `--out FILE.json`): one head's attention
/// pattern on one prompt, with what produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttentionOutput {
    pub schema: String,
    pub version: String,
    /// The model as named, and its fingerprint (as in run records).
    pub model: String,
    pub model_fingerprint: String,
    /// The query as given, the template's name, and the prompt it rendered to.
    pub query: String,
    pub template: String,
    pub prompt: String,
    pub layer: usize,
    pub head: usize,
    /// Heads ablated while looking (`[layer, head]`), with the ablation's target, mode and ε.
    pub ablated: Vec<[usize; 2]>,
    pub target: Target,
    pub mode: String,
    pub epsilon: Option<f64>,
    /// The prompt's tokens as the tokenizer spells them.
    pub tokens: Vec<String>,
    /// The last position's attention over every token.
    pub last: Vec<f32>,
    /// Every query position's attention over every key position, `[query][key]`.
    pub pattern: Vec<Vec<f32>>,
}

/// Which command wrote a heads file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadsKind {
    /// `sahara attribute --out FILE.json`: the heads chosen by the Sahara search, in order.
    Attribute,
    /// `FILE.jsonl.summary.json` of `sahara ships --out FILE.jsonl`: heads by mean Ships.
    ShipsSummary,
}

/// Ranked heads read from an `attribute` output or a `ships` summary.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadsFile {
    pub kind: HeadsKind,
    /// Best first.
    pub heads: Vec<(usize, usize)>,
    /// The ablation target and mode the file was computed with, when it says.
    pub target: Option<String>,
    pub mode: Option<String>,
}

const HEADS_FILE_EXPECTED: &str = "expected the JSON output of `sahara attribute --out FILE.json` (with \"selected\") or the summary FILE.jsonl.summary.json of `sahara ships` (with \"by_mean\")";

impl HeadsFile {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &text)
    }

    /// Checks that the heads file at `path` was computed for the model of fingerprint
    /// `fingerprint`, by the run record beside it ([`crate::io::runlog::record_of`]): a file of
    /// another model is refused ([`Error::HeadsFromOtherModel`]). Returns `false` when no
    /// record lies beside it, so that the caller can say the check was not possible.
    pub fn check_model(path: &Path, fingerprint: &str) -> Result<bool> {
        let Some(record) = crate::io::runlog::record_of(path)? else {
            return Ok(false);
        };
        if record.model_fingerprint != fingerprint {
            return Err(Error::HeadsFromOtherModel {
                path: path.to_path_buf(),
                model: record.model,
                recorded: record.model_fingerprint,
                fingerprint: fingerprint.to_string(),
            });
        }
        Ok(true)
    }

    /// Parses a heads file's text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let bad = |what: String| Error::data(path, format!("{what}; {HEADS_FILE_EXPECTED}"));
        let text = text.trim_start_matches('\u{feff}');
        let v: Value = serde_json::from_str(text).map_err(|e| {
            // The per-query lines of `ships` are the likeliest mistake.
            let first: Option<Value> = text.lines().next().and_then(|l| serde_json::from_str(l).ok());
            if first.is_some_and(|f| f.get("scores").is_some() && f.get("top").is_some()) {
                Error::data(
                    path,
                    "holds the per-query lines of `sahara ships`; pass the summary beside it (FILE.jsonl.summary.json)",
                )
            } else {
                bad(format!("not a JSON document ({e})"))
            }
        })?;
        let Some(obj) = v.as_object() else {
            return Err(bad("not a JSON object".into()));
        };
        let index = |x: &Value| x.as_u64().map(|n| n as usize);
        let (kind, heads) = if let Some(sel) = obj.get("selected") {
            let list = sel
                .as_array()
                .ok_or_else(|| bad("\"selected\" is not a list".into()))?;
            let heads = list
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    p.as_array()
                        .filter(|a| a.len() == 2)
                        .and_then(|a| Some((index(&a[0])?, index(&a[1])?)))
                        .ok_or_else(|| {
                            bad(format!(
                                "\"selected\" item {} is {p}, not [layer, head]",
                                i + 1
                            ))
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            (HeadsKind::Attribute, heads)
        } else if let Some(ranked) = obj.get("by_mean") {
            let list = ranked
                .as_array()
                .ok_or_else(|| bad("\"by_mean\" is not a list".into()))?;
            let heads = list
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let pair = || Some((index(r.get("layer")?)?, index(r.get("head")?)?));
                    pair().ok_or_else(|| {
                        bad(format!(
                            "\"by_mean\" item {} lacks a non-negative \"layer\" and \"head\"",
                            i + 1
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            (HeadsKind::ShipsSummary, heads)
        } else {
            return Err(bad("no \"selected\" or \"by_mean\" field".to_string()));
        };
        if heads.is_empty() {
            return Err(Error::data(path, "lists no heads"));
        }
        let text_of = |k: &str| obj.get(k).and_then(Value::as_str).map(String::from);
        Ok(HeadsFile {
            kind,
            heads,
            target: text_of("target"),
            mode: text_of("mode"),
        })
    }

    /// The head sets to evaluate: the first `top` heads (all of an `attribute` output's when
    /// `top` is `None`; a `ships` summary ranks every head and needs `top`), or with `sweep`
    /// every prefix 1..=top as its own set.
    pub fn head_sets(
        &self,
        path: &Path,
        top: Option<usize>,
        sweep: bool,
    ) -> Result<Vec<Vec<(usize, usize)>>> {
        let n = self.heads.len();
        let k = match (top, self.kind) {
            (Some(0), _) => {
                return Err(Error::out_of_range(Setting::Top, 0, "must be at least 1"));
            }
            (Some(k), _) if k > n => {
                return Err(Error::out_of_range(
                    Setting::Top,
                    k,
                    format!("{} lists {n} heads", path.display()),
                ));
            }
            (Some(k), _) => k,
            (None, HeadsKind::Attribute) => n,
            (None, HeadsKind::ShipsSummary) => {
                return Err(Error::Conflict {
                    setting: Setting::Top,
                    reason: format!(
                        "must be given for {}: a ships summary ranks all {n} heads; say how many to ablate",
                        path.display()
                    ),
                });
            }
        };
        Ok(if sweep {
            (1..=k).map(|i| self.heads[..i].to_vec()).collect()
        } else {
            vec![self.heads[..k].to_vec()]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn heads_files_of_attribute_and_ships() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(
            dir.path(),
            "heads.json",
            r#"{"model": "m", "target": "q", "mode": "scale", "selected": [[2, 26], [0, 3], [1, 1]], "steps": []}"#,
        );
        let f = HeadsFile::read(&a).unwrap();
        assert_eq!(f.kind, HeadsKind::Attribute);
        assert_eq!(f.heads, vec![(2, 26), (0, 3), (1, 1)]);
        assert_eq!(f.target.as_deref(), Some("q"));
        assert_eq!(
            f.head_sets(&a, None, false).unwrap(),
            vec![vec![(2, 26), (0, 3), (1, 1)]]
        );
        assert_eq!(
            f.head_sets(&a, Some(2), false).unwrap(),
            vec![vec![(2, 26), (0, 3)]]
        );
        assert_eq!(
            f.head_sets(&a, Some(2), true).unwrap(),
            vec![vec![(2, 26)], vec![(2, 26), (0, 3)]]
        );
        assert_eq!(f.head_sets(&a, None, true).unwrap().len(), 3);
        let e = f.head_sets(&a, Some(4), false).unwrap_err();
        assert!(
            matches!(&e, Error::OutOfRange { setting: Setting::Top, value, allowed } if value == "4" && allowed.contains("heads.json")),
            "{e}"
        );
        assert!(f.head_sets(&a, Some(0), false).is_err());

        let s = write(
            dir.path(),
            "ships.summary.json",
            r#"{"queries": 2, "top_k": 1, "mean": [[1.0, 2.0]],
                "by_mean": [{"layer": 0, "head": 1, "mean": 2.0, "count": 1},
                            {"layer": 0, "head": 0, "mean": 1.0, "count": 1}],
                "by_count": [{"layer": 0, "head": 0, "mean": 1.0, "count": 1}]}"#,
        );
        let f = HeadsFile::read(&s).unwrap();
        assert_eq!(f.kind, HeadsKind::ShipsSummary);
        assert_eq!(f.heads, vec![(0, 1), (0, 0)]);
        assert_eq!(f.head_sets(&s, Some(1), false).unwrap(), vec![vec![(0, 1)]]);
        let e = f.head_sets(&s, None, false).unwrap_err();
        assert!(
            matches!(&e, Error::Conflict { setting: Setting::Top, reason } if reason.contains("ships.summary.json")),
            "{e}"
        );
    }

    #[test]
    fn other_files_are_refused_with_what_was_expected() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text, needle) in [
            ("ships.jsonl", "{\"index\": 0}\n{\"index\": 1}\n", "not a JSON document"),
            ("list.json", "[[1, 2]]", "not a JSON object"),
            ("eval.summary.json", "{\"conditions\": []}", "no \"selected\" or \"by_mean\""),
            (
                "real_ships.jsonl",
                "{\"index\": 0, \"scores\": [], \"top\": []}\n{\"index\": 1, \"scores\": [], \"top\": []}\n",
                "per-query lines of `sahara ships`",
            ),
            ("bad_sel.json", "{\"selected\": [[1]]}", "item 1"),
            ("neg.json", "{\"selected\": [[1, -2]]}", "item 1"),
            ("bad_rank.json", "{\"by_mean\": [{\"layer\": 0}]}", "item 1"),
            ("empty.json", "{\"selected\": []}", "no heads"),
            ("text.txt", "2:26\n", "not a JSON document"),
        ] {
            let p = write(dir.path(), name, text);
            let e = HeadsFile::read(&p).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains(needle), "{name}: {e}");
            if needle != "no heads" && !name.starts_with("real") {
                assert!(e.contains("sahara attribute") && e.contains("by_mean"), "{e}");
            }
            assert!(!e.contains('\n'), "{e}");
        }
        let e = HeadsFile::read(&dir.path().join("missing.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.json"), "{e}");
    }

    #[test]
    fn a_heads_file_of_another_model_is_refused_by_its_run_record() {
        let dir = tempfile::tempdir().unwrap();
        let record = |fp: &str| {
            format!(
                r#"{{"schema": "sahara.run/1", "command": "ships", "version": "0.1.0",
                    "model": "org/other", "model_fingerprint": "{fp}", "data": "d.txt",
                    "data_fingerprint": "0", "queries": 2, "settings": {{}}}}"#
            )
        };
        // A ships summary: its record is the one of r.jsonl.
        let summary = write(dir.path(), "r.jsonl.summary.json", "{}");
        assert!(
            !HeadsFile::check_model(&summary, "aaaa").unwrap(),
            "no record: not checked"
        );
        write(dir.path(), "r.jsonl.run.json", &record("bbbb"));
        assert!(HeadsFile::check_model(&summary, "bbbb").unwrap());
        let e = HeadsFile::check_model(&summary, "aaaa").unwrap_err();
        assert!(
            matches!(&e, Error::HeadsFromOtherModel { model, recorded, fingerprint, .. }
                if model == "org/other" && recorded == "bbbb" && fingerprint == "aaaa"),
            "{e}"
        );
        // An attribute output: its record is beside it, under its whole name.
        let a = write(dir.path(), "a.json", "{}");
        assert!(!HeadsFile::check_model(&a, "aaaa").unwrap());
        write(dir.path(), "a.json.run.json", &record("bbbb"));
        assert!(HeadsFile::check_model(&a, "aaaa").is_err());
        // An earlier sahara's names.
        let old = write(dir.path(), "old.summary.json", "{}");
        write(dir.path(), "old.run.json", &record("cccc"));
        assert!(HeadsFile::check_model(&old, "cccc").unwrap());
        assert!(HeadsFile::check_model(&old, "aaaa").is_err());
        // A broken record is an error, not a pass.
        let b = write(dir.path(), "b.json", "{}");
        write(dir.path(), "b.json.run.json", "{not json");
        assert!(HeadsFile::check_model(&b, "aaaa").is_err());
    }
}

/// One side of a `sahara compare` output: the ranking compared and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankingSide {
    /// The output file read.
    pub path: String,
    /// `ships` (mean Ships over the queries) or `attribute` (the scores of Sahara's step 1).
    pub kind: String,
    /// The run's mode: `scale`, `mean`, or `patch` (a ships run's scores are then mean
    /// restorations, not KL divergences).
    pub mode: String,
    pub model: String,
    pub model_fingerprint: String,
    pub data: String,
    /// The prompt template, as its run record gives it.
    pub template: serde_json::Value,
    /// The scores compared, `[layer][head]`.
    pub scores: HeadGrid,
}

/// The output of `sahara compare A B --out FILE.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareOutput {
    pub schema: String,
    pub a: RankingSide,
    pub b: RankingSide,
    #[serde(flatten)]
    pub comparison: crate::methods::compare::Comparison,
}
