//! Latin-1 text as pickle protocol 2 stores bytes: Python 2's `str` data written by protocol-2
//! pickles (Paddle's array payloads among them) arrive as UTF-8 strings whose characters are
//! all ≤ U+00FF, one character per original byte. Used by the pickle reader and by tensors
//! whose data is such a string inside the file.
//!
//! A big Paddle checkpoint is gigabytes of such text, so checking and decoding it is the
//! conversion's inner loop: both go through `simdutf` (runtime-dispatched SSE/AVX2/AVX-512 or
//! NEON code, several GB/s where a byte-at-a-time loop reaches well under one), in blocks
//! that stay in the CPU's cache between passes.

/// Bytes checked at a time by [`latin1_len`]: small enough that its three passes over a block
/// find it in the L2 cache.
const CHECK_BLOCK: usize = 256 << 10;

/// The end of the piece of `text` that starts at `at` and holds at most `len` bytes (at least
/// one): one byte short of that when the piece would end on a lead byte, so that a two-byte
/// sequence is never split between pieces.
pub fn piece_end(text: &[u8], at: usize, len: usize) -> usize {
    let end = at.saturating_add(len.max(2)).min(text.len());
    if end < text.len() && text[end - 1] >= 0xc0 {
        end - 1
    } else {
        end
    }
}

/// The number of characters of `utf8` if it is a valid UTF-8 string of characters ≤ U+00FF,
/// else `None`.
///
/// Valid UTF-8 whose bytes are all below 0xC4 holds only ASCII and two-byte sequences led by
/// 0xC2 or 0xC3 (0xC0 and 0xC1 are never valid), which are exactly U+0000..=U+00FF.
pub fn latin1_len(utf8: &[u8]) -> Option<usize> {
    let mut count = 0;
    let mut at = 0;
    while at < utf8.len() {
        let end = piece_end(utf8, at, CHECK_BLOCK);
        let block = &utf8[at..end];
        if block.iter().fold(0u8, |m, &b| m.max(b)) >= 0xc4 || !simdutf::validate_utf8(block) {
            return None;
        }
        count += simdutf::count_utf8(block);
        at = end;
    }
    Some(count)
}

/// Decode a string of characters ≤ U+00FF into one byte per character, written to the start
/// of `out`; returns how many, or `None` when `utf8` is not such a string (the check is part
/// of the decoding).
///
/// # Panics
/// If `out` is shorter than `utf8` (the most characters any input can hold).
pub fn decode_latin1_into(utf8: &[u8], out: &mut [u8]) -> Option<usize> {
    assert!(
        out.len() >= utf8.len(),
        "latin-1 output buffer of {} bytes for {} bytes of UTF-8",
        out.len(),
        utf8.len()
    );
    if utf8.is_empty() {
        return Some(0);
    }
    // SAFETY: `utf8` is readable for its length and `out` writable for at least as many
    // bytes. simdutf documents the output size only for valid input (the character count);
    // for any input, its kernels in the pinned version (0.7.0, simdutf 7.7.1: the scalar,
    // Westmere/Haswell and Ice Lake ones) never write past as many bytes as they have read,
    // which `out.len() >= utf8.len()` covers. It returns 0 for input that is not valid UTF-8
    // or holds a character above U+00FF, and the character count otherwise.
    let n = unsafe { simdutf::convert_utf8_to_latin1(utf8.as_ptr(), utf8.len(), out.as_mut_ptr()) };
    (n != 0).then_some(n)
}

/// Decode a string [`latin1_len`] counted `len` characters in; `None` if it is not such a
/// string after all (or holds another number of characters).
pub fn decode_latin1(utf8: &[u8], len: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; utf8.len()];
    let n = decode_latin1_into(utf8, &mut out)?;
    if n != len {
        return None;
    }
    out.truncate(n);
    out.shrink_to_fit();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf8_of(bytes: &[u8]) -> Vec<u8> {
        bytes
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn every_byte_round_trips_across_blocks() {
        // Every byte value, repeated past several check blocks so sequences straddle edges.
        let bytes: Vec<u8> = (0..3 * CHECK_BLOCK + 7)
            .map(|i| (i * 7 + i / 255) as u8)
            .collect();
        let utf8 = utf8_of(&bytes);
        assert_eq!(latin1_len(&utf8), Some(bytes.len()));
        assert_eq!(decode_latin1(&utf8, bytes.len()), Some(bytes.clone()));
        let mut out = vec![0u8; utf8.len()];
        assert_eq!(decode_latin1_into(&utf8, &mut out), Some(bytes.len()));
        assert_eq!(&out[..bytes.len()], &bytes[..]);
        assert_eq!(decode_latin1(&utf8, bytes.len() - 1), None, "a wrong count");
        assert_eq!(latin1_len(b""), Some(0));
    }

    #[test]
    fn other_text_is_refused() {
        let long_ascii = vec![b'a'; CHECK_BLOCK - 1];
        for (bad, why) in [
            ("é€".as_bytes().to_vec(), "U+20AC"),
            (vec![0xc3], "a lead at the end"),
            (vec![0xa9, 0x41], "a continuation first"),
            (vec![0x41, 0xc3, 0x41], "a lead without its continuation"),
            (vec![0xc0, 0x80], "an overlong NUL"),
            (vec![0xc1, 0xbf], "an overlong DEL"),
            (
                [&long_ascii[..], &[0xc3, 0xc3, 0xa9]].concat(),
                "a lead followed by a lead at a block edge",
            ),
        ] {
            assert_eq!(latin1_len(&bad), None, "{why}");
            let mut out = vec![0u8; bad.len()];
            assert_eq!(decode_latin1_into(&bad, &mut out), None, "{why}");
        }
    }
}
