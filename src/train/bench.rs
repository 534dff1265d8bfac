//! Fixed-shape measurements for `scripts/gpu-check.sh`: whole training steps (forward,
//! Sinkhorn, backward, LARS) on random crops of a config's shapes and settings, timed; and one step on a
//! reference file's weights and crops (made by PyTorch), compared with its loss and codes.

use super::config::TrainPlan;
use super::rank::{Rank, StepSettings};
use super::sinkhorn;
use super::step::{self, SwavLoss};
use crate::checkpoint::Checkpoint;
use crate::collective::{Communicator, DifferentiableCollective};
use crate::model::load;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Timed steps.
#[derive(Debug, Clone, Serialize)]
pub struct StepBench {
    pub steps: usize,
    pub batch_size: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    /// The warm-up step (kernel compilation and, on CUDA, autotuning happen here).
    pub warmup_seconds: f64,
    /// Values read back from the device per step (each makes the host wait for the device).
    pub host_reads_per_step: f64,
}

/// Run `steps` training steps (after one warm-up step) of `cfg`'s model on random crops of
/// its shapes, one device, `batch_size` images per step. `on_step(i, seconds)` hears of each
/// step as it ends (step 0 is the warm-up), so a slow first step shows while it runs long.
pub fn steps<A: DifferentiableCollective>(
    cfg: &TrainPlan,
    device: &A::Device,
    steps: usize,
    mut on_step: impl FnMut(usize, f64),
) -> StepBench {
    let model_cfg = &cfg.network;
    A::seed(device, cfg.seed);
    let mut model = model_cfg.init_eager::<A>(device);
    let mut rank = Rank::<A> {
        device: device.clone(),
        optim: cfg.lars.init::<A, crate::model::swav::Swav<A>>(),
        queue: None,
        comm: Communicator::solo(),
    };
    let d = &cfg.dataloader.train.dataset;
    let bs = cfg.dataloader.train.sampler.batch_size;
    let crops: Vec<Tensor<A, 4>> = d
        .size_crops
        .iter()
        .zip(&d.num_crops)
        .flat_map(|(&s, &n)| {
            (0..n)
                .map(move |_| Tensor::random([bs, 3, s, s], Distribution::Normal(0.0, 1.0), device))
        })
        .collect();
    let settings = StepSettings {
        loss: cfg.loss.clone(),
        groups: cfg.groups.clone(),
        prototype_ids: Vec::new(),
        sync_bn: false,
    };
    let mut start = Instant::now();
    let mut warmup_seconds = 0.0;
    let reads = step::host_reads();
    for i in 0..=steps {
        let t = Instant::now();
        if i == 1 {
            warmup_seconds = start.elapsed().as_secs_f64();
            start = t;
        }
        // The trainer's step (one rank): its loss is read (waiting for the device) as the
        // trainer reads it.
        (model, _) = rank
            .step(model, &crops, 0.1, false, &settings)
            .expect("a one-rank step has no collective to fail");
        // The parameter update is queued after the loss was read: wait for it too.
        let _ = A::sync(device);
        on_step(i, t.elapsed().as_secs_f64());
    }
    let host_reads_per_step = (step::host_reads() - reads) as f64 / (steps + 1) as f64;
    if steps == 0 {
        warmup_seconds = start.elapsed().as_secs_f64();
    }
    let seconds = start.elapsed().as_secs_f64();
    StepBench {
        steps,
        batch_size: bs,
        seconds,
        images_per_second: (steps * bs) as f64 / seconds,
        warmup_seconds,
        host_reads_per_step,
    }
}

/// One step against a reference.
#[derive(Debug, Clone, Serialize)]
pub struct StepCheck {
    pub loss: f64,
    pub reference_loss: f64,
    /// |loss − reference| / |reference|.
    pub loss_relative: f64,
    /// Largest |code − reference| per assigned crop.
    pub codes_max_abs: Vec<f64>,
}

impl StepCheck {
    /// `Ok` when the loss and the codes are within tolerance, else why not (one line).
    pub fn within(&self, loss_tolerance: f64, codes_tolerance: f64) -> Result<(), String> {
        let codes = self.codes_max_abs.iter().copied().fold(0.0, f64::max);
        if self.loss_relative <= loss_tolerance && codes <= codes_tolerance {
            return Ok(());
        }
        Err(format!(
            "loss differs by {:.2e} (tolerance {loss_tolerance:.0e}), codes by {codes:.2e} (tolerance {codes_tolerance:.0e})",
            self.loss_relative
        ))
    }
}

/// The step of `weights` on `reference`'s crops (`crops.0`, `crops.1`, ... with the first
/// two at the larger resolution, as `tests/fixtures/swav_step_tiny.safetensors`), compared
/// with its `loss`, `q0` and `q1`.
pub fn check<A: DifferentiableCollective>(
    weights: &Path,
    reference: &Path,
    device: &A::Device,
) -> Result<StepCheck, String> {
    let r = Checkpoint::open(reference).map_err(|e| e.to_string())?;
    let (model, config, _) =
        load::from_file::<A>(weights, device, false).map_err(|e| e.to_string())?;
    if config.prototypes.is_empty() || config.head.is_none() {
        return Err(format!(
            "{}: no projection head and prototypes: a SwAV step needs the whole model",
            weights.display()
        ));
    }
    let model = step::normalize_prototypes(model);
    let get = |name: &str| {
        r.get(name)
            .ok_or_else(|| format!("{}: no tensor {name}", reference.display()))
    };
    let mut crops = Vec::new();
    while let Some(t) = r.get(&format!("crops.{}", crops.len())) {
        let s = &t.shape;
        let batch = crops
            .first()
            .map_or(s.first().copied(), |c: &Tensor<A, 4>| Some(c.dims()[0]));
        if s.len() != 4 || s[1] != 3 || Some(s[0]) != batch || s[0] == 0 {
            return Err(format!(
                "{}: {} {:?} is not an NCHW batch of RGB crops like crops.0",
                reference.display(),
                t.name,
                s
            ));
        }
        let v = t.to_f32().map_err(|e| e.to_string())?;
        crops.push(Tensor::<A, 4>::from_data(
            TensorData::new(v, [s[0], s[1], s[2], s[3]]),
            device,
        ));
    }
    if crops.len() < 2 {
        return Err(format!("{}: fewer than two crops", reference.display()));
    }
    let sizes: Vec<usize> = crops.iter().map(|c| c.dims()[3]).collect();
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=sizes.len() {
        if i == sizes.len() || sizes[i] != sizes[start] {
            groups.push(start..i);
            start = i;
        }
    }
    let out = step::swav_step(
        &model,
        &crops,
        &groups,
        &SwavLoss::default(),
        None,
        &Communicator::solo(),
    )
    .map_err(|e| e.to_string())?;
    let loss = step::scalar(out.loss);
    let reference_loss = get("loss")?
        .to_f32()
        .map_err(|e| e.to_string())?
        .first()
        .copied()
        .ok_or_else(|| format!("{}: `loss` is empty", reference.display()))?
        as f64;
    let mut codes_max_abs = Vec::new();
    for (i, q) in out.codes.into_iter().enumerate() {
        let q = q
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        let want = get(&format!("q{i}"))?.to_f32().map_err(|e| e.to_string())?;
        codes_max_abs.push(
            q.iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() as f64)
                .fold(0.0, f64::max),
        );
    }
    Ok(StepCheck {
        loss,
        reference_loss,
        loss_relative: (loss - reference_loss).abs() / reference_loss.abs(),
        codes_max_abs,
    })
}

/// Device against host Sinkhorn-Knopp at one size.
#[derive(Debug, Clone, Serialize)]
pub struct SinkhornBench {
    pub rows: usize,
    pub prototypes: usize,
    /// Seconds per call on the device (codes read back), after one warm-up call.
    pub device_seconds: f64,
    /// Seconds per call of the f64 host code.
    pub host_seconds: f64,
    /// host / device.
    pub speedup: f64,
    /// Largest |device code − host code| (codes are probabilities times the row count's share).
    pub max_abs_difference: f64,
}

/// Time Sinkhorn-Knopp (ε 0.05, 3 iterations) on `device` and on the host for scores of
/// `rows × prototypes` drawn like SwAV's (cosine similarities in [−1, 1]), `repeats` calls each.
pub fn sinkhorn<B: Backend>(
    rows: usize,
    prototypes: usize,
    repeats: usize,
    device: &B::Device,
) -> SinkhornBench {
    B::seed(device, 0);
    let scores =
        Tensor::<B, 2>::random([rows, prototypes], Distribution::Uniform(-1.0, 1.0), device);
    let host_scores: Vec<f32> = scores
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec()
        .expect("f32 scores");
    let comm = Communicator::<B>::solo();
    let run = || {
        sinkhorn::codes(scores.clone(), &comm, 0.05, 3)
            .expect("one rank has no collective to fail")
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 codes")
    };
    let device_codes = run();
    let repeats = repeats.max(1);
    let t = Instant::now();
    for _ in 0..repeats {
        run();
    }
    let device_seconds = t.elapsed().as_secs_f64() / repeats as f64;
    let t = Instant::now();
    let mut host_codes = Vec::new();
    for _ in 0..repeats {
        host_codes = sinkhorn::host(&host_scores, rows, prototypes, 0.05, 3);
    }
    let host_seconds = t.elapsed().as_secs_f64() / repeats as f64;
    SinkhornBench {
        rows,
        prototypes,
        device_seconds,
        host_seconds,
        speedup: host_seconds / device_seconds,
        max_abs_difference: device_codes
            .iter()
            .zip(&host_codes)
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(0.0, f64::max),
    }
}
