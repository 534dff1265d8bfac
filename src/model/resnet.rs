//! The ResNet backbone of SwAV (facebookresearch/swav `src/resnet50.py`, torchvision v1.5: the
//! stride sits on the 3×3 convolution), with Basic and Bottleneck blocks, any depth and width.
//!
//! Field names are the Burn layout of [`crate::layout`]: `conv1`, `bn1`,
//! `layer{1-4}.blocks.{i}.{conv1,bn1,conv2,bn2,conv3,bn3}`, `downsample.{conv,bn}`.

use super::batchnorm::BatchNorm;
use super::conv::conv2d;
use super::pool::max_pool2d;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Block kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34), expansion 1.
    Basic,
    /// 1×1, 3×3, 1×1 (ResNet-50/101/152), expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per `planes`.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Backbone shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub block: BlockKind,
    /// Blocks per stage: `[3, 4, 6, 3]` for ResNet-50.
    pub layers: [usize; 4],
    /// Channels of the stem and of the first stage's blocks: `width_per_group × widen`
    /// (64 for ResNet-50, 128/256/320 for facebookresearch's RN50-w2/w4/w5).
    pub base_width: usize,
}

impl ResNetConfig {
    /// A standard depth (18, 34, 50, 101, 152) at width `64 × widen`.
    pub fn depth(depth: usize, widen: usize) -> Option<ResNetConfig> {
        let (block, layers) = match depth {
            18 => (BlockKind::Basic, [2, 2, 2, 2]),
            34 => (BlockKind::Basic, [3, 4, 6, 3]),
            50 => (BlockKind::Bottleneck, [3, 4, 6, 3]),
            101 => (BlockKind::Bottleneck, [3, 4, 23, 3]),
            152 => (BlockKind::Bottleneck, [3, 8, 36, 3]),
            _ => return None,
        };
        Some(ResNetConfig {
            block,
            layers,
            base_width: 64 * widen,
        })
    }

    /// Width of the pooled features.
    pub fn feature_dim(&self) -> usize {
        self.base_width * 8 * self.block.expansion()
    }

    /// Build the backbone (parameters initialised as torchvision does not matter here:
    /// weights come from a checkpoint or from training).
    pub fn init<B: Backend>(&self, device: &B::Device) -> ResNet<B> {
        let mut inplanes = self.base_width;
        let mut stage = |planes: usize, blocks: usize, stride: usize| {
            let out = planes * self.block.expansion();
            let blocks = (0..blocks)
                .map(|i| {
                    let s = if i == 0 { stride } else { 1 };
                    let down = (i == 0 && (stride != 1 || inplanes != out)).then(|| Downsample {
                        conv: conv(inplanes, out, 1, s, 0, device),
                        bn: BatchNorm::new(out, device),
                    });
                    let b = Block::new(self.block, inplanes, planes, s, down, device);
                    inplanes = out;
                    b
                })
                .collect();
            Stage { blocks }
        };
        let w = self.base_width;
        let layer1 = stage(w, self.layers[0], 1);
        let layer2 = stage(w * 2, self.layers[1], 2);
        let layer3 = stage(w * 4, self.layers[2], 2);
        let layer4 = stage(w * 8, self.layers[3], 2);
        ResNet {
            conv1: conv(3, w, 7, 2, 3, device),
            bn1: BatchNorm::new(w, device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1,
            layer2,
            layer3,
            layer4,
        }
    }
}

fn conv<B: Backend>(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .init(device)
}

/// The projection shortcut of a block that changes shape.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: BatchNorm<B>,
}

/// A residual block: Basic (`conv1`, `conv2` 3×3) or Bottleneck (`conv1` 1×1, `conv2` 3×3 with
/// the stride, `conv3` 1×1).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm<B>,
    pub conv2: Conv2d<B>,
    pub bn2: BatchNorm<B>,
    pub conv3: Option<Conv2d<B>>,
    pub bn3: Option<BatchNorm<B>>,
    pub downsample: Option<Downsample<B>>,
}

impl<B: Backend> Block<B> {
    fn new(
        kind: BlockKind,
        inplanes: usize,
        planes: usize,
        stride: usize,
        downsample: Option<Downsample<B>>,
        device: &B::Device,
    ) -> Self {
        match kind {
            BlockKind::Basic => Block {
                conv1: conv(inplanes, planes, 3, stride, 1, device),
                bn1: BatchNorm::new(planes, device),
                conv2: conv(planes, planes, 3, 1, 1, device),
                bn2: BatchNorm::new(planes, device),
                conv3: None,
                bn3: None,
                downsample,
            },
            BlockKind::Bottleneck => Block {
                conv1: conv(inplanes, planes, 1, 1, 0, device),
                bn1: BatchNorm::new(planes, device),
                conv2: conv(planes, planes, 3, stride, 1, device),
                bn2: BatchNorm::new(planes, device),
                conv3: Some(conv(planes, planes * 4, 1, 1, 0, device)),
                bn3: Some(BatchNorm::new(planes * 4, device)),
                downsample,
            },
        }
    }

    /// `relu(F(x) + shortcut(x))`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let identity = match &self.downsample {
            Some(d) => d.bn.forward(conv2d(&d.conv, x.clone())),
            None => x.clone(),
        };
        let out = relu(self.bn1.forward(conv2d(&self.conv1, x)));
        let out = self.bn2.forward(conv2d(&self.conv2, out));
        let out = match (&self.conv3, &self.bn3) {
            (Some(c3), Some(b3)) => b3.forward(conv2d(c3, relu(out))),
            _ => out,
        };
        relu(out + identity)
    }
}

/// One stage (`layerN`).
#[derive(Module, Debug)]
pub struct Stage<B: Backend> {
    pub blocks: Vec<Block<B>>,
}

/// The backbone.
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm<B>,
    pub maxpool: MaxPool2d,
    pub layer1: Stage<B>,
    pub layer2: Stage<B>,
    pub layer3: Stage<B>,
    pub layer4: Stage<B>,
}

impl<B: Backend> ResNet<B> {
    /// Global-average-pooled features `[N, C]` of images `[N, 3, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let x = max_pool2d(
            &self.maxpool,
            relu(self.bn1.forward(conv2d(&self.conv1, x))),
        );
        let mut x = x;
        for stage in [&self.layer1, &self.layer2, &self.layer3, &self.layer4] {
            for b in &stage.blocks {
                x = b.forward(x);
            }
        }
        let [n, c, _, _] = x.dims();
        x.mean_dim(3).mean_dim(2).reshape([n, c])
    }
}
