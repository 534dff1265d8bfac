//! A restricted pickle reader: it builds an inert object graph and never calls anything.
//!
//! Python's `pickle` runs whatever callable a file names (`os.system` included). This reader
//! instead knows a fixed allowlist of globals — the numpy and container constructors that
//! Paddle and numpy checkpoints use — and gives each call of one of them a fixed, data-only
//! meaning. A call of any other global is refused with an error naming it.
//!
//! Values live in an arena and are referred to by [`Id`]. The memo stores ids, so `GET`
//! shares a value rather than copying it: a memo bomb costs one id per reference. Byte
//! strings stay in the input buffer ([`Bytes::Span`]), so array data is never copied here.
//! Every count and length a file declares is checked against the bytes that remain, and
//! the arena is capped at [`MAX_NODES`].
//!
//! Opcodes follow CPython's `Lib/pickle.py` (protocols 0 to 5).
//!
//! Two dialects ([`Dialect`]): Paddle's and numpy's pickles (the data-only meanings above), and
//! the pickles inside PyTorch containers, which are scanned before pytorch-reader reads them —
//! the allowlist of `torch.load(weights_only=True)` (`torch/_weights_only_unpickler.py`): the
//! `torch._utils._rebuild_*` functions, `torch.Size`, `torch.device`, the layout getter, storage
//! persistent ids, `collections.OrderedDict`, the builtin containers, numpy arrays. Whatever
//! else a file calls is refused, as in a Paddle file.

use crate::latin1::{decode_latin1, latin1_len};
use crate::tensor::GiveBack;
use std::collections::HashMap;
use std::ops::Range;
use thiserror::Error;

/// Most values one pickle may create (about 40 bytes each).
pub const MAX_NODES: usize = 4_000_000;
/// Most `MARK`s open at once.
pub const MAX_MARKS: usize = 10_000;
/// Strings longer than this stay in the input rather than being copied (protocol 2 writes
/// array data as latin1 text).
pub const LONG_STRING: usize = 4096;

/// Which files' pickles, and so which globals may be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Paddle and numpy checkpoints.
    Paddle,
    /// The pickles of PyTorch containers (`data.pkl`, legacy streams): scanned, not read.
    Torch,
}

/// Index of a value in the [`Pickle`] arena.
pub type Id = u32;

/// Why a pickle was not read.
#[derive(Debug, Error, PartialEq)]
pub enum PickleError {
    /// The stream ended before `STOP`, or a length ran past its end.
    #[error("truncated pickle (ended at byte {0} before STOP)")]
    Truncated(usize),
    /// An opcode this reader does not know.
    #[error("unknown pickle opcode 0x{op:02x} at byte {at}")]
    UnknownOpcode { op: u8, at: usize },
    /// An opcode that cannot appear in a checkpoint (extensions, out-of-band buffers, ...).
    #[error("pickle opcode {name} at byte {at} is not allowed in a checkpoint")]
    Forbidden { name: &'static str, at: usize },
    /// A call of a global outside the allowlist.
    #[error("refused pickle global {0}")]
    RefusedGlobal(String),
    /// An allowed global called with arguments of an unexpected shape.
    #[error("{0}")]
    BadCall(String),
    /// The stack or marks disagree with an opcode.
    #[error("malformed pickle at byte {at}: {what}")]
    Malformed { at: usize, what: String },
    /// More values than [`MAX_NODES`], or more marks than [`MAX_MARKS`].
    #[error("pickle is too large or too deeply nested (limit {0} values)")]
    TooLarge(usize),
    /// Bytes after `STOP` in a file that holds one pickle (a second pickle appended).
    #[error("{0} bytes after the pickle's STOP (a second pickle appended?)")]
    Trailing(usize),
}

/// Bytes of a pickled byte string, left in the input where possible.
#[derive(Debug, Clone, PartialEq)]
pub enum Bytes {
    /// A range of the input buffer.
    Span(Range<usize>),
    /// Protocol-2 bytes written as `_codecs.encode(str, 'latin1')`: a UTF-8 range of the
    /// input whose code points (all ≤ 255) are the bytes; `len` is their count.
    Latin1 { utf8: Range<usize>, len: usize },
    /// Bytes produced by the reader itself (small constructors only).
    Owned(Vec<u8>),
}

impl Bytes {
    /// Number of bytes this value stands for.
    pub fn len(&self) -> usize {
        match self {
            Bytes::Span(r) => r.len(),
            Bytes::Latin1 { len, .. } => *len,
            Bytes::Owned(v) => v.len(),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes, decoded where needed, from the input they refer to.
    pub fn to_vec(&self, input: &[u8]) -> Vec<u8> {
        match self {
            Bytes::Span(r) => input[r.clone()].to_vec(),
            // Checked when parsed; input changed since gives no bytes, which the caller's
            // length checks refuse.
            Bytes::Latin1 { utf8, len } => {
                decode_latin1(&input[utf8.clone()], *len).unwrap_or_default()
            }
            Bytes::Owned(v) => v.clone(),
        }
    }
}

/// The globals this reader knows. Anything else is [`Global::Other`], which may be
/// referred to but never called.
#[derive(Debug, Clone, PartialEq)]
pub enum Global {
    /// `numpy.(_)core.multiarray._reconstruct`
    NumpyReconstruct,
    /// `numpy.ndarray`
    NumpyNdarray,
    /// `numpy.dtype`
    NumpyDtype,
    /// `numpy.(_)core.multiarray.scalar`
    NumpyScalar,
    /// `numpy.(_)core.numeric._frombuffer` (protocol 5)
    NumpyFromBuffer,
    /// `collections.OrderedDict` and `builtins.dict`
    Dict,
    /// `builtins.tuple`
    Tuple,
    /// `builtins.list`
    List,
    /// `builtins.set` / `frozenset`
    Set,
    /// `builtins.bytearray` / `bytes`
    ByteArray,
    /// `_codecs.encode`
    CodecsEncode,
    /// `builtins.eval`: only Paddle's exact `eval('data', {'data': ndarray})` form is accepted.
    Eval,
    /// `paddle.framework.io_utils._reconstruct_dense_tensor_data`
    PaddleDenseTensor,
    /// A function of torch's weights-only allowlist (`torch._utils._rebuild_tensor_v2`, ...):
    /// its call gives an opaque value (pytorch-reader reads the tensors).
    Torch(String),
    /// Any other global: inert unless called, which is refused.
    Other(String),
}

/// The torch functions `torch.load(weights_only=True)` calls (torch 2.x
/// `_weights_only_unpickler._get_allowed_globals`, the tensor forms).
const TORCH_CALLS: &[&str] = &[
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_sparse_tensor",
    "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_nested_tensor",
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._tensor._rebuild_from_type_v2",
    "torch.serialization._get_layout",
    "torch.Size",
    "torch.device",
];

impl Global {
    fn resolve(module: &str, name: &str, dialect: Dialect) -> Global {
        if dialect == Dialect::Torch {
            let full = format!("{module}.{name}");
            if TORCH_CALLS.contains(&full.as_str()) {
                return Global::Torch(full);
            }
            let builtins = matches!(module, "builtins" | "__builtin__");
            // numpy is outside torch's default weights-only allowlist (torch 2.6+ refuses
            // numpy arrays and scalars in a checkpoint unless the caller allows them).
            if (builtins && name == "eval")
                || module == "paddle.framework.io_utils"
                || (module == "_codecs" && name != "encode")
                || module == "numpy"
                || module.starts_with("numpy.")
            {
                return Global::Other(full);
            }
        }
        let numpy_core = matches!(
            module,
            "numpy.core.multiarray"
                | "numpy._core.multiarray"
                | "numpy.core.numeric"
                | "numpy._core.numeric"
        );
        let builtins = matches!(module, "builtins" | "__builtin__");
        match (module, name) {
            (_, "_reconstruct") if numpy_core => Global::NumpyReconstruct,
            (_, "scalar") if numpy_core => Global::NumpyScalar,
            (_, "_frombuffer") if numpy_core => Global::NumpyFromBuffer,
            ("numpy", "ndarray") => Global::NumpyNdarray,
            ("numpy", "dtype") => Global::NumpyDtype,
            ("collections", "OrderedDict") => Global::Dict,
            (_, "dict") if builtins => Global::Dict,
            (_, "tuple") if builtins => Global::Tuple,
            (_, "list") if builtins => Global::List,
            (_, "set" | "frozenset") if builtins => Global::Set,
            (_, "bytearray" | "bytes") if builtins => Global::ByteArray,
            ("_codecs", "encode") => Global::CodecsEncode,
            (_, "eval") if builtins => Global::Eval,
            ("paddle.framework.io_utils", "_reconstruct_dense_tensor_data") => {
                Global::PaddleDenseTensor
            }
            _ => Global::Other(format!("{module}.{name}")),
        }
    }
}

/// A numpy element type as pickled (`numpy.dtype('<f4')`).
#[derive(Debug, Clone, PartialEq)]
pub struct NpDtype {
    /// Kind character: `f`, `i`, `u`, `b`, `c`, `O`, `U`, `V`, ...
    pub kind: char,
    /// Bytes per element.
    pub size: usize,
    /// Stored big-endian.
    pub big_endian: bool,
}

/// A numpy array reconstructed from its pickled state.
#[derive(Debug, Clone, PartialEq)]
pub struct NpArray {
    /// Element type.
    pub dtype: NpDtype,
    /// Extents, outermost first.
    pub shape: Vec<usize>,
    /// Stored column-major.
    pub fortran: bool,
    /// Raw element bytes.
    pub data: Bytes,
}

/// One value of the object graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits; its value is not kept.
    BigInt,
    Float(f64),
    Str(String),
    /// A string longer than [`LONG_STRING`], left in the input (a UTF-8 range), with its
    /// character count when every character is ≤ U+00FF (i.e. it can be latin1 bytes).
    LongStr {
        utf8: Range<usize>,
        latin1: Option<usize>,
    },
    Bytes(Bytes),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    Global(Global),
    /// `_reconstruct(ndarray, ...)` awaiting its `BUILD` state.
    PendingArray,
    Array(NpArray),
    Dtype(NpDtype),
    /// A numpy scalar: dtype and raw bytes.
    Scalar(NpDtype, Bytes),
    /// What a torch allowlisted call or a storage's persistent id stands for (not read here).
    Opaque,
}

/// A parsed pickle: the arena and its root value.
#[derive(Debug)]
pub struct Pickle {
    nodes: Vec<Node>,
    /// The value `STOP` returned.
    pub root: Id,
    /// Byte offset just past `STOP` (legacy PyTorch files hold several pickles in a row).
    pub end: usize,
}

impl Pickle {
    /// Whether this pickle ends its `len`-byte input: a file that holds one pickle must hold
    /// nothing after its `STOP`.
    pub fn ends_input(&self, len: usize) -> Result<(), PickleError> {
        match len - self.end {
            0 => Ok(()),
            trailing => Err(PickleError::Trailing(trailing)),
        }
    }

    /// The value with this id.
    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id as usize]
    }

    /// Number of values in the arena.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the arena is empty (never, for a parsed pickle).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The string at `id`, if it is one.
    pub fn str(&self, id: Id) -> Option<&str> {
        match self.node(id) {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Parse one pickle from the start of `input`.
pub fn parse(input: &[u8]) -> Result<Pickle, PickleError> {
    parse_with(input, &|_| {})
}

/// Parse one pickle of `dialect` (nothing is given back to a mapping as it is scanned).
pub fn parse_dialect(input: &[u8], dialect: Dialect) -> Result<Pickle, PickleError> {
    let mut m = Machine::new(input);
    m.dialect = dialect;
    m.run()
}

/// Parse one pickle, calling `release` with each range of a long string once it has been
/// scanned (a memory-mapped input gives those pages back).
pub fn parse_with(input: &[u8], release: &dyn Fn(Range<usize>)) -> Result<Pickle, PickleError> {
    let mut m = Machine::new(input);
    m.give_back = GiveBack::new(release, 0);
    m.run()
}

/// Bytes of a long string scanned between two `release` calls.
const SCAN_CHUNK: usize = 16 << 20;

struct Machine<'a> {
    dialect: Dialect,
    /// Gives the input behind back (a memory map's pages).
    give_back: GiveBack<&'a dyn Fn(Range<usize>)>,
    input: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
}

impl<'a> Machine<'a> {
    fn new(input: &'a [u8]) -> Self {
        Machine {
            dialect: Dialect::Paddle,
            give_back: GiveBack::new(&|_| {}, 0),
            input,
            pos: 0,
            nodes: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn malformed(&self, what: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            at: self.pos,
            what: what.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<Range<usize>, PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.input.len())
            .ok_or(PickleError::Truncated(self.input.len()))?;
        let r = self.pos..end;
        self.pos = end;
        Ok(r)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        let r = self.take(1)?;
        Ok(self.input[r.start])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let r = self.take(N)?;
        let mut b = [0u8; N];
        b.copy_from_slice(&self.input[r]);
        Ok(b)
    }

    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.le::<4>()?))
    }

    fn u64_len(&mut self) -> Result<usize, PickleError> {
        let n = u64::from_le_bytes(self.le::<8>()?);
        usize::try_from(n).map_err(|_| PickleError::Truncated(self.input.len()))
    }

    fn line(&mut self) -> Result<&'a [u8], PickleError> {
        let rest = &self.input[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated(self.input.len()))?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    fn text_line(&mut self) -> Result<&'a str, PickleError> {
        let l = self.line()?;
        std::str::from_utf8(l).map_err(|_| self.malformed("text line is not UTF-8"))
    }

    fn utf8(&mut self, n: usize) -> Result<String, PickleError> {
        let r = self.take(n)?;
        String::from_utf8(self.input[r].to_vec()).map_err(|_| self.malformed("string is not UTF-8"))
    }

    fn alloc(&mut self, node: Node) -> Result<Id, PickleError> {
        if self.nodes.len() >= MAX_NODES {
            return Err(PickleError::TooLarge(MAX_NODES));
        }
        self.nodes.push(node);
        Ok((self.nodes.len() - 1) as Id)
    }

    fn push(&mut self, node: Node) -> Result<(), PickleError> {
        let id = self.alloc(node)?;
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.malformed("pop past a MARK"));
        }
        self.stack
            .pop()
            .ok_or_else(|| self.malformed("stack underflow"))
    }

    fn top(&self) -> Result<Id, PickleError> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.malformed("empty stack"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let m = self.marks.pop().ok_or_else(|| self.malformed("no MARK"))?;
        if m > self.stack.len() {
            return Err(self.malformed("MARK above the stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, key: u32) -> Result<(), PickleError> {
        let top = self.top()?;
        if self.memo.len() >= MAX_NODES {
            return Err(PickleError::TooLarge(MAX_NODES));
        }
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<(), PickleError> {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| self.malformed(format!("memo key {key} was never stored")))?;
        self.stack.push(id);
        Ok(())
    }

    fn int(&mut self, v: i64) -> Result<(), PickleError> {
        self.push(Node::Int(v))
    }

    fn long_bytes(&mut self, n: usize) -> Result<(), PickleError> {
        let r = self.take(n)?;
        if n > 8 {
            return self.push(Node::BigInt);
        }
        let b = &self.input[r];
        let mut v: i64 = 0;
        for (i, &byte) in b.iter().enumerate() {
            v |= (byte as i64) << (8 * i);
        }
        if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
            v -= 1i64 << (8 * n);
        }
        self.int(v)
    }

    fn run(mut self) -> Result<Pickle, PickleError> {
        loop {
            // Give back the input behind: reading the opcodes between arrays' bytes maps in
            // whole large folios of the page cache (megabytes each), never released otherwise.
            if self.pos - self.give_back.from() >= SCAN_CHUNK {
                self.give_back.upto(self.pos);
            }
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.malformed(format!("unsupported protocol {proto}")));
                    }
                }
                0x95 => {
                    // FRAME: a length prefix only; frames change nothing for an in-memory reader.
                    self.le::<8>()?;
                }
                b'.' => {
                    let root = self
                        .stack
                        .pop()
                        .ok_or_else(|| self.malformed("STOP on an empty stack"))?;
                    return Ok(Pickle {
                        nodes: self.nodes,
                        root,
                        end: self.pos,
                    });
                }
                b'(' => {
                    if self.marks.len() >= MAX_MARKS {
                        return Err(PickleError::TooLarge(MAX_MARKS));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'N' => self.push(Node::None)?,
                0x88 => self.push(Node::Bool(true))?,
                0x89 => self.push(Node::Bool(false))?,
                b'I' => {
                    let l = self.text_line()?;
                    let node = match l {
                        "00" => Node::Bool(false),
                        "01" => Node::Bool(true),
                        _ => Node::Int(l.trim().parse().map_err(|_| self.malformed("bad INT"))?),
                    };
                    self.push(node)?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.le::<4>()?);
                    self.int(v as i64)?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.int(v as i64)?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le::<2>()?);
                    self.int(v as i64)?;
                }
                b'L' => {
                    let l = self.text_line()?.trim_end_matches('L');
                    let node = l.parse().map(Node::Int).unwrap_or(Node::BigInt);
                    self.push(node)?;
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    self.long_bytes(n)?;
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.le::<4>()?);
                    let n =
                        usize::try_from(n).map_err(|_| self.malformed("negative LONG4 length"))?;
                    self.long_bytes(n)?;
                }
                b'F' => {
                    let l = self.text_line()?;
                    let v = l.trim().parse().map_err(|_| self.malformed("bad FLOAT"))?;
                    self.push(Node::Float(v))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le::<8>()?);
                    self.push(Node::Float(v))?;
                }
                b'S' => {
                    // Protocol-0 quoted string: kept as text, escapes are not decoded.
                    let l = self.text_line()?;
                    let s = l.trim_matches(|c| c == '\'' || c == '"').to_string();
                    self.push(Node::Str(s))?;
                }
                b'T' => {
                    let n = i32::from_le_bytes(self.le::<4>()?);
                    let n = usize::try_from(n)
                        .map_err(|_| self.malformed("negative BINSTRING length"))?;
                    let r = self.take(n)?;
                    self.push(Node::Bytes(Bytes::Span(r)))?;
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let r = self.take(n)?;
                    self.push(Node::Bytes(Bytes::Span(r)))?;
                }
                b'V' => {
                    let s = self.text_line()?.to_string();
                    self.push(Node::Str(s))?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.utf8_str_node(n)?;
                    self.push(s)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.utf8_str_node(n)?;
                    self.push(s)?;
                }
                0x8d => {
                    let n = self.u64_len()?;
                    let s = self.utf8_str_node(n)?;
                    self.push(s)?;
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let r = self.take(n)?;
                    self.push(Node::Bytes(Bytes::Span(r)))?;
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let r = self.take(n)?;
                    self.push(Node::Bytes(Bytes::Span(r)))?;
                }
                0x8e | 0x96 => {
                    let n = self.u64_len()?;
                    let r = self.take(n)?;
                    self.push(Node::Bytes(Bytes::Span(r)))?;
                }
                b')' => self.push(Node::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items))?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items))?;
                }
                b']' => self.push(Node::List(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items))?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let list = self.top()?;
                    self.extend_list(list, vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.extend_list(list, items)?;
                }
                b'}' => self.push(Node::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Node::Dict(pairs))?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.extend_dict(d, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let d = self.top()?;
                    self.extend_dict(d, pairs)?;
                }
                0x8f => self.push(Node::Set(Vec::new()))?,
                0x90 => {
                    let items = self.pop_mark()?;
                    let s = self.top()?;
                    match &mut self.nodes[s as usize] {
                        Node::Set(v) => v.extend(items),
                        _ => return Err(self.malformed("ADDITEMS on a value that is not a set")),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::Set(items))?;
                }
                b'c' => {
                    let module = self.text_line()?.to_string();
                    let name = self.text_line()?.to_string();
                    let g = self.referable(Global::resolve(&module, &name, self.dialect))?;
                    self.push(Node::Global(g))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Node::Str(m), Node::Str(n)) = (self.node(module), self.node(name)) else {
                        return Err(self.malformed("STACK_GLOBAL needs two strings"));
                    };
                    let g = self.referable(Global::resolve(m, n, self.dialect))?;
                    self.push(Node::Global(g))?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let id = self.call(func, args)?;
                    self.stack.push(id);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let id = self.call(cls, args)?;
                    self.stack.push(id);
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let id = self.call(cls, args)?;
                    self.stack.push(id);
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?;
                    self.build(obj, state)?;
                }
                b'p' => {
                    let l = self.text_line()?;
                    let k = l.trim().parse().map_err(|_| self.malformed("bad PUT"))?;
                    self.memo_put(k)?;
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'g' => {
                    let l = self.text_line()?;
                    let k = l.trim().parse().map_err(|_| self.malformed("bad GET"))?;
                    self.memo_get(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                // A storage of a PyTorch container: `('storage', torch.<T>Storage, key, ...)`.
                b'P' if self.dialect == Dialect::Torch => {
                    self.text_line()?;
                    self.push(Node::Opaque)?;
                }
                b'Q' if self.dialect == Dialect::Torch => {
                    self.pop()?;
                    self.push(Node::Opaque)?;
                }
                b'P' | b'Q' => return Err(PickleError::Forbidden { name: "PERSID", at }),
                0x82..=0x84 => return Err(PickleError::Forbidden { name: "EXT", at }),
                0x97 | 0x98 => {
                    return Err(PickleError::Forbidden {
                        name: "out-of-band buffer",
                        at,
                    })
                }
                b'i' | b'o' => {
                    return Err(PickleError::Forbidden {
                        name: "INST/OBJ",
                        at,
                    })
                }
                _ => return Err(PickleError::UnknownOpcode { op, at }),
            }
        }
    }

    fn node(&self, id: Id) -> &Node {
        &self.nodes[id as usize]
    }

    fn utf8_str_node(&mut self, n: usize) -> Result<Node, PickleError> {
        if n <= LONG_STRING {
            return Ok(Node::Str(self.utf8(n)?));
        }
        let r = self.take(n)?;
        // Characters ≤ U+00FF (then it is valid UTF-8) are counted chunk by chunk, giving
        // scanned pages back; anything else gets the full UTF-8 check.
        let s = &self.input[r.clone()];
        let mut count = Some(0usize);
        let mut at = 0;
        while at < s.len() {
            let end = crate::latin1::piece_end(s, at, SCAN_CHUNK);
            count = count.zip(latin1_len(&s[at..end])).map(|(a, b)| a + b);
            if count.is_none() {
                break;
            }
            self.give_back.upto(r.start + end);
            at = end;
        }
        if count.is_none() {
            std::str::from_utf8(s).map_err(|_| self.malformed("string is not UTF-8"))?;
        }
        let latin1 = count;
        Ok(Node::LongStr { utf8: r, latin1 })
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>, PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.malformed("odd number of items for a dict"));
        }
        Ok(items.chunks(2).map(|c| (c[0], c[1])).collect())
    }

    fn extend_list(&mut self, list: Id, items: Vec<Id>) -> Result<(), PickleError> {
        let at = self.pos;
        match &mut self.nodes[list as usize] {
            Node::List(v) => {
                v.extend(items);
                Ok(())
            }
            other => Err(PickleError::Malformed {
                at,
                what: format!("APPEND on {}", kind(other)),
            }),
        }
    }

    fn extend_dict(&mut self, dict: Id, pairs: Vec<(Id, Id)>) -> Result<(), PickleError> {
        let at = self.pos;
        match &mut self.nodes[dict as usize] {
            Node::Dict(v) => {
                v.extend(pairs);
                Ok(())
            }
            other => Err(PickleError::Malformed {
                at,
                what: format!("SETITEM on {}", kind(other)),
            }),
        }
    }

    fn items(&self, id: Id) -> Option<&[Id]> {
        match self.node(id) {
            Node::Tuple(v) | Node::List(v) => Some(v),
            _ => None,
        }
    }

    fn bad_call(&self, what: &str) -> PickleError {
        PickleError::BadCall(format!("{what} (at byte {})", self.pos))
    }

    /// Give a call of an allowlisted global its data-only meaning.
    /// A global as `GLOBAL`/`STACK_GLOBAL` may name it. In the torch dialect, as in
    /// `torch.load(weights_only=True)`, naming a global outside the allowlist is refused
    /// already, called or not, except references into torch's own namespace (storage types,
    /// dtypes, layouts, `torch.nn.parameter.Parameter`: arguments of the allowlisted calls),
    /// which stay inert unless called. The other dialects refuse only calls.
    fn referable(&self, g: Global) -> Result<Global, PickleError> {
        match &g {
            Global::Other(name)
                if self.dialect == Dialect::Torch && !name.starts_with("torch.") =>
            {
                Err(PickleError::RefusedGlobal(name.clone()))
            }
            _ => Ok(g),
        }
    }

    fn call(&mut self, func: Id, args: Id) -> Result<Id, PickleError> {
        let Node::Global(g) = self.node(func).clone() else {
            return Err(self.malformed(format!("call of {}", kind(self.node(func)))));
        };
        let args: Vec<Id> = match self.items(args) {
            Some(a) => a.to_vec(),
            None => return Err(self.malformed("call arguments are not a tuple")),
        };
        let node = match g {
            Global::Other(name) => return Err(PickleError::RefusedGlobal(name)),
            Global::Torch(_) => Node::Opaque,
            Global::Dict => match args.as_slice() {
                [] => Node::Dict(Vec::new()),
                [pairs] => {
                    let mut out = Vec::new();
                    for &p in self.items(*pairs).unwrap_or(&[]) {
                        match self.items(p) {
                            Some([k, v]) => out.push((*k, *v)),
                            _ => return Err(self.bad_call("dict() of something other than pairs")),
                        }
                    }
                    Node::Dict(out)
                }
                _ => return Err(self.bad_call("dict() with more than one argument")),
            },
            Global::Tuple | Global::List | Global::Set => {
                let items = match args.as_slice() {
                    [] => Vec::new(),
                    [x] => match self.node(*x) {
                        Node::Tuple(v) | Node::List(v) | Node::Set(v) => v.clone(),
                        _ => return Err(self.bad_call("tuple()/list() of a non-sequence")),
                    },
                    _ => return Err(self.bad_call("tuple()/list() with several arguments")),
                };
                match g {
                    Global::Tuple => Node::Tuple(items),
                    Global::List => Node::List(items),
                    _ => Node::Set(items),
                }
            }
            Global::ByteArray => match args.as_slice() {
                [] => Node::Bytes(Bytes::Owned(Vec::new())),
                [b] => match self.node(*b) {
                    Node::Bytes(b) => Node::Bytes(b.clone()),
                    _ => return Err(self.bad_call("bytearray() of a non-bytes value")),
                },
                [s, enc] => self.encode(*s, *enc)?,
                _ => return Err(self.bad_call("bytearray() with too many arguments")),
            },
            Global::CodecsEncode => match args.as_slice() {
                [s, enc] => self.encode(*s, *enc)?,
                _ => return Err(self.bad_call("_codecs.encode needs (str, encoding)")),
            },
            Global::Eval => {
                // Paddle's DenseTensor form: eval('data', {'data': ndarray}). Never evaluated.
                match args.as_slice() {
                    [expr, globals] if self.str_is(*expr, "data") => match self.node(*globals) {
                        Node::Dict(p) if p.len() == 1 && self.str_is(p[0].0, "data") => {
                            if !matches!(self.node(p[0].1), Node::Array(_)) {
                                return Err(PickleError::RefusedGlobal("builtins.eval".into()));
                            }
                            return Ok(p[0].1);
                        }
                        _ => return Err(PickleError::RefusedGlobal("builtins.eval".into())),
                    },
                    _ => return Err(PickleError::RefusedGlobal("builtins.eval".into())),
                }
            }
            Global::PaddleDenseTensor => match args.as_slice() {
                [a] if matches!(self.node(*a), Node::Array(_)) => return Ok(*a),
                _ => return Err(self.bad_call("_reconstruct_dense_tensor_data needs one ndarray")),
            },
            Global::NumpyReconstruct => match args.as_slice() {
                [cls, ..] if matches!(self.node(*cls), Node::Global(Global::NumpyNdarray)) => {
                    Node::PendingArray
                }
                _ => return Err(self.bad_call("numpy _reconstruct of a class other than ndarray")),
            },
            Global::NumpyNdarray => return Err(self.bad_call("direct ndarray() call")),
            Global::NumpyDtype => match args.first().map(|a| self.node(*a)) {
                Some(Node::Str(s)) => Node::Dtype(parse_dtype(s).ok_or_else(|| {
                    PickleError::BadCall(format!("unsupported numpy dtype {s:?}"))
                })?),
                _ => return Err(self.bad_call("numpy dtype() without a type string")),
            },
            Global::NumpyScalar => match args.as_slice() {
                [d, b] => match (self.node(*d), self.node(*b)) {
                    (Node::Dtype(d), Node::Bytes(b)) if b.len() == d.size => {
                        Node::Scalar(d.clone(), b.clone())
                    }
                    _ => {
                        return Err(self.bad_call("numpy scalar() needs (dtype, bytes of its size)"))
                    }
                },
                _ => return Err(self.bad_call("numpy scalar() needs two arguments")),
            },
            Global::NumpyFromBuffer => self.frombuffer(&args)?,
        };
        self.alloc(node)
    }

    fn str_is(&self, id: Id, s: &str) -> bool {
        matches!(self.node(id), Node::Str(x) if x == s)
    }

    /// `_codecs.encode(str, 'latin1')`: the bytes protocol 2 writes for Python 3 `bytes`.
    fn encode(&self, s: Id, enc: Id) -> Result<Node, PickleError> {
        match self.node(enc) {
            Node::Str(e) if matches!(e.as_str(), "latin1" | "latin-1" | "iso-8859-1") => {}
            _ => return Err(self.bad_call("_codecs.encode with an encoding other than latin1")),
        }
        let utf8 = match self.node(s) {
            Node::Str(text) => text.as_bytes(),
            Node::LongStr {
                utf8,
                latin1: Some(len),
            } => {
                return Ok(Node::Bytes(Bytes::Latin1 {
                    utf8: utf8.clone(),
                    len: *len,
                }))
            }
            Node::LongStr { .. } => {
                return Err(self.bad_call("latin1 string with a character above U+00FF"))
            }
            _ => return Err(self.bad_call("_codecs.encode of a non-string")),
        };
        let len = latin1_len(utf8)
            .ok_or_else(|| self.bad_call("latin1 string with a character above U+00FF"))?;
        let bytes = decode_latin1(utf8, len)
            .ok_or_else(|| self.bad_call("latin1 string with a character above U+00FF"))?;
        Ok(Node::Bytes(Bytes::Owned(bytes)))
    }

    fn shape_of(&self, id: Id) -> Result<Vec<usize>, PickleError> {
        let items = self
            .items(id)
            .ok_or_else(|| self.bad_call("array shape is not a tuple"))?;
        items
            .iter()
            .map(|&d| match self.node(d) {
                Node::Int(v) if *v >= 0 => Ok(*v as usize),
                Node::Int(v) => Err(self.bad_call(&format!("negative array dimension {v}"))),
                _ => Err(self.bad_call("array dimension is not an integer")),
            })
            .collect()
    }

    fn frombuffer(&self, args: &[Id]) -> Result<Node, PickleError> {
        let [buf, dtype, shape, order, ..] = args else {
            return Err(self.bad_call("_frombuffer needs (buffer, dtype, shape, order)"));
        };
        let (Node::Bytes(data), Node::Dtype(dtype)) = (self.node(*buf), self.node(*dtype)) else {
            return Err(self.bad_call("_frombuffer needs bytes and a dtype"));
        };
        let shape = self.shape_of(*shape)?;
        let fortran = match self.node(*order) {
            Node::Str(o) if o == "C" => false,
            Node::Str(o) if o == "F" => true,
            Node::Str(o) => {
                return Err(self.bad_call(&format!("_frombuffer order {o:?} is not supported")))
            }
            _ => return Err(self.bad_call("_frombuffer order is not a string")),
        };
        // Order 'F' stores the C-order transpose, i.e. the array's column-major bytes.
        let arr = NpArray {
            dtype: dtype.clone(),
            shape,
            fortran,
            data: data.clone(),
        };
        check_array(&arr).map_err(|e| self.bad_call(&e))?;
        Ok(Node::Array(arr))
    }

    fn build(&mut self, obj: Id, state: Id) -> Result<(), PickleError> {
        match self.node(obj) {
            Node::PendingArray => {
                let items = self
                    .items(state)
                    .ok_or_else(|| self.bad_call("ndarray state is not a tuple"))?
                    .to_vec();
                // (version, shape, dtype, is_fortran, rawdata); version is absent in very old pickles.
                let rest = match items.len() {
                    5 => &items[1..],
                    4 => &items[..],
                    _ => return Err(self.bad_call("ndarray state has the wrong length")),
                };
                let shape = self.shape_of(rest[0])?;
                let Node::Dtype(dtype) = self.node(rest[1]).clone() else {
                    return Err(self.bad_call("ndarray state without a dtype"));
                };
                let fortran = match self.node(rest[2]) {
                    Node::Bool(b) => *b,
                    Node::Int(i) => *i != 0,
                    _ => return Err(self.bad_call("ndarray fortran flag is not a bool")),
                };
                let data = match self.node(rest[3]) {
                    Node::Bytes(b) => b.clone(),
                    Node::Str(_) | Node::LongStr { .. } => {
                        return Err(self.bad_call("ndarray data as text"))
                    }
                    Node::List(_) => {
                        return Err(PickleError::BadCall(
                            "object arrays (dtype=object) are not tensors and are refused".into(),
                        ))
                    }
                    _ => return Err(self.bad_call("ndarray data is not bytes")),
                };
                let arr = NpArray {
                    dtype,
                    shape,
                    fortran,
                    data,
                };
                check_array(&arr).map_err(|e| self.bad_call(&e))?;
                self.nodes[obj as usize] = Node::Array(arr);
                Ok(())
            }
            Node::Dtype(_) => {
                let items = self
                    .items(state)
                    .ok_or_else(|| self.bad_call("dtype state is not a tuple"))?
                    .to_vec();
                if items.len() < 8 {
                    return Err(self.bad_call("dtype state is too short"));
                }
                let endian = match self.node(items[1]) {
                    Node::Str(e) => e.clone(),
                    _ => return Err(self.bad_call("dtype byte order is not a string")),
                };
                for (i, what) in [(2, "sub-array"), (3, "field names"), (4, "fields")] {
                    if !matches!(self.node(items[i]), Node::None) {
                        return Err(PickleError::BadCall(format!(
                            "structured numpy dtypes ({what}) are not tensors"
                        )));
                    }
                }
                if let Node::Dtype(d) = &mut self.nodes[obj as usize] {
                    d.big_endian = endian == ">";
                }
                Ok(())
            }
            // OrderedDict/dict state (e.g. `__dict__`): nothing a checkpoint needs.
            Node::Dict(_) => Ok(()),
            // A rebuilt parameter's or tensor's state (torch: `requires_grad`, hooks).
            Node::Opaque if self.dialect == Dialect::Torch => Ok(()),
            other => Err(self.malformed(format!("BUILD on {}", kind(other)))),
        }
    }
}

/// Check that an array's byte count matches its shape and element size.
fn check_array(a: &NpArray) -> Result<(), String> {
    if !matches!(a.dtype.kind, 'f' | 'i' | 'u' | 'b' | 'c') {
        return Err(format!(
            "numpy dtype kind '{}' is not a tensor type",
            a.dtype.kind
        ));
    }
    let numel = a
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("array shape overflows")?;
    let bytes = numel
        .checked_mul(a.dtype.size)
        .ok_or("array size overflows")?;
    if bytes != a.data.len() {
        return Err(format!(
            "array of shape {:?} needs {} bytes but the file holds {}",
            a.shape,
            bytes,
            a.data.len()
        ));
    }
    Ok(())
}

/// Parse a numpy type string such as `f4`, `<i8`, `b1`.
pub fn parse_dtype(s: &str) -> Option<NpDtype> {
    let (big_endian, rest) = match s.as_bytes().first()? {
        b'>' | b'!' => (true, &s[1..]),
        b'<' | b'=' | b'|' => (false, &s[1..]),
        _ => (false, s),
    };
    let kind = rest.chars().next()?;
    let size: usize = match rest[kind.len_utf8()..].parse() {
        Ok(n) => n,
        Err(_) if rest.len() == 1 => match kind {
            '?' => {
                return Some(NpDtype {
                    kind: 'b',
                    size: 1,
                    big_endian,
                })
            }
            _ => return None,
        },
        Err(_) => return None,
    };
    if size == 0 || size > 16 {
        return None;
    }
    Some(NpDtype {
        kind,
        size,
        big_endian,
    })
}

fn kind(n: &Node) -> &'static str {
    match n {
        Node::None => "None",
        Node::Bool(_) => "a bool",
        Node::Int(_) | Node::BigInt => "an int",
        Node::Float(_) => "a float",
        Node::Str(_) | Node::LongStr { .. } => "a string",
        Node::Bytes(_) => "bytes",
        Node::Tuple(_) => "a tuple",
        Node::List(_) => "a list",
        Node::Dict(_) => "a dict",
        Node::Set(_) => "a set",
        Node::Global(_) => "a global",
        Node::PendingArray | Node::Array(_) => "an ndarray",
        Node::Dtype(_) => "a dtype",
        Node::Scalar(..) => "a numpy scalar",
        Node::Opaque => "a torch object",
    }
}

/// Opcodes for the writers (`.pth`'s `data.pkl`, `.pdparams`).
pub mod emit {
    /// `BINUNICODE s`
    pub fn str(buf: &mut Vec<u8>, s: &str) {
        buf.push(b'X');
        buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }

    /// `BININT` below 2^31, else `LONG1` of 8 bytes (values below 2^63).
    pub fn int(buf: &mut Vec<u8>, v: u64) {
        if v < (1 << 31) {
            buf.push(b'J');
            buf.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            buf.extend_from_slice(&[0x8a, 8]);
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// `GLOBAL module name`
    pub fn global(buf: &mut Vec<u8>, module: &str, name: &str) {
        buf.push(b'c');
        buf.extend_from_slice(module.as_bytes());
        buf.push(b'\n');
        buf.extend_from_slice(name.as_bytes());
        buf.push(b'\n');
    }

    /// `MARK ints... TUPLE`
    pub fn int_tuple(buf: &mut Vec<u8>, items: impl IntoIterator<Item = u64>) {
        buf.push(b'(');
        for i in items {
            int(buf, i);
        }
        buf.push(b't');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_refuses_naming_a_global_outside_its_allowlist() {
        // `posix.system` named and popped, never called; then `{}`.
        let named = b"\x80\x02cposix\nsystem\n0}.";
        assert_eq!(
            parse_dialect(named, Dialect::Torch).unwrap_err(),
            PickleError::RefusedGlobal("posix.system".into())
        );
        // Inert in the numpy/Paddle dialect, which refuses calls only.
        assert!(parse(named).is_ok());
        // STACK_GLOBAL too.
        let stacked = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x930}.";
        assert_eq!(
            parse_dialect(stacked, Dialect::Torch).unwrap_err(),
            PickleError::RefusedGlobal("builtins.eval".into())
        );
        // References into torch's namespace (a storage type) stay allowed.
        assert!(parse_dialect(b"\x80\x02ctorch\nFloatStorage\n0}.", Dialect::Torch).is_ok());
    }

    #[test]
    fn refuses_os_system() {
        let p = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.";
        assert_eq!(
            parse(p).unwrap_err(),
            PickleError::RefusedGlobal("os.system".into())
        );
    }

    #[test]
    fn memo_is_shared() {
        // [[], then 20 times: GET 0 twice into a list, PUT 0]
        let mut p = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..20 {
            p.extend_from_slice(b"(h\x00h\x00lq\x00");
        }
        p.push(b'.');
        let pk = parse(&p).unwrap();
        assert!(pk.len() < 30);
    }

    #[test]
    fn setitem_on_list_is_refused() {
        let p = b"\x80\x02]K\x01K\x02s.";
        assert!(matches!(parse(p), Err(PickleError::Malformed { .. })));
    }

    #[test]
    fn long1_is_sign_extended() {
        let p = b"\x80\x02\x8a\x01\xff.";
        let pk = parse(p).unwrap();
        assert_eq!(pk.node(pk.root), &Node::Int(-1));
    }

    #[test]
    fn latin1_strings() {
        let bytes: Vec<u8> = (0..=255u8).rev().collect();
        let text: String = bytes.iter().map(|&b| b as char).collect();
        let n = latin1_len(text.as_bytes()).unwrap();
        assert_eq!(n, 256);
        assert_eq!(decode_latin1(text.as_bytes(), n), Some(bytes));
        assert_eq!(latin1_len("é€".as_bytes()), None); // U+20AC
        assert_eq!(latin1_len(&[0xc3]), None); // lead at the end
        assert_eq!(latin1_len(&[0xa9, 0x41]), None); // continuation first
        assert_eq!(latin1_len(&[0x41, 0xc3, 0x41]), None); // lead without continuation
    }

    #[test]
    fn dtype_strings() {
        assert!(parse_dtype(">f4").unwrap().big_endian);
        assert_eq!(parse_dtype("u2").unwrap().size, 2);
        assert!(parse_dtype("O8").is_some());
        assert!(parse_dtype("").is_none());
    }
}
