//! swav-rs: SwAV checkpoints, conversion between PaddlePaddle (PASSL), PyTorch
//! (facebookresearch/swav, torchvision) and Burn, pretraining and evaluation, and the tools
//! around them.
//!
//! Two crates. [`swav_formats`] holds everything that needs no Burn, re-exported here under
//! the same names: [`tensor`], [`checkpoint`] (containers), [`layout`] (naming conventions),
//! [`selection`] (a checkpoint's model tensors), [`convert`] and [`fetch`]. This crate adds the
//! Burn layers (feature `model`, on by default): [`model`] (the SwAV module, weights into it,
//! Burn records, [`model::open()`] for any path a tool takes), [`data`], [`train`], [`eval`].
//!
//! Data flows one way: file → [`checkpoint`] → [`layout`] → [`selection`] → [`model`] →
//! [`train`] / [`eval`]; [`convert`], extraction and [`fetch`] use those layers and are used by
//! none (`tests/it/layers.rs` checks it). [`commands`], on top, is what the Burn binaries run.

pub use swav_formats::{
    atomic, checkpoint, digest, fetch, latin1, layout, report, selection, tensor,
};

pub mod cli;
pub mod convert;

#[cfg(feature = "model")]
pub mod backend;
#[cfg(feature = "model")]
pub mod collective;
#[cfg(feature = "model")]
pub mod commands;
#[cfg(feature = "model")]
pub mod data;
#[cfg(feature = "model")]
pub mod dist;
#[cfg(feature = "model")]
pub mod eval;
#[cfg(feature = "model")]
pub mod model;
#[cfg(feature = "model")]
pub mod plot;
#[cfg(feature = "model")]
pub mod train;
#[cfg(feature = "model")]
pub mod yaml;
