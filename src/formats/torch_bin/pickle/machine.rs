//! The pickle virtual machine, limited to the opcodes a torch state dict uses; any other opcode is
//! an error naming it.

use super::objects::{Arena, Global, Obj};
use super::opcodes::opcode_name;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;

pub(super) struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    pub(super) arena: Arena,
    stack: Vec<usize>,
    marks: Vec<usize>,
    memo: HashMap<u32, usize>,
}

impl<'a> Machine<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0, arena: Arena::default(), stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
    }

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

    pub(super) fn run(&mut self) -> Result<usize> {
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

    // long: one arm per pickle opcode the reader accepts; the opcode table reads best in one match.
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
                let (module, name) =
                    (self.arena.str(module, "STACK_GLOBAL module")?, self.arena.str(name, "STACK_GLOBAL name")?);
                let g = Global::resolve(&module, &name)?;
                self.push(Obj::Global(g));
            }
            b'Q' => {
                let pid = self.pop()?;
                let s = self.arena.persistent(pid)?;
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
                let r = self.arena.reduce(func, args)?;
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
