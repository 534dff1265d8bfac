//! LARS as facebookresearch/swav uses it: apex `LARC(SGD(momentum 0.9, weight_decay), trust
//! 0.001, clip=False)`. For each parameter with non-zero weight norm ‖w‖ and gradient norm ‖g‖:
//! `g ← (g + wd·w) · trust·‖w‖ / (‖g‖ + wd·‖w‖ + 1e-8)`; otherwise `g` is left as it is (and no
//! weight decay is applied, as LARC zeroes SGD's own decay). Then SGD with momentum and no
//! dampening: `v ← μ·v + g` (`v ← g` at the first step), `w ← w − lr·v`.
//!
//! Every parameter is adapted, BatchNorm and biases included, as LARC does. The branch on the
//! norms is computed with tensor arithmetic, so a step never waits for the device.

use burn::module::AutodiffModule;
use burn::optim::momentum::{Momentum, MomentumConfig, MomentumState};
use burn::optim::{adaptor::OptimizerAdaptor, LearningRate, SimpleOptimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

/// LARS settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LarsConfig {
    pub momentum: f64,
    pub weight_decay: f64,
    pub trust_coefficient: f64,
    /// LARC's `eps`.
    pub eps: f64,
}

impl Default for LarsConfig {
    fn default() -> Self {
        LarsConfig {
            momentum: 0.9,
            weight_decay: 1e-6,
            trust_coefficient: 0.001,
            eps: 1e-8,
        }
    }
}

/// The optimizer (one parameter at a time; Burn's adaptor walks the module).
#[derive(Clone)]
pub struct Lars<B: Backend> {
    cfg: LarsConfig,
    momentum: Momentum<B>,
}

impl LarsConfig {
    /// The optimizer for module `M` on autodiff backend `A`.
    pub fn init<A: AutodiffBackend, M: AutodiffModule<A>>(
        &self,
    ) -> OptimizerAdaptor<Lars<A::InnerBackend>, M, A> {
        OptimizerAdaptor::from(Lars {
            cfg: self.clone(),
            momentum: Momentum::new(
                &MomentumConfig::new()
                    .with_momentum(self.momentum)
                    .with_dampening(0.0),
            ),
        })
    }
}

impl<B: Backend> SimpleOptimizer<B> for Lars<B> {
    type State<const D: usize> = MomentumState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let c = &self.cfg;
        let w_norm = tensor.clone().powi_scalar(2).sum().sqrt();
        let g_norm = grad.clone().powi_scalar(2).sum().sqrt();
        // 1 where both norms are non-zero, else 0.
        let adapt = w_norm.clone().sign() * g_norm.clone().sign();
        let ratio = w_norm.clone().mul_scalar(c.trust_coefficient)
            / (g_norm + w_norm.mul_scalar(c.weight_decay)).add_scalar(c.eps);
        // `adapt·ratio + (1 − adapt)`: both terms exact where the other is zero (writing it as
        // `adapt·(ratio − 1) + 1` rounds a ratio of 1e-3 to ~1e-4 relative in f32).
        let ratio = adapt.clone() * ratio + adapt.clone().neg().add_scalar(1.0);
        let decay = adapt.mul_scalar(c.weight_decay);
        let grad = (grad + tensor.clone() * decay.reshape([1; D])) * ratio.reshape([1; D]);
        let (v, state) = self.momentum.transform(grad, state);
        (tensor - v.mul_scalar(lr), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        state.to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In f32 the update keeps f32 precision when the trust ratio is small (LARS ratios are
    /// often far below 1e-3): one step against the same formula in f64.
    #[test]
    fn a_small_trust_ratio_keeps_f32_precision() {
        // Flex (f32): NdArray's element type is a per-device setting that f64 tests beside
        // this one change.
        type B = crate::model::CpuBackend;
        let device = Default::default();
        let w = [0.005f32, -0.0125, 0.02, 0.0075];
        let g = [300.0f32, -125.0, 72.5, 400.0];
        let lars = Lars::<B> {
            cfg: LarsConfig::default(),
            momentum: Momentum::new(&MomentumConfig::new().with_momentum(0.9)),
        };
        let lr = 10.0;
        let (new, _) = lars.step(
            lr,
            Tensor::<B, 1>::from_floats(w, &device),
            Tensor::<B, 1>::from_floats(g, &device),
            None,
        );
        let new = new.into_data().to_vec::<f32>().unwrap();
        let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        let (wn, gn) = (norm(&w), norm(&g));
        let ratio = 0.001 * wn / (gn + 1e-6 * wn + 1e-8);
        for i in 0..4 {
            let (wi, gi) = (f64::from(w[i]), f64::from(g[i]));
            let expected = -lr * (gi + 1e-6 * wi) * ratio;
            let got = f64::from(new[i]) - wi;
            // A ratio of ~1e-7, an update of ~1e-2 of the weight: to 1e-4 of the update.
            assert!(
                (got - expected).abs() <= 1e-4 * expected.abs(),
                "{got} vs {expected}"
            );
        }
    }
}
