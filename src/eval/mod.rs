//! Evaluation of a (frozen) SwAV backbone: features of preprocessed tensors or of an image
//! folder, and the weighted k-NN classifier self-supervised papers report (k = 20, T = 0.07,
//! on L2-normalised features; Wu et al. 2018, as in DINO's `eval_knn.py`). The linear
//! evaluation: [`classifier`] (the linear classifier: its training, evaluation and files) and
//! [`linear_eval`] (a run of it: settings and data resolved, files and curves written), with
//! PASSL's config file in [`config`]; [`ranks`] splits the work across devices.

pub mod classifier;
pub mod config;
pub mod linear_eval;
pub mod ranks;

use crate::data::dataset::Dataset;
use crate::data::loader::{Batch, Loader, LoaderConfig, Pipeline};
use crate::data::multicrop::EvalTransform;
use crate::dist::Session;
use crate::model::swav::{l2_normalize, Swav, SwavConfig, SwavOutput};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The frozen model of an evaluation and the devices it runs on: one rank per device
/// ([`ranks`]), each with its own copy of the model, and every batch split across them.
pub struct Frozen<B: Backend> {
    /// The model, on `devices[0]`.
    pub model: Swav<B>,
    pub config: SwavConfig,
    pub devices: Vec<B::Device>,
    /// In a run of several processes, this process's membership: the linear evaluation
    /// ([`classifier::train`], [`classifier::evaluate`]) then runs over the ranks of every process.
    pub session: Option<Arc<Session>>,
}

impl<B: Backend> Frozen<B> {
    /// Evaluation of `model` (on `devices[0]`) on `devices`.
    pub fn new(model: Swav<B>, config: SwavConfig, devices: Vec<B::Device>) -> Self {
        assert!(!devices.is_empty(), "at least one device");
        Frozen {
            model,
            config,
            devices,
            session: None,
        }
    }

    /// This evaluation as this process's part of a run of several processes.
    pub fn with_session(mut self, session: Option<Arc<Session>>) -> Self {
        self.session = session;
        self
    }

    /// Each rank's copy of the model, taken by the rank on its thread with
    /// [`Frozen::replica`].
    pub(crate) fn handout(&self) -> Handout<Swav<B>> {
        Handout::new(self.devices.iter().map(|_| self.model.clone()).collect())
    }

    /// Rank `w`'s copy from `handout`, on `device`: rank 0 uses the model itself (inference
    /// does not touch its running statistics), the others a replica sharing nothing with it.
    pub(crate) fn replica(
        &self,
        handout: &Handout<Swav<B>>,
        w: usize,
        device: &B::Device,
    ) -> Swav<B> {
        let model = handout.take(w);
        if w == 0 {
            model
        } else {
            model.replicate(&self.config, device)
        }
    }

    /// Features, embedding and scores of preprocessed images (`[N, 3, H, W]`, on the host), in
    /// chunks of `batch` images spread over the ranks; the outputs on the first device.
    pub fn outputs(&self, images: &TensorData, batch: usize) -> Result<SwavOutput<B>, EvalError> {
        let [n, c, h, w] = images.shape[..] else {
            return Err(EvalError::Invalid(format!(
                "images have shape {:?}, expected [N, 3, H, W]",
                images.shape
            )));
        };
        if n == 0 {
            return Err(EvalError::Invalid("`images` holds no image".into()));
        }
        let values: &[f32] = images
            .as_slice()
            .map_err(|e| EvalError::Invalid(format!("images are not f32: {e:?}")))?;
        let px = c * h * w;
        let batch = batch.max(1);
        let handout = self.handout();
        // Each chunk's outputs, on the host: features, embedding, every head's scores.
        type Chunk = Vec<(Vec<f32>, [usize; 2])>;
        let chunks: Vec<Chunk> = ranks::with_ranks(
            &self.devices,
            |w, d| Ok((self.replica(&handout, w, d), d.clone())),
            |(model, device), rows: std::ops::Range<usize>| -> Result<Chunk, String> {
                if rows.is_empty() {
                    return Ok(Vec::new());
                }
                let x = Tensor::<B, 4>::from_data(
                    TensorData::new(
                        values[rows.start * px..rows.end * px].to_vec(),
                        [rows.len(), c, h, w],
                    ),
                    &*device,
                );
                let out = model.forward(x);
                Ok(std::iter::once(out.features)
                    .chain(std::iter::once(out.embedding))
                    .chain(out.scores)
                    .map(|t| (host_f32(&t), t.dims()))
                    .collect())
            },
            || {},
            |pool| {
                let mut chunks = Vec::new();
                for jobs in ranges_by_round(n, batch, pool.world()) {
                    chunks.extend(pool.round(jobs)?.into_iter().filter(|c| !c.is_empty()));
                }
                Ok(chunks)
            },
        )?;
        let device = &self.devices[0];
        let parts = chunks.first().map_or(0, Vec::len);
        let mut cat = (0..parts).map(|i| {
            let rows: usize = chunks.iter().map(|c| c[i].1[0]).sum();
            let cols = chunks[0][i].1[1];
            let values: Vec<f32> = chunks.iter().flat_map(|c| c[i].0.iter().copied()).collect();
            Tensor::<B, 2>::from_data(TensorData::new(values, [rows, cols]), device)
        });
        let empty = || Tensor::<B, 2>::zeros([0, 0], device);
        Ok(SwavOutput {
            features: cat.next().unwrap_or_else(empty),
            embedding: cat.next().unwrap_or_else(empty),
            scores: cat.collect(),
        })
    }

    /// Backbone features of every image of `dataset` through `transform` (no augmentation),
    /// with labels; unreadable images are left out (and returned by path). `cfg.batch_size`
    /// images per rank: each batch of the loader (that many per rank) is split across them.
    pub fn dataset_features(
        &self,
        dataset: Arc<Dataset>,
        transform: EvalTransform,
        mean: [f32; 3],
        std: [f32; 3],
        cfg: &LoaderConfig,
    ) -> Result<Features, EvalError> {
        let cfg = LoaderConfig {
            batch_size: cfg.batch_size.max(1) * self.devices.len(),
            shuffle: false,
            drop_last: false,
            ..cfg.clone()
        };
        let pipeline = Pipeline::Eval {
            transform,
            mean,
            std,
        };
        let mut loader = Loader::new(dataset, pipeline, &cfg, 0);
        let handout = self.handout();
        let (features, labels) = ranks::with_ranks(
            &self.devices,
            |w, d| Ok((self.replica(&handout, w, d), d.clone())),
            |(model, device), shard: Batch| -> Result<Vec<f32>, String> {
                if shard.is_empty() {
                    return Ok(Vec::new());
                }
                let d = shard.to_device::<B>(device);
                Ok(host_f32(&model.backbone.forward(d.crops[0].clone())))
            },
            || {},
            |pool| {
                let (mut features, mut labels) = (Vec::new(), Vec::new());
                for batch in loader.by_ref() {
                    if batch.is_empty() {
                        continue;
                    }
                    labels.extend(batch.labels.iter().map(|l| l.map_or(-1, |v| v as i64)));
                    features.extend(pool.round(batch.split(pool.world()))?.concat());
                }
                Ok((features, labels))
            },
        )?;
        let skipped = loader
            .take_new_skips()
            .into_iter()
            .map(|(p, e)| format!("{p}: {e}"))
            .collect();
        Ok(Features {
            dim: features.len() / labels.len().max(1),
            features,
            labels,
            skipped,
        })
    }
}

/// Values handed out to ranks, one each, taken on the rank's thread (so that they need only
/// be `Send`).
pub(crate) struct Handout<T>(Mutex<Vec<Option<T>>>);

impl<T> Handout<T> {
    pub(crate) fn new(values: Vec<T>) -> Self {
        Handout(Mutex::new(values.into_iter().map(Some).collect()))
    }

    /// Rank `w`'s value (once).
    pub(crate) fn take(&self, w: usize) -> T {
        self.0.lock().unwrap_or_else(|e| e.into_inner())[w]
            .take()
            .expect("each rank takes its value once")
    }
}

/// Rows `0..n` in chunks of `chunk`, dealt to `world` ranks a round at a time: each round is
/// one range per rank (empty where the rows ran out).
fn ranges_by_round(n: usize, chunk: usize, world: usize) -> Vec<Vec<std::ops::Range<usize>>> {
    let starts: Vec<usize> = (0..n).step_by(chunk.max(1)).collect();
    starts
        .chunks(world.max(1))
        .map(|round| {
            (0..world)
                .map(|r| round.get(r).map_or(0..0, |&s| s..(s + chunk).min(n)))
                .collect()
        })
        .collect()
}

/// A tensor's values as f32 on the host.
fn host_f32<B: Backend, const D: usize>(t: &Tensor<B, D>) -> Vec<f32> {
    t.to_data().convert::<f32>().to_vec().expect("f32 values")
}

/// Backbone features of a dataset (evaluation transform, no augmentation), with labels;
/// unreadable images are left out (and returned by path).
pub struct Features {
    /// `[N, C]` row-major.
    pub features: Vec<f32>,
    pub dim: usize,
    pub labels: Vec<i64>,
    pub skipped: Vec<String>,
}

/// Validation rows per similarity matrix of [`knn`].
const KNN_CHUNK: usize = 256;

/// Top-1 and top-5 accuracy (in %) of the weighted k-NN classifier. Every rank holds the
/// training features and classifies its share of the validation rows.
pub fn knn<B: Backend>(
    train: &Features,
    val: &Features,
    classes: usize,
    k: usize,
    temperature: f32,
    devices: &[B::Device],
) -> Result<(f64, f64), EvalError> {
    if k == 0 {
        return Err(EvalError::Invalid("k-NN: k must be at least 1".into()));
    }
    let (nt, nv) = (train.labels.len(), val.labels.len());
    if nt == 0 || nv == 0 {
        return Ok((0.0, 0.0));
    }
    let k = k.min(nt);
    // One rank at a time makes its copy of the training features: a host copy per rank at
    // once would take ranks × the features' size.
    let uploading = Mutex::new(());
    let (top1, top5) = ranks::with_ranks(
        devices,
        |_, device| {
            let _one_at_a_time = uploading.lock().unwrap_or_else(|e| e.into_inner());
            let tf = l2_normalize(Tensor::<B, 2>::from_data(
                TensorData::new(train.features.clone(), [nt, train.dim]),
                device,
            ));
            Ok((tf, device.clone()))
        },
        |(tf, device), rows: std::ops::Range<usize>| -> Result<(usize, usize), String> {
            if rows.is_empty() {
                return Ok((0, 0));
            }
            let part = val.features[rows.start * val.dim..rows.end * val.dim].to_vec();
            let vf = l2_normalize(Tensor::<B, 2>::from_data(
                TensorData::new(part, [rows.len(), val.dim]),
                &*device,
            ));
            let sim = host_f32(&vf.matmul(tf.clone().transpose()));
            let (mut top1, mut top5) = (0, 0);
            for (r, row) in sim.chunks_exact(nt).enumerate() {
                let mut idx: Vec<usize> = (0..nt).collect();
                idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
                let mut votes = vec![0f64; classes.max(1)];
                for &i in &idx[..k] {
                    if let Ok(c) = usize::try_from(train.labels[i]) {
                        if c < votes.len() {
                            votes[c] += ((row[i] / temperature) as f64).exp();
                        }
                    }
                }
                let mut order: Vec<usize> = (0..votes.len()).collect();
                order.sort_by(|&a, &b| votes[b].total_cmp(&votes[a]));
                let truth = val.labels[rows.start + r];
                top1 += usize::from(order.first().map(|&c| c as i64) == Some(truth));
                top5 += usize::from(order.iter().take(5).any(|&c| c as i64 == truth));
            }
            Ok((top1, top5))
        },
        || {},
        |pool| {
            let (mut top1, mut top5) = (0, 0);
            for jobs in ranges_by_round(nv, KNN_CHUNK, pool.world()) {
                for (a, b) in pool.round(jobs)? {
                    top1 += a;
                    top5 += b;
                }
            }
            Ok((top1, top5))
        },
    )?;
    Ok((
        100.0 * top1 as f64 / nv as f64,
        100.0 * top5 as f64 / nv as f64,
    ))
}

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A rank failed (its error or panic).
    #[error(transparent)]
    Rank(#[from] ranks::RankError),
    /// A file of images, labels or outputs.
    #[error(transparent)]
    Files(#[from] TensorFileError),
    /// Weights could not be loaded.
    #[error(transparent)]
    Load(#[from] crate::model::load::LoadError),
    /// The ranks' communicators could not be made.
    #[error(transparent)]
    Collective(#[from] crate::collective::CollectiveError),
    /// A linear-evaluation config file (its reading, or the key path of a bad value).
    #[error(transparent)]
    Config(#[from] crate::yaml::ConfigError),
    /// An image folder.
    #[error(transparent)]
    Dataset(#[from] crate::data::dataset::DatasetError),
    /// The curves.
    #[error(transparent)]
    Plot(#[from] crate::plot::PlotError),
    /// A file that does not fit (a classifier for other features, a config for another
    /// backbone) or could not be written.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// Inputs or settings that do not fit together.
    #[error("{0}")]
    Invalid(String),
}

/// Why a safetensors file of images, labels, features or outputs could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    /// The file could not be read as a checkpoint.
    #[error(transparent)]
    Read(#[from] crate::checkpoint::CheckpointError),
    #[error("{}: no tensor named `{name}`", path.display())]
    Missing { path: PathBuf, name: &'static str },
    #[error("{}: `{name}` has shape {shape:?}, expected {expected}", path.display())]
    Shape {
        path: PathBuf,
        name: &'static str,
        shape: Vec<usize>,
        expected: &'static str,
    },
    #[error("{}: `images` has {channels} channels, expected 3", path.display())]
    Channels { path: PathBuf, channels: usize },
    #[error("{}: label {value} is not a class index", path.display())]
    Label { path: PathBuf, value: f64 },
    /// A tensor's data could not be read.
    #[error("{}: {source}", path.display())]
    Data {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tensor to write does not hold its shape's bytes.
    #[error(transparent)]
    Tensor(#[from] crate::tensor::ByteLengthError),
    #[error("{}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: crate::checkpoint::FormatError,
    },
}

/// A named f32 tensor for a safetensors output.
pub(crate) fn file_tensor<B: Backend, const D: usize>(
    name: &str,
    t: &Tensor<B, D>,
) -> Result<crate::tensor::Tensor, TensorFileError> {
    let shape = t.dims().to_vec();
    let values: Vec<f32> = t.to_data().convert::<f32>().to_vec().expect("f32 values");
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(crate::tensor::Tensor::from_vec(
        name,
        crate::tensor::DType::F32,
        shape,
        bytes,
    )?)
}

/// Write `features`, `embedding` and `scores` (`scores.{i}` with several prototype heads) to a
/// safetensors file, atomically.
pub fn write_outputs<B: Backend>(path: &Path, out: &SwavOutput<B>) -> Result<(), TensorFileError> {
    let mut tensors = vec![
        file_tensor("features", &out.features)?,
        file_tensor("embedding", &out.embedding)?,
    ];
    match out.scores.len() {
        0 => {}
        1 => tensors.push(file_tensor("scores", &out.scores[0])?),
        _ => {
            for (i, s) in out.scores.iter().enumerate() {
                tensors.push(file_tensor(&format!("scores.{i}"), s)?);
            }
        }
    }
    write_tensors(path, &tensors, Default::default())
}

/// Write dataset features and labels (`features` `[N, C]`, `labels` `[N]` i64).
pub fn write_features(path: &Path, f: &Features) -> Result<(), TensorFileError> {
    let n = f.labels.len();
    let feats = crate::tensor::Tensor::from_vec(
        "features",
        crate::tensor::DType::F32,
        vec![n, f.dim],
        f.features.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )?;
    let labels = crate::tensor::Tensor::from_vec(
        "labels",
        crate::tensor::DType::I64,
        vec![n],
        f.labels.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )?;
    write_tensors(path, &[feats, labels], Default::default())
}

/// Write tensors as safetensors, atomically, with `metadata` in the header.
pub(crate) fn write_tensors(
    path: &Path,
    tensors: &[crate::tensor::Tensor],
    metadata: std::collections::HashMap<String, String>,
) -> Result<(), TensorFileError> {
    crate::atomic::write_file(path, |w| {
        crate::checkpoint::safetensors::write(w, tensors, metadata)
    })
    .map_err(|source| TensorFileError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The tensor `name` of a file read by [`crate::model::open()`].
fn named<'a>(
    ck: &'a crate::checkpoint::Checkpoint,
    path: &Path,
    name: &'static str,
) -> Result<&'a crate::tensor::Tensor, TensorFileError> {
    ck.get(name).ok_or_else(|| TensorFileError::Missing {
        path: path.to_path_buf(),
        name,
    })
}

/// Labels (`labels` `[N]`, integers ≥ 0) from a safetensors file.
pub fn read_labels(path: &Path) -> Result<Vec<i64>, TensorFileError> {
    let ck = crate::model::open(path)?;
    let t = named(&ck, path, "labels")?;
    if t.shape.len() != 1 {
        return Err(TensorFileError::Shape {
            path: path.to_path_buf(),
            name: "labels",
            shape: t.shape.clone(),
            expected: "[N]",
        });
    }
    let data = |source| TensorFileError::Data {
        path: path.to_path_buf(),
        source,
    };
    let values: Vec<f64> = match t.dtype {
        crate::tensor::DType::I64 => t
            .bytes()
            .map_err(data)?
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64)
            .collect(),
        _ => t
            .to_f32()
            .map_err(data)?
            .into_iter()
            .map(f64::from)
            .collect(),
    };
    values
        .into_iter()
        .map(|v| {
            if v >= 0.0 && v.fract() == 0.0 && v < 1e7 {
                Ok(v as i64)
            } else {
                Err(TensorFileError::Label {
                    path: path.to_path_buf(),
                    value: v,
                })
            }
        })
        .collect()
}

/// Preprocessed images (`images`, NCHW f32) from a safetensors file, on the host.
pub fn read_images(path: &Path) -> Result<TensorData, TensorFileError> {
    let ck = crate::model::open(path)?;
    let t = named(&ck, path, "images")?;
    let [n, c, h, w] = t.shape[..] else {
        return Err(TensorFileError::Shape {
            path: path.to_path_buf(),
            name: "images",
            shape: t.shape.clone(),
            expected: "[N, 3, H, W]",
        });
    };
    if c != 3 {
        return Err(TensorFileError::Channels {
            path: path.to_path_buf(),
            channels: c,
        });
    }
    let values = t.to_f32().map_err(|source| TensorFileError::Data {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(TensorData::new(values, [n, c, h, w]))
}
