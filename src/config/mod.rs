//! The configuration document, the ground floor of the crate: its raw
//! serde types (`raw`), durations, names, the JSON Schema, and
//! [`ConfigError`]. It imports nothing else of meshguard: each feature
//! compiles its own raw section (`<feature>::policy`), and `plan` assembles
//! the validated, immutable `plan::Config`. The reference users read is
//! `docs/configuration.md`.
//!
//! ```json
//! { "routes": [ { "name": "api", "match": { "path_prefix": "/api/" },
//!                 "rate_limit": [ { "name": "all", "capacity": 100,
//!                                   "refill_tokens": 100, "refill_interval": "1m" } ] } ] }
//! ```
//!
//! Every failure is a [`ConfigError`] naming the JSON path, what is expected
//! and the bad value, e.g.
//! `invalid config at routes[1].rate_limit[0].capacity: expected an integer >= 1, got 0`.
//! Unknown keys are errors (a typo must never silently disable a policy); a
//! top-level `"$schema"` string is the one key that is allowed and ignored.
//! A member named twice in one object is an error too
//! (`invalid config at routes[0]: duplicate member "jwt" at line 1 column 57`),
//! never "the last one wins" (`json`).
//! An empty document (zero bytes or whitespace) is valid: no routes, every
//! request passes through untouched.

pub(crate) mod duration;
pub(crate) mod error;
pub mod json;
#[cfg(test)]
mod path;
pub mod raw;
mod read;
pub mod shape;

pub use duration::{fmt_duration, Duration};
pub use error::{show_str, valid_name, ConfigError, NAME_EXPECTED};
use raw::RawConfig;

/// Largest configuration document accepted (bytes). Envoy hands the whole
/// document to every worker VM; anything bigger is almost surely a mistake.
pub const MAX_CONFIG_BYTES: usize = 4 * 1024 * 1024;

/// Parses a configuration document into its raw form: `None` for an empty
/// document (zero bytes or whitespace: no routes). Structure, names and
/// types are checked here; values and cross-field rules by the features
/// and `plan`.
pub fn parse(bytes: &[u8]) -> Result<Option<RawConfig>, ConfigError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::expected(
            "",
            &format!("a document of at most {MAX_CONFIG_BYTES} bytes"),
            format!("{} bytes", bytes.len()),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ConfigError::new(
            "",
            format!(
                "expected UTF-8 JSON text, got invalid UTF-8 at byte {}",
                e.valid_up_to()
            ),
        )
    })?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    if !text.trim_start().starts_with('{') {
        let first: String = text.trim_start().chars().take(20).collect();
        return Err(ConfigError::expected(
            "",
            "a JSON object",
            format!("{first:?}..."),
        ));
    }
    // Two steps: JSON text to a `Value` (syntax errors, with line and
    // column; a member repeated in one object is refused, with the
    // object's path: `json`), then the `Value` to the typed document with
    // the JSON path of an error tracked (`read`: hand-written, for size).
    let value = json::parse(text).map_err(|e| match e.duplicate {
        Some(path) => ConfigError::new(path, e.error.to_string()),
        None => ConfigError::new("", humanize_serde(&e.error)),
    })?;
    if let Some(path) = shape::array_where_object(&value) {
        return Err(ConfigError::expected(path, "an object", "an array"));
    }
    let raw = read::config(&value).map_err(|e| ConfigError::new(e.path(), humanize(e.msg)))?;
    Ok(Some(raw))
}

/// The JSON Schema of the configuration document, generated from the serde
/// types (committed as `meshguard.schema.json`; a test keeps it fresh).
/// It checks structure, names and simple ranges; cross-field rules (unique
/// names, provider references, cost <= capacity...) are only checked by
/// `plan::Config::from_bytes` (and `meshguard-validate`).
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(raw::RawConfig);
    let mut s = serde_json::to_string_pretty(&schema).unwrap_or_default();
    s.push('\n');
    s
}

/// Rewrites serde's wording ("invalid type: string \"x\", expected u32")
/// into the contract's ("expected an integer, got string \"x\"").
fn humanize_serde(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    // Strip serde_json's " at line L column C" suffix: the JSON path says where.
    let msg = match msg.rfind(" at line ") {
        Some(i) if e.line() > 0 => msg[..i].to_string(),
        _ => msg,
    };
    if e.is_syntax() || e.is_eof() {
        return format!(
            "expected JSON, got a syntax error ({msg}) at line {} column {}",
            e.line(),
            e.column()
        );
    }
    humanize(msg)
}

/// The rewording of serde's data errors (`read` builds the same messages
/// as serde's derives did, so the same rules apply).
fn humanize(msg: String) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((got, want)) = rest.split_once(", expected ") {
                return format!("expected {}, got {}", friendly_type(want), got);
            }
        }
    }
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        if let Some((field, allowed)) = rest.split_once(", expected ") {
            return format!("unknown key {field}: expected {allowed}");
        }
        return format!("unknown key {rest}");
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        return format!("missing required key {rest}");
    }
    msg
}

fn friendly_type(want: &str) -> String {
    match want {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" | "bool" => "true or false".into(),
        "a sequence" => "an array".into(),
        "a map" => "an object".into(),
        other => other.to_string(),
    }
}
