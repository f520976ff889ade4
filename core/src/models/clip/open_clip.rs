//! OpenCLIP checkpoints (open_clip's own key layout: `visual.transformer.resblocks.N.attn.
//! in_proj_weight`, `token_embedding`, `text_projection` as a matrix, ...) turned into the
//! transformers `CLIPModel` layout, so they load through [`super::Clip::from_files`] like any
//! other CLIP. This is the form HPSv2 is published in (`HPS_v2.1_compressed.pt`), and the form of
//! the hub's `open_clip_model.safetensors` / `open_clip_pytorch_model.bin` files.
//!
//! Sizes come from the tensors; what tensors cannot tell (attention heads, activation, image
//! normalisation) comes from `open_clip_config.json`, or from a known architecture.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::files::ModelFiles;
use crate::torch_pickle::{self, RawTensor};
use crate::{Error, Result};

/// Weight files an OpenCLIP folder may hold, in order of preference.
pub const OPEN_CLIP_WEIGHTS: &[&str] = &[
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_model.pt",
];
pub const OPEN_CLIP_CONFIG: &str = "open_clip_config.json";

/// What the tensors of an OpenCLIP checkpoint do not say about its architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenClipArch {
    pub vision_head_width: usize,
    pub text_heads: usize,
    pub quick_gelu: bool,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl OpenClipArch {
    /// open_clip's `ViT-H-14` (HPSv2, OpenCLIP-H, PickScore's backbone).
    pub const VIT_H_14: OpenClipArch = OpenClipArch {
        vision_head_width: 80,
        text_heads: 16,
        quick_gelu: false,
        mean: crate::preprocess::CLIP_MEAN,
        std: crate::preprocess::CLIP_STD,
    };

    /// Reads `open_clip_config.json` (`model_cfg` with `vision_cfg`/`text_cfg`, and
    /// `preprocess_cfg`), refusing the options this implementation does not have.
    pub fn parse(file: &str, text: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::BadJson {
            file: file.to_string(),
            reason,
        };
        let root: Value = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
        let model = root.get("model_cfg").unwrap_or(&root);
        let vision = model.get("vision_cfg").cloned().unwrap_or(json!({}));
        let text_cfg = model.get("text_cfg").cloned().unwrap_or(json!({}));
        if model.get("custom_text").and_then(Value::as_bool) == Some(true) {
            return Err(bad("custom_text towers are not supported".into()));
        }
        for (tower, cfg, keys) in [
            (
                "vision_cfg",
                &vision,
                &[
                    "timm_model_name",
                    "ls_init_value",
                    "attentional_pool",
                    "no_ln_pre",
                    "final_ln_after_pool",
                    "patch_dropout",
                    "output_tokens",
                ][..],
            ),
            (
                "text_cfg",
                &text_cfg,
                &[
                    "hf_model_name",
                    "ls_init_value",
                    "embed_cls",
                    "no_causal_mask",
                    "proj_bias",
                ][..],
            ),
        ] {
            // Block variants open_clip offers on both towers; the defaults are off.
            const BLOCK_OPTIONS: &[&str] = &[
                "qk_norm",
                "scaled_cosine_attn",
                "scale_heads",
                "scale_attn_inner",
                "scale_attn",
                "scale_fc",
                "block_type",
                "norm_kwargs",
                "act_kwargs",
            ];
            for key in keys.iter().chain(BLOCK_OPTIONS) {
                match cfg.get(*key) {
                    None | Some(Value::Null) | Some(Value::Bool(false)) => {}
                    Some(Value::Number(n)) if n.as_f64() == Some(0.0) => {}
                    Some(v) => {
                        return Err(bad(format!(
                            "model_cfg.{tower}.{key} = {v} is not supported"
                        )));
                    }
                }
            }
        }
        for (tower, cfg, key, want) in [
            ("vision_cfg", &vision, "pool_type", "tok"),
            ("vision_cfg", &vision, "pos_embed_type", "learnable"),
            ("text_cfg", &text_cfg, "pool_type", "argmax"),
            ("text_cfg", &text_cfg, "proj_type", "linear"),
        ] {
            if let Some(pool) = cfg.get(key).and_then(Value::as_str)
                && pool != want
            {
                return Err(bad(format!(
                    "model_cfg.{tower}.{key} = {pool} is not supported (only {want})"
                )));
            }
        }
        let count = |cfg: &Value, key: &str, default: usize| -> Result<usize> {
            match cfg.get(key) {
                None => Ok(default),
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| bad(format!("{key} = {v} is not a positive integer"))),
            }
        };
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3]> {
            match root.get("preprocess_cfg").and_then(|p| p.get(key)) {
                None => Ok(default),
                Some(v) => serde_json::from_value(v.clone())
                    .map_err(|_| bad(format!("preprocess_cfg.{key} is not three numbers"))),
            }
        };
        Ok(Self {
            // open_clip's defaults: head_width 64 for images, 8 heads for text.
            vision_head_width: count(&vision, "head_width", 64)?,
            text_heads: count(&text_cfg, "heads", 8)?,
            quick_gelu: model
                .get("quick_gelu")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            mean: triple("mean", crate::preprocess::CLIP_MEAN)?,
            std: triple("std", crate::preprocess::CLIP_STD)?,
        })
    }
}

/// Turns an OpenCLIP checkpoint plus tokenizer files into a transformers CLIP folder:
/// `config.json`, `preprocessor_config.json` and `model.safetensors` are written into `files`
/// (which keeps its tokenizer files). `arch` is used when there is no `open_clip_config.json`.
pub fn to_transformers_files(
    files: &mut ModelFiles,
    weights_name: &str,
    arch: Option<&OpenClipArch>,
) -> Result<()> {
    let weights_file = files.label(weights_name);
    let arch = match files.get(OPEN_CLIP_CONFIG) {
        Some(text) => OpenClipArch::parse(&files.label(OPEN_CLIP_CONFIG), text)?,
        None => arch.cloned().ok_or_else(|| Error::MissingFile {
            folder: files.origin.clone(),
            wanted: format!("{OPEN_CLIP_CONFIG} (heads and activation of {weights_name})"),
        })?,
    };
    let bytes = files.take(weights_name).ok_or_else(|| Error::MissingFile {
        folder: files.origin.clone(),
        wanted: weights_name.to_string(),
    })?;
    let tensors = torch_pickle::read_tensors(&weights_file, &bytes)?;
    drop(bytes);
    let tensors = strip_prefix(tensors, "module.");
    let config = transformers_config(&weights_file, &tensors, &arch)?;
    let converted = rename(&weights_file, tensors)?;
    let image_size = config["vision_config"]["image_size"].clone();
    let preprocessor = json!({
        "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size},
        "image_mean": arch.mean,
        "image_std": arch.std,
    });
    files.insert("config.json", config.to_string().into_bytes());
    files.insert(
        "preprocessor_config.json",
        preprocessor.to_string().into_bytes(),
    );
    files.insert(
        "model.safetensors",
        torch_pickle::to_safetensors(&weights_file, &converted)?,
    );
    Ok(())
}

fn strip_prefix(tensors: BTreeMap<String, RawTensor>, prefix: &str) -> BTreeMap<String, RawTensor> {
    if !tensors.keys().all(|k| k.starts_with(prefix)) {
        return tensors;
    }
    tensors
        .into_iter()
        .map(|(k, v)| (k[prefix.len()..].to_string(), v))
        .collect()
}

fn shape_of<'a>(
    file: &str,
    tensors: &'a BTreeMap<String, RawTensor>,
    name: &str,
) -> Result<&'a [usize]> {
    tensors
        .get(name)
        .map(|t| t.shape.as_slice())
        .ok_or_else(|| Error::MissingTensors {
            file: file.to_string(),
            tensors: vec![name.to_string()],
        })
}

fn layer_count(tensors: &BTreeMap<String, RawTensor>, prefix: &str) -> usize {
    tensors
        .keys()
        .filter_map(|k| {
            k.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |n| n + 1)
}

/// transformers' `CLIPConfig` for the checkpoint: sizes from tensor shapes, the rest from `arch`.
fn transformers_config(
    file: &str,
    tensors: &BTreeMap<String, RawTensor>,
    arch: &OpenClipArch,
) -> Result<Value> {
    let shape = |name: &str| shape_of(file, tensors, name);
    let bad = |tensor: &str, reason: String| Error::BadTensor {
        file: file.to_string(),
        tensor: tensor.to_string(),
        reason,
    };
    if tensors.keys().any(|k| k.starts_with("text.")) {
        return Err(Error::Unsupported(format!(
            "{file}: OpenCLIP models with a custom text tower (`text.*` keys)"
        )));
    }
    let [width, _, patch, _] = *shape("visual.conv1.weight")? else {
        return Err(bad("visual.conv1.weight", "expected 4 dimensions".into()));
    };
    let [positions, _] = *shape("visual.positional_embedding")? else {
        return Err(bad(
            "visual.positional_embedding",
            "expected 2 dimensions".into(),
        ));
    };
    let grid = ((positions.saturating_sub(1)) as f64).sqrt().round() as usize;
    if grid * grid + 1 != positions {
        return Err(bad(
            "visual.positional_embedding",
            format!("{positions} positions is not a square grid plus a class token"),
        ));
    }
    let [embed_dim_v] = shape("visual.proj")?[1..] else {
        return Err(bad("visual.proj", "expected 2 dimensions".into()));
    };
    let [vocab, text_width] = *shape("token_embedding.weight")? else {
        return Err(bad(
            "token_embedding.weight",
            "expected 2 dimensions".into(),
        ));
    };
    let [context, _] = *shape("positional_embedding")? else {
        return Err(bad("positional_embedding", "expected 2 dimensions".into()));
    };
    let vision_mlp = shape("visual.transformer.resblocks.0.mlp.c_fc.weight")?[0];
    let text_mlp = shape("transformer.resblocks.0.mlp.c_fc.weight")?[0];
    if !width.is_multiple_of(arch.vision_head_width) {
        return Err(bad(
            "visual.conv1.weight",
            format!(
                "width {width} is not a multiple of head_width {}",
                arch.vision_head_width
            ),
        ));
    }
    let act = if arch.quick_gelu {
        "quick_gelu"
    } else {
        "gelu"
    };
    Ok(json!({
        "projection_dim": embed_dim_v,
        "text_config": {
            "vocab_size": vocab,
            "hidden_size": text_width,
            "intermediate_size": text_mlp,
            "projection_dim": embed_dim_v,
            "num_hidden_layers": layer_count(tensors, "transformer.resblocks."),
            "num_attention_heads": arch.text_heads,
            "max_position_embeddings": context,
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "eos_token_id": 49407,
        },
        "vision_config": {
            "hidden_size": width,
            "intermediate_size": vision_mlp,
            "projection_dim": embed_dim_v,
            "num_hidden_layers": layer_count(tensors, "visual.transformer.resblocks."),
            "num_attention_heads": width / arch.vision_head_width,
            "image_size": grid * patch,
            "patch_size": patch,
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
        },
    }))
}

/// Renames (and splits / transposes) OpenCLIP tensors into transformers' names. Keys it does not
/// know are kept, so the loader reports them as unused by name.
fn rename(file: &str, tensors: BTreeMap<String, RawTensor>) -> Result<BTreeMap<String, RawTensor>> {
    let mut out = BTreeMap::new();
    for (key, t) in tensors {
        let (tower, rest) = match key.strip_prefix("visual.") {
            Some(rest) => ("vision_model", rest),
            None => ("text_model", key.as_str()),
        };
        let vision = tower == "vision_model";
        let simple = match rest {
            "conv1.weight" if vision => Some("embeddings.patch_embedding.weight".to_string()),
            "class_embedding" if vision => Some("embeddings.class_embedding".into()),
            "positional_embedding" => Some("embeddings.position_embedding.weight".into()),
            "token_embedding.weight" if !vision => Some("embeddings.token_embedding.weight".into()),
            _ => None,
        };
        if let Some(name) = simple {
            out.insert(format!("{tower}.{name}"), t);
            continue;
        }
        if let Some(p) = rest.strip_prefix("ln_pre.").filter(|_| vision) {
            out.insert(format!("vision_model.pre_layrnorm.{p}"), t);
        } else if let Some(p) = rest.strip_prefix("ln_post.").filter(|_| vision) {
            out.insert(format!("vision_model.post_layernorm.{p}"), t);
        } else if let Some(p) = rest.strip_prefix("ln_final.").filter(|_| !vision) {
            out.insert(format!("text_model.final_layer_norm.{p}"), t);
        } else if rest == "proj" && vision {
            out.insert("visual_projection.weight".into(), transpose(file, &key, t)?);
        } else if rest == "text_projection" && !vision {
            out.insert("text_projection.weight".into(), transpose(file, &key, t)?);
        } else if rest == "logit_scale" && !vision {
            out.insert(key, t);
        } else if rest == "attn_mask" && !vision {
            // A causal-mask buffer some versions save; the model builds its own.
        } else if let Some(layer) = rest.strip_prefix("transformer.resblocks.") {
            let (index, part) = layer.split_once('.').unwrap_or((layer, ""));
            let base = format!("{tower}.encoder.layers.{index}");
            let renamed = match part {
                "attn.in_proj_weight" | "attn.in_proj_bias" => {
                    let kind = part.rsplit('_').next().unwrap_or("weight");
                    for (proj, piece) in ["q_proj", "k_proj", "v_proj"]
                        .iter()
                        .zip(split3(file, &key, t)?)
                    {
                        out.insert(format!("{base}.self_attn.{proj}.{kind}"), piece);
                    }
                    continue;
                }
                p => p
                    .strip_prefix("attn.out_proj.")
                    .map(|s| format!("self_attn.out_proj.{s}"))
                    .or_else(|| p.strip_prefix("ln_1.").map(|s| format!("layer_norm1.{s}")))
                    .or_else(|| p.strip_prefix("ln_2.").map(|s| format!("layer_norm2.{s}")))
                    .or_else(|| p.strip_prefix("mlp.c_fc.").map(|s| format!("mlp.fc1.{s}")))
                    .or_else(|| {
                        p.strip_prefix("mlp.c_proj.")
                            .map(|s| format!("mlp.fc2.{s}"))
                    }),
            };
            match renamed {
                Some(name) => out.insert(format!("{base}.{name}"), t),
                None => out.insert(key, t),
            };
        } else {
            out.insert(key, t);
        }
    }
    Ok(out)
}

/// `[n, m]` -> `[m, n]` (open_clip applies projections as `x @ proj`; Linear stores `[out, in]`).
fn transpose(file: &str, name: &str, t: RawTensor) -> Result<RawTensor> {
    let [n, m] = t.shape[..] else {
        return Err(Error::BadTensor {
            file: file.to_string(),
            tensor: name.to_string(),
            reason: format!("expected 2 dimensions, found shape {:?}", t.shape),
        });
    };
    let e = torch_pickle::element_bytes(t.dtype);
    let mut data = vec![0u8; t.data.len()];
    for i in 0..n {
        for j in 0..m {
            let from = (i * m + j) * e;
            let to = (j * n + i) * e;
            data[to..to + e].copy_from_slice(&t.data[from..from + e]);
        }
    }
    Ok(RawTensor {
        dtype: t.dtype,
        shape: vec![m, n],
        data,
    })
}

/// Splits a fused `[3w, ...]` q/k/v tensor into its three parts.
fn split3(file: &str, name: &str, t: RawTensor) -> Result<Vec<RawTensor>> {
    let rows = t.shape.first().copied().unwrap_or(0);
    if rows == 0 || !rows.is_multiple_of(3) {
        return Err(Error::BadTensor {
            file: file.to_string(),
            tensor: name.to_string(),
            reason: format!("shape {:?} is not three stacked projections", t.shape),
        });
    }
    let mut shape = t.shape.clone();
    shape[0] = rows / 3;
    let len = t.data.len() / 3;
    Ok(t.data
        .chunks_exact(len)
        .map(|chunk| RawTensor {
            dtype: t.dtype,
            shape: shape.clone(),
            data: chunk.to_vec(),
        })
        .collect())
}
