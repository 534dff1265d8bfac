//! `swav-train`'s loop: exact resume, simulated data-parallel workers, LARS, the queue.

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::optim::{GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use std::path::Path;
use swav::data::synthetic::{self, SyntheticConfig};
use swav::model::{record, CpuBackend};
use swav::train::config::TrainConfig;
use swav::train::lars::LarsConfig;
use swav::train::state;
use swav::train::step;
use swav::train::trainer::{self, Event, TrainOptions};

type A = Autodiff<CpuBackend>;

/// Every parameter's values, in visiting order, with its path.
fn params<B: Backend, M: Module<B>>(m: &M) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    swav::model::for_each_param(m, |name, _, values| out.push((name, values))).unwrap();
    out
}

/// The model every test here trains: ResNet-18 of width 4 (32 features), a 16 → 8 head and
/// 6 prototypes (overrides of configs/swav/swav_tiny_cpu.yaml).
pub(crate) const TINY_MODEL: [&str; 6] = [
    "model.backbone.width=4",
    "model.neck.in_channels=32",
    "model.neck.hid_channels=16",
    "model.neck.out_channels=8",
    "model.head.feat_dim=8",
    "model.head.num_prototypes=6",
];

pub(crate) const TINY_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/configs/swav/swav_tiny_cpu.yaml"
);

/// `swav-train -c swav_tiny_cpu.yaml --workers N -q` with the tiny model and `overrides`.
fn tiny_cli(workers: usize, overrides: &[String]) -> Vec<String> {
    let mut args: Vec<String> = ["-c", TINY_CONFIG, "--workers", &workers.to_string(), "-q"]
        .map(String::from)
        .to_vec();
    for o in TINY_MODEL
        .iter()
        .map(|s| s.to_string())
        .chain(overrides.iter().cloned())
    {
        args.push("-o".into());
        args.push(o);
    }
    args
}

/// A tiny run on a tiny synthetic set: the tiny model, 32-pixel images, a queue that starts in
/// the second epoch, prototypes frozen for the first 3 iterations.
pub(crate) fn tiny(output: &Path, data: &Path) -> TrainConfig {
    let text = std::fs::read_to_string(TINY_CONFIG).unwrap();
    let mut overrides: Vec<String> = TINY_MODEL.iter().map(|s| s.to_string()).collect();
    overrides.extend([
        format!("output_dir={}", output.display()),
        format!("dataloader.train.dataset.dataroot={}", data.display()),
        "epochs=2".into(),
        "model.head.queue_length=16".into(),
        "model.head.epoch_queue_starts=1".into(),
        "dataloader.train.sampler.batch_size=8".into(),
        "dataloader.train.dataset.size_crops=[32, 16]".into(),
        "dataloader.train.dataset.num_crops=[2, 2]".into(),
        "model.head.num_crops=[2, 2]".into(),
        "optimizer_config.freeze_prototypes_iters=3".into(),
        "lr_scheduler.warmup_epochs=1".into(),
        "checkpoint.interval=1".into(),
    ]);
    TrainConfig::from_yaml(&text)
        .unwrap()
        .with_overrides(&overrides)
        .unwrap()
}

pub(crate) fn synthetic_set(root: &Path) -> std::path::PathBuf {
    synthetic::write(
        root,
        &SyntheticConfig {
            size: 32,
            train_per_class: 3,
            val_per_class: 0,
            ..Default::default()
        },
    )
    .unwrap();
    root.join("train")
}

fn run(cfg: &TrainConfig, opts: &TrainOptions) -> Vec<Event> {
    let mut events = Vec::new();
    trainer::train::<A>(
        &cfg.plan().unwrap(),
        &[Default::default()],
        opts,
        &mut |e| events.push(e.clone()),
    )
    .unwrap();
    events
}

#[test]
fn resume_continues_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_set(&dir.path().join("data"));
    let straight = tiny(&dir.path().join("straight"), &data);
    let split = tiny(&dir.path().join("split"), &data);
    let opts = TrainOptions {
        workers: Some(2),
        ..Default::default()
    };
    let events = run(&straight, &opts);
    // 30 images, batch 8: 3 iterations an epoch; the queue (16 rows) fills in epoch 1.
    let losses: Vec<f64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Epoch(r) => Some(r.loss),
            _ => None,
        })
        .collect();
    assert_eq!(losses.len(), 2);
    assert!(losses.iter().all(|l| l.is_finite()));
    run(
        &split,
        &TrainOptions {
            max_epochs: Some(1),
            ..opts.clone()
        },
    );
    // Without --resume an output folder with checkpoints is refused.
    let e = trainer::train::<A>(
        &split.plan().unwrap(),
        &[Default::default()],
        &opts,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("--resume"), "{e}");
    run(
        &split,
        &TrainOptions {
            resume: true,
            ..opts.clone()
        },
    );
    let load = |out: &Path| {
        let dir = state::latest(out).unwrap();
        assert!(dir.ends_with("epoch_0002"));
        let (m, _) =
            record::load::<CpuBackend>(&dir.join("model.mpk"), &Default::default()).unwrap();
        (params(&m), state::read_state(&dir).unwrap())
    };
    let (a, sa) = load(&dir.path().join("straight"));
    let (b, sb) = load(&dir.path().join("split"));
    assert_eq!(sa.iteration, 6);
    assert_eq!(sa.queue, Some([2, 16, 8]));
    assert_eq!(
        sa.history,
        sb.history
            .iter()
            .map(|r| state::EpochRecord {
                images_per_second: sa.history[r.epoch].images_per_second,
                ..r.clone()
            })
            .collect::<Vec<_>>()
    );
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(
            va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{na} differs after resume"
        );
    }
    // The queue and the optimizer state are in the checkpoint; only `keep` (2) are kept.
    let ckpts = state::list(&state::checkpoints_dir(&dir.path().join("split")));
    assert_eq!(ckpts.len(), 2);
    assert!(ckpts[1].join("queue.f32").is_file() && ckpts[1].join("optimizer.mpk").is_file());
    // metrics.jsonl has both runs' lines; the plot reads it.
    let png = swav::plot::write_training_plot(&dir.path().join("split")).unwrap();
    assert!(std::fs::metadata(png).unwrap().len() > 1000);
}

/// LARS against the formula written out by hand (apex LARC, clip=False, over SGD momentum).
#[test]
fn lars_matches_larc_by_hand() {
    type D = Autodiff<NdArray<f64>>;
    let device = Default::default();
    // Fixed values (not the random initialisation), so the test is the same on every run.
    let mut lin = burn::nn::LinearConfig::new(3, 2).init::<D>(&device);
    lin.weight = burn::module::Param::from_tensor(Tensor::from_floats(
        [[0.4, -0.3], [0.2, 0.5], [-0.6, 0.1]],
        &device,
    ));
    lin.bias = Some(burn::module::Param::from_tensor(Tensor::from_floats(
        [0.05, -0.2],
        &device,
    )));
    let values = |l: &burn::nn::Linear<D>| {
        let v = |t: Tensor<D, 2>| t.into_data().convert::<f64>().to_vec::<f64>().unwrap();
        let bias = l.bias.as_ref().unwrap().val().unsqueeze::<2>();
        (v(l.weight.val()), v(bias))
    };
    let (w0, b0) = values(&lin);
    let cfg = LarsConfig {
        weight_decay: 0.1,
        ..Default::default()
    };
    let mut opt = cfg.init::<D, burn::nn::Linear<D>>();
    let x = Tensor::<D, 2>::from_floats([[1.0, -2.0, 0.5], [0.3, 0.2, -1.0]], &device);
    let (mut w, mut vw) = (w0.clone(), vec![0.0; 6]);
    let (mut b, mut vb) = (b0.clone(), vec![0.0; 2]);
    for step in 0..2 {
        let y = lin.forward(x.clone()).powi_scalar(2).sum();
        // d/dW sum((xW + b)^2) = 2 xᵀ(xW + b); d/db = 2 Σ_rows (xW + b).
        // The inputs as the tensor holds them (`from_floats` rounds through f32).
        let xv = x
            .clone()
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .unwrap();
        let xs: Vec<&[f64]> = xv.chunks(3).collect();
        let out: Vec<[f64; 2]> = xs
            .iter()
            .map(|r| {
                let mut o = [b[0], b[1]];
                for (j, oj) in o.iter_mut().enumerate() {
                    for i in 0..3 {
                        *oj += r[i] * w[i * 2 + j];
                    }
                }
                o
            })
            .collect();
        let mut gw = vec![0.0; 6];
        let mut gb = vec![0.0; 2];
        for (r, o) in xs.iter().zip(&out) {
            for i in 0..3 {
                for j in 0..2 {
                    gw[i * 2 + j] += 2.0 * r[i] * o[j];
                }
            }
            for j in 0..2 {
                gb[j] += 2.0 * o[j];
            }
        }
        let lr = 0.5;
        for (p, g, v) in [(&mut w, gw, &mut vw), (&mut b, gb, &mut vb)] {
            let pn = p.iter().map(|x| x * x).sum::<f64>().sqrt();
            let gn = g.iter().map(|x| x * x).sum::<f64>().sqrt();
            let ratio = 0.001 * pn / (gn + pn * 0.1 + 1e-8);
            for i in 0..p.len() {
                let gi = (g[i] + 0.1 * p[i]) * ratio;
                v[i] = if step == 0 { gi } else { 0.9 * v[i] + gi };
                p[i] -= lr * v[i];
            }
        }
        let grads = GradientsParams::from_grads(y.backward(), &lin);
        lin = opt.step(lr, lin, grads);
    }
    let (got_w, got_b) = values(&lin);
    for (g, e) in got_w.iter().zip(&w).chain(got_b.iter().zip(&b)) {
        // Same operations in f64 on the same inputs: equal up to summation order.
        assert!((g - e).abs() <= 1e-12 * e.abs(), "{g} vs {e}");
    }
    assert!(got_w.iter().zip(&w0).any(|(a, b)| a != b));
}

/// The queue training uses (on the device) shifts by the batch and puts the newest embeddings
/// in front; it is full once its last row is written; a batch larger than the queue keeps its
/// first rows; a checkpoint's queue comes back with its filled rows counted.
#[test]
fn queue_shifts_and_fills() {
    let device = Default::default();
    let emb = |v: &[f32]| {
        Tensor::<CpuBackend, 2>::from_data(
            burn::tensor::TensorData::new(v.to_vec(), [v.len() / 2, 2]),
            &device,
        )
    };
    let mut q = step::DeviceQueue::<CpuBackend>::zeros(1, 3, 2, &device);
    assert!(!q.is_full(0));
    q.push(0, emb(&[1.0, 1.0]));
    assert!(!q.is_full(0));
    let host = q.to_host();
    assert_eq!(host.rows[0], vec![1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    let mut back = step::DeviceQueue::<CpuBackend>::from_host(&host, &device);
    q.push(0, emb(&[2.0, 2.0, 3.0, 3.0]));
    assert_eq!(q.to_host().rows[0], vec![2.0, 2.0, 3.0, 3.0, 1.0, 1.0]);
    assert!(q.is_full(0));
    // Restored with one row filled: two more rows fill it.
    back.push(0, emb(&[2.0, 2.0, 3.0, 3.0]));
    assert!(back.is_full(0));
    q.push(0, emb(&[4.0, 4.0, 5.0, 5.0, 6.0, 6.0, 7.0, 7.0]));
    assert_eq!(q.to_host().rows[0], vec![4.0, 4.0, 5.0, 5.0, 6.0, 6.0]);
}

/// A NaN stops the run with the iteration, the tensor and a dump (a learning rate that
/// overflows the weights).
#[test]
fn non_finite_loss_stops_with_a_dump() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_set(&dir.path().join("data"));
    let cfg = tiny(&dir.path().join("out"), &data)
        .with_overrides(&[
            "lr_scheduler.learning_rate=1e38".into(),
            "lr_scheduler.start_lr=1e38".into(),
        ])
        .unwrap();
    let e = trainer::train::<A>(
        &cfg.plan().unwrap(),
        &[Default::default()],
        &TrainOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    match &e {
        trainer::TrainError::NonFinite {
            iteration, dump, ..
        } => {
            assert!(*iteration >= 1, "{e}");
            assert!(
                dump.is_file() && dump.with_extension("json").is_file(),
                "{e}"
            );
        }
        other => panic!("expected a non-finite error, got {other}"),
    }
    assert!(e.to_string().contains("non-finite"), "{e}");
}

const TRAIN: &str = env!("CARGO_BIN_EXE_swav-train");
const EXTRACT: &str = env!("CARGO_BIN_EXE_swav-extract");
const LINCLS: &str = env!("CARGO_BIN_EXE_swav-lincls");

fn cli(bin: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin).args(args).output().unwrap()
}

/// The README's main job in miniature: pretrain from the config file with overrides, extract
/// the backbone from the training checkpoint into PASSL's and facebookresearch's formats,
/// and evaluate it with k-NN; and the errors a user meets on the way.
#[test]
fn train_extract_and_knn_through_the_binaries() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    synthetic::write(
        &dir.path().join("data"),
        &SyntheticConfig {
            size: 32,
            train_per_class: 3,
            val_per_class: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let config = TINY_CONFIG;
    let args = tiny_cli(
        2,
        &[
            format!("output_dir={}", d("run")),
            format!("dataloader.train.dataset.dataroot={}", d("data/train")),
            "epochs=1".into(),
            "dataloader.train.sampler.batch_size=10".into(),
            "dataloader.train.dataset.size_crops=[32, 16]".into(),
        ],
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    // NCCL for CPU ranks: one line, exit 2, nothing written.
    let mut nccl = refs.clone();
    nccl.extend(["--device", "cpu,cpu", "--collective", "nccl"]);
    let o = cli(TRAIN, &nccl);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--collective nccl: NCCL needs CUDA devices")
            && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(!Path::new(&d("run")).exists(), "nothing written");
    let o = cli(TRAIN, &refs);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ckpt = d("run/checkpoints/epoch_0001");
    assert!(Path::new(&d("run/training.png")).is_file());
    assert!(Path::new(&d("run/metrics.jsonl")).is_file());
    // Again without --resume: refused, the checkpoint is kept.
    let o = cli(TRAIN, &refs);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));

    for out in ["bb.pdparams", "bb.pth.tar"] {
        let o = cli(EXTRACT, &[&ckpt, "--remove-prefix", "-o", &d(out)]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // PASSL's --pretrained: the extracted backbone (head left at its initialisation) and the
    // whole training checkpoint start new runs; the loaded/missing counts are reported.
    for (weights, out, want) in [
        (d("bb.pth.tar"), d("run_bb"), "missing"),
        (ckpt.clone(), d("run_full"), "0 missing"),
    ] {
        let mut a: Vec<&str> = refs.iter().copied().filter(|x| *x != "-q").collect();
        let o_out = format!("output_dir={out}");
        a.extend(["--pretrained", &weights, "-o", &o_out]);
        let o = cli(TRAIN, &a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        let line = err
            .lines()
            .find(|l| l.contains("event=pretrained"))
            .expect("a pretrained event");
        assert!(
            line.contains(want) && line.contains("0 shape mismatches"),
            "{line}"
        );
    }
    let pd = swav::checkpoint::Checkpoint::open(d("bb.pdparams")).unwrap();
    assert!(pd.get("conv1.weight").is_some() && pd.get("bn1._mean").is_some());
    let pt = swav::checkpoint::Checkpoint::open(d("bb.pth.tar")).unwrap();
    assert!(pt.get("layer1.0.conv1.weight").is_some() && pt.get("fc.weight").is_none());
    let o = cli(
        LINCLS,
        &[
            "knn",
            "--pretrained",
            &d("bb.pth.tar"),
            "--data",
            &d("data"),
            "--resize",
            "32",
            "--size",
            "32",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["val"], 20);
    // PASSL's linear-evaluation config, sized down by overrides.
    let clas = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/swav/swav_clas_r50.yaml"
    );
    let (out_dir, train_root, val_root) = (
        format!("output_dir={}", d("lincls")),
        format!("dataloader.train.dataset.dataroot={}", d("data/train")),
        format!("dataloader.val.dataset.dataroot={}", d("data/val")),
    );
    let mut args = vec![
        "train",
        "-c",
        clas,
        "--pretrained",
        &ckpt,
        "--cache-features",
    ];
    let overrides = [
        "epochs=2",
        "lr_scheduler.T_max=2",
        "model.head.in_channels=32",
        "dataloader.train.dataset.transforms.0.size=32",
        "dataloader.val.dataset.transforms.0.size=32",
        "dataloader.val.dataset.transforms.1.size=32",
        "dataloader.train.loader.num_workers=2",
        &out_dir,
        &train_root,
        &val_root,
    ];
    for o in &overrides {
        args.extend(["-o", o]);
    }
    let o = cli(LINCLS, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let m: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(m["epoch"], 1);
    // metrics.jsonl: the printed lines, one per epoch.
    let metrics = std::fs::read_to_string(d("lincls/metrics.jsonl")).unwrap();
    assert_eq!(metrics, stdout);
    assert_eq!(metrics.lines().count(), 2);
    assert!(Path::new(&d("lincls/best.safetensors")).is_file());
    assert!(Path::new(&d("lincls/curves.png")).is_file());
    // PASSL's --load best --evaluate-only.
    let best = d("lincls/best.safetensors");
    let mut eval_args = args.clone();
    eval_args.retain(|a| *a != "--cache-features");
    eval_args.extend(["--load", &best, "--evaluate-only"]);
    let o = cli(LINCLS, &eval_args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // The saved best classifier scores what its epoch scored: the same images through the same
    // transform, the features computed afresh instead of cached.
    let best_top1 = metrics
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["top1"]
                .as_f64()
                .unwrap()
        })
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(e["top1"].as_f64().unwrap(), best_top1, "{e}");
    // A config whose head does not fit the backbone is refused by name.
    let o = cli(
        LINCLS,
        &[
            "train",
            "-c",
            clas,
            "--pretrained",
            &ckpt,
            "--data",
            &d("data"),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("in_channels"));

    // Errors: one line naming the key or file, exit 2.
    for (args, want) in [
        (
            vec!["-c", config, "-o", "model.head.epsilom=0.1"],
            "model.head.epsilom",
        ),
        (vec!["-c", config, "-o", "epochs=many"], "epochs"),
        (vec!["-c", "/nonexistent.yaml"], "/nonexistent.yaml"),
        (vec!["-c", config, "--device", "tpu:0"], "tpu:0"),
        (
            vec!["-c", config, "-o", "model.neck.in_channels=64"],
            "in_channels",
        ),
    ] {
        let o = cli(TRAIN, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(want) && err.trim().lines().count() == 1,
            "{args:?}: {err}"
        );
    }
}

/// Killing `swav-train` at arbitrary moments never leaves a checkpoint that fails to load,
/// and `--resume` goes on from whatever is there.
#[test]
fn killed_training_leaves_loadable_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_set(&dir.path().join("data"));
    let out = dir.path().join("run");
    let args = tiny_cli(
        1,
        &[
            format!("output_dir={}", out.display()),
            format!("dataloader.train.dataset.dataroot={}", data.display()),
            "epochs=400".into(),
            "model.head.queue_length=16".into(),
            "model.head.epoch_queue_starts=1".into(),
            "dataloader.train.sampler.batch_size=8".into(),
            "dataloader.train.dataset.size_crops=[32, 16]".into(),
            "checkpoint.interval=1".into(),
        ],
    );
    let mut seen = 0;
    for (i, ms) in [700u64, 450, 900, 300, 1200, 600].into_iter().enumerate() {
        let mut a = args.clone();
        if i > 0 && state::latest(&out).is_some() {
            a.push("--resume".into());
        }
        let mut child = std::process::Command::new(TRAIN).args(&a).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
        if let Some(latest) = state::latest(&out) {
            let st = state::read_state(&latest).unwrap();
            assert!(
                st.epoch >= seen,
                "went back from epoch {seen} to {}",
                st.epoch
            );
            seen = st.epoch;
            record::load::<CpuBackend>(&latest.join("model.mpk"), &Default::default())
                .unwrap_or_else(|e| panic!("after a kill: {e}"));
            let q = std::fs::metadata(latest.join("queue.f32"));
            assert!(st.queue.is_none() || q.is_ok_and(|m| m.len() == 2 * 16 * 8 * 4));
        }
    }
    assert!(seen > 0, "no checkpoint was ever written");
}

/// The trainer on two CPU ranks: each gets half the batch and half the queue; the run resumes
/// on one rank with the same global batch (the queue's rows re-sliced), and a queue of another
/// size is refused.
#[test]
fn two_cpu_ranks_train_then_resume_on_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_set(&dir.path().join("data"));
    let cfg = tiny(&dir.path().join("out"), &data)
        .with_overrides(&["epochs=3".into()])
        .unwrap();
    let two = [Default::default(), Default::default()];
    let opts = TrainOptions {
        workers: Some(1),
        max_epochs: Some(2),
        ..Default::default()
    };
    trainer::train::<A>(&cfg.plan().unwrap(), &two, &opts, &mut |_| {}).unwrap();
    let st = state::read_state(&state::latest(&dir.path().join("out")).unwrap()).unwrap();
    assert_eq!((st.epoch, st.devices, st.queue), (2, 2, Some([2, 8, 8])));
    let resume = TrainOptions {
        resume: true,
        ..opts.clone()
    };
    let bigger = cfg
        .clone()
        .with_overrides(&["model.head.queue_length=32".into()])
        .unwrap();
    let e = trainer::train::<A>(&bigger.plan().unwrap(), &two, &resume, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("holds 16 rows"), "{e}");
    let one = cfg
        .with_overrides(&["dataloader.train.sampler.batch_size=16".into()])
        .unwrap();
    let s = trainer::train::<A>(
        &one.plan().unwrap(),
        &[Default::default()],
        &resume,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(s.history.len(), 3);
    let st = state::read_state(&state::latest(&dir.path().join("out")).unwrap()).unwrap();
    assert_eq!((st.epoch, st.devices, st.queue), (3, 1, Some([2, 16, 8])));
}

/// `scripts/gpu-check.sh`'s two subcommands, on the CPU: `check-step` reproduces PyTorch's
/// fixture step, `bench-step` reports its warm-up and each step as it ends; and a CUDA device
/// in a CPU-only build is a one-line error, not a panic.
#[test]
fn gpu_check_subcommands_on_the_cpu() {
    let weights = crate::fixture("fair_swav_tiny.pth.tar");
    let reference = crate::fixture("swav_step_tiny.safetensors");
    let (w, r) = (weights.to_str().unwrap(), reference.to_str().unwrap());
    let check_step = |device| {
        let args = [
            "check-step",
            "--weights",
            w,
            "--reference",
            r,
            "--device",
            device,
        ];
        cli(TRAIN, &args)
    };
    let out = check_step("cpu");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // PyTorch's own f32 and f64 steps differ by 1.9e-5 (tests/it/train.rs).
    assert!(j["loss_relative"].as_f64().unwrap() < 1e-4, "{j}");
    assert_eq!(j["codes_max_abs"].as_array().unwrap().len(), 2);

    let mut args = vec![
        "bench-step",
        "-c",
        TINY_CONFIG,
        "--steps",
        "2",
        "--device",
        "cpu",
    ];
    for o in TINY_MODEL
        .iter()
        .chain(&["dataloader.train.sampler.batch_size=4"])
    {
        args.extend(["-o", o]);
    }
    let out = cli(TRAIN, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (j["steps"].as_u64(), j["batch_size"].as_u64()),
        (Some(2), Some(4))
    );
    assert!(j["images_per_second"].as_f64().unwrap() > 0.0, "{j}");
    assert!(j["warmup_seconds"].as_f64().unwrap() > 0.0, "{j}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("event=bench_step"))
        .collect();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(
        lines[0].contains("step=0 warmup=true seconds="),
        "{}",
        lines[0]
    );

    #[cfg(not(feature = "cuda-backend"))]
    {
        let out = check_step("cuda:0");
        assert_eq!(out.status.code(), Some(2));
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(
            e.contains("--features cuda") && !e.contains("panicked"),
            "{e}"
        );
    }
}

/// `swav-train bench-data` (the loader alone, for sizing hosts) over the shipped photos: JSON
/// with the counts asked for and the vector instructions the transforms ran with; a missing
/// folder is a one-line error naming it.
#[test]
fn bench_data_measures_the_loader_over_a_folder() {
    let photos = crate::fixture("photos");
    let args = [
        "bench-data",
        "--data",
        photos.to_str().unwrap(),
        "--workers",
        "2",
        "--batch-size",
        "5",
        "--batches",
        "2",
        "--size-crops",
        "64,32",
        "--json",
    ];
    let out = cli(TRAIN, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["images"], 10, "{r}");
    assert_eq!(
        (r["crops_per_image"].as_u64(), r["workers"].as_u64()),
        (Some(8), Some(2))
    );
    assert_eq!(r["skipped"], 0);
    assert!(r["images_per_second"].as_f64().unwrap() > 0.0, "{r}");
    let level = format!("{:?}", swav::data::simd::detected()).to_lowercase();
    assert_eq!(r["simd"], level.as_str());

    let missing = photos.join("no-such-folder");
    let mut args = args.to_vec();
    args[2] = missing.to_str().unwrap();
    let out = cli(TRAIN, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no-such-folder"), "{err}");
}

/// A line of `metrics.jsonl` that cannot be written (the file is /dev/full) ends the run with
/// an error naming the file, instead of training on with incomplete metrics.
#[test]
fn a_failed_metrics_write_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = synthetic_set(&dir.path().join("data"));
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::symlink("/dev/full", out.join("metrics.jsonl")).unwrap();
    let cfg = tiny(&out, &data);
    let opts = TrainOptions {
        workers: Some(1),
        ..Default::default()
    };
    let e = trainer::train::<Autodiff<CpuBackend>>(
        &cfg.plan().unwrap(),
        &[Default::default()],
        &opts,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("metrics.jsonl") && !e.contains('\n'), "{e}");
}
