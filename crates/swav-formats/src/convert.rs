//! Conversion, backbone extraction and inspection: what `swav-convert` and `swav-extract` do.
//!
//! Each operation reads a [`Checkpoint`], picks the model's tensors out of it ([`select`]),
//! maps their names with [`crate::layout`] and writes them atomically in the format the
//! output's extension names. Each reads its input with an [`Opener`]: [`Checkpoint::open`] here
//! (any container this crate reads), the model's `open` in the `swav` crate (Burn records too,
//! through the `*_with` forms); writing a Burn record (`OUT.mpk`) needs the SwAV model and is
//! the `swav` crate's `convert`.

use crate::atomic;
use crate::checkpoint::{self, Checkpoint, CheckpointError, Format, FormatError};
use crate::digest::FileHash;
use crate::layout::{self, Layout, LayoutError, MapReport};
use crate::selection::{select, SelectError, Selected, Selection};
use crate::tensor::{DType, Tensor};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a conversion failed.
#[derive(Debug, Error)]
pub enum ConvertError {
    /// The input could not be read.
    #[error(transparent)]
    Read(#[from] CheckpointError),
    /// The model's tensors could not be picked out of the input.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// The output could not be written (or the input's hash, which it records, could not be
    /// computed: the message names the input).
    #[error("{}: {source}", path.display())]
    Write { path: PathBuf, source: FormatError },
    /// The tensor names do not fit the layouts.
    #[error("{}: {source}", path.display())]
    Layout { path: PathBuf, source: LayoutError },
    /// Something the user asked for does not fit the input.
    #[error("{}: {message}", path.display())]
    Input { path: PathBuf, message: String },
    /// The output's extension names no format.
    #[error("{}: unknown output format; use .safetensors, .safetensors.zst, .pth/.pt/.pth.tar/.bin, .pdparams/.pd or .mpk", .0.display())]
    OutputFormat(PathBuf),
    /// The SwAV model failed to read or write a Burn record (the `swav` crate's error, which
    /// names its file).
    #[error(transparent)]
    Model(Box<dyn std::error::Error + Send + Sync>),
}

/// A format this crate writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputFormat {
    Safetensors,
    SafetensorsZstd,
    Torch,
    Paddle,
    /// A Burn record of the SwAV module (`.mpk`, NamedMpk full precision) + its config.
    BurnRecord,
}

impl OutputFormat {
    /// The format an output path's extension names.
    pub fn from_path(path: &Path) -> Result<OutputFormat, ConvertError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let ends = |e: &str| name.ends_with(e);
        Ok(if ends(".safetensors.zst") || ends(".st.zst") {
            OutputFormat::SafetensorsZstd
        } else if ends(".safetensors") {
            OutputFormat::Safetensors
        } else if ends(".pth") || ends(".pt") || ends(".pth.tar") || ends(".bin") {
            OutputFormat::Torch
        } else if ends(".pdparams") || ends(".pd") {
            OutputFormat::Paddle
        } else if ends(".mpk") {
            OutputFormat::BurnRecord
        } else {
            return Err(ConvertError::OutputFormat(path.to_path_buf()));
        })
    }

    /// The layout written when none is asked for.
    pub fn default_layout(self) -> Layout {
        match self {
            OutputFormat::Safetensors | OutputFormat::SafetensorsZstd => Layout::Burn,
            OutputFormat::Torch => Layout::Torch,
            OutputFormat::Paddle => Layout::Paddle,
            OutputFormat::BurnRecord => Layout::Burn,
        }
    }
}

/// Options of [`convert`].
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// Which tensors and how they are named now.
    pub selection: Selection,
    /// Layout to write; `None` = the output format's default.
    pub layout: Option<Layout>,
    /// Convert float tensors to this type.
    pub dtype: Option<DType>,
    /// Prefix every output name with this (e.g. `module.`).
    pub add_prefix: Option<String>,
}

/// What a conversion did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub input: PathBuf,
    pub output: PathBuf,
    pub input_format: Format,
    pub output_format: OutputFormat,
    pub key: Option<String>,
    pub stripped: Vec<String>,
    /// Layout of the input names; `None` when they are not a SwAV model's (kept as they are).
    pub from_layout: Option<Layout>,
    /// Layout written; `None` when names were kept as they are.
    pub to_layout: Option<Layout>,
    pub tensors: usize,
    pub bytes: usize,
    pub mapping: MapReport,
    pub sha256: String,
}

impl Summary {
    /// One line for the terminal.
    pub fn describe(&self) -> String {
        let names = match (self.from_layout, self.to_layout) {
            (Some(f), Some(t)) => format!("{f} layout -> {t} layout"),
            _ => "names kept (not a SwAV model's layout)".to_string(),
        };
        let key = self
            .key
            .as_ref()
            .map(|k| format!(", from key '{k}'"))
            .unwrap_or_default();
        format!(
            "{} -> {}: {} tensors ({} bytes), {names}{key}",
            self.input.display(),
            self.output.display(),
            self.tensors,
            self.bytes
        )
    }
}

/// What reads a conversion's input: [`Checkpoint::open`], or an opener that knows more kinds
/// of input (the `swav` crate's, which reads Burn records).
pub type Opener = fn(&Path) -> Result<Checkpoint, CheckpointError>;

/// Convert a checkpoint file into another format and layout.
pub fn convert(
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
) -> Result<Summary, ConvertError> {
    convert_with(|p| Checkpoint::open(p), input, output, opts)
}

/// [`convert`] with the input read by `open` (any output but a Burn record).
pub fn convert_with(
    open: Opener,
    input: &Path,
    output: &Path,
    opts: &ConvertOptions,
) -> Result<Summary, ConvertError> {
    let out_format = OutputFormat::from_path(output)?;
    if out_format == OutputFormat::BurnRecord {
        return Err(ConvertError::Input {
            path: output.to_path_buf(),
            message: "writing a Burn record (.mpk) needs the SwAV model: use swav-rs built with \
                      its default `model` feature"
                .into(),
        });
    }
    let (ck, hash) = open_hashing(open, input)?;
    convert_checkpoint(&ck, output, opts, hash)
}

/// Open `input` with its SHA-256 computed alongside, from before it is parsed (the hash of the
/// file the checkpoint was read from, where `open` resolved a folder to one).
fn open_hashing(open: Opener, input: &Path) -> Result<(Checkpoint, FileHash), ConvertError> {
    let hash = FileHash::start(input);
    let ck = open(input)?;
    let hash = if ck.path == input {
        hash
    } else {
        FileHash::start(&ck.path)
    };
    Ok((ck, hash))
}

/// The flags a Burn record output refuses: a record is the SwAV module in f32 under its own
/// names, read through model detection, so none of the naming or casting options applies
/// (refused, not ignored).
pub fn check_record_options(output: &Path, opts: &ConvertOptions) -> Result<(), ConvertError> {
    let sel = &opts.selection;
    let given = [
        (opts.dtype.is_some(), "--dtype"),
        (opts.layout.is_some(), "--layout"),
        (opts.add_prefix.is_some(), "--add-prefix"),
        (sel.key.is_some(), "--key"),
        (!sel.strip_prefix.is_empty(), "--strip-prefix"),
        (sel.from_layout.is_some(), "--from-layout"),
    ];
    match given.iter().find(|(set, _)| *set) {
        Some((_, flag)) => Err(ConvertError::Input {
            path: output.to_path_buf(),
            message: format!(
                "{flag} does not apply to a Burn record (.mpk: the SwAV module in f32, its names \
                 and key found by model detection); convert without it"
            ),
        }),
        None => Ok(()),
    }
}

/// [`convert`] on a checkpoint already read (any output but a Burn record).
fn convert_checkpoint(
    ck: &Checkpoint,
    output: &Path,
    opts: &ConvertOptions,
    hash: FileHash,
) -> Result<Summary, ConvertError> {
    let out_format = OutputFormat::from_path(output)?;
    let as_named = opts.layout.is_none() && opts.selection.from_layout.is_none();
    let (sel, to, renamed) = match select(ck, &opts.selection) {
        Ok(sel) => {
            let to = opts.layout.unwrap_or(out_format.default_layout());
            (sel, to, true)
        }
        // Not a SwAV model's names and no layout asked for: convert the container only.
        Err(SelectError::Layout {
            source: LayoutError::Undetected,
            ..
        }) if as_named => {
            let to = out_format.default_layout();
            let selection = Selection {
                from_layout: Some(to),
                ..opts.selection.clone()
            };
            (select(ck, &selection)?, to, false)
        }
        Err(e) => return Err(e.into()),
    };
    emit(Job {
        ck,
        selected: sel,
        to: renamed.then_some(to),
        output,
        format: out_format,
        dtype: opts.dtype,
        add_prefix: opts.add_prefix.clone(),
        hash,
    })
}

/// The shared tail of [`convert`] and [`extract`]: rename, cast, write, report.
struct Job<'a> {
    ck: &'a Checkpoint,
    selected: Selected,
    /// The layout to write; `None` keeps the names as they are.
    to: Option<Layout>,
    output: &'a Path,
    format: OutputFormat,
    dtype: Option<DType>,
    add_prefix: Option<String>,
    /// The input's SHA-256, under way.
    hash: FileHash,
}

fn emit(job: Job) -> Result<Summary, ConvertError> {
    let Selected {
        tensors,
        key,
        stripped,
        layout: from,
    } = job.selected;
    let (tensors, mapping) = match job.to {
        Some(to) => map_layout(&job.ck.path, tensors, from, to)?,
        None => (tensors, MapReport::default()),
    };
    let tensors = finish(tensors, job.dtype, job.add_prefix.as_deref());
    let meta = Meta {
        ck: job.ck,
        layout: job.to,
    };
    let sha256 = write(job.output, job.format, &tensors, &meta, job.hash)?;
    Ok(Summary {
        input: job.ck.path.clone(),
        output: job.output.to_path_buf(),
        input_format: job.ck.format,
        output_format: job.format,
        key,
        stripped,
        from_layout: job.to.map(|_| from),
        to_layout: job.to,
        tensors: tensors.len(),
        bytes: tensors.iter().map(Tensor::byte_len).sum(),
        mapping,
        sha256,
    })
}

fn map_layout(
    path: &Path,
    tensors: Vec<Tensor>,
    from: Layout,
    to: Layout,
) -> Result<(Vec<Tensor>, MapReport), ConvertError> {
    if from == to {
        return Ok((tensors, MapReport::default()));
    }
    layout::map(tensors, from, to).map_err(|source| ConvertError::Layout {
        path: path.to_path_buf(),
        source,
    })
}

fn finish(tensors: Vec<Tensor>, dtype: Option<DType>, add_prefix: Option<&str>) -> Vec<Tensor> {
    tensors
        .into_iter()
        .map(|t| {
            let t = match dtype {
                Some(d) => t.cast(d),
                None => t,
            };
            match add_prefix {
                Some(p) => {
                    let n = format!("{p}{}", t.name);
                    t.renamed(n)
                }
                None => t,
            }
        })
        .collect()
}

struct Meta<'a> {
    ck: &'a Checkpoint,
    /// The layout written, if names follow one.
    layout: Option<Layout>,
}

/// Write `tensors` to `output` atomically; returns the input's SHA-256, which `hash` has been
/// computing on a thread of its own since the conversion started.
///
/// safetensors records the hash in its header: the header is written with a placeholder of
/// the same length and patched once the hash is known (zstd output, which cannot be patched,
/// waits for it). Every format waits for the hash before the output is renamed into place, so
/// a failed hash leaves no output.
fn write(
    output: &Path,
    format: OutputFormat,
    tensors: &[Tensor],
    meta: &Meta,
    hash: FileHash,
) -> Result<String, ConvertError> {
    let mut sha = String::new();
    write_output(output, format, tensors, meta, hash, &mut sha).map_err(|source| {
        ConvertError::Write {
            path: output.to_path_buf(),
            source,
        }
    })?;
    Ok(sha)
}

/// [`write`]'s work, the hash stored in `sha` once known.
fn write_output(
    output: &Path,
    format: OutputFormat,
    tensors: &[Tensor],
    meta: &Meta,
    hash: FileHash,
    sha: &mut String,
) -> Result<(), FormatError> {
    use std::io::{Seek, SeekFrom, Write};
    let input = &meta.ck.path;
    let finish = |hash: FileHash| {
        hash.finish().map_err(|e| {
            FormatError::Io(std::io::Error::new(
                e.kind(),
                format!("hashing {}: {e}", input.display()),
            ))
        })
    };
    match format {
        OutputFormat::SafetensorsZstd => {
            *sha = finish(hash)?;
            atomic::write_file(output, |w| {
                let enc = zstd::Encoder::new(w, 3)?;
                let enc = checkpoint::safetensors::write(enc, tensors, metadata(meta, sha))?;
                Ok(enc.finish()?)
            })
        }
        OutputFormat::Safetensors => atomic::write_file(output, |w| {
            let placeholder = "0".repeat(64);
            let mut w = checkpoint::safetensors::write(w, tensors, metadata(meta, &placeholder))?;
            *sha = finish(hash)?;
            let header = checkpoint::safetensors::header(tensors, metadata(meta, sha))?;
            let first = checkpoint::safetensors::header(tensors, metadata(meta, &placeholder))?;
            if header.len() != first.len() {
                return Err(FormatError::Safetensors(
                    "header changed size when patched".into(),
                ));
            }
            w.seek(SeekFrom::Start(8))?;
            w.write_all(&header)?;
            Ok(w)
        }),
        OutputFormat::Torch => {
            let root = archive_root(output);
            atomic::write_file(output, |w| {
                let w = checkpoint::torch::write(w, &root, tensors)?;
                *sha = finish(hash)?;
                Ok(w)
            })
        }
        OutputFormat::Paddle => atomic::write_file(output, |w| {
            let w = checkpoint::paddle::write(w, tensors)?;
            *sha = finish(hash)?;
            Ok(w)
        }),
        OutputFormat::BurnRecord => Err(FormatError::Unsupported(
            "a Burn record holds a whole SwAV module: make it with `swav-convert IN OUT.mpk`"
                .into(),
        )),
    }
}

/// The folder name `torch.save` gives the records: the file's stem, ASCII only.
fn archive_root(output: &Path) -> String {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.split('.').next().unwrap_or("");
    if !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        stem.to_string()
    } else {
        "archive".to_string()
    }
}

fn metadata(meta: &Meta, sha: &str) -> HashMap<String, String> {
    let mut md = HashMap::new();
    let source = meta
        .ck
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    md.insert("source_file".into(), source);
    md.insert("source_sha256".into(), sha.to_string());
    md.insert(
        "source_format".into(),
        meta.ck.format.describe().to_string(),
    );
    if let Some(l) = meta.layout {
        md.insert("layout".into(), l.to_string());
    }
    md.insert(
        "tool".into(),
        format!("swav-rs {}", env!("CARGO_PKG_VERSION")),
    );
    if meta.layout == Some(Layout::Torch) {
        md.insert("format".into(), "pt".into());
    }
    md
}

/// Options of [`extract`]: PASSL's `tools/extract_weight.py`.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Keep the tensors under this prefix (default `backbone`).
    pub prefix: String,
    /// Remove `prefix.` from the kept names.
    pub remove_prefix: bool,
    /// Layout to write; `None` = the output format's default.
    pub layout: Option<Layout>,
    /// Convert float tensors to this type.
    pub dtype: Option<DType>,
    /// Top-level key; `None` = detect.
    pub key: Option<String>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            prefix: "backbone".into(),
            remove_prefix: false,
            layout: None,
            dtype: None,
            key: None,
        }
    }
}

/// Pull the backbone (or whatever is under `prefix`) out of a checkpoint.
///
/// PASSL layout: the tensors named `prefix.*`. facebookresearch/torch layout (no
/// `backbone.` names): everything but `projection_head` and `prototypes`. Fails with
/// "no key under prefix ..." when nothing matches.
pub fn extract(
    input: &Path,
    output: &Path,
    opts: &ExtractOptions,
) -> Result<Summary, ConvertError> {
    extract_with(|p| Checkpoint::open(p), input, output, opts)
}

/// [`extract`] with the input read by `open`.
pub fn extract_with(
    open: Opener,
    input: &Path,
    output: &Path,
    opts: &ExtractOptions,
) -> Result<Summary, ConvertError> {
    OutputFormat::from_path(output)?;
    let (ck, hash) = open_hashing(open, input)?;
    extract_checkpoint(&ck, output, opts, hash)
}

/// [`extract`] on a checkpoint already read.
fn extract_checkpoint(
    ck: &Checkpoint,
    output: &Path,
    opts: &ExtractOptions,
    hash: FileHash,
) -> Result<Summary, ConvertError> {
    let out_format = OutputFormat::from_path(output)?;
    let sel = select(
        ck,
        &Selection {
            key: opts.key.clone(),
            ..Default::default()
        },
    )?;
    let p = format!("{}.", opts.prefix.trim_end_matches('.'));
    let under: Vec<Tensor> = sel
        .tensors
        .iter()
        .filter_map(|t| t.name.strip_prefix(&p).map(|n| t.clone().renamed(n)))
        .collect();
    let backbone: Vec<Tensor> = if !under.is_empty() {
        under
    } else if opts.prefix.trim_end_matches('.') == "backbone" {
        sel.tensors
            .iter()
            .filter(|t| layout::is_backbone(&t.name, sel.layout) == Some(true))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    if backbone.is_empty() {
        return Err(ConvertError::Input {
            path: ck.path.clone(),
            message: format!("no key under prefix `{}` in the checkpoint", opts.prefix),
        });
    }
    let to = opts.layout.unwrap_or(out_format.default_layout());
    let from = layout::detect(backbone.iter().map(|t| t.name.as_str())).unwrap_or(sel.layout);
    emit(Job {
        ck,
        selected: Selected {
            tensors: backbone,
            layout: from,
            ..sel
        },
        to: Some(to),
        output,
        format: out_format,
        dtype: opts.dtype,
        add_prefix: (!opts.remove_prefix).then_some(p),
        hash,
    })
}

/// One tensor in an [`Inspection`].
#[derive(Debug, Clone, Serialize)]
pub struct TensorRow {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: usize,
}

/// What `--inspect` reports about a file.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub path: PathBuf,
    pub format: Format,
    pub format_name: &'static str,
    pub key: Option<String>,
    pub layout: Option<Layout>,
    pub tensors: Vec<TensorRow>,
    pub total_tensors: usize,
    pub total_bytes: usize,
    pub values: Vec<(String, serde_json::Value)>,
    pub notes: Vec<String>,
}

/// Describe a checkpoint without converting it.
pub fn inspect(input: &Path) -> Result<Inspection, ConvertError> {
    inspect_with(|p| Checkpoint::open(p), input)
}

/// [`inspect`] with the input read by `open`.
pub fn inspect_with(open: Opener, input: &Path) -> Result<Inspection, ConvertError> {
    Ok(inspect_checkpoint(&open(input)?))
}

/// [`inspect`] on a checkpoint already read.
fn inspect_checkpoint(ck: &Checkpoint) -> Inspection {
    let sel = select(ck, &Selection::default()).ok();
    Inspection {
        path: ck.path.clone(),
        format: ck.format,
        format_name: ck.format.describe(),
        key: sel.as_ref().and_then(|s| s.key.clone()),
        layout: sel.as_ref().map(|s| s.layout),
        tensors: ck
            .tensors
            .iter()
            .map(|t| TensorRow {
                name: t.name.clone(),
                dtype: t.dtype.to_string(),
                shape: t.shape.clone(),
                bytes: t.byte_len(),
            })
            .collect(),
        total_tensors: ck.tensors.len(),
        total_bytes: ck.total_bytes(),
        values: ck.values.clone(),
        notes: ck.notes.clone(),
    }
}

impl Inspection {
    /// The human-readable table.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{}: {}, {} tensors, {} bytes",
            self.path.display(),
            self.format_name,
            self.total_tensors,
            self.total_bytes
        );
        if self.total_tensors == 0 {
            let _ = writeln!(
                s,
                "no tensors: nothing to convert (conversion refuses this file)"
            );
        }
        let _ = writeln!(
            s,
            "model key: {}  layout: {}",
            self.key.as_deref().unwrap_or("(top level)"),
            self.layout
                .map(|l| l.to_string())
                .unwrap_or_else(|| "unknown".into())
        );
        let w = self
            .tensors
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        for t in &self.tensors {
            let _ = writeln!(s, "  {:w$}  {:5} {:?}", t.name, t.dtype, t.shape);
        }
        for (k, v) in &self.values {
            let _ = writeln!(s, "  {k} = {v}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }
}

use std::fmt::Write as _;

#[cfg(test)]
mod tests {
    use super::*;

    /// Without the model (this crate alone), Burn records are refused by name, in and out,
    /// before anything is written.
    #[test]
    fn burn_records_are_refused_without_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let mpk = dir.path().join("model.mpk");
        std::fs::write(&mpk, b"\x81\xa4item\xc0").unwrap();
        let e = inspect(&mpk).unwrap_err().to_string();
        assert!(e.contains("model.mpk: a Burn record"), "{e}");
        let run = dir.path().join("run");
        std::fs::create_dir_all(run.join("checkpoints")).unwrap();
        let out = dir.path().join("backbone.pth");
        let e = extract(&run, &out, &ExtractOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("run: a Burn record"), "{e}");
        let e = convert(Path::new("any.pth"), &mpk, &ConvertOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("writing a Burn record (.mpk) needs the SwAV model"),
            "{e}"
        );
        assert!(!out.exists());
        assert_eq!(std::fs::read(&mpk).unwrap(), b"\x81\xa4item\xc0");
    }
}
