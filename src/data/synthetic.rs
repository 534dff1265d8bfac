//! The built-in synthetic image set: ten classes of procedural pictures (shapes, stripes,
//! textures) with nuisance variation in position, scale, colours, brightness and noise,
//! deterministic from a seed, written as a real JPEG ImageFolder (`train/`, `val/`).
//!
//! The class is carried by the shape and layout, never by colour, so features must
//! capture structure: self-supervised features beat random ones on it, and a linear probe on
//! them beats chance clearly, at sizes a CPU trains in minutes.

use super::rng::Rng;
use std::fs;
use std::path::{Path, PathBuf};

/// The classes, in label order.
pub const CLASSES: [&str; 10] = [
    "0_circle",
    "1_square",
    "2_triangle",
    "3_hstripes",
    "4_vstripes",
    "5_checker",
    "6_ring",
    "7_cross",
    "8_diagonal",
    "9_dots",
];

/// What to generate.
#[derive(Debug, Clone)]
pub struct SyntheticConfig {
    /// Side of each image.
    pub size: usize,
    /// Training images per class.
    pub train_per_class: usize,
    /// Validation images per class.
    pub val_per_class: usize,
    pub seed: u64,
    /// JPEG quality.
    pub quality: u8,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            size: 64,
            train_per_class: 100,
            val_per_class: 20,
            seed: 0,
            quality: 90,
        }
    }
}

/// One image of class `class` (RGB, `size`²).
pub fn render(class: usize, size: usize, rng: &mut Rng) -> Vec<u8> {
    let s = size as f64;
    let bg = [
        rng.uniform(0.0, 255.0),
        rng.uniform(0.0, 255.0),
        rng.uniform(0.0, 255.0),
    ];
    // A foreground far enough from the background to be seen.
    let mut fg = [0.0f64; 3];
    loop {
        for c in &mut fg {
            *c = rng.uniform(0.0, 255.0);
        }
        let d: f64 = fg.iter().zip(&bg).map(|(a, b)| (a - b).abs()).sum();
        if d > 180.0 {
            break;
        }
    }
    let cx = s * rng.uniform(0.35, 0.65);
    let cy = s * rng.uniform(0.35, 0.65);
    let r = s * rng.uniform(0.2, 0.35);
    let period = s * rng.uniform(0.12, 0.22);
    let phase = rng.uniform(0.0, period);
    let gain = rng.uniform(0.7, 1.2);
    let noise = rng.uniform(2.0, 14.0);
    let mut data = vec![0u8; size * size * 3];
    for y in 0..size {
        for x in 0..size {
            let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
            let (dx, dy) = (fx - cx, fy - cy);
            let dist = (dx * dx + dy * dy).sqrt();
            let on = match class {
                0 => dist < r,
                1 => dx.abs() < r * 0.85 && dy.abs() < r * 0.85,
                2 => dy < r * 0.8 && dy > -r && dx.abs() < (dy + r) * 0.6,
                3 => ((fy + phase) / period).floor() as i64 % 2 == 0,
                4 => ((fx + phase) / period).floor() as i64 % 2 == 0,
                5 => {
                    (((fx + phase) / period).floor() as i64
                        + ((fy + phase) / period).floor() as i64)
                        % 2
                        == 0
                }
                6 => dist < r && dist > r * 0.55,
                7 => (dx.abs() < r * 0.25 && dy.abs() < r) || (dy.abs() < r * 0.25 && dx.abs() < r),
                8 => ((fx + fy + phase) / (period * 1.4)).floor() as i64 % 2 == 0,
                _ => {
                    let (mx, my) = (
                        (fx + phase) % period - period / 2.0,
                        (fy + phase) % period - period / 2.0,
                    );
                    (mx * mx + my * my).sqrt() < period * 0.28
                }
            };
            let base = if on { &fg } else { &bg };
            let i = (y * size + x) * 3;
            for c in 0..3 {
                let n = (rng.unit() + rng.unit() + rng.unit() - 1.5) * 2.0 * noise;
                data[i + c] = (base[c] * gain + n).clamp(0.0, 255.0) as u8;
            }
        }
    }
    data
}

/// Write the set under `root` (`root/train/<class>/*.jpg`, `root/val/<class>/*.jpg`);
/// built in a temporary folder and renamed into place, so a half-written set never exists.
pub fn write(root: &Path, cfg: &SyntheticConfig) -> std::io::Result<PathBuf> {
    let parent = root
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        root.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&tmp);
    for (split, n, salt) in [
        ("train", cfg.train_per_class, 0u64),
        ("val", cfg.val_per_class, 1u64),
    ] {
        for (c, name) in CLASSES.iter().enumerate() {
            let dir = tmp.join(split).join(name);
            fs::create_dir_all(&dir)?;
            for i in 0..n {
                let mut rng = Rng::for_sample(
                    cfg.seed ^ salt.wrapping_mul(0x9e37_79b9),
                    c as u64,
                    i as u64,
                );
                let img = render(c, cfg.size, &mut rng);
                let path = dir.join(format!("{i:05}.jpg"));
                let enc = jpeg_encoder::Encoder::new_file(&path, cfg.quality)
                    .map_err(std::io::Error::other)?;
                enc.encode(
                    &img,
                    cfg.size as u16,
                    cfg.size as u16,
                    jpeg_encoder::ColorType::Rgb,
                )
                .map_err(std::io::Error::other)?;
            }
        }
    }
    // Another process of the run (or an earlier run) may have made the set meanwhile: the
    // same images, so its copy is kept and in use; only a partial one is replaced.
    if root.join("train").is_dir() && root.join("val").is_dir() {
        let _ = fs::remove_dir_all(&tmp);
        return Ok(root.to_path_buf());
    }
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    if let Err(e) = fs::rename(&tmp, root) {
        let _ = fs::remove_dir_all(&tmp);
        if !root.join("train").is_dir() {
            return Err(e);
        }
    }
    Ok(root.to_path_buf())
}
