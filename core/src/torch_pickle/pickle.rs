//! The pickle stack machine behind [`super::read_checkpoint`]: the opcodes a state dict uses,
//! the two tensor rebuild functions and storages as the only imports, every container, stack
//! and memo bounded (the limits are in the parent module).

use std::collections::BTreeMap;

use safetensors::Dtype;

use super::{MAX_COPIED, MAX_DEPTH, MAX_MEMO, MAX_STACK, corrupt};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub(super) struct TensorRef {
    pub storage_key: String,
    pub dtype: Dtype,
    pub offset: usize,
    pub size: Vec<usize>,
    pub stride: Vec<usize>,
}

#[derive(Debug, Clone)]
pub(super) enum Value {
    None,
    // Booleans, floats and bytes are kept only as placeholders: no state dict entry needs them.
    Bool,
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// An allowed import (`module.name`).
    Global(String),
    Storage {
        key: String,
        dtype: Dtype,
    },
    Tensor(TensorRef),
    Mark,
}

impl Value {
    /// How deep containers nest inside this value (0 for a scalar). Every value the machine
    /// builds is at most [`MAX_DEPTH`] deep, so this recursion is bounded.
    fn depth(&self) -> usize {
        match self {
            Value::Tuple(items) | Value::List(items) => {
                1 + items.iter().map(Value::depth).max().unwrap_or(0)
            }
            Value::Dict(items) => {
                let deepest = items.iter().map(|(k, v)| k.depth().max(v.depth())).max();
                1 + deepest.unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// What copying this value costs: one per value, plus one per 16 bytes of text.
    fn cost(&self) -> usize {
        match self {
            Value::Str(s) | Value::Global(s) => 1 + s.len() / 16,
            Value::Storage { key, .. } => 1 + key.len() / 16,
            Value::Tensor(t) => 1 + t.storage_key.len() / 16 + t.size.len() + t.stride.len(),
            Value::Tuple(items) | Value::List(items) => {
                1 + items.iter().map(Value::cost).sum::<usize>()
            }
            Value::Dict(items) => {
                1 + items
                    .iter()
                    .map(|(k, v)| k.cost() + v.cost())
                    .sum::<usize>()
            }
            _ => 1,
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "class or function",
            Value::Storage { .. } => "storage",
            Value::Tensor(_) => "tensor",
            Value::Mark => "mark",
        }
    }
}

/// The imports a state dict may make: containers, storage types and tensor rebuilders.
fn allowed_global(name: &str) -> bool {
    matches!(
        name,
        "collections.OrderedDict"
            | "torch._utils._rebuild_tensor_v2"
            | "torch._utils._rebuild_parameter"
    ) || storage_dtype(name).is_some()
}

fn storage_dtype(name: &str) -> Option<Dtype> {
    Some(match name {
        "torch.FloatStorage" => Dtype::F32,
        "torch.HalfStorage" => Dtype::F16,
        "torch.BFloat16Storage" => Dtype::BF16,
        "torch.DoubleStorage" => Dtype::F64,
        "torch.LongStorage" => Dtype::I64,
        "torch.IntStorage" => Dtype::I32,
        "torch.ShortStorage" => Dtype::I16,
        "torch.CharStorage" => Dtype::I8,
        "torch.ByteStorage" => Dtype::U8,
        "torch.BoolStorage" => Dtype::BOOL,
        _ => return None,
    })
}

/// The pickle stack machine (protocols 2-4, the subset `torch.save` emits for state dicts).
pub(super) struct Machine<'a> {
    file: &'a str,
    stack: Vec<Value>,
    memo: BTreeMap<u32, Value>,
    /// Values copied into and out of the memo so far (see [`MAX_COPIED`]).
    copied: usize,
}

impl<'a> Machine<'a> {
    pub(super) fn new(file: &'a str) -> Self {
        Self {
            file,
            stack: vec![],
            memo: BTreeMap::new(),
            copied: 0,
        }
    }

    fn push(&mut self, v: Value) -> Result<()> {
        if self.stack.len() >= MAX_STACK {
            return Err(self.err(format!(
                "the stack holds more than {MAX_STACK} values; a state dict needs far fewer"
            )));
        }
        self.stack.push(v);
        Ok(())
    }

    /// Checks that `items` may go into a container without nesting past [`MAX_DEPTH`].
    fn nestable(&self, items: &[Value]) -> Result<()> {
        if items.iter().any(|v| v.depth() >= MAX_DEPTH) {
            return Err(self.err(format!(
                "containers nest deeper than {MAX_DEPTH} levels; a state dict nests a few"
            )));
        }
        Ok(())
    }

    /// Counts a copy into or out of the memo against [`MAX_COPIED`], before it is made.
    fn charge_copy(&mut self, cost: usize) -> Result<()> {
        self.copied = self.copied.saturating_add(cost);
        if self.copied > MAX_COPIED {
            return Err(self.err(format!(
                "memo copies exceed {MAX_COPIED} values; a state dict copies few"
            )));
        }
        Ok(())
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        corrupt(self.file, format!("data.pkl: {}", reason.into()))
    }

    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    /// Pops everything above the topmost mark.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let at = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .ok_or_else(|| self.err("no mark on the stack"))?;
        let items = self.stack.split_off(at + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top(&mut self) -> Result<&mut Value> {
        let file = self.file;
        self.stack
            .last_mut()
            .ok_or_else(|| corrupt(file, "data.pkl: stack underflow".into()))
    }

    pub(super) fn run(mut self, code: &[u8]) -> Result<Value> {
        let mut r = Reader { code, at: 0 };
        loop {
            let op = r.u8().ok_or_else(|| self.err("ends before STOP"))?;
            let short = || self.err("truncated opcode argument");
            match op {
                0x80 => {
                    r.u8().ok_or_else(short)?;
                }
                0x95 => {
                    r.take(8).ok_or_else(short)?;
                }
                b'.' => return self.pop(),
                b'(' => self.push(Value::Mark)?,
                b'}' => self.push(Value::Dict(vec![]))?,
                b']' => self.push(Value::List(vec![]))?,
                b')' => self.push(Value::Tuple(vec![]))?,
                b'N' => self.push(Value::None)?,
                0x88 | 0x89 => self.push(Value::Bool)?,
                b'J' => {
                    let v = i32::from_le_bytes(r.array().ok_or_else(short)?);
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = r.u8().ok_or_else(short)?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(r.array().ok_or_else(short)?);
                    self.push(Value::Int(v.into()))?;
                }
                0x8a => {
                    let n = r.u8().ok_or_else(short)? as usize;
                    let bytes = r.take(n).ok_or_else(short)?;
                    if n > 8 {
                        return Err(self.err("integer wider than 64 bits"));
                    }
                    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
                    let mut buf = [if negative { 0xff } else { 0 }; 8];
                    buf[..n].copy_from_slice(bytes);
                    self.push(Value::Int(i64::from_le_bytes(buf)))?;
                }
                b'G' => {
                    r.take(8).ok_or_else(short)?;
                    self.push(Value::Float)?;
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => u32::from_le_bytes(r.array().ok_or_else(short)?) as usize,
                        0x8c => r.u8().ok_or_else(short)? as usize,
                        _ => u64::from_le_bytes(r.array().ok_or_else(short)?) as usize,
                    };
                    let bytes = r.take(n).ok_or_else(short)?;
                    let s = String::from_utf8(bytes.to_vec())
                        .map_err(|_| self.err("string is not UTF-8"))?;
                    self.push(Value::Str(s))?;
                }
                b'C' | b'B' => {
                    let n = if op == b'C' {
                        r.u8().ok_or_else(short)? as usize
                    } else {
                        u32::from_le_bytes(r.array().ok_or_else(short)?) as usize
                    };
                    r.take(n).ok_or_else(short)?;
                    self.push(Value::Bytes)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.nestable(&items)?;
                    self.push(Value::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.nestable(&items)?;
                    self.push(Value::Tuple(items))?;
                }
                b'q' | b'r' | 0x94 => {
                    let key = match op {
                        b'q' => r.u8().ok_or_else(short)? as u32,
                        b'r' => u32::from_le_bytes(r.array().ok_or_else(short)?),
                        _ => self.memo.len() as u32,
                    };
                    if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&key) {
                        return Err(self.err(format!(
                            "more than {MAX_MEMO} memo entries; a state dict needs far fewer"
                        )));
                    }
                    let cost = self.top()?.cost();
                    self.charge_copy(cost)?;
                    let v = self.top()?.clone();
                    self.memo.insert(key, v);
                }
                b'h' | b'j' => {
                    let key = if op == b'h' {
                        r.u8().ok_or_else(short)? as u32
                    } else {
                        u32::from_le_bytes(r.array().ok_or_else(short)?)
                    };
                    let cost = self.memo.get(&key).map(Value::cost);
                    let cost = cost.ok_or_else(|| self.err(format!("memo {key} is unset")))?;
                    self.charge_copy(cost)?;
                    let v = self.memo.get(&key).cloned().unwrap_or(Value::None);
                    self.push(v)?;
                }
                b'c' => {
                    let module = r.line().ok_or_else(short)?;
                    let name = r.line().ok_or_else(short)?;
                    let global = format!("{module}.{name}");
                    self.push_global(global)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.err("STACK_GLOBAL without string names"));
                    };
                    self.push_global(format!("{module}.{name}"))?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.push(storage)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    // Object state (OrderedDict's `_metadata`, a tensor's Python attributes):
                    // not needed for the weights.
                    self.pop()?;
                    if !matches!(self.top()?, Value::Dict(_) | Value::Tensor(_)) {
                        return Err(self.err("BUILD on an object other than a dict or tensor"));
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return Err(self.err("SETITEMS with an odd number of items"));
                    }
                    self.nestable(&items)?;
                    let Value::Dict(dict) = self.top()? else {
                        return Err(self.err("SETITEM on something other than a dict"));
                    };
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        dict.push((k, v));
                    }
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    self.nestable(&items)?;
                    let Value::List(list) = self.top()? else {
                        return Err(self.err("APPEND on something other than a list"));
                    };
                    list.extend(items);
                }
                b'i' | b'o' | 0x81 | 0x92 => {
                    return Err(self.err(
                        "the pickle constructs arbitrary objects (INST/OBJ/NEWOBJ): a state dict \
                         never needs that, and Tastebud never runs code from a checkpoint",
                    ));
                }
                other => {
                    return Err(self.err(format!(
                        "pickle opcode 0x{other:02x} is not used by state dicts; refusing it"
                    )));
                }
            }
        }
    }

    fn push_global(&mut self, name: String) -> Result<()> {
        if !allowed_global(&name) {
            return Err(self.err(format!(
                "the pickle imports `{name}`, which a plain state dict never needs; Tastebud \
                 never runs code from a checkpoint (re-save only the tensors, or use safetensors)"
            )));
        }
        self.push(Value::Global(name))?;
        Ok(())
    }

    /// `('storage', torch.FloatStorage, key, location, numel)`.
    fn persistent_load(&self, pid: Value) -> Result<Value> {
        let Value::Tuple(items) = pid else {
            return Err(self.err("persistent id is not a tuple"));
        };
        match items.as_slice() {
            [Value::Str(tag), Value::Global(kind), Value::Str(key), ..] if tag == "storage" => {
                let dtype = storage_dtype(kind)
                    .ok_or_else(|| self.err(format!("`{kind}` is not a storage type")))?;
                Ok(Value::Storage {
                    key: key.clone(),
                    dtype,
                })
            }
            _ => Err(self.err("persistent id is not a tensor storage")),
        }
    }

    fn reduce(&self, callable: Value, args: Value) -> Result<Value> {
        let Value::Global(name) = callable else {
            return Err(self.err(format!("calls a {}", callable.kind())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.err(format!("`{name}` called without an argument tuple")));
        };
        match name.as_str() {
            "collections.OrderedDict" if args.is_empty() => Ok(Value::Dict(vec![])),
            "torch._utils._rebuild_tensor_v2" => match args.as_slice() {
                [Value::Storage { key, dtype }, offset, size, stride, ..] => {
                    let usize_of = |v: &Value| match v {
                        Value::Int(i) if *i >= 0 => Ok(*i as usize),
                        _ => Err(self.err("tensor offset, size or stride is not a count")),
                    };
                    let list = |v: &Value| match v {
                        Value::Tuple(items) => items.iter().map(usize_of).collect(),
                        _ => Err(self.err("tensor size or stride is not a tuple")),
                    };
                    Ok(Value::Tensor(TensorRef {
                        storage_key: key.clone(),
                        dtype: *dtype,
                        offset: usize_of(offset)?,
                        size: list(size)?,
                        stride: list(stride)?,
                    }))
                }
                _ => Err(self.err("_rebuild_tensor_v2 with unexpected arguments")),
            },
            "torch._utils._rebuild_parameter" => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => Ok(t),
                _ => Err(self.err("_rebuild_parameter without a tensor")),
            },
            _ => Err(self.err(format!("calls `{name}` with unexpected arguments"))),
        }
    }
}

struct Reader<'a> {
    code: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.code.get(self.at..end)?;
        self.at = end;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn line(&mut self) -> Option<String> {
        let rest = self.code.get(self.at..)?;
        let end = rest.iter().position(|&b| b == b'\n')?;
        self.at += end + 1;
        String::from_utf8(rest[..end].to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pickle: &[u8]) -> Result<Value> {
        Machine::new("hostile.pt").run(pickle)
    }

    fn refused(pickle: &[u8], named: &str) {
        let err = run(pickle).expect_err("refused").to_string();
        assert!(
            err.contains("hostile.pt") && err.contains(named),
            "{named}: {err}"
        );
    }

    fn nested_lists(depth: usize) -> Vec<u8> {
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b']', depth));
        p.extend(std::iter::repeat_n(b'a', depth - 1));
        p.push(b'.');
        p
    }

    /// Lists nested a million deep once overflowed the native stack (dropping or cloning them
    /// recursed once per level): building them needs a million values on the stack.
    #[test]
    fn deep_nesting_is_refused() {
        refused(&nested_lists(1_000_000), "the stack holds more than");
        refused(
            &nested_lists(150),
            &format!("nest deeper than {MAX_DEPTH} levels"),
        );
        // Tuples nest without growing the stack.
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(0x85, 1_000_000));
        p.push(b'.');
        refused(&p, "nest deeper than");
        // Each SETITEM makes the dict on top a key of the one below it.
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b'}', 150));
        for _ in 0..149 {
            p.extend(b"Ns");
        }
        p.push(b'.');
        refused(&p, "nest deeper than");
        // Nesting a state dict needs passes.
        let ok = run(&nested_lists(50)).expect("50 levels are fine");
        assert_eq!(ok.depth(), 50);
    }

    /// "Billion laughs": each level memoizes a list holding the previous one twice.
    #[test]
    fn memo_copies_are_bounded() {
        // memo[level] = [memo[level - 1], memo[level - 1]]: 2^60 values if copies were free.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for level in 1u8..=60 {
            p.extend([
                b']',
                b'(',
                b'h',
                level - 1,
                b'h',
                level - 1,
                b'e',
                b'q',
                level,
            ]);
        }
        p.push(b'.');
        refused(&p, &format!("memo copies exceed {MAX_COPIED}"));
    }

    #[test]
    fn stack_and_memo_sizes_are_bounded() {
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b'N', MAX_STACK + 1));
        p.push(b'.');
        refused(&p, &format!("the stack holds more than {MAX_STACK} values"));
        let mut p = b"\x80\x02N".to_vec();
        p.extend(std::iter::repeat_n(0x94, MAX_MEMO + 1));
        p.push(b'.');
        refused(&p, &format!("more than {MAX_MEMO} memo entries"));
    }
}
