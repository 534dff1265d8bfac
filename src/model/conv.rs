//! The model's convolutions. Burn's [`Conv2d`] module holds the weights (names, records and
//! initialisation unchanged); [`conv2d`] runs it. On the CPU backend (Flex, `f32` or `f64`) the
//! convolution and its two gradients are the matrix products of the `swav-kernels` crate, and on
//! `Autodiff<Flex>` they are one autodiff operation of their own — Burn's backend extension: a
//! backward step registered for the backend, Burn's module and graph left as they are. Other
//! backends (CUDA, NdArray), grouped convolutions, biases and asymmetric padding run Burn's
//! own [`Conv2d::forward`].
//!
//! Why: Flex computes the weight gradient as a convolution with the batch as channels and the
//! input gradient as a transposed convolution by direct loops, ~52% of a CPU training step of
//! the tiny configuration (docs/benchmarks.md, "Training step on the CPU").

use super::kernels::{
    cast, contiguous, cpu_backend, symmetric_padding, with_float, Cpu, Float, TrainedTensor,
};
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::Flex;
use burn::nn::conv::Conv2d;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_flex::FlexTensor;
use swav_kernels::conv::Conv2d as Geometry;

/// `conv.forward(x)`, through `swav-kernels` on the CPU backend.
pub fn conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let cpu = cpu_backend::<B>();
    let (dtype, w) = (x.dtype(), conv.weight.val());
    let same = dtype == w.dtype();
    let geometry = match cpu.is_some() && same && matches!(dtype, DType::F32 | DType::F64) {
        true => geometry(conv, x.dims()),
        false => None,
    };
    let Some(geometry) = geometry else {
        return conv.forward(x);
    };
    let (x, w) = (x.into_primitive().tensor(), w.into_primitive().tensor());
    let y: B::FloatTensorPrimitive = match cpu {
        Some(Cpu::Inference) => {
            with_float!(dtype, T => cast(forward::<T>(cast(x), cast(w), &geometry)))
        }
        _ => cast(tracked(cast(x), cast(w), geometry)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// The shapes of `conv` on an input of `dims`, when `swav-kernels` computes it: no groups, no
/// bias, symmetric padding, an output of at least one pixel, the weight's input channels those
/// of `x`.
fn geometry<B: Backend>(conv: &Conv2d<B>, [n, c, h, w]: [usize; 4]) -> Option<Geometry> {
    let [co, ci, kh, kw] = conv.weight.dims();
    let padding = symmetric_padding(&conv.padding)?;
    let g = Geometry {
        batch: n,
        in_channels: c,
        out_channels: co,
        height: h,
        width: w,
        kernel: [kh, kw],
        stride: conv.stride,
        padding,
        dilation: conv.dilation,
    };
    let plain = conv.groups == 1 && conv.bias.is_none() && ci == c && [kh, kw] == conv.kernel_size;
    (plain && g.output_size().is_some()).then_some(g)
}

/// The convolution of `x` by `w`, in `T`.
fn forward<T: Float>(x: FlexTensor, w: FlexTensor, g: &Geometry) -> FlexTensor {
    let (x, w) = (contiguous(x), contiguous(w));
    let mut y = vec![T::ZERO; g.output_len()];
    swav_kernels::conv::forward(g, T::view(&x), T::view(&w), &mut y);
    let [oh, ow] = g.output_size().expect("checked by geometry()");
    T::tensor(y, vec![g.batch, g.out_channels, oh, ow])
}

/// The gradients of `x` and `w` (each when asked for) given the output's gradient `dy`, in `T`.
fn gradients<T: Float>(
    x: FlexTensor,
    w: FlexTensor,
    dy: FlexTensor,
    g: &Geometry,
    (want_dx, want_dw): (bool, bool),
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let (x, w, dy) = (contiguous(x), contiguous(w), contiguous(dy));
    let mut dx = want_dx.then(|| vec![T::ZERO; g.input_len()]);
    let mut dw = want_dw.then(|| vec![T::ZERO; g.weight_len()]);
    swav_kernels::conv::backward(
        g,
        T::view(&x),
        T::view(&w),
        T::view(&dy),
        dx.as_deref_mut(),
        dw.as_deref_mut(),
    );
    (
        dx.map(|v| T::tensor(v, x.layout().shape().to_vec())),
        dw.map(|v| T::tensor(v, w.layout().shape().to_vec())),
    )
}

/// The backward step of [`tracked`]: its state is the input's and the weight's checkpoints and
/// the shapes.
#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    type State = (NodeId, NodeId, Geometry);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, w, g) = ops.state;
        let x: FlexTensor = checkpointer.retrieve_node_output(x);
        let w: FlexTensor = checkpointer.retrieve_node_output(w);
        let want = (node_x.is_some(), node_w.is_some());
        let (dx, dw) = with_float!(x.dtype(), T => gradients::<T>(x, w, dy, &g, want));
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, dx);
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

/// The convolution on the autodiff backend, with [`ConvBackward`] as its backward step.
fn tracked(x: TrainedTensor, w: TrainedTensor, g: Geometry) -> TrainedTensor {
    let (xp, wp) = (x.primitive.clone(), w.primitive.clone());
    let y = with_float!(xp.dtype(), T => forward::<T>(xp, wp, &g));
    match ConvBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let (xs, ws) = (prep.checkpoint(&x), prep.checkpoint(&w));
            prep.finish((xs, ws, g), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(y),
    }
}

#[cfg(test)]
mod tests {
    //! The registered convolution against Burn's own, forward and both gradients, on the
    //! convolutions of a ResNet (stem, 3×3 with and without stride, 1×1 projections).
    use super::super::kernels::Trained;
    use super::*;
    use burn::module::AutodiffModule;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::PaddingConfig2d;
    use burn::tensor::Distribution;

    fn check(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, hw: usize) {
        let device = Default::default();
        let conv: Conv2d<Trained> = Conv2dConfig::new([cin, cout], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_bias(false)
            .init(&device);
        let x =
            Tensor::<Trained, 4>::random([5, cin, hw, hw], Distribution::Normal(0.0, 1.0), &device);
        let run = |ours: bool| {
            let x = x.clone().detach().require_grad();
            let y = if ours {
                conv2d(&conv, x.clone())
            } else {
                conv.forward(x.clone())
            };
            // A loss whose gradient differs at every output element.
            let weights = Tensor::<Trained, 4>::ones(y.dims(), &device)
                .cumsum(3)
                .div_scalar(7.0);
            let grads = (y.clone() * weights).sum().backward();
            let dx = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
            let dw = conv
                .weight
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            (y.into_data().to_vec::<f32>().unwrap(), dx, dw)
        };
        let (ours, burn) = (run(true), run(false));
        for (what, a, b) in [
            ("output", &ours.0, &burn.0),
            ("dx", &ours.1, &burn.1),
            ("dw", &ours.2, &burn.2),
        ] {
            assert_eq!(a.len(), b.len());
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in a.iter().zip(b).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * scale.max(1.0),
                    "{what} [{cin}->{cout} k{k} s{stride} p{pad}] element {i}: {a} vs {b}"
                );
            }
        }
        // Inference on Flex itself: the same output.
        let conv_inner = conv.valid();
        let y = conv2d(&conv_inner, x.inner())
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(y, ours.0);
    }

    #[test]
    fn matches_burns_convolution() {
        check(3, 8, 7, 2, 3, 17);
        check(4, 6, 3, 1, 1, 9);
        check(4, 6, 3, 2, 1, 9);
        check(6, 5, 1, 1, 0, 6);
        check(6, 5, 1, 2, 0, 7);
        check(2, 3, 3, 2, 1, 2);
    }
}
