//! Checking a request's fields and turning them into generation options: every rejection is a 400
//! naming the field, as OpenAI's API does.

use super::error::ApiError;
use super::openai::SamplingFields;
use crate::generate::{GenerateOptions, SamplingParams};

/// Server-wide limits on one request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The model's context (prompt + generated tokens).
    pub context: usize,
    /// Largest `max_tokens` accepted.
    pub max_tokens: usize,
    /// `max_tokens` when a request gives none (capped by the room left in the context).
    pub default_max_tokens: usize,
}

/// Most stop strings (OpenAI's limit).
const MAX_STOPS: usize = 4;

/// A JSON body parsed into `T`, or a 400 whose `param` is the path of the field at fault.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        // "." is the whole body, "?" a syntax error before any field.
        let param = (path != "." && path != "?").then_some(path);
        ApiError::invalid(
            param.as_deref(),
            format!("invalid JSON body: {}", e.into_inner()),
        )
    })
}

/// Sampling options from the shared fields, for a prompt of `prompt_tokens` tokens.
pub fn generate_options(
    fields: &SamplingFields,
    prompt_tokens: usize,
    prompt_field: &str,
    limits: &Limits,
) -> Result<GenerateOptions, ApiError> {
    if let Some(n) = fields.n {
        if n != 1 {
            return Err(ApiError::invalid(
                Some("n"),
                format!("n = {n}: only n = 1 is supported"),
            ));
        }
    }
    let room = limits.context.saturating_sub(prompt_tokens);
    if room == 0 {
        return Err(ApiError::invalid(
            Some(prompt_field),
            format!(
                "the prompt has {prompt_tokens} tokens; the model's context is {} tokens",
                limits.context
            ),
        ));
    }
    let (field, asked) = match (fields.max_completion_tokens, fields.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let max_tokens = match asked {
        None => limits.default_max_tokens.min(room),
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(Some(field), format!("{field} = {m} must be at least 1")))
        }
        Some(m) if m as u64 > limits.max_tokens as u64 => {
            return Err(ApiError::invalid(
                Some(field),
                format!("{field} = {m} is more than this server's limit of {}", limits.max_tokens),
            ))
        }
        Some(m) if m as usize > room => {
            return Err(ApiError::invalid(
                Some(field),
                format!(
                    "{field} = {m} plus the prompt's {prompt_tokens} tokens exceed the model's context of {} tokens",
                    limits.context
                ),
            ))
        }
        Some(m) => m as usize,
    };
    let temperature = number(fields.temperature, "temperature", 1.0, 0.0..=2.0)?;
    let top_p = number(fields.top_p, "top_p", 1.0, 0.0..=1.0)?;
    if top_p <= 0.0 {
        return Err(ApiError::invalid(
            Some("top_p"),
            "top_p must be greater than 0",
        ));
    }
    let stop_strings = fields
        .stop
        .clone()
        .map(|s| s.into_vec())
        .unwrap_or_default();
    if stop_strings.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            Some("stop"),
            format!("{} stop strings; at most {MAX_STOPS}", stop_strings.len()),
        ));
    }
    let seed = match fields.seed {
        Some(s) if s < 0 => {
            return Err(ApiError::invalid(Some("seed"), "seed must not be negative"))
        }
        Some(s) => s as u64,
        None => rand::random(),
    };
    Ok(GenerateOptions {
        max_tokens,
        sampling: SamplingParams {
            temperature: temperature as f32,
            // OpenAI's sampler: temperature and top_p only.
            top_k: 0,
            top_p: top_p as f32,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: None,
            seed,
        },
        stop_strings,
        eos_token_ids: fields.ignore_eos.then(Vec::new),
        adapter: None,
    })
}

/// An optional number in a range, or its default.
pub fn number(
    value: Option<f64>,
    field: &str,
    default: f64,
    range: std::ops::RangeInclusive<f64>,
) -> Result<f64, ApiError> {
    match value {
        None => Ok(default),
        Some(v) if v.is_finite() && range.contains(&v) => Ok(v),
        Some(v) => Err(ApiError::invalid(
            Some(field),
            format!(
                "{field} = {v} is not in [{}, {}]",
                range.start(),
                range.end()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            context: 100,
            max_tokens: 50,
            default_max_tokens: 30,
        }
    }

    fn fields(json: &str) -> SamplingFields {
        parse_body(json.as_bytes()).unwrap()
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (r#"{"n": 2}"#, 10, "n"),
            (r#"{"max_tokens": 0}"#, 10, "max_tokens"),
            (r#"{"max_tokens": 51}"#, 10, "max_tokens"),
            (r#"{"max_tokens": 50}"#, 60, "max_tokens"),
            (
                r#"{"max_completion_tokens": 999}"#,
                10,
                "max_completion_tokens",
            ),
            (r#"{"temperature": 3}"#, 10, "temperature"),
            (r#"{"top_p": 0}"#, 10, "top_p"),
            (r#"{"stop": ["a","b","c","d","e"]}"#, 10, "stop"),
            (r#"{"seed": -1}"#, 10, "seed"),
            (r#"{}"#, 100, "prompt"),
        ];
        for (json, prompt, param) in cases {
            let err = generate_options(&fields(json), prompt, "prompt", &limits()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{json}: {err}");
            assert_eq!(err.status.as_u16(), 400);
        }
        let ok = generate_options(
            &fields(r#"{"stop": "x", "seed": 3}"#),
            90,
            "prompt",
            &limits(),
        )
        .unwrap();
        assert_eq!(ok.max_tokens, 10);
        assert_eq!(ok.stop_strings, vec!["x".to_string()]);
        assert_eq!(ok.sampling.seed, 3);
    }

    #[test]
    fn type_errors_name_the_path() {
        let err = parse_body::<super::super::openai::ChatRequest>(
            br#"{"model": "m", "messages": [{"role": 3}]}"#,
        )
        .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0].role"), "{err}");
        let err = parse_body::<super::super::openai::ChatRequest>(b"{not json").unwrap_err();
        assert_eq!(err.status.as_u16(), 400);
    }
}
