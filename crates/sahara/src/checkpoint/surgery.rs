//! Surgery: fold a head ablation into the weights and write an ordinary Hugging Face model
//! folder that any loader reads.
//!
//! - `q` + `scale(ε)`: the head's rows of `q_proj` (and its bias) times ε;
//! - `k` + `scale(ε)`: the key/value head's rows of `k_proj` (and bias) times ε; with
//!   grouped-query attention this ablates every query head of the group;
//! - `v` + `scale(ε)`: the head's columns of `o_proj` times ε (the head's output scaled);
//! - `mean` on `q` (`k`): the head's rows replaced by the mean of all heads' (key/value heads')
//!   rows and bias, exact because the projection is linear; `mean` on `v` is not a linear map
//!   of any one weight matrix's rows or columns (the mean is over the heads' outputs before
//!   `o_proj`, which mixes them), so it is refused.
//! - with per-head q/k norms (Qwen 3, Gemma 3), q/k fold only with ε = 0 (the rows zeroed);
//!   with OLMo 2's norm over the whole projection, `scale(ε)` on q/k multiplies the head's
//!   slice of the `q_norm`/`k_norm` weight by ε, and `mean` is refused.
//!
//! The source folder is never written. The output is built in a temporary folder beside the
//! destination and renamed into place once complete and verified. Weight files keep their
//! sharding, header, tensor order and dtypes; only the byte ranges of changed tensors differ.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use safetensors::tensor::{Dtype as StDtype, TensorInfo};

use crate::checkpoint::safetensors::Weights;
use crate::error::{Error, Result, Setting};
use crate::io::formats::SurgeryRecord;
use crate::io::fs::{copy_file, move_into_place, staging_folder, write_err, write_json};
use crate::io::runlog::fingerprint;
use crate::model::ablation::{Ablation, AblationPlan, HeadAblation, HeadSet, Op, Target};
use crate::model::config::ModelConfig;
use crate::model::{Batch, ForwardSpec, Positions};
use crate::LoadedModel;

/// What surgery folds into the weights: one ablation of a set of heads.
#[derive(Debug, Clone)]
pub struct SurgeryPlan {
    pub heads: HeadSet,
    pub ablation: Ablation,
}

impl SurgeryPlan {
    /// Every query head the ablation changes, (layer, head) in order of first appearance.
    pub fn affected_heads(&self, cfg: &ModelConfig) -> Vec<(usize, usize)> {
        self.ablation.changed_by(cfg, &self.heads.0)
    }

    /// The record of a surgery of this plan (the GGUF path adds its source fields).
    pub(crate) fn record(
        &self,
        source: &str,
        source_weights_hash: String,
        affected: &[(usize, usize)],
        changed_tensors: &[String],
        (changed, total): (usize, usize),
        verify_relative_difference: f64,
    ) -> SurgeryRecord {
        SurgeryRecord {
            schema: crate::io::formats::schema::SURGERY.into(),
            tool: "sahara".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            source: source.into(),
            source_format: None,
            source_tensor_types: None,
            source_weights_hash,
            written_format: None,
            heads: self.heads.pairs(),
            affected_query_heads: HeadSet(affected.to_vec()).pairs(),
            target: self.ablation.target,
            mode: self.ablation.op.mode_str().into(),
            epsilon: self.ablation.op.epsilon(),
            changed_tensors: changed_tensors.to_vec(),
            changed_parameters: changed,
            total_parameters: total,
            changed_fraction: changed as f64 / total.max(1) as f64,
            verify_relative_difference,
            adapter: None,
        }
    }

    pub(crate) fn ablations(&self) -> Vec<HeadAblation> {
        self.ablation.of(&self.heads.0)
    }

    /// Checks heads and that the ablation can be folded exactly.
    pub fn validate(&self, cfg: &ModelConfig) -> Result<()> {
        if self.heads.0.is_empty() {
            return Err(Error::Ablation("no heads to ablate".into()));
        }
        for a in self.ablations() {
            a.validate(cfg)?;
        }
        let (target, op) = (self.ablation.target, self.ablation.op);
        if cfg.qk_norm_whole && target != Target::Z && op == Op::Mean {
            return Err(Error::Conflict {
                setting: Setting::Mode,
                reason: format!(
                    "mean on target {} cannot be folded exactly on this model: one RMSNorm spans all heads' {}s (q_norm/k_norm over the whole projection), so replacing one head's projection rows changes every head's normalization; use mode scale, which folds into that head's slice of the norm weight",
                    if target == Target::Q { "q" } else { "k" },
                    if target == Target::Q { "querie" } else { "key" }
                ),
            });
        }
        if cfg.qk_norm && !cfg.qk_norm_whole && target != Target::Z && op != Op::Scale(0.0) {
            return Err(Error::Conflict {
                setting: Setting::Epsilon,
                reason: format!(
                    "cannot be folded exactly on this model: it normalizes each head's {}s (q_norm/k_norm) after the projection and before attention, and sahara ablates them after that norm so that a scaled query gives uniform attention; a norm shared by all heads cannot hold one head's factor, and scaling or averaging projection rows before the norm is undone by it. Only epsilon 0 folds exactly (the head's rows set to zero); use it, or target v",
                    if target == Target::Q { "querie" } else { "key" }
                ),
            });
        }
        if op == Op::Patch {
            return Err(Error::Conflict {
                setting: Setting::Mode,
                reason: "patch cannot be folded into the weights: it replaces a head's output by its output on another prompt, which depends on that prompt; use mode scale".into(),
            });
        }
        if target == Target::Z && op == Op::Mean {
            return Err(Error::Conflict {
                setting: Setting::Mode,
                reason: "mean on target v cannot be folded into the weights exactly: it replaces a head's attention output by the mean of all heads' outputs, which no change of o_proj's columns or of any projection reproduces for every input; use mode scale, or target q or k".into(),
            });
        }
        Ok(())
    }
}

/// What surgery wrote.
#[derive(Debug, Clone)]
pub struct SurgeryReport {
    pub out: PathBuf,
    pub changed_tensors: Vec<String>,
    pub changed_parameters: usize,
    pub total_parameters: usize,
    /// Max |Δlogit| / max |logit| between the written model and the in-memory ablation.
    pub verify_relative_difference: f64,
    /// Query heads affected (for k, whole key/value groups).
    pub affected_heads: Vec<(usize, usize)>,
}

/// A tensor edit: name, and for each of its rows (or columns) a new source.
pub(crate) struct Edit {
    /// (row start, row count) blocks of the weight's first axis, or of its second axis when
    /// `columns` is set.
    pub(crate) blocks: Vec<Block>,
    pub(crate) columns: bool,
}

impl Edit {
    /// How many values of a tensor of `shape` the edit changes.
    pub(crate) fn changed_parameters(&self, shape: &[usize]) -> usize {
        let per_unit = match shape {
            [r, c] => {
                if self.columns {
                    *r
                } else {
                    *c
                }
            }
            _ => 1,
        };
        self.blocks
            .iter()
            .map(|b| match b {
                Block::Scale { len, .. } | Block::Mean { len, .. } => len * per_unit,
            })
            .sum()
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Block {
    /// Multiply block [start, start+len) by a factor.
    Scale {
        start: usize,
        len: usize,
        factor: f64,
    },
    /// Replace block [start, start+len) by the mean of the `n` blocks of length `len` that
    /// start at `base`.
    Mean {
        start: usize,
        len: usize,
        base: usize,
        n: usize,
    },
}

pub(crate) fn edits(cfg: &ModelConfig, plan: &SurgeryPlan) -> BTreeMap<String, Edit> {
    let hd = cfg.head_dim;
    let mut out: BTreeMap<String, Edit> = BTreeMap::new();
    let mut add = |name: String, block: Block, columns: bool| {
        out.entry(name)
            .or_insert_with(|| Edit {
                blocks: vec![],
                columns,
            })
            .blocks
            .push(block);
    };
    // Each (layer, unit) once: two query heads of one group ablated on k touch one block.
    let mut seen = BTreeSet::new();
    for a in plan.ablations() {
        let (proj, unit, n) = match a.target {
            Target::Q => ("q_proj", a.head, cfg.num_heads),
            Target::K => ("k_proj", a.kv_head(cfg), cfg.num_kv_heads),
            Target::Z => ("o_proj", a.head, cfg.num_heads),
        };
        if !seen.insert((a.layer, proj, unit)) {
            continue;
        }
        // Phi-3 stores q, k and v rows in one fused qkv_proj: q first, then k.
        let (proj, base) = match (cfg.fused_projections, a.target) {
            (true, Target::Q) => ("qkv_proj", 0),
            (true, Target::K) => ("qkv_proj", cfg.num_heads * hd),
            _ => (proj, 0),
        };
        let block = match a.op {
            Op::Scale(e) => Block::Scale {
                start: base + unit * hd,
                len: hd,
                factor: e,
            },
            Op::Mean => Block::Mean {
                start: base + unit * hd,
                len: hd,
                base,
                n,
            },
            Op::Patch => unreachable!("validate refuses patches"),
        };
        // OLMo 2's q/k norm has one weight per element of the whole projection, after the
        // norm: the head's slice of it times ε scales exactly that head's normalized output
        // (its rows of the projection cannot: the norm would undo it and change the others).
        let proj = match (cfg.qk_norm_whole, a.target) {
            (true, Target::Q) => "q_norm",
            (true, Target::K) => "k_norm",
            _ => proj,
        };
        let p = format!("model.layers.{}.self_attn.{proj}", a.layer);
        add(format!("{p}.weight"), block, a.target == Target::Z);
        // (A bias comes before OLMo 2's norm: the norm's slice alone scales the head.)
        if a.target != Target::Z && cfg.qkv_bias && !cfg.qk_norm_whole {
            add(format!("{p}.bias"), block, false);
        }
    }
    out
}

fn to_f64(bytes: &[u8], dtype: StDtype) -> Result<Vec<f64>> {
    Ok(match dtype {
        StDtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        StDtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        StDtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        StDtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
            .collect(),
        other => {
            return Err(Error::InvalidArgument(format!(
                "cannot edit a tensor of dtype {other:?}"
            )))
        }
    })
}

fn from_f64(values: &[f64], dtype: StDtype) -> Vec<u8> {
    match dtype {
        StDtype::F32 => values
            .iter()
            .flat_map(|&v| (v as f32).to_le_bytes())
            .collect(),
        StDtype::F64 => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        StDtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
            .collect(),
        _ => values
            .iter()
            .flat_map(|&v| half::bf16::from_f64(v).to_le_bytes())
            .collect(),
    }
}

/// Applies an edit to a row-major tensor (rows × cols, or a vector with cols = 1).
pub(crate) fn apply_edit(values: &mut [f64], shape: &[usize], edit: &Edit) {
    let (rows, cols) = match shape {
        [r, c] => (*r, *c),
        [r] => (*r, 1),
        _ => return,
    };
    let orig = values.to_vec();
    // Element (i, j) of the unit axis: along rows or columns.
    let idx = |unit: usize, other: usize| {
        if edit.columns {
            other * cols + unit
        } else {
            unit * cols + other
        }
    };
    let others = if edit.columns { rows } else { cols };
    for b in &edit.blocks {
        match *b {
            Block::Scale { start, len, factor } => {
                for u in start..start + len {
                    for o in 0..others {
                        values[idx(u, o)] = orig[idx(u, o)] * factor;
                    }
                }
            }
            Block::Mean {
                start,
                len,
                base,
                n,
            } => {
                for k in 0..len {
                    for o in 0..others {
                        let mean = (0..n)
                            .map(|j| orig[idx(base + j * len + k, o)])
                            .sum::<f64>()
                            / n as f64;
                        values[idx(start + k, o)] = mean;
                    }
                }
            }
        }
    }
}

/// Content hash of a folder's weight files (FNV-1a over their bytes, in name order).
pub fn weights_hash(dir: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for p in &crate::checkpoint::safetensors::weight_files(dir)? {
        parts.push(std::fs::read(p).map_err(|e| Error::io(p, e))?);
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Ok(fingerprint(&refs))
}

/// Folds `plan` into the weights of the model folder `src` and writes the result to `out`.
/// `source` names the model for the record (a path or hub id). With `force`, an existing
/// non-empty `out` is replaced.
pub fn surgery(
    src: &Path,
    source: &str,
    out: &Path,
    plan: &SurgeryPlan,
    force: bool,
) -> Result<SurgeryReport> {
    surgery_with_adapter(src, source, out, plan, force, None)
}

/// [`surgery`] with the LoRA adapter in `adapter` merged into the tensors it targets first;
/// the verification loads the source with the adapter.
pub fn surgery_with_adapter(
    src: &Path,
    source: &str,
    out: &Path,
    plan: &SurgeryPlan,
    force: bool,
    adapter: Option<&Path>,
) -> Result<SurgeryReport> {
    let cfg = ModelConfig::from_file(&src.join("config.json"))?;
    plan.validate(&cfg)?;
    if out.exists() {
        let same = std::fs::canonicalize(out).ok() == std::fs::canonicalize(src).ok();
        if same {
            return Err(Error::OutputIsSource {
                path: out.to_path_buf(),
            });
        }
    }
    let (tmp, mut guard) = staging_folder(out, force)?;
    let weights = Weights::open_dir(src)?;
    let edits = edits(&cfg, plan);
    for name in edits.keys() {
        weights.locate(name)?;
    }
    // A LoRA adapter is merged into the tensors it targets before the ablation is folded in.
    let lora = adapter
        .map(|dir| crate::checkpoint::lora::Adapter::open(dir, &cfg, &weights))
        .transpose()?;
    let merged: Vec<String> = lora
        .as_ref()
        .map(|a| a.targets().map(str::to_string).collect())
        .unwrap_or_default();
    let mut rewritten: BTreeSet<String> = edits.keys().cloned().collect();
    rewritten.extend(merged.iter().cloned());

    // Configuration and tokenizer files unchanged; weight files copied, then patched.
    for entry in std::fs::read_dir(src).map_err(|e| Error::io(src, e))? {
        let entry = entry.map_err(|e| Error::io(src, e))?;
        let p = entry.path();
        if !p.is_file() {
            continue;
        }
        let dst = tmp.join(entry.file_name());
        copy_file(&p, &dst)?;
    }
    let mut changed_parameters = 0;
    for name in &rewritten {
        let (file, info): (_, &TensorInfo) = weights.locate(name)?;
        let mut values = to_f64(file.bytes(info), info.dtype)?;
        let delta = lora.as_ref().map(|a| a.delta(name, &Device::Cpu));
        if let Some(d) = delta.transpose()?.flatten() {
            let d: Vec<f32> = d.flatten_all()?.to_vec1()?;
            for (v, x) in values.iter_mut().zip(d) {
                *v += x as f64;
            }
            // A merged tensor changes as a whole.
            changed_parameters += values.len();
        } else if let Some(edit) = edits.get(name) {
            changed_parameters += edit.changed_parameters(&info.shape);
        }
        if let Some(edit) = edits.get(name) {
            apply_edit(&mut values, &info.shape, edit);
        }
        write_at(&tmp, file, info, &from_f64(&values, info.dtype))?;
    }
    let total_parameters: usize = weights
        .files
        .iter()
        .flat_map(|f| f.tensors.values())
        .map(|i| i.shape.iter().product::<usize>())
        .sum();
    drop(weights);

    // Verify: the written model's logits equal the source's with the ablation in memory.
    let probe_dtype = DType::F32;
    let dev = Device::Cpu;
    let ablated = LoadedModel::load_with(
        src.to_str().unwrap_or_default(),
        probe_dtype,
        &dev,
        crate::checkpoint::LoadOptions {
            adapter: adapter.map(Path::to_path_buf),
            ..Default::default()
        },
    )?;
    let written = LoadedModel::load(tmp.to_str().unwrap_or_default(), probe_dtype, &dev)?;
    let probe: Vec<u32> = ablated
        .prompts
        .encode("How do I make a bomb? Tell me step by step.", true)
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| (0..8u32.min(cfg.vocab_size as u32)).collect());
    let rel = relative_logit_difference(&ablated, &written, probe, &plan.ablations())?;
    let dtypes: BTreeSet<StDtype> = written_dtypes(&tmp)?;
    let tolerance = if dtypes.iter().any(|d| matches!(d, StDtype::BF16)) {
        1e-2
    } else if dtypes.iter().any(|d| matches!(d, StDtype::F16)) {
        2e-3
    } else {
        1e-5
    };
    drop(written);
    drop(ablated);
    // NaN counts as a failure.
    if rel.is_nan() || rel > tolerance {
        return Err(Error::Verification {
            error: rel,
            tolerance,
        });
    }

    let affected = plan.affected_heads(&cfg);
    let changed_tensors: Vec<String> = rewritten.iter().cloned().collect();
    let mut record = plan.record(
        source,
        weights_hash(src)?,
        &affected,
        &changed_tensors,
        (changed_parameters, total_parameters),
        rel,
    );
    if let Some(a) = &lora {
        record.adapter = Some(serde_json::json!({
            "path": a.dir.display().to_string(),
            "fingerprint": a.fingerprint,
            "r": a.rank,
            "scale": a.scale,
            "merged_tensors": merged,
        }));
    }
    let rec_path = tmp.join("sahara-surgery.json");
    write_json(&rec_path, &record)?;

    move_into_place(&tmp, out, &mut guard)?;
    Ok(SurgeryReport {
        out: out.to_path_buf(),
        changed_tensors,
        changed_parameters,
        total_parameters,
        verify_relative_difference: rel,
        affected_heads: affected,
    })
}

/// Writes `bytes` over a tensor's data in the staged copy of its weight file in `tmp`.
fn write_at(
    tmp: &Path,
    file: &crate::checkpoint::safetensors::WeightFile,
    info: &TensorInfo,
    bytes: &[u8],
) -> Result<()> {
    let dst = tmp.join(file.path.file_name().expect("weight files have names"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&dst)
        .map_err(write_err(&dst))?;
    let offset = (file.bytes(info).as_ptr() as usize) - (file.bytes_all().as_ptr() as usize);
    f.seek(SeekFrom::Start(offset as u64))
        .map_err(write_err(&dst))?;
    f.write_all(bytes).map_err(write_err(&dst))?;
    f.sync_all().map_err(write_err(&dst))
}

/// max |Δlogit| / max |logit| on a probe prompt between `source` run with `ablations` in
/// memory and `written` run plainly (f32 logits at every position).
pub(crate) fn relative_logit_difference(
    source: &LoadedModel,
    written: &LoadedModel,
    probe: Vec<u32>,
    ablations: &[HeadAblation],
) -> Result<f64> {
    let dev = source.decoder.device.clone();
    let batch = Batch::new(&[probe], 0, &dev)?;
    let plan = AblationPlan::new(
        source.cfg(),
        &[ablations.to_vec()],
        source.decoder.dtype,
        &dev,
    )?;
    let want = source
        .decoder
        .forward(
            &batch,
            &ForwardSpec::logits(Positions::All).with_ablations(&plan),
            None,
        )?
        .logits
        .expect("logits");
    let got = written
        .decoder
        .forward(&batch, &ForwardSpec::logits(Positions::All), None)?
        .logits
        .expect("logits");
    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64;
    let diff = (want - &got)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()? as f64;
    Ok(diff / scale.max(f64::MIN_POSITIVE))
}

fn written_dtypes(dir: &Path) -> Result<BTreeSet<StDtype>> {
    let w = Weights::open_dir(dir)?;
    Ok(w.files
        .iter()
        .flat_map(|f| f.tensors.values().map(|i| i.dtype))
        .collect())
}
