//! The one place that knows which Burn backends exist: device names on the command line
//! (`cpu`, `cuda:N`, PASSL's `gpu`) and the backend types they select. A move to another Burn
//! version or backend changes this file and the [`with_backend!`](crate::with_backend) macro.

/// The CPU backend (Flex): default device, tests.
pub type Cpu = burn::backend::Flex;

/// The CUDA backend (feature `cuda`, or `cuda-backend` without autotune and fusion; kernels
/// compiled by NVRTC at run time).
#[cfg(feature = "cuda-backend")]
pub type Cuda = burn::backend::Cuda;

/// A CUDA device by index.
#[cfg(feature = "cuda-backend")]
pub use burn::backend::cuda::CudaDevice;

/// The device type of backend `B` (the [`with_backend!`](crate::with_backend) macro names it
/// through this crate, so that its users need no `burn` dependency of their own).
pub type DeviceOf<B> = <B as burn::tensor::backend::BackendTypes>::Device;

/// Why a device list cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("device '{0}': expected cuda:N with N a number")]
    BadIndex(String),
    #[error("device '{0}': expected cpu, cuda:N or a comma-separated list of them")]
    BadName(String),
    #[error("devices '{0}': a CUDA device is named twice")]
    NamedTwice(String),
    #[error("devices '{0}': CPU and CUDA devices cannot be mixed")]
    Mixed(String),
    #[error(
        "CUDA devices need a build with --features cuda (this one is CPU only; use --device cpu)"
    )]
    NoCudaBuild,
    #[error(
        "CUDA: the NVIDIA driver library ({0}) is not found: no NVIDIA driver on this machine?"
    )]
    NoDriver(String),
    #[error("device cuda:{index}: this machine has {count} CUDA device{}", if *.count == 1 { "" } else { "s" })]
    NoSuchDevice { index: usize, count: usize },
    #[error(
        "CUDA: NVRTC ({0}) is not found; Burn compiles its kernels with it at run time: install \
         the CUDA toolkit or add its lib64 folder to LD_LIBRARY_PATH"
    )]
    NoNvrtc(String),
    #[error(
        "CUDA: no CUDA toolkit found (CUDA_PATH unset, no /usr/local/cuda, /opt/cuda or \
         /usr/bin/nvcc); Burn passes its headers to NVRTC"
    )]
    NoToolkit,
    /// The driver API failed (the message names the call and its CUresult).
    #[error("CUDA: {0}")]
    Driver(String),
}

/// The tools report errors as text where a module has no error type of its own yet.
impl From<DeviceError> for String {
    fn from(e: DeviceError) -> String {
        e.to_string()
    }
}

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
    pub fn parse(s: &str) -> Result<Devices, DeviceError> {
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
                    Some(n) => cuda.push(
                        n.parse()
                            .map_err(|_| DeviceError::BadIndex(part.to_string()))?,
                    ),
                    None => return Err(DeviceError::BadName(part.to_string())),
                },
            }
        }
        match (cpu, cuda.is_empty()) {
            (0, false) => {
                let mut seen = cuda.clone();
                seen.sort_unstable();
                seen.dedup();
                if seen.len() != cuda.len() {
                    return Err(DeviceError::NamedTwice(s.to_string()));
                }
                Ok(Devices::Cuda(cuda))
            }
            (n, true) if n > 0 => Ok(Devices::Cpu(n)),
            _ => Err(DeviceError::Mixed(s.to_string())),
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
                let $list: Vec<$crate::backend::DeviceOf<$B>> =
                    (0..*n).map(|_| Default::default()).collect();
                $body
            }
            #[cfg(feature = "cuda-backend")]
            $crate::backend::Devices::Cuda(ids) => match $crate::backend::check_cuda(ids) {
                Err(e) => Err(e.into()),
                Ok(()) => {
                    type $B = $crate::backend::Cuda;
                    let $list: Vec<$crate::backend::DeviceOf<$B>> = ids
                        .iter()
                        .map(|&i| $crate::backend::CudaDevice::new(i))
                        .collect();
                    $body
                }
            },
            #[cfg(not(feature = "cuda-backend"))]
            $crate::backend::Devices::Cuda(_) => {
                Err($crate::backend::DeviceError::NoCudaBuild.into())
            }
        }
    }};
}

/// Library names of the CUDA driver API, as the loader knows them.
const CUDA_DRIVER: &[&str] = &["libcuda.so.1", "libcuda.so"];
/// Library names of NVRTC (CUDA 13 and 12 toolkits, or the unversioned link).
const NVRTC: &[&str] = &["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"];

/// Check, before Burn touches them, that CUDA devices `ids` can be used: the driver library
/// loads, initialises and has that many devices; NVRTC loads; and a CUDA toolkit folder is
/// where Burn looks for one. Burn's CUDA backend panics in a worker thread on each of these
/// instead.
pub fn check_cuda(ids: &[usize]) -> Result<(), DeviceError> {
    check_driver(ids, CUDA_DRIVER)?;
    check_toolkit(NVRTC, cuda_toolkit().as_deref())
}

/// Where Burn's CUDA backend (cubecl-cuda 0.10, `install::cuda_path`) looks for the CUDA
/// toolkit: `$CUDA_PATH`, `/usr/local/cuda`, `/opt/cuda`, or `/usr` when `/usr/bin/nvcc` exists.
fn cuda_toolkit() -> Option<std::path::PathBuf> {
    use std::path::{Path, PathBuf};
    if let Some(p) = std::env::var_os("CUDA_PATH") {
        return Some(PathBuf::from(p));
    }
    ["/usr/local/cuda", "/opt/cuda"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| {
            Path::new("/usr/bin/nvcc")
                .exists()
                .then(|| PathBuf::from("/usr"))
        })
}

/// The driver library loads, initialises, and has a device for each of `ids`.
fn check_driver(ids: &[usize], names: &[&str]) -> Result<(), DeviceError> {
    let driver = open_first(names).ok_or_else(|| DeviceError::NoDriver(names.join(", ")))?;
    let count = device_count(&driver)?;
    match ids.iter().find(|&&i| i >= count) {
        Some(&index) => Err(DeviceError::NoSuchDevice { index, count }),
        None => Ok(()),
    }
}

/// NVRTC loads, and there is a CUDA toolkit folder for Burn to pass to it as the include path
/// (Burn's CUDA backend panics when it finds none).
fn check_toolkit(
    nvrtc_names: &[&str],
    toolkit: Option<&std::path::Path>,
) -> Result<(), DeviceError> {
    if open_first(nvrtc_names).is_none() {
        return Err(DeviceError::NoNvrtc(nvrtc_names.join(", ")));
    }
    match toolkit {
        Some(_) => Ok(()),
        None => Err(DeviceError::NoToolkit),
    }
}

fn open_first(names: &[&str]) -> Option<libloading::Library> {
    // SAFETY: loading runs the library's initialisers; these are the NVIDIA libraries that
    // Burn's CUDA backend loads by the same names moments later.
    names
        .iter()
        .find_map(|n| unsafe { libloading::Library::new(*n) }.ok())
}

/// `cuInit(0)` then `cuDeviceGetCount`, with the driver's error code on failure.
fn device_count(driver: &libloading::Library) -> Result<usize, DeviceError> {
    let err = |m: String| DeviceError::Driver(m);
    type CuInit = unsafe extern "C" fn(u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(*mut i32) -> i32;
    // SAFETY: the two symbols have these signatures in every CUDA driver API version
    // (`CUresult cuInit(unsigned int)`, `CUresult cuDeviceGetCount(int *)`).
    unsafe {
        let init = driver
            .get::<CuInit>(b"cuInit\0")
            .map_err(|e| err(format!("the driver library has no cuInit: {e}")))?;
        let get_count = driver
            .get::<CuDeviceGetCount>(b"cuDeviceGetCount\0")
            .map_err(|e| err(format!("the driver library has no cuDeviceGetCount: {e}")))?;
        match init(0) {
            0 => {}
            100 => return Err(err("the driver finds no CUDA device".into())),
            code => {
                return Err(err(format!(
                    "the driver failed to initialise (CUresult {code})"
                )))
            }
        }
        let mut n = 0i32;
        match get_count(&mut n) {
            0 => Ok(n.max(0) as usize),
            code => Err(err(format!("cuDeviceGetCount failed (CUresult {code})"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{check_driver, check_toolkit, DeviceError, Devices};

    #[test]
    fn missing_cuda_pieces_are_errors_naming_them() {
        let e = check_driver(&[0], &["libswav-no-such-driver.so"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("libswav-no-such-driver.so"), "{e}");
        // A library that loads but is no CUDA driver.
        let e = check_driver(&[0], &["libc.so.6"]).unwrap_err().to_string();
        assert!(e.contains("cuInit"), "{e}");
        let e = check_toolkit(&["libswav-no-such-nvrtc.so"], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("libswav-no-such-nvrtc.so"), "{e}");
        // libc stands in for NVRTC below: only the toolkit folder is checked.
        let e = check_toolkit(&["libc.so.6"], None).unwrap_err().to_string();
        assert!(e.contains("no CUDA toolkit found"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_toolkit(&["libc.so.6"], Some(dir.path())), Ok(()));
    }

    #[test]
    fn device_names() {
        assert_eq!(Devices::parse("cpu"), Ok(Devices::Cpu(1)));
        assert_eq!(Devices::parse("cpu,cpu"), Ok(Devices::Cpu(2)));
        assert_eq!(Devices::parse("gpu"), Ok(Devices::Cuda(vec![0])));
        assert_eq!(
            Devices::parse("cuda:1,cuda:0"),
            Ok(Devices::Cuda(vec![1, 0]))
        );
        let err = |s: &str| Devices::parse(s).unwrap_err();
        assert_eq!(
            err("cuda:0,cuda:0"),
            DeviceError::NamedTwice("cuda:0,cuda:0".into())
        );
        assert_eq!(err("cuda:x"), DeviceError::BadIndex("cuda:x".into()));
        assert!(err("cuda:x").to_string().contains("cuda:x"));
        assert_eq!(err("tpu"), DeviceError::BadName("tpu".into()));
        assert_eq!(err("cpu,cuda:0"), DeviceError::Mixed("cpu,cuda:0".into()));
    }
}
