//! What `swav-train` runs, as library calls: pretraining on the devices the flags, the config
//! and a torchrun/SLURM launch name ([`pretrain`]), its progress on a [`Reporter`]
//! ([`report_event`]), and the step benchmark, Sinkhorn benchmark and step check on a device
//! flag ([`bench_steps`], [`bench_sinkhorn`], [`check_step`]). The binary parses flags and
//! prints what these return.

use super::CommandError;
use crate::backend::Devices;
use crate::collective::Engine;
use crate::dist::Launch;
use crate::report::Reporter;
use crate::train::bench::{self, SinkhornBench, StepBench, StepCheck};
use crate::train::config::{TrainConfig, TrainPlan};
use crate::train::trainer::{self, Event, TrainOptions, TrainSummary};
use burn::backend::Autodiff;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The progress bar of training: epoch, iterations, loss, lr, speed.
const BAR: &str = "epoch {prefix} [{wide_bar}] {pos}/{len} {msg} eta {eta}";

/// What a pretraining run left: its summary and the plot of its curves (when a checkpoint was
/// written).
pub struct Pretrained {
    pub summary: TrainSummary,
    pub plot: Option<PathBuf>,
}

/// The device flag a run uses: `--device` (per process under a launcher), else the
/// launcher's default, else the config's `device`.
fn device_flag(flag: Option<&str>, launch: Option<&Launch>, cfg: &TrainConfig) -> String {
    match (flag, launch) {
        (Some(d), Some(l)) => l.device_flag(d),
        (Some(d), None) => d.to_string(),
        (None, Some(l)) => l.default_device(&cfg.device),
        (None, None) => cfg.device.clone(),
    }
}

/// Train `cfg` (validated here) on the devices `--device` names (or the config's), joining the
/// run of several processes the environment describes (torchrun / SLURM variables, with
/// `--dist-timeout` for the rendezvous), reporting progress on `reporter`; then draw the curves.
pub fn pretrain(
    cfg: &TrainConfig,
    config_path: &Path,
    flags: &RunFlags,
    reporter: &Reporter,
) -> Result<Pretrained, CommandError> {
    let plan = cfg
        .plan()
        .map_err(|e| format!("{}: {e}", config_path.display()))?;
    let launch = Launch::from_env()?;
    let device = device_flag(flags.device.as_deref(), launch.as_ref(), cfg);
    let devices = Devices::parse(&device)?;
    let mut opts = flags.options();
    if let Some(launch) = launch {
        let nccl_id = crate::collective::process_engine(&devices, opts.collective)
            .map_err(|e| format!("--collective {}: {e}", opts.collective))?;
        let session = crate::dist::join_launched(
            launch,
            devices.len(),
            cfg,
            flags.dist_timeout,
            nccl_id,
            "swav-train",
        )?;
        opts.session = Some(session);
    }
    let bar = reporter.start_bar(None, 0, BAR);
    let mut on_event = |e: &Event| report_event(reporter, e);
    let summary = crate::with_backend!(&devices, |B, list| {
        Ok::<_, CommandError>(trainer::train::<Autodiff<B>>(
            &plan,
            &list,
            &opts,
            &mut on_event,
        )?)
    });
    bar.finish_and_clear();
    let summary = summary?;
    let plot = match &summary.checkpoint {
        Some(_) => Some(crate::plot::write_training_plot(&summary.output)?),
        None => None,
    };
    Ok(Pretrained { summary, plot })
}

/// Show a training event: the bar follows iterations; every event is a logfmt line
/// (`swav-train event=epoch epoch=3 loss=4.21 ...`), iterations only when no bar is drawn.
pub fn report_event(reporter: &Reporter, e: &Event) {
    let bar = reporter.bar();
    match e {
        Event::Start {
            iterations_per_epoch,
            ..
        } => bar.set_length(*iterations_per_epoch as u64),
        Event::Iteration {
            epoch,
            step_in_epoch,
            loss,
            lr,
            images_per_second,
            ..
        } => {
            bar.set_prefix(epoch.to_string());
            bar.set_position(*step_in_epoch as u64 + 1);
            bar.set_message(format!(
                "loss {loss:.4} lr {lr:.4} {images_per_second:.1} img/s"
            ));
            if reporter.bar_drawn() {
                return;
            }
        }
        Event::Epoch(_) => bar.reset(),
        _ => {}
    }
    reporter.record(e);
}

/// `swav-train bench-step`: `steps` training steps of `plan` on the first device of
/// `device`, each step's time passed to `on_step(index, seconds)`.
pub fn bench_steps(
    plan: &TrainPlan,
    device: &str,
    steps: usize,
    on_step: impl FnMut(usize, f64),
) -> Result<StepBench, CommandError> {
    let devices = Devices::parse(device)?;
    crate::with_backend!(&devices, |B, list| {
        Ok::<_, CommandError>(bench::steps::<Autodiff<B>>(plan, &list[0], steps, on_step))
    })
}

/// `swav-train bench-sinkhorn`: Sinkhorn-Knopp on `rows` × `prototypes` scores on the first
/// device of `device`, `repeats` timed calls.
pub fn bench_sinkhorn(
    rows: usize,
    prototypes: usize,
    repeats: usize,
    device: &str,
) -> Result<SinkhornBench, CommandError> {
    let devices = Devices::parse(device)?;
    crate::with_backend!(&devices, |B, list| {
        Ok::<_, CommandError>(bench::sinkhorn::<B>(rows, prototypes, repeats, &list[0]))
    })
}

/// `swav-train check-step`: one training step from `weights` against PyTorch's `reference`
/// on the first device of `device`.
pub fn check_step(
    weights: &Path,
    reference: &Path,
    device: &str,
) -> Result<StepCheck, CommandError> {
    let devices = Devices::parse(device)?;
    crate::with_backend!(&devices, |B, list| {
        Ok::<_, CommandError>(bench::check::<Autodiff<B>>(weights, reference, &list[0])?)
    })
}

/// What [`pretrain`] needs besides the config, as the flags give it.
pub struct RunFlags {
    pub device: Option<String>,
    pub dist_timeout: Duration,
    pub resume: bool,
    pub workers: Option<usize>,
    pub max_epochs: Option<usize>,
    pub pretrained: Option<PathBuf>,
    pub collective: Engine,
}

impl RunFlags {
    /// The trainer's options these flags give (no session yet: [`pretrain`] joins it).
    pub fn options(&self) -> TrainOptions {
        TrainOptions {
            resume: self.resume,
            workers: self.workers,
            max_epochs: self.max_epochs,
            pretrained: self.pretrained.clone(),
            collective: self.collective,
            ..Default::default()
        }
    }
}
