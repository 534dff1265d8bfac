//! Runs of several processes, on one host or many: where this process stands ([`launch`],
//! from torchrun's or SLURM's variables) and its membership in the run ([`session`]: the
//! rendezvous with the others, and the watch that ends the run when one of them is gone or
//! stalled). The tensors themselves travel through the collective engine
//! ([`crate::collective`]), never through this module.

pub mod launch;
pub mod session;

pub use launch::{Launch, LaunchError, Launcher};
pub use session::{
    flatten, DistError, Fatal, Join, NcclId, Progress, Session, SessionEngine, DEFAULT_TIMEOUT,
};
