//! `swav-extract CKPT --output OUT [--prefix backbone] [--remove-prefix]`: PASSL's
//! `tools/extract_weight.py` for any input and output format.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use swav::convert::{self, ExtractOptions};
use swav::layout::Layout;
use swav::report::json;
use swav::tensor::DType;

#[derive(Parser)]
#[command(
    version,
    after_help = "Exit codes: 0 success; 2 an error (bad input, refused or unreadable file, I/O), with one line on stderr.",
    about = "Pull the backbone out of a SwAV (training) checkpoint"
)]
struct Args {
    /// Checkpoint to read (any format swav-convert reads).
    checkpoint: PathBuf,
    /// Output file; extension picks the format (.pdparams, .pth, .safetensors, .safetensors.zst).
    #[arg(short, long)]
    output: PathBuf,
    /// Keep the tensors under this prefix.
    #[arg(long, default_value = "backbone")]
    prefix: String,
    /// Remove `PREFIX.` from the kept names.
    #[arg(long)]
    remove_prefix: bool,
    /// Layout of the output names [default: by output format].
    #[arg(long, value_enum)]
    layout: Option<Layout>,
    /// Convert floating-point tensors to this type (f32, f16, bf16, f64).
    #[arg(long, value_parser = DType::parse_float)]
    dtype: Option<DType>,
    /// Top-level key holding the model [default: state_dict when present].
    #[arg(long)]
    key: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    swav::cli::finish("swav-extract", run(swav::cli::parse("swav-extract")))
}

fn run(a: Args) -> Result<ExitCode, String> {
    let opts = ExtractOptions {
        prefix: a.prefix,
        remove_prefix: a.remove_prefix,
        layout: a.layout,
        dtype: a.dtype,
        key: a.key,
    };
    // A registry name reads the verified cached file (fetched first unless offline).
    let checkpoint = swav::fetch::resolve_weights(&a.checkpoint)
        .map_err(|e| format!("{}: {e}", a.checkpoint.display()))?;
    let s = convert::extract(&checkpoint, &a.output, &opts).map_err(|e| e.to_string())?;
    println!("{}", if a.json { json(&s) } else { s.describe() });
    Ok(ExitCode::SUCCESS)
}
