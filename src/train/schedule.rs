//! The learning-rate schedule of facebookresearch/swav `main_swav.py`: a linear warmup from
//! `start` to `base` over `warmup` iterations (`np.linspace`, both ends included), then a
//! per-iteration cosine from `base` to `final_lr` over the remaining iterations. Lengths are
//! epochs × iterations per epoch, so the curve is right for any batch size and device count.

/// Warmup + cosine, per iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule {
    pub start: f64,
    pub base: f64,
    pub final_lr: f64,
    /// Warmup iterations.
    pub warmup: usize,
    /// All iterations.
    pub total: usize,
}

impl LrSchedule {
    /// From epoch counts and the iterations of one epoch.
    pub fn new(
        start: f64,
        base: f64,
        final_lr: f64,
        warmup_epochs: f64,
        epochs: usize,
        iters_per_epoch: usize,
    ) -> LrSchedule {
        let total = epochs * iters_per_epoch;
        let warmup = ((warmup_epochs * iters_per_epoch as f64).round() as usize).min(total);
        LrSchedule {
            start,
            base,
            final_lr,
            warmup,
            total,
        }
    }

    /// The rate at iteration `it` (0-based, over the whole run).
    pub fn at(&self, it: usize) -> f64 {
        if it < self.warmup {
            if self.warmup == 1 {
                return self.start;
            }
            let t = it as f64 / (self.warmup - 1) as f64;
            return self.start + (self.base - self.start) * t;
        }
        let n = (self.total - self.warmup).max(1) as f64;
        let t = (it - self.warmup) as f64;
        self.final_lr
            + 0.5 * (self.base - self.final_lr) * (1.0 + (std::f64::consts::PI * t / n).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_main_swav_arrays() {
        // 2 warmup epochs of 3 iterations, 4 epochs: linspace(0.3, 4.8, 6) then
        // 0.0048 + 0.5 (4.8 - 0.0048)(1 + cos(pi t / 6)).
        let s = LrSchedule::new(0.3, 4.8, 0.0048, 2.0, 4, 3);
        let lin: Vec<f64> = (0..6).map(|i| 0.3 + 4.5 * i as f64 / 5.0).collect();
        for (i, v) in lin.iter().enumerate() {
            assert!((s.at(i) - v).abs() < 1e-12);
        }
        assert!((s.at(6) - 4.8).abs() < 1e-12);
        let c = 0.0048 + 0.5 * (4.8 - 0.0048) * (1.0 + (std::f64::consts::PI * 5.0 / 6.0).cos());
        assert!((s.at(11) - c).abs() < 1e-12);
        // No warmup (the bs256 recipes): cosine from the first iteration.
        let s = LrSchedule::new(0.0, 0.6, 0.0006, 0.0, 2, 5);
        assert_eq!(s.at(0), 0.6);
        assert!(s.at(9) > 0.0006 && s.at(9) < 0.02);
    }
}
