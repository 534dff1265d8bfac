//! Training configs: PASSL's `configs/swav/*.yaml` keys (model/backbone/neck/head, dataloader,
//! lr_scheduler, optimizer, optimizer_config, epochs, seed, output_dir), plus the settings of
//! facebookresearch/swav `main_swav.py` that PASSL lacks (queue, warmup epochs, checkpoints),
//! every one with its default written here (docs/train.md lists them; `--print-config` prints them).
//!
//! Read strictly, with `-o a.b.c=value` overrides ([`crate::yaml`]).

use super::lars::LarsConfig;
use super::step::SwavLoss;
use crate::data::multicrop::MultiCrop;
pub use crate::data::settings::{LoaderSection, SamplerSection};
use crate::model::resnet::ResNetConfig;
use crate::model::swav::{HeadConfig, SwavConfig};
pub use crate::report::LogSection;
use crate::yaml;
pub use crate::yaml::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The whole training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Training epochs (100).
    pub epochs: usize,
    /// Where checkpoints, metrics and plots go (`output_dir`; PASSL adds the config's name).
    pub output_dir: String,
    /// Seed of the data order, augmentations and initialisation (PASSL 0, main_swav.py 31).
    pub seed: u64,
    /// PASSL's `device: gpu|cpu`; `--device cpu|cuda:N` on the command line wins.
    pub device: String,
    pub model: ModelSection,
    pub dataloader: DataloaderSection,
    pub lr_scheduler: LrSection,
    pub optimizer: OptimizerSection,
    pub optimizer_config: OptimizerHookSection,
    pub log_config: LogSection,
    /// Checkpointing (not in PASSL, which saves every epoch and keeps all).
    pub checkpoint: CheckpointSection,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 100,
            output_dir: "output_dir".into(),
            seed: 0,
            device: "gpu".into(),
            model: ModelSection::default(),
            dataloader: DataloaderSection::default(),
            lr_scheduler: LrSection::default(),
            optimizer: OptimizerSection::default(),
            optimizer_config: OptimizerHookSection::default(),
            log_config: LogSection::default(),
            checkpoint: CheckpointSection::default(),
        }
    }
}

/// `model:` (PASSL `SwAV`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    pub name: String,
    pub backbone: BackboneSection,
    pub neck: NeckSection,
    pub head: HeadSection,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            name: "SwAV".into(),
            backbone: BackboneSection::default(),
            neck: NeckSection::default(),
            head: HeadSection::default(),
        }
    }
}

/// `model.backbone:` (PASSL `ResNetswav`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackboneSection {
    pub name: String,
    /// 18, 34, 50, 101 or 152.
    pub depth: usize,
    /// Stem width: 64, or 64 × widen (128/256/320 for RN50-w2/w4/w5), smaller for tiny models.
    pub width: usize,
    /// Synchronised BatchNorm over the ranks (swav-rs): every BatchNorm of the model (backbone
    /// and projection head, as PyTorch's `convert_sync_batchnorm`) normalises with the
    /// statistics of the global batch. facebookresearch's recipes run `--sync_bn pytorch`.
    pub sync_bn: bool,
}

impl Default for BackboneSection {
    fn default() -> Self {
        BackboneSection {
            name: "ResNetswav".into(),
            depth: 50,
            width: 64,
            sync_bn: false,
        }
    }
}

/// `model.neck:` (PASSL `SwAVNeck`: the projection head).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NeckSection {
    pub name: String,
    /// Backbone feature width (2048 for ResNet-50); checked against the backbone.
    pub in_channels: usize,
    /// Hidden width (`hidden_mlp`); 0 for a single Linear.
    pub hid_channels: usize,
    /// Embedding width (`feat_dim`).
    pub out_channels: usize,
    /// BatchNorm after the hidden Linear (false as in RN50-w5).
    pub with_bn: bool,
    pub with_l2norm: bool,
    pub with_avg_pool: bool,
}

impl Default for NeckSection {
    fn default() -> Self {
        NeckSection {
            name: "SwAVNeck".into(),
            in_channels: 2048,
            hid_channels: 2048,
            out_channels: 128,
            with_bn: true,
            with_l2norm: true,
            with_avg_pool: true,
        }
    }
}

/// `model.head:` (PASSL `SwAVHead`, with main_swav.py's queue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadSection {
    pub name: String,
    pub feat_dim: usize,
    pub sinkhorn_iterations: usize,
    pub epsilon: f64,
    pub temperature: f32,
    pub crops_for_assign: Vec<usize>,
    pub num_crops: Vec<usize>,
    pub num_prototypes: usize,
    /// Queue length over all workers (main_swav.py `queue_length`; 0: none).
    pub queue_length: usize,
    /// First epoch that fills and uses the queue (`epoch_queue_starts`).
    pub epoch_queue_starts: usize,
}

impl Default for HeadSection {
    fn default() -> Self {
        HeadSection {
            name: "SwAVHead".into(),
            feat_dim: 128,
            sinkhorn_iterations: 3,
            epsilon: 0.05,
            temperature: 0.1,
            crops_for_assign: vec![0, 1],
            num_crops: MultiCrop::default().num_crops,
            num_prototypes: 3000,
            queue_length: 0,
            epoch_queue_starts: 15,
        }
    }
}

/// `dataloader:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DataloaderSection {
    pub train: TrainLoaderSection,
}

/// `dataloader.train:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrainLoaderSection {
    pub loader: LoaderSection,
    pub sampler: SamplerSection,
    pub dataset: DatasetSection,
}

/// `dataloader.train.dataset:` (PASSL `MultiCropDataset`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetSection {
    pub name: String,
    /// Image folder (ImageFolder or flat); `synthetic`: the built-in synthetic set, made under
    /// `output_dir` on first use.
    pub dataroot: String,
    pub size_crops: Vec<usize>,
    pub num_crops: Vec<usize>,
    pub min_scale_crops: Vec<f64>,
    pub max_scale_crops: Vec<f64>,
    /// Colour distortion strength `s`: `ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)` (main_swav.py's
    /// `get_color_distortion(s=1.0)`).
    pub color_strength: f32,
}

impl Default for DatasetSection {
    /// facebookresearch/swav's multi-crop ([`MultiCrop`]'s defaults).
    fn default() -> Self {
        let crops = MultiCrop::default();
        DatasetSection {
            name: "MultiCropDataset".into(),
            dataroot: "data/ILSVRC2012/train".into(),
            size_crops: crops.size_crops,
            num_crops: crops.num_crops,
            min_scale_crops: crops.min_scale_crops,
            max_scale_crops: crops.max_scale_crops,
            color_strength: crops.color_strength,
        }
    }
}

/// `lr_scheduler:` (PASSL `CosineWarmup`). Lengths come from epochs × iterations per epoch:
/// `warmup_epochs` (when absent, `epochs × warmup_steps / T_max`, PASSL's ratio), then a
/// per-iteration cosine from `learning_rate` to `eta_min` over the remaining iterations.
/// `T_max` and `warmup_steps` are not used as step counts (PASSL's fixed `T_max: 31200` is only
/// right for a global batch of 4096).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(non_snake_case)]
pub struct LrSection {
    pub name: String,
    /// `base_lr`.
    pub learning_rate: f64,
    pub T_max: usize,
    pub warmup_steps: usize,
    /// `start_warmup`.
    pub start_lr: f64,
    /// The warmup's end (PASSL repeats `learning_rate`).
    pub end_lr: f64,
    /// `final_lr`.
    pub eta_min: f64,
    /// Warmup epochs (main_swav.py `warmup_epochs`).
    pub warmup_epochs: Option<f64>,
}

impl Default for LrSection {
    fn default() -> Self {
        LrSection {
            name: "CosineWarmup".into(),
            learning_rate: 4.8,
            T_max: 31200,
            warmup_steps: 3120,
            start_lr: 0.3,
            end_lr: 4.8,
            eta_min: 0.0048,
            warmup_epochs: None,
        }
    }
}

impl LrSection {
    /// Warmup epochs: the explicit value, or PASSL's ratio `epochs × warmup_steps / T_max`.
    pub fn warmup_epochs(&self, epochs: usize) -> f64 {
        self.warmup_epochs
            .unwrap_or(epochs as f64 * self.warmup_steps as f64 / self.T_max.max(1) as f64)
    }
}

/// `optimizer:` (PASSL `LarsMomentumOptimizer`; main_swav.py SGD + LARC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSection {
    pub name: String,
    pub momentum: f64,
    pub lars_weight_decay: f64,
    /// LARS trust coefficient (`lars_coeff`, LARC's 0.001).
    pub lars_coeff: f64,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        OptimizerSection {
            name: "LarsMomentumOptimizer".into(),
            momentum: 0.9,
            lars_weight_decay: 1e-6,
            lars_coeff: 0.001,
        }
    }
}

/// `optimizer_config:` (PASSL `SwAVOptimizerHook`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerHookSection {
    pub name: String,
    /// Iterations during which the prototypes are not updated.
    pub freeze_prototypes_iters: usize,
}

impl Default for OptimizerHookSection {
    fn default() -> Self {
        OptimizerHookSection {
            name: "SwAVOptimizerHook".into(),
            freeze_prototypes_iters: 313,
        }
    }
}

/// `checkpoint:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Epochs between checkpoints (the last epoch is always saved).
    pub interval: usize,
    /// Checkpoints kept (the oldest are removed).
    pub keep: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            interval: 1,
            keep: 3,
        }
    }
}

/// A training config checked and resolved into what training needs: the network, the
/// multi-crop augmentation, LARS, the loss and the crop groups. The one thing the trainer and
/// the step benchmark take; [`TrainConfig::plan`] is the only way to make one, so a plan is
/// always valid. Its config's sections stay readable through `Deref`.
#[derive(Debug, Clone)]
pub struct TrainPlan {
    config: TrainConfig,
    /// The network `model` describes: backbone, projection head, prototypes.
    pub network: SwavConfig,
    /// The augmentation of `dataloader.train.dataset`.
    pub multicrop: MultiCrop,
    /// `optimizer`.
    pub lars: LarsConfig,
    /// `model.head`'s loss settings.
    pub loss: SwavLoss,
    /// The index ranges of consecutive crops of one resolution (`num_crops` `[2, 6]` →
    /// `[0..2, 2..8]`): the backbone runs once per range.
    pub groups: Vec<std::ops::Range<usize>>,
}

impl TrainPlan {
    /// The config this plan was made from.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }
}

impl std::ops::Deref for TrainPlan {
    type Target = TrainConfig;

    fn deref(&self) -> &TrainConfig {
        &self.config
    }
}

impl TrainConfig {
    /// Check this config and resolve what training needs from it.
    pub fn plan(&self) -> Result<TrainPlan, ConfigError> {
        self.validate()?;
        Ok(TrainPlan {
            network: self.model_config()?,
            multicrop: self.multicrop()?,
            lars: self.lars(),
            loss: self.swav_loss(),
            groups: self.crop_groups(),
            config: self.clone(),
        })
    }

    /// Parse YAML text (unknown keys are errors).
    pub fn from_yaml(text: &str) -> Result<TrainConfig, String> {
        yaml::from_yaml(text)
    }

    /// Read a config file and apply `key=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<TrainConfig, ConfigError> {
        yaml::load(path, overrides)
    }

    /// Apply `a.b.c=value` overrides (the value is read as YAML: numbers, booleans, lists).
    pub fn with_overrides(self, overrides: &[String]) -> Result<TrainConfig, ConfigError> {
        yaml::with_overrides(&self, overrides)
    }

    /// As YAML (every key, defaults included).
    pub fn to_yaml(&self) -> String {
        yaml::to_yaml(self)
    }

    /// The loss settings of `model.head`.
    fn swav_loss(&self) -> SwavLoss {
        let h = &self.model.head;
        SwavLoss {
            temperature: h.temperature,
            epsilon: h.epsilon,
            sinkhorn_iterations: h.sinkhorn_iterations,
            crops_for_assign: h.crops_for_assign.clone(),
        }
    }

    /// The optimizer settings of `optimizer`.
    fn lars(&self) -> LarsConfig {
        LarsConfig {
            momentum: self.optimizer.momentum,
            weight_decay: self.optimizer.lars_weight_decay,
            trust_coefficient: self.optimizer.lars_coeff,
            ..Default::default()
        }
    }

    /// The index ranges of consecutive crops of one resolution (`num_crops` `[2, 6]` →
    /// `[0..2, 2..8]`): the backbone runs once per range.
    fn crop_groups(&self) -> Vec<std::ops::Range<usize>> {
        let mut at = 0;
        self.dataloader
            .train
            .dataset
            .num_crops
            .iter()
            .map(|&n| {
                at += n;
                at - n..at
            })
            .collect()
    }

    /// The multi-crop augmentation of `dataloader.train.dataset`, checked.
    fn multicrop(&self) -> Result<MultiCrop, ConfigError> {
        let d = &self.dataloader.train.dataset;
        let mc = MultiCrop {
            size_crops: d.size_crops.clone(),
            num_crops: d.num_crops.clone(),
            min_scale_crops: d.min_scale_crops.clone(),
            max_scale_crops: d.max_scale_crops.clone(),
            color_strength: d.color_strength,
            ..Default::default()
        };
        mc.validate()
            .map_err(|e| ConfigError::Invalid(format!("dataloader.train.dataset: {e}")))?;
        Ok(mc)
    }

    /// Check what serde cannot: consistent crop lists, known depth, sizes.
    fn validate(&self) -> Result<(), ConfigError> {
        self.multicrop()?;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let d = &self.dataloader.train.dataset;
        let h = &self.model.head;
        if h.num_crops != d.num_crops {
            return bad(format!(
                "model.head.num_crops {:?} differs from dataloader.train.dataset.num_crops {:?}",
                h.num_crops, d.num_crops
            ));
        }
        let total: usize = d.num_crops.iter().sum();
        if h.crops_for_assign.is_empty() || h.crops_for_assign.iter().any(|&c| c >= total) {
            return bad(format!(
                "model.head.crops_for_assign {:?}: each must be below the {total} crops",
                h.crops_for_assign
            ));
        }
        if total < 2 {
            return bad("at least two crops are needed for swapped prediction".into());
        }
        let backbone = self.backbone_config()?;
        if self.model.neck.in_channels != backbone.feature_dim() {
            return bad(format!(
                "model.neck.in_channels {} but a depth-{} width-{} ResNet gives {} features",
                self.model.neck.in_channels,
                self.model.backbone.depth,
                self.model.backbone.width,
                backbone.feature_dim()
            ));
        }
        if self.model.neck.out_channels != h.feat_dim {
            return bad(format!(
                "model.neck.out_channels {} differs from model.head.feat_dim {}",
                self.model.neck.out_channels, h.feat_dim
            ));
        }
        self.check_ranges()
    }

    /// Every numeric key in its range, the first out of range named.
    fn check_ranges(&self) -> Result<(), ConfigError> {
        use crate::yaml::range::{at_least_one, momentum, non_negative, positive};
        let (h, lr, o) = (&self.model.head, &self.lr_scheduler, &self.optimizer);
        at_least_one("epochs", self.epochs)?;
        at_least_one(
            "dataloader.train.sampler.batch_size",
            self.dataloader.train.sampler.batch_size,
        )?;
        at_least_one("model.head.num_prototypes", h.num_prototypes)?;
        at_least_one("model.head.feat_dim", h.feat_dim)?;
        at_least_one("model.head.sinkhorn_iterations", h.sinkhorn_iterations)?;
        positive("model.head.epsilon", h.epsilon)?;
        positive("model.head.temperature", f64::from(h.temperature))?;
        non_negative(
            "dataloader.train.dataset.color_strength",
            f64::from(self.dataloader.train.dataset.color_strength),
        )?;
        positive("lr_scheduler.learning_rate", lr.learning_rate)?;
        non_negative("lr_scheduler.start_lr", lr.start_lr)?;
        non_negative("lr_scheduler.end_lr", lr.end_lr)?;
        non_negative("lr_scheduler.eta_min", lr.eta_min)?;
        if let Some(w) = lr.warmup_epochs {
            non_negative("lr_scheduler.warmup_epochs", w)?;
        }
        momentum("optimizer.momentum", o.momentum)?;
        non_negative("optimizer.lars_weight_decay", o.lars_weight_decay)?;
        positive("optimizer.lars_coeff", o.lars_coeff)?;
        at_least_one("log_config.interval", self.log_config.interval)?;
        at_least_one("checkpoint.interval", self.checkpoint.interval)?;
        at_least_one("checkpoint.keep", self.checkpoint.keep)
    }

    fn backbone_config(&self) -> Result<ResNetConfig, ConfigError> {
        let b = &self.model.backbone;
        let mut cfg = ResNetConfig::depth(b.depth, 1).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "model.backbone.depth {}: one of 18, 34, 50, 101, 152",
                b.depth
            ))
        })?;
        if b.width == 0 {
            return Err(ConfigError::Invalid(
                "model.backbone.width must be positive".into(),
            ));
        }
        cfg.base_width = b.width;
        Ok(cfg)
    }

    /// The model's shape.
    fn model_config(&self) -> Result<SwavConfig, ConfigError> {
        let n = &self.model.neck;
        Ok(SwavConfig {
            backbone: self.backbone_config()?,
            head: Some(HeadConfig {
                hidden: (n.hid_channels > 0).then_some(n.hid_channels),
                bn: n.with_bn && n.hid_channels > 0,
                out: n.out_channels,
            }),
            prototypes: vec![self.model.head.num_prototypes],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passl_file_reads_and_overrides_are_typed() {
        let text = include_str!("../../configs/swav/swav_r50_100ep.yaml");
        let cfg = TrainConfig::from_yaml(text).unwrap();
        assert_eq!(cfg.lr_scheduler.learning_rate, 4.8);
        assert_eq!(cfg.optimizer.lars_weight_decay, 1e-6);
        assert_eq!(cfg.lr_scheduler.warmup_epochs(cfg.epochs), 10.0);
        cfg.validate().unwrap();
        let o = |s: &str| cfg.clone().with_overrides(&[s.to_string()]);
        assert_eq!(
            o("model.head.epsilon=0.03").unwrap().model.head.epsilon,
            0.03
        );
        assert_eq!(
            o("dataloader.train.dataset.size_crops=[160, 96]")
                .unwrap()
                .dataloader
                .train
                .dataset
                .size_crops,
            vec![160, 96]
        );
        let e = o("model.head.epsilom=0.03").unwrap_err().to_string();
        assert!(
            e.contains("model.head.epsilom") && e.contains("no such key"),
            "{e}"
        );
        let e = o("model.head.epsilon=abc").unwrap_err().to_string();
        assert!(e.contains("epsilon") && e.contains("invalid type"), "{e}");
        let e = o("model.head=3").unwrap_err().to_string();
        assert!(e.contains("section"), "{e}");
        let e = TrainConfig::from_yaml("model:\n  neck:\n    hid: 3\n").unwrap_err();
        assert!(e.contains("model.neck") && e.contains("hid"), "{e}");
    }

    #[test]
    fn every_shipped_training_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/swav");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("swav_clas") {
                continue;
            }
            let cfg = TrainConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
            cfg.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            n += 1;
        }
        assert!(n >= 9, "{n} configs");
    }

    #[test]
    fn bs256_recipe_has_its_queue_and_freeze() {
        let p =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/swav/swav_r50_200ep_bs256.yaml");
        let c = TrainConfig::load(&p, &[]).unwrap();
        assert_eq!(
            (c.model.head.queue_length, c.model.head.epoch_queue_starts),
            (3840, 15)
        );
        assert_eq!(c.optimizer_config.freeze_prototypes_iters, 5005);
        assert_eq!(
            (c.lr_scheduler.learning_rate, c.lr_scheduler.eta_min),
            (0.6, 0.0006)
        );
        assert_eq!(c.lr_scheduler.warmup_epochs(c.epochs), 0.0);
    }
}
