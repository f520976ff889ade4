//! Safetensors weights into burn modules, with every problem reported by tensor and file.
//!
//! Files are checked with the `safetensors` crate first (so a corrupt file or an integer tensor
//! is an error, never a panic inside burn-store), then applied through burn-store with the
//! PyTorch adapter (Linear weights transposed, norm weight/bias renamed) and a cast to the
//! device's float precision (f32, or f16 when configured): burn-store aborts on the CPU backend
//! for tensors whose dtype differs from the module's.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::store::{
    ApplyError, ChainAdapter, FloatCastAdapter, ModuleSnapshot, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use burn::tensor::DType;
use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

/// Dtype and shape of one tensor in a weight file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// Reads and validates a safetensors header: every tensor's dtype and shape.
pub fn inspect(file: &str, bytes: &[u8]) -> Result<BTreeMap<String, TensorInfo>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::CorruptWeights {
        file: file.to_string(),
        reason: e.to_string(),
    })?;
    Ok(st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                TensorInfo {
                    dtype: format!("{:?}", view.dtype()),
                    shape: view.shape().to_vec(),
                },
            )
        })
        .collect())
}

/// Reads a single-element float tensor (e.g. CLIP's `logit_scale`), if the file has it.
pub fn read_scalar(file: &str, bytes: &[u8], name: &str) -> Result<Option<f32>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::CorruptWeights {
        file: file.to_string(),
        reason: e.to_string(),
    })?;
    if st.tensor(name).is_err() {
        return Ok(None);
    }
    let values = read_f32(file, bytes, name)?;
    let bad = |reason: &str| Error::BadTensor {
        file: file.to_string(),
        tensor: name.to_string(),
        reason: reason.to_string(),
    };
    match values.as_slice() {
        [v] if v.is_finite() => Ok(Some(*v)),
        [_] => Err(bad("value is not finite")),
        _ => Err(bad("expected a single value")),
    }
}

/// Reads one float tensor (F32, F16 or BF16) to f32 values, in file order.
pub fn read_f32(file: &str, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::CorruptWeights {
        file: file.to_string(),
        reason: e.to_string(),
    })?;
    let view = st.tensor(name).map_err(|e| Error::BadTensor {
        file: file.to_string(),
        tensor: name.to_string(),
        reason: e.to_string(),
    })?;
    to_f32(view.dtype(), view.data()).ok_or_else(|| Error::BadDtype {
        file: file.to_string(),
        tensor: name.to_string(),
        dtype: format!("{:?}", view.dtype()),
    })
}

/// Little-endian F32, F16 or BF16 bytes as f32 values; `None` for any other dtype.
pub fn to_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Loads `bytes` (a safetensors file named `file`) into `module`.
///
/// Tensors whose names contain one of `tolerated_unused` may be present without being used
/// (buffers such as `position_ids`, or values read separately such as `logit_scale`). Any other
/// unused, missing, misshaped or non-float tensor is an error that names it.
pub fn load_into<M: Module + ModuleSnapshot>(
    module: M,
    file: &str,
    bytes: Vec<u8>,
    tolerated_unused: &[&str],
) -> Result<M> {
    load_remapped(module, file, bytes, tolerated_unused, &[])
}

/// [`load_into`] with the file's keys renamed first: `(regex, replacement)` pairs applied in
/// order to every key, for the rare model whose upstream layout cannot be mirrored field by field.
pub fn load_remapped<M: Module + ModuleSnapshot>(
    mut module: M,
    file: &str,
    bytes: Vec<u8>,
    tolerated_unused: &[&str],
    remap: &[(String, String)],
) -> Result<M> {
    let tolerated = |name: &str| tolerated_unused.iter().any(|t| name.contains(t));
    // GGUF weights (`tastebud quantize`, ggml's tools) load dequantized, as f32 safetensors.
    let bytes = if bytes.starts_with(b"GGUF") {
        crate::gguf::to_safetensors(file, &bytes)?
    } else {
        bytes
    };
    let header = inspect(file, &bytes)?;
    for (name, info) in &header {
        let float = matches!(info.dtype.as_str(), "F32" | "F16" | "BF16");
        if !float && !tolerated(name) {
            return Err(Error::BadDtype {
                file: file.to_string(),
                tensor: name.clone(),
                dtype: info.dtype.clone(),
            });
        }
    }
    // Weights take the precision the module's device computes in (f32 unless configured f16).
    let dtype: DType = module
        .devices()
        .first()
        .map_or(DType::F32, |d| d.settings().float_dtype.into());
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .with_from_adapter(ChainAdapter::new(
            PyTorchToBurnAdapter,
            FloatCastAdapter::to(dtype),
        ))
        .allow_partial(true)
        .validate(false)
        // Enum modules (a conv-or-linear projection) add no name of their own, as in PyTorch.
        .skip_enum_variants(true);
    for (from, to) in remap {
        store = store.with_key_remapping(from, to.clone());
    }
    let result = module
        .load_from(&mut store)
        .map_err(|e| Error::CorruptWeights {
            file: file.to_string(),
            reason: e.to_string(),
        })?;
    if let Some(error) = result.errors.first() {
        return Err(match error {
            ApplyError::ShapeMismatch { path, expected, .. } => Error::BadShape {
                file: file.to_string(),
                tensor: path.clone(),
                // burn stores Linear weights as [in, out]; report what the file should hold.
                expected: file_layout(&header, path, expected.to_vec()),
                found: header
                    .get(path)
                    .map(|i| i.shape.clone())
                    .unwrap_or_default(),
            },
            ApplyError::DTypeMismatch { path, found, .. } => Error::BadDtype {
                file: file.to_string(),
                tensor: path.clone(),
                dtype: format!("{found:?}"),
            },
            ApplyError::AdapterError { path, message }
            | ApplyError::LoadError { path, message } => Error::BadTensor {
                file: file.to_string(),
                tensor: path.clone(),
                reason: message.clone(),
            },
        });
    }
    if !result.missing.is_empty() {
        return Err(Error::MissingTensors {
            file: file.to_string(),
            tensors: result
                .missing
                .iter()
                .map(|(path, _)| pytorch_name(path))
                .collect(),
        });
    }
    let unused: Vec<String> = result
        .unused
        .into_iter()
        .filter(|n| !tolerated(n))
        .collect();
    if !unused.is_empty() {
        return Err(Error::UnusedTensors {
            file: file.to_string(),
            tensors: unused,
        });
    }
    // Loaded weights are frozen: on an autodiff device a backward pass computes only the
    // gradients of inputs (ReNO's noise, a reward's image), never of billions of weights.
    Ok(module.no_grad())
}

/// burn names norm parameters `gamma`/`beta`; the files (and users) say `weight`/`bias`.
fn pytorch_name(path: &str) -> String {
    if let Some(stem) = path.strip_suffix(".gamma") {
        format!("{stem}.weight")
    } else if let Some(stem) = path.strip_suffix(".beta") {
        format!("{stem}.bias")
    } else {
        path.to_string()
    }
}

/// burn reports a Linear weight's expected shape as [in, out]; the file holds [out, in].
fn file_layout(
    header: &BTreeMap<String, TensorInfo>,
    path: &str,
    burn_dims: Vec<usize>,
) -> Vec<usize> {
    let found_rank = header.get(path).map(|i| i.shape.len());
    if burn_dims.len() == 2
        && found_rank == Some(2)
        && path.ends_with(".weight")
        && !path.contains("embedding")
    {
        vec![burn_dims[1], burn_dims[0]]
    } else {
        burn_dims
    }
}
