//! Each augmentation against Pillow's own output (tests/fixtures/generate/make_transform_vectors.py).

use crate::fixture;
use swav::checkpoint::Checkpoint;
use swav::data::decode;
use swav::data::image::RgbImage;
use swav::data::rng::Rng;
use swav::data::transforms::{self as tf, CropBox};

fn vectors() -> Checkpoint {
    Checkpoint::open(fixture("vectors/transforms.safetensors")).unwrap()
}

fn image(ck: &Checkpoint, name: &str) -> RgbImage {
    let t = ck.get(name).unwrap_or_else(|| panic!("no {name}"));
    RgbImage::new(t.shape[1], t.shape[0], t.bytes().unwrap().into_owned())
}

/// Largest per-byte difference and the mean absolute difference.
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, f64) {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let max = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    let mean = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| x.abs_diff(*y) as f64)
        .sum::<f64>()
        / a.data.len() as f64;
    (max, mean)
}

#[test]
fn colour_operations_match_pillow_exactly() {
    let ck = vectors();
    let input = image(&ck, "input");
    let mut compared = std::collections::BTreeMap::new();
    for t in &ck.tensors {
        let Some((op, param)) = t.name.split_once('/') else {
            continue;
        };
        let mut img = input.clone();
        match op {
            "brightness" => tf::adjust_brightness(&mut img, param.parse().unwrap()),
            "contrast" => tf::adjust_contrast(&mut img, param.parse().unwrap()),
            "saturation" => tf::adjust_saturation(&mut img, param.parse().unwrap()),
            "hue" => tf::adjust_hue(&mut img, param.parse().unwrap()),
            "grayscale" => tf::grayscale(&mut img),
            "blur" => tf::gaussian_blur(&mut img, param.parse().unwrap()),
            _ => continue,
        }
        let (max, _) = diff(&img, &image(&ck, &t.name));
        assert_eq!(max, 0, "{} differs from Pillow by up to {max}", t.name);
        *compared.entry(op.to_string()).or_insert(0) += 1;
    }
    // Every operation was compared, each at several settings.
    let ops = [
        "blur",
        "brightness",
        "contrast",
        "grayscale",
        "hue",
        "saturation",
    ];
    assert_eq!(compared.keys().map(String::as_str).collect::<Vec<_>>(), ops);
    assert!(compared.values().sum::<usize>() >= 12, "{compared:?}");
}

/// Every colour with one channel at 0 reaches every input of Pillow's hue arithmetic, including
/// those where its mix of float and double rounding shows (tests/fixtures/generate/make_hue_planes.py).
#[test]
fn hue_matches_pillow_on_every_hue_input() {
    let packed = std::fs::read(fixture("vectors/hue_planes.zst")).unwrap();
    let expected = zstd::decode_all(&packed[..]).unwrap();
    let mut input = Vec::with_capacity(768 * 256 * 3);
    for zero in 0..3 {
        for i in 0..=255u8 {
            for j in 0..=255u8 {
                let mut rgb = vec![i, j];
                rgb.insert(zero, 0);
                input.extend(rgb);
            }
        }
    }
    assert_eq!(expected.len(), 2 * input.len());
    for (shift, want) in [0u8, 37]
        .into_iter()
        .zip(expected.chunks_exact(input.len()))
    {
        let mut img = RgbImage::new(256, 768, input.clone());
        tf::adjust_hue(&mut img, (shift as f32 + 0.5) / 255.0);
        let wrong: Vec<usize> = (0..768 * 256)
            .filter(|&p| img.data[3 * p..3 * p + 3] != want[3 * p..3 * p + 3])
            .collect();
        if let Some(&p) = wrong.first() {
            panic!(
                "shift {shift}: {} of 196608 colours differ from Pillow, e.g. {:?} -> {:?}, Pillow {:?}",
                wrong.len(),
                &input[3 * p..3 * p + 3],
                &img.data[3 * p..3 * p + 3],
                &want[3 * p..3 * p + 3]
            );
        }
    }
}

#[test]
fn resizing_matches_pillow_bilinear() {
    let ck = vectors();
    let photo = image(&ck, "photo");
    let mut resizer = fast_image_resize::Resizer::new();
    for t in ck
        .tensors
        .iter()
        .filter(|t| t.name.starts_with("resized_crop/"))
    {
        let p: Vec<usize> = t.name[13..]
            .split(',')
            .map(|v| v.parse().unwrap())
            .collect();
        let crop = CropBox {
            top: p[0],
            left: p[1],
            height: p[2],
            width: p[3],
        };
        let ours = tf::resized_crop(&photo, crop, 1.0, p[4], p[4], &mut resizer);
        let (max, mean) = diff(&ours, &image(&ck, &t.name));
        // fast_image_resize implements Pillow's convolution with other fixed-point rounding:
        // values may differ by one (measured: max 1, mean 0.15 on the full-image 224 crop).
        assert!(
            max <= 1 && mean < 0.25,
            "{}: max {max}, mean {mean}",
            t.name
        );
    }
    let eval = tf::center_crop(&tf::resize_shorter(&photo, 256, &mut resizer), 224);
    let (max, mean) = diff(&eval, &image(&ck, "eval/256,224"));
    assert!(max <= 1 && mean < 0.25, "eval: max {max}, mean {mean}");
}

#[test]
fn jpeg_decoding_is_close_to_pillow() {
    let ck = vectors();
    let bytes = std::fs::read(fixture("photos/chelsea.jpg")).unwrap();
    let d = decode::decode(&bytes, None).unwrap();
    assert_eq!(d.scale, 1);
    let (max, mean) = diff(&d.image, &image(&ck, "photo"));
    // Different IDCT and upsampling implementations (zune-jpeg vs libjpeg-turbo): 0.17 / 4.
    assert!(mean < 0.3 && max < 8, "max {max}, mean {mean}");
    // Truncated anywhere, a JPEG is an error, as Pillow's "image file is truncated".
    for frac in [0.3, 0.9, 0.99] {
        let cut = &bytes[..(bytes.len() as f64 * frac) as usize];
        assert!(decode::decode(cut, None).is_err(), "{frac}");
    }
    // A DCT-scaled decode keeps at least the size asked for.
    let q = decode::decode(&bytes, Some((100, 80))).unwrap();
    assert_eq!(q.scale, 4);
    assert!(q.image.width >= 100 && q.image.height >= 80);
    assert_eq!(q.full, (d.image.width, d.image.height));
}

/// Hostile bytes: randomly mutated and truncated copies of a photo, full-size (zune-jpeg, then
/// jpeg-decoder) and DCT-scaled: each decodes to an image of the announced size or is an error,
/// never a panic.
#[test]
fn mutated_jpegs_decode_or_fail_cleanly() {
    let base = std::fs::read(fixture("photos/chelsea.jpg")).unwrap();
    let mut rng = Rng::new(11);
    let (mut ok, mut err) = (0, 0);
    for case in 0..400 {
        let mut b = base.clone();
        for _ in 0..1 + rng.below(20) {
            let i = rng.below(b.len());
            b[i] = rng.below(256) as u8;
        }
        if case % 4 == 0 {
            let n = 4 + rng.below(b.len() - 4);
            b.truncate(n);
        }
        let min = (case % 2 == 1).then_some((100, 80));
        match decode::decode(&b, min) {
            Ok(d) => {
                ok += 1;
                let i = &d.image;
                assert_eq!(i.data.len(), i.width * i.height * 3, "case {case}");
                assert!(i.width > 0 && i.width <= d.full.0, "case {case}");
                assert!(i.height > 0 && i.height <= d.full.1, "case {case}");
            }
            Err(_) => err += 1,
        }
    }
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

#[test]
fn random_resized_crop_follows_torchvision() {
    let mut rng = Rng::new(7);
    for _ in 0..2000 {
        let b =
            tf::random_resized_crop_box(500, 375, (0.14, 1.0), (3.0 / 4.0, 4.0 / 3.0), &mut rng);
        assert!(
            b.width > 0 && b.height > 0 && b.left + b.width <= 500 && b.top + b.height <= 375,
            "{b:?}"
        );
        let frac = (b.width * b.height) as f64 / (500.0 * 375.0);
        assert!((0.13..=1.0).contains(&frac), "{b:?} {frac}");
        let ar = b.width as f64 / b.height as f64;
        assert!((0.74..=1.35).contains(&ar), "{b:?}");
    }
    // No ratio fits a 10:1 strip: the fallback is the central crop at the largest ratio.
    let b = tf::random_resized_crop_box(1000, 100, (0.9, 1.0), (3.0 / 4.0, 4.0 / 3.0), &mut rng);
    assert_eq!(
        b,
        CropBox {
            top: 0,
            left: 433,
            height: 100,
            width: 133
        }
    );
}

/// The transforms are compiled for SSE2, AVX2 and AVX-512 and picked at run time: every level
/// this CPU has must give the same bytes (and tensors) as the baseline. They live in the crate
/// `swav-pixels`, optimised in every profile, so this default test run compares the vector
/// code itself (a CPU without AVX2 compares the baseline with itself: the levels it has).
#[test]
fn every_instruction_set_gives_the_same_results() {
    use swav::data::multicrop::MultiCrop;
    use swav::data::simd::{detected, with_level, Level};
    let bytes = std::fs::read(fixture("photos/chelsea.jpg")).unwrap();
    let photo = decode::decode(&bytes, None).unwrap().image;
    let run = |level: Level| {
        with_level(level, || {
            let mut outputs: Vec<Vec<u8>> = Vec::new();
            let ops: [&dyn Fn(&mut RgbImage); 9] = [
                &|i| tf::adjust_hue(i, 0.13),
                &|i| tf::adjust_hue(i, -0.2),
                &|i| tf::adjust_saturation(i, 1.7),
                &|i| tf::adjust_brightness(i, 0.41),
                &|i| tf::adjust_contrast(i, 1.52),
                &|i| tf::grayscale(i),
                &|i| tf::gaussian_blur(i, 1.3),
                &|i| tf::gaussian_blur(i, 0.4),
                &|i| i.flip_horizontal(),
            ];
            for op in ops {
                let mut img = photo.clone();
                op(&mut img);
                outputs.push(img.data);
            }
            let mut tensor = vec![0f32; photo.data.len()];
            tf::to_tensor(
                &photo,
                [0.485, 0.456, 0.406],
                [0.228, 0.224, 0.225],
                &mut tensor,
            );
            let mc = MultiCrop::default();
            let mut big = vec![0f32; 2 * 3 * 224 * 224];
            let mut small = vec![0f32; 6 * 3 * 96 * 96];
            let mut resizer = fast_image_resize::Resizer::new();
            for seed in 0..4 {
                let mut rng = Rng::new(seed);
                mc.apply(&bytes, &mut rng, &mut resizer, &mut [&mut big, &mut small])
                    .unwrap();
                tensor.extend(&big);
                tensor.extend(&small);
            }
            (
                outputs,
                tensor.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            )
        })
    };
    let baseline = run(Level::Baseline);
    for level in [Level::Avx2, Level::Avx512] {
        if level <= detected() {
            let got = run(level);
            for (k, (a, b)) in got.0.iter().zip(&baseline.0).enumerate() {
                assert!(
                    a == b,
                    "operation {k} differs between {level:?} and the baseline"
                );
            }
            assert!(
                got.1 == baseline.1,
                "multi-crop tensors differ at {level:?}"
            );
        }
    }
}
