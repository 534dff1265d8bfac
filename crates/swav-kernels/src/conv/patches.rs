//! The patch matrix of a chunk of samples (im2col), its adjoint (col2im), and the output-shaped
//! matrices that go with it.
//!
//! The patch matrix has a row per weight column — input channel `ci`, kernel row `ki`, kernel
//! column `kj`, at `(ci·kh + ki)·kw + kj` — and `q` columns per sample, sample `s` of a chunk
//! at columns `s·q..(s+1)·q`. Two layouts of a sample's columns, chosen by shape:
//!
//! - **Table** (`q = oh·ow`, one column per output pixel): a table gives, for each kernel tap
//!   and output pixel, the input pixel read or none (the padding); the matrix is filled an
//!   element at a time. Used for small outputs.
//! - **Grid** (`q = oh·wq`): the input plane is padded with zeros once and split into its
//!   `stride_h × stride_w` phases (the rows `a, a + stride, …` and columns `b, b + stride, …`),
//!   each `wq` columns wide. Every kernel tap then reads one phase at a fixed offset, for every
//!   output pixel: a row of the matrix is *one* copy of `oh·wq` elements. An output row has
//!   `wq - ow` extra columns (a few pixels of the padding; `wq = ow` for 1×1 kernels), which the
//!   products compute and the output drops; the gradients put zeros in them. Used when the extra
//!   columns cost less than the copies they save. (The extra columns read real pixels of the
//!   next row: an infinite input makes the weight gradient NaN at every tap, where the
//!   definition would keep some taps finite. A step with non-finite activations is lost
//!   either way.)

use super::{Conv2d, COLUMNS, MIN_CHUNKS};
use crate::Element;
use std::ops::Range;

/// The grid layout is used when its extra columns are at most this fraction of the output's
/// (a 3×3 kernel with padding 1 on outputs at least 4 pixels wide).
const GRID_EXTRA: f64 = 0.5;

/// A convolution's sizes as the kernels use them.
pub(crate) struct Plan {
    pub c: Conv2d,
    /// Output height and width.
    pub oh: usize,
    pub ow: usize,
    /// Output pixels of a sample.
    pub p: usize,
    /// Columns of a sample in the patch matrix (`p`, or `oh · wq` in the grid layout).
    pub q: usize,
    /// Rows of the patch matrix: `in_channels · kh · kw`.
    pub k: usize,
    /// Elements of an input and of an output sample.
    pub per_in: usize,
    pub per_out: usize,
    /// Samples in a chunk.
    pub group: usize,
    /// 1×1, stride 1, no padding: a sample's patch matrix is the sample itself.
    pub pointwise: bool,
    layout: Layout,
}

enum Layout {
    Table {
        /// For kernel tap `t` (`ki · kw + kj`) and output pixel `j`, at `t · p + j`: the input
        /// pixel read (`ih · width + iw`), or [`PADDING`].
        read: Vec<usize>,
    },
    Grid {
        /// Columns of a phase (and of an output row in the patch matrix).
        wq: usize,
        /// Elements of a phase: its `⌈padded height / stride⌉ × wq` pixels and the zeros the
        /// last taps read past them.
        phase_len: usize,
        /// For each kernel tap `(ki, kj)`, at `ki · kw + kj`: where its reads start in the
        /// phases of a plane (phase index · `phase_len` + offset in the phase).
        taps: Vec<usize>,
    },
}

/// A read of the padding in [`Layout::Table`].
const PADDING: usize = usize::MAX;

impl Plan {
    pub fn new(c: &Conv2d) -> Plan {
        let [oh, ow] = c
            .output_size()
            .unwrap_or_else(|| panic!("convolution {c:?} has no output"));
        let [sh, sw] = c.stride;
        let [dh, dw] = c.dilation;
        let wq = (c.width + 2 * c.padding[1]).div_ceil(sw);
        let grid = (wq - ow) as f64 <= GRID_EXTRA * ow as f64;
        let (q, layout) = if grid {
            let hq = (c.height + 2 * c.padding[0]).div_ceil(sh);
            let base = |ki: usize, kj: usize| (ki * dh / sh) * wq + kj * dw / sw;
            let phase_len = (hq * wq).max(base(c.kernel[0] - 1, c.kernel[1] - 1) + oh * wq);
            let taps = (0..c.kernel[0])
                .flat_map(|ki| (0..c.kernel[1]).map(move |kj| (ki, kj)))
                .map(|(ki, kj)| {
                    let phase = (ki * dh % sh) * sw + kj * dw % sw;
                    phase * phase_len + base(ki, kj)
                })
                .collect();
            let layout = Layout::Grid {
                wq,
                phase_len,
                taps,
            };
            (oh * wq, layout)
        } else {
            let at = |o: usize, k: usize, d: usize| {
                let i = (o * c.stride[d] + k * c.dilation[d]) as isize - c.padding[d] as isize;
                let n = [c.height, c.width][d];
                (0..n as isize).contains(&i).then_some(i as usize)
            };
            let mut read = Vec::with_capacity(c.kernel[0] * c.kernel[1] * oh * ow);
            for ki in 0..c.kernel[0] {
                for kj in 0..c.kernel[1] {
                    for o in 0..oh {
                        for x in 0..ow {
                            read.push(match (at(o, ki, 0), at(x, kj, 1)) {
                                (Some(ih), Some(iw)) => ih * c.width + iw,
                                _ => PADDING,
                            });
                        }
                    }
                }
            }
            (oh * ow, Layout::Table { read })
        };
        let group = COLUMNS.div_ceil(q.max(1)).min(c.batch / MIN_CHUNKS).max(1);
        Plan {
            c: *c,
            oh,
            ow,
            p: oh * ow,
            q,
            k: c.in_channels * c.kernel[0] * c.kernel[1],
            per_in: c.in_channels * c.height * c.width,
            per_out: c.out_channels * oh * ow,
            group,
            pointwise: c.kernel == [1, 1] && c.stride == [1, 1] && c.padding == [0, 0],
            layout,
        }
    }

    /// Whether the patch matrix has the grid layout.
    #[cfg(test)]
    pub fn grid(&self) -> bool {
        matches!(self.layout, Layout::Grid { .. })
    }

    /// The chunks' samples.
    pub fn chunks(&self, samples: Range<usize>) -> impl Iterator<Item = Range<usize>> + '_ {
        let end = samples.end;
        samples
            .step_by(self.group)
            .map(move |s| s..(s + self.group).min(end))
    }

    /// The patch matrix `[k, g·q]` of the `g` samples of `x`: `x` itself for one sample of a
    /// 1×1 convolution with stride 1 and no padding, else [`Plan::im2col`] into `cols`.
    pub fn patch_matrix<'a, T: Element>(
        &self,
        x: &'a [T],
        g: usize,
        cols: &'a mut Vec<T>,
        phases: &mut Vec<T>,
    ) -> &'a [T] {
        if self.pointwise && g == 1 {
            return x;
        }
        cols.resize(self.k * g * self.q, T::ZERO);
        self.im2col(x, g, cols, phases);
        cols
    }

    /// The patch matrix `[k, g·q]` of the `g` samples of `x`; `buf` holds a plane's phases.
    pub fn im2col<T: Element>(&self, x: &[T], g: usize, cols: &mut [T], buf: &mut Vec<T>) {
        let (h, w, gq) = (self.c.height, self.c.width, g * self.q);
        let taps = self.c.kernel[0] * self.c.kernel[1];
        for s in 0..g {
            for ci in 0..self.c.in_channels {
                let plane = &x[s * self.per_in + ci * h * w..][..h * w];
                let row = |r: usize| (ci * taps + r) * gq + s * self.q;
                match &self.layout {
                    Layout::Grid { taps: at, .. } => {
                        self.split_grid(plane, buf);
                        for (r, &at) in at.iter().enumerate() {
                            cols[row(r)..][..self.q].copy_from_slice(&buf[at..][..self.q]);
                        }
                    }
                    Layout::Table { read } => {
                        for (r, read) in read.chunks_exact(self.q).enumerate() {
                            let dst = &mut cols[row(r)..][..self.q];
                            for (d, &i) in dst.iter_mut().zip(read) {
                                *d = if i == PADDING { T::ZERO } else { plane[i] };
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Plan::im2col`]: `dx` (the `g` samples, overwritten) is the sum, at
    /// each input position, of the entries of `cols` read from it.
    pub fn col2im<T: Element>(&self, cols: &[T], g: usize, dx: &mut [T], buf: &mut Vec<T>) {
        let (h, w, gq) = (self.c.height, self.c.width, g * self.q);
        let taps = self.c.kernel[0] * self.c.kernel[1];
        for s in 0..g {
            for ci in 0..self.c.in_channels {
                let plane = &mut dx[s * self.per_in + ci * h * w..][..h * w];
                let row = |r: usize| &cols[(ci * taps + r) * gq + s * self.q..][..self.q];
                match &self.layout {
                    Layout::Grid {
                        taps: at,
                        phase_len,
                        ..
                    } => {
                        buf.clear();
                        buf.resize(self.c.stride[0] * self.c.stride[1] * phase_len, T::ZERO);
                        for (r, &at) in at.iter().enumerate() {
                            add(&mut buf[at..][..self.q], row(r));
                        }
                        self.join_grid(buf, plane);
                    }
                    Layout::Table { read } => {
                        plane.fill(T::ZERO);
                        for (r, read) in read.chunks_exact(self.q).enumerate() {
                            for (v, &i) in row(r).iter().zip(read) {
                                if i != PADDING {
                                    plane[i] += *v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// `f(ih, iw, at)` for each input row `ih` and column phase: `iw` the phase's first input
    /// column and `at` where that pixel sits in the grid layout's phases (the next pixels of the
    /// phase, `iw + stride, …`, follow it).
    fn grid_runs(&self, wq: usize, phase_len: usize, mut f: impl FnMut(usize, usize, usize)) {
        let [sh, sw] = self.c.stride;
        let [ph, pw] = self.c.padding;
        for ih in 0..self.c.height {
            let y = ih + ph;
            for b in 0..sw {
                // Input columns iw with (iw + pw) % sw == b, from the first.
                let iw = (b + sw - pw % sw) % sw;
                if iw < self.c.width {
                    f(
                        ih,
                        iw,
                        ((y % sh) * sw + b) * phase_len + (y / sh) * wq + (iw + pw) / sw,
                    );
                }
            }
        }
    }

    /// A plane padded with zeros and split into the grid layout's phases, into `buf`.
    fn split_grid<T: Element>(&self, plane: &[T], buf: &mut Vec<T>) {
        let Layout::Grid { wq, phase_len, .. } = self.layout else {
            unreachable!("grid layout")
        };
        let (w, sw) = (self.c.width, self.c.stride[1]);
        buf.clear();
        buf.resize(self.c.stride[0] * sw * phase_len, T::ZERO);
        if sw == 1 {
            self.grid_runs(wq, phase_len, |ih, _, at| {
                buf[at..at + w].copy_from_slice(&plane[ih * w..][..w]);
            });
        } else {
            self.grid_runs(wq, phase_len, |ih, iw, at| {
                let src = plane[ih * w..][..w].iter().skip(iw).step_by(sw);
                for (d, v) in buf[at..].iter_mut().zip(src) {
                    *d = *v;
                }
            });
        }
    }

    /// The adjoint of [`Plan::split_grid`] on the input's pixels: `plane` (overwritten) from
    /// the phases in `buf`.
    fn join_grid<T: Element>(&self, buf: &[T], plane: &mut [T]) {
        let Layout::Grid { wq, phase_len, .. } = self.layout else {
            unreachable!("grid layout")
        };
        let (w, sw) = (self.c.width, self.c.stride[1]);
        if sw == 1 {
            self.grid_runs(wq, phase_len, |ih, _, at| {
                plane[ih * w..][..w].copy_from_slice(&buf[at..at + w]);
            });
        } else {
            self.grid_runs(wq, phase_len, |ih, iw, at| {
                let dst = plane[ih * w..][..w].iter_mut().skip(iw).step_by(sw);
                for (d, v) in dst.zip(&buf[at..]) {
                    *d = *v;
                }
            });
        }
    }

    /// `f(a, b)` for each output row: where the `g` samples `[c, oh, ow]` (one after the
    /// other) hold it (`a`) and where the matrix `[c, g·q]` does (`b`).
    fn output_rows(&self, c: usize, g: usize, mut f: impl FnMut(usize, usize)) {
        let (gq, wq) = (g * self.q, self.q / self.oh);
        for s in 0..g {
            for ch in 0..c {
                for o in 0..self.oh {
                    f(
                        ((s * c + ch) * self.oh + o) * self.ow,
                        ch * gq + s * self.q + o * wq,
                    );
                }
            }
        }
    }

    /// The matrix `[c, g·q]` of `g` output-shaped samples `[c, oh, ow]`, zeros in the grid
    /// layout's extra columns.
    pub fn samples_to_matrix<T: Element>(
        &self,
        c: usize,
        g: usize,
        samples: &[T],
        matrix: &mut [T],
    ) {
        let wq = self.q / self.oh;
        self.output_rows(c, g, |a, b| {
            matrix[b..b + self.ow].copy_from_slice(&samples[a..a + self.ow]);
            matrix[b + self.ow..b + wq].fill(T::ZERO);
        });
    }

    /// The `g` output-shaped samples `[c, oh, ow]` of the matrix `[c, g·q]`.
    pub fn matrix_to_samples<T: Element>(
        &self,
        c: usize,
        g: usize,
        matrix: &[T],
        samples: &mut [T],
    ) {
        self.output_rows(c, g, |a, b| {
            samples[a..a + self.ow].copy_from_slice(&matrix[b..b + self.ow]);
        });
    }
}

/// `dst += src`, element by element.
fn add<T: Element>(dst: &mut [T], src: &[T]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d += *v;
    }
}
