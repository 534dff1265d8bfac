//! The pixel work of SwAV's data pipeline, apart from Burn and the rest of swav-rs: an 8-bit
//! RGB image ([`image`]), the per-sample random generator ([`rng`]), the augmentations with
//! Pillow's integer arithmetic ([`transforms`]) and the run-time choice of vector instructions
//! they are compiled for ([`simd`]).
//!
//! A crate of its own so that it is optimised in every build profile (the workspace's
//! `[profile.dev.package.swav-pixels]`): debug builds and tests then run the same vector code
//! as release builds — the equality of every instruction set is tested in the default test
//! run — and the loader's hot loops are fast in tests. swav-rs re-exports the modules under
//! `swav::data`.

pub mod image;
pub mod rng;
pub mod simd;
pub mod transforms;
