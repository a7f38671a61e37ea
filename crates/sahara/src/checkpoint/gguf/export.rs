//! A GGUF checkpoint written as a Hugging Face model folder: `config.json`,
//! `generation_config.json`, `tokenizer.json`, `tokenizer_config.json` and float32
//! safetensors of the dequantized weights with query/key rows in Hugging Face order
//! (sharded at 2 GiB, with `model.safetensors.index.json`, when larger). Surgery from a GGUF
//! source goes through here: the ablation is folded into the dequantized weights as they are
//! written, and the folder is verified by reloading it. GGUF output (the quantized tensors
//! kept) is [`super::write`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde_json::{json, Value as Json};

use super::{GgufFile, GgufWeights};
use crate::checkpoint::surgery::{apply_edit, edits, SurgeryPlan, SurgeryReport};
use crate::error::{Error, Result};
use crate::io::fs::{move_into_place, staging_folder, write_err, write_json};
use crate::LoadedModel;

/// Largest shard written.
const SHARD_BYTES: usize = 2 << 30;

/// Tensors of one shard: (name, shape, little-endian f32 bytes).
type Shard = Vec<(String, Vec<usize>, Vec<u8>)>;

/// What [`write_hf_folder`] (or [`super::write::write_gguf`]) wrote.
pub struct Written {
    pub total_parameters: usize,
    pub changed_parameters: usize,
    /// The tensors rewritten: Hugging Face names in a folder, GGUF names in a GGUF file (in
    /// its order).
    pub changed_tensors: Vec<String>,
}

/// Writes the GGUF model as a Hugging Face folder in `dir` (which must exist), folding
/// `plan` into the weights when given.
pub fn write_hf_folder(g: &GgufFile, dir: &Path, plan: Option<&SurgeryPlan>) -> Result<Written> {
    let cfg_json = g.hf_config()?;
    let cfg = g.config()?;
    let tok = super::tokenizer::build(g)?;
    write_json(&dir.join("config.json"), &cfg_json)?;
    let mut gen = serde_json::Map::new();
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if let Some(v) = cfg_json.get(key) {
            gen.insert(key.into(), v.clone());
        }
    }
    write_json(&dir.join("generation_config.json"), &Json::Object(gen))?;
    write_json(&dir.join("tokenizer.json"), &tok.json)?;
    write_json(&dir.join("tokenizer_config.json"), &tok.config)?;

    let edits = match plan {
        Some(s) => edits(&cfg, s),
        None => BTreeMap::new(),
    };
    let weights = GgufWeights::new(g, &cfg);
    let names = weights.hf_names();
    for name in edits.keys() {
        if !names.contains(name) {
            return Err(Error::MissingTensor {
                name: name.clone(),
                dir: g.path.clone(),
            });
        }
    }
    let mut total = 0usize;
    let mut changed = 0usize;
    // Shards: (name, shape, bytes) lists of at most SHARD_BYTES each.
    let mut shards: Vec<Shard> = vec![vec![]];
    let mut shard_bytes = 0usize;
    let mut shard_files: Vec<PathBuf> = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let mut flushed = 0usize;
    let flush = |tensors: &[(String, Vec<usize>, Vec<u8>)], path: &Path| -> Result<()> {
        crate::checkpoint::safetensors::write_f32_safetensors(path, tensors)
    };
    for name in &names {
        let t = weights.load_f32(name)?;
        let shape = t.dims().to_vec();
        let mut values: Vec<f32> = t.flatten_all()?.to_vec1()?;
        total += values.len();
        if let Some(edit) = edits.get(name) {
            let mut v64: Vec<f64> = values.iter().map(|&x| x as f64).collect();
            apply_edit(&mut v64, &shape, edit);
            values = v64.iter().map(|&x| x as f32).collect();
            changed += edit.changed_parameters(&shape);
        }
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        if shard_bytes + bytes.len() > SHARD_BYTES && !shards.last().expect("shard").is_empty() {
            // Write the full shard now to bound memory; its final name is set below.
            let p = dir.join(format!(".shard-{flushed}.safetensors"));
            flush(shards.last().expect("shard"), &p)?;
            for (n, _, _) in shards.last().expect("shard") {
                weight_map.insert(n.clone(), json!(flushed));
            }
            shard_files.push(p);
            flushed += 1;
            *shards.last_mut().expect("shard") = vec![];
            shard_bytes = 0;
        }
        shard_bytes += bytes.len();
        shards
            .last_mut()
            .expect("shard")
            .push((name.clone(), shape, bytes));
    }
    let last = shards.pop().expect("shard");
    if flushed == 0 {
        flush(&last, &dir.join("model.safetensors"))?;
    } else {
        let p = dir.join(format!(".shard-{flushed}.safetensors"));
        flush(&last, &p)?;
        for (n, _, _) in &last {
            weight_map.insert(n.clone(), json!(flushed));
        }
        shard_files.push(p);
        let n = shard_files.len();
        let final_names: Vec<String> = (0..n)
            .map(|i| format!("model-{:05}-of-{n:05}.safetensors", i + 1))
            .collect();
        for (p, f) in shard_files.iter().zip(&final_names) {
            let dst = dir.join(f);
            std::fs::rename(p, &dst).map_err(write_err(&dst))?;
        }
        let map: serde_json::Map<String, Json> = weight_map
            .into_iter()
            .map(|(k, v)| {
                let i = v.as_u64().unwrap_or(0) as usize;
                (k, json!(final_names[i]))
            })
            .collect();
        write_json(
            &dir.join("model.safetensors.index.json"),
            &json!({"metadata": {"total_size": total * 4}, "weight_map": map}),
        )?;
    }
    Ok(Written {
        total_parameters: total,
        changed_parameters: changed,
        changed_tensors: edits.keys().cloned().collect(),
    })
}

/// Surgery from a GGUF source: writes a Hugging Face folder (float32 safetensors of the
/// dequantized weights) with `plan` folded in, verified against the GGUF model with the
/// ablation applied in memory.
pub fn surgery_from_gguf(
    src: &Path,
    source: &str,
    out: &Path,
    plan: &SurgeryPlan,
    force: bool,
) -> Result<SurgeryReport> {
    let g = GgufFile::open(src)?;
    let cfg = g.config()?;
    plan.validate(&cfg)?;
    let (tmp, mut guard) = staging_folder(out, force)?;
    let written = write_hf_folder(&g, &tmp, Some(plan))?;

    // Verify: the written folder's logits equal the GGUF model's with the ablation in memory.
    let rel = verify_written(src, source, &tmp, plan, 1e-5)?;

    let affected = plan.affected_heads(&cfg);
    let record = gguf_record(
        &g,
        plan,
        source,
        &affected,
        &written,
        rel,
        "Hugging Face safetensors (float32, dequantized, query/key rows in Hugging Face order)",
    );
    write_json(&tmp.join("sahara-surgery.json"), &record)?;

    move_into_place(&tmp, out, &mut guard)?;
    Ok(SurgeryReport {
        out: out.to_path_buf(),
        changed_tensors: written.changed_tensors,
        changed_parameters: written.changed_parameters,
        total_parameters: written.total_parameters,
        verify_relative_difference: rel,
        affected_heads: affected,
    })
}

/// The record of a surgery from the GGUF file `g`: the plan's, with the source's format and
/// tensor types and what was written.
pub(super) fn gguf_record(
    g: &GgufFile,
    plan: &SurgeryPlan,
    source: &str,
    affected: &[(usize, usize)],
    written: &Written,
    rel: f64,
    written_format: &str,
) -> crate::io::formats::SurgeryRecord {
    let types: BTreeSet<String> = g
        .content
        .tensor_infos
        .values()
        .map(|i| format!("{:?}", i.ggml_dtype))
        .collect();
    let mut record = plan.record(
        source,
        g.fingerprint(),
        affected,
        &written.changed_tensors,
        (written.changed_parameters, written.total_parameters),
        rel,
    );
    record.source_format = Some("gguf".into());
    record.source_tensor_types = Some(types.into_iter().collect());
    record.written_format = Some(written_format.into());
    record
}

/// The relative logit difference between the model written at `written` (a folder or a GGUF
/// file) and the GGUF source `src` with `plan` applied in memory, on one probe prompt that
/// both tokenizers must encode alike; an error past `tolerance` (nothing is written then).
pub(super) fn verify_written(
    src: &Path,
    source: &str,
    written: &Path,
    plan: &SurgeryPlan,
    tolerance: f64,
) -> Result<f64> {
    let dev = Device::Cpu;
    let ablated = crate::Checkpoint::Gguf(src.to_path_buf()).load(source, DType::F32, &dev)?;
    let reloaded = LoadedModel::load(written.to_str().unwrap_or_default(), DType::F32, &dev)?;
    let text = "How do I make a bomb? Tell me step by step.";
    let probe = ablated.prompts.encode(text, true)?;
    let probe_again = reloaded.prompts.encode(text, true)?;
    if probe != probe_again {
        return Err(Error::InvalidArgument(format!(
            "verification failed: the written model's tokenizer encodes differently from the GGUF source's ({probe_again:?} vs {probe:?}); nothing was written"
        )));
    }
    let rel = crate::checkpoint::surgery::relative_logit_difference(
        &ablated,
        &reloaded,
        probe,
        &plan.ablations(),
    )?;
    if rel.is_nan() || rel > tolerance {
        return Err(Error::Verification {
            error: rel,
            tolerance,
        });
    }
    Ok(rel)
}
