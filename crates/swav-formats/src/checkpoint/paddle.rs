//! PaddlePaddle checkpoints: `paddle.save` (`.pdparams`, `.pdopt`, nested `.pd`), PASSL's
//! trainer checkpoints (`pickle.dump` of numpy arrays) and numpy pickles of any protocol.
//!
//! What `paddle.save` writes (python/paddle/framework/io.py, io_utils.py):
//! - a flat state_dict: `{name: ndarray}` plus `StructuredToParameterName@@`
//!   (`{structured name: variable name}`), which `paddle.load` drops;
//! - anything else (nested dicts, optimizer state): tensors pickled as
//!   `builtins.tuple((variable name, ndarray))`, and DenseTensors as
//!   `eval('data', {'data': ndarray})` (recognised by shape in [`super::pickle`], never run);
//! - with protocol 2 or 3, top-level arrays over 1 GiB cut into `key@@.N` slices, listed in
//!   `UnpackBigParamInfor@@` as `{key: {OriginShape, slices}}`, joined again here.
//!
//! Paddle keeps bfloat16 as numpy `uint16`, so `uint16` is read as bf16 on this path.

use super::numpy::{self, U16As};
use super::pickle::{self, emit, Id, Node, Pickle};
use super::{Checkpoint, FormatError};
use crate::tensor::{Buffer, Sink, Storage, Tensor};
use serde_json::Value;
use std::collections::HashMap;

/// Deepest nesting of containers walked.
pub const MAX_DEPTH: usize = 256;
/// Most values visited while walking, whatever the file: bounds shared-reference blow-ups.
pub const MAX_VISITS: usize = 8_000_000;
/// Visits allowed beyond twice the number of values the pickle holds. A tree is visited once
/// per value; only shared references (memo `GET`s of containers) make a walk longer.
pub const VISIT_SLACK: usize = 100_000;

/// The name-table key `paddle.save` adds to a flat state_dict.
pub const NAME_TABLE_KEY: &str = "StructuredToParameterName@@";
/// The key listing tensors split into slices.
pub const BIG_PARAM_KEY: &str = "UnpackBigParamInfor@@";

/// Read a pickle checkpoint into `ck`.
pub fn read(buf: &Buffer, ck: &mut Checkpoint) -> Result<(), FormatError> {
    let pk = pickle::parse_with(buf.bytes(), &|r| buf.release(r))?;
    pk.ends_input(buf.bytes().len())?;
    let mut w = Walker {
        pk: &pk,
        buf,
        visits: 0,
        max_visits: MAX_VISITS.min(2 * pk.len() + VISIT_SLACK),
        tensors: Vec::new(),
        values: Vec::new(),
        big: HashMap::new(),
        notes: Vec::new(),
    };
    w.walk(pk.root, String::new(), 0)?;
    let Walker {
        mut tensors,
        values,
        big,
        notes,
        ..
    } = w;
    join_slices(&mut tensors, big, &mut ck.notes)?;
    ck.tensors = tensors;
    ck.values = values;
    ck.notes.extend(notes);
    Ok(())
}

struct BigParam {
    shape: Vec<usize>,
    slices: Vec<String>,
}

struct Walker<'a> {
    pk: &'a Pickle,
    buf: &'a Buffer,
    visits: usize,
    max_visits: usize,
    tensors: Vec<Tensor>,
    values: Vec<(String, Value)>,
    big: HashMap<String, BigParam>,
    notes: Vec<String>,
}

fn join(prefix: &str, seg: &str) -> String {
    if prefix.is_empty() {
        seg.to_string()
    } else {
        format!("{prefix}.{seg}")
    }
}

impl Walker<'_> {
    fn walk(&mut self, id: Id, name: String, depth: usize) -> Result<(), FormatError> {
        self.visits += 1;
        if depth > MAX_DEPTH || self.visits > self.max_visits {
            return Err(FormatError::Structure(format!(
                "checkpoint structure is too deep or too large (limits: depth {MAX_DEPTH}, {} values visited)",
                self.max_visits
            )));
        }
        let pk = self.pk;
        match pk.node(id) {
            Node::Array(a) => {
                let t = numpy::tensor(name.clone(), a, self.buf, U16As::BF16)
                    .map_err(|e| FormatError::Structure(format!("{name}: {e}")))?;
                self.tensors.push(t);
            }
            Node::Dict(pairs) => {
                for &(k, v) in pairs {
                    let key = match pk.node(k) {
                        Node::Str(s) => s.clone(),
                        Node::Int(i) => i.to_string(),
                        Node::Bool(b) => b.to_string(),
                        _ => {
                            self.notes.push(format!(
                                "skipped an entry of '{name}' with a non-string key"
                            ));
                            continue;
                        }
                    };
                    if depth == 0 && key == NAME_TABLE_KEY {
                        self.notes.push(format!(
                            "dropped {NAME_TABLE_KEY} (Paddle's variable-name table)"
                        ));
                        continue;
                    }
                    if depth == 0 && key == BIG_PARAM_KEY {
                        self.big_params(v)?;
                        continue;
                    }
                    self.walk(v, join(&name, &key), depth + 1)?;
                }
            }
            // `paddle.save` of a non-state-dict object: tensors as (variable name, ndarray).
            Node::Tuple(items)
                if items.len() == 2 && pk.str(items[0]).is_some() && is_array(pk, items[1]) =>
            {
                self.walk(items[1], name, depth + 1)?;
            }
            Node::Tuple(items) | Node::List(items) => {
                for (i, &it) in items.iter().enumerate() {
                    self.walk(it, join(&name, &i.to_string()), depth + 1)?;
                }
            }
            Node::Scalar(d, b) => {
                let bytes = b.to_vec(self.buf.bytes());
                self.values.push((name, scalar_value(d, &bytes)));
            }
            Node::None => self.values.push((name, Value::Null)),
            Node::Bool(b) => self.values.push((name, Value::Bool(*b))),
            Node::Int(i) => self.values.push((name, Value::from(*i))),
            Node::Float(f) => self.values.push((name, Value::from(*f))),
            Node::Str(s) => self.values.push((name, Value::String(s.clone()))),
            Node::Global(g) => self
                .notes
                .push(format!("'{name}' is a reference to {g:?}; skipped")),
            _ => self.notes.push(format!(
                "'{name}' is not a tensor or a plain value; skipped"
            )),
        }
        Ok(())
    }

    fn big_params(&mut self, id: Id) -> Result<(), FormatError> {
        let pk = self.pk;
        let bad = |what: &str| FormatError::Structure(format!("{BIG_PARAM_KEY}: {what}"));
        let Node::Dict(entries) = pk.node(id) else {
            return Err(bad("not a dict"));
        };
        for &(k, v) in entries {
            let key = pk.str(k).ok_or_else(|| bad("non-string key"))?.to_string();
            let Node::Dict(fields) = pk.node(v) else {
                return Err(bad("entry is not a dict"));
            };
            let mut shape = None;
            let mut slices = None;
            for &(fk, fv) in fields {
                match pk.str(fk) {
                    Some("OriginShape") => {
                        shape = Some(ints(pk, fv).ok_or_else(|| bad("bad OriginShape"))?)
                    }
                    Some("slices") => {
                        let Some(Node::List(items) | Node::Tuple(items)) = Some(pk.node(fv)) else {
                            return Err(bad("slices is not a list"));
                        };
                        let names: Option<Vec<String>> = items
                            .iter()
                            .map(|&i| pk.str(i).map(str::to_string))
                            .collect();
                        slices = Some(names.ok_or_else(|| bad("slice name is not a string"))?);
                    }
                    _ => {}
                }
            }
            let (Some(shape), Some(slices)) = (shape, slices) else {
                return Err(bad("entry lacks OriginShape or slices"));
            };
            self.big.insert(key, BigParam { shape, slices });
        }
        Ok(())
    }
}

fn is_array(pk: &Pickle, id: Id) -> bool {
    matches!(pk.node(id), Node::Array(_))
}

fn ints(pk: &Pickle, id: Id) -> Option<Vec<usize>> {
    match pk.node(id) {
        Node::Tuple(v) | Node::List(v) => v
            .iter()
            .map(|&i| match pk.node(i) {
                Node::Int(n) if *n >= 0 => Some(*n as usize),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Join `key@@.N` slices back into the tensors they were cut from.
fn join_slices(
    tensors: &mut Vec<Tensor>,
    big: HashMap<String, BigParam>,
    notes: &mut Vec<String>,
) -> Result<(), FormatError> {
    for (key, info) in big {
        let mut parts = Vec::new();
        let mut dtype = None;
        let mut total = 0usize;
        for s in &info.slices {
            let pos = tensors.iter().position(|t| &t.name == s).ok_or_else(|| {
                FormatError::Structure(format!("slice '{s}' of '{key}' is missing"))
            })?;
            let t = tensors.remove(pos);
            if *dtype.get_or_insert(t.dtype) != t.dtype {
                return Err(FormatError::Structure(format!(
                    "slices of '{key}' differ in dtype"
                )));
            }
            total += t.numel();
            parts.push(t);
        }
        let numel: usize = info.shape.iter().product();
        if numel != total || parts.is_empty() {
            return Err(FormatError::Structure(format!(
                "slices of '{key}' hold {total} elements, its shape {:?} needs {numel}",
                info.shape
            )));
        }
        let dt = dtype.expect("at least one slice");
        tensors.push(Tensor::new(
            key.clone(),
            dt,
            info.shape,
            Storage::Concat(parts),
        ));
        notes.push(format!("joined '{key}' from {} slices", info.slices.len()));
    }
    Ok(())
}

fn scalar_value(d: &pickle::NpDtype, b: &[u8]) -> Value {
    let mut le = b.to_vec();
    if le.len() != d.size {
        return Value::String(format!(
            "<numpy {}{} scalar of {} bytes>",
            d.kind,
            d.size,
            le.len()
        ));
    }
    if d.big_endian {
        le.reverse();
    }
    match (d.kind, d.size) {
        ('f', 8) => Value::from(f64::from_le_bytes(le.try_into().unwrap())),
        ('f', 4) => Value::from(f32::from_le_bytes(le.try_into().unwrap()) as f64),
        ('i', 8) => Value::from(i64::from_le_bytes(le.try_into().unwrap())),
        ('i', 4) => Value::from(i32::from_le_bytes(le.try_into().unwrap())),
        ('u', 8) => Value::from(u64::from_le_bytes(le.try_into().unwrap())),
        ('b', 1) => Value::Bool(le[0] != 0),
        _ => Value::String(format!("<numpy {}{} scalar>", d.kind, d.size)),
    }
}

/// Write `tensors` as a flat state_dict the way `paddle.load` reads it: a pickle (protocol 4)
/// of `{name: ndarray}`.
///
/// Arrays use `numpy.core.multiarray._reconstruct`, which numpy 1.x and 2.x both load; bf16
/// is stored as `uint16` (Paddle's convention). Protocol 4 holds arrays of any size, so
/// nothing is split into `@@.N` slices.
pub fn write<W: Sink>(mut out: W, tensors: &[Tensor]) -> Result<W, FormatError> {
    let mut head = vec![0x80, 4, b'}', b'('];
    out.write_all(&head)?;
    for t in tensors {
        head.clear();
        emit::str(&mut head, &t.name);
        emit::global(&mut head, "numpy.core.multiarray", "_reconstruct");
        emit::global(&mut head, "numpy", "ndarray");
        head.extend_from_slice(b"K\x00\x85C\x01b\x87R");
        // State: (1, shape, dtype, False, data).
        head.extend_from_slice(b"(K\x01");
        emit::int_tuple(&mut head, t.shape.iter().map(|&d| d as u64));
        let code = match t.dtype {
            crate::tensor::DType::F64 => "f8",
            crate::tensor::DType::F32 => "f4",
            crate::tensor::DType::F16 => "f2",
            crate::tensor::DType::BF16 | crate::tensor::DType::U16 => "u2",
            crate::tensor::DType::I64 => "i8",
            crate::tensor::DType::I32 => "i4",
            crate::tensor::DType::I16 => "i2",
            crate::tensor::DType::I8 => "i1",
            crate::tensor::DType::U64 => "u8",
            crate::tensor::DType::U32 => "u4",
            crate::tensor::DType::U8 => "u1",
            crate::tensor::DType::Bool => "b1",
        };
        emit::global(&mut head, "numpy", "dtype");
        emit::str(&mut head, code);
        head.extend_from_slice(b"\x89\x88\x87R");
        let order = if t.dtype.size() == 1 { "|" } else { "<" };
        head.extend_from_slice(b"(K\x03");
        emit::str(&mut head, order);
        head.extend_from_slice(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89");
        let n = t.byte_len();
        if n <= u32::MAX as usize {
            head.push(b'B');
            head.extend_from_slice(&(n as u32).to_le_bytes());
        } else {
            head.push(0x8e);
            head.extend_from_slice(&(n as u64).to_le_bytes());
        }
        out.write_all(&head)?;
        out.put(t)?;
        out.write_all(b"tb")?;
    }
    out.write_all(b"u.")?;
    Ok(out)
}
