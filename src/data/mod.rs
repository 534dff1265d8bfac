//! Images for SwAV: datasets (ImageFolder, flat folders, the built-in synthetic set),
//! decoding, the multi-crop augmentations and the parallel loader.

pub mod decode;
pub mod image;
pub mod rng;
pub mod transforms;
