//! `swav-fetch`: published SwAV weights into a verified cache.
//!
//! [`fetch`] takes an [`Artifact`] (from the [`registry`] or a bare URL), and returns a file
//! that is complete, hashed (against the published hash, or against the hash this cache
//! recorded the first time) and structurally a checkpoint of the expected architecture.
//! Downloads resume across processes, are retried, and never install an HTML page.

pub mod cache;
pub mod download;
pub mod html;
pub mod registry;
pub mod show;

pub use download::HttpOptions;
pub use registry::{Artifact, Registry};

use crate::checkpoint::Checkpoint;
use crate::layout::{self, Layout};
use crate::report::Reporter;
use crate::selection::{select, Selection};
use cache::{Record, Slot};
use serde::Serialize;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a fetch failed.
#[derive(Debug, Error)]
pub enum FetchError {
    #[error("unknown artifact '{0}' (see `swav-fetch list`)")]
    Unknown(String),
    #[error("{name} is not in the cache and offline mode is on (--offline / SWAV_OFFLINE); it would be at {}", path.display())]
    Offline { name: String, path: PathBuf },
    #[error("HTTP {status} from {url}")]
    Http { url: String, status: u16 },
    #[error("{url} answered with an HTML page instead of the file ({title:?}); nothing was saved")]
    Html { url: String, title: String },
    #[error("Google Drive refuses {url}: too many users have viewed or downloaded this file recently (quota); try again later or use another mirror")]
    Quota { url: String },
    #[error("{url} asks to sign in: the file is not shared publicly")]
    SignIn { url: String },
    #[error("{url}: file not found")]
    NotFound { url: String },
    #[error("{url}: {message}")]
    Network { url: String, message: String },
    #[error("{url}: got {got} bytes, expected {expected}")]
    Size {
        url: String,
        expected: u64,
        got: u64,
    },
    #[error("{}: sha256 {got} does not match the expected {expected} ({source_of})", path.display())]
    Checksum {
        path: PathBuf,
        expected: String,
        got: String,
        source_of: String,
    },
    #[error("{}: not the expected checkpoint: {message}", path.display())]
    Structure { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("every mirror failed: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Mirrors(Vec<FetchError>),
    #[error("{0}")]
    Other(String),
}

fn io_err(path: &Path, e: io::Error) -> FetchError {
    FetchError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Where and how to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Cache root ([`cache::default_root`] by default).
    pub root: PathBuf,
    /// Use only the cache.
    pub offline: bool,
    /// Network behaviour.
    pub http: HttpOptions,
    /// No log lines and no progress bar.
    pub quiet: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            root: cache::default_root(),
            offline: std::env::var("SWAV_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0"),
            http: HttpOptions::default(),
            quiet: false,
        }
    }
}

/// Download progress: `swav-fetch event=... name=ARTIFACT key=value` lines and a byte bar.
pub(crate) fn reporter(name: &str, quiet: bool) -> Reporter {
    Reporter::new("swav-fetch", quiet)
        .with_context("name", name)
        .with_label(name)
}

/// The download bar's indicatif template.
pub(crate) const BAR: &str = "{msg} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} [{wide_bar}]";

/// A fetched file.
#[derive(Debug, Clone, Serialize)]
pub struct Fetched {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
    /// `cached`, `downloaded` or `resumed`.
    pub status: String,
    /// `registry` (published hash) or `first-download` (recorded by this cache).
    pub hash_source: String,
    /// Bytes received over the network by this process.
    pub received: u64,
    /// Where a resumed download started.
    pub resumed_from: u64,
    pub url: String,
}

/// An artifact for a URL outside the registry.
pub fn url_artifact(
    url: &str,
    sha256: Option<String>,
    name: Option<String>,
) -> Result<Artifact, FetchError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| FetchError::Other(format!("bad URL {url}: {e}")))?;
    let file = parsed
        .path_segments()
        .and_then(|mut s| s.next_back().map(str::to_string))
        .filter(|f| !f.is_empty() && !f.starts_with('.'))
        .unwrap_or_else(|| "download".into());
    let name = name.unwrap_or_else(|| file.split('.').next().unwrap_or("download").to_string());
    let text = toml::to_string(&Registry {
        gdrive_base: String::new(),
        artifacts: vec![Artifact {
            name,
            source: "url".into(),
            urls: vec![url.to_string()],
            file,
            format: String::new(),
            arch: String::new(),
            kind: String::new(),
            top1: None,
            size: None,
            sha256,
            min_tensors: 0,
            expect: Default::default(),
        }],
    })
    .map_err(|e| FetchError::Other(e.to_string()))?;
    // Through the parser, so the same checks apply (safe file name, well-formed hash).
    let r = Registry::parse(&text).map_err(FetchError::Other)?;
    Ok(r.artifacts.into_iter().next().expect("one artifact"))
}

/// Get `a` into the cache (or find it there), verified.
pub fn fetch(
    registry: &Registry,
    a: &Artifact,
    opts: &FetchOptions,
) -> Result<Fetched, FetchError> {
    let report = reporter(&a.name, opts.quiet);
    let slot = Slot::new(&opts.root, &a.name, &a.file);
    if let Some(done) = cached(&slot, a, &report)? {
        return Ok(done);
    }
    if opts.offline {
        return Err(FetchError::Offline {
            name: a.name.clone(),
            path: slot.path(),
        });
    }
    let lock = slot.lock_file().map_err(|e| io_err(&slot.dir, e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            report.event(
                "waiting",
                &[("why", "another swav-fetch is downloading this file")],
            );
            lock.lock().map_err(|e| io_err(&slot.dir, e))?;
            if let Some(done) = cached(&slot, a, &report)? {
                return Ok(done);
            }
        }
        // No working lock (some network filesystems): go on; correctness does not need it.
        Err(fs::TryLockError::Error(e)) => report.event("no-lock", &[("why", &e.to_string())]),
    }
    let client = download::client(&opts.http)?;
    let part = slot.new_part();
    let mut sidecar = slot.claim(&part);
    let mut errors = Vec::new();
    for url in &a.urls {
        let url = registry.resolve(url);
        report.event("download", &[("url", &url)]);
        let d = match download::download(&client, &url, &part, sidecar.take(), &opts.http, &report)
        {
            Ok(d) => d,
            Err(e) => {
                report.event("failed", &[("url", &url), ("error", &e.to_string())]);
                errors.push(e);
                continue;
            }
        };
        match install(&slot, a, &part, &d, &report) {
            Ok(f) => return Ok(f),
            Err(e) => {
                let _ = fs::remove_file(&part);
                let _ = fs::remove_file(cache::sidecar_path(&part));
                report.event("rejected", &[("url", &url), ("error", &e.to_string())]);
                errors.push(e);
            }
        }
    }
    // Keep what can be resumed by a later run; drop anything else.
    let resumable =
        cache::sidecar_path(&part).exists() && fs::metadata(&part).is_ok_and(|m| m.len() > 0);
    if resumable {
        report.event("kept-partial", &[("path", &part.display().to_string())]);
    } else {
        let _ = fs::remove_file(&part);
        let _ = fs::remove_file(cache::sidecar_path(&part));
    }
    Err(if errors.len() == 1 {
        errors.pop().expect("one error")
    } else {
        FetchError::Mirrors(errors)
    })
}

/// A verified cached file, if there is one; an invalid one is removed.
fn cached(slot: &Slot, a: &Artifact, report: &Reporter) -> Result<Option<Fetched>, FetchError> {
    let path = slot.path();
    if !path.exists() {
        return Ok(None);
    }
    match verify_file(slot, a, &path) {
        Ok(r) => {
            report.event("cached", &[("path", &path.display().to_string())]);
            Ok(Some(Fetched {
                name: a.name.clone(),
                path,
                size: r.size,
                sha256: r.sha256,
                status: "cached".into(),
                hash_source: r.hash_source,
                received: 0,
                resumed_from: 0,
                url: r.url,
            }))
        }
        Err(e) => {
            report.event("invalid-cache", &[("error", &e.to_string())]);
            fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            Ok(None)
        }
    }
}

/// Check `got` against the published hash, else the one recorded at the first download.
/// Returns whether there was a hash to check.
fn check_hash(
    a: &Artifact,
    record: Option<&Record>,
    path: &Path,
    got: &str,
) -> Result<bool, FetchError> {
    let (expected, source) = match (&a.sha256, record) {
        (Some(h), _) => (h.to_ascii_lowercase(), "published"),
        (None, Some(r)) => (r.sha256.clone(), "recorded at the first download"),
        (None, None) => return Ok(false),
    };
    if expected != got {
        return Err(FetchError::Checksum {
            path: path.to_path_buf(),
            expected,
            got: got.to_string(),
            source_of: source.into(),
        });
    }
    Ok(true)
}

/// Where an artifact's hash comes from: `registry` (published) or `first-download`.
fn hash_source(a: &Artifact) -> &'static str {
    if a.sha256.is_some() {
        "registry"
    } else {
        "first-download"
    }
}

/// Check a cached file against the published or recorded size and hash, and its structure.
pub fn verify_file(slot: &Slot, a: &Artifact, path: &Path) -> Result<Record, FetchError> {
    let sha = crate::digest::sha256_file(path).map_err(|e| io_err(path, e))?;
    let size = fs::metadata(path).map_err(|e| io_err(path, e))?.len();
    let record = slot.record();
    check_hash(a, record.as_ref(), path, &sha)?;
    check_structure(a, path)?;
    let r = match record {
        Some(r) if r.sha256 == sha && r.size == size => r,
        _ => {
            let r = Record {
                file: a.file.clone(),
                size,
                sha256: sha,
                url: a.urls.first().cloned().unwrap_or_default(),
                hash_source: hash_source(a).into(),
                recorded_at: cache::now(),
            };
            slot.write_record(&r).map_err(|e| io_err(&slot.dir, e))?;
            r
        }
    };
    Ok(r)
}

/// Verify a finished download and move it into place.
fn install(
    slot: &Slot,
    a: &Artifact,
    part: &Path,
    d: &download::Downloaded,
    report: &Reporter,
) -> Result<Fetched, FetchError> {
    if let Some(size) = a.size {
        if d.size != size {
            return Err(FetchError::Size {
                url: d.url.clone(),
                expected: size,
                got: d.size,
            });
        }
    }
    let had_hash = check_hash(a, slot.record().as_ref(), part, &d.sha256)?;
    check_structure(a, part)?;
    let path = slot.path();
    fs::rename(part, &path).map_err(|e| io_err(&path, e))?;
    let _ = fs::remove_file(cache::sidecar_path(part));
    let hash_source = hash_source(a);
    let record = Record {
        file: a.file.clone(),
        size: d.size,
        sha256: d.sha256.clone(),
        url: d.url.clone(),
        hash_source: hash_source.into(),
        recorded_at: cache::now(),
    };
    if !had_hash {
        report.event(
            "recorded",
            &[
                ("sha256", &d.sha256),
                ("size", &d.size.to_string()),
                (
                    "why",
                    "no published hash: later runs verify against this one",
                ),
            ],
        );
    }
    slot.write_record(&record)
        .map_err(|e| io_err(&slot.dir, e))?;
    report.event(
        "done",
        &[("path", &path.display().to_string()), ("sha256", &d.sha256)],
    );
    Ok(Fetched {
        name: a.name.clone(),
        path,
        size: d.size,
        sha256: d.sha256.clone(),
        status: if d.resumed_from > 0 {
            "resumed"
        } else {
            "downloaded"
        }
        .into(),
        hash_source: hash_source.into(),
        received: d.received,
        resumed_from: d.resumed_from,
        url: d.url.clone(),
    })
}

/// Check that a file is a checkpoint with the artifact's expected tensors.
pub fn check_structure(a: &Artifact, path: &Path) -> Result<(), FetchError> {
    if a.min_tensors == 0 && a.expect.is_empty() {
        return Ok(());
    }
    let bad = |message: String| FetchError::Structure {
        path: path.to_path_buf(),
        message,
    };
    let ck = Checkpoint::open(path).map_err(|e| bad(e.source.to_string()))?;
    let fallback = if a.format == "paddle" {
        Layout::Paddle
    } else {
        Layout::Torch
    };
    let sel = match select(&ck, &Selection::default()) {
        Ok(s) => s,
        Err(_) => select(
            &ck,
            &Selection {
                from_layout: Some(fallback),
                ..Default::default()
            },
        )
        .map_err(|e| bad(e.to_string()))?,
    };
    if sel.tensors.len() < a.min_tensors {
        return Err(bad(format!(
            "{} tensors, a genuine file has at least {}",
            sel.tensors.len(),
            a.min_tensors
        )));
    }
    let torch = if sel.layout == Layout::Torch {
        sel.tensors
    } else {
        layout::map(sel.tensors, sel.layout, Layout::Torch)
            .map_err(|e| bad(e.to_string()))?
            .0
    };
    for (name, shape) in &a.expect {
        match torch.iter().find(|t| &t.name == name) {
            Some(t) if &t.shape == shape => {}
            Some(t) => {
                return Err(bad(format!(
                    "{name} has shape {:?}, expected {shape:?}",
                    t.shape
                )))
            }
            None => return Err(bad(format!("no tensor {name}"))),
        }
    }
    Ok(())
}

/// One row of `swav-fetch list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub name: String,
    pub source: String,
    pub kind: String,
    pub arch: String,
    pub top1: Option<f64>,
    pub cached: bool,
    /// A size and hash are recorded (or published) and the file has that size.
    pub verified: bool,
    pub size: Option<u64>,
    /// Bytes of partial downloads waiting to be resumed.
    pub partial: u64,
    pub path: PathBuf,
}

/// The registry with each artifact's cache state (no hashing: see [`verify`]).
pub fn list(registry: &Registry, root: &Path) -> Vec<Listed> {
    registry
        .artifacts
        .iter()
        .map(|a| {
            let slot = Slot::new(root, &a.name, &a.file);
            let path = slot.path();
            let size = fs::metadata(&path).ok().map(|m| m.len());
            let record = slot.record();
            Listed {
                name: a.name.clone(),
                source: a.source.clone(),
                kind: a.kind.clone(),
                arch: a.arch.clone(),
                top1: a.top1,
                cached: size.is_some(),
                verified: matches!((&record, size), (Some(r), Some(s)) if r.size == s),
                size: size.or(a.size),
                partial: slot
                    .parts()
                    .iter()
                    .filter_map(|p| fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum(),
                path,
            }
        })
        .collect()
}

/// The outcome of verifying one cached artifact.
pub type Verified = (String, Result<Record, FetchError>);

/// Re-hash cached files (all, or `name`): each with its record or its error.
pub fn verify(
    registry: &Registry,
    root: &Path,
    name: Option<&str>,
) -> Result<Vec<Verified>, FetchError> {
    if let Some(n) = name {
        if registry.get(n).is_none() {
            return Err(FetchError::Unknown(n.into()));
        }
    }
    Ok(registry
        .artifacts
        .iter()
        .filter(|a| name.is_none_or(|n| n == a.name))
        .filter_map(|a| {
            let slot = Slot::new(root, &a.name, &a.file);
            let path = slot.path();
            if !path.exists() {
                return name.map(|_| {
                    (
                        a.name.clone(),
                        Err(FetchError::Offline {
                            name: a.name.clone(),
                            path,
                        }),
                    )
                });
            }
            Some((a.name.clone(), verify_file(&slot, a, &path)))
        })
        .collect())
}

/// Remove an artifact from the cache (refused while a download holds its lock).
pub fn remove(registry: &Registry, root: &Path, name: &str) -> Result<PathBuf, FetchError> {
    let a = registry
        .get(name)
        .ok_or_else(|| FetchError::Unknown(name.into()))?;
    let slot = Slot::new(root, &a.name, &a.file);
    if !slot.dir.exists() {
        return Err(FetchError::Other(format!(
            "{name} is not in the cache ({})",
            slot.dir.display()
        )));
    }
    let lock = slot.lock_file().map_err(|e| io_err(&slot.dir, e))?;
    if let Err(fs::TryLockError::WouldBlock) = lock.try_lock() {
        return Err(FetchError::Other(format!(
            "{name} is being downloaded by another swav-fetch"
        )));
    }
    fs::remove_dir_all(&slot.dir).map_err(|e| io_err(&slot.dir, e))?;
    Ok(slot.dir)
}

/// What [`gc`] removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Collected {
    /// Partial downloads (and sidecars) removed.
    pub partials: usize,
    /// Folders holding no verified file removed.
    pub folders: usize,
    /// Bytes freed.
    pub bytes: u64,
}

/// Remove partial downloads not being written, and folders without a verified file.
pub fn gc(root: &Path) -> Result<Collected, FetchError> {
    let weights = root.join("weights");
    let mut out = Collected::default();
    let Ok(entries) = fs::read_dir(&weights) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let dir = e.path();
        if !dir.is_dir() {
            continue;
        }
        let files: Vec<PathBuf> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        // Skip folders whose download is in progress.
        let locks: Vec<&PathBuf> = files
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "lock"))
            .collect();
        let busy = locks.iter().any(|l| {
            fs::OpenOptions::new()
                .write(true)
                .open(l)
                .map(|f| matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)))
                .unwrap_or(false)
        });
        if busy {
            continue;
        }
        for p in &files {
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if n.ends_with(".part") || n.ends_with(".part.json") || n.ends_with(".tmp") {
                out.bytes += fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(p).map_err(|e| io_err(p, e))?;
                out.partials += usize::from(n.ends_with(".part"));
            }
        }
        let verified = Slot {
            dir: dir.clone(),
            file: String::new(),
        }
        .record()
        .is_some_and(|r| dir.join(&r.file).exists());
        if !verified {
            fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
            out.folders += 1;
        }
    }
    Ok(out)
}

/// Copy (or hard-link) a fetched file out of the cache, atomically.
pub fn copy_out(from: &Path, to: &Path) -> Result<(), FetchError> {
    let dir = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = dir.join(format!(
        ".{}.link.tmp",
        to.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let _ = fs::remove_file(&tmp);
    if fs::hard_link(from, &tmp).is_ok() {
        return fs::rename(&tmp, to).map_err(|e| io_err(to, e));
    }
    crate::atomic::write_file(to, |mut w| {
        let src = fs::File::open(from)?;
        let len = src.metadata()?.len();
        if w.copy_range(&src, 0..len)? != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while it was copied", from.display()),
            ));
        }
        Ok(w)
    })
    .map_err(|e| io_err(to, e))
}

/// A weights argument as a file to read: `arg` itself when it names a file (or anything on
/// disk), else the registry artifact of that name — the registry of `$SWAV_REGISTRY`, else the
/// built-in one — from the verified cache, fetched first unless offline (`SWAV_OFFLINE=1`),
/// into `$SWAV_HOME` or the default cache. One command from a published name to a result.
/// Errors do not repeat `arg`: the caller names it.
pub fn resolve_weights(arg: &Path) -> Result<PathBuf, FetchError> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_str().unwrap_or_default();
    let registry = match std::env::var_os("SWAV_REGISTRY").filter(|v| !v.is_empty()) {
        Some(p) => Registry::load(Path::new(&p)).map_err(FetchError::Other)?,
        None => Registry::builtin(),
    };
    match registry.get(name) {
        Some(a) => fetch(&registry, a, &FetchOptions::default()).map(|f| f.path),
        // A path (the reader then says what is wrong with it).
        None if name.contains(std::path::MAIN_SEPARATOR) || name.contains('.') => {
            Ok(arg.to_path_buf())
        }
        None => Err(FetchError::Other(
            "no such file, and no artifact of that name in the registry (swav-fetch list)".into(),
        )),
    }
}
