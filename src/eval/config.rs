//! Linear-evaluation configs with PASSL's keys (`configs/swav/swav_clas_r50.yaml`:
//! `Classification` with a frozen `ResNetswav` and a `ClasHead`, `CosineAnnealingDecay`,
//! `Momentum`), turned into a [`LinearEvalConfig`]. Read strictly, with `-o` overrides
//! ([`crate::yaml`]).

use super::classifier::LinearEvalConfig;
use crate::data::settings::{LoaderSection, SamplerSection};
use crate::report::LogSection;
use crate::yaml::{self, ConfigError};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};

/// The whole linear-evaluation config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClasConfig {
    pub epochs: usize,
    pub output_dir: String,
    pub seed: u64,
    /// PASSL's `device: gpu|cpu`; `--device` on the command line wins.
    pub device: String,
    /// Accepted for PASSL compatibility (static-graph export settings); not used.
    pub total_iters: Option<usize>,
    pub image_shape: Vec<usize>,
    pub save_inference_dir: String,
    pub model: ClasModel,
    pub dataloader: ClasLoaders,
    pub lr_scheduler: ClasLr,
    pub optimizer: ClasOptimizer,
    pub log_config: LogSection,
    /// Hooks (`EvaluateHook`: top-1/top-5 every epoch, which this tool always does).
    pub custom_config: Vec<Hook>,
}

impl Default for ClasConfig {
    fn default() -> Self {
        ClasConfig {
            epochs: 100,
            output_dir: "output_dir".into(),
            seed: 0,
            device: "gpu".into(),
            total_iters: None,
            image_shape: vec![3, 224, 224],
            save_inference_dir: "./inference".into(),
            model: ClasModel::default(),
            dataloader: ClasLoaders::default(),
            lr_scheduler: ClasLr::default(),
            optimizer: ClasOptimizer::default(),
            log_config: LogSection {
                name: "LogHook".into(),
                interval: 10,
            },
            custom_config: vec![Hook {
                name: "EvaluateHook".into(),
            }],
        }
    }
}

/// A hook entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    pub name: String,
}

/// `model:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClasModel {
    pub name: String,
    pub backbone: ClasBackbone,
    pub head: ClasHead,
}

impl Default for ClasModel {
    fn default() -> Self {
        ClasModel {
            name: "Classification".into(),
            backbone: ClasBackbone::default(),
            head: ClasHead::default(),
        }
    }
}

/// `model.backbone:` (the backbone comes from `--pretrained`; `frozen_stages: 4` = frozen,
/// BatchNorm with its running statistics, the only mode linear evaluation has).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClasBackbone {
    pub name: String,
    pub depth: usize,
    pub frozen_stages: usize,
}

impl Default for ClasBackbone {
    fn default() -> Self {
        ClasBackbone {
            name: "ResNetswav".into(),
            depth: 50,
            frozen_stages: 4,
        }
    }
}

/// `model.head:` (`ClasHead`: average pool + Linear).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClasHead {
    pub name: String,
    pub with_avg_pool: bool,
    /// Feature width; checked against the loaded backbone.
    pub in_channels: usize,
    /// Classes; default: the number of class folders in the training set.
    pub num_classes: Option<usize>,
}

impl Default for ClasHead {
    fn default() -> Self {
        ClasHead {
            name: "ClasHead".into(),
            with_avg_pool: true,
            in_channels: 2048,
            num_classes: None,
        }
    }
}

/// `dataloader:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClasLoaders {
    pub train: ClasSplit,
    pub val: ClasSplit,
}

impl Default for ClasLoaders {
    fn default() -> Self {
        let norm = Transform {
            name: "NormalizeImage".into(),
            scale: Some(Value::String("1.0/255.0".into())),
            mean: Some([0.485, 0.456, 0.406]),
            std: Some([0.229, 0.224, 0.225]),
            ..Default::default()
        };
        let t = |name: &str, size: Option<usize>| Transform {
            name: name.into(),
            size,
            ..Default::default()
        };
        let split = |root: &str, shuffle: bool, transforms: Vec<Transform>| ClasSplit {
            loader: LoaderSection {
                num_workers: 8,
                use_shared_memory: true,
            },
            sampler: SamplerSection {
                batch_size: 32,
                shuffle,
                drop_last: shuffle,
            },
            dataset: ClasDataset {
                name: "ImageNet".into(),
                dataroot: root.into(),
                return_label: true,
                transforms,
            },
        };
        ClasLoaders {
            train: split(
                "data/ILSVRC2012/train",
                true,
                vec![
                    t("RandomResizedCrop", Some(224)),
                    t("RandomHorizontalFlip", None),
                    t("Transpose", None),
                    norm.clone(),
                ],
            ),
            val: split(
                "data/ILSVRC2012/val",
                false,
                vec![
                    t("Resize", Some(256)),
                    t("CenterCrop", Some(224)),
                    t("Transpose", None),
                    norm,
                ],
            ),
        }
    }
}

/// `dataloader.train:` / `dataloader.val:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClasSplit {
    pub loader: LoaderSection,
    pub sampler: SamplerSection,
    pub dataset: ClasDataset,
}

/// `dataloader.*.dataset:` (an ImageFolder).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ClasDataset {
    pub name: String,
    pub dataroot: String,
    pub return_label: bool,
    pub transforms: Vec<Transform>,
}

/// One transform entry (`name` and its arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Transform {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    /// PASSL writes `1.0/255.0` (a string); pixels are always scaled to [0, 1].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<[f32; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub std: Option<[f32; 3]>,
}

/// `lr_scheduler:` (`CosineAnnealingDecay`, stepped per iteration over `T_max` epochs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(non_snake_case)]
pub struct ClasLr {
    pub name: String,
    pub learning_rate: f64,
    pub T_max: usize,
}

impl Default for ClasLr {
    fn default() -> Self {
        ClasLr {
            name: "CosineAnnealingDecay".into(),
            learning_rate: 0.3,
            T_max: 100,
        }
    }
}

/// `optimizer:` (`Momentum`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClasOptimizer {
    pub name: String,
    pub momentum: f64,
    pub weight_decay: f32,
}

impl Default for ClasOptimizer {
    fn default() -> Self {
        ClasOptimizer {
            name: "Momentum".into(),
            momentum: 0.9,
            weight_decay: 1e-6,
        }
    }
}

fn find<'a>(ts: &'a [Transform], name: &str) -> Option<&'a Transform> {
    ts.iter().find(|t| t.name == name)
}

impl ClasConfig {
    /// Read a config file and apply `key=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<ClasConfig, ConfigError> {
        yaml::load(path, overrides)
    }

    /// The linear-evaluation settings this config describes.
    pub fn linear_eval(&self) -> Result<LinearEvalConfig, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(m);
        let (tr, va) = (
            &self.dataloader.train.dataset.transforms,
            &self.dataloader.val.dataset.transforms,
        );
        let size = |ts: &[Transform], name: &str, split: &str| {
            find(ts, name).and_then(|t| t.size).ok_or_else(|| {
                bad(format!(
                    "dataloader.{split}.dataset.transforms: needs {name} with a size"
                ))
            })
        };
        let norm = find(va, "NormalizeImage").or_else(|| find(tr, "NormalizeImage"));
        let d = LinearEvalConfig::default();
        if self.lr_scheduler.T_max != self.epochs {
            return Err(bad(format!(
                "lr_scheduler.T_max {} differs from epochs {}: the cosine runs over the whole training",
                self.lr_scheduler.T_max, self.epochs
            )));
        }
        let workers = self.dataloader.train.loader.num_workers;
        self.check_ranges()?;
        Ok(LinearEvalConfig {
            epochs: self.epochs,
            batch_size: self.dataloader.train.sampler.batch_size,
            lr: self.lr_scheduler.learning_rate,
            momentum: self.optimizer.momentum,
            weight_decay: self.optimizer.weight_decay,
            train_size: size(tr, "RandomResizedCrop", "train")?,
            val_resize: size(va, "Resize", "val")?,
            val_size: size(va, "CenterCrop", "val")?,
            mean: norm.and_then(|n| n.mean).unwrap_or(d.mean),
            std: norm.and_then(|n| n.std).unwrap_or(d.std),
            seed: self.seed,
            workers: if workers == 0 { d.workers } else { workers },
        })
    }

    /// Every numeric key the evaluation reads in its range, the first out of range named.
    fn check_ranges(&self) -> Result<(), ConfigError> {
        use crate::yaml::range::{at_least_one, finite, momentum, non_negative, positive};
        at_least_one("epochs", self.epochs)?;
        at_least_one(
            "dataloader.train.sampler.batch_size",
            self.dataloader.train.sampler.batch_size,
        )?;
        positive(
            "lr_scheduler.learning_rate",
            self.lr_scheduler.learning_rate,
        )?;
        momentum("optimizer.momentum", self.optimizer.momentum)?;
        non_negative(
            "optimizer.weight_decay",
            f64::from(self.optimizer.weight_decay),
        )?;
        for (split, ts) in [
            ("train", &self.dataloader.train.dataset.transforms),
            ("val", &self.dataloader.val.dataset.transforms),
        ] {
            for (i, t) in ts.iter().enumerate() {
                let key = |what: &str| format!("dataloader.{split}.dataset.transforms.{i}.{what}");
                if let Some(size) = t.size {
                    at_least_one(&key("size"), size)?;
                }
                for m in t.mean.iter().flatten() {
                    finite(&key("mean"), f64::from(*m))?;
                }
                for s in t.std.iter().flatten() {
                    positive(&key("std"), f64::from(*s))?;
                }
            }
        }
        Ok(())
    }

    /// Training and validation folders.
    pub fn data(&self) -> (PathBuf, PathBuf) {
        (
            PathBuf::from(&self.dataloader.train.dataset.dataroot),
            PathBuf::from(&self.dataloader.val.dataset.dataroot),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passl_clas_config_reads() {
        let text = include_str!("../../configs/swav/swav_clas_r50.yaml");
        let cfg: ClasConfig = yaml::from_yaml(text).unwrap();
        let l = cfg.linear_eval().unwrap();
        assert_eq!((l.epochs, l.batch_size, l.lr), (100, 32, 0.3));
        assert_eq!((l.train_size, l.val_resize, l.val_size), (224, 256, 224));
        assert_eq!(l.std, [0.229, 0.224, 0.225]);
        let o = yaml::with_overrides(
            &cfg,
            &["dataloader.val.dataset.transforms.0.size=292".into()],
        )
        .unwrap();
        assert_eq!(o.linear_eval().unwrap().val_resize, 292);
        let e = yaml::with_overrides(&cfg, &["dataloader.val.dataset.transforms.9.size=1".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("index below 4"), "{e}");
    }
}
