//! Images into CLIP pixels, two ways that share one set of resampling weights:
//! - [`pixels_from_rgb8`]: decoded files, as transformers' `CLIPImageProcessor` (torchvision
//!   backend) does it: uint8 antialiased bicubic resize of the shortest side in torch's
//!   fixed-point arithmetic (horizontal pass, then vertical, uint8 in between), centre crop,
//!   rescale, normalise.
//! - [`resize_crop_normalize`]: a differentiable in-graph version for float images in [0, 1],
//!   matching torchvision's `resize(.., BICUBIC, antialias=True)` + `center_crop`, as the reward
//!   path of noise optimisation needs.
//!
//! Antialiased resizing is separable and linear, so each pass is a matrix whose rows hold
//! aten's `_upsample_bicubic2d_aa` weights; cropping keeps only some of the rows.

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use serde::Deserialize;

use crate::files::ModelFiles;
use crate::{Error, Result};

/// OpenAI CLIP's normalisation, the default of `CLIPImageProcessor`.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// Images larger than this on a side are refused rather than resized (they would be a mistake).
pub const MAX_SIDE: u32 = 16_384;

/// The parts of `preprocessor_config.json` that CLIP uses.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    pub shortest_edge: usize,
    pub crop: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self {
            shortest_edge: 224,
            crop: 224,
            mean: CLIP_MEAN,
            std: CLIP_STD,
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
    /// From `preprocessor_config.json` if the folder has one, else CLIP's defaults.
    pub fn from_files(files: &ModelFiles) -> Result<Self> {
        const NAME: &str = "preprocessor_config.json";
        let Some(raw) = files.json_opt::<RawProcessorConfig>(NAME)? else {
            return Ok(Self::default());
        };
        let bad = |reason: String| Error::BadJson {
            file: files.label(NAME),
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
        };
        if cfg.crop == 0 || cfg.shortest_edge < cfg.crop || cfg.std.iter().any(|s| *s <= 0.0) {
            return Err(bad(format!("unusable sizes or std: {cfg:?}")));
        }
        Ok(cfg)
    }
}

/// Decodes a PNG or JPEG file to RGB (alpha dropped, as PIL's `convert("RGB")`).
pub fn decode_rgb(name: &str, bytes: &[u8]) -> Result<RgbImage> {
    let bad = |reason: String| Error::BadImage {
        name: name.to_string(),
        reason,
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(e.to_string()))?;
    if reader.format().is_none() {
        return Err(bad("not a PNG or JPEG file".into()));
    }
    let img = reader
        .decode()
        .map_err(|e| bad(format!("cannot decode: {e}")))?;
    if img.width() == 0 || img.height() == 0 || img.width() > MAX_SIDE || img.height() > MAX_SIDE {
        return Err(bad(format!(
            "size {}x{} is out of range (1..={MAX_SIDE})",
            img.width(),
            img.height()
        )));
    }
    Ok(img.to_rgb8())
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

/// aten's antialiased bicubic filter (a = -0.5, as PIL).
fn aa_bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// Rows `first..first + count` of the `[out_size, in_size]` antialiased bicubic resize matrix
/// (aten `_compute_weights_aa`, align_corners = false), row-major.
pub fn resize_matrix(in_size: usize, out_size: usize, first: usize, count: usize) -> Vec<f64> {
    let scale = in_size as f64 / out_size as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut m = vec![0.0; count * in_size];
    for (row, i) in (first..first + count).enumerate() {
        let center = scale * (i as f64 + 0.5);
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let weights: Vec<f64> = (xmin..xmax)
            .map(|j| aa_bicubic((j as f64 - center + 0.5) * invscale))
            .collect();
        let total: f64 = weights.iter().sum();
        for (j, w) in (xmin..xmax).zip(weights) {
            m[row * in_size + j] = if total != 0.0 { w / total } else { w };
        }
    }
    m
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

/// Resize weights as torch's uint8 antialiasing kernels use them: int16 values scaled by
/// 2^precision, the precision being the largest (below 22) at which the biggest weight still
/// fits in 15 bits (aten `_compute_index_ranges_int16_weights`).
fn fixed_point(weights: &[f64]) -> (Vec<i64>, u32) {
    let max = weights.iter().fold(0.0f64, |m, &w| m.max(w));
    let mut precision = 0;
    while precision < 22 && ((0.5 + max * f64::from(1u32 << (precision + 1))) as i64) < (1 << 15) {
        precision += 1;
    }
    let scale = f64::from(1u32 << precision);
    let ints = weights
        .iter()
        .map(|&w| {
            let v = w * scale;
            if v < 0.0 {
                (-0.5 + v) as i64
            } else {
                (0.5 + v) as i64
            }
        })
        .collect();
    (ints, precision)
}

/// One fixed-point output value: rounded, shifted and clamped to uint8 as torch does.
fn fixed_point_pixel(acc: i64, precision: u32) -> i64 {
    ((acc + (1 << (precision - 1))) >> precision).clamp(0, 255)
}

/// `CLIPImageProcessor` on a decoded image: `[3, crop, crop]` normalised pixels, row-major.
pub fn pixels_from_rgb8(img: &RgbImage, cfg: &ImageProcessorConfig) -> Vec<f32> {
    let (h, w) = (img.height() as usize, img.width() as usize);
    let (rh, rw) = shortest_side_size(h, w, cfg.shortest_edge);
    let (top, left) = (
        crop_offset_floor(rh, cfg.crop),
        crop_offset_floor(rw, cfg.crop),
    );
    let (c, src) = (cfg.crop, img.as_raw());
    // The precision depends on the largest weight of the whole axis, so compute every row
    // and keep the cropped ones.
    let (wx, px) = fixed_point(&resize_matrix(w, rw, 0, rw));
    let (wy, py) = fixed_point(&resize_matrix(h, rh, 0, rh));
    // Each output reads only the few source pixels under its filter.
    fn span(weights: &[i64]) -> (usize, &[i64]) {
        let start = weights.iter().position(|&w| w != 0).unwrap_or(0);
        let end = weights
            .iter()
            .rposition(|&w| w != 0)
            .map_or(start, |e| e + 1);
        (start, &weights[start..end])
    }
    let xs: Vec<_> = (0..c)
        .map(|x| span(&wx[(left + x) * w..(left + x + 1) * w]))
        .collect();
    let ys: Vec<_> = (0..c)
        .map(|y| span(&wy[(top + y) * h..(top + y + 1) * h]))
        .collect();
    let mut out = vec![0.0f32; 3 * c * c];
    let mut rows = vec![0i64; h * c];
    for ch in 0..3 {
        // Horizontal pass over every source row, back to uint8.
        for y in 0..h {
            for (x, (start, weights)) in xs.iter().enumerate() {
                let pixels = (*start..).map(|sx| i64::from(src[(y * w + sx) * 3 + ch]));
                let acc: i64 = weights.iter().zip(pixels).map(|(wgt, p)| wgt * p).sum();
                rows[y * c + x] = fixed_point_pixel(acc, px);
            }
        }
        // Vertical pass, back to uint8, then rescale and normalise.
        for (y, (start, weights)) in ys.iter().enumerate() {
            for x in 0..c {
                let acc: i64 = weights
                    .iter()
                    .zip(*start..)
                    .map(|(wgt, sy)| wgt * rows[sy * c + x])
                    .sum();
                let v = fixed_point_pixel(acc, py) as f32 / 255.0;
                out[(ch * c + y) * c + x] = (v - cfg.mean[ch]) / cfg.std[ch];
            }
        }
    }
    out
}

/// Batches decoded images into a `[n, 3, crop, crop]` tensor.
pub fn pixel_batch(images: &[RgbImage], cfg: &ImageProcessorConfig, device: &Device) -> Tensor<4> {
    let c = cfg.crop;
    let data: Vec<f32> = images
        .iter()
        .flat_map(|img| pixels_from_rgb8(img, cfg))
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
    let wy = as_tensor(resize_matrix(h, rh, crop_offset_round(rh, c), c), c, h);
    let wx = as_tensor(resize_matrix(w, rw, crop_offset_round(rw, c), c), c, w);
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
    fn resize_rows_sum_to_one_and_identity_at_same_size() {
        let m = resize_matrix(37, 11, 0, 11);
        for row in m.chunks(37) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        let id = resize_matrix(5, 5, 0, 5);
        for (i, row) in id.chunks(5).enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert!(
                    (v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12,
                    "{i},{j}: {v}"
                );
            }
        }
    }

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
