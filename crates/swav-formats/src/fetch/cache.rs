//! The weights cache: one folder per artifact holding the verified file, its index record,
//! resumable partial downloads and a lock file.
//!
//! ```text
//! $SWAV_HOME (or ~/.cache/swav)/weights/<name>/
//!     <file>                      verified, installed by an atomic rename
//!     index.json                  size + sha256 recorded at the first verified download
//!     <file>.<id>.part            a partial download owned by one process (id = pid + time)
//!     <file>.<id>.part.json       its sidecar: URL, validators, expected size
//!     <file>.lock                 advisory lock: one download at a time
//! ```
//!
//! Correctness does not rest on the lock (which may do nothing on a network filesystem):
//! each process writes only its own partial file, takes over an abandoned one only by
//! renaming it (which one process wins), and installs the result by a rename of a
//! complete, verified file.

use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The cache root: `$SWAV_HOME`, else `$XDG_CACHE_HOME/swav`, else `~/.cache/swav`.
pub fn default_root() -> PathBuf {
    if let Some(h) = std::env::var_os("SWAV_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("swav");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("swav")
}

/// What was recorded about a verified file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// Cached file name.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 (hex).
    pub sha256: String,
    /// Where it came from.
    pub url: String,
    /// `registry` when the hash was published, `first-download` when this cache recorded it.
    pub hash_source: String,
    /// Seconds since the epoch.
    pub recorded_at: u64,
}

/// A partial download's sidecar.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Sidecar {
    /// The URL the bytes came from (after Drive's confirmation).
    pub url: String,
    /// `ETag` of the response, for `If-Range`.
    pub etag: Option<String>,
    /// `Last-Modified` of the response, for `If-Range`.
    pub last_modified: Option<String>,
    /// Total size announced by the server.
    pub total: Option<u64>,
    /// Bytes on disk when the sidecar was written (informational: resumes re-hash the file).
    pub bytes: u64,
}

/// The folder of one artifact.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The folder.
    pub dir: PathBuf,
    /// The cached file name.
    pub file: String,
}

impl Slot {
    /// The slot for `name`/`file` under `root`.
    pub fn new(root: &Path, name: &str, file: &str) -> Slot {
        Slot {
            dir: root.join("weights").join(name),
            file: file.to_string(),
        }
    }

    /// The verified file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.json")
    }

    /// The recorded size and hash, if any.
    pub fn record(&self) -> Option<Record> {
        let text = fs::read_to_string(self.index_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Record a verified file (atomically).
    pub fn write_record(&self, r: &Record) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(r).map_err(io::Error::other)?;
        crate::atomic::write_bytes(&self.index_path(), &json)
    }

    /// Open (creating) the lock file.
    pub fn lock_file(&self) -> io::Result<File> {
        fs::create_dir_all(&self.dir)?;
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(format!("{}.lock", self.file)))
    }

    /// A partial-file path unique to this process.
    pub fn new_part(&self) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        self.dir
            .join(format!("{}.{}-{nanos}.part", self.file, std::process::id()))
    }

    /// Existing partial downloads, largest first.
    pub fn parts(&self) -> Vec<PathBuf> {
        let prefix = format!("{}.", self.file);
        let mut parts: Vec<(u64, PathBuf)> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                (n.starts_with(&prefix) && n.ends_with(".part"))
                    .then(|| (e.metadata().map(|m| m.len()).unwrap_or(0), e.path()))
            })
            .collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.0));
        parts.into_iter().map(|(_, p)| p).collect()
    }

    /// Take over an abandoned partial download by renaming it (and its sidecar) to `mine`.
    /// Returns its sidecar, or `None` when there is none or another process took it first.
    pub fn claim(&self, mine: &Path) -> Option<Sidecar> {
        for p in self.parts() {
            let side = sidecar_path(&p);
            let Ok(text) = fs::read_to_string(&side) else {
                continue;
            };
            let Ok(sc) = serde_json::from_str::<Sidecar>(&text) else {
                continue;
            };
            if fs::rename(&p, mine).is_ok() {
                let _ = fs::rename(&side, sidecar_path(mine));
                return Some(sc);
            }
        }
        None
    }

    /// Remove partial downloads (and their sidecars).
    pub fn remove_parts(&self) -> io::Result<usize> {
        let mut n = 0;
        for p in self.parts() {
            fs::remove_file(&p)?;
            let _ = fs::remove_file(sidecar_path(&p));
            n += 1;
        }
        Ok(n)
    }
}

/// The sidecar of a partial file.
pub fn sidecar_path(part: &Path) -> PathBuf {
    let mut s = part.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// Write a sidecar (atomically).
pub fn write_sidecar(part: &Path, sc: &Sidecar) -> io::Result<()> {
    let json = serde_json::to_vec(sc).map_err(io::Error::other)?;
    crate::atomic::write_bytes(&sidecar_path(part), &json)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
