//! Datasets, the multi-crop pipeline and the loader.

use crate::fixture;
use std::sync::Arc;
use swav::data::dataset::Dataset;
use swav::data::loader::{Loader, LoaderConfig, Pipeline};
use swav::data::multicrop::{EvalTransform, MultiCrop};
use swav::data::synthetic::{self, SyntheticConfig};

fn tiny_multicrop() -> MultiCrop {
    MultiCrop {
        size_crops: vec![32, 16],
        num_crops: vec![2, 3],
        min_scale_crops: vec![0.3, 0.05],
        max_scale_crops: vec![1.0, 0.3],
        ..Default::default()
    }
}

fn synthetic(dir: &std::path::Path) -> std::path::PathBuf {
    let cfg = SyntheticConfig {
        size: 48,
        train_per_class: 4,
        val_per_class: 2,
        seed: 3,
        quality: 90,
    };
    synthetic::write(&dir.join("syn"), &cfg).unwrap()
}

#[test]
fn synthetic_set_is_a_deterministic_image_folder() {
    let dir = tempfile::tempdir().unwrap();
    let root = synthetic(dir.path());
    let train = Dataset::open(&root.join("train")).unwrap();
    assert_eq!(train.classes.len(), 10);
    assert_eq!(train.len(), 40);
    assert_eq!(train.samples[0].label, Some(0));
    assert_eq!(train.samples[39].label, Some(9));
    let again = synthetic(&dir.path().join("b"));
    let a = std::fs::read(root.join("train/3_hstripes/00001.jpg")).unwrap();
    let b = std::fs::read(again.join("train/3_hstripes/00001.jpg")).unwrap();
    assert_eq!(a, b, "same seed, same bytes");
    assert!(!dir.path().read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
}

#[test]
fn loader_batches_are_grouped_by_resolution_and_independent_of_workers() {
    let dir = tempfile::tempdir().unwrap();
    let ds = Arc::new(Dataset::open(&synthetic(dir.path()).join("train")).unwrap());
    let run_part = |workers: usize, part: (usize, usize)| -> Vec<(Vec<usize>, Vec<Vec<f32>>)> {
        let cfg = LoaderConfig {
            batch_size: 6,
            workers,
            prefetch: 2,
            shuffle: true,
            drop_last: true,
            seed: 11,
            part,
        };
        Loader::new(ds.clone(), Pipeline::MultiCrop(tiny_multicrop()), &cfg, 0)
            .map(|b| {
                (
                    b.samples.clone(),
                    b.crops.iter().map(|c| c.data.clone()).collect(),
                )
            })
            .collect()
    };
    let run = |workers: usize| run_part(workers, (0, 1));
    let one = run(1);
    assert_eq!(one.len(), 40 / 6);
    let (samples, crops) = &one[0];
    assert_eq!(samples.len(), 6);
    assert_eq!(crops.len(), 2);
    assert_eq!(crops[0].len(), 2 * 6 * 3 * 32 * 32);
    assert_eq!(crops[1].len(), 3 * 6 * 3 * 16 * 16);
    // Normalised values: roughly centred, within the range (0-mean)/std .. (1-mean)/std.
    assert!(crops[0].iter().all(|v| (-2.2..=2.7).contains(v)));
    assert_eq!(one, run(3), "results depend on the number of workers");
    // A process's part of every batch (multi-process runs) is the same split of the same
    // samples and crops as `Batch::split` makes of the whole batch.
    let parts = [run_part(2, (0, 2)), run_part(1, (1, 2))];
    for (b, (samples, crops)) in one.iter().enumerate() {
        let whole = swav::data::loader::Batch {
            index: b,
            crops: crops
                .iter()
                .zip([(32, 2), (16, 3)])
                .map(|(d, (size, count))| swav::data::loader::CropBatch {
                    size,
                    count,
                    data: d.clone(),
                })
                .collect(),
            labels: vec![None; samples.len()],
            samples: samples.clone(),
        };
        for (p, shard) in whole.split(2).into_iter().enumerate() {
            assert_eq!(parts[p][b].0, shard.samples, "batch {b} part {p}");
            let data: Vec<Vec<f32>> = shard.crops.into_iter().map(|c| c.data).collect();
            assert_eq!(parts[p][b].1, data, "batch {b} part {p}");
        }
    }
    // Another epoch shuffles differently.
    let cfg = LoaderConfig {
        batch_size: 6,
        workers: 2,
        ..Default::default()
    };
    let e1: Vec<usize> = Loader::new(ds.clone(), Pipeline::MultiCrop(tiny_multicrop()), &cfg, 1)
        .flat_map(|b| b.samples)
        .collect();
    let e0: Vec<usize> = Loader::new(ds, Pipeline::MultiCrop(tiny_multicrop()), &cfg, 0)
        .flat_map(|b| b.samples)
        .collect();
    assert_ne!(e0, e1);
}

#[test]
fn corrupt_images_are_skipped_counted_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("imgs");
    std::fs::create_dir_all(&root).unwrap();
    for (i, p) in ["chelsea.jpg", "coffee.jpg", "rocket.jpg"]
        .iter()
        .enumerate()
    {
        std::fs::copy(
            fixture(&format!("photos/{p}")),
            root.join(format!("{i}.jpg")),
        )
        .unwrap();
    }
    std::fs::write(root.join("3.jpg"), b"\xff\xd8\xffgarbage").unwrap();
    let bytes = std::fs::read(fixture("photos/astronaut.jpg")).unwrap();
    std::fs::write(root.join("4.jpg"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(root.join("5.png"), b"not a png").unwrap();
    let ds = Arc::new(Dataset::open(&root).unwrap());
    assert_eq!(ds.len(), 6);
    assert!(ds.classes.is_empty());
    let cfg = LoaderConfig {
        batch_size: 6,
        workers: 2,
        drop_last: false,
        ..Default::default()
    };
    let mut loader = Loader::new(ds, Pipeline::MultiCrop(tiny_multicrop()), &cfg, 0);
    let batch = loader.next().unwrap();
    // The truncated JPEG may still decode (the decoder fills what is missing), the others cannot.
    assert!(batch.len() >= 3 && batch.len() <= 4, "{}", batch.len());
    let skipped = loader.take_new_skips();
    assert!(
        skipped.iter().any(|(p, _)| p.ends_with("3.jpg")),
        "{skipped:?}"
    );
    assert!(
        skipped.iter().any(|(p, _)| p.ends_with("5.png")),
        "{skipped:?}"
    );
    assert!(loader.take_new_skips().is_empty(), "reported twice");
}

#[test]
fn empty_and_missing_folders_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = Dataset::open(dir.path()).unwrap_err();
    assert!(e.to_string().contains("no images"), "{e}");
    let e = Dataset::open(&dir.path().join("nope")).unwrap_err();
    assert!(e.to_string().contains("not a folder"), "{e}");
}

#[test]
fn eval_transforms_give_fixed_size_crops() {
    let bytes = std::fs::read(fixture("photos/coffee.jpg")).unwrap();
    let mut resizer = fast_image_resize::Resizer::new();
    let mut rng = swav::data::rng::Rng::new(1);
    let m = [0.485, 0.456, 0.406];
    let s = [0.229, 0.224, 0.225];
    for t in [
        EvalTransform::Val {
            resize: 256,
            size: 224,
        },
        EvalTransform::Train { size: 224 },
        EvalTransform::Val {
            resize: 64,
            size: 96,
        },
    ] {
        let mut out = vec![0.0; 3 * t.size() * t.size()];
        t.apply(&bytes, m, s, &mut rng, &mut resizer, &mut out)
            .unwrap();
        assert!(out.iter().any(|v| *v != 0.0));
    }
}

#[test]
fn dct_scaled_decoding_is_used_for_large_images_only_when_crops_shrink() {
    // A 2000x1500 JPEG made from a photo: 96-pixel crops of at most 14% of it shrink > 2x.
    let photo =
        swav::data::decode::decode(&std::fs::read(fixture("photos/chelsea.jpg")).unwrap(), None)
            .unwrap()
            .image;
    let mut resizer = fast_image_resize::Resizer::new();
    let big = swav::data::transforms::resized_crop(
        &photo,
        swav::data::transforms::CropBox {
            top: 0,
            left: 0,
            height: photo.height,
            width: photo.width,
        },
        1.0,
        2000,
        1500,
        &mut resizer,
    );
    let mut jpeg = Vec::new();
    jpeg_encoder::Encoder::new(&mut jpeg, 90)
        .encode(&big.data, 2000, 1500, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    let mc = MultiCrop {
        size_crops: vec![96],
        num_crops: vec![6],
        min_scale_crops: vec![0.05],
        max_scale_crops: vec![0.14],
        ..Default::default()
    };
    let plain = MultiCrop {
        dct_scaling: false,
        ..mc.clone()
    };
    let mut a = vec![0.0; 6 * 3 * 96 * 96];
    let mut b = vec![0.0; 6 * 3 * 96 * 96];
    mc.apply(
        &jpeg,
        &mut swav::data::rng::Rng::new(5),
        &mut resizer,
        &mut [&mut a],
    )
    .unwrap();
    plain
        .apply(
            &jpeg,
            &mut swav::data::rng::Rng::new(5),
            &mut resizer,
            &mut [&mut b],
        )
        .unwrap();
    // Same crops (same random draws), nearly the same pixels.
    let mean_diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(mean_diff < 0.05, "{mean_diff}");
}

#[test]
fn batches_arrive_on_a_burn_device_unchanged() {
    use swav::data::prefetch::DeviceLoader;
    type B = burn::backend::Flex;
    let dir = tempfile::tempdir().unwrap();
    let ds = Arc::new(Dataset::open(&synthetic(dir.path()).join("train")).unwrap());
    let cfg = LoaderConfig {
        batch_size: 8,
        workers: 2,
        ..Default::default()
    };
    let host: Vec<_> =
        Loader::new(ds.clone(), Pipeline::MultiCrop(tiny_multicrop()), &cfg, 0).collect();
    let device = Default::default();
    let dev: Vec<_> = DeviceLoader::<B>::new(
        Loader::new(ds, Pipeline::MultiCrop(tiny_multicrop()), &cfg, 0),
        device,
    )
    .collect();
    assert_eq!(host.len(), dev.len());
    for (h, d) in host.iter().zip(&dev) {
        assert_eq!(d.crops[0].dims(), [2 * 8, 3, 32, 32]);
        assert_eq!(d.crops[1].dims(), [3 * 8, 3, 16, 16]);
        assert_eq!(
            d.crops[1].to_data().to_vec::<f32>().unwrap(),
            h.crops[1].data
        );
        let labels: Vec<i64> = d
            .labels
            .as_ref()
            .unwrap()
            .to_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        assert_eq!(
            labels,
            h.labels
                .iter()
                .map(|l| l.unwrap() as i64)
                .collect::<Vec<_>>()
        );
    }
}

/// A decoder that panics on one image (an injected panic): the image is skipped and named
/// like a corrupt one, and the loader delivers every other sample instead of waiting forever
/// for the dead worker's.
#[test]
fn a_panicking_decoder_skips_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let root = synthetic(dir.path()).join("train");
    let ds = Arc::new(Dataset::open(&root).unwrap());
    let poisoned = ds.samples[5].path.clone();
    swav::data::loader::inject_decoder_panic(Some(poisoned.clone()));
    let cfg = LoaderConfig {
        batch_size: 8,
        workers: 2,
        prefetch: 2,
        shuffle: false,
        drop_last: false,
        seed: 1,
        part: (0, 1),
    };
    let start = std::time::Instant::now();
    let mut loader = Loader::new(ds.clone(), Pipeline::MultiCrop(tiny_multicrop()), &cfg, 0);
    let samples: usize = loader.by_ref().map(|b| b.len()).sum();
    swav::data::loader::inject_decoder_panic(None);
    assert_eq!(samples, ds.len() - 1, "every image but the poisoned one");
    let skips = loader.take_new_skips();
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert_eq!(skips[0].0, poisoned.display().to_string());
    assert!(skips[0].1.contains("the decoder panicked"), "{skips:?}");
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
}
