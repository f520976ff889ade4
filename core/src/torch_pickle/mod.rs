//! PyTorch `.pt` / `.pth` checkpoints (the zip format `torch.save` writes since 1.6) read as
//! data, never as code. The pickle inside is interpreted by a small stack machine that knows
//! only what a state dict needs (dicts, lists, tuples, numbers, strings, storages, and the two
//! tensor rebuild functions); any other import or object construction is refused with its name,
//! so a checkpoint that would run code under `torch.load` is an error here.
//!
//! The result is re-serialised as safetensors bytes, so every checkpoint goes through the same
//! validated loading path (`weights::load_into`) whatever form it was published in.
//!
//! A hostile pickle cannot exhaust the stack or memory: containers nest at most [`MAX_DEPTH`]
//! levels, the stack holds at most [`MAX_STACK`] values, the memo [`MAX_MEMO`] entries, and
//! copies out of the memo at most [`MAX_COPIED`] values in all. State dicts need a fraction of
//! each (a few levels; stacks of a few thousand; a few memo entries per tensor).

use std::collections::BTreeMap;
use std::io::{Cursor, Read};

use safetensors::Dtype;

use crate::{Error, Result};

mod pickle;

use pickle::{Machine, TensorRef, Value};

/// How deep containers may nest (a state dict nests four or five levels).
pub const MAX_DEPTH: usize = 100;
/// How many values the pickle's stack may hold.
pub const MAX_STACK: usize = 1 << 18;
/// How many memo entries a pickle may make.
pub const MAX_MEMO: usize = 1 << 21;
/// How many values (strings counted per 16 bytes) copies out of the memo may make in all.
pub const MAX_COPIED: usize = 1 << 23;
/// How many times its own size a checkpoint may expand to while it is read (entries
/// decompressed, storages read once per tensor, tensors gathered). An ordinary checkpoint
/// takes about twice its size, a few more with tied weights; a crafted one (thousands of
/// tensors on one storage, zero strides, a deflate bomb) would ask for terabytes.
pub const MAX_EXPANSION: usize = 8;

/// One tensor taken out of a checkpoint: contiguous little-endian data.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// Serialises tensors as a safetensors file (for [`crate::weights::load_into`]).
pub fn to_safetensors(file: &str, tensors: &BTreeMap<String, RawTensor>) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            // `TensorView::new` multiplies the dimensions in order, unchecked: a shape with no
            // elements but huge dimensions (`[2^40, 2^40, 0]`, which GGUF can declare) would
            // overflow there (found by fuzzing, tests/fuzz/findings/gguf).
            let bits = t
                .shape
                .iter()
                .try_fold(t.dtype.bitsize(), |n, &d| n.checked_mul(d));
            if bits.is_none() {
                let shape = &t.shape;
                return Err(corrupt(
                    file,
                    format!("tensor `{name}`: shape {shape:?} overflows"),
                ));
            }
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                .map(|v| (name.clone(), v))
                .map_err(|e| corrupt(file, format!("cannot re-serialise tensors: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| corrupt(file, e.to_string()))
}

/// Every tensor of a safetensors file, copied out.
pub fn from_safetensors(file: &str, bytes: &[u8]) -> Result<BTreeMap<String, RawTensor>> {
    let st =
        safetensors::SafeTensors::deserialize(bytes).map_err(|e| corrupt(file, e.to_string()))?;
    Ok(st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let t = RawTensor {
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            };
            (name, t)
        })
        .collect())
}

/// The tensors of a weight file in either form: a `torch.save` archive or safetensors.
pub fn read_tensors(file: &str, bytes: &[u8]) -> Result<BTreeMap<String, RawTensor>> {
    if is_torch_zip(bytes) {
        read_checkpoint(file, bytes)
    } else {
        from_safetensors(file, bytes)
    }
}

/// A weight file the loader reads: a `torch.save` archive is converted to safetensors; anything
/// else (safetensors, GGUF) is passed through, and validated by [`crate::weights`].
pub fn convert_archive(file: &str, bytes: Vec<u8>) -> Result<Vec<u8>> {
    if is_torch_zip(&bytes) {
        to_safetensors(file, &read_checkpoint(file, &bytes)?)
    } else {
        Ok(bytes)
    }
}

/// True when `bytes` look like a zip archive (a `torch.save` file) rather than safetensors.
pub fn is_torch_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04")
}

/// Reads the tensors of a `torch.save` checkpoint. A top-level `state_dict` entry (as in
/// training checkpoints such as HPSv2's) is taken in place of the top level; other non-tensor
/// entries (epoch counters, names) are skipped.
pub fn read_checkpoint(file: &str, bytes: &[u8]) -> Result<BTreeMap<String, RawTensor>> {
    if bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
        return Err(corrupt(
            file,
            "legacy (pre-1.6) torch serialization is not supported; re-save it with a recent \
             torch or convert it to safetensors"
                .into(),
        ));
    }
    if !is_torch_zip(bytes) {
        return Err(corrupt(file, "not a torch.save zip archive".into()));
    }
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| corrupt(file, format!("unreadable zip archive: {e}")))?;
    let names: Vec<String> = archive
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .collect();
    let pkl_name = names
        .iter()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .cloned()
        .ok_or_else(|| corrupt(file, "no <name>/data.pkl in the archive".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    let mut budget = Expansion::new(file, bytes.len());
    let entry = |archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
                 budget: &mut Expansion,
                 name: &str|
     -> Result<Vec<u8>> {
        let f = archive
            .by_name(name)
            .map_err(|e| corrupt(file, format!("{name}: {e}")))?;
        // The declared size comes from the file: read at most that much and at most what the
        // budget has left, and reserve no more than the archive could hold uncompressed.
        let declared = f.size();
        let mut out = Vec::with_capacity((declared as usize).min(bytes.len()));
        f.take(declared.min(budget.left() as u64 + 1))
            .read_to_end(&mut out)
            .map_err(|e| corrupt(file, format!("{name}: {e}")))?;
        budget.spend(out.len(), name)?;
        Ok(out)
    };
    if names.contains(&format!("{prefix}byteorder"))
        && entry(&mut archive, &mut budget, &format!("{prefix}byteorder"))? != b"little"
    {
        return Err(corrupt(
            file,
            "big-endian checkpoints are not supported".into(),
        ));
    }
    let pickle = entry(&mut archive, &mut budget, &pkl_name)?;
    let root = Machine::new(file).run(&pickle)?;
    let root = match root {
        Value::Dict(items) => {
            let inner = items.iter().find_map(|(k, v)| match (k, v) {
                (Value::Str(k), Value::Dict(d)) if k == "state_dict" => Some(d.clone()),
                _ => None,
            });
            inner.unwrap_or(items)
        }
        other => {
            return Err(corrupt(
                file,
                format!("the pickle holds a {}, not a dict of tensors", other.kind()),
            ));
        }
    };
    let mut out = BTreeMap::new();
    for (key, value) in root {
        let (Value::Str(name), Value::Tensor(t)) = (key, value) else {
            continue;
        };
        // Read per tensor, not cached: storages are rarely shared, and a cache would hold a
        // second copy of every weight while converting.
        let storage = entry(
            &mut archive,
            &mut budget,
            &format!("{prefix}data/{}", t.storage_key),
        )?;
        if let Some(n) = gathered_bytes(&t) {
            budget.spend(n, &name)?; // an overflowing size is named by `gather`
        }
        let data = gather(file, &name, &t, &storage)?;
        out.insert(
            name,
            RawTensor {
                dtype: t.dtype,
                shape: t.size.clone(),
                data,
            },
        );
    }
    if out.is_empty() {
        return Err(corrupt(file, "the checkpoint holds no tensors".into()));
    }
    Ok(out)
}

/// What reading a checkpoint may still take before it exceeds [`MAX_EXPANSION`] times its size.
struct Expansion<'a> {
    file: &'a str,
    limit: usize,
    spent: usize,
}

impl<'a> Expansion<'a> {
    fn new(file: &'a str, archive_bytes: usize) -> Self {
        // A floor keeps tiny archives (tests, fixtures) from tripping over the pickle itself.
        let limit = archive_bytes.saturating_mul(MAX_EXPANSION).max(1 << 20);
        Self {
            file,
            limit,
            spent: 0,
        }
    }

    fn left(&self) -> usize {
        self.limit - self.spent
    }

    fn spend(&mut self, bytes: usize, what: &str) -> Result<()> {
        if bytes > self.left() {
            return Err(corrupt(
                self.file,
                format!(
                    "reading {what} would take the checkpoint past {MAX_EXPANSION} times its \
                     size ({} bytes: storages shared by many tensors, zero strides or a \
                     compressed entry that expands without bound)",
                    self.limit
                ),
            ));
        }
        self.spent += bytes;
        Ok(())
    }
}

/// The bytes a tensor's gathered data takes (`None` when its size overflows).
fn gathered_bytes(t: &TensorRef) -> Option<usize> {
    crate::gguf::element_count(&t.size)?.checked_mul(element_bytes(t.dtype))
}

/// A tensor's elements in row-major order, following its strides through the storage.
fn gather(file: &str, name: &str, t: &TensorRef, storage: &[u8]) -> Result<Vec<u8>> {
    let elem = element_bytes(t.dtype);
    let bad = |reason: String| Error::BadTensor {
        file: file.to_string(),
        tensor: name.to_string(),
        reason,
    };
    if t.stride.len() != t.size.len() {
        return Err(bad("size and stride lengths differ".into()));
    }
    // Checked arithmetic: sizes and strides come from the file.
    let overflow = || {
        bad(format!(
            "size {:?} / stride {:?} overflow",
            t.size, t.stride
        ))
    };
    let count = t
        .size
        .iter()
        .try_fold(1usize, |a, &n| a.checked_mul(n))
        .ok_or_else(overflow)?;
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&n, &s)| {
            a.checked_add(n.saturating_sub(1).checked_mul(s)?)
        })
        .ok_or_else(overflow)?;
    let end = last
        .checked_add(1)
        .and_then(|v| v.checked_mul(elem))
        .ok_or_else(overflow)?;
    if count > 0 && end > storage.len() {
        return Err(bad(format!(
            "views {end} bytes past its storage of {}",
            storage.len()
        )));
    }
    if count == 0 {
        return Ok(vec![]);
    }
    let mut row_major = 1;
    let contiguous = t.size.iter().zip(&t.stride).rev().all(|(&n, &s)| {
        let ok = n == 1 || s == row_major;
        row_major *= n;
        ok
    });
    if contiguous {
        return Ok(storage[t.offset * elem..(t.offset + count) * elem].to_vec());
    }
    let mut out = Vec::with_capacity(count * elem);
    let mut index = vec![0usize; t.size.len()];
    for _ in 0..count {
        let at = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        out.extend_from_slice(&storage[at * elem..(at + 1) * elem]);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.size[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(out)
}

/// Bytes per element (every dtype a torch storage can hold is whole bytes).
pub fn element_bytes(dtype: Dtype) -> usize {
    dtype.bitsize().div_ceil(8)
}

fn corrupt(file: &str, reason: String) -> Error {
    Error::CorruptWeights {
        file: file.to_string(),
        reason,
    }
}
