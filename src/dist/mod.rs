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

/// Join the run `launch` describes as a process of `ranks_per_process` ranks whose resolved
/// settings are `config` (compared with process 0's, key by key), waiting up to `timeout`.
/// After the rendezvous a peer gone or stalled ends this process from the session's watch
/// thread: `tool: error: ...` on stderr, exit code 2.
pub fn join_launched(
    launch: Launch,
    ranks_per_process: usize,
    config: &impl serde::Serialize,
    timeout: std::time::Duration,
    nccl_id: Option<NcclId>,
    tool: &'static str,
) -> Result<std::sync::Arc<Session>, DistError> {
    let config = serde_json::to_value(config).map_err(|e| DistError::Protocol {
        addr: format!("{}:{}", launch.master_addr, launch.master_port),
        detail: format!("the config cannot be sent: {e}"),
    })?;
    let join = Join {
        launch,
        ranks_per_process,
        config: flatten(&config),
        timeout,
        nccl_id,
    };
    let fatal: Fatal = std::sync::Arc::new(move |e| {
        eprintln!("{tool}: error: {e}");
        std::process::exit(crate::cli::EXIT_ERROR.into());
    });
    Session::join(join, fatal).map(std::sync::Arc::new)
}
