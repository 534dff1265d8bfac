//! The collective engine that data-parallel ranks talk through: sums of tensors over every rank
//! (gradients, Sinkhorn-Knopp's sums, BatchNorm statistics, a maximum), never written here.
//!
//! Two engines, chosen per group ([`Engine`]):
//!
//! - **NCCL**, for CUDA ranks: Burn 0.21's own `DistributedBackend::all_reduce` (burn-cubecl runs
//!   `ncclAllReduce` through cudarc on a stream of its own; the communicator is made on the first
//!   call, every rank of the process joining it). What every peer uses on GPUs (PyTorch DDP,
//!   Paddle). [`Engine::Auto`] takes it for CUDA ranks when the NCCL library loads.
//! - **burn-collective 0.21**'s local level, for every backend (the CPU one, and CUDA ranks
//!   without NCCL): each rank is a peer registered with the process's collective server for its
//!   backend, and an all-reduce is `burn_collective::all_reduce(.., Sum)`. The server reduces on
//!   the devices themselves (`float_to_device` + `float_add`, a tree of arity 2).
//!
//! Between the processes of a multi-process run ([`LocalGroup::register_processes`],
//! [`crate::dist`]), the same two engines:
//!
//! - **NCCL** for CUDA ranks: one communicator over every rank of every process, made from the
//!   unique id process 0 sends at the rendezvous (NCCL does the rest: its own bootstrap,
//!   NVLink, InfiniBand). cubecl-cuda 0.10 makes its ids per process; its patched copy
//!   (`vendor/cubecl-cuda`) takes the id and the global ranks from here.
//! - **burn-collective's global level** for CPU ranks (and CUDA ranks without NCCL): each
//!   process's ranks are summed by the local level, the processes' sums by the global one (an
//!   orchestrator started by process 0, a tensor service on every process). Patched copies of
//!   the crates (`vendor/`) fix the three bugs that hang the published 0.21.0 on its second
//!   all-reduce.
//!
//! Every collective of such a rank reports entering and leaving to the session, whose
//! watchdog ends a run whose rank waits longer than its timeout (for either engine).
//!
//! A communicator of a one-rank world calls neither, unless NCCL is asked for: a group of one
//! on NCCL runs every collective through it (a check of the NCCL path on one GPU).
//!
//! burn-collective keeps one server per backend type and process, so one group at a time can
//! exist per process: [`LocalGroup::register`] waits for the previous group to end (runs in one
//! process — tests — take turns). Ending a group, normally or because a rank failed, resets the
//! server: every rank still waiting in an all-reduce gets an error instead of waiting for a
//! peer that will never come ([`GroupHandle::abort`]). NCCL offers no such release through
//! Burn: ranks waiting in an NCCL all-reduce for a failed rank stay blocked, and the run ends
//! without waiting for them (the failing rank's line is reported, the process exits).
//!
//! Order of summation: with two ranks a sum is exact in any order. With three or more the tree
//! adds the ranks' tensors in an order that follows the server's hash map, so the last bit of a
//! sum can differ from run to run.

use crate::backend::Devices;
use crate::dist::{Progress, Session, SessionEngine};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend, DeviceId};
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};
use std::sync::{Arc, Condvar, Mutex};

/// How long a failed collective of a multi-process run waits before it reports its error.
const FAILED_COLLECTIVE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

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

/// The engine a group of ranks talks through (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// NCCL for CUDA ranks when its library loads, burn-collective otherwise.
    #[default]
    Auto,
    /// NCCL (CUDA ranks only; an error elsewhere, or without the library).
    Nccl,
    /// burn-collective's local level, for every backend.
    BurnCollective,
}

impl std::str::FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Engine::Auto),
            "nccl" => Ok(Engine::Nccl),
            "burn-collective" | "burn" => Ok(Engine::BurnCollective),
            other => Err(format!(
                "collective engine '{other}': expected auto, nccl or burn-collective"
            )),
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Auto => "auto",
            Engine::Nccl => "nccl",
            Engine::BurnCollective => "burn-collective",
        })
    }
}

/// One rank's handle on its group (clones are the same rank's handle).
pub struct Communicator<B: Backend> {
    rank: usize,
    world: usize,
    group: Option<Arc<LocalGroup<B>>>,
    /// The devices of every rank, when the group talks through NCCL.
    nccl: Option<Arc<[DeviceId]>>,
    /// In a run of several processes: where this rank reports entering and leaving each
    /// collective (the session's watchdog ends a run whose rank waits too long), and its index
    /// in this process.
    watch: Option<(Arc<Progress>, usize)>,
}

impl<B: Backend> Clone for Communicator<B> {
    fn clone(&self) -> Self {
        Communicator {
            rank: self.rank,
            world: self.world,
            group: self.group.clone(),
            nccl: self.nccl.clone(),
            watch: self.watch.clone(),
        }
    }
}

impl<B: Backend> std::fmt::Debug for Communicator<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Communicator(rank {} of {})", self.rank, self.world)
    }
}

impl<B: Backend> Communicator<B> {
    /// The communicator of a world of one rank: every collective is the identity.
    pub fn solo() -> Self {
        Communicator {
            rank: 0,
            world: 1,
            group: None,
            nccl: None,
            watch: None,
        }
    }

    /// This rank's handle without the group's keep-alive: collectives still work while the
    /// group exists.
    fn detached(&self) -> Self {
        Communicator {
            group: None,
            ..self.clone()
        }
    }

    /// The engine this rank's group talks through (`None` for a world of one without NCCL).
    pub fn engine(&self) -> Option<Engine> {
        match (self.world, &self.nccl) {
            (_, Some(_)) => Some(Engine::Nccl),
            (1, None) => None,
            (_, None) => Some(Engine::BurnCollective),
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
        let Some((progress, local)) = &self.watch else {
            return self.all_reduce_sum_unwatched(t);
        };
        progress.enter(*local);
        let out = self.all_reduce_sum_unwatched(t);
        // NCCL's calls only queue work on the device: the wait for the other processes
        // happens when the result is read. Wait here, inside the watched window, so that a
        // stalled process is named after the timeout instead of leaving this rank blocked in a
        // later read that nothing watches.
        let out = match out {
            Ok(sum) if self.nccl.is_some() => {
                B::sync(&sum.device())
                    .map(|()| sum)
                    .map_err(|e| CollectiveError::AllReduce {
                        rank: self.rank,
                        detail: format!("{e:?}"),
                    })
            }
            other => other,
        };
        progress.leave(*local);
        if out.is_err() {
            // Most often a process of the run is gone: the session names it (and ends this
            // process) as soon as its connection closes; give it that moment, so that the
            // run's error line names the cause rather than this consequence.
            std::thread::sleep(FAILED_COLLECTIVE_GRACE);
        }
        out
    }

    fn all_reduce_sum_unwatched<const D: usize>(
        &self,
        t: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, CollectiveError> {
        #[cfg(feature = "cuda-backend")]
        if let Some(devices) = &self.nccl {
            let shape = t.shape();
            let n = shape.num_elements();
            return nccl::all_reduce_sum(t.reshape([n]), devices)
                .map(|sum| sum.reshape(shape))
                .map_err(|detail| CollectiveError::AllReduce {
                    rank: self.rank,
                    detail,
                });
        }
        if self.engine().is_none() {
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
        if self.engine().is_none() {
            return Ok(value);
        }
        let slot = self.rank..self.rank + 1;
        let slots =
            Tensor::<B, 1>::zeros([self.world], &value.device()).slice_assign([slot], value);
        Ok(self.all_reduce_sum(slots)?.max())
    }

    /// The sums over every rank of each rank's `counts` (every rank passes as many), summed on
    /// `device` and read back to the host: exact while every sum stays below 2^24 (f32), as
    /// counts of images and flags do.
    pub fn sum_counts<const N: usize>(
        &self,
        counts: [usize; N],
        device: &B::Device,
    ) -> Result<[usize; N], CollectiveError> {
        let t = Tensor::<B, 1>::from_data(
            burn::tensor::TensorData::new(counts.iter().map(|&c| c as f32).collect(), [N]),
            device,
        );
        let sum = self.all_reduce_sum(t)?.into_data().convert::<f32>();
        let sum = sum.as_slice::<f32>().expect("f32 after convert");
        Ok(std::array::from_fn(|i| sum[i] as usize))
    }

    /// Every rank's `t` (each rank passes a tensor of the same length), row `r` from rank `r`:
    /// each rank writes its tensor into its own row of zeros and the rows are summed (exact:
    /// every element is one value plus zeros).
    pub fn all_gather(&self, t: Tensor<B, 1>) -> Result<Tensor<B, 2>, CollectiveError> {
        let n = t.dims()[0];
        if self.engine().is_none() {
            return Ok(t.reshape([1, n]));
        }
        let rows = Tensor::<B, 2>::zeros([self.world, n], &t.device())
            .slice_assign([self.rank..self.rank + 1, 0..n], t.reshape([1, n]));
        self.all_reduce_sum(rows)
    }

    /// The sum over every rank of `module`'s gradients and of `extra` (a loss, counts), times
    /// `scale`: every gradient is flattened into one buffer with `extra` last, so that the
    /// exchange is one all-reduce. Every rank passes gradients of the same parameters.
    pub fn all_reduce_gradients<A, M>(
        &self,
        module: &M,
        mut grads: GradientsParams,
        extra: Tensor<B, 1>,
        scale: f64,
    ) -> Result<(GradientsParams, Tensor<B, 1>), CollectiveError>
    where
        A: AutodiffBackend<InnerBackend = B>,
        M: Module<A>,
    {
        let mut flat = Flatten::<B> {
            grads: &mut grads,
            parts: Vec::new(),
            shapes: Vec::new(),
        };
        module.visit(&mut flat);
        let Flatten {
            mut parts, shapes, ..
        } = flat;
        let extra_len = extra.dims()[0];
        parts.push(extra);
        let total: usize = parts.iter().map(|p| p.dims()[0]).sum();
        let summed = self
            .all_reduce_sum(Tensor::cat(parts, 0))?
            .mul_scalar(scale);
        let extra = summed.clone().narrow(0, total - extra_len, extra_len);
        let mut split = Unflatten {
            flat: summed,
            offset: 0,
            shapes: shapes.into_iter(),
            out: GradientsParams::new(),
        };
        module.visit(&mut split);
        Ok((split.out, extra))
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
    /// [`LocalGroup::register_with`] the engine [`Engine::Auto`] chooses.
    pub fn register(devices: &[B::Device]) -> Result<Vec<Communicator<B>>, CollectiveError> {
        Self::register_with(devices, Engine::Auto)
    }

    /// Register one rank per device (rank `w` on `devices[w]`) with `engine` and return their
    /// communicators, in rank order. Waits while another group of this process exists.
    pub fn register_with(
        devices: &[B::Device],
        engine: Engine,
    ) -> Result<Vec<Communicator<B>>, CollectiveError> {
        let world = devices.len();
        // One rank needs no engine, unless NCCL is asked for: a group of one then runs every
        // collective through NCCL (a check of the NCCL path on a single GPU).
        if world <= 1 && engine != Engine::Nccl {
            return Ok(vec![Communicator::solo()]);
        }
        let nccl = Self::nccl_devices(devices, engine)
            .map_err(|detail| CollectiveError::Register { world, detail })?;
        let group = Self::acquire();
        if let Some(ids) = nccl {
            // NCCL makes its communicator on the first all-reduce, every rank joining it.
            return Ok((0..world)
                .map(|rank| Communicator {
                    rank,
                    world,
                    group: Some(group.clone()),
                    nccl: Some(ids.clone()),
                    watch: None,
                })
                .collect());
        }
        burn_collective::reset_collective::<B>();
        let config = CollectiveConfig::default().with_num_devices(world);
        let ids: Vec<usize> = (0..world).collect();
        register_peers::<B>(devices, &ids, &config)
            .map_err(|detail| CollectiveError::Register { world, detail })?;
        Ok((0..world)
            .map(|rank| Communicator {
                rank,
                world,
                group: Some(group.clone()),
                nccl: None,
                watch: None,
            })
            .collect())
    }

    /// Register this process's ranks of a run of several processes (`session`): local rank
    /// `w` on `devices[w]` is global rank `session.rank_of(w)`; the sums run over every rank of
    /// every process through the engine the session set up (see the module's documentation).
    /// Waits while another group of this process exists.
    pub fn register_processes(
        devices: &[B::Device],
        session: &Session,
    ) -> Result<Vec<Communicator<B>>, CollectiveError> {
        let world = session.world();
        let err = |detail: String| CollectiveError::Register { world, detail };
        if devices.len() != session.ranks_per_process {
            return Err(err(format!(
                "{} devices in this process, {} in the session",
                devices.len(),
                session.ranks_per_process
            )));
        }
        let communicators = |group: Arc<LocalGroup<B>>, nccl: Option<Arc<[DeviceId]>>| {
            let progress = session.progress();
            (0..devices.len())
                .map(|local| Communicator {
                    rank: session.rank_of(local),
                    world,
                    group: Some(group.clone()),
                    nccl: nccl.clone(),
                    watch: Some((progress.clone(), local)),
                })
                .collect()
        };
        match &session.engine {
            #[cfg(feature = "cuda-backend")]
            SessionEngine::Nccl { unique_id } => {
                let key = nccl::join_processes::<B>(devices, session, unique_id).map_err(err)?;
                // NCCL makes the communicator on the first all-reduce (watched as every
                // collective is), every rank of every process joining it.
                Ok(communicators(Self::acquire(), Some(key)))
            }
            #[cfg(not(feature = "cuda-backend"))]
            SessionEngine::Nccl { .. } => Err(err(
                "NCCL needs CUDA devices and a build with --features cuda".into(),
            )),
            SessionEngine::BurnCollective {
                orchestrator,
                node_address,
                data_port,
            } => {
                let group =
                    Self::register_global(devices, session, orchestrator, node_address, *data_port)
                        .map_err(err)?;
                Ok(communicators(group, None))
            }
        }
    }

    /// burn-collective's local level in the process and its global level between processes
    /// (the orchestrator process 0 started, this process's node serving its peers on
    /// `data_port`; a tree of arity 2 between processes, whose sums with two processes are
    /// exact in any order).
    fn register_global(
        devices: &[B::Device],
        session: &Session,
        orchestrator: &str,
        node_address: &str,
        data_port: u16,
    ) -> Result<Arc<LocalGroup<B>>, String> {
        use burn_collective::AllReduceStrategy;
        let address = |a: &str| {
            a.parse::<burn_communication::Address>()
                .map_err(|e| format!("{a}: {e}"))
        };
        let config = CollectiveConfig::default()
            .with_num_devices(devices.len())
            .with_num_nodes(session.processes() as u32)
            .with_global_address(address(orchestrator)?)
            .with_node_address(address(node_address)?)
            .with_data_service_port(data_port)
            .with_global_all_reduce_strategy(AllReduceStrategy::Tree(2));
        let group = Self::acquire();
        burn_collective::reset_collective::<B>();
        let ids: Vec<usize> = (0..devices.len()).map(|w| session.rank_of(w)).collect();
        // Registering waits for every process: watched as a collective is.
        let progress = session.progress();
        (0..devices.len()).for_each(|w| progress.enter(w));
        let registered = register_peers::<B>(devices, &ids, &config);
        (0..devices.len()).for_each(|w| progress.leave(w));
        registered.map(|()| group)
    }

    /// Wait until no other group of this process exists, then hold the server: dropping the
    /// returned group frees it again.
    fn acquire() -> Arc<LocalGroup<B>> {
        let mut busy = BUSY.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = FREED.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
        Arc::new(LocalGroup {
            _backend: std::marker::PhantomData,
        })
    }

    /// Whether ranks on `devices` can talk through `engine` (a check before any work starts;
    /// [`LocalGroup::register_with`] makes the same one).
    pub fn check(devices: &[B::Device], engine: Engine) -> Result<(), String> {
        Self::nccl_devices(devices, engine).map(|_| ())
    }

    /// The devices of an NCCL group, when `engine` means NCCL for these devices; an error
    /// when NCCL is asked for and cannot be used.
    fn nccl_devices(
        devices: &[B::Device],
        engine: Engine,
    ) -> Result<Option<Arc<[DeviceId]>>, String> {
        use burn::tensor::backend::DeviceOps;
        let cuda = {
            #[cfg(feature = "cuda-backend")]
            let cuda = nccl::is_cuda::<B>();
            #[cfg(not(feature = "cuda-backend"))]
            let cuda = false;
            cuda
        };
        Ok(uses_nccl(cuda, engine)?.then(|| devices.iter().map(DeviceOps::id).collect()))
    }
}

/// Whether ranks talk through NCCL with `engine`, `cuda` saying whether they are CUDA ranks:
/// [`Engine::Auto`] takes NCCL for CUDA ranks when its library loads; [`Engine::Nccl`] is an
/// error where NCCL cannot be used. The library is loaded only when NCCL could be used.
fn uses_nccl(cuda: bool, engine: Engine) -> Result<bool, String> {
    #[cfg(feature = "cuda-backend")]
    match (engine, cuda) {
        (Engine::BurnCollective, _) | (Engine::Auto, false) => Ok(false),
        (Engine::Nccl, false) => {
            Err("NCCL needs CUDA devices (use --collective burn-collective)".into())
        }
        (Engine::Auto, true) => Ok(nccl::check_library().is_ok()),
        (Engine::Nccl, true) => nccl::check_library().map(|()| true),
    }
    #[cfg(not(feature = "cuda-backend"))]
    {
        let _ = cuda;
        match engine {
            Engine::Nccl => Err("NCCL needs CUDA devices and a build with --features cuda".into()),
            _ => Ok(false),
        }
    }
}

/// For a process of a run of several processes, its ranks on `devices`: when they talk
/// through NCCL with `engine` (as [`LocalGroup::register_with`] chooses), what makes the
/// communicator's unique id (process 0 calls it at the rendezvous, [`crate::dist::Join`]);
/// `None` for burn-collective.
pub fn process_engine(
    devices: &Devices,
    engine: Engine,
) -> Result<Option<crate::dist::NcclId>, String> {
    let cuda = matches!(devices, Devices::Cuda(_));
    if !uses_nccl(cuda, engine)? {
        return Ok(None);
    }
    #[cfg(feature = "cuda-backend")]
    return Ok(Some(nccl::unique_id));
    #[cfg(not(feature = "cuda-backend"))]
    unreachable!("NCCL is never chosen without the CUDA backend")
}

/// Register peer `ids[w]` on `devices[w]` with burn-collective's server for `B`: `register`
/// returns once every peer of the process has registered (and, with global parameters, once
/// every process has), so one thread per peer.
fn register_peers<B: Backend>(
    devices: &[B::Device],
    ids: &[usize],
    config: &CollectiveConfig,
) -> Result<(), String> {
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .zip(ids)
            .map(|(d, &id)| {
                let (d, config) = (d.clone(), config.clone());
                s.spawn(move || {
                    burn_collective::register::<B>(PeerId(id as u32), d, config)
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
    results.into_iter().find(Result::is_err).unwrap_or(Ok(()))
}

/// NCCL through Burn's `DistributedBackend` (burn-cuda's `distributed` feature), for the CUDA
/// backend of [`crate::backend::Cuda`].
#[cfg(feature = "cuda-backend")]
mod nccl {
    use burn::tensor::backend::distributed::{DistributedBackend, ReduceOperation};
    use burn::tensor::backend::{Backend, DeviceId};
    use burn::tensor::{Tensor, TensorPrimitive};
    use std::any::{Any, TypeId};

    type Cuda = crate::backend::Cuda;

    /// Names under which cudarc 0.19 looks for NCCL on Linux (`get_lib_name_candidates("nccl")`
    /// with CUDA 13, the version cudarc assumes when built without a toolkit, as here; it also
    /// tries `libnccl64_*` names, which Linux installs lack). Not `libnccl.so.2`, the soname of
    /// NVIDIA's packages and of pip's `nvidia-nccl-cu12`. cudarc panics in Burn's device thread
    /// when none loads, hence this check.
    const NCCL: &[&str] = &[
        "libnccl.so",
        "libnccl.so.13",
        "libnccl.so.12",
        "libnccl.so.11",
        "libnccl.so.10",
        "libnccl.so.9",
        "libnccl.so.1",
    ];

    /// Whether `B` is the CUDA backend.
    pub(super) fn is_cuda<B: Backend>() -> bool {
        TypeId::of::<B>() == TypeId::of::<Cuda>()
    }

    /// NCCL loads under a name cudarc tries.
    pub(super) fn check_library() -> Result<(), String> {
        // SAFETY: loading runs NCCL's initialisers; it is the library cudarc loads by the same
        // name moments later.
        let found = NCCL
            .iter()
            .any(|n| unsafe { libloading::Library::new(*n) }.is_ok());
        if found {
            return Ok(());
        }
        Err(format!(
            "NCCL is not found under the names Burn's CUDA backend loads ({}); with only \
             libnccl.so.2 installed, link it as libnccl.so in a folder of LD_LIBRARY_PATH, or \
             use --collective burn-collective",
            NCCL.join(", ")
        ))
    }

    /// A new NCCL unique id (128 bytes), for the communicator of a run of several processes.
    pub(super) fn unique_id() -> Result<Vec<u8>, String> {
        check_library()?;
        cubecl_cuda::nccl_unique_id()
    }

    /// Register this process's part of the NCCL communicator of `session` (made from
    /// `unique_id`, process 0's): the CUDA device of local rank `w` holds global rank
    /// `session.rank_of(w)`. Returns the device list that names the communicator in
    /// [`all_reduce_sum`]: this process's devices and a marker no device list of a group
    /// within one process contains.
    pub(super) fn join_processes<B: Backend>(
        devices: &[B::Device],
        session: &crate::dist::Session,
        unique_id: &[u8],
    ) -> Result<std::sync::Arc<[DeviceId]>, String> {
        use burn::tensor::backend::DeviceOps;
        if !is_cuda::<B>() {
            return Err("NCCL needs CUDA devices (use --collective burn-collective)".into());
        }
        check_library()?;
        let ids: Vec<DeviceId> = devices.iter().map(DeviceOps::id).collect();
        let ranks: Vec<(DeviceId, usize)> = ids
            .iter()
            .enumerate()
            .map(|(w, &id)| (id, session.rank_of(w)))
            .collect();
        let mut key = ids;
        key.push(DeviceId {
            type_id: u16::MAX,
            index_id: u16::MAX,
        });
        cubecl_cuda::join_process_group(key.clone(), unique_id, session.world(), &ranks)?;
        Ok(key.into())
    }

    /// The sum over the ranks on `devices` of every rank's `t` (`B` is the CUDA backend). NCCL
    /// failures panic in Burn's device thread (cubecl unwraps them), so the error case here is
    /// only a backend mismatch.
    pub(super) fn all_reduce_sum<B: Backend>(
        t: Tensor<B, 1>,
        devices: &[DeviceId],
    ) -> Result<Tensor<B, 1>, String> {
        let prim: Box<dyn Any> = Box::new(t.into_primitive().tensor());
        let prim = prim
            .downcast::<<Cuda as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive>()
            .map_err(|_| "NCCL: the ranks are not on the CUDA backend".to_string())?;
        let sum = Cuda::all_reduce(*prim, ReduceOperation::Sum, devices.to_vec()).resolve();
        let sum: Box<dyn Any> = Box::new(sum);
        let sum = sum
            .downcast::<B::FloatTensorPrimitive>()
            .expect("B is the CUDA backend: its input was");
        Ok(Tensor::from_primitive(TensorPrimitive::Float(*sum)))
    }
}

impl<B: Backend> Drop for LocalGroup<B> {
    fn drop(&mut self) {
        burn_collective::reset_collective::<B>();
        *BUSY.lock().unwrap_or_else(|e| e.into_inner()) = false;
        FREED.notify_one();
    }
}

/// Autodiff backends on which a sum over the ranks can take part in a backward pass: the sum of
/// every rank's tensor, whose backward pass is the same sum of every rank's gradient (each
/// rank's loss depends on every rank's input through it) — what synchronised BatchNorm's
/// statistics need. Implemented for Burn's `Autodiff` over any backend.
pub trait DifferentiableCollective: AutodiffBackend {
    /// `comm.all_reduce_sum(t)`, differentiable. An all-reduce that fails in the backward
    /// pass panics (the rank's thread reports it and ends the group: burn-collective releases
    /// the other ranks; ranks waiting in NCCL stay blocked, see the module's documentation).
    fn all_reduce_sum_differentiable(
        t: Tensor<Self, 1>,
        comm: &Communicator<Self::InnerBackend>,
    ) -> Result<Tensor<Self, 1>, CollectiveError>;
}

impl<B: Backend, C: CheckpointStrategy> DifferentiableCollective for Autodiff<B, C> {
    fn all_reduce_sum_differentiable(
        t: Tensor<Self, 1>,
        comm: &Communicator<B>,
    ) -> Result<Tensor<Self, 1>, CollectiveError> {
        #[derive(Debug)]
        struct AllReduceSum;

        impl<B: Backend> Backward<B, 1> for AllReduceSum {
            type State = Communicator<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let comm = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    let grad = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(grad));
                    comm.all_reduce_sum(grad)
                        .unwrap_or_else(|e| panic!("in the backward pass: {e}"))
                        .into_primitive()
                        .tensor()
                });
            }
        }

        let input = t.into_primitive().tensor();
        let sum = comm
            .all_reduce_sum(Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(
                input.primitive,
            )))?
            .into_primitive()
            .tensor();
        let out = match AllReduceSum
            .prepare::<C>([input.node])
            .compute_bound()
            .stateful()
        {
            // The graph keeps a copy without the group: a graph never run backward (a rank that
            // failed mid-step) must not keep the group, and the process's engine, taken.
            OpsKind::Tracked(prep) => prep.finish(comm.detached(), sum),
            OpsKind::UnTracked(prep) => prep.finish(sum),
        };
        Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }
}

/// Takes every gradient out of `grads`, flattened, in the module's parameter order.
struct Flatten<'a, B: Backend> {
    grads: &'a mut GradientsParams,
    parts: Vec<Tensor<B, 1>>,
    /// Per parameter, in order: the gradient's shape, or `None` without a gradient.
    shapes: Vec<Option<Vec<usize>>>,
}

impl<A: AutodiffBackend> ModuleVisitor<A> for Flatten<'_, A::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let g = self.grads.remove::<A::InnerBackend, D>(param.id);
        self.shapes.push(g.as_ref().map(|g| g.dims().to_vec()));
        if let Some(g) = g {
            let n = g.shape().num_elements();
            self.parts.push(g.reshape([n]));
        }
    }
}

/// Puts the reduced buffer back into gradients, in the same order.
struct Unflatten<B: Backend> {
    flat: Tensor<B, 1>,
    offset: usize,
    shapes: std::vec::IntoIter<Option<Vec<usize>>>,
    out: GradientsParams,
}

impl<A: AutodiffBackend> ModuleVisitor<A> for Unflatten<A::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<A, D>>) {
        let Some(Some(dims)) = self.shapes.next() else {
            return;
        };
        let n: usize = dims.iter().product();
        let dims: [usize; D] = dims.try_into().expect("the parameter's rank");
        let g = self.flat.clone().narrow(0, self.offset, n).reshape(dims);
        self.offset += n;
        self.out.register(param.id, g);
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
