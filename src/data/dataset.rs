//! Image datasets on disk: torchvision's `ImageFolder` layout (`root/class_x/**/*.jpg`,
//! classes sorted by name → labels) or a flat folder of unlabelled images.

use std::fs;
use std::path::{Path, PathBuf};

/// File endings read as images (case-insensitive).
pub const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

/// Why a dataset could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
    #[error("{}: no images (.jpg, .jpeg, .png) found", .0.display())]
    Empty(PathBuf),
}

/// One image and its label.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    /// Class index (ImageFolder), `None` for a flat folder.
    pub label: Option<usize>,
}

/// A list of images.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    /// Class names, sorted; empty for a flat folder.
    pub classes: Vec<String>,
    pub samples: Vec<Sample>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| EXTENSIONS.contains(&e.as_str()))
}

/// Every image under `dir`, recursively, in sorted path order (as `os.walk` sorted).
fn images_under(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let rd = fs::read_dir(&d).map_err(|e| DatasetError::Io {
            path: d.clone(),
            message: e.to_string(),
        })?;
        let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries.into_iter().rev() {
            if p.is_dir() {
                stack.push(p);
            } else if is_image(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

impl Dataset {
    /// `root/class/**/image`: one class per subfolder, labels by sorted folder name.
    pub fn image_folder(root: &Path) -> Result<Dataset, DatasetError> {
        let io = |e: std::io::Error| DatasetError::Io {
            path: root.to_path_buf(),
            message: e.to_string(),
        };
        let mut classes: Vec<String> = fs::read_dir(root)
            .map_err(io)?
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        let mut samples = Vec::new();
        for (label, c) in classes.iter().enumerate() {
            for path in images_under(&root.join(c))? {
                samples.push(Sample {
                    path,
                    label: Some(label),
                });
            }
        }
        if samples.is_empty() {
            return Err(DatasetError::Empty(root.to_path_buf()));
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            classes,
            samples,
        })
    }

    /// Every image under `root`, unlabelled (pretraining).
    pub fn flat(root: &Path) -> Result<Dataset, DatasetError> {
        let samples: Vec<Sample> = images_under(root)?
            .into_iter()
            .map(|path| Sample { path, label: None })
            .collect();
        if samples.is_empty() {
            return Err(DatasetError::Empty(root.to_path_buf()));
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            classes: Vec::new(),
            samples,
        })
    }

    /// ImageFolder when `root` holds subfolders with images, else a flat folder.
    pub fn open(root: &Path) -> Result<Dataset, DatasetError> {
        if !root.is_dir() {
            return Err(DatasetError::Io {
                path: root.to_path_buf(),
                message: "not a folder".into(),
            });
        }
        let has_top_images = fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| is_image(&e.path()));
        match Dataset::image_folder(root) {
            Ok(d) if !has_top_images => Ok(d),
            _ => Dataset::flat(root),
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether it holds no image (never, once opened).
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}
