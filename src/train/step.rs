//! One SwAV training step as facebookresearch/swav `main_swav.py` computes it:
//! prototypes L2-normalised; the backbone run once per crop-resolution group (BatchNorm
//! statistics per group); projection head and L2 normalisation; scores = z · prototypesᵀ;
//! codes by Sinkhorn-Knopp (no gradient) for `crops_for_assign`; the swapped-prediction loss
//! with a temperature, averaged over the other crops and over the assigned crops.

use crate::model::swav::Swav;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// SwAV loss settings (main_swav.py defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct SwavLoss {
    /// Softmax temperature of the predictions (0.1).
    pub temperature: f32,
    /// Sinkhorn's entropic regularisation ε (0.05).
    pub epsilon: f64,
    /// Sinkhorn iterations (3).
    pub sinkhorn_iterations: usize,
    /// Crops whose codes are computed (`[0, 1]`).
    pub crops_for_assign: Vec<usize>,
}

impl Default for SwavLoss {
    fn default() -> Self {
        SwavLoss {
            temperature: 0.1,
            epsilon: 0.05,
            sinkhorn_iterations: 3,
            crops_for_assign: vec![0, 1],
        }
    }
}

/// Sinkhorn-Knopp codes for scores `[B, K]` (row-major): `Q = exp(scores / ε)ᵀ`, normalised to
/// sum 1, then alternately rows to 1/K and columns to 1/B, `iterations` times; returned as
/// `[B, K]` with each row summing to 1. Computed in f64, shifted by the maximum score first so
/// that `exp` cannot overflow (the shift cancels in the first normalisation).
pub fn sinkhorn(scores: &[f32], b: usize, k: usize, epsilon: f64, iterations: usize) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut q: Vec<f64> = scores
        .iter()
        .map(|&s| ((s as f64 - max) / epsilon).exp())
        .collect();
    let total: f64 = q.iter().sum();
    q.iter_mut().for_each(|v| *v /= total);
    for _ in 0..iterations {
        // Each prototype (a column of [B, K]) sums to 1/K.
        for j in 0..k {
            let s: f64 = (0..b).map(|i| q[i * k + j]).sum();
            for i in 0..b {
                q[i * k + j] /= s * k as f64;
            }
        }
        // Each sample (a row) sums to 1/B.
        for row in q.chunks_exact_mut(k) {
            let s: f64 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s * b as f64);
        }
    }
    q.iter().map(|v| (v * b as f64) as f32).collect()
}

/// L2-normalise every prototype vector (the columns of each `[D, K]` head), as main_swav.py
/// does before each step, outside the gradient.
pub fn normalize_prototypes<B: Backend>(model: Swav<B>) -> Swav<B> {
    struct Norm {
        path: Vec<String>,
    }
    impl<B: Backend> ModuleMapper<B> for Norm {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, t, mapper) = param.consume();
            let is_proto = self.path.first().is_some_and(|p| p == "prototypes")
                && self.path.last().is_some_and(|p| p == "weight");
            let t = if is_proto && D == 2 {
                let norm = t.clone().powi_scalar(2).sum_dim(0).sqrt().clamp_min(1e-12);
                (t / norm).detach().require_grad()
            } else {
                t
            };
            Param::from_mapped_value(id, t, mapper)
        }
    }
    model.map(&mut Norm { path: Vec::new() })
}

/// What the model gives for one step's crops.
pub struct Forward<B: Backend> {
    /// Prototype scores of every crop, crop-major, `[crops × B, K]`.
    pub scores: Tensor<B, 2>,
    /// L2-normalised embeddings, crop-major, `[crops × B, D]`.
    pub embedding: Tensor<B, 2>,
    /// Images per crop.
    pub batch: usize,
    /// Number of crops per image.
    pub crops: usize,
}

/// Run the model on `crops` (each `[B, 3, s, s]`): the backbone once per resolution group
/// `groups` (consecutive crops of one size, so BatchNorm statistics are per group), then the
/// head on all features; scores of the first prototype head.
pub fn forward<B: Backend>(
    model: &Swav<B>,
    crops: &[Tensor<B, 4>],
    groups: &[std::ops::Range<usize>],
) -> Forward<B> {
    let feats: Vec<Tensor<B, 2>> = groups
        .iter()
        .map(|g| {
            model
                .backbone
                .forward(Tensor::cat(crops[g.clone()].to_vec(), 0))
        })
        .collect();
    let out = model.head(Tensor::cat(feats, 0));
    Forward {
        scores: out.scores.into_iter().next().expect("a prototype head"),
        embedding: out.embedding,
        batch: crops[0].dims()[0],
        crops: crops.len(),
    }
}

/// The rows Sinkhorn-Knopp sees for each assigned crop, on the host (`[rows, K]`): the queue's
/// scores against the current prototypes first when the queue is in use, then the batch's.
/// The queue is then shifted and the batch's embeddings pushed in front (main_swav.py order).
pub fn assignment_scores<B: Backend>(
    fwd: &Forward<B>,
    model: &Swav<B>,
    loss: &SwavLoss,
    mut queue: Option<&mut Queue>,
) -> Vec<Vec<f32>> {
    let bs = fwd.batch;
    loss.crops_for_assign
        .iter()
        .enumerate()
        .map(|(i, &a)| {
            let batch: Vec<f32> = to_host(fwd.scores.clone().narrow(0, a * bs, bs));
            let Some(q) = queue.as_deref_mut() else {
                return batch;
            };
            let mut rows = Vec::new();
            if q.in_use || q.is_full(i) {
                q.in_use = true;
                let w = model.prototypes.as_ref().expect("prototypes").heads[0]
                    .weight
                    .val()
                    .detach();
                let device = fwd.scores.device();
                let stored = Tensor::<B, 2>::from_data(
                    TensorData::new(q.rows[i].clone(), [q.len, q.dim]),
                    &device,
                );
                rows = to_host(stored.matmul(w));
            }
            q.push(
                i,
                &to_host(fwd.embedding.clone().narrow(0, a * bs, bs).detach()),
            );
            rows.extend(batch);
            rows
        })
        .collect()
}

/// The value of a one-element tensor (a loss), read from the device.
pub(crate) fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    t.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("a one-element tensor")[0]
}

fn to_host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.detach()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 values")
}

/// The swapped-prediction loss given each assigned crop's codes (`[B, K]` row-major): for each
/// assigned crop `a`, the mean over the other crops `v` of `−mean_b Σ_k q_a log softmax(p_v / τ)`,
/// averaged over the assigned crops.
pub fn swapped_loss<B: Backend>(
    fwd: &Forward<B>,
    codes: &[Vec<f32>],
    loss: &SwavLoss,
) -> Tensor<B, 1> {
    let bs = fwd.batch;
    let k = fwd.scores.dims()[1];
    let device = fwd.scores.device();
    let mut total: Option<Tensor<B, 1>> = None;
    for (q, &a) in codes.iter().zip(&loss.crops_for_assign) {
        let q_t = Tensor::<B, 2>::from_data(TensorData::new(q.clone(), [bs, k]), &device);
        let mut sub: Option<Tensor<B, 1>> = None;
        for v in (0..fwd.crops).filter(|&v| v != a) {
            let x = fwd.scores.clone().narrow(0, v * bs, bs) / loss.temperature;
            let term = (q_t.clone() * log_softmax(x, 1)).sum_dim(1).mean().neg();
            sub = Some(match sub {
                Some(acc) => acc + term,
                None => term,
            });
        }
        let sub = sub.expect("at least two crops") / (fwd.crops - 1) as f32;
        total = Some(match total {
            Some(t) => t + sub,
            None => sub,
        });
    }
    total.expect("at least one assigned crop") / loss.crops_for_assign.len() as f32
}

/// Codes for several workers' rows at once (distributed Sinkhorn: its sums run over every
/// worker's rows, which is the same as one Sinkhorn over the rows put together); each worker
/// gets the codes of its last `batches[w]` rows (its images, after any queue rows).
pub fn joint_codes(
    rows: &[Vec<f32>],
    k: usize,
    batches: &[usize],
    loss: &SwavLoss,
) -> Vec<Vec<f32>> {
    let all: Vec<f32> = rows.iter().flatten().copied().collect();
    let q = sinkhorn(
        &all,
        all.len() / k,
        k,
        loss.epsilon,
        loss.sinkhorn_iterations,
    );
    let mut out = Vec::with_capacity(rows.len());
    let mut at = 0;
    for (r, &batch) in rows.iter().zip(batches) {
        let end = at + r.len();
        out.push(q[end - batch * k..end].to_vec());
        at = end;
    }
    out
}

/// The loss of one step and the codes it used.
pub struct StepOutput<B: Backend> {
    /// Scalar loss.
    pub loss: Tensor<B, 1>,
    /// Codes per assigned crop, `[B, K]` row-major.
    pub codes: Vec<Vec<f32>>,
}

/// The SwAV loss of one worker's `crops` (each `[B, 3, s, s]`), whose resolution groups are
/// the index ranges `groups`, with the queue when given (main_swav.py's `train` body).
pub fn swav_step<B: Backend>(
    model: &Swav<B>,
    crops: &[Tensor<B, 4>],
    groups: &[std::ops::Range<usize>],
    loss: &SwavLoss,
    queue: Option<&mut Queue>,
) -> StepOutput<B> {
    let fwd = forward(model, crops, groups);
    let k = fwd.scores.dims()[1];
    let rows = assignment_scores(&fwd, model, loss, queue);
    let codes: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| joint_codes(std::slice::from_ref(r), k, &[fwd.batch], loss).remove(0))
        .collect();
    StepOutput {
        loss: swapped_loss(&fwd, &codes, loss),
        codes,
    }
}

/// main_swav.py's queue: for each assigned crop, the embeddings of the last `len` images
/// (newest first), all zeros until filled. It is used from the first step at which its last
/// row is non-zero (then for the rest of the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    /// Rows per assigned crop (`queue_length / workers`).
    pub len: usize,
    /// Embedding width.
    pub dim: usize,
    /// `[len, dim]` row-major per assigned crop.
    pub rows: Vec<Vec<f32>>,
    /// Whether this epoch already uses it.
    pub in_use: bool,
}

impl Queue {
    /// An empty (all-zero) queue.
    pub fn new(assigned: usize, len: usize, dim: usize) -> Queue {
        Queue {
            len,
            dim,
            rows: vec![vec![0.0; len * dim]; assigned],
            in_use: false,
        }
    }

    /// Whether the last row of crop `i`'s queue is filled.
    pub fn is_full(&self, i: usize) -> bool {
        self.len > 0
            && self.rows[i][(self.len - 1) * self.dim..]
                .iter()
                .any(|&v| v != 0.0)
    }

    /// Shift crop `i`'s queue by the batch and put `embeddings` (`[B, dim]`) in front.
    pub fn push(&mut self, i: usize, embeddings: &[f32]) {
        let q = &mut self.rows[i];
        let total = q.len();
        let n = embeddings.len().min(total);
        q.copy_within(0..total - n, n);
        q[..n].copy_from_slice(&embeddings[..n]);
    }
}
