//! Chat templates rendered the way transformers renders them: Jinja with `trim_blocks` and
//! `lstrip_blocks`, loop controls, Python string methods, transformers' own `tojson`,
//! `raise_exception`, and a deterministic `strftime_now`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use sha2::{Digest, Sha256};
use skyscore_core::ChatTurn;

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "the checkpoint has no chat template (no chat_template.jinja, no `chat_template` in tokenizer_config.json)"
    )]
    Missing,
    #[error("the chat template does not compile: {0:#}")]
    Compile(JinjaError),
    #[error("the chat template failed to render: {0:#}")]
    Render(JinjaError),
    /// A template is a program from the checkpoint: one that loops for too long is stopped.
    #[error(
        "the chat template (sha256 {sha}) ran past its work limit of {limit} steps for this row; \
         a real chat template needs thousands, so this checkpoint's template is broken or hostile"
    )]
    OutOfFuel { sha: String, limit: u64 },
    #[error(
        "the chat template (sha256 {sha}) wrote more than {limit} bytes for a row of {content} bytes; \
         a real chat template adds a few hundred, so this checkpoint's template is broken or hostile"
    )]
    OutputTooLarge { sha: String, limit: usize, content: usize },
}

/// Steps (minijinja's fuel: about one per template instruction) one rendering may take. The real
/// templates take far less: see `real_templates_use_little_fuel` in tests/ for the measured
/// figures. A hostile template that loops 10^10 times is stopped in well under a second.
pub const TEMPLATE_FUEL: u64 = 10_000_000;

/// The most a rendering may write: its messages' text four times over (a template may repeat it,
/// as tool-calling templates quote arguments) plus 1 MiB of markup.
fn output_limit(content_bytes: usize) -> usize {
    content_bytes.saturating_mul(4).saturating_add(1 << 20)
}

/// A writer that refuses to grow past `limit` bytes.
struct BoundedWriter {
    out: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for BoundedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("the template's output limit was reached"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A compiled chat template plus the special-token strings transformers passes to it.
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: BTreeMap<String, Value>,
    source_sha256: String,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    /// `special_tokens` maps names such as `bos_token` to their strings; they become template
    /// variables, as transformers' `special_tokens_map` does.
    pub fn new(source: &str, special_tokens: BTreeMap<String, String>) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("default delimiters are valid");
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_filter("tojson", tojson);
        env.add_filter("trim", python_trim);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(TemplateError::Compile)?;
        let special_tokens = special_tokens.into_iter().map(|(k, v)| (k, Value::from(v))).collect();
        Ok(Self { env, special_tokens, source_sha256: hex::encode(Sha256::digest(source.as_bytes())) })
    }

    /// SHA-256 of the template source: identifies the prompt format in outputs and caches.
    pub fn sha256(&self) -> &str {
        &self.source_sha256
    }

    /// Renders `messages` (seen by the template as a list of `{role, content}` objects).
    pub fn render(&self, messages: &[ChatTurn<'_>], add_generation_prompt: bool) -> Result<String, TemplateError> {
        let ctx = self.context(messages, add_generation_prompt);
        let template = self.env.get_template(TEMPLATE_NAME).map_err(TemplateError::Render)?;
        let content: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
        let mut writer = BoundedWriter { out: Vec::new(), limit: output_limit(content), exceeded: false };
        let rendered = template.render_captured_to(ctx, &mut writer);
        match rendered {
            Ok(_) => String::from_utf8(writer.out)
                .map_err(|_| TemplateError::Render(JinjaError::new(ErrorKind::BadSerialization, "invalid UTF-8"))),
            Err(_) if writer.exceeded => Err(TemplateError::OutputTooLarge {
                sha: self.source_sha256[..12].to_string(),
                limit: writer.limit,
                content,
            }),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                Err(TemplateError::OutOfFuel { sha: self.source_sha256[..12].to_string(), limit: TEMPLATE_FUEL })
            }
            Err(e) => Err(TemplateError::Render(e)),
        }
    }

    /// The fuel one rendering of `messages` takes (for the limit's measured margin).
    pub fn fuel_used(&self, messages: &[ChatTurn<'_>], add_generation_prompt: bool) -> Option<u64> {
        let template = self.env.get_template(TEMPLATE_NAME).ok()?;
        let captured =
            template.render_captured_to(self.context(messages, add_generation_prompt), std::io::sink()).ok()?;
        captured.state().fuel_levels().map(|(consumed, _)| consumed)
    }

    /// What the template sees: the special tokens, the messages, no tools, no documents.
    fn context(&self, messages: &[ChatTurn<'_>], add_generation_prompt: bool) -> BTreeMap<String, Value> {
        let mut ctx: BTreeMap<String, Value> = self.special_tokens.clone();
        ctx.insert("messages".into(), Value::from(Serde(messages)));
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        ctx
    }
}

fn raise_exception(message: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// transformers renders with the wall clock; scores must not depend on the day they are
/// computed, so skyscore pins the date to 26 Jul 2024 (the Llama 3.1 templates' own default).
fn strftime_now(format: String) -> Result<String, JinjaError> {
    const DAY: u32 = 26;
    const MONTH: usize = 7;
    const YEAR: i32 = 2024;
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
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => write!(out, "{DAY:02}").unwrap(),
            Some('-') if chars.clone().next() == Some('d') => {
                chars.next();
                write!(out, "{DAY}").unwrap()
            }
            Some('m') => write!(out, "{MONTH:02}").unwrap(),
            Some('b') => out.push_str(&MONTHS[MONTH - 1][..3]),
            Some('B') => out.push_str(MONTHS[MONTH - 1]),
            Some('Y') => write!(out, "{YEAR}").unwrap(),
            Some('y') => write!(out, "{:02}", YEAR % 100).unwrap(),
            Some('a') => out.push_str("Fri"),
            Some('A') => out.push_str("Friday"),
            Some('H') | Some('M') | Some('S') => out.push_str("00"),
            Some('j') => out.push_str("208"),
            Some('%') => out.push('%'),
            Some(other) => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!("strftime_now: unsupported directive %{other}"),
                ))
            }
            None => out.push('%'),
        }
    }
    Ok(out)
}

/// Python's `str.isspace`, which Jinja's `trim` follows (Rust's set lacks U+001C..U+001F).
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Jinja's `trim(value, chars=None)`: Python `str.strip`.
fn python_trim(value: String, chars: Option<String>) -> String {
    match chars {
        Some(chars) => value.trim_matches(|c| chars.contains(c)).to_string(),
        None => value.trim_matches(is_python_space).to_string(),
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`, i.e. Python's formatting, not HTML-safe JSON.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, JinjaError> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_string()),
        Some(v) => Some(" ".repeat(i64::try_from(v)?.max(0) as usize)),
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let a: Vec<String> = v.try_iter()?.map(|s| s.to_string()).collect();
            if a.len() != 2 {
                return Err(JinjaError::new(ErrorKind::InvalidOperation, "tojson: separators must be a pair"));
            }
            (a[0].clone(), a[1].clone())
        }
        _ => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(&mut out, &value, 0)?;
    Ok(Value::from(out))
}

struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl JsonStyle {
    fn newline(&self, out: &mut String, level: usize) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn write(&self, out: &mut String, value: &Value, level: usize) -> Result<(), JinjaError> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                if value.is_integer() {
                    write!(out, "{value}").unwrap();
                } else {
                    out.push_str(&python_float_repr(f64::try_from(value.clone())?));
                }
            }
            ValueKind::String | ValueKind::Plain => self.write_str(out, value.as_str().unwrap_or(&value.to_string())),
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if self.sort_keys {
                    keys.sort_by_key(|k| k.to_string());
                }
                out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    match key.kind() {
                        ValueKind::String => self.write_str(out, key.as_str().unwrap_or_default()),
                        _ => self.write_str(out, &key.to_string()),
                    }
                    out.push_str(&self.key_sep);
                    self.write(out, &value.get_item(key)?, level + 1)?;
                }
                self.newline(out, level);
                out.push('}');
            }
            _ => {
                let items: Vec<Value> = value.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(out, level + 1);
                    self.write(out, item, level + 1)?;
                }
                self.newline(out, level);
                out.push(']');
            }
        }
        Ok(())
    }

    fn write_str(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) > 0x7e) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        write!(out, "\\u{unit:04x}").unwrap();
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form below 1e-4 and from 1e16.
fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let sci = format!("{x:e}"); // e.g. "1.5e-5", "-1e16"
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` always has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    if (-4..16).contains(&exp) {
        let plain = format!("{x}");
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(src: &str) -> ChatTemplate {
        ChatTemplate::new(src, BTreeMap::new()).unwrap()
    }

    fn one_turn() -> Vec<ChatTurn<'static>> {
        vec![ChatTurn::new("user", "hello there, a short message")]
    }

    #[test]
    fn a_template_that_loops_too_long_is_stopped() {
        let t = chat("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x");
        let err = t.render(&one_turn(), false).unwrap_err();
        assert!(matches!(err, TemplateError::OutOfFuel { .. }), "{err}");
        assert!(err.to_string().contains("work limit of 10000000 steps"), "{err}");
    }

    #[test]
    fn a_template_that_doubles_a_string_is_stopped() {
        // 40 doublings would ask for a terabyte; minijinja charges fuel by the work done.
        let t = chat(
            "{% set ns = namespace(x='a') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x }}",
        );
        let err = t.render(&one_turn(), false).unwrap_err();
        assert!(matches!(err, TemplateError::OutOfFuel { .. } | TemplateError::OutputTooLarge { .. }), "{err}");
    }

    #[test]
    fn a_template_that_writes_too_much_is_stopped() {
        let t = chat(
            "{% for i in range(1000) %}{% for j in range(1000) %}{{ messages[0].content }}{% endfor %}{% endfor %}",
        );
        let err = t.render(&one_turn(), false).unwrap_err();
        assert!(matches!(err, TemplateError::OutputTooLarge { content: 32, .. }), "{err}");
        // A template that repeats the content a few times stays well inside the limit.
        let ok = chat("{% for i in range(4) %}{{ messages[0].content }}{% endfor %}").render(&one_turn(), false);
        assert_eq!(ok.unwrap().len(), 4 * 28);
    }

    fn render(src: &str, ctx: Value) -> String {
        let t = ChatTemplate::new(src, BTreeMap::new()).unwrap();
        let template = t.env.get_template(TEMPLATE_NAME).unwrap();
        template.render(ctx).unwrap()
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let ctx = Value::from(Serde(serde_json::json!({
            "x": {"name": "f", "args": [1, 2.5, 1e-5, 1e16, null, true, "é\n\"<>"], "empty": {}, "list": []}
        })));
        assert_eq!(
            render("{{ x | tojson }}", ctx.clone()),
            r#"{"args": [1, 2.5, 1e-05, 1e+16, null, true, "é\n\"<>"], "empty": {}, "list": [], "name": "f"}"#
        );
        assert_eq!(render("{{ x.args[:2] | tojson(indent=2) }}", ctx), "[\n  1,\n  2.5\n]");
    }

    #[test]
    fn python_string_methods_and_loop_controls() {
        let src = "{% for m in ms %}{% if loop.index0 == 1 %}{% continue %}{% endif %}{{ m.strip('\\n').split('|')[-1] | upper }}{% endfor %}";
        let ctx = Value::from(Serde(serde_json::json!({"ms": ["\na|b\n", "skip", "c"]})));
        assert_eq!(render(src, ctx), "BC");
    }

    #[test]
    fn trim_blocks_and_lstrip_blocks_like_transformers() {
        let src = "  {% if true %}\nyes\n  {% endif %}\nend";
        assert_eq!(render(src, Value::from(())), "yes\nend");
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('bad roles') }}", BTreeMap::new()).unwrap();
        let err = t.render(&[], false).unwrap_err().to_string();
        assert!(err.contains("bad roles"), "{err}");
    }

    #[test]
    fn strftime_now_is_pinned() {
        assert_eq!(render("{{ strftime_now('%d %b %Y') }}", Value::from(())), "26 Jul 2024");
    }

    #[test]
    fn trim_follows_python_whitespace() {
        assert_eq!(python_trim("\u{1c} a \u{3000}".into(), None), "a");
        assert_eq!(python_trim("xxaxx".into(), Some("x".into())), "a");
    }
}
