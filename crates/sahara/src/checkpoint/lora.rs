//! LoRA adapters (PEFT's `adapter_config.json` + `adapter_model.safetensors`), merged into the
//! base model's weights at load: W' = W + s · B A, with s = `lora_alpha / r` (or
//! `lora_alpha / √r` with `use_rslora`), as PEFT's `merge_and_unload` computes it.
//!
//! The adapter is read as PEFT writes it: tensors `base_model.model.{module}.lora_A.weight`
//! (r × in) and `….lora_B.weight` (out × r), `{module}` a projection of the base model
//! (`model.layers.3.self_attn.q_proj`). What sahara does not merge is refused with the
//! setting named: DoRA (`use_dora`), per-module ranks or alphas (`rank_pattern`,
//! `alpha_pattern`), trained biases (`bias` other than `none`), `modules_to_save`, a
//! regular-expression `target_modules`, and modules other than the attention and MLP
//! projections. `fan_in_fan_out` is read as PEFT reads it for `nn.Linear` layers, which every
//! family's projections are: PEFT resets it to false (and warns), and so does sahara.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::checkpoint::safetensors::{TensorSource, WeightFile};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

/// The modules an adapter may target, by the last part of their name.
const PROJECTIONS: [&str; 9] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj",
];

/// The fields of `adapter_config.json` sahara reads.
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    target_modules: Option<serde_json::Value>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    lora_bias: bool,
    #[serde(default)]
    layer_replication: Option<serde_json::Value>,
    #[serde(default)]
    alora_invocation_tokens: Option<serde_json::Value>,
    #[serde(default)]
    arrow_config: Option<serde_json::Value>,
}

/// A LoRA adapter checked against a base model.
pub struct Adapter {
    pub dir: PathBuf,
    /// r, and the merge's factor s.
    pub rank: usize,
    pub scale: f64,
    /// The base model the adapter names (`base_model_name_or_path`), as written.
    pub base_model: Option<String>,
    /// A fingerprint of the adapter's configuration and weights.
    pub fingerprint: String,
    /// What a user should know (`fan_in_fan_out` reset), one line each.
    pub notes: Vec<String>,
    file: WeightFile,
    /// Base weight name → the names of its A and B in the adapter file.
    targets: BTreeMap<String, (String, String)>,
}

fn bad(dir: &Path, message: impl Into<String>) -> Error {
    Error::config(dir.join("adapter_config.json"), message)
}

/// The (out, in) shape of a projection of `cfg` by its name's last part.
fn projection_shape(cfg: &ModelConfig, kind: &str) -> Option<(usize, usize)> {
    let (d, h, g, hd, i) = (
        cfg.hidden_size,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    );
    Some(match kind {
        "q_proj" => (h * hd, d),
        "k_proj" | "v_proj" => (g * hd, d),
        "o_proj" => (d, h * hd),
        "qkv_proj" => ((h + 2 * g) * hd, d),
        "gate_proj" | "up_proj" => (i, d),
        "down_proj" => (d, i),
        "gate_up_proj" => (2 * i, d),
        _ => return None,
    })
}

impl Adapter {
    /// Reads the adapter in `dir` and checks it against the base model's configuration and
    /// tensors: every module it targets must be a projection of the base, of the shape its
    /// A and B imply.
    pub fn open(dir: &Path, cfg: &ModelConfig, base: &dyn TensorSource) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let raw: RawConfig = serde_json::from_str(&text)
            .map_err(|e| bad(dir, format!("not a PEFT LoRA adapter configuration ({e})")))?;
        if let Some(t) = raw.peft_type.as_deref().filter(|t| *t != "LORA") {
            return Err(bad(
                dir,
                format!("peft_type {t:?}: only LORA adapters merge"),
            ));
        }
        if raw.use_dora {
            return Err(bad(dir, "use_dora: DoRA adapters are not supported (their magnitude vector rescales whole columns); merge it with PEFT first"));
        }
        for (name, p) in [
            ("rank_pattern", &raw.rank_pattern),
            ("alpha_pattern", &raw.alpha_pattern),
        ] {
            if p.as_ref().is_some_and(|m| !m.is_empty()) {
                return Err(bad(
                    dir,
                    format!("{name}: per-module ranks and alphas are not supported"),
                ));
            }
        }
        if let Some(b) = raw.bias.as_deref().filter(|b| *b != "none") {
            return Err(bad(
                dir,
                format!("bias {b:?}: adapters that train biases are not supported"),
            ));
        }
        if raw
            .modules_to_save
            .as_ref()
            .is_some_and(|m| !m.is_null() && m != &serde_json::json!([]))
        {
            return Err(bad(
                dir,
                "modules_to_save: adapters that replace whole modules are not supported",
            ));
        }
        // Initializations and variants that change the base weights or the update's form:
        // such adapters are not W + s·BA on the base they name.
        let extra: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).unwrap_or_default();
        if let Some(init) = extra.get("init_lora_weights") {
            let plain = matches!(init, serde_json::Value::Bool(_) | serde_json::Value::Null)
                || matches!(init.as_str(), Some("gaussian") | Some("eva"));
            if !plain {
                return Err(bad(dir, format!("init_lora_weights {init}: an adapter initialized from the base's weights (PiSSA, OLoRA, LoftQ, CorDA, …) needs its base changed too; convert it to a plain LoRA with PEFT (path_initial_model_for_weight_conversion) first")));
            }
        }
        for key in [
            "loftq_config",
            "corda_config",
            "lora_ga_config",
            "eva_config",
            "kasa_config",
            "velora_config",
            "monteclora_config",
            "target_parameters",
            "use_qalora",
            "use_bdlora",
            "trainable_token_indices",
        ] {
            let set = match extra.get(key) {
                None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => {
                    false
                }
                Some(serde_json::Value::Object(m)) => !m.is_empty(),
                Some(serde_json::Value::Array(a)) => !a.is_empty(),
                Some(_) => true,
            };
            // EVA only chooses the initial A; the trained adapter is plain LoRA.
            if set && key != "eva_config" {
                return Err(bad(
                    dir,
                    format!("{key}: not supported (the adapter is not a plain LoRA)"),
                ));
            }
        }
        if raw.lora_bias {
            return Err(bad(
                dir,
                "lora_bias: adapters with a bias on lora_B are not supported",
            ));
        }
        for (name, v) in [
            ("layer_replication", &raw.layer_replication),
            ("alora_invocation_tokens", &raw.alora_invocation_tokens),
            ("arrow_config", &raw.arrow_config),
        ] {
            if v.as_ref().is_some_and(|v| !v.is_null()) {
                return Err(bad(
                    dir,
                    format!("{name}: not supported (the adapter is not a plain LoRA)"),
                ));
            }
        }
        if raw.r == 0 || !raw.lora_alpha.is_finite() {
            return Err(bad(
                dir,
                format!(
                    "r {} and lora_alpha {}: r must be at least 1 and lora_alpha finite",
                    raw.r, raw.lora_alpha
                ),
            ));
        }
        // Which module kinds are targeted: a list of names, or "all-linear".
        let kinds: Vec<String> = match &raw.target_modules {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| bad(dir, "target_modules must be a list of module names")))
                .collect::<Result<_>>()?,
            Some(serde_json::Value::String(s)) if s == "all-linear" => {
                PROJECTIONS.iter().map(|s| s.to_string()).collect()
            }
            Some(serde_json::Value::String(s)) => {
                return Err(bad(dir, format!("target_modules {s:?}: a regular expression is not supported; list the module names")))
            }
            _ => return Err(bad(dir, "no target_modules")),
        };
        let layers: Option<Vec<usize>> = match &raw.layers_to_transform {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => {
                Some(vec![n.as_u64().unwrap_or(u64::MAX) as usize])
            }
            Some(serde_json::Value::Array(a)) => Some(
                a.iter()
                    .map(|v| {
                        v.as_u64()
                            .map(|x| x as usize)
                            .ok_or_else(|| bad(dir, "layers_to_transform must list layer numbers"))
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(_) => return Err(bad(dir, "layers_to_transform must list layer numbers")),
        };
        let mut notes = Vec::new();
        if raw.fan_in_fan_out {
            notes.push("the adapter sets fan_in_fan_out, which PEFT resets to false for the nn.Linear projections every supported family has; sahara merges it the same way".to_string());
        }
        let path = dir.join("adapter_model.safetensors");
        let file = WeightFile::open(&path)?;
        // A and B per module, by the module's name in the base.
        let mut found: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
        for name in file.tensors.keys() {
            let stripped = name.replace(".default.", ".");
            let (module, which) = if let Some(m) = stripped.strip_suffix(".lora_A.weight") {
                (m, 0)
            } else if let Some(m) = stripped.strip_suffix(".lora_B.weight") {
                (m, 1)
            } else {
                return Err(Error::data(
                    &path,
                    format!("holds {name}, which is not a LoRA A or B weight (only those merge)"),
                ));
            };
            let module = module.strip_prefix("base_model.model.").unwrap_or(module);
            let entry = found.entry(module.to_string()).or_default();
            if which == 0 {
                entry.0 = Some(name.clone());
            } else {
                entry.1 = Some(name.clone());
            }
        }
        if found.is_empty() {
            return Err(Error::data(&path, "holds no LoRA weights"));
        }
        let mut targets = BTreeMap::new();
        for (module, (a, b)) in found {
            let (Some(a), Some(b)) = (a, b) else {
                return Err(Error::data(
                    &path,
                    format!("{module} has only one of lora_A and lora_B"),
                ));
            };
            let kind = module.rsplit('.').next().unwrap_or_default();
            // PEFT matches a target by the module's full name or a suffix after a dot.
            let listed = kinds
                .iter()
                .any(|k| module == *k || module.ends_with(&format!(".{k}")));
            if !listed {
                return Err(Error::data(
                    &path,
                    format!("holds weights for {module}, which target_modules does not list"),
                ));
            }
            let Some((out, inp)) = projection_shape(cfg, kind) else {
                return Err(Error::data(&path, format!("targets {module}; sahara merges adapters of the attention and MLP projections only ({})", PROJECTIONS.join(", "))));
            };
            let layer = module
                .strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|l| l.parse::<usize>().ok());
            if let (Some(only), Some(l)) = (&layers, layer) {
                if !only.contains(&l) {
                    return Err(Error::data(
                        &path,
                        format!(
                            "holds weights for layer {l}, which layers_to_transform leaves out"
                        ),
                    ));
                }
            }
            let weight = format!("{module}.weight");
            if !base.contains(&weight) {
                return Err(Error::data(&path, format!("targets {module}, which the base model does not have ({weight}): is it an adapter of another model?")));
            }
            let (sa, sb) = (&file.tensors[&a].shape, &file.tensors[&b].shape);
            if sa != &[raw.r, inp] || sb != &[out, raw.r] {
                return Err(Error::data(
                    &path,
                    format!(
                        "{module}: lora_A is {sa:?} and lora_B {sb:?}, but r {} on this base model's {out} × {inp} projection needs [{}, {inp}] and [{out}, {}]: is it an adapter of another model?",
                        raw.r, raw.r, raw.r
                    ),
                ));
            }
            targets.insert(weight, (a, b));
        }
        let scale = if raw.use_rslora {
            raw.lora_alpha / (raw.r as f64).sqrt()
        } else {
            raw.lora_alpha / raw.r as f64
        };
        let fingerprint = fingerprint_of(text.as_bytes(), file.bytes_all());
        Ok(Adapter {
            // Canonical, so that the same adapter named another way resumes a run.
            dir: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
            rank: raw.r,
            scale,
            base_model: raw.base_model_name_or_path,
            fingerprint,
            notes,
            file,
            targets,
        })
    }

    /// The base weights the adapter changes.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.targets.keys().map(String::as_str)
    }

    /// s · B A of a base weight the adapter targets, (out, in) f32 on `device`; `None` for
    /// any other weight.
    pub fn delta(&self, weight: &str, device: &Device) -> Result<Option<Tensor>> {
        let Some((a, b)) = self.targets.get(weight) else {
            return Ok(None);
        };
        let load = |name: &str| -> Result<Tensor> {
            let info = &self.file.tensors[name];
            let src =
                crate::checkpoint::safetensors::candle_dtype(info.dtype).ok_or_else(|| {
                    Error::TensorDtype {
                        name: name.to_string(),
                        path: self.file.path.clone(),
                        found: format!("{:?}", info.dtype),
                    }
                })?;
            let t = Tensor::from_raw_buffer(self.file.bytes(info), src, &info.shape, &Device::Cpu)?;
            Ok(t.to_dtype(DType::F32)?.to_device(device)?)
        };
        // (out, r) @ (r, in) -> (out, in)
        // The decoder checks the merged weight for non-finite values as it checks every weight.
        Ok(Some((load(b)?.matmul(&load(a)?)? * self.scale)?))
    }
}

/// The fingerprint of an adapter from its configuration's and weights' bytes.
fn fingerprint_of(config: &[u8], weights: &[u8]) -> String {
    crate::io::runlog::fingerprint(&[config, weights])
}

/// The fingerprint of the adapter in `dir`, as [`Adapter::open`] computes it, without
/// checking it against a model.
pub fn adapter_fingerprint(dir: &Path) -> Result<String> {
    let (c, w) = (
        dir.join("adapter_config.json"),
        dir.join("adapter_model.safetensors"),
    );
    let config = std::fs::read(&c).map_err(|e| Error::io(&c, e))?;
    let weights = std::fs::read(&w).map_err(|e| Error::io(&w, e))?;
    Ok(fingerprint_of(&config, &weights))
}

/// A model's fingerprint with an adapter merged: one home for run records and heads files.
pub fn with_adapter(base: String, adapter: Option<&str>) -> String {
    match adapter {
        Some(a) => format!("{base}+lora:{a}"),
        None => base,
    }
}

/// A base model's tensors with an adapter merged into the ones it targets.
pub struct Merged<'a> {
    pub base: &'a dyn TensorSource,
    pub adapter: &'a Adapter,
}

impl TensorSource for Merged<'_> {
    fn contains(&self, name: &str) -> bool {
        self.base.contains(name)
    }

    fn load(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        match self.adapter.delta(name, device)? {
            Some(d) => {
                // Merged in f32 and rounded to the dtype the base stores it in, as PEFT merges
                // a model loaded in its own dtype (and as `sahara surgery` writes it).
                let merged = (self.base.load(name, shape, DType::F32, device)? + d)?;
                let merged = match self.base.stored_dtype(name) {
                    Some(s) if s != DType::F32 && s != DType::F64 => merged.to_dtype(s)?,
                    _ => merged,
                };
                Ok(merged.to_dtype(dtype)?)
            }
            None => self.base.load(name, shape, dtype, device),
        }
    }

    fn stored_dtype(&self, name: &str) -> Option<DType> {
        self.base.stored_dtype(name)
    }

    fn load_weight(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<crate::model::decoder::Weight> {
        if self.adapter.targets.contains_key(name) {
            // A merged weight is dense, whatever the base keeps.
            return Ok(crate::model::decoder::Weight::Dense(
                self.load(name, shape, dtype, device)?,
            ));
        }
        self.base.load_weight(name, shape, dtype, device)
    }
}
