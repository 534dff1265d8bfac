//! Fuzz the PyTorch path: the container sniffing, the scan of the containers' pickles (zip
//! member names and sizes, legacy streams of protocols 2 to 5, tar members) and pytorch-reader
//! behind it, through `Checkpoint::open` on a file: any input must give a checkpoint or an
//! error, never a panic, a hang or an allocation blow-up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swav_formats::checkpoint::{sniff, torch, Checkpoint};

fuzz_target!(|data: &[u8]| {
    if let Ok(format) = sniff::sniff(data) {
        let _ = torch::scan(data, format);
    }
    let dir = std::env::temp_dir().join(format!("swav-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("input.pth");
    if std::fs::write(&path, data).is_ok() {
        if let Ok(ck) = Checkpoint::open(&path) {
            for t in &ck.tensors {
                let _ = t.bytes();
            }
        }
    }
});
