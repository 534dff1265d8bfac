//! Every corpus case fails cleanly: through the library with the expected error, and through
//! `swav-convert` with exit code 2, one line naming the file, and no output file.

use crate::corpus;
use std::process::Command;
use std::time::{Duration, Instant};
use swav::checkpoint::Checkpoint;

/// Wall-clock bound for refusing one hostile file (the issue's requirement).
const REFUSE_WITHIN: Duration = Duration::from_secs(2);

#[test]
fn library_refuses_each_case() {
    let dir = tempfile::tempdir().unwrap();
    for case in corpus::cases() {
        let path = dir.path().join(case.name);
        std::fs::write(&path, &case.bytes).unwrap();
        let t = Instant::now();
        let err = match Checkpoint::open(&path) {
            Ok(ck) => panic!("{}: accepted ({} tensors)", case.name, ck.tensors.len()),
            Err(e) => e.to_string(),
        };
        assert!(
            t.elapsed() < REFUSE_WITHIN,
            "{}: took {:?}",
            case.name,
            t.elapsed()
        );
        assert!(
            err.contains(case.expect),
            "{}: error '{err}' lacks '{}'",
            case.name,
            case.expect
        );
        assert!(
            err.contains(case.name),
            "{}: error '{err}' does not name the file",
            case.name
        );
        assert!(
            !err.contains('\n'),
            "{}: error is not one line: {err}",
            case.name
        );
    }
}

#[test]
fn cli_exits_2_in_bounded_memory_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_swav-convert");
    for case in corpus::cases() {
        let input = dir.path().join(case.name);
        std::fs::write(&input, &case.bytes).unwrap();
        let output = dir.path().join("out.safetensors");
        // 256 MiB of data segment (heap) at most: an allocation past it fails the run.
        let t = Instant::now();
        let out = Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -d 262144 && exec "$0" "$1" "$2""#)
            .arg(bin)
            .arg(&input)
            .arg(&output)
            .output()
            .unwrap();
        let took = t.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: status {:?}, stderr {stderr}",
            case.name,
            out.status
        );
        assert_eq!(stderr.lines().count(), 1, "{}: {stderr}", case.name);
        assert!(
            stderr.contains(case.name) && stderr.contains(case.expect),
            "{}: {stderr}",
            case.name
        );
        assert!(!output.exists(), "{}: output written", case.name);
        assert!(took < REFUSE_WITHIN, "{}: took {took:?}", case.name);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{}: temp files left: {leftovers:?}",
            case.name
        );
        std::fs::remove_file(&input).unwrap();
    }
}
