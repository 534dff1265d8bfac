//! swav-fetch against servers on 127.0.0.1 with injected faults (no test touches the network).

use crate::fixture;
use crate::server::{self, TestServer};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use swav::fetch::{self, Artifact, FetchError, FetchOptions, HttpOptions, Registry};

const FILE: &str = "fair_swav_tiny.pth.tar";

fn data() -> Vec<u8> {
    std::fs::read(fixture(FILE)).unwrap()
}

/// A registry with one artifact at `url` (relative to the server), checked like a real one.
fn registry(srv: &TestServer, url: &str, sha256: Option<&str>) -> (Registry, Artifact) {
    let mut expect = BTreeMap::new();
    expect.insert("conv1.weight".to_string(), vec![4, 3, 7, 7]);
    expect.insert("prototypes.weight".to_string(), vec![30, 16]);
    let a = Artifact {
        name: "tiny".into(),
        source: "test".into(),
        urls: vec![if url.starts_with("gdrive:") {
            url.to_string()
        } else {
            format!("{}{url}", srv.base)
        }],
        file: FILE.into(),
        format: "torch".into(),
        arch: "resnet50-tiny".into(),
        kind: "pretrain".into(),
        top1: None,
        size: None,
        sha256: sha256.map(str::to_string),
        min_tensors: 300,
        expect,
    };
    let r = Registry {
        gdrive_base: format!("{}/uc", srv.base),
        artifacts: vec![a.clone()],
    };
    (r, a)
}

fn opts(root: &Path) -> FetchOptions {
    FetchOptions {
        root: root.to_path_buf(),
        offline: false,
        http: HttpOptions {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            retries: 3,
            retry_wait: Duration::from_millis(20),
            max_wait: Duration::from_secs(5),
        },
        quiet: true,
    }
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Nothing but the verified file and its record (no partials, no temp files).
fn assert_clean(root: &Path) {
    let dir = root.join("weights/tiny");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(
            n == FILE || n == "index.json" || n.ends_with(".lock"),
            "left behind: {n}"
        );
    }
}

#[test]
fn normal_download_records_the_hash_and_is_cached_after() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let (r, a) = registry(&srv, "/file/x", None);
    let f = fetch::fetch(&r, &a, &opts(dir.path())).unwrap();
    assert_eq!(f.status, "downloaded");
    assert_eq!(f.sha256, sha(&data()));
    assert_eq!(f.hash_source, "first-download");
    assert_eq!(std::fs::read(&f.path).unwrap(), data());
    assert_clean(dir.path());
    // Second run: from the cache, verified, nothing sent; offline works too.
    let before = srv.sent.load(Ordering::SeqCst);
    let mut o = opts(dir.path());
    o.offline = true;
    let g = fetch::fetch(&r, &a, &o).unwrap();
    assert_eq!(g.status, "cached");
    assert_eq!(srv.sent.load(Ordering::SeqCst), before);
    // A corrupted cache file fails against the recorded hash and is fetched again.
    let mut bytes = data();
    bytes[1000] ^= 1;
    std::fs::write(&f.path, &bytes).unwrap();
    let results = fetch::verify(&r, dir.path(), Some("tiny")).unwrap();
    assert!(
        matches!(results[0].1, Err(FetchError::Checksum { .. })),
        "{:?}",
        results[0].1
    );
    let h = fetch::fetch(&r, &a, &opts(dir.path())).unwrap();
    assert_eq!(h.status, "downloaded");
    assert_eq!(std::fs::read(&h.path).unwrap(), data());
}

#[test]
fn offline_without_cache_says_what_is_missing() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let (r, a) = registry(&srv, "/file/x", None);
    let mut o = opts(dir.path());
    o.offline = true;
    let e = fetch::fetch(&r, &a, &o).unwrap_err();
    assert!(
        e.to_string()
            .contains("not in the cache and offline mode is on"),
        "{e}"
    );
    assert!(srv.seen.lock().unwrap().is_empty());
}

#[test]
fn a_cut_connection_resumes_without_resending() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let (r, a) = registry(&srv, "/cut/x", None);
    let f = fetch::fetch(&r, &a, &opts(dir.path())).unwrap();
    assert_eq!(std::fs::read(&f.path).unwrap(), data());
    let seen = srv.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].status, 206);
    assert_eq!(
        seen[1].range.as_deref(),
        Some(format!("bytes={}-", data().len() / 2).as_str())
    );
    assert_eq!(
        srv.sent.load(Ordering::SeqCst),
        data().len(),
        "bytes were sent twice"
    );
    assert_eq!(f.received as usize, data().len());
    assert_clean(dir.path());
}

#[test]
fn a_server_that_ignores_range_restarts_from_zero() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let (r, a) = registry(&srv, "/cutnorange/x", None);
    let f = fetch::fetch(&r, &a, &opts(dir.path())).unwrap();
    assert_eq!(std::fs::read(&f.path).unwrap(), data());
    let seen = srv.seen.lock().unwrap().clone();
    assert_eq!(seen[1].status, 200);
    assert!(seen[1].range.is_some());
    assert_eq!(f.received as usize, data().len() / 2 + data().len());
}

/// A server that breaks at the same byte on every attempt — resumed with Range, or starting
/// over because it ignores Range — makes no progress after the first attempt: the download
/// ends after `retries` more, with a line naming the cause, instead of retrying forever.
#[test]
fn a_server_that_always_breaks_at_the_same_byte_runs_out_of_attempts() {
    for route in ["/alwayscut/x", "/alwayscutnorange/x"] {
        let srv = server::start(data());
        let dir = tempfile::tempdir().unwrap();
        let (r, a) = registry(&srv, route, None);
        // A resumed request that breaks at once waits out the read timeout: a short one.
        let mut o = opts(dir.path());
        o.http.read_timeout = Duration::from_secs(1);
        let t = Instant::now();
        let e = fetch::fetch(&r, &a, &o).unwrap_err().to_string();
        assert!(e.contains("gave up after 4 attempts"), "{route}: {e}");
        assert!(t.elapsed() < Duration::from_secs(30), "{route}");
        // The first attempt (progress, to the middle), then 3 that reach no further.
        let seen = srv.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 4, "{route}: {seen:?}");
    }
}

#[test]
fn retries_429_after_its_retry_after_and_503s() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let (r, a) = registry(&srv, "/429/x", None);
    let t = Instant::now();
    fetch::fetch(&r, &a, &opts(dir.path())).unwrap();
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 not honoured"
    );
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let (r, a) = registry(&srv, "/503/x", None);
    fetch::fetch(&r, &a, &opts(dir.path())).unwrap();
    let statuses: Vec<u16> = srv.seen.lock().unwrap().iter().map(|s| s.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
}

#[test]
fn permanent_failures_save_nothing() {
    let srv = server::start(data());
    for (route, expect) in [
        ("/404/x", "HTTP 404"),
        ("/html/x", "HTML page instead of the file"),
        ("/sneaky/x", "HTML page instead of the file"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (r, a) = registry(&srv, route, None);
        let e = fetch::fetch(&r, &a, &opts(dir.path())).unwrap_err();
        assert!(e.to_string().contains(expect), "{route}: {e}");
        assert!(!dir.path().join("weights/tiny").join(FILE).exists());
        assert_clean(dir.path());
    }
}

#[test]
fn google_drive_confirmation_and_quota() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let (r, a) = registry(&srv, "gdrive:1budFSoQqZz1Idyej", None);
    let f = fetch::fetch(&r, &a, &opts(dir.path())).unwrap();
    assert_eq!(std::fs::read(&f.path).unwrap(), data());
    let urls: Vec<String> = srv
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.url.clone())
        .collect();
    assert_eq!(urls[0], "/uc?export=download&id=1budFSoQqZz1Idyej");
    assert_eq!(
        urls[1],
        "/download?id=1budFSoQqZz1Idyej&export=download&confirm=t&uuid=0b6a-42"
    );

    let dir = tempfile::tempdir().unwrap();
    let (mut r, a) = registry(&srv, "gdrive:1budFSoQqZz1Idyej", None);
    r.gdrive_base = format!("{}/quota/uc", srv.base);
    let e = fetch::fetch(&r, &a, &opts(dir.path())).unwrap_err();
    assert!(matches!(e, FetchError::Quota { .. }), "{e}");
    assert!(e.to_string().contains("too many users"), "{e}");
}

#[test]
fn a_stalled_server_times_out() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let (r, a) = registry(&srv, "/stall/x", None);
    let mut o = opts(dir.path());
    o.http.read_timeout = Duration::from_millis(500);
    o.http.retries = 1;
    let t = Instant::now();
    let e = fetch::fetch(&r, &a, &o).unwrap_err();
    assert!(
        e.to_string().contains("timed out") || e.to_string().contains("connection broke"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn a_server_that_never_answers_times_out() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let (r, a) = registry(&srv, "/mute/x", None);
    let mut o = opts(dir.path());
    o.http.read_timeout = Duration::from_millis(500);
    o.http.retries = 1;
    let t = Instant::now();
    let e = fetch::fetch(&r, &a, &o).unwrap_err();
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert_clean(dir.path());
}

#[test]
fn wrong_hashes_and_wrong_files_are_refused() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let (r, a) = registry(&srv, "/file/x", Some(&"0".repeat(64)));
    let e = fetch::fetch(&r, &a, &opts(dir.path())).unwrap_err();
    assert!(matches!(e, FetchError::Checksum { .. }), "{e}");
    assert!(!dir.path().join("weights/tiny").join(FILE).exists());
    assert_clean(dir.path());
    // A real checkpoint of another architecture fails the structural check.
    let srv = server::start(std::fs::read(fixture("fair_swav_tiny_r18.pth.tar")).unwrap());
    let (r, a) = registry(&srv, "/file/x", None);
    let e = fetch::fetch(&r, &a, &opts(dir.path())).unwrap_err();
    assert!(e.to_string().contains("not the expected checkpoint"), "{e}");
}

#[test]
fn mirrors_are_tried_in_order() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let (r, mut a) = registry(&srv, "/404/x", None);
    a.urls.push(format!("{}/file/x", srv.base));
    let f = fetch::fetch(&r, &a, &opts(dir.path())).unwrap();
    assert!(f.url.ends_with("/file/x"));
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_swav-fetch")
}

fn write_registry(dir: &Path, srv: &TestServer, route: &str) -> std::path::PathBuf {
    let path = dir.join("registry.toml");
    std::fs::write(
        &path,
        format!(
            "gdrive_base = \"{base}/uc\"\n[[artifact]]\nname = \"tiny\"\nurls = [\"{base}{route}\"]\nfile = \"{FILE}\"\nformat = \"torch\"\nmin_tensors = 300\nexpect = {{ \"conv1.weight\" = [4, 3, 7, 7] }}\n",
            base = srv.base
        ),
    )
    .unwrap();
    path
}

#[test]
fn eight_processes_make_one_download() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let reg = write_registry(dir.path(), &srv, "/slow/x");
    let cache = dir.path().join("cache");
    let children: Vec<_> = (0..8)
        .map(|_| {
            Command::new(bin())
                .args(["tiny", "--json", "--retry-wait", "0.05"])
                .arg("--registry")
                .arg(&reg)
                .arg("--cache-dir")
                .arg(&cache)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut waited = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["sha256"], sha(&data()));
        waited += String::from_utf8_lossy(&out.stderr).contains("event=waiting") as usize;
    }
    let gets = srv.seen.lock().unwrap().len();
    assert_eq!(gets, 1, "one transfer expected");
    assert_eq!(srv.sent.load(Ordering::SeqCst), data().len());
    assert!(waited >= 1, "no process reported waiting for the lock");
}

#[test]
fn killed_at_random_points_never_leaves_a_corrupt_file() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let reg = write_registry(dir.path(), &srv, "/slow/x");
    let cache = dir.path().join("cache");
    let target = cache.join("weights/tiny").join(FILE);
    // Deterministic "random" kill points across the ~0.7 s transfer.
    let mut x = 0x2545f491u64;
    for _ in 0..6 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(50 + x % 600);
        let mut child = Command::new(bin())
            .args(["tiny", "-q"])
            .arg("--registry")
            .arg(&reg)
            .arg("--cache-dir")
            .arg(&cache)
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let _ = child.wait();
        if target.exists() {
            assert_eq!(
                std::fs::read(&target).unwrap(),
                data(),
                "corrupt file installed"
            );
            std::fs::remove_file(&target).unwrap();
        }
    }
    let out = Command::new(bin())
        .args(["tiny", "--json"])
        .arg("--registry")
        .arg(&reg)
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&target).unwrap(), data());
    // Resumes happened: far fewer bytes went out than 7 whole transfers.
    let resumed = srv
        .seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.status == 206)
        .count();
    assert!(resumed >= 1, "no resume in 7 runs");
}

#[test]
fn cli_errors_are_one_line_with_exit_2() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let reg = write_registry(dir.path(), &srv, "/html/x");
    let out = Command::new(bin())
        .arg("tiny")
        .arg("--registry")
        .arg(&reg)
        .arg("--cache-dir")
        .arg(dir.path().join("c"))
        .args(["--retries", "0", "-q"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("HTML page"), "{err}");
    let out = Command::new(bin())
        .arg("no_such_weights")
        .arg("--cache-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown artifact 'no_such_weights'"));
}

#[test]
fn list_gc_rm_and_url_artifacts() {
    let srv = server::start(data());
    let dir = tempfile::tempdir().unwrap();
    let reg = write_registry(dir.path(), &srv, "/file/x");
    let cache = dir.path().join("cache");
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .arg("--registry")
            .arg(&reg)
            .arg("--cache-dir")
            .arg(&cache)
            .output()
            .unwrap()
    };
    assert!(run(&["tiny", "-q"]).status.success());
    let out = run(&["list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["cached"], true);
    assert_eq!(rows[0]["verified"], true);
    // A stray partial is collected; the verified file stays.
    std::fs::write(
        cache.join("weights/tiny").join(format!("{FILE}.1-2.part")),
        b"xx",
    )
    .unwrap();
    let out = run(&["gc", "--json"]);
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(g["partials"], 1);
    assert!(cache.join("weights/tiny").join(FILE).exists());
    assert!(run(&["verify"]).status.success());
    assert!(run(&["rm", "tiny"]).status.success());
    assert!(!cache.join("weights/tiny").exists());
    // --url with --sha256, --to and --convert.
    let to = dir.path().join("copy.pth.tar");
    let conv = dir.path().join("w.safetensors");
    let url = format!("{}/file/{FILE}", srv.base);
    let out = run(&[
        "--url",
        &url,
        "--sha256",
        &sha(&data()),
        "-q",
        "--to",
        to.to_str().unwrap(),
        "--convert",
        conv.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&to).unwrap(), data());
    assert!(
        swav::checkpoint::Checkpoint::open(&conv)
            .unwrap()
            .tensors
            .len()
            > 200
    );
}
