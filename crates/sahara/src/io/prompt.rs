//! Prompts shared by every command: the tokenizer of `tokenizer.json`, the chat template of
//! `tokenizer_config.json` (or `chat_template.jinja`) rendered as transformers'
//! `apply_chat_template` renders it, and the three ways a query becomes a prompt.

use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, Value};
use serde_json::Value as Json;

use crate::error::{Error, Result, Setting};

/// A query of a data file and its prompt tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedQuery {
    /// Its index in the data file (0-based).
    pub index: usize,
    pub text: String,
    pub tokens: Vec<u32>,
}

/// How a query becomes a prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// The query as it is, encoded with the tokenizer's special-token post-processing.
    Raw,
    /// The model's chat template with the query as the user message, rendered with extra
    /// template variables `args` (`enable_thinking`, say) beside the messages.
    Chat {
        system: Option<String>,
        args: Vec<(String, serde_json::Value)>,
    },
    /// A format string containing `{query}`, encoded like `Raw`.
    Format(String),
}

impl Template {
    /// Parses a `--template` value: `raw`, `chat`, or a format string containing `{query}` in
    /// which the escapes `\n` and `\t` become newline and tab.
    pub fn parse(s: &str, system: Option<String>) -> Result<Self> {
        match s {
            "raw" => {
                if system.is_some() {
                    return Err(system_needs_chat());
                }
                Ok(Template::Raw)
            }
            "chat" => Ok(Template::chat(system)),
            fmt => {
                if !fmt.contains("{query}") {
                    return Err(Error::bad_value(
                        Setting::Template,
                        format!("{fmt:?}"),
                        "is neither raw, chat, nor a format string containing {query}",
                    ));
                }
                if system.is_some() {
                    return Err(system_needs_chat());
                }
                Ok(Template::Format(unescape(fmt)))
            }
        }
    }

    /// The chat template with an optional system message and no extra variables.
    pub fn chat(system: Option<String>) -> Self {
        Template::Chat {
            system,
            args: Vec::new(),
        }
    }

    /// Adds chat-template variables, each `KEY=VALUE`: the value is read as JSON when it is
    /// JSON (`true`, `3`, `"x"`, `[…]`), else taken as a string. Only the chat template
    /// takes them; a key given twice, an empty key, or one the renderer sets itself
    /// (`messages`, `add_generation_prompt`) is refused.
    pub fn with_args(self, args: &[String]) -> Result<Self> {
        if args.is_empty() {
            return Ok(self);
        }
        let Template::Chat { system, .. } = self else {
            return Err(Error::Conflict {
                setting: Setting::TemplateArg,
                reason: "only applies to the chat template".into(),
            });
        };
        let mut parsed: Vec<(String, serde_json::Value)> = Vec::new();
        for a in args {
            let bad = |why: &str| Error::bad_value(Setting::TemplateArg, format!("{a:?}"), why);
            let (k, v) = a.split_once('=').ok_or_else(|| bad("is not KEY=VALUE"))?;
            let k = k.trim();
            if k.is_empty() {
                return Err(bad("has an empty key"));
            }
            if matches!(k, "messages" | "add_generation_prompt") {
                return Err(bad("sets a variable the renderer sets itself"));
            }
            if parsed.iter().any(|(p, _)| p == k) {
                return Err(bad("repeats a key"));
            }
            let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::from(v));
            parsed.push((k.to_string(), value));
        }
        Ok(Template::Chat {
            system,
            args: parsed,
        })
    }

    /// The extra chat-template variables, as a JSON object (empty for other templates).
    pub fn args_record(&self) -> serde_json::Map<String, serde_json::Value> {
        match self {
            Template::Chat { args, .. } => args.iter().cloned().collect(),
            _ => serde_json::Map::new(),
        }
    }

    /// A short name for outputs: `raw`, `chat`, or the format string.
    pub fn name(&self) -> String {
        match self {
            Template::Raw => "raw".into(),
            Template::Chat { .. } => "chat".into(),
            Template::Format(f) => f.clone(),
        }
    }
}

/// A system message is part of a chat; the other templates have no place for it.
fn system_needs_chat() -> Error {
    Error::Conflict {
        setting: Setting::System,
        reason: "only applies to the chat template".into(),
    }
}

/// Turns the two-character escapes `\n`, `\t` and `\\` into their characters.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.peek() {
                Some('n') => {
                    out.push('\n');
                    chars.next();
                }
                Some('t') => {
                    out.push('\t');
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push(c),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One chat message.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template with the special tokens it is rendered with.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Special tokens passed to the template (`bos_token`, `eos_token`, …).
    specials: Vec<(String, String)>,
    /// The instant `strftime_now` renders (Unix seconds, UTC), once pinned; `i64::MIN`: the
    /// current time (GPT-OSS's template writes today's date into every prompt).
    clock: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Whether the source calls `strftime_now`: its prompts depend on the date.
    uses_clock: bool,
}

impl ChatTemplate {
    /// Compiles a template source.
    pub fn new(source: &str, specials: Vec<(String, String)>) -> Result<Self> {
        let mut env = Environment::new();
        // transformers renders with trim_blocks and lstrip_blocks.
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(TEMPLATE_FUEL));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        let clock = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN));
        let now = clock.clone();
        env.add_function("strftime_now", move |fmt: String| {
            let pinned = now.load(std::sync::atomic::Ordering::Relaxed);
            let secs = match pinned {
                i64::MIN => now_seconds(),
                pinned => pinned,
            };
            strftime_at(&fmt, secs)
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| Error::Template(format!("cannot parse: {}", describe(&e))))?;
        Ok(ChatTemplate {
            env,
            specials,
            clock,
            uses_clock: source.contains("strftime_now"),
        })
    }

    /// The UTC date (`YYYY-MM-DD`) a template that calls `strftime_now` renders now, `None`
    /// for a template whose prompts do not depend on the date.
    pub fn rendered_date(&self) -> Option<String> {
        if !self.uses_clock {
            return None;
        }
        let secs = match self.clock.load(std::sync::atomic::Ordering::Relaxed) {
            i64::MIN => now_seconds(),
            pinned => pinned,
        };
        Some(strftime_at("%Y-%m-%d", secs))
    }

    /// Renders `strftime_now` at this instant (Unix seconds, UTC) from now on, instead of the
    /// current time.
    pub fn pin_clock(&self, unix_seconds: i64) {
        self.clock
            .store(unix_seconds, std::sync::atomic::Ordering::Relaxed);
    }

    /// Renders messages as transformers' `apply_chat_template(..., tokenize=False)` does.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &[])
    }

    /// Renders with extra template variables, as `apply_chat_template(..., **kwargs)` passes
    /// them.
    pub fn render_with<M: serde::Serialize + Sync + ?Sized>(
        &self,
        messages: &M,
        add_generation_prompt: bool,
        args: &[(String, serde_json::Value)],
    ) -> Result<String> {
        on_render_stack(|| {
            let tmpl = self
                .env
                .get_template("chat")
                .map_err(|e| Error::Template(describe(&e)))?;
            let mut ctx = std::collections::BTreeMap::<String, Value>::new();
            ctx.insert(
                "messages".into(),
                Value::from(minijinja::value::Serde(messages)),
            );
            ctx.insert(
                "add_generation_prompt".into(),
                Value::from(add_generation_prompt),
            );
            for (k, v) in &self.specials {
                ctx.insert(k.clone(), Value::from(v.clone()));
            }
            for (k, v) in args {
                ctx.insert(k.clone(), Value::from(minijinja::value::Serde(v)));
            }
            self.render_bounded(&tmpl, Value::from(ctx))
                .map(|(text, _)| text)
        })
    }

    /// Renders within [`TEMPLATE_FUEL`] and [`MAX_RENDERED_BYTES`]; returns the text and the
    /// fuel it used.
    fn render_bounded(
        &self,
        tmpl: &minijinja::Template<'_, '_>,
        ctx: Value,
    ) -> Result<(String, u64)> {
        let mut out = Bounded {
            text: Vec::new(),
            full: false,
        };
        let result = tmpl.render_captured_to(ctx, &mut out);
        if out.full {
            return Err(Error::Template(format!(
                "rendered more than {} MiB of text, far more than any model's context; the \
                 template, not the model or the query, is at fault",
                MAX_RENDERED_BYTES >> 20
            )));
        }
        let captured = result.map_err(|e| match e.kind() {
            ErrorKind::OutOfFuel => Error::Template(format!(
                "did more work than the bound of {TEMPLATE_FUEL} steps (about {} MB of data) \
                 allows: a loop that runs far longer, or strings far larger, than any chat \
                 needs; the template, not the model or the query, is at fault",
                TEMPLATE_FUEL * 64 / 1_000_000
            )),
            _ => Error::Template(describe(&e)),
        })?;
        let used = captured.state().fuel_levels().map_or(0, |(used, _)| used);
        // The output is UTF-8: minijinja writes only whole strings.
        let text = String::from_utf8(out.text)
            .map_err(|_| Error::Template("rendered text that is not UTF-8".into()))?;
        Ok((text, used))
    }
}

/// The work a chat template may do in one render, in minijinja's fuel: one per instruction
/// and one per 64 bytes of data it creates. Real chat templates use under 0.1% of it (a test
/// measures two with 64 messages); a template that does not end fails in seconds, and one
/// that builds huge strings fails before it holds more than about 320 MB.
pub const TEMPLATE_FUEL: u64 = 5_000_000;

/// The longest rendered prompt: 16 MiB, millions of tokens, above any model's context.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

/// The stack of the thread a chat template renders on. Within [`TEMPLATE_FUEL`] a template
/// can nest a value about half a million levels deep (`{% set ns.x = [ns.x] %}` in a loop),
/// and minijinja drops, prints and compares values recursively: about 200 MB of stack at that
/// depth in an optimized build, far more than a thread's usual 2 or 8 MiB. The memory is
/// reserved, not used, until a template goes that deep.
const RENDER_STACK_BYTES: usize = 1 << 30;

/// Runs `f` (a render) on a thread of its own with a [`RENDER_STACK_BYTES`] stack.
fn on_render_stack<T: Send>(f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        let render = std::thread::Builder::new()
            .name("chat-template".into())
            .stack_size(RENDER_STACK_BYTES)
            .spawn_scoped(s, f)
            .map_err(|e| Error::Template(format!("cannot start the thread to render it: {e}")))?;
        render
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// The render's output, refused past [`MAX_RENDERED_BYTES`].
struct Bounded {
    text: Vec<u8>,
    full: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > MAX_RENDERED_BYTES {
            self.full = true;
            return Err(std::io::Error::other("rendered prompt too long"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn describe(e: &minijinja::Error) -> String {
    // raise_exception's message is the detail; keep it verbatim.
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(d)) => d.to_string(),
        _ => {
            let mut s = e.to_string();
            if let Some(line) = e.line() {
                if !s.contains("line") {
                    s.push_str(&format!(" (line {line})"));
                }
            }
            s
        }
    }
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(
    value: Value,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json: Json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out).map_err(|TooLong| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "tojson would write more than {} MiB (indent {}); the template, not the model \
                 or the query, is at fault",
                MAX_RENDERED_BYTES >> 20,
                indent.unwrap_or(0)
            ),
        )
    })?;
    Ok(Value::from_safe_string(out))
}

/// JSON text longer than [`MAX_RENDERED_BYTES`] was asked for.
struct TooLong;

/// Writes JSON with Python's `json.dumps` separators (", " and ": "), refusing to write more
/// than [`MAX_RENDERED_BYTES`] of indentation (a huge `indent` would otherwise ask for more
/// memory than there is).
fn python_json(
    v: &Json,
    indent: Option<usize>,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), TooLong> {
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            let width = n
                .checked_mul(level)
                .filter(|w| out.len().saturating_add(*w) <= MAX_RENDERED_BYTES)
                .ok_or(TooLong)?;
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', width));
        }
        Ok(())
    };
    match v {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    if indent.is_none() {
                        out.push(' ');
                    }
                }
                newline(out, level + 1)?;
                python_json(item, indent, level + 1, out)?;
            }
            newline(out, level)?;
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                    if indent.is_none() {
                        out.push(' ');
                    }
                }
                newline(out, level + 1)?;
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push_str(": ");
                python_json(item, indent, level + 1, out)?;
            }
            newline(out, level)?;
            out.push('}');
        }
        Json::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 && f.abs() < 1e16 {
                out.push_str(&format!("{f:.1}"));
            } else {
                out.push_str(&n.to_string());
            }
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
    Ok(())
}

/// The current time in Unix seconds.
fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `strftime_now(fmt)` at the instant `secs` (Unix seconds): the UTC date and time, for the
/// common strftime codes.
fn strftime_at(fmt: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + if month <= 2 { 1 } else { 0 };
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let (hh, mm, ss) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The tokenizer and chat template of a model folder.
pub struct PromptEncoder {
    pub tokenizer: tokenizers::Tokenizer,
    /// The chat template, or why it could not be compiled (reported only when a chat prompt
    /// is asked for, as transformers does).
    pub chat: Option<std::result::Result<ChatTemplate, String>>,
    pub tokenizer_path: PathBuf,
    /// Id used to left-pad batches.
    pub pad_id: u32,
    /// The model's token embeddings, once a model is loaded with this encoder: an id at or
    /// above it is refused (a tokenizer that does not belong to the model).
    pub embeddings: Option<usize>,
}

fn special_token(cfg: &Json, key: &str) -> Option<String> {
    match cfg.get(key)? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(String::from),
        _ => None,
    }
}

impl PromptEncoder {
    /// Loads `tokenizer.json`, and the chat template from `chat_template.jinja` or
    /// `tokenizer_config.json` when present.
    pub fn load(dir: &Path) -> Result<Self> {
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.exists() {
            return Err(Error::Tokenizer {
                path: tokenizer_path,
                message: "file not found".into(),
            });
        }
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| Error::Tokenizer {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Json = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: cfg_path.clone(),
                source,
            })?
        } else {
            Json::Null
        };
        let jinja_path = dir.join("chat_template.jinja");
        let source = if jinja_path.exists() {
            Some(std::fs::read_to_string(&jinja_path).map_err(|e| Error::io(&jinja_path, e))?)
        } else {
            match cfg.get("chat_template") {
                Some(Json::String(s)) => Some(s.clone()),
                Some(Json::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(Json::as_str)
                    .map(String::from),
                _ => None,
            }
        };
        let mut specials = Vec::new();
        for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
            if let Some(v) = special_token(&cfg, key) {
                specials.push((key.to_string(), v));
            }
        }
        let chat = source.map(|s| {
            ChatTemplate::new(&s, specials.clone()).map_err(|e| {
                let m = match e {
                    Error::Template(m) => m,
                    other => other.to_string(),
                };
                let file = if jinja_path.exists() {
                    &jinja_path
                } else {
                    &cfg_path
                };
                format!("{}: {m}", file.display())
            })
        });
        let pad_id = specials
            .iter()
            .find(|(k, _)| k == "pad_token")
            .or_else(|| specials.iter().find(|(k, _)| k == "eos_token"))
            .and_then(|(_, v)| tokenizer.token_to_id(v))
            .unwrap_or(0);
        Ok(PromptEncoder {
            tokenizer,
            chat,
            tokenizer_path,
            pad_id,
            embeddings: None,
        })
    }

    /// The prompt text of a query.
    pub fn render(&self, template: &Template, query: &str) -> Result<String> {
        match template {
            Template::Raw => Ok(query.to_string()),
            Template::Format(f) => Ok(f.replace("{query}", query)),
            Template::Chat { system, args } => {
                let chat = self.chat_template()?;
                let mut messages = Vec::new();
                if let Some(s) = system {
                    messages.push(Message::new("system", s));
                }
                messages.push(Message::new("user", query));
                chat.render_with(&messages, true, args)
            }
        }
    }

    /// The model's chat template, or why it has none.
    pub fn chat_template(&self) -> Result<&ChatTemplate> {
        self.chat
            .as_ref()
            .ok_or_else(|| {
                Error::Template(format!(
                    "the model has no chat template (looked in tokenizer_config.json and chat_template.jinja beside {}); use the raw template or a format string",
                    self.tokenizer_path.display()
                ))
            })?
            .as_ref()
            .map_err(|m| Error::Template(m.clone()))
    }

    /// The id of `token`, a single token of the vocabulary (added tokens included).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Encodes text; `add_special_tokens` as in transformers' `tokenizer(text, ...)`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Prompt(format!("cannot tokenize: {e}")))?;
        let ids = enc.get_ids();
        if let Some(n) = self.embeddings {
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= n) {
                let token = self.tokenizer.id_to_token(id).unwrap_or_default();
                return Err(Error::Prompt(format!(
                    "{}: token {token:?} has id {id}, but the model has {n} token embeddings: the tokenizer does not belong to this model",
                    self.tokenizer_path.display()
                )));
            }
        }
        Ok(ids.to_vec())
    }

    /// Renders and encodes a query. The chat template already holds its special tokens, so
    /// they are not added a second time.
    pub fn encode_query(&self, template: &Template, query: &str) -> Result<(String, Vec<u32>)> {
        if query.trim().is_empty() {
            return Err(Error::Prompt("the query is empty".into()));
        }
        let text = self.render(template, query)?;
        let add = !matches!(template, Template::Chat { .. });
        let ids = self.encode(&text, add)?;
        if ids.is_empty() {
            return Err(Error::Prompt(format!("{query:?} encodes to no tokens")));
        }
        Ok((text, ids))
    }

    /// Encodes every query of a data file up front, so that a bad query stops a run before
    /// any output is written; `source` names the file in errors, `context` is the model's
    /// context length.
    pub fn encode_queries(
        &self,
        template: &Template,
        queries: &[crate::io::data::Query],
        source: &str,
        context: usize,
    ) -> Result<Vec<EncodedQuery>> {
        queries
            .iter()
            .map(|q| {
                let (_, tokens) = self.encode_query(template, &q.text).map_err(|e| {
                    Error::Prompt(format!("query {} of {source}: {e}", q.index + 1))
                })?;
                if tokens.len() > context {
                    return Err(Error::Prompt(format!(
                        "query {} of {source} has {} tokens, more than the model's context of {context}",
                        q.index + 1,
                        tokens.len()
                    )));
                }
                Ok(EncodedQuery {
                    index: q.index,
                    text: q.text.clone(),
                    tokens,
                })
            })
            .collect()
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::Prompt(format!("cannot decode tokens: {e}")))
    }

    /// Decodes with the special tokens kept (the markers of a reasoning format).
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| Error::Prompt(format!("cannot decode tokens: {e}")))
    }

    /// `text` without the tokenizer's special tokens (what [`PromptEncoder::decode`] skips).
    pub fn strip_special(&self, text: &str) -> String {
        let mut out = text.to_string();
        let mut specials: Vec<String> = self
            .tokenizer
            .get_added_tokens_decoder()
            .into_values()
            .filter(|t| t.special && !t.content.is_empty())
            .map(|t| t.content)
            .collect();
        // Longest first, so that no special token is cut by a shorter one inside it.
        specials.sort_by_key(|t| std::cmp::Reverse(t.len()));
        for t in specials {
            out = out.replace(&t, "");
        }
        out
    }

    /// Whether the vocabulary holds `token` as one token.
    pub fn has_token(&self, token: &str) -> bool {
        self.tokenizer.token_to_id(token).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_templates_need_query_and_unescape() {
        assert_eq!(
            Template::parse("## Query:{query}\\n## Answer:", None).unwrap(),
            Template::Format("## Query:{query}\n## Answer:".into())
        );
        assert!(Template::parse("no placeholder", None).is_err());
        assert_eq!(Template::parse("raw", None).unwrap(), Template::Raw);
        assert!(Template::parse("raw", Some("s".into())).is_err());
    }

    #[test]
    fn chat_template_trims_blocks_and_raises() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n  {% if m.role == 'system' %}{{ raise_exception('no system') }}{% endif %}\n[{{ m.role }}] {{ m.content.strip() }}\n{% endfor %}\n{% if add_generation_prompt %}{{ bos_token }}{% endif %}",
            vec![("bos_token".into(), "<s>".into())],
        )
        .unwrap();
        let s = t.render(&[Message::new("user", " hi ")], true).unwrap();
        assert_eq!(s, "[user] hi\n<s>");
        let e = t
            .render(
                &[Message::new("system", "x"), Message::new("user", "y")],
                true,
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "chat template: no system");
    }

    #[test]
    fn tojson_uses_python_separators() {
        let mut env = Environment::new();
        env.add_filter("tojson", tojson);
        let out = env
            .render_str(
                "{{ x | tojson }}",
                minijinja::context! { x => minijinja::value::Serde(serde_json::json!({"a": [1, "<b>"], "c": true})) },
            )
            .unwrap();
        assert_eq!(out, r#"{"a": [1, "<b>"], "c": true}"#);
    }

    #[test]
    fn broken_template_is_an_error() {
        assert!(ChatTemplate::new("{% for m in messages %}", vec![]).is_err());
    }

    fn render_err(source: &str) -> String {
        let t = ChatTemplate::new(source, vec![]).unwrap();
        let start = std::time::Instant::now();
        let e = t
            .render(&[Message::new("user", "hi")], true)
            .unwrap_err()
            .to_string();
        // Generous: the bound is about work, not time; this only catches a bound not applied.
        assert!(start.elapsed().as_secs() < 60, "{e}");
        e
    }

    #[test]
    fn a_template_that_does_not_end_is_stopped_and_blamed() {
        // Three nested loops of 10^4: 10^12 steps before the bound.
        let e = render_err(
            "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}\
             {% endfor %}{% endfor %}{% endfor %}",
        );
        assert!(
            e.starts_with("chat template: ") && e.contains("the template, not the model"),
            "{e}"
        );
        assert!(e.contains("5000000 steps"), "{e}");
    }

    #[test]
    fn a_template_that_builds_a_huge_string_is_stopped() {
        // Doubling a string: 2^40 bytes after 40 steps.
        let e = render_err(
            "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}\
             {% endfor %}{{ ns.s }}",
        );
        assert!(e.contains("the template, not the model"), "{e}");
        // Emitting 10^9 characters in pieces.
        let e = render_err("{% for i in range(100000) %}{{ 'x' * 10000 }}{% endfor %}");
        assert!(e.contains("the template, not the model"), "{e}");
    }

    #[test]
    fn a_long_render_within_the_fuel_is_refused_by_length() {
        let t = ChatTemplate::new("{{ 'x' * 17000000 }}", vec![]).unwrap();
        let e = t.render(&[], true).unwrap_err().to_string();
        assert!(
            e.contains("more than 16 MiB") && e.contains("the template, not the model"),
            "{e}"
        );
    }

    #[test]
    fn real_chat_templates_use_a_sliver_of_the_fuel() {
        // ChatML (SmolLM2, Qwen2) and Llama 3's header format, 64 messages each.
        let chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + \
            message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}\
            {{ '<|im_start|>assistant\\n' }}{% endif %}";
        let llama3 = "{{ bos_token }}{% for message in messages %}{% set content = \
            '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + \
            message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}\
            {% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\
            {% endif %}";
        let messages: Vec<Message> = (0..64)
            .map(|i| {
                let role = if i % 2 == 0 { "user" } else { "assistant" };
                Message::new(role, &"How do I bake bread at home? ".repeat(10))
            })
            .collect();
        for source in [chatml, llama3] {
            let t = ChatTemplate::new(source, vec![("bos_token".into(), "<s>".into())]).unwrap();
            let tmpl = t.env.get_template("chat").unwrap();
            let mut ctx = std::collections::BTreeMap::<String, Value>::new();
            ctx.insert(
                "messages".into(),
                Value::from(minijinja::value::Serde(&messages)),
            );
            ctx.insert("add_generation_prompt".into(), Value::from(true));
            ctx.insert("bos_token".into(), Value::from("<s>"));
            let (text, used) = t.render_bounded(&tmpl, Value::from(ctx)).unwrap();
            assert!(text.contains("bake bread"));
            assert!(used > 0 && used < TEMPLATE_FUEL / 1000, "{used}");
        }
    }
}
