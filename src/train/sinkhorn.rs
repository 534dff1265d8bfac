//! Sinkhorn-Knopp codes (facebookresearch/swav `main_swav.py`, `distributed_sinkhorn`).
//!
//! [`codes`] is what training runs: on the device, in the backend's precision (f32), its sums
//! taken over every rank by the collective engine. [`host`] is the same computation on the
//! host in f64 over all ranks' rows put together: the oracle the device code is tested against.
//!
//! Both subtract the largest score over all rows first. It is one constant for every row of
//! every rank, so it cancels in the first normalisation (`Q / ΣQ`) and only keeps `exp` from
//! overflowing; a per-row shift would not cancel and would change the codes.

use crate::collective::{CollectiveError, Communicator};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Codes for this rank's scores `[R, K]` (rows: its queue's, then its batch's): `Q =
/// exp((scores − max) / ε)`, normalised to sum 1 over every rank's rows, then alternately each
/// prototype (column) to 1/K and each row to 1/B (B: rows of all ranks), `iterations` times;
/// returned as `[R, K]` with each row summing to 1 (`Q·B`). Collectives per call: one for the
/// maximum, one for the total and the row count, one per iteration for the column sums.
pub fn codes<B: Backend>(
    scores: Tensor<B, 2>,
    comm: &Communicator<B>,
    epsilon: f64,
    iterations: usize,
) -> Result<Tensor<B, 2>, CollectiveError> {
    let [rows, k] = scores.dims();
    let device = scores.device();
    let max = comm.all_reduce_max(scores.clone().max())?;
    let q = (scores - max.reshape([1, 1])).div_scalar(epsilon).exp();
    // [ΣQ, R] summed over ranks: the total and B.
    let local = Tensor::cat(
        vec![
            q.clone().sum(),
            Tensor::<B, 1>::from_floats([rows as f32], &device),
        ],
        0,
    );
    let sums = comm.all_reduce_sum(local)?;
    let total = sums.clone().narrow(0, 0, 1).reshape([1, 1]);
    let b = sums.narrow(0, 1, 1).reshape([1, 1]);
    let mut q = q / total;
    for _ in 0..iterations {
        // Each prototype sums to 1/K over every rank's rows.
        let columns = comm.all_reduce_sum(q.clone().sum_dim(0))?;
        q = q / columns.mul_scalar(k as f64);
        // Each row sums to 1/B.
        let row_sums = q.clone().sum_dim(1);
        q = q / (row_sums * b.clone());
    }
    Ok(q * b)
}

/// Sinkhorn-Knopp on the host in f64 for scores `[B, K]` (row-major), one rank's rows or every
/// rank's put together: the same computation as [`codes`], returned as f32.
pub fn host(scores: &[f32], b: usize, k: usize, epsilon: f64, iterations: usize) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut q: Vec<f64> = scores
        .iter()
        .map(|&s| ((s as f64 - max) / epsilon).exp())
        .collect();
    let total: f64 = q.iter().sum();
    q.iter_mut().for_each(|v| *v /= total);
    let mut columns = vec![0.0f64; k];
    for _ in 0..iterations {
        // Each prototype (a column of [B, K]) sums to 1/K.
        columns.iter_mut().for_each(|c| *c = 0.0);
        for row in q.chunks_exact(k) {
            columns.iter_mut().zip(row).for_each(|(c, v)| *c += v);
        }
        for row in q.chunks_exact_mut(k) {
            row.iter_mut()
                .zip(&columns)
                .for_each(|(v, c)| *v /= c * k as f64);
        }
        // Each sample (a row) sums to 1/B.
        for row in q.chunks_exact_mut(k) {
            let s: f64 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s * b as f64);
        }
    }
    q.iter().map(|v| (v * b as f64) as f32).collect()
}

/// Host codes for several ranks' rows at once (the sums run over every rank's rows, which is
/// one Sinkhorn over the rows put together); rank `w` gets the codes of its last `batches[w]`
/// rows (its images, after any queue rows).
pub fn host_joint(
    rows: &[Vec<f32>],
    k: usize,
    batches: &[usize],
    epsilon: f64,
    iterations: usize,
) -> Vec<Vec<f32>> {
    let all: Vec<f32> = rows.iter().flatten().copied().collect();
    let q = host(&all, all.len() / k, k, epsilon, iterations);
    let mut out = Vec::with_capacity(rows.len());
    let mut at = 0;
    for (r, &batch) in rows.iter().zip(batches) {
        let end = at + r.len();
        out.push(q[end - batch * k..end].to_vec());
        at = end;
    }
    out
}
