//! Digests and their text, in one place for every layer: the SHA-256 of a file (conversion
//! metadata, fetch verification) and lowercase hexadecimal text of bytes (digests in metadata
//! and fetch records, NCCL's unique id at a rendezvous), and back.

use sha2::{Digest, Sha256};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Hash a file with SHA-256, reading it through the page cache in large blocks (not through a
/// memory map, which would count the whole file in this process's resident memory).
pub fn sha256_file(path: &Path) -> io::Result<String> {
    sha256_file_until(path, &AtomicBool::new(false))
}

/// [`sha256_file`], given up (an `Interrupted` error) once `stop` is set.
fn sha256_file_until(path: &Path, stop: &AtomicBool) -> io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "hashing stopped",
            ));
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
    }
    Ok(encode(&hasher.finalize()))
}

/// The SHA-256 of a file, computed on a thread of its own while the caller does other work
/// (a conversion hashes its input while it parses and writes). Dropped unfinished, the thread
/// stops within a block.
pub struct FileHash {
    thread: Option<std::thread::JoinHandle<io::Result<String>>>,
    stop: Arc<AtomicBool>,
}

impl FileHash {
    /// Start hashing `path`.
    pub fn start(path: &Path) -> FileHash {
        let stop = Arc::new(AtomicBool::new(false));
        let (path, flag): (PathBuf, _) = (path.to_path_buf(), stop.clone());
        // A thread that cannot be started leaves no handle: `finish` reports it.
        let thread = std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || sha256_file_until(&path, &flag))
            .ok();
        FileHash { thread, stop }
    }

    /// Wait for the hash (lowercase hexadecimal).
    pub fn finish(mut self) -> io::Result<String> {
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_else(|| {
                Err(io::Error::other(
                    "the hashing thread failed or did not start",
                ))
            })
    }
}

impl Drop for FileHash {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `bytes` as lowercase hexadecimal, two digits per byte.
pub fn encode(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The bytes of hexadecimal text (either case), or `None` when it is not an even number of
/// hexadecimal digits.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let t = text.as_bytes();
    if !t.len().is_multiple_of(2) {
        return None;
    }
    t.chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn background_hash_matches_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![1u8; 3 << 20]).unwrap();
        let want = super::sha256_file(&path).unwrap();
        assert_eq!(super::FileHash::start(&path).finish().unwrap(), want);
        // sha256 of the empty string, and of a file that is not there.
        std::fs::write(&path, b"").unwrap();
        assert_eq!(
            super::FileHash::start(&path).finish().unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let gone = super::FileHash::start(&dir.path().join("gone")).finish();
        assert_eq!(gone.unwrap_err().kind(), std::io::ErrorKind::NotFound);
        drop(super::FileHash::start(&path)); // does not wait or panic
    }

    #[test]
    fn round_trip_and_bad_text() {
        let bytes: Vec<u8> = (0..=255).collect();
        let text = super::encode(&bytes);
        assert_eq!(&text[..8], "00010203");
        assert_eq!(&text[text.len() - 2..], "ff");
        assert_eq!(super::decode(&text), Some(bytes));
        assert_eq!(super::decode("0A"), Some(vec![10]));
        for bad in ["0", "0g", "é0", "+1"] {
            assert_eq!(super::decode(bad), None, "{bad}");
        }
    }
}
