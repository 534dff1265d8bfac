//! `swav-fetch NAME`: download published SwAV weights into a verified cache.
//! `swav-fetch list | verify [NAME] | rm NAME | gc`, `swav-fetch --url URL [--sha256 H]`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use swav::cli::{non_negative, positive};
use swav::fetch::show::{self, Verification};
use swav::fetch::{self, FetchError, FetchOptions, Registry};
use swav::report::json;

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
    swav::cli::finish("swav-fetch", run(swav::cli::parse("swav-fetch")))
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
    let print = |json: String, text: String| println!("{}", if c.json { json } else { text });
    match args.command {
        Some(Command::List) => {
            let rows = fetch::list(&registry, &opts.root);
            print(json(&rows), show::listing(&rows));
        }
        Some(Command::Verify { name }) => {
            let v = Verification::new(&fetch::verify(&registry, &opts.root, name.as_deref())?);
            print(json(&v.rows), v.text.clone());
            if v.failed() {
                return Ok(ExitCode::from(swav::cli::EXIT_CHECK_FAILED));
            }
        }
        Some(Command::Rm { name }) => {
            let dir = fetch::remove(&registry, &opts.root, &name)?;
            let text = format!("removed {}", dir.display());
            print(json(&serde_json::json!({"removed": dir})), text);
        }
        Some(Command::Gc) => {
            let g = fetch::gc(&opts.root)?;
            print(json(&g), g.describe());
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
            print(json(&f), f.describe());
        }
    }
    Ok(ExitCode::SUCCESS)
}
