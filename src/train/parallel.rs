//! One data-parallel SwAV step over several devices of one host (facebookresearch/swav runs
//! DDP): each device holds a replica of the model and its share of the batch; Sinkhorn-Knopp
//! runs over the rows of all devices together (its sums are global, as in main_swav.py's
//! `distributed_sinkhorn`); each device back-propagates its own loss; the gradients are
//! averaged on the first device (DDP's all-reduce). BatchNorm statistics are per device (the
//! replicas run one after another, so their BatchNorms cannot share statistics). With one
//! device it is [`super::step::swav_step`].

use super::step::{self, Queue, SwavLoss};
use crate::model::swav::Swav;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

/// Averages several devices' gradients into one set, on the first device's module.
struct MeanGrads {
    parts: Vec<GradientsParams>,
    out: GradientsParams,
}

impl<A: AutodiffBackend> ModuleVisitor<A> for MeanGrads {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let n = self.parts.len() as f32;
        let mut sum: Option<Tensor<A::InnerBackend, D>> = None;
        for p in &mut self.parts {
            if let Some(g) = p.remove::<A::InnerBackend, D>(param.id) {
                sum = Some(match sum {
                    Some(s) => s + g,
                    None => g,
                });
            }
        }
        if let Some(s) = sum {
            self.out.register(param.id, s / n);
        }
    }
}

/// Split a batch's crop tensors (one per resolution, crop-major: crop `k` of sample `i` at
/// row `k·N + i`) into each device's crops: device `w` takes samples `[w·N/n, (w+1)·N/n)`,
/// one `[B_w, 3, s, s]` tensor per crop, moved to `devices[w]`.
pub fn split_batch<A: AutodiffBackend>(
    crops: &[Tensor<A, 4>],
    num_crops: &[usize],
    devices: &[A::Device],
) -> Vec<Vec<Tensor<A, 4>>> {
    let n_dev = devices.len();
    let n = crops
        .first()
        .map_or(0, |t| t.dims()[0] / num_crops[0].max(1));
    (0..n_dev)
        .map(|w| {
            let (start, end) = (w * n / n_dev, (w + 1) * n / n_dev);
            let mut out = Vec::new();
            for (t, &count) in crops.iter().zip(num_crops) {
                for k in 0..count {
                    let c = t.clone().narrow(0, k * n + start, end - start);
                    out.push(if w == 0 { c } else { c.to_device(&devices[w]) });
                }
            }
            out
        })
        .collect()
}

/// What one data-parallel step gives.
pub struct ParallelStep {
    /// Mean of the devices' losses (each the mean over its images).
    pub loss: f64,
    /// Averaged gradients, on the first device, for `model`'s parameters.
    pub grads: GradientsParams,
}

/// One step: `crops[w]` are device `w`'s crops (each `[B_w, 3, s, s]`, already on
/// `devices[w]`), `queues[w]` its queue. `model` lives on `devices[0]`.
pub fn step<A: AutodiffBackend>(
    model: &Swav<A>,
    devices: &[A::Device],
    crops: &[Vec<Tensor<A, 4>>],
    groups: &[std::ops::Range<usize>],
    loss: &SwavLoss,
    mut queues: Option<&mut [Queue]>,
) -> ParallelStep {
    if let [only] = crops {
        // One device: the single-worker step the parity tests check against PyTorch.
        let queue = queues.and_then(|q| q.first_mut());
        let out = step::swav_step(model, only, groups, loss, queue);
        // The backward pass is queued before the loss is read, so that reading it does not
        // make an asynchronous device (CUDA) finish the forward pass first.
        let grads = GradientsParams::from_grads(out.loss.clone().backward(), model);
        return ParallelStep {
            loss: step::scalar(out.loss),
            grads,
        };
    }
    let n = devices.len();
    let replicas: Vec<Swav<A>> = (0..n)
        .map(|w| {
            if w == 0 {
                model.clone()
            } else {
                model.clone().fork(&devices[w])
            }
        })
        .collect();
    let fwds: Vec<step::Forward<A>> = replicas
        .iter()
        .zip(crops)
        .map(|(r, c)| step::forward(r, c, groups))
        .collect();
    let k = fwds[0].scores.dims()[1];
    let rows: Vec<Vec<Vec<f32>>> = fwds
        .iter()
        .zip(&replicas)
        .enumerate()
        .map(|(w, (f, r))| {
            let q = queues.as_deref_mut().map(|q| &mut q[w]);
            step::assignment_scores(f, r, loss, q)
        })
        .collect();
    let batches: Vec<usize> = fwds.iter().map(|f| f.batch).collect();
    let mut codes: Vec<Vec<Vec<f32>>> = vec![Vec::new(); n];
    for i in 0..loss.crops_for_assign.len() {
        let per: Vec<Vec<f32>> = rows.iter().map(|r| r[i].clone()).collect();
        for (w, c) in step::joint_codes(&per, k, &batches, loss)
            .into_iter()
            .enumerate()
        {
            codes[w].push(c);
        }
    }
    let mut value = 0.0;
    let mut grads = Vec::with_capacity(n);
    for (w, (f, r)) in fwds.iter().zip(&replicas).enumerate() {
        let l = step::swapped_loss(f, &codes[w], loss);
        let g = GradientsParams::from_grads(l.clone().backward(), r);
        value += step::scalar(l) / n as f64;
        grads.push(if w == 0 {
            g
        } else {
            g.to_device(&devices[0], r)
        });
    }
    let mut mean = MeanGrads {
        parts: grads,
        out: GradientsParams::new(),
    };
    model.visit(&mut mean);
    ParallelStep {
        loss: value,
        grads: mean.out,
    }
}
