//! The SwAV model in Burn: [`resnet`] (backbone), [`swav`] (projection head, prototypes) and
//! [`load`] (weights from any checkpoint format, through the layout table).

pub mod load;
pub mod record;
pub mod resnet;
pub mod swav;

/// The CPU backend used by default and in tests.
pub type CpuBackend = burn::backend::Flex;
