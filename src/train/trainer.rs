//! The training loop (facebookresearch/swav `main_swav.py` `train`): per iteration the
//! prototypes are L2-normalised, the step's loss computed ([`super::step`]), the prototypes'
//! gradients dropped during the first `freeze_prototypes_iters` iterations, and LARS applied at
//! the scheduled rate. Checkpoints at epoch ends ([`super::state`]); metrics as JSON lines in
//! `OUTPUT/metrics.jsonl`; events for the caller's progress display.
//!
//! One rank per device, each on a thread of its own, each given `batch_size` images of the
//! global batch ([`super::parallel`], [`super::rank`]).

use super::config::{ConfigError, TrainConfig, TrainPlan};
use super::diagnostics;
use super::parallel::{Fault, RankFailure, RankStart, Ranks, MIN_SHARD};
use super::rank::{self, StepSettings, SwavOptimizer};
use super::schedule::LrSchedule;
use super::state::{self, EpochRecord, TrainState};
use super::step::Queue;
use crate::collective::{DifferentiableCollective, Engine, LocalGroup};
use crate::data::dataset::Dataset;
use crate::data::loader::{Loader, LoaderConfig, Pipeline};
use crate::data::multicrop::MultiCrop;
use crate::data::synthetic;
use crate::dist::Session;
use crate::model::swav::{Swav, SwavConfig};
use crate::model::{load, record};
use burn::module::AutodiffModule;
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
    #[error(transparent)]
    Rank(#[from] RankFailure),
    #[error(transparent)]
    Collective(#[from] crate::collective::CollectiveError),
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Checkpoint(String),
    /// A training checkpoint could not be written or read.
    #[error(transparent)]
    State(#[from] super::state::StateError),
    /// The model's record (a non-finite loss's dump) could not be written.
    #[error(transparent)]
    Record(#[from] crate::model::record::RecordError),
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
    /// The collective engine of several devices.
    pub collective: Engine,
    /// This process's membership in a run of several processes (torchrun / SLURM launch):
    /// `devices` are then this process's ranks, and process 0 alone writes the run's files.
    pub session: Option<Arc<Session>>,
    /// A rank that panics at an iteration (tests of failure handling).
    #[doc(hidden)]
    pub fault: Option<Fault>,
}

/// What the loop reports as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start {
        images: usize,
        devices: usize,
        /// The collective engine of the ranks (`none` for one device).
        collective: String,
        /// Whether BatchNorm statistics are those of the global batch.
        sync_bn: bool,
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

/// `OUTPUT/metrics.jsonl`. A line that cannot be written ends the run with an error naming
/// the file (a full or failing disk would fail the next checkpoint too; stopping at once keeps
/// the metrics and the checkpoints whole).
struct Metrics {
    file: std::fs::File,
    path: PathBuf,
}

impl Metrics {
    fn open(output: &Path) -> Result<Metrics, TrainError> {
        let path = output.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| TrainError::Data(format!("{}: {e}", path.display())))?;
        Ok(Metrics { file, path })
    }

    fn write(&mut self, e: &Event) -> Result<(), TrainError> {
        let line = serde_json::to_string(e).expect("events are plain data");
        writeln!(self.file, "{line}")
            .map_err(|e| TrainError::Data(format!("{}: {e}", self.path.display())))
    }
}

/// Train as `cfg` says on `devices`, one rank per device (rank 0 on the first; it alone
/// writes checkpoints).
pub fn train<A: DifferentiableCollective>(
    cfg: &TrainPlan,
    devices: &[A::Device],
    opts: &TrainOptions,
    on_event: &mut dyn FnMut(&Event),
) -> Result<TrainSummary, TrainError>
where
    A::Device: Send + 'static,
{
    if devices.is_empty() {
        return Err(ConfigError::Invalid("no device to train on".into()).into());
    }
    let session = opts.session.as_deref();
    // Ranks of every process; this process's are `first..first + devices.len()`.
    let (world, first, writer) = match session {
        Some(s) => (s.world(), s.rank_of(0), s.process() == 0),
        None => (devices.len(), 0, true),
    };
    LocalGroup::<A::InnerBackend>::check(devices, opts.collective)
        .map_err(|e| ConfigError::Invalid(format!("--collective {}: {e}", opts.collective)))?;
    let output = PathBuf::from(&cfg.output_dir);
    std::fs::create_dir_all(&output)
        .map_err(|e| TrainError::Data(format!("{}: {e}", output.display())))?;
    let existing = previous_checkpoint(&output, opts.resume)?;
    let part = session.map_or((0, 1), Session::part);
    let data = TrainData::open(cfg, world, part, opts.workers)?;
    let model_cfg = cfg.network.clone();
    let queue = queue_shape(cfg, world);
    let (start, pretrained) = start::<A>(
        cfg,
        &model_cfg,
        devices,
        (first, world),
        queue,
        existing,
        opts.pretrained.as_deref(),
    )?;
    if writer {
        let config_path = output.join("config.yaml");
        crate::atomic::write_bytes(&config_path, cfg.to_yaml().as_bytes())
            .map_err(|e| TrainError::Data(format!("{}: {e}", config_path.display())))?;
    }
    let settings = StepSettings {
        loss: cfg.loss.clone(),
        groups: cfg.groups.clone(),
        prototype_ids: rank::prototype_ids(&start.model),
        sync_bn: cfg.model.backbone.sync_bn,
    };
    let mut queues = start
        .queues
        .map(|q| q.into_iter().map(Some).collect::<Vec<_>>());
    // Rank 0 keeps the model; every other rank gets a copy that shares nothing with it.
    let mut models: Vec<Swav<A>> = devices[1..]
        .iter()
        .map(|d| start.model.replicate(&model_cfg, d))
        .collect();
    models.insert(0, start.model);
    let starts: Vec<RankStart<A>> = devices
        .iter()
        .zip(models)
        .enumerate()
        .map(|(w, (d, model))| RankStart {
            device: d.clone(),
            model,
            optim: start.optim.clone(),
            queue: queues.as_mut().and_then(|q| q[w].take()),
        })
        .collect();
    let ranks = Ranks::start(starts, settings, opts.collective, opts.fault, session)?;
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
        model_cfg,
        queue,
        metrics: if writer {
            Some(Metrics::open(&output)?)
        } else {
            None
        },
        cfg,
        output,
        data,
        ranks,
        st: start.state,
        world,
        on_event,
    };
    run.emit(Event::Start {
        images: run.data.set.len(),
        devices: world,
        collective: run
            .ranks
            .engine()
            .map_or_else(|| "none".to_string(), |e| e.to_string()),
        sync_bn: cfg.model.backbone.sync_bn && world > 1,
        global_batch: run.data.loader.batch_size,
        iterations_per_epoch: run.data.iterations,
        start_epoch: run.st.epoch,
        epochs: cfg.epochs,
    })?;
    if let Some(e) = pretrained {
        run.emit(e)?;
    }
    let last_epoch = opts
        .max_epochs
        .map_or(cfg.epochs, |m| (run.st.epoch + m).min(cfg.epochs));
    let mut checkpoint = None;
    for epoch in run.st.epoch..last_epoch {
        let rec = run.epoch(epoch)?;
        let before = run.st.history.last().map(|r| r.loss);
        run.st.history.push(rec.clone());
        run.st.epoch = epoch + 1;
        run.emit(Event::Epoch(rec.clone()))?;
        for w in diagnostics::after_epoch(cfg, epoch, before, rec.loss) {
            run.emit(Event::Warning {
                message: w.to_string(),
            })?;
        }
        if run.st.epoch.is_multiple_of(cfg.checkpoint.interval) || run.st.epoch == last_epoch {
            checkpoint = run.checkpoint()?.or(checkpoint);
        }
    }
    run.ranks.finish();
    if let Some(s) = session {
        s.finish();
    }
    Ok(TrainSummary {
        history: run.st.history,
        checkpoint,
        output: run.output,
    })
}

/// Each rank's queue, `[assigned crops, rows, dim]`, when the config has one: main_swav.py
/// rounds `queue_length` down to a multiple of the global batch and gives each rank an equal
/// slice. `None` when there is no queue (or it rounds to nothing).
pub fn queue_shape(cfg: &TrainConfig, world: usize) -> Option<[usize; 3]> {
    let h = &cfg.model.head;
    let global = cfg.dataloader.train.sampler.batch_size * world;
    let length = h.queue_length - h.queue_length % global.max(1);
    (length > 0).then_some([h.crops_for_assign.len(), length / world, h.feat_dim])
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
    /// The data of `devices` ranks in all; this process loads `part` of each batch.
    fn open(
        cfg: &TrainPlan,
        devices: usize,
        part: (usize, usize),
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
            part,
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
            multicrop: cfg.multicrop.clone(),
            loader,
            iterations,
        })
    }
}

/// Where a run starts: a checkpoint's model, optimizer, state and queue (one slice per rank),
/// or a fresh (seeded, optionally `pretrained`) model.
struct Start<A: AutodiffBackend> {
    model: Swav<A>,
    optim: SwavOptimizer<A>,
    state: TrainState,
    queues: Option<Vec<Queue>>,
}

fn start<A: AutodiffBackend>(
    cfg: &TrainPlan,
    model_cfg: &SwavConfig,
    devices: &[A::Device],
    (first, world): (usize, usize),
    queue: Option<[usize; 3]>,
    existing: Option<PathBuf>,
    pretrained: Option<&Path>,
) -> Result<(Start<A>, Option<Event>), TrainError> {
    let (dev0, n_dev) = (&devices[0], world);
    let optim = cfg.lars.init::<A, Swav<A>>();
    if let Some(dir) = existing {
        let (loaded, optim) = state::load::<A, Swav<A>, _>(&dir, optim, dev0)?;
        if loaded.config != *model_cfg {
            return Err(TrainError::Checkpoint(format!(
                "{}: the checkpoint's model differs from the config's",
                dir.display()
            )));
        }
        let queues = match (loaded.queues, queue) {
            (Some(q), Some(shape)) => Some(
                reslice_queues(q, n_dev, shape)
                    .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", dir.display())))?
                    .into_iter()
                    .skip(first)
                    .take(devices.len())
                    .collect(),
            ),
            _ => None,
        };
        let start = Start {
            model: loaded.model,
            optim,
            state: loaded.state,
            queues,
        };
        return Ok((start, None));
    }
    A::seed(dev0, cfg.seed);
    let mut model = model_cfg.init_eager::<A>(dev0);
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

/// A checkpoint's queue, saved as one slice per rank of its run, cut into `world` slices of
/// `shape` (`[assigned, rows per rank, dim]`): the rows of every slice in rank order, cut
/// again. A run resumed with the same global batch on another number of ranks keeps every
/// row; a queue of another total size is an error.
pub fn reslice_queues(
    queues: Vec<Queue>,
    world: usize,
    [assigned, len, dim]: [usize; 3],
) -> Result<Vec<Queue>, String> {
    if queues.len() == world && queues.iter().all(|q| q.len == len) {
        return Ok(queues);
    }
    let rows: usize = queues.iter().map(|q| q.len).sum();
    let old_dim = queues.first().map_or(dim, |q| q.dim);
    let old_assigned = queues.first().map_or(assigned, |q| q.rows.len());
    if rows != world * len || old_dim != dim || old_assigned != assigned {
        return Err(format!(
            "its queue holds {rows} rows of width {old_dim} for {old_assigned} crops ({} ranks); \
             this run's holds {} rows of width {dim} for {assigned} crops ({world} ranks of \
             {len}): resume with the same global batch and queue_length",
            queues.len(),
            world * len
        ));
    }
    let all: Vec<Vec<f32>> = (0..assigned)
        .map(|i| {
            queues
                .iter()
                .flat_map(|q| q.rows[i].iter().copied())
                .collect()
        })
        .collect();
    Ok((0..world)
        .map(|w| Queue {
            len,
            dim,
            rows: all
                .iter()
                .map(|r| r[w * len * dim..(w + 1) * len * dim].to_vec())
                .collect(),
            in_use: false,
        })
        .collect())
}

/// A run in progress: what the loop reads and what it changes.
struct Run<'a, A: AutodiffBackend> {
    cfg: &'a TrainConfig,
    output: PathBuf,
    data: TrainData,
    schedule: LrSchedule,
    model_cfg: SwavConfig,
    /// Each rank's queue shape, once it starts.
    queue: Option<[usize; 3]>,
    ranks: Ranks<A>,
    st: TrainState,
    /// `OUTPUT/metrics.jsonl`, open in the process that writes the run's files (process 0 of
    /// a multi-process run) only.
    metrics: Option<Metrics>,
    /// Ranks of every process.
    world: usize,
    on_event: &'a mut dyn FnMut(&Event),
}

/// A step handed to the ranks whose loss is not read yet.
struct Pending {
    iteration: usize,
    step_in_epoch: usize,
    rate: f64,
    images: Vec<usize>,
}

impl<A: DifferentiableCollective> Run<'_, A>
where
    A::Device: Send + 'static,
{
    /// Whether this process writes the run's files.
    fn writer(&self) -> bool {
        self.metrics.is_some()
    }

    /// Record an event in `metrics.jsonl` and pass it to the caller.
    fn emit(&mut self, e: Event) -> Result<(), TrainError> {
        if let Some(m) = &mut self.metrics {
            m.write(&e)?;
        }
        (self.on_event)(&e);
        Ok(())
    }

    /// One epoch over the data set. The next step is handed to the ranks before the current
    /// one's loss is read, so that loading and uploading overlap the step.
    fn epoch(&mut self, epoch: usize) -> Result<EpochRecord, TrainError> {
        let h = &self.cfg.model.head;
        let queue = self.queue.filter(|_| epoch >= h.epoch_queue_starts);
        self.ranks.begin_epoch(queue)?;
        let d = &self.data;
        let pipeline = Pipeline::MultiCrop(d.multicrop.clone());
        let loader = Loader::new(d.set.clone(), pipeline, &d.loader, epoch as u64);
        let skipped = loader.skipped.clone();
        let mut reported = 0;
        // This process's ranks: each needs two images of its shard.
        let local_ranks = self.ranks.world();
        let mut sums = EpochSums {
            started: Instant::now(),
            loss: 0.0,
            steps: 0,
            images: 0,
            lr: 0.0,
        };
        let mut pending = std::collections::VecDeque::new();
        for (step_in_epoch, batch) in loader.enumerate() {
            let (it, rate) = (self.st.iteration, self.schedule.at(self.st.iteration));
            self.st.iteration += 1;
            let n = batch.len();
            // In one process a batch too small for every rank's shard is skipped here; across
            // processes the ranks decide together (each process sees its part only).
            if n < MIN_SHARD * local_ranks && !self.ranks.agree_on_skips() {
                self.emit(Event::Warning {
                    message: format!(
                        "iteration {it}: batch of {n} images after unreadable ones were skipped: step skipped"
                    ),
                })?;
                continue;
            }
            let images = batch.samples.clone();
            self.ranks.step(batch, rate, self.frozen(it), it)?;
            pending.push_back(Pending {
                iteration: it,
                step_in_epoch,
                rate,
                images,
            });
            if pending.len() > 1 {
                let p = pending.pop_front().expect("a pending step");
                self.finish_step(p, epoch, &mut sums)?;
            }
            let new = skipped
                .lock()
                .map(|s| s.since(reported).to_vec())
                .unwrap_or_default();
            for (path, error) in new {
                reported += 1;
                self.emit(Event::SkippedImage { path, error })?;
            }
        }
        while let Some(p) = pending.pop_front() {
            self.finish_step(p, epoch, &mut sums)?;
        }
        Ok(EpochRecord {
            epoch,
            loss: sums.loss / sums.steps.max(1) as f64,
            lr: sums.lr,
            images_per_second: sums.images as f64 / sums.started.elapsed().as_secs_f64(),
        })
    }

    /// Wait for a step's loss; stop with a dump when it is not finite.
    fn finish_step(
        &mut self,
        p: Pending,
        epoch: usize,
        sums: &mut EpochSums,
    ) -> Result<(), TrainError> {
        let out = self.ranks.loss()?;
        if out.skipped {
            return self.emit(Event::Warning {
                message: format!(
                    "iteration {}: a rank's part of the batch held fewer than {MIN_SHARD} readable \
                     images: step skipped by every rank",
                    p.iteration
                ),
            });
        }
        if !out.loss.is_finite() {
            let images: Vec<String> = p
                .images
                .iter()
                .map(|&s| self.data.set.samples[s].path.display().to_string())
                .collect();
            let (cfg, output) = (self.model_cfg.clone(), self.output.clone());
            let (it, write) = (p.iteration, self.writer());
            return Err(self.ranks.run_on(0, move |model, _| {
                dump_non_finite(model, &cfg, &output, it, epoch, &images, write)
            })?);
        }
        sums.loss += out.loss;
        sums.steps += 1;
        // Images of the global batch: the other processes' parts are counted as large as this
        // one's (they differ only by unreadable images).
        sums.images += p.images.len() * self.world / self.ranks.world();
        sums.lr = p.rate;
        let interval = self.cfg.log_config.interval.max(1);
        if p.step_in_epoch.is_multiple_of(interval) || p.step_in_epoch + 1 == self.data.iterations {
            self.emit(Event::Iteration {
                epoch,
                iteration: p.iteration,
                step_in_epoch: p.step_in_epoch,
                loss: out.loss,
                lr: p.rate,
                images_per_second: sums.images as f64 / sums.started.elapsed().as_secs_f64(),
                queue: out.queue_in_use,
                prototypes_frozen: self.frozen(p.iteration),
            })?;
        }
        Ok(())
    }

    /// Whether the prototypes are frozen at iteration `it`.
    fn frozen(&self, it: usize) -> bool {
        it < self.cfg.optimizer_config.freeze_prototypes_iters
    }

    /// Write a checkpoint of the run as it stands: rank 0's model and optimizer, every rank's
    /// queue.
    fn checkpoint(&mut self) -> Result<Option<PathBuf>, TrainError> {
        let queues: Option<Vec<Queue>> = if self.world == self.ranks.world() {
            self.ranks
                .run_on_all(|_, r| r.queue.as_ref().map(|q| q.to_host()))?
                .into_iter()
                .collect()
        } else {
            // Ranks of other processes hold the other slices: gathered through the engine.
            let mut all = self.ranks.run_on_all(|_, r| r.all_queues())?;
            all.swap_remove(0)?
        };
        if !self.writer() {
            return Ok(None);
        }
        self.st.queue = queues
            .as_ref()
            .map(|q| [q[0].rows.len(), q[0].len, q[0].dim]);
        self.st.devices = self.world;
        let (output, model_cfg, st) =
            (self.output.clone(), self.model_cfg.clone(), self.st.clone());
        let keep = self.cfg.checkpoint.keep;
        let path = self.ranks.run_on(0, move |model, rank| {
            state::save::<A, Swav<A>, _>(
                &output,
                model,
                &model_cfg,
                &rank.optim,
                queues.as_deref(),
                &st,
                keep,
            )
        })??;
        self.emit(Event::Checkpoint { path: path.clone() })?;
        Ok(Some(path))
    }
}

/// An epoch's running totals.
struct EpochSums {
    started: Instant,
    loss: f64,
    steps: usize,
    images: usize,
    lr: f64,
}

/// Stop on a non-finite loss: name the first parameter holding NaN/inf (else the batch's
/// scores), dump the model and the batch's file names beside the output (when `write`: the
/// process that writes the run's files; the others name the same dump).
fn dump_non_finite<A: AutodiffBackend>(
    model: &Swav<A>,
    model_cfg: &crate::model::swav::SwavConfig,
    output: &Path,
    iteration: usize,
    epoch: usize,
    images: &[String],
    write: bool,
) -> TrainError {
    let what = match diagnostics::first_non_finite(model) {
        Ok(Some((name, count))) => format!("{count} non-finite values in {name}"),
        Ok(None) => "the scores of this batch".into(),
        Err(e) => e,
    };
    let dump = output.join(format!("nan_dump_iter_{iteration}.mpk"));
    if !write {
        return TrainError::NonFinite {
            iteration,
            what,
            dump,
        };
    }
    if let Err(e) = record::save(model.valid(), model_cfg, &dump) {
        return TrainError::Record(e);
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
