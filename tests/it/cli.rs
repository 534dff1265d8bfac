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
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (
            vec![missing.as_os_str(), out.as_os_str()],
            "nope.pdparams: No such file",
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
        assert!(!out.exists());
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
