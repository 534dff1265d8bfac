//! Checkpoint key selection: which tensors of a checkpoint are the model's (under a
//! training checkpoint's `state_dict`/`model` key, behind DataParallel's `module.` prefix) and
//! which naming convention ([`Layout`]) they follow. The step between reading a container
//! ([`crate::checkpoint`]) and using its tensors (conversion, extraction, the model).

use crate::checkpoint::{Checkpoint, Format};
use crate::layout::{self, Layout, LayoutError};
use crate::tensor::Tensor;
use std::path::PathBuf;
use thiserror::Error;

/// Why a checkpoint's model tensors could not be picked out.
#[derive(Debug, Error)]
pub enum SelectError {
    /// The checkpoint has no tensors at all.
    #[error("{}: the checkpoint holds no tensors", .0.display())]
    NoTensors(PathBuf),
    /// `--key` names no top-level key.
    #[error("{}: no key '{key}' in the checkpoint (top-level keys: {})", path.display(), found.join(", "))]
    NoKey {
        path: PathBuf,
        key: String,
        /// The first top-level keys there are.
        found: Vec<String>,
    },
    /// `--strip-prefix` matches no name.
    #[error("{}: no tensor name starts with '{prefix}'", path.display())]
    NoPrefix { path: PathBuf, prefix: String },
    /// The names follow no known layout.
    #[error("{}: {source}", path.display())]
    Layout {
        path: PathBuf,
        #[source]
        source: LayoutError,
    },
}

/// How to pick and rename tensors.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Take tensors under this top-level key (`state_dict`); `None` = detect.
    pub key: Option<String>,
    /// Prefixes to remove from names (`module.` is removed automatically when all names have it).
    pub strip_prefix: Vec<String>,
    /// Layout of the input; `None` = detect.
    pub from_layout: Option<Layout>,
}

/// The model tensors of a checkpoint, with what was done to find them.
#[derive(Debug, Clone)]
pub struct Selected {
    /// Tensors, names relative to the model.
    pub tensors: Vec<Tensor>,
    /// The key they were found under.
    pub key: Option<String>,
    /// Prefixes removed.
    pub stripped: Vec<String>,
    /// Their layout.
    pub layout: Layout,
}

/// Top-level keys under which training checkpoints keep the model.
pub const MODEL_KEYS: &[&str] = &["state_dict", "model", "model_state_dict", "module"];

fn top_segment(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// Pick the model's tensors from a checkpoint and detect their layout.
pub fn select(ck: &Checkpoint, sel: &Selection) -> Result<Selected, SelectError> {
    if ck.tensors.is_empty() {
        return Err(SelectError::NoTensors(ck.path.clone()));
    }
    let tops: std::collections::BTreeSet<&str> =
        ck.tensors.iter().map(|t| top_segment(&t.name)).collect();
    let key = match &sel.key {
        Some(k) => {
            if !tops.contains(k.as_str()) {
                return Err(SelectError::NoKey {
                    path: ck.path.clone(),
                    key: k.clone(),
                    found: tops.iter().take(8).map(|s| s.to_string()).collect(),
                });
            }
            Some(k.clone())
        }
        None => MODEL_KEYS
            .iter()
            .find(|k| tops.contains(**k) && (tops.len() > 1 || **k == "state_dict"))
            .map(|k| k.to_string()),
    };
    let mut tensors: Vec<Tensor> = match &key {
        Some(k) => {
            let p = format!("{k}.");
            ck.tensors
                .iter()
                .filter_map(|t| t.name.strip_prefix(&p).map(|n| t.clone().renamed(n)))
                .collect()
        }
        None => ck.tensors.clone(),
    };
    let mut stripped = Vec::new();
    let mut prefixes = sel.strip_prefix.clone();
    if tensors.iter().all(|t| t.name.starts_with("module.")) {
        prefixes.push("module.".into());
    }
    for p in prefixes {
        let p = if p.ends_with('.') { p } else { format!("{p}.") };
        let mut any = false;
        tensors = tensors
            .into_iter()
            .map(|t| match t.name.strip_prefix(&p) {
                Some(n) => {
                    any = true;
                    let n = n.to_string();
                    t.renamed(n)
                }
                None => t,
            })
            .collect();
        if !any {
            return Err(SelectError::NoPrefix {
                path: ck.path.clone(),
                prefix: p,
            });
        }
        stripped.push(p);
    }
    // The names decide; a layout recorded in safetensors metadata (ours) settles names that
    // every layout shares (a bare `linear.weight`), and a lone classifier's `linear`/`fc` in a
    // file torch.save wrote are torch's.
    let recorded = ck
        .values
        .iter()
        .find(|(k, _)| k == "__metadata__.layout")
        .and_then(|(_, v)| match v.as_str() {
            Some("torch") => Some(Layout::Torch),
            Some("paddle") => Some(Layout::Paddle),
            Some("burn") => Some(Layout::Burn),
            _ => None,
        });
    let torch_file = matches!(
        ck.format,
        Format::TorchZip | Format::TorchLegacy | Format::TorchTar
    );
    let names = || tensors.iter().map(|t| t.name.as_str());
    let layout = match (sel.from_layout, layout::detect(names()), recorded) {
        (Some(l), _, _) => l,
        (None, Ok(l), _) => l,
        (None, Err(_), Some(l)) => l,
        (None, Err(source), None) => {
            layout::lone_classifier(names(), torch_file).ok_or(SelectError::Layout {
                path: ck.path.clone(),
                source,
            })?
        }
    };
    Ok(Selected {
        tensors,
        key,
        stripped,
        layout,
    })
}
