//! DINOv2 reference similarity ("the image as its own reward"): the mean cosine similarity of
//! an image's DINOv2 class feature to those of one or more reference images.

use burn::tensor::{Device, Tensor};

use super::{Reward, RewardKind};
use crate::files::ModelFiles;
use crate::models::dinov2::{DINOV2_WEIGHTS, Dinov2Model};
use crate::preprocess::{
    FilePreprocess, ImageProcessorConfig, PreprocessChoice, decode_image, pixel_batch,
};
use crate::{Error, Result};

/// ImageNet normalisation, `BitImageProcessor`'s default for DINOv2.
const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Extensions of the reference images handed over with the model files.
pub const REFERENCE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// Every file a DINOv2 folder may hold (reference images come under their own names).
pub fn files_wanted() -> Vec<&'static str> {
    let mut names = vec!["config.json", "preprocessor_config.json"];
    names.extend(DINOV2_WEIGHTS);
    names
}

pub struct DinoReward {
    pub model: Dinov2Model,
    pub image_config: ImageProcessorConfig,
    /// Unit class features of the references, `[references, hidden]`.
    references: Tensor<2>,
}

fn unit(t: Tensor<2>) -> Tensor<2> {
    t.clone() / t.powi_scalar(2).sum_dim(1).sqrt()
}

impl DinoReward {
    /// A transformers `Dinov2Model` folder plus the reference images (PNG/JPEG files among
    /// `files`, any names).
    pub fn from_files(mut files: ModelFiles, device: &Device) -> Result<Self> {
        let image_config = if files.contains("preprocessor_config.json") {
            ImageProcessorConfig::from_files(&files)?
        } else {
            ImageProcessorConfig {
                shortest_edge: 256,
                crop: 224,
                mean: IMAGENET_MEAN,
                std: IMAGENET_STD,
                files: FilePreprocess::PilTransforms,
            }
        };
        let names = files.names_with_extension(REFERENCE_EXTENSIONS);
        if names.is_empty() {
            return Err(Error::MissingFile {
                folder: files.origin.clone(),
                wanted: "one or more reference images (.png or .jpg) given with the DINOv2 model"
                    .into(),
            });
        }
        let images = names
            .iter()
            .map(|n| decode_image(&files.label(n), files.get(n).unwrap_or_default()))
            .collect::<Result<Vec<_>>>()?;
        let model = Dinov2Model::from_files(&mut files, device)?;
        if !image_config.crop.is_multiple_of(model.patch_size) {
            return Err(Error::BadJson {
                file: files.label("preprocessor_config.json"),
                reason: format!(
                    "crop size {} is not a multiple of the patch size {}",
                    image_config.crop, model.patch_size
                ),
            });
        }
        // References go through DINOv2's published eval transform (Pillow), like scored files.
        let pixels = pixel_batch(&images, &image_config, PreprocessChoice::Auto, device);
        let references = unit(model.forward(pixels));
        Ok(Self {
            model,
            image_config,
            references,
        })
    }
}

impl Reward for DinoReward {
    fn kind(&self) -> RewardKind {
        RewardKind::Dino
    }

    fn image_config(&self) -> &ImageProcessorConfig {
        &self.image_config
    }

    fn encode_prompt(&self, _prompt: &str, _truncate: bool) -> Result<Option<Tensor<2>>> {
        Ok(None)
    }

    fn score_pixels(&self, pixels: Tensor<4>, _prompt: Option<&Tensor<2>>) -> Result<Tensor<1>> {
        let [n, c, h, w] = pixels.dims();
        let crop = self.image_config.crop;
        if c != 3 || h != crop || w != crop {
            return Err(Error::argument(
                "pixels",
                format!("shape [_, {c}, {h}, {w}], DINOv2 takes [_, 3, {crop}, {crop}] here"),
            ));
        }
        let features = unit(self.model.forward(pixels));
        let cos = features.matmul(self.references.clone().transpose());
        Ok(cos.mean_dim(1).reshape([n]))
    }
}
