//! YAML configs (PASSL's `configs/**.yaml`): read strictly (an unknown key is an error naming
//! it), then `-o a.b.c=value` overrides applied to the fully defaulted tree (a key that does
//! not exist is an error naming it and the keys beside it; a value of the wrong type is an error
//! naming the key). The schemas live with their users: [`crate::train::config`] and
//! [`crate::eval::config`].

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_yaml_ng::Value;
use std::path::Path;

/// A config error (one line, naming the file or key).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("-o {key}: {message}")]
    Override { key: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// Parse YAML text into `T` (an empty document gives `T`'s defaults).
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let value = if value.is_null() {
        Value::Mapping(Default::default())
    } else {
        value
    };
    from_value(value)
}

/// Read a config file and apply overrides.
pub fn load<T: Serialize + DeserializeOwned>(
    path: &Path,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let file_err = |message: String| ConfigError::File {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    let cfg: T = from_yaml(&text).map_err(file_err)?;
    with_overrides(&cfg, overrides)
}

/// Apply `a.b.c=value` overrides (values read as YAML: numbers, booleans, lists; a number
/// selects a list item: `dataloader.train.dataset.transforms.0.size=160`).
pub fn with_overrides<T: Serialize + DeserializeOwned>(
    cfg: &T,
    overrides: &[String],
) -> Result<T, ConfigError> {
    let mut tree = serde_yaml_ng::to_value(cfg).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    for o in overrides {
        let (key, text) = o.split_once('=').ok_or_else(|| ConfigError::Override {
            key: o.clone(),
            message: "expected key=value".into(),
        })?;
        let err = |message: String| ConfigError::Override {
            key: key.to_string(),
            message,
        };
        let value: Value = serde_yaml_ng::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut node = &mut tree;
        for part in key.split('.') {
            node = match node {
                Value::Mapping(map) => {
                    let known: Vec<String> = map
                        .keys()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect();
                    map.get_mut(part).ok_or_else(|| {
                        err(format!("no such key (known here: {})", known.join(", ")))
                    })?
                }
                Value::Sequence(items) => {
                    let n = items.len();
                    part.parse::<usize>()
                        .ok()
                        .and_then(|i| items.get_mut(i))
                        .ok_or_else(|| {
                            err(format!(
                                "'{part}': a list of {n} items needs an index below {n}"
                            ))
                        })?
                }
                _ => return Err(err(format!("'{part}' is below a value, not a section"))),
            };
        }
        if node.is_mapping() {
            return Err(err("is a section, not a value".into()));
        }
        *node = value;
        from_value::<T>(tree.clone()).map_err(|m| {
            let prefix = format!("{key}: ");
            err(m.strip_prefix(&prefix).map(str::to_string).unwrap_or(m))
        })?;
    }
    from_value(tree).map_err(ConfigError::Invalid)
}

/// As YAML (every key, defaults included).
pub fn to_yaml<T: Serialize>(cfg: &T) -> String {
    serde_yaml_ng::to_string(cfg).expect("a config serialises")
}

/// Range checks of config values, each error naming its key (`model.head.epsilon -1: must be
/// above 0`). NaN and infinities are out of every range.
pub mod range {
    use super::ConfigError;

    fn bad(key: &str, value: impl std::fmt::Display, why: &str) -> ConfigError {
        ConfigError::Invalid(format!("{key} {value}: {why}"))
    }

    /// A whole number of at least 1.
    pub fn at_least_one(key: &str, v: usize) -> Result<(), ConfigError> {
        if v >= 1 {
            Ok(())
        } else {
            Err(bad(key, v, "must be at least 1"))
        }
    }

    /// A finite number above 0.
    pub fn positive(key: &str, v: f64) -> Result<(), ConfigError> {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(bad(key, v, "must be a finite number above 0"))
        }
    }

    /// A finite number of at least 0.
    pub fn non_negative(key: &str, v: f64) -> Result<(), ConfigError> {
        if v.is_finite() && v >= 0.0 {
            Ok(())
        } else {
            Err(bad(key, v, "must be a finite number of at least 0"))
        }
    }

    /// A momentum: at least 0 and below 1.
    pub fn momentum(key: &str, v: f64) -> Result<(), ConfigError> {
        if (0.0..1.0).contains(&v) {
            Ok(())
        } else {
            Err(bad(key, v, "must be at least 0 and below 1"))
        }
    }

    /// A finite number.
    pub fn finite(key: &str, v: f64) -> Result<(), ConfigError> {
        if v.is_finite() {
            Ok(())
        } else {
            Err(bad(key, v, "must be a finite number"))
        }
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn out_of_range_values_are_named() {
            assert!(super::positive("a.b", 0.5).is_ok());
            let e = super::positive("a.b", f64::NAN).unwrap_err().to_string();
            assert_eq!(e, "config: a.b NaN: must be a finite number above 0");
            assert!(super::non_negative("k", -1e-9).is_err());
            assert!(super::momentum("m", 1.0).is_err());
            assert!(super::momentum("m", 0.0).is_ok());
            assert!(super::at_least_one("n", 0).is_err());
            assert!(super::finite("f", f64::INFINITY).is_err());
        }
    }
}
