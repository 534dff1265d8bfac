//! `swav-train`: SwAV pretraining (`swav-train -c configs/swav/*.yaml [-o key=value]...`) and
//! its data tools: `swav-train bench-data --data DIR --workers N` measures the image pipeline
//! alone; `swav-train make-synthetic OUT` writes the built-in synthetic image set.

use burn::backend::Autodiff;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use swav::backend::Devices;
use swav::cli::{at_least_one, non_negative};
use swav::collective::Engine;
use swav::data::{bench, dataset::Dataset, loader, multicrop::MultiCrop, synthetic};
use swav::dist::Launch;
use swav::train::config::TrainConfig;
use swav::train::trainer::{self, Event, TrainOptions};

#[derive(Parser)]
#[command(
    version,
    after_help = "Exit codes: 0 success; 1 a check that ran and failed (`check-step` outside its tolerances); 2 an error (bad config or data, a failed rank, a non-finite loss, I/O), with one line on stderr.",
    about = "SwAV pretraining and its data tools",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Training config (configs/swav/*.yaml, PASSL's keys).
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Override a config value: `-o model.head.epsilon=0.03` (repeatable; the key must exist).
    #[arg(short = 'o', long = "override")]
    overrides: Vec<String>,
    /// Continue from the output folder's latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Device(s): cpu, cuda:N, or a list for data parallelism (cuda:0,cuda:1) [default: the
    /// config's `device`; under torchrun or SLURM, `cuda:LOCAL_RANK` for a CUDA config].
    #[arg(long, visible_alias = "devices")]
    device: Option<String>,
    /// Loader threads [default: the config's num_workers, 0 = all cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Collective engine of several devices: auto (NCCL for CUDA devices when its library
    /// loads, burn-collective otherwise), nccl, or burn-collective.
    #[arg(long, default_value = "auto", value_parser = parse_engine)]
    collective: Engine,
    /// Seconds the rendezvous of a multi-process run (torchrun / SLURM variables) and each of its
    /// collectives may wait for the other processes before the run ends with an error.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    dist_timeout: u64,
    /// Stop after this many epochs of this run (a checkpoint is written; --resume continues).
    #[arg(long, value_parser = at_least_one)]
    max_epochs: Option<usize>,
    /// Start from these weights (any format swav-convert reads, or a Burn record); a backbone
    /// alone leaves the head at its initialisation.
    #[arg(long, conflicts_with = "resume")]
    pretrained: Option<PathBuf>,
    /// Print the resolved config (every key, defaults included) and exit.
    #[arg(long)]
    print_config: bool,
    /// No progress bar and no event lines (errors still go to stderr).
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the multi-crop loader alone over a folder and print images/s (size your hosts).
    BenchData {
        /// Image folder (ImageFolder or flat); default: the synthetic set, made in a temp folder.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Worker threads [default: all cores].
        #[arg(long, value_parser = at_least_one)]
        workers: Option<usize>,
        /// Images per batch.
        #[arg(long, default_value_t = 32, value_parser = at_least_one)]
        batch_size: usize,
        /// Batches to time (after one warm-up batch).
        #[arg(long, default_value_t = 10, value_parser = at_least_one)]
        batches: usize,
        /// Crop sides per group.
        #[arg(long, value_delimiter = ',', default_value = "224,96")]
        size_crops: Vec<usize>,
        /// Crops per group.
        #[arg(long, value_delimiter = ',', default_value = "2,6")]
        num_crops: Vec<usize>,
        /// Smallest area fraction per group.
        #[arg(long, value_delimiter = ',', default_value = "0.14,0.05")]
        min_scale_crops: Vec<f64>,
        /// Largest area fraction per group.
        #[arg(long, value_delimiter = ',', default_value = "1,0.14")]
        max_scale_crops: Vec<f64>,
        /// Decode JPEGs at full size even when crops would allow a DCT-scaled decode.
        #[arg(long)]
        no_dct_scaling: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Time fixed-shape training steps of a config's model on random crops (images/s).
    BenchStep {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
        #[arg(short = 'o', long = "override")]
        overrides: Vec<String>,
        /// Timed steps (after one warm-up step).
        #[arg(long, default_value_t = 10, value_parser = at_least_one)]
        steps: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// One step on a reference file's weights and crops (made by PyTorch), compared with its
    /// loss and codes (e.g. tests/fixtures/swav_step_tiny.safetensors on a GPU).
    CheckStep {
        /// The weights the reference used (e.g. tests/fixtures/fair_swav_tiny.pth.tar).
        #[arg(long)]
        weights: PathBuf,
        /// safetensors with crops.N, loss, q0, q1.
        #[arg(long)]
        reference: PathBuf,
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Largest relative difference of the loss that passes (f32 against PyTorch's f32:
        /// 4.4e-5 on the CPU, 2.2e-5 on an H200).
        #[arg(long, default_value_t = 1e-4, value_parser = non_negative)]
        loss_tolerance: f64,
        /// Largest absolute difference of a code that passes (1.2e-3 on the CPU).
        #[arg(long, default_value_t = 5e-3, value_parser = non_negative)]
        codes_tolerance: f64,
    },
    /// Time Sinkhorn-Knopp on a device against the f64 host code (ε 0.05, 3 iterations), at
    /// SwAV's sizes: a batch of 64 rows and a bs256 recipe with its queue (4096 rows), 3000
    /// prototypes.
    BenchSinkhorn {
        /// Row counts to time.
        #[arg(long, value_delimiter = ',', default_value = "64,4096", value_parser = at_least_one)]
        rows: Vec<usize>,
        #[arg(long, default_value_t = 3000, value_parser = at_least_one)]
        prototypes: usize,
        /// Timed calls per size (after one warm-up call).
        #[arg(long, default_value_t = 3, value_parser = at_least_one)]
        repeats: usize,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Draw loss and learning-rate curves of a (running or finished) training's output folder
    /// into OUTPUT/training.png.
    Plot {
        /// The training's output_dir.
        output: PathBuf,
    },
    /// Write the built-in synthetic image set (ImageFolder with train/ and val/).
    MakeSynthetic {
        /// Output folder.
        out: PathBuf,
        /// Image side (8 to 65535 pixels).
        #[arg(long, default_value_t = 64,
              value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(8..=65535))]
        size: usize,
        /// Training images per class.
        #[arg(long, default_value_t = 100, value_parser = at_least_one)]
        train_per_class: usize,
        /// Validation images per class.
        #[arg(long, default_value_t = 20)]
        val_per_class: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    match run(swav::cli::parse("swav-train")) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swav-train: error: {e}");
            ExitCode::from(swav::cli::EXIT_ERROR)
        }
    }
}

/// Event as one logfmt line: `swav-train event=epoch epoch=3 loss=4.21 ...`.
fn logfmt(e: &Event) -> String {
    let mut line = String::from("swav-train");
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(e) {
        for (k, v) in m {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => match n.as_f64() {
                    Some(f) if n.is_f64() => format!("{f:.6}"),
                    _ => n.to_string(),
                },
                other => other.to_string(),
            };
            line.push_str(&swav::log::field(&k, &v));
        }
    }
    line
}

fn parse_engine(s: &str) -> Result<Engine, String> {
    s.parse()
}

fn pretrain(a: TrainArgs) -> Result<(), String> {
    let path = a
        .config
        .ok_or("a config is needed: swav-train -c configs/swav/swav_tiny_cpu.yaml (see --help)")?;
    let cfg = TrainConfig::load(&path, &a.overrides).map_err(|e| e.to_string())?;
    if a.print_config {
        print!("{}", cfg.to_yaml());
        return Ok(());
    }
    cfg.validate()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let launch = Launch::from_env().map_err(|e| e.to_string())?;
    let device = match (&a.device, &launch) {
        (Some(d), Some(l)) => l.device_flag(d),
        (Some(d), None) => d.clone(),
        (None, Some(l)) => l.default_device(&cfg.device),
        (None, None) => cfg.device.clone(),
    };
    let devices = Devices::parse(&device)?;
    let session = match launch {
        None => None,
        Some(launch) => {
            let nccl_id = swav::collective::process_engine(&devices, a.collective)
                .map_err(|e| format!("--collective {}: {e}", a.collective))?;
            let timeout = std::time::Duration::from_secs(a.dist_timeout);
            Some(
                swav::dist::join_launched(
                    launch,
                    devices.len(),
                    &cfg,
                    timeout,
                    nccl_id,
                    "swav-train",
                )
                .map_err(|e| e.to_string())?,
            )
        }
    };
    let opts = TrainOptions {
        session,
        resume: a.resume,
        workers: a.workers,
        max_epochs: a.max_epochs,
        pretrained: a.pretrained,
        collective: a.collective,
        ..Default::default()
    };
    let bar = if a.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("epoch {prefix} [{wide_bar}] {pos}/{len} {msg} eta {eta}")
            .expect("valid template"),
    );
    let quiet = a.quiet;
    let mut on_event = |e: &Event| {
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
                if !bar.is_hidden() {
                    return;
                }
            }
            Event::Epoch(_) => bar.reset(),
            _ => {}
        }
        if !quiet {
            let line = logfmt(e);
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
    };
    let summary = swav::with_backend!(&devices, |B, list| {
        trainer::train::<Autodiff<B>>(&cfg, &list, &opts, &mut on_event).map_err(|e| e.to_string())
    })?;
    bar.finish_and_clear();
    if let Some(c) = &summary.checkpoint {
        let plot = swav::plot::write_training_plot(&summary.output)?;
        println!(
            "trained {} epochs; checkpoint {}; plot {}\nbackbone: swav-extract {} --remove-prefix -o backbone.pdparams (or .pth, .safetensors)",
            summary.history.len(),
            c.display(),
            plot.display(),
            summary.output.display()
        );
    }
    Ok(())
}

fn run(args: Args) -> Result<(), String> {
    let Some(command) = args.command else {
        return pretrain(args.train);
    };
    match command {
        Command::BenchStep {
            config,
            overrides,
            steps,
            device,
        } => {
            let cfg = TrainConfig::load(&config, &overrides).map_err(|e| e.to_string())?;
            cfg.validate()
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let devices = Devices::parse(&device)?;
            let r = swav::with_backend!(&devices, |B, list| {
                Ok::<_, String>(swav::train::bench::steps::<Autodiff<B>>(
                    &cfg,
                    &list[0],
                    steps,
                    |i, seconds| {
                        eprintln!(
                            "swav-train event=bench_step{}{}{}",
                            swav::log::field("step", &i.to_string()),
                            swav::log::field("warmup", &(i == 0).to_string()),
                            swav::log::field("seconds", &format!("{seconds:.3}"))
                        )
                    },
                ))
            })?;
            println!("{}", serde_json::to_string(&r).expect("serialisable"));
            Ok(())
        }
        Command::BenchSinkhorn {
            rows,
            prototypes,
            repeats,
            device,
        } => {
            let devices = Devices::parse(&device)?;
            for r in rows {
                let b = swav::with_backend!(&devices, |B, list| {
                    Ok::<_, String>(swav::train::bench::sinkhorn::<B>(
                        r, prototypes, repeats, &list[0],
                    ))
                })?;
                println!("{}", serde_json::to_string(&b).expect("serialisable"));
            }
            Ok(())
        }
        Command::CheckStep {
            weights,
            reference,
            device,
            loss_tolerance,
            codes_tolerance,
        } => {
            let devices = Devices::parse(&device)?;
            let r = swav::with_backend!(&devices, |B, list| {
                swav::train::bench::check::<Autodiff<B>>(&weights, &reference, &list[0])
            })?;
            println!("{}", serde_json::to_string(&r).expect("serialisable"));
            let codes = r.codes_max_abs.iter().copied().fold(0.0, f64::max);
            if !(r.loss_relative <= loss_tolerance && codes <= codes_tolerance) {
                // A check that ran and failed: exit code 1.
                eprintln!(
                    "swav-train: check failed: loss differs by {:.2e} (tolerance {loss_tolerance:.0e}), codes by {codes:.2e} (tolerance {codes_tolerance:.0e})",
                    r.loss_relative
                );
                std::process::exit(swav::cli::EXIT_CHECK_FAILED.into());
            }
            Ok(())
        }
        Command::Plot { output } => {
            let p = swav::plot::write_training_plot(&output)?;
            println!("wrote {}", p.display());
            Ok(())
        }
        Command::MakeSynthetic {
            out,
            size,
            train_per_class,
            val_per_class,
            seed,
        } => {
            let cfg = synthetic::SyntheticConfig {
                size,
                train_per_class,
                val_per_class,
                seed,
                ..Default::default()
            };
            synthetic::write(&out, &cfg).map_err(|e| format!("{}: {e}", out.display()))?;
            println!(
                "wrote {} ({} classes, {train_per_class} train + {val_per_class} val images each)",
                out.display(),
                synthetic::CLASSES.len()
            );
            Ok(())
        }
        Command::BenchData {
            data,
            workers,
            batch_size,
            batches,
            size_crops,
            num_crops,
            min_scale_crops,
            max_scale_crops,
            no_dct_scaling,
            json,
        } => {
            let _tmp;
            let root = match data {
                Some(d) => d,
                None => {
                    _tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
                    let root = _tmp.path().join("synthetic");
                    synthetic::write(
                        &root,
                        &synthetic::SyntheticConfig {
                            size: 256,
                            train_per_class: 20,
                            val_per_class: 0,
                            ..Default::default()
                        },
                    )
                    .map_err(|e| e.to_string())?;
                    root.join("train")
                }
            };
            let ds = Arc::new(Dataset::open(&root).map_err(|e| e.to_string())?);
            let mc = MultiCrop {
                size_crops,
                num_crops,
                min_scale_crops,
                max_scale_crops,
                dct_scaling: !no_dct_scaling,
                ..Default::default()
            };
            mc.validate()?;
            let mut cfg = loader::LoaderConfig {
                batch_size,
                ..Default::default()
            };
            if let Some(w) = workers {
                cfg.workers = w.max(1);
            }
            let r = bench::run(
                ds.clone(),
                loader::Pipeline::MultiCrop(mc.clone()),
                &cfg,
                batches,
            )
            .map_err(|e| format!("{}: {e}", root.display()))?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("serializable"));
            } else {
                println!(
                    "{} images ({} crops each: {:?}x{:?}) in {:.2} s: {:.1} images/s with {} workers ({:.1} per worker, {:?}){}",
                    r.images, r.crops_per_image, mc.num_crops, mc.size_crops, r.seconds, r.images_per_second, r.workers,
                    r.images_per_second_per_worker, r.simd,
                    if r.skipped > 0 { format!(", {} unreadable images skipped", r.skipped) } else { String::new() }
                );
            }
            Ok(())
        }
    }
}
