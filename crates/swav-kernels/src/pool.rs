//! 2-D max pooling and its gradient, PyTorch's rules (`torch.nn.MaxPool2d`, floor mode): the
//! padding is never the maximum, the first maximum of a window wins, a NaN is the maximum (the
//! last one of the window). The forward pass keeps, for each output, the input pixel that was
//! its maximum; the gradient adds each output's gradient there. Planes run in parallel.
//!
//! Burn 0.21's CPU backend keeps the argmax as `i64` through a generic 3-D pooling with a
//! bounds check per tap, ~8% of a training step of swav-rs's tiny configuration.

use crate::Element;
use rayon::prelude::*;

/// Planes a parallel task handles at least.
const PLANES_PER_TASK: usize = 8;

/// The shapes of one max pooling: input `[batch, channels, height, width]`, output
/// `[batch, channels, h, w]` with `[h, w]` = [`MaxPool2d::output_size`]. Padding is symmetric;
/// `[0]` is the height, `[1]` the width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2d {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl MaxPool2d {
    /// The output's height and width, or `None` when the kernel, stride or dilation is 0, the
    /// padding is over half the kernel (PyTorch's rule), the dilated kernel does not fit in the
    /// padded input, a window holds no input pixel (with dilation, or an empty input), or a
    /// plane has 2³² pixels or more.
    pub fn output_size(&self) -> Option<[usize; 2]> {
        // PyTorch's rule: the padding is at most half the kernel.
        (0..2)
            .all(|i| 2 * self.padding[i] <= self.kernel[i])
            .then_some(())?;
        let plane = self.height.checked_mul(self.width)?;
        (u32::try_from(plane).is_ok()).then_some(())?;
        let n = [self.height, self.width];
        let size = crate::output_size(n, self.kernel, self.stride, self.padding, self.dilation)?;
        let filled = |d: usize| (0..size[d]).all(|o| self.window(d, o, n[d]).next().is_some());
        (filled(0) && filled(1)).then_some(size)
    }

    /// Elements of the input.
    pub fn input_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }

    /// Elements of the output (0 when there is none).
    pub fn output_len(&self) -> usize {
        self.output_size()
            .map_or(0, |[h, w]| self.batch * self.channels * h * w)
    }

    /// For output position `o` along dimension `d`: the input positions its window reads.
    fn window(&self, d: usize, o: usize, n: usize) -> impl Iterator<Item = usize> + Clone {
        let start = (o * self.stride[d]) as isize - self.padding[d] as isize;
        let dilation = self.dilation[d];
        (0..self.kernel[d])
            .map(move |k| start + (k * dilation) as isize)
            .filter(move |&i| (0..n as isize).contains(&i))
            .map(|i| i as usize)
    }
}

/// The max pooling of `x` into `y`, and in `argmax` the input pixel of each output
/// (`ih · width + iw` in its plane).
///
/// # Panics
/// When the pooling has no output or a buffer's length does not match `p`.
pub fn forward<T: Element>(p: &MaxPool2d, x: &[T], y: &mut [T], argmax: &mut [u32]) {
    let [oh, ow] = p
        .output_size()
        .unwrap_or_else(|| panic!("max pooling {p:?} has no output"));
    assert_eq!(x.len(), p.input_len(), "max pooling {p:?}: input length");
    assert_eq!(y.len(), p.output_len(), "max pooling {p:?}: output length");
    assert_eq!(argmax.len(), y.len(), "max pooling {p:?}: argmax length");
    let (hw, ohw) = (p.height * p.width, oh * ow);
    if ohw == 0 || hw == 0 {
        return;
    }
    let rows: Vec<Vec<usize>> = (0..oh)
        .map(|o| p.window(0, o, p.height).collect())
        .collect();
    let cols: Vec<Vec<usize>> = (0..ow).map(|o| p.window(1, o, p.width).collect()).collect();
    x.par_chunks(hw)
        .zip(y.par_chunks_mut(ohw).zip(argmax.par_chunks_mut(ohw)))
        .with_min_len(PLANES_PER_TASK)
        .for_each(|(x, (y, argmax))| {
            for (o, rows) in rows.iter().enumerate() {
                for (q, cols) in cols.iter().enumerate() {
                    let mut best = (T::NEG_INFINITY, rows[0] * p.width + cols[0]);
                    for &ih in rows {
                        let line = &x[ih * p.width..][..p.width];
                        for &iw in cols {
                            let v = line[iw];
                            // A NaN (v != v) wins, as in PyTorch.
                            #[allow(clippy::eq_op)]
                            if v > best.0 || v != v {
                                best = (v, ih * p.width + iw);
                            }
                        }
                    }
                    y[o * ow + q] = best.0;
                    argmax[o * ow + q] = best.1 as u32;
                }
            }
        });
}

/// The gradient of the max pooling that gave `argmax`, given the output's gradient `dy`, into
/// `dx` (overwritten).
///
/// # Panics
/// When a buffer's length does not match `p`, or an argmax is outside its plane.
pub fn backward<T: Element>(p: &MaxPool2d, dy: &[T], argmax: &[u32], dx: &mut [T]) {
    assert_eq!(
        dy.len(),
        p.output_len(),
        "max pooling {p:?}: output gradient length"
    );
    assert_eq!(argmax.len(), dy.len(), "max pooling {p:?}: argmax length");
    assert_eq!(
        dx.len(),
        p.input_len(),
        "max pooling {p:?}: input gradient length"
    );
    let hw = p.height * p.width;
    let planes = p.batch * p.channels;
    if hw == 0 || planes == 0 {
        return;
    }
    let ohw = dy.len() / planes;
    dx.par_chunks_mut(hw)
        .zip(dy.par_chunks(ohw.max(1)).zip(argmax.par_chunks(ohw.max(1))))
        .with_min_len(PLANES_PER_TASK)
        .for_each(|(dx, (dy, argmax))| {
            dx.fill(T::ZERO);
            for (g, &a) in dy.iter().zip(argmax) {
                dx[a as usize] += *g;
            }
        });
}

#[cfg(test)]
mod tests {
    //! Against the definition, on PyTorch's examples of its rules.
    use super::*;

    fn pool(kernel: usize, stride: usize, padding: usize, [h, w]: [usize; 2]) -> MaxPool2d {
        MaxPool2d {
            batch: 2,
            channels: 3,
            height: h,
            width: w,
            kernel: [kernel; 2],
            stride: [stride; 2],
            padding: [padding; 2],
            dilation: [1, 1],
        }
    }

    /// `(y, argmax)` by the definition: every window's first maximum (or last NaN).
    fn direct(p: &MaxPool2d, x: &[f64]) -> (Vec<f64>, Vec<u32>) {
        let [oh, ow] = p.output_size().unwrap();
        let (mut y, mut a) = (vec![], vec![]);
        for plane in x.chunks(p.height * p.width) {
            for o in 0..oh {
                for q in 0..ow {
                    let mut best: Option<(f64, usize)> = None;
                    for ih in p.window(0, o, p.height) {
                        for iw in p.window(1, q, p.width) {
                            let v = plane[ih * p.width + iw];
                            let better = match best {
                                None => true,
                                Some((b, _)) => v > b || v.is_nan(),
                            };
                            if better {
                                best = Some((v, ih * p.width + iw));
                            }
                        }
                    }
                    let (v, i) = best.unwrap();
                    y.push(v);
                    a.push(i as u32);
                }
            }
        }
        (y, a)
    }

    #[test]
    fn matches_the_definition_and_its_gradient_sums() {
        for p in [
            pool(3, 2, 1, [9, 8]),
            pool(2, 2, 0, [4, 5]),
            pool(3, 1, 1, [3, 3]),
            MaxPool2d {
                dilation: [2, 1],
                ..pool(3, 2, 1, [7, 6])
            },
        ] {
            // Ties (values in steps of 0.5 over a small range) and a NaN.
            let mut x: Vec<f64> = (0..p.input_len())
                .map(|i| ((i * 7919) % 11) as f64 * 0.5)
                .collect();
            x[5] = f64::NAN;
            let (y_ref, a_ref) = direct(&p, &x);
            let mut y = vec![0.0; p.output_len()];
            let mut a = vec![0; p.output_len()];
            forward(&p, &x, &mut y, &mut a);
            assert_eq!(a, a_ref, "{p:?}");
            for (u, v) in y.iter().zip(&y_ref) {
                assert!(u == v || (u.is_nan() && v.is_nan()), "{p:?}: {u} vs {v}");
            }
            let dy: Vec<f64> = (0..y.len()).map(|i| i as f64 + 1.0).collect();
            let mut dx = vec![7.0; x.len()];
            backward(&p, &dy, &a, &mut dx);
            let hw = p.height * p.width;
            let mut want = vec![0.0; x.len()];
            for (j, (&g, &i)) in dy.iter().zip(&a).enumerate() {
                want[(j / (y.len() / (p.batch * p.channels))) * hw + i as usize] += g;
            }
            assert_eq!(dx, want, "{p:?}");
        }
    }

    #[test]
    fn padding_over_half_the_kernel_or_empty_windows_have_no_output() {
        assert_eq!(pool(3, 2, 2, [5, 5]).output_size(), None);
        assert_eq!(pool(3, 2, 1, [1, 1]).output_size(), Some([1, 1]));
        // Dilation 3 over a 2×2 input padded by 1: the window reads rows -1 and 2 only.
        let dilated = MaxPool2d {
            dilation: [3, 3],
            ..pool(2, 1, 1, [2, 2])
        };
        assert_eq!(dilated.output_size(), None);
        assert_eq!(pool(2, 1, 1, [0, 3]).output_size(), None);
    }
}
