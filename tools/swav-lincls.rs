//! `swav-lincls`: evaluation of a frozen SwAV backbone: `train` (linear evaluation, PASSL's
//! `swav_clas_r50.yaml` or flags), `evaluate` (a trained classifier), `knn` (weighted k-NN,
//! k=20, T=0.07) and `features` (of preprocessed tensors or an image folder).

use burn::tensor::backend::Backend;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use swav::backend::Devices;
use swav::cli::{at_least_one, non_negative_f32, positive, positive_f32};
use swav::data::dataset::Dataset;
use swav::dist::{Launch, Session};
use swav::eval::lincls::{self, image_folder, LinclsPlan, LinclsRequest};
use swav::eval::linear::{self, LinearEvalConfig};
use swav::eval::Frozen;
use swav::model::load;
use swav::model::resnet::ResNetConfig;
use swav::model::swav::{Swav, SwavConfig};

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
    #[arg(long, default_value_t = 256, value_parser = at_least_one)]
    resize: usize,
    /// Centre crop side.
    #[arg(long, default_value_t = 224, value_parser = at_least_one)]
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
        /// safetensors file with `images` [N, 3, H, W] (already normalised) and `labels` [N].
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
    let args: Args = swav::cli::parse("swav-lincls");
    let result = launched(&args).and_then(|launch| {
        let device = launch
            .as_ref()
            .map_or_else(|| args.device.clone(), |l| l.device_flag(&args.device));
        let devices = Devices::parse(&device)?;
        swav::with_backend!(&devices, |B, list| run::<B>(args, list, launch))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swav-lincls: error: {e}");
            ExitCode::from(swav::cli::EXIT_ERROR)
        }
    }
}

/// The backbone to evaluate (loaded weights, or a random initialisation) on the first of
/// `devices`, to be run on all of them. Without --pretrained, the classifier file `load`
/// (already resolved) may hold the backbone (PASSL's classification model).
fn backbone<B: Backend>(
    c: &Common,
    load: Option<&Path>,
    devices: Vec<B::Device>,
) -> Result<Frozen<B>, String> {
    let (model, config) = backbone_on::<B>(c, load, &devices[0])?;
    Ok(Frozen::new(model, config, devices))
}

/// A weights argument as a file: itself, or a registry artifact from the cache.
fn weights(arg: &Path) -> Result<PathBuf, String> {
    swav::fetch::resolve_weights(arg).map_err(|e| format!("{}: {e}", arg.display()))
}

fn backbone_on<B: Backend>(
    c: &Common,
    load: Option<&Path>,
    device: &B::Device,
) -> Result<(Swav<B>, SwavConfig), String> {
    let pretrained = match (&c.pretrained, c.random_init, load) {
        (Some(p), _, _) => Some(weights(p)?),
        (None, None, Some(l)) => Some(l.to_path_buf()),
        _ => None,
    };
    match (pretrained, c.random_init) {
        (Some(p), _) => {
            let (model, config, report) =
                load::load::<B>(&p, device, c.partial).map_err(|e| e.to_string())?;
            eprintln!(
                "swav-lincls event=loaded weights={} {}",
                p.display(),
                report.summary()
            );
            Ok((model, config))
        }
        (None, Some(depth)) => {
            let mut backbone = ResNetConfig::depth(depth, 1)
                .ok_or_else(|| format!("--random-init {depth}: use 18, 34, 50, 101 or 152"))?;
            backbone.base_width = c.width;
            let config = SwavConfig {
                backbone,
                head: None,
                prototypes: Vec::new(),
            };
            // Seeded, so that training and a later evaluation see the same random network.
            <B as burn::tensor::backend::Backend>::seed(device, 0);
            eprintln!(
                "swav-lincls event=random-init depth={depth} width={}",
                c.width
            );
            Ok((config.init_now::<B>(device), config))
        }
        (None, None) => Err(
            "give --pretrained WEIGHTS, --random-init DEPTH, or --load with a file that holds the backbone"
                .into(),
        ),
    }
}

/// Evaluation settings from the flags every subcommand has (no config file): batch size,
/// workers, resize and crop; normalisation and the rest at their defaults.
fn eval_config(c: &Common) -> LinearEvalConfig {
    let d = LinearEvalConfig::default();
    LinearEvalConfig {
        batch_size: c.batch_size,
        val_resize: c.resize,
        val_size: c.size,
        workers: c.workers.unwrap_or(d.workers),
        ..d
    }
}

/// The launch this process is part of (torchrun / SLURM variables), if any. Only `train` (the
/// linear evaluation, with or without --evaluate-only) runs across processes; the others would
/// run whole in every process and write the same files.
fn launched(args: &Args) -> Result<Option<Launch>, String> {
    let Some(l) = Launch::from_env().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let name = match &args.command {
        Command::Train {
            cache_features: true,
            ..
        } => "train --cache-features",
        Command::Train { .. } => return Ok(Some(l)),
        Command::Features { .. } => "features",
        Command::Evaluate { .. } => "evaluate",
        Command::Knn { .. } => "knn",
    };
    Err(format!(
        "started as process {} of {} ({} variables): `swav-lincls {name}` runs in one process \
         (only `train` without --cache-features runs across processes); give it several \
         devices with --device instead",
        l.rank, l.world, l.launcher
    ))
}

/// This process's part of a multi-process `train`: the settings every process must share are
/// compared at the rendezvous (the linear-evaluation config but its workers, the data's size,
/// the weights, the classifier of --evaluate-only, the output).
fn join<B: Backend>(
    launch: Launch,
    timeout: u64,
    frozen: &Frozen<B>,
    plan: &LinclsPlan,
    common: &Common,
    classifier: Option<&Path>,
) -> Result<Arc<Session>, String> {
    let mut linear = serde_json::to_value(&plan.cfg).map_err(|e| e.to_string())?;
    if let Some(m) = linear.as_object_mut() {
        m.remove("workers");
    }
    let settings = serde_json::json!({
        "linear": linear,
        "train_images": plan.train.len(),
        "val_images": plan.val.len(),
        "classes": plan.train.classes,
        "output_dir": plan.output_dir,
        "pretrained": common.pretrained,
        "random_init": common.random_init,
        "width": common.width,
        "classifier": classifier,
    });
    let timeout = std::time::Duration::from_secs(timeout);
    swav::dist::join_launched(
        launch,
        frozen.devices.len(),
        &settings,
        timeout,
        None,
        "swav-lincls",
    )
    .map_err(|e| e.to_string())
}

fn run<B: Backend>(
    args: Args,
    devices: Vec<B::Device>,
    launch: Option<Launch>,
) -> Result<(), String> {
    match args.command {
        Command::Features {
            common,
            tensors,
            data,
            output,
        } => {
            let frozen = backbone::<B>(&common, None, devices)?;
            if let Some(t) = tensors {
                let images = swav::eval::read_images(&t)?;
                let out = frozen
                    .outputs(&images, common.batch_size)
                    .map_err(|e| format!("{}: {e}", t.display()))?;
                swav::eval::write_outputs(&output, &out)?;
                println!(
                    "wrote features {:?}, embedding {:?}, {} score tensor(s) to {}",
                    out.features.dims(),
                    out.embedding.dims(),
                    out.scores.len(),
                    output.display()
                );
            } else {
                let root = data.expect("required by clap");
                let ds = Arc::new(Dataset::open(&root).map_err(|e| e.to_string())?);
                let cfg = eval_config(&common);
                let f = frozen.dataset_features(
                    ds,
                    cfg.val_transform(),
                    cfg.mean,
                    cfg.std,
                    &lincls::loader_config(&cfg),
                )?;
                for s in &f.skipped {
                    eprintln!("swav-lincls event=skipped image={s:?}");
                }
                swav::eval::write_features(&output, &f)?;
                println!(
                    "wrote {} features of dimension {} to {}",
                    f.labels.len(),
                    f.dim,
                    output.display()
                );
            }
            Ok(())
        }
        Command::Train {
            common,
            config: config_file,
            overrides,
            data,
            epochs,
            lr,
            weight_decay,
            train_size,
            seed,
            output_dir,
            cache_features,
            load: cls,
            evaluate_only,
        } => {
            let cls = cls.as_deref().map(weights).transpose()?;
            let frozen = backbone::<B>(&common, cls.as_deref(), devices)?;
            let feature_dim = frozen.config.backbone.feature_dim();
            let request = LinclsRequest {
                config: config_file,
                overrides,
                data,
                output_dir,
                epochs,
                lr,
                weight_decay,
                train_size,
                seed,
            };
            let plan = request.resolve(eval_config(&common), feature_dim)?;
            let session = launch
                .map(|l| {
                    let classifier = cls.as_deref().filter(|_| evaluate_only);
                    join(l, args.dist_timeout, &frozen, &plan, &common, classifier)
                })
                .transpose()?;
            // Every process computes the same numbers; process 0 alone reports and writes them.
            let reports = session.as_ref().is_none_or(|s| s.process() == 0);
            let frozen = frozen.with_session(session.clone());
            let done = || {
                if let Some(s) = &session {
                    s.finish();
                }
            };
            if let (true, Some(cls)) = (evaluate_only, &cls) {
                let classes = plan.val.classes.len();
                let head =
                    linear::load_classifier::<B>(cls, feature_dim, classes, &frozen.devices[0])?;
                let (top1, top5) = linear::evaluate(&frozen, &head, plan.val, &plan.cfg)?;
                done();
                if reports {
                    println!("{}", serde_json::json!({"top1": top1, "top5": top5}));
                }
                return Ok(());
            }
            let bar = if reports && std::io::stderr().is_terminal() {
                ProgressBar::with_draw_target(
                    Some(plan.cfg.epochs as u64),
                    ProgressDrawTarget::stderr(),
                )
            } else {
                ProgressBar::hidden()
            };
            bar.set_style(
                ProgressStyle::with_template("epoch {pos}/{len} [{wide_bar}] {msg} eta {eta}")
                    .expect("valid template"),
            );
            let summary = lincls::run(&frozen, feature_dim, plan, cache_features, &mut |m| {
                bar.inc(1);
                bar.set_message(format!(
                    "loss {:.4} top-1 {:.2} top-5 {:.2} {:.0} img/s",
                    m.loss, m.top1, m.top5, m.images_per_second
                ));
                let line = serde_json::to_string(m).expect("plain numbers serialise");
                if reports {
                    bar.suspend(|| println!("{line}"));
                }
            });
            bar.finish_and_clear();
            let summary = summary?;
            done();
            if reports {
                eprintln!(
                    "swav-lincls event=done best_top1={:.2} output={} plot={}",
                    summary.best_top1,
                    summary.output_dir.display(),
                    summary.plot.display()
                );
            }
            Ok(())
        }
        Command::Evaluate {
            common,
            data,
            tensors,
            load: cls,
        } => {
            let cls = weights(&cls)?;
            let frozen = backbone::<B>(&common, Some(&cls), devices)?;
            let feature_dim = frozen.config.backbone.feature_dim();
            let device = &frozen.devices[0];
            let (top1, top5) = match (data, tensors) {
                (Some(data), _) => {
                    let val = image_folder(&data.join("val"))?;
                    let classes = val.classes.len();
                    let head = linear::load_classifier::<B>(&cls, feature_dim, classes, device)?;
                    linear::evaluate(&frozen, &head, val, &eval_config(&common))?
                }
                (None, Some(t)) => {
                    let images = swav::eval::read_images(&t)?;
                    let labels = swav::eval::read_labels(&t)?;
                    let classes = labels.iter().map(|&l| l + 1).max().unwrap_or(0).max(0) as usize;
                    let head = linear::load_classifier::<B>(&cls, feature_dim, classes, device)?;
                    linear::evaluate_tensors(&frozen, &head, &images, &labels, common.batch_size)
                        .map_err(|e| format!("{}: {e}", t.display()))?
                }
                (None, None) => unreachable!("clap requires --data or --tensors"),
            };
            println!("{}", serde_json::json!({"top1": top1, "top5": top5}));
            Ok(())
        }
        Command::Knn {
            common,
            data,
            k,
            temperature,
            json,
        } => {
            let frozen = backbone::<B>(&common, None, devices)?;
            let (train, val) = lincls::splits(&data)?;
            let cfg = eval_config(&common);
            let (t, lc) = (cfg.val_transform(), lincls::loader_config(&cfg));
            let features = |set| frozen.dataset_features(set, t, cfg.mean, cfg.std, &lc);
            let (ft, fv) = (features(train.clone())?, features(val)?);
            let classes = train.classes.len();
            let (top1, top5) =
                swav::eval::knn::<B>(&ft, &fv, classes, k, temperature, &frozen.devices)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"top1": top1, "top5": top5, "k": k, "temperature": temperature, "train": ft.labels.len(), "val": fv.labels.len()})
                );
            } else {
                println!("k-NN (k={k}, T={temperature}): top-1 {top1:.2}%, top-5 {top5:.2}% ({} train, {} val images)", ft.labels.len(), fv.labels.len());
            }
            Ok(())
        }
    }
}
