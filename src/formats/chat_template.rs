//! Chat templates: the Jinja templates HF ships in `tokenizer_config.json` (or `chat_template.jinja`)
//! and GGUF in `tokenizer.chat_template`, rendered with minijinja set up the way transformers sets
//! up Jinja2: `trim_blocks`, `lstrip_blocks`, loop controls, Python string methods (`.strip()`,
//! `.startswith()`, via minijinja-contrib's pycompat), `raise_exception`, `strftime_now` and a
//! `tojson` that writes what Python's `json.dumps` writes.

use std::path::Path;

use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::{Error, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message of `role` with `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .finish()
    }
}

impl Clone for ChatTemplate {
    fn clone(&self) -> Self {
        Self::new(&self.source).expect("a template that compiled once compiles again")
    }
}

const TEMPLATE_NAME: &str = "chat";

/// Instructions one render may execute. A template comes with a downloaded model, so a hostile or
/// broken one (`{% for a in range(99999) %}{% for b in range(99999) %}`) must end in an error, not
/// run for hours. Real chat templates take a few hundred instructions per message (ChatML over 200
/// messages: ~6k), far below this.
const TEMPLATE_FUEL: u64 = 20_000_000;

impl ChatTemplate {
    /// Compiles a template; a syntax error is reported with its line.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| Error::ChatTemplate(format!("cannot parse template: {e:#}")))?;
        Ok(Self {
            env,
            source: source.to_string(),
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The `chat_template` of a `tokenizer_config.json`: a string, or a list of `{name, template}`
    /// (the one named `default`, else the first). `None` if the file has none.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        let json = crate::formats::config::read_json(path)?;
        let source = match json.get("chat_template") {
            Some(Json::String(s)) => s.clone(),
            Some(Json::Array(items)) => {
                let named = |name: &str| {
                    items
                        .iter()
                        .find(|item| item.get("name").and_then(Json::as_str) == Some(name))
                };
                let chosen = named("default").or_else(|| items.first());
                match chosen
                    .and_then(|item| item.get("template"))
                    .and_then(Json::as_str)
                {
                    Some(s) => s.to_string(),
                    None => {
                        return Err(Error::Config {
                            path: path.to_path_buf(),
                            reason: "`chat_template` list has no {name, template} entry".into(),
                        })
                    }
                }
            }
            _ => return Ok(None),
        };
        Self::new(&source).map(Some)
    }

    /// A template read from a `.jinja` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let source = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
        Self::new(&source)
    }

    /// Renders `messages` into the prompt text. `add_generation_prompt` appends the assistant header
    /// so the model answers next. `bos_token`/`eos_token` are the strings templates refer to.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::ChatTemplate(format!("{e:#}")))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token,
                eos_token => eos_token,
            })
            .map_err(|e| Error::ChatTemplate(format!("rendering failed: {e:#}")))
    }
}

/// `raise_exception(msg)`: templates call it to reject a conversation (e.g. roles out of order).
fn raise_exception(message: String) -> std::result::Result<JinjaValue, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now(format)`: the current UTC time formatted with C `strftime` codes
/// (`%Y %m %d %e %B %b %A %a %H %M %S %y %j %%`), as Llama 3 templates use for "Today Date".
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_time(secs, &format)
}

/// Formats Unix time `secs` (UTC) with strftime codes.
fn format_time(secs: i64, format: &str) -> String {
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
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let yday = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('j') => out.push_str(&format!("{yday:03}")),
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

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31) (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// (year, month, day) -> days since 1970-01-01.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `x | tojson(indent=N, sort_keys=bool)`: Python `json.dumps(x, ensure_ascii=False)` output
/// (`", "` and `": "` separators; HF's Jinja does not HTML-escape, unlike minijinja's built-in).
fn tojson(value: JinjaValue, kwargs: Kwargs) -> std::result::Result<JinjaValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_python_json(&json, indent, sort_keys.unwrap_or(false), 0, &mut out);
    Ok(JinjaValue::from_safe_string(out))
}

fn write_python_json(
    value: &Json,
    indent: Option<usize>,
    sort: bool,
    depth: usize,
    out: &mut String,
) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value {
        Json::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_python_json(item, indent, sort, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Json::Object(map) if !map.is_empty() => {
            let mut entries: Vec<(&String, &Json)> = map.iter().collect();
            if sort {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Json::String(key.clone()).to_string());
                out.push_str(": ");
                write_python_json(item, indent, sort, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_known_days() {
        // 2024-02-29 12:34:56 UTC = 1709210096 (a leap day, a Thursday).
        assert_eq!(
            format_time(1_709_210_096, "%Y-%m-%d %H:%M:%S %A %j"),
            "2024-02-29 12:34:56 Thursday 060"
        );
        assert_eq!(format_time(0, "%d %B %Y %a"), "01 January 1970 Thu");
        assert_eq!(format_time(1_767_139_200, "%d %b %Y"), "31 Dec 2025");
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}").unwrap();
        // json.dumps({"a": [1, "<b>"], "c": None}) == '{"a": [1, "<b>"], "c": null}'
        let env_out = t
            .env
            .render_str(
                &t.source,
                minijinja::context! { x => serde_json::json!({"a": [1, "<b>"], "c": null}) },
            )
            .unwrap();
        assert_eq!(
            env_out,
            "{\"a\": [1, \"<b>\"], \"c\": null}|{\n  \"a\": [\n    1,\n    \"<b>\"\n  ],\n  \"c\": null\n}"
        );
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok").unwrap();
        let err = t
            .render(&[ChatMessage::new("assistant", "hi")], false, "", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("first must be user"), "{err}");
        assert_eq!(
            t.render(&[ChatMessage::new("user", "hi")], false, "", "")
                .unwrap(),
            "ok"
        );
    }
}
