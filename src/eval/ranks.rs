//! Evaluation on several devices: one rank per device, each on a thread of its own with its own
//! state (a replica of the frozen backbone, a classifier, a communicator), built on that thread.
//! The caller hands out one job per rank at a time — usually the rank's shard of a batch of the
//! loader, consecutive samples, so that results concatenated in rank order are in dataset
//! order — and gets the results back in rank order.
//!
//! A rank that panics or errs ends the evaluation with one line naming it; `abort` (ending a
//! collective group) releases the ranks that wait for it in a collective.

use super::EvalError;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

/// A rank that failed: its number, its device and why (its error or panic, as text: it crossed
/// from the rank's thread).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rank {rank} ({device}) failed: {cause}")]
pub struct RankError {
    pub rank: usize,
    pub device: String,
    pub cause: String,
}

/// The ranks of one evaluation, as the caller's `drive` sees them.
pub struct Pool<J, R> {
    jobs: Vec<mpsc::SyncSender<J>>,
    results: mpsc::Receiver<(usize, Result<R, String>)>,
    devices: Vec<String>,
}

impl<J, R> Pool<J, R> {
    /// Number of ranks.
    pub fn world(&self) -> usize {
        self.jobs.len()
    }

    /// Give `jobs[w]` to rank `w` (as many jobs as ranks) and wait for every result.
    pub fn round(&self, jobs: Vec<J>) -> Result<Vec<R>, RankError> {
        assert_eq!(jobs.len(), self.world(), "one job per rank");
        for (w, job) in jobs.into_iter().enumerate() {
            if self.jobs[w].send(job).is_err() {
                return Err(self.failure(w));
            }
        }
        let mut out: Vec<Option<R>> = (0..self.world()).map(|_| None).collect();
        for _ in 0..self.world() {
            let (w, r) = self.results.recv().map_err(|_| self.failure(0))?;
            out[w] = Some(r.map_err(|cause| self.named(w, &cause))?);
        }
        Ok(out
            .into_iter()
            .map(|r| r.expect("every rank answered"))
            .collect())
    }

    /// Give `job` to rank `w` alone and wait for its result.
    pub fn ask(&self, w: usize, job: J) -> Result<R, RankError> {
        self.jobs[w].send(job).map_err(|_| self.failure(w))?;
        let (from, r) = self.results.recv().map_err(|_| self.failure(w))?;
        r.map_err(|cause| self.named(from, &cause))
    }

    fn named(&self, w: usize, cause: &str) -> RankError {
        RankError {
            rank: w,
            device: self.devices[w].clone(),
            cause: cause.to_string(),
        }
    }

    /// A rank's thread ended without an answer: its failure was already reported, or is
    /// waiting in the results.
    fn failure(&self, w: usize) -> RankError {
        match self.results.try_recv() {
            Ok((from, Err(cause))) => self.named(from, &cause),
            _ => self.named(w, "its thread ended"),
        }
    }
}

/// Run `drive` with one rank per device: rank `w`'s state is `init(w, &devices[w])`, made on
/// its thread, and each job given to it is done by `work`. A rank that fails calls `abort`
/// (so that ranks waiting for it in a collective are released) and ends the evaluation.
pub fn with_ranks<D, S, J, R, T>(
    devices: &[D],
    init: impl Fn(usize, &D) -> Result<S, String> + Sync,
    work: impl Fn(&mut S, J) -> Result<R, String> + Sync,
    abort: impl Fn() + Sync,
    drive: impl FnOnce(&Pool<J, R>) -> Result<T, EvalError>,
) -> Result<T, EvalError>
where
    D: Sync + std::fmt::Debug,
    J: Send,
    R: Send,
{
    let (result_tx, results) = mpsc::channel();
    let (init, work, abort) = (&init, &work, &abort);
    std::thread::scope(|scope| {
        let mut jobs = Vec::new();
        for (w, device) in devices.iter().enumerate() {
            let (job_tx, job_rx) = mpsc::sync_channel::<J>(1);
            let result_tx = result_tx.clone();
            std::thread::Builder::new()
                .name(format!("eval-rank-{w}"))
                .spawn_scoped(scope, move || {
                    // The job channel stays open until the failure is reported, so that the
                    // coordinator finds the report when it hands out its next job.
                    let run = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
                        let mut state = init(w, device)?;
                        for job in job_rx.iter() {
                            let r = work(&mut state, job)?;
                            if result_tx.send((w, Ok(r))).is_err() {
                                break;
                            }
                        }
                        Ok(())
                    }));
                    let cause = match run {
                        Ok(Ok(())) => return,
                        Ok(Err(e)) => e,
                        Err(p) => crate::report::panic_message(p.as_ref()),
                    };
                    // Reported before the group ends, so that the coordinator hears of this rank
                    // before the ranks the abort releases.
                    let _ = result_tx.send((w, Err(cause)));
                    abort();
                })
                .map_err(|e| RankError {
                    rank: w,
                    device: format!("{device:?}"),
                    cause: format!("cannot start its thread: {e}"),
                })?;
            jobs.push(job_tx);
        }
        drop(result_tx);
        let pool = Pool {
            jobs,
            results,
            devices: devices.iter().map(|d| format!("{d:?}")).collect(),
        };
        // Dropping the pool hangs up on the ranks; the scope then waits for their threads.
        drive(&pool)
    })
}

#[cfg(test)]
mod tests {
    use super::with_ranks;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn results_come_back_in_rank_order() {
        let out = with_ranks(
            &["a", "b", "c"],
            |w, _| Ok(w * 10),
            |base, job: usize| Ok(*base + job),
            || {},
            |pool| Ok((pool.round(vec![1, 2, 3])?, pool.ask(2, 5)?)),
        );
        assert_eq!(out.unwrap(), (vec![1, 12, 23], 25));
    }

    #[test]
    fn a_failing_rank_ends_the_evaluation_naming_it() {
        let aborted = AtomicBool::new(false);
        for fail_in_init in [false, true] {
            let e = with_ranks(
                &["cpu0", "cpu1"],
                |w, _| match (w, fail_in_init) {
                    (1, true) => Err("no memory".to_string()),
                    _ => Ok(()),
                },
                |_, job: usize| {
                    if job == 7 {
                        panic!("bad shard");
                    }
                    Ok(job)
                },
                || aborted.store(true, Ordering::SeqCst),
                |pool| {
                    pool.round(vec![0, 1])?;
                    pool.round(vec![2, 7])?;
                    Ok(())
                },
            )
            .unwrap_err();
            let expected = if fail_in_init {
                "rank 1 (\"cpu1\") failed: no memory"
            } else {
                "rank 1 (\"cpu1\") failed: panicked: bad shard"
            };
            assert_eq!(e.to_string(), expected);
            assert!(
                aborted.swap(false, Ordering::SeqCst),
                "the group is aborted"
            );
        }
    }
}
