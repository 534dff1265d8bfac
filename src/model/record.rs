//! Burn records of the SwAV module: `NamedMpkFileRecorder` at full precision (`OUT.mpk`),
//! with the model's shape beside it (`OUT.mpk.json`, a [`SwavConfig`]), since a record holds
//! values only and `Module::load_file` needs a module of the right shape.

use super::swav::{Swav, SwavConfig};
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, RecorderError};
use burn::tensor::backend::Backend;
use std::path::{Path, PathBuf};

/// The recorder used for `.mpk` files.
pub type Recorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// The config file beside a record.
pub fn config_path(record: &Path) -> PathBuf {
    let mut s = record.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

/// Whether a path names a Burn record.
pub fn is_record(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "mpk")
}

/// Why a record could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The config beside the record is missing or unreadable.
    #[error("{}: {source} (a Burn record needs its config beside it)", path.display())]
    NoConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config is not a SwAV model's.
    #[error("{}: {source}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// Burn's recorder refused the record (or its shapes do not fit the config's module).
    #[error("{}: {source}", path.display())]
    Recorder {
        path: PathBuf,
        #[source]
        source: RecorderError,
    },
    /// Writing, syncing or renaming failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Save `model` to `path` (`.mpk`) and its config beside it, each through a temporary file
/// renamed into place.
pub fn save<B: Backend>(
    model: Swav<B>,
    config: &SwavConfig,
    path: &Path,
) -> Result<(), RecordError> {
    let io = |source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp.mpk", std::process::id()));
    model
        .save_file(tmp.clone(), &Recorder::new())
        .map_err(|source| RecordError::Recorder {
            path: path.to_path_buf(),
            source,
        })?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    let json = serde_json::to_vec_pretty(config).map_err(|source| RecordError::Config {
        path: config_path(path),
        source,
    })?;
    crate::atomic::write_bytes(&config_path(path), &json).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Load a record and its config.
pub fn load<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(Swav<B>, SwavConfig), RecordError> {
    let cp = config_path(path);
    let text = std::fs::read_to_string(&cp).map_err(|source| RecordError::NoConfig {
        path: cp.clone(),
        source,
    })?;
    let config: SwavConfig =
        serde_json::from_str(&text).map_err(|source| RecordError::Config { path: cp, source })?;
    let model = config
        .init::<B>(device)
        .load_file(path.to_path_buf(), &Recorder::new(), device)
        .map_err(|source| RecordError::Recorder {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((model, config))
}
