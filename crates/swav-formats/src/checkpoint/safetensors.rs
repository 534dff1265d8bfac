//! safetensors (`.safetensors`, and `.safetensors.zst` compressed with zstd).
//!
//! The header rules are the `safetensors` crate's: it validates what is read
//! ([`::safetensors::SafeTensors::deserialize`]) and builds and checks the header that is
//! written ([`::safetensors::tensor::Metadata::new`]). Data is read from the memory map and
//! written to any stream, one tensor at a time, so the zstd variant shares the code.

use super::{Checkpoint, FormatError};
use crate::tensor::{Buffer, DType, Sink, Storage, Tensor};
use ::safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;

/// Largest decompressed size accepted from a `.zst` input, relative to its compressed size
/// (weights compress by about 1.1x; a larger ratio is a bomb).
pub const MAX_ZSTD_RATIO: u64 = 64;
/// Largest decompressed size accepted from a `.zst` input whatever its ratio.
pub const MAX_ZSTD_FLOOR: u64 = 64 << 20;

fn dtype_from(d: Dtype) -> Result<DType, FormatError> {
    Ok(match d {
        Dtype::F64 => DType::F64,
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::I64 => DType::I64,
        Dtype::I32 => DType::I32,
        Dtype::I16 => DType::I16,
        Dtype::I8 => DType::I8,
        Dtype::U64 => DType::U64,
        Dtype::U32 => DType::U32,
        Dtype::U16 => DType::U16,
        Dtype::U8 => DType::U8,
        Dtype::BOOL => DType::Bool,
        other => {
            return Err(FormatError::Unsupported(format!(
                "safetensors dtype {other:?} is not supported"
            )))
        }
    })
}

fn dtype_to(d: DType) -> Dtype {
    match d {
        DType::F64 => Dtype::F64,
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::I16 => Dtype::I16,
        DType::I8 => Dtype::I8,
        DType::U64 => Dtype::U64,
        DType::U32 => Dtype::U32,
        DType::U16 => Dtype::U16,
        DType::U8 => Dtype::U8,
        DType::Bool => Dtype::BOOL,
    }
}

/// Read a safetensors buffer into `ck`; its `__metadata__` becomes `ck.values`.
pub fn read(buf: Buffer, ck: &mut Checkpoint) -> Result<(), FormatError> {
    let bytes: &[u8] = buf.bytes();
    let serr = |e: ::safetensors::SafeTensorError| FormatError::Safetensors(e.to_string());
    SafeTensors::deserialize(bytes).map_err(serr)?;
    let (n, meta) = SafeTensors::read_metadata(bytes).map_err(serr)?;
    let start = 8 + n;
    let infos = meta.tensors();
    for name in meta.offset_keys() {
        let info = infos[&name];
        let (b, e) = info.data_offsets;
        let storage = Storage::Mapped {
            buf: buf.clone(),
            range: start + b..start + e,
        };
        ck.tensors.push(Tensor::new(
            name,
            dtype_from(info.dtype)?,
            info.shape.clone(),
            storage,
        ));
    }
    if let Some(m) = meta.metadata() {
        let mut kv: Vec<_> = m.iter().collect();
        kv.sort();
        ck.values = kv
            .into_iter()
            .map(|(k, v)| (format!("__metadata__.{k}"), Value::String(v.clone())))
            .collect();
    }
    Ok(())
}

/// Decompress a `.safetensors.zst` input, refusing bombs.
pub fn decompress(compressed: &[u8]) -> Result<Vec<u8>, FormatError> {
    let limit = (compressed.len() as u64)
        .saturating_mul(MAX_ZSTD_RATIO)
        .max(MAX_ZSTD_FLOOR);
    let dec = zstd::stream::read::Decoder::new(compressed)?;
    let mut out = Vec::new();
    dec.take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| FormatError::Safetensors(format!("zstd: {e}")))?;
    if out.len() as u64 > limit {
        return Err(FormatError::Safetensors(format!(
            "zstd data expands more than {MAX_ZSTD_RATIO}x (a decompression bomb?)"
        )));
    }
    Ok(out)
}

/// The header for `tensors` (length prefix excluded): built and validated by the
/// safetensors crate's `Metadata`, padded with spaces to a multiple of 8 bytes as the crate
/// pads it. Tensors keep their order.
pub fn header(
    tensors: &[Tensor],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>, FormatError> {
    let mut offset = 0usize;
    let mut infos = Vec::with_capacity(tensors.len());
    for t in tensors {
        let n = t.byte_len();
        infos.push((
            t.name.clone(),
            TensorInfo {
                dtype: dtype_to(t.dtype),
                shape: t.shape.clone(),
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    let serr = |e: &dyn std::fmt::Display| FormatError::Safetensors(e.to_string());
    // The crate checks the tensors and writes them in order; `__metadata__` is written here
    // with its keys sorted (the crate writes a HashMap's order, which differs from run to run),
    // so that one input always gives the same bytes.
    let tensors = Metadata::new(None, infos).map_err(|e| serr(&e))?;
    let body = serde_json::to_vec(&tensors).map_err(|e| serr(&e))?;
    let sorted: std::collections::BTreeMap<_, _> = metadata.into_iter().collect();
    let mut header = Vec::with_capacity(body.len() + 256);
    header.extend_from_slice(b"{\"__metadata__\":");
    header.extend_from_slice(&serde_json::to_vec(&sorted).map_err(|e| serr(&e))?);
    if body.len() > 2 {
        header.push(b',');
    }
    header.extend_from_slice(&body[1..]);
    header.resize(header.len().next_multiple_of(8), b' ');
    Ok(header)
}

/// Write `tensors` as safetensors to `out`, with `metadata` in the header.
pub fn write<W: Sink>(
    mut out: W,
    tensors: &[Tensor],
    metadata: HashMap<String, String>,
) -> Result<W, FormatError> {
    let header = header(tensors, metadata)?;
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for t in tensors {
        out.put(t)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    /// The header is the same bytes for the same tensors and metadata, whatever order the
    /// metadata map iterates in: sorted `__metadata__` first, then the tensors in order.
    #[test]
    fn headers_are_deterministic() {
        let t = |name: &str, n: usize| {
            Tensor::from_vec(name, DType::F32, vec![n], vec![0; 4 * n]).unwrap()
        };
        let tensors = [t("z.weight", 2), t("a.bias", 3)];
        let meta = |keys: &[&str]| -> HashMap<String, String> {
            keys.iter()
                .map(|k| (k.to_string(), format!("v{k}")))
                .collect()
        };
        let first = header(
            &tensors,
            meta(&["source_sha256", "layout", "tool", "format"]),
        )
        .unwrap();
        for _ in 0..8 {
            let again = header(
                &tensors,
                meta(&["tool", "format", "layout", "source_sha256"]),
            );
            assert_eq!(again.unwrap(), first);
        }
        let text = String::from_utf8(first.clone()).unwrap();
        let at = |s: &str| text.find(s).unwrap();
        assert!(text.starts_with("{\"__metadata__\":{\"format\""), "{text}");
        assert!(
            at("\"layout\"") < at("\"source_sha256\"") && at("\"source_sha256\"") < at("\"tool\"")
        );
        assert!(
            at("\"z.weight\"") < at("\"a.bias\""),
            "tensors keep their order: {text}"
        );
        // What the safetensors crate reads back.
        let mut file = (first.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&first);
        file.extend_from_slice(&[0; 20]);
        let (_, parsed) = safetensors::SafeTensors::read_metadata(&file).unwrap();
        assert_eq!(parsed.metadata().as_ref().unwrap()["layout"], "vlayout");
        assert_eq!(parsed.info("a.bias").unwrap().data_offsets, (8, 20));
        // No metadata, no tensors: still valid JSON, with an empty `__metadata__` (as the
        // safetensors crate writes an empty map).
        let empty = header(&[], HashMap::new()).unwrap();
        assert_eq!(
            String::from_utf8(empty).unwrap().trim_end(),
            "{\"__metadata__\":{}}"
        );
        let only = header(&[], meta(&["tool"])).unwrap();
        assert_eq!(
            String::from_utf8(only).unwrap().trim_end(),
            "{\"__metadata__\":{\"tool\":\"vtool\"}}"
        );
    }
}
