//! The training loop (facebookresearch/swav `main_swav.py` `train`): per iteration the
//! prototypes are L2-normalised, the step's loss computed ([`super::step`]), the prototypes'
//! gradients dropped during the first `freeze_prototypes_iters` iterations, and LARS applied at
//! the scheduled rate. Checkpoints at epoch ends ([`super::state`]); metrics as JSON lines in
//! `OUTPUT/metrics.jsonl`; events for the caller's progress display.
//!
//! With several devices each gets `batch_size` images of the global batch ([`super::parallel`]).

use super::config::{ConfigError, TrainConfig};
use super::diagnostics;
use super::lars::Lars;
use super::parallel;
use super::schedule::LrSchedule;
use super::state::{self, EpochRecord, TrainState};
use super::step::{self, Queue};
use crate::data::dataset::Dataset;
use crate::data::device::{DeviceBatch, DeviceLoader};
use crate::data::loader::{Loader, LoaderConfig, Pipeline};
use crate::data::multicrop::MultiCrop;
use crate::data::synthetic;
use crate::model::swav::{Swav, SwavConfig};
use crate::model::{load, record};
use burn::module::{AutodiffModule, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::Optimizer;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// A training error (one line).
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Checkpoint(String),
    #[error(
        "iteration {iteration}: non-finite loss ({what}); model and batch dumped to {}",
        dump.display()
    )]
    NonFinite {
        iteration: usize,
        what: String,
        dump: PathBuf,
    },
}

/// Run options that are not part of the config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the output folder's latest checkpoint.
    pub resume: bool,
    /// Loader threads (overrides `dataloader.train.loader.num_workers`).
    pub workers: Option<usize>,
    /// Stop after this many epochs in this run (checkpointing the last), e.g. to split a run.
    pub max_epochs: Option<usize>,
    /// Start from these weights (any checkpoint format; a backbone alone leaves the head at
    /// its initialisation) instead of a random initialisation.
    pub pretrained: Option<PathBuf>,
}

/// What the loop reports as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start {
        images: usize,
        devices: usize,
        global_batch: usize,
        iterations_per_epoch: usize,
        start_epoch: usize,
        epochs: usize,
    },
    Iteration {
        epoch: usize,
        iteration: usize,
        step_in_epoch: usize,
        loss: f64,
        lr: f64,
        images_per_second: f64,
        queue: bool,
        prototypes_frozen: bool,
    },
    Epoch(EpochRecord),
    Checkpoint {
        path: PathBuf,
    },
    Pretrained {
        path: PathBuf,
        summary: String,
    },
    Warning {
        message: String,
    },
    SkippedImage {
        path: String,
        error: String,
    },
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub history: Vec<EpochRecord>,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    pub output: PathBuf,
}

/// The training data folder: `dataroot`, or the built-in synthetic set made under the output
/// folder when `dataroot` is `synthetic`.
pub fn data_root(cfg: &TrainConfig) -> Result<PathBuf, TrainError> {
    let d = &cfg.dataloader.train.dataset.dataroot;
    if d != "synthetic" {
        return Ok(PathBuf::from(d));
    }
    let root = Path::new(&cfg.output_dir).join("synthetic");
    if !root.join("train").is_dir() {
        synthetic::write(&root, &synthetic::SyntheticConfig::default())
            .map_err(|e| TrainError::Data(format!("{}: {e}", root.display())))?;
    }
    Ok(root.join("train"))
}

fn prototype_ids<A: AutodiffBackend>(model: &Swav<A>) -> Vec<ParamId> {
    model
        .prototypes
        .iter()
        .flat_map(|p| p.heads.iter().map(|l| l.weight.id))
        .collect()
}

struct Metrics {
    file: std::fs::File,
}

impl Metrics {
    fn open(output: &Path) -> Result<Metrics, TrainError> {
        let path = output.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
        Ok(Metrics { file })
    }

    fn write(&mut self, e: &Event) {
        if let Ok(line) = serde_json::to_string(e) {
            let _ = writeln!(self.file, "{line}");
        }
    }
}

/// The optimizer: LARS over every parameter of the model.
type SwavOptimizer<A> = OptimizerAdaptor<Lars<<A as AutodiffBackend>::InnerBackend>, Swav<A>, A>;

/// Train as `cfg` says on `devices` (the first holds the master copy).
pub fn train<A: AutodiffBackend>(
    cfg: &TrainConfig,
    devices: &[A::Device],
    opts: &TrainOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<TrainSummary, TrainError>
where
    A::Device: Send + 'static,
{
    cfg.validate()?;
    if devices.is_empty() {
        return Err(ConfigError::Invalid("no device to train on".into()).into());
    }
    let output = PathBuf::from(&cfg.output_dir);
    std::fs::create_dir_all(&output)
        .map_err(|e| TrainError::Data(format!("{}: {e}", output.display())))?;
    let existing = previous_checkpoint(&output, opts.resume)?;
    let data = TrainData::open(cfg, devices.len(), opts.workers)?;
    let model_cfg = cfg.model_config()?;
    let (start, pretrained) = start::<A>(
        cfg,
        &model_cfg,
        devices,
        existing,
        opts.pretrained.as_deref(),
    )?;
    let config_path = output.join("config.yaml");
    crate::atomic::write_bytes(&config_path, cfg.to_yaml().as_bytes())
        .map_err(|e| TrainError::Data(format!("{}: {e}", config_path.display())))?;
    let lr = &cfg.lr_scheduler;
    let mut run = Run {
        schedule: LrSchedule::new(
            lr.start_lr,
            lr.learning_rate,
            lr.eta_min,
            lr.warmup_epochs(cfg.epochs),
            cfg.epochs,
            data.iterations,
        ),
        loss: cfg.swav_loss(),
        groups: cfg.crop_groups(),
        model_cfg,
        frozen_ids: prototype_ids(&start.model),
        metrics: Metrics::open(&output)?,
        cfg,
        devices,
        output,
        data,
        optim: start.optim,
        st: start.state,
        queues: start.queues,
        on_event,
    };
    run.emit(Event::Start {
        images: run.data.set.len(),
        devices: devices.len(),
        global_batch: run.data.loader.batch_size,
        iterations_per_epoch: run.data.iterations,
        start_epoch: run.st.epoch,
        epochs: cfg.epochs,
    });
    if let Some(e) = pretrained {
        run.emit(e);
    }
    let last_epoch = opts
        .max_epochs
        .map_or(cfg.epochs, |m| (run.st.epoch + m).min(cfg.epochs));
    // The model is passed through the steps by value, so that the optimizer owns its
    // parameters while it updates them.
    let mut model = start.model;
    let mut checkpoint = None;
    for epoch in run.st.epoch..last_epoch {
        let rec;
        (model, rec) = run.epoch(model, epoch)?;
        let before = run.st.history.last().map(|r| r.loss);
        run.st.history.push(rec.clone());
        run.st.epoch = epoch + 1;
        run.emit(Event::Epoch(rec.clone()));
        for w in diagnostics::after_epoch(cfg, epoch, before, rec.loss) {
            run.emit(Event::Warning {
                message: w.to_string(),
            });
        }
        if run.st.epoch.is_multiple_of(cfg.checkpoint.interval) || run.st.epoch == last_epoch {
            checkpoint = Some(run.checkpoint(&model)?);
        }
    }
    Ok(TrainSummary {
        history: run.st.history,
        checkpoint,
        output: run.output,
    })
}

/// The latest checkpoint in `output` when resuming; an error when resuming without one, or
/// when starting over one (a new run never overwrites an old one).
fn previous_checkpoint(output: &Path, resume: bool) -> Result<Option<PathBuf>, TrainError> {
    let existing = state::latest(output);
    let dir = || state::checkpoints_dir(output).display().to_string();
    match (&existing, resume) {
        (Some(_), false) => Err(TrainError::Checkpoint(format!(
            "{}: holds checkpoints of an earlier run; pass --resume to continue it or choose another output_dir",
            dir()
        ))),
        (None, true) => Err(TrainError::Checkpoint(format!(
            "{}: no checkpoint to resume from",
            dir()
        ))),
        _ => Ok(existing),
    }
}

/// The training images and how they are loaded.
struct TrainData {
    set: Arc<Dataset>,
    multicrop: MultiCrop,
    /// The global batch: `batch_size` images per device.
    loader: LoaderConfig,
    iterations: usize,
}

impl TrainData {
    fn open(
        cfg: &TrainConfig,
        devices: usize,
        workers: Option<usize>,
    ) -> Result<TrainData, TrainError> {
        let root = data_root(cfg)?;
        let set = Arc::new(Dataset::open(&root).map_err(|e| TrainError::Data(e.to_string()))?);
        let sampler = &cfg.dataloader.train.sampler;
        let mut loader = LoaderConfig {
            batch_size: sampler.batch_size * devices,
            shuffle: sampler.shuffle,
            drop_last: sampler.drop_last,
            seed: cfg.seed,
            ..Default::default()
        };
        let workers = workers.unwrap_or(cfg.dataloader.train.loader.num_workers);
        if workers > 0 {
            loader.workers = workers;
        }
        let iterations = if loader.drop_last {
            set.len() / loader.batch_size
        } else {
            set.len().div_ceil(loader.batch_size)
        };
        if iterations == 0 {
            return Err(TrainError::Data(format!(
                "{}: {} images, fewer than one global batch of {}",
                root.display(),
                set.len(),
                loader.batch_size
            )));
        }
        Ok(TrainData {
            set,
            multicrop: cfg.multicrop()?,
            loader,
            iterations,
        })
    }
}

/// Where a run starts: a checkpoint's model, optimizer, state and queue, or a fresh
/// (seeded, optionally `pretrained`) model.
struct Start<A: AutodiffBackend> {
    model: Swav<A>,
    optim: SwavOptimizer<A>,
    state: TrainState,
    queues: Option<Vec<Queue>>,
}

fn start<A: AutodiffBackend>(
    cfg: &TrainConfig,
    model_cfg: &SwavConfig,
    devices: &[A::Device],
    existing: Option<PathBuf>,
    pretrained: Option<&Path>,
) -> Result<(Start<A>, Option<Event>), TrainError> {
    let (dev0, n_dev) = (&devices[0], devices.len());
    let optim = cfg.lars().init::<A, Swav<A>>();
    if let Some(dir) = existing {
        let (loaded, optim) =
            state::load::<A, Swav<A>, _>(&dir, optim, dev0).map_err(TrainError::Checkpoint)?;
        if loaded.config != *model_cfg {
            return Err(TrainError::Checkpoint(format!(
                "{}: the checkpoint's model differs from the config's",
                dir.display()
            )));
        }
        if loaded.queues.is_some() && loaded.state.devices != n_dev {
            return Err(TrainError::Checkpoint(format!(
                "{}: its queue is split over {} devices, this run has {n_dev}",
                dir.display(),
                loaded.state.devices
            )));
        }
        let start = Start {
            model: loaded.model,
            optim,
            state: loaded.state,
            queues: loaded.queues,
        };
        return Ok((start, None));
    }
    A::seed(dev0, cfg.seed);
    let mut model = model_cfg.init_now::<A>(dev0);
    let mut event = None;
    if let Some(p) = pretrained {
        let summary;
        (model, summary) = init_from(model, p, dev0)?;
        event = Some(Event::Pretrained {
            path: p.to_path_buf(),
            summary,
        });
    }
    let state = TrainState {
        format: state::FORMAT.into(),
        epoch: 0,
        iteration: 0,
        config: cfg.to_yaml(),
        queue: None,
        devices: n_dev,
        history: Vec::new(),
    };
    let start = Start {
        model,
        optim,
        state,
        queues: None,
    };
    Ok((start, event))
}

/// A run in progress: what the loop reads and what it changes.
struct Run<'a, A: AutodiffBackend> {
    cfg: &'a TrainConfig,
    devices: &'a [A::Device],
    output: PathBuf,
    data: TrainData,
    schedule: LrSchedule,
    loss: step::SwavLoss,
    groups: Vec<std::ops::Range<usize>>,
    model_cfg: SwavConfig,
    /// The prototypes' parameters, whose gradients are dropped while frozen.
    frozen_ids: Vec<ParamId>,
    optim: SwavOptimizer<A>,
    st: TrainState,
    queues: Option<Vec<Queue>>,
    metrics: Metrics,
    on_event: &'a mut dyn FnMut(&Event),
}

impl<A: AutodiffBackend> Run<'_, A>
where
    A::Device: Send + 'static,
{
    /// Record an event in `metrics.jsonl` and pass it to the caller.
    fn emit(&mut self, e: Event) {
        self.metrics.write(&e);
        (self.on_event)(&e);
    }

    /// One epoch over the data set.
    fn epoch(
        &mut self,
        mut model: Swav<A>,
        epoch: usize,
    ) -> Result<(Swav<A>, EpochRecord), TrainError> {
        let (h, n_dev) = (&self.cfg.model.head, self.devices.len());
        if h.queue_length > 0 && epoch >= h.epoch_queue_starts && self.queues.is_none() {
            let q = Queue::new(h.crops_for_assign.len(), h.queue_length / n_dev, h.feat_dim);
            self.queues = Some(vec![q; n_dev]);
        }
        for q in self.queues.iter_mut().flatten() {
            q.in_use = false;
        }
        let d = &self.data;
        let pipeline = Pipeline::MultiCrop(d.multicrop.clone());
        let loader = Loader::new(d.set.clone(), pipeline, &d.loader, epoch as u64);
        let skipped = loader.skipped.clone();
        let mut reported = 0;
        let started = Instant::now();
        let (mut loss_sum, mut steps, mut images, mut last_lr) = (0.0, 0usize, 0usize, 0.0);
        let batches = DeviceLoader::<A>::new(loader, self.devices[0].clone());
        for (step_in_epoch, batch) in batches.enumerate() {
            let (it, rate) = (self.st.iteration, self.schedule.at(self.st.iteration));
            self.st.iteration += 1;
            let n = batch.samples.len();
            if n < 2 * n_dev {
                self.emit(Event::Warning {
                    message: format!(
                        "iteration {it}: batch of {n} images after unreadable ones were skipped: step skipped"
                    ),
                });
                continue;
            }
            let value;
            (model, value) = self.step(model, &batch, epoch, it, rate)?;
            (loss_sum, steps, images, last_lr) = (loss_sum + value, steps + 1, images + n, rate);
            let interval = self.cfg.log_config.interval.max(1);
            if step_in_epoch % interval == 0 || step_in_epoch + 1 == self.data.iterations {
                self.emit(Event::Iteration {
                    epoch,
                    iteration: it,
                    step_in_epoch,
                    loss: value,
                    lr: rate,
                    images_per_second: images as f64 / started.elapsed().as_secs_f64(),
                    queue: self.queues.as_ref().is_some_and(|q| q[0].in_use),
                    prototypes_frozen: self.frozen(it),
                });
            }
            let new = skipped
                .lock()
                .map(|s| s.since(reported).to_vec())
                .unwrap_or_default();
            for (path, error) in new {
                reported += 1;
                self.emit(Event::SkippedImage { path, error });
            }
        }
        let rec = EpochRecord {
            epoch,
            loss: loss_sum / steps.max(1) as f64,
            lr: last_lr,
            images_per_second: images as f64 / started.elapsed().as_secs_f64(),
        };
        Ok((model, rec))
    }

    /// Whether the prototypes are frozen at iteration `it`.
    fn frozen(&self, it: usize) -> bool {
        it < self.cfg.optimizer_config.freeze_prototypes_iters
    }

    /// One optimisation step at learning rate `rate`: the updated model and the loss, or a
    /// dump and an error when the loss is not finite.
    fn step(
        &mut self,
        model: Swav<A>,
        batch: &DeviceBatch<A>,
        epoch: usize,
        it: usize,
        rate: f64,
    ) -> Result<(Swav<A>, f64), TrainError> {
        let model = step::normalize_prototypes(model);
        let num_crops = &self.cfg.dataloader.train.dataset.num_crops;
        let shards = parallel::split_batch(&batch.crops, num_crops, self.devices);
        let out = parallel::step(
            &model,
            self.devices,
            &shards,
            &self.groups,
            &self.loss,
            self.queues.as_deref_mut(),
        );
        if !out.loss.is_finite() {
            let images: Vec<String> = batch
                .samples
                .iter()
                .map(|&s| self.data.set.samples[s].path.display().to_string())
                .collect();
            return Err(dump_non_finite(
                &model,
                &self.model_cfg,
                &self.output,
                it,
                epoch,
                &images,
            ));
        }
        let mut grads = out.grads;
        if self.frozen(it) {
            for id in &self.frozen_ids {
                grads.remove::<A::InnerBackend, 2>(*id);
            }
        }
        Ok((self.optim.step(rate, model, grads), out.loss))
    }

    /// Write a checkpoint of the run as it stands.
    fn checkpoint(&mut self, model: &Swav<A>) -> Result<PathBuf, TrainError> {
        self.st.queue = self
            .queues
            .as_ref()
            .map(|q| [q[0].rows.len(), q[0].len, q[0].dim]);
        self.st.devices = self.devices.len();
        let path = state::save::<A, Swav<A>, _>(
            &self.output,
            model,
            &self.model_cfg,
            &self.optim,
            self.queues.as_deref(),
            &self.st,
            self.cfg.checkpoint.keep,
        )
        .map_err(TrainError::Checkpoint)?;
        self.emit(Event::Checkpoint { path: path.clone() });
        Ok(path)
    }
}

/// Stop on a non-finite loss: name the first parameter holding NaN/inf (else the batch's
/// scores), dump the model and the batch's file names beside the output.
fn dump_non_finite<A: AutodiffBackend>(
    model: &Swav<A>,
    model_cfg: &crate::model::swav::SwavConfig,
    output: &Path,
    iteration: usize,
    epoch: usize,
    images: &[String],
) -> TrainError {
    let what = match diagnostics::first_non_finite(model) {
        Some((name, count)) => format!("{count} non-finite values in {name}"),
        None => "the scores of this batch".into(),
    };
    let dump = output.join(format!("nan_dump_iter_{iteration}.mpk"));
    if let Err(e) = record::save(model.valid(), model_cfg, &dump) {
        return TrainError::Data(e);
    }
    let _ = std::fs::write(
        output.join(format!("nan_dump_iter_{iteration}.json")),
        serde_json::to_vec_pretty(&serde_json::json!({
            "iteration": iteration, "epoch": epoch, "what": what, "images": images,
        }))
        .unwrap_or_default(),
    );
    TrainError::NonFinite {
        iteration,
        what,
        dump,
    }
}

/// Set `model`'s parameters from a checkpoint (PASSL's `--pretrained`): what the file has
/// is loaded, what it lacks keeps its initialisation; a shape mismatch, or nothing loaded, is
/// an error.
fn init_from<A: AutodiffBackend>(
    model: Swav<A>,
    path: &Path,
    device: &A::Device,
) -> Result<(Swav<A>, String), TrainError> {
    let err = |m: String| TrainError::Checkpoint(format!("{}: {m}", path.display()));
    let tensors = load::burn_tensors(path).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    let (model, report) = load::apply(model, tensors.tensors, device).map_err(err)?;
    if !report.mismatched.is_empty() {
        return Err(err(format!(
            "shapes differ from the config's model: {}",
            report.mismatched.join(", ")
        )));
    }
    if report.loaded.is_empty() {
        return Err(err("no tensor of the file fits the config's model".into()));
    }
    Ok((model, report.summary()))
}
