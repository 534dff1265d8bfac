//! What `swav-lincls` runs, as library calls returning serialisable results: the frozen
//! backbone the flags name ([`EvalFlags`]), features of tensors or a folder
//! ([`features`]), a classifier's accuracy ([`evaluate`], also `train --evaluate-only`),
//! weighted k-NN ([`knn`]) and the linear evaluation ([`linear()`]), on the devices and
//! processes of a [`Context`]. The binary parses flags and prints what these return.

use super::CommandError;
use crate::backend::Devices;
use crate::data::dataset::Dataset;
use crate::dist::{Launch, Session};
use crate::eval::classifier::{self, EpochMetrics, LinearEvalConfig};
use crate::eval::linear_eval::{
    self, image_folder, LinearEvalPlan, LinearEvalRequest, LinearEvalSummary,
};
use crate::eval::{self, Frozen};
use crate::model::resnet::ResNetConfig;
use crate::model::swav::{Swav, SwavConfig};
use crate::report::Reporter;
use burn::tensor::backend::Backend;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The linear evaluation's progress bar.
const BAR: &str = "epoch {pos}/{len} [{wide_bar}] {msg} eta {eta}";

/// Where an evaluation runs: its devices and, under torchrun / SLURM variables, this
/// process's launch.
pub struct Context {
    pub devices: Devices,
    pub launch: Option<Launch>,
    /// How long the rendezvous and each collective of several processes may wait.
    pub dist_timeout: Duration,
}

impl Context {
    /// The devices `device` names (under a launcher, `cuda` alone is this process's GPU) and
    /// the launch of this process. `single` names a subcommand that runs whole in one process
    /// (`None`: the linear evaluation, which runs across processes); started by a launcher it
    /// is refused, since every process would write the same files.
    pub fn new(
        device: &str,
        dist_timeout: Duration,
        single: Option<&str>,
    ) -> Result<Self, CommandError> {
        let launch = Launch::from_env()?;
        if let (Some(l), Some(name)) = (&launch, single) {
            return Err(format!(
                "started as process {} of {} ({} variables): `swav-lincls {name}` runs in one \
                 process (only `train` without --cache-features runs across processes); give \
                 it several devices with --device instead",
                l.rank, l.world, l.launcher
            )
            .into());
        }
        let device = match &launch {
            Some(l) => l.device_flag(device),
            None => device.to_string(),
        };
        Ok(Context {
            devices: Devices::parse(&device)?,
            launch,
            dist_timeout,
        })
    }
}

/// The backbone to evaluate and how images reach it: the flags every subcommand has.
#[derive(Debug, Clone, Serialize)]
pub struct EvalFlags {
    /// Weights: a checkpoint, a Burn record or a registry name.
    pub pretrained: Option<PathBuf>,
    /// No weights: a random backbone of this depth (seeded with 0, so that training and a
    /// later evaluation see the same network).
    pub random_init: Option<usize>,
    /// Stem width of `random_init`.
    pub width: usize,
    /// Load even when the file lacks some of the model's weights.
    pub partial: bool,
    pub batch_size: usize,
    pub workers: Option<usize>,
    pub resize: usize,
    pub size: usize,
}

impl EvalFlags {
    /// Evaluation settings without a config file: batch size, workers, resize and crop from
    /// the flags, normalisation and the rest at their defaults.
    pub fn eval_config(&self) -> LinearEvalConfig {
        let d = LinearEvalConfig::default();
        LinearEvalConfig {
            batch_size: self.batch_size,
            val_resize: self.resize,
            val_size: self.size,
            workers: self.workers.unwrap_or(d.workers),
            ..d
        }
    }
}

/// Top-1 and top-5 accuracy in percent.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Accuracy {
    pub top1: f64,
    pub top5: f64,
}

/// What [`knn`] measured (fields in the order `--json` has always printed them).
#[derive(Debug, Clone, Serialize)]
pub struct KnnReport {
    pub k: usize,
    pub temperature: f32,
    pub top1: f64,
    pub top5: f64,
    pub train: usize,
    pub val: usize,
}

impl KnnReport {
    /// One line for the terminal.
    pub fn describe(&self) -> String {
        format!(
            "k-NN (k={}, T={}): top-1 {:.2}%, top-5 {:.2}% ({} train, {} val images)",
            self.k, self.temperature, self.top1, self.top5, self.train, self.val
        )
    }
}

/// A weights argument as a file: itself, or a registry artifact from the cache.
pub fn weights(arg: &Path) -> Result<PathBuf, CommandError> {
    Ok(crate::fetch::resolve_weights(arg).map_err(|e| format!("{}: {e}", arg.display()))?)
}

/// The backbone to evaluate on `devices` (loaded on the first): `--pretrained`, else the
/// backbone inside the classifier file `classifier` (PASSL's classification model), else a
/// random initialisation of `--random-init`'s depth, seeded with 0.
pub fn backbone<B: Backend>(
    flags: &EvalFlags,
    classifier: Option<&Path>,
    devices: Vec<B::Device>,
    reporter: &Reporter,
) -> Result<Frozen<B>, CommandError> {
    let (model, config) = backbone_on::<B>(flags, classifier, &devices[0], reporter)?;
    Ok(Frozen::new(model, config, devices))
}

fn backbone_on<B: Backend>(
    flags: &EvalFlags,
    classifier: Option<&Path>,
    device: &B::Device,
    reporter: &Reporter,
) -> Result<(Swav<B>, SwavConfig), CommandError> {
    let pretrained = match (&flags.pretrained, flags.random_init, classifier) {
        (Some(p), _, _) => Some(weights(p)?),
        (None, None, Some(l)) => Some(l.to_path_buf()),
        _ => None,
    };
    match (pretrained, flags.random_init) {
        (Some(p), _) => {
            let (model, config, report) = crate::model::load::from_file::<B>(&p, device, flags.partial)
                ?;
            let at = p.display().to_string();
            reporter.line(&format!(
                "swav-lincls event=loaded weights={at} {}",
                report.summary()
            ));
            Ok((model, config))
        }
        (None, Some(depth)) => {
            let mut backbone = ResNetConfig::depth(depth, 1)
                .ok_or_else(|| format!("--random-init {depth}: use 18, 34, 50, 101 or 152"))?;
            backbone.base_width = flags.width;
            let config = SwavConfig {
                backbone,
                head: None,
                prototypes: Vec::new(),
            };
            // Seeded, so that training and a later evaluation see the same random network.
            B::seed(device, 0);
            let (d, w) = (depth.to_string(), flags.width.to_string());
            reporter.event("random-init", &[("depth", &d), ("width", &w)]);
            Ok((config.init_eager::<B>(device), config))
        }
        (None, None) => Err(
            "give --pretrained WEIGHTS, --random-init DEPTH, or --load with a file that holds the backbone"
                .into(),
        ),
    }
}

/// `swav-lincls features`: features, embedding and scores of the preprocessed `tensors`, or
/// the features of every image of the folder `data`, written to `output`; returns the line
/// that says what was written.
pub fn features(
    ctx: &Context,
    flags: &EvalFlags,
    tensors: Option<&Path>,
    data: Option<&Path>,
    output: &Path,
    reporter: &Reporter,
) -> Result<String, CommandError> {
    crate::with_backend!(&ctx.devices, |B, list| {
        let frozen = backbone::<B>(flags, None, list, reporter)?;
        match (tensors, data) {
            (Some(t), _) => {
                let images = eval::read_images(t)?;
                let out = frozen
                    .outputs(&images, flags.batch_size)
                    .map_err(|e| format!("{}: {e}", t.display()))?;
                eval::write_outputs(output, &out)?;
                Ok(format!(
                    "wrote features {:?}, embedding {:?}, {} score tensor(s) to {}",
                    out.features.dims(),
                    out.embedding.dims(),
                    out.scores.len(),
                    output.display()
                ))
            }
            (None, Some(root)) => {
                let ds = Arc::new(Dataset::open(root)?);
                let cfg = flags.eval_config();
                let f = frozen.dataset_features(
                    ds,
                    cfg.val_transform(),
                    cfg.mean,
                    cfg.std,
                    &linear_eval::loader_config(&cfg),
                )?;
                for s in &f.skipped {
                    reporter.line(&format!("swav-lincls event=skipped image={s:?}"));
                }
                eval::write_features(output, &f)?;
                Ok(format!(
                    "wrote {} features of dimension {} to {}",
                    f.labels.len(),
                    f.dim,
                    output.display()
                ))
            }
            (None, None) => Err("give --tensors FILE or --data DIR".into()),
        }
    })
}

/// What `swav-lincls evaluate` evaluates a classifier on.
pub enum EvalData<'a> {
    /// `DIR/val`, an ImageFolder, with the flags' transforms.
    Folder(&'a Path),
    /// A safetensors file with `images` (normalised) and `labels`.
    Tensors(&'a Path),
}

/// The validation data of one evaluation, resolved.
enum ValData<'a> {
    Images(Arc<Dataset>, LinearEvalConfig),
    Tensors(&'a Path, usize),
}

/// `swav-lincls evaluate`: the classifier `classifier` (resolved as a weights argument) on
/// the backbone the flags name (or the one inside the classifier file).
pub fn evaluate(
    ctx: &Context,
    flags: &EvalFlags,
    classifier: &Path,
    data: EvalData,
    reporter: &Reporter,
) -> Result<Accuracy, CommandError> {
    // Resolved (perhaps fetched) once the devices are known to be usable.
    crate::with_backend!(&ctx.devices, |B, list| {
        let cls = weights(classifier)?;
        let frozen = backbone::<B>(flags, Some(&cls), list, reporter)?;
        let val = match data {
            EvalData::Folder(root) => {
                ValData::Images(image_folder(&root.join("val"))?, flags.eval_config())
            }
            EvalData::Tensors(t) => ValData::Tensors(t, flags.batch_size),
        };
        evaluate_on(&frozen, &cls, val)
    })
}

/// A classifier file's accuracy on `frozen`: the one evaluation path of `evaluate` and
/// `train --evaluate-only`.
fn evaluate_on<B: Backend>(
    frozen: &Frozen<B>,
    cls: &Path,
    data: ValData,
) -> Result<Accuracy, CommandError> {
    let feature_dim = frozen.config.backbone.feature_dim();
    let device = &frozen.devices[0];
    let (top1, top5) = match data {
        ValData::Images(val, cfg) => {
            let classes = val.classes.len();
            let head = classifier::load_classifier::<B>(cls, feature_dim, classes, device)?;
            classifier::evaluate(frozen, &head, val, &cfg)?
        }
        ValData::Tensors(t, batch) => {
            let images = eval::read_images(t)?;
            let labels = eval::read_labels(t)?;
            let classes = labels.iter().map(|&l| l + 1).max().unwrap_or(0).max(0) as usize;
            let head = classifier::load_classifier::<B>(cls, feature_dim, classes, device)?;
            classifier::evaluate_tensors(frozen, &head, &images, &labels, batch)
                .map_err(|e| format!("{}: {e}", t.display()))?
        }
    };
    Ok(Accuracy { top1, top5 })
}

/// `swav-lincls knn`: weighted k-NN of `data/val` against `data/train` on L2-normalised
/// features.
pub fn knn(
    ctx: &Context,
    flags: &EvalFlags,
    data: &Path,
    k: usize,
    temperature: f32,
    reporter: &Reporter,
) -> Result<KnnReport, CommandError> {
    crate::with_backend!(&ctx.devices, |B, list| {
        let frozen = backbone::<B>(flags, None, list, reporter)?;
        let (train, val) = linear_eval::splits(data)?;
        let cfg = flags.eval_config();
        let (t, lc) = (cfg.val_transform(), linear_eval::loader_config(&cfg));
        let features = |set| frozen.dataset_features(set, t, cfg.mean, cfg.std, &lc);
        let (ft, fv) = (features(train.clone())?, features(val)?);
        let classes = train.classes.len();
        let (top1, top5) = eval::knn::<B>(&ft, &fv, classes, k, temperature, &frozen.devices)?;
        Ok(KnnReport {
            k,
            temperature,
            top1,
            top5,
            train: ft.labels.len(),
            val: fv.labels.len(),
        })
    })
}

/// What `swav-lincls train` did.
pub enum LinearOutcome {
    /// `--evaluate-only`: the classifier's accuracy.
    Evaluated(Accuracy),
    /// A classifier trained (its files written by process 0).
    Trained(LinearEvalSummary),
}

/// How `swav-lincls train` runs.
pub struct LinearFlags {
    pub request: LinearEvalRequest,
    /// Compute the features once, without augmentation, and train on them.
    pub cache_features: bool,
    /// `--load`: the classifier of `--evaluate-only` (its backbone used without --pretrained).
    pub classifier: Option<PathBuf>,
    pub evaluate_only: bool,
}

/// `swav-lincls train`: the linear evaluation (or, with `--evaluate-only`, the accuracy of
/// `--load`), across the processes of a launch when there is one; `on_epoch` sees each
/// epoch's numbers (process 0 alone reports: `None` returned elsewhere).
pub fn linear(
    ctx: Context,
    flags: &EvalFlags,
    run: &LinearFlags,
    reporter: &Reporter,
    on_epoch: &mut dyn FnMut(&EpochMetrics),
) -> Result<Option<LinearOutcome>, CommandError> {
    // Resolved (perhaps fetched) once the devices are known to be usable.
    crate::with_backend!(&ctx.devices, |B, list| {
        let cls = run.classifier.as_deref().map(weights).transpose()?;
        let frozen = backbone::<B>(flags, cls.as_deref(), list, reporter)?;
        let feature_dim = frozen.config.backbone.feature_dim();
        let plan = run.request.resolve(flags.eval_config(), feature_dim)?;
        let session = match ctx.launch {
            Some(l) => {
                let classifier = cls.as_deref().filter(|_| run.evaluate_only);
                Some(join(
                    l,
                    ctx.dist_timeout,
                    &frozen,
                    &plan,
                    flags,
                    classifier,
                )?)
            }
            None => None,
        };
        // Every process computes the same numbers; process 0 alone reports and writes them.
        let reports = session.as_ref().is_none_or(|s| s.process() == 0);
        let frozen = frozen.with_session(session.clone());
        let done = || {
            if let Some(s) = &session {
                s.finish();
            }
        };
        if let (true, Some(cls)) = (run.evaluate_only, &cls) {
            let acc = evaluate_on(&frozen, cls, ValData::Images(plan.val, plan.cfg))?;
            done();
            return Ok(reports.then_some(LinearOutcome::Evaluated(acc)));
        }
        let quiet_reporter;
        let shown = if reports {
            reporter
        } else {
            quiet_reporter = Reporter::new("swav-lincls", true);
            &quiet_reporter
        };
        let bar = shown.start_bar(Some(plan.cfg.epochs as u64), 0, BAR);
        let summary = linear_eval::run(&frozen, feature_dim, plan, run.cache_features, &mut |m| {
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4} top-1 {:.2} top-5 {:.2} {:.0} img/s",
                m.loss, m.top1, m.top5, m.images_per_second
            ));
            if reports {
                bar.suspend(|| on_epoch(m));
            }
        });
        shown.finish_bar();
        let summary = summary?;
        done();
        Ok(reports.then_some(LinearOutcome::Trained(summary)))
    })
}

/// This process's part of a multi-process `train`: the settings every process must share are
/// compared at the rendezvous (the linear-evaluation config but its workers, the data's size,
/// the weights, the classifier of --evaluate-only, the output).
fn join<B: Backend>(
    launch: Launch,
    timeout: Duration,
    frozen: &Frozen<B>,
    plan: &LinearEvalPlan,
    flags: &EvalFlags,
    classifier: Option<&Path>,
) -> Result<Arc<Session>, CommandError> {
    let mut linear = serde_json::to_value(&plan.cfg)?;
    if let Some(m) = linear.as_object_mut() {
        m.remove("workers");
    }
    let settings = serde_json::json!({
        "linear": linear,
        "train_images": plan.train.len(),
        "val_images": plan.val.len(),
        "classes": plan.train.classes,
        "output_dir": plan.output_dir,
        "pretrained": flags.pretrained,
        "random_init": flags.random_init,
        "width": flags.width,
        "classifier": classifier,
    });
    Ok(crate::dist::join_launched(
        launch,
        frozen.devices.len(),
        &settings,
        timeout,
        None,
        "swav-lincls",
    )?)
}
