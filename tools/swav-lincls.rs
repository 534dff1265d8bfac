//! `swav-lincls`: evaluation of a frozen SwAV backbone. `features` (of preprocessed tensors or
//! an image folder) and `knn` (weighted k-NN, k=20, T=0.07).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use swav::data::{dataset::Dataset, loader::LoaderConfig, multicrop::EvalTransform};
use swav::model::{load, CpuBackend as B};

#[derive(Parser)]
#[command(version, about = "Evaluate a frozen SwAV backbone: features, k-NN")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Common {
    /// Weights: any checkpoint swav-convert reads, or a Burn record (.mpk).
    #[arg(long)]
    pretrained: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Load even when the model lacks weights in the file (they keep their initial values).
    #[arg(long)]
    partial: bool,
    /// Worker threads for image decoding [default: all cores].
    #[arg(long)]
    workers: Option<usize>,
    /// Resize (shorter side) before the centre crop.
    #[arg(long, default_value_t = 256)]
    resize: usize,
    /// Centre crop side.
    #[arg(long, default_value_t = 224)]
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
    /// Weighted k-NN accuracy on L2-normalised features: DATA/train against DATA/val.
    Knn {
        #[command(flatten)]
        common: Common,
        /// Folder with train/ and val/ ImageFolders.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value_t = 20)]
        k: usize,
        #[arg(long, default_value_t = 0.07)]
        temperature: f32,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.228, 0.224, 0.225];

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swav-lincls: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn loader_cfg(c: &Common) -> LoaderConfig {
    let mut cfg = LoaderConfig {
        batch_size: c.batch_size.max(1),
        ..Default::default()
    };
    if let Some(w) = c.workers {
        cfg.workers = w.max(1);
    }
    cfg
}

fn run(args: Args) -> Result<(), String> {
    let device = Default::default();
    match args.command {
        Command::Features {
            common,
            tensors,
            data,
            output,
        } => {
            let (model, _, report) = load::load::<B>(&common.pretrained, &device, common.partial)
                .map_err(|e| e.to_string())?;
            eprintln!(
                "swav-lincls event=loaded weights={} {}",
                common.pretrained.display(),
                report.summary()
            );
            if let Some(t) = tensors {
                let images = swav::eval::read_images::<B>(&t, &device)?;
                let out = swav::eval::forward_batched(&model, images, common.batch_size);
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
                let t = EvalTransform::Val {
                    resize: common.resize,
                    size: common.size,
                };
                let f = swav::eval::dataset_features(
                    &model,
                    ds,
                    t,
                    MEAN,
                    STD,
                    &loader_cfg(&common),
                    &device,
                );
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
        Command::Knn {
            common,
            data,
            k,
            temperature,
            json,
        } => {
            let (model, _, report) = load::load::<B>(&common.pretrained, &device, common.partial)
                .map_err(|e| e.to_string())?;
            eprintln!(
                "swav-lincls event=loaded weights={} {}",
                common.pretrained.display(),
                report.summary()
            );
            let train =
                Arc::new(Dataset::image_folder(&data.join("train")).map_err(|e| e.to_string())?);
            let val =
                Arc::new(Dataset::image_folder(&data.join("val")).map_err(|e| e.to_string())?);
            let t = EvalTransform::Val {
                resize: common.resize,
                size: common.size,
            };
            let cfg = loader_cfg(&common);
            let ft =
                swav::eval::dataset_features(&model, train.clone(), t, MEAN, STD, &cfg, &device);
            let fv = swav::eval::dataset_features(&model, val, t, MEAN, STD, &cfg, &device);
            let (top1, top5) =
                swav::eval::knn::<B>(&ft, &fv, train.classes.len(), k, temperature, &device);
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
