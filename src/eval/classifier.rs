//! Linear evaluation (facebookresearch/swav `eval_linear.py`, PASSL `swav_clas_r50.yaml`): a
//! frozen backbone with BatchNorm in eval mode, global average pooling, `Linear(feat, classes)`
//! initialised N(0, 0.01) with zero bias, cross-entropy, SGD momentum 0.9 (no dampening),
//! weight decay 1e-6, learning rate with a per-iteration cosine to 0; top-1/top-5 each epoch.
//!
//! The backbone runs on the inference backend (BatchNorm uses its running statistics); only the
//! classifier lives on the autodiff backend. With several devices, every batch is split across
//! ranks (one per device, [`super::ranks`]) and the classifier trains data-parallel: the
//! gradients of the global batch's mean loss are summed through the collective engine
//! ([`crate::collective`]) and every rank applies the same step.
//!
//! In a run of several processes ([`Frozen::session`], as facebookresearch's `eval_linear.py`
//! runs under its launcher) the ranks of every process are the ranks of one evaluation: each
//! process loads its part of every global batch (training and validation), the gradients and
//! the hit counts are summed over every rank, and every process sees the same numbers.

use super::ranks::{self, Pool};
use super::{EvalError, Frozen, Handout};
use crate::collective::{Communicator, Engine, LocalGroup};
use crate::data::dataset::Dataset;
use crate::data::loader::{Batch, Loader, LoaderConfig, Pipeline};
use crate::data::multicrop::EvalTransform;
use crate::dist::Session;
use crate::model::swav::Swav;
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::Linear;
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
    /// Images per device (PASSL's `batch_size`): a batch of the loader holds this many times
    /// the number of devices.
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

/// `Linear(feat, classes)` with weights N(0, 0.01) drawn from `seed` (the project's own
/// generator, Box–Muller: the same classifier whatever else draws from the backend's global
/// one) and zero bias.
pub fn classifier<B: Backend>(
    feat: usize,
    classes: usize,
    seed: u64,
    device: &B::Device,
) -> Linear<B> {
    let mut rng = crate::data::rng::Rng::new(seed);
    let weights: Vec<f32> = (0..feat * classes)
        .map(|_| {
            let u = 1.0 - rng.unit(); // (0, 1]: its logarithm is finite
            let v = rng.unit();
            (0.01 * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect();
    linear(weights, vec![0.0; classes], feat, classes, device)
}

/// `Linear(feat, classes)` holding `weights` (`[feat, classes]`, Burn's `[in, out]`) and `bias`.
fn linear<B: Backend>(
    weights: Vec<f32>,
    bias: Vec<f32>,
    feat: usize,
    classes: usize,
    device: &B::Device,
) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(weights, [feat, classes]),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [classes]),
            device,
        ))),
    }
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

/// The loader settings of a linear evaluation's images for `world` ranks, of which this
/// process loads `part`: every image once per epoch, in order or shuffled.
fn loader_config(
    cfg: &LinearEvalConfig,
    world: usize,
    part: (usize, usize),
    shuffle: bool,
) -> LoaderConfig {
    LoaderConfig {
        batch_size: cfg.batch_size.max(1) * world,
        workers: cfg.workers.max(1),
        shuffle,
        drop_last: false,
        seed: cfg.seed,
        prefetch: 2,
        part,
    }
}

/// The loader of validation images for `world` ranks, of which this process loads `part`:
/// evaluation transform, in order.
fn val_loader(
    val: Arc<Dataset>,
    cfg: &LinearEvalConfig,
    world: usize,
    part: (usize, usize),
) -> Loader {
    let lc = loader_config(cfg, world, part, false);
    let pipeline = Pipeline::Eval {
        transform: cfg.val_transform(),
        mean: cfg.mean,
        std: cfg.std,
    };
    Loader::new(val, pipeline, &lc, 0)
}

/// How the ranks of `pool` meet the other processes' ranks, in a run of several processes.
struct Across<'a, J> {
    session: &'a Session,
    /// A job that sums counts over every rank (rank 0 of this process passes this process's,
    /// the others zeros); its answer is read back by the `hits` of [`val_accuracy`].
    sum: fn([usize; 3]) -> J,
}

/// Top-1 and top-5 (in %) over `val`, each batch split across the ranks of `pool` (and of every
/// process, `across`); `job` makes a rank's job of its shard, and `hits` reads the rank's
/// answer.
fn val_accuracy<J, R>(
    pool: &Pool<J, R>,
    val: Arc<Dataset>,
    cfg: &LinearEvalConfig,
    across: Option<&Across<J>>,
    job: impl Fn(Batch) -> J,
    hits: impl Fn(R) -> [usize; 3],
) -> Result<(f64, f64), EvalError> {
    let (world, part) = across.map_or((pool.world(), (0, 1)), |a| {
        (a.session.world(), a.session.part())
    });
    let mut counts = [0usize; 3];
    for b in val_loader(val, cfg, world, part) {
        let n = b.len();
        let jobs = b.split(pool.world()).into_iter().map(&job).collect();
        for r in pool.round(jobs)? {
            let [a, c, _] = hits(r);
            counts[0] += a;
            counts[1] += c;
        }
        counts[2] += n;
    }
    if let Some(a) = across {
        let jobs = (0..pool.world())
            .map(|w| (a.sum)(if w == 0 { counts } else { [0; 3] }))
            .collect();
        counts = hits(pool.round(jobs)?.swap_remove(0));
    }
    let [t1, t5, n] = counts;
    let pct = |x: usize| 100.0 * x as f64 / n.max(1) as f64;
    Ok((pct(t1), pct(t5)))
}

/// Labels of a batch (`missing` where an image has none).
fn batch_labels(b: &Batch, missing: i64) -> Vec<i64> {
    b.labels
        .iter()
        .map(|l| l.map_or(missing, |v| v as i64))
        .collect()
}

/// Top-1 and top-5 hits of `head` on the backbone's features of `shard`, on `device`.
fn shard_hits<I: Backend>(
    backbone: &Swav<I>,
    head: &Linear<I>,
    shard: Batch,
    device: &I::Device,
) -> (usize, usize) {
    if shard.is_empty() {
        return (0, 0);
    }
    let labels = batch_labels(&shard, -1);
    let d = shard.to_device::<I>(device);
    hits(
        head.forward(backbone.backbone.forward(d.crops[0].clone())),
        &labels,
    )
}

/// A job of [`evaluate`]'s ranks.
enum EvalJob {
    Hits(Batch),
    Sum([usize; 3]),
}

/// Evaluate `head` on `val` (features of the frozen backbone, every batch split across its
/// devices, and across the processes of its session): top-1, top-5 in %.
pub fn evaluate<I: Backend>(
    frozen: &Frozen<I>,
    head: &Linear<I>,
    val: Arc<Dataset>,
    cfg: &LinearEvalConfig,
) -> Result<(f64, f64), EvalError> {
    let handout = frozen.handout();
    let (comms, group) = communicators(frozen)?;
    let across = frozen.session.as_deref().map(|session| Across {
        session,
        sum: EvalJob::Sum,
    });
    ranks::with_ranks(
        &frozen.devices,
        |w, d| {
            let head = if w == 0 {
                head.clone()
            } else {
                head.clone().fork(d)
            };
            Ok((
                frozen.replica(&handout, w, d),
                head,
                comms.take(w),
                d.clone(),
            ))
        },
        |(backbone, head, comm, device), job: EvalJob| match job {
            EvalJob::Hits(shard) => {
                let (a, b) = shard_hits(backbone, head, shard, device);
                Ok([a, b, 0])
            }
            EvalJob::Sum(counts) => comm.sum_counts(counts, device).map_err(|e| e.to_string()),
        },
        || group.abort(),
        |pool| val_accuracy(pool, val, cfg, across.as_ref(), EvalJob::Hits, |h| h),
    )
}

/// One communicator per rank of `frozen`: burn-collective in one process (also for CUDA ranks:
/// the classifier's gradients are small, and a rank that fails releases the others, where a
/// failed NCCL peer would leave them waiting), or the engine of its session across processes.
fn communicators<B: Backend>(
    frozen: &Frozen<B>,
) -> Result<(Handout<Communicator<B>>, crate::collective::GroupHandle<B>), EvalError> {
    let comms = match &frozen.session {
        Some(s) => LocalGroup::<B>::register_processes(&frozen.devices, s),
        None => LocalGroup::<B>::register_with(&frozen.devices, Engine::BurnCollective),
    }?;
    let group = comms[0].handle();
    Ok((Handout::new(comms), group))
}

/// One rank of data-parallel classifier training: its copy of the frozen backbone, its
/// replica of the classifier and its optimizer, and its communicator.
struct ClassifierRank<A: AutodiffBackend, O> {
    backbone: Swav<A::InnerBackend>,
    /// Out only while the optimizer updates it.
    head: Option<Linear<A>>,
    optim: O,
    comm: Communicator<A::InnerBackend>,
    device: A::Device,
}

enum Job {
    /// One SGD step on the rank's shard of a batch of `global` images (`None`: counted over
    /// the ranks, in a run of several processes).
    Step {
        shard: Batch,
        global: Option<usize>,
        lr: f64,
    },
    /// Top-1 and top-5 hits on a shard of validation images.
    Hits(Batch),
    /// Counts summed over every rank.
    Sum([usize; 3]),
    /// The classifier, for saving.
    Head,
}

enum Answer<B: Backend> {
    /// The sum of the batch's losses over every rank, and the batch's images.
    LossSum(f64, usize),
    Counts([usize; 3]),
    Head(Box<Linear<B>>),
}

impl<A: AutodiffBackend, O: Optimizer<Linear<A>, A>> ClassifierRank<A, O> {
    fn head(&self) -> &Linear<A> {
        self.head
            .as_ref()
            .expect("the classifier is back after each step")
    }

    /// One step: the cross-entropy of this rank's shard weighted by its share of the global
    /// batch, so that the gradients summed over the ranks are those of the global batch's mean
    /// loss (shards may differ in size); one all-reduce of every gradient and the loss sum.
    /// Without `global` (other processes load the rest of the batch), the batch's size is
    /// summed over the ranks first. Returns the loss sum and the batch's size.
    fn step(
        &mut self,
        shard: Batch,
        global: Option<usize>,
        lr: f64,
    ) -> Result<(f64, usize), String> {
        let n = shard.len();
        let global = match global {
            Some(g) => g,
            None => {
                let [global] = self
                    .comm
                    .sum_counts([n], &self.device)
                    .map_err(|e| e.to_string())?;
                global
            }
        };
        if global == 0 {
            // Every image of the batch was unreadable, in every process (the sum is the same on
            // every rank, so all skip): no step, as one process skips an empty batch.
            return Ok((0.0, 0));
        }
        let head = self.head();
        let (grads, loss_sum) = if n == 0 {
            // An empty shard (a last batch smaller than the world) still takes part, with
            // zero gradients.
            let mut grads = GradientsParams::new();
            grads.register(head.weight.id, head.weight.val().inner().zeros_like());
            if let Some(b) = &head.bias {
                grads.register(b.id, b.val().inner().zeros_like());
            }
            (grads, Tensor::zeros([1], &self.device))
        } else {
            let labels = batch_labels(&shard, 0);
            let d = shard.to_device::<A::InnerBackend>(&self.device);
            let f = Tensor::<A, 2>::from_inner(self.backbone.backbone.forward(d.crops[0].clone()));
            let targets =
                Tensor::<A, 1, Int>::from_data(TensorData::new(labels, [n]), &self.device);
            let mean = CrossEntropyLossConfig::new()
                .init(&self.device)
                .forward(head.forward(f), targets);
            let loss = mean.clone().mul_scalar(n as f64 / global as f64);
            let grads = GradientsParams::from_grads(loss.backward(), head);
            (grads, mean.mul_scalar(n as f64).inner())
        };
        let (grads, loss_sum) = self
            .comm
            .all_reduce_gradients(head, grads, loss_sum, 1.0)
            .map_err(|e| e.to_string())?;
        let head = self.head.take().expect("the classifier");
        self.head = Some(self.optim.step(lr, head, grads));
        let loss_sum = loss_sum
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("scalar loss")[0];
        Ok((f64::from(loss_sum), global))
    }

    fn answer(&mut self, job: Job) -> Result<Answer<A::InnerBackend>, String> {
        Ok(match job {
            Job::Step { shard, global, lr } => {
                let (loss, images) = self.step(shard, global, lr)?;
                Answer::LossSum(loss, images)
            }
            Job::Hits(shard) => {
                let (a, b) = shard_hits(&self.backbone, &self.head().valid(), shard, &self.device);
                Answer::Counts([a, b, 0])
            }
            Job::Sum(counts) => Answer::Counts(
                self.comm
                    .sum_counts(counts, &self.device)
                    .map_err(|e| e.to_string())?,
            ),
            Job::Head => Answer::Head(Box::new(self.head().valid())),
        })
    }
}

/// Train a linear classifier on the frozen backbone, data-parallel over its devices (and the
/// processes of its session): each rank computes the features and the loss of its shard of
/// every batch, the gradients are summed through the collective engine, and every rank applies
/// the same SGD step.
/// `on_epoch` gets each epoch's metrics and the classifier (for saving best and last).
/// Returns the trained classifier.
pub fn train<A: AutodiffBackend>(
    frozen: &Frozen<A::InnerBackend>,
    feature_dim: usize,
    train_set: Arc<Dataset>,
    val_set: Arc<Dataset>,
    cfg: &LinearEvalConfig,
    mut on_epoch: impl FnMut(&EpochMetrics, &Linear<A::InnerBackend>),
) -> Result<Linear<A::InnerBackend>, EvalError> {
    let devices: Vec<A::Device> = frozen.devices.clone();
    let classes = train_set.classes.len().max(1);
    let head = classifier::<A>(feature_dim, classes, cfg.seed, &devices[0]);
    let (comms, group) = communicators(frozen)?;
    let heads = Handout::new(vec![head; devices.len()]);
    let handout = frozen.handout();
    let session = frozen.session.as_deref();
    let (world, part) = session.map_or((devices.len(), (0, 1)), |s| (s.world(), s.part()));
    let across = session.map(|session| Across {
        session,
        sum: Job::Sum,
    });
    let lc = loader_config(cfg, world, part, true);
    let per_epoch = train_set.len().div_ceil(lc.batch_size);
    let total = per_epoch * cfg.epochs;
    let pipeline = Pipeline::Eval {
        transform: EvalTransform::Train {
            size: cfg.train_size,
        },
        mean: cfg.mean,
        std: cfg.std,
    };
    ranks::with_ranks(
        &devices,
        |w, d| {
            let head = heads.take(w);
            Ok(ClassifierRank {
                backbone: frozen.replica(&handout, w, d),
                head: Some(if w == 0 { head } else { head.fork(d) }),
                optim: sgd::<A>(cfg),
                comm: comms.take(w),
                device: d.clone(),
            })
        },
        ClassifierRank::answer,
        || group.abort(),
        |pool| {
            let mut iteration = 0;
            for epoch in 0..cfg.epochs {
                let start = std::time::Instant::now();
                let (mut loss_sum, mut seen, mut lr) = (0.0, 0usize, cfg.lr);
                for b in Loader::new(train_set.clone(), pipeline.clone(), &lc, epoch as u64) {
                    // In one process an empty batch (every image unreadable) is skipped; across
                    // processes every process takes part in each batch's step, as its part
                    // may be empty while another's is not.
                    if b.is_empty() && session.is_none() {
                        continue;
                    }
                    let global = session.is_none().then_some(b.len());
                    lr = cosine_lr(cfg.lr, iteration, total);
                    let jobs = b
                        .split(pool.world())
                        .into_iter()
                        .map(|shard| Job::Step { shard, global, lr })
                        .collect();
                    if let Some(&Answer::LossSum(l, images)) = pool.round(jobs)?.first() {
                        if images == 0 {
                            continue;
                        }
                        loss_sum += l;
                        seen += images;
                    }
                    iteration += 1;
                }
                let ips = seen as f64 / start.elapsed().as_secs_f64().max(1e-9);
                let (top1, top5) = val_accuracy(
                    pool,
                    val_set.clone(),
                    cfg,
                    across.as_ref(),
                    Job::Hits,
                    |a| match a {
                        Answer::Counts(c) => c,
                        _ => [0; 3],
                    },
                )?;
                let Answer::Head(valid) = pool.ask(0, Job::Head)? else {
                    return Err(EvalError::Invalid("rank 0 answered out of turn".into()));
                };
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
            match pool.ask(0, Job::Head)? {
                Answer::Head(valid) => Ok(*valid),
                _ => Err(EvalError::Invalid("rank 0 answered out of turn".into())),
            }
        },
    )
}

/// Save a classifier as safetensors in the Burn layout (`linear.weight` `[feat, classes]`,
/// `linear.bias`); `swav-convert` maps it to PASSL's `head.fc_cls.*` or facebookresearch's
/// `linear.*`.
pub fn save_classifier<B: Backend>(
    path: &std::path::Path,
    head: &Linear<B>,
) -> Result<(), super::TensorFileError> {
    let mut tensors = vec![super::file_tensor("linear.weight", &head.weight.val())?];
    if let Some(b) = &head.bias {
        tensors.push(super::file_tensor("linear.bias", &b.val())?);
    }
    let mut md = std::collections::HashMap::new();
    md.insert("layout".to_string(), "burn".to_string());
    super::write_tensors(path, &tensors, md)
}

/// Load a classifier from any checkpoint that holds one, in any layout the table knows: ours
/// ([`save_classifier`]), facebookresearch's `eval_linear.py` checkpoint (`module.linear.*` under
/// `state_dict`, `[out, in]`), torchvision's `fc.*`, PASSL's `head.fc_cls.*` (`[in, out]`; in a
/// classification model beside `backbone.*`, in a trainer checkpoint, or alone) — detected and
/// transposed as needed. `feature_dim` is the backbone's and `classes` the data's: a classifier
/// that takes other features, or has fewer outputs than classes, is an error naming both.
pub fn load_classifier<B: Backend>(
    path: &std::path::Path,
    feature_dim: usize,
    classes: usize,
    device: &B::Device,
) -> Result<Linear<B>, EvalError> {
    let at = |message: String| EvalError::File {
        path: path.to_path_buf(),
        message,
    };
    let found = crate::model::load::burn_tensors(path)?;
    let mut weight = None;
    let mut bias = None;
    for t in found.tensors {
        match t.name.as_str() {
            "linear.weight" => weight = Some(t),
            "linear.bias" => bias = Some(t),
            _ => {}
        }
    }
    let w = weight.ok_or_else(|| {
        at(format!(
            "no classifier in the file ({} layout): expected linear.* (ours, facebookresearch's \
             module.linear.*), fc.* (torchvision) or head.fc_cls.* (PASSL)",
            found.layout
        ))
    })?;
    let [feat, outputs] = w.shape[..] else {
        return Err(at(format!(
            "the classifier's weight has shape {:?}, expected a matrix",
            w.shape
        )));
    };
    if feat != feature_dim {
        return Err(at(format!(
            "the classifier takes {feat} features (weight [{feat}, {outputs}] in Burn's [in, out]) \
             but the backbone gives {feature_dim}"
        )));
    }
    if outputs < classes {
        return Err(at(format!(
            "the classifier has {outputs} outputs but the data has {classes} classes"
        )));
    }
    let weights = w.to_f32().map_err(|e| at(e.to_string()))?;
    // A classifier saved without a bias has a zero one.
    let bias = match bias {
        Some(b) if b.shape != [outputs] => {
            return Err(at(format!(
                "the classifier's bias has shape {:?}, expected [{outputs}]",
                b.shape
            )))
        }
        Some(b) => b.to_f32().map_err(|e| at(e.to_string()))?,
        None => vec![0.0; outputs],
    };
    Ok(linear(weights, bias, feat, outputs, device))
}

/// Top-1 and top-5 (in %) of `head` on the backbone's features of preprocessed `images`
/// (`[N, 3, H, W]` on the host) against `labels`, in chunks of `batch` images per rank.
pub fn evaluate_tensors<I: Backend>(
    frozen: &Frozen<I>,
    head: &Linear<I>,
    images: &TensorData,
    labels: &[i64],
    batch: usize,
) -> Result<(f64, f64), EvalError> {
    let n = images.shape.first().copied().unwrap_or(0);
    if labels.len() != n {
        return Err(EvalError::Invalid(format!(
            "{} labels for {n} images",
            labels.len()
        )));
    }
    let out = frozen.outputs(images, batch)?;
    let logits = head.forward(out.features);
    let (t1, t5) = hits(logits, labels);
    let pct = |x: usize| 100.0 * x as f64 / n.max(1) as f64;
    Ok((pct(t1), pct(t5)))
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
    let dim = train.dim;
    let mut head = classifier::<A>(dim, classes.max(1), cfg.seed, device);
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
