//! Integration tests: one binary (linking Burn-sized crates is slow, so tests share it).

mod classifier;
mod cli;
mod convert;
mod corpus;
mod data;
mod fetch;
mod hostile;
mod model;
mod pretrain;
mod processes;
mod ranks;
mod server;
mod train;
mod transforms;
mod vectors;

use std::path::PathBuf;

/// A file shipped in `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}
