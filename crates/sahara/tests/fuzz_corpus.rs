//! Replays the committed fuzz corpus (`fuzz/corpus/NAME/`) and the inputs of fixed crashes
//! (`fuzz/regressions/NAME/`) through the fuzz targets of `sahara::fuzz_targets`: any input
//! that panics fails the test, on stable Rust, without cargo-fuzz or libFuzzer. See
//! `fuzz/README.md` for running the fuzzer itself.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of `fuzz/KIND/NAME/`, in name order; none when the folder is absent.
fn inputs(kind: &str, name: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable folder entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Feeds every corpus and regression input of `name` to `target`, naming the input that
/// panics; the corpus must not be empty.
fn replay(name: &str, target: fn(&[u8])) {
    let corpus = inputs("corpus", name);
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{name}/ holds no inputs: the replay would test nothing"
    );
    for path in corpus.iter().chain(&inputs("regressions", name)) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let run = std::panic::catch_unwind(|| target(&data));
        assert!(
            run.is_ok(),
            "fuzz target {name} panics on {}",
            path.display()
        );
    }
}

#[test]
fn config_corpus() {
    replay("config", sahara::fuzz_targets::config);
}

#[test]
fn safetensors_corpus() {
    replay("safetensors", sahara::fuzz_targets::safetensors);
}

#[test]
fn gguf_corpus() {
    replay("gguf", sahara::fuzz_targets::gguf);
}

#[test]
fn data_corpus() {
    replay("data", sahara::fuzz_targets::data);
}

#[test]
fn heads_file_corpus() {
    replay("heads_file", sahara::fuzz_targets::heads_file);
}

#[test]
fn chat_template_corpus() {
    replay("chat_template", sahara::fuzz_targets::chat_template);
}

#[test]
fn run_record_corpus() {
    replay("run_record", sahara::fuzz_targets::run_record);
}

// Each input of fuzz/regressions/ once crashed a target; replayed above with the rest, and
// here by name with what sahara now says instead.

/// The bytes of `fuzz/regressions/NAME/FILE`, which must exist.
fn regression(name: &str, file: &str) -> Vec<u8> {
    let path = fuzz_dir().join("regressions").join(name).join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A GGUF regression written to a file of its own.
fn gguf_file(file: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, regression("gguf", file)).unwrap();
    (dir, path)
}

fn template(file: &str) -> std::result::Result<String, String> {
    let data = regression("chat_template", file);
    let nul = data.iter().position(|&b| b == 0).unwrap();
    let source = std::str::from_utf8(&data[..nul]).unwrap();
    let t = sahara::io::prompt::ChatTemplate::new(source, vec![]).map_err(|e| e.to_string())?;
    t.render(&[sahara::io::prompt::Message::new("user", "hi")], true)
        .map_err(|e| e.to_string())
}

fn config(file: &str) -> String {
    let data = regression("config", file);
    let text = std::str::from_utf8(&data).unwrap();
    sahara::ModelConfig::parse(Path::new("config.json"), text)
        .unwrap_err()
        .to_string()
}

/// `general.alignment` 0: candle's reader divided by it (a panic).
#[test]
fn regression_gguf_alignment_zero() {
    let (_dir, path) = gguf_file("alignment-zero");
    let e = sahara::checkpoint::gguf::GgufFile::open(&path)
        .err()
        .unwrap();
    assert!(e.to_string().contains("`general.alignment` is 0"), "{e}");
}

/// `token_embd.weight` without dimensions: indexing its first dimension panicked.
#[test]
fn regression_gguf_embedding_without_dimensions() {
    let (_dir, path) = gguf_file("embedding-without-dimensions");
    let f = sahara::checkpoint::gguf::GgufFile::open(&path).unwrap();
    let e = f.hf_config().unwrap_err();
    assert!(e.to_string().contains("has no dimensions"), "{e}");
}

/// Dimensions whose product passes 2^64: counting the elements overflowed.
#[test]
fn regression_gguf_elements_overflow() {
    let (_dir, path) = gguf_file("elements-overflow");
    let e = sahara::checkpoint::gguf::GgufFile::open(&path)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("more elements than can be counted"),
        "{e}"
    );
}

/// 2^32 layers: resolving laid out a per-layer window list of 64 GB (out of memory).
#[test]
fn regression_config_layers_2_to_the_32() {
    let e = config("layers-2-to-the-32");
    assert!(
        e.contains("num_hidden_layers (4294967296) is more than 65536"),
        "{e}"
    );
}

/// Sizes whose parameter count passes 2^64: counting them overflowed.
#[test]
fn regression_config_parameters_overflow() {
    let e = config("parameters-overflow");
    assert!(e.contains("more parameters than can be counted"), "{e}");
}

/// `tojson(indent=10^14)`: the indentation asked for 100 TB (out of memory, an abort).
#[test]
fn regression_chat_template_tojson_huge_indent() {
    let e = template("tojson-huge-indent").unwrap_err();
    assert!(e.contains("tojson would write more than 16 MiB"), "{e}");
}

/// A list nested 50,001 deep, printed: minijinja's recursive printing and dropping overflowed
/// the stack.
#[test]
fn regression_chat_template_nested_list_printed() {
    let text = template("nested-list-printed").unwrap();
    assert_eq!(text.len(), 2 * 50_001);
}

/// The same list through `tojson`: serializing it recursively overflowed the stack.
#[test]
fn regression_chat_template_nested_list_tojson() {
    let text = template("nested-list-tojson").unwrap();
    assert_eq!(text.len(), 2 * 50_001);
}
