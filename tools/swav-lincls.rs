//! `swav-lincls`: evaluation of a frozen SwAV backbone: `train` (linear evaluation, PASSL's
//! `swav_clas_r50.yaml` or flags), `evaluate` (a trained classifier), `knn` (weighted k-NN,
//! k=20, T=0.07) and `features` (of preprocessed tensors or an image folder). Flags only: the
//! work is `swav::commands::lincls`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use swav::cli::{at_least_one, non_negative_f32, positive, positive_f32};
use swav::commands::lincls::{
    self as cmd, Context, EvalData, EvalFlags, LinearFlags, LinearOutcome,
};
use swav::commands::CommandError;
use swav::eval::classifier::LinearEvalConfig;
use swav::eval::linear_eval::LinearEvalRequest;
use swav::report::{json, Reporter};

#[derive(Parser)]
#[command(
    version,
    after_help = "Exit codes: 0 success; 2 an error (bad input, unreadable weights or data, I/O), with one line on stderr.",
    about = "Evaluate a frozen SwAV backbone: linear evaluation, k-NN, features"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
    /// Device, or devices to split the work across: cpu, cuda:N, or a list (cuda:0,cuda:1;
    /// cpu,cpu for two CPU ranks). Under torchrun or SLURM variables, `cuda` alone is this
    /// process's GPU (cuda:LOCAL_RANK). CUDA needs a build with --features cuda.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// Seconds the rendezvous of a multi-process `train` (torchrun / SLURM variables) and each
    /// of its collectives may wait for the other processes before the run ends with an error.
    #[arg(long, global = true, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    dist_timeout: u64,
}

#[derive(clap::Args)]
struct Common {
    /// Weights: any checkpoint swav-convert reads, a Burn record (.mpk), or a registry name
    /// (`swav-fetch list`: fetched into the cache first unless offline). Optional when --load
    /// holds the backbone too.
    #[arg(long)]
    pretrained: Option<PathBuf>,
    /// No weights: a randomly initialised backbone of this depth (18, 34, 50, 101, 152), the
    /// baseline self-supervised features must beat.
    #[arg(long, value_name = "DEPTH", conflicts_with = "pretrained")]
    random_init: Option<usize>,
    /// Width of --random-init: channels of the stem (64 for the standard networks).
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    width: usize,
    /// Images per forward pass on each device.
    #[arg(long, default_value_t = 64, value_parser = at_least_one)]
    batch_size: usize,
    /// Load even when the model lacks weights in the file (they keep their initial values).
    #[arg(long)]
    partial: bool,
    /// Worker threads for image decoding [default: all cores].
    #[arg(long, value_parser = at_least_one)]
    workers: Option<usize>,
    /// Resize (shorter side) before the centre crop.
    #[arg(long, default_value_t = LinearEvalConfig::default().val_resize, value_parser = at_least_one)]
    resize: usize,
    /// Centre crop side.
    #[arg(long, default_value_t = LinearEvalConfig::default().val_size, value_parser = at_least_one)]
    size: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Write features (and embedding, scores) of preprocessed tensors or of an image folder.
    Features {
        #[command(flatten)]
        common: Common,
        /// safetensors file with `images` [N, 3, H, W], already normalised.
        #[arg(long, conflicts_with = "data", required_unless_present = "data")]
        tensors: Option<PathBuf>,
        /// Image folder (ImageFolder or flat).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Output safetensors file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Train a linear classifier on the frozen backbone (DATA/train), evaluating on DATA/val
    /// every epoch; metrics as JSON lines; best.safetensors and last.safetensors saved.
    Train {
        #[command(flatten)]
        common: Common,
        /// Linear-evaluation config with PASSL's keys (configs/swav/swav_clas_r50.yaml); the
        /// flags below override it.
        #[arg(short = 'c', long = "config")]
        config: Option<PathBuf>,
        /// Override a config value: `-o epochs=30` (repeatable; the key must exist).
        #[arg(short = 'o', long = "override", requires = "config")]
        overrides: Vec<String>,
        /// Folder with train/ and val/ ImageFolders [default: the config's dataroots].
        #[arg(long, required_unless_present = "config")]
        data: Option<PathBuf>,
        /// [default: 100]
        #[arg(long, value_parser = at_least_one)]
        epochs: Option<usize>,
        /// Base learning rate (per-iteration cosine to 0) [default: 0.3].
        #[arg(long, value_parser = positive)]
        lr: Option<f64>,
        /// [default: 1e-6]
        #[arg(long, value_parser = non_negative_f32)]
        weight_decay: Option<f32>,
        /// RandomResizedCrop side for training [default: 224].
        #[arg(long, value_parser = at_least_one)]
        train_size: Option<usize>,
        /// [default: 31]
        #[arg(long)]
        seed: Option<u64>,
        /// Where best.safetensors, last.safetensors and metrics.jsonl go [default: the
        /// config's output_dir, else lincls-out].
        #[arg(long)]
        output_dir: Option<PathBuf>,
        /// Compute the features once, without augmentation (evaluation transform for train and
        /// val), and train the classifier on them: much faster, slightly different from PASSL.
        #[arg(long)]
        cache_features: bool,
        /// A trained classifier, with --evaluate-only (PASSL's flags): ours (best.safetensors),
        /// facebookresearch's eval_linear checkpoint, torchvision's fc, or PASSL's classification
        /// model, whose backbone is used when --pretrained is not given; or a registry name.
        #[arg(long, requires = "evaluate_only")]
        load: Option<PathBuf>,
        /// Only evaluate --load on the validation set (as `evaluate`, with the config's transforms).
        #[arg(long, requires = "load")]
        evaluate_only: bool,
    },
    /// Evaluate a trained classifier on DATA/val, or on preprocessed tensors with labels.
    Evaluate {
        #[command(flatten)]
        common: Common,
        /// Folder with a val/ ImageFolder.
        #[arg(long, conflicts_with = "tensors", required_unless_present = "tensors")]
        data: Option<PathBuf>,
        /// safetensors file with `images` `[N, 3, H, W]` (already normalised) and `labels` `[N]`.
        #[arg(long)]
        tensors: Option<PathBuf>,
        /// The classifier: ours (best.safetensors), facebookresearch's eval_linear checkpoint,
        /// torchvision's fc, or PASSL's classification model, whose backbone is used when
        /// --pretrained is not given; or a registry name.
        #[arg(long)]
        load: PathBuf,
    },
    /// Weighted k-NN accuracy on L2-normalised features: DATA/train against DATA/val.
    Knn {
        #[command(flatten)]
        common: Common,
        /// Folder with train/ and val/ ImageFolders.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 20, value_parser = at_least_one)]
        k: usize,
        #[arg(long, default_value_t = 0.07, value_parser = positive_f32)]
        temperature: f32,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    swav::cli::finish("swav-lincls", run(swav::cli::parse("swav-lincls")))
}

impl Common {
    fn flags(self) -> EvalFlags {
        EvalFlags {
            pretrained: self.pretrained,
            random_init: self.random_init,
            width: self.width,
            partial: self.partial,
            batch_size: self.batch_size,
            workers: self.workers,
            resize: self.resize,
            size: self.size,
        }
    }
}

fn run(args: Args) -> Result<ExitCode, CommandError> {
    // Only `train` without --cache-features runs across the processes of a launch.
    let single = match &args.command {
        Command::Train {
            cache_features: true,
            ..
        } => Some("train --cache-features"),
        Command::Train { .. } => None,
        Command::Features { .. } => Some("features"),
        Command::Evaluate { .. } => Some("evaluate"),
        Command::Knn { .. } => Some("knn"),
    };
    let ctx = Context::new(&args.device, Duration::from_secs(args.dist_timeout), single)?;
    let reporter = Reporter::new("swav-lincls", false);
    match args.command {
        Command::Features {
            common,
            tensors,
            data,
            output,
        } => {
            let flags = common.flags();
            let t = tensors.as_deref();
            println!(
                "{}",
                cmd::features(&ctx, &flags, t, data.as_deref(), &output, &reporter)?
            );
        }
        Command::Evaluate {
            common,
            data,
            tensors,
            load,
        } => {
            let data = match (&data, &tensors) {
                (Some(d), _) => EvalData::Folder(d),
                (None, Some(t)) => EvalData::Tensors(t),
                (None, None) => unreachable!("clap requires --data or --tensors"),
            };
            println!(
                "{}",
                json(&cmd::evaluate(
                    &ctx,
                    &common.flags(),
                    &load,
                    data,
                    &reporter
                )?)
            );
        }
        Command::Knn {
            common,
            data,
            k,
            temperature,
            json: as_json,
        } => {
            let r = cmd::knn(&ctx, &common.flags(), &data, k, temperature, &reporter)?;
            println!("{}", if as_json { json(&r) } else { r.describe() });
        }
        Command::Train {
            common,
            config,
            overrides,
            data,
            epochs,
            lr,
            weight_decay,
            train_size,
            seed,
            output_dir,
            cache_features,
            load,
            evaluate_only,
        } => {
            let request = LinearEvalRequest {
                config,
                overrides,
                data,
                output_dir,
                epochs,
                lr,
                weight_decay,
                train_size,
                seed,
            };
            let linear = LinearFlags {
                request,
                cache_features,
                classifier: load,
                evaluate_only,
            };
            let flags = common.flags();
            let on_epoch = &mut |m: &_| println!("{}", json(m));
            match cmd::linear(ctx, &flags, &linear, &reporter, on_epoch)? {
                Some(LinearOutcome::Evaluated(acc)) => println!("{}", json(&acc)),
                Some(LinearOutcome::Trained(s)) => eprintln!(
                    "swav-lincls event=done best_top1={:.2} output={} plot={}",
                    s.best_top1,
                    s.output_dir.display(),
                    s.plot.display()
                ),
                None => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
