//! Checkpoint containers: detect the format from a file's bytes, read its tensors without
//! executing anything, and write them back out.
//!
//! One module per container: [`pickle`] (the restricted pickle machine) and [`numpy`]
//! (arrays inside it), [`paddle`] (`.pdparams`/`.pd`/`.pdopt`), [`torch`] (`.pth`, zip and
//! legacy), [`safetensors`] (`.safetensors`, `.safetensors.zst`). Data flows one way: file →
//! [`Checkpoint`] (tensors + plain values) → [`crate::layout`] → a writer or the model.

pub mod numpy;
pub mod paddle;
pub mod pickle;
pub mod safetensors;
pub mod sniff;
pub mod torch;

use crate::tensor::{Buffer, Tensor};
use serde_json::Value;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use thiserror::Error;

pub use sniff::Format;

/// Why a file could not be read or written as a checkpoint.
#[derive(Debug, Error)]
pub enum FormatError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the file is empty")]
    Empty,
    #[error("this is an HTML page, not a checkpoint (a failed or interrupted download?)")]
    Html,
    #[error("this is a gzip file; decompress it first")]
    Gzip,
    #[error("not a checkpoint: unrecognised content (starts with {0})")]
    Unknown(String),
    #[error("{0}")]
    Pickle(#[from] pickle::PickleError),
    #[error("{0}")]
    Structure(String),
    #[error("PyTorch file: {0}")]
    Torch(String),
    #[error("safetensors: {0}")]
    Safetensors(String),
    #[error("{0}")]
    Unsupported(String),
}

/// A [`FormatError`] with the file it concerns: `model.pdparams: refused pickle global os.system`.
#[derive(Debug, Error)]
#[error("{}: {source}", path.display())]
pub struct CheckpointError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    #[source]
    pub source: FormatError,
}

impl CheckpointError {
    /// Attach a path to an error.
    pub fn new(path: impl Into<PathBuf>, source: impl Into<FormatError>) -> Self {
        CheckpointError {
            path: path.into(),
            source: source.into(),
        }
    }
}

/// What was read from a checkpoint file.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The file it came from.
    pub path: PathBuf,
    /// Its container format.
    pub format: Format,
    /// Every tensor, in file order where the container keeps one.
    pub tensors: Vec<Tensor>,
    /// Plain values beside the tensors (`epoch`, learning rates, metadata), by dotted path.
    pub values: Vec<(String, Value)>,
    /// Things the reader did that a user may want to know (reassembled slices, ...).
    pub notes: Vec<String>,
}

impl Checkpoint {
    /// Read a checkpoint, detecting its format from its content.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint, CheckpointError> {
        let path = path.as_ref();
        let err = |e: FormatError| CheckpointError::new(path, e);
        if sniff::names_burn_record(path) {
            return Err(err(burn_record_unsupported()));
        }
        let buf = map_file(path).map_err(err)?;
        let bytes: &[u8] = buf.bytes();
        let format = sniff::sniff(bytes).map_err(err)?;
        let mut ck = Checkpoint {
            path: path.to_path_buf(),
            format,
            tensors: Vec::new(),
            values: Vec::new(),
            notes: Vec::new(),
        };
        match format {
            Format::Pickle => paddle::read(&buf, &mut ck).map_err(err)?,
            Format::TorchZip | Format::TorchLegacy | Format::TorchTar => {
                torch::scan(bytes, format).map_err(err)?;
                torch::read(path, &mut ck).map_err(err)?
            }
            Format::Safetensors => safetensors::read(buf, &mut ck).map_err(err)?,
            Format::SafetensorsZstd => {
                let data = safetensors::decompress(bytes).map_err(err)?;
                safetensors::read(Arc::new(data), &mut ck).map_err(err)?
            }
            Format::BurnRecord => return Err(err(burn_record_unsupported())),
        }
        Ok(ck)
    }

    /// The tensor with this name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Total bytes of all tensors.
    pub fn total_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.byte_len()).sum()
    }
}

/// A Burn record needs the module it was saved from: it is read by `swav::model::open`.
fn burn_record_unsupported() -> FormatError {
    FormatError::Unsupported(
        "a Burn record (.mpk, or a training checkpoint or output folder) is read through the \
         SwAV model: use swav-rs built with its default `model` feature"
            .into(),
    )
}

/// Memory-map a file (an empty file gives an empty buffer).
fn map_file(path: &Path) -> Result<Buffer, FormatError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Err(FormatError::Empty);
    }
    Ok(Arc::new(crate::tensor::MappedFile::new(file)?))
}
