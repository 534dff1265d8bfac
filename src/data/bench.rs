//! Measure the loader alone: images per second over a folder (`swav-train bench-data`).

use super::dataset::Dataset;
use super::loader::{Loader, LoaderConfig, Pipeline};
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// What a loader benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub images: usize,
    pub crops_per_image: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub images_per_second_per_worker: f64,
    pub workers: usize,
    pub skipped: usize,
    /// The vector instructions the transforms ran with (see [`super::simd`]).
    pub simd: super::simd::Level,
}

/// Load `batches` batches (the first one, warming up, is not timed); cycles over epochs when
/// the dataset is smaller, and keeps a last partial batch (a folder smaller than one batch is
/// still measured). An empty batch size or dataset is an error.
pub fn run(
    dataset: Arc<Dataset>,
    pipeline: Pipeline,
    cfg: &LoaderConfig,
    batches: usize,
) -> Result<BenchResult, String> {
    if cfg.batch_size == 0 {
        return Err("--batch-size: must be at least 1".into());
    }
    if dataset.is_empty() {
        return Err("the dataset has no images".into());
    }
    let cfg = &LoaderConfig {
        drop_last: false,
        ..cfg.clone()
    };
    let crops_per_image = pipeline.groups().iter().map(|g| g.1).sum();
    let mut images = 0;
    let mut skipped = 0;
    let mut start = None;
    let mut done = 0;
    let mut epoch = 0;
    while done <= batches {
        let mut loader = Loader::new(dataset.clone(), pipeline.clone(), cfg, epoch);
        if loader.is_empty() {
            break;
        }
        for b in loader.by_ref() {
            if done == 0 {
                start = Some(Instant::now());
            } else {
                images += b.len();
            }
            done += 1;
            if done > batches {
                break;
            }
        }
        skipped += loader.skipped.lock().map(|s| s.len()).unwrap_or(0);
        epoch += 1;
    }
    let seconds = start
        .map(|s| s.elapsed().as_secs_f64())
        .unwrap_or(0.0)
        .max(1e-9);
    let ips = images as f64 / seconds;
    Ok(BenchResult {
        images,
        crops_per_image,
        seconds,
        images_per_second: ips,
        images_per_second_per_worker: ips / cfg.workers.max(1) as f64,
        workers: cfg.workers,
        skipped,
        simd: super::simd::detected(),
    })
}

/// `swav-train bench-data`: multi-crop loading of `data` (an image folder; `None`: a small
/// built-in synthetic set, 256-pixel images, made in a temporary folder) in batches of
/// `loader.batch_size` images.
pub fn run_folder(
    data: Option<&std::path::Path>,
    multicrop: &super::multicrop::MultiCrop,
    loader: &LoaderConfig,
    batches: usize,
) -> Result<BenchResult, String> {
    use super::synthetic;
    multicrop.validate()?;
    let tmp;
    let root = match data {
        Some(d) => d.to_path_buf(),
        None => {
            tmp = tempfile::tempdir().map_err(|e| format!("a temporary folder: {e}"))?;
            let root = tmp.path().join("synthetic");
            let cfg = synthetic::SyntheticConfig {
                size: 256,
                train_per_class: 20,
                val_per_class: 0,
                ..Default::default()
            };
            synthetic::write(&root, &cfg).map_err(|e| format!("{}: {e}", root.display()))?;
            root.join("train")
        }
    };
    let ds = Arc::new(Dataset::open(&root).map_err(|e| e.to_string())?);
    run(ds, Pipeline::MultiCrop(multicrop.clone()), loader, batches)
        .map_err(|e| format!("{}: {e}", root.display()))
}

impl BenchResult {
    /// One line for the terminal, naming the crops `multicrop` made.
    pub fn describe(&self, multicrop: &super::multicrop::MultiCrop) -> String {
        let skipped = if self.skipped > 0 {
            format!(", {} unreadable images skipped", self.skipped)
        } else {
            String::new()
        };
        format!(
            "{} images ({} crops each: {:?}x{:?}) in {:.2} s: {:.1} images/s with {} workers ({:.1} per worker, {:?}){skipped}",
            self.images,
            self.crops_per_image,
            multicrop.num_crops,
            multicrop.size_crops,
            self.seconds,
            self.images_per_second,
            self.workers,
            self.images_per_second_per_worker,
            self.simd,
        )
    }
}
