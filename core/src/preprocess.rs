//! Images into the pixels a reward's vision tower takes, two ways:
//! - image files ([`pixel_batch`]) exactly as the reward's own published scoring code
//!   preprocesses them ([`FilePreprocess`]): Pillow's bicubic resize (OpenAI CLIP, open_clip,
//!   ImageReward, the LAION aesthetic scripts, transformers 4's `CLIPProcessor`) or torch's
//!   uint8 antialiased resize (transformers 5's default `CLIPImageProcessor`), each with its
//!   library's centre-crop rounding and handling of transparency, then rescale and normalise;
//! - [`resize_crop_normalize`]: a differentiable in-graph version for float images in [0, 1],
//!   matching torchvision's `resize(.., BICUBIC, antialias=True)` + `center_crop`, as the reward
//!   path of noise optimisation needs.
//!
//! The exact integer resamplers live in [`crate::resample`].

use std::str::FromStr;

use burn::tensor::{Device, Tensor, TensorData};
use image::{RgbImage, RgbaImage};
use serde::{Deserialize, Serialize};

use crate::files::ModelFiles;
use crate::resample::{self, Pixels, Resampler, ResizeCrop, aten_resize_matrix};
use crate::{Error, Result};

/// OpenAI CLIP's normalisation, the default of `CLIPImageProcessor`.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// Images larger than this on a side are refused rather than resized (they would be a mistake).
pub const MAX_SIDE: u32 = 16_384;

/// The most pixels an image file may declare (64 Mpx, e.g. 8192x8192): checked from its header
/// before decoding, so the decoded picture stays under 512 MiB even at 16 bits a sample.
pub const MAX_IMAGE_PIXELS: u64 = 1 << 26;

/// How image files are resized and cropped: the published preprocessing a reward's scores
/// are reproduced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilePreprocess {
    /// torchvision transforms on a PIL image (`Resize(n, BICUBIC)`, `CenterCrop(n)`, then RGB):
    /// OpenAI CLIP, open_clip (HPSv2), ImageReward, the LAION aesthetic scripts, DINOv2's eval
    /// transform. Pillow's resize (transparent images premultiplied), crop offset rounded half
    /// to even.
    PilTransforms,
    /// transformers' PIL image processor as transformers 4's `CLIPProcessor` runs it
    /// (PickScore's published code): `convert("RGB")` (alpha dropped), Pillow's resize, crop
    /// offset floored.
    PilProcessor,
    /// transformers 5's default `CLIPImageProcessor` (torchvision backend): transparency
    /// composited onto white, torch's uint8 antialiased resize, crop offset floored.
    Torchvision,
}

/// What a user asks for with `--preprocess`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PreprocessChoice {
    /// Each reward's own published preprocessing.
    #[default]
    Auto,
    /// Pillow's resize, as the reward's published code runs it.
    Pil,
    /// transformers 5's default `CLIPImageProcessor` (torch's uint8 resize).
    Torchvision,
}

impl FromStr for PreprocessChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "pil" => Ok(Self::Pil),
            "torchvision" => Ok(Self::Torchvision),
            other => Err(Error::argument(
                "preprocess",
                format!("`{other}` is not one of auto, pil, torchvision"),
            )),
        }
    }
}

/// The parts of `preprocessor_config.json` that CLIP uses, and how files are resized.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    pub shortest_edge: usize,
    pub crop: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The preprocessing of the reward's published scoring code (a reward sets its own).
    pub files: FilePreprocess,
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self {
            shortest_edge: 224,
            crop: 224,
            mean: CLIP_MEAN,
            std: CLIP_STD,
            files: FilePreprocess::PilTransforms,
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Square(usize),
    Shortest { shortest_edge: usize },
    HeightWidth { height: usize, width: usize },
}

#[derive(Deserialize)]
struct RawProcessorConfig {
    size: Option<SizeSpec>,
    crop_size: Option<SizeSpec>,
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
}

impl ImageProcessorConfig {
    /// From `preprocessor_config.json` if the folder has one, else from the `image_processor`
    /// of `processor_config.json` (what transformers 5's `CLIPProcessor.save_pretrained`
    /// writes), else CLIP's defaults.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        const PREPROCESSOR: &str = "preprocessor_config.json";
        const PROCESSOR: &str = "processor_config.json";
        #[derive(Deserialize)]
        struct Processor {
            image_processor: Option<RawProcessorConfig>,
        }
        let (raw, name) = match files.json_opt::<RawProcessorConfig>(PREPROCESSOR)? {
            Some(raw) => (raw, PREPROCESSOR),
            None => match files.json_opt::<Processor>(PROCESSOR)? {
                Some(Processor {
                    image_processor: Some(raw),
                }) => (raw, PROCESSOR),
                _ => return Ok(Self::default()),
            },
        };
        let bad = |reason: String| Error::BadJson {
            file: files.label(name),
            reason,
        };
        let side = |spec: SizeSpec, what: &str| match spec {
            SizeSpec::Square(n) | SizeSpec::Shortest { shortest_edge: n } => Ok(n),
            SizeSpec::HeightWidth { height, width } if height == width => Ok(height),
            SizeSpec::HeightWidth { height, width } => Err(bad(format!(
                "{what} {height}x{width}: only square sizes are supported"
            ))),
        };
        let d = Self::default();
        let cfg = Self {
            shortest_edge: raw
                .size
                .map(|s| side(s, "size"))
                .transpose()?
                .unwrap_or(d.shortest_edge),
            crop: raw
                .crop_size
                .map(|s| side(s, "crop_size"))
                .transpose()?
                .unwrap_or(d.crop),
            mean: raw.image_mean.unwrap_or(d.mean),
            std: raw.image_std.unwrap_or(d.std),
            files: d.files,
        };
        if cfg.crop == 0 || cfg.shortest_edge < cfg.crop || cfg.std.iter().any(|s| *s <= 0.0) {
            return Err(bad(format!("unusable sizes or std: {cfg:?}")));
        }
        Ok(cfg)
    }

    /// The file preprocessing `choice` resolves to for this reward.
    pub fn file_preprocess(&self, choice: PreprocessChoice) -> FilePreprocess {
        match (choice, self.files) {
            (PreprocessChoice::Auto, published) => published,
            (PreprocessChoice::Torchvision, _) => FilePreprocess::Torchvision,
            (PreprocessChoice::Pil, FilePreprocess::Torchvision) => FilePreprocess::PilProcessor,
            (PreprocessChoice::Pil, published) => published,
        }
    }
}

/// A decoded image file: 8-bit RGBA, and whether the file has transparency. Pillow and
/// transformers treat transparent pixels differently, so alpha is kept until preprocessing.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFile {
    pub rgba: RgbaImage,
    pub has_alpha: bool,
}

impl ImageFile {
    /// An opaque image.
    pub fn from_rgb(rgb: &RgbImage) -> Self {
        Self {
            rgba: image::DynamicImage::ImageRgb8(rgb.clone()).to_rgba8(),
            has_alpha: false,
        }
    }

    pub fn width(&self) -> usize {
        self.rgba.width() as usize
    }

    pub fn height(&self) -> usize {
        self.rgba.height() as usize
    }

    /// Pillow's `convert("RGB")`: the colour channels, alpha dropped.
    pub fn to_rgb(&self) -> Vec<u8> {
        self.rgba
            .as_raw()
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect()
    }
}

/// Decodes a PNG or JPEG file. Colour samples are read as Pillow reads them: grey replicated
/// into RGB, 16-bit samples by their high byte. (JPEG decoders differ from libjpeg in the last
/// level on some pixels, so only PNG files reproduce Python's pixels exactly.)
pub fn decode_image(name: &str, bytes: &[u8]) -> Result<ImageFile> {
    let bad = |reason: String| Error::BadImage {
        name: name.to_string(),
        reason,
    };
    let open = || {
        image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| bad(e.to_string()))
    };
    let reader = open()?;
    if reader.format().is_none() {
        return Err(bad("not a PNG or JPEG file".into()));
    }
    // The size the header declares, before any pixel is decoded: a small file can declare a
    // huge picture (a decompression bomb).
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| bad(format!("cannot read the header: {e}")))?;
    if width == 0 || height == 0 || width > MAX_SIDE || height > MAX_SIDE {
        return Err(bad(format!(
            "size {width}x{height} is out of range (1..={MAX_SIDE} a side)"
        )));
    }
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(bad(format!(
            "{width}x{height} is over the limit of {MAX_IMAGE_PIXELS} pixels for an image file"
        )));
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // 16-bit RGBA at the pixel limit, plus the decoder's own buffers.
    limits.max_alloc = Some(MAX_IMAGE_PIXELS * 8 + (64 << 20));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    if (img.width(), img.height()) != (width, height) {
        return Err(bad(format!(
            "decoded {}x{}, the header declares {width}x{height}",
            img.width(),
            img.height()
        )));
    }
    let has_alpha = img.color().has_alpha();
    let rgba = match img {
        // Pillow reads 16-bit PNG colour by its high byte (`RGB;16B`); `image` would round.
        image::DynamicImage::ImageRgb16(_) | image::DynamicImage::ImageRgba16(_) => {
            let wide = img.to_rgba16();
            let (w, h) = wide.dimensions();
            let bytes = wide.as_raw().iter().map(|v| (v >> 8) as u8).collect();
            RgbaImage::from_raw(w, h, bytes)
                .ok_or_else(|| bad("inconsistent 16-bit image buffer".into()))?
        }
        other => other.to_rgba8(),
    };
    Ok(ImageFile { rgba, has_alpha })
}

/// Output size of "resize the shortest side to `short`" as transformers and torchvision compute
/// it: `(height, width)`, the long side truncated.
pub fn shortest_side_size(height: usize, width: usize, short: usize) -> (usize, usize) {
    if width <= height {
        (short * height / width, short)
    } else {
        (short, short * width / height)
    }
}

/// transformers' crop offset: `int((size - crop) / 2.0)`.
fn crop_offset_floor(size: usize, crop: usize) -> usize {
    (size - crop) / 2
}

/// torchvision's crop offset: `int(round((size - crop) / 2.0))`, Python's round half to even.
fn crop_offset_round(size: usize, crop: usize) -> usize {
    let d = size - crop;
    let half = d / 2;
    if d % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// One image file as `how` preprocesses it: `[3, crop, crop]` normalised pixels, row-major.
pub fn pixels_from_file(
    img: &ImageFile,
    cfg: &ImageProcessorConfig,
    how: FilePreprocess,
) -> Vec<f32> {
    let (h, w) = (img.height(), img.width());
    let (rh, rw) = shortest_side_size(h, w, cfg.shortest_edge);
    let c = cfg.crop;
    let offset = match how {
        FilePreprocess::PilTransforms => crop_offset_round,
        FilePreprocess::PilProcessor | FilePreprocess::Torchvision => crop_offset_floor,
    };
    let window = ResizeCrop {
        out_width: rw,
        out_height: rh,
        left: offset(rw, c),
        top: offset(rh, c),
        crop_width: c,
        crop_height: c,
    };
    fn pixels(data: &[u8], width: usize, height: usize, channels: usize) -> Pixels<'_> {
        Pixels {
            data,
            width,
            height,
            channels,
        }
    }
    let rgb = match how {
        // Pillow resizes transparent images premultiplied (unless the size is unchanged, when
        // `resize` returns a copy), then torchvision's pipeline converts to RGB.
        FilePreprocess::PilTransforms if img.has_alpha && (rh, rw) != (h, w) => {
            let mut rgba = img.rgba.as_raw().clone();
            resample::premultiply(&mut rgba);
            let mut out = resample::resize_crop(pixels(&rgba, w, h, 4), window, Resampler::Pil);
            resample::unpremultiply(&mut out);
            out.chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect()
        }
        FilePreprocess::PilTransforms | FilePreprocess::PilProcessor => {
            resample::resize_crop(pixels(&img.to_rgb(), w, h, 3), window, Resampler::Pil)
        }
        FilePreprocess::Torchvision => {
            let rgb = if img.has_alpha {
                resample::composite_on_white(img.rgba.as_raw())
            } else {
                img.to_rgb()
            };
            resample::resize_crop(pixels(&rgb, w, h, 3), window, Resampler::Torch)
        }
    };
    // Rescale and normalise, planar.
    let mut out = vec![0.0f32; 3 * c * c];
    for (i, p) in rgb.chunks_exact(3).enumerate() {
        for ch in 0..3 {
            let v = f32::from(p[ch]) / 255.0;
            out[ch * c * c + i] = (v - cfg.mean[ch]) / cfg.std[ch];
        }
    }
    out
}

/// Batches image files into a `[n, 3, crop, crop]` tensor, each preprocessed as `choice`
/// resolves for this reward.
pub fn pixel_batch(
    images: &[ImageFile],
    cfg: &ImageProcessorConfig,
    choice: PreprocessChoice,
    device: &Device,
) -> Tensor<4> {
    let c = cfg.crop;
    let how = cfg.file_preprocess(choice);
    let data: Vec<f32> = images
        .iter()
        .flat_map(|img| pixels_from_file(img, cfg, how))
        .collect();
    Tensor::from_data(TensorData::new(data, [images.len(), 3, c, c]), device)
}

/// Differentiable resize (shortest side to `cfg.shortest_edge`, antialiased bicubic) + centre
/// crop + normalise, as torchvision does it on float tensors.
///
/// # Shapes
/// - images: `[batch, 3, height, width]`, values in [0, 1]
/// - output: `[batch, 3, crop, crop]`
pub fn resize_crop_normalize(images: Tensor<4>, cfg: &ImageProcessorConfig) -> Tensor<4> {
    let [b, ch, h, w] = images.dims();
    let device = images.device();
    let (rh, rw) = shortest_side_size(h, w, cfg.shortest_edge);
    let c = cfg.crop;
    let as_tensor = |m: Vec<f64>, rows: usize, cols: usize| {
        let m: Vec<f32> = m.into_iter().map(|v| v as f32).collect();
        Tensor::<2>::from_data(TensorData::new(m, [rows, cols]), &device)
    };
    let wy = as_tensor(aten_resize_matrix(h, rh, crop_offset_round(rh, c), c), c, h);
    let wx = as_tensor(aten_resize_matrix(w, rw, crop_offset_round(rw, c), c), c, w);
    let x = images.matmul(
        wx.transpose()
            .unsqueeze_dim::<3>(0)
            .unsqueeze_dim::<4>(0)
            .expand([b, ch, w, c]),
    );
    let x = wy
        .unsqueeze_dim::<3>(0)
        .unsqueeze_dim::<4>(0)
        .expand([b, ch, c, h])
        .matmul(x);
    let mean = Tensor::<1>::from_floats(cfg.mean, &device).reshape([1, 3, 1, 1]);
    let std = Tensor::<1>::from_floats(cfg.std, &device).reshape([1, 3, 1, 1]);
    (x - mean) / std
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_sizes_and_crop_offsets_follow_upstream() {
        assert_eq!(shortest_side_size(300, 400, 224), (224, 298));
        assert_eq!(shortest_side_size(500, 231, 224), (484, 224));
        // round half to even: (227-224)/2 = 1.5 -> 2, (225-224)/2 = 0.5 -> 0
        assert_eq!(crop_offset_round(227, 224), 2);
        assert_eq!(crop_offset_round(225, 224), 0);
        assert_eq!(crop_offset_floor(227, 224), 1);
    }
}
