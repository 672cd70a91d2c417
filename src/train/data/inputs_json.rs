//! A fixed batch of token ids from a JSON file (`input_ids`, `attention_mask`, `token_type_ids`,
//! `labels`): what `peft grads` reads, and how the parity and memory tests read their fixtures.

use crate::model::encoder::Inputs;
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

/// Reads `input_ids`, `attention_mask`, `labels` and optional `token_type_ids` (else zeros).
pub fn read_inputs_json(path: &Path) -> Result<(Inputs, Vec<u32>)> {
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
    let labels = v
        .get("labels")
        .and_then(|l| l.as_array())
        .ok_or_else(|| anyhow!("{}: no \"labels\" list", path.display()))?
        .iter()
        .map(|n| n.as_u64().map(|n| n as u32).ok_or_else(|| anyhow!("{}: labels must be integers", path.display())))
        .collect::<Result<Vec<u32>>>()?;
    let inputs = Inputs {
        batch,
        seq,
        ids: ids.concat(),
        token_types: types.concat(),
        mask: mask.concat().iter().map(|&m| m as f32).collect(),
    };
    Ok((inputs, labels))
}
