//! numpy arrays (as the restricted pickle reader rebuilds them) to [`Tensor`]s.

use super::pickle::{Bytes, NpArray, NpDtype};
use crate::tensor::{Buffer, DType, Encoding, Storage, Tensor};
use std::sync::Arc;

/// How an unsigned 16-bit numpy array is read: Paddle stores bfloat16 as `uint16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum U16As {
    /// Keep `uint16`.
    U16,
    /// Reinterpret as bf16 (the Paddle convention).
    BF16,
}

/// Map a numpy element type to a tensor type.
pub fn dtype(d: &NpDtype, u16_as: U16As) -> Result<DType, String> {
    Ok(match (d.kind, d.size) {
        ('f', 8) => DType::F64,
        ('f', 4) => DType::F32,
        ('f', 2) => DType::F16,
        ('i', 8) => DType::I64,
        ('i', 4) => DType::I32,
        ('i', 2) => DType::I16,
        ('i', 1) => DType::I8,
        ('u', 8) => DType::U64,
        ('u', 4) => DType::U32,
        ('u', 2) if u16_as == U16As::BF16 => DType::BF16,
        ('u', 2) => DType::U16,
        ('u', 1) => DType::U8,
        ('b', 1) => DType::Bool,
        (k, s) => return Err(format!("numpy dtype {k}{s} has no tensor equivalent")),
    })
}

/// Build a tensor over an array whose bytes live in `buf`.
pub fn tensor(name: String, a: &NpArray, buf: &Buffer, u16_as: U16As) -> Result<Tensor, String> {
    let dt = dtype(&a.dtype, u16_as)?;
    let storage = storage(&a.data, buf);
    let encoding = Encoding {
        big_endian: a.dtype.big_endian && a.dtype.size > 1,
        fortran: a.fortran,
        transposed: false,
    };
    Ok(Tensor::with_encoding(
        name,
        dt,
        a.shape.clone(),
        storage,
        encoding,
    ))
}

/// Storage for pickled bytes: a range of the input where possible.
pub fn storage(b: &Bytes, buf: &Buffer) -> Storage {
    match b {
        Bytes::Span(r) => Storage::Mapped {
            buf: buf.clone(),
            range: r.clone(),
        },
        Bytes::Latin1 { utf8, len } => Storage::Latin1 {
            buf: buf.clone(),
            range: utf8.clone(),
            len: *len,
        },
        Bytes::Owned(v) => Storage::Owned(Arc::new(v.clone())),
    }
}
