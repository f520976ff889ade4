//! Safetensors weights into burn modules, with every problem reported by tensor and file.
//!
//! Files are checked with the `safetensors` crate first (so a corrupt file or an integer tensor
//! is an error, never a panic inside burn-store), then applied through burn-store with the
//! PyTorch adapter (Linear weights transposed, norm weight/bias renamed) and a cast to the
//! device's float precision (f32, or f16 when configured): burn-store aborts on the CPU backend
//! for tensors whose dtype differs from the module's.

use std::collections::{BTreeMap, BTreeSet};

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

/// The names of a weight file's tensors (safetensors or GGUF).
pub fn tensor_names(file: &str, bytes: &[u8]) -> Result<Vec<String>> {
    if bytes.starts_with(b"GGUF") {
        let gguf = crate::gguf::GgufFile::parse(file, bytes)?;
        Ok(gguf.tensors.into_iter().map(|t| t.name).collect())
    } else {
        Ok(inspect(file, bytes)?.into_keys().collect())
    }
}

/// Reads a single-element float tensor (e.g. CLIP's `logit_scale`), if the file has it.
pub fn read_scalar(file: &str, bytes: &[u8], name: &str) -> Result<Option<f32>> {
    if !tensor_names(file, bytes)?.iter().any(|n| n == name) {
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

/// Reads one float tensor (F32, F16 or BF16; or any GGUF type) to f32 values, in file order.
pub fn read_f32(file: &str, bytes: &[u8], name: &str) -> Result<Vec<f32>> {
    let absent = |reason: String| Error::BadTensor {
        file: file.to_string(),
        tensor: name.to_string(),
        reason,
    };
    if bytes.starts_with(b"GGUF") {
        let gguf = crate::gguf::GgufFile::parse(file, bytes)?;
        let info = gguf
            .tensor(name)
            .ok_or_else(|| absent("not in the file".to_string()))?;
        return gguf.values(info);
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| Error::CorruptWeights {
        file: file.to_string(),
        reason: e.to_string(),
    })?;
    let view = st.tensor(name).map_err(|e| absent(e.to_string()))?;
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
///
/// A GGUF file's quantized weights stay quantized on the device in every layer that can hold
/// them so ([`crate::models::packed`]); any other tensor is widened to f32 as it loads.
pub fn load_remapped<M: Module + ModuleSnapshot>(
    module: M,
    file: &str,
    bytes: Vec<u8>,
    tolerated_unused: &[&str],
    remap: &[(String, String)],
) -> Result<M> {
    let (module, bytes, packed) = if bytes.starts_with(b"GGUF") {
        let tensors = crate::gguf::read_weights(file, &bytes)?;
        let mut dense = tensors.dense;
        let mut loader = PackedLoader::new(file, tensors.blocks, remap)?;
        let module = module.map(&mut loader);
        if let Some(error) = loader.error {
            return Err(error);
        }
        // Blocks no layer took (an embedding, a layer of burn's own) load widened.
        for (name, t) in loader.blocks {
            let tensor = t.dense(&format!("{file}: tensor {name}"))?;
            dense.insert(name, tensor);
        }
        let bytes = crate::torch_pickle::to_safetensors(file, &dense)?;
        (module, bytes, loader.packed)
    } else {
        (module, bytes, BTreeSet::new())
    };
    load_dense(module, file, bytes, tolerated_unused, remap, &packed)
}

/// Fills the packed layers' `qwords`/`qscales` with the blocks of the weight the file holds
/// under the same (renamed) name, as burn-store would fill a parameter, path for path.
struct PackedLoader<'a> {
    file: &'a str,
    /// The file's quantized tensors not taken yet, by name.
    blocks: BTreeMap<String, crate::gguf::BlockTensor<'a>>,
    /// Module path of a layer (a `.weight`'s name renamed, the suffix dropped) -> file name.
    layers: BTreeMap<String, String>,
    path: Vec<String>,
    /// The layer being filled: its path and the scales still to place (per block).
    pending: Option<(String, Vec<f32>, usize)>,
    /// Paths of the layers filled.
    packed: BTreeSet<String>,
    error: Option<Error>,
}

impl<'a> PackedLoader<'a> {
    fn new(
        file: &'a str,
        blocks: BTreeMap<String, crate::gguf::BlockTensor<'a>>,
        remap: &[(String, String)],
    ) -> Result<Self> {
        // The same renaming burn-store applies to the file's keys.
        let rules = burn::store::KeyRemapper::from_patterns(remap.to_vec())
            .map_err(|e| Error::argument("key table", e.to_string()))?
            .to_regex_pairs();
        let rename = |name: &str| {
            rules.iter().fold(name.to_string(), |key, (from, to)| {
                from.replace_all(&key, to.as_str()).into_owned()
            })
        };
        let layers = blocks
            .keys()
            .filter_map(|name| {
                let path = rename(name).strip_suffix(".weight")?.to_string();
                Some((path, name.clone()))
            })
            .collect();
        Ok(Self {
            file,
            blocks,
            layers,
            path: Vec::new(),
            pending: None,
            packed: BTreeSet::new(),
            error: None,
        })
    }

    /// The layer path of a `qwords`/`qscales` parameter being visited.
    fn layer(&self, param: &str) -> Option<String> {
        (self.path.last().map(String::as_str) == Some(param))
            .then(|| self.path[..self.path.len() - 1].join("."))
    }
}

impl burn::module::ModuleMapper for PackedLoader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        // Enum variants add no name, as in PyTorch (and burn-store's `skip_enum_variants`).
        if !container_type.starts_with("Enum:") {
            self.path.push(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if !container_type.starts_with("Enum:") {
            self.path.pop();
        }
    }

    fn map_int<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<D, burn::tensor::Int>>,
    ) -> burn::module::Param<burn::tensor::Tensor<D, burn::tensor::Int>> {
        let Some(layer) = self.layer("qwords") else {
            return param;
        };
        let Some(name) = self.layers.get(&layer).cloned() else {
            return param;
        };
        let Some(blocks) = self.blocks.remove(&name) else {
            return param;
        };
        let expected = param.lazy_shape().to_vec();
        let rows = blocks.shape.first().copied().unwrap_or(0);
        // An overflowing count (beside a zero dimension) matches no parameter: a shape error.
        let per_row = crate::gguf::element_count(&blocks.shape[blocks.shape.len().min(1)..])
            .unwrap_or(usize::MAX);
        if expected != [rows, per_row] || D != 2 {
            self.error.get_or_insert(Error::BadShape {
                file: self.file.to_string(),
                tensor: name,
                expected,
                found: blocks.shape,
            });
            return param;
        }
        let what = format!("{}: tensor {name}", self.file);
        let packed = match crate::quant::pack(&what, blocks.raw, blocks.kind) {
            Ok(p) => p,
            Err(e) => {
                self.error.get_or_insert(e);
                return param;
            }
        };
        let device = param.lazy_device();
        let count = packed.words.len() / packed.words_per_block;
        let data = burn::tensor::TensorData::new(packed.words, [count, packed.words_per_block]);
        // i32 on every backend (flex's own default is i64: twice the memory at rest).
        let words =
            burn::tensor::Tensor::<D, burn::tensor::Int>::from_data(data, (&device, DType::I32));
        self.pending = Some((layer, packed.scales, packed.scales_per_block));
        burn::module::Param::initialized(param.id, words)
    }

    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<D>> {
        let Some(layer) = self.layer("qscales") else {
            return param;
        };
        match self.pending.take() {
            Some((pending, scales, per_block)) if pending == layer => {
                let device = param.lazy_device();
                let dtype: DType = device.settings().float_dtype.into();
                let count = scales.len() / per_block;
                let data = burn::tensor::TensorData::new(scales, [count, per_block]);
                let scales = burn::tensor::Tensor::<D>::from_data(data, (&device, dtype));
                self.packed.insert(layer);
                burn::module::Param::initialized(param.id, scales)
            }
            other => {
                self.pending = other;
                param
            }
        }
    }
}

/// Loads a safetensors file through burn-store; the layers in `packed` already hold their
/// weights as blocks, so their dense `weight` is not expected (nor any layer's blocks).
fn load_dense<M: Module + ModuleSnapshot>(
    mut module: M,
    file: &str,
    bytes: Vec<u8>,
    tolerated_unused: &[&str],
    remap: &[(String, String)],
    packed: &BTreeSet<String>,
) -> Result<M> {
    let tolerated = |name: &str| tolerated_unused.iter().any(|t| name.contains(t));
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
    let missing: Vec<String> = result
        .missing
        .iter()
        .map(|(path, _)| path.as_str())
        .filter(|path| {
            let optional = path.ends_with(".qwords") || path.ends_with(".qscales");
            let held = path
                .strip_suffix(".weight")
                .is_some_and(|layer| packed.contains(layer));
            !optional && !held
        })
        .map(pytorch_name)
        .collect();
    if !missing.is_empty() {
        return Err(Error::MissingTensors {
            file: file.to_string(),
            tensors: missing,
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
