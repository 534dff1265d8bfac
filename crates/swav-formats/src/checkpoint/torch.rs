//! PyTorch checkpoints (`.pth`, `.pt`, `.pth.tar`, `.bin`).
//!
//! Reading is burn-store's `pytorch-reader`: zip, legacy and tar containers, every pickle
//! protocol, hardened limits, tensors read lazily. Writing produces the zip container
//! `torch.save` writes (torch/serialization.py `_save`), which `torch.load(weights_only=True)`
//! accepts: `data.pkl` (protocol 2: an `OrderedDict` of `_rebuild_tensor_v2` calls on
//! persistent `('storage', torch.<T>Storage, key, 'cpu', numel)` ids), one stored record per
//! tensor under `data/`, each 64-byte aligned, plus `version`, `byteorder` and
//! `.format_version`/`.storage_alignment`.

use super::pickle::emit;
use super::{Checkpoint, FormatError};
use crate::tensor::{DType, Storage, Tensor};
use std::io::{Read as _, Seek, Write};
use std::path::Path;

/// Largest `data.pkl` scanned (a state dict's pickle is kilobytes to a few megabytes; the
/// tensors' data are other records).
const MAX_DATA_PKL: u64 = 64 << 20;
/// Pickles at the start of a legacy stream: magic number, protocol version, system info, the
/// object, the storage keys (then raw storages).
const LEGACY_PICKLES: usize = 5;

/// Scan the pickles of a PyTorch container with the restricted machine in its torch dialect
/// before pytorch-reader reads it: whatever `torch.load(weights_only=True)` would refuse to call
/// is refused here, and so is data after the object pickle's `STOP` (a second pickle appended
/// to the first). Zip: `data.pkl`; legacy: the five pickles before the storages; tar: every
/// pickle of its four members (`sys_info`, `pickle`, and those between the raw data of
/// `storages` and `tensors`).
pub fn scan(bytes: &[u8], format: super::Format) -> Result<(), FormatError> {
    use super::pickle::{parse_dialect, Dialect};
    let whole = |data: &[u8], what: &str| -> Result<(), FormatError> {
        parse_dialect(data, Dialect::Torch)?
            .ends_input(data.len())
            .map_err(|e| FormatError::Structure(format!("{what}: {e}")))
    };
    match format {
        super::Format::TorchZip => {
            let zerr = |e: zip::result::ZipError| FormatError::Torch(explain(e.to_string()));
            let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(zerr)?;
            let names: Vec<String> = archive
                .file_names()
                .map(|n| n.map(|n| n.to_string()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(zerr)?
                .into_iter()
                .filter(|n| n == "data.pkl" || n.ends_with("/data.pkl"))
                .collect();
            let [name] = names.as_slice() else {
                return Err(FormatError::Torch(format!(
                    "{} data.pkl records in the zip (expected one)",
                    names.len()
                )));
            };
            let mut entry = archive.by_name(name).map_err(zerr)?;
            if entry.size() > MAX_DATA_PKL {
                return Err(FormatError::Torch(format!(
                    "{name} is {} bytes (the limit is {MAX_DATA_PKL})",
                    entry.size()
                )));
            }
            let mut data = Vec::new();
            (&mut entry).take(MAX_DATA_PKL + 1).read_to_end(&mut data)?;
            if data.len() as u64 > MAX_DATA_PKL {
                return Err(FormatError::Torch(format!(
                    "{name} inflates past {MAX_DATA_PKL} bytes (a zip bomb?)"
                )));
            }
            whole(&data, name)
        }
        super::Format::TorchLegacy => {
            let mut at = 0;
            for _ in 0..LEGACY_PICKLES {
                at += parse_dialect(&bytes[at..], Dialect::Torch)?.end;
            }
            Ok(())
        }
        super::Format::TorchTar => {
            for (name, data) in tar_members(bytes)? {
                match name.as_str() {
                    "pickle" | "sys_info" => whole(data, &name)?,
                    "storages" => scan_tar_storages(data)
                        .map_err(|e| FormatError::Torch(format!("tar member storages: {e}")))?,
                    "tensors" => scan_tar_tensors(data)
                        .map_err(|e| FormatError::Torch(format!("tar member tensors: {e}")))?,
                    _ => {}
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Bytes per element of the typed storages a tar container names (`torch.FloatStorage`, ...),
/// as torch's `_element_size` gives them.
const STORAGE_ELEMENT_BYTES: &[(&str, usize)] = &[
    ("DoubleStorage", 8),
    ("FloatStorage", 4),
    ("HalfStorage", 2),
    ("BFloat16Storage", 2),
    ("LongStorage", 8),
    ("IntStorage", 4),
    ("ShortStorage", 2),
    ("CharStorage", 1),
    ("ByteStorage", 1),
    ("BoolStorage", 1),
    ("ComplexFloatStorage", 8),
    ("ComplexDoubleStorage", 16),
];
/// Highest tensor rank a tar container's `tensors` member may declare (as pytorch-reader).
const MAX_TAR_RANK: usize = 64;

/// The pickles of a tar container's binary member, read in turn from `data`.
struct TarMember<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> TarMember<'a> {
    /// The next pickle, through the restricted machine.
    fn pickle(&mut self) -> Result<super::pickle::Pickle, String> {
        let p = super::pickle::parse_dialect(&self.data[self.at..], super::pickle::Dialect::Torch)
            .map_err(|e| e.to_string())?;
        self.at += p.end;
        Ok(p)
    }

    /// A count pickle (a non-negative int).
    fn count(&mut self, what: &str) -> Result<usize, String> {
        let p = self.pickle()?;
        match p.node(p.root) {
            super::pickle::Node::Int(n) if *n >= 0 => Ok(*n as usize),
            other => Err(format!("the {what} count is {other:?}, not a count")),
        }
    }

    /// `n` raw bytes.
    fn skip(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| format!("{what} runs past the end of the member"))?;
        let bytes = &self.data[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn i64(&mut self, what: &str) -> Result<i64, String> {
        let b = self.skip(8, what)?;
        Ok(i64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// Nothing after the last pickle.
    fn end(&self) -> Result<(), String> {
        match self.data.len() - self.at {
            0 => Ok(()),
            n => Err(format!("{n} bytes after its last pickle")),
        }
    }
}

/// The `storages` member: a count, per storage a `(key, location, storage type)` pickle, an i64
/// element count and the bytes, then a pickle of the storage views. Every pickle goes through
/// the restricted machine (torch's `_legacy_load` unpickles each).
fn scan_tar_storages(data: &[u8]) -> Result<(), String> {
    use super::pickle::{Global, Node};
    let mut m = TarMember { data, at: 0 };
    for i in 0..m.count("storage")? {
        let meta = m.pickle()?;
        let storage_type = match meta.node(meta.root) {
            Node::Tuple(fields) if fields.len() == 3 => match meta.node(fields[2]) {
                Node::Global(Global::Other(name) | Global::Torch(name)) => name.clone(),
                other => return Err(format!("storage {i}: its type is {other:?}, not a class")),
            },
            other => return Err(format!("storage {i}: metadata {other:?}, not a 3-tuple")),
        };
        let element = storage_type
            .strip_prefix("torch.")
            .and_then(|t| STORAGE_ELEMENT_BYTES.iter().find(|(n, _)| *n == t))
            .map(|(_, b)| *b)
            .ok_or_else(|| format!("storage {i}: unknown storage type {storage_type}"))?;
        let count = m.i64("a storage's element count")?;
        let bytes = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(element))
            .ok_or_else(|| format!("storage {i}: {count} elements"))?;
        m.skip(bytes, "a storage")?;
    }
    m.pickle()?;
    m.end()
}

/// The `tensors` member: a count, per tensor a `(key, storage key, tensor type)` pickle, an i32
/// rank, 4 bytes of padding, the sizes, strides and storage offset as i64.
fn scan_tar_tensors(data: &[u8]) -> Result<(), String> {
    let mut m = TarMember { data, at: 0 };
    for i in 0..m.count("tensor")? {
        m.pickle()?;
        let b = m.skip(8, "a tensor's rank")?;
        let rank = i32::from_le_bytes(b[..4].try_into().expect("4 bytes"));
        let rank = usize::try_from(rank)
            .ok()
            .filter(|&r| r <= MAX_TAR_RANK)
            .ok_or_else(|| format!("tensor {i}: rank {rank}"))?;
        m.skip(16 * rank + 8, "a tensor's sizes, strides and offset")?;
    }
    m.end()
}

/// The regular members of a (ustar) tar archive: name and contents.
fn tar_members(bytes: &[u8]) -> Result<Vec<(String, &[u8])>, FormatError> {
    let bad = |what: &str| FormatError::Torch(format!("tar container: {what}"));
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= bytes.len() {
        let header = &bytes[at..at + 512];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&header[..name_end]).to_string();
        let size_field = std::str::from_utf8(&header[124..136])
            .map_err(|_| bad("a member size is not octal"))?
            .trim_matches(|c: char| c == '\0' || c == ' ');
        let size =
            usize::from_str_radix(size_field, 8).map_err(|_| bad("a member size is not octal"))?;
        let start = at + 512;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| bad("a member runs past the end of the file"))?;
        if matches!(header[156], b'0' | 0) {
            out.push((name, &bytes[start..end]));
        }
        at = start + size.div_ceil(512) * 512;
    }
    Ok(out)
}

/// Read a PyTorch checkpoint into `ck`.
pub fn read(path: &Path, ck: &mut Checkpoint) -> Result<(), FormatError> {
    let reader = pytorch_reader::PytorchReader::new(path)
        .map_err(|e| FormatError::Torch(explain(e.to_string())))?;
    let mut tensors: Vec<Tensor> = reader
        .into_tensors()
        .into_iter()
        .map(|(name, t)| {
            let dtype = match t.dtype() {
                pytorch_reader::DType::F64 => DType::F64,
                pytorch_reader::DType::F32 => DType::F32,
                pytorch_reader::DType::F16 => DType::F16,
                pytorch_reader::DType::BF16 => DType::BF16,
                pytorch_reader::DType::I64 => DType::I64,
                pytorch_reader::DType::I32 => DType::I32,
                pytorch_reader::DType::I16 => DType::I16,
                pytorch_reader::DType::I8 => DType::I8,
                pytorch_reader::DType::U64 => DType::U64,
                pytorch_reader::DType::U32 => DType::U32,
                pytorch_reader::DType::U16 => DType::U16,
                pytorch_reader::DType::U8 => DType::U8,
                pytorch_reader::DType::Bool => DType::Bool,
            };
            let shape = t.shape().to_vec();
            Tensor::new(name, dtype, shape, Storage::Torch(t))
        })
        .collect();
    tensors.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    ck.tensors = tensors;
    // Plain values beside the tensors (epoch, arch, ...): informative only, so a file whose
    // non-tensor part pytorch-reader cannot represent still converts.
    if let Ok(root) = pytorch_reader::PytorchReader::read_pickle_data(path, None) {
        plain_values(&root, String::new(), 0, &mut ck.values);
    }
    Ok(())
}

/// Most plain values collected from a PyTorch file.
const MAX_VALUES: usize = 1000;
/// Longest list of scalars kept as a value.
const MAX_LIST: usize = 16;

fn plain_values(
    v: &pytorch_reader::PickleValue,
    name: String,
    depth: usize,
    out: &mut Vec<(String, serde_json::Value)>,
) {
    use pytorch_reader::PickleValue as P;
    use serde_json::Value;
    if out.len() >= MAX_VALUES || depth > 32 {
        return;
    }
    let scalar = |v: &P| -> Option<Value> {
        Some(match v {
            P::None => Value::Null,
            P::Bool(b) => Value::Bool(*b),
            P::Int(i) => Value::from(*i),
            P::Float(f) => Value::from(*f),
            P::String(s) => Value::String(s.clone()),
            _ => return None,
        })
    };
    match v {
        P::Dict(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| natural_cmp(a, b));
            for k in keys {
                let n = if name.is_empty() {
                    k.clone()
                } else {
                    format!("{name}.{k}")
                };
                plain_values(&map[k], n, depth + 1, out);
            }
        }
        P::List(items) if items.len() <= MAX_LIST => {
            if let Some(list) = items.iter().map(scalar).collect::<Option<Vec<_>>>() {
                out.push((name, Value::Array(list)));
            }
        }
        other => {
            if let Some(s) = scalar(other) {
                out.push((name, s));
            }
        }
    }
}

/// Compare dotted names with numeric segments in numeric order (`layer1.2` < `layer1.10`).
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let mut x = a.split('.');
    let mut y = b.split('.');
    loop {
        match (x.next(), y.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(p), Some(q)) => {
                let o = match (p.parse::<u64>(), q.parse::<u64>()) {
                    (Ok(i), Ok(j)) => i.cmp(&j),
                    _ => p.cmp(q),
                };
                if o.is_ne() {
                    return o;
                }
            }
        }
    }
}

/// PyTorch's storage class for a dtype.
fn storage_class(d: DType) -> &'static str {
    match d {
        DType::F64 => "DoubleStorage",
        DType::F32 => "FloatStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::I64 => "LongStorage",
        DType::I32 => "IntStorage",
        DType::I16 => "ShortStorage",
        DType::I8 => "CharStorage",
        DType::U8 => "ByteStorage",
        DType::Bool => "BoolStorage",
        DType::U16 | DType::U32 | DType::U64 => "UntypedStorage",
    }
}

/// Build `data.pkl` for `tensors` (storage keys are their indices).
fn data_pkl(tensors: &[Tensor]) -> Result<Vec<u8>, FormatError> {
    let mut p = vec![0x80, 2];
    emit::global(&mut p, "collections", "OrderedDict");
    p.extend_from_slice(b")R(");
    for (i, t) in tensors.iter().enumerate() {
        if matches!(t.dtype, DType::U16 | DType::U32 | DType::U64) {
            return Err(FormatError::Unsupported(format!(
                "tensor '{}' is {}, which the PyTorch writer does not support",
                t.name, t.dtype
            )));
        }
        emit::str(&mut p, &t.name);
        emit::global(&mut p, "torch._utils", "_rebuild_tensor_v2");
        p.push(b'(');
        // Persistent id ('storage', torch.<T>Storage, key, 'cpu', numel).
        p.push(b'(');
        emit::str(&mut p, "storage");
        emit::global(&mut p, "torch", storage_class(t.dtype));
        emit::str(&mut p, &i.to_string());
        emit::str(&mut p, "cpu");
        emit::int(&mut p, t.numel() as u64);
        p.extend_from_slice(b"tQ");
        emit::int(&mut p, 0);
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        let mut strides = vec![1u64; shape.len()];
        for k in (0..shape.len().saturating_sub(1)).rev() {
            strides[k] = strides[k + 1] * shape[k + 1].max(1);
        }
        emit::int_tuple(&mut p, shape);
        emit::int_tuple(&mut p, strides);
        p.push(0x89);
        emit::global(&mut p, "collections", "OrderedDict");
        p.extend_from_slice(b")RtR");
    }
    p.extend_from_slice(b"u.");
    Ok(p)
}

/// Write `tensors` as a `torch.save` zip archive whose records sit under `root/`.
pub fn write<W: Write + Seek>(out: W, root: &str, tensors: &[Tensor]) -> Result<W, FormatError> {
    use zip::write::SimpleFileOptions;
    let zerr = |e: zip::result::ZipError| FormatError::Torch(e.to_string());
    let opts = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(false);
    let mut zw = zip::ZipWriter::new(out);
    let entry = |zw: &mut zip::ZipWriter<W>,
                 name: &str,
                 data: &[u8],
                 align: bool|
     -> Result<(), FormatError> {
        let big = data.len() as u64 >= u32::MAX as u64;
        let o = opts.large_file(big);
        let o = if align { o.with_alignment(64) } else { o };
        zw.start_file(format!("{root}/{name}"), o).map_err(zerr)?;
        zw.write_all(data)?;
        Ok(())
    };
    entry(&mut zw, "data.pkl", &data_pkl(tensors)?, true)?;
    entry(&mut zw, ".format_version", b"1", false)?;
    entry(&mut zw, ".storage_alignment", b"64", false)?;
    entry(&mut zw, "byteorder", b"little", false)?;
    for (i, t) in tensors.iter().enumerate() {
        let bytes = t.bytes()?;
        entry(&mut zw, &format!("data/{i}"), &bytes, true)?;
    }
    entry(&mut zw, "version", b"3\n", false)?;
    entry(
        &mut zw,
        ".data/serialization_id",
        b"0000000000000000000000000000000000000000",
        false,
    )?;
    zw.finish().map_err(zerr)
}

/// A reader error, with what to do where the cause is known: zip 9.8 (under pytorch-reader)
/// rejects a valid `torch.save` zip whose first central-directory record is exactly as long as
/// the zip64 end records (76 bytes: a root folder of 21 characters, which `torch.save` takes
/// from the file name it saved to), taking the wrong record for the directory's start.
fn explain(message: String) -> String {
    if message.contains("Invalid Central Directory header") {
        format!(
            "{message} (if PyTorch reads this file, it may be the zip crate's misreading of archives \
             whose root folder name has 21 characters: save it again under a name of another length)"
        )
    } else {
        message
    }
}
