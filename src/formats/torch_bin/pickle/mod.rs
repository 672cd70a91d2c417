//! The subset of Python's pickle that `torch.save` writes for a state dict, interpreted without
//! executing anything: an `OrderedDict` (or dict) of `torch._utils._rebuild_tensor_v2` calls over
//! persistent-id storages. Every other opcode, and every global but the few named in
//! `objects::Global`, is an error naming it.
//!
//! Objects live in an arena and the stack and memo hold their indices, so memoized objects are
//! shared as in Python (no copies, no blow-up from repeated `BINGET`s).
//!
//! Files: `machine.rs` (the opcodes), `objects.rs` (the objects, the allowed globals and what
//! calling them gives), `opcodes.rs` (opcode names for errors).

mod machine;
mod objects;
mod opcodes;

pub use objects::TensorDesc;

use anyhow::{bail, Result};
use machine::Machine;
use objects::Obj;

/// Interprets `data.pkl`: the state dict's entries in order, each a tensor view.
pub fn state_dict(pickle: &[u8]) -> Result<Vec<(String, TensorDesc)>> {
    let mut m = Machine::new(pickle);
    let root = m.run()?;
    let Obj::Dict(entries) = &m.arena[root] else {
        bail!("the pickle holds a {}, not a state dict (a dict of tensors)", m.arena[root].kind());
    };
    let mut out: Vec<(String, TensorDesc)> = Vec::with_capacity(entries.len());
    let mut seen = std::collections::HashSet::new();
    for &(k, v) in entries {
        let Obj::Str(name) = &m.arena[k] else {
            bail!("a state dict key is a {}, not a str", m.arena[k].kind());
        };
        let Obj::Tensor(t) = &m.arena[v] else {
            bail!("state dict entry {name:?} is a {}, not a tensor", m.arena[v].kind());
        };
        if !seen.insert(name.clone()) {
            bail!("state dict key {name:?} appears twice");
        }
        out.push((name.clone(), t.clone()));
    }
    Ok(out)
}
