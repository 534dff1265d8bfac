//! The CPU kernels of swav-rs's training step, apart from Burn: [`conv`] (a convolution and
//! its two gradients as matrix products), [`pool`] (max pooling and its gradient) and
//! [`batchnorm`] (batch normalisation with the batch's statistics and its gradients). They work
//! on contiguous NCHW buffers of `f32` or `f64`; swav-rs's model registers them as operations of
//! Burn's CPU backend (`swav::model::{conv, pool, batchnorm}`), where Burn 0.21's own are
//! slow (see each module).
//!
//! A crate of its own so that it is optimised in every build profile (the workspace's
//! `[profile.dev.package.swav-kernels]`: the tests' training steps run it) and has no Burn in it.

pub mod batchnorm;
pub mod conv;
pub mod pool;

/// The output size `[h, w]` of a sliding window (a convolution's kernel or a pooling window)
/// over an input of `size` (height, width): `None` when a kernel, stride or dilation is 0 or
/// the dilated kernel does not fit in the padded input.
fn output_size(
    size: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> Option<[usize; 2]> {
    let dim = |i: usize| {
        if stride[i] == 0 || kernel[i] == 0 || dilation[i] == 0 {
            return None;
        }
        let span = dilation[i] * (kernel[i] - 1) + 1;
        let padded = size[i] + 2 * padding[i];
        (padded >= span).then(|| (padded - span) / stride[i] + 1)
    };
    Some([dim(0)?, dim(1)?])
}

/// `f()` on a rayon pool of `threads` threads (the tests' check that results do not depend on
/// the threads).
#[cfg(test)]
fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool")
        .install(f)
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// The element types: `f32` and `f64` (those gemm multiplies; sealed).
pub trait Element:
    sealed::Sealed
    + Copy
    + Send
    + Sync
    + PartialEq
    + PartialOrd
    + std::fmt::Debug
    + std::ops::AddAssign
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + 'static
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// -∞.
    const NEG_INFINITY: Self;
    /// The value as `f64` (exact).
    fn to_f64(self) -> f64;
    /// The nearest value to `v`.
    fn from_f64(v: f64) -> Self;
}

impl Element for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Element for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}
