//! The registry of published weights: a data file (`configs/weights.toml`, built in) naming
//! each artifact, its mirrors and what a genuine file must contain.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The built-in registry.
pub const BUILTIN: &str = include_str!("../../../../configs/weights.toml");

/// One downloadable file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// What users type (`swav_r50_100ep`).
    pub name: String,
    /// `passl` or `facebookresearch`.
    #[serde(default)]
    pub source: String,
    /// Mirrors in order; `gdrive:ID` is a Google Drive file.
    pub urls: Vec<String>,
    /// File name in the cache.
    pub file: String,
    /// `paddle` or `torch`.
    #[serde(default)]
    pub format: String,
    /// Backbone architecture.
    #[serde(default)]
    pub arch: String,
    /// `pretrain` or `linear`.
    #[serde(default)]
    pub kind: String,
    /// Reported ImageNet linear top-1.
    #[serde(default)]
    pub top1: Option<f64>,
    /// Published size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// Published SHA-256 (hex).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Fewest tensors a genuine file holds.
    #[serde(default)]
    pub min_tensors: usize,
    /// Tensor shapes a genuine file has, in torch-layout names.
    #[serde(default)]
    pub expect: BTreeMap<String, Vec<usize>>,
}

/// The parsed registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Where `gdrive:ID` URLs point (`{gdrive_base}?export=download&id=ID`).
    #[serde(default = "default_gdrive")]
    pub gdrive_base: String,
    /// The artifacts.
    #[serde(default, rename = "artifact")]
    pub artifacts: Vec<Artifact>,
}

fn default_gdrive() -> String {
    "https://drive.google.com/uc".into()
}

impl Registry {
    /// The built-in registry.
    pub fn builtin() -> Registry {
        Registry::parse(BUILTIN).expect("the built-in registry parses")
    }

    /// Parse registry text.
    pub fn parse(text: &str) -> Result<Registry, String> {
        let r: Registry = toml::from_str(text).map_err(|e| e.to_string())?;
        for a in &r.artifacts {
            if a.urls.is_empty() {
                return Err(format!("artifact '{}' has no urls", a.name));
            }
            if a.file.is_empty()
                || a.file.contains('/')
                || a.file.contains('\\')
                || a.file.starts_with('.')
            {
                return Err(format!(
                    "artifact '{}' has an unsafe file name '{}'",
                    a.name, a.file
                ));
            }
            if let Some(h) = &a.sha256 {
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("artifact '{}' has a malformed sha256", a.name));
                }
            }
        }
        Ok(r)
    }

    /// Read a registry file.
    pub fn load(path: &Path) -> Result<Registry, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Registry::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The artifact with this name.
    pub fn get(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.name == name)
    }

    /// The concrete URL of a registry URL (`gdrive:ID` expanded).
    pub fn resolve(&self, url: &str) -> String {
        match url.strip_prefix("gdrive:") {
            Some(id) => format!("{}?export=download&id={id}", self.gdrive_base),
            None => url.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_every_published_artifact() {
        let r = Registry::builtin();
        for n in [
            "swav_r50_100ep",
            "swav_r50_100ep_lincls",
            "swav_800ep_pretrain",
            "swav_400ep_pretrain",
            "swav_200ep_pretrain",
            "swav_100ep_pretrain",
            "swav_200ep_bs256_pretrain",
            "swav_400ep_bs256_pretrain",
            "swav_400ep_2x224_pretrain",
            "swav_RN50w2_400ep_pretrain",
            "swav_RN50w4_400ep_pretrain",
            "swav_RN50w5_400ep_pretrain",
            "swav_800ep_eval_linear",
        ] {
            assert!(r.get(n).is_some(), "{n}");
        }
        assert_eq!(
            r.resolve(&r.get("swav_r50_100ep").unwrap().urls[0]),
            "https://drive.google.com/uc?export=download&id=1budFSoQqZz1Idyej-R4E6kUnL8CGtdyu"
        );
    }

    #[test]
    fn unsafe_file_names_are_refused() {
        let e = Registry::parse("[[artifact]]\nname='x'\nurls=['http://a']\nfile='../x'\n")
            .unwrap_err();
        assert!(e.contains("unsafe file name"));
    }
}
