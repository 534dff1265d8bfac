//! Batch normalisation with the batch's statistics (training) and its gradients, for one rank:
//! per channel `c`, over the `M = batch · spatial` values of `x[:, c, :]`,
//! `y = γ·(x − μ)/√(σ² + ε) + β` with μ the mean and σ² the biased variance (PyTorch's
//! `BatchNorm2d` in training mode), and given `dy`, with `x̂ = (x − μ)/√(σ² + ε)`:
//! `dβ = Σ dy`, `dγ = Σ dy·x̂`, `dx = γ/√(σ² + ε) · (dy − dβ/M − x̂·dγ/M)`.
//!
//! Sums are taken in `f64` (eight partial sums a run, added in a fixed order: the result does
//! not depend on the threads). Statistics are computed channel by channel in parallel, the
//! element-wise passes sample by sample. Burn's autodiff, through the same formula written as
//! tensor operations, spends ~15 passes over the activations on what this does in four.

use crate::Element;
use rayon::prelude::*;

/// The shape of the input, `[batch, channels, spatial]` (spatial: the product of the
/// dimensions after the channel's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub batch: usize,
    pub channels: usize,
    pub spatial: usize,
}

impl Shape {
    fn len(&self) -> usize {
        self.batch * self.channels * self.spatial
    }

    /// The runs of channel `c` in a buffer of this shape, one a sample.
    fn runs<'a, T>(&self, v: &'a [T], c: usize) -> impl Iterator<Item = &'a [T]> + 'a {
        let (channels, spatial) = (self.channels, self.spatial);
        (0..self.batch).map(move |n| &v[(n * channels + c) * spatial..][..spatial])
    }
}

/// `Σ f(v)` over `v` in `f64`, eight partial sums.
fn sum<T: Element>(v: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = v.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|x| f(x.to_f64())).sum();
    for x in chunks {
        for i in 0..8 {
            acc[i] += f(x[i].to_f64());
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// `(Σ g, Σ g·(x − mean))` in `f64`, eight partial sums of each, in one pass.
fn gradient_sums<T: Element>(g: &[T], x: &[T], mean: f64) -> (f64, f64) {
    let (mut s, mut t) = ([0f64; 8], [0f64; 8]);
    let (cg, cx) = (g.chunks_exact(8), x.chunks_exact(8));
    let (rg, rx) = (cg.remainder(), cx.remainder());
    for (g, x) in cg.zip(cx) {
        for i in 0..8 {
            let g = g[i].to_f64();
            s[i] += g;
            t[i] += g * (x[i].to_f64() - mean);
        }
    }
    let (mut s, mut t) = (s.iter().sum::<f64>(), t.iter().sum::<f64>());
    for (g, x) in rg.iter().zip(rx) {
        s += g.to_f64();
        t += g.to_f64() * (x.to_f64() - mean);
    }
    (s, t)
}

/// `y = a[c]·x + b[c]` channel by channel, sample by sample in parallel.
fn affine<T: Element>(s: &Shape, x: &[T], a: &[T], b: &[T], y: &mut [T]) {
    let per = s.channels * s.spatial;
    y.par_chunks_mut(per.max(1))
        .zip(x.par_chunks(per.max(1)))
        .for_each(|(y, x)| {
            for c in 0..s.channels {
                let (a, b) = (a[c], b[c]);
                let r = c * s.spatial..(c + 1) * s.spatial;
                for (y, x) in y[r.clone()].iter_mut().zip(&x[r]) {
                    *y = a * *x + b;
                }
            }
        });
}

/// The statistics of a forward pass: each channel's mean and `1/√(σ² + ε)`, and its biased
/// variance.
#[derive(Clone, Debug, PartialEq)]
pub struct Statistics {
    pub mean: Vec<f64>,
    pub inv_std: Vec<f64>,
    pub var: Vec<f64>,
}

/// Normalise `x` into `y` with its own statistics, which are returned.
///
/// # Panics
/// When a buffer's length does not match `s`.
pub fn forward<T: Element>(
    s: &Shape,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    epsilon: f64,
    y: &mut [T],
) -> Statistics {
    assert_eq!(x.len(), s.len(), "batch norm {s:?}: input length");
    assert_eq!(y.len(), s.len(), "batch norm {s:?}: output length");
    assert!(
        gamma.len() == s.channels && beta.len() == s.channels,
        "batch norm {s:?}: γ, β"
    );
    let m = (s.batch * s.spatial) as f64;
    let (mean, var): (Vec<f64>, Vec<f64>) = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let mean = s.runs(x, c).map(|r| sum(r, |v| v)).sum::<f64>() / m;
            let m2: f64 = s
                .runs(x, c)
                .map(|r| sum(r, |v| (v - mean) * (v - mean)))
                .sum();
            (mean, if m > 0.0 { m2 / m } else { 0.0 })
        })
        .unzip();
    let inv_std: Vec<f64> = var.iter().map(|v| 1.0 / (v + epsilon).sqrt()).collect();
    // y = γ·inv_std·x + (β − γ·inv_std·μ)
    let a: Vec<T> = (0..s.channels)
        .map(|c| T::from_f64(gamma[c].to_f64() * inv_std[c]))
        .collect();
    let b: Vec<T> = (0..s.channels)
        .map(|c| T::from_f64(beta[c].to_f64() - gamma[c].to_f64() * inv_std[c] * mean[c]))
        .collect();
    affine(s, x, &a, &b, y);
    Statistics { mean, inv_std, var }
}

/// The gradients of [`forward`] given the output's gradient `dy`: the input's into `dx`
/// (overwritten), and γ's and β's, returned.
///
/// # Panics
/// When a buffer's length does not match `s`.
pub fn backward<T: Element>(
    s: &Shape,
    x: &[T],
    gamma: &[T],
    stats: &Statistics,
    dy: &[T],
    dx: &mut [T],
) -> (Vec<T>, Vec<T>) {
    assert!(
        x.len() == s.len() && dy.len() == s.len() && dx.len() == s.len(),
        "batch norm {s:?}: lengths"
    );
    assert!(
        gamma.len() == s.channels && stats.mean.len() == s.channels,
        "batch norm {s:?}: γ, statistics"
    );
    let m = (s.batch * s.spatial) as f64;
    // Σ dy and Σ dy·(x − μ), channel by channel.
    let (sum_dy, sum_dy_xc): (Vec<f64>, Vec<f64>) = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let mean = stats.mean[c];
            let runs = s.runs(dy, c).zip(s.runs(x, c));
            runs.fold((0.0, 0.0), |(a, b), (g, x)| {
                let (s, t) = gradient_sums(g, x, mean);
                (a + s, b + t)
            })
        })
        .unzip();
    // dx = k·dy − k·t·(x − μ) − k·Σ dy/M, with k = γ·inv_std and t = inv_std²·Σ dy·(x − μ)/M
    // (x − μ) first, as PyTorch does: no cancellation between large terms.
    let coefficients: Vec<[T; 4]> = (0..s.channels)
        .map(|c| {
            let (inv, mean) = (stats.inv_std[c], stats.mean[c]);
            let k = gamma[c].to_f64() * inv;
            let t = inv * inv * sum_dy_xc[c] / m;
            [k, -k * t, -k * sum_dy[c] / m, mean].map(T::from_f64)
        })
        .collect();
    let per = s.channels * s.spatial;
    dx.par_chunks_mut(per.max(1))
        .zip(dy.par_chunks(per.max(1)).zip(x.par_chunks(per.max(1))))
        .for_each(|(dx, (dy, x))| {
            for (c, &[a, b, d, mean]) in coefficients.iter().enumerate() {
                let r = c * s.spatial..(c + 1) * s.spatial;
                for ((dx, dy), x) in dx[r.clone()].iter_mut().zip(&dy[r.clone()]).zip(&x[r]) {
                    *dx = a * *dy + b * (*x - mean) + d;
                }
            }
        });
    let dgamma = (0..s.channels)
        .map(|c| T::from_f64(sum_dy_xc[c] * stats.inv_std[c]))
        .collect();
    let dbeta = sum_dy.iter().map(|v| T::from_f64(*v)).collect();
    (dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    //! Against the formulas evaluated directly in `f64`, and the gradients against finite
    //! differences of a loss.
    use super::*;

    fn data(n: usize, seed: usize) -> Vec<f64> {
        (0..n)
            .map(|i| (((i + seed) * 7919 % 1013) as f64 / 1013.0 - 0.3) * (1.0 + seed as f64))
            .collect()
    }

    #[test]
    fn forward_and_gradients_match_the_formulas() {
        let s = Shape {
            batch: 3,
            channels: 4,
            spatial: 13,
        };
        let (x, dy) = (data(s.len(), 1), data(s.len(), 2));
        let gamma = vec![0.5, 1.5, -2.0, 1.0];
        let beta = vec![0.1, -0.2, 0.3, 0.0];
        let eps = 1e-5;
        let mut y = vec![0.0; s.len()];
        let stats = forward(&s, &x, &gamma, &beta, eps, &mut y);
        let mut dx = vec![0.0; s.len()];
        let (dgamma, dbeta) = backward(&s, &x, &gamma, &stats, &dy, &mut dx);
        let m = (s.batch * s.spatial) as f64;
        for c in 0..s.channels {
            let idx: Vec<usize> = (0..s.batch)
                .flat_map(|n| (0..s.spatial).map(move |i| (n * s.channels + c) * s.spatial + i))
                .collect();
            let mean = idx.iter().map(|&i| x[i]).sum::<f64>() / m;
            let var = idx.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / m;
            let inv = 1.0 / (var + eps).sqrt();
            let xhat = |i: usize| (x[i] - mean) * inv;
            let db: f64 = idx.iter().map(|&i| dy[i]).sum();
            let dg: f64 = idx.iter().map(|&i| dy[i] * xhat(i)).sum();
            assert!((dbeta[c] - db).abs() < 1e-12 && (dgamma[c] - dg).abs() < 1e-12);
            assert!((stats.var[c] - var).abs() < 1e-12);
            for &i in &idx {
                assert!((y[i] - (gamma[c] * xhat(i) + beta[c])).abs() < 1e-12);
                let want = gamma[c] * inv * (dy[i] - db / m - xhat(i) * dg / m);
                assert!((dx[i] - want).abs() < 1e-12, "dx[{i}]: {} vs {want}", dx[i]);
            }
        }
        // The input gradient against finite differences of L = Σ dy·y.
        let loss = |x: &[f64]| {
            let mut y = vec![0.0; s.len()];
            forward(&s, x, &gamma, &beta, eps, &mut y);
            y.iter().zip(&dy).map(|(y, g)| y * g).sum::<f64>()
        };
        for i in [0, 17, 100, s.len() - 1] {
            let (mut up, mut down) = (x.clone(), x.clone());
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let fd = (loss(&up) - loss(&down)) / 2e-6;
            assert!(
                (fd - dx[i]).abs() < 1e-6,
                "dx[{i}]: {} vs finite difference {fd}",
                dx[i]
            );
        }
    }

    #[test]
    fn results_do_not_depend_on_the_threads() {
        let s = Shape {
            batch: 5,
            channels: 6,
            spatial: 37,
        };
        let x: Vec<f32> = data(s.len(), 3).into_iter().map(|v| v as f32).collect();
        let dy: Vec<f32> = data(s.len(), 4).into_iter().map(|v| v as f32).collect();
        let (gamma, beta) = (vec![1.25f32; 6], vec![0.5f32; 6]);
        let run = |threads: usize| {
            crate::on_threads(threads, || {
                let (mut y, mut dx) = (vec![0f32; s.len()], vec![0f32; s.len()]);
                let stats = forward(&s, &x, &gamma, &beta, 1e-5, &mut y);
                let grads = backward(&s, &x, &gamma, &stats, &dy, &mut dx);
                (y, dx, grads)
            })
        };
        let one = run(1);
        assert!(run(3) == one);
    }
}
