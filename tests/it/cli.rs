//! The binaries as a user runs them.

use crate::fixture;
use std::process::{Command, Output};

fn run(bin: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(bin).args(args).output().unwrap()
}

const CONVERT: &str = env!("CARGO_BIN_EXE_swav-convert");
const EXTRACT: &str = env!("CARGO_BIN_EXE_swav-extract");

#[test]
fn convert_inspect_and_extract() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.pth");
    let o = run(
        CONVERT,
        &[
            fixture("passl_swav_tiny.pdparams").as_os_str(),
            out.as_os_str(),
            "--json".as_ref(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(s["to_layout"], "torch");
    assert_eq!(s["mapping"]["added"], 54);

    let o = run(
        CONVERT,
        &["--inspect".as_ref(), out.as_os_str(), "--json".as_ref()],
    );
    let i: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(i["total_tensors"], 328);
    assert_eq!(i["layout"], "torch");
    let o = run(
        CONVERT,
        &[
            "--inspect".as_ref(),
            fixture("passl_swav_tiny_epoch_3.pd").as_os_str(),
        ],
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("model key: state_dict  layout: paddle"),
        "{text}"
    );
    assert!(text.contains("epoch = 3"), "{text}");

    let bb = dir.path().join("bb.safetensors.zst");
    let o = run(
        EXTRACT,
        &[
            fixture("fair_swav_tiny.pth.tar").as_os_str(),
            "-o".as_ref(),
            bb.as_os_str(),
            "--remove-prefix".as_ref(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("265 tensors"));
}

#[test]
fn user_errors_are_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pdparams");
    let out = dir.path().join("o.safetensors");
    let passl = fixture("passl_swav_tiny.pdparams");
    let mpk = dir.path().join("o.mpk");
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (
            vec![missing.as_os_str(), out.as_os_str()],
            "nope.pdparams: No such file",
        ),
        // A Burn record takes none of the naming or casting options: refused, not ignored.
        (
            vec![
                passl.as_os_str(),
                mpk.as_os_str(),
                "--dtype".as_ref(),
                "f16".as_ref(),
            ],
            "--dtype does not apply to a Burn record",
        ),
        (
            vec![
                passl.as_os_str(),
                mpk.as_os_str(),
                "--add-prefix".as_ref(),
                "module.".as_ref(),
            ],
            "--add-prefix does not apply to a Burn record",
        ),
        (
            vec![passl.as_os_str(), "o.txt".as_ref()],
            "unknown output format",
        ),
        (
            vec![
                passl.as_os_str(),
                out.as_os_str(),
                "--key".as_ref(),
                "model".as_ref(),
            ],
            "no key 'model'",
        ),
        (
            vec![
                passl.as_os_str(),
                out.as_os_str(),
                "--from-layout".as_ref(),
                "torch".as_ref(),
            ],
            "not part of a SwAV/ResNet model in the torch layout",
        ),
        (
            vec![
                passl.as_os_str(),
                out.as_os_str(),
                "--dtype".as_ref(),
                "i8".as_ref(),
            ],
            "not one of",
        ),
        (vec!["--bogus".as_ref()], "unexpected argument"),
    ];
    for (args, expect) in cases {
        let o = run(CONVERT, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!out.exists() && !mpk.exists());
    }
    let o = run(
        EXTRACT,
        &[
            fixture("passl_swav_tiny.pdparams").as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
            "--prefix".as_ref(),
            "neckx".as_ref(),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no key under prefix `neckx`"));
}

/// Numbers and tensors out of range: one line naming the flag or the tensor, exit 2, nothing
/// written; a benchmark over a folder smaller than one batch still measures.
#[test]
fn bad_numbers_and_empty_tensors_are_one_line_errors() {
    use swav::checkpoint::Checkpoint;
    use swav::tensor::{DType, Tensor};
    let lincls = env!("CARGO_BIN_EXE_swav-lincls");
    let train = env!("CARGO_BIN_EXE_swav-train");
    let dir = tempfile::tempdir().unwrap();
    let data = crate::image_set(&dir.path().join("syn"), 32, 1, 1, 1);
    let write = |name: &str, tensors: Vec<Tensor>| {
        let path = dir.path().join(name);
        let bytes = swav::checkpoint::safetensors::write(Vec::new(), &tensors, Default::default());
        std::fs::write(&path, bytes.unwrap()).unwrap();
        path
    };
    let no_images = write(
        "none.safetensors",
        vec![Tensor::from_vec("images", DType::F32, vec![0, 3, 8, 8], vec![]).unwrap()],
    );
    // The step reference with an empty loss.
    let step = Checkpoint::open(fixture("swav_step_tiny.safetensors")).unwrap();
    let mut tensors: Vec<Tensor> = step
        .tensors
        .iter()
        .filter(|t| t.name != "loss")
        .cloned()
        .collect();
    tensors.push(Tensor::from_vec("loss", DType::F32, vec![0], vec![]).unwrap());
    let empty_loss = write("empty_loss.safetensors", tensors);
    let out = dir.path().join("out.safetensors");
    let s = |p: &std::path::Path| p.display().to_string();
    let weights = s(&fixture("fair_swav_tiny.pth.tar"));
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            lincls,
            [
                "knn",
                "--random-init",
                "18",
                "--width",
                "4",
                "--k",
                "0",
                "--data",
            ]
            .map(String::from)
            .into_iter()
            .chain([s(&data)])
            .collect(),
            "invalid value '0' for '--k <K>': must be at least 1",
        ),
        (
            lincls,
            vec![
                "features".into(),
                "--pretrained".into(),
                weights.clone(),
                "--tensors".into(),
                s(&no_images),
                "-o".into(),
                s(&out),
            ],
            "holds no image",
        ),
        (
            train,
            vec![
                "check-step".into(),
                "--weights".into(),
                weights.clone(),
                "--reference".into(),
                s(&empty_loss),
            ],
            "`loss` is empty",
        ),
        (
            train,
            vec![
                "bench-data".into(),
                "--batch-size".into(),
                "0".into(),
                "--data".into(),
                s(&data.join("train")),
            ],
            "invalid value '0' for '--batch-size <BATCH_SIZE>': must be at least 1",
        ),
    ];
    for (bin, args, want) in cases {
        let o = Command::new(bin).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        let last = err.trim().lines().last().unwrap_or_default();
        assert!(last.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!out.exists(), "nothing written");
    // Ten images, batches of 64: the benchmark cycles over the folder and measures.
    let o = Command::new(train)
        .args([
            "bench-data",
            "--json",
            "--batches",
            "2",
            "--batch-size",
            "64",
        ])
        .args(["--size-crops", "32,16", "--data"])
        .arg(data.join("train"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["images"].as_u64().unwrap() > 0, "{v}");
    assert!(v["images_per_second"].as_f64().unwrap() > 0.0, "{v}");
}

/// Exit codes: every binary's --help lists them; a check that ran and failed exits 1
/// (`check-step` outside its tolerances), an error 2.
#[test]
fn exit_codes_are_documented_and_a_failed_check_exits_1() {
    for bin in [
        env!("CARGO_BIN_EXE_swav-convert"),
        env!("CARGO_BIN_EXE_swav-extract"),
        env!("CARGO_BIN_EXE_swav-fetch"),
        env!("CARGO_BIN_EXE_swav-train"),
        env!("CARGO_BIN_EXE_swav-lincls"),
    ] {
        let o = Command::new(bin).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(
            help.contains("Exit codes: 0 success;") && help.contains("2 an error"),
            "{bin}: {help}"
        );
    }
    let train = env!("CARGO_BIN_EXE_swav-train");
    let step = |tolerance: &str| {
        Command::new(train)
            .args(["check-step", "--weights"])
            .arg(fixture("fair_swav_tiny.pth.tar"))
            .arg("--reference")
            .arg(fixture("swav_step_tiny.safetensors"))
            .args(["--loss-tolerance", tolerance])
            .output()
            .unwrap()
    };
    let o = step("1e-4");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = step("0");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("check failed: loss differs by"), "{err}");
}

/// A checkpoint without tensors: inspection says conversion refuses it, conversion exits 2.
#[test]
fn a_file_without_tensors_is_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("epoch_only.pdparams");
    // pickle protocol 2 of {'epoch': 3}
    std::fs::write(&file, b"\x80\x02}q\x00X\x05\x00\x00\x00epochq\x01K\x03s.").unwrap();
    let o = run(CONVERT, &["--inspect".as_ref(), file.as_os_str()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("no tensors: nothing to convert"), "{text}");
    let out = dir.path().join("o.safetensors");
    let o = run(CONVERT, &[file.as_os_str(), out.as_os_str()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("holds no tensors"));
    assert!(!out.exists());
}

/// Every numeric flag has its range and every numeric config key its check: a value out of
/// range is one line naming the flag or the key, exit code 2, before any work.
#[test]
fn numbers_out_of_range_are_named() {
    let lincls = env!("CARGO_BIN_EXE_swav-lincls");
    let train = env!("CARGO_BIN_EXE_swav-train");
    let fetch = env!("CARGO_BIN_EXE_swav-fetch");
    let tiny = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/swav/swav_tiny_cpu.yaml"
    );
    let clas = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/swav/swav_clas_r50.yaml"
    );
    let knn = ["knn", "--random-init", "18", "--data", "nowhere"];
    let ltrain = ["train", "--random-init", "18", "--data", "nowhere"];
    let flags: Vec<(&str, Vec<&str>, &str, &str)> = vec![
        (lincls, knn.to_vec(), "--width", "0"),
        (lincls, knn.to_vec(), "--batch-size", "0"),
        (lincls, knn.to_vec(), "--workers", "0"),
        (lincls, knn.to_vec(), "--resize", "0"),
        (lincls, knn.to_vec(), "--size", "0"),
        (lincls, knn.to_vec(), "--temperature", "0"),
        (lincls, knn.to_vec(), "--temperature", "nan"),
        (lincls, knn.to_vec(), "--dist-timeout", "0"),
        (lincls, ltrain.to_vec(), "--epochs", "0"),
        (lincls, ltrain.to_vec(), "--lr", "-0.1"),
        (lincls, ltrain.to_vec(), "--lr", "inf"),
        (lincls, ltrain.to_vec(), "--weight-decay", "-1"),
        (lincls, ltrain.to_vec(), "--train-size", "0"),
        (train, vec!["-c", tiny], "--max-epochs", "0"),
        (train, vec!["bench-data"], "--batches", "0"),
        (train, vec!["bench-data"], "--workers", "0"),
        (train, vec!["bench-step", "-c", tiny], "--steps", "0"),
        (
            train,
            vec!["check-step", "--weights", "w", "--reference", "r"],
            "--loss-tolerance",
            "-1",
        ),
        (
            train,
            vec!["check-step", "--weights", "w", "--reference", "r"],
            "--codes-tolerance",
            "nan",
        ),
        (train, vec!["bench-sinkhorn"], "--rows", "0"),
        (train, vec!["bench-sinkhorn"], "--prototypes", "0"),
        (train, vec!["bench-sinkhorn"], "--repeats", "0"),
        (train, vec!["make-synthetic", "out"], "--size", "2"),
        (
            train,
            vec!["make-synthetic", "out"],
            "--train-per-class",
            "0",
        ),
        (fetch, vec!["list"], "--connect-timeout", "0"),
        (fetch, vec!["list"], "--read-timeout", "-5"),
        (fetch, vec!["list"], "--retry-wait", "-1"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (bin, args, flag, value) in flags {
        // `--lr=-0.1`: a value that starts with `-` needs the `=` form on any clap command line.
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("{flag}={value}"));
        let o = Command::new(bin)
            .current_dir(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains(&format!("invalid value '{value}' for '{flag}")),
            "{args:?}: {err}"
        );
    }
    // Config keys, from the file or an override.
    let keys: Vec<(&str, &str, &str, &str)> = vec![
        (
            train,
            tiny,
            "model.head.epsilon=.nan",
            "model.head.epsilon NaN: must be a finite number above 0",
        ),
        (
            train,
            tiny,
            "model.head.temperature=0",
            "model.head.temperature 0: must be",
        ),
        (
            train,
            tiny,
            "model.head.sinkhorn_iterations=0",
            "model.head.sinkhorn_iterations 0: must be at least 1",
        ),
        (
            train,
            tiny,
            "lr_scheduler.learning_rate=-1",
            "lr_scheduler.learning_rate -1: must be",
        ),
        (
            train,
            tiny,
            "lr_scheduler.eta_min=-1",
            "lr_scheduler.eta_min -1: must be",
        ),
        (
            train,
            tiny,
            "optimizer.momentum=1",
            "optimizer.momentum 1: must be at least 0 and below 1",
        ),
        (
            train,
            tiny,
            "optimizer.lars_coeff=0",
            "optimizer.lars_coeff 0: must be",
        ),
        (
            train,
            tiny,
            "log_config.interval=0",
            "log_config.interval 0: must be at least 1",
        ),
        (
            train,
            tiny,
            "dataloader.train.dataset.color_strength=-1",
            "color_strength -1: must be",
        ),
        (
            lincls,
            clas,
            "optimizer.momentum=-0.5",
            "optimizer.momentum -0.5: must be",
        ),
        (
            lincls,
            clas,
            "dataloader.train.sampler.batch_size=0",
            "dataloader.train.sampler.batch_size 0: must be at least 1",
        ),
        (
            lincls,
            clas,
            "optimizer.weight_decay=-1",
            "optimizer.weight_decay -1: must be",
        ),
        (
            lincls,
            clas,
            "dataloader.val.dataset.transforms.1.size=0",
            "dataloader.val.dataset.transforms.1.size 0: must be at least 1",
        ),
    ];
    for (bin, config, over, want) in keys {
        let mut args = vec![];
        if bin == lincls {
            args.extend(["train", "--random-init", "50"]);
        }
        args.extend(["-c", config, "-o", over]);
        if bin == lincls {
            // Its data is read after the config is checked.
            args.extend(["--data", "nowhere"]);
        }
        let o = Command::new(bin)
            .current_dir(dir.path())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert!(last.contains(want), "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}
