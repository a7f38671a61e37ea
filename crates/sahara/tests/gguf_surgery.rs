//! Surgery from a GGUF source written as a GGUF file (`checkpoint::gguf::write`): on the
//! committed `fixtures/gguf_tiny/model.gguf` (llama, permuted query/key rows, every common
//! tensor type) for q, k and v, and on the real SmolLM2-135M-Instruct Q4_1 when installed
//! (`SAHARA_SMOLLM2_GGUF`, as in gguf.rs; `SAHARA_REQUIRE_SMOLLM2=1` makes its absence a
//! failure). Each output reloads with sahara's loader and its logits equal the in-memory
//! ablation; every unchanged tensor's bytes are the source's, the changed ones are F32 (or
//! F16), the metadata is kept and the ablation's keys added.
//!
//! The independent check `scripts/check_gguf_surgery.py` (the Python `gguf` package and
//! numpy) runs on every output when `SAHARA_GGUF_PY` names a Python interpreter that has
//! `gguf`, or a folder to put on `PYTHONPATH` for `python3` (the `pip install --target`
//! folder `.ci/run` installs); without it the check prints why and passes, unless
//! `SAHARA_REQUIRE_GGUF_PY=1`.

mod common;

use common::smollm2_path;

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};
use sahara::checkpoint::gguf::write::{keys, record_path, ChangedType};
use sahara::checkpoint::surgery::{SurgeryPlan, SurgeryReport};
use sahara::model::ablation::{Ablation, HeadSet, Op, Target};
use sahara::{AblationPlan, Batch, Checkpoint, ForwardSpec, LoadedModel, Positions};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/gguf_tiny/model.gguf")
}

/// A GGUF file's parsed header and its bytes.
struct Parsed {
    content: Content,
    bytes: Vec<u8>,
}

impl Parsed {
    fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let content = Content::read(&mut Cursor::new(&bytes[..])).unwrap();
        Parsed { content, bytes }
    }

    fn tensor(&self, name: &str) -> &[u8] {
        let i = &self.content.tensor_infos[name];
        let size = i.shape.elem_count() / i.ggml_dtype.block_size() * i.ggml_dtype.type_size();
        let start = (self.content.tensor_data_offset + i.offset) as usize;
        &self.bytes[start..start + size]
    }

    /// Tensor names in the order of their data.
    fn order(&self) -> Vec<String> {
        let mut v: Vec<(&String, u64)> = self
            .content
            .tensor_infos
            .iter()
            .map(|(n, i)| (n, i.offset))
            .collect();
        v.sort_by_key(|(_, o)| *o);
        v.into_iter().map(|(n, _)| n.clone()).collect()
    }

    fn string(&self, key: &str) -> String {
        match &self.content.metadata[key] {
            Value::String(s) => s.clone(),
            other => panic!("{key}: {other:?}"),
        }
    }

    fn strings(&self, key: &str) -> Vec<String> {
        match &self.content.metadata[key] {
            Value::Array(v) => v
                .iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => panic!("{key}: {other:?}"),
                })
                .collect(),
            other => panic!("{key}: {other:?}"),
        }
    }
}

/// `general.alignment`, 32 when absent.
fn alignment(p: &Parsed) -> u64 {
    match p.content.metadata.get("general.alignment") {
        None => 32,
        Some(Value::U32(a)) => *a as u64,
        Some(other) => panic!("general.alignment: {other:?}"),
    }
}

/// A GGML type's id in files.
fn type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::BF16 => 30,
        other => panic!("{other:?}"),
    }
}

fn put_value(b: &mut Vec<u8>, v: &Value) {
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    match v {
        Value::U32(x) => b.extend(x.to_le_bytes()),
        Value::I32(x) => b.extend(x.to_le_bytes()),
        Value::F32(x) => b.extend(x.to_le_bytes()),
        Value::Bool(x) => b.push(*x as u8),
        Value::String(s) => string(b, s),
        Value::Array(items) => {
            let ty = items.first().map(value_type).unwrap_or(4);
            b.extend(ty.to_le_bytes());
            b.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(b, i);
            }
        }
        other => panic!("{other:?}"),
    }
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        other => panic!("{other:?}"),
    }
}

/// The tiny fixture rewritten as a GGUF version 2 file of another shape of header: the
/// `qwen2` architecture (rows not permuted, query/key/value biases added, F32) and
/// `general.alignment` 64.
fn qwen2_variant(dst: &Path) {
    let a = Parsed::read(&tiny());
    let mut meta: Vec<(String, Value)> = a
        .content
        .metadata
        .iter()
        .map(|(k, v)| {
            let k = k.replace("llama.", "qwen2.");
            let v = if k == "general.architecture" {
                Value::String("qwen2".into())
            } else {
                v.clone()
            };
            (k, v)
        })
        .collect();
    meta.sort_by(|x, y| x.0.cmp(&y.0));
    meta.push(("general.alignment".into(), Value::U32(64)));
    let mut tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)> = a
        .order()
        .into_iter()
        .map(|n| {
            let i = &a.content.tensor_infos[&n];
            let dims = i.shape.dims().iter().rev().map(|&d| d as u64).collect();
            (
                n.clone(),
                dims,
                type_id(i.ggml_dtype),
                a.tensor(&n).to_vec(),
            )
        })
        .collect();
    for l in 0..2 {
        for (m, rows) in [("attn_q", 256usize), ("attn_k", 128), ("attn_v", 128)] {
            let b: Vec<u8> = (0..rows)
                .flat_map(|r| (((r * 7 + l * 3) % 11) as f32 * 0.05 - 0.25).to_le_bytes())
                .collect();
            tensors.push((format!("blk.{l}.{m}.bias"), vec![rows as u64], 0, b));
        }
    }
    let align = 64usize;
    let pad = |b: &mut Vec<u8>| b.resize(b.len().next_multiple_of(align), 0);
    let mut b = b"GGUF".to_vec();
    b.extend(2u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in &meta {
        b.extend((k.len() as u64).to_le_bytes());
        b.extend(k.as_bytes());
        b.extend(value_type(v).to_le_bytes());
        put_value(&mut b, v);
    }
    let mut offset = 0usize;
    for (n, dims, ty, data) in &tensors {
        b.extend((n.len() as u64).to_le_bytes());
        b.extend(n.as_bytes());
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend((offset as u64).to_le_bytes());
        offset = (offset + data.len()).next_multiple_of(align);
    }
    pad(&mut b);
    for (_, _, _, data) in &tensors {
        b.extend(data);
        pad(&mut b);
    }
    std::fs::write(dst, b).unwrap();
}

fn plan(heads: &[(usize, usize)], target: Target, op: Op) -> SurgeryPlan {
    SurgeryPlan {
        heads: HeadSet(heads.to_vec()),
        ablation: Ablation { target, op },
    }
}

/// max |Δlogit| / max |logit| between the source with `plan` in memory and `out` run plainly.
fn logit_difference(src: &Path, out: &Path, plan: &SurgeryPlan) -> f32 {
    let dev = Device::Cpu;
    let source = LoadedModel::load(src.to_str().unwrap(), DType::F32, &dev).unwrap();
    let written = LoadedModel::load(out.to_str().unwrap(), DType::F32, &dev).unwrap();
    let prompt = source
        .prompts
        .encode("Hi there, how are you?", true)
        .unwrap();
    assert_eq!(
        written
            .prompts
            .encode("Hi there, how are you?", true)
            .unwrap(),
        prompt
    );
    let batch = Batch::new(&[prompt], 0, &dev).unwrap();
    let rows = vec![plan.ablation.of(&plan.heads.0)];
    let ablations = AblationPlan::new(source.cfg(), &rows, DType::F32, &dev).unwrap();
    let want = source
        .decoder
        .forward(
            &batch,
            &ForwardSpec::logits(Positions::All).with_ablations(&ablations),
            None,
        )
        .unwrap()
        .logits
        .unwrap();
    let got = written
        .decoder
        .forward(&batch, &ForwardSpec::logits(Positions::All), None)
        .unwrap()
        .logits
        .unwrap();
    common::rel_diff(&want, &got)
}

/// Checks `out` (written from `src` with `plan`, changed tensors in `changed`) against its
/// source, and that its logits equal the in-memory ablation.
fn check_output(
    src: &Path,
    out: &Path,
    plan: &SurgeryPlan,
    changed: ChangedType,
    r: &SurgeryReport,
    expected_changed: &[&str],
) {
    let a = Parsed::read(src);
    let b = Parsed::read(out);
    // Changed tensors as expected, and reported so (in file order).
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let expected: Vec<String> = expected_changed.iter().map(|s| s.to_string()).collect();
    assert_eq!(sorted(r.changed_tensors.clone()), sorted(expected.clone()));
    assert_eq!(b.strings(keys::CHANGED_TENSORS), r.changed_tensors);
    // Same tensors, same order, same shapes.
    assert_eq!(a.order(), b.order(), "tensor order");
    let want = match changed {
        ChangedType::F32 => GgmlDType::F32,
        ChangedType::F16 => GgmlDType::F16,
    };
    let mut quantized_copied = 0;
    for (name, ia) in &a.content.tensor_infos {
        let ib = &b.content.tensor_infos[name];
        assert_eq!(ia.shape.dims(), ib.shape.dims(), "{name}");
        assert_eq!(ib.offset % alignment(&a), 0, "{name} is not aligned");
        if expected_changed.contains(&name.as_str()) {
            // Biases stay F32 whatever the changed tensors' type.
            let want = if ia.shape.rank() == 1 {
                GgmlDType::F32
            } else {
                want
            };
            assert_eq!(ib.ggml_dtype, want, "{name}");
            assert_ne!(a.tensor(name), b.tensor(name), "{name} did not change");
        } else {
            assert_eq!(ia.ggml_dtype, ib.ggml_dtype, "{name}");
            assert!(a.tensor(name) == b.tensor(name), "{name}: bytes differ");
            if !matches!(
                ia.ggml_dtype,
                GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
            ) {
                quantized_copied += 1;
            }
        }
    }
    assert!(quantized_copied > 0, "no quantized tensor was copied");
    assert_eq!(alignment(&a), alignment(&b));
    assert_eq!(b.content.tensor_data_offset % alignment(&a), 0);
    // Metadata: every key of the source with its value, plus the ablation's.
    for (k, v) in &a.content.metadata {
        let got = b
            .content
            .metadata
            .get(k)
            .unwrap_or_else(|| panic!("metadata {k} is missing"));
        assert_eq!(format!("{v:?}"), format!("{got:?}"), "metadata {k}");
    }
    let heads: Vec<String> = plan
        .heads
        .0
        .iter()
        .map(|(l, h)| format!("{l}:{h}"))
        .collect();
    assert_eq!(b.strings(keys::HEADS), heads);
    assert_eq!(b.string(keys::TARGET), plan.ablation.target.as_str());
    assert_eq!(b.string(keys::MODE), plan.ablation.op.mode_str());
    match (
        plan.ablation.op.epsilon(),
        b.content.metadata.get(keys::EPSILON),
    ) {
        (Some(e), Some(Value::F64(x))) => assert_eq!(e, *x),
        (None, None) => {}
        other => panic!("epsilon: {other:?}"),
    }
    assert_eq!(b.string(keys::CHANGED_TYPE), changed.name());
    assert_eq!(b.string(keys::VERSION), env!("CARGO_PKG_VERSION"));
    assert_eq!(
        b.string(keys::SOURCE_FINGERPRINT),
        Checkpoint::Gguf(src.to_path_buf()).fingerprint().unwrap()
    );
    let affected: Vec<String> = r
        .affected_heads
        .iter()
        .map(|(l, h)| format!("{l}:{h}"))
        .collect();
    assert_eq!(b.strings(keys::AFFECTED), affected);
    let extra: Vec<&String> = b
        .content
        .metadata
        .keys()
        .filter(|k| !a.content.metadata.contains_key(*k))
        .collect();
    assert!(extra.iter().all(|k| k.starts_with("sahara.")), "{extra:?}");
    // The record beside it.
    let rec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(record_path(out)).unwrap()).unwrap();
    assert_eq!(rec["schema"], "sahara.surgery/1");
    assert_eq!(rec["written_format"], "gguf");
    assert_eq!(rec["source_format"], "gguf");
    assert_eq!(rec["target"], plan.ablation.target.as_str());
    assert_eq!(
        rec["verify_relative_difference"].as_f64().unwrap(),
        r.verify_relative_difference
    );
    // Reloaded, it computes the in-memory ablation.
    let tol = match changed {
        ChangedType::F32 => 1e-5,
        ChangedType::F16 => 2e-3,
    };
    let d = logit_difference(src, out, plan);
    assert!(d <= tol, "relative |Δlogit| {d:e} > {tol:e}");
    assert!(r.verify_relative_difference <= tol as f64);
    python_check(src, out, plan, changed);
}

/// Runs scripts/check_gguf_surgery.py on `out` where a Python with `gguf` is named.
fn python_check(src: &Path, out: &Path, plan: &SurgeryPlan, changed: ChangedType) {
    let required = std::env::var("SAHARA_REQUIRE_GGUF_PY").is_ok_and(|v| v == "1");
    let Some(py) = std::env::var_os("SAHARA_GGUF_PY").map(PathBuf::from) else {
        assert!(
            !required,
            "SAHARA_REQUIRE_GGUF_PY=1 but SAHARA_GGUF_PY is not set"
        );
        eprintln!("SKIPPED: the gguf-package check (set SAHARA_GGUF_PY to a Python with `gguf`, or to a folder holding it; .ci/run does this)");
        return;
    };
    assert!(
        py.exists(),
        "SAHARA_GGUF_PY={} does not exist",
        py.display()
    );
    let spec = serde_json::json!({
        "heads": plan.heads.pairs(),
        "target": plan.ablation.target.as_str(),
        "mode": plan.ablation.op.mode_str(),
        "epsilon": plan.ablation.op.epsilon(),
        "changed_type": changed.name(),
    });
    let spec_path = out.with_extension("ablation.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let mut cmd = if py.is_dir() {
        let mut c = Command::new("python3");
        c.env("PYTHONPATH", &py);
        c
    } else {
        Command::new(&py)
    };
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_gguf_surgery.py");
    let o = cmd
        .arg(&script)
        .arg(src)
        .arg(out)
        .arg(&spec_path)
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "check_gguf_surgery.py failed: {text}");
    assert!(text.contains("ok"), "{text}");
    eprintln!("{}", text.trim());
}

fn run(src: &Path, out: &Path, plan: &SurgeryPlan, changed: ChangedType) -> SurgeryReport {
    Checkpoint::Gguf(src.to_path_buf())
        .surgery_to_gguf("model.gguf", out, plan, false, None, changed)
        .unwrap()
}

#[test]
fn q_scale_writes_a_verified_gguf_with_the_quantized_tensors_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q.gguf");
    let p = plan(&[(0, 1), (1, 3)], Target::Q, Op::Scale(0.25));
    let r = run(&tiny(), &out, &p, ChangedType::F32);
    // Q4_K and Q5_0 query weights, rewritten in F32 in GGUF row order.
    check_output(
        &tiny(),
        &out,
        &p,
        ChangedType::F32,
        &r,
        &["blk.0.attn_q.weight", "blk.1.attn_q.weight"],
    );
    assert_eq!(r.changed_parameters, 2 * 64 * 256);
    // Nothing else beside it but the record.
    let mut names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".ablation.json"))
        .collect();
    names.sort();
    assert_eq!(names, ["q.gguf", "q.gguf.sahara-surgery.json"]);
    // An existing output is refused without force, replaced with it.
    let e = Checkpoint::Gguf(tiny())
        .surgery_to_gguf("model.gguf", &out, &p, false, None, ChangedType::F32)
        .unwrap_err();
    assert!(matches!(e, sahara::Error::OutputNotEmpty { .. }), "{e}");
    Checkpoint::Gguf(tiny())
        .surgery_to_gguf("model.gguf", &out, &p, true, None, ChangedType::F16)
        .unwrap();
    assert_eq!(Parsed::read(&out).string(keys::CHANGED_TYPE), "F16");
}

#[test]
fn q_scale_in_f16() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q16.gguf");
    let p = plan(&[(1, 0)], Target::Q, Op::Scale(0.0));
    let r = run(&tiny(), &out, &p, ChangedType::F16);
    check_output(
        &tiny(),
        &out,
        &p,
        ChangedType::F16,
        &r,
        &["blk.1.attn_q.weight"],
    );
}

#[test]
fn k_scale_and_mean_write_verified_ggufs() {
    let tmp = tempfile::tempdir().unwrap();
    // Query heads 1 and 2 of layer 0 lie in key/value heads 0 and 1; layer 1's attn_k is F16.
    let out = tmp.path().join("k.gguf");
    let p = plan(&[(0, 1), (0, 2), (1, 3)], Target::K, Op::Scale(0.5));
    let r = run(&tiny(), &out, &p, ChangedType::F32);
    check_output(
        &tiny(),
        &out,
        &p,
        ChangedType::F32,
        &r,
        &["blk.0.attn_k.weight", "blk.1.attn_k.weight"],
    );
    assert_eq!(
        r.affected_heads,
        vec![(0, 0), (0, 1), (0, 2), (0, 3), (1, 2), (1, 3)]
    );
    let out = tmp.path().join("k-mean.gguf");
    let p = plan(&[(0, 1)], Target::K, Op::Mean);
    let r = run(&tiny(), &out, &p, ChangedType::F32);
    check_output(
        &tiny(),
        &out,
        &p,
        ChangedType::F32,
        &r,
        &["blk.0.attn_k.weight"],
    );
    let out = tmp.path().join("q-mean.gguf");
    let p = plan(&[(1, 2)], Target::Q, Op::Mean);
    let r = run(&tiny(), &out, &p, ChangedType::F32);
    check_output(
        &tiny(),
        &out,
        &p,
        ChangedType::F32,
        &r,
        &["blk.1.attn_q.weight"],
    );
}

#[test]
fn v_scale_writes_a_verified_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("v.gguf");
    let p = plan(&[(0, 2), (1, 0)], Target::Z, Op::Scale(0.0));
    let r = run(&tiny(), &out, &p, ChangedType::F32);
    // Q8_0 and Q5_1 output projections: the head's columns.
    check_output(
        &tiny(),
        &out,
        &p,
        ChangedType::F32,
        &r,
        &["blk.0.attn_output.weight", "blk.1.attn_output.weight"],
    );
    // Mean on v does not fold; nothing is written.
    let out = tmp.path().join("v-mean.gguf");
    let e = Checkpoint::Gguf(tiny())
        .surgery_to_gguf(
            "model.gguf",
            &out,
            &plan(&[(0, 2)], Target::Z, Op::Mean),
            false,
            None,
            ChangedType::F32,
        )
        .unwrap_err();
    assert!(e.to_string().contains("mean on target v"), "{e}");
    assert!(!out.exists());
}

#[test]
fn a_qwen2_source_with_biases_and_alignment_64_keeps_them() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("qwen2.gguf");
    qwen2_variant(&src);
    let m = LoadedModel::load(src.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    assert!(m.cfg().qkv_bias);
    drop(m);
    let out = tmp.path().join("q.gguf");
    let p = plan(&[(0, 1), (1, 3)], Target::Q, Op::Scale(0.25));
    let r = run(&src, &out, &p, ChangedType::F32);
    check_output(
        &src,
        &out,
        &p,
        ChangedType::F32,
        &r,
        &[
            "blk.0.attn_q.weight",
            "blk.0.attn_q.bias",
            "blk.1.attn_q.weight",
            "blk.1.attn_q.bias",
        ],
    );
    assert_eq!(alignment(&Parsed::read(&out)), 64);
    let out = tmp.path().join("k.gguf");
    let p = plan(&[(1, 0)], Target::K, Op::Mean);
    let r = run(&src, &out, &p, ChangedType::F16);
    check_output(
        &src,
        &out,
        &p,
        ChangedType::F16,
        &r,
        &["blk.1.attn_k.weight", "blk.1.attn_k.bias"],
    );
}

#[test]
fn gguf_output_from_a_folder_source_or_onto_its_source_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("folder");
    sahara::checkpoint::random::write_random_model(
        &dir,
        &sahara::checkpoint::random::RandomModel::tiny("LlamaForCausalLM"),
    )
    .unwrap();
    let out = tmp.path().join("x.gguf");
    let p = plan(&[(0, 1)], Target::Q, Op::Scale(0.0));
    let e = Checkpoint::Folder(dir)
        .surgery_to_gguf("folder", &out, &p, false, None, ChangedType::F32)
        .unwrap_err();
    assert!(
        matches!(
            e,
            sahara::Error::Conflict {
                setting: sahara::error::Setting::Output,
                ..
            }
        ),
        "{e}"
    );
    assert!(!out.exists());
    // The source itself, even with force.
    let src = tmp.path().join("src.gguf");
    std::fs::copy(tiny(), &src).unwrap();
    let e = Checkpoint::Gguf(src.clone())
        .surgery_to_gguf("src.gguf", &src, &p, true, None, ChangedType::F32)
        .unwrap_err();
    assert!(matches!(e, sahara::Error::OutputIsSource { .. }), "{e}");
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(tiny()).unwrap());
}

#[test]
fn smollm2_gguf_surgery_keeps_its_q4_1_tensors() {
    let Some(src) = smollm2_path() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smollm2-ablated.gguf");
    let p = plan(&[(3, 1), (10, 4)], Target::Q, Op::Scale(0.0));
    let r = run(&src, &out, &p, ChangedType::F32);
    check_output(
        &src,
        &out,
        &p,
        ChangedType::F32,
        &r,
        &["blk.3.attn_q.weight", "blk.10.attn_q.weight"],
    );
    let a = Parsed::read(&src);
    let types: HashMap<GgmlDType, usize> =
        a.content
            .tensor_infos
            .values()
            .fold(HashMap::new(), |mut m, i| {
                *m.entry(i.ggml_dtype).or_default() += 1;
                m
            });
    assert!(types.contains_key(&GgmlDType::Q4_1), "{types:?}");
    eprintln!(
        "smollm2: {} tensors, verify relative difference {:.2e}",
        a.content.tensor_infos.len(),
        r.verify_relative_difference
    );
}

#[test]
fn gemma3_gguf_surgery_keeps_its_quantized_tensors_and_norms() {
    let Some(src) = common::gemma3_path() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // One key/value head: k with ε = 0 (all Gemma 3 folds of q/k) ablates whole layers' keys.
    let out = tmp.path().join("gemma3-k.gguf");
    let p = plan(&[(3, 0), (11, 2)], Target::K, Op::Scale(0.0));
    let r = run(&src, &out, &p, ChangedType::F16);
    check_output(
        &src,
        &out,
        &p,
        ChangedType::F16,
        &r,
        &["blk.3.attn_k.weight", "blk.11.attn_k.weight"],
    );
    // A scale of a query before Gemma 3's per-head norm does not fold: refused, nothing written.
    let out = tmp.path().join("gemma3-q.gguf");
    let e = Checkpoint::Gguf(src.clone())
        .surgery_to_gguf(
            "g.gguf",
            &out,
            &plan(&[(1, 1)], Target::Q, Op::Scale(0.5)),
            false,
            None,
            ChangedType::F32,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("Only epsilon 0 folds exactly"), "{e}");
    assert!(!out.exists());
}
