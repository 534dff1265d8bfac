//! The model's max pooling. Burn's [`MaxPool2d`] module holds the settings; [`max_pool2d`] runs
//! it: on the CPU backend (Flex, `f32` or `f64`) through `swav-kernels` (one autodiff operation
//! on `Autodiff<Flex>`, its backward step adding each output's gradient at its maximum), on
//! other backends and for settings the kernel does not take (asymmetric or `Same` padding,
//! ceil mode, padding over half the kernel, windows without an input pixel) through Burn's own
//! [`MaxPool2d::forward`].
//!
//! Why: Flex pools through a generic 3-D pooling with `i64` indices, ~8% of a CPU training step
//! of the tiny configuration once the convolutions were fast.

use super::kernels::{
    cast, contiguous, cpu_backend, symmetric_padding, with_float, Cpu, Float, TrainedTensor,
};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Flex;
use burn::nn::pool::MaxPool2d;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use std::sync::Arc;
use swav_kernels::pool::MaxPool2d as Geometry;

/// `pool.forward(x)`, through `swav-kernels` on the CPU backend.
pub fn max_pool2d<B: Backend>(pool: &MaxPool2d, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let cpu = cpu_backend::<B>();
    let geometry = match cpu.is_some() && matches!(x.dtype(), DType::F32 | DType::F64) {
        true => geometry(pool, x.dims()),
        false => None,
    };
    let Some(geometry) = geometry else {
        return pool.forward(x);
    };
    let x = x.into_primitive().tensor();
    let y: B::FloatTensorPrimitive = match cpu {
        Some(Cpu::Inference) => {
            let x: FlexTensor = cast(x);
            with_float!(x.dtype(), T => cast(forward::<T>(x, &geometry).0))
        }
        _ => cast(tracked(cast(x), geometry)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// The shapes of `pool` on an input of `dims`, when `swav-kernels` computes it.
fn geometry(pool: &MaxPool2d, [n, c, h, w]: [usize; 4]) -> Option<Geometry> {
    let padding = symmetric_padding(&pool.padding)?;
    let g = Geometry {
        batch: n,
        channels: c,
        height: h,
        width: w,
        kernel: pool.kernel_size,
        stride: pool.stride,
        padding,
        dilation: pool.dilation,
    };
    (!pool.ceil_mode && g.output_size().is_some()).then_some(g)
}

/// The pooling of `x` and each output's argmax in its plane, in `T`.
fn forward<T: Float>(x: FlexTensor, g: &Geometry) -> (FlexTensor, Vec<u32>) {
    let x = contiguous(x);
    let [oh, ow] = g.output_size().expect("checked by geometry()");
    let mut y = vec![T::ZERO; g.output_len()];
    let mut argmax = vec![0; y.len()];
    swav_kernels::pool::forward(g, T::view(&x), &mut y, &mut argmax);
    (T::tensor(y, vec![g.batch, g.channels, oh, ow]), argmax)
}

/// The gradient of the pooling that gave `argmax`, given the output's gradient `dy`, in `T`.
fn gradient<T: Float>(dy: FlexTensor, argmax: &[u32], g: &Geometry) -> FlexTensor {
    let dy = contiguous(dy);
    let mut dx = vec![T::ZERO; g.input_len()];
    swav_kernels::pool::backward(g, T::view(&dy), argmax, &mut dx);
    T::tensor(dx, vec![g.batch, g.channels, g.height, g.width])
}

/// The backward step of [`tracked`]: its state is the argmax and the shapes.
#[derive(Debug)]
struct PoolBackward;

impl Backward<Flex, 1> for PoolBackward {
    type State = (Arc<Vec<u32>>, Geometry);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let Some(node) = node else {
            return;
        };
        let (argmax, g) = ops.state;
        let dx = with_float!(dy.dtype(), T => gradient::<T>(dy, &argmax, &g));
        grads.register::<Flex>(node.id, dx);
    }
}

/// The pooling on the autodiff backend, with [`PoolBackward`] as its backward step.
fn tracked(x: TrainedTensor, g: Geometry) -> TrainedTensor {
    let xp = x.primitive.clone();
    let (y, argmax) = with_float!(xp.dtype(), T => forward::<T>(xp, &g));
    match PoolBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish((Arc::new(argmax), g), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

#[cfg(test)]
mod tests {
    //! The registered pooling against Burn's own, forward and gradient, with ties.
    use super::super::kernels::Trained;
    use super::*;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::TensorData;

    #[test]
    fn matches_burns_max_pooling() {
        let device = Default::default();
        for (k, s, p, hw) in [(3, 2, 1, 9), (2, 2, 0, 8), (3, 1, 1, 5)] {
            let pool = MaxPool2dConfig::new([k, k])
                .with_strides([s, s])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .init();
            // Values on a coarse grid: ties inside windows.
            let values: Vec<f32> = (0..3 * 4 * hw * hw)
                .map(|i| ((i * 7919) % 13) as f32)
                .collect();
            let x =
                Tensor::<Trained, 4>::from_data(TensorData::new(values, [3, 4, hw, hw]), &device);
            let run = |ours: bool| {
                let x = x.clone().require_grad();
                let y = if ours {
                    max_pool2d(&pool, x.clone())
                } else {
                    pool.forward(x.clone())
                };
                let weights = Tensor::<Trained, 4>::ones(y.dims(), &device).cumsum(3);
                let grads = (y.clone() * weights).sum().backward();
                let dx = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
                (y.into_data().to_vec::<f32>().unwrap(), dx)
            };
            let (ours, burn) = (run(true), run(false));
            assert_eq!(ours, burn, "k{k} s{s} p{p} on {hw}x{hw}");
            let inference = max_pool2d(&pool, x.clone().inner())
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            assert_eq!(inference, ours.0);
        }
    }
}
