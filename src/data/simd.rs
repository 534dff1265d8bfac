//! Runtime choice of vector instructions for the image transforms. The crate is built for
//! baseline x86-64 (SSE2), so that its binaries run on any x86-64 CPU; the transforms' loops
//! (box blur, colour look-ups, blends, to-tensor) run ~1.25× faster as a whole when compiled
//! for AVX2 (the blur 2.3×). [`fast`] runs a closure inlined into a function compiled for AVX2
//! and FMA when the CPU has them. Results are bit-identical either way: the code is integer or
//! plain IEEE single-precision arithmetic, and no multiply-add is fused without fast-math.

/// Run `f`, compiled for AVX2 + FMA where the CPU supports them (the check is cached by std).
/// `f` and what it calls must be `#[inline(always)]` to be compiled for them.
#[inline(always)]
pub fn fast<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            #[target_feature(enable = "avx2,fma")]
            fn run<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: `run` only needs AVX2 and FMA, which the CPU was just found to have.
            return unsafe { run(f) };
        }
    }
    f()
}
