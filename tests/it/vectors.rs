//! numpy and Paddle pickle variants written by the real libraries
//! (tests/fixtures/generate/make_pickle_vectors.py), read back value for value.

use crate::fixture;
use swav::checkpoint::Checkpoint;
use swav::tensor::DType;

#[test]
fn numpy_and_paddle_variants_read_exactly() {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("vectors/expected.json")).unwrap()).unwrap();
    for (file, tensors) in expected.as_object().unwrap() {
        let ck =
            Checkpoint::open(fixture(&format!("vectors/{file}"))).unwrap_or_else(|e| panic!("{e}"));
        for (name, want) in tensors.as_object().unwrap() {
            let t = ck
                .get(name)
                .unwrap_or_else(|| panic!("{file}: no tensor {name}"));
            let shape: Vec<usize> = serde_json::from_value(want["shape"].clone()).unwrap();
            assert_eq!(t.shape, shape, "{file}:{name}");
            if want["dtype"] == "bfloat16" {
                assert_eq!(
                    t.dtype,
                    DType::BF16,
                    "{file}:{name}: Paddle's uint16 is bf16"
                );
            }
            // Compared in f32: every value is an f32 (or smaller) value.
            let values: Vec<f32> = serde_json::from_value::<Vec<f64>>(want["values"].clone())
                .unwrap()
                .into_iter()
                .map(|v| v as f32)
                .collect();
            let got: Vec<f32> = match t.dtype {
                DType::I64 => t
                    .bytes()
                    .unwrap()
                    .chunks(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                    .collect(),
                DType::Bool | DType::U8 => t.bytes().unwrap().iter().map(|&b| b as f32).collect(),
                _ => t.to_f32().unwrap(),
            };
            assert_eq!(got, values, "{file}:{name}");
        }
        if file.starts_with("numpy") {
            let v: std::collections::BTreeMap<_, _> = ck.values.iter().cloned().collect();
            assert_eq!(v["lr"], 0.125, "{file}");
            assert_eq!(v["epoch"], 7, "{file}");
        }
    }
}

#[test]
fn split_tensors_are_joined() {
    let ck = Checkpoint::open(fixture("vectors/paddle_split_p2.pdparams")).unwrap();
    assert_eq!(ck.tensors.len(), 2, "{:?}", ck.tensors);
    assert!(
        ck.notes.iter().any(|n| n.contains("joined 'big'")),
        "{:?}",
        ck.notes
    );
}
