//! What the pickle builds: the few object kinds a state dict holds, the allowed globals, and
//! what calling them (`REDUCE`) or resolving a storage reference (`BINPERSID`) gives. Objects live
//! in an [`Arena`]; the stack and memo hold their indices.

use anyhow::{bail, Result};
use safetensors::Dtype;

/// A tensor as the pickle describes it: a view into a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDesc {
    /// The storage's key (`data/<key>` in the archive).
    pub key: String,
    pub dtype: Dtype,
    /// Elements in the storage, as its persistent id says.
    pub storage_numel: u64,
    /// In elements.
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// The only globals a state dict references.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(Dtype),
}

impl Global {
    pub(super) fn resolve(module: &str, name: &str) -> Result<Self> {
        Ok(match (module, name) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
            ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
            ("torch", "FloatStorage") => Global::Storage(Dtype::F32),
            ("torch", "HalfStorage") => Global::Storage(Dtype::F16),
            ("torch", "BFloat16Storage") => Global::Storage(Dtype::BF16),
            ("torch", s) if s.ends_with("Storage") => bail!(
                "storage type torch.{s} is not supported: only FloatStorage (f32), HalfStorage (f16) and \
                 BFloat16Storage (bf16) tensors can be read"
            ),
            _ => bail!(
                "global {module}.{name} is not allowed: a torch state dict references only collections.OrderedDict, \
                 torch._utils._rebuild_tensor_v2 and torch.{{Float,Half,BFloat16}}Storage (nothing is executed; \
                 the file is refused)"
            ),
        })
    }
}

#[derive(Clone, Debug)]
pub(super) enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Str(String),
    Tuple(Vec<usize>),
    List(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Global(Global),
    Storage { dtype: Dtype, key: String, numel: u64 },
    Tensor(TensorDesc),
}

impl Obj {
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Obj::None => "None",
            Obj::Bool(_) => "bool",
            Obj::Int(_) => "int",
            Obj::Str(_) => "str",
            Obj::Tuple(_) => "tuple",
            Obj::List(_) => "list",
            Obj::Dict(_) => "dict",
            Obj::Global(_) => "global",
            Obj::Storage { .. } => "storage",
            Obj::Tensor(_) => "tensor",
        }
    }
}

/// Every object the pickle made, by index.
#[derive(Default)]
pub(super) struct Arena(Vec<Obj>);

impl std::ops::Deref for Arena {
    type Target = Vec<Obj>;
    fn deref(&self) -> &Vec<Obj> {
        &self.0
    }
}

impl std::ops::DerefMut for Arena {
    fn deref_mut(&mut self) -> &mut Vec<Obj> {
        &mut self.0
    }
}

impl Arena {
    pub(super) fn int(&self, id: usize, what: &str) -> Result<i64> {
        match &self[id] {
            Obj::Int(i) => Ok(*i),
            Obj::Bool(b) => Ok(*b as i64),
            o => bail!("{what}: expected an int, got a {}", o.kind()),
        }
    }

    pub(super) fn uint(&self, id: usize, what: &str) -> Result<u64> {
        let i = self.int(id, what)?;
        u64::try_from(i).map_err(|_| anyhow::anyhow!("{what}: {i} is negative"))
    }

    pub(super) fn tuple(&self, id: usize, what: &str) -> Result<Vec<usize>> {
        match &self[id] {
            Obj::Tuple(t) => Ok(t.clone()),
            o => bail!("{what}: expected a tuple, got a {}", o.kind()),
        }
    }

    pub(super) fn uints(&self, id: usize, what: &str) -> Result<Vec<u64>> {
        self.tuple(id, what)?.into_iter().map(|i| self.uint(i, what)).collect()
    }

    pub(super) fn str(&self, id: usize, what: &str) -> Result<String> {
        match &self[id] {
            Obj::Str(s) => Ok(s.clone()),
            Obj::Int(i) => Ok(i.to_string()),
            o => bail!("{what}: expected a str, got a {}", o.kind()),
        }
    }

    /// `persistent_load(('storage', <StorageType>, key, location, numel))`.
    pub(super) fn persistent(&self, pid: usize) -> Result<Obj> {
        let t = self.tuple(pid, "persistent id")?;
        if t.len() != 5 {
            bail!("persistent id: expected ('storage', type, key, location, numel), got a tuple of {}", t.len());
        }
        match &self[t[0]] {
            Obj::Str(s) if s == "storage" => {}
            _ => bail!("persistent id: only 'storage' references are allowed"),
        }
        let dtype = match &self[t[1]] {
            Obj::Global(Global::Storage(d)) => *d,
            o => bail!("persistent id: expected a storage type, got a {}", o.kind()),
        };
        let key = self.str(t[2], "storage key")?;
        if key.is_empty() || !key.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
            bail!("storage key {key:?} is not a plain name");
        }
        let numel = self.uint(t[4], "storage size")?;
        Ok(Obj::Storage { dtype, key, numel })
    }

    pub(super) fn reduce(&self, func: usize, args: usize) -> Result<Obj> {
        let g = match &self[func] {
            Obj::Global(g) => *g,
            o => bail!("REDUCE: calling a {} is not allowed", o.kind()),
        };
        let a = self.tuple(args, "REDUCE arguments")?;
        match g {
            Global::OrderedDict => {
                if !a.is_empty() {
                    bail!("OrderedDict(...) with arguments is not supported");
                }
                Ok(Obj::Dict(Vec::new()))
            }
            Global::RebuildTensorV2 => {
                if !(6..=7).contains(&a.len()) {
                    bail!("_rebuild_tensor_v2 takes 6 or 7 arguments, got {}", a.len());
                }
                let Obj::Storage { dtype, key, numel } = self[a[0]].clone() else {
                    bail!("_rebuild_tensor_v2: the first argument is a {}, not a storage", self[a[0]].kind());
                };
                let offset = self.uint(a[1], "storage offset")?;
                let shape = self.uints(a[2], "tensor size")?;
                let stride = self.uints(a[3], "tensor stride")?;
                if shape.len() != stride.len() {
                    bail!("tensor size {shape:?} and stride {stride:?} differ in length");
                }
                Ok(Obj::Tensor(TensorDesc { key, dtype, storage_numel: numel, offset, shape, stride }))
            }
            Global::RebuildParameter => {
                if a.len() != 3 {
                    bail!("_rebuild_parameter takes 3 arguments, got {}", a.len());
                }
                match &self[a[0]] {
                    t @ Obj::Tensor(_) => Ok(t.clone()),
                    o => bail!("_rebuild_parameter: the first argument is a {}, not a tensor", o.kind()),
                }
            }
            Global::Storage(_) => bail!("calling a storage type is not allowed"),
        }
    }
}
