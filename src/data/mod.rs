//! Images for SwAV: datasets (ImageFolder, flat folders, the built-in synthetic set),
//! decoding, the multi-crop augmentations and the parallel loader.

pub mod bench;
pub mod dataset;
pub mod decode;
pub mod loader;
pub mod multicrop;
pub mod prefetch;
pub mod settings;
pub mod synthetic;

/// The pixel work, in the Burn-free crate `swav-pixels` (optimised in every build profile).
pub use swav_pixels::{image, rng, simd, transforms};
