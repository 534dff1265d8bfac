//! The patch matrix of a chunk of samples (im2col), its adjoint (col2im), and the output-shaped
//! matrices that go with it.
//!
//! The patch matrix has a row per weight column — input channel `ci`, kernel row `ki`, kernel
//! column `kj`, at `(ci·kh + ki)·kw + kj` — and `q` columns per sample, sample `s` of a chunk
//! at columns `s·q..(s+1)·q`. Two layouts of a sample's columns, chosen by shape:
//!
//! - **Rows** (`q = oh·ow`, one column per output pixel): each row of the matrix is copied an
//!   output row at a time, with the zeros of the padding written around the copy. Many short
//!   copies; used for small outputs.
//! - **Grid** (`q = oh·wq`): the input plane is padded with zeros once and split into its
//!   `stride_h × stride_w` phases (the rows `a, a + stride, …` and columns `b, b + stride, …`),
//!   each `wq` columns wide. Every kernel tap then reads one phase at a fixed offset, for every
//!   output pixel: a row of the matrix is *one* copy of `oh·wq` elements. An output row has
//!   `wq - ow` extra columns (a few pixels of the padding; `wq = ow` for 1×1 kernels), which the
//!   products compute and the output drops; the gradients put zeros in them. Used when the extra
//!   columns cost less than the copies they save.

use crate::{Conv2d, Element, COLUMNS, MIN_CHUNKS};
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
    Rows {
        /// For kernel row `ki` and output row `oh`, at `ki · oh_count + oh`: the input row
        /// read, if inside the input.
        rows: Vec<Option<usize>>,
        /// Width of a column phase of an input row: `⌈width / stride⌉`.
        phase_width: usize,
        /// For kernel column `kj`: see [`Column`].
        columns: Vec<Column>,
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

/// For a kernel column in the rows layout: the output columns `lo..hi` that read inside the
/// input, the column phase they read (input columns `phase, phase + stride, …` side by side)
/// and where in it the read starts.
#[derive(Clone, Copy)]
struct Column {
    lo: usize,
    hi: usize,
    phase: usize,
    start: usize,
}

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
            let row = |oh: usize, ki: usize| {
                let ih = (oh * sh + ki * dh) as isize - c.padding[0] as isize;
                (0..c.height as isize).contains(&ih).then_some(ih as usize)
            };
            // Output column `ow` reads input column `ow · stride + off` = `(ow + q) · stride + b`:
            // element `ow + q` of column phase `b`.
            let column = |kj: usize| {
                let sw = sw as isize;
                let off = (kj * dw) as isize - c.padding[1] as isize;
                let last = c.width as isize - 1 - off;
                let hi = if last < 0 {
                    0
                } else {
                    (last / sw + 1).min(ow as isize) as usize
                };
                let lo = if off >= 0 {
                    0
                } else {
                    ((-off + sw - 1) / sw) as usize
                };
                let lo = lo.min(hi);
                let start = if lo == hi {
                    0
                } else {
                    (lo as isize + off.div_euclid(sw)) as usize
                };
                Column {
                    lo,
                    hi,
                    phase: off.rem_euclid(sw) as usize,
                    start,
                }
            };
            let layout = Layout::Rows {
                rows: (0..c.kernel[0])
                    .flat_map(|ki| (0..oh).map(move |o| row(o, ki)))
                    .collect(),
                phase_width: c.width.div_ceil(sw),
                columns: (0..c.kernel[1]).map(column).collect(),
            };
            (oh * ow, layout)
        };
        let group = COLUMNS
            .div_ceil(q.max(1))
            .min(c.batch.div_ceil(MIN_CHUNKS))
            .max(1);
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
                    Layout::Rows {
                        rows,
                        phase_width,
                        columns,
                    } => {
                        let pw = *phase_width;
                        let phases: &[T] = if self.c.stride[1] == 1 {
                            plane
                        } else {
                            buf.resize(self.c.stride[1] * h * pw, T::ZERO);
                            split_columns(plane, (h, w, self.c.stride[1], pw), buf);
                            buf
                        };
                        for (r, (ki, kj)) in self.tap_indices().enumerate() {
                            let rows = &rows[ki * self.oh..][..self.oh];
                            let Column {
                                lo,
                                hi,
                                phase,
                                start,
                            } = columns[kj];
                            let phase = &phases[phase * h * pw..][..h * pw];
                            let dst = &mut cols[row(r)..][..self.q];
                            for (dst, ih) in dst.chunks_exact_mut(self.ow).zip(rows) {
                                match *ih {
                                    None => dst.fill(T::ZERO),
                                    Some(ih) => {
                                        dst[..lo].fill(T::ZERO);
                                        dst[hi..].fill(T::ZERO);
                                        dst[lo..hi]
                                            .copy_from_slice(&phase[ih * pw + start..][..hi - lo]);
                                    }
                                }
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
                    Layout::Rows {
                        rows,
                        phase_width,
                        columns,
                    } => {
                        let (pw, sw) = (*phase_width, self.c.stride[1]);
                        plane.fill(T::ZERO);
                        let phases: &mut [T] = if sw == 1 {
                            plane
                        } else {
                            buf.clear();
                            buf.resize(sw * h * pw, T::ZERO);
                            buf
                        };
                        for (r, (ki, kj)) in self.tap_indices().enumerate() {
                            let rows = &rows[ki * self.oh..][..self.oh];
                            let Column {
                                lo,
                                hi,
                                phase,
                                start,
                            } = columns[kj];
                            let phase = &mut phases[phase * h * pw..][..h * pw];
                            for (src, ih) in row(r).chunks_exact(self.ow).zip(rows) {
                                if let Some(ih) = *ih {
                                    add(&mut phase[ih * pw + start..][..hi - lo], &src[lo..hi]);
                                }
                            }
                        }
                        if sw != 1 {
                            join_columns(buf, (h, w, sw, pw), plane);
                        }
                    }
                }
            }
        }
    }

    /// `(ki, kj)` of each kernel tap, in the order of the patch matrix's rows.
    fn tap_indices(&self) -> impl Iterator<Item = (usize, usize)> {
        let [kh, kw] = self.c.kernel;
        (0..kh).flat_map(move |ki| (0..kw).map(move |kj| (ki, kj)))
    }

    /// Where input pixel `(ih, iw)` sits in the grid layout's phases.
    fn grid_index(&self, ih: usize, iw: usize, wq: usize, phase_len: usize) -> usize {
        let [sh, sw] = self.c.stride;
        let (y, x) = (ih + self.c.padding[0], iw + self.c.padding[1]);
        ((y % sh) * sw + x % sw) * phase_len + (y / sh) * wq + x / sw
    }

    /// A plane padded with zeros and split into the grid layout's phases, into `buf`.
    fn split_grid<T: Element>(&self, plane: &[T], buf: &mut Vec<T>) {
        let Layout::Grid { wq, phase_len, .. } = self.layout else {
            unreachable!("grid layout")
        };
        let (h, w) = (self.c.height, self.c.width);
        buf.clear();
        buf.resize(self.c.stride[0] * self.c.stride[1] * phase_len, T::ZERO);
        for ih in 0..h {
            let src = &plane[ih * w..][..w];
            if self.c.stride[1] == 1 {
                let at = self.grid_index(ih, 0, wq, phase_len);
                buf[at..at + w].copy_from_slice(src);
            } else {
                for (iw, v) in src.iter().enumerate() {
                    buf[self.grid_index(ih, iw, wq, phase_len)] = *v;
                }
            }
        }
    }

    /// The adjoint of [`Plan::split_grid`] on the input's pixels: `plane` (overwritten) from
    /// the phases in `buf`.
    fn join_grid<T: Element>(&self, buf: &[T], plane: &mut [T]) {
        let Layout::Grid { wq, phase_len, .. } = self.layout else {
            unreachable!("grid layout")
        };
        let (h, w) = (self.c.height, self.c.width);
        for ih in 0..h {
            let dst = &mut plane[ih * w..][..w];
            if self.c.stride[1] == 1 {
                let at = self.grid_index(ih, 0, wq, phase_len);
                dst.copy_from_slice(&buf[at..at + w]);
            } else {
                for (iw, d) in dst.iter_mut().enumerate() {
                    *d = buf[self.grid_index(ih, iw, wq, phase_len)];
                }
            }
        }
    }

    /// Where the `g` samples `[c, oh, ow]` (one after the other) and the matrix `[c, g·q]`
    /// hold each output row: (sample offset, matrix offset).
    fn output_rows(&self, c: usize, g: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (gq, wq) = (g * self.q, self.q / self.oh);
        (0..g).flat_map(move |s| {
            (0..c).flat_map(move |ch| {
                (0..self.oh).map(move |o| {
                    (
                        ((s * c + ch) * self.oh + o) * self.ow,
                        ch * gq + s * self.q + o * wq,
                    )
                })
            })
        })
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
        for (a, b) in self.output_rows(c, g) {
            matrix[b..b + self.ow].copy_from_slice(&samples[a..a + self.ow]);
            matrix[b + self.ow..b + wq].fill(T::ZERO);
        }
    }

    /// The `g` output-shaped samples `[c, oh, ow]` of the matrix `[c, g·q]`.
    pub fn matrix_to_samples<T: Element>(
        &self,
        c: usize,
        g: usize,
        matrix: &[T],
        samples: &mut [T],
    ) {
        for (a, b) in self.output_rows(c, g) {
            samples[a..a + self.ow].copy_from_slice(&matrix[b..b + self.ow]);
        }
    }
}

/// `dst += src`, element by element.
fn add<T: Element>(dst: &mut [T], src: &[T]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d += *v;
    }
}

/// The column phases of a plane `[h, w]` for a column stride `sw` (rows layout): phase `b`
/// holds columns `b, b + sw, b + 2·sw, …` of every row, `[sw, h, pw]` with `pw = ⌈w / sw⌉`.
fn split_columns<T: Element>(
    plane: &[T],
    (h, w, sw, pw): (usize, usize, usize, usize),
    phases: &mut [T],
) {
    for b in 0..sw {
        for ih in 0..h {
            let row = &plane[ih * w..][..w];
            let dst = &mut phases[(b * h + ih) * pw..][..pw];
            for (d, v) in dst.iter_mut().zip(row.iter().skip(b).step_by(sw)) {
                *d = *v;
            }
        }
    }
}

/// The adjoint of [`split_columns`]: the phases added back into the plane.
fn join_columns<T: Element>(
    phases: &[T],
    (h, w, sw, pw): (usize, usize, usize, usize),
    plane: &mut [T],
) {
    for b in 0..sw {
        for ih in 0..h {
            let row = &mut plane[ih * w..][..w];
            let src = &phases[(b * h + ih) * pw..][..pw];
            for (d, v) in row.iter_mut().skip(b).step_by(sw).zip(src) {
                *d += *v;
            }
        }
    }
}
