//! Fuzz the restricted pickle machine and the Paddle/numpy walk over its result:
//! any input must give a value or an error, never a panic, a hang or an allocation blow-up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use swav_formats::checkpoint::{paddle, Checkpoint, Format};

fuzz_target!(|data: &[u8]| {
    let _ = swav_formats::checkpoint::pickle::parse(data);
    let buf: swav_formats::tensor::Buffer = Arc::new(data.to_vec());
    let mut ck = Checkpoint {
        path: "fuzz".into(),
        format: Format::Pickle,
        tensors: Vec::new(),
        values: Vec::new(),
        notes: Vec::new(),
    };
    if paddle::read(&buf, &mut ck).is_ok() {
        for t in &ck.tensors {
            let _ = t.bytes();
        }
    }
});
