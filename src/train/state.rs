//! Training checkpoints: everything `--resume` needs to continue exactly.
//!
//! `OUTPUT/checkpoints/epoch_NNNN/` holds `model.mpk` (+ `model.mpk.json`, the model's shape:
//! a Burn record `swav-extract` and `swav-lincls` read), `optimizer.mpk` (LARS momentum per
//! parameter), `queue.f32` (the queue, little-endian, when there is one) and `state.json`
//! (epoch, iteration, the resolved config, the metrics so far). A checkpoint is written into a
//! temporary folder, synced, and renamed into place; then `checkpoints/latest` (the folder's
//! name) is replaced atomically; then checkpoints beyond the last `keep` are removed. A kill at
//! any moment leaves either the previous or the new checkpoint, complete.
//!
//! The random state is the seed alone: each sample's augmentations and each epoch's order are
//! derived from (seed, epoch, index), and nothing else draws random numbers after the model is
//! initialised.

use super::step::Queue;
pub use crate::model::open::{checkpoints_dir, latest, list};
use crate::model::record::{self, RecordError, Recorder};
use crate::model::swav::{Swav, SwavConfig};
use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::record::{Recorder as _, RecorderError};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Format tag in `state.json`.
pub const FORMAT: &str = "swav-rs training checkpoint 1";

/// One epoch's summary, kept in the checkpoint for plots and diagnostics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub images_per_second: f64,
}

/// `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    pub format: String,
    /// Epochs completed.
    pub epoch: usize,
    /// Iterations completed.
    pub iteration: usize,
    /// The resolved training config (YAML).
    pub config: String,
    /// Queue shape `[assigned crops, rows, dim]` per device, when there is one.
    pub queue: Option<[usize; 3]>,
    /// Devices the queue was split over.
    pub devices: usize,
    pub history: Vec<EpochRecord>,
}

/// What a loaded checkpoint gives back.
pub struct Loaded<A: AutodiffBackend> {
    pub model: Swav<A>,
    pub config: SwavConfig,
    pub state: TrainState,
    pub queues: Option<Vec<Queue>>,
}

/// Why a training checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The model's record (`model.mpk` and its config).
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The optimizer's record (`optimizer.mpk`).
    #[error("{}: {source}", path.display())]
    Optimizer {
        path: PathBuf,
        #[source]
        source: RecorderError,
    },
    /// `state.json` does not parse.
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// `state.json` is another program's.
    #[error("{}: not a {FORMAT} (format {found:?})", path.display())]
    Format { path: PathBuf, found: String },
    /// `queue.f32` does not hold the queue `state.json` describes.
    #[error("{}: {len} bytes, expected {expected}", path.display())]
    QueueSize {
        path: PathBuf,
        len: usize,
        expected: usize,
    },
}

fn io(path: &Path, source: std::io::Error) -> StateError {
    StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn optimizer(path: &Path, source: RecorderError) -> StateError {
    StateError::Optimizer {
        path: path.to_path_buf(),
        source,
    }
}

/// Write checkpoint `epoch_NNNN` and point `latest` at it; keep the newest `keep`.
#[allow(clippy::too_many_arguments)]
pub fn save<A, M, O>(
    output: &Path,
    model: &Swav<A>,
    config: &SwavConfig,
    optim: &O,
    queues: Option<&[Queue]>,
    state: &TrainState,
    keep: usize,
) -> Result<PathBuf, StateError>
where
    A: AutodiffBackend,
    M: AutodiffModule<A>,
    O: Optimizer<M, A>,
{
    let root = checkpoints_dir(output);
    std::fs::create_dir_all(&root).map_err(|e| io(&root, e))?;
    let name = format!("epoch_{:04}", state.epoch);
    let tmp = root.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| io(&tmp, e))?;
    record::save(model.clone(), config, &tmp.join("model.mpk"))?;
    let opt_path = tmp.join("optimizer.mpk");
    Recorder::new()
        .record(optim.to_record(), opt_path.clone())
        .map_err(|e| optimizer(&opt_path, e))?;
    sync(&opt_path)?;
    if let Some(qs) = queues {
        let path = tmp.join("queue.f32");
        crate::atomic::write_file(&path, |mut w| {
            for q in qs {
                for rows in &q.rows {
                    for v in rows {
                        std::io::Write::write_all(&mut w, &v.to_le_bytes())?;
                    }
                }
            }
            Ok::<_, std::io::Error>(w)
        })
        .map_err(|e| io(&path, e))?;
    }
    let json = serde_json::to_vec_pretty(state).expect("state serialises");
    let path = tmp.join("state.json");
    crate::atomic::write_bytes(&path, &json).map_err(|e| io(&path, e))?;
    sync(&tmp)?;
    let dir = root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
    }
    std::fs::rename(&tmp, &dir).map_err(|e| io(&dir, e))?;
    let latest = root.join("latest");
    crate::atomic::write_bytes(&latest, name.as_bytes()).map_err(|e| io(&latest, e))?;
    sync(&root)?;
    let all = list(&root);
    for old in all.iter().take(all.len().saturating_sub(keep)) {
        let _ = std::fs::remove_dir_all(old);
    }
    // Leftovers of killed runs.
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(".epoch_") && n.ends_with(".tmp") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(dir)
}

fn sync(path: &Path) -> Result<(), StateError> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(path, e))
}

/// Read `state.json` of a checkpoint folder.
pub fn read_state(dir: &Path) -> Result<TrainState, StateError> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    let state: TrainState = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(source) => return Err(StateError::Json { path, source }),
    };
    if state.format != FORMAT {
        return Err(StateError::Format {
            path,
            found: state.format,
        });
    }
    Ok(state)
}

/// Load a checkpoint folder: model, optimizer (into `optim`), queue and state.
pub fn load<A, M, O>(dir: &Path, optim: O, device: &A::Device) -> Result<(Loaded<A>, O), StateError>
where
    A: AutodiffBackend,
    M: AutodiffModule<A>,
    O: Optimizer<M, A>,
{
    let state = read_state(dir)?;
    let (model, config) = record::load::<A>(&dir.join("model.mpk"), device)?;
    let opt_path = dir.join("optimizer.mpk");
    let rec = Recorder::new()
        .load(opt_path.clone(), device)
        .map_err(|e| optimizer(&opt_path, e))?;
    let optim = optim.load_record(rec);
    let queues = match state.queue {
        None => None,
        Some([assigned, len, dim]) => {
            let path = dir.join("queue.f32");
            let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
            let per = assigned * len * dim;
            if bytes.len() != per * state.devices * 4 {
                return Err(StateError::QueueSize {
                    path,
                    len: bytes.len(),
                    expected: per * state.devices * 4,
                });
            }
            let values: Vec<f32> = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Some(
                values
                    .chunks_exact(per)
                    .map(|v| Queue {
                        len,
                        dim,
                        rows: v.chunks_exact(len * dim).map(<[f32]>::to_vec).collect(),
                        in_use: false,
                    })
                    .collect(),
            )
        }
    };
    Ok((
        Loaded {
            model,
            config,
            state,
            queues,
        },
        optim,
    ))
}
