//! SwAV pretraining: the config ([`config`]), one step ([`step`]: Sinkhorn-Knopp codes, the
//! queue and the swapped-prediction loss), the optimizer ([`lars`]) and its schedule
//! ([`schedule`]), training checkpoints ([`state`]), health checks ([`diagnostics`]) and the
//! loop ([`trainer`]).

pub mod bench;
pub mod config;
pub mod diagnostics;
pub mod lars;
pub mod parallel;
pub mod rank;
pub mod schedule;
pub mod sinkhorn;
pub mod state;
pub mod step;
pub mod trainer;
