//! SwAV pretraining: the training step ([`step`]): Sinkhorn-Knopp codes and the
//! swapped-prediction loss.

pub mod step;
