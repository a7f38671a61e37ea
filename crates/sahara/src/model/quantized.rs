//! Weights kept in a GGUF block format (`--keep-quantized` in the CLI): a 70B model in Q4_K
//! takes about 40 GB instead of 280 GB in float32. Every row of a quantized matrix is a
//! whole number of blocks, so the operations the decoder needs on weights are operations on
//! rows of bytes: llama.cpp's query/key row order is undone by moving rows, and the q, k, v
//! (and gate, up) projections are stacked by appending rows. Interventions act on
//! activations, so ablations work on these weights unchanged.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device};

use crate::error::{Error, Result};
use crate::model::decoder::{Decoder, Weight};

/// Bytes of one row of a (rows, cols) matrix in `dtype`.
pub(crate) fn row_bytes(dtype: GgmlDType, cols: usize) -> Result<usize> {
    let block = dtype.block_size();
    if !cols.is_multiple_of(block) {
        return Err(Error::InvalidArgument(format!(
            "a row of {cols} values is not a whole number of {dtype:?} blocks of {block}"
        )));
    }
    Ok(cols / block * dtype.type_size())
}

/// A (rows, cols) matrix in `dtype` from its bytes, on `device`.
pub fn from_bytes(
    bytes: &[u8],
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    device: &Device,
) -> Result<QTensor> {
    let want = rows * row_bytes(dtype, cols)?;
    if bytes.len() != want {
        return Err(Error::InvalidArgument(format!(
            "{} bytes for a ({rows}, {cols}) {dtype:?} matrix of {want}",
            bytes.len()
        )));
    }
    let storage = QStorage::from_data(Cow::Borrowed(bytes), device, dtype)?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

/// The rows of a (rows, cols) matrix's bytes in a new order: row `i` of the result is row
/// `source(i)` of `bytes`.
pub fn permute_rows(
    bytes: &[u8],
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
    source: impl Fn(usize) -> usize,
) -> Result<Vec<u8>> {
    let rb = row_bytes(dtype, cols)?;
    let mut out = Vec::with_capacity(bytes.len());
    for i in 0..rows {
        let j = source(i);
        out.extend_from_slice(&bytes[j * rb..(j + 1) * rb]);
    }
    Ok(out)
}

/// The source row of row `i` when undoing llama.cpp's query/key order for `n_head` heads of
/// `rows / n_head` rows: the inverse of `w.reshape(n_head, 2, D/2, in).swapaxes(1, 2)`, the
/// rule [`crate::checkpoint::gguf::unpermute_rows`] applies to dense values.
pub fn unpermuted_source(rows: usize, n_head: usize) -> Result<impl Fn(usize) -> usize> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return Err(Error::InvalidArgument(format!(
            "cannot un-permute {rows} rows into {n_head} heads"
        )));
    }
    let half = rows / n_head / 2;
    Ok(move |i: usize| {
        let (h, r) = (i / (2 * half), i % (2 * half));
        let (j, k) = (r / half, r % half);
        h * 2 * half + k * 2 + j
    })
}

/// Stacks quantized parts along the output where they can be: neighbours in the same block
/// format become one matrix (their rows appended), so that one product computes them.
pub fn merge_parts(parts: Vec<QMatMul>) -> Result<Vec<QMatMul>> {
    let mut out: Vec<QMatMul> = Vec::new();
    for p in parts {
        let merged = match (out.last(), &p) {
            (Some(QMatMul::QTensor(a)), QMatMul::QTensor(b))
                if a.dtype() == b.dtype() && a.shape().dims().get(1) == b.shape().dims().get(1) =>
            {
                let cols = a.shape().dims()[1];
                let rows = a.shape().dims()[0] + b.shape().dims()[0];
                let mut bytes = a.data()?.into_owned();
                bytes.extend_from_slice(&b.data()?);
                Some(from_bytes(&bytes, a.dtype(), rows, cols, &a.device())?)
            }
            _ => None,
        };
        match merged {
            Some(m) => {
                out.pop();
                out.push(QMatMul::QTensor(Arc::new(m)));
            }
            None => out.push(p),
        }
    }
    Ok(out)
}

/// A GGUF block format by its llama.cpp name (`q4_0`, `q8_0`, `q4_k`, …).
pub fn parse_format(name: &str) -> Result<GgmlDType> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q5_0" => GgmlDType::Q5_0,
        "q5_1" => GgmlDType::Q5_1,
        "q8_0" => GgmlDType::Q8_0,
        "q2_k" => GgmlDType::Q2K,
        "q3_k" => GgmlDType::Q3K,
        "q4_k" => GgmlDType::Q4K,
        "q5_k" => GgmlDType::Q5K,
        "q6_k" => GgmlDType::Q6K,
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown quantized format {other:?}; expected q4_0, q4_1, q5_0, q5_1, q8_0, q2_k, q3_k, q4_k, q5_k or q6_k"
            )))
        }
    })
}

/// Quantizes every projection of `model` to `format` with candle's quantizer, in place
/// (embeddings, norms and the unembedding stay dense): any model, not only a GGUF file, can
/// then run on quantized weights. Rows must be whole blocks (K-quants: multiples of 256).
pub fn quantize_projections(model: &mut Decoder, format: GgmlDType) -> Result<()> {
    let device = model.device.clone();
    for layer in &mut model.layers {
        let projections = [&mut layer.attn.qkv_proj, &mut layer.attn.o_proj]
            .into_iter()
            .chain(layer.mlp.mlp_projections_mut());
        for p in projections {
            if let Weight::Dense(w) = &p.weight {
                // (out, in) row-major in f32 on the host: what candle's quantizer reads.
                let (_, cols) = w.dims2()?;
                row_bytes(format, cols)?;
                let w = w
                    .to_dtype(DType::F32)?
                    .to_device(&Device::Cpu)?
                    .contiguous()?;
                let q = QTensor::quantize_onto(&w, format, &device)?;
                p.weight = Weight::Quantized(vec![QMatMul::from_qtensor(q)?]);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Module, Tensor};

    fn matrix(rows: usize, cols: usize, seed: f32) -> Tensor {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| (i as f32 * 0.37 + seed).sin() * 2.0)
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn moving_rows_of_bytes_moves_the_dequantized_rows() {
        let w = matrix(8, 64, 0.5);
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let bytes = q.data().unwrap().into_owned();
        let source = unpermuted_source(8, 2).unwrap();
        let moved = permute_rows(&bytes, GgmlDType::Q8_0, 8, 64, &source).unwrap();
        let moved = from_bytes(&moved, GgmlDType::Q8_0, 8, 64, &Device::Cpu).unwrap();
        let want = crate::checkpoint::gguf::unpermute_rows(&q.dequantize(&Device::Cpu).unwrap(), 2)
            .unwrap();
        let got = moved.dequantize(&Device::Cpu).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn parts_of_one_format_merge_and_others_stay_apart() {
        let (a, b, c) = (
            matrix(4, 256, 0.1),
            matrix(6, 256, 0.2),
            matrix(2, 256, 0.3),
        );
        let qa = QTensor::quantize(&a, GgmlDType::Q4K).unwrap();
        let qb = QTensor::quantize(&b, GgmlDType::Q4K).unwrap();
        let qc = QTensor::quantize(&c, GgmlDType::Q6K).unwrap();
        let want: Vec<Tensor> = [&qa, &qb, &qc]
            .iter()
            .map(|q| q.dequantize(&Device::Cpu).unwrap())
            .collect();
        let parts = merge_parts(vec![
            QMatMul::from_qtensor(qa).unwrap(),
            QMatMul::from_qtensor(qb).unwrap(),
            QMatMul::from_qtensor(qc).unwrap(),
        ])
        .unwrap();
        assert_eq!(parts.len(), 2, "the two Q4_K parts merged, Q6_K apart");
        // The merged product equals the products of the parts (the same blocks, the same
        // activation quantization).
        let x = matrix(3, 256, 0.9).to_dtype(DType::F32).unwrap();
        let got = Tensor::cat(
            &parts
                .iter()
                .map(|p| p.forward(&x).unwrap())
                .collect::<Vec<_>>(),
            1,
        )
        .unwrap();
        let dense = Tensor::cat(&want, 0).unwrap();
        let exact = x.matmul(&dense.t().unwrap()).unwrap();
        let err = (&got - &exact)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = exact
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // Against the dequantized weights: within the 8-bit quantization of the activations.
        assert!(err < 0.02 * scale, "{err} of {scale}");
        assert_eq!(got.dims(), &[3, 12]);
    }

    #[test]
    fn quantizing_a_model_keeps_its_outputs_close() {
        use crate::checkpoint::random::{write_random_model, RandomModel};
        let dir = tempfile::tempdir().unwrap();
        let mut spec = RandomModel::tiny("LlamaForCausalLM");
        spec.hidden_size = 256;
        spec.intermediate_size = 256;
        write_random_model(dir.path(), &spec).unwrap();
        let m = crate::LoadedModel::load(dir.path().to_str().unwrap(), DType::F32, &Device::Cpu)
            .unwrap();
        let mut q = m.decoder.clone();
        quantize_projections(&mut q, parse_format("q8_0").unwrap()).unwrap();
        assert!(q.has_quantized_weights() && !m.decoder.has_quantized_weights());
        let batch = crate::Batch::new(&[vec![1, 5, 9, 30]], 0, &Device::Cpu).unwrap();
        let spec = crate::ForwardSpec::logits(crate::Positions::Last);
        let a = m
            .decoder
            .forward(&batch, &spec, None)
            .unwrap()
            .logits
            .unwrap();
        let b = q.forward(&batch, &spec, None).unwrap().logits.unwrap();
        let range = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // The product quantizes activations to 8 bits: close, not equal.
        assert!(d > 0.0 && d < 0.05 * range, "max |Δlogit| {d} of {range}");
        // K-quant blocks of 256 do not divide rows of 64 values: said, not garbled.
        let mut small =
            crate::LoadedModel::load(dir.path().to_str().unwrap(), DType::F32, &Device::Cpu)
                .unwrap()
                .decoder;
        small.layers[0].attn.o_proj.weight =
            Weight::Dense(Tensor::zeros((256, 64), DType::F32, &Device::Cpu).unwrap());
        let e = quantize_projections(&mut small, GgmlDType::Q4K).unwrap_err();
        assert!(e.to_string().contains("whole number of Q4K blocks"), "{e}");
        assert!(parse_format("q9").is_err());
    }
}
