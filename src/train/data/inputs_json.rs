//! A fixed batch of token ids from a JSON file (`input_ids`, `attention_mask`, `token_type_ids`,
//! `labels`): what `peft grads` reads, and how the parity and memory tests read their fixtures.
//! `labels` by head kind: class ids (classification), numbers (regression), one 0 / 1 list per
//! sequence (multi-label), one list of class ids per sequence with `-100` for ignored tokens
//! (tagging, as HF's token classification labels).

use crate::formats::adapterhub::HeadKind;
use crate::kernels::loss::IGNORE_LABEL;
use crate::model::encoder::{Inputs, Targets};
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

/// A batch's training targets, owned (see [`Targets`]).
#[derive(Clone, Debug, PartialEq)]
pub enum OwnedTargets {
    Classes(Vec<u32>),
    Values(Vec<f32>),
}

impl OwnedTargets {
    pub fn as_targets(&self) -> Targets<'_> {
        match self {
            OwnedTargets::Classes(c) => Targets::Classes(c),
            OwnedTargets::Values(v) => Targets::Values(v),
        }
    }
}

/// Reads `input_ids`, `attention_mask`, `labels` and optional `token_type_ids` (else zeros), the
/// labels as a classification head's class ids.
pub fn read_inputs_json(path: &Path) -> Result<(Inputs, Vec<u32>)> {
    let (inputs, v) = read_batch(path)?;
    let labels = v
        .get("labels")
        .and_then(|l| l.as_array())
        .ok_or_else(|| anyhow!("{}: no \"labels\" list", path.display()))?
        .iter()
        .map(|n| n.as_u64().map(|n| n as u32).ok_or_else(|| anyhow!("{}: labels must be integers", path.display())))
        .collect::<Result<Vec<u32>>>()?;
    Ok((inputs, labels))
}

/// [`read_inputs_json`] with the labels as a `kind` head trains on them (see the module's doc).
pub fn read_targets_json(path: &Path, kind: HeadKind) -> Result<(Inputs, OwnedTargets)> {
    if kind == HeadKind::Classification {
        let (inputs, labels) = read_inputs_json(path)?;
        return Ok((inputs, OwnedTargets::Classes(labels)));
    }
    let (inputs, v) = read_batch(path)?;
    let bad = |what: &str| anyhow!("{}: a {kind} head's \"labels\" must be {what}", path.display());
    let list = v.get("labels").and_then(|l| l.as_array());
    let targets = match kind {
        HeadKind::Regression => {
            let want = "a list of numbers, one per sequence";
            let l = list.ok_or_else(|| bad(want))?;
            OwnedTargets::Values(
                l.iter().map(|x| x.as_f64().map(|x| x as f32).ok_or_else(|| bad(want))).collect::<Result<_>>()?,
            )
        }
        HeadKind::MultilabelClassification => {
            let want = "a list of 0 / 1 lists, one per sequence";
            let rows = list.ok_or_else(|| bad(want))?;
            let mut out = vec![];
            for r in rows {
                for x in r.as_array().ok_or_else(|| bad(want))? {
                    out.push(x.as_f64().map(|x| x as f32).ok_or_else(|| bad(want))?);
                }
            }
            OwnedTargets::Values(out)
        }
        HeadKind::Tagging => {
            let want = "a list of class-id lists (-100: ignored), one per sequence, padded like input_ids";
            let rows = list.ok_or_else(|| bad(want))?;
            let mut out = vec![];
            for r in rows {
                let r = r.as_array().ok_or_else(|| bad(want))?;
                if r.len() != inputs.seq {
                    bail!(
                        "{}: a tagging head's label rows must have {} entries, got {}",
                        path.display(),
                        inputs.seq,
                        r.len()
                    );
                }
                for x in r {
                    out.push(match x.as_i64() {
                        Some(-100) => IGNORE_LABEL,
                        Some(n) if n >= 0 && n < IGNORE_LABEL as i64 => n as u32,
                        _ => return Err(bad(want)),
                    });
                }
            }
            OwnedTargets::Classes(out)
        }
        HeadKind::Classification => unreachable!("handled above"),
    };
    Ok((inputs, targets))
}

/// The batch's inputs and the parsed JSON (for its labels).
fn read_batch(path: &Path) -> Result<(Inputs, serde_json::Value)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))?;
    let rows = |k: &str| -> Result<Option<Vec<Vec<u32>>>> {
        let Some(x) = v.get(k) else { return Ok(None) };
        let bad = || anyhow!("{}: {k:?} must be a list of lists of non-negative integers", path.display());
        x.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|r| {
                r.as_array()
                    .ok_or_else(bad)?
                    .iter()
                    .map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(bad))
                    .collect::<Result<Vec<u32>>>()
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    };
    let ids = rows("input_ids")?.ok_or_else(|| anyhow!("{}: no \"input_ids\"", path.display()))?;
    let mask = rows("attention_mask")?.unwrap_or_else(|| ids.iter().map(|r| vec![1; r.len()]).collect());
    let batch = ids.len();
    if batch == 0 {
        bail!("{}: \"input_ids\" is empty", path.display());
    }
    let seq = ids[0].len();
    let types = rows("token_type_ids")?.unwrap_or_else(|| vec![vec![0; seq]; batch]);
    for (name, r) in [("input_ids", &ids), ("attention_mask", &mask), ("token_type_ids", &types)] {
        if r.len() != batch || r.iter().any(|row| row.len() != seq) {
            bail!("{}: {name:?} must be {batch} rows of {seq} (padded to one length)", path.display());
        }
    }
    let inputs = Inputs {
        batch,
        seq,
        ids: ids.concat(),
        token_types: types.concat(),
        mask: mask.concat().iter().map(|&m| m as f32).collect(),
    };
    Ok((inputs, v))
}
