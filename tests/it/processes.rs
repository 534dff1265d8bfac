//! Runs of several OS processes on 127.0.0.1, launched with torchrun's variables: the same
//! weights as the same ranks in one process, a killed or stopped process ending the others
//! (and `--resume` continuing with both), and the launch errors a user meets — each run
//! bounded in time (a process still alive at its deadline is killed and the test fails).

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TRAIN: &str = env!("CARGO_BIN_EXE_swav-train");
const LINCLS: &str = env!("CARGO_BIN_EXE_swav-lincls");

/// The tiny model and run of `pretrain.rs`, as overrides: 62 iterations of 16 images per epoch
/// on the built-in synthetic set (made under the output folder), a queue from the second epoch.
fn args(out: &Path, epochs: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["-c", crate::pretrain::TINY_CONFIG, "--workers", "1", "-q"]
        .map(String::from)
        .to_vec();
    let overrides = crate::pretrain::TINY_MODEL
        .iter()
        .map(|s| s.to_string())
        .chain([
            format!("epochs={epochs}"),
            "model.head.queue_length=16".to_string(),
            "model.head.epoch_queue_starts=1".into(),
            "dataloader.train.sampler.batch_size=8".into(),
            "dataloader.train.dataset.size_crops=[32, 16]".into(),
            "dataloader.train.dataset.num_crops=[2, 2]".into(),
            "model.head.num_crops=[2, 2]".into(),
            "checkpoint.interval=1".into(),
            format!("output_dir={}", out.display()),
        ]);
    for o in overrides {
        a.extend(["-o".into(), o]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// A port nobody listens on at the time of asking.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `swav-train` as process `rank` of `world`, torchrun's variables pointing at `port`.
fn spawn(rank: usize, world: usize, port: u16, args: &[String]) -> Child {
    spawn_tool(TRAIN, rank, world, port, args)
}

/// `tool` as process `rank` of `world`, torchrun's variables pointing at `port`.
fn spawn_tool(tool: &str, rank: usize, world: usize, port: u16, args: &[String]) -> Child {
    Command::new(tool)
        .args(args)
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for `child`, killing it (and failing) if it runs past `limit`.
fn finish(mut child: Child, limit: Duration, what: &str) -> (Output, Duration) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} still ran after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let elapsed = start.elapsed();
    (child.wait_with_output().unwrap(), elapsed)
}

/// `tool` as both processes of a run of two on a fresh port, each with `args`, waited for
/// (each within `limit`): their outputs, process 0's first.
fn run_two(tool: &str, args: &[String], limit: Duration, what: &str) -> [Output; 2] {
    let port = free_port();
    let p1 = spawn_tool(tool, 1, 2, port, args);
    let p0 = spawn_tool(tool, 0, 2, port, args);
    let (o1, _) = finish(p1, limit, &format!("{what}: process 1"));
    let (o0, _) = finish(p0, limit, &format!("{what}: process 0"));
    [o0, o1]
}

/// Wait until the run writing `out` has made its first checkpoint.
fn wait_for_first_checkpoint(out: &Path) {
    let start = Instant::now();
    while !out.join("checkpoints/epoch_0001").is_dir() {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "no first checkpoint"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one error line of a failed process, checked to be the whole of its stderr.
fn error_line(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(o));
    let e = stderr(o);
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    assert!(e.starts_with("swav-train: error: "), "{e}");
    e
}

/// The model's tensors of a run's latest checkpoint, by name.
fn weights(run: &Path) -> Vec<(String, Vec<f32>)> {
    let latest = swav::train::state::latest(run).expect("a checkpoint");
    let t = swav::model::load::burn_tensors(&latest).unwrap();
    let mut v: Vec<_> = t
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.to_f32().unwrap()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Two processes of one CPU rank each train as two CPU ranks of one process do: after two
/// epochs (the queue on in the second) the weights are bit-identical — the same shards, the
/// same sums (two addends: exact in any order), the same queue.
#[test]
fn two_processes_train_as_two_ranks_of_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let (multi, single) = (dir.path().join("multi"), dir.path().join("single"));
    let a = args(&multi, 2, &["--dist-timeout", "60"]);
    let [o0, o1] = run_two(TRAIN, &a, Duration::from_secs(300), "two processes");
    for (o, r) in [(&o0, 0), (&o1, 1)] {
        assert!(o.status.success(), "process {r}: {}", stderr(o));
    }
    // Process 0 alone writes; process 1's stdout stays empty (no engine chatter either).
    assert!(String::from_utf8_lossy(&o0.stdout).contains("trained 2 epochs"));
    assert_eq!(String::from_utf8_lossy(&o1.stdout), "");
    let o = Command::new(TRAIN)
        .args(args(&single, 2, &["--device", "cpu,cpu"]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (m, s) = (weights(&multi), weights(&single));
    assert_eq!(m.len(), s.len());
    assert!(m.len() > 50, "{} tensors", m.len());
    for ((n1, v1), (n2, v2)) in m.iter().zip(&s) {
        assert_eq!(n1, n2);
        assert!(
            v1.iter().zip(v2).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{n1} differs"
        );
    }
    let q = |run: &Path| {
        std::fs::read(swav::train::state::latest(run).unwrap().join("queue.f32")).unwrap()
    };
    assert_eq!(q(&multi), q(&single), "the queues differ");
}

/// A process killed mid-epoch ends the other at once, with one line naming its rank; both
/// then resume from the last checkpoint and finish. A stopped (stalled) process ends the other
/// after `--dist-timeout`, named as the one behind.
#[test]
fn a_killed_or_stalled_process_ends_the_run_and_resume_continues() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let port = free_port();
    let a = args(&out, 3, &["--dist-timeout", "20"]);
    let p0 = spawn(0, 2, port, &a);
    let mut p1 = spawn(1, 2, port, &a);
    wait_for_first_checkpoint(&out);
    std::thread::sleep(Duration::from_millis(500));
    p1.kill().unwrap();
    let _ = p1.wait();
    // Well within the timeout: the closed connection says it all.
    let (o0, took) = finish(
        p0,
        Duration::from_secs(60),
        "process 0 after its peer was killed",
    );
    let e = error_line(&o0);
    assert!(e.contains("rank 1 left the run"), "{e}");
    assert!(took < Duration::from_secs(15), "took {took:?}");

    // Both resume from the checkpoint of epoch 1 (or 2) and finish the run.
    let r = args(&out, 3, &["--dist-timeout", "60", "--resume"]);
    let [o0, o1] = run_two(TRAIN, &r, Duration::from_secs(300), "resumed");
    assert!(
        o0.status.success() && o1.status.success(),
        "{} / {}",
        stderr(&o0),
        stderr(&o1)
    );
    let st = swav::train::state::read_state(&swav::train::state::latest(&out).unwrap()).unwrap();
    assert_eq!((st.epoch, st.devices), (3, 2));

    // A stopped process: the other waits `--dist-timeout` in a collective, then names it.
    let stalled = dir.path().join("stalled");
    let a = args(&stalled, 3, &["--dist-timeout", "5"]);
    let port = free_port();
    let (p0, mut p1) = (spawn(0, 2, port, &a), spawn(1, 2, port, &a));
    wait_for_first_checkpoint(&stalled);
    let pid = p1.id().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let (o0, took) = finish(
        p0,
        Duration::from_secs(60),
        "process 0 beside a stopped peer",
    );
    let _ = p1.kill();
    let _ = p1.wait();
    let e = error_line(&o0);
    assert!(e.contains("rank 0 waited 5 s in collective"), "{e}");
    assert!(e.contains("rank 1 sent nothing for"), "{e}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// Launch mistakes: one line each, exit code 2, within the timeout.
#[test]
fn launch_errors_are_one_line_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let a = args(&out, 1, &["--dist-timeout", "2"]);
    let limit = Duration::from_secs(60);

    // A missing variable.
    let o = Command::new(TRAIN)
        .args(&a)
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .env("MASTER_PORT", "29500")
        .env_remove("MASTER_ADDR")
        .output()
        .unwrap();
    assert!(error_line(&o).contains("MASTER_ADDR is not set"));

    // NCCL asked for CPU ranks: refused before any rendezvous.
    let mut b = a.clone();
    b.extend(["--collective".into(), "nccl".into()]);
    let (o, _) = finish(spawn(0, 2, free_port(), &b), limit, "NCCL on the CPU");
    let e = error_line(&o);
    assert!(
        e.contains("--collective nccl: NCCL needs CUDA devices"),
        "{e}"
    );

    // swav-lincls runs `train` across processes, not the rest: it says so instead of running
    // twice.
    let o = Command::new(LINCLS)
        .args(["knn", "--data", "nowhere"])
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", "29500")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`swav-lincls knn` runs in one process (only `train` without"),
        "{}",
        stderr(&o)
    );
    // Nor `train --cache-features`: said before any rendezvous.
    let o = Command::new(LINCLS)
        .args([
            "train",
            "--cache-features",
            "--random-init",
            "18",
            "--data",
            "nowhere",
        ])
        .env("RANK", "1")
        .env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port().to_string())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("`swav-lincls train --cache-features` runs in one process"),
        "{}",
        stderr(&o)
    );

    // A master that never comes.
    let port = free_port();
    let (o, took) = finish(spawn(1, 2, port, &a), limit, "a rank without master");
    let e = error_line(&o);
    assert!(
        e.contains(&format!("no master at 127.0.0.1:{port} after")),
        "{e}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // A rank that never joins.
    let (o, _) = finish(spawn(0, 2, free_port(), &a), limit, "a master alone");
    let e = error_line(&o);
    assert!(
        e.contains("rank 1 did not join within 2 s (WORLD_SIZE=2)"),
        "{e}"
    );

    // A port in use.
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let (o, _) = finish(spawn(0, 2, port, &a), limit, "a master on a busy port");
    assert!(error_line(&o).contains(&format!("MASTER_PORT {port}: cannot listen")));
    drop(busy);

    // Processes that disagree: both end, naming the difference.
    let cases: [(&[&str], usize, &str); 2] = [
        (
            &["-o", "model.head.epsilon=0.03"],
            2,
            "`model.head.epsilon`: 0.03 there, 0.05 at rank 0",
        ),
        (
            &[],
            3,
            "rank 1 was started with WORLD_SIZE=3, rank 0 with WORLD_SIZE=2",
        ),
    ];
    for (extra, world, expected) in cases {
        let port = free_port();
        let mut b = a.clone();
        b.extend(extra.iter().map(|s| s.to_string()));
        let p0 = spawn(0, 2, port, &a);
        let p1 = spawn(1, world, port, &b);
        let (o1, _) = finish(p1, limit, "a disagreeing process 1");
        let (o0, _) = finish(p0, limit, "process 0 beside it");
        for o in [&o0, &o1] {
            let e = error_line(o);
            assert!(e.contains(expected), "{e}");
        }
    }
}

/// The linear evaluation as two processes of one CPU rank each, against two CPU ranks in one
/// process (the same global batches, split the same way): the same metrics every epoch and the
/// same classifier, bit for bit (every sum has two addends, exact in any order); process 0
/// alone prints and writes. `--evaluate-only` of the saved classifier across two processes
/// scores what one process scores.
#[test]
fn two_processes_evaluate_as_two_ranks_of_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = crate::image_set(&dir.path().join("syn"), 32, 4, 2, 3);
    let limit = Duration::from_secs(300);
    // 40 training images in global batches of 14 (7 per rank): 14, 14, 12.
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--random-init",
            "18",
            "--width",
            "4",
            "--epochs",
            "2",
            "--lr",
            "0.5",
            "--train-size",
            "24",
            "--resize",
            "28",
            "--size",
            "24",
            "--batch-size",
            "7",
            "--workers",
            "1",
            "--dist-timeout",
            "60",
        ]
        .map(String::from)
        .to_vec();
        a.extend(["--data".into(), data.display().to_string()]);
        a.extend(["--output-dir".into(), out.display().to_string()]);
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let o = Command::new(LINCLS)
        .args(args(&one, &["--device", "cpu,cpu"]))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let [o0, o1] = run_two(LINCLS, &args(&two, &[]), limit, "lincls");
    assert!(o0.status.success(), "{}", stderr(&o0));
    assert!(o1.status.success(), "{}", stderr(&o1));
    assert!(o1.stdout.is_empty(), "process 1 prints nothing");
    // Every epoch's numbers but the speed.
    let numbers = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("images_per_second");
                v
            })
            .collect()
    };
    let metrics = |run: &Path| std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let expected = numbers(&metrics(&one));
    assert_eq!(expected.len(), 2);
    assert_eq!(numbers(&metrics(&two)), expected);
    assert_eq!(numbers(&String::from_utf8_lossy(&o0.stdout)), expected);
    for f in ["best.safetensors", "last.safetensors"] {
        let read = |run: &Path| std::fs::read(run.join(f)).unwrap();
        assert!(read(&one) == read(&two), "{f} differs");
    }

    // --evaluate-only of the saved classifier, across two processes.
    let best = two.join("best.safetensors").display().to_string();
    let eval = ["--load", &best, "--evaluate-only"];
    let o = Command::new(LINCLS)
        .args(args(&one, &[&eval[..], &["--device", "cpu,cpu"]].concat()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let [o0, o1] = run_two(LINCLS, &args(&two, &eval), limit, "lincls --evaluate-only");
    assert!(
        o0.status.success() && o1.status.success(),
        "{}",
        stderr(&o0)
    );
    assert_eq!(o0.stdout, o.stdout, "top-1 and top-5");
    assert!(o1.stdout.is_empty());
}

/// Unreadable images leave a process's part of a batch too small for a step while another
/// process's is not: every rank skips that step together (each process sees only its part),
/// instead of one process stepping and waiting for the other until the timeout.
#[test]
fn a_step_too_small_anywhere_is_skipped_by_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let data = crate::image_set(&dir.path().join("syn"), 32, 10, 0, 5);
    // Four images in five unreadable: parts of 8 images often hold fewer than 2 readable ones.
    let mut images: Vec<std::path::PathBuf> = walk(&data.join("train"));
    images.sort();
    for (i, p) in images.iter().enumerate() {
        if i % 5 != 0 {
            std::fs::write(p, b"\xff\xd8 not a JPEG").unwrap();
        }
    }
    let out = dir.path().join("out");
    let root = format!(
        "dataloader.train.dataset.dataroot={}",
        data.join("train").display()
    );
    let mut a = args(&out, 1, &["--dist-timeout", "60", "-o", &root]);
    a.retain(|s| s != "-q");
    let [o0, o1] = run_two(
        TRAIN,
        &a,
        Duration::from_secs(300),
        "a run with unreadable images",
    );
    assert!(o1.status.success(), "{}", stderr(&o1));
    assert!(o0.status.success(), "{}", stderr(&o0));
    let skipped = stderr(&o0)
        .lines()
        .filter(|l| l.contains("step skipped by every rank"))
        .count();
    assert!(skipped > 0, "{}", stderr(&o0));
    assert!(out.join("metrics.jsonl").is_file());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
