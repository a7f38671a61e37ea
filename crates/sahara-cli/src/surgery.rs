//! `sahara surgery`: write the ablated model as a Hugging Face folder, or, from a GGUF
//! source, as a GGUF file with the unchanged tensors kept as they are.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use sahara::checkpoint::gguf::write::ChangedType;
use sahara::checkpoint::surgery::SurgeryPlan;
use sahara::io::formats::HeadsFile;
use sahara::model::ablation::HeadSet;
use sahara::{Error, Result};

use crate::common::{check_heads_model, OpArgs};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Source model folder (Hugging Face layout), hub id in the local cache, or GGUF file
    /// (written out as a Hugging Face safetensors folder, or as a GGUF file with an --out
    /// ending in .gguf).
    #[arg(long)]
    pub model: String,
    /// Heads to ablate: L:H[,L:H…].
    #[arg(long)]
    pub ablate: Option<String>,
    /// Take the heads from an `attribute` output or a `ships` summary.
    #[arg(long)]
    pub heads_from: Option<PathBuf>,
    /// With --heads-from: how many heads (default: all of an attribute output; required for a
    /// ships summary).
    #[arg(long, requires = "heads_from")]
    pub top: Option<usize>,
    /// Use a --heads-from file even when its run record says it was computed for another
    /// model.
    #[arg(long, requires = "heads_from")]
    pub heads_from_any_model: bool,
    #[command(flatten)]
    pub op: OpArgs,
    /// A LoRA adapter folder (PEFT) merged into the written weights before the ablation is
    /// folded in (a model folder's source only).
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Output folder (must not exist or be empty, unless --force); from a GGUF source, a path
    /// ending in .gguf writes a GGUF file instead: the tensors the ablation does not change
    /// copied byte for byte in their types (quantized stays quantized), the changed ones in
    /// --changed-dtype.
    #[arg(long)]
    pub out: PathBuf,
    /// With a GGUF --out: the type the changed tensors are written in, f32 (the default) or
    /// f16.
    #[arg(long, value_name = "DTYPE", value_parser = ["f32", "f16"])]
    pub changed_dtype: Option<String>,
    /// Replace a non-empty --out.
    #[arg(long)]
    pub force: bool,
}

pub fn run(a: Args) -> Result<()> {
    let ablation = a.op.parse()?;
    if a.op.sink()? == sahara::model::ablation::SinkPolicy::Drop {
        return Err(Error::Conflict {
            setting: sahara::error::Setting::Sink,
            reason: "drop cannot be folded into the weights: a checkpoint's sink is one logit that every input sees, and no weight removes it from the ablated head's softmax alone; surgery folds the ablation with the sink kept (the q/k rows scaled, the sink as it is)".into(),
        });
    }
    let heads = match (&a.ablate, &a.heads_from) {
        (Some(h), None) => HeadSet::parse(h)?,
        (None, Some(f)) => HeadSet(
            HeadsFile::read(f)?
                .head_sets(f, a.top, false)?
                .pop()
                .expect("one head set without --sweep"),
        ),
        _ => {
            return Err(Error::InvalidArgument(
                "give the heads with exactly one of --ablate L:H[,L:H…] or --heads-from FILE"
                    .into(),
            ))
        }
    };
    let spec = SurgeryPlan { heads, ablation };
    let checkpoint = sahara::Checkpoint::resolve(&a.model)?;
    if let Some(p) = &a.heads_from {
        let adapter = a
            .adapter
            .as_deref()
            .map(sahara::checkpoint::lora::adapter_fingerprint)
            .transpose()?;
        let fingerprint =
            sahara::checkpoint::lora::with_adapter(checkpoint.fingerprint()?, adapter.as_deref());
        check_heads_model(p, &fingerprint, a.heads_from_any_model)?;
    }
    let gguf_out = sahara::checkpoint::gguf::write::names_gguf_file(&a.out);
    if a.changed_dtype.is_some() && !gguf_out {
        return Err(Error::InvalidArgument(format!(
            "--changed-dtype applies to a GGUF output only (an --out path ending in .gguf), not to the folder {}",
            a.out.display()
        )));
    }
    let r = if gguf_out {
        let changed = match a.changed_dtype.as_deref() {
            Some("f16") => ChangedType::F16,
            _ => ChangedType::F32,
        };
        let r = checkpoint.surgery_to_gguf(
            &a.model,
            &a.out,
            &spec,
            a.force,
            a.adapter.as_deref(),
            changed,
        )?;
        eprintln!(
            "note: {} tensors copied as they are, {} rewritten in {}; the record is {}",
            sahara::checkpoint::gguf::GgufFile::open(&a.out)?
                .content
                .tensor_infos
                .len()
                - r.changed_tensors.len(),
            r.changed_tensors.len(),
            changed.name(),
            sahara::checkpoint::gguf::write::record_path(&a.out).display()
        );
        r
    } else {
        let r = checkpoint.surgery_with(&a.model, &a.out, &spec, a.force, a.adapter.as_deref())?;
        if matches!(checkpoint, sahara::Checkpoint::Gguf(_)) {
            eprintln!(
                "note: the source is a GGUF file; the output is a Hugging Face safetensors folder of the dequantized weights in float32 (an --out ending in .gguf writes a GGUF file with the quantized tensors kept)"
            );
        }
        r
    };
    if ablation.target == sahara::Target::K {
        let heads: Vec<String> = r
            .affected_heads
            .iter()
            .map(|(l, h)| format!("{l}:{h}"))
            .collect();
        eprintln!(
            "note: target k ablates whole key/value groups; query heads affected: {}",
            heads.join(", ")
        );
    }
    println!(
        "wrote {} ({} of {} parameters changed, {:.4}%, in {} tensors); verified: logits equal the in-memory ablation (relative difference {:.2e})",
        r.out.display(),
        r.changed_parameters,
        r.total_parameters,
        100.0 * r.changed_parameters as f64 / r.total_parameters.max(1) as f64,
        r.changed_tensors.len(),
        r.verify_relative_difference
    );
    Ok(())
}
