//! ImageReward v1.0: BLIP's image-grounded text encoder (a ViT-L/16 whose tokens a BERT with
//! cross-attention reads) and an MLP on the `[CLS]` state, normalised to the human-preference
//! scale of its training set: `(mlp(cls) - 0.16717) / 1.03334`.
//!
//! Published as THUDM/ImageReward's `ImageReward.pt` (the model's `state_dict`) and
//! `med_config.json`; the tokenizer is bert-base-uncased's `vocab.txt` (BLIP adds `[DEC]` and
//! `[ENC]` after it). The text side of a prompt is its embedding; the image is cross-attended
//! afresh for every image, since ImageReward scores the pair jointly.

use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::aesthetic::AestheticHead;
use super::{Reward, RewardKind};
use crate::bert_tokenizer::{BertTokenizer, VOCAB_FILE};
use crate::files::ModelFiles;
use crate::models::bert::{self, BertConfig, BertModel};
use crate::models::blip_vit::{BlipVisionTransformer, BlipVitConfig};
use crate::preprocess::ImageProcessorConfig;
use crate::{Error, Result, torch_pickle, weights};

/// The checkpoint, by its published name (or the same keys as safetensors).
pub const IMAGE_REWARD_WEIGHTS: &[&str] = &["ImageReward.pt", "ImageReward.safetensors"];
pub const MED_CONFIG: &str = "med_config.json";
/// `ImageReward.mean` / `.std`: the raw head output's statistics on its training set.
const MEAN: f32 = 0.167_173_63;
const STD: f32 = 1.033_339_5;
/// `ImageReward.score` tokenizes with `max_length=35`.
const MAX_TOKENS: usize = 35;
/// `ImageReward.MLP`'s widths after the text encoder's hidden size (no activations between).
const HEAD_WIDTHS: [usize; 5] = [1024, 128, 64, 16, 1];
/// `nn.Sequential` indices of those Linears (dropouts between).
const HEAD_INDICES: [usize; 5] = [0, 2, 4, 6, 7];
/// BLIP's contrastive projections: saved in the checkpoint, unused by ImageReward's score.
const UNUSED: [&str; 3] = ["blip.vision_proj.", "blip.text_proj.", "position_ids"];

pub fn files_wanted() -> Vec<&'static str> {
    let mut names = IMAGE_REWARD_WEIGHTS.to_vec();
    names.extend([MED_CONFIG, VOCAB_FILE]);
    names
}

#[derive(Module, Debug)]
pub struct Blip {
    pub visual_encoder: BlipVisionTransformer,
    pub text_encoder: BertModel,
}

/// The module tree of `ImageReward.ImageReward` (its names are the checkpoint's).
#[derive(Module, Debug)]
pub struct ImageRewardModel {
    pub blip: Blip,
    pub mlp: AestheticHead,
}

pub struct ImageReward {
    pub model: ImageRewardModel,
    pub tokenizer: BertTokenizer,
    pub image_config: ImageProcessorConfig,
}

impl ImageReward {
    /// A folder with `ImageReward.pt`, `med_config.json` and `vocab.txt`.
    pub fn from_files(mut files: ModelFiles, device: &Device) -> Result<Self> {
        let tokenizer = BertTokenizer::from_files(&files)?;
        let config_file = files.label(MED_CONFIG);
        let mut config: BertConfig = files.json(MED_CONFIG)?;
        config.validate(&config_file)?;
        let name = files.first_of(IMAGE_REWARD_WEIGHTS)?;
        let file = files.label(name);
        let tensors = torch_pickle::read_tensors(&file, files.get(name).unwrap_or_default())?;
        files.take(name);
        let vit = BlipVitConfig::from_tensors(&file, &tensors, "blip.visual_encoder.")?;
        // As `BLIP_Pretrain` does: cross-attention reads the ViT's width.
        config.encoder_width = vit.width;
        if tokenizer.vocab_size > config.vocab_size {
            return Err(Error::Tokenizer {
                file: files.label(VOCAB_FILE),
                reason: format!(
                    "{} tokens with [DEC] and [ENC], but {config_file} has vocab_size {}",
                    tokenizer.vocab_size, config.vocab_size
                ),
            });
        }
        let model = ImageRewardModel {
            blip: Blip {
                visual_encoder: BlipVisionTransformer::new(&vit, device),
                text_encoder: BertModel::new(&config, device),
            },
            mlp: AestheticHead::new(config.hidden_size, &HEAD_WIDTHS, device),
        };
        let mut renames: Vec<(String, String)> = bert::KEY_RENAMES
            .iter()
            .map(|(from, to)| (from.to_string(), to.to_string()))
            .collect();
        for (i, index) in HEAD_INDICES.iter().enumerate() {
            renames.push((
                format!("^mlp\\.layers\\.{index}\\."),
                format!("mlp.layers.{i}."),
            ));
        }
        let bytes = torch_pickle::to_safetensors(&file, &tensors)?;
        drop(tensors);
        let model = weights::load_remapped(model, &file, bytes, &UNUSED, &renames)?.no_grad();
        let image_config = ImageProcessorConfig {
            shortest_edge: vit.image_size,
            crop: vit.image_size,
            ..ImageProcessorConfig::default()
        };
        Ok(Self {
            model,
            tokenizer,
            image_config,
        })
    }
}

impl Reward for ImageReward {
    fn kind(&self) -> RewardKind {
        RewardKind::ImageReward
    }

    fn image_config(&self) -> &ImageProcessorConfig {
        &self.image_config
    }

    fn encode_prompt(&self, prompt: &str, truncate: bool) -> Result<Option<Tensor<2>>> {
        let text = &self.model.blip.text_encoder;
        let limit = MAX_TOKENS.min(text.max_positions());
        let ids = self.tokenizer.encode(prompt, limit, truncate)?;
        Ok(Some(text.embed(&ids)))
    }

    fn score_pixels(&self, pixels: Tensor<4>, prompt: Option<&Tensor<2>>) -> Result<Tensor<1>> {
        let text = prompt.ok_or_else(|| {
            Error::argument(
                "imagereward",
                "needs a prompt (its text side was not computed)",
            )
        })?;
        let blip = &self.model.blip;
        let image = blip.visual_encoder.forward(pixels)?;
        let [b, _, _] = image.dims();
        let [tokens, hidden] = text.dims();
        let text = text
            .clone()
            .unsqueeze_dim::<3>(0)
            .expand([b, tokens, hidden]);
        let cls = blip
            .text_encoder
            .forward(text, image)
            .narrow(1, 0, 1)
            .reshape([b, hidden]);
        Ok((self.model.mlp.forward(cls) - MEAN) / STD)
    }
}
