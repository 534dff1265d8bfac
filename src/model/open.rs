//! What a path given to the tools stands for: a checkpoint file (any container
//! [`crate::checkpoint`] reads), a Burn record of the SwAV module (`model.mpk` +
//! `model.mpk.json`, as `swav-convert IN OUT.mpk` and `swav-train` write them), a training
//! checkpoint folder (its `model.mpk`) or a training output folder (its latest checkpoint).
//! [`open`] reads any of them as named tensors; a record holds values only, so it is read
//! through the module its config describes ([`super::record::load`]), in the Burn layout.

use super::CpuBackend;
use crate::checkpoint::{Checkpoint, CheckpointError, Format, FormatError};
use crate::tensor::{DType, Tensor};
use std::path::{Path, PathBuf};

/// Read what `path` stands for: a Burn record, a training checkpoint or output folder, or a
/// checkpoint file of any container format.
pub fn open(path: &Path) -> Result<Checkpoint, CheckpointError> {
    match record_path(path) {
        Some(record) => read_record(&record),
        None if path.join("checkpoints").is_dir() => Err(CheckpointError::new(
            path,
            FormatError::Structure("a training output folder without a complete checkpoint".into()),
        )),
        None => Checkpoint::open(path),
    }
}

/// The folder of checkpoints under an output folder.
pub fn checkpoints_dir(output: &Path) -> PathBuf {
    output.join("checkpoints")
}

/// Complete checkpoint folders, oldest first.
pub fn list(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("epoch_"))
                && p.join("state.json").is_file()
        })
        .collect();
    v.sort();
    v
}

/// The checkpoint `latest` names, else the newest complete one; `None` when there is none.
pub fn latest(output: &Path) -> Option<PathBuf> {
    let root = checkpoints_dir(output);
    if let Ok(name) = std::fs::read_to_string(root.join("latest")) {
        let dir = root.join(name.trim());
        if dir.join("state.json").is_file() {
            return Some(dir);
        }
    }
    list(&root).pop()
}

/// The record a path stands for: `X.mpk`, a training checkpoint folder's `model.mpk`, or a
/// training output folder's latest checkpoint.
pub fn record_path(path: &Path) -> Option<PathBuf> {
    if path.is_dir() && path.join("model.mpk").is_file() {
        return Some(path.join("model.mpk"));
    }
    if path.join("checkpoints").is_dir() {
        return latest(path).map(|d| d.join("model.mpk"));
    }
    super::record::is_record(path).then(|| path.to_path_buf())
}

/// Read every parameter and BatchNorm statistic of the record as f32 tensors.
pub fn read_record(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let (model, _) = super::record::load::<CpuBackend>(path, &Default::default())
        .map_err(|e| CheckpointError::new(path, FormatError::Structure(e.to_string())))?;
    let mut tensors = Vec::new();
    let bad = |m: String| CheckpointError::new(path, FormatError::Structure(m));
    super::for_each_param(&model, |name, shape, values| {
        let bytes = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        tensors.push(Tensor::from_vec(name, DType::F32, shape, bytes).map_err(|e| e.to_string()));
    })
    .map_err(bad)?;
    let tensors = tensors
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    Ok(Checkpoint {
        path: path.to_path_buf(),
        format: Format::BurnRecord,
        tensors,
        values: Vec::new(),
        notes: Vec::new(),
    })
}
