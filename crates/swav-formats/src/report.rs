//! What the binaries print while they work, written once for all of them: structured log
//! lines (logfmt) on stderr, `tool event=kind key=value ...`, a value quoted (Rust string
//! syntax) when it is empty or holds whitespace or a quote, so a line splits back into its
//! fields; an indicatif progress bar under them, drawn only when stderr is a terminal (hidden,
//! never drawn, when it is not or when the tool is quiet); errors and panics on one line; and
//! the `log_config:` section of PASSL's configs ([`LogSection`]: how often metrics are printed).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::sync::Mutex;

/// ` key=value`, the value quoted when it needs to be.
pub fn field(key: &str, value: &str) -> String {
    if value.is_empty() || value.contains(char::is_whitespace) || value.contains('"') {
        format!(" {key}={value:?}")
    } else {
        format!(" {key}={value}")
    }
}

/// ` key=value ...` for each field of a serialisable struct, in its order (floats with six
/// decimals, strings as they are, anything nested as JSON).
pub fn fields_of<T: Serialize>(value: &T) -> String {
    let mut line = String::new();
    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(value) {
        for (k, v) in m {
            let v = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => match n.as_f64() {
                    Some(f) if n.is_f64() => format!("{f:.6}"),
                    _ => n.to_string(),
                },
                other => other.to_string(),
            };
            line.push_str(&field(&k, &v));
        }
    }
    line
}

/// `log_config:` (PASSL `LogHook`), which training and evaluation configs share.
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

/// An error and its causes (`source()` chain) on one line, `error: cause: cause`, each cause
/// left out when the message before it already says it (errors that print their source).
pub fn one_line(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let m = c.to_string();
        if !line.contains(&m) {
            line.push_str(": ");
            line.push_str(&m);
        }
        cause = c.source();
    }
    line.replace('\n', " ")
}

/// A result as one JSON line (what `--json` prints on stdout).
pub fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serialises")
}

/// One tool's event sink: log lines and a progress bar.
pub struct Reporter {
    tool: String,
    /// Fields every line carries after `event=` (fetch's `name=`).
    context: String,
    /// The bar's `{msg}` (fetch: the artifact).
    label: String,
    quiet: bool,
    bar: Mutex<ProgressBar>,
}

impl Reporter {
    /// A reporter for `tool`; `quiet` silences its lines and bar (errors are the binaries').
    pub fn new(tool: &str, quiet: bool) -> Reporter {
        Reporter {
            tool: tool.to_string(),
            context: String::new(),
            label: String::new(),
            quiet,
            bar: Mutex::new(ProgressBar::hidden()),
        }
    }

    /// The same, with `key=value` after every line's event (`swav-fetch event=.. name=..`).
    pub fn with_context(mut self, key: &str, value: &str) -> Reporter {
        self.context.push_str(&field(key, value));
        self
    }

    /// The same, with `label` as the bar's `{msg}`.
    pub fn with_label(mut self, label: &str) -> Reporter {
        self.label = label.to_string();
        self
    }

    /// Whether lines are printed at all.
    pub fn is_quiet(&self) -> bool {
        self.quiet
    }

    /// Start a progress bar of `len` steps (unknown: `None`) at `pos`, drawn with an indicatif
    /// `template`, when stderr is a terminal and the reporter is not quiet.
    pub fn start_bar(&self, len: Option<u64>, pos: u64, template: &str) -> ProgressBar {
        let bar = if self.quiet || !std::io::stderr().is_terminal() {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr())
        };
        bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
        bar.set_position(pos);
        bar.set_message(self.label.clone());
        if let Ok(mut b) = self.bar.lock() {
            *b = bar.clone();
        }
        bar
    }

    /// The current bar (hidden when none was started).
    pub fn bar(&self) -> ProgressBar {
        self.bar
            .lock()
            .map(|b| b.clone())
            .unwrap_or_else(|_| ProgressBar::hidden())
    }

    /// Whether a bar is being drawn (lines then only go above it when they matter).
    pub fn bar_drawn(&self) -> bool {
        !self.bar().is_hidden()
    }

    /// Clear the bar.
    pub fn finish_bar(&self) {
        let bar = self.bar();
        bar.finish_and_clear();
        if let Ok(mut b) = self.bar.lock() {
            *b = ProgressBar::hidden();
        }
    }

    /// `tool event=kind [context] key=value ...` on stderr.
    pub fn event(&self, kind: &str, fields: &[(&str, &str)]) {
        let mut line = format!("{}{}{}", self.tool, field("event", kind), self.context);
        for (k, v) in fields {
            line.push_str(&field(k, v));
        }
        self.line(&line);
    }

    /// A serialisable record (its fields, `event` among them) as one logfmt line.
    pub fn record<T: Serialize>(&self, value: &T) {
        self.line(&format!("{}{}", self.tool, fields_of(value)));
    }

    /// A line on stderr, above the bar when one is drawn.
    pub fn line(&self, line: &str) {
        if self.quiet {
            return;
        }
        let bar = self.bar();
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_chain_is_one_line_without_repeats() {
        #[derive(Debug, thiserror::Error)]
        enum Outer {
            #[error("model.mpk: cannot load")]
            Opaque(#[source] std::io::Error),
            #[error("model.mpk: {0}")]
            Says(#[source] std::io::Error),
        }
        let io = || std::io::Error::other("disk\nfull");
        assert_eq!(
            one_line(&Outer::Opaque(io())),
            "model.mpk: cannot load: disk full"
        );
        assert_eq!(one_line(&Outer::Says(io())), "model.mpk: disk full");
    }

    #[test]
    fn fields_are_quoted_when_they_must_be() {
        assert_eq!(field("a", "1.5"), " a=1.5");
        assert_eq!(field("m", "two words"), r#" m="two words""#);
        assert_eq!(field("e", ""), r#" e="""#);
        assert_eq!(field("q", r#"x"y"#), r#" q="x\"y""#);
        #[derive(Serialize)]
        struct E {
            event: &'static str,
            loss: f64,
            step: usize,
            name: String,
        }
        let e = E {
            event: "iteration",
            loss: 1.5,
            step: 3,
            name: "x y".into(),
        };
        // Field order is serde_json's map order; each field is there once, formatted.
        let line = fields_of(&e);
        for f in [
            " event=iteration",
            " loss=1.500000",
            " step=3",
            " name=\"x y\"",
        ] {
            assert_eq!(line.matches(f).count(), 1, "{f} in {line}");
        }
        assert_eq!(
            line.len(),
            " event=iteration loss=1.500000 step=3 name=\"x y\"".len()
        );
    }
}
