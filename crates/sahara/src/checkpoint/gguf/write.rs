//! Surgery from a GGUF source written as a GGUF file (version 3) with the quantized tensors
//! kept: every tensor the ablation does not change is copied byte for byte in its GGML type,
//! in the source's tensor order and at the source's alignment (`general.alignment`, 32 when
//! absent); the changed ones (those of [`edits`]) are dequantized, edited in Hugging Face row
//! order, put back in GGUF row order (llama.cpp's converter permutes Llama's query/key rows)
//! and written in F32, or F16. Every metadata key/value of the source is copied as it is
//! (re-encoded as version 3 when the source is older), except its own `sahara.surgery.*` and
//! `sahara.version` keys, which the new `sahara.*` keys of the ablation replace (see
//! docs/formats.md).
//!
//! The file is written to a temporary beside the destination, reloaded with sahara's GGUF
//! loader and verified against the in-memory ablation of the source, and renamed into place.
//! Its record (`sahara.surgery/1`, `written_format` "gguf") lies beside it, in
//! `OUT.gguf.sahara-surgery.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::export::Written;
use super::{gguf_err, GgufFile, GgufWeights};
use crate::checkpoint::surgery::{apply_edit, edits, SurgeryPlan, SurgeryReport};
use crate::error::{Error, Result};
use crate::io::fs::{move_file_into_place, staging_file, write_err, write_json};

/// The GGUF metadata keys surgery adds (documented in docs/formats.md).
pub mod keys {
    /// sahara's version (string).
    pub const VERSION: &str = "sahara.version";
    /// The heads ablated, `L:H` strings.
    pub const HEADS: &str = "sahara.surgery.heads";
    /// Every query head the ablation changes (with target k, whole key/value groups).
    pub const AFFECTED: &str = "sahara.surgery.affected_query_heads";
    /// `q`, `k` or `v`.
    pub const TARGET: &str = "sahara.surgery.target";
    /// `scale` or `mean`.
    pub const MODE: &str = "sahara.surgery.mode";
    /// ε (float64), with mode `scale` only.
    pub const EPSILON: &str = "sahara.surgery.epsilon";
    /// The source's fingerprint (as in run records).
    pub const SOURCE_FINGERPRINT: &str = "sahara.surgery.source_fingerprint";
    /// The GGUF names of the tensors rewritten.
    pub const CHANGED_TENSORS: &str = "sahara.surgery.changed_tensors";
    /// The GGML type they are written in: `F32` or `F16`.
    pub const CHANGED_TYPE: &str = "sahara.surgery.changed_type";
    /// Keys of a source that the new ones replace: those starting with this, and [`VERSION`].
    pub const SURGERY_PREFIX: &str = "sahara.surgery.";
}

/// The GGML type the changed tensors are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChangedType {
    #[default]
    F32,
    F16,
}

impl ChangedType {
    /// The GGML type id.
    fn ggml_id(self) -> u32 {
        match self {
            ChangedType::F32 => 0,
            ChangedType::F16 => 1,
        }
    }

    /// llama.cpp's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            ChangedType::F32 => "F32",
            ChangedType::F16 => "F16",
        }
    }

    fn bytes_per_value(self) -> usize {
        match self {
            ChangedType::F32 => 4,
            ChangedType::F16 => 2,
        }
    }

    /// The type a changed tensor of `rank` dimensions is written in: one-dimensional ones
    /// (biases, norms) stay F32, as llama.cpp's converter keeps them.
    fn for_rank(self, rank: usize) -> ChangedType {
        if rank == 1 {
            ChangedType::F32
        } else {
            self
        }
    }

    fn encode(self, values: &[f64]) -> Vec<u8> {
        match self {
            ChangedType::F32 => values
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect(),
            ChangedType::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f64(v).to_le_bytes())
                .collect(),
        }
    }

    /// The verification's tolerance on the relative logit difference (as the folder output's
    /// for its dtypes).
    fn tolerance(self) -> f64 {
        match self {
            ChangedType::F32 => 1e-5,
            ChangedType::F16 => 2e-3,
        }
    }
}

/// Whether an output path names a GGUF file (it ends in `.gguf`, in any case).
pub fn names_gguf_file(out: &Path) -> bool {
    out.extension()
        .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case("gguf"))
}

/// Where the record of a GGUF output lies: `OUT.gguf.sahara-surgery.json`.
pub fn record_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{name}.sahara-surgery.json"))
}

/// A metadata value encoded as GGUF version 3: its type id, then the value.
#[derive(Debug, Clone)]
pub struct Encoded(Vec<u8>);

impl Encoded {
    pub fn string(s: &str) -> Self {
        let mut b = 8u32.to_le_bytes().to_vec();
        put_string(&mut b, s);
        Encoded(b)
    }

    pub fn f64(x: f64) -> Self {
        let mut b = 12u32.to_le_bytes().to_vec();
        b.extend(x.to_le_bytes());
        Encoded(b)
    }

    pub fn strings<S: AsRef<str>>(items: &[S]) -> Self {
        let mut b = 9u32.to_le_bytes().to_vec();
        b.extend(8u32.to_le_bytes());
        b.extend((items.len() as u64).to_le_bytes());
        for s in items {
            put_string(&mut b, s.as_ref());
        }
        Encoded(b)
    }
}

fn put_string(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// The source's header in file order: metadata entries (key, value re-encoded as version 3)
/// and the tensor directory (name, dimensions as stored, innermost first, GGML type id).
struct Header {
    kvs: Vec<(String, Encoded)>,
    tensors: Vec<(String, Vec<u64>, u32)>,
}

/// Reads the header of a file candle's reader accepted (so every read here succeeds; an
/// error is still an error, not a panic).
struct Walker<'a> {
    b: &'a [u8],
    pos: usize,
    v1: bool,
    path: &'a Path,
}

impl Walker<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| gguf_err(self.path, "truncated: the file ends inside the header"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    /// A length or count: 32 bits in version 1, 64 after.
    fn len(&mut self) -> Result<u64> {
        if self.v1 {
            self.u32().map(u64::from)
        } else {
            self.u64()
        }
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    /// Copies a value of type `ty` into `out`, lengths as 64 bits.
    fn value(&mut self, ty: u32, depth: usize, out: &mut Vec<u8>) -> Result<()> {
        let fixed = match ty {
            0 | 1 | 7 => Some(1),
            2 | 3 => Some(2),
            4..=6 => Some(4),
            10..=12 => Some(8),
            _ => None,
        };
        if let Some(n) = fixed {
            out.extend(self.take(n)?);
            return Ok(());
        }
        match ty {
            8 => {
                let n = self.len()? as usize;
                out.extend((n as u64).to_le_bytes());
                out.extend(self.take(n)?);
                Ok(())
            }
            9 if depth < 64 => {
                let inner = self.u32()?;
                let n = self.len()?;
                out.extend(inner.to_le_bytes());
                out.extend(n.to_le_bytes());
                for _ in 0..n {
                    self.value(inner, depth + 1, out)?;
                }
                Ok(())
            }
            other => Err(gguf_err(
                self.path,
                format!("unknown metadata value type {other}"),
            )),
        }
    }
}

fn read_header(g: &GgufFile) -> Result<Header> {
    let mut r = Walker {
        b: &g.mmap[..],
        pos: 4,
        v1: false,
        path: &g.path,
    };
    let version = r.u32()?;
    r.v1 = version == 1;
    let n_tensors = r.len()?;
    let n_kv = r.len()?;
    let mut kvs = Vec::new();
    for _ in 0..n_kv {
        let key = r.string()?;
        let ty = r.u32()?;
        let mut v = ty.to_le_bytes().to_vec();
        r.value(ty, 0, &mut v)?;
        kvs.push((key, Encoded(v)));
    }
    let mut tensors = Vec::new();
    for _ in 0..n_tensors {
        // Trailing NULs dropped, as candle's reader drops them.
        let name = r.string()?.trim_end_matches('\0').to_string();
        let nd = r.u32()?;
        let dims = (0..nd).map(|_| r.len()).collect::<Result<Vec<u64>>>()?;
        let ty = r.u32()?;
        let _offset = r.u64()?;
        tensors.push((name, dims, ty));
    }
    Ok(Header { kvs, tensors })
}

/// Llama's query/key rows from Hugging Face order back to llama.cpp's: the inverse of
/// [`super::unpermute_rows`], `w.reshape(n_head, 2, D/2, inner).swapaxes(1, 2)`, on a
/// row-major (rows, inner) array.
fn permute_rows(values: &[f64], rows: usize, n_head: usize) -> Result<Vec<f64>> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) || !values.len().is_multiple_of(rows) {
        return Err(Error::InvalidArgument(format!(
            "cannot permute {rows} rows into {n_head} heads"
        )));
    }
    let inner = values.len() / rows;
    let d = rows / n_head;
    let half = d / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let to = h * d + i * 2 + j;
                let from = h * d + j * half + i;
                out[to * inner..(to + 1) * inner]
                    .copy_from_slice(&values[from * inner..(from + 1) * inner]);
            }
        }
    }
    Ok(out)
}

/// The tensors `plan` changes, by GGUF name: their Hugging Face name and edit.
fn changed_tensors<'p>(
    g: &GgufFile,
    edits: &'p BTreeMap<String, crate::checkpoint::surgery::Edit>,
) -> Result<BTreeMap<String, (String, &'p crate::checkpoint::surgery::Edit)>> {
    let mut out = BTreeMap::new();
    for (hf, edit) in edits {
        let g_name = g
            .gguf_name(hf)
            .filter(|n| g.content.tensor_infos.contains_key(n))
            .ok_or_else(|| Error::MissingTensor {
                name: hf.clone(),
                dir: g.path.clone(),
            })?;
        out.insert(g_name, (hf.clone(), edit));
    }
    Ok(out)
}

/// Writes `g` with `plan` folded in as a GGUF file at `dst`: unchanged tensors copied, the
/// changed ones in `changed`, the metadata followed by `extra` (which replaces the source's
/// `sahara.surgery.*` and `sahara.version` keys).
pub fn write_gguf(
    g: &GgufFile,
    dst: &Path,
    plan: &SurgeryPlan,
    changed: ChangedType,
    extra: &[(&str, Encoded)],
) -> Result<Written> {
    let cfg = g.config()?;
    let header = read_header(g)?;
    let alignment = g.alignment()? as usize;
    let edits = edits(&cfg, plan);
    let rewrite = changed_tensors(g, &edits)?;
    let weights = GgufWeights::new(g, &cfg);

    let replaced = |k: &str| k.starts_with(keys::SURGERY_PREFIX) || k == keys::VERSION;
    let kvs: Vec<(&str, &Encoded)> = header
        .kvs
        .iter()
        .filter(|(k, _)| !replaced(k))
        .map(|(k, v)| (k.as_str(), v))
        .chain(extra.iter().map(|(k, v)| (*k, v)))
        .collect();

    // The tensor directory: each tensor's size, and its data offset at the alignment.
    let mut infos = Vec::new();
    let mut offset = 0usize;
    let mut seen = BTreeSet::new();
    for (name, dims, ty) in &header.tensors {
        if !seen.insert(name) {
            return Err(gguf_err(
                &g.path,
                format!("tensor `{name}` appears twice in the directory"),
            ));
        }
        let info = g.content.tensor_infos.get(name).ok_or_else(|| {
            gguf_err(
                &g.path,
                format!("tensor `{name}` of the directory was not read"),
            )
        })?;
        let n = info.shape.elem_count();
        let (ty, size) = if rewrite.contains_key(name) {
            let changed = changed.for_rank(info.shape.rank());
            (changed.ggml_id(), n * changed.bytes_per_value())
        } else {
            (
                *ty,
                n / info.ggml_dtype.block_size() * info.ggml_dtype.type_size(),
            )
        };
        infos.push((name, dims, ty, offset, size));
        offset = (offset + size).next_multiple_of(alignment);
    }

    let file = std::fs::File::create(dst).map_err(write_err(dst))?;
    let mut w = Counted {
        w: BufWriter::with_capacity(1 << 20, file),
        n: 0,
        path: dst,
    };
    w.put(b"GGUF")?;
    w.put(&3u32.to_le_bytes())?;
    w.put(&(infos.len() as u64).to_le_bytes())?;
    w.put(&(kvs.len() as u64).to_le_bytes())?;
    let mut s = Vec::new();
    for (k, v) in &kvs {
        s.clear();
        put_string(&mut s, k);
        w.put(&s)?;
        w.put(&v.0)?;
    }
    for (name, dims, ty, offset, _) in &infos {
        s.clear();
        put_string(&mut s, name);
        s.extend((dims.len() as u32).to_le_bytes());
        for d in dims.iter() {
            s.extend(d.to_le_bytes());
        }
        s.extend(ty.to_le_bytes());
        s.extend((*offset as u64).to_le_bytes());
        w.put(&s)?;
    }
    w.pad(alignment)?;
    let data_start = w.n;

    let mut total = 0usize;
    let mut changed_parameters = 0usize;
    let mut changed_names = Vec::new();
    for (name, _, _, offset, size) in &infos {
        let info = &g.content.tensor_infos[*name];
        total += info.shape.elem_count();
        debug_assert_eq!(w.n, data_start + offset);
        if let Some((hf, edit)) = rewrite.get(*name) {
            let t = weights.load_f32(hf)?;
            let shape = t.dims().to_vec();
            let mut values: Vec<f64> = t
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f64::from)
                .collect();
            apply_edit(&mut values, &shape, edit);
            changed_parameters += edit.changed_parameters(&shape);
            // Back into GGUF row order where the loader took the rows out of it.
            let heads = if !g.permuted_qk() {
                None
            } else if hf.contains(".self_attn.q_proj.") {
                Some(cfg.num_heads)
            } else if hf.contains(".self_attn.k_proj.") {
                Some(cfg.num_kv_heads)
            } else {
                None
            };
            if let Some(n) = heads {
                values = permute_rows(&values, shape[0], n)?;
            }
            if g.shifted_norms() && hf.ends_with("norm.weight") {
                // Back to llama.cpp's 1 + w storage of the Gemma families' norms.
                values.iter_mut().for_each(|v| *v += 1.0);
            }
            let bytes = changed.for_rank(shape.len()).encode(&values);
            debug_assert_eq!(bytes.len(), *size);
            w.put(&bytes)?;
            changed_names.push((*name).clone());
        } else {
            let start = g.content.tensor_data_offset as usize + info.offset as usize;
            let bytes = g.mmap.get(start..start + size).ok_or_else(|| {
                gguf_err(
                    &g.path,
                    format!("truncated: tensor `{name}` ends past the end of the file"),
                )
            })?;
            w.put(bytes)?;
        }
        w.pad(alignment)?;
    }
    let file =
        w.w.into_inner()
            .map_err(|e| write_err(dst)(e.into_error()))?;
    file.sync_all().map_err(write_err(dst))?;
    Ok(Written {
        total_parameters: total,
        changed_parameters,
        changed_tensors: changed_names,
    })
}

/// A writer that counts the bytes written (for the alignment padding).
struct Counted<'a, W: Write> {
    w: W,
    n: usize,
    path: &'a Path,
}

impl<W: Write> Counted<'_, W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.w.write_all(b).map_err(write_err(self.path))?;
        self.n += b.len();
        Ok(())
    }
    fn pad(&mut self, alignment: usize) -> Result<()> {
        let zeros = vec![0u8; self.n.next_multiple_of(alignment) - self.n];
        self.put(&zeros)
    }
}

/// Surgery from a GGUF source written as a GGUF file `out` (quantized tensors kept, changed
/// ones in `changed`), verified by reloading it with sahara's GGUF loader against the source
/// with the ablation in memory. `source` names the model for the record; with `force` an
/// existing `out` is replaced.
pub fn surgery_to_gguf(
    src: &Path,
    source: &str,
    out: &Path,
    plan: &SurgeryPlan,
    force: bool,
    changed: ChangedType,
) -> Result<SurgeryReport> {
    let g = GgufFile::open(src)?;
    let cfg = g.config()?;
    plan.validate(&cfg)?;
    if out.exists() && std::fs::canonicalize(out).ok() == std::fs::canonicalize(src).ok() {
        return Err(Error::OutputIsSource {
            path: out.to_path_buf(),
        });
    }
    let (tmp, mut guard) = staging_file(out, force)?;
    let affected = plan.affected_heads(&cfg);
    let heads: Vec<String> = plan
        .heads
        .0
        .iter()
        .map(|(l, h)| format!("{l}:{h}"))
        .collect();
    let affected_s: Vec<String> = affected.iter().map(|(l, h)| format!("{l}:{h}")).collect();
    // In the file's order, as written.
    let edits = edits(&cfg, plan);
    let changing = changed_tensors(&g, &edits)?;
    let changed_names: Vec<String> = read_header(&g)?
        .tensors
        .into_iter()
        .map(|(name, _, _)| name)
        .filter(|n| changing.contains_key(n))
        .collect();
    let mut extra = vec![
        (keys::VERSION, Encoded::string(env!("CARGO_PKG_VERSION"))),
        (keys::HEADS, Encoded::strings(&heads)),
        (keys::AFFECTED, Encoded::strings(&affected_s)),
        (keys::TARGET, Encoded::string(plan.ablation.target.as_str())),
        (keys::MODE, Encoded::string(plan.ablation.op.mode_str())),
    ];
    if let Some(e) = plan.ablation.op.epsilon() {
        extra.push((keys::EPSILON, Encoded::f64(e)));
    }
    extra.extend([
        (keys::SOURCE_FINGERPRINT, Encoded::string(&g.fingerprint())),
        (keys::CHANGED_TENSORS, Encoded::strings(&changed_names)),
        (keys::CHANGED_TYPE, Encoded::string(changed.name())),
    ]);
    let written = write_gguf(&g, &tmp, plan, changed, &extra)?;

    // Verify: the written file's logits equal the source's with the ablation in memory.
    let rel = super::export::verify_written(src, source, &tmp, plan, changed.tolerance())?;

    let record = super::export::gguf_record(&g, plan, source, &affected, &written, rel, "gguf");
    drop(g);
    // The record first, then the file: a failed rename takes the record away again.
    let rec = record_path(out);
    write_json(&rec, &record)?;
    if let Err(e) = move_file_into_place(&tmp, out, &mut guard) {
        let _ = std::fs::remove_file(&rec);
        return Err(e);
    }
    Ok(SurgeryReport {
        out: out.to_path_buf(),
        changed_tensors: written.changed_tensors,
        changed_parameters: written.changed_parameters,
        total_parameters: written.total_parameters,
        verify_relative_difference: rel,
        affected_heads: affected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn permuting_rows_undoes_the_loaders_unpermute() {
        let (rows, inner, heads) = (24, 3, 3);
        let gguf: Vec<f32> = (0..rows * inner).map(|x| x as f32).collect();
        let t = Tensor::from_vec(gguf.clone(), (rows, inner), &Device::Cpu).unwrap();
        let hf: Vec<f64> = super::super::unpermute_rows(&t, heads)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        assert_ne!(hf, gguf.iter().map(|&x| x as f64).collect::<Vec<_>>());
        let back = permute_rows(&hf, rows, heads).unwrap();
        assert_eq!(back, gguf.iter().map(|&x| x as f64).collect::<Vec<_>>());
        // A bias: one value per row.
        let b: Vec<f64> = (0..rows).map(|x| x as f64).collect();
        let tb = Tensor::from_vec(
            b.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            rows,
            &Device::Cpu,
        )
        .unwrap();
        let hb: Vec<f64> = super::super::unpermute_rows(&tb, heads)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        assert_eq!(permute_rows(&hb, rows, heads).unwrap(), b);
    }

    #[test]
    fn gguf_outputs_are_told_by_their_extension() {
        assert!(names_gguf_file(Path::new("a/b.gguf")));
        assert!(names_gguf_file(Path::new("B.GGUF")));
        assert!(!names_gguf_file(Path::new("out")));
        assert!(!names_gguf_file(Path::new("out.gguf.d/x")));
        assert_eq!(
            record_path(Path::new("d/m.gguf")),
            Path::new("d/m.gguf.sahara-surgery.json")
        );
    }
}
