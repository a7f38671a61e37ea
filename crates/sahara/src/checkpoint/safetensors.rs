//! Memory-mapped safetensors weights, single-file or sharded, read once and checked by name,
//! shape and dtype before they become tensors.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, TensorInfo};
use safetensors::SafeTensors;

use crate::error::{Error, Result};

/// One memory-mapped safetensors file and its parsed header.
pub struct WeightFile {
    pub path: PathBuf,
    mmap: Mmap,
    /// Length of the JSON header; tensor data starts at `8 + header_len`.
    header_len: usize,
    pub tensors: HashMap<String, TensorInfo>,
}

impl WeightFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the file is opened read-only and not modified while mapped by this process.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                message: describe_safetensors_error(&e),
            })?;
        let tensors = metadata
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        Ok(WeightFile {
            path: path.to_path_buf(),
            mmap,
            header_len,
            tensors,
        })
    }

    /// The whole file's bytes.
    pub fn bytes_all(&self) -> &[u8] {
        &self.mmap
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = 8 + self.header_len;
        &self.mmap[start + info.data_offsets.0..start + info.data_offsets.1]
    }

    /// Tells the kernel that a tensor's pages will not be read again soon, so that a model
    /// copied into owned memory does not also stay resident through the mapping (peak
    /// memory stays near one copy of the weights).
    pub fn release(&self, info: &TensorInfo) {
        #[cfg(unix)]
        {
            let start = 8 + self.header_len + info.data_offsets.0;
            let page = 4096;
            let aligned = start / page * page;
            let len = 8 + self.header_len + info.data_offsets.1 - aligned;
            // SAFETY: the mapping is private and read-only; no slice of this range is alive
            // (the caller has finished copying it), and later reads fault the pages back in
            // from the file.
            let _ = unsafe {
                self.mmap
                    .unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, aligned, len)
            };
        }
    }

    /// The `__metadata__` entries of the header.
    pub fn metadata(&self) -> Option<HashMap<String, String>> {
        SafeTensors::read_metadata(&self.mmap)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
    }
}

fn describe_safetensors_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            "the file is shorter or longer than its header says (truncated?)".into()
        }
        E::HeaderTooSmall | E::InvalidHeaderLength => "the header is truncated".into(),
        other => other.to_string(),
    }
}

/// The `.safetensors` files of a folder, in name order.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    names.sort();
    Ok(names)
}

/// Where the decoder's tensors come from, by their Hugging Face names: safetensors files
/// ([`Weights`]) or another checkpoint format mapped onto those names.
pub trait TensorSource {
    /// Whether a tensor of that name exists.
    fn contains(&self, name: &str) -> bool;
    /// Loads a tensor, checking its shape, converted to `dtype` on `device`.
    fn load(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor>;
    /// The float dtype a tensor is stored in, where the source keeps one (safetensors);
    /// `None` where it is dequantized or unknown.
    fn stored_dtype(&self, _name: &str) -> Option<DType> {
        None
    }
    /// Loads a projection's weight: dense as [`TensorSource::load`] loads it, unless the
    /// source keeps its weights quantized.
    fn load_weight(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<crate::model::decoder::Weight> {
        Ok(crate::model::decoder::Weight::Dense(
            self.load(name, shape, dtype, device)?,
        ))
    }
}

impl TensorSource for Weights {
    fn contains(&self, name: &str) -> bool {
        Weights::contains(self, name)
    }
    fn load(&self, name: &str, shape: &[usize], dtype: DType, device: &Device) -> Result<Tensor> {
        Weights::load(self, name, shape, dtype, device)
    }
    fn stored_dtype(&self, name: &str) -> Option<DType> {
        self.locate(name)
            .ok()
            .and_then(|(_, info)| candle_dtype(info.dtype))
    }
}

/// The decoder's name of a stored tensor: a multimodal checkpoint keeps its language model
/// under `language_model.model.*` and `language_model.lm_head.*` (hub files) or
/// `model.language_model.*` (saved by transformers 5), which read as `model.*` and
/// `lm_head.*`; other names are their own.
pub fn decoder_name(stored: &str) -> String {
    for (prefix, to) in [
        ("language_model.model.", "model."),
        ("model.language_model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ] {
        if let Some(rest) = stored.strip_prefix(prefix) {
            return format!("{to}{rest}");
        }
    }
    stored.to_string()
}

/// All weight files of a model folder, by tensor name.
pub struct Weights {
    pub dir: PathBuf,
    pub files: Vec<WeightFile>,
    /// Tensor name, as the decoder names it, to (index in `files`, name stored there).
    index: HashMap<String, (usize, String)>,
    /// Whether the files come from `model.safetensors.index.json`.
    pub sharded: bool,
}

impl Weights {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let (paths, sharded) = if index_path.exists() {
            let text =
                std::fs::read_to_string(&index_path).map_err(|e| Error::io(&index_path, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| Error::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::config(&index_path, "no `weight_map` object"))?;
            let mut names: Vec<String> = Vec::new();
            for f in map.values() {
                let f = f.as_str().ok_or_else(|| {
                    Error::config(&index_path, "weight_map values must be file names")
                })?;
                // A shard lies inside the model folder: no absolute path, no `..`.
                let inside = !f.is_empty()
                    && Path::new(f).components().all(|c| {
                        matches!(
                            c,
                            std::path::Component::Normal(_) | std::path::Component::CurDir
                        )
                    });
                if !inside {
                    return Err(Error::config(
                        &index_path,
                        format!(
                            "weight_map names {f:?}, which is not a file inside the model folder"
                        ),
                    ));
                }
                if !names.iter().any(|n| n == f) {
                    names.push(f.to_string());
                }
            }
            (
                names.into_iter().map(|n| dir.join(n)).collect::<Vec<_>>(),
                true,
            )
        } else if single.exists() {
            (vec![single], false)
        } else {
            return Err(Error::config(
                dir,
                "no model.safetensors or model.safetensors.index.json in the model folder",
            ));
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = WeightFile::open(p)?;
            for name in f.tensors.keys() {
                let key = decoder_name(name);
                if let Some((_, other)) = index.insert(key.clone(), (i, name.clone())) {
                    if other != *name {
                        return Err(Error::config(
                            p,
                            format!(
                                "tensors {other:?} and {name:?} both hold the decoder's {key:?}"
                            ),
                        ));
                    }
                }
            }
            files.push(f);
        }
        Ok(Weights {
            dir: dir.to_path_buf(),
            files,
            index,
            sharded,
        })
    }

    /// Whether a tensor of that name exists, stored as it is or in MXFP4 ([`super::mxfp4`]).
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name) || self.mxfp4_parts(name).is_some()
    }

    /// The blocks and scales of a tensor stored in MXFP4 under `{name}_blocks` and
    /// `{name}_scales` (bytes), where it is not stored as itself.
    fn mxfp4_parts(&self, name: &str) -> Option<(String, String)> {
        if self.index.contains_key(name) {
            return None;
        }
        let (blocks, scales) = super::mxfp4::parts(name);
        (self.index.contains_key(&blocks) && self.index.contains_key(&scales))
            .then_some((blocks, scales))
    }

    /// The file holding a tensor and its header entry.
    pub fn locate(&self, name: &str) -> Result<(&WeightFile, &TensorInfo)> {
        let (i, stored) = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            dir: self.dir.clone(),
        })?;
        let f = &self.files[*i];
        Ok((f, &f.tensors[stored]))
    }

    /// Loads a tensor, checking its shape, converted to `dtype` on `device`.
    pub fn load(
        &self,
        name: &str,
        shape: &[usize],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        if let Some((blocks, scales)) = self.mxfp4_parts(name) {
            let t = self.load_mxfp4(name, &blocks, &scales, dtype, device)?;
            if t.dims() != shape {
                return Err(Error::TensorShape {
                    name: name.to_string(),
                    path: self.locate(&blocks)?.0.path.clone(),
                    found: t.dims().to_vec(),
                    expected: shape.to_vec(),
                });
            }
            return Ok(t);
        }
        let (file, info) = self.locate(name)?;
        if info.shape != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                path: file.path.clone(),
                found: info.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        let src = candle_dtype(info.dtype).ok_or_else(|| Error::TensorDtype {
            name: name.to_string(),
            path: file.path.clone(),
            found: format!("{:?}", info.dtype),
        })?;
        let t = Tensor::from_raw_buffer(file.bytes(info), src, shape, &Device::Cpu)?;
        file.release(info);
        let t = if src == dtype { t } else { t.to_dtype(dtype)? };
        Ok(t.to_device(device)?)
    }
}

impl Weights {
    /// A tensor dequantized from its MXFP4 blocks and scales, both stored as bytes.
    fn load_mxfp4(
        &self,
        name: &str,
        blocks: &str,
        scales: &str,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let bytes = |part: &str| -> Result<(&WeightFile, &TensorInfo)> {
            let (file, info) = self.locate(part)?;
            if info.dtype != StDtype::U8 {
                return Err(Error::TensorDtype {
                    name: part.to_string(),
                    path: file.path.clone(),
                    found: format!("{:?} (MXFP4 blocks and scales are U8)", info.dtype),
                });
            }
            Ok((file, info))
        };
        let (bf, bi) = bytes(blocks)?;
        let (sf, si) = bytes(scales)?;
        let t = super::mxfp4::dequantize_tensor(
            name,
            (bf.bytes(bi), &bi.shape),
            (sf.bytes(si), &si.shape),
            dtype,
            device,
        )?;
        bf.release(bi);
        sf.release(si);
        Ok(t)
    }
}

/// The candle dtype of a safetensors float dtype the decoder reads; `None` for the others.
pub fn candle_dtype(d: StDtype) -> Option<DType> {
    match d {
        StDtype::F32 => Some(DType::F32),
        StDtype::F16 => Some(DType::F16),
        StDtype::BF16 => Some(DType::BF16),
        StDtype::F64 => Some(DType::F64),
        _ => None,
    }
}

/// Writes float32 tensors, `(name, shape, little-endian bytes)`, as one safetensors file with
/// the `{"format": "pt"}` metadata transformers expects.
pub fn write_f32_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<u8>)]) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        tensors
            .iter()
            .map(|(n, s, b)| {
                let view = safetensors::tensor::TensorView::new(StDtype::F32, s.clone(), b)
                    .map_err(|e| Error::Write {
                        path: path.to_path_buf(),
                        source: std::io::Error::other(format!("tensor {n}: {e}")),
                    })?;
                Ok((n.clone(), view))
            })
            .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| Error::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}
