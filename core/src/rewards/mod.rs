//! Rewards: differentiable scores of images (float `[batch, 3, H, W]` in [0, 1], any size) for a
//! prompt, and [`RewardSet`], the weighted combination noise optimisation minimises.
//!
//! Every reward scores through one method, [`Reward::score_pixels`], on pixels already resized,
//! cropped and normalised for it. Generated images get there through the differentiable
//! [`resize_crop_normalize`] (what ReNO does); image files through [`pixel_batch`], exactly as
//! each reward's published scoring code preprocesses them (or as the user chose), so file
//! scores equal the numbers those projects publish.

pub mod aesthetic;
pub mod clip_reward;
pub mod dino;
pub mod image_reward;
pub mod personal;

use burn::tensor::{Device, Tensor};
use serde::Serialize;

use crate::files::ModelFiles;
use crate::preprocess::{
    ImageFile, ImageProcessorConfig, PreprocessChoice, pixel_batch, resize_crop_normalize,
};
use crate::{Error, Result, read_f32};

/// The rewards Tastebud knows, by the names users give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RewardKind {
    /// `exp(logit_scale) * cos` on a CLIP (transformers folder or OpenCLIP checkpoint).
    Clip,
    /// PickScore v1: `exp(logit_scale) * cos` on its fine-tuned CLIP-H.
    PickScore,
    /// HPSv2 / v2.1: `cos` on its fine-tuned OpenCLIP ViT-H-14.
    Hps,
    /// LAION aesthetic predictor v2: an MLP over the unit CLIP ViT-L/14 image embedding.
    Aesthetic,
    /// ImageReward v1.0: BLIP's image-grounded BERT and an MLP, normalised.
    ImageReward,
    /// DINOv2 similarity: mean cosine of class features to reference images.
    Dino,
    /// A person's own head, fitted on their choices, over a CLIP's image embedding.
    Personal,
}

impl RewardKind {
    pub const ALL: [RewardKind; 7] = [
        Self::Clip,
        Self::PickScore,
        Self::Hps,
        Self::Aesthetic,
        Self::ImageReward,
        Self::Dino,
        Self::Personal,
    ];

    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "clip" | "clipscore" => Self::Clip,
            "pickscore" => Self::PickScore,
            "hps" | "hpsv2" | "hpsv2.1" => Self::Hps,
            "aesthetic" => Self::Aesthetic,
            "imagereward" => Self::ImageReward,
            "dino" | "dinov2" => Self::Dino,
            "personal" => Self::Personal,
            other => {
                let known: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                return Err(Error::argument(
                    "reward",
                    format!("`{other}` is not one of {}", known.join(", ")),
                ));
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Clip => "clip",
            Self::PickScore => "pickscore",
            Self::Hps => "hps",
            Self::Aesthetic => "aesthetic",
            Self::ImageReward => "imagereward",
            Self::Dino => "dino",
            Self::Personal => "personal",
        }
    }

    /// ReNO's loss for this reward is `weight * (loss_constant - reward)` (a personal head's
    /// scale is its own: its loss is `-weight * reward`).
    pub fn loss_constant(self) -> f32 {
        match self {
            Self::Personal => 0.0,
            Self::Clip => 100.0,
            Self::PickScore => 30.0,
            Self::Hps | Self::Dino => 1.0,
            Self::Aesthetic => 10.0,
            Self::ImageReward => 2.0,
        }
    }

    /// ReNO's default weights (aesthetic is off by default there).
    pub fn default_weight(self) -> f32 {
        match self {
            Self::Clip => 0.01,
            Self::PickScore => 0.05,
            Self::Hps => 5.0,
            Self::Aesthetic => 0.0,
            Self::ImageReward | Self::Dino | Self::Personal => 1.0,
        }
    }
}

/// A differentiable image score.
pub trait Reward {
    fn kind(&self) -> RewardKind;
    /// How this reward's backbone wants its pixels.
    fn image_config(&self) -> &ImageProcessorConfig;
    /// The text side for a prompt (`None` for rewards that ignore it). Computed once per prompt
    /// by [`RewardSet`]; an empty prompt is an error for rewards that read it.
    fn encode_prompt(&self, prompt: &str, truncate: bool) -> Result<Option<Tensor<2>>>;
    /// One value per image, differentiable w.r.t. `pixels`.
    ///
    /// # Shapes
    /// - pixels: `[batch, 3, crop, crop]`, normalised as [`Reward::image_config`] says
    /// - output: `[batch]`
    fn score_pixels(&self, pixels: Tensor<4>, prompt: Option<&Tensor<2>>) -> Result<Tensor<1>>;
}

/// The file names a reward of `kind` may read from its folder (a front end fetches those that
/// exist; a file with another name can be handed over under its own name).
pub fn files_wanted(kind: RewardKind) -> Vec<&'static str> {
    match kind {
        RewardKind::Aesthetic => aesthetic::files_wanted(),
        RewardKind::Dino => dino::files_wanted(),
        RewardKind::ImageReward => image_reward::files_wanted(),
        RewardKind::Personal => personal::files_wanted(),
        _ => clip_reward::files_wanted(),
    }
}

/// Loads a reward of `kind` from its published files.
pub fn load(kind: RewardKind, files: ModelFiles, device: &Device) -> Result<Box<dyn Reward>> {
    match kind {
        RewardKind::Clip | RewardKind::PickScore | RewardKind::Hps => Ok(Box::new(
            clip_reward::ClipReward::from_files(kind, files, device)?,
        )),
        RewardKind::Aesthetic => Ok(Box::new(aesthetic::AestheticReward::from_files(
            files, device,
        )?)),
        RewardKind::Dino => Ok(Box::new(dino::DinoReward::from_files(files, device)?)),
        RewardKind::ImageReward => Ok(Box::new(image_reward::ImageReward::from_files(
            files, device,
        )?)),
        RewardKind::Personal => Ok(Box::new(personal::PersonalReward::from_files(
            files, device,
        )?)),
    }
}

/// One reward in a set, with its weight and the label it is reported under.
pub struct RewardTerm {
    pub label: String,
    pub reward: Box<dyn Reward>,
    pub weight: f32,
}

/// Rewards evaluated on a batch: each term's values and ReNO's weighted loss.
pub struct RewardValues {
    /// Per term, `[batch]`, in the set's order.
    pub rewards: Vec<Tensor<1>>,
    /// `sum_i weight_i * (constant_i - reward_i)`, `[batch]`: what ReNO minimises.
    pub loss: Tensor<1>,
}

/// Scores of one image, read back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageScores {
    /// Per term, in the set's order.
    pub rewards: Vec<f32>,
    /// `sum_i weight_i * reward_i`.
    pub weighted_total: f32,
    /// ReNO's loss.
    pub loss: f32,
}

impl ImageScores {
    /// Scores with their weighted total `sum w_i r_i`.
    pub fn new(rewards: Vec<f32>, weights: &[f32], loss: f32) -> Self {
        let weighted_total = rewards.iter().zip(weights).map(|(r, w)| r * w).sum();
        Self {
            rewards,
            weighted_total,
            loss,
        }
    }
}

/// A prompt's text side for every term, with what it was computed from.
struct EncodedPrompt {
    prompt: String,
    truncate: bool,
    per_term: Vec<Option<Tensor<2>>>,
}

/// Several rewards with weights; the text side of each is computed once per prompt.
pub struct RewardSet {
    terms: Vec<RewardTerm>,
    prompt: Option<EncodedPrompt>,
}

impl RewardSet {
    pub fn new(terms: Vec<RewardTerm>) -> Result<Self> {
        if terms.is_empty() {
            return Err(Error::argument("rewards", "no reward given"));
        }
        let mut set = Self {
            terms: Vec::with_capacity(terms.len()),
            prompt: None,
        };
        for term in terms {
            set.push(term)?;
        }
        Ok(set)
    }

    /// Adds a reward (the prompt is encoded again at the next [`RewardSet::set_prompt`]).
    pub fn push(&mut self, term: RewardTerm) -> Result<()> {
        if !term.weight.is_finite() {
            return Err(Error::argument(
                format!("weight of {}", term.label),
                format!("{} is not a finite number", term.weight),
            ));
        }
        self.terms.push(term);
        self.prompt = None;
        Ok(())
    }

    pub fn terms(&self) -> &[RewardTerm] {
        &self.terms
    }

    /// Encodes the prompt for every reward that reads one, unless it is the cached one.
    pub fn set_prompt(&mut self, prompt: &str, truncate: bool) -> Result<()> {
        if self
            .prompt
            .as_ref()
            .is_some_and(|e| e.prompt == prompt && e.truncate == truncate)
        {
            return Ok(());
        }
        let encoded = self
            .terms
            .iter()
            .map(|t| t.reward.encode_prompt(prompt, truncate))
            .collect::<Result<Vec<_>>>()?;
        self.prompt = Some(EncodedPrompt {
            prompt: prompt.to_string(),
            truncate,
            per_term: encoded,
        });
        Ok(())
    }

    fn encoded(&self) -> Result<&[Option<Tensor<2>>]> {
        self.prompt
            .as_ref()
            .map(|e| e.per_term.as_slice())
            .ok_or_else(|| Error::argument("prompt", "set a prompt before scoring"))
    }

    /// Scores float images in [0, 1] through each reward's differentiable preprocessing.
    ///
    /// # Shapes
    /// - images: `[batch, 3, height, width]`
    pub fn evaluate(&self, images: Tensor<4>) -> Result<RewardValues> {
        let [_, c, h, w] = images.dims();
        if c != 3 || h == 0 || w == 0 {
            return Err(Error::argument(
                "images",
                format!("shape [_, {c}, {h}, {w}]: expected [batch, 3, height, width]"),
            ));
        }
        self.combine(|reward| Ok(resize_crop_normalize(images.clone(), reward.image_config())))
    }

    /// Scores image files, each reward's pixels preprocessed as `preprocess` resolves for it
    /// (`Auto`: the reward's published scoring code).
    pub fn evaluate_files(
        &self,
        images: &[ImageFile],
        preprocess: PreprocessChoice,
        device: &Device,
    ) -> Result<RewardValues> {
        if images.is_empty() {
            return Err(Error::argument("images", "no image to score"));
        }
        self.combine(|reward| {
            Ok(pixel_batch(
                images,
                reward.image_config(),
                preprocess,
                device,
            ))
        })
    }

    fn combine(&self, pixels: impl Fn(&dyn Reward) -> Result<Tensor<4>>) -> Result<RewardValues> {
        let encoded = self.encoded()?;
        let mut rewards = Vec::with_capacity(self.terms.len());
        let mut loss: Option<Tensor<1>> = None;
        for (term, text) in self.terms.iter().zip(encoded) {
            let r = term
                .reward
                .score_pixels(pixels(term.reward.as_ref())?, text.as_ref())?;
            let constant = term.reward.kind().loss_constant();
            let l = (r.clone().neg() + constant) * term.weight;
            loss = Some(match loss {
                Some(acc) => acc + l,
                None => l,
            });
            rewards.push(r);
        }
        let loss = loss.ok_or_else(|| Error::argument("rewards", "no reward given"))?;
        Ok(RewardValues { rewards, loss })
    }

    /// Reads values back: one [`ImageScores`] per image.
    pub async fn read(&self, values: RewardValues) -> Result<Vec<ImageScores>> {
        let mut per_term = Vec::with_capacity(values.rewards.len());
        for r in values.rewards {
            per_term.push(read_f32(r).await?);
        }
        let loss = read_f32(values.loss).await?;
        Ok(loss
            .iter()
            .enumerate()
            .map(|(i, &loss)| {
                let rewards: Vec<f32> = per_term.iter().map(|v| v[i]).collect();
                let weights: Vec<f32> = self.terms.iter().map(|t| t.weight).collect();
                ImageScores::new(rewards, &weights, loss)
            })
            .collect())
    }
}
