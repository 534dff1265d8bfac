//! Images for SwAV: datasets (ImageFolder, flat folders, the built-in synthetic set),
//! decoding, the multi-crop augmentations and the parallel loader.

pub mod bench;
pub mod dataset;
pub mod decode;
pub mod device;
pub mod image;
pub mod loader;
pub mod multicrop;
pub mod rng;
pub mod simd;
pub mod synthetic;
pub mod transforms;
