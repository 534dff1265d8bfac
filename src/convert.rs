//! `swav-convert` and `swav-extract` where the SwAV model is built: [`swav_formats::convert`]
//! (every container, layout and option) with Burn records added on both sides. Inputs are read
//! by [`crate::model::open()`] (a file, a Burn record, a training checkpoint or output folder);
//! an `OUT.mpk` output builds the module the checkpoint describes and saves it as a record.
//! A build without the `model` feature has formats' functions alone (records refused).

pub use swav_formats::convert::*;

#[cfg(feature = "model")]
pub use with_model::{convert, extract, inspect};

#[cfg(feature = "model")]
mod with_model {
    use super::*;
    use crate::checkpoint::Format;
    use crate::layout::{Layout, MapReport};
    use crate::model::{load, record, CpuBackend};
    use std::path::Path;

    /// Convert a checkpoint, a Burn record or a training run's latest checkpoint into another
    /// format and layout, or (`OUT.mpk`) into a Burn record of the SwAV module.
    pub fn convert(
        input: &Path,
        output: &Path,
        opts: &ConvertOptions,
    ) -> Result<Summary, ConvertError> {
        if OutputFormat::from_path(output)? == OutputFormat::BurnRecord {
            check_record_options(output, opts)?;
            return burn_record(input, output);
        }
        convert_with(crate::model::open, input, output, opts)
    }

    /// Pull the backbone (or whatever is under a prefix) out of any input [`convert`] reads.
    pub fn extract(
        input: &Path,
        output: &Path,
        opts: &ExtractOptions,
    ) -> Result<Summary, ConvertError> {
        extract_with(crate::model::open, input, output, opts)
    }

    /// Describe any input [`convert`] reads.
    pub fn inspect(input: &Path) -> Result<Inspection, ConvertError> {
        inspect_with(crate::model::open, input)
    }

    /// `swav-convert IN OUT.mpk`: build the SwAV module the checkpoint describes, load it
    /// completely, and save it as a Burn record (with its config beside it).
    fn burn_record(input: &Path, output: &Path) -> Result<Summary, ConvertError> {
        let device = Default::default();
        let input_err = |message: String| ConvertError::Input {
            path: input.to_path_buf(),
            message,
        };
        let (model, config, report) = load::from_file::<CpuBackend>(input, &device, false)
            .map_err(|e| match e {
                load::LoadError::Read(e) => ConvertError::Read(e),
                load::LoadError::Select(e) => ConvertError::Select(e),
                load::LoadError::Layout { path, source } => ConvertError::Layout { path, source },
                other => ConvertError::Model(Box::new(other)),
            })?;
        record::save(model, &config, output).map_err(|e| ConvertError::Model(Box::new(e)))?;
        Ok(Summary {
            input: input.to_path_buf(),
            output: output.to_path_buf(),
            input_format: report.format.unwrap_or(Format::BurnRecord),
            output_format: OutputFormat::BurnRecord,
            key: report.key.clone(),
            stripped: Vec::new(),
            from_layout: report.layout,
            to_layout: Some(Layout::Burn),
            tensors: report.loaded.len(),
            bytes: 0,
            mapping: MapReport::default(),
            sha256: crate::digest::sha256_file(input).map_err(|e| input_err(e.to_string()))?,
        })
    }
}
