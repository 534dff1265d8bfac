//! Structured log lines (logfmt): `tool event=kind key=value ...`, a value quoted (Rust string
//! syntax) when it is empty or holds whitespace or a quote, so a line splits back into its
//! fields; and the `log_config:` section of PASSL's configs ([`LogSection`]), which training and
//! evaluation share.

use serde::{Deserialize, Serialize};
pub use swav_formats::report::field;

/// `log_config:` (PASSL `LogHook`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub name: String,
    /// Iterations between metric lines.
    pub interval: usize,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            name: "LogHook".into(),
            interval: 50,
        }
    }
}

/// The message of a panic's payload, on one line (for the error line of a thread that panicked:
/// a rank, a decoder).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .map_or_else(
            || "panicked".into(),
            |m| {
                let lines: Vec<&str> = m.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
                format!("panicked: {}", lines.join("; "))
            },
        )
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::field("a", "1.5"), " a=1.5");
        assert_eq!(super::field("m", "two words"), r#" m="two words""#);
        assert_eq!(super::field("e", ""), r#" e="""#);
        assert_eq!(super::field("q", r#"x"y"#), r#" q="x\"y""#);
    }
}
