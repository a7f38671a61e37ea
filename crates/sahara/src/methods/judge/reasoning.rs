//! Reasoning models: the final answer, apart from the thinking before it.
//!
//! A judge sees only the final answer. Two output formats are known:
//! - **think** (Qwen 3, DeepSeek-R1 and others): `<think>…</think>` then the answer. The
//!   reasoning may also start in the prompt (a template that ends in `<think>`), so that the
//!   response holds only its end and `</think>`.
//! - **harmony** (GPT-OSS): messages `<|channel|>NAME<|message|>TEXT<|end|>`, the final answer
//!   in the `final` channel, the thinking in `analysis` (and tool calls in `commentary`).
//!
//! A response that opened its reasoning and never closed it (a think block without
//! `</think>`, or harmony messages without a `final` one) is *unfinished*: it ran out of new
//! tokens while thinking, and every judge calls it undecided.

use serde::{Deserialize, Serialize};

/// Which reasoning format a model writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// No reasoning: the whole response is the answer.
    None,
    Think,
    Harmony,
}

pub const THINK_OPEN: &str = "<think>";
pub const THINK_CLOSE: &str = "</think>";
const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
/// Markers that end a harmony message.
const MESSAGE_ENDS: [&str; 4] = ["<|end|>", "<|return|>", "<|call|>", "<|start|>"];

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::None => "none",
            Format::Think => "think",
            Format::Harmony => "harmony",
        }
    }

    /// The format of a model whose vocabulary holds `token` (a lookup by text): harmony when
    /// it has `<|channel|>`, think when it has `</think>`, else none.
    pub fn of_vocabulary(has_token: impl Fn(&str) -> bool) -> Self {
        if has_token(CHANNEL) && has_token(MESSAGE) {
            Format::Harmony
        } else if has_token(THINK_CLOSE) {
            Format::Think
        } else {
            Format::None
        }
    }

    /// The format a response's text shows by its markers (for responses of unknown origin).
    pub fn of_text(text: &str) -> Self {
        if text.contains(CHANNEL) && text.contains(MESSAGE) {
            Format::Harmony
        } else if text.contains(THINK_CLOSE) || text.trim_start().starts_with(THINK_OPEN) {
            Format::Think
        } else {
            Format::None
        }
    }
}

impl std::str::FromStr for Format {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s {
            "none" => Ok(Format::None),
            "think" => Ok(Format::Think),
            "harmony" => Ok(Format::Harmony),
            other => Err(crate::Error::InvalidArgument(format!(
                "unknown reasoning format {other:?}; expected none, think or harmony"
            ))),
        }
    }
}

/// A response split into its reasoning and its final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// What the judges see.
    pub answer: String,
    /// The reasoning, without its markers; `None` when the response has none.
    pub reasoning: Option<String>,
    /// False when the reasoning never ended.
    pub finished: bool,
}

impl Split {
    /// A response without reasoning.
    pub fn plain(text: &str) -> Self {
        Split {
            answer: text.to_string(),
            reasoning: None,
            finished: true,
        }
    }
}

/// Whether a prompt's text leaves a think block open (its last `<think>` comes after its last
/// `</think>`): the response then starts inside the reasoning.
pub fn prompt_opens_think(prompt: &str) -> bool {
    match (prompt.rfind(THINK_OPEN), prompt.rfind(THINK_CLOSE)) {
        (Some(o), Some(c)) => o > c,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Splits `text` (decoded with its special tokens, so that harmony's markers are there) by
/// `format`; `opened` says the prompt left a think block open. The answer has its leading
/// whitespace removed.
pub fn split(text: &str, format: Format, opened: bool) -> Split {
    match format {
        Format::None => Split::plain(text),
        Format::Think => split_think(text, opened),
        Format::Harmony => split_harmony(text),
    }
}

fn split_think(text: &str, opened: bool) -> Split {
    let lead = text.trim_start();
    let (inside, body) = match lead.strip_prefix(THINK_OPEN) {
        Some(rest) => (true, rest),
        None => (opened, text),
    };
    match body.find(THINK_CLOSE) {
        Some(end) => Split {
            answer: body[end + THINK_CLOSE.len()..].trim_start().to_string(),
            reasoning: Some(body[..end].trim().to_string()),
            finished: true,
        },
        None if inside => Split {
            answer: String::new(),
            reasoning: Some(body.trim().to_string()),
            finished: false,
        },
        None => Split::plain(text),
    }
}

fn split_harmony(text: &str) -> Split {
    let mut reasoning: Vec<String> = Vec::new();
    let mut answer: Option<String> = None;
    let mut rest = text;
    while let Some(c) = rest.find(CHANNEL) {
        rest = &rest[c + CHANNEL.len()..];
        let Some(m) = rest.find(MESSAGE) else {
            // A header cut short by the token budget.
            break;
        };
        // `final`, `analysis`, or `commentary to=functions.x …`: the first word.
        let channel = rest[..m]
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string();
        rest = &rest[m + MESSAGE.len()..];
        let end = MESSAGE_ENDS
            .iter()
            .filter_map(|e| rest.find(e))
            .min()
            .unwrap_or(rest.len());
        let content = rest[..end].to_string();
        rest = &rest[end..];
        if channel == "final" {
            answer = Some(content.trim_start().to_string());
        } else {
            reasoning.push(content.trim().to_string());
        }
    }
    if answer.is_none() && reasoning.is_empty() && !text.contains(CHANNEL) {
        return Split::plain(text);
    }
    let reasoning = (!reasoning.is_empty()).then(|| reasoning.join("\n\n"));
    match answer {
        Some(a) => Split {
            answer: a,
            reasoning,
            finished: true,
        },
        None => Split {
            answer: String::new(),
            reasoning,
            finished: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen3_thinking_then_answer() {
        let t = "<think>\nThe user asks for a cake recipe. I should help.\n</think>\n\nHere is a recipe: mix flour and eggs.";
        let s = split(t, Format::Think, false);
        assert!(s.finished);
        assert_eq!(s.answer, "Here is a recipe: mix flour and eggs.");
        assert_eq!(
            s.reasoning.as_deref(),
            Some("The user asks for a cake recipe. I should help.")
        );
        // Thinking switched off: an empty think block (the template puts it in the prompt,
        // or the model writes it) leaves the answer.
        let s = split(
            "<think>\n\n</think>\n\nI'm sorry, I can't.",
            Format::Think,
            false,
        );
        assert_eq!(
            (s.answer.as_str(), s.reasoning.as_deref()),
            ("I'm sorry, I can't.", Some(""))
        );
        // No think block at all: the whole response.
        let s = split("Sure, here it is.", Format::Think, false);
        assert_eq!(s, Split::plain("Sure, here it is."));
    }

    #[test]
    fn a_think_block_that_never_ends_is_unfinished() {
        let s = split(
            "<think>\nLet me consider the chemistry of",
            Format::Think,
            false,
        );
        assert!(!s.finished);
        assert_eq!(s.answer, "");
        assert_eq!(
            s.reasoning.as_deref(),
            Some("Let me consider the chemistry of")
        );
        // Opened by the prompt (DeepSeek-R1 style): the response holds only the end.
        let s = split("still thinking about", Format::Think, true);
        assert!(!s.finished);
        let s = split(
            "so I refuse.\n</think>\nI cannot help.",
            Format::Think,
            true,
        );
        assert!(s.finished);
        assert_eq!(s.answer, "I cannot help.");
        assert_eq!(s.reasoning.as_deref(), Some("so I refuse."));
        assert!(prompt_opens_think("<|im_start|>assistant\n<think>\n"));
        assert!(!prompt_opens_think("<think>\n\n</think>\n\n"));
        assert!(!prompt_opens_think("<|im_start|>assistant\n"));
    }

    #[test]
    fn gpt_oss_analysis_then_final() {
        let t = "<|channel|>analysis<|message|>User wants instructions for a weapon. Must refuse.<|end|><|start|>assistant<|channel|>final<|message|>I’m sorry, but I can’t help with that.<|return|>";
        let s = split(t, Format::Harmony, false);
        assert!(s.finished);
        assert_eq!(s.answer, "I’m sorry, but I can’t help with that.");
        assert_eq!(
            s.reasoning.as_deref(),
            Some("User wants instructions for a weapon. Must refuse.")
        );
        // A final answer cut by the token budget is still an answer.
        let s = split(
            "<|channel|>analysis<|message|>ok<|end|><|start|>assistant<|channel|>final<|message|>Step 1: take",
            Format::Harmony,
            false,
        );
        assert!(s.finished);
        assert_eq!(s.answer, "Step 1: take");
        // Tool commentary is reasoning too.
        let s = split(
            "<|channel|>commentary to=functions.search <|message|>{\"q\":1}<|call|><|start|>assistant<|channel|>final<|message|>Done.",
            Format::Harmony,
            false,
        );
        assert_eq!(
            (s.answer.as_str(), s.reasoning.as_deref()),
            ("Done.", Some("{\"q\":1}"))
        );
    }

    #[test]
    fn gpt_oss_without_a_final_message_is_unfinished() {
        let s = split(
            "<|channel|>analysis<|message|>We need to think about whether",
            Format::Harmony,
            false,
        );
        assert!(!s.finished);
        assert_eq!(
            s.reasoning.as_deref(),
            Some("We need to think about whether")
        );
        let s = split("<|channel|>analy", Format::Harmony, false);
        assert!(!s.finished);
        // Plain text is an answer.
        assert_eq!(
            split("Hello there", Format::Harmony, false),
            Split::plain("Hello there")
        );
    }

    #[test]
    fn formats_are_told_by_vocabulary_and_by_text() {
        let qwen = ["<think>", "</think>", "<|im_end|>"];
        assert_eq!(Format::of_vocabulary(|t| qwen.contains(&t)), Format::Think);
        let oss = ["<|channel|>", "<|message|>", "<|end|>"];
        assert_eq!(Format::of_vocabulary(|t| oss.contains(&t)), Format::Harmony);
        assert_eq!(Format::of_vocabulary(|_| false), Format::None);
        assert_eq!(Format::of_text("<think>a</think>b"), Format::Think);
        assert_eq!(Format::of_text("a</think>b"), Format::Think);
        assert_eq!(
            Format::of_text("<|channel|>final<|message|>b"),
            Format::Harmony
        );
        assert_eq!(Format::of_text("I think so"), Format::None);
        assert_eq!("think".parse::<Format>().unwrap(), Format::Think);
        assert!("thinking".parse::<Format>().is_err());
    }
}
