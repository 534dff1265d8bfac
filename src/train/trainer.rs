//! The training loop (facebookresearch/swav `main_swav.py` `train`): per iteration the
//! prototypes are L2-normalised, the step's loss computed ([`super::step`]), the prototypes'
//! gradients dropped during the first `freeze_prototypes_iters` iterations, and LARS applied at
//! the scheduled rate. Checkpoints at epoch ends ([`super::state`]); metrics as JSON lines in
//! `OUTPUT/metrics.jsonl`; events for the caller's progress display.
//!
//! With several devices each gets `batch_size` images of the global batch ([`super::parallel`]).

use super::config::{ConfigError, TrainConfig};
use super::diagnostics;
use super::parallel;
use super::schedule::LrSchedule;
use super::state::{self, EpochRecord, TrainState};
use super::step::{self, Queue};
use crate::data::dataset::Dataset;
use crate::data::device::DeviceLoader;
use crate::data::loader::{Loader, LoaderConfig, Pipeline};
use crate::data::synthetic;
use crate::model::swav::Swav;
use crate::model::{load, record};
use burn::module::{AutodiffModule, ParamId};
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
    let existing = state::latest(&output);
    if existing.is_some() && !opts.resume {
        return Err(TrainError::Checkpoint(format!(
            "{}: holds checkpoints of an earlier run; pass --resume to continue it or choose another output_dir",
            state::checkpoints_dir(&output).display()
        )));
    }
    if existing.is_none() && opts.resume {
        return Err(TrainError::Checkpoint(format!(
            "{}: no checkpoint to resume from",
            state::checkpoints_dir(&output).display()
        )));
    }

    let root = data_root(cfg)?;
    let ds = Arc::new(Dataset::open(&root).map_err(|e| TrainError::Data(e.to_string()))?);
    let n_dev = devices.len();
    let per_device = cfg.dataloader.train.sampler.batch_size;
    let d = &cfg.dataloader.train.dataset;
    let mc = cfg.multicrop()?;
    let mut lc = LoaderConfig {
        batch_size: per_device * n_dev,
        shuffle: cfg.dataloader.train.sampler.shuffle,
        drop_last: cfg.dataloader.train.sampler.drop_last,
        seed: cfg.seed,
        ..Default::default()
    };
    let workers = opts
        .workers
        .unwrap_or(cfg.dataloader.train.loader.num_workers);
    if workers > 0 {
        lc.workers = workers;
    }
    let iters = if lc.drop_last {
        ds.len() / lc.batch_size
    } else {
        ds.len().div_ceil(lc.batch_size)
    };
    if iters == 0 {
        return Err(TrainError::Data(format!(
            "{}: {} images, fewer than one global batch of {}",
            root.display(),
            ds.len(),
            lc.batch_size
        )));
    }
    let lr = &cfg.lr_scheduler;
    let schedule = LrSchedule::new(
        lr.start_lr,
        lr.learning_rate,
        lr.eta_min,
        lr.warmup_epochs(cfg.epochs),
        cfg.epochs,
        iters,
    );
    let loss_cfg = cfg.swav_loss();
    let groups = cfg.crop_groups();
    let lars = cfg.lars();
    let model_cfg = cfg.model_config()?;
    let dev0 = &devices[0];
    let optim = lars.init::<A, Swav<A>>();
    let mut pretrained = None;
    let (mut model, mut optim, mut st, mut queues) = match existing {
        Some(dir) => {
            let (loaded, optim) =
                state::load::<A, Swav<A>, _>(&dir, optim, dev0).map_err(TrainError::Checkpoint)?;
            if loaded.config != model_cfg {
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
            (loaded.model, optim, loaded.state, loaded.queues)
        }
        None => {
            A::seed(dev0, cfg.seed);
            let state = TrainState {
                format: state::FORMAT.into(),
                epoch: 0,
                iteration: 0,
                config: cfg.to_yaml(),
                queue: None,
                devices: n_dev,
                history: Vec::new(),
            };
            let model = model_cfg.init_now::<A>(dev0);
            let model = match &opts.pretrained {
                Some(p) => {
                    let (m, summary) = init_from(model, p, dev0)?;
                    pretrained = Some(Event::Pretrained {
                        path: p.clone(),
                        summary,
                    });
                    m
                }
                None => model,
            };
            (model, optim, state, None)
        }
    };
    let config_path = output.join("config.yaml");
    crate::atomic::write_bytes(&config_path, cfg.to_yaml().as_bytes())
        .map_err(|e| TrainError::Data(format!("{}: {e}", config_path.display())))?;
    let mut metrics = Metrics::open(&output)?;
    let mut emit = |e: Event, metrics: &mut Metrics| {
        metrics.write(&e);
        on_event(&e);
    };
    emit(
        Event::Start {
            images: ds.len(),
            devices: n_dev,
            global_batch: lc.batch_size,
            iterations_per_epoch: iters,
            start_epoch: st.epoch,
            epochs: cfg.epochs,
        },
        &mut metrics,
    );
    if let Some(e) = pretrained {
        emit(e, &mut metrics);
    }

    let h = &cfg.model.head;
    let frozen_ids = prototype_ids(&model);
    let last_epoch = opts
        .max_epochs
        .map_or(cfg.epochs, |m| (st.epoch + m).min(cfg.epochs));
    let mut checkpoint = None;
    for epoch in st.epoch..last_epoch {
        if h.queue_length > 0 && epoch >= h.epoch_queue_starts && queues.is_none() {
            let q = Queue::new(h.crops_for_assign.len(), h.queue_length / n_dev, h.feat_dim);
            queues = Some(vec![q; n_dev]);
        }
        for q in queues.iter_mut().flatten() {
            q.in_use = false;
        }
        let loader = Loader::new(
            ds.clone(),
            Pipeline::MultiCrop(mc.clone()),
            &lc,
            epoch as u64,
        );
        let skipped = loader.skipped.clone();
        let mut reported = 0;
        let started = Instant::now();
        let (mut loss_sum, mut steps, mut images) = (0.0, 0usize, 0usize);
        let mut last_lr = 0.0;
        for (step_in_epoch, batch) in DeviceLoader::<A>::new(loader, dev0.clone()).enumerate() {
            let n = batch.samples.len();
            let it = st.iteration;
            let rate = schedule.at(it);
            st.iteration += 1;
            if n < 2 * n_dev {
                emit(
                    Event::Warning {
                        message: format!(
                            "iteration {it}: batch of {n} images after unreadable ones were skipped: step skipped"
                        ),
                    },
                    &mut metrics,
                );
                continue;
            }
            model = step::normalize_prototypes(model);
            let shards = parallel::split_batch(&batch.crops, &d.num_crops, devices);
            let out = parallel::step(
                &model,
                devices,
                &shards,
                &groups,
                &loss_cfg,
                queues.as_deref_mut(),
            );
            let value = out.loss;
            let mut grads = out.grads;
            if !value.is_finite() {
                let images: Vec<String> = batch
                    .samples
                    .iter()
                    .map(|&s| ds.samples[s].path.display().to_string())
                    .collect();
                return Err(dump_non_finite(
                    &model, &model_cfg, &output, it, epoch, &images,
                ));
            }
            let frozen = it < cfg.optimizer_config.freeze_prototypes_iters;
            if frozen {
                for id in &frozen_ids {
                    grads.remove::<A::InnerBackend, 2>(*id);
                }
            }
            model = optim.step(rate, model, grads);
            loss_sum += value;
            steps += 1;
            images += n;
            last_lr = rate;
            let interval = cfg.log_config.interval.max(1);
            if step_in_epoch % interval == 0 || step_in_epoch + 1 == iters {
                emit(
                    Event::Iteration {
                        epoch,
                        iteration: it,
                        step_in_epoch,
                        loss: value,
                        lr: rate,
                        images_per_second: images as f64 / started.elapsed().as_secs_f64(),
                        queue: queues.as_ref().is_some_and(|q| q[0].in_use),
                        prototypes_frozen: frozen,
                    },
                    &mut metrics,
                );
            }
            let new = skipped
                .lock()
                .map(|s| s.since(reported).to_vec())
                .unwrap_or_default();
            for (path, error) in new {
                reported += 1;
                emit(Event::SkippedImage { path, error }, &mut metrics);
            }
        }
        let rec = EpochRecord {
            epoch,
            loss: loss_sum / steps.max(1) as f64,
            lr: last_lr,
            images_per_second: images as f64 / started.elapsed().as_secs_f64(),
        };
        let before = st.history.last().map(|r| r.loss);
        st.history.push(rec.clone());
        st.epoch = epoch + 1;
        emit(Event::Epoch(rec.clone()), &mut metrics);
        for w in diagnostics::after_epoch(cfg, epoch, before, rec.loss) {
            emit(
                Event::Warning {
                    message: w.to_string(),
                },
                &mut metrics,
            );
        }
        if st.epoch % cfg.checkpoint.interval == 0 || st.epoch == last_epoch {
            st.queue = queues
                .as_ref()
                .map(|q| [q[0].rows.len(), q[0].len, q[0].dim]);
            st.devices = n_dev;
            let path = state::save::<A, Swav<A>, _>(
                &output,
                &model,
                &model_cfg,
                &optim,
                queues.as_deref(),
                &st,
                cfg.checkpoint.keep,
            )
            .map_err(TrainError::Checkpoint)?;
            emit(Event::Checkpoint { path: path.clone() }, &mut metrics);
            checkpoint = Some(path);
        }
    }
    Ok(TrainSummary {
        history: st.history,
        checkpoint,
        output,
    })
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
