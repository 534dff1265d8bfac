//! Latin-1 text as pickle protocol 2 stores bytes: Python 2's `str` data written by protocol-2
//! pickles (Paddle's array payloads among them) arrive as UTF-8 strings whose characters are
//! all ≤ U+00FF, one character per original byte. Used by the pickle reader and by tensors
//! whose data is such a string inside the file.

/// Decode a UTF-8 string whose code points are all ≤ 255 (checked by [`latin1_len`]) into
/// one byte per code point. Branch-free: array data is random bytes, half of them above
/// 0x7F, which a branch per character would mispredict.
pub fn decode_latin1(utf8: &[u8], len: usize) -> Vec<u8> {
    // Walk the input in order and write every position's value at the output cursor, which
    // a continuation byte moves back onto its lead's slot: no data-dependent branch or load
    // (array data is random bytes, half of them above 0x7F).
    let mut out = vec![0u8; len + 1];
    let mut j = 0usize;
    let mut prev = 0u8;
    for &b in utf8 {
        let value = if prev & 0xfe == 0xc2 {
            (prev << 6) | (b & 0x3f)
        } else {
            b
        };
        j = j.wrapping_sub((b & 0xc0 == 0x80) as usize);
        out[j.min(len)] = value;
        j = j.wrapping_add(1);
        prev = b;
    }
    out.truncate(len);
    out
}

/// The number of characters of `utf8` if it is a valid UTF-8 string of characters ≤ U+00FF
/// (ASCII bytes and 0xC2/0xC3 lead bytes each followed by one continuation byte), else `None`.
/// Written as whole-slice passes the compiler vectorises.
pub fn latin1_len(utf8: &[u8]) -> Option<usize> {
    let (Some(&first), Some(&last)) = (utf8.first(), utf8.last()) else {
        return Some(0);
    };
    let is_lead = |b: u8| b & 0xfe == 0xc2;
    let is_cont = |b: u8| b & 0xc0 == 0x80;
    // Only ASCII, continuations and 0xC2/0xC3 may appear.
    let bad = utf8
        .iter()
        .fold(0u8, |acc, &b| acc | (b >= 0xc0 && !is_lead(b)) as u8);
    // Every continuation follows a lead and every lead is followed by a continuation.
    let mismatched = utf8[..utf8.len() - 1]
        .iter()
        .zip(&utf8[1..])
        .fold(0u8, |acc, (&a, &b)| acc | (is_lead(a) != is_cont(b)) as u8);
    if bad != 0 || mismatched != 0 || is_cont(first) || is_lead(last) {
        return None;
    }
    Some(utf8.len() - utf8.iter().filter(|&&b| is_cont(b)).count())
}
