//! 2-D convolution on the CPU, apart from Burn: the forward pass and both gradients of a
//! convolution without groups or bias, on contiguous NCHW buffers of `f32` or `f64`, each as
//! matrix products (Chellapilla et al., 2006; what PyTorch's CPU convolution does when oneDNN is
//! not used):
//!
//! - forward: `Y_n = W · cols(X_n)`,
//! - weight gradient: `dW = Σ_n dY_n · cols(X_n)ᵀ`,
//! - input gradient: `dX_n = col2im(Wᵀ · dY_n)`,
//!
//! where `W` is the weight `[C_out, C_in·kh·kw]` as it is stored, `cols(X_n)` the
//! `[C_in·kh·kw, H_out·W_out]` matrix of the input patches ("im2col") and `col2im` its adjoint
//! (each patch entry added back where it was read). Burn 0.21's CPU backend (Flex) computes the
//! gradients as other convolutions — the weight gradient as a convolution of the input by the
//! output gradient with the batch as channels, the input gradient as a transposed convolution by
//! direct loops — which made them ~52% of a training step of swav-rs's tiny configuration.
//!
//! The batch is cut into chunks of samples; a chunk's patches sit side by side in one matrix so
//! that the products have enough columns when the output is small (a 1×1 output at the end of a
//! ResNet on 32-pixel crops). Chunks run in parallel on rayon's pool; each product is
//! single-threaded. Results are deterministic and do not depend on the number of threads: the
//! cut depends only on the shapes, and the weight gradient is summed in [`LANES`] fixed runs of
//! chunks whose sums are added in order.
//!
//! swav-rs's model registers it as the convolution of Burn's CPU backend
//! (`swav::model::conv`).

use crate::Element;
use rayon::prelude::*;
use std::ops::Range;

/// Columns a chunk's patch matrix aims at (samples are grouped until their outputs have as many
/// pixels): below this, gemm spends more on packing than on multiplying.
pub const COLUMNS: usize = 256;

/// Chunks a batch is cut into at least, when it has that many samples: the parallelism of a
/// convolution with small outputs.
pub const MIN_CHUNKS: usize = 8;

/// Runs of chunks whose weight gradients are summed apart, then added in order (the
/// parallelism of the weight gradient, fixed so that its sum does not depend on the threads).
pub const LANES: usize = 8;

/// The shapes of one convolution: input `[batch, in_channels, height, width]`, weight
/// `[out_channels, in_channels, kernel[0], kernel[1]]`, output `[batch, out_channels, h, w]`
/// with `[h, w]` = [`Conv2d::output_size`]. Padding is symmetric (zeros); `[0]` is the height,
/// `[1]` the width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl Conv2d {
    /// The output's height and width, or `None` when the kernel, stride or dilation is 0 or
    /// the dilated kernel does not fit in the padded input.
    pub fn output_size(&self) -> Option<[usize; 2]> {
        let size = [self.height, self.width];
        crate::output_size(size, self.kernel, self.stride, self.padding, self.dilation)
    }

    /// Elements of the input.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.height * self.width
    }

    /// Elements of the weight.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel[0] * self.kernel[1]
    }

    /// Elements of the output (0 when there is none).
    pub fn output_len(&self) -> usize {
        self.output_size()
            .map_or(0, |[h, w]| self.batch * self.out_channels * h * w)
    }
}

mod patches;
use patches::Plan;

/// A matrix of a product: its elements and its row and column strides.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    data: &'a [T],
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    fn rows(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of the row-major matrix with `cols` columns in `data`.
    fn transposed(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: cols,
        }
    }
}

/// Elements from the first to the last of a strided `[rows, cols]` matrix.
fn span(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * rs + (cols - 1) * cs + 1
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, `dst` row-major with `n` columns; added to `dst` when
/// `accumulate`, else written over it. Single-threaded.
fn matmul<T: Element>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
) {
    assert!(
        span(m, n, n, 1) <= dst.len(),
        "matmul: destination too small"
    );
    assert!(
        span(m, k, lhs.rs, lhs.cs) <= lhs.data.len(),
        "matmul: lhs too small"
    );
    assert!(
        span(k, n, rhs.rs, rhs.cs) <= rhs.data.len(),
        "matmul: rhs too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::ZERO);
        }
        return;
    }
    // SAFETY: the three assertions above keep every element gemm reads or writes inside the
    // slices (all strides are non-negative); `dst` is borrowed mutably, so it overlaps neither
    // operand; T is f32 or f64 (`Element` is sealed).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

fn check_lengths<T>(c: &Conv2d, x: &[T], w: &[T], y: usize) {
    assert_eq!(x.len(), c.input_len(), "convolution {c:?}: input length");
    assert_eq!(w.len(), c.weight_len(), "convolution {c:?}: weight length");
    assert_eq!(y, c.output_len(), "convolution {c:?}: output length");
}

/// The convolution of `x` by `w` into `y` (all contiguous NCHW / OIHW).
///
/// # Panics
/// When the convolution has no output or a buffer's length does not match `c`.
pub fn forward<T: Element>(c: &Conv2d, x: &[T], w: &[T], y: &mut [T]) {
    let pl = Plan::new(c);
    check_lengths(c, x, w, y.len());
    if pl.per_in == 0 || pl.k == 0 {
        // No input channel (or no pixel): every output is an empty sum.
        y.fill(T::ZERO);
        return;
    }
    if y.is_empty() {
        return;
    }
    let (co, k) = (c.out_channels, pl.k);
    y.par_chunks_mut(pl.group * pl.per_out)
        .zip(x.par_chunks(pl.group * pl.per_in))
        .for_each_init(
            || (Vec::new(), Vec::new(), Vec::new()),
            |(cols, out, phases), (y, x)| {
                let g = y.len() / pl.per_out;
                let gq = g * pl.q;
                let cols = pl.patch_matrix(x, g, cols, phases);
                let product = |dst: &mut [T]| {
                    matmul(
                        (co, gq, k),
                        dst,
                        false,
                        Mat::rows(w, k),
                        Mat::rows(cols, gq),
                    )
                };
                if g == 1 && pl.q == pl.p {
                    product(y);
                } else {
                    out.resize(co * gq, T::ZERO);
                    product(out);
                    pl.matrix_to_samples(co, g, out, y);
                }
            },
        );
}

/// The gradients of the convolution of `x` by `w` given the output's gradient `dy`: the
/// input's into `dx` and the weight's into `dw`, each when asked for (overwritten).
///
/// # Panics
/// When the convolution has no output or a buffer's length does not match `c`.
pub fn backward<T: Element>(
    c: &Conv2d,
    x: &[T],
    w: &[T],
    dy: &[T],
    dx: Option<&mut [T]>,
    dw: Option<&mut [T]>,
) {
    let pl = Plan::new(c);
    check_lengths(c, x, w, dy.len());
    if let Some(dx) = &dx {
        assert_eq!(
            dx.len(),
            x.len(),
            "convolution {c:?}: input gradient length"
        );
    }
    if let Some(dw) = &dw {
        assert_eq!(
            dw.len(),
            w.len(),
            "convolution {c:?}: weight gradient length"
        );
    }
    let chunks: Vec<Range<usize>> = pl.chunks(0..c.batch).collect();
    let lanes = LANES.min(chunks.len()).max(1);
    // Lane l: chunks [l·n/lanes, (l+1)·n/lanes), as one range of samples.
    let lane_samples: Vec<Range<usize>> = (0..lanes)
        .map(|l| {
            let (a, b) = (l * chunks.len() / lanes, (l + 1) * chunks.len() / lanes);
            match (chunks.get(a), b.checked_sub(1).and_then(|e| chunks.get(e))) {
                (Some(first), Some(last)) if a < b => first.start..last.end,
                _ => 0..0,
            }
        })
        .collect();
    let mut dx_parts: Vec<Option<&mut [T]>> = Vec::with_capacity(lanes);
    let mut rest = dx;
    for samples in &lane_samples {
        dx_parts.push(rest.take().map(|d| {
            let (part, tail) = d.split_at_mut(samples.len() * pl.per_in);
            rest = Some(tail);
            part
        }));
    }
    let need_dw = dw.is_some();
    let sums: Vec<Option<Vec<T>>> = lane_samples
        .into_par_iter()
        .zip(dx_parts)
        .map(|(samples, dx)| lane(&pl, samples, x, w, dy, dx, need_dw))
        .collect();
    if let Some(dw) = dw {
        dw.fill(T::ZERO);
        for sum in sums.into_iter().flatten() {
            for (a, b) in dw.iter_mut().zip(sum) {
                *a += b;
            }
        }
    }
}

/// One lane of [`backward`]: the input gradient of its samples into `dx` (theirs only) and the
/// sum of their weight gradients, returned.
fn lane<T: Element>(
    pl: &Plan,
    samples: Range<usize>,
    x: &[T],
    w: &[T],
    dy: &[T],
    mut dx: Option<&mut [T]>,
    need_dw: bool,
) -> Option<Vec<T>> {
    let (co, k, first) = (pl.c.out_channels, pl.k, samples.start);
    let mut dw = need_dw.then(|| vec![T::ZERO; co * k]);
    let (mut cols_buf, mut dyt_buf, mut dcols, mut phases) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, chunk) in pl.chunks(samples).enumerate() {
        let (g, s) = (chunk.len(), chunk.start);
        let gq = g * pl.q;
        let xs = &x[s * pl.per_in..][..g * pl.per_in];
        let dys = &dy[s * pl.per_out..][..g * pl.per_out];
        let dyt: &[T] = if g == 1 && pl.q == pl.p {
            dys
        } else {
            dyt_buf.resize(co * gq, T::ZERO);
            pl.samples_to_matrix(co, g, dys, &mut dyt_buf);
            &dyt_buf
        };
        if let Some(dw) = &mut dw {
            let cols = pl.patch_matrix(xs, g, &mut cols_buf, &mut phases);
            // dW[co, k] (+)= dY[co, gq] · colsᵀ[gq, k]
            matmul(
                (co, k, gq),
                dw,
                i > 0,
                Mat::rows(dyt, gq),
                Mat::transposed(cols, gq),
            );
        }
        if let Some(dx) = &mut dx {
            let dxs = &mut dx[(s - first) * pl.per_in..][..g * pl.per_in];
            // dcols[k, gq] = Wᵀ[k, co] · dY[co, gq]
            let product = |dst: &mut [T]| {
                matmul(
                    (k, gq, co),
                    dst,
                    false,
                    Mat::transposed(w, k),
                    Mat::rows(dyt, gq),
                )
            };
            if pl.pointwise && g == 1 {
                product(dxs);
            } else {
                dcols.resize(k * gq, T::ZERO);
                product(&mut dcols);
                pl.col2im(&dcols, g, dxs, &mut phases);
            }
        }
    }
    dw
}

#[cfg(test)]
mod tests;
