//! Checkpoints in and out: safetensors folders, the hub cache, GGUF files, random models, and
//! surgery (the ablation folded into the weights).

pub mod gguf;
pub mod hub;
pub mod lora;
pub mod mxfp4;
pub mod random;
pub mod safetensors;
pub mod surgery;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::io::prompt::PromptEncoder;
use crate::model::config::ModelConfig;
use crate::model::Decoder;

/// Where a model comes from, resolved once from what the user named (`--model`): the one
/// place that tells the formats apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// A Hugging Face model folder (also a hub snapshot, or the unpacked built-in organism).
    Folder(PathBuf),
    /// A llama.cpp GGUF file.
    Gguf(PathBuf),
}

impl Checkpoint {
    /// Resolves a model name: a folder, a hub id in the local cache, a `.gguf` file, or
    /// `builtin:organism`.
    pub fn resolve(name: &str) -> Result<Self> {
        if gguf::is_gguf_path(name) {
            return Ok(Checkpoint::Gguf(PathBuf::from(name)));
        }
        Ok(Checkpoint::Folder(hub::resolve_model_dir(name)?))
    }

    /// The folder or file.
    pub fn path(&self) -> &Path {
        match self {
            Checkpoint::Folder(p) | Checkpoint::Gguf(p) => p,
        }
    }

    /// A cheap fingerprint of the weights and configuration, for run records.
    pub fn fingerprint(&self) -> Result<String> {
        match self {
            Checkpoint::Folder(dir) => crate::io::runlog::folder_fingerprint(dir),
            Checkpoint::Gguf(path) => Ok(gguf::GgufFile::open(path)?.fingerprint()),
        }
    }

    /// The resolved configuration (a GGUF file's from its metadata).
    pub fn config(&self) -> Result<ModelConfig> {
        match self {
            Checkpoint::Folder(dir) => ModelConfig::from_file(&dir.join("config.json")),
            Checkpoint::Gguf(path) => gguf::GgufFile::open(path)?.config(),
        }
    }

    /// Loads decoder, tokenizer and chat template; `source` is the name it was resolved from.
    /// The device is readied and checked for the model first ([`crate::device::prepare`]).
    pub fn load(&self, source: &str, dtype: DType, device: &Device) -> Result<LoadedModel> {
        self.load_with(source, dtype, device, LoadOptions::default())
    }

    /// [`Checkpoint::load`] with options.
    pub fn load_with(
        &self,
        source: &str,
        dtype: DType,
        device: &Device,
        opts: LoadOptions,
    ) -> Result<LoadedModel> {
        self.load_on(source, dtype, std::slice::from_ref(device), opts)
    }

    /// [`Checkpoint::load_with`] on one device, or with the layers split over several
    /// ([`crate::device::plan_devices`]: contiguous ranges by free memory, the embedding on
    /// the first device and the head with the last layer); the residual stream moves between
    /// devices at the boundaries. Every device is readied and checked for its part first
    /// ([`crate::device::prepare_for`]).
    pub fn load_on(
        &self,
        source: &str,
        dtype: DType,
        devices: &[Device],
        opts: LoadOptions,
    ) -> Result<LoadedModel> {
        let device = devices.first().ok_or_else(|| {
            Error::InvalidArgument("a model is loaded on at least one device".into())
        })?;
        let cfg = self.config()?;
        // Where each part goes, every device readied and checked for its share; `one` is
        // what the weights take on a single device.
        let place = |one: usize| -> Result<crate::model::decoder::DevicePlan> {
            let (plan, bytes) = match devices.len() {
                1 => (
                    crate::model::decoder::DevicePlan::single(device, cfg.num_layers),
                    vec![one],
                ),
                _ => crate::device::plan_devices(&cfg, dtype, devices)?,
            };
            for (d, &need) in devices.iter().zip(&bytes) {
                crate::device::prepare_for(d, &cfg, dtype, need)?;
            }
            Ok(plan)
        };
        // The decoder from `weights`, with the adapter merged when there is one.
        let mut adapter_info = None;
        let mut build = |weights: &dyn safetensors::TensorSource,
                         plan: &crate::model::decoder::DevicePlan|
         -> Result<Decoder> {
            match &opts.adapter {
                None => crate::model::Decoder::load_placed(cfg.clone(), weights, dtype, plan),
                Some(dir) => {
                    let adapter = lora::Adapter::open(dir, &cfg, weights)?;
                    let merged = lora::Merged {
                        base: weights,
                        adapter: &adapter,
                    };
                    let d = crate::model::Decoder::load_placed(cfg.clone(), &merged, dtype, plan)?;
                    adapter_info = Some(AdapterInfo::of(&adapter));
                    Ok(d)
                }
            }
        };
        let (decoder, prompts, eos) = match self {
            Checkpoint::Gguf(path) => {
                let file = gguf::GgufFile::open(path)?;
                let mut weights = gguf::GgufWeights::new(&file, &cfg);
                weights.keep_quantized = opts.keep_quantized;
                let plan = place(weights.device_bytes(dtype))?;
                let decoder = build(&weights, &plan)?;
                let eos = decoder.cfg.eos_token_ids.clone();
                (decoder, file.prompt_encoder()?, eos)
            }
            Checkpoint::Folder(dir) => {
                if opts.keep_quantized {
                    return Err(Error::InvalidArgument(format!(
                        "weights can be kept quantized only from a GGUF file; {} is a model folder",
                        dir.display()
                    )));
                }
                let plan = place(crate::device::weight_bytes(&cfg, dtype))?;
                let weights = crate::checkpoint::safetensors::Weights::open_dir(dir)?;
                let decoder = build(&weights, &plan)?;
                let mut eos = generation_eos(dir)?;
                for id in &decoder.cfg.eos_token_ids {
                    if !eos.contains(id) {
                        eos.push(*id);
                    }
                }
                (decoder, PromptEncoder::load(dir)?, eos)
            }
        };
        let mut model = LoadedModel::new(self.clone(), source, decoder, prompts, eos);
        model.adapter = adapter_info;
        Ok(model)
    }

    /// Folds `plan` into the weights and writes a Hugging Face folder to `out` (a GGUF source
    /// is written as its dequantized float32 weights); `source` names the model in the record.
    pub fn surgery(
        &self,
        source: &str,
        out: &Path,
        plan: &surgery::SurgeryPlan,
        force: bool,
    ) -> Result<surgery::SurgeryReport> {
        self.surgery_with(source, out, plan, force, None)
    }

    /// [`Checkpoint::surgery`] with a LoRA adapter merged into the written weights too (a
    /// model folder's source only).
    pub fn surgery_with(
        &self,
        source: &str,
        out: &Path,
        plan: &surgery::SurgeryPlan,
        force: bool,
        adapter: Option<&Path>,
    ) -> Result<surgery::SurgeryReport> {
        match (self, adapter) {
            (Checkpoint::Folder(dir), _) => {
                surgery::surgery_with_adapter(dir, source, out, plan, force, adapter)
            }
            (Checkpoint::Gguf(path), None) => {
                gguf::export::surgery_from_gguf(path, source, out, plan, force)
            }
            (Checkpoint::Gguf(path), Some(_)) => Err(adapter_on_gguf(path)),
        }
    }

    /// Folds `plan` into the weights of a GGUF source and writes a GGUF file to `out`: the
    /// tensors the ablation does not change copied as they are (quantized stays quantized),
    /// the changed ones in `changed` ([`gguf::write`]). Refused for a Hugging Face folder
    /// source, and with an adapter.
    pub fn surgery_to_gguf(
        &self,
        source: &str,
        out: &Path,
        plan: &surgery::SurgeryPlan,
        force: bool,
        adapter: Option<&Path>,
        changed: gguf::write::ChangedType,
    ) -> Result<surgery::SurgeryReport> {
        match (self, adapter) {
            (Checkpoint::Gguf(path), None) => {
                gguf::write::surgery_to_gguf(path, source, out, plan, force, changed)
            }
            (Checkpoint::Gguf(path), Some(_)) => Err(adapter_on_gguf(path)),
            (Checkpoint::Folder(_), _) => Err(Error::Conflict {
                setting: crate::error::Setting::Output,
                reason: format!(
                    "{} names a GGUF file, which surgery writes only from a GGUF source (its quantized tensors copied as they are); this source is a Hugging Face model folder: name an output folder instead",
                    out.display()
                ),
            }),
        }
    }
}

fn adapter_on_gguf(path: &Path) -> Error {
    Error::InvalidArgument(format!(
        "{}: surgery merges an adapter into a Hugging Face model folder's weights, not a GGUF file's",
        path.display()
    ))
}

/// How a checkpoint is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Keep a GGUF file's quantized projections in their block formats on the device (the
    /// quantized matrix product computes with them) instead of dequantizing them at load.
    pub keep_quantized: bool,
    /// A LoRA adapter folder (PEFT) merged into the weights at load ([`lora::Adapter`]).
    pub adapter: Option<PathBuf>,
}

/// The LoRA adapter merged into a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    pub dir: PathBuf,
    pub fingerprint: String,
    pub rank: usize,
    pub scale: f64,
    /// The base weights it changed.
    pub targets: Vec<String>,
    pub notes: Vec<String>,
}

impl AdapterInfo {
    fn of(a: &lora::Adapter) -> Self {
        AdapterInfo {
            dir: a.dir.clone(),
            fingerprint: a.fingerprint.clone(),
            rank: a.rank,
            scale: a.scale,
            targets: a.targets().map(str::to_string).collect(),
            notes: a.notes.clone(),
        }
    }
}

/// A model loaded for use: decoder, tokenizer and chat template, end-of-sequence ids.
pub struct LoadedModel {
    pub checkpoint: Checkpoint,
    /// The name it was resolved from (`--model`).
    pub source: String,
    pub decoder: Decoder,
    pub prompts: PromptEncoder,
    /// End-of-sequence ids of `generation_config.json` and `config.json`.
    pub eos: Vec<u32>,
    /// The LoRA adapter merged into the weights, if any.
    pub adapter: Option<AdapterInfo>,
}

impl LoadedModel {
    /// The fingerprint run records hold: the checkpoint's, and the adapter's when one is
    /// merged (a run resumed with another adapter, or none, is refused).
    pub fn fingerprint(&self) -> Result<String> {
        Ok(lora::with_adapter(
            self.checkpoint.fingerprint()?,
            self.adapter.as_ref().map(|a| a.fingerprint.as_str()),
        ))
    }

    /// A loaded model; its prompt encoder refuses token ids beyond the decoder's embeddings.
    pub fn new(
        checkpoint: Checkpoint,
        source: &str,
        decoder: Decoder,
        mut prompts: PromptEncoder,
        eos: Vec<u32>,
    ) -> Self {
        prompts.embeddings = Some(decoder.cfg.vocab_size);
        LoadedModel {
            checkpoint,
            source: source.to_string(),
            decoder,
            prompts,
            eos,
            adapter: None,
        }
    }

    /// Resolves `name` (see [`Checkpoint::resolve`]) and loads it.
    pub fn load(name: &str, dtype: DType, device: &Device) -> Result<Self> {
        Checkpoint::resolve(name)?.load(name, dtype, device)
    }

    /// [`LoadedModel::load`] with options.
    pub fn load_with(name: &str, dtype: DType, device: &Device, opts: LoadOptions) -> Result<Self> {
        Checkpoint::resolve(name)?.load_with(name, dtype, device, opts)
    }

    /// [`LoadedModel::load_with`] on one device or split over several
    /// ([`Checkpoint::load_on`]).
    pub fn load_on(
        name: &str,
        dtype: DType,
        devices: &[Device],
        opts: LoadOptions,
    ) -> Result<Self> {
        Checkpoint::resolve(name)?.load_on(name, dtype, devices, opts)
    }

    pub fn cfg(&self) -> &ModelConfig {
        &self.decoder.cfg
    }
}

fn generation_eos(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    crate::model::config::token_ids(v.get("eos_token_id")).map_err(|m| Error::config(&path, m))
}
