//! Burn records of the SwAV module (`model.mpk` + `model.mpk.json`, as `swav-convert IN
//! OUT.mpk` and `swav-train` write them), read as named tensors in the Burn layout. A record
//! holds values only, so it is read through the module its config describes
//! ([`crate::model::record::load`]); a training checkpoint folder stands for its `model.mpk`,
//! and a training output folder for its latest checkpoint.

use super::{Checkpoint, CheckpointError, Format, FormatError};
use crate::model::{record, CpuBackend};
use crate::tensor::{DType, Tensor};
use std::path::{Path, PathBuf};

/// The record a path stands for: `X.mpk`, a training checkpoint folder's `model.mpk`, or a
/// training output folder's latest checkpoint.
pub fn record_path(path: &Path) -> Option<PathBuf> {
    if path.is_dir() && path.join("model.mpk").is_file() {
        return Some(path.join("model.mpk"));
    }
    if path.join("checkpoints").is_dir() {
        return crate::train::state::latest(path).map(|d| d.join("model.mpk"));
    }
    record::is_record(path).then(|| path.to_path_buf())
}

/// Read every parameter and BatchNorm statistic of the record as f32 tensors.
pub fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let (model, _) = record::load::<CpuBackend>(path, &Default::default())
        .map_err(|m| CheckpointError::new(path, FormatError::Structure(m)))?;
    let mut tensors = Vec::new();
    let bad = |m: String| CheckpointError::new(path, FormatError::Structure(m));
    crate::model::for_each_param(&model, |name, shape, values| {
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
