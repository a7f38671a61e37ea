//! Helpers shared by the integration tests (each test crate uses some of them).
#![allow(dead_code)]

use candle_core::Tensor;

/// max |a - b| over all elements of two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a - b| / max |a|.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let s = a
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    max_abs_diff(a, b) / s
}
