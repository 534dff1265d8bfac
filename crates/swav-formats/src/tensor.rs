//! Tensors as every checkpoint reader hands them over: a name, an element type, a shape and
//! a lazily read, mostly borrowed, byte source.
//!
//! Bytes are produced on demand ([`Tensor::bytes`]) in one canonical form — little-endian,
//! row-major — whatever the container stored, so writers copy one tensor at a time from a
//! memory-mapped input and never hold a whole model twice.

use std::borrow::Cow;
use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::Arc;

/// Bytes that are not a tensor's worth: their count differs from dtype × shape.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("tensor {name}: {bytes} bytes are not {shape:?} elements of {dtype}")]
pub struct ByteLengthError {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub bytes: usize,
}

/// Bytes read in one go when streaming a tensor to a writer.
pub const STREAM_CHUNK: usize = 8 << 20;

/// Latin-1 text decoded in one go: small enough that the decoded bytes are still in the CPU's
/// cache when they are written out.
pub const LATIN1_CHUNK: usize = 1 << 20;

/// Read-only bytes that tensors point into: a memory-mapped file or a decompressed buffer.
pub trait Source: Send + Sync {
    /// All the bytes.
    fn bytes(&self) -> &[u8];
    /// A range has been consumed: a memory map gives its pages back, so a streamed
    /// conversion's resident memory stays flat whatever the file size.
    fn release(&self, _range: Range<usize>) {}
    /// The file these bytes are (offsets equal), for in-kernel copies.
    fn file(&self) -> Option<&std::fs::File> {
        None
    }
}

impl Source for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A read-only memory-mapped file (the whole file, from offset 0).
pub struct MappedFile {
    map: memmap2::Mmap,
    file: std::fs::File,
}

impl MappedFile {
    /// Map all of `file`.
    pub fn new(file: std::fs::File) -> io::Result<MappedFile> {
        // SAFETY: the mapping is read-only; a file changed under it by another process gives
        // wrong bytes, which every reader checks like any other input.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(MappedFile { map, file })
    }
}

impl Source for MappedFile {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    fn file(&self) -> Option<&std::fs::File> {
        Some(&self.file)
    }

    #[cfg(unix)]
    fn release(&self, range: Range<usize>) {
        let start = range.start.next_multiple_of(PAGE);
        let end = range.end / PAGE * PAGE;
        if end > start {
            // SAFETY: the mapping is a read-only, private mapping of a file. MADV_DONTNEED
            // only drops its pages from this process; a later access faults them back in from
            // the file with the same content, so outstanding borrows stay valid.
            unsafe {
                let _ = self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                );
            }
        }
    }
}

/// The memory page size [`Source::release`] rounds to.
const PAGE: usize = 4096;

/// Gives consumed input back in order: each call releases from the last whole page the one
/// before gave back, so no page straddling two pieces stays mapped ([`Source::release`] rounds
/// inward to whole pages).
pub struct GiveBack<F: Fn(Range<usize>)> {
    release: F,
    from: usize,
}

impl<F: Fn(Range<usize>)> GiveBack<F> {
    /// Nothing before `from` is given back.
    pub fn new(release: F, from: usize) -> Self {
        GiveBack { release, from }
    }

    /// Where the next call starts giving back.
    pub fn from(&self) -> usize {
        self.from
    }

    /// Everything up to `end` has been consumed.
    pub fn upto(&mut self, end: usize) {
        if end > self.from {
            (self.release)(self.from..end);
            self.from = end / PAGE * PAGE;
        }
    }
}

/// A shared [`Source`].
pub type Buffer = Arc<dyn Source>;

/// A stream that tensors are written to.
pub trait Sink: io::Write {
    /// Write one tensor's canonical bytes.
    fn put(&mut self, t: &Tensor) -> io::Result<()> {
        t.write_to(self)
    }
}

/// An output file takes in-kernel copies from file-backed inputs, and large pieces unbuffered.
impl Sink for crate::atomic::Output<'_> {
    fn put(&mut self, t: &Tensor) -> io::Result<()> {
        t.copy_to_file(self)
    }
}

impl Sink for Vec<u8> {}
impl<W: io::Write> Sink for zstd::stream::write::Encoder<'_, W> {}
impl<W: io::Write + io::Seek> Sink for zip::ZipWriter<W> {}

/// Element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Whether it is a floating-point type (the ones `--dtype` converts).
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F64 | DType::F32 | DType::F16 | DType::BF16)
    }

    /// The short lower-case name used on the command line and in `--inspect`.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F64 => "f64",
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I16 => "i16",
            DType::I8 => "i8",
            DType::U64 => "u64",
            DType::U32 => "u32",
            DType::U16 => "u16",
            DType::U8 => "u8",
            DType::Bool => "bool",
        }
    }

    /// Parse a floating-point type name, for `--dtype`.
    pub fn parse_float(s: &str) -> Result<DType, String> {
        match DType::parse(s) {
            Some(d) if d.is_float() => Ok(d),
            _ => Err(format!("'{s}' is not one of f32, f16, bf16, f64")),
        }
    }

    /// Parse a name given by [`DType::name`].
    pub fn parse(s: &str) -> Option<DType> {
        ALL.iter().copied().find(|d| d.name() == s)
    }
}

const ALL: [DType; 13] = [
    DType::F64,
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::I64,
    DType::I32,
    DType::I16,
    DType::I8,
    DType::U64,
    DType::U32,
    DType::U16,
    DType::U8,
    DType::Bool,
];

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a tensor's bytes come from, and how they are stored there.
#[derive(Clone)]
pub enum Storage {
    /// A range of a shared buffer.
    Mapped { buf: Buffer, range: Range<usize> },
    /// A UTF-8 range of a shared buffer whose code points are the bytes (pickle protocol 2).
    Latin1 {
        buf: Buffer,
        range: Range<usize>,
        len: usize,
    },
    /// Bytes owned by the tensor.
    Owned(Arc<Vec<u8>>),
    /// A PyTorch tensor, read by pytorch-reader on demand (always canonical).
    Torch(pytorch_reader::Tensor),
    /// Another tensor converted to a float type on read (`--dtype`).
    Cast { from: Box<Tensor>, to: DType },
    /// Tensors whose bytes are concatenated (Paddle's split of tensors over 1 GiB).
    Concat(Vec<Tensor>),
}

impl Storage {
    fn raw(&self) -> io::Result<Cow<'_, [u8]>> {
        Ok(match self {
            Storage::Mapped { buf, range } => Cow::Borrowed(&buf.bytes()[range.clone()]),
            Storage::Latin1 { buf, range, len } => Cow::Owned(
                crate::latin1::decode_latin1(&buf.bytes()[range.clone()], *len)
                    .ok_or_else(not_latin1)?,
            ),
            Storage::Owned(v) => Cow::Borrowed(v.as_slice()),
            Storage::Torch(t) => Cow::Owned(t.read()?),
            Storage::Cast { from, to } => Cow::Owned(cast_floats(&from.bytes()?, from.dtype, *to)?),
            Storage::Concat(parts) => {
                let mut out = Vec::new();
                for p in parts {
                    out.extend_from_slice(&p.bytes()?);
                }
                Cow::Owned(out)
            }
        })
    }
}

/// How stored bytes differ from the canonical little-endian, row-major form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Encoding {
    /// Elements are big-endian.
    pub big_endian: bool,
    /// Stored column-major (numpy `fortran_order`).
    pub fortran: bool,
    /// Stored as the 2-D transpose of the logical shape (a layout's Linear convention).
    pub transposed: bool,
}

/// One named tensor of a checkpoint.
#[derive(Clone)]
pub struct Tensor {
    /// Full dotted name as the file has it.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Logical shape, outermost first.
    pub shape: Vec<usize>,
    storage: Storage,
    encoding: Encoding,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl Tensor {
    /// A tensor whose bytes are stored canonically.
    pub fn new(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
        storage: Storage,
    ) -> Tensor {
        Tensor::with_encoding(name, dtype, shape, storage, Encoding::default())
    }

    /// A tensor whose stored bytes need reordering on read.
    pub fn with_encoding(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
        storage: Storage,
        encoding: Encoding,
    ) -> Tensor {
        Tensor {
            name: name.into(),
            dtype,
            shape,
            storage,
            encoding,
        }
    }

    /// A tensor owning its canonical bytes, which must be exactly `shape`'s elements of
    /// `dtype` (as safetensors' `TensorView::new` checks).
    pub fn from_vec(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<usize>,
        data: Vec<u8>,
    ) -> Result<Tensor, ByteLengthError> {
        let name = name.into();
        let expected = shape
            .iter()
            .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
        if expected != Some(data.len()) {
            return Err(ByteLengthError {
                name,
                dtype,
                shape,
                bytes: data.len(),
            });
        }
        Ok(Tensor::new(
            name,
            dtype,
            shape,
            Storage::Owned(Arc::new(data)),
        ))
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Size of the canonical bytes.
    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    /// The same tensor under another name.
    pub fn renamed(mut self, name: impl Into<String>) -> Tensor {
        self.name = name.into();
        self
    }

    /// This tensor converted to another float type (applied lazily on read); tensors that
    /// are not floats (e.g. `num_batches_tracked`) are returned unchanged.
    pub fn cast(self, to: DType) -> Tensor {
        if self.dtype == to || !self.dtype.is_float() || !to.is_float() {
            return self;
        }
        let (name, shape) = (self.name.clone(), self.shape.clone());
        Tensor::new(
            name,
            to,
            shape,
            Storage::Cast {
                from: Box::new(self),
                to,
            },
        )
    }

    /// The 2-D transpose of this tensor (applied lazily on read).
    pub fn transposed(mut self) -> Tensor {
        assert_eq!(self.shape.len(), 2, "only 2-D tensors are transposed");
        self.shape.swap(0, 1);
        self.encoding.transposed = !self.encoding.transposed;
        self
    }

    /// The tensor's bytes: little-endian, row-major.
    pub fn bytes(&self) -> io::Result<Cow<'_, [u8]>> {
        let raw = self.storage.raw()?;
        if raw.len() != self.byte_len() {
            return Err(self.size_mismatch(raw.len()));
        }
        let e = self.encoding;
        if e == Encoding::default() {
            return Ok(raw);
        }
        let size = self.dtype.size();
        let mut data = raw.into_owned();
        if e.big_endian && size > 1 {
            for el in data.chunks_exact_mut(size) {
                el.reverse();
            }
        }
        // Fortran order of shape S is the row-major order of reversed S; a transposed 2-D
        // tensor is the same thing for rank 2. Both at once cancel out.
        if e.fortran != e.transposed && self.shape.len() >= 2 {
            let stored: Vec<usize> = if e.transposed {
                vec![self.shape[1], self.shape[0]]
            } else {
                self.shape.iter().rev().copied().collect()
            };
            data = reverse_axes(&data, &stored, size);
        }
        Ok(Cow::Owned(data))
    }

    /// Write the tensor's canonical bytes to `w`, streaming from a memory map chunk by chunk
    /// (and giving the pages back) where the stored form is already canonical.
    pub fn write_to<W: io::Write + ?Sized>(&self, w: &mut W) -> io::Result<()> {
        if self.encoding != Encoding::default() {
            return w.write_all(&self.bytes()?);
        }
        match &self.storage {
            Storage::Mapped { buf, range } => {
                if range.len() != self.byte_len() {
                    return Err(self.size_mismatch(range.len()));
                }
                let mut give_back = GiveBack::new(|r| buf.release(r), range.start);
                let mut at = range.start;
                while at < range.end {
                    let end = (at + STREAM_CHUNK).min(range.end);
                    w.write_all(&buf.bytes()[at..end])?;
                    give_back.upto(end);
                    at = end;
                }
                Ok(())
            }
            Storage::Latin1 { buf, range, len } => {
                self.decode_latin1(buf, range, *len, |part| w.write_all(part))
            }
            Storage::Concat(parts) => parts.iter().try_for_each(|p| p.write_to(w)),
            _ => w.write_all(&self.bytes()?),
        }
    }

    /// Write the tensor's canonical bytes to an output file. Bytes stored canonically in
    /// another file are copied by the kernel (`copy_file_range` through `std::io::copy`),
    /// never passing through this process; latin-1 text is decoded a cache-sized piece at a
    /// time and written unbuffered, as are bytes read whole; everything else goes through
    /// [`Tensor::write_to`].
    pub fn copy_to_file(&self, w: &mut crate::atomic::Output) -> io::Result<()> {
        let canonical = self.encoding == Encoding::default();
        match &self.storage {
            Storage::Mapped { buf, range } if canonical && range.len() == self.byte_len() => {
                let Some(src) = buf.file() else {
                    return self.write_to(w);
                };
                let n = w.copy_range(src, range.start as u64..range.end as u64)?;
                if n != range.len() as u64 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "tensor '{}': the file ended after {n} of {} bytes",
                            self.name,
                            range.len()
                        ),
                    ));
                }
                Ok(())
            }
            Storage::Latin1 { buf, range, len } if canonical => {
                self.decode_latin1(buf, range, *len, |part| w.write_large(part))
            }
            Storage::Torch(_) if canonical => w.write_large(&self.bytes()?),
            Storage::Concat(parts) if canonical => parts.iter().try_for_each(|p| p.copy_to_file(w)),
            _ => self.write_to(w),
        }
    }

    /// The error for a storage of `have` bytes where the shape needs another number.
    fn size_mismatch(&self, have: usize) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "tensor '{}' holds {have} bytes, its shape {:?} needs {}",
                self.name,
                self.shape,
                self.byte_len()
            ),
        )
    }

    /// Decode latin-1 storage of `len` bytes (canonical ones) to `emit` a cache-sized piece at
    /// a time, giving the mapping's pages back as it goes.
    fn decode_latin1(
        &self,
        buf: &Buffer,
        range: &Range<usize>,
        len: usize,
        mut emit: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        if len != self.byte_len() {
            return Err(self.size_mismatch(len));
        }
        let src = &buf.bytes()[range.clone()];
        let mut give_back = GiveBack::new(|r| buf.release(r), range.start);
        let written = stream_latin1(src, LATIN1_CHUNK, |part, done| {
            emit(part)?;
            give_back.upto(range.start + done.end);
            Ok(())
        })?;
        if written != len {
            return Err(self.size_mismatch(written));
        }
        Ok(())
    }

    /// The bytes as f32 values (any float type is widened).
    pub fn to_f32(&self) -> io::Result<Vec<f32>> {
        let b = self.bytes()?;
        cast_floats(&b, self.dtype, DType::F32).map(|v| {
            v.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }
}

/// Latin-1 text that does not decode: the file changed since it was checked.
fn not_latin1() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "latin-1 tensor data is no longer valid UTF-8 (the file changed while it was read?)",
    )
}

/// Decode latin1-as-UTF-8 bytes in pieces of about `chunk` bytes, never splitting a two-byte
/// sequence, handing `emit` each decoded piece with the input range it came from. Returns the
/// number of bytes decoded.
fn stream_latin1(
    src: &[u8],
    chunk: usize,
    mut emit: impl FnMut(&[u8], Range<usize>) -> io::Result<()>,
) -> io::Result<usize> {
    let mut out = vec![0u8; chunk.max(2).min(src.len())];
    let (mut at, mut total) = (0, 0);
    while at < src.len() {
        let end = crate::latin1::piece_end(src, at, chunk);
        let n =
            crate::latin1::decode_latin1_into(&src[at..end], &mut out).ok_or_else(not_latin1)?;
        emit(&out[..n], at..end)?;
        total += n;
        at = end;
    }
    Ok(total)
}

/// Reorder row-major data of shape `shape` into row-major data of the reversed shape
/// (the full axis reversal, which is the transpose for rank 2).
fn reverse_axes(data: &[u8], shape: &[usize], size: usize) -> Vec<u8> {
    let n = shape.len();
    let numel: usize = shape.iter().product();
    let mut out = vec![0u8; data.len()];
    // Strides of the source, row-major.
    let mut src_strides = vec![1usize; n];
    for i in (0..n.saturating_sub(1)).rev() {
        src_strides[i] = src_strides[i + 1] * shape[i + 1];
    }
    // Walk the output in row-major order of the reversed shape.
    let rshape: Vec<usize> = shape.iter().rev().copied().collect();
    let mut idx = vec![0usize; n];
    for o in 0..numel {
        // Output index idx (over rshape) is source index reversed.
        let mut s = 0;
        for k in 0..n {
            s += idx[k] * src_strides[n - 1 - k];
        }
        out[o * size..(o + 1) * size].copy_from_slice(&data[s * size..(s + 1) * size]);
        for k in (0..n).rev() {
            idx[k] += 1;
            if idx[k] < rshape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

/// Convert little-endian float bytes between float types, rounding to nearest-even as
/// PyTorch and numpy do (f16 and bf16 widen exactly to f32, so only f64 goes through f64).
pub fn cast_floats(data: &[u8], from: DType, to: DType) -> io::Result<Vec<u8>> {
    use half::{bf16, f16};
    if from == to {
        return Ok(data.to_vec());
    }
    if !from.is_float() || !to.is_float() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot convert {from} to {to}"),
        ));
    }
    let mut out = Vec::with_capacity(data.len() / from.size() * to.size());
    if from == DType::F64 {
        for c in data.chunks_exact(8) {
            let v = f64::from_le_bytes(c.try_into().expect("8 bytes"));
            match to {
                DType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
                DType::F16 => out.extend_from_slice(&f16::from_f64(v).to_le_bytes()),
                _ => out.extend_from_slice(&bf16::from_f64(v).to_le_bytes()),
            }
        }
        return Ok(out);
    }
    let widen = |c: &[u8]| -> f32 {
        match from {
            DType::F32 => f32::from_le_bytes(c.try_into().expect("4 bytes")),
            DType::F16 => f16::from_le_bytes([c[0], c[1]]).to_f32(),
            _ => bf16::from_le_bytes([c[0], c[1]]).to_f32(),
        }
    };
    for c in data.chunks_exact(from.size()) {
        let v = widen(c);
        match to {
            DType::F64 => out.extend_from_slice(&(v as f64).to_le_bytes()),
            DType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
            _ => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_and_fortran() {
        // 2x3 row-major [[1,2,3],[4,5,6]] as u8.
        let t = Tensor::from_vec("x", DType::U8, vec![2, 3], vec![1, 2, 3, 4, 5, 6]).unwrap();
        // The bytes must be the shape's worth.
        let e = Tensor::from_vec("y", DType::F32, vec![2, 3], vec![0; 20]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "tensor y: 20 bytes are not [2, 3] elements of f32"
        );
        assert!(Tensor::from_vec("z", DType::F32, vec![usize::MAX, 2], vec![]).is_err());
        let tt = t.clone().transposed();
        assert_eq!(tt.shape, vec![3, 2]);
        assert_eq!(&*tt.bytes().unwrap(), &[1, 4, 2, 5, 3, 6]);
        assert_eq!(&*tt.transposed().bytes().unwrap(), &[1, 2, 3, 4, 5, 6]);
        // The same logical array stored column-major.
        let f = Tensor::with_encoding(
            "f",
            DType::U8,
            vec![2, 3],
            Storage::Owned(Arc::new(vec![1, 4, 2, 5, 3, 6])),
            Encoding {
                fortran: true,
                ..Default::default()
            },
        );
        assert_eq!(&*f.bytes().unwrap(), &[1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn fortran_rank3() {
        // Logical shape [2,2,2], element (i,j,k) = 4i+2j+k; Fortran stores i fastest.
        let mut stored = vec![];
        for k in 0..2u8 {
            for j in 0..2u8 {
                for i in 0..2u8 {
                    stored.push(4 * i + 2 * j + k);
                }
            }
        }
        let f = Tensor::with_encoding(
            "f",
            DType::U8,
            vec![2, 2, 2],
            Storage::Owned(Arc::new(stored)),
            Encoding {
                fortran: true,
                ..Default::default()
            },
        );
        assert_eq!(&*f.bytes().unwrap(), &[0, 1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn give_back_leaves_no_page_between_pieces() {
        let calls = std::cell::RefCell::new(Vec::new());
        let mut g = GiveBack::new(|r| calls.borrow_mut().push(r), 100);
        g.upto(5000);
        g.upto(9000);
        g.upto(8000); // already behind: nothing
        assert_eq!(g.from(), 8192);
        // Each call starts at the page boundary at or before the previous end.
        assert_eq!(*calls.borrow(), vec![100..5000, 4096..9000]);
    }

    #[test]
    fn latin1_streams_across_chunk_edges() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let utf8: Vec<u8> = bytes
            .iter()
            .map(|&b| b as char)
            .collect::<String>()
            .into_bytes();
        for chunk in [2, 3, 5, 64, 1000] {
            let mut out = Vec::new();
            let mut next = 0;
            let n = stream_latin1(&utf8, chunk, |part, done| {
                assert_eq!(done.start, next, "pieces in order, none skipped");
                next = done.end;
                out.extend_from_slice(part);
                Ok(())
            })
            .unwrap();
            assert_eq!((n, next), (bytes.len(), utf8.len()));
            assert_eq!(out, bytes, "chunk {chunk}");
        }
        // Text that is not latin-1 stops the stream with an error.
        let bad = "aé€".as_bytes();
        let e = stream_latin1(bad, 64, |_, _| Ok(())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn big_endian() {
        let t = Tensor::with_encoding(
            "b",
            DType::U16,
            vec![2],
            Storage::Owned(Arc::new(vec![0, 1, 0, 2])),
            Encoding {
                big_endian: true,
                ..Default::default()
            },
        );
        assert_eq!(&*t.bytes().unwrap(), &[1, 0, 2, 0]);
    }

    #[test]
    fn casts() {
        let one = 1.5f32.to_le_bytes();
        let h = cast_floats(&one, DType::F32, DType::BF16).unwrap();
        let back = cast_floats(&h, DType::BF16, DType::F32).unwrap();
        assert_eq!(back, one);
        assert!(cast_floats(&[0; 8], DType::I64, DType::F32).is_err());
    }
}
