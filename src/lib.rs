//! swav-rs: SwAV checkpoints, conversion between PaddlePaddle (PASSL), PyTorch
//! (facebookresearch/swav, torchvision) and Burn, and the tools around them.
//!
//! Data flows one way: a file is read by [`checkpoint`] into named [`tensor::Tensor`]s, the
//! names and shapes are mapped between conventions by [`layout`], and [`convert`] writes
//! them out again (or hands them to the model).

pub mod atomic;
pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod collective;
pub mod config;
pub mod convert;
pub mod data;
pub mod digest;
pub mod dist;
pub mod eval;
pub mod fetch;
pub mod latin1;
pub mod layout;
pub mod log;
pub mod model;
pub mod plot;
pub mod selection;
pub mod tensor;
pub mod train;
