//! Write a file completely or not at all: into a temporary file beside it, flushed and
//! synced, then renamed over the destination. An error or a kill leaves no partial output.
//!
//! Big outputs are written at the speed of the page cache and synced once: small writes are
//! buffered, large ones and in-kernel copies go straight to the file, and the kernel is asked
//! to start writing pages back every [`WRITEBACK_EVERY`] bytes, so the one `fsync` at the end
//! has little left to wait for.

use std::fs::File;
use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;

/// Buffer size for small writes (headers, pickles, small tensors).
pub const WRITE_BUFFER: usize = 4 << 20;

/// Bytes written between two requests to start writing the output back to disk.
pub const WRITEBACK_EVERY: u64 = 16 << 20;

/// Counts the bytes written to a file and starts its write-back to disk every
/// [`WRITEBACK_EVERY`] of them.
#[derive(Debug, Default)]
pub struct Writeback {
    /// Bytes written (or buffered for writing) since write-back was last started.
    pending: u64,
}

impl Writeback {
    /// `n` more bytes were written to `file`.
    pub fn wrote(&mut self, file: &File, n: u64) {
        self.pending += n;
        if self.pending >= WRITEBACK_EVERY {
            self.pending = 0;
            start_writeback(file);
        }
    }
}

/// The output file of [`write_file`], given to its closure.
pub struct Output<'a> {
    buf: BufWriter<&'a File>,
    writeback: Writeback,
}

impl<'a> Output<'a> {
    fn new(file: &'a File) -> Output<'a> {
        Output {
            buf: BufWriter::with_capacity(WRITE_BUFFER, file),
            writeback: Writeback::default(),
        }
    }

    /// Write `bytes` straight to the file (after what is buffered): for data in large
    /// pieces, which the buffer would only copy once more.
    pub fn write_large(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.flush()?;
        let mut file = *self.buf.get_ref();
        // In pieces, so that write-back starts while a big tensor is still being written.
        for piece in bytes.chunks(WRITEBACK_EVERY as usize) {
            file.write_all(piece)?;
            self.wrote(piece.len() as u64);
        }
        Ok(())
    }

    /// Copy `range` of the file `src` to the output in the kernel (`copy_file_range` through
    /// [`io::copy`]), the bytes never passing through this process. Returns the bytes copied,
    /// fewer than asked only when `src` ends first.
    pub fn copy_range(&mut self, src: &File, range: Range<u64>) -> io::Result<u64> {
        use io::Read;
        self.buf.flush()?;
        let mut src = src;
        src.seek(SeekFrom::Start(range.start))?;
        let mut file = *self.buf.get_ref();
        let (mut done, len) = (0, range.end.saturating_sub(range.start));
        while done < len {
            let n = io::copy(&mut src.take(WRITEBACK_EVERY.min(len - done)), &mut file)?;
            self.wrote(n);
            done += n;
            if n == 0 {
                break; // `src` ended
            }
        }
        Ok(done)
    }

    fn wrote(&mut self, n: u64) {
        self.writeback.wrote(self.buf.get_ref(), n);
    }

    /// Flush what is buffered and give the file back.
    fn into_file(self) -> io::Result<&'a File> {
        self.buf.into_inner().map_err(|e| e.into_error())
    }
}

impl Write for Output<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.buf.write(data)?;
        self.wrote(n as u64);
        Ok(n)
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.write_all(data)?;
        self.wrote(data.len() as u64);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.buf.flush()
    }
}

impl Seek for Output<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.buf.seek(to)
    }
}

/// Ask the kernel to start writing `file`'s dirty pages to disk without waiting for them
/// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`). Only a head start for the final sync,
/// which reports any error: a failure here is ignored.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a file descriptor this process holds open; it reads no
    // memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &File) {}

/// Create `path` through `write`, atomically. `E` is the caller's error type.
pub fn write_file<E, F>(path: &Path, write: F) -> Result<(), E>
where
    E: From<io::Error>,
    F: for<'a> FnOnce(Output<'a>) -> Result<Output<'a>, E>,
{
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)?;
    set_default_mode(tmp.as_file())?;
    {
        let w = write(Output::new(tmp.as_file()))?;
        // The data goes to disk before the rename.
        w.into_file()?.sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Create `path` holding `bytes`, atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file(path, |mut w| {
        w.write_large(bytes)?;
        Ok::<_, io::Error>(w)
    })
}

/// Give the output the mode a plain `File::create` would (0666 less the umask), not the
/// temp file's 0600.
#[cfg(unix)]
fn set_default_mode(f: &File) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: umask is process-global; reading it means setting it and restoring it at once.
    let mask = unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    };
    f.set_permissions(std::fs::Permissions::from_mode(0o666 & !(mask as u32)))
}

#[cfg(not(unix))]
fn set_default_mode(_: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_large_and_copied_writes_land_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let src_bytes: Vec<u8> = (0..3 * WRITEBACK_EVERY as usize / 2)
            .map(|i| i as u8)
            .collect();
        std::fs::write(&src_path, &src_bytes).unwrap();
        let src = File::open(&src_path).unwrap();
        let out = dir.path().join("out");
        let big = vec![7u8; WRITEBACK_EVERY as usize + 3];
        write_file(&out, |mut w| {
            w.write_all(b"head")?;
            w.write_large(&big)?;
            assert_eq!(w.copy_range(&src, 10..110)?, 100);
            // A range past the end of the source copies what there is.
            let len = src_bytes.len() as u64;
            assert_eq!(w.copy_range(&src, len - 5..len + 5)?, 5);
            w.write_all(b"tail")?;
            w.seek(SeekFrom::Start(0))?;
            w.write_all(b"HEAD")?;
            Ok::<_, io::Error>(w)
        })
        .unwrap();
        let got = std::fs::read(&out).unwrap();
        let want = [
            &b"HEAD"[..],
            &big,
            &src_bytes[10..110],
            &src_bytes[src_bytes.len() - 5..],
            b"tail",
        ]
        .concat();
        assert!(got == want, "output differs");
        // Nothing is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let r = write_file(&out, |mut w| {
            w.write_large(&[1; 1000])?;
            Err::<Output, _>(io::Error::other("stop"))
        });
        assert_eq!(r.unwrap_err().to_string(), "stop");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
