//! What the Burn binaries run, as library calls: [`train`] for `swav-train`, [`lincls`] for
//! `swav-lincls`. The top layer: it uses every other (registry names of weights arguments
//! resolved through [`crate::fetch`]) and nothing uses it; the binaries parse flags, call
//! these and print what they return.

pub mod lincls;
pub mod train;

/// What a command failed with: the error of the layer that failed, its causes kept (the
/// binaries print the chain on one line, `swav::report::one_line`).
pub type CommandError = Box<dyn std::error::Error + Send + Sync>;
