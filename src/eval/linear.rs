//! Linear evaluation (facebookresearch/swav `eval_linear.py`, PASSL `swav_clas_r50.yaml`): a
//! frozen backbone with BatchNorm in eval mode, global average pooling, `Linear(feat, classes)`
//! initialised N(0, 0.01) with zero bias, cross-entropy, SGD momentum 0.9 (no dampening),
//! weight decay 1e-6, learning rate with a per-iteration cosine to 0; top-1/top-5 each epoch.
//!
//! The backbone runs on the inference backend (BatchNorm uses its running statistics); only the
//! classifier lives on the autodiff backend.

use crate::data::dataset::Dataset;
use crate::data::loader::{Loader, LoaderConfig, Pipeline};
use crate::data::multicrop::EvalTransform;
use crate::model::swav::Swav;
use burn::module::{AutodiffModule, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::optim::momentum::MomentumConfig;
use burn::optim::{decay::WeightDecayConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;
use std::sync::Arc;

/// Linear-evaluation settings (PASSL / facebookresearch defaults).
#[derive(Debug, Clone, Serialize)]
pub struct LinearEvalConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f32,
    /// Train crop side (`RandomResizedCrop`), val `Resize` and crop.
    pub train_size: usize,
    pub val_resize: usize,
    pub val_size: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub seed: u64,
    pub workers: usize,
}

impl Default for LinearEvalConfig {
    fn default() -> Self {
        LinearEvalConfig {
            epochs: 100,
            batch_size: 256,
            lr: 0.3,
            momentum: 0.9,
            weight_decay: 1e-6,
            train_size: 224,
            val_resize: 256,
            val_size: 224,
            mean: [0.485, 0.456, 0.406],
            std: [0.228, 0.224, 0.225],
            seed: 31,
            workers: LoaderConfig::default().workers,
        }
    }
}

impl LinearEvalConfig {
    /// The evaluation transform: `Resize(val_resize)` + `CenterCrop(val_size)`.
    pub fn val_transform(&self) -> EvalTransform {
        EvalTransform::Val {
            resize: self.val_resize,
            size: self.val_size,
        }
    }
}

/// One epoch's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub top1: f64,
    pub top5: f64,
    pub images_per_second: f64,
}

/// The per-iteration cosine from `base` to 0 over `total` iterations.
pub fn cosine_lr(base: f64, iteration: usize, total: usize) -> f64 {
    0.5 * base * (1.0 + (std::f64::consts::PI * iteration as f64 / total.max(1) as f64).cos())
}

/// `Linear(feat, classes)` with weights N(0, 0.01) and zero bias.
pub fn classifier<B: Backend>(feat: usize, classes: usize, device: &B::Device) -> Linear<B> {
    let mut l = LinearConfig::new(feat, classes)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.01,
        })
        .init(device);
    l.bias = Some(Param::from_tensor(Tensor::zeros([classes], device)));
    l
}

/// SGD as `eval_linear.py` configures it: momentum without dampening, weight decay.
fn sgd<A: AutodiffBackend>(cfg: &LinearEvalConfig) -> impl Optimizer<Linear<A>, A> {
    SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(cfg.momentum)
                .with_dampening(0.0),
        ))
        .with_weight_decay(Some(WeightDecayConfig::new(cfg.weight_decay)))
        .init::<A, Linear<A>>()
}

/// One cross-entropy step of the classifier on features `x`: the updated classifier and the
/// batch's mean loss.
fn sgd_step<A: AutodiffBackend>(
    head: Linear<A>,
    optim: &mut impl Optimizer<Linear<A>, A>,
    x: Tensor<A, 2>,
    targets: Tensor<A, 1, Int>,
    lr: f64,
) -> (Linear<A>, f64) {
    let loss = CrossEntropyLossConfig::new()
        .init(&x.device())
        .forward(head.forward(x), targets);
    let value: f32 = loss
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("scalar loss")[0];
    let grads = GradientsParams::from_grads(loss.backward(), &head);
    (optim.step(lr, head, grads), value as f64)
}

/// Top-1 and top-5 hits of `logits` `[N, K]` against `labels`.
pub fn hits<B: Backend>(logits: Tensor<B, 2>, labels: &[i64]) -> (usize, usize) {
    let [n, k] = logits.dims();
    let v: Vec<f32> = logits
        .to_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 logits");
    let (mut t1, mut t5) = (0, 0);
    for (row, &y) in v.chunks_exact(k).zip(labels).take(n) {
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        t1 += usize::from(order[0] as i64 == y);
        t5 += usize::from(order.iter().take(5).any(|&c| c as i64 == y));
    }
    (t1, t5)
}

fn features<I: Backend>(backbone: &Swav<I>, crops: Tensor<I, 4>) -> Tensor<I, 2> {
    backbone.backbone.forward(crops)
}

/// Move a tensor between backends (through host memory).
fn to_backend<I: Backend, A: Backend, const D: usize>(
    t: Tensor<I, D>,
    device: &A::Device,
) -> Tensor<A, D> {
    Tensor::from_data(t.into_data(), device)
}

/// Evaluate `head` on `val` (features of the frozen backbone): top-1, top-5 in %.
pub fn evaluate<I: Backend>(
    backbone: &Swav<I>,
    head: &Linear<I>,
    val: Arc<Dataset>,
    cfg: &LinearEvalConfig,
    device: &I::Device,
) -> (f64, f64) {
    let lc = LoaderConfig {
        batch_size: cfg.batch_size,
        workers: cfg.workers,
        shuffle: false,
        drop_last: false,
        seed: cfg.seed,
        prefetch: 2,
    };
    let (mut n, mut t1, mut t5) = (0, 0, 0);
    for b in Loader::new(
        val,
        Pipeline::Eval {
            transform: cfg.val_transform(),
            mean: cfg.mean,
            std: cfg.std,
        },
        &lc,
        0,
    ) {
        if b.is_empty() {
            continue;
        }
        let labels: Vec<i64> = b
            .labels
            .iter()
            .map(|l| l.map_or(-1, |v| v as i64))
            .collect();
        let d = b.to_device::<I>(device);
        let logits = head.forward(features(backbone, d.crops[0].clone()));
        let (a, c) = hits(logits, &labels);
        t1 += a;
        t5 += c;
        n += labels.len();
    }
    let pct = |x: usize| 100.0 * x as f64 / n.max(1) as f64;
    (pct(t1), pct(t5))
}

/// Train a linear classifier on the frozen backbone; `on_epoch` gets each epoch's metrics
/// and the classifier (for saving best and last). Returns the trained classifier.
pub fn train<A: AutodiffBackend>(
    backbone: &Swav<A::InnerBackend>,
    feature_dim: usize,
    train_set: Arc<Dataset>,
    val_set: Arc<Dataset>,
    cfg: &LinearEvalConfig,
    device: &A::Device,
    mut on_epoch: impl FnMut(&EpochMetrics, &Linear<A::InnerBackend>),
) -> Linear<A::InnerBackend> {
    let inner = device.clone();
    A::seed(device, cfg.seed);
    let classes = train_set.classes.len().max(1);
    let mut head = classifier::<A>(feature_dim, classes, device);
    let mut optim = sgd::<A>(cfg);
    let lc = LoaderConfig {
        batch_size: cfg.batch_size,
        workers: cfg.workers,
        shuffle: true,
        drop_last: false,
        seed: cfg.seed,
        prefetch: 2,
    };
    let per_epoch = train_set.len().div_ceil(cfg.batch_size.max(1));
    let total = per_epoch * cfg.epochs;
    let mut iteration = 0;
    let pipeline = Pipeline::Eval {
        transform: EvalTransform::Train {
            size: cfg.train_size,
        },
        mean: cfg.mean,
        std: cfg.std,
    };
    for epoch in 0..cfg.epochs {
        let start = std::time::Instant::now();
        let (mut loss_sum, mut seen, mut lr) = (0.0, 0usize, cfg.lr);
        for b in Loader::new(train_set.clone(), pipeline.clone(), &lc, epoch as u64) {
            if b.is_empty() {
                continue;
            }
            let n = b.len();
            let labels: Vec<i64> = b.labels.iter().map(|l| l.map_or(0, |v| v as i64)).collect();
            let d = b.to_device::<A::InnerBackend>(&inner);
            let f =
                to_backend::<A::InnerBackend, A, 2>(features(backbone, d.crops[0].clone()), device);
            let targets = Tensor::<A, 1, Int>::from_data(TensorData::new(labels, [n]), device);
            lr = cosine_lr(cfg.lr, iteration, total);
            let l;
            (head, l) = sgd_step(head, &mut optim, f, targets, lr);
            loss_sum += l * n as f64;
            seen += n;
            iteration += 1;
        }
        let ips = seen as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let valid = head.valid();
        let (top1, top5) = evaluate(backbone, &valid, val_set.clone(), cfg, &inner);
        let m = EpochMetrics {
            epoch,
            loss: loss_sum / seen.max(1) as f64,
            lr,
            top1,
            top5,
            images_per_second: ips,
        };
        on_epoch(&m, &valid);
    }
    head.valid()
}

/// Save a classifier as safetensors in the Burn layout (`linear.weight` `[feat, classes]`,
/// `linear.bias`); `swav-convert` maps it to PASSL's `head.fc_cls.*` or facebookresearch's
/// `linear.*`.
pub fn save_classifier<B: Backend>(path: &std::path::Path, head: &Linear<B>) -> Result<(), String> {
    let mut tensors = vec![super::file_tensor("linear.weight", &head.weight.val())];
    if let Some(b) = &head.bias {
        tensors.push(super::file_tensor("linear.bias", &b.val()));
    }
    let mut md = std::collections::HashMap::new();
    md.insert("layout".to_string(), "burn".to_string());
    super::write_tensors(path, &tensors, md)
}

/// Load a classifier saved by [`save_classifier`] (or converted to the Burn layout).
pub fn load_classifier<B: Backend>(
    path: &std::path::Path,
    device: &B::Device,
) -> Result<Linear<B>, String> {
    let ck = crate::checkpoint::Checkpoint::open(path).map_err(|e| e.to_string())?;
    let get = |n: &str| {
        ck.get(n)
            .ok_or_else(|| format!("{}: no tensor {n}", path.display()))
    };
    let w = get("linear.weight")?;
    let [feat, classes] = w.shape[..] else {
        return Err(format!(
            "{}: linear.weight has shape {:?}, expected [feat, classes]",
            path.display(),
            w.shape
        ));
    };
    let mut head = classifier::<B>(feat, classes, device);
    let values = w.to_f32().map_err(|e| e.to_string())?;
    head.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(values, [feat, classes]),
        device,
    ));
    if let Ok(b) = get("linear.bias") {
        let values = b.to_f32().map_err(|e| e.to_string())?;
        head.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(values, [classes]),
            device,
        )));
    }
    Ok(head)
}

/// Linear evaluation on cached features (`--cache-features`): train and validation images
/// go through the backbone once, with the evaluation transform (no augmentation), and the
/// classifier then trains on those features — the fast variant of [`train`].
pub fn train_cached<A: AutodiffBackend>(
    train: &super::Features,
    val: &super::Features,
    classes: usize,
    cfg: &LinearEvalConfig,
    device: &A::Device,
    mut on_epoch: impl FnMut(&EpochMetrics, &Linear<A::InnerBackend>),
) -> Linear<A::InnerBackend> {
    A::seed(device, cfg.seed);
    let dim = train.dim;
    let mut head = classifier::<A>(dim, classes.max(1), device);
    let mut optim = sgd::<A>(cfg);
    let n = train.labels.len();
    let bs = cfg.batch_size.max(1);
    let total = n.div_ceil(bs) * cfg.epochs;
    let mut iteration = 0;
    let rows = |f: &super::Features, idx: &[usize]| -> Vec<f32> {
        idx.iter()
            .flat_map(|&i| f.features[i * f.dim..(i + 1) * f.dim].iter().copied())
            .collect()
    };
    for epoch in 0..cfg.epochs {
        let start = std::time::Instant::now();
        let mut order: Vec<usize> = (0..n).collect();
        crate::data::rng::Rng::for_sample(cfg.seed, epoch as u64, u64::MAX).shuffle(&mut order);
        let (mut loss_sum, mut lr) = (0.0, cfg.lr);
        for idx in order.chunks(bs) {
            let x = Tensor::<A, 2>::from_data(
                TensorData::new(rows(train, idx), [idx.len(), dim]),
                device,
            );
            let y: Vec<i64> = idx.iter().map(|&i| train.labels[i].max(0)).collect();
            let targets = Tensor::<A, 1, Int>::from_data(TensorData::new(y, [idx.len()]), device);
            lr = cosine_lr(cfg.lr, iteration, total);
            let l;
            (head, l) = sgd_step(head, &mut optim, x, targets, lr);
            loss_sum += l * idx.len() as f64;
            iteration += 1;
        }
        let ips = n as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let valid = head.valid();
        let nv = val.labels.len();
        let all: Vec<usize> = (0..nv).collect();
        let logits = valid.forward(Tensor::from_data(
            TensorData::new(rows(val, &all), [nv, dim]),
            device,
        ));
        let (t1, t5) = hits(logits, &val.labels);
        let pct = |x: usize| 100.0 * x as f64 / nv.max(1) as f64;
        let m = EpochMetrics {
            epoch,
            loss: loss_sum / n.max(1) as f64,
            lr,
            top1: pct(t1),
            top5: pct(t5),
            images_per_second: ips,
        };
        on_epoch(&m, &valid);
    }
    head.valid()
}
