//! SwAV's multi-crop: one decoded image cut into `num_crops[i]` crops of `size_crops[i]`
//! pixels each (facebookresearch/swav `MultiCropDataset`, defaults 2×224 + 6×96), plus the
//! evaluation and linear-classification transforms.

use super::decode::{self, DecodeError};
use super::image::RgbImage;
use super::rng::Rng;
use super::transforms::{self as tf, CropBox};
use fast_image_resize::Resizer;
use serde::{Deserialize, Serialize};

/// Multi-crop settings (facebookresearch/swav `main_swav.py` arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiCrop {
    /// Crop side per group: `[224, 96]`.
    pub size_crops: Vec<usize>,
    /// Crops per group: `[2, 6]`.
    pub num_crops: Vec<usize>,
    /// Smallest area fraction per group: `[0.14, 0.05]`.
    pub min_scale_crops: Vec<f64>,
    /// Largest area fraction per group: `[1.0, 0.14]`.
    pub max_scale_crops: Vec<f64>,
    /// Colour distortion strength `s` (`ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)`).
    pub color_strength: f32,
    /// Normalisation mean.
    pub mean: [f32; 3],
    /// Normalisation std (facebookresearch: 0.228 for red; PASSL: 0.229).
    pub std: [f32; 3],
    /// Decode JPEGs at 1/2, 1/4 or 1/8 scale when every crop shrinks at least that much.
    pub dct_scaling: bool,
}

impl Default for MultiCrop {
    fn default() -> Self {
        MultiCrop {
            size_crops: vec![224, 96],
            num_crops: vec![2, 6],
            min_scale_crops: vec![0.14, 0.05],
            max_scale_crops: vec![1.0, 0.14],
            color_strength: 1.0,
            mean: [0.485, 0.456, 0.406],
            std: [0.228, 0.224, 0.225],
            dct_scaling: true,
        }
    }
}

/// torchvision's default aspect-ratio range.
pub const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

impl MultiCrop {
    /// Check the four lists agree.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.size_crops.len();
        if n == 0
            || self.num_crops.len() != n
            || self.min_scale_crops.len() != n
            || self.max_scale_crops.len() != n
        {
            return Err("size_crops, num_crops, min_scale_crops and max_scale_crops must have the same non-zero length".into());
        }
        for i in 0..n {
            let (a, b) = (self.min_scale_crops[i], self.max_scale_crops[i]);
            if !(0.0 < a && a <= b && b <= 1.0) || self.size_crops[i] == 0 {
                return Err(format!(
                    "crop group {i}: need 0 < min_scale <= max_scale <= 1 and a size > 0"
                ));
            }
        }
        Ok(())
    }

    /// Total crops per image.
    pub fn total_crops(&self) -> usize {
        self.num_crops.iter().sum()
    }

    /// `(size, count)` per group.
    pub fn groups(&self) -> Vec<(usize, usize)> {
        self.size_crops
            .iter()
            .copied()
            .zip(self.num_crops.iter().copied())
            .collect()
    }

    /// Cut one encoded image into its crops, each written normalised (3×s×s, f32) into
    /// `out[group]` at crop slot `k` of that group (`out[g]` holds `num_crops[g]` crops).
    pub fn apply(
        &self,
        bytes: &[u8],
        rng: &mut Rng,
        resizer: &mut Resizer,
        out: &mut [&mut [f32]],
    ) -> Result<(), DecodeError> {
        let (fw, fh) = decode::dimensions(bytes)?;
        if fw == 0 || fh == 0 || fw * fh > decode::MAX_PIXELS {
            return Err(DecodeError::TooLarge(fw, fh));
        }
        // All crop boxes first: they decide how small the image may be decoded.
        let mut boxes: Vec<(usize, CropBox)> = Vec::with_capacity(self.total_crops());
        for (g, &n) in self.num_crops.iter().enumerate() {
            for _ in 0..n {
                let scale = (self.min_scale_crops[g], self.max_scale_crops[g]);
                boxes.push((g, tf::random_resized_crop_box(fw, fh, scale, RATIO, rng)));
            }
        }
        // Each crop must keep at least its output size in pixels after the DCT scaling.
        let shrink = boxes
            .iter()
            .map(|(g, b)| b.width.min(b.height) / self.size_crops[*g])
            .min()
            .unwrap_or(1);
        let min_size = (self.dct_scaling && shrink >= 2).then(|| {
            let s = shrink.min(8);
            (fw.div_ceil(s), fh.div_ceil(s))
        });
        let decoded = decode::decode(bytes, min_size)?;
        let scale = fw as f64 / decoded.image.width as f64;
        let mut slot = vec![0usize; self.size_crops.len()];
        for (g, b) in boxes {
            let s = self.size_crops[g];
            let mut crop = tf::resized_crop(&decoded.image, b, scale, s, s, resizer);
            self.distort(&mut crop, rng);
            let plane = 3 * s * s;
            let k = slot[g];
            slot[g] += 1;
            tf::to_tensor(
                &crop,
                self.mean,
                self.std,
                &mut out[g][k * plane..(k + 1) * plane],
            );
        }
        Ok(())
    }

    /// Flip, colour distortion and blur (the random parts after the crop).
    pub fn distort(&self, img: &mut RgbImage, rng: &mut Rng) {
        if rng.chance(0.5) {
            img.flip_horizontal();
        }
        let s = self.color_strength;
        if rng.chance(0.8) {
            for j in tf::color_jitter_params(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, rng) {
                tf::apply_jitter(img, j);
            }
        }
        if rng.chance(0.2) {
            tf::grayscale(img);
        }
        if rng.chance(0.5) {
            tf::gaussian_blur(img, rng.uniform(0.1, 2.0) as f32);
        }
    }
}

/// Linear evaluation transforms (facebookresearch `eval_linear.py`, PASSL `swav_clas_r50.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum EvalTransform {
    /// `RandomResizedCrop(size)` (scale 0.08–1) + `RandomHorizontalFlip()`.
    Train { size: usize },
    /// `Resize(resize)` + `CenterCrop(size)`.
    Val { resize: usize, size: usize },
}

impl EvalTransform {
    /// Output side.
    pub fn size(&self) -> usize {
        match *self {
            EvalTransform::Train { size } | EvalTransform::Val { size, .. } => size,
        }
    }

    /// Decode and transform one image into `out` (3×s×s, normalised).
    pub fn apply(
        &self,
        bytes: &[u8],
        mean: [f32; 3],
        std: [f32; 3],
        rng: &mut Rng,
        resizer: &mut Resizer,
        out: &mut [f32],
    ) -> Result<(), DecodeError> {
        let img = decode::decode(bytes, None)?.image;
        let img = match *self {
            EvalTransform::Train { size } => {
                let b = tf::random_resized_crop_box(img.width, img.height, (0.08, 1.0), RATIO, rng);
                let mut c = tf::resized_crop(&img, b, 1.0, size, size, resizer);
                if rng.chance(0.5) {
                    c.flip_horizontal();
                }
                c
            }
            EvalTransform::Val { resize, size } => {
                let c = tf::center_crop(&tf::resize_shorter(&img, resize.max(size), resizer), size);
                if (c.width, c.height) == (size, size) {
                    c
                } else {
                    let full = CropBox {
                        top: 0,
                        left: 0,
                        height: c.height,
                        width: c.width,
                    };
                    tf::resized_crop(&c, full, 1.0, size, size, resizer)
                }
            }
        };
        tf::to_tensor(&img, mean, std, out);
        Ok(())
    }
}
