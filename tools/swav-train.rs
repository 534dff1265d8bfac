//! `swav-train`: SwAV pretraining (configs/swav/*.yaml) and its data tools.
//! `swav-train bench-data --data DIR --workers N` measures the image pipeline alone;
//! `swav-train make-synthetic OUT` writes the built-in synthetic image set.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use swav::data::{bench, dataset::Dataset, loader, multicrop::MultiCrop, synthetic};

#[derive(Parser)]
#[command(version, about = "SwAV pretraining and its data tools")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the multi-crop loader alone over a folder and print images/s (size your hosts).
    BenchData {
        /// Image folder (ImageFolder or flat); default: the synthetic set, made in a temp folder.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Worker threads [default: all cores].
        #[arg(long)]
        workers: Option<usize>,
        /// Images per batch.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Batches to time (after one warm-up batch).
        #[arg(long, default_value_t = 10)]
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
    /// Write the built-in synthetic image set (ImageFolder with train/ and val/).
    MakeSynthetic {
        /// Output folder.
        out: PathBuf,
        /// Image side.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Training images per class.
        #[arg(long, default_value_t = 100)]
        train_per_class: usize,
        /// Validation images per class.
        #[arg(long, default_value_t = 20)]
        val_per_class: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swav-train: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    match args.command {
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
            );
            if json {
                println!("{}", serde_json::to_string(&r).expect("serializable"));
            } else {
                println!(
                    "{} images ({} crops each: {:?}x{:?}) in {:.2} s: {:.1} images/s with {} workers ({:.1} per worker){}",
                    r.images, r.crops_per_image, mc.num_crops, mc.size_crops, r.seconds, r.images_per_second, r.workers,
                    r.images_per_second_per_worker,
                    if r.skipped > 0 { format!(", {} unreadable images skipped", r.skipped) } else { String::new() }
                );
            }
            Ok(())
        }
    }
}
