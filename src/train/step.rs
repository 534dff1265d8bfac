//! One SwAV training step as facebookresearch/swav `main_swav.py` computes it:
//! prototypes L2-normalised; the backbone run once per crop-resolution group (BatchNorm
//! statistics per group); projection head and L2 normalisation; scores = z · prototypesᵀ;
//! codes by Sinkhorn-Knopp (no gradient, on the device, [`super::sinkhorn`]) for
//! `crops_for_assign`, over every rank's rows; the swapped-prediction loss with a temperature,
//! averaged over the other crops and over the assigned crops.
//!
//! Nothing here reads the device from the host except `scalar` (the loss, once per step);
//! [`host_reads`] counts such reads.

use super::sinkhorn;
use crate::collective::{CollectiveError, Communicator};
use crate::model::swav::Swav;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Codes of each assigned crop of this rank's batch (`[B, K]`, no gradient), from the rows
/// Sinkhorn-Knopp sees: the queue's scores against the current prototypes first when the queue
/// is in use, then the batch's; its sums run over every rank of `comm`. The queue is then
/// shifted and the batch's embeddings pushed in front (main_swav.py order).
pub fn assigned_codes<A: AutodiffBackend>(
    fwd: &Forward<A>,
    model: &Swav<A>,
    loss: &SwavLoss,
    mut queue: Option<&mut DeviceQueue<A::InnerBackend>>,
    comm: &Communicator<A::InnerBackend>,
) -> Result<Vec<Tensor<A::InnerBackend, 2>>, CollectiveError> {
    let bs = fwd.batch;
    let scores = fwd.scores.clone().inner();
    let mut out = Vec::with_capacity(loss.crops_for_assign.len());
    for (i, &a) in loss.crops_for_assign.iter().enumerate() {
        let batch = scores.clone().narrow(0, a * bs, bs);
        let rows = match queue.as_deref_mut() {
            None => batch,
            Some(q) => {
                let mut rows = batch;
                if q.in_use || q.is_full(i) {
                    q.in_use = true;
                    let w = model.prototypes.as_ref().expect("prototypes").heads[0]
                        .weight
                        .val()
                        .inner();
                    rows = Tensor::cat(vec![q.rows[i].clone().matmul(w), rows], 0);
                }
                q.push(i, fwd.embedding.clone().inner().narrow(0, a * bs, bs));
                rows
            }
        };
        let n = rows.dims()[0];
        let q = sinkhorn::codes(rows, comm, loss.epsilon, loss.sinkhorn_iterations)?;
        out.push(q.narrow(0, n - bs, bs));
    }
    Ok(out)
}

static HOST_READS: AtomicUsize = AtomicUsize::new(0);

/// How many times training code has waited for a device to read a value back (each a
/// synchronisation of the host with the device), since the process started.
pub fn host_reads() -> usize {
    HOST_READS.load(Ordering::Relaxed)
}

/// The value of a one-element tensor (a loss), read from the device.
pub(crate) fn scalar<B: Backend>(t: Tensor<B, 1>) -> f64 {
    HOST_READS.fetch_add(1, Ordering::Relaxed);
    t.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("a one-element tensor")[0]
}

/// The swapped-prediction loss given each assigned crop's codes (`[B, K]`): for each assigned
/// crop `a`, the mean over the other crops `v` of `−mean_b Σ_k q_a log softmax(p_v / τ)`,
/// averaged over the assigned crops.
pub fn swapped_loss<A: AutodiffBackend>(
    fwd: &Forward<A>,
    codes: &[Tensor<A::InnerBackend, 2>],
    loss: &SwavLoss,
) -> Tensor<A, 1> {
    let bs = fwd.batch;
    let mut total: Option<Tensor<A, 1>> = None;
    for (q, &a) in codes.iter().zip(&loss.crops_for_assign) {
        let q_t = Tensor::<A, 2>::from_inner(q.clone());
        let mut sub: Option<Tensor<A, 1>> = None;
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

/// The loss of one step and the codes it used.
pub struct StepOutput<A: AutodiffBackend> {
    /// Scalar loss.
    pub loss: Tensor<A, 1>,
    /// Codes per assigned crop, `[B, K]`.
    pub codes: Vec<Tensor<A::InnerBackend, 2>>,
}

/// The SwAV loss of one rank's `crops` (each `[B, 3, s, s]`), whose resolution groups are the
/// index ranges `groups`, with the queue when given (main_swav.py's `train` body); Sinkhorn's
/// sums run over the ranks of `comm`.
pub fn swav_step<A: AutodiffBackend>(
    model: &Swav<A>,
    crops: &[Tensor<A, 4>],
    groups: &[std::ops::Range<usize>],
    loss: &SwavLoss,
    queue: Option<&mut DeviceQueue<A::InnerBackend>>,
    comm: &Communicator<A::InnerBackend>,
) -> Result<StepOutput<A>, CollectiveError> {
    let fwd = forward(model, crops, groups);
    let codes = assigned_codes(&fwd, model, loss, queue, comm)?;
    Ok(StepOutput {
        loss: swapped_loss(&fwd, &codes, loss),
        codes,
    })
}

/// main_swav.py's queue, one rank's slice on its device: for each assigned crop, the
/// embeddings of the last `len` images (`[len, dim]`, newest first), all zeros until filled.
/// It is used from the first step at which its last row is written (then for the rest of
/// the epoch).
#[derive(Debug, Clone)]
pub struct DeviceQueue<B: Backend> {
    pub rows: Vec<Tensor<B, 2>>,
    pub len: usize,
    pub dim: usize,
    /// Rows written so far per assigned crop (up to `len`).
    filled: Vec<usize>,
    /// Whether this epoch already uses it.
    pub in_use: bool,
}

impl<B: Backend> DeviceQueue<B> {
    /// An empty (all-zero) queue: `len` rows of width `dim` for each of `assigned` crops.
    pub fn zeros(assigned: usize, len: usize, dim: usize, device: &B::Device) -> Self {
        DeviceQueue {
            rows: (0..assigned)
                .map(|_| Tensor::zeros([len, dim], device))
                .collect(),
            len,
            dim,
            filled: vec![0; assigned],
            in_use: false,
        }
    }

    /// The host queue `q` on `device` (its filled rows counted: they are the non-zero ones,
    /// newest first).
    pub fn from_host(q: &Queue, device: &B::Device) -> Self {
        let filled = (0..q.rows.len())
            .map(|i| {
                (0..q.len)
                    .rev()
                    .find(|&r| {
                        q.rows[i][r * q.dim..(r + 1) * q.dim]
                            .iter()
                            .any(|&v| v != 0.0)
                    })
                    .map_or(0, |r| r + 1)
            })
            .collect();
        DeviceQueue {
            rows: q
                .rows
                .iter()
                .map(|r| Tensor::from_data(TensorData::new(r.clone(), [q.len, q.dim]), device))
                .collect(),
            len: q.len,
            dim: q.dim,
            filled,
            in_use: q.in_use,
        }
    }

    /// The queue on the host (for checkpoints).
    pub fn to_host(&self) -> Queue {
        Queue {
            len: self.len,
            dim: self.dim,
            rows: self
                .rows
                .iter()
                .map(|t| {
                    HOST_READS.fetch_add(1, Ordering::Relaxed);
                    t.clone()
                        .into_data()
                        .convert::<f32>()
                        .to_vec()
                        .expect("f32 values")
                })
                .collect(),
            in_use: self.in_use,
        }
    }

    /// Whether crop `i`'s queue is full (its last row written).
    pub fn is_full(&self, i: usize) -> bool {
        self.len > 0 && self.filled[i] >= self.len
    }

    /// Shift crop `i`'s queue by the batch and put `embeddings` (`[B, dim]`) in front.
    pub fn push(&mut self, i: usize, embeddings: Tensor<B, 2>) {
        let n = embeddings.dims()[0];
        self.rows[i] = if n >= self.len {
            embeddings.narrow(0, 0, self.len)
        } else {
            Tensor::cat(
                vec![embeddings, self.rows[i].clone().narrow(0, 0, self.len - n)],
                0,
            )
        };
        self.filled[i] = (self.filled[i] + n).min(self.len);
    }
}

/// A rank's queue on the host, as checkpoints hold it ([`DeviceQueue`] is the one training
/// uses): for each assigned crop, the embeddings of the last `len` images (newest first), all
/// zeros until filled.
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
    /// Shift crop `i`'s queue by the batch and put `embeddings` (`[B, dim]`) in front (the
    /// host form of [`DeviceQueue::push`], for reference computations).
    pub fn push(&mut self, i: usize, embeddings: &[f32]) {
        let q = &mut self.rows[i];
        let total = q.len();
        let n = embeddings.len().min(total);
        q.copy_within(0..total - n, n);
        q[..n].copy_from_slice(&embeddings[..n]);
    }
}
