//! Digests and their text, in one place for every layer: the SHA-256 of a file (conversion
//! metadata, fetch verification) and lowercase hexadecimal text of bytes (digests in metadata
//! and fetch records, NCCL's unique id at a rendezvous), and back.

use sha2::{Digest, Sha256};
use std::path::Path;

/// Hash a file with SHA-256, reading it through the page cache in large blocks (not through a
/// memory map, which would count the whole file in this process's resident memory).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(encode(&hasher.finalize()))
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
