//! Personal taste: reward heads learned from one person's pairwise choices, on their device.
//!
//! - [`store`]: the preference file (versioned JSON, validated, merged without loss);
//! - [`heads`], [`vpl`]: the heads on frozen unit image embeddings (linear, MLP, PAL-A, VPL);
//! - [`active`]: the next pair to ask about (BALD over a linear head's Laplace posterior or a
//!   VPL head's latent posterior);
//! - [`fit`]: Bradley-Terry fitting of a person's head and pretraining of population bases;
//! - [`prior`]: the population as a prior for a person's linear head;
//! - [`simulate`]: simulated people with hidden utilities, and the benchmark over them.
//!
//! A head is saved as `head.json` ([`HeadConfig`]) + `head.safetensors` (PyTorch layouts), and
//! scores like any reward ([`crate::rewards::personal`]).

pub mod active;
pub mod fit;
pub mod heads;
pub mod prior;
pub mod prior_bench;
pub mod simulate;
pub mod store;
pub mod vpl;

use burn::module::Module;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::files::ModelFiles;
use crate::{Error, Result, read_f32, weights};
use heads::{LinearHead, MlpHead, PalHead, features};
use vpl::{VplHead, VplModel};

pub const HEAD_FORMAT: &str = "tastebud-head";
pub const HEAD_VERSION: u32 = 1;
pub const HEAD_CONFIG: &str = "head.json";
pub const HEAD_WEIGHTS: &str = "head.safetensors";
/// The weights file's metadata key that holds the head's config (the same JSON as `head.json`).
pub const HEAD_METADATA: &str = "tastebud.head";

/// The kinds of head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    Linear,
    Mlp,
    Pal,
    Vpl,
}

impl HeadKind {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "linear" => Ok(Self::Linear),
            "mlp" => Ok(Self::Mlp),
            "pal" => Ok(Self::Pal),
            "vpl" => Ok(Self::Vpl),
            other => Err(Error::argument(
                "head",
                format!("`{other}` is not one of linear, mlp, pal, vpl"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Linear => "linear",
            Self::Mlp => "mlp",
            Self::Pal => "pal",
            Self::Vpl => "vpl",
        }
    }
}

/// `head.json`: what a head is and what it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadConfig {
    pub format: String,
    pub version: u32,
    pub kind: HeadKind,
    /// The image embeddings' dimension.
    pub dimension: usize,
    /// Whether the head reads the prompt's embedding too.
    pub context: bool,
    /// Hidden width (MLP, PAL, VPL; 0 for linear).
    #[serde(default)]
    pub hidden: usize,
    /// PAL: the ideal-point space's dimension and the number of prototypes.
    #[serde(default)]
    pub output: usize,
    #[serde(default)]
    pub prototypes: usize,
    /// VPL: the latent's dimension.
    #[serde(default)]
    pub latent: usize,
    /// What the embeddings come from (e.g. a CLIP's hub id), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    /// Answered pairs the person's part was fitted on (0 for a population base).
    #[serde(default)]
    pub pairs: usize,
    /// A linear head's population prior: the rank of its factors (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rank: usize,
    /// The L2 penalty a linear or MLP head was fitted with: its Laplace posterior (which pair
    /// to ask next) depends on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<f32>,
}

fn is_zero(v: &usize) -> bool {
    *v == 0
}

impl HeadConfig {
    pub fn new(kind: HeadKind, dimension: usize, context: bool) -> Self {
        Self {
            format: HEAD_FORMAT.into(),
            version: HEAD_VERSION,
            kind,
            dimension,
            context,
            hidden: 0,
            output: 0,
            prototypes: 0,
            latent: 0,
            embedding_model: None,
            pairs: 0,
            rank: 0,
            l2: None,
        }
    }

    /// The features' width: the embedding, and with a prompt its product with the prompt's.
    pub fn input(&self) -> usize {
        self.dimension * if self.context { 2 } else { 1 }
    }

    fn validate(&self, file: &str) -> Result<()> {
        let bad = |reason: String| Error::BadJson {
            file: file.to_string(),
            reason,
        };
        if let Some(l2) = self.l2.filter(|l| !(l.is_finite() && *l >= 0.0)) {
            return Err(bad(format!(
                "`l2` is {l2}: must be finite and not negative"
            )));
        }
        if self.format != HEAD_FORMAT {
            return Err(bad(format!(
                "`format` is {:?}, expected \"{HEAD_FORMAT}\"",
                self.format
            )));
        }
        if self.version != HEAD_VERSION {
            return Err(bad(format!(
                "version {} (this Tastebud reads {HEAD_VERSION})",
                self.version
            )));
        }
        let sizes = [
            ("dimension", self.dimension, true),
            ("hidden", self.hidden, self.kind != HeadKind::Linear),
            ("output", self.output, self.kind == HeadKind::Pal),
            ("prototypes", self.prototypes, self.kind == HeadKind::Pal),
            ("latent", self.latent, self.kind == HeadKind::Vpl),
            ("rank", self.rank, false),
        ];
        for (name, v, needed) in sizes {
            if (needed && v == 0) || v > 1 << 16 {
                return Err(bad(format!("`{name}` is {v}")));
            }
        }
        if self.rank > 0 && self.kind != HeadKind::Linear {
            return Err(bad(format!(
                "`rank` is {}: only linear heads have a prior",
                self.rank
            )));
        }
        Ok(())
    }
}

/// The head's weights.
#[derive(Debug)]
// A few heads live at a time: boxing the larger variants would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum HeadModel {
    Linear(LinearHead),
    Mlp(MlpHead),
    Pal(PalHead),
    Vpl(VplHead),
}

impl HeadModel {
    /// The weights with gradients off: a fitted head only scores, and on an autodiff device
    /// every forward pass through trainable weights would record a graph that no backward
    /// pass frees.
    pub fn frozen(self) -> Self {
        match self {
            Self::Linear(h) => Self::Linear(h.no_grad()),
            Self::Mlp(h) => Self::Mlp(h.no_grad()),
            Self::Pal(h) => Self::Pal(h.no_grad()),
            Self::Vpl(h) => Self::Vpl(h.no_grad()),
        }
    }
}

/// A fitted head (or a population base): config and weights.
#[derive(Debug)]
pub struct PersonalHead {
    pub config: HeadConfig,
    pub model: HeadModel,
}

impl PersonalHead {
    /// Scores unit image embeddings (and the prompt's, for heads that read it), differentiably.
    ///
    /// # Shapes
    /// - embeddings: `[n, dimension]`; context: `[n, dimension]`; output `[n]`
    pub fn score(&self, embeddings: Tensor<2>, context: Option<Tensor<2>>) -> Result<Tensor<1>> {
        let [n, d] = embeddings.dims();
        if d != self.config.dimension {
            return Err(Error::argument(
                "embeddings",
                format!("dimension {d}; this head reads {}", self.config.dimension),
            ));
        }
        let context = match (self.config.context, context) {
            (true, Some(t)) if t.dims() == [n, d] => Some(t),
            (true, Some(t)) => {
                return Err(Error::argument(
                    "prompt embedding",
                    format!("shape {:?}; expected [{n}, {d}]", t.dims()),
                ));
            }
            (true, None) => {
                return Err(Error::argument(
                    "prompt",
                    "this head reads the prompt: give its embedding",
                ));
            }
            (false, _) => None,
        };
        let phi = features(embeddings, context);
        Ok(match &self.model {
            HeadModel::Linear(h) => h.forward(phi),
            HeadModel::Mlp(h) => h.forward(phi),
            HeadModel::Pal(h) => h.forward(phi),
            HeadModel::Vpl(h) => h.forward(phi),
        })
    }

    /// Scores host vectors (each made unit length), read back.
    pub async fn score_vectors(
        &self,
        embeddings: &[Vec<f32>],
        context: Option<&[f32]>,
        device: &Device,
    ) -> Result<Vec<f32>> {
        let d = self.config.dimension;
        if let Some(i) = embeddings.iter().position(|e| e.len() != d) {
            return Err(Error::argument(
                format!("embedding {i}"),
                format!("dimension {}; this head reads {d}", embeddings[i].len()),
            ));
        }
        let n = embeddings.len();
        let x = unit_rows(embeddings.iter().map(Vec::as_slice), n, d, device);
        let t = context.map(|c| unit_rows(std::iter::repeat_n(c, n), n, d, device));
        read_f32(self.score(x, t)?).await
    }

    /// The head's two files: `head.json` and `head.safetensors`. The weights file carries the
    /// same config in its metadata (`tastebud.head`), so it is a whole head by itself: a save
    /// interrupted between the two files' renames still loads as the old head or the new one.
    pub fn to_files(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let json = serde_json::to_vec_pretty(&self.config).map_err(|e| Error::BadJson {
            file: HEAD_CONFIG.into(),
            reason: e.to_string(),
        })?;
        let compact = serde_json::to_string(&self.config).map_err(|e| Error::BadJson {
            file: HEAD_CONFIG.into(),
            reason: e.to_string(),
        })?;
        let mut store = SafetensorsStore::from_bytes(None)
            .metadata(HEAD_METADATA, compact)
            .with_to_adapter(BurnToPyTorchAdapter);
        let saved = match &self.model {
            HeadModel::Linear(h) => h.save_into(&mut store),
            HeadModel::Mlp(h) => h.save_into(&mut store),
            HeadModel::Pal(h) => h.save_into(&mut store),
            HeadModel::Vpl(h) => h.save_into(&mut store),
        };
        let failed = |e: String| Error::CorruptWeights {
            file: HEAD_WEIGHTS.into(),
            reason: e,
        };
        saved.map_err(|e| failed(e.to_string()))?;
        let bytes = store.get_bytes().map_err(|e| failed(e.to_string()))?;
        Ok((json, bytes))
    }

    /// Loads `head.json` + `head.safetensors` from a folder's files, checking every tensor
    /// against the config. The config inside the weights file (written since 2026-12-01)
    /// wins over `head.json`: it is the one those weights were saved with.
    pub fn from_files(files: &mut ModelFiles, device: &Device) -> Result<Self> {
        let file = files.label(HEAD_WEIGHTS);
        let bytes = files.take(HEAD_WEIGHTS).ok_or_else(|| Error::MissingFile {
            folder: files.origin.clone(),
            wanted: HEAD_WEIGHTS.into(),
        })?;
        let embedded = SafeTensors::read_metadata(&bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().as_ref()?.get(HEAD_METADATA).cloned());
        let (config, config_file): (HeadConfig, String) = match embedded {
            Some(text) => (
                serde_json::from_str(&text).map_err(|e| Error::BadJson {
                    file: format!("{file} (metadata {HEAD_METADATA})"),
                    reason: e.to_string(),
                })?,
                format!("{file} (metadata {HEAD_METADATA})"),
            ),
            None => (files.json(HEAD_CONFIG)?, files.label(HEAD_CONFIG)),
        };
        config.validate(&config_file)?;
        let c = &config;
        let mut rng = crate::noise::Rng::new(0);
        let model = match c.kind {
            HeadKind::Linear => HeadModel::Linear(weights::load_into(
                if c.rank > 0 {
                    LinearHead::with_prior(c.input(), c.rank, device)
                } else {
                    LinearHead::new(c.input(), device)
                },
                &file,
                bytes,
                &[],
            )?),
            HeadKind::Mlp => HeadModel::Mlp(weights::load_into(
                MlpHead::new(c.input(), c.hidden, &mut rng, device),
                &file,
                bytes,
                &[],
            )?),
            HeadKind::Pal => HeadModel::Pal(weights::load_into(
                PalHead::new(
                    c.input(),
                    c.hidden,
                    c.output,
                    c.prototypes,
                    &mut rng,
                    device,
                ),
                &file,
                bytes,
                &[],
            )?),
            HeadKind::Vpl => {
                let model =
                    VplModel::new(c.dimension, c.input(), c.hidden, c.latent, &mut rng, device);
                HeadModel::Vpl(weights::load_into(
                    VplHead::new(model, device),
                    &file,
                    bytes,
                    &[],
                )?)
            }
        };
        Ok(Self { config, model })
    }
}

/// `[n, d]` rows, each scaled to unit length (a zero row stays zero).
pub fn unit_rows<'a>(
    rows: impl Iterator<Item = &'a [f32]>,
    n: usize,
    d: usize,
    device: &Device,
) -> Tensor<2> {
    let mut values = Vec::with_capacity(n * d);
    for r in rows {
        let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
        values.extend(r.iter().map(|v| if norm > 0.0 { v / norm } else { 0.0 }));
    }
    Tensor::from_data(TensorData::new(values, [n, d]), device)
}
