//! The SwAV model (facebookresearch/swav `src/resnet50.py` `ResNet` with `output_dim`,
//! `hidden_mlp`, `nmb_prototypes`): backbone → projection head (Linear–BN–ReLU–Linear, or
//! without BN as RN50-w5, or one Linear, or none) → L2 normalisation → prototypes (one or
//! several bias-free Linear heads).
//!
//! Field names are the Burn layout of [`crate::layout`]: `backbone.*`,
//! `projection_head.{hidden,bn,out}`, `prototypes.heads.{i}`.

use super::batchnorm::BatchNorm;
use super::resnet::{BlockKind, ResNet, ResNetConfig};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Projection head shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Hidden width (`hidden_mlp`); `None` for a single Linear.
    pub hidden: Option<usize>,
    /// BatchNorm after the hidden Linear (false for RN50-w5).
    pub bn: bool,
    /// Embedding width (`output_dim`, `feat_dim`).
    pub out: usize,
}

/// The whole model's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwavConfig {
    pub backbone: ResNetConfig,
    /// `None`: features only.
    pub head: Option<HeadConfig>,
    /// Prototypes per head (`nmb_prototypes`; several = MultiPrototypes); empty for none.
    pub prototypes: Vec<usize>,
}

/// The projection head.
#[derive(Module, Debug)]
pub struct ProjectionHead<B: Backend> {
    pub hidden: Option<Linear<B>>,
    pub bn: Option<BatchNorm<B>>,
    pub out: Linear<B>,
}

/// The prototype heads (bias-free Linear layers, weights `[D, K]`).
#[derive(Module, Debug)]
pub struct Prototypes<B: Backend> {
    pub heads: Vec<Linear<B>>,
}

/// SwAV.
#[derive(Module, Debug)]
pub struct Swav<B: Backend> {
    pub backbone: ResNet<B>,
    pub projection_head: Option<ProjectionHead<B>>,
    pub prototypes: Option<Prototypes<B>>,
}

/// What a forward pass gives.
#[derive(Debug, Clone)]
pub struct SwavOutput<B: Backend> {
    /// Pooled backbone features `[N, C]`.
    pub features: Tensor<B, 2>,
    /// L2-normalised projection `[N, D]` (the features themselves without a head).
    pub embedding: Tensor<B, 2>,
    /// `embedding · prototypesᵀ` per prototype head, `[N, K]`.
    pub scores: Vec<Tensor<B, 2>>,
}

impl SwavConfig {
    /// Build the model.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Swav<B> {
        let feat = self.backbone.feature_dim();
        let projection_head = self.head.as_ref().map(|h| {
            let (hidden, bn, out_in) = match h.hidden {
                Some(w) => (
                    Some(LinearConfig::new(feat, w).init(device)),
                    h.bn.then(|| BatchNorm::new(w, device)),
                    w,
                ),
                None => (None, None, feat),
            };
            ProjectionHead {
                hidden,
                bn,
                out: LinearConfig::new(out_in, h.out).init(device),
            }
        });
        let dim = self.head.as_ref().map_or(feat, |h| h.out);
        let prototypes = (!self.prototypes.is_empty()).then(|| Prototypes {
            heads: self
                .prototypes
                .iter()
                .map(|&k| LinearConfig::new(dim, k).with_bias(false).init(device))
                .collect(),
        });
        Swav {
            backbone: self.backbone.init(device),
            projection_head,
            prototypes,
        }
    }

    /// Build the model with every parameter initialised now, in a fixed order. Burn
    /// initialises parameters lazily, at first use; a seeded random network must not depend on
    /// what else drew random numbers before its first forward pass.
    pub fn init_eager<B: Backend>(&self, device: &B::Device) -> Swav<B> {
        struct Touch;
        impl<B: Backend> burn::module::ModuleVisitor<B> for Touch {
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
                let _ = param.val();
            }
        }
        let model = self.init::<B>(device);
        model.visit(&mut Touch);
        model
    }

    /// Infer the shape from tensors named in the Burn layout (`(name, shape)`).
    pub fn infer<'a>(
        tensors: impl IntoIterator<Item = (&'a str, &'a [usize])>,
    ) -> Result<SwavConfig, String> {
        let mut base = None;
        let mut layers = [0usize; 4];
        let mut bottleneck = false;
        let mut hidden = None;
        let mut bn = false;
        let mut out = None;
        let mut protos: Vec<(usize, usize)> = Vec::new();
        for (name, shape) in tensors {
            let n = name.strip_prefix("backbone.").unwrap_or(name);
            if n == "conv1.weight" {
                base = shape.first().copied();
            }
            if let Some(rest) = n.strip_prefix("layer") {
                let mut parts = rest.split('.');
                let (Some(l), Some("blocks"), Some(i)) = (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                if let (Ok(l), Ok(i)) = (l.parse::<usize>(), i.parse::<usize>()) {
                    if (1..=4).contains(&l) {
                        layers[l - 1] = layers[l - 1].max(i + 1);
                    }
                }
                bottleneck |= n.contains(".conv3.");
            }
            match n {
                "projection_head.hidden.weight" => hidden = shape.get(1).copied(),
                "projection_head.bn.gamma" => bn = true,
                "projection_head.out.weight" => out = shape.get(1).copied(),
                _ => {}
            }
            if let Some(i) = n
                .strip_prefix("prototypes.heads.")
                .and_then(|r| r.strip_suffix(".weight"))
            {
                if let (Ok(i), Some(&k)) = (i.parse::<usize>(), shape.get(1)) {
                    protos.push((i, k));
                }
            }
        }
        let base = base.ok_or("no conv1.weight: not a ResNet")?;
        if layers.contains(&0) {
            return Err(format!("stage sizes {layers:?}: a stage has no block"));
        }
        protos.sort();
        Ok(SwavConfig {
            backbone: ResNetConfig {
                block: if bottleneck {
                    BlockKind::Bottleneck
                } else {
                    BlockKind::Basic
                },
                layers,
                base_width: base,
            },
            head: out.map(|out| HeadConfig { hidden, bn, out }),
            prototypes: protos.into_iter().map(|(_, k)| k).collect(),
        })
    }
}

impl<B: Backend> Swav<B> {
    /// A copy on `device` that shares nothing with this model: Burn's clones share BatchNorm's
    /// running statistics (one `Arc`, which `fork` moves), so the copy is a fresh module of
    /// `config` loaded with this model's record; and loading keeps the record's autodiff
    /// nodes, which would tie every replica's graph to one lock (one rank's backward pass
    /// would wait for another's forward), so `fork` gives the parameters nodes of their own.
    pub fn replicate(&self, config: &SwavConfig, device: &B::Device) -> Swav<B> {
        config
            .init::<B>(device)
            .load_record(self.clone().into_record())
            .fork(device)
    }

    /// Features, L2-normalised embedding and prototype scores of images `[N, 3, H, W]`.
    pub fn forward(&self, images: Tensor<B, 4>) -> SwavOutput<B> {
        let features = self.backbone.forward(images);
        self.head(features)
    }

    /// The head on pooled features (`forward_head` in main_swav.py).
    pub fn head(&self, features: Tensor<B, 2>) -> SwavOutput<B> {
        let z = match &self.projection_head {
            Some(h) => {
                let mut z = features.clone();
                if let Some(hidden) = &h.hidden {
                    z = hidden.forward(z);
                    if let Some(bn) = &h.bn {
                        let [n, c] = z.dims();
                        z = bn.forward(z.reshape([n, c, 1])).reshape([n, c]);
                    }
                    z = relu(z);
                }
                h.out.forward(z)
            }
            None => features.clone(),
        };
        let embedding = l2_normalize(z);
        let scores = match &self.prototypes {
            Some(p) => p
                .heads
                .iter()
                .map(|l| l.forward(embedding.clone()))
                .collect(),
            None => Vec::new(),
        };
        SwavOutput {
            features,
            embedding,
            scores,
        }
    }
}

/// Rows divided by their L2 norm (`F.normalize(dim=1, p=2)`, eps 1e-12).
pub fn l2_normalize<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}
