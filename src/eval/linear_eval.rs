//! A linear-evaluation run, the job of `swav-lincls train` (PASSL's `tools/train.py -c
//! swav_clas_r50.yaml`): settings from the config file and the command line, the classifier
//! trained on the frozen backbone (or on features computed once), and in the output folder
//! `last.safetensors`, `best.safetensors` (highest top-1), `metrics.jsonl` (a line per epoch,
//! written as it ends) and `curves.png`.

use super::classifier::{self, EpochMetrics, LinearEvalConfig};
use super::config::ClasConfig;
use super::{EvalError, Frozen};
use crate::data::dataset::Dataset;
use crate::data::loader::LoaderConfig;
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a run writes when neither the command line nor a config file says.
pub const DEFAULT_OUTPUT_DIR: &str = "lincls-out";

/// What the command line asked for. A config file replaces `base`; each flag given replaces
/// the file's value.
#[derive(Debug, Clone, Default)]
pub struct LinearEvalRequest {
    /// PASSL's `swav_clas_r50.yaml` keys.
    pub config: Option<PathBuf>,
    /// `key=value` overrides of the config file.
    pub overrides: Vec<String>,
    /// A folder with `train/` and `val/` ImageFolders (else the config's dataroots).
    pub data: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub epochs: Option<usize>,
    pub lr: Option<f64>,
    pub weight_decay: Option<f32>,
    pub train_size: Option<usize>,
    pub seed: Option<u64>,
}

/// A run with its settings and data resolved.
#[derive(Debug, Clone)]
pub struct LinearEvalPlan {
    pub cfg: LinearEvalConfig,
    pub train: Arc<Dataset>,
    pub val: Arc<Dataset>,
    pub output_dir: PathBuf,
}

/// What a finished run left.
#[derive(Debug, Clone)]
pub struct LinearEvalSummary {
    pub best_top1: f64,
    pub history: Vec<EpochMetrics>,
    pub output_dir: PathBuf,
    pub plot: PathBuf,
}

impl LinearEvalRequest {
    /// Settings and data for a backbone giving `feature_dim` features; `base` holds the
    /// settings used without a config file.
    pub fn resolve(
        &self,
        base: LinearEvalConfig,
        feature_dim: usize,
    ) -> Result<LinearEvalPlan, EvalError> {
        let (mut cfg, mut output_dir, folders) = match &self.config {
            Some(path) => {
                let at = |message: String| EvalError::File {
                    path: path.clone(),
                    message,
                };
                let c = ClasConfig::load(path, &self.overrides)?;
                let cfg = c.linear_eval().map_err(|e| at(e.to_string()))?;
                if c.model.head.in_channels != feature_dim {
                    return Err(at(format!(
                        "model.head.in_channels is {} but the backbone gives {feature_dim} features",
                        c.model.head.in_channels
                    )));
                }
                (cfg, PathBuf::from(&c.output_dir), Some(c.data()))
            }
            None => (base, PathBuf::from(DEFAULT_OUTPUT_DIR), None),
        };
        let (train, val) = match (&self.data, folders) {
            (Some(d), _) => splits(d)?,
            (None, Some((t, v))) => (image_folder(&t)?, image_folder(&v)?),
            (None, None) => {
                return Err(EvalError::Invalid(
                    "give --data DIR or a config file (-c)".into(),
                ))
            }
        };
        cfg.epochs = self.epochs.unwrap_or(cfg.epochs);
        cfg.lr = self.lr.unwrap_or(cfg.lr);
        cfg.weight_decay = self.weight_decay.unwrap_or(cfg.weight_decay);
        cfg.train_size = self.train_size.unwrap_or(cfg.train_size);
        cfg.seed = self.seed.unwrap_or(cfg.seed);
        if let Some(d) = &self.output_dir {
            output_dir = d.clone();
        }
        Ok(LinearEvalPlan {
            cfg,
            train,
            val,
            output_dir,
        })
    }
}

/// `data/train` and `data/val` as ImageFolders.
pub fn splits(data: &Path) -> Result<(Arc<Dataset>, Arc<Dataset>), EvalError> {
    Ok((
        image_folder(&data.join("train"))?,
        image_folder(&data.join("val"))?,
    ))
}

/// An ImageFolder (classes sorted by name → labels).
pub fn image_folder(root: &Path) -> Result<Arc<Dataset>, EvalError> {
    Ok(Dataset::image_folder(root).map(Arc::new)?)
}

/// Train the classifier of `plan` on the frozen backbone (giving `feature_dim` features) and write the
/// run's files; `on_epoch` sees each epoch's numbers after they are written. With
/// `cache_features` the features are computed once with the evaluation transform (split across
/// the devices) and the classifier trains on the first device; without, it trains
/// data-parallel on every device. In a run of several processes (`frozen.session`) only
/// process 0 writes the files (every process computes, and reports, the same numbers), and
/// `cache_features` is refused.
pub fn run<B: Backend>(
    frozen: &Frozen<B>,
    feature_dim: usize,
    plan: LinearEvalPlan,
    cache_features: bool,
    on_epoch: &mut dyn FnMut(&EpochMetrics),
) -> Result<LinearEvalSummary, EvalError> {
    let LinearEvalPlan {
        cfg,
        train,
        val,
        output_dir,
    } = plan;
    if cache_features && frozen.session.is_some() {
        return Err(EvalError::Invalid(
            "--cache-features runs in one process (give it several devices with --device)".into(),
        ));
    }
    let writer = frozen.session.as_ref().is_none_or(|s| s.process() == 0);
    let at = |p: &Path, e: std::io::Error| EvalError::File {
        path: p.to_path_buf(),
        message: e.to_string(),
    };
    let metrics_path = output_dir.join("metrics.jsonl");
    let mut metrics = if writer {
        std::fs::create_dir_all(&output_dir).map_err(|e| at(&output_dir, e))?;
        Some(std::fs::File::create(&metrics_path).map_err(|e| at(&metrics_path, e))?)
    } else {
        None
    };
    let mut best = f64::NEG_INFINITY;
    let mut failure = None;
    let mut history: Vec<EpochMetrics> = Vec::new();
    let mut record = |m: &EpochMetrics, head: &burn::nn::Linear<B>| {
        let improved = m.top1 > best;
        best = best.max(m.top1);
        if let Some(metrics) = metrics.as_mut() {
            let mut save = |name: &str| {
                if let Err(e) = classifier::save_classifier(&output_dir.join(name), head) {
                    failure.get_or_insert(EvalError::from(e));
                }
            };
            save("last.safetensors");
            if improved {
                save("best.safetensors");
            }
            let line = serde_json::to_string(m).expect("plain numbers serialise");
            if let Err(e) = writeln!(metrics, "{line}").and_then(|()| metrics.flush()) {
                failure.get_or_insert(at(&metrics_path, e));
            }
        }
        history.push(m.clone());
        on_epoch(m);
    };
    if cache_features {
        let (transform, lc) = (cfg.val_transform(), loader_config(&cfg));
        let classes = train.classes.len();
        let ft = frozen.dataset_features(train, transform, cfg.mean, cfg.std, &lc)?;
        let fv = frozen.dataset_features(val, transform, cfg.mean, cfg.std, &lc)?;
        let device = &frozen.devices[0];
        classifier::train_cached::<Autodiff<B>>(&ft, &fv, classes, &cfg, device, &mut record);
    } else {
        classifier::train::<Autodiff<B>>(frozen, feature_dim, train, val, &cfg, &mut record)?;
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let curve = |name: &str, f: fn(&EpochMetrics) -> f64| {
        let points = history.iter().map(|m| (m.epoch as f64, f(m))).collect();
        crate::plot::Series::line(name, points)
    };
    let chart = |title: &str, y: &str, series| crate::plot::Chart {
        title: title.into(),
        x_label: "epoch".into(),
        y_label: y.into(),
        series,
    };
    let plot = output_dir.join("curves.png");
    if !writer {
        return Ok(LinearEvalSummary {
            best_top1: best,
            history,
            output_dir,
            plot,
        });
    }
    crate::plot::write_png(
        &plot,
        &[
            chart(
                "Linear classifier: training loss",
                "cross-entropy",
                vec![curve("loss", |m| m.loss)],
            ),
            chart(
                "Validation accuracy",
                "accuracy (%)",
                vec![curve("top-1", |m| m.top1), curve("top-5", |m| m.top5)],
            ),
            chart(
                "Speed",
                "images / s",
                vec![curve("images/s", |m| m.images_per_second)],
            ),
        ],
    )?;
    Ok(LinearEvalSummary {
        best_top1: best,
        history,
        output_dir,
        plot,
    })
}

/// The loader for computing features with `cfg`'s batch size and workers.
pub fn loader_config(cfg: &LinearEvalConfig) -> LoaderConfig {
    LoaderConfig {
        batch_size: cfg.batch_size.max(1),
        workers: cfg.workers.max(1),
        ..Default::default()
    }
}
