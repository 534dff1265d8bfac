//! What `swav-fetch` prints for its results: a text form for the terminal beside the JSON of
//! `--json` (each result type serialises as itself).

use super::{Collected, Fetched, Listed, Verified};
use serde::Serialize;

/// `swav-fetch list`: one row per artifact with its cache state.
pub fn listing(rows: &[Listed]) -> String {
    let mut text = format!(
        "{:32} {:17} {:8} {:6} {:>10}  state",
        "name", "source", "kind", "top1", "MB"
    );
    for r in rows {
        let state = match (r.cached, r.verified, r.partial) {
            (true, true, _) => "cached, verified".to_string(),
            (true, false, _) => "cached, not verified".to_string(),
            (false, _, p) if p > 0 => format!("partial ({:.1} MB)", p as f64 / 1e6),
            _ => "-".to_string(),
        };
        text.push_str(&format!(
            "\n{:32} {:17} {:8} {:6} {:>10}  {state}",
            r.name,
            r.source,
            r.kind,
            r.top1.map(|t| format!("{t:.1}")).unwrap_or_default(),
            r.size
                .map(|s| format!("{:.1}", s as f64 / 1e6))
                .unwrap_or_else(|| "?".into()),
        ));
    }
    text
}

/// One cached file's verification, as `--json` prints it (keys in alphabetical order, as
/// they have always been printed).
#[derive(Debug, Clone, Serialize)]
pub struct VerifyRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub name: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// `swav-fetch verify`: each file's row and the text lines; a check that failed makes the
/// tool exit 1.
pub struct Verification {
    pub rows: Vec<VerifyRow>,
    pub text: String,
}

impl Verification {
    /// The report of [`super::verify`]'s results.
    pub fn new(results: &[Verified]) -> Verification {
        let mut rows = Vec::new();
        let mut text = Vec::new();
        for (n, r) in results {
            match r {
                Ok(rec) => {
                    text.push(format!(
                        "{n}: ok ({} bytes, sha256 {}, {})",
                        rec.size, rec.sha256, rec.hash_source
                    ));
                    rows.push(VerifyRow {
                        name: n.clone(),
                        ok: true,
                        sha256: Some(rec.sha256.clone()),
                        size: Some(rec.size),
                        error: None,
                    });
                }
                Err(e) => {
                    text.push(format!("{n}: FAILED: {e}"));
                    rows.push(VerifyRow {
                        name: n.clone(),
                        ok: false,
                        sha256: None,
                        size: None,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
        if results.is_empty() {
            text.push("nothing cached".into());
        }
        Verification {
            rows,
            text: text.join("\n"),
        }
    }

    /// Whether a file failed its check.
    pub fn failed(&self) -> bool {
        self.rows.iter().any(|r| !r.ok)
    }
}

impl Fetched {
    /// One line for the terminal.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} bytes, sha256 {}, {})",
            self.path.display(),
            self.size,
            self.sha256,
            self.status
        )
    }
}

impl Collected {
    /// One line for the terminal.
    pub fn describe(&self) -> String {
        format!(
            "removed {} partial downloads and {} empty folders ({} bytes)",
            self.partials, self.folders, self.bytes
        )
    }
}
