//! Data-parallel ranks on threads, talking through the collective engine: several CPU ranks
//! against one rank holding every shard; Sinkhorn-Knopp on the device against the f64 host
//! oracle; a rank that fails ends the run.

use crate::pretrain::{synthetic_set, tiny};
use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use std::path::Path;
use std::time::{Duration, Instant};
use swav::collective::{Communicator, LocalGroup};
use swav::eval::classifier::{self, LinearEvalConfig};
use swav::eval::{linear_eval, Frozen};
use swav::model::resnet::ResNetConfig;
use swav::model::swav::{Swav, SwavConfig};
use swav::model::CpuBackend;
use swav::train::parallel::Fault;
use swav::train::rank::{self, Rank, StepSettings};
use swav::train::sinkhorn;
use swav::train::step::{self, DeviceQueue, Queue, SwavLoss};
use swav::train::trainer::{self, TrainOptions};

type F = NdArray<f64>;
type D = Autodiff<F>;

/// Images per rank, steps, queue rows per rank.
const PER: usize = 4;
const STEPS: usize = 3;
const QUEUE: usize = 4;

fn values<B: Backend, const N: usize>(t: Tensor<B, N>) -> Vec<f64> {
    t.into_data().convert::<f64>().to_vec::<f64>().unwrap()
}

/// Every gradient of `grads` for `model`'s parameters, in visiting order (`None` where absent).
fn gradient_list(model: &Swav<D>, grads: &GradientsParams) -> Vec<Option<Vec<f64>>> {
    struct V<'a>(&'a GradientsParams, Vec<Option<Vec<f64>>>);
    impl ModuleVisitor<D> for V<'_> {
        fn visit_float<const N: usize>(&mut self, p: &Param<Tensor<D, N>>) {
            self.1.push(self.0.get::<F, N>(p.id).map(values));
        }
    }
    let mut v = V(grads, Vec::new());
    model.visit(&mut v);
    v.1
}

/// Every trained parameter's values, in visiting order (BatchNorm running statistics aside:
/// they are per rank).
fn weights(model: &Swav<D>) -> Vec<Vec<f64>> {
    struct V(Vec<String>, Vec<Vec<f64>>);
    impl ModuleVisitor<D> for V {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const N: usize>(&mut self, p: &Param<Tensor<D, N>>) {
            if !self.0.last().is_some_and(|n| n.starts_with("running_")) {
                self.1.push(values(p.val()));
            }
        }
    }
    let mut v = V(Vec::new(), Vec::new());
    model.visit(&mut v);
    assert!(v.1.len() > 60, "{} parameters", v.1.len());
    v.1
}

/// Largest difference relative to the reference's largest magnitude (at least `floor`, for
/// values that are zero in exact arithmetic: a Linear's bias before BatchNorm).
fn rel(a: &[f64], b: &[f64], floor: f64) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(floor);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn running_mean(model: &Swav<D>) -> Vec<f64> {
    values(model.backbone.bn1.running_mean.value_sync())
}

struct RankRun {
    losses: Vec<f64>,
    first_gradients: Vec<Option<Vec<f64>>>,
    weights: Vec<Vec<f64>>,
    /// The stem BatchNorm's running mean after the first step.
    running_mean: Vec<f64>,
}

/// What the tests feed every run: the initial model, each step's shards, each rank's queue.
struct Setup {
    cfg: SwavConfig,
    model: Swav<D>,
    shards: Vec<Vec<Vec<Tensor<D, 4>>>>,
    queues: Vec<Queue>,
    settings: StepSettings,
}

fn setup(world: usize, sync_bn: bool) -> Setup {
    let device = Default::default();
    let dir = Path::new("/unused");
    let cfg = tiny(dir, dir).plan().unwrap().network;
    <D as Backend>::seed(&device, 7);
    let model = cfg.init_eager::<D>(&device);
    let shards = (0..STEPS)
        .map(|_| {
            (0..world)
                .map(|_| {
                    [32, 32, 16, 16]
                        .iter()
                        .map(|&s| {
                            Tensor::random([PER, 3, s, s], Distribution::Normal(0.0, 1.0), &device)
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let dim = 8;
    // A full queue: used from the first step.
    let queues = (0..world)
        .map(|_| {
            let rows = (0..2)
                .map(|_| {
                    let t = Tensor::<F, 2>::random(
                        [QUEUE, dim],
                        Distribution::Normal(0.0, 1.0),
                        &device,
                    );
                    let t = swav::model::swav::l2_normalize(t);
                    t.into_data().convert::<f32>().to_vec().unwrap()
                })
                .collect();
            Queue {
                len: QUEUE,
                dim,
                rows,
                in_use: false,
            }
        })
        .collect();
    let settings = StepSettings {
        loss: SwavLoss::default(),
        groups: vec![0..2, 2..4],
        prototype_ids: rank::prototype_ids(&model),
        sync_bn,
    };
    Setup {
        cfg,
        model,
        shards,
        queues,
        settings,
    }
}

const RATE: f64 = 0.5;

/// `world` ranks on threads through burn-collective; prototypes frozen in the first step.
fn ranks(s: &Setup, world: usize) -> Vec<RankRun> {
    let device: <F as burn::tensor::backend::BackendTypes>::Device = Default::default();
    let comms = LocalGroup::<F>::register(&vec![device; world]).unwrap();
    let lars = swav::train::lars::LarsConfig::default();
    let handles: Vec<_> = comms
        .into_iter()
        .enumerate()
        .map(|(w, comm)| {
            let mut model = s.model.replicate(&s.cfg, &device);
            let shards: Vec<Vec<Tensor<D, 4>>> = s.shards.iter().map(|st| st[w].clone()).collect();
            let mut r = Rank::<D> {
                device,
                optim: lars.init::<D, Swav<D>>(),
                queue: Some(DeviceQueue::from_host(&s.queues[w], &device)),
                comm,
            };
            let (settings, cfg) = (s.settings.clone(), s.cfg.clone());
            std::thread::spawn(move || {
                let mut out = RankRun {
                    losses: Vec::new(),
                    first_gradients: Vec::new(),
                    weights: Vec::new(),
                    running_mean: Vec::new(),
                };
                for (i, crops) in shards.iter().enumerate() {
                    if i == 0 {
                        // The first step's gradients, on a copy of the model (its BatchNorm
                        // statistics apart) and of the queue; the step below starts afresh.
                        let m = step::normalize_prototypes(model.replicate(&cfg, &device));
                        let saved = r.queue.clone();
                        let (g, _) = r.gradients(&m, crops, true, &settings).unwrap();
                        out.first_gradients = gradient_list(&m, &g);
                        r.queue = saved;
                    }
                    let loss;
                    (model, loss) = r.step(model, crops, RATE, i == 0, &settings).unwrap();
                    out.losses.push(loss);
                    if i == 0 {
                        out.running_mean = running_mean(&model);
                    }
                }
                out.weights = weights(&model);
                out
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// The forward pass of the concatenated shards as each shard's (rows of every crop).
fn split_forward(f: &step::Forward<D>, world: usize) -> Vec<step::Forward<D>> {
    let rows = |t: &Tensor<D, 2>, w: usize| {
        Tensor::cat(
            (0..f.crops)
                .map(|v| t.clone().narrow(0, v * f.batch + w * PER, PER))
                .collect(),
            0,
        )
    };
    (0..world)
        .map(|w| step::Forward {
            scores: rows(&f.scores, w),
            embedding: rows(&f.embedding, w),
            batch: PER,
            crops: f.crops,
        })
        .collect()
}

/// Every crop of every shard of a step, concatenated shard after shard.
fn concatenated(shards: &[Vec<Tensor<D, 4>>]) -> Vec<Tensor<D, 4>> {
    (0..shards[0].len())
        .map(|v| Tensor::cat(shards.iter().map(|c| c[v].clone()).collect(), 0))
        .collect()
}

/// One rank holding every shard: the backbone per shard (BatchNorm statistics per shard) or,
/// with `s.settings.sync_bn`, once over the concatenated shards (statistics of the global
/// batch); the codes by the f64 host oracle over every shard's rows; the gradient of the mean
/// loss.
fn reference(s: &Setup, world: usize) -> RankRun {
    let device = Default::default();
    let mut model = s.model.replicate(&s.cfg, &device);
    let mut optim = swav::train::lars::LarsConfig::default().init::<D, Swav<D>>();
    let mut queues = s.queues.clone();
    let loss = &s.settings.loss;
    let mut out = RankRun {
        losses: Vec::new(),
        first_gradients: Vec::new(),
        weights: Vec::new(),
        running_mean: Vec::new(),
    };
    for (i, shards) in s.shards.iter().enumerate() {
        model = step::normalize_prototypes(model);
        let fwds: Vec<step::Forward<D>> = if s.settings.sync_bn {
            let all = step::forward(&model, &concatenated(shards), &s.settings.groups);
            split_forward(&all, world)
        } else {
            shards
                .iter()
                .map(|c| step::forward(&model, c, &s.settings.groups))
                .collect()
        };
        let k = fwds[0].scores.dims()[1];
        let w_proto = model.prototypes.as_ref().unwrap().heads[0]
            .weight
            .val()
            .inner();
        let mut codes: Vec<Vec<Tensor<F, 2>>> = vec![Vec::new(); world];
        for (c, &a) in loss.crops_for_assign.iter().enumerate() {
            let rows: Vec<Vec<f32>> = fwds
                .iter()
                .zip(&queues)
                .map(|(f, q)| {
                    let stored = Tensor::<F, 2>::from_data(
                        TensorData::new(q.rows[c].clone(), [q.len, q.dim]),
                        &device,
                    );
                    let mut r: Vec<f32> = stored
                        .matmul(w_proto.clone())
                        .into_data()
                        .convert::<f32>()
                        .to_vec()
                        .unwrap();
                    r.extend(
                        f.scores
                            .clone()
                            .inner()
                            .narrow(0, a * PER, PER)
                            .into_data()
                            .convert::<f32>()
                            .to_vec::<f32>()
                            .unwrap(),
                    );
                    r
                })
                .collect();
            let joint = sinkhorn::host_joint(&rows, k, &vec![PER; world], 0.05, 3);
            for (w, q) in joint.into_iter().enumerate() {
                codes[w].push(Tensor::from_data(TensorData::new(q, [PER, k]), &device));
            }
            for (f, q) in fwds.iter().zip(queues.iter_mut()) {
                let e: Vec<f32> = f
                    .embedding
                    .clone()
                    .inner()
                    .narrow(0, a * PER, PER)
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .unwrap();
                q.push(c, &e);
            }
        }
        let total = fwds
            .iter()
            .zip(&codes)
            .map(|(f, c)| step::swapped_loss(f, c, loss))
            .reduce(|a, b| a + b)
            .unwrap()
            / world as f64;
        out.losses.push(values(total.clone())[0]);
        let mut grads = GradientsParams::from_grads(total.backward(), &model);
        if i == 0 {
            for id in &s.settings.prototype_ids {
                grads.remove::<F, 2>(*id);
            }
            out.first_gradients = gradient_list(&model, &grads);
        }
        model = optim.step(RATE, model, grads);
    }
    out.weights = weights(&model);
    out
}

/// 2 and 3 CPU ranks give the step of one rank holding all their shards: the loss of every
/// step, every gradient of the first (prototypes frozen, the queue on from the start) and the
/// weights after three LARS steps, within 1e-6 in f64 (scores and codes pass through f32 in the
/// oracle); and each rank's BatchNorm running statistics are its own shard's.
#[test]
fn cpu_ranks_match_one_rank_holding_every_shard() {
    for world in [2, 3] {
        let s = setup(world, false);
        compare(&s, world);
    }
}

/// With synchronised BatchNorm, 2 and 3 CPU ranks give the step of one rank running the
/// concatenated shards (BatchNorm over the global batch), within the same bounds; every rank's
/// running statistics are the global batch's.
#[test]
fn sync_bn_ranks_match_one_rank_on_the_global_batch() {
    for world in [2, 3] {
        let s = setup(world, true);
        compare(&s, world);
    }
}

fn compare(s: &Setup, world: usize) {
    let runs = ranks(s, world);
    let want = reference(s, world);
    for (w, run) in runs.iter().enumerate() {
        for (i, (a, b)) in run.losses.iter().zip(&want.losses).enumerate() {
            assert!(
                (a - b).abs() < 1e-6 * b.abs(),
                "{world} ranks, rank {w}, step {i}: loss {a} vs {b}"
            );
        }
        let mut compared = 0;
        for (p, (a, b)) in run
            .first_gradients
            .iter()
            .zip(&want.first_gradients)
            .enumerate()
        {
            match (a, b) {
                (Some(a), Some(b)) => {
                    let r = rel(a, b, 1e-6);
                    assert!(
                        r < 1e-6,
                        "{world} ranks, rank {w}: gradient {p} differs by {r:e}"
                    );
                    compared += 1;
                }
                (None, None) => {}
                _ => panic!("{world} ranks, rank {w}: gradient {p} on one side only"),
            }
        }
        assert!(compared > 60, "{compared} gradients compared");
        for (p, (a, b)) in run.weights.iter().zip(&want.weights).enumerate() {
            let r = rel(a, b, 1e-3);
            assert!(
                r < 1e-6,
                "{world} ranks, rank {w}: weight {p} differs by {r:e} after {STEPS} steps"
            );
        }
        // Rank w's running statistics: a fresh copy of the model run on shard w alone, or on
        // every shard with synchronised BatchNorm.
        let fresh = s.model.replicate(&s.cfg, &Default::default());
        let fresh = step::normalize_prototypes(fresh);
        let crops = if s.settings.sync_bn {
            concatenated(&s.shards[0])
        } else {
            s.shards[0][w].clone()
        };
        let _ = step::forward(&fresh, &crops, &s.settings.groups);
        let r = rel(&run.running_mean, &running_mean(&fresh), 1e-6);
        assert!(
            r < 1e-9,
            "{world} ranks, rank {w}: running mean differs by {r:e}"
        );
    }
}

/// Sinkhorn-Knopp on the device (f32 on the CPU backend), on one rank and split over two,
/// against the f64 host oracle over all rows.
#[test]
fn device_sinkhorn_matches_the_f64_oracle() {
    type B = CpuBackend;
    let device = Default::default();
    for (rows, k, bound) in [(64, 30, 1e-5), (512, 3000, 1e-5)] {
        <B as Backend>::seed(&device, rows as u64);
        let scores = Tensor::<B, 2>::random([rows, k], Distribution::Uniform(-1.0, 1.0), &device);
        let host: Vec<f32> = scores.clone().into_data().to_vec().unwrap();
        let want = sinkhorn::host(&host, rows, k, 0.05, 3);
        let one = sinkhorn::codes(scores.clone(), &Communicator::solo(), 0.05, 3).unwrap();
        let one: Vec<f32> = one.into_data().to_vec().unwrap();
        let worst = |got: &[f32], want: &[f32]| {
            got.iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        };
        let d = worst(&one, &want);
        assert!(d < bound, "{rows}x{k} on one rank: codes differ by {d:e}");
        // Two ranks, half the rows each: the same codes.
        let comms = LocalGroup::<B>::register(&[device, device]).unwrap();
        let halves: Vec<Vec<f32>> = comms
            .into_iter()
            .enumerate()
            .map(|(w, comm)| {
                let part = scores.clone().narrow(0, w * rows / 2, rows / 2);
                std::thread::spawn(move || {
                    let q = sinkhorn::codes(part, &comm, 0.05, 3).unwrap();
                    q.into_data().to_vec::<f32>().unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        let d = worst(&halves.concat(), &want);
        assert!(
            d < bound,
            "{rows}x{k} over two ranks: codes differ by {d:e}"
        );
    }
}

/// A rank that panics in the middle of an epoch ends the run at once, with one line naming the
/// rank and the cause; the other ranks do not wait for it.
#[test]
fn a_failing_rank_ends_the_run_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_set(&dir.path().join("data"));
    let cfg = tiny(&dir.path().join("out"), &data);
    let opts = TrainOptions {
        workers: Some(1),
        fault: Some(Fault {
            rank: 1,
            iteration: 2,
        }),
        ..Default::default()
    };
    let devices = [Default::default(), Default::default(), Default::default()];
    let cfg = cfg
        .with_overrides(&["dataloader.train.sampler.batch_size=4".into()])
        .unwrap();
    let started = Instant::now();
    let e =
        trainer::train::<Autodiff<CpuBackend>>(&cfg.plan().unwrap(), &devices, &opts, &mut |_| {})
            .unwrap_err();
    let e = e.to_string();
    assert!(
        e.contains("rank 1") && e.contains("injected fault at iteration 2"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    // The process's collective engine is free again: two ranks train after the failure.
    let ok = tiny(&dir.path().join("again"), &data)
        .with_overrides(&["epochs=1".into()])
        .unwrap();
    let opts = TrainOptions {
        workers: Some(1),
        ..Default::default()
    };
    let two = [Default::default(), Default::default()];
    let s = trainer::train::<Autodiff<CpuBackend>>(&ok.plan().unwrap(), &two, &opts, &mut |_| {})
        .unwrap();
    assert_eq!(s.history.len(), 1);
}

/// A random ResNet-18 of width 4 (no head) on the f64 backend, drawn once: other tests draw
/// from the same global generator meanwhile, so each run gets a copy, not a new draw.
fn random_resnet18() -> (Swav<F>, SwavConfig) {
    let mut backbone = ResNetConfig::depth(18, 1).unwrap();
    backbone.base_width = 4;
    let config = SwavConfig {
        backbone,
        head: None,
        prototypes: Vec::new(),
    };
    let model = config.init_eager::<F>(&Default::default());
    (model, config)
}

/// swav-lincls on two and three CPU ranks against one rank with the same global batch: the
/// features of an image folder, the k-NN accuracy, and the classifier trained data-parallel
/// (3 ranks × 13 images over 40: the last batch of one image leaves two ranks an empty shard;
/// 2 × 19) equal within 1e-9 in f64.
#[test]
fn lincls_on_cpu_ranks_matches_one_rank() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::image_set(&dir.path().join("syn"), 32, 4, 2, 3);
    let (train, val) = linear_eval::splits(&root).unwrap();
    let base = LinearEvalConfig {
        epochs: 2,
        lr: 0.5,
        train_size: 24,
        val_resize: 28,
        val_size: 24,
        workers: 1,
        ..Default::default()
    };
    let (model, config) = random_resnet18();
    let run = |world: usize, per_rank: usize| {
        let cfg = LinearEvalConfig {
            batch_size: per_rank,
            ..base.clone()
        };
        let f = Frozen::new(
            model.clone(),
            config.clone(),
            vec![Default::default(); world],
        );
        let lc = linear_eval::loader_config(&cfg);
        let t = cfg.val_transform();
        let ft = f
            .dataset_features(train.clone(), t, cfg.mean, cfg.std, &lc)
            .unwrap();
        let fv = f
            .dataset_features(val.clone(), t, cfg.mean, cfg.std, &lc)
            .unwrap();
        let knn = swav::eval::knn::<F>(&ft, &fv, 10, 5, 0.07, &f.devices).unwrap();
        let mut losses = Vec::new();
        let head = classifier::train::<D>(&f, ft.dim, train.clone(), val.clone(), &cfg, |m, _| {
            losses.push((m.loss, m.top1, m.top5))
        })
        .unwrap();
        let eval = classifier::evaluate(&f, &head, val.clone(), &cfg).unwrap();
        let weights = values(head.weight.val());
        (ft.features, ft.labels, knn, losses, weights, eval)
    };
    for (world, per_rank) in [(3, 13), (2, 19)] {
        let one = run(1, world * per_rank);
        assert_eq!(one.0.len(), 40 * 32, "40 images, 32 features (width 4)");
        let many = run(world, per_rank);
        let d = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(d(&one.0, &many.0) < 1e-6, "{world} ranks: features differ");
        assert_eq!(one.1, many.1, "{world} ranks: labels in dataset order");
        assert_eq!(one.2, many.2, "{world} ranks: k-NN accuracy");
        for ((l1, a1, b1), (l2, a2, b2)) in one.3.iter().zip(&many.3) {
            assert!(
                (l1 - l2).abs() < 1e-9 * l1.abs().max(1.0),
                "{world} ranks: loss {l1} vs {l2}"
            );
            assert_eq!((a1, b1), (a2, b2), "{world} ranks: accuracy");
        }
        assert!(
            rel(&one.4, &many.4, 1e-3) < 1e-9,
            "{world} ranks: classifier weights"
        );
        assert_eq!(one.5, many.5, "{world} ranks: evaluation");
    }
}

/// NCCL is for CUDA ranks: asked for CPU ranks, registering fails with a line saying so; the
/// engine names parse.
#[test]
fn nccl_for_cpu_ranks_is_an_error() {
    use swav::collective::Engine;
    let device = Default::default();
    for world in [1, 2] {
        let e = LocalGroup::<F>::register_with(&vec![device; world], Engine::Nccl)
            .expect_err("NCCL on the CPU backend");
        let e = e.to_string();
        assert!(e.contains("NCCL needs CUDA devices"), "{e}");
    }
    assert_eq!("nccl".parse::<Engine>(), Ok(Engine::Nccl));
    assert_eq!(
        "burn-collective".parse::<Engine>(),
        Ok(Engine::BurnCollective)
    );
    assert!("mpi".parse::<Engine>().unwrap_err().contains("mpi"));
    // Auto on the CPU backend is burn-collective; one rank needs no engine.
    let comms = LocalGroup::<F>::register(&[device, device]).unwrap();
    assert_eq!(comms[1].engine(), Some(Engine::BurnCollective));
    drop(comms);
    let solo = LocalGroup::<F>::register(&[device]).unwrap();
    assert_eq!(solo[0].engine(), None);
}
