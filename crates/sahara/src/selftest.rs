//! The exactness checks of the committed fixtures (`fixtures/*`, written by
//! `scripts/make_fixtures.py` with transformers), run on any device and dtype: the one home of
//! "this build computes what transformers computes", used by the fixture tests and by
//! `sahara selftest` on a machine that has only the binary and the repository's fixtures.
//!
//! Per fixture: logits and final hidden states of every reference prompt, the ablated logits
//! of every reference ablation, greedy continuations (f32 only), and the fast engine against
//! the naive one for Ships and one Sahara step on the device.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::methods::engine::{Engine, EngineOptions};
use crate::methods::generate::{generate, GenerateOptions};
use crate::methods::sahara::{final_hidden, stack_rows, step_scores, LeftSubspace, SaharaOptions};
use crate::methods::ships::{ships_scores, HeadGrid, ShipsOptions};
use crate::model::ablation::{Ablation, AblationPlan, HeadAblation, Op, SinkPolicy, Target};
use crate::model::{Batch, ForwardSpec, Positions};
use crate::LoadedModel;

/// Max |Δ| of logits and hidden states against transformers' float32 reference, in float32.
pub const F32_TOLERANCE: f64 = 1e-4;
/// The same in bfloat16 (8 bits of mantissa: a relative error of 2^-8 per rounding, through
/// every layer), relative to the largest reference value: max |Δ| ≤ 0.1 · max |reference|.
/// On the CPU the fixtures reach 0.076 (Gemma 2's v-scaled logits); a wrong kernel is off by
/// the order of the values themselves.
pub const BF16_RELATIVE_TOLERANCE: f64 = 0.1;
/// Fast against naive engine, relative to the largest score: float32 and 16-bit.
pub const ENGINE_F32_TOLERANCE: f64 = 1e-4;
pub const ENGINE_16BIT_TOLERANCE: f64 = 2e-2;

/// One check's result, a line of `sahara selftest --json`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub fixture: String,
    pub device: String,
    pub dtype: String,
    /// `logits`, `hidden`, `ablated.NAME`, `greedy`, `ships_fast_vs_naive`, …
    pub check: String,
    /// The measured error (max |Δ|, relative where the tolerance is, or the count of
    /// differing sequences for `greedy`).
    pub value: f64,
    pub tolerance: f64,
    pub passed: bool,
}

/// A fixture folder's reference: `reference.json` and `reference.safetensors`.
pub struct Reference {
    pub name: String,
    pub json: Value,
    /// On the CPU, in float32.
    pub tensors: HashMap<String, Tensor>,
}

fn bad(dir: &Path, what: &str) -> Error {
    Error::data(dir.join("reference.json"), what.to_string())
}

fn ids(v: &Value) -> Option<Vec<u32>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_u64().map(|n| n as u32))
        .collect()
}

impl Reference {
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("reference.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        let tensors =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Reference {
            name,
            json,
            tensors,
        })
    }

    fn tensor(&self, key: &str) -> Result<&Tensor> {
        self.tensors.get(key).ok_or_else(|| {
            Error::InvalidArgument(format!("{}: reference.safetensors has no {key}", self.name))
        })
    }

    /// The reference prompts' token ids.
    pub fn prompts(&self, dir: &Path) -> Result<Vec<Vec<u32>>> {
        self.json["raw_token_ids"]
            .as_array()
            .and_then(|a| a.iter().map(ids).collect())
            .ok_or_else(|| bad(dir, "raw_token_ids is not a list of token id lists"))
    }

    /// The reference ablations: (name, the heads as the API takes them).
    pub fn ablations(
        &self,
        dir: &Path,
        model: &LoadedModel,
    ) -> Result<Vec<(String, Vec<HeadAblation>)>> {
        let eps = self.json["epsilon"]
            .as_f64()
            .ok_or_else(|| bad(dir, "epsilon is not a number"))?;
        let group = model.cfg().group_size();
        let mut out = Vec::new();
        for set in self.json["ablations"].as_array().into_iter().flatten() {
            let name = set["name"].as_str().unwrap_or("?").to_string();
            let target: Target = set["target"].as_str().unwrap_or("?").parse()?;
            let op = match set["op"].as_str() {
                Some("scale") => Op::Scale(eps),
                Some("mean") => Op::Mean,
                _ => return Err(bad(dir, "an ablation's op is neither scale nor mean")),
            };
            let mut heads = Vec::new();
            for lh in set["heads"].as_array().into_iter().flatten() {
                let (Some(l), Some(h)) = (lh[0].as_u64(), lh[1].as_u64()) else {
                    return Err(bad(dir, "an ablation's heads are not [layer, head] pairs"));
                };
                let (l, h) = (l as usize, h as usize);
                // The fixture names key/value heads for k; the API takes a query head.
                let h = if target == Target::K { h * group } else { h };
                heads.push(HeadAblation::new(l, h, target, op));
            }
            out.push((name, heads));
        }
        Ok(out)
    }
}

/// Max |a - b| (both moved to the CPU in float32).
fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    if a.dims() != b.dims() {
        return Err(Error::InvalidArgument(format!(
            "shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        )));
    }
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64)
}

fn max_abs(a: &Tensor) -> Result<f64> {
    Ok(a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64)
}

/// Max |a - b| / max |a| over two score grids.
fn grid_diff(a: &HeadGrid, b: &HeadGrid) -> f64 {
    let (mut diff, mut scale) = (0f64, 0f64);
    for (ra, rb) in a.iter().zip(b) {
        for (x, y) in ra.iter().zip(rb) {
            match (x, y) {
                (Some(x), Some(y)) => {
                    diff = diff.max((x - y).abs());
                    scale = scale.max(x.abs());
                }
                (None, None) => {}
                _ => return f64::INFINITY,
            }
        }
    }
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    diff / scale.max(f64::MIN_POSITIVE)
}

/// Runs every check of the fixture folder `dir` with the model in `dtype` on `device`.
pub fn check_fixture(dir: &Path, dtype: DType, device: &Device) -> Result<Vec<Check>> {
    let reference = Reference::load(dir)?;
    let source = dir.to_string_lossy();
    let mut model = LoadedModel::load(&source, dtype, device)?;
    let prompts = reference.prompts(dir)?;
    let f32 = dtype == DType::F32;
    let device_name = crate::device::name(device);
    let mut checks = Vec::new();
    let mut push = |check: String, value: f64, tolerance: f64| {
        checks.push(Check {
            fixture: reference.name.clone(),
            device: device_name.clone(),
            dtype: crate::device::dtype_name(dtype).into(),
            check,
            value,
            tolerance,
            passed: value <= tolerance,
        });
    };
    // (value, tolerance) of a tensor against its reference: absolute in f32, relative to
    // the reference's largest value in 16 bits.
    let compare = |got: &Tensor, want: &Tensor| -> Result<(f64, f64)> {
        let d = max_abs_diff(got, want)?;
        Ok(if f32 {
            (d, F32_TOLERANCE)
        } else {
            (
                d / max_abs(want)?.max(f64::MIN_POSITIVE),
                BF16_RELATIVE_TOLERANCE,
            )
        })
    };
    let forward = |p: &[u32],
                   rows: Option<&[Vec<HeadAblation>]>,
                   sink: SinkPolicy|
     -> Result<(Tensor, Tensor)> {
        let batch = Batch::new(&[p.to_vec()], 0, device)?;
        let placement = crate::model::decoder::DevicePlan::single(device, model.cfg().num_layers);
        let plan = match rows {
            Some(r) => Some(AblationPlan::placed_with(
                model.cfg(),
                r,
                dtype,
                &placement,
                None,
                sink,
            )?),
            None => None,
        };
        let mut spec = ForwardSpec::logits(Positions::All);
        spec.hidden = true;
        spec.ablations = plan.as_ref();
        let out = model.decoder.forward(&batch, &spec, None)?;
        Ok((
            out.logits.expect("logits requested").i(0)?,
            out.hidden.expect("hidden requested").i(0)?,
        ))
    };

    // A mixture of experts sends each token to its top-k experts: in 16 bits a token near a
    // tie between two experts may go elsewhere than in float32, which changes its output by
    // the order of the values, so a 16-bit run of such a model is not compared with the
    // float32 reference (only its engines with each other, below).
    let comparable = f32 || model.cfg().moe.is_none();
    let (mut logits, mut hidden) = ((0f64, 0f64), (0f64, 0f64));
    for (i, p) in prompts.iter().enumerate().filter(|_| comparable) {
        let (l, h) = forward(p, None, SinkPolicy::Keep)?;
        let dl = compare(&l, reference.tensor(&format!("logits.{i}"))?)?;
        let dh = compare(&h, reference.tensor(&format!("hidden.{i}"))?)?;
        logits = (logits.0.max(dl.0), dl.1);
        hidden = (hidden.0.max(dh.0), dh.1);
    }
    if comparable {
        push("logits".into(), logits.0, logits.1);
        push("hidden".into(), hidden.0, hidden.1);
    }

    let ablations = match comparable {
        true => reference.ablations(dir, &model)?,
        false => Vec::new(),
    };
    // A model with attention sinks also has references for its q/k ablations with the
    // ablated heads' sinks dropped (`sink_drop`).
    let drops: Vec<&str> = reference.json["sink_drop"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (name, heads) in &ablations {
        let sinks = [
            ("ablated", SinkPolicy::Keep),
            ("ablated_sink_drop", SinkPolicy::Drop),
        ];
        for (key, sink) in sinks {
            if sink == SinkPolicy::Drop && !drops.contains(&name.as_str()) {
                continue;
            }
            let mut worst = (0f64, 0f64);
            for (i, p) in prompts.iter().enumerate() {
                let (l, _) = forward(p, Some(std::slice::from_ref(heads)), sink)?;
                let d = compare(&l, reference.tensor(&format!("{key}.{name}.{i}"))?)?;
                worst = (worst.0.max(d.0), d.1);
            }
            push(format!("{key}.{name}"), worst.0, worst.1);
        }
    }

    // Greedy tokens are exact only where the logits are: float32.
    if f32 {
        let mut differ = 0;
        for g in reference.json["greedy"].as_array().into_iter().flatten() {
            let i = g["prompt_index"].as_u64().unwrap_or(0) as usize;
            let want = ids(&g["new_tokens"]).ok_or_else(|| bad(dir, "greedy new_tokens"))?;
            let opts = GenerateOptions {
                max_new_tokens: g["max_new_tokens"].as_u64().unwrap_or(1) as usize,
                eos: model.eos.clone(),
                ..Default::default()
            };
            let prompt = prompts
                .get(i)
                .ok_or_else(|| bad(dir, "greedy prompt_index"))?;
            let got = generate(
                &model.decoder,
                std::slice::from_ref(prompt),
                &[vec![]],
                0,
                &opts,
            )?;
            if got[0] != want {
                differ += 1;
            }
        }
        push("greedy".into(), differ as f64, 0.0);
    }

    // The fast engine against the naive one, on this device.
    let engine_tol = if f32 {
        ENGINE_F32_TOLERANCE
    } else {
        ENGINE_16BIT_TOLERANCE
    };
    let engine = |kind| EngineOptions {
        kind,
        ..EngineOptions::default()
    };
    let mut ships = ShipsOptions::new(model.cfg());
    // On a model with sinks, the engines agree with the sinks dropped too.
    let policies: &[SinkPolicy] = match model.cfg().attention_sinks {
        true => &[SinkPolicy::Keep, SinkPolicy::Drop],
        false => &[SinkPolicy::Keep],
    };
    for &sink in policies {
        model.decoder.sink_policy = sink;
        let mut grids = Vec::new();
        for kind in [Engine::Fast, Engine::Naive] {
            ships.engine = engine(kind);
            grids.push(ships_scores(
                &model.decoder,
                &prompts[0],
                &ships,
                &mut |_| {},
            )?);
        }
        let name = match sink {
            SinkPolicy::Keep => "ships_fast_vs_naive".to_string(),
            SinkPolicy::Drop => "ships_fast_vs_naive_sink_drop".to_string(),
        };
        push(name, grid_diff(&grids[0], &grids[1]), engine_tol);
    }
    model.decoder.sink_policy = SinkPolicy::Keep;

    if prompts.len() >= 2 {
        let reference_space =
            LeftSubspace::of(&stack_rows(&final_hidden(&model.decoder, &prompts, &[])?))?;
        let mut grids = Vec::new();
        for kind in [Engine::Fast, Engine::Naive] {
            let opts = SaharaOptions {
                ablation: Ablation::paper_default(),
                rank: 1,
                steps: 1,
                engine: engine(kind),
                chunk: None,
            };
            grids.push(step_scores(
                &model.decoder,
                &prompts,
                &[],
                &reference_space,
                &opts,
                &mut |_| {},
            )?);
        }
        push(
            "sahara_fast_vs_naive".into(),
            grid_diff(&grids[0], &grids[1]),
            engine_tol,
        );
    }
    Ok(checks)
}

/// The fixture folders under `root` that hold a reference (one per family and configuration),
/// in name order.
pub fn fixture_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.join("reference.json").exists() && p.join("config.json").exists())
        .collect();
    dirs.sort();
    Ok(dirs)
}
