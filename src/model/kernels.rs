//! The dispatch shared by the operations that run `swav-kernels` on Burn's CPU backend
//! ([`super::conv`], [`super::pool`]): which backend a generic `B` is, the moves between `B`'s
//! tensors and Flex's, and Flex's storage as slices of `f32` or `f64`.

use burn::backend::{Autodiff, Flex};
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{Bytes, DType, Shape};
use burn_flex::{FlexTensor, Layout};
use std::any::{Any, TypeId};

/// The training backend on the CPU.
pub(super) type Trained = Autodiff<Flex>;
pub(super) type TrainedTensor = <Trained as BackendTypes>::FloatTensorPrimitive;

/// Which CPU backend a backend is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cpu {
    /// Flex: forward passes only.
    Inference,
    /// `Autodiff<Flex>`: with the operation's backward step.
    Training,
}

/// Which CPU backend `B` is, if it is one.
pub(super) fn cpu_backend<B: Backend>() -> Option<Cpu> {
    let b = TypeId::of::<B>();
    if b == TypeId::of::<Flex>() {
        Some(Cpu::Inference)
    } else if b == TypeId::of::<Trained>() {
        Some(Cpu::Training)
    } else {
        None
    }
}

/// A value of a type known (by its `TypeId`) to be `To`.
pub(super) fn cast<From: 'static, To: 'static>(v: From) -> To {
    let v: Box<dyn Any> = Box::new(v);
    *v.downcast::<To>()
        .expect("a type checked by TypeId to be the CPU backend's")
}

/// The element types of `swav-kernels` as Flex stores them.
pub(super) trait Float: swav_kernels::Element {
    const DTYPE: DType;
    fn view(t: &FlexTensor) -> &[Self];
    fn tensor(values: Vec<Self>, shape: Vec<usize>) -> FlexTensor {
        FlexTensor::new(
            Self::bytes(values),
            Layout::contiguous(Shape::from(shape)),
            Self::DTYPE,
        )
    }
    fn bytes(values: Vec<Self>) -> Bytes;
}

macro_rules! float {
    ($t:ty, $d:expr) => {
        impl Float for $t {
            const DTYPE: DType = $d;
            fn view(t: &FlexTensor) -> &[Self] {
                t.as_slice::<$t>()
                    .expect("a contiguous tensor of this element type")
            }
            fn bytes(values: Vec<Self>) -> Bytes {
                Bytes::from_elems(values)
            }
        }
    };
}
float!(f32, DType::F32);
float!(f64, DType::F64);

/// `t`, contiguous.
pub(super) fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.layout().contiguous_offsets().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}

/// `$body` with `$T` the element type (`f32` or `f64`) of a Flex tensor of `$dtype` (one of
/// the two: the operations check it before they run).
macro_rules! with_float {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            burn::tensor::DType::F64 => {
                type $T = f64;
                $body
            }
            _ => {
                type $T = f32;
                $body
            }
        }
    };
}
pub(super) use with_float;

/// `[top, left]` of a padding the kernels take: symmetric, explicit or none.
pub(super) fn symmetric_padding(padding: &PaddingConfig2d) -> Option<[usize; 2]> {
    match *padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        PaddingConfig2d::Valid => Some([0, 0]),
        _ => None,
    }
}
