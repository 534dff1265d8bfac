//! `swav-convert IN OUT`: convert a Paddle, PyTorch or safetensors checkpoint into
//! safetensors, `.safetensors.zst`, `.pth` or `.pdparams`, mapping parameter names between the
//! torch, paddle and burn layouts. `swav-convert --inspect FILE` describes a file.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use swav::convert::{self, ConvertOptions};
use swav::layout::Layout;
use swav::report::json;
use swav::selection::Selection;
use swav::tensor::DType;

#[derive(Parser)]
#[command(
    version,
    after_help = "Exit codes: 0 success; 2 an error (bad input, refused or unreadable file, I/O), with one line on stderr.",
    about = "Convert SwAV checkpoints between PaddlePaddle, PyTorch, safetensors and Burn layouts"
)]
struct Args {
    /// Input checkpoint (.pdparams, .pd, .pdopt, .pth, .pt, .pth.tar, .bin, .safetensors[.zst]); format detected from content.
    #[arg(required_unless_present = "inspect")]
    input: Option<PathBuf>,
    /// Output file; its extension picks the format: .safetensors, .safetensors.zst, .pth/.pt, .pdparams.
    #[arg(required_unless_present = "inspect")]
    output: Option<PathBuf>,
    /// Describe FILE (format, layout, tensors, totals) instead of converting.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["input", "output"])]
    inspect: Option<PathBuf>,
    /// Layout of the output names [default: burn for safetensors, torch for .pth, paddle for .pdparams].
    #[arg(long, value_enum)]
    layout: Option<Layout>,
    /// Layout of the input names [default: detected].
    #[arg(long, value_enum)]
    from_layout: Option<Layout>,
    /// Convert floating-point tensors to this type: f32, f16, bf16, f64.
    #[arg(long, value_parser = DType::parse_float)]
    dtype: Option<DType>,
    /// Top-level key holding the model in a training checkpoint [default: state_dict when present].
    #[arg(long)]
    key: Option<String>,
    /// Remove this prefix from input names (repeatable); `module.` is removed automatically when every name has it.
    #[arg(long, value_name = "PREFIX")]
    strip_prefix: Vec<String>,
    /// Put this prefix before every output name (e.g. `module.`).
    #[arg(long, value_name = "PREFIX")]
    add_prefix: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    swav::cli::finish("swav-convert", run(swav::cli::parse("swav-convert")))
}

fn run(args: Args) -> Result<ExitCode, convert::ConvertError> {
    if let Some(file) = args.inspect {
        let report = convert::inspect(&file)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&report).expect("serializable")
            );
        } else {
            print!("{}", report.to_text());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (input, output) = (
        args.input.expect("required"),
        args.output.expect("required"),
    );
    // A registry name reads the verified cached file (fetched first unless offline).
    let input = swav::fetch::resolve_weights(&input).map_err(|e| convert::ConvertError::Input {
        path: input.clone(),
        message: e.to_string(),
    })?;
    let opts = ConvertOptions {
        selection: Selection {
            key: args.key,
            strip_prefix: args.strip_prefix,
            from_layout: args.from_layout,
        },
        layout: args.layout,
        dtype: args.dtype,
        add_prefix: args.add_prefix,
    };
    let s = convert::convert(&input, &output, &opts)?;
    println!("{}", if args.json { json(&s) } else { s.describe() });
    Ok(ExitCode::SUCCESS)
}
