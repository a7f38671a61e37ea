//! The tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata, rebuilt as a
//! Hugging Face `tokenizer.json` (then loaded with the `tokenizers` crate):
//!
//! - `gpt2`: byte-level BPE from `tokens` and `merges`, with the pre-tokenizer that
//!   `tokenizer.ggml.pre` names (llama.cpp's `llama-vocab.cpp` lists the split expressions per
//!   value; each is written here as the Hugging Face pre-tokenizer of the original model);
//! - `llama`: SentencePiece-style BPE with byte fallback, its merges derived from the
//!   token scores as transformers derives them (`generate_merges`).
//!
//! Tokens marked control (`token_type` 3) become special added tokens, user-defined ones (4)
//! plain added tokens; BOS/EOS are added by the post-processor as `add_bos_token` /
//! `add_eos_token` say.

use serde_json::{json, Map, Value as Json};

use super::{gguf_err, GgufFile};
use crate::error::{Error, Result};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values understood for byte-level vocabularies.
pub const SUPPORTED_PRE: &str =
    "default, gpt2, gpt-2, mpt, olmo, smollm, starcoder, refact, llama3, llama-bpe, llama-v3, smaug-bpe, dbrx, falcon3, qwen2, deepseek-r1-qwen";

/// A rebuilt tokenizer with what the prompt encoder needs.
pub struct GgufTokenizer {
    pub tokenizer: tokenizers::Tokenizer,
    /// The `tokenizer.json` it was built from.
    pub json: Json,
    /// `tokenizer_config.json` entries: special tokens, `add_bos_token`, chat template.
    pub config: Json,
    /// (`bos_token`, text) … for the chat template.
    pub specials: Vec<(String, String)>,
    pub pad_id: u32,
}

/// GPT-2's byte → printable character table.
pub fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            let c = char::from_u32(256 + n).expect("valid");
            n += 1;
            c
        };
    }
    table
}

fn pre_tokenizer_gpt2(pre: &str, path: &std::path::Path) -> Result<(Json, Json, bool)> {
    // (normalizer, pre_tokenizer, ignore_merges)
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" => (Json::Null, byte_level(true), false),
        // llama.cpp: `\p{N}` first, then GPT-2's expression — the StarCoder tokenizer's
        // `Digits(individual_digits)` followed by `ByteLevel`.
        "smollm" | "starcoder" | "refact" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "llama3" | "llama-bpe" | "llama-v3" | "smaug-bpe" | "dbrx" | "falcon3" => (
            Json::Null,
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_SPLIT), byte_level(false)]}),
            true,
        ),
        "qwen2" | "deepseek-r1-qwen" => (
            json!({"type": "NFC"}),
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_SPLIT), byte_level(false)]}),
            false,
        ),
        other => {
            return Err(gguf_err(
                path,
                format!(
                    "unsupported tokenizer.ggml.pre value {other:?}; supported: {SUPPORTED_PRE}"
                ),
            ))
        }
    })
}

/// transformers' `generate_merges(vocab, vocab_scores)`: every split of every token into two
/// tokens of the vocabulary, ordered by the merged token's score (best first), then by the
/// lengths of the two pieces (longest first).
pub fn merges_from_scores(tokens: &[&str], scores: &[f64]) -> Vec<(String, String)> {
    use std::collections::HashMap;
    let mut vocab: HashMap<&str, usize> = HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t, i);
    }
    // dict(zip(tokens, scores)): insertion order of first occurrence, value of the last.
    let mut order: Vec<&str> = Vec::new();
    let mut score: HashMap<&str, f64> = HashMap::new();
    for (t, s) in tokens.iter().zip(scores) {
        if score.insert(t, *s).is_none() {
            order.push(t);
        }
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for t in order {
        let mut local: Vec<(&str, &str, f64)> = Vec::new();
        for (i, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(i);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                local.push((l, r, score[t]));
            }
        }
        local.sort_by_key(|(l, r, _)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    // Python's sorted(..., key=(score, len(l), len(r)), reverse=True) is stable.
    merges.sort_by(|a, b| {
        let ka = (a.2, a.0.chars().count(), a.1.chars().count());
        let kb = (b.2, b.0.chars().count(), b.1.chars().count());
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

fn added(id: usize, content: &str, special: bool) -> Json {
    json!({
        "id": id,
        "content": content,
        "single_word": false,
        "lstrip": false,
        "rstrip": false,
        "normalized": false,
        "special": special,
    })
}

/// Builds the tokenizer of a GGUF file.
pub fn build(g: &GgufFile) -> Result<GgufTokenizer> {
    let path = &g.path;
    let kind = g
        .opt_str("tokenizer.ggml.model")?
        .ok_or_else(|| gguf_err(path, "missing metadata key `tokenizer.ggml.model`"))?
        .to_string();
    let raw_tokens = g.strings("tokenizer.ggml.tokens")?;
    let types: Option<Vec<i64>> = g
        .numbers("tokenizer.ggml.token_type")?
        .map(|v| v.into_iter().map(|x| x as i64).collect());
    if let Some(t) = &types {
        if t.len() != raw_tokens.len() {
            return Err(gguf_err(
                path,
                format!(
                    "tokenizer.ggml.token_type has {} entries for {} tokens",
                    t.len(),
                    raw_tokens.len()
                ),
            ));
        }
    }
    let type_of = |i: usize| types.as_ref().map_or(1, |t| t[i]);
    let id = |key: &str| -> Result<Option<usize>> {
        let v = g.opt_u64(&format!("tokenizer.ggml.{key}"))?;
        if let Some(v) = v {
            if v as usize >= raw_tokens.len() {
                return Err(gguf_err(
                    path,
                    format!(
                        "tokenizer.ggml.{key} ({v}) is outside the vocabulary of {}",
                        raw_tokens.len()
                    ),
                ));
            }
        }
        Ok(v.map(|v| v as usize))
    };
    let bos = id("bos_token_id")?;
    let eos = id("eos_token_id")?;
    let unk = id("unknown_token_id")?;
    let pad = id("padding_token_id")?;

    let (tokens, model, normalizer, pre_tokenizer, decoder, default_bos, byte_level): (
        Vec<String>,
        Json,
        Json,
        Json,
        Json,
        bool,
        bool,
    ) = match kind.as_str() {
        "gpt2" => {
            let table = bytes_to_unicode();
            let alphabet: std::collections::HashSet<char> = table.iter().copied().collect();
            // A token outside the byte alphabet is spelled byte by byte (as transformers does).
            let tokens: Vec<String> = raw_tokens
                .iter()
                .map(|t| {
                    if t.chars().all(|c| alphabet.contains(&c)) {
                        t.to_string()
                    } else {
                        t.bytes().map(|b| table[b as usize]).collect()
                    }
                })
                .collect();
            let merges: Vec<Json> = g
                .strings("tokenizer.ggml.merges")?
                .iter()
                .map(|m| {
                    let (a, b) = m.split_once(' ').ok_or_else(|| {
                        gguf_err(path, format!("tokenizer.ggml.merges entry {m:?} is not two tokens separated by a space"))
                    })?;
                    Ok(json!([a, b]))
                })
                .collect::<Result<_>>()?;
            let pre = g.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
            let (normalizer, pre_tok, ignore_merges) = pre_tokenizer_gpt2(pre, path)?;
            let vocab: Map<String, Json> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), json!(i)))
                .collect();
            let model = json!({
                "type": "BPE",
                "dropout": null,
                "unk_token": null,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": false,
                "byte_fallback": false,
                "ignore_merges": ignore_merges,
                "vocab": vocab,
                "merges": merges,
            });
            let decoder = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true});
            (tokens, model, normalizer, pre_tok, decoder, false, true)
        }
        "llama" => {
            let tokens: Vec<String> = raw_tokens.iter().map(|t| t.to_string()).collect();
            let scores = g
                .numbers("tokenizer.ggml.scores")?
                .ok_or_else(|| gguf_err(path, "missing metadata key `tokenizer.ggml.scores`"))?;
            if scores.len() != tokens.len() {
                return Err(gguf_err(
                    path,
                    format!("tokenizer.ggml.scores has {} entries for {} tokens", scores.len(), tokens.len()),
                ));
            }
            let merges: Vec<Json> = match g.get("tokenizer.ggml.merges") {
                Some(_) => g
                    .strings("tokenizer.ggml.merges")?
                    .iter()
                    .filter_map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
                    .collect(),
                None => merges_from_scores(&raw_tokens, &scores)
                    .into_iter()
                    .map(|(a, b)| json!([a, b]))
                    .collect(),
            };
            let vocab: Map<String, Json> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), json!(i)))
                .collect();
            let unk_token = unk.map(|u| tokens[u].clone()).unwrap_or_else(|| "<unk>".into());
            let model = json!({
                "type": "BPE",
                "dropout": null,
                "unk_token": unk_token,
                "continuing_subword_prefix": null,
                "end_of_word_suffix": null,
                "fuse_unk": true,
                "byte_fallback": true,
                "ignore_merges": false,
                "vocab": vocab,
                "merges": merges,
            });
            let prefix = g.opt_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            let pre = json!({
                "type": "Metaspace",
                "replacement": "\u{2581}",
                "prepend_scheme": if prefix { "first" } else { "never" },
                "split": false,
            });
            let mut steps = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix {
                steps.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            let decoder = json!({"type": "Sequence", "decoders": steps});
            (tokens, model, Json::Null, pre, decoder, true, false)
        }
        other => {
            return Err(gguf_err(
                path,
                format!("unsupported tokenizer.ggml.model {other:?}; supported: gpt2 (byte-level BPE), llama (SentencePiece BPE)"),
            ))
        }
    };

    // Control tokens are special; user-defined ones are matched whole but not special.
    let alphabet: std::collections::HashSet<char> = bytes_to_unicode().iter().copied().collect();
    let mut added_tokens: Vec<Json> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match type_of(i) {
            3 if !byte_level || t.chars().all(|c| alphabet.contains(&c)) => {
                added_tokens.push(added(i, t, true))
            }
            4 => added_tokens.push(added(i, t, false)),
            _ => {}
        }
    }
    // The special ids are special even when token_type does not say so.
    for s in [bos, eos, unk, pad].into_iter().flatten() {
        if !added_tokens.iter().any(|a| a["id"] == json!(s)) && type_of(s) != 6 {
            added_tokens.push(added(s, &tokens[s], true));
        }
    }
    added_tokens.sort_by_key(|a| a["id"].as_u64());
    added_tokens.dedup_by_key(|a| a["id"].as_u64());

    let add_bos = g
        .opt_bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(default_bos);
    let add_eos = g.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let bos_id =
        match (add_bos, bos) {
            (false, _) => None,
            (true, Some(b)) => Some(b),
            (true, None) => return Err(gguf_err(
                path,
                "tokenizer.ggml.add_bos_token is set but tokenizer.ggml.bos_token_id is missing",
            )),
        };
    let eos_id =
        match (add_eos, eos) {
            (false, _) => None,
            (true, Some(e)) => Some(e),
            (true, None) => return Err(gguf_err(
                path,
                "tokenizer.ggml.add_eos_token is set but tokenizer.ggml.eos_token_id is missing",
            )),
        };
    // `[BOS] $A [EOS]`, and for pairs the same again with type id 1.
    let template = |seq: &str, type_id: u32| -> Vec<Json> {
        let special = |id: usize| json!({"SpecialToken": {"id": tokens[id], "type_id": type_id}});
        let mut v: Vec<Json> = bos_id.map(special).into_iter().collect();
        v.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
        v.extend(eos_id.map(special));
        v
    };
    let single = template("A", 0);
    let mut pair = single.clone();
    pair.extend(template("B", 1));
    let mut special_tokens = Map::new();
    for id in [bos_id, eos_id].into_iter().flatten() {
        special_tokens.insert(
            tokens[id].clone(),
            json!({"id": tokens[id], "ids": [id], "tokens": [tokens[id]]}),
        );
    }
    let post_processor = if add_bos || add_eos {
        json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
    } else if byte_level {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
    } else {
        Json::Null
    };

    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": decoder,
        "model": model,
    });
    let text = serde_json::to_string(&tokenizer_json).expect("JSON");
    let tokenizer: tokenizers::Tokenizer =
        text.parse()
            .map_err(|e: tokenizers::Error| Error::Tokenizer {
                path: path.clone(),
                message: format!("tokenizer rebuilt from the GGUF metadata: {e}"),
            })?;

    let mut specials = Vec::new();
    for (key, id) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("unk_token", unk),
        ("pad_token", pad),
    ] {
        if let Some(i) = id {
            specials.push((key.to_string(), tokens[i].clone()));
        }
    }
    let pad_id = pad.or(eos).unwrap_or(0) as u32;
    let mut config = Map::new();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("add_bos_token".into(), json!(add_bos));
    config.insert("add_eos_token".into(), json!(add_eos));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    for (k, v) in &specials {
        config.insert(k.clone(), json!(v));
    }
    if let Some(t) = g.opt_str("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(t));
    }
    Ok(GgufTokenizer {
        tokenizer,
        json: tokenizer_json,
        config: Json::Object(config),
        specials,
        pad_id,
    })
}
