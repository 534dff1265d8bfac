//! The one place that knows which Burn backends exist: device names on the command line
//! (`cpu`, `cuda:N`, PASSL's `gpu`) and the backend types they select. A move to another Burn
//! version or backend changes this file and the [`with_backend!`](crate::with_backend) macro.

/// The CPU backend (Flex): default device, tests.
pub type Cpu = burn::backend::Flex;

/// The CUDA backend (feature `cuda`; kernels compiled by NVRTC at run time).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// Which devices a run uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    /// `n` CPU workers (one is the usual; several simulate data parallelism).
    Cpu(usize),
    /// CUDA device indices.
    Cuda(Vec<usize>),
}

impl Devices {
    /// Parse `cpu`, `cuda`, `cuda:N`, `gpu` (PASSL: `cuda:0`), or a comma-separated list of
    /// one kind (`cuda:0,cuda:1`; `cpu,cpu` for simulated workers).
    pub fn parse(s: &str) -> Result<Devices, String> {
        let mut cpu = 0;
        let mut cuda = Vec::new();
        for part in s.split(',').map(str::trim) {
            match part {
                "cpu" => cpu += 1,
                "gpu" | "cuda" => cuda.push(0),
                _ => match part
                    .strip_prefix("cuda:")
                    .or_else(|| part.strip_prefix("gpu:"))
                {
                    Some(n) => cuda.push(n.parse().map_err(|_| {
                        format!("device '{part}': expected cuda:N with N a number")
                    })?),
                    None => {
                        return Err(format!(
                        "device '{part}': expected cpu, cuda:N or a comma-separated list of them"
                    ))
                    }
                },
            }
        }
        match (cpu, cuda.is_empty()) {
            (0, false) => {
                let mut seen = cuda.clone();
                seen.sort_unstable();
                seen.dedup();
                if seen.len() != cuda.len() {
                    return Err(format!("devices '{s}': a CUDA device is named twice"));
                }
                Ok(Devices::Cuda(cuda))
            }
            (n, true) if n > 0 => Ok(Devices::Cpu(n)),
            _ => Err(format!(
                "devices '{s}': CPU and CUDA devices cannot be mixed"
            )),
        }
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        match self {
            Devices::Cpu(n) => *n,
            Devices::Cuda(v) => v.len(),
        }
    }

    /// Whether no device is named.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Run `$body` with `$B` bound to the backend of `$devices` and `$list` to its devices
/// (a `Vec` of that backend's device type). Without the `cuda` feature, CUDA devices are an
/// error naming the feature.
#[macro_export]
macro_rules! with_backend {
    ($devices:expr, |$B:ident, $list:ident| $body:expr) => {{
        match $devices {
            $crate::backend::Devices::Cpu(n) => {
                type $B = $crate::backend::Cpu;
                let $list: Vec<<$B as burn::tensor::backend::BackendTypes>::Device> =
                    (0..*n).map(|_| Default::default()).collect();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::backend::Devices::Cuda(ids) => {
                type $B = $crate::backend::Cuda;
                let $list: Vec<<$B as burn::tensor::backend::BackendTypes>::Device> = ids
                    .iter()
                    .map(|&i| burn::backend::cuda::CudaDevice::new(i))
                    .collect();
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::backend::Devices::Cuda(_) => Err(String::from(
                "CUDA devices need a build with --features cuda (this one is CPU only; use --device cpu)",
            )),
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::Devices;

    #[test]
    fn device_names() {
        assert_eq!(Devices::parse("cpu"), Ok(Devices::Cpu(1)));
        assert_eq!(Devices::parse("cpu,cpu"), Ok(Devices::Cpu(2)));
        assert_eq!(Devices::parse("gpu"), Ok(Devices::Cuda(vec![0])));
        assert_eq!(
            Devices::parse("cuda:1,cuda:0"),
            Ok(Devices::Cuda(vec![1, 0]))
        );
        assert!(Devices::parse("cuda:0,cuda:0").is_err());
        assert!(Devices::parse("cuda:x").unwrap_err().contains("cuda:x"));
        assert!(Devices::parse("tpu").is_err());
        assert!(Devices::parse("cpu,cuda:0").is_err());
    }
}
