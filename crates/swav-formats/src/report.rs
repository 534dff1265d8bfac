//! What the binaries print: structured log lines (logfmt), `tool event=kind key=value ...`, a
//! value quoted (Rust string syntax) when it is empty or holds whitespace or a quote, so a line
//! splits back into its fields.

/// ` key=value`, the value quoted when it needs to be.
pub fn field(key: &str, value: &str) -> String {
    if value.is_empty() || value.contains(char::is_whitespace) || value.contains('"') {
        format!(" {key}={value:?}")
    } else {
        format!(" {key}={value}")
    }
}
