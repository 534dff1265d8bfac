//! Runtime choice of vector instructions for the image transforms. The crate is built for
//! baseline x86-64 (SSE2), so that its binaries run on any x86-64 CPU; the transforms' loops
//! (hue, blends, box blur, to-tensor) are compiled again for AVX2 + FMA and for AVX-512, and
//! [`fast`] runs the best version the CPU supports. Results are bit-identical at every level
//! (tested): the code is integer or plain IEEE arithmetic, and no multiply-add is fused
//! without fast-math. On one core of an AMD EPYC (AVX-512), multi-crop runs ~1.25× faster
//! with AVX2 than with SSE2 and another ~1.12× with AVX-512 (hue 1.35×).

use std::cell::Cell;

/// Instruction sets [`fast`] compiles for, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// What the crate is built for (SSE2 on x86-64).
    Baseline,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512 F, BW, VL and DQ (with AVX2 + FMA).
    Avx512,
}

thread_local! {
    /// The highest level [`fast`] may use on this thread (see [`with_level`]).
    static CAP: Cell<Level> = const { Cell::new(Level::Avx512) };
}

/// The highest level this CPU supports (std caches the checks).
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") && has!("fma") {
            if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq") {
                return Level::Avx512;
            }
            return Level::Avx2;
        }
    }
    Level::Baseline
}

/// Run `f` with [`fast`] limited to `level` on this thread, e.g. to compare the levels' results.
pub fn with_level<R>(level: Level, f: impl FnOnce() -> R) -> R {
    let before = CAP.replace(level);
    let out = f();
    CAP.set(before);
    out
}

/// Run `f` compiled for the best instruction set the CPU supports, up to this thread's cap.
/// `f` and what it calls must be `#[inline(always)]` to be compiled for it.
#[inline(always)]
pub fn fast<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
        fn avx512<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        match detected().min(CAP.get()) {
            // SAFETY: `detected` found the CPU to have every feature each function enables.
            Level::Avx512 => return unsafe { avx512(f) },
            Level::Avx2 => return unsafe { avx2(f) },
            Level::Baseline => {}
        }
    }
    f()
}
