//! Write a file completely or not at all: into a temporary file beside it, flushed and
//! synced, then renamed over the destination. An error or a kill leaves no partial output.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;

/// Buffer size of the writer handed to the closure.
pub const WRITE_BUFFER: usize = 4 << 20;

/// Create `path` through `write`, atomically. `E` is the caller's error type.
pub fn write_file<E, F>(path: &Path, write: F) -> Result<(), E>
where
    E: From<io::Error>,
    F: FnOnce(BufWriter<&File>) -> Result<BufWriter<&File>, E>,
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
        let w = write(BufWriter::with_capacity(WRITE_BUFFER, tmp.as_file()))?;
        // into_inner flushes the buffer; then the data goes to disk before the rename.
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Create `path` holding `bytes`, atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_file(path, |mut w| {
        io::Write::write_all(&mut w, bytes)?;
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
        let m = libc_umask(0o022);
        libc_umask(m);
        m
    };
    f.set_permissions(std::fs::Permissions::from_mode(0o666 & !mask))
}

#[cfg(not(unix))]
fn set_default_mode(_: &File) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
extern "C" {
    #[link_name = "umask"]
    fn libc_umask(mask: u32) -> u32;
}
