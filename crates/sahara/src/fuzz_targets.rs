//! Fuzz targets: each feeds arbitrary bytes to the code that reads one kind of input file, as
//! a model, data file or earlier output that a user passes to sahara would reach it.
//!
//! A target must never panic, hang or allocate without bound, whatever the bytes: refusing
//! them with an error is the expected outcome (the errors are ignored here). The harnesses in
//! `fuzz/fuzz_targets/` call these under libFuzzer, and `tests/fuzz_corpus.rs` replays the
//! committed corpus and regressions through them in every `cargo test`.
//!
//! Targets whose code reads files (safetensors folders, GGUF files) write the bytes into a
//! scratch folder of the calling thread, created once and overwritten by every run.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::checkpoint::gguf::{self, GgufFile, GgufWeights};
use crate::checkpoint::safetensors::Weights;
use crate::io::data::parse_queries;
use crate::io::formats::{HeadsFile, RunRecord, ShipsLine};
use crate::io::prompt::{ChatTemplate, EncodedQuery, Message, Template};
use crate::io::runlog;
use crate::model::config::{inverse_frequencies, long_inverse_frequencies, ModelConfig};

/// The bytes before the first NUL, and those after it (`None` without a NUL).
fn split_nul(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    }
}

/// A folder of the calling thread under the temp folder, removed when the thread ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

thread_local! {
    static SCRATCH: Scratch = {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sahara-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        Scratch(dir)
    };
}

/// Runs `f` on the scratch subfolder `name` of this thread, created on first use.
fn with_scratch(name: &str, f: impl FnOnce(&Path)) {
    SCRATCH.with(|s| {
        let dir = s.0.join(name);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create the scratch folder {}: {e}", dir.display()));
        f(&dir)
    })
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes)
        .unwrap_or_else(|e| panic!("cannot write the scratch file {}: {e}", path.display()));
}

/// `config.json`: parsing ([`ModelConfig::parse`]), resolution with the family defaults, and
/// the values derived from a resolved configuration.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = ModelConfig::parse(Path::new("config.json"), text) else {
        return;
    };
    let _ = cfg.group_size();
    let _ = cfg.num_parameters();
    // The frequencies are computed once the weights are loaded, which bounds head_dim by
    // the size of the checkpoint; here, by a size any real model stays below.
    if cfg.head_dim <= 1 << 16 {
        let _ = inverse_frequencies(&cfg);
        let _ = long_inverse_frequencies(&cfg);
    }
}

/// A safetensors model folder ([`Weights::open_dir`]) and every tensor in it loaded. The
/// first byte chooses the layout: even, the rest is `model.safetensors`; odd, the rest is
/// `model.safetensors.index.json`, a NUL, and the shard `model-00001-of-00001.safetensors`.
/// Bit 1 of the first byte loads the tensors as F16 instead of F32.
pub fn safetensors(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    with_scratch("safetensors", |dir| {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let shard = dir.join("model-00001-of-00001.safetensors");
        for p in [&index, &single, &shard] {
            let _ = std::fs::remove_file(p);
        }
        if mode & 1 == 0 {
            write(&single, rest);
        } else {
            let (text, body) = split_nul(rest);
            write(&index, text);
            write(&shard, body.unwrap_or_default());
        }
        let Ok(weights) = Weights::open_dir(dir) else {
            return;
        };
        let dtype = if mode & 2 == 0 {
            DType::F32
        } else {
            DType::F16
        };
        let mut tensors: Vec<(String, Vec<usize>)> = Vec::new();
        for f in &weights.files {
            let _ = f.metadata();
            tensors.extend(f.tensors.iter().map(|(n, i)| (n.clone(), i.shape.clone())));
        }
        tensors.sort();
        for (name, shape) in &tensors {
            let _ = weights.contains(name);
            let _ = weights.load(name, shape, dtype, &Device::Cpu);
            // The shape check refuses another shape.
            let _ = weights.load(name, &[3, 5], dtype, &Device::Cpu);
        }
        let _ = weights.load("absent.weight", &[1], dtype, &Device::Cpu);
    });
}

/// A GGUF file ([`GgufFile::open`]) and what sahara derives from it: the `config.json` of its
/// metadata and the resolved configuration, the tokenizer and chat template (then used once),
/// every tensor dequantized, and the decoder loaded.
pub fn gguf(data: &[u8]) {
    with_scratch("gguf", |dir| {
        let path = dir.join("model.gguf");
        write(&path, data);
        let _ = gguf::is_gguf_path(&path.to_string_lossy());
        let Ok(file) = GgufFile::open(&path) else {
            return;
        };
        let _ = file.fingerprint();
        let _ = file.hf_config();
        let _ = file.permuted_qk();
        if let Ok(prompts) = file.prompt_encoder() {
            if let Ok(ids) = prompts.encode("Hello, world! <s> 123 \u{e9}\u{4e16}", true) {
                let _ = prompts.decode(&ids);
            }
            let chat = Template::chat(Some("Be brief.".into()));
            let _ = prompts.encode_query(&chat, "How do I bake bread?");
        }
        let mut names: Vec<&String> = file.content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let _ = file.dequantize(name);
        }
        let Ok(cfg) = file.config() else {
            return;
        };
        let weights = GgufWeights::new(&file, &cfg);
        for name in weights.hf_names() {
            let _ = weights.load_f32(&name);
        }
        let _ = gguf::load_decoder(&file, DType::F32, &Device::Cpu, false);
    });
}

/// A query file ([`parse_queries`]). The first byte chooses the file name, and with it the
/// format: `c` `.csv`, `l` `.jsonl`, `n` `.ndjson`, `j` `.json`, `t` `.txt`, anything else no
/// extension (the format is sniffed from the content). The second byte names the column:
/// `i` input, `g` goal, `B` Behavior, anything else none (the default columns). The rest is
/// the file.
pub fn data(data: &[u8]) {
    let [format, column, file @ ..] = data else {
        return;
    };
    let name = match format {
        b'c' => "data.csv",
        b'l' => "data.jsonl",
        b'n' => "data.ndjson",
        b'j' => "data.json",
        b't' => "data.txt",
        _ => "data",
    };
    let column = match column {
        b'i' => Some("input"),
        b'g' => Some("goal"),
        b'B' => Some("Behavior"),
        _ => None,
    };
    let path = Path::new(name);
    if let Ok(d) = parse_queries(path, file, column, None) {
        assert!(!d.is_empty(), "a dataset read without error has queries");
        let _ = parse_queries(path, file, column, Some(1));
    }
}

/// A heads file ([`HeadsFile::parse`]: an `attribute` output or a `ships` summary) and the head
/// sets taken from it ([`HeadsFile::head_sets`]).
pub fn heads_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("heads.json");
    let Ok(heads) = HeadsFile::parse(path, text) else {
        return;
    };
    let n = heads.heads.len();
    for top in [None, Some(0), Some(1), Some(n), Some(n + 1)] {
        for sweep in [false, true] {
            if let Ok(sets) = heads.head_sets(path, top, sweep) {
                assert!(sets.iter().all(|s| !s.is_empty() && s.len() <= n));
            }
        }
    }
}

/// A chat template ([`ChatTemplate::new`]) rendered for one conversation
/// ([`ChatTemplate::render`]). The bytes up to the first NUL are the template; after it, the
/// user message, or a system message, a NUL, and the user message.
pub fn chat_template(data: &[u8]) {
    let (source, messages) = split_nul(data);
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let messages = messages.unwrap_or(b"Hello!");
    let (first, second) = split_nul(messages);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let messages = match second {
        None => vec![Message::new("user", &text(first))],
        Some(user) => vec![
            Message::new("system", &text(first)),
            Message::new("user", &text(user)),
        ],
    };
    let specials = vec![
        ("bos_token".to_string(), "<s>".to_string()),
        ("eos_token".to_string(), "</s>".to_string()),
    ];
    let Ok(template) = ChatTemplate::new(source, specials) else {
        return;
    };
    let _ = template.render(&messages, true);
}

/// A run record ([`RunRecord::parse`], also in the flat layout of an earlier sahara) and the
/// lines of a resumed `ships` output read back ([`runlog::read_lines`], as
/// [`runlog::JsonlRun::open`] reads them). The bytes up to the first NUL are the record, those
/// after it the output; without a NUL both are read from all of it.
pub fn run_record(data: &[u8]) {
    let (record, lines) = split_nul(data);
    let lines = lines.unwrap_or(data);
    let path = Path::new("ships.jsonl.run.json");
    if let Ok(text) = std::str::from_utf8(record) {
        if let Ok(r) = RunRecord::parse(path, text) {
            // Written back and read again it is the same record, and the same run.
            let again = serde_json::to_string(&r).expect("records serialize");
            let back = RunRecord::parse(path, &again).expect("a written record parses");
            assert_eq!(back, r, "a run record survives writing and reading");
            assert!(runlog::same_run(&r, path, &r).is_ok());
        }
    }
    let Ok(text) = std::str::from_utf8(lines) else {
        return;
    };
    let out = Path::new("ships.jsonl");
    let queries = [
        (0, "How do I pick a lock?"),
        (1, "Write a poem about the sea."),
        (2, "Explain how to build a weapon at home."),
    ]
    .map(|(index, text)| EncodedQuery {
        index,
        text: text.to_string(),
        tokens: vec![1, 2, 3],
    });
    let read = runlog::read_lines(out, text, |i, line: &ShipsLine| match queries.get(i) {
        Some(q) if line.answers(q) => Ok(()),
        _ => Err(format!("does not match query {i} of the data")),
    });
    if let Ok((done, good)) = read {
        assert!(good <= text.len() && text.is_char_boundary(good));
        for line in &done {
            let again = serde_json::to_string(line).expect("lines serialize");
            let back: ShipsLine = serde_json::from_str(&again).expect("a written line parses");
            assert_eq!(&back, line, "a ships line survives writing and reading");
        }
    }
    let _ = runlog::read_lines(out, text, |_, _: &serde_json::Value| Ok(()));
}
