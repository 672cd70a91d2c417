//! JSON Lines (one object per line) and JSON arrays of objects.

use super::{DataOptions, Example};
use crate::formats::adapterhub::HeadKind;
use anyhow::{anyhow, bail, Result};
use serde_json::Value;
use std::path::Path;

pub(super) fn read_json(path: &Path, bytes: &[u8], opts: &DataOptions) -> Result<Vec<Example>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow!("{}:{line}: not valid UTF-8: {e}", path.display())
    })?;
    if text.trim_start().starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(text)
            .map_err(|e| anyhow!("{}:{}:{}: invalid JSON: {e}", path.display(), e.line(), e.column()))?;
        return items
            .iter()
            .enumerate()
            .map(|(i, v)| json_example(v, opts, i + 1).map_err(|e| anyhow!("{}: item {}: {e}", path.display(), i + 1)))
            .collect();
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| anyhow!("{}:{n}:{}: invalid JSON: {e}", path.display(), e.column()))?;
        out.push(json_example(&v, opts, n).map_err(|e| anyhow!("{}:{n}: {e}", path.display()))?);
    }
    Ok(out)
}

fn json_example(v: &Value, opts: &DataOptions, line: usize) -> Result<Example> {
    let obj = v.as_object().ok_or_else(|| anyhow!("expected a JSON object, got {}", json_kind(v)))?;
    let keys = || obj.keys().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ");
    let text_field = |name: &str, what: &str, flag: &str| -> Result<String> {
        match obj.get(name) {
            None => bail!("no {what} field {name:?} (fields: {}); choose one with {flag}", keys()),
            Some(Value::String(s)) if s.trim().is_empty() => bail!("empty text in field {name:?}"),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => bail!("field {name:?} must be a string, got {}", json_kind(other)),
        }
    };
    let text = text_field(&opts.text_column, "text", "choose one with --text-column")?;
    let pair = match &opts.text_pair_column {
        Some(c) => Some(text_field(c, "text pair", "choose one with --text-pair-column")?),
        None => None,
    };
    let name = &opts.label_column;
    let label =
        match obj.get(name) {
            None | Some(Value::Null) if !opts.require_labels => None,
            None => bail!("no label field {name:?} (fields: {}); choose one with --label-column", keys()),
            Some(Value::Null) => bail!("label field {name:?} is null"),
            Some(Value::String(s)) if s.trim().is_empty() => {
                if opts.require_labels {
                    bail!("empty label in field {name:?}");
                }
                None
            }
            Some(Value::String(s)) => Some(s.trim().to_string()),
            // A regression target: any number, as written.
            Some(Value::Number(n)) if opts.head_kind == HeadKind::Regression => Some(n.to_string()),
            Some(Value::Number(n)) => Some(integer_label(n).ok_or_else(|| {
                anyhow!("label {n} in field {name:?} is not an integer (use integer or string labels)")
            })?),
            Some(Value::Bool(b)) => Some(b.to_string()),
            // Multi-label: a list of label names (or integers), kept `|`-separated as in CSV cells.
            Some(Value::Array(items)) if opts.head_kind == HeadKind::MultilabelClassification => {
                let mut names = Vec::with_capacity(items.len());
                for item in items {
                    let n = match item {
                        Value::String(s) if !s.trim().is_empty() && !s.contains(super::MULTI_LABEL_SEPARATOR) => {
                            s.trim().to_string()
                        }
                        Value::Number(n) => integer_label(n)
                            .ok_or_else(|| anyhow!("label {n} in the list {name:?} is not an integer"))?,
                        other => bail!(
                            "the labels in the list {name:?} must be non-empty strings without \"{}\" or integers, got {other}",
                            super::MULTI_LABEL_SEPARATOR
                        ),
                    };
                    names.push(n);
                }
                Some(names.join(&super::MULTI_LABEL_SEPARATOR.to_string()))
            }
            Some(other) => bail!(
                "label field {name:?} must be a string or an integer, got {} (a list of labels needs --head-type multilabel_classification)",
                json_kind(other)
            ),
        };
    Ok(Example { text, pair, label, line })
}

/// A JSON number as an integer label in decimal: `1`, `-2`, and `1.0` as `1`.
fn integer_label(n: &serde_json::Number) -> Option<String> {
    if let Some(i) = n.as_i64() {
        return Some(i.to_string());
    }
    if let Some(u) = n.as_u64() {
        return Some(u.to_string());
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then(|| format!("{}", f as i64))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_number_labels() {
        let n = |s: &str| integer_label(&serde_json::from_str::<serde_json::Number>(s).unwrap());
        assert_eq!(n("3").as_deref(), Some("3"));
        assert_eq!(n("-3").as_deref(), Some("-3"));
        assert_eq!(n("1.0").as_deref(), Some("1"));
        assert_eq!(n("0.5"), None);
    }
}
