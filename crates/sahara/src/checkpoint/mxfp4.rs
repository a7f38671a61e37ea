//! MXFP4, the block format GPT-OSS's released checkpoints store their experts in: a tensor
//! `X` of shape (E, in, out) is kept as `X_blocks`, (E, out, in/32, 16) bytes, each byte two
//! FP4 (E2M1) codes, the low nibble first, and `X_scales`, (E, out, in/32) bytes, one
//! power-of-two exponent (biased by 127) per block of 32 values. Dequantized at load into the
//! (E, in, out) tensor transformers' MXFP4 integration makes of them
//! (`_convert_moe_packed_tensors`): every FP4 value and power of two is exact in float32.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The 16 values of an E2M1 code (sign bit 3).
pub const FP4_VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// The names of the two tensors that hold `name` in MXFP4.
pub fn parts(name: &str) -> (String, String) {
    (format!("{name}_blocks"), format!("{name}_scales"))
}

/// The (E, in, out) values of blocks (E, out, G, 16) and scales (E, out, G), as f32 in
/// row-major order; `name` names the tensor in errors.
pub fn dequantize(
    name: &str,
    blocks: &[u8],
    blocks_shape: &[usize],
    scales: &[u8],
    scales_shape: &[usize],
) -> Result<(Vec<f32>, [usize; 3])> {
    let bad = |why: String| Error::InvalidArgument(format!("MXFP4 tensor {name}: {why}"));
    let &[e, out, g, 16] = blocks_shape else {
        return Err(bad(format!(
            "blocks of shape {blocks_shape:?}; expected (experts, rows, blocks, 16)"
        )));
    };
    if scales_shape != [e, out, g] {
        return Err(bad(format!(
            "scales of shape {scales_shape:?} for blocks of shape {blocks_shape:?}"
        )));
    }
    if blocks.len() != e * out * g * 16 || scales.len() != e * out * g {
        return Err(bad("byte counts do not match the shapes".into()));
    }
    let inp = g * 32;
    let mut values = vec![0f32; e * inp * out];
    for x in 0..e {
        for r in 0..out {
            for b in 0..g {
                let block = (x * out + r) * g + b;
                let scale = 2f32.powi(scales[block] as i32 - 127);
                for (j, &byte) in blocks[block * 16..(block + 1) * 16].iter().enumerate() {
                    // Column c of row r of the (out, in) matrix, stored transposed at (c, r).
                    let c = b * 32 + 2 * j;
                    let at = |c: usize| (x * inp + c) * out + r;
                    values[at(c)] = FP4_VALUES[(byte & 0x0f) as usize] * scale;
                    values[at(c + 1)] = FP4_VALUES[(byte >> 4) as usize] * scale;
                }
            }
        }
    }
    Ok((values, [e, inp, out]))
}

/// [`dequantize`] as a tensor in `dtype` on `device`.
pub fn dequantize_tensor(
    name: &str,
    (blocks, blocks_shape): (&[u8], &[usize]),
    (scales, scales_shape): (&[u8], &[usize]),
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let (values, shape) = dequantize(name, blocks, blocks_shape, scales, scales_shape)?;
    Ok(Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_scales_dequantize_low_nibble_first_into_the_transposed_layout() {
        // One expert, two rows of one block each. Row 0: bytes 0x21 (codes 1 then 2: 0.5, 1.0)
        // then zeros, scale 2^1; row 1: byte 0x9f (codes 15 then 9: -6, -0.5), scale 2^-2.
        let mut blocks = vec![0u8; 2 * 16];
        blocks[0] = 0x21;
        blocks[16] = 0x9f;
        let scales = [128u8, 125];
        let (v, shape) = dequantize("w", &blocks, &[1, 2, 1, 16], &scales, &[1, 2, 1]).unwrap();
        assert_eq!(shape, [1, 32, 2]);
        // (in, out): value (c, r) at c * 2 + r.
        assert_eq!((v[0], v[2]), (1.0, 2.0));
        assert_eq!((v[1], v[3]), (-1.5, -0.125));
        assert!(v[4..].iter().all(|x| *x == 0.0));
    }

    #[test]
    fn mismatched_shapes_are_refused_with_the_tensor_named() {
        let e = dequantize("model.x", &[0; 32], &[1, 2, 1, 16], &[0; 3], &[1, 3, 1]).unwrap_err();
        assert!(e.to_string().contains("model.x"), "{e}");
        let e = dequantize("y", &[0; 32], &[2, 1, 16], &[0; 2], &[2, 1]).unwrap_err();
        assert!(e.to_string().contains("(experts, rows, blocks, 16)"), "{e}");
    }
}
