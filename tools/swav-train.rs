//! `swav-train`: SwAV pretraining (`swav-train -c configs/swav/*.yaml [-o key=value]...`) and
//! its data tools: `swav-train bench-data --data DIR --workers N` measures the image pipeline
//! alone; `swav-train make-synthetic OUT` writes the built-in synthetic image set. Flags only:
//! the work is `swav::commands::train` and `swav::data`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use swav::cli::{at_least_one, non_negative, EXIT_CHECK_FAILED};
use swav::collective::Engine;
use swav::commands::train::{self as cmd, RunFlags};
use swav::commands::CommandError;
use swav::data::{bench, loader::LoaderConfig, multicrop::MultiCrop, synthetic};
use swav::report::{field, json, Reporter};
use swav::train::config::TrainConfig;

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
    #[arg(long, default_value = "auto", value_parser = str::parse::<Engine>)]
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
        #[arg(long, value_delimiter = ',', default_values_t = MultiCrop::default().size_crops)]
        size_crops: Vec<usize>,
        /// Crops per group.
        #[arg(long, value_delimiter = ',', default_values_t = MultiCrop::default().num_crops)]
        num_crops: Vec<usize>,
        /// Smallest area fraction per group.
        #[arg(long, value_delimiter = ',', default_values_t = MultiCrop::default().min_scale_crops)]
        min_scale_crops: Vec<f64>,
        /// Largest area fraction per group.
        #[arg(long, value_delimiter = ',', default_values_t = MultiCrop::default().max_scale_crops)]
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
    swav::cli::finish("swav-train", run(swav::cli::parse("swav-train")))
}

fn pretrain(a: TrainArgs) -> Result<ExitCode, CommandError> {
    let path = a
        .config
        .ok_or("a config is needed: swav-train -c configs/swav/swav_tiny_cpu.yaml (see --help)")?;
    let cfg = TrainConfig::load(&path, &a.overrides)?;
    if a.print_config {
        print!("{}", cfg.to_yaml());
        return Ok(ExitCode::SUCCESS);
    }
    let flags = RunFlags {
        device: a.device,
        dist_timeout: Duration::from_secs(a.dist_timeout),
        resume: a.resume,
        workers: a.workers,
        max_epochs: a.max_epochs,
        pretrained: a.pretrained,
        collective: a.collective,
    };
    let done = cmd::pretrain(&cfg, &path, &flags, &Reporter::new("swav-train", a.quiet))?;
    if let (Some(c), Some(plot)) = (&done.summary.checkpoint, &done.plot) {
        println!(
            "trained {} epochs; checkpoint {}; plot {}\nbackbone: swav-extract {} --remove-prefix -o backbone.pdparams (or .pth, .safetensors)",
            done.summary.history.len(),
            c.display(),
            plot.display(),
            done.summary.output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run(args: Args) -> Result<ExitCode, CommandError> {
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
            let cfg = TrainConfig::load(&config, &overrides)?;
            let plan = cfg
                .plan()
                .map_err(|e| format!("{}: {e}", config.display()))?;
            let r = cmd::bench_steps(&plan, &device, steps, |i, seconds| {
                eprintln!(
                    "swav-train event=bench_step{}{}{}",
                    field("step", &i.to_string()),
                    field("warmup", &(i == 0).to_string()),
                    field("seconds", &format!("{seconds:.3}"))
                )
            })?;
            println!("{}", json(&r));
        }
        Command::BenchSinkhorn {
            rows,
            prototypes,
            repeats,
            device,
        } => {
            for r in rows {
                println!(
                    "{}",
                    json(&cmd::bench_sinkhorn(r, prototypes, repeats, &device)?)
                );
            }
        }
        Command::CheckStep {
            weights,
            reference,
            device,
            loss_tolerance,
            codes_tolerance,
        } => {
            let r = cmd::check_step(&weights, &reference, &device)?;
            println!("{}", json(&r));
            if let Err(why) = r.within(loss_tolerance, codes_tolerance) {
                eprintln!("swav-train: check failed: {why}");
                return Ok(ExitCode::from(EXIT_CHECK_FAILED));
            }
        }
        Command::Plot { output } => {
            let p = swav::plot::write_training_plot(&output)?;
            println!("wrote {}", p.display());
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
            json: as_json,
        } => {
            let mc = MultiCrop {
                size_crops,
                num_crops,
                min_scale_crops,
                max_scale_crops,
                dct_scaling: !no_dct_scaling,
                ..Default::default()
            };
            let mut loader = LoaderConfig {
                batch_size,
                ..Default::default()
            };
            if let Some(w) = workers {
                loader.workers = w;
            }
            let r = bench::run_folder(data.as_deref(), &mc, &loader, batches)?;
            println!("{}", if as_json { json(&r) } else { r.describe(&mc) });
        }
    }
    Ok(ExitCode::SUCCESS)
}
