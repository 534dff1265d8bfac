//! Batches as Burn tensors on a device, moved there by a thread of their own so that the
//! next batch's upload overlaps the current step.
//!
//! Burn 0.21 exposes no page-locked ("pinned") host buffers: the upload is a plain copy from
//! the loader's buffer, done off the training thread.

use super::loader::{Batch, Loader};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use std::sync::mpsc;
use std::thread;

/// A batch on a device.
#[derive(Debug, Clone)]
pub struct DeviceBatch<B: Backend> {
    /// Position of the batch in its epoch.
    pub index: usize,
    /// One `[count·B, 3, s, s]` tensor per crop resolution.
    pub crops: Vec<Tensor<B, 4>>,
    /// Labels, when every sample has one.
    pub labels: Option<Tensor<B, 1, Int>>,
    /// Dataset indices of the samples.
    pub samples: Vec<usize>,
}

impl Batch {
    /// Move the batch's tensors to `device`.
    pub fn to_device<B: Backend>(self, device: &B::Device) -> DeviceBatch<B> {
        let n = self.samples.len();
        let crops = self
            .crops
            .into_iter()
            .map(|c| {
                let shape = c.shape(n);
                Tensor::from_data(TensorData::new(c.data, shape), device)
            })
            .collect();
        let labels = self
            .labels
            .iter()
            .map(|l| l.map(|v| v as i64))
            .collect::<Option<Vec<i64>>>()
            .map(|v| Tensor::from_data(TensorData::new(v, [n]), device));
        DeviceBatch {
            index: self.index,
            crops,
            labels,
            samples: self.samples,
        }
    }
}

/// A [`Loader`] whose batches arrive on a device, one batch uploaded ahead.
pub struct DeviceLoader<B: Backend> {
    rx: mpsc::Receiver<DeviceBatch<B>>,
    len: usize,
    handle: Option<thread::JoinHandle<()>>,
}

impl<B: Backend> DeviceLoader<B>
where
    B::Device: Send + 'static,
{
    /// Upload `loader`'s batches to `device`.
    pub fn new(loader: Loader, device: B::Device) -> Self {
        let len = loader.len();
        Self::from_batches(loader, len, device)
    }

    /// Upload the batches `batches` gives (`len` of them, or fewer) to `device`.
    pub fn from_batches(
        batches: impl Iterator<Item = Batch> + Send + 'static,
        len: usize,
        device: B::Device,
    ) -> Self {
        let (tx, rx) = mpsc::sync_channel(1);
        let handle = thread::spawn(move || {
            for b in batches {
                if tx.send(b.to_device::<B>(&device)).is_err() {
                    return;
                }
            }
        });
        DeviceLoader {
            rx,
            len,
            handle: Some(handle),
        }
    }

    /// Number of batches in the epoch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<B: Backend> Iterator for DeviceLoader<B> {
    type Item = DeviceBatch<B>;

    fn next(&mut self) -> Option<DeviceBatch<B>> {
        self.rx.recv().ok()
    }
}

impl<B: Backend> Drop for DeviceLoader<B> {
    fn drop(&mut self) {
        // Unblock the uploader (its send fails once the receiver is gone), then join it.
        let (_, dead) = mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
