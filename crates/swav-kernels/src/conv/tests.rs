//! The kernels against a direct convolution (the definition, three nested sums) in `f64` and
//! `f32`, on shapes that take every path: padding that cuts rows and columns, strides, dilation,
//! rectangular kernels, 1×1 kernels (the patch matrix is the sample itself), outputs of one
//! pixel (samples grouped into chunks), batches that do not fill the last chunk or lane.

use super::*;

fn conv(
    [batch, in_channels, out_channels]: [usize; 3],
    [height, width]: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
) -> Conv2d {
    Conv2d {
        batch,
        in_channels,
        out_channels,
        height,
        width,
        kernel,
        stride,
        padding,
        dilation,
    }
}

fn shapes() -> Vec<Conv2d> {
    vec![
        conv([3, 2, 3], [7, 5], [3, 3], [1, 1], [1, 1], [1, 1]),
        // ResNet's stem: 7×7, stride 2, padding 3.
        conv([2, 3, 4], [11, 9], [7, 7], [2, 2], [3, 3], [1, 1]),
        conv([5, 4, 6], [3, 4], [1, 1], [1, 1], [0, 0], [1, 1]),
        // A projection shortcut: 1×1, stride 2.
        conv([3, 4, 2], [5, 5], [1, 1], [2, 2], [0, 0], [1, 1]),
        // One output pixel: 2 samples a chunk, 10 chunks, 8 lanes.
        conv([20, 3, 2], [2, 2], [3, 3], [2, 2], [1, 1], [1, 1]),
        // Outputs of 2×2 pixels (grid: 2×3 columns), 67 samples: chunks of 8, the last of 3.
        conv([67, 2, 3], [4, 4], [3, 3], [2, 2], [1, 1], [1, 1]),
        conv([2, 2, 3], [9, 8], [2, 3], [2, 1], [0, 2], [2, 2]),
        // Column stride 3 on widths that are not multiples of it: phases of unequal lengths.
        conv([2, 2, 2], [7, 10], [3, 3], [3, 3], [1, 2], [1, 1]),
        conv([2, 2, 2], [5, 11], [2, 4], [1, 2], [1, 3], [1, 2]),
        // Narrower than the stride: phases without a pixel.
        conv([2, 2, 2], [5, 2], [1, 1], [3, 3], [0, 0], [1, 1]),
        // Outputs 2 pixels wide: the table layout, with stride 1, with dilation.
        conv([4, 2, 3], [3, 2], [3, 3], [1, 1], [1, 1], [1, 1]),
        conv([3, 2, 2], [5, 2], [2, 2], [1, 1], [1, 1], [2, 2]),
        // Padding wider than the kernel reaches: whole rows and columns of zeros.
        conv([1, 1, 1], [2, 3], [3, 2], [3, 2], [4, 3], [1, 1]),
    ]
}

/// Deterministic numbers in [-1, 1).
fn numbers(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// The input position read by output `o` at kernel offset `k` along dimension `d`.
fn read(c: &Conv2d, d: usize, o: usize, k: usize, n: usize) -> Option<usize> {
    let i = (o * c.stride[d] + k * c.dilation[d]) as isize - c.padding[d] as isize;
    (0..n as isize).contains(&i).then_some(i as usize)
}

/// `(y, dx, dw)` by the definition.
fn direct(c: &Conv2d, x: &[f64], w: &[f64], dy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let [oh, ow] = c.output_size().unwrap();
    let (mut y, mut dx, mut dw) = (vec![0.0; dy.len()], vec![0.0; x.len()], vec![0.0; w.len()]);
    let xi = |n: usize, ci: usize, i: usize, j: usize| {
        ((n * c.in_channels + ci) * c.height + i) * c.width + j
    };
    let wi = |o: usize, ci: usize, a: usize, b: usize| {
        ((o * c.in_channels + ci) * c.kernel[0] + a) * c.kernel[1] + b
    };
    for n in 0..c.batch {
        for o in 0..c.out_channels {
            for i in 0..oh {
                for j in 0..ow {
                    let yi = ((n * c.out_channels + o) * oh + i) * ow + j;
                    for ci in 0..c.in_channels {
                        for a in 0..c.kernel[0] {
                            for b in 0..c.kernel[1] {
                                let (Some(r), Some(s)) =
                                    (read(c, 0, i, a, c.height), read(c, 1, j, b, c.width))
                                else {
                                    continue;
                                };
                                y[yi] += x[xi(n, ci, r, s)] * w[wi(o, ci, a, b)];
                                dx[xi(n, ci, r, s)] += dy[yi] * w[wi(o, ci, a, b)];
                                dw[wi(o, ci, a, b)] += dy[yi] * x[xi(n, ci, r, s)];
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

fn assert_close<T: Element + Into<f64>>(what: &str, c: &Conv2d, got: &[T], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let g: f64 = (*g).into();
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what} of {c:?}, element {i}: {g} vs {w}"
        );
    }
}

/// Forward and both gradients of `c` in `T`, against the definition in `f64`.
fn check<T: Element + Into<f64>>(c: &Conv2d, cast: fn(f64) -> T, tol: f64) {
    let x = numbers(c.input_len(), 1);
    let w = numbers(c.weight_len(), 2);
    let dy = numbers(c.output_len(), 3);
    let (y_ref, dx_ref, dw_ref) = direct(c, &x, &w, &dy);
    let t = |v: &[f64]| v.iter().map(|&v| cast(v)).collect::<Vec<T>>();
    let (x, w, dy) = (t(&x), t(&w), t(&dy));
    let mut y = vec![cast(7.0); c.output_len()];
    forward(c, &x, &w, &mut y);
    assert_close("output", c, &y, &y_ref, tol);
    let (mut dx, mut dw) = (vec![cast(7.0); x.len()], vec![cast(7.0); w.len()]);
    backward(c, &x, &w, &dy, Some(&mut dx), Some(&mut dw));
    assert_close("input gradient", c, &dx, &dx_ref, tol);
    assert_close("weight gradient", c, &dw, &dw_ref, tol);
    // Each gradient alone is the same.
    let (mut dx1, mut dw1) = (vec![cast(7.0); x.len()], vec![cast(7.0); w.len()]);
    backward(c, &x, &w, &dy, Some(&mut dx1), None);
    backward(c, &x, &w, &dy, None, Some(&mut dw1));
    assert!(
        dx1 == dx && dw1 == dw,
        "{c:?}: gradients asked apart differ"
    );
}

#[test]
fn shapes_take_both_layouts() {
    let grid = shapes().iter().filter(|c| Plan::new(c).grid()).count();
    assert!(
        grid >= 4 && shapes().len() - grid >= 4,
        "{grid} of {} in the grid layout",
        shapes().len()
    );
}

#[test]
fn f64_matches_the_definition() {
    for c in shapes() {
        check::<f64>(&c, |v| v, 1e-12);
    }
}

#[test]
fn f32_matches_the_definition() {
    for c in shapes() {
        check::<f32>(&c, |v| v as f32, 1e-5);
    }
}

#[test]
fn results_do_not_depend_on_the_threads() {
    let c = conv([67, 3, 5], [6, 6], [3, 3], [1, 1], [1, 1], [1, 1]);
    let x: Vec<f32> = numbers(c.input_len(), 4)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let w: Vec<f32> = numbers(c.weight_len(), 5)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let dy: Vec<f32> = numbers(c.output_len(), 6)
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let run = |threads: usize| {
        crate::on_threads(threads, || {
            let mut y = vec![0.0f32; c.output_len()];
            let (mut dx, mut dw) = (vec![0.0f32; x.len()], vec![0.0f32; w.len()]);
            forward(&c, &x, &w, &mut y);
            backward(&c, &x, &w, &dy, Some(&mut dx), Some(&mut dw));
            (y, dx, dw)
        })
    };
    let one = run(1);
    for threads in [2, 3, 5] {
        assert!(run(threads) == one, "{threads} threads differ from one");
    }
}

#[test]
fn no_input_channel_gives_zeros() {
    let c = conv([2, 0, 3], [4, 4], [3, 3], [1, 1], [1, 1], [1, 1]);
    let mut y = vec![7.0f32; c.output_len()];
    forward(&c, &[], &[], &mut y);
    assert!(!y.is_empty() && y.iter().all(|&v| v == 0.0));
}

#[test]
fn output_size_refuses_what_has_no_output() {
    let ok = conv([1, 1, 1], [5, 5], [3, 3], [2, 2], [1, 1], [1, 1]);
    assert_eq!(ok.output_size(), Some([3, 3]));
    assert_eq!(
        conv([1, 1, 1], [2, 2], [5, 5], [1, 1], [1, 1], [1, 1]).output_size(),
        None
    );
    assert_eq!(
        conv([1, 1, 1], [5, 5], [3, 3], [0, 1], [0, 0], [1, 1]).output_size(),
        None
    );
    assert_eq!(
        conv([1, 1, 1], [5, 5], [0, 3], [1, 1], [0, 0], [1, 1]).output_size(),
        None
    );
    assert_eq!(
        conv([1, 1, 1], [5, 5], [3, 3], [1, 1], [0, 0], [3, 0]).output_size(),
        None
    );
}
