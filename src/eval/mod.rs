//! Evaluation of a (frozen) SwAV backbone: features of preprocessed tensors or of an image
//! folder, and the weighted k-NN classifier self-supervised papers report (k = 20, T = 0.07,
//! on L2-normalised features; Wu et al. 2018, as in DINO's `eval_knn.py`).

pub mod config;
pub mod lincls;
pub mod linear;

use crate::data::dataset::Dataset;
use crate::data::loader::{Loader, LoaderConfig, Pipeline};
use crate::data::multicrop::EvalTransform;
use crate::model::swav::{l2_normalize, Swav, SwavOutput};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use std::sync::Arc;

/// Run `model` over images `[N, 3, H, W]` in chunks of `batch`, concatenating the outputs.
pub fn forward_batched<B: Backend>(
    model: &Swav<B>,
    images: Tensor<B, 4>,
    batch: usize,
) -> SwavOutput<B> {
    let n = images.dims()[0];
    let mut outs = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + batch.max(1)).min(n);
        outs.push(model.forward(images.clone().narrow(0, start, end - start)));
        start = end;
    }
    let heads = outs.first().map_or(0, |o| o.scores.len());
    SwavOutput {
        features: Tensor::cat(outs.iter().map(|o| o.features.clone()).collect(), 0),
        embedding: Tensor::cat(outs.iter().map(|o| o.embedding.clone()).collect(), 0),
        scores: (0..heads)
            .map(|h| Tensor::cat(outs.iter().map(|o| o.scores[h].clone()).collect(), 0))
            .collect(),
    }
}

/// Backbone features of every image of a dataset (evaluation transform, no augmentation),
/// with labels; unreadable images are left out (and returned by path).
pub struct Features {
    /// `[N, C]` row-major.
    pub features: Vec<f32>,
    pub dim: usize,
    pub labels: Vec<i64>,
    pub skipped: Vec<String>,
}

/// Features of `dataset` through `transform`.
pub fn dataset_features<B: Backend>(
    model: &Swav<B>,
    dataset: Arc<Dataset>,
    transform: EvalTransform,
    mean: [f32; 3],
    std: [f32; 3],
    cfg: &LoaderConfig,
    device: &B::Device,
) -> Features {
    let cfg = LoaderConfig {
        shuffle: false,
        drop_last: false,
        ..cfg.clone()
    };
    let mut loader = Loader::new(
        dataset,
        Pipeline::Eval {
            transform,
            mean,
            std,
        },
        &cfg,
        0,
    );
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut dim = 0;
    for batch in loader.by_ref() {
        if batch.is_empty() {
            continue;
        }
        labels.extend(batch.labels.iter().map(|l| l.map_or(-1, |v| v as i64)));
        let d = batch.to_device::<B>(device);
        let f = model.backbone.forward(d.crops[0].clone());
        dim = f.dims()[1];
        features.extend(f.to_data().to_vec::<f32>().expect("f32 features"));
    }
    let skipped = loader
        .take_new_skips()
        .into_iter()
        .map(|(p, e)| format!("{p}: {e}"))
        .collect();
    Features {
        features,
        dim,
        labels,
        skipped,
    }
}

/// Top-1 and top-5 accuracy (in %) of the weighted k-NN classifier.
pub fn knn<B: Backend>(
    train: &Features,
    val: &Features,
    classes: usize,
    k: usize,
    temperature: f32,
    device: &B::Device,
) -> (f64, f64) {
    let (nt, nv) = (train.labels.len(), val.labels.len());
    if nt == 0 || nv == 0 {
        return (0.0, 0.0);
    }
    let tf = l2_normalize(Tensor::<B, 2>::from_data(
        TensorData::new(train.features.clone(), [nt, train.dim]),
        device,
    ));
    let k = k.min(nt);
    let (mut top1, mut top5) = (0usize, 0usize);
    // Chunks of validation rows keep the similarity matrix small.
    for start in (0..nv).step_by(256) {
        let end = (start + 256).min(nv);
        let rows = val.features[start * val.dim..end * val.dim].to_vec();
        let vf = l2_normalize(Tensor::<B, 2>::from_data(
            TensorData::new(rows, [end - start, val.dim]),
            device,
        ));
        let sim: Vec<f32> = vf
            .matmul(tf.clone().transpose())
            .to_data()
            .to_vec()
            .expect("f32 similarities");
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
            let truth = val.labels[start + r];
            top1 += usize::from(order.first().map(|&c| c as i64) == Some(truth));
            top5 += usize::from(order.iter().take(5).any(|&c| c as i64 == truth));
        }
    }
    (
        100.0 * top1 as f64 / nv as f64,
        100.0 * top5 as f64 / nv as f64,
    )
}

/// A named f32 tensor for a safetensors output.
pub(crate) fn file_tensor<B: Backend, const D: usize>(
    name: &str,
    t: &Tensor<B, D>,
) -> crate::tensor::Tensor {
    let shape = t.dims().to_vec();
    let values: Vec<f32> = t.to_data().convert::<f32>().to_vec().expect("f32 values");
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    crate::tensor::Tensor::from_vec(name, crate::tensor::DType::F32, shape, bytes)
}

/// Write `features`, `embedding` and `scores` (`scores.{i}` with several prototype heads) to a
/// safetensors file, atomically.
pub fn write_outputs<B: Backend>(
    path: &std::path::Path,
    out: &SwavOutput<B>,
) -> Result<(), String> {
    let mut tensors = vec![
        file_tensor("features", &out.features),
        file_tensor("embedding", &out.embedding),
    ];
    match out.scores.len() {
        0 => {}
        1 => tensors.push(file_tensor("scores", &out.scores[0])),
        _ => tensors.extend(
            out.scores
                .iter()
                .enumerate()
                .map(|(i, s)| file_tensor(&format!("scores.{i}"), s)),
        ),
    }
    write_tensors(path, &tensors, Default::default())
}

/// Write dataset features and labels (`features` `[N, C]`, `labels` `[N]` i64).
pub fn write_features(path: &std::path::Path, f: &Features) -> Result<(), String> {
    let n = f.labels.len();
    let feats = crate::tensor::Tensor::from_vec(
        "features",
        crate::tensor::DType::F32,
        vec![n, f.dim],
        f.features.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    let labels = crate::tensor::Tensor::from_vec(
        "labels",
        crate::tensor::DType::I64,
        vec![n],
        f.labels.iter().flat_map(|v| v.to_le_bytes()).collect(),
    );
    write_tensors(path, &[feats, labels], Default::default())
}

/// Write tensors as safetensors, atomically, with `metadata` in the header.
pub(crate) fn write_tensors(
    path: &std::path::Path,
    tensors: &[crate::tensor::Tensor],
    metadata: std::collections::HashMap<String, String>,
) -> Result<(), String> {
    crate::atomic::write_file(path, |w| {
        crate::checkpoint::safetensors::write(w, tensors, metadata)
    })
    .map_err(|e: crate::checkpoint::FormatError| format!("{}: {e}", path.display()))
}

/// Preprocessed images (`images`, NCHW f32) from a safetensors file.
pub fn read_images<B: Backend>(
    path: &std::path::Path,
    device: &B::Device,
) -> Result<Tensor<B, 4>, String> {
    let ck = crate::checkpoint::Checkpoint::open(path).map_err(|e| e.to_string())?;
    let t = ck
        .get("images")
        .ok_or_else(|| format!("{}: no tensor named `images`", path.display()))?;
    let [n, c, h, w] = t.shape[..] else {
        return Err(format!(
            "{}: `images` has shape {:?}, expected [N, 3, H, W]",
            path.display(),
            t.shape
        ));
    };
    if c != 3 {
        return Err(format!(
            "{}: `images` has {c} channels, expected 3",
            path.display()
        ));
    }
    let values = t.to_f32().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Tensor::from_data(
        TensorData::new(values, [n, c, h, w]),
        device,
    ))
}
