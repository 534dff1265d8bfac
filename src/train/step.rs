//! One SwAV training step as facebookresearch/swav `main_swav.py` computes it:
//! prototypes L2-normalised; the backbone run once per crop-resolution group (BatchNorm
//! statistics per group); projection head and L2 normalisation; scores = z · prototypesᵀ;
//! codes by Sinkhorn-Knopp (no gradient) for `crops_for_assign`; the swapped-prediction loss
//! with a temperature, averaged over the other crops and over the assigned crops.

use crate::model::swav::Swav;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
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

/// The loss of one step and the codes it used.
pub struct StepOutput<B: Backend> {
    /// Scalar loss.
    pub loss: Tensor<B, 1>,
    /// Codes per assigned crop, `[B, K]` row-major.
    pub codes: Vec<Vec<f32>>,
}

/// The SwAV loss of `crops` (each `[B, 3, s, s]`), whose resolution groups are the index
/// ranges `groups` (consecutive crops of one size), for the first prototype head.
pub fn swav_step<B: AutodiffBackend>(
    model: &Swav<B>,
    crops: &[Tensor<B, 4>],
    groups: &[std::ops::Range<usize>],
    loss: &SwavLoss,
) -> StepOutput<B> {
    let bs = crops[0].dims()[0];
    let feats: Vec<Tensor<B, 2>> = groups
        .iter()
        .map(|g| {
            model
                .backbone
                .forward(Tensor::cat(crops[g.clone()].to_vec(), 0))
        })
        .collect();
    let out = model.head(Tensor::cat(feats, 0));
    let scores = out.scores.into_iter().next().expect("a prototype head");
    let k = scores.dims()[1];
    let n_crops = crops.len();
    let mut total: Option<Tensor<B, 1>> = None;
    let mut codes = Vec::new();
    for &a in &loss.crops_for_assign {
        let s = scores.clone().narrow(0, a * bs, bs).detach();
        let values: Vec<f32> = s.into_data().convert::<f32>().to_vec().expect("f32 scores");
        let q = sinkhorn(&values, bs, k, loss.epsilon, loss.sinkhorn_iterations);
        let q_t = Tensor::<B, 2>::from_data(TensorData::new(q.clone(), [bs, k]), &scores.device());
        codes.push(q);
        let mut sub: Option<Tensor<B, 1>> = None;
        for v in (0..n_crops).filter(|&v| v != a) {
            let x = scores.clone().narrow(0, v * bs, bs) / loss.temperature;
            let term = (q_t.clone() * log_softmax(x, 1)).sum_dim(1).mean().neg();
            sub = Some(match sub {
                Some(acc) => acc + term,
                None => term,
            });
        }
        let sub = sub.expect("at least two crops") / (n_crops - 1) as f32;
        total = Some(match total {
            Some(t) => t + sub,
            None => sub,
        });
    }
    let loss_t = total.expect("at least one assigned crop") / loss.crops_for_assign.len() as f32;
    StepOutput {
        loss: loss_t,
        codes,
    }
}
