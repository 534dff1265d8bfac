//! `swav-fetch NAME`: download published SwAV weights into a verified cache.
//! `swav-fetch list | verify [NAME] | rm NAME | gc`, `swav-fetch --url URL [--sha256 H]`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use swav::cli::{non_negative, positive};
use swav::fetch::{self, FetchError, FetchOptions, Registry};

#[derive(Parser)]
#[command(
    version,
    after_help = "Exit codes: 0 success; 1 a check that ran and failed (`verify` found a file that does not match its hash); 2 an error (network, I/O, bad input), with one line on stderr.",
    about = "Download published SwAV weights (PASSL, facebookresearch/swav) into a verified cache"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Artifact to fetch (see `swav-fetch list`).
    name: Option<String>,
    /// Fetch this URL instead of a registry artifact.
    #[arg(long, conflicts_with = "name")]
    url: Option<String>,
    /// Expected SHA-256 of --url.
    #[arg(long, requires = "url")]
    sha256: Option<String>,
    /// Copy (or hard-link) the verified file to PATH.
    #[arg(long, value_name = "PATH")]
    to: Option<PathBuf>,
    /// Convert the verified file with swav-convert's defaults to OUT (.safetensors, .pth, .pdparams, ...).
    #[arg(long, value_name = "OUT")]
    convert: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args, Clone)]
struct Common {
    /// Cache folder [default: $SWAV_HOME, else ~/.cache/swav].
    #[arg(long, global = true, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Registry file replacing the built-in one (mirrors, other artifacts, other Drive base).
    #[arg(long, global = true, value_name = "FILE", env = "SWAV_REGISTRY")]
    registry: Option<PathBuf>,
    /// Use only the cache (also SWAV_OFFLINE=1).
    #[arg(long, global = true)]
    offline: bool,
    /// Seconds allowed to connect.
    #[arg(long, global = true, default_value_t = 15.0, value_parser = positive)]
    connect_timeout: f64,
    /// Seconds any one read may wait for data (there is no total deadline).
    #[arg(long, global = true, default_value_t = 60.0, value_parser = positive)]
    read_timeout: f64,
    /// Failed attempts allowed per mirror.
    #[arg(long, global = true, default_value_t = 5)]
    retries: u32,
    /// First wait between attempts, in seconds (doubles each time; Retry-After wins).
    #[arg(long, global = true, default_value_t = 1.0, value_parser = non_negative)]
    retry_wait: f64,
    /// No log lines, no progress bar.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// The registry, with what is cached and verified.
    List,
    /// Re-hash cached files against their published or recorded hashes.
    Verify { name: Option<String> },
    /// Remove an artifact from the cache.
    Rm { name: String },
    /// Remove partial downloads and folders without a verified file.
    Gc,
}

fn main() -> ExitCode {
    let args: Args = swav::cli::parse("swav-fetch");
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("swav-fetch: error: {e}");
            ExitCode::from(swav::cli::EXIT_ERROR)
        }
    }
}

fn secs(s: f64) -> Result<Duration, FetchError> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| FetchError::Other(format!("{s} is not a valid number of seconds")))
}

fn run(args: Args) -> Result<ExitCode, FetchError> {
    let c = args.common.clone();
    let registry = match &c.registry {
        Some(p) => Registry::load(p).map_err(FetchError::Other)?,
        None => Registry::builtin(),
    };
    let mut opts = FetchOptions::default();
    if let Some(d) = c.cache_dir.clone() {
        opts.root = d;
    }
    opts.offline |= c.offline;
    opts.quiet = c.quiet;
    opts.http.connect_timeout = secs(c.connect_timeout)?;
    opts.http.read_timeout = secs(c.read_timeout)?;
    opts.http.retries = c.retries;
    opts.http.retry_wait = secs(c.retry_wait)?;
    let print = |v: &dyn erased::Json, text: String| {
        if c.json {
            println!("{}", v.json());
        } else {
            println!("{text}");
        }
    };
    match args.command {
        Some(Command::List) => {
            let rows = fetch::list(&registry, &opts.root);
            let mut text = format!(
                "{:32} {:17} {:8} {:6} {:>10}  state",
                "name", "source", "kind", "top1", "MB"
            );
            for r in &rows {
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
            print(&rows, text);
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Verify { name }) => {
            let results = fetch::verify(&registry, &opts.root, name.as_deref())?;
            let mut bad = false;
            let mut text = Vec::new();
            let mut json = Vec::new();
            for (n, r) in &results {
                match r {
                    Ok(rec) => {
                        text.push(format!(
                            "{n}: ok ({} bytes, sha256 {}, {})",
                            rec.size, rec.sha256, rec.hash_source
                        ));
                        json.push(serde_json::json!({"name": n, "ok": true, "sha256": rec.sha256, "size": rec.size}));
                    }
                    Err(e) => {
                        bad = true;
                        text.push(format!("{n}: FAILED: {e}"));
                        json.push(
                            serde_json::json!({"name": n, "ok": false, "error": e.to_string()}),
                        );
                    }
                }
            }
            if results.is_empty() {
                text.push("nothing cached".into());
            }
            print(&json, text.join("\n"));
            // A check that ran and failed: exit code 1.
            Ok(if bad {
                ExitCode::from(swav::cli::EXIT_CHECK_FAILED)
            } else {
                ExitCode::SUCCESS
            })
        }
        Some(Command::Rm { name }) => {
            let dir = fetch::remove(&registry, &opts.root, &name)?;
            print(
                &serde_json::json!({"removed": dir}),
                format!("removed {}", dir.display()),
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Gc) => {
            let g = fetch::gc(&opts.root)?;
            let text = format!(
                "removed {} partial downloads and {} empty folders ({} bytes)",
                g.partials, g.folders, g.bytes
            );
            print(&g, text);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let artifact = match (&args.name, &args.url) {
                (Some(n), None) => registry
                    .get(n)
                    .cloned()
                    .ok_or_else(|| FetchError::Unknown(n.clone()))?,
                (None, Some(u)) => fetch::url_artifact(u, args.sha256.clone(), None)?,
                _ => {
                    return Err(FetchError::Other(
                        "give an artifact NAME, --url URL, or a subcommand (see --help)".into(),
                    ))
                }
            };
            let f = fetch::fetch(&registry, &artifact, &opts)?;
            if let Some(to) = &args.to {
                fetch::copy_out(&f.path, to)?;
            }
            if let Some(out) = &args.convert {
                swav::convert::convert(&f.path, out, &Default::default())
                    .map_err(|e| FetchError::Other(e.to_string()))?;
            }
            let text = format!(
                "{} ({} bytes, sha256 {}, {})",
                f.path.display(),
                f.size,
                f.sha256,
                f.status
            );
            print(&f, text);
            Ok(ExitCode::SUCCESS)
        }
    }
}

mod erased {
    /// Anything printable as JSON.
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("serializable")
        }
    }
}
