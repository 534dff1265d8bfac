//! Weights from any checkpoint into [`Swav`]: file → tensors → Burn-layout names (the
//! [`crate::layout`] table) → the module's parameters, matched by their module path.
//!
//! Every parameter is accounted for: what was loaded, what the model lacked in the file
//! (an error unless a partial load is asked for — no silent `strict=False`), and what the
//! file had in excess.

use super::swav::{Swav, SwavConfig};
use crate::checkpoint::{CheckpointError, Format};
use crate::layout::{self, Layout, LayoutError};
use crate::selection::{select, SelectError, Selection};
use crate::tensor::Tensor as FileTensor;
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use thiserror::Error;

/// Why weights could not be loaded.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error(transparent)]
    Read(#[from] CheckpointError),
    /// Its model tensors could not be picked out.
    #[error(transparent)]
    Select(#[from] SelectError),
    /// Its names could not be mapped to the Burn layout.
    #[error("{}: {source}", path.display())]
    Layout {
        path: std::path::PathBuf,
        #[source]
        source: LayoutError,
    },
    /// A Burn record could not be read.
    #[error(transparent)]
    Record(#[from] super::record::RecordError),
    /// The model could not be built from it or take its tensors.
    #[error("{}: {message}", path.display())]
    Model {
        path: std::path::PathBuf,
        message: String,
    },
}

/// What a load did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    /// Parameters set from the file.
    pub loaded: Vec<String>,
    /// Parameters of the model the file does not have (kept at their initial values).
    pub missing: Vec<String>,
    /// Tensors of the file the model has no place for.
    pub unexpected: Vec<String>,
    /// Parameters whose shape differs from the file's.
    pub mismatched: Vec<String>,
    /// Layout of the file.
    pub layout: Option<Layout>,
    /// Key the model was found under.
    pub key: Option<String>,
    /// The file's container format.
    pub format: Option<Format>,
}

impl LoadReport {
    /// One line for logs.
    pub fn summary(&self) -> String {
        format!(
            "{} loaded, {} missing, {} unexpected, {} shape mismatches",
            self.loaded.len(),
            self.missing.len(),
            self.unexpected.len(),
            self.mismatched.len()
        )
    }
}

/// A checkpoint's model tensors in the Burn layout, with the file's layout and model key.
pub struct BurnTensors {
    pub tensors: Vec<FileTensor>,
    pub layout: Layout,
    pub key: Option<String>,
    /// The file's container format.
    pub format: Format,
}

/// The model's tensors of a checkpoint, named in the Burn layout of a full SwAV model.
pub fn burn_tensors(path: &Path) -> Result<BurnTensors, LoadError> {
    let ck = super::open(path)?;
    let sel = select(&ck, &Selection::default())?;
    let from = sel.layout;
    let tensors = if from == Layout::Burn {
        sel.tensors
    } else {
        layout::map(sel.tensors, from, Layout::Burn)
            .map_err(|source| LoadError::Layout {
                path: path.to_path_buf(),
                source,
            })?
            .0
    };
    // A backbone on its own has no `backbone.` prefix in any layout.
    let whole = tensors.iter().any(|t| t.name.starts_with("backbone."));
    let tensors = tensors
        .into_iter()
        .map(|t| {
            let backbone = layout::is_backbone(&t.name, Layout::Burn) == Some(true);
            if !whole && backbone {
                let n = format!("backbone.{}", t.name);
                t.renamed(n)
            } else {
                t
            }
        })
        .collect();
    Ok(BurnTensors {
        tensors,
        layout: from,
        key: sel.key,
        format: ck.format,
    })
}

/// Build the model a checkpoint describes (shape inferred from its tensors) and load it.
/// With `partial`, parameters missing from the file keep their initial values; without,
/// any missing parameter is an error naming them.
pub fn from_file<B: Backend>(
    path: &Path,
    device: &B::Device,
    partial: bool,
) -> Result<(Swav<B>, SwavConfig, LoadReport), LoadError> {
    if super::record::is_record(path) {
        let (model, config) = super::record::load::<B>(path, device)?;
        let report = LoadReport {
            layout: Some(Layout::Burn),
            format: Some(Format::BurnRecord),
            ..Default::default()
        };
        return Ok((model, config, report));
    }
    let BurnTensors {
        tensors,
        layout,
        key,
        format,
    } = burn_tensors(path)?;
    let model_err = |message: String| LoadError::Model {
        path: path.to_path_buf(),
        message,
    };
    let config = SwavConfig::infer(
        tensors
            .iter()
            .map(|t| (t.name.as_str(), t.shape.as_slice())),
    )
    .map_err(model_err)?;
    let model = config.init::<B>(device);
    let (model, mut report) = apply(model, tensors, device).map_err(model_err)?;
    report.layout = Some(layout);
    report.key = key;
    report.format = Some(format);
    if !report.mismatched.is_empty() || (!partial && !report.missing.is_empty()) {
        let mut parts = Vec::new();
        if !report.missing.is_empty() {
            parts.push(format!(
                "{} parameters missing from the file (e.g. {})",
                report.missing.len(),
                report.missing[0]
            ));
        }
        if !report.mismatched.is_empty() {
            parts.push(format!(
                "shape mismatches: {}",
                report.mismatched.join(", ")
            ));
        }
        return Err(model_err(parts.join("; ")));
    }
    Ok((model, config, report))
}

/// Set the parameters of `model` from `tensors` (Burn-layout names), reporting each one.
pub fn apply<B: Backend>(
    model: Swav<B>,
    tensors: Vec<FileTensor>,
    device: &B::Device,
) -> Result<(Swav<B>, LoadReport), String> {
    let mut by_name: BTreeMap<String, FileTensor> =
        tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    let mut mapper = Loader {
        path: Vec::new(),
        tensors: &mut by_name,
        device: device.clone(),
        report: LoadReport::default(),
        error: None,
    };
    let model = model.map(&mut mapper);
    if let Some(e) = mapper.error {
        return Err(e);
    }
    let mut report = mapper.report;
    report.unexpected = by_name.into_keys().collect();
    Ok((model, report))
}

struct Loader<'a, B: Backend> {
    path: Vec<String>,
    tensors: &'a mut BTreeMap<String, FileTensor>,
    device: B::Device,
    report: LoadReport,
    error: Option<String>,
}

impl<B: Backend> ModuleMapper<B> for Loader<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let name = self.path.join(".");
        let dims = tensor.dims();
        // Loaded values stay trainable where the initial ones were (running statistics are not).
        let trainable = tensor.is_require_grad();
        let out = match self.tensors.remove(&name) {
            None => {
                self.report.missing.push(name);
                tensor
            }
            Some(t) if t.shape.as_slice() != dims.as_slice() => {
                self.report
                    .mismatched
                    .push(format!("{name} (model {dims:?}, file {:?})", t.shape));
                tensor
            }
            Some(t) => match t.to_f32() {
                Ok(values) => {
                    self.report.loaded.push(name);
                    let t = Tensor::from_data(TensorData::new(values, dims), &self.device);
                    if trainable {
                        t.require_grad()
                    } else {
                        t
                    }
                }
                Err(e) => {
                    self.error.get_or_insert(format!("{name}: {e}"));
                    tensor
                }
            },
        };
        Param::from_mapped_value(id, out, mapper)
    }
}
