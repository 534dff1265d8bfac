//! Tell a checkpoint's container from its first bytes, never from its extension.

use super::FormatError;
use serde::Serialize;

/// A container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// A pickle of numpy arrays: `paddle.save`, PASSL's `pickle.dump`, numpy pickles.
    Pickle,
    /// `torch.save` zip container (PyTorch ≥ 1.6).
    TorchZip,
    /// `torch.save` legacy pickle stream (PyTorch 0.1.10 – 1.5).
    TorchLegacy,
    /// `torch.save` tar container (before 0.1.10).
    TorchTar,
    /// safetensors.
    Safetensors,
    /// zstd-compressed safetensors.
    SafetensorsZstd,
    /// A Burn record of the SwAV module (`.mpk` + `.mpk.json`), recognised by its name.
    BurnRecord,
}

/// Whether a path names a Burn record: an `.mpk` file, a training checkpoint folder (with its
/// `model.mpk`) or a training output folder (with its `checkpoints/`).
pub fn names_burn_record(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "mpk")
        || (path.is_dir()
            && (path.join("model.mpk").is_file() || path.join("checkpoints").is_dir()))
}

impl Format {
    /// Human name.
    pub fn describe(self) -> &'static str {
        match self {
            Format::Pickle => "pickle (Paddle/numpy)",
            Format::TorchZip => "PyTorch zip",
            Format::TorchLegacy => "PyTorch legacy",
            Format::TorchTar => "PyTorch tar",
            Format::Safetensors => "safetensors",
            Format::SafetensorsZstd => "safetensors + zstd",
            Format::BurnRecord => "Burn record",
        }
    }
}

/// Magic of the legacy `torch.save` stream: pickle protocol 2 + LONG1 of 0x1950a86a20f9469cfc6c.
/// The legacy `torch.save` stream starts with a pickle of this number (LONG1, 10 bytes).
const TORCH_LEGACY_MAGIC: &[u8] = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
const ZIP_MAGIC: &[u8] = b"PK\x03\x04";
const ZSTD_MAGIC: &[u8] = b"\x28\xb5\x2f\xfd";
const GZIP_MAGIC: &[u8] = b"\x1f\x8b";

/// Detect the container of `bytes`.
pub fn sniff(bytes: &[u8]) -> Result<Format, FormatError> {
    if bytes.is_empty() {
        return Err(FormatError::Empty);
    }
    if looks_like_html(bytes) {
        return Err(FormatError::Html);
    }
    if is_torch_legacy(bytes) {
        return Ok(Format::TorchLegacy);
    }
    if bytes.starts_with(ZIP_MAGIC) {
        return Ok(Format::TorchZip);
    }
    if bytes.starts_with(ZSTD_MAGIC) {
        return Ok(Format::SafetensorsZstd);
    }
    if bytes.starts_with(GZIP_MAGIC) {
        return Err(FormatError::Gzip);
    }
    if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        return Ok(Format::TorchTar);
    }
    // Before the pickle check: a safetensors header of 0x280 to 0x5ff bytes starts with the
    // bytes of a pickle protocol mark (`80 02` .. `ff 05`); a pickle never passes this check
    // (its first eight bytes are no length within the file).
    if is_safetensors(bytes) {
        return Ok(Format::Safetensors);
    }
    if bytes[0] == 0x80 && bytes.len() > 1 && (2..=5).contains(&bytes[1]) {
        return Ok(Format::Pickle);
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(FormatError::Unknown(head.join(" ")))
}

/// A legacy `torch.save` stream of any pickle protocol (2 to 5: `PROTO n`, then a `FRAME`
/// from protocol 4 on) whose first pickle is the magic number.
fn is_torch_legacy(bytes: &[u8]) -> bool {
    let [0x80, proto, rest @ ..] = bytes else {
        return false;
    };
    let rest = match (proto, rest) {
        (2 | 3, rest) => rest,
        (4 | 5, [0x95, frame @ ..]) if frame.len() >= 8 => &frame[8..],
        _ => return false,
    };
    rest.starts_with(TORCH_LEGACY_MAGIC)
}

fn is_safetensors(bytes: &[u8]) -> bool {
    if bytes.len() < 10 {
        return false;
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    n >= 2
        && n <= (bytes.len() - 8) as u64
        && bytes[8..].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// An HTML page (a saved error, quota or sign-in page): `<!doctype` or `<html` near the start.
pub fn looks_like_html(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(1024)];
    let start = head
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != 0xef && *b != 0xbb && *b != 0xbf);
    let Some(start) = start else { return false };
    if head[start] != b'<' {
        return false;
    }
    let lower: Vec<u8> = head[start..]
        .iter()
        .map(|b| b.to_ascii_lowercase())
        .collect();
    let text = String::from_utf8_lossy(&lower);
    text.contains("<!doctype")
        || text.contains("<html")
        || text.contains("<head")
        || text.contains("<body")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert!(matches!(sniff(b""), Err(FormatError::Empty)));
        assert!(matches!(
            sniff(b"\n<!DOCTYPE html><html>"),
            Err(FormatError::Html)
        ));
        assert_eq!(sniff(b"\x80\x04\x95").unwrap(), Format::Pickle);
        assert_eq!(sniff(b"PK\x03\x04rest").unwrap(), Format::TorchZip);
        assert!(matches!(
            sniff(b"hello world"),
            Err(FormatError::Unknown(_))
        ));
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert_eq!(sniff(&st).unwrap(), Format::Safetensors);
        // A header of 0x280 bytes: its length reads `80 02`, a pickle's protocol-2 mark.
        let mut st = 0x280u64.to_le_bytes().to_vec();
        st.push(b'{');
        st.extend(std::iter::repeat_n(b' ', 0x27e));
        st.push(b'}');
        assert_eq!(&st[..2], b"\x80\x02");
        assert_eq!(sniff(&st).unwrap(), Format::Safetensors);
    }
}
