//! Data parallelism on one host: one [`Rank`] per device, each on a thread of its own, so that
//! every device runs its forward and backward passes at the same time as the others. The
//! ranks exchange data only through their communicators (the collective engine,
//! [`crate::collective`]); this module only starts them, hands each its shard of every batch
//! and its orders, and ends the run when one of them fails.
//!
//! A rank that panics or errs records why, then ends the group: ranks waiting in a collective
//! get an error instead of waiting for it, and the run ends with one line naming the rank and
//! the cause ([`RankFailure`]).

use super::rank::{Rank, StepSettings, SwavOptimizer};
use super::step::DeviceQueue;
use crate::collective::{DifferentiableCollective, Engine, GroupHandle, LocalGroup};
use crate::data::loader::Batch;
use crate::data::prefetch::DeviceLoader;
use crate::dist::Session;
use crate::model::swav::Swav;
use crate::report::panic_message;
use burn::tensor::backend::AutodiffBackend;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

/// Why a run of ranks ended early.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rank {rank} ({device}) failed: {cause}")]
pub struct RankFailure {
    pub rank: usize,
    pub device: String,
    pub cause: String,
}

/// A fault injected for tests: rank `rank` panics when told to run iteration `iteration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub rank: usize,
    pub iteration: usize,
}

/// What a rank starts with.
pub struct RankStart<A: AutodiffBackend> {
    pub device: A::Device,
    /// The rank's replica, on its device, sharing nothing with the others
    /// ([`Swav::replicate`]).
    pub model: Swav<A>,
    pub optim: SwavOptimizer<A>,
    /// Its slice of the queue, when resuming a run that had one.
    pub queue: Option<super::step::Queue>,
}

type Job<A> = Box<dyn FnOnce(&Swav<A>, &mut Rank<A>) -> Box<dyn Any + Send> + Send>;

enum Command<A: AutodiffBackend> {
    Epoch(Option<[usize; 3]>),
    Step {
        rate: f64,
        frozen: bool,
        iteration: usize,
    },
    Run(Job<A>),
}

/// Fewest images a rank's shard needs for a step (BatchNorm's batch statistics need two).
pub const MIN_SHARD: usize = 2;

/// What rank 0 says of a step.
#[derive(Debug, Clone, Copy)]
pub struct StepResult {
    /// The mean of every rank's loss.
    pub loss: f64,
    /// Whether the queue took part.
    pub queue_in_use: bool,
    /// Whether every rank skipped the step, as a rank's shard held fewer than [`MIN_SHARD`]
    /// images (unreadable ones left out; in a run of several processes, where each process
    /// loads its own part, the ranks decide together).
    pub skipped: bool,
}

enum Reply {
    Loss(StepResult),
    Done(Box<dyn Any + Send>),
    Failed,
}

/// Ranks running on threads of this process.
pub struct Ranks<A: AutodiffBackend> {
    commands: Vec<mpsc::Sender<Command<A>>>,
    shards: Vec<mpsc::SyncSender<Batch>>,
    replies: mpsc::Receiver<(usize, Reply)>,
    failure: Arc<Mutex<Option<RankFailure>>>,
    handles: Vec<thread::JoinHandle<()>>,
    /// Keeps the ranks' group alive until the ranks are dropped, and ends it on failure.
    group: GroupHandle<A::InnerBackend>,
    /// The engine the ranks talk through (`None` for one rank).
    engine: Option<Engine>,
    /// Steps handed out whose loss was not read yet.
    outstanding: std::cell::Cell<usize>,
    /// Skips are decided by every rank together (a run of several processes).
    agree: bool,
}

impl<A: DifferentiableCollective> Ranks<A>
where
    A::Device: Send + 'static,
{
    /// Start one rank per entry of `starts` (rank `w` on `starts[w].device`), talking through
    /// `engine`.
    ///
    /// In a run of several processes (`session`), `starts` are this process's ranks (global
    /// ranks `session.rank_of(w)`), talking to the others' through the engine the session set
    /// up (NCCL or burn-collective's global level).
    pub fn start(
        starts: Vec<RankStart<A>>,
        settings: StepSettings,
        engine: Engine,
        fault: Option<Fault>,
        session: Option<&Session>,
    ) -> Result<Self, RankFailure> {
        let devices: Vec<A::Device> = starts.iter().map(|s| s.device.clone()).collect();
        let comms = match session {
            Some(s) => LocalGroup::<A::InnerBackend>::register_processes(&devices, s),
            None => LocalGroup::<A::InnerBackend>::register_with(&devices, engine),
        }
        .map_err(|e| RankFailure {
            rank: session.map_or(0, |s| s.rank_of(0)),
            device: format!("{:?}", devices[0]),
            cause: e.to_string(),
        })?;
        let group = comms[0].handle();
        let engine = comms[0].engine();
        let failure = Arc::new(Mutex::new(None));
        let agree = session.is_some();
        let (reply_tx, replies) = mpsc::channel();
        let (mut commands, mut shards, mut handles) = (Vec::new(), Vec::new(), Vec::new());
        for (w, (start, comm)) in starts.into_iter().zip(comms).enumerate() {
            let (cmd_tx, cmd_rx) = mpsc::channel();
            let (shard_tx, shard_rx) = mpsc::sync_channel(1);
            let queue = start
                .queue
                .as_ref()
                .map(|q| DeviceQueue::from_host(q, &start.device));
            let rank = Rank {
                device: start.device.clone(),
                optim: start.optim,
                queue,
                comm,
            };
            let (settings, failure, reply_tx) =
                (settings.clone(), failure.clone(), reply_tx.clone());
            let device = format!("{:?}", start.device);
            let global = rank.rank();
            let model = start.model;
            let group = group.clone();
            let handle = thread::Builder::new()
                .name(format!("rank-{w}"))
                .spawn(move || {
                    // Dropped last: its uploader thread ends when the coordinator hangs up.
                    let mut batches = DeviceLoader::<A>::from_batches(
                        shard_rx.into_iter(),
                        0,
                        rank.device.clone(),
                    );
                    // The command channel stays open until the failure is recorded, so that a
                    // coordinator sending to this rank meanwhile waits for its report (and its
                    // cause) instead of finding the channel closed.
                    let run = catch_unwind(AssertUnwindSafe(|| {
                        serve(
                            w,
                            rank,
                            model,
                            &cmd_rx,
                            &mut batches,
                            &reply_tx,
                            &settings,
                            fault,
                            agree,
                        )
                    }));
                    let cause = match run {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => e,
                        Err(panic) => panic_message(panic.as_ref()),
                    };
                    {
                        let mut f = failure.lock().unwrap_or_else(|e| e.into_inner());
                        if f.is_none() {
                            *f = Some(RankFailure {
                                rank: global,
                                device,
                                cause,
                            });
                        }
                    }
                    // Ranks waiting for this one in a collective get an error instead.
                    group.abort();
                    let _ = reply_tx.send((w, Reply::Failed));
                    // Recorded and reported: later commands find the channel closed (and the
                    // recorded cause) rather than queue behind a rank that no longer reads.
                    drop(cmd_rx);
                })
                .map_err(|e| RankFailure {
                    rank: global,
                    device: format!("{:?}", devices[w]),
                    cause: format!("cannot start its thread: {e}"),
                })?;
            commands.push(cmd_tx);
            shards.push(shard_tx);
            handles.push(handle);
        }
        Ok(Ranks {
            commands,
            shards,
            replies,
            failure,
            handles,
            group,
            engine,
            outstanding: std::cell::Cell::new(0),
            agree,
        })
    }

    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.commands.len()
    }

    /// Whether the ranks decide together to skip a step (the other processes' shards are not
    /// seen here): a batch with too few images is then handed to them all the same.
    pub fn agree_on_skips(&self) -> bool {
        self.agree
    }

    /// The engine the ranks talk through (`None` for one rank).
    pub fn engine(&self) -> Option<Engine> {
        self.engine
    }

    /// Tell every rank that an epoch starts (with the queue's shape once it is on).
    pub fn begin_epoch(&self, queue: Option<[usize; 3]>) -> Result<(), RankFailure> {
        for w in 0..self.world() {
            self.send(w, Command::Epoch(queue))?;
        }
        Ok(())
    }

    /// Start one step: each rank gets its shard of `batch` (consecutive samples) and the
    /// order to step. Returns at once; [`Ranks::loss`] waits for the result.
    pub fn step(
        &self,
        batch: Batch,
        rate: f64,
        frozen: bool,
        iteration: usize,
    ) -> Result<(), RankFailure> {
        for (w, shard) in batch.split(self.world()).into_iter().enumerate() {
            if self.shards[w].send(shard).is_err() {
                return Err(self.failed(w));
            }
            self.send(
                w,
                Command::Step {
                    rate,
                    frozen,
                    iteration,
                },
            )?;
        }
        self.outstanding.set(self.outstanding.get() + 1);
        Ok(())
    }

    /// The mean loss of the oldest step not yet waited for.
    pub fn loss(&self) -> Result<StepResult, RankFailure> {
        self.outstanding
            .set(self.outstanding.get().saturating_sub(1));
        match self.reply()? {
            (_, Reply::Loss(v)) => Ok(v),
            (w, _) => Err(self.unexpected(w)),
        }
    }

    /// Run `job` on rank `w`'s model and state, on its thread, after the steps handed out
    /// (their losses are dropped), and return its result.
    pub fn run_on<T: Send + 'static>(
        &self,
        w: usize,
        job: impl FnOnce(&Swav<A>, &mut Rank<A>) -> T + Send + 'static,
    ) -> Result<T, RankFailure> {
        self.settle()?;
        self.send(w, Command::Run(Box::new(move |m, r| Box::new(job(m, r)))))?;
        match self.reply()? {
            (_, Reply::Done(v)) => Ok(*v.downcast::<T>().expect("the job's result type")),
            (w, _) => Err(self.unexpected(w)),
        }
    }

    /// Run `job` on every rank; the results in rank order.
    pub fn run_on_all<T: Send + 'static>(
        &self,
        job: impl Fn(&Swav<A>, &mut Rank<A>) -> T + Send + Sync + Clone + 'static,
    ) -> Result<Vec<T>, RankFailure> {
        self.settle()?;
        for w in 0..self.world() {
            let job = job.clone();
            self.send(w, Command::Run(Box::new(move |m, r| Box::new(job(m, r)))))?;
        }
        let mut out: Vec<Option<T>> = (0..self.world()).map(|_| None).collect();
        for _ in 0..self.world() {
            match self.reply()? {
                (w, Reply::Done(v)) => out[w] = Some(*v.downcast::<T>().expect("result type")),
                (w, _) => return Err(self.unexpected(w)),
            }
        }
        Ok(out
            .into_iter()
            .map(|v| v.expect("every rank replied"))
            .collect())
    }

    /// Stop the ranks and wait for their threads.
    pub fn finish(mut self) {
        self.commands.clear();
        self.shards.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }

    /// Wait for the steps handed out, dropping their losses.
    fn settle(&self) -> Result<(), RankFailure> {
        while self.outstanding.get() > 0 {
            self.loss()?;
        }
        Ok(())
    }

    fn send(&self, w: usize, c: Command<A>) -> Result<(), RankFailure> {
        self.commands[w].send(c).map_err(|_| self.failed(w))
    }

    fn reply(&self) -> Result<(usize, Reply), RankFailure> {
        match self.replies.recv() {
            Ok((w, Reply::Failed)) => Err(self.failed(w)),
            Ok(r) => Ok(r),
            Err(_) => Err(self.failed(0)),
        }
    }

    /// The first failure recorded (the cause; later ones are its consequences), else one of
    /// rank `w`'s.
    fn failed(&self, w: usize) -> RankFailure {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| RankFailure {
                rank: w,
                device: String::new(),
                cause: "its thread ended".into(),
            })
    }

    fn unexpected(&self, w: usize) -> RankFailure {
        RankFailure {
            rank: w,
            device: String::new(),
            cause: "answered out of turn".into(),
        }
    }
}

impl<A: AutodiffBackend> Drop for Ranks<A> {
    fn drop(&mut self) {
        // After a failure the ranks are told to stop (their channels close; ranks in a
        // collective were already released) and are not waited for.
        if !self.handles.is_empty() {
            self.group.abort();
        }
    }
}

/// A rank's thread (the process's rank `w`): orders until the coordinator hangs up.
#[allow(clippy::too_many_arguments)]
fn serve<A: DifferentiableCollective>(
    w: usize,
    mut rank: Rank<A>,
    mut model: Swav<A>,
    commands: &mpsc::Receiver<Command<A>>,
    batches: &mut DeviceLoader<A>,
    replies: &mpsc::Sender<(usize, Reply)>,
    settings: &StepSettings,
    fault: Option<Fault>,
    agree: bool,
) -> Result<(), String>
where
    A::Device: Send + 'static,
{
    let global = rank.rank();
    for command in commands.iter() {
        match command {
            Command::Epoch(queue) => rank.begin_epoch(queue),
            Command::Step {
                rate,
                frozen,
                iteration,
            } => {
                if fault
                    == Some(Fault {
                        rank: global,
                        iteration,
                    })
                {
                    panic!("injected fault at iteration {iteration}");
                }
                let batch = batches
                    .next()
                    .ok_or_else(|| "its shard of the batch never came".to_string())?;
                // One tensor per resolution, crop-major: one `[B, 3, s, s]` tensor per crop.
                let n = batch.samples.len();
                // Whether any rank of the run is short: each passes 1 when its shard is.
                let short = || {
                    rank.comm
                        .sum_counts([usize::from(n < MIN_SHARD)], &rank.device)
                };
                if agree && short().map_err(|e| e.to_string())?[0] > 0 {
                    if w == 0 {
                        let _ = replies.send((
                            w,
                            Reply::Loss(StepResult {
                                loss: f64::NAN,
                                queue_in_use: false,
                                skipped: true,
                            }),
                        ));
                    }
                    continue;
                }
                let crops: Vec<_> = batch
                    .crops
                    .iter()
                    .flat_map(|t| (0..t.dims()[0] / n).map(move |k| t.clone().narrow(0, k * n, n)))
                    .collect();
                let (m, loss) = rank
                    .step(model, &crops, rate, frozen, settings)
                    .map_err(|e| e.to_string())?;
                model = m;
                if w == 0 {
                    let queue_in_use = rank.queue.as_ref().is_some_and(|q| q.in_use);
                    let _ = replies.send((
                        w,
                        Reply::Loss(StepResult {
                            loss,
                            queue_in_use,
                            skipped: false,
                        }),
                    ));
                }
            }
            Command::Run(job) => {
                let out = job(&model, &mut rank);
                let _ = replies.send((w, Reply::Done(out)));
            }
        }
    }
    Ok(())
}
