//! swav-formats: SwAV checkpoints without Burn. Read PyTorch (zip, legacy, tar), PaddlePaddle
//! and safetensors containers without executing anything, map tensor names between the PASSL,
//! facebookresearch/torchvision and Burn layouts, convert, extract backbones, and fetch
//! published weights with verification.
//!
//! Layers, lowest first (a module only uses those before it): [`latin1`], [`tensor`] →
//! [`checkpoint`] (containers) → [`layout`] (naming conventions) → [`selection`] (a
//! checkpoint's model tensors and their layout) → [`convert`] and [`fetch`] (users of the
//! layers, used by none). [`atomic`], [`digest`] and [`report`] are utilities any layer may use.
//! The Burn half (the SwAV model, training, evaluation, Burn records) is the `swav` crate, which
//! re-exports these modules.

pub mod atomic;
pub mod checkpoint;
pub mod convert;
pub mod digest;
pub mod fetch;
pub mod latin1;
pub mod layout;
pub mod report;
pub mod selection;
pub mod tensor;
