//! One data-parallel rank (facebookresearch/swav runs one DDP process per GPU): its replica of
//! the model on its device, its optimizer state, its slice of the queue and its communicator.
//! A rank knows nothing of threads or processes: [`Rank::step`] is one SwAV step on the rank's
//! shard of the batch, and every exchange with the other ranks is a collective of its
//! [`Communicator`] — Sinkhorn-Knopp's sums, then the gradients and the loss in one buffer.
//!
//! As in DDP, every rank applies the same averaged gradients with its own copy of the optimizer,
//! so the replicas stay equal; each rank's BatchNorm normalises with its own shard's statistics
//! and updates its own running statistics (DDP without SyncBatchNorm, as main_swav.py runs when
//! `--sync_bn` is off).

use super::lars::Lars;
use super::step::{self, DeviceQueue, SwavLoss};
use crate::collective::{CollectiveError, Communicator, DifferentiableCollective};
use crate::model::batchnorm::{self, RankSum};
use crate::model::swav::Swav;
use burn::module::ParamId;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use std::sync::Arc;

/// The optimizer: LARS over every parameter of the model.
pub type SwavOptimizer<A> =
    OptimizerAdaptor<Lars<<A as AutodiffBackend>::InnerBackend>, Swav<A>, A>;

/// What every rank's step needs to know, the same on every rank.
#[derive(Debug, Clone)]
pub struct StepSettings {
    pub loss: SwavLoss,
    /// Consecutive crops of one resolution, run through the backbone together.
    pub groups: Vec<std::ops::Range<usize>>,
    /// The prototypes' parameters, whose gradients are dropped while they are frozen.
    pub prototype_ids: Vec<ParamId>,
    /// Synchronised BatchNorm: statistics of the global batch (`model.backbone.sync_bn`).
    pub sync_bn: bool,
}

/// One rank's state (the model itself is passed through [`Rank::step`] by value, so that the
/// optimizer owns its parameters while it updates them).
pub struct Rank<A: AutodiffBackend> {
    pub device: A::Device,
    pub optim: SwavOptimizer<A>,
    pub queue: Option<DeviceQueue<A::InnerBackend>>,
    pub comm: Communicator<A::InnerBackend>,
}

/// The prototypes' parameters (frozen during the first iterations).
pub fn prototype_ids<B: Backend>(model: &Swav<B>) -> Vec<ParamId> {
    model
        .prototypes
        .iter()
        .flat_map(|p| p.heads.iter().map(|l| l.weight.id))
        .collect()
}

impl<A: DifferentiableCollective> Rank<A> {
    /// Every rank's queue, in rank order (a collective: every rank calls it), or `None`
    /// without a queue.
    pub fn all_queues(&self) -> Result<Option<Vec<super::step::Queue>>, CollectiveError> {
        let Some(q) = &self.queue else {
            return Ok(None);
        };
        let mine = q.to_host();
        let flat: Vec<f32> = mine.rows.concat();
        let n = flat.len();
        let t = Tensor::<A::InnerBackend, 1>::from_data(
            burn::tensor::TensorData::new(flat, [n]),
            &self.device,
        );
        let all = self.comm.all_gather(t)?.into_data().convert::<f32>();
        let all = all.as_slice::<f32>().expect("f32 after convert");
        let per_crop = mine.len * mine.dim;
        Ok(Some(
            all.chunks(n.max(1))
                .map(|r| super::step::Queue {
                    len: mine.len,
                    dim: mine.dim,
                    rows: r.chunks(per_crop.max(1)).map(<[f32]>::to_vec).collect(),
                    in_use: mine.in_use,
                })
                .collect(),
        ))
    }

    /// The rank number.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// At an epoch's start: the queue (`[assigned, len, dim]` per rank) once it starts, and
    /// not in use until full again (main_swav.py's `use_the_queue = False` per epoch).
    pub fn begin_epoch(&mut self, queue: Option<[usize; 3]>) {
        if let (None, Some([assigned, len, dim])) = (&self.queue, queue) {
            self.queue = Some(DeviceQueue::zeros(assigned, len, dim, &self.device));
        }
        if let Some(q) = &mut self.queue {
            q.in_use = false;
        }
    }

    /// One step on this rank's `crops` (each `[B, 3, s, s]`, on its device) at learning rate
    /// `rate`: prototypes normalised, forward, codes over every rank, backward, gradients and
    /// loss averaged over the ranks, LARS. Returns the updated model and the mean loss of the
    /// ranks (the same on every rank); a non-finite loss leaves the model as it was (normalised).
    pub fn step(
        &mut self,
        model: Swav<A>,
        crops: &[Tensor<A, 4>],
        rate: f64,
        frozen: bool,
        s: &StepSettings,
    ) -> Result<(Swav<A>, f64), CollectiveError> {
        let model = step::normalize_prototypes(model);
        let (grads, loss) = self.gradients(&model, crops, frozen, s)?;
        if !loss.is_finite() {
            return Ok((model, loss));
        }
        Ok((self.optim.step(rate, model, grads), loss))
    }

    /// The gradients of the step of `model` (prototypes already normalised) on `crops`,
    /// averaged over the ranks, without the prototypes' while `frozen`; and the mean loss.
    pub fn gradients(
        &mut self,
        model: &Swav<A>,
        crops: &[Tensor<A, 4>],
        frozen: bool,
        s: &StepSettings,
    ) -> Result<(GradientsParams, f64), CollectiveError> {
        let comm = self.comm.clone();
        let queue = self.queue.as_mut();
        let forward = || step::swav_step(model, crops, &s.groups, &s.loss, queue, &comm);
        let out = if s.sync_bn && comm.world() > 1 {
            let ranks: Arc<dyn RankSum<A>> = Arc::new(GlobalBatch(comm.clone()));
            batchnorm::synchronised(ranks, forward)?
        } else {
            forward()?
        };
        // The backward pass is queued before the loss is read, so that reading it does not
        // make an asynchronous device (CUDA) finish the forward pass first.
        let mut grads = GradientsParams::from_grads(out.loss.clone().backward(), model);
        if frozen {
            for id in &s.prototype_ids {
                grads.remove::<A::InnerBackend, 2>(*id);
            }
        }
        self.average(model, grads, out.loss)
    }

    /// The mean over the ranks of the gradients and of the loss: one all-reduce of one buffer
    /// (every gradient flattened, the loss last), and one read of the loss.
    fn average(
        &self,
        model: &Swav<A>,
        grads: GradientsParams,
        loss: Tensor<A, 1>,
    ) -> Result<(GradientsParams, f64), CollectiveError> {
        let world = self.comm.world();
        if self.comm.engine().is_none() {
            return Ok((grads, step::scalar(loss)));
        }
        let (grads, loss) =
            self.comm
                .all_reduce_gradients(model, grads, loss.inner(), 1.0 / world as f64)?;
        Ok((grads, step::scalar(loss)))
    }
}

/// The ranks of a communicator as synchronised BatchNorm sees them.
struct GlobalBatch<B: Backend>(Communicator<B>);

impl<A: DifferentiableCollective> RankSum<A> for GlobalBatch<A::InnerBackend> {
    fn rank(&self) -> usize {
        self.0.rank()
    }

    fn world(&self) -> usize {
        self.0.world()
    }

    fn sum(&self, t: Tensor<A, 1>) -> Tensor<A, 1> {
        // A failure panics: the rank's thread reports it as the rank's failure.
        A::all_reduce_sum_differentiable(t, &self.0)
            .unwrap_or_else(|e| panic!("synchronised BatchNorm: {e}"))
    }
}
