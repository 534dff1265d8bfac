//! The data-loading sections that PASSL's training and evaluation configs share
//! (`dataloader.train.loader:` and `dataloader.train.sampler:`; the linear evaluation's
//! `dataloader.{train,val}` take the same keys), here below both users.

use serde::{Deserialize, Serialize};

/// `dataloader.*.loader:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoaderSection {
    /// Decode/augment threads; 0: all cores.
    pub num_workers: usize,
    /// Accepted for PASSL compatibility; batches are always handed over without a copy.
    pub use_shared_memory: bool,
}

impl Default for LoaderSection {
    fn default() -> Self {
        LoaderSection {
            num_workers: 0,
            use_shared_memory: true,
        }
    }
}

/// `dataloader.*.sampler:`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplerSection {
    /// Images per device per step.
    pub batch_size: usize,
    pub shuffle: bool,
    pub drop_last: bool,
}

impl Default for SamplerSection {
    fn default() -> Self {
        SamplerSection {
            batch_size: 128,
            shuffle: true,
            drop_last: true,
        }
    }
}
