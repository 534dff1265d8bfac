//! Published linear classifiers, as their projects save them (fixtures written by real PyTorch
//! and PaddlePaddle: `generate/make_classifier_fixtures.py`), evaluated by `swav-lincls` against
//! the logits and top-1/top-5 both frameworks computed on the same preprocessed images.

use crate::fixture;
use crate::server;
use std::path::Path;
use std::process::{Command, Output};
use swav::checkpoint::Checkpoint;

const LINCLS: &str = env!("CARGO_BIN_EXE_swav-lincls");
const REFERENCE: &str = "clas_reference_tiny.safetensors";

fn lincls(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut c = Command::new(LINCLS);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn path(name: &str) -> String {
    fixture(name).display().to_string()
}

/// The reference's top-1 and top-5 (%) by each framework, from its metadata.
fn reference_accuracy() -> [(f64, f64); 2] {
    let ck = Checkpoint::open(fixture(REFERENCE)).unwrap();
    let get = |k: &str| -> f64 {
        let v = ck
            .values
            .iter()
            .find(|(n, _)| n == &format!("__metadata__.{k}"))
            .unwrap_or_else(|| panic!("metadata {k}"))
            .1
            .as_str()
            .unwrap()
            .to_string();
        v.parse().unwrap()
    };
    [
        (get("top1"), get("top5")),
        (get("paddle.top1"), get("paddle.top5")),
    ]
}

/// `{"top1": .., "top5": ..}` printed by a successful run.
fn accuracy(o: &Output) -> (f64, f64) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    (v["top1"].as_f64().unwrap(), v["top5"].as_f64().unwrap())
}

/// PASSL's classification model alone (backbone and head.fc_cls, no --pretrained),
/// facebookresearch's eval_linear checkpoint on its pretrained backbone, torchvision's fc with
/// its backbone, and ours (the eval_linear file converted) all give the frameworks' top-1/top-5
/// on the reference images (top-1 50%, top-5 75% by construction; a transposed or misread
/// classifier scores otherwise).
#[test]
fn published_classifiers_evaluate_as_their_frameworks_do() {
    let [torch, paddle] = reference_accuracy();
    assert_eq!(torch, paddle, "the frameworks agree");
    assert_eq!(torch, (50.0, 75.0));
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.safetensors");
    let o = Command::new(env!("CARGO_BIN_EXE_swav-convert"))
        .arg(fixture("fair_eval_linear_tiny.pth.tar"))
        .arg(&ours)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ours = ours.display().to_string();
    let pretrained = path("fair_swav_tiny.pth.tar");
    let cases: [(&str, Option<&str>); 4] = [
        (&path("passl_clas_tiny.pdparams"), None),
        (&path("fair_eval_linear_tiny.pth.tar"), Some(&pretrained)),
        (&path("torchvision_tiny_fc.pth"), None),
        (&ours, Some(&pretrained)),
    ];
    for (cls, backbone) in cases {
        for device in ["cpu", "cpu,cpu"] {
            let mut args = vec!["evaluate", "--device", device, "--batch-size", "5"];
            args.extend(["--load", cls, "--tensors"]);
            let reference = path(REFERENCE);
            args.push(&reference);
            if let Some(b) = backbone {
                args.extend(["--pretrained", b]);
            }
            assert_eq!(accuracy(&lincls(&args, &[])), torch, "{cls} on {device}");
        }
    }
}

/// The logits themselves, through the library: every form of the classifier on the backbone
/// gives PyTorch's and PaddlePaddle's logits within 1e-4.
#[test]
fn classifier_logits_match_both_frameworks() {
    use swav::eval::{classifier, Frozen};
    type B = swav::model::CpuBackend;
    let device = Default::default();
    let r = Checkpoint::open(fixture(REFERENCE)).unwrap();
    let want = |n: &str| r.get(n).unwrap().to_f32().unwrap();
    let images = swav::eval::read_images(&fixture(REFERENCE)).unwrap();
    let (model, config, _) =
        swav::model::load::from_file::<B>(&fixture("passl_clas_tiny.pdparams"), &device, false)
            .unwrap();
    let frozen = Frozen::new(model, config, vec![device]);
    for file in [
        "passl_clas_tiny.pdparams",
        "fair_eval_linear_tiny.pth.tar",
        "torchvision_tiny_fc.pth",
    ] {
        let head = classifier::load_classifier::<B>(&fixture(file), 128, 10, &device).unwrap();
        let logits = head.forward(frozen.outputs(&images, 4).unwrap().features);
        let ours: Vec<f32> = logits.to_data().to_vec().unwrap();
        for name in ["logits", "paddle.logits"] {
            let d = ours
                .iter()
                .zip(want(name))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(d < 1e-4, "{file} vs {name}: {d}");
        }
    }
}

/// PASSL's README command, verbatim but for the sizes of a tiny model: `train -c
/// swav_clas_r50.yaml --load CLS --evaluate-only`, the backbone from the same file;
/// `evaluate --data` gives the same numbers. A classifier that does not fit is a one-line error
/// naming both shapes; `swav-convert` maps a lone classifier between layouts.
#[test]
fn passl_evaluate_only_command_and_shape_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = crate::image_set(&dir.path().join("syn"), 64, 1, 2, 4);
    let config = format!(
        "{}/configs/swav/swav_clas_r50.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let cls = path("passl_clas_tiny.pdparams");
    let overrides = [
        "model.head.in_channels=128".to_string(),
        "dataloader.val.dataset.transforms.0.size=64".into(),
        "dataloader.val.dataset.transforms.1.size=64".into(),
        format!(
            "dataloader.train.dataset.dataroot={}",
            root.join("train").display()
        ),
        format!(
            "dataloader.val.dataset.dataroot={}",
            root.join("val").display()
        ),
        // facebookresearch's std, which `evaluate` uses (PASSL's config says 0.229).
        "dataloader.val.dataset.transforms.3.std=[0.228, 0.224, 0.225]".into(),
    ];
    let mut args = vec!["train", "-c", &config, "--load", &cls, "--evaluate-only"];
    for o in &overrides {
        args.extend(["-o", o]);
    }
    let from_config = accuracy(&lincls(&args, &[]));
    // `evaluate` takes the same file for backbone and classifier, with the same transform.
    let root_s = root.display().to_string();
    let evaluate = [
        "evaluate", "--load", &cls, "--data", &root_s, "--resize", "64", "--size", "64",
    ];
    assert_eq!(accuracy(&lincls(&evaluate, &[])), from_config);

    // Shapes that do not fit: one line naming both, exit 2.
    let r18 = path("fair_swav_tiny_r18.pth.tar");
    let fair = path("fair_eval_linear_tiny.pth.tar");
    let reference = path(REFERENCE);
    let o = lincls(
        &[
            "evaluate",
            "--pretrained",
            &r18,
            "--load",
            &fair,
            "--tensors",
            &reference,
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let last = err.trim().lines().last().unwrap();
    assert!(
        last.contains("takes 128 features") && last.contains("gives 32"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // More classes in the data (labels up to 11) than the classifier's 10 outputs.
    let many = dir.path().join("many.safetensors");
    let r = Checkpoint::open(fixture(REFERENCE)).unwrap();
    let images = r.get("images").unwrap();
    let tensors = vec![
        swav::tensor::Tensor::from_vec(
            "images",
            swav::tensor::DType::F32,
            images.shape.clone(),
            images
                .to_f32()
                .unwrap()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
        .unwrap(),
        swav::tensor::Tensor::from_vec(
            "labels",
            swav::tensor::DType::I64,
            vec![16],
            (0..16i64)
                .map(|i| i % 12)
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
        .unwrap(),
    ];
    let bytes = swav::checkpoint::safetensors::write(Vec::new(), &tensors, Default::default());
    std::fs::write(&many, bytes.unwrap()).unwrap();
    let many_s = many.display().to_string();
    let o = lincls(&["evaluate", "--load", &cls, "--tensors", &many_s], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.trim()
            .lines()
            .last()
            .unwrap()
            .contains("10 outputs but the data has 12 classes"),
        "{err}"
    );

    // swav-convert: facebookresearch's lone classifier to PASSL's names, transposed.
    let out = dir.path().join("head.pdparams");
    let o = Command::new(env!("CARGO_BIN_EXE_swav-convert"))
        .arg(fixture("fair_eval_linear_tiny.pth.tar"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ck = Checkpoint::open(&out).unwrap();
    let w = ck.get("head.fc_cls.weight").unwrap();
    assert_eq!(w.shape, vec![128, 10]);
    assert_eq!(ck.get("head.fc_cls.bias").unwrap().shape, vec![10]);
}

/// A registry name as the weights argument: fetched from the registry's URL (a server on
/// 127.0.0.1) into the cache, verified, then evaluated; offline, the cached file serves.
#[test]
fn a_registry_name_evaluates_in_one_command() {
    let data = std::fs::read(fixture("passl_clas_tiny.pdparams")).unwrap();
    let srv = server::start(data);
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("registry.toml");
    std::fs::write(
        &registry,
        format!(
            "[[artifact]]\nname = \"tiny_clas\"\nurls = [\"{}/file/passl_clas_tiny.pdparams\"]\n\
             file = \"passl_clas_tiny.pdparams\"\nformat = \"paddle\"\nmin_tensors = 100\n\
             expect = {{ \"linear.weight\" = [10, 128] }}\n",
            srv.base
        ),
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let env = [
        ("SWAV_REGISTRY", registry.as_path()),
        ("SWAV_HOME", cache.as_path()),
    ];
    let reference = path(REFERENCE);
    let args = ["evaluate", "--load", "tiny_clas", "--tensors", &reference];
    let [torch, _] = reference_accuracy();
    assert_eq!(accuracy(&lincls(&args, &env)), torch);
    assert!(
        cache
            .join("weights/tiny_clas/passl_clas_tiny.pdparams")
            .is_file(),
        "fetched into the cache"
    );
    let offline = [
        ("SWAV_REGISTRY", registry.as_path()),
        ("SWAV_HOME", cache.as_path()),
        ("SWAV_OFFLINE", Path::new("1")),
    ];
    drop(srv);
    assert_eq!(accuracy(&lincls(&args, &offline)), torch);
    // swav-extract (and swav-convert) take the name too: PASSL's backbone out of the cached file.
    let out = dir.path().join("backbone.pdparams");
    let mut extract = Command::new(env!("CARGO_BIN_EXE_swav-extract"));
    extract
        .arg("tiny_clas")
        .arg("--remove-prefix")
        .arg("-o")
        .arg(&out);
    for (k, v) in &offline {
        extract.env(k, v);
    }
    let o = extract.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(Checkpoint::open(&out)
        .unwrap()
        .get("conv1.weight")
        .is_some());
    // A bare name that is neither a file nor an artifact.
    let o = lincls(
        &[
            "evaluate",
            "--load",
            "no_such_model",
            "--tensors",
            &reference,
        ],
        &env,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        err.contains("no_such_model: no such file, and no artifact of that name"),
        "{err}"
    );
}
