//! The subset of Python's pickle that `torch.save` writes for a state dict, interpreted without
//! executing anything: an `OrderedDict` (or dict) of `torch._utils._rebuild_tensor_v2` calls over
//! persistent-id storages. Every other opcode, and every global but the few named in [`Global`],
//! is an error naming it.
//!
//! Objects live in an arena and the stack and memo hold their indices, so memoized objects are
//! shared as in Python (no copies, no blow-up from repeated `BINGET`s).

use anyhow::{bail, Context, Result};
use safetensors::Dtype;
use std::collections::HashMap;

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
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    Storage(Dtype),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Result<Self> {
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
enum Obj {
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
    fn kind(&self) -> &'static str {
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

/// Name of a pickle opcode, for errors.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    arena: Vec<Obj>,
    stack: Vec<usize>,
    marks: Vec<usize>,
    memo: HashMap<u32, usize>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            bail!("the pickle ends inside an opcode's argument (byte {}, {} bytes)", self.pos, self.data.len());
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&c| c == b'\n').context("GLOBAL: no newline after the name")?;
        let s = std::str::from_utf8(&rest[..n]).context("GLOBAL: name is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> Result<String> {
        let b = self.take(n)?;
        Ok(std::str::from_utf8(b).context("a string is not valid UTF-8")?.to_string())
    }

    fn push(&mut self, o: Obj) {
        self.arena.push(o);
        self.stack.push(self.arena.len() - 1);
    }

    fn pop(&mut self) -> Result<usize> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("stack underflow");
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn pop_mark(&mut self) -> Result<Vec<usize>> {
        let m = self.marks.pop().context("no MARK to pop to")?;
        Ok(self.stack.split_off(m))
    }

    fn top(&self) -> Result<usize> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            bail!("stack underflow");
        }
        Ok(*self.stack.last().expect("checked"))
    }

    fn int(&self, id: usize, what: &str) -> Result<i64> {
        match &self.arena[id] {
            Obj::Int(i) => Ok(*i),
            Obj::Bool(b) => Ok(*b as i64),
            o => bail!("{what}: expected an int, got a {}", o.kind()),
        }
    }

    fn uint(&self, id: usize, what: &str) -> Result<u64> {
        let i = self.int(id, what)?;
        u64::try_from(i).map_err(|_| anyhow::anyhow!("{what}: {i} is negative"))
    }

    fn tuple(&self, id: usize, what: &str) -> Result<Vec<usize>> {
        match &self.arena[id] {
            Obj::Tuple(t) => Ok(t.clone()),
            o => bail!("{what}: expected a tuple, got a {}", o.kind()),
        }
    }

    fn uints(&self, id: usize, what: &str) -> Result<Vec<u64>> {
        self.tuple(id, what)?.into_iter().map(|i| self.uint(i, what)).collect()
    }

    fn str(&self, id: usize, what: &str) -> Result<String> {
        match &self.arena[id] {
            Obj::Str(s) => Ok(s.clone()),
            Obj::Int(i) => Ok(i.to_string()),
            o => bail!("{what}: expected a str, got a {}", o.kind()),
        }
    }

    /// `persistent_load(('storage', <StorageType>, key, location, numel))`.
    fn persistent(&mut self, pid: usize) -> Result<Obj> {
        let t = self.tuple(pid, "persistent id")?;
        if t.len() != 5 {
            bail!("persistent id: expected ('storage', type, key, location, numel), got a tuple of {}", t.len());
        }
        match &self.arena[t[0]] {
            Obj::Str(s) if s == "storage" => {}
            _ => bail!("persistent id: only 'storage' references are allowed"),
        }
        let dtype = match &self.arena[t[1]] {
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

    fn reduce(&mut self, func: usize, args: usize) -> Result<Obj> {
        let g = match &self.arena[func] {
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
                let Obj::Storage { dtype, key, numel } = self.arena[a[0]].clone() else {
                    bail!("_rebuild_tensor_v2: the first argument is a {}, not a storage", self.arena[a[0]].kind());
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
                match &self.arena[a[0]] {
                    t @ Obj::Tensor(_) => Ok(t.clone()),
                    o => bail!("_rebuild_parameter: the first argument is a {}, not a tensor", o.kind()),
                }
            }
            Global::Storage(_) => bail!("calling a storage type is not allowed"),
        }
    }

    fn run(&mut self) -> Result<usize> {
        loop {
            let at = self.pos;
            let op = self.u8().context("the pickle ends before STOP")?;
            self.step(op).with_context(|| format!("pickle opcode {} (0x{op:02x}) at byte {at}", opcode_name(op)))?;
            if op == b'.' {
                let r = self.pop()?;
                return Ok(r);
            }
        }
    }

    fn step(&mut self, op: u8) -> Result<()> {
        match op {
            0x80 => {
                let p = self.u8()?;
                if p > 5 {
                    bail!("pickle protocol {p} is not supported");
                }
            }
            0x95 => {
                self.take(8)?;
            }
            b'.' => {}
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                let g = Global::resolve(module, name)?;
                self.push(Obj::Global(g));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (module, name) = (self.str(module, "STACK_GLOBAL module")?, self.str(name, "STACK_GLOBAL name")?);
                let g = Global::resolve(&module, &name)?;
                self.push(Obj::Global(g));
            }
            b'Q' => {
                let pid = self.pop()?;
                let s = self.persistent(pid)?;
                self.push(s);
            }
            b'(' => self.marks.push(self.stack.len()),
            b't' => {
                let items = self.pop_mark()?;
                self.push(Obj::Tuple(items));
            }
            b')' => self.push(Obj::Tuple(Vec::new())),
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push(Obj::Tuple(items));
            }
            b'}' => self.push(Obj::Dict(Vec::new())),
            b']' => self.push(Obj::List(Vec::new())),
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                let d = self.top()?;
                self.set_items(d, vec![k, v])?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let d = self.top()?;
                self.set_items(d, items)?;
            }
            b'a' => {
                let v = self.pop()?;
                let l = self.top()?;
                self.append(l, vec![v])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                let l = self.top()?;
                self.append(l, items)?;
            }
            b'J' => {
                let v = self.u32()? as i32;
                self.push(Obj::Int(v as i64));
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Obj::Int(v as i64));
            }
            b'M' => {
                let v = self.u16()?;
                self.push(Obj::Int(v as i64));
            }
            0x8a => {
                let n = self.u8()? as usize;
                if n > 8 {
                    bail!("an integer of {n} bytes is out of range");
                }
                let b = self.take(n)?;
                let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xff; 8] } else { [0; 8] };
                buf[..n].copy_from_slice(b);
                self.push(Obj::Int(i64::from_le_bytes(buf)));
            }
            b'X' => {
                let n = self.u32()? as usize;
                let s = self.string(n)?;
                self.push(Obj::Str(s));
            }
            0x8c => {
                let n = self.u8()? as usize;
                let s = self.string(n)?;
                self.push(Obj::Str(s));
            }
            b'R' => {
                let args = self.pop()?;
                let func = self.pop()?;
                let r = self.reduce(func, args)?;
                self.push(r);
            }
            b'b' => {
                // `obj.__setstate__(state)`: only the `_metadata` attribute torch's state dicts carry
                // (on an OrderedDict), which says nothing about the tensors; ignored.
                let _state = self.pop()?;
                let o = self.top()?;
                if !matches!(self.arena[o], Obj::Dict(_)) {
                    bail!("BUILD on a {} is not allowed", self.arena[o].kind());
                }
            }
            0x88 => self.push(Obj::Bool(true)),
            0x89 => self.push(Obj::Bool(false)),
            b'N' => self.push(Obj::None),
            b'q' => {
                let i = self.u8()? as u32;
                self.put(i)?;
            }
            b'r' => {
                let i = self.u32()?;
                self.put(i)?;
            }
            0x94 => {
                let i = self.memo.len() as u32;
                self.put(i)?;
            }
            b'h' => {
                let i = self.u8()? as u32;
                self.get(i)?;
            }
            b'j' => {
                let i = self.u32()?;
                self.get(i)?;
            }
            _ => bail!("not allowed in a torch state dict (the file is refused; nothing is executed)"),
        }
        Ok(())
    }

    fn put(&mut self, i: u32) -> Result<()> {
        let top = self.top()?;
        self.memo.insert(i, top);
        Ok(())
    }

    fn get(&mut self, i: u32) -> Result<()> {
        let id = *self.memo.get(&i).with_context(|| format!("memo entry {i} was never stored"))?;
        self.stack.push(id);
        Ok(())
    }

    fn set_items(&mut self, d: usize, items: Vec<usize>) -> Result<()> {
        if items.len() % 2 != 0 {
            bail!("an odd number of items ({}) for a dict", items.len());
        }
        let Obj::Dict(entries) = &mut self.arena[d] else {
            bail!("setting items on a {}", self.arena[d].kind());
        };
        entries.extend(items.chunks_exact(2).map(|c| (c[0], c[1])));
        Ok(())
    }

    fn append(&mut self, l: usize, items: Vec<usize>) -> Result<()> {
        let Obj::List(v) = &mut self.arena[l] else {
            bail!("appending to a {}", self.arena[l].kind());
        };
        v.extend(items);
        Ok(())
    }
}

/// Interprets `data.pkl`: the state dict's entries in order, each a tensor view.
pub fn state_dict(pickle: &[u8]) -> Result<Vec<(String, TensorDesc)>> {
    let mut m =
        Machine { data: pickle, pos: 0, arena: Vec::new(), stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() };
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
