//! What the binaries share on their command lines: flags parsed with usage errors on one line
//! (exit code 2), and the ranges of numeric flags as clap value parsers, so that a value out
//! of range is refused by name before any work starts.

/// The exit code of a check that ran and failed (`swav-fetch verify`, `swav-train check-step`).
pub const EXIT_CHECK_FAILED: u8 = 1;
/// The exit code of an error (bad input, I/O, a usage error, a failed rank).
pub const EXIT_ERROR: u8 = 2;

/// The end of every binary's `main`: the exit code `result` carries, or its error and the
/// chain of its causes on one line (`tool: error: ...`) and [`EXIT_ERROR`].
pub fn finish<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    tool: &str,
    result: Result<std::process::ExitCode, E>,
) -> std::process::ExitCode {
    result.unwrap_or_else(|e| {
        let e: Box<dyn std::error::Error + Send + Sync> = e.into();
        eprintln!("{tool}: error: {}", swav_formats::report::one_line(&*e));
        std::process::ExitCode::from(EXIT_ERROR)
    })
}

/// Parse `tool`'s flags from the process's arguments. `--help` and `--version` print and exit
/// 0; a usage error prints `tool: error: ...` on one line and exits 2.
pub fn parse<P: clap::Parser>(tool: &str) -> P {
    P::try_parse().unwrap_or_else(|e| {
        use clap::error::ErrorKind;
        if matches!(
            e.kind(),
            ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        ) {
            e.exit();
        }
        eprintln!("{tool}: error: {}", usage_line(&e));
        std::process::exit(EXIT_ERROR.into())
    })
}

/// clap's message on one line: without its `error: ` label, its details (the missing
/// arguments, the possible values: the indented lines under it) joined to it, its tip kept, the
/// usage lines left out, with a pointer to `--help`.
fn usage_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
    let first = lines.next().map(str::trim).unwrap_or("bad arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let details: Vec<&str> = lines
        .take_while(|l| l.starts_with(char::is_whitespace) && !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let first = if details.is_empty() {
        first.to_string()
    } else {
        format!("{} {}", first.trim_end_matches(':'), details.join(", "))
    };
    let tip = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("tip: "))
        .map(|t| format!("; {t}"))
        .unwrap_or_default();
    format!("{first}{tip} (see --help)")
}

/// A whole number of at least 1 (sizes, counts, epochs, workers).
pub fn at_least_one(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(_) => Err("not a whole number".into()),
    }
}

/// A finite number above 0 (learning rates, timeouts, temperatures).
pub fn positive(s: &str) -> Result<f64, String> {
    let x = number(s)?;
    if x > 0.0 {
        Ok(x)
    } else {
        Err("must be above 0".into())
    }
}

/// A finite number of at least 0 (weight decays, tolerances, waits).
pub fn non_negative(s: &str) -> Result<f64, String> {
    let x = number(s)?;
    if x >= 0.0 {
        Ok(x)
    } else {
        Err("must be 0 or more".into())
    }
}

/// [`positive`] as an `f32`.
pub fn positive_f32(s: &str) -> Result<f32, String> {
    positive(s).and_then(to_f32)
}

/// [`non_negative`] as an `f32`.
pub fn non_negative_f32(s: &str) -> Result<f32, String> {
    non_negative(s).and_then(to_f32)
}

fn number(s: &str) -> Result<f64, String> {
    let x: f64 = s.trim().parse().map_err(|_| "not a number".to_string())?;
    if x.is_finite() {
        Ok(x)
    } else {
        Err("must be a finite number".into())
    }
}

/// `x` (finite) as an `f32` that keeps its sign: too large, or a non-zero value too small to
/// be an `f32` above 0, is an error.
fn to_f32(x: f64) -> Result<f32, String> {
    let y = x as f32;
    if !y.is_finite() {
        Err("too large".into())
    } else if x != 0.0 && y == 0.0 {
        Err("too small to be told from 0".into())
    } else {
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(at_least_one("3"), Ok(3));
        assert_eq!(at_least_one("0"), Err("must be at least 1".into()));
        assert_eq!(at_least_one("-1"), Err("not a whole number".into()));
        assert_eq!(positive("0.5"), Ok(0.5));
        for bad in ["0", "-1", "nan", "inf", "x"] {
            assert!(positive(bad).is_err(), "{bad}");
        }
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(non_negative("-0.1").is_err());
        assert!(non_negative("NaN").is_err());
        assert!(positive_f32("1e300").is_err());
        assert!(positive_f32("1e-50").is_err());
        assert_eq!(non_negative_f32("0"), Ok(0.0));
        assert_eq!(non_negative_f32("1e-6"), Ok(1e-6));
    }

    #[derive(clap::Parser, Debug)]
    struct Flags {
        #[arg(long, value_parser = at_least_one)]
        k: usize,
        #[arg(long, value_parser = ["a", "b"])]
        pick: Option<String>,
    }

    #[test]
    fn usage_errors_fit_on_one_line() {
        let e = <Flags as clap::Parser>::try_parse_from(["t", "--k", "0"]).unwrap_err();
        let line = usage_line(&e);
        assert_eq!(
            line,
            "invalid value '0' for '--k <K>': must be at least 1 (see --help)"
        );
        let e = <Flags as clap::Parser>::try_parse_from(["t", "--kk", "1"]).unwrap_err();
        let line = usage_line(&e);
        assert!(
            line.starts_with("unexpected argument '--kk' found"),
            "{line}"
        );
        assert!(!line.contains('\n'));
        // The details clap puts under its first line are kept.
        let e = <Flags as clap::Parser>::try_parse_from(["t"]).unwrap_err();
        let line = usage_line(&e);
        assert!(line.contains("--k <K>"), "{line}");
        let e =
            <Flags as clap::Parser>::try_parse_from(["t", "--k", "1", "--pick", "c"]).unwrap_err();
        let line = usage_line(&e);
        assert!(line.contains("possible values: a, b"), "{line}");
        assert!(!line.contains('\n'));
    }
}
