//! Integration tests: one binary (linking Burn-sized crates is slow, so tests share it).

mod classifier;
mod cli;
mod convert;
mod corpus;
mod data;
mod fetch;
mod hostile;
mod layers;
mod model;
mod pretrain;
mod processes;
mod ranks;
mod server;
mod train;
mod transforms;
mod vectors;

use std::path::{Path, PathBuf};

/// A file shipped in `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The built-in synthetic image set written at `root` (`train/` and `val/` ImageFolders of
/// `size`-pixel JPEGs at quality 90): `train` and `val` images per class, drawn from `seed`.
pub fn image_set(root: &Path, size: usize, train: usize, val: usize, seed: u64) -> PathBuf {
    swav::data::synthetic::write(
        root,
        &swav::data::synthetic::SyntheticConfig {
            size,
            train_per_class: train,
            val_per_class: val,
            seed,
            quality: 90,
        },
    )
    .unwrap()
}
