//! The collective engine that data-parallel ranks talk through: sums of tensors over every rank
//! (gradients, Sinkhorn-Knopp's sums, a maximum), never written here.
//!
//! Ranks in one process go through **burn-collective 0.21**'s local level: each rank is a peer
//! registered with the process's collective server for its backend, and
//! [`Communicator::all_reduce_sum`] is `burn_collective::all_reduce(.., Sum)`. The server reduces
//! on the devices themselves (`float_to_device` + `float_add`, a tree of arity 2), for the CPU
//! backend and the CUDA backend alike. A communicator of a one-rank world never calls it.
//!
//! burn-collective keeps one server per backend type and process, so one group at a time can
//! exist per process: [`LocalGroup::register`] waits for the previous group to end (runs in one
//! process — tests — take turns). Ending a group, normally or because a rank failed, resets the
//! server: every rank still waiting in an all-reduce gets an error instead of waiting for a
//! peer that will never come ([`GroupHandle::abort`]).
//!
//! Order of summation: with two ranks a sum is exact in any order. With three or more the tree
//! adds the ranks' tensors in an order that follows the server's hash map, so the last bit of a
//! sum can differ from run to run.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use std::sync::{Arc, Condvar, Mutex};

/// A collective operation that did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CollectiveError {
    /// Registering the ranks with the engine failed.
    #[error("registering {world} ranks with the collective engine failed: {detail}")]
    Register { world: usize, detail: String },
    /// An all-reduce failed: the group was aborted (another rank failed) or the engine refused.
    #[error("rank {rank}: all-reduce failed ({detail})")]
    AllReduce { rank: usize, detail: String },
}

/// One rank's handle on its group.
pub struct Communicator<B: Backend> {
    rank: usize,
    world: usize,
    group: Option<Arc<LocalGroup<B>>>,
}

impl<B: Backend> Communicator<B> {
    /// The communicator of a world of one rank: every collective is the identity.
    pub fn solo() -> Self {
        Communicator {
            rank: 0,
            world: 1,
            group: None,
        }
    }

    /// This rank's index, from 0.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// The element-wise sum over every rank of `t` (each rank passes a tensor of the same
    /// shape); every rank gets the same values.
    pub fn all_reduce_sum<const D: usize>(
        &self,
        t: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, CollectiveError> {
        if self.world == 1 {
            return Ok(t);
        }
        let prim = t.into_primitive().tensor();
        burn_collective::all_reduce::<B>(PeerId(self.rank as u32), prim, ReduceOperation::Sum)
            .map(|out| Tensor::from_primitive(TensorPrimitive::Float(out)))
            .map_err(|e| CollectiveError::AllReduce {
                rank: self.rank,
                detail: describe(&e),
            })
    }

    /// The largest of every rank's `value` (`[1]`), as `[1]`: each rank writes its value into
    /// its own slot of a zero vector and the vectors are summed (exact: every slot holds one
    /// value and zeros).
    pub fn all_reduce_max(&self, value: Tensor<B, 1>) -> Result<Tensor<B, 1>, CollectiveError> {
        if self.world == 1 {
            return Ok(value);
        }
        let slot = self.rank..self.rank + 1;
        let slots =
            Tensor::<B, 1>::zeros([self.world], &value.device()).slice_assign([slot], value);
        Ok(self.all_reduce_sum(slots)?.max())
    }

    /// A handle on this rank's group that keeps it alive (see [`GroupHandle::abort`]).
    pub fn handle(&self) -> GroupHandle<B> {
        GroupHandle(self.group.clone())
    }
}

/// Keeps a group alive while held, and can end it.
pub struct GroupHandle<B: Backend>(Option<Arc<LocalGroup<B>>>);

impl<B: Backend> Clone for GroupHandle<B> {
    fn clone(&self) -> Self {
        GroupHandle(self.0.clone())
    }
}

impl<B: Backend> GroupHandle<B> {
    /// End the group for every rank: ranks waiting in a collective, or calling one later, get
    /// an error. Called when a rank fails, so that the others do not wait for it. The handle
    /// keeps the group alive, so this can never end a later group of the process.
    pub fn abort(&self) {
        if self.0.is_some() {
            burn_collective::reset_collective::<B>();
        }
    }
}

/// Ranks of one process registered with burn-collective's server for backend `B`.
pub struct LocalGroup<B: Backend> {
    _backend: std::marker::PhantomData<fn() -> B>,
}

/// Whether a group exists in this process (burn-collective has one server per backend).
static BUSY: Mutex<bool> = Mutex::new(false);
static FREED: Condvar = Condvar::new();

impl<B: Backend> LocalGroup<B> {
    /// Register one rank per device (rank `w` on `devices[w]`) and return their communicators,
    /// in rank order. Waits while another group of this process exists.
    pub fn register(devices: &[B::Device]) -> Result<Vec<Communicator<B>>, CollectiveError> {
        let world = devices.len();
        if world <= 1 {
            return Ok(vec![Communicator::solo()]);
        }
        {
            let mut busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
            while *busy {
                busy = FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
            }
            *busy = true;
        }
        // From here on, dropping the group frees the server again.
        let group = Arc::new(LocalGroup {
            _backend: std::marker::PhantomData,
        });
        burn_collective::reset_collective::<B>();
        let config = CollectiveConfig::default().with_num_devices(world);
        // `register` returns once every peer has registered: one thread per rank.
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = devices
                .iter()
                .enumerate()
                .map(|(w, d)| {
                    let (d, config) = (d.clone(), config.clone());
                    s.spawn(move || {
                        burn_collective::register::<B>(PeerId(w as u32), d, config)
                            .map_err(|e| describe(&e))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a registration panicked".into()))
                })
                .collect()
        });
        if let Some(Err(detail)) = results.into_iter().find(Result::is_err) {
            return Err(CollectiveError::Register { world, detail });
        }
        Ok((0..world)
            .map(|rank| Communicator {
                rank,
                world,
                group: Some(group.clone()),
            })
            .collect())
    }
}

impl<B: Backend> Drop for LocalGroup<B> {
    fn drop(&mut self) {
        burn_collective::reset_collective::<B>();
        *BUSY.lock().unwrap_or_else(|e| e.into_inner()) = false;
        FREED.notify_one();
    }
}

fn describe(e: &burn_collective::CollectiveError) -> String {
    use burn_collective::CollectiveError as E;
    match e {
        E::LocalServerMissing | E::RegisterNotFirstOperation => {
            "the group was ended: another rank failed".into()
        }
        other => format!("{other:?}"),
    }
}
