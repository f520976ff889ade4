//! GGUF v3 files (ggml's format; what stable-diffusion.cpp, ComfyUI-GGUF and llama.cpp
//! publish): a header, typed metadata, tensor infos (ggml's dimension order: innermost first),
//! then tensor data at an aligned offset. Read with every size checked against the file before
//! anything is allocated (strings, arrays, tensor counts, dimensions, data ranges); written
//! exactly as the `gguf` package's `GGUFWriter` writes (same order, same padding), so its
//! `GGUFReader` reads Tastebud's files.

use crate::quant::{self, QuantType};
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
/// `general.alignment` when a file does not say.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Nesting of metadata arrays (ggml writes one level; two allow arrays of arrays).
const MAX_ARRAY_DEPTH: usize = 2;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// Element type (GGUF's number) and the elements.
    Array(u32, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
}

/// How a tensor's elements are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    F32,
    F16,
    BF16,
    Quant(QuantType),
}

impl TensorType {
    pub fn from_ggml(id: u32) -> Option<Self> {
        match id {
            0 => Some(Self::F32),
            1 => Some(Self::F16),
            30 => Some(Self::BF16),
            other => QuantType::from_ggml_type(other).map(Self::Quant),
        }
    }

    pub fn ggml(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::BF16 => 30,
            Self::Quant(q) => q.ggml_type(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Quant(q) => q.name(),
        }
    }

    /// Bytes of `elements` values; `None` when a quantized row does not fill whole blocks.
    fn bytes(self, elements: u64, innermost: u64) -> Option<u64> {
        match self {
            Self::F32 => elements.checked_mul(4),
            Self::F16 | Self::BF16 => elements.checked_mul(2),
            Self::Quant(q) => {
                let block = quant::BLOCK as u64;
                innermost
                    .is_multiple_of(block)
                    .then(|| (elements / block).checked_mul(q.block_bytes() as u64))
                    .flatten()
            }
        }
    }
}

/// A tensor's description; `shape` in PyTorch's order (outermost first).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: TensorType,
    /// Where its data starts, relative to the data section.
    pub offset: u64,
    pub bytes: u64,
}

/// A parsed GGUF file borrowing its bytes.
#[derive(Debug)]
pub struct GgufFile<'a> {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    data: &'a [u8],
    file: String,
}

/// A bounds-checked little-endian cursor; errors name the file and what was being read.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    file: &'a str,
}

impl<'a> Reader<'a> {
    fn bad(&self, reason: String) -> Error {
        Error::Damaged {
            file: self.file.to_string(),
            reason,
        }
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.bytes.len() - self.at) as u64;
        if n > left {
            return Err(self.bad(format!(
                "{what} needs {n} bytes at offset {}, the file has {left} left (truncated?)",
                self.at
            )));
        }
        let out = &self.bytes[self.at..self.at + n as usize];
        self.at += n as usize;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.bad(format!("{what} is not UTF-8")))
    }

    fn value(&mut self, kind: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match kind {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.bad(format!("{what}: bool byte {b}"))),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.bad(format!(
                        "{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}"
                    )));
                }
                let element = self.u32(what)?;
                let count = self.u64(what)?;
                // Every element takes at least one byte: a count beyond the file is a lie
                // told to make the reader allocate.
                let left = (self.bytes.len() - self.at) as u64;
                if count > left {
                    return Err(self.bad(format!(
                        "{what}: an array of {count} elements in {left} remaining bytes"
                    )));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(element, what, depth + 1)?);
                }
                Value::Array(element, items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(self.bad(format!("{what}: unknown metadata type {other}"))),
        })
    }
}

impl<'a> GgufFile<'a> {
    /// Parses `bytes` (the whole file); `file` names it in errors.
    pub fn parse(file: &str, bytes: &'a [u8]) -> Result<Self> {
        let mut r = Reader { bytes, at: 0, file };
        if r.take(4, "the magic")? != MAGIC {
            return Err(r.bad("not a GGUF file (no GGUF magic)".into()));
        }
        let version = r.u32("the version")?;
        if version != 2 && version != 3 {
            return Err(Error::Unsupported(format!(
                "{file}: GGUF version {version} (Tastebud reads 2 and 3)"
            )));
        }
        let tensor_count = r.u64("the tensor count")?;
        let kv_count = r.u64("the metadata count")?;
        // A key-value takes at least 12 bytes, a tensor info at least 28.
        let left = (bytes.len() - r.at) as u64;
        if kv_count > left / 12 || tensor_count > left / 28 {
            return Err(r.bad(format!(
                "{kv_count} metadata entries and {tensor_count} tensors cannot fit in {left} bytes"
            )));
        }
        let mut metadata = Vec::with_capacity(kv_count as usize);
        for i in 0..kv_count {
            let key = r.string(&format!("metadata key {i}"))?;
            let kind = r.u32(&key)?;
            let value = r.value(kind, &key, 0)?;
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(r.bad(format!("general.alignment {v:?} is not a power of two"))),
            },
            None => DEFAULT_ALIGNMENT,
        };
        let mut tensors = Vec::with_capacity(tensor_count as usize);
        for i in 0..tensor_count {
            let name = r.string(&format!("tensor name {i}"))?;
            let dims = r.u32(&name)?;
            if dims > MAX_DIMS {
                return Err(r.bad(format!(
                    "tensor {name}: {dims} dimensions (ggml has at most 4)"
                )));
            }
            let mut ggml_dims = Vec::with_capacity(dims as usize);
            for _ in 0..dims {
                ggml_dims.push(r.u64(&name)?);
            }
            let type_id = r.u32(&name)?;
            let kind = TensorType::from_ggml(type_id).ok_or_else(|| {
                Error::Unsupported(format!(
                    "{file}: tensor {name} has ggml type {type_id}, which Tastebud does not read \
                     (f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0)"
                ))
            })?;
            let offset = r.u64(&name)?;
            let elements = ggml_dims
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .ok_or_else(|| r.bad(format!("tensor {name}: its element count overflows")))?;
            let innermost = ggml_dims.first().copied().unwrap_or(1);
            let bytes = kind.bytes(elements, innermost).ok_or_else(|| {
                r.bad(format!(
                    "tensor {name}: rows of {innermost} values do not fill whole {} blocks",
                    kind.name()
                ))
            })?;
            let shape = ggml_dims
                .iter()
                .rev()
                .map(|&d| usize::try_from(d))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| r.bad(format!("tensor {name}: a dimension exceeds this machine")))?;
            tensors.push(TensorInfo {
                name,
                shape,
                kind,
                offset,
                bytes,
            });
        }
        let start = (r.at as u64).div_ceil(alignment) * alignment;
        let data = bytes.get(start as usize..).unwrap_or(&[]);
        check_layout(&tensors).map_err(|reason| r.bad(reason))?;
        for t in &tensors {
            let end = t.offset.checked_add(t.bytes);
            if !t.offset.is_multiple_of(alignment) || end.is_none_or(|e| e > data.len() as u64) {
                return Err(r.bad(format!(
                    "tensor {}: {} bytes at data offset {} lie outside the file's {} data bytes \
                     (or off its {alignment}-byte alignment)",
                    t.name,
                    t.bytes,
                    t.offset,
                    data.len()
                )));
            }
        }
        Ok(Self {
            metadata,
            tensors,
            alignment,
            data,
            file: file.to_string(),
        })
    }

    pub fn metadata(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's stored bytes.
    pub fn raw(&self, info: &TensorInfo) -> &'a [u8] {
        &self.data[info.offset as usize..(info.offset + info.bytes) as usize]
    }

    /// A tensor's values as f32 (dequantized, or widened from f16/bf16).
    pub fn values(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let raw = self.raw(info);
        Ok(match info.kind {
            TensorType::F32 => widen(safetensors::Dtype::F32, raw),
            TensorType::F16 => widen(safetensors::Dtype::F16, raw),
            TensorType::BF16 => widen(safetensors::Dtype::BF16, raw),
            TensorType::Quant(q) => {
                quant::dequantize(&format!("{}: tensor {}", self.file, info.name), raw, q)?
            }
        })
    }
}

/// Tensors' data may not overlap, and names may not repeat. ggml itself lays tensors out one
/// after another; a file whose tensors all point at the same bytes would otherwise widen to
/// thousands of times its size (a fuzzer's find), and a repeated name would silently replace
/// a weight.
fn check_layout(tensors: &[TensorInfo]) -> std::result::Result<(), String> {
    let mut names = std::collections::HashSet::with_capacity(tensors.len());
    if let Some(t) = tensors.iter().find(|t| !names.insert(t.name.as_str())) {
        return Err(format!("tensor {} appears twice", t.name));
    }
    let mut ranges: Vec<&TensorInfo> = tensors.iter().filter(|t| t.bytes > 0).collect();
    ranges.sort_by_key(|t| t.offset);
    for pair in ranges.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.offset.saturating_add(a.bytes) > b.offset {
            return Err(format!(
                "tensors {} and {} share data bytes (at data offsets {} and {})",
                a.name, b.name, a.offset, b.offset
            ));
        }
    }
    Ok(())
}

/// Float bytes as f32 (the dtype was checked when the tensor's type was decided).
fn widen(dtype: safetensors::Dtype, data: &[u8]) -> Vec<f32> {
    crate::weights::to_f32(dtype, data).unwrap_or_default()
}

/// A tensor to write: its shape (outermost first), type and stored bytes.
pub struct TensorData {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: TensorType,
    pub bytes: Vec<u8>,
}

fn pad(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend(x.to_le_bytes()),
        Value::I16(x) => out.extend(x.to_le_bytes()),
        Value::U32(x) => out.extend(x.to_le_bytes()),
        Value::I32(x) => out.extend(x.to_le_bytes()),
        Value::F32(x) => out.extend(x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(kind, items) => {
            out.extend(kind.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(out, i));
        }
        Value::U64(x) => out.extend(x.to_le_bytes()),
        Value::I64(x) => out.extend(x.to_le_bytes()),
        Value::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// A GGUF v3 file laid out as `GGUFWriter` lays it out (metadata and tensors in the given
/// order, each tensor's data padded to the alignment, 32 unless `general.alignment` says).
pub fn write(metadata: &[(String, Value)], tensors: &[TensorData]) -> Result<Vec<u8>> {
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        Some((_, v)) => v
            .as_u64()
            .filter(|a| *a > 0 && a.is_power_of_two())
            .ok_or_else(|| Error::argument("general.alignment", "must be a power of two"))?,
        None => DEFAULT_ALIGNMENT,
    };
    let mut out = Vec::new();
    out.extend(MAGIC);
    out.extend(VERSION.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut out, key);
        out.extend(value.type_id().to_le_bytes());
        put_value(&mut out, value);
    }
    let mut offset = 0u64;
    for t in tensors {
        let elements: u64 = t.shape.iter().map(|&d| d as u64).product();
        let innermost = t.shape.last().copied().unwrap_or(1) as u64;
        if t.kind.bytes(elements, innermost) != Some(t.bytes.len() as u64) {
            return Err(Error::argument(
                &t.name,
                format!(
                    "{} bytes do not hold a {} tensor of shape {:?}",
                    t.bytes.len(),
                    t.kind.name(),
                    t.shape
                ),
            ));
        }
        put_string(&mut out, &t.name);
        out.extend((t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            out.extend((d as u64).to_le_bytes());
        }
        out.extend(t.kind.ggml().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += pad(t.bytes.len() as u64, alignment);
    }
    out.resize(pad(out.len() as u64, alignment) as usize, 0);
    for t in tensors {
        out.extend(&t.bytes);
        out.resize(pad(out.len() as u64, alignment) as usize, 0);
    }
    Ok(out)
}

/// Metadata key holding a tensor's own shape when it is stored flattened to two dimensions
/// (a 3x3 convolution `[O, I, 3, 3]` quantized along its `I * 9` inputs).
fn shape_key(name: &str) -> String {
    format!("tastebud.shape.{name}")
}

/// ComfyUI-GGUF's key for the same (its converter stores some tensors as `[n / 256, 256]`).
fn comfy_shape_key(name: &str) -> String {
    format!("comfy.gguf.orig_shape.{name}")
}

/// A tensor stored in ggml blocks, not yet unpacked: [`crate::weights::load_remapped`] hands
/// it to a layer that keeps it quantized on the device, or widens it for one that cannot.
#[derive(Debug, Clone)]
pub struct BlockTensor<'a> {
    pub kind: QuantType,
    /// The tensor's own shape (a recorded shape restored); blocks run along its row-major
    /// values, whatever two-dimensional view the file stored.
    pub shape: Vec<usize>,
    pub raw: &'a [u8],
}

impl BlockTensor<'_> {
    /// The values widened to f32, in the tensor's own shape.
    pub fn dense(&self, what: &str) -> Result<crate::torch_pickle::RawTensor> {
        let values = quant::dequantize(what, self.raw, self.kind)?;
        Ok(crate::torch_pickle::RawTensor {
            dtype: safetensors::Dtype::F32,
            shape: self.shape.clone(),
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        })
    }
}

/// A GGUF weight file's tensors: float ones widened to f32 (`dense`), quantized ones as blocks.
#[derive(Debug)]
pub struct WeightTensors<'a> {
    pub dense: std::collections::BTreeMap<String, crate::torch_pickle::RawTensor>,
    pub blocks: std::collections::BTreeMap<String, BlockTensor<'a>>,
}

/// The number of elements of `shape`, `None` when it overflows. Zero when any dimension is
/// zero, whatever the others (a plain product can overflow before it meets the zero).
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    if shape.contains(&0) {
        return Some(0);
    }
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Reads a GGUF weight file's tensors, flattened ones restored to their recorded shape.
pub fn read_weights<'a>(file: &str, bytes: &'a [u8]) -> Result<WeightTensors<'a>> {
    let gguf = GgufFile::parse(file, bytes)?;
    let mut out = WeightTensors {
        dense: Default::default(),
        blocks: Default::default(),
    };
    for info in &gguf.tensors {
        let shape = recorded_shape(&gguf, info)?;
        match info.kind {
            TensorType::Quant(kind) => {
                let raw = gguf.raw(info);
                out.blocks
                    .insert(info.name.clone(), BlockTensor { kind, shape, raw });
            }
            _ => {
                let values = gguf.values(info)?;
                let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                let tensor = crate::torch_pickle::RawTensor {
                    dtype: safetensors::Dtype::F32,
                    shape,
                    data,
                };
                out.dense.insert(info.name.clone(), tensor);
            }
        }
    }
    Ok(out)
}

/// A tensor's shape: the one recorded in the metadata for a flattened tensor, else as stored.
fn recorded_shape(gguf: &GgufFile, info: &TensorInfo) -> Result<Vec<usize>> {
    let count = element_count(&info.shape).ok_or_else(|| Error::BadTensor {
        file: gguf.file.clone(),
        tensor: info.name.clone(),
        reason: format!("shape {:?}: its element count overflows", info.shape),
    })?;
    let recorded = [shape_key(&info.name), comfy_shape_key(&info.name)]
        .into_iter()
        .find_map(|key| gguf.metadata(&key).map(|value| (key, value)));
    match recorded {
        Some((key, Value::Array(_, dims))) => {
            let dims: Option<Vec<usize>> = dims
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect();
            match dims {
                Some(d) if element_count(&d) == Some(count) => Ok(d),
                _ => Err(Error::Damaged {
                    file: gguf.file.clone(),
                    reason: format!(
                        "{key} does not describe tensor {}'s {count} values",
                        info.name
                    ),
                }),
            }
        }
        Some((key, _)) => Err(Error::Damaged {
            file: gguf.file.clone(),
            reason: format!("{key} is not a list of dimensions"),
        }),
        None => Ok(info.shape.clone()),
    }
}

/// A GGUF weight file as f32 safetensors bytes: every tensor dequantized or widened,
/// flattened ones restored to their recorded shape.
pub fn to_safetensors(file: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let WeightTensors { mut dense, blocks } = read_weights(file, bytes)?;
    for (name, t) in blocks {
        let tensor = t.dense(&format!("{file}: tensor {name}"))?;
        dense.insert(name, tensor);
    }
    crate::torch_pickle::to_safetensors(file, &dense)
}

/// What [`quantize_weights`] did to each tensor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuantizedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// `q8_0`, ... or the kept type (`f32`, `f16`, `bf16`).
    pub stored_as: String,
    /// Why it was kept, when it was.
    pub kept: Option<String>,
    pub bytes: u64,
}

/// Which block format each tensor gets. Names are matched as `scope/name` (the component's
/// folder, e.g. `unet/up_blocks.1.resnets.0.conv1.weight`), by substring.
#[derive(Debug, Clone)]
pub struct QuantPolicy {
    /// The format of every tensor not matched below.
    pub kind: QuantType,
    /// Tensors kept as stored.
    pub keep: Vec<String>,
    /// Tensors in another format (the first match wins), e.g. the layers most sensitive to q4.
    pub mix: Vec<(String, QuantType)>,
    /// The component the file belongs to (its folder in the model), or empty.
    pub scope: String,
}

/// A weight file (safetensors or a `torch.save` archive) as GGUF with its tensors in the
/// policy's formats: every float tensor of two or more dimensions whose values per output row
/// (the product of all but the first dimension: a 3x3 convolution's `I * 9`) fill whole
/// blocks, except those the policy keeps; the rest stay as stored (biases, norms, embeddings
/// of odd width). Tensors of more than two dimensions are stored as `[O, rest]` with their
/// shape recorded.
pub fn quantize_weights(
    file: &str,
    bytes: &[u8],
    policy: &QuantPolicy,
    metadata: Vec<(String, Value)>,
) -> Result<(Vec<u8>, Vec<QuantizedTensor>)> {
    let tensors = crate::torch_pickle::read_tensors(file, bytes)?;
    let mut metadata = metadata;
    let mut out = Vec::new();
    let mut report = Vec::new();
    for (name, t) in tensors {
        let stored = match t.dtype {
            safetensors::Dtype::F32 => TensorType::F32,
            safetensors::Dtype::F16 => TensorType::F16,
            safetensors::Dtype::BF16 => TensorType::BF16,
            other => {
                return Err(Error::BadDtype {
                    file: file.to_string(),
                    tensor: name,
                    dtype: format!("{other:?}"),
                });
            }
        };
        let rows = t.shape.first().copied().unwrap_or(1);
        // An overflowing row (only possible beside a zero dimension) is no whole block.
        let per_row = element_count(&t.shape[t.shape.len().min(1)..]).unwrap_or(usize::MAX);
        let path = if policy.scope.is_empty() {
            name.clone()
        } else {
            format!("{}/{name}", policy.scope)
        };
        let kind = policy
            .mix
            .iter()
            .find(|(part, _)| path.contains(part.as_str()))
            .map_or(policy.kind, |(_, kind)| *kind);
        let why_kept = if let Some(k) = policy.keep.iter().find(|k| path.contains(k.as_str())) {
            Some(format!("--keep {k}"))
        } else if t.shape.len() < 2 {
            Some("fewer than two dimensions (a bias, a norm)".to_string())
        } else if !per_row.is_multiple_of(quant::BLOCK) {
            Some(format!(
                "rows of {per_row} values are not whole blocks of {}",
                quant::BLOCK
            ))
        } else {
            None
        };
        let entry = match &why_kept {
            Some(_) => TensorData {
                name: name.clone(),
                shape: t.shape.clone(),
                kind: stored,
                bytes: t.data,
            },
            None => {
                let values = widen(t.dtype, &t.data);
                let label = format!("{file}: tensor {name}");
                let data = quant::quantize(&label, &values, kind)?;
                if t.shape.len() > 2 {
                    let dims = t.shape.iter().map(|&d| Value::U64(d as u64)).collect();
                    metadata.push((shape_key(&name), Value::Array(10, dims)));
                }
                TensorData {
                    name: name.clone(),
                    shape: vec![rows, per_row],
                    kind: TensorType::Quant(kind),
                    bytes: data,
                }
            }
        };
        report.push(QuantizedTensor {
            name,
            shape: t.shape,
            stored_as: entry.kind.name().to_string(),
            kept: why_kept,
            bytes: entry.bytes.len() as u64,
        });
        out.push(entry);
    }
    Ok((write(&metadata, &out)?, report))
}
