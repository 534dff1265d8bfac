//! The parallel loader: worker threads decode and augment samples (the samples of one batch
//! spread over all workers), a bounded number of batches is prepared ahead, and each batch
//! holds one tensor per crop resolution.
//!
//! Every sample's randomness comes from [`Rng::for_sample`]`(seed, epoch, index)`, so a run is
//! reproducible whatever the number of workers. A corrupt or unreadable image is skipped
//! (its batch is one sample shorter), counted, and named once.

use super::dataset::Dataset;
use super::multicrop::{EvalTransform, MultiCrop};
use super::rng::Rng;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

/// What to produce from each image.
#[derive(Debug, Clone)]
pub enum Pipeline {
    /// SwAV multi-crop (pretraining).
    MultiCrop(MultiCrop),
    /// One crop for linear evaluation, with its normalisation.
    Eval {
        transform: EvalTransform,
        mean: [f32; 3],
        std: [f32; 3],
    },
}

impl Pipeline {
    /// `(side, crops per image)` per output tensor.
    pub fn groups(&self) -> Vec<(usize, usize)> {
        match self {
            Pipeline::MultiCrop(m) => m.groups(),
            Pipeline::Eval { transform, .. } => vec![(transform.size(), 1)],
        }
    }
}

/// Loader settings.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Worker threads (default: the number of cores).
    pub workers: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    pub shuffle: bool,
    pub drop_last: bool,
    pub seed: u64,
    /// `(p, parts)`: load only part `p` of every batch, the samples `[p·N/parts,
    /// (p+1)·N/parts)` of its `N` (a process's share of the global batch in a run of several
    /// processes); `(0, 1)` loads whole batches.
    pub part: (usize, usize),
}

/// Part `p` of `parts` of `n` consecutive items: `[p·n/parts, (p+1)·n/parts)`. A rank's shard
/// of a batch ([`Batch::split`]) and a process's part of a global batch (`LoaderConfig::part`)
/// are cut by this one rule, so that a process's part split among its ranks gives the shards
/// of the same ranks in one process.
pub fn part_range(n: usize, p: usize, parts: usize) -> std::ops::Range<usize> {
    p * n / parts..(p + 1) * n / parts
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 64,
            workers: thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            prefetch: 2,
            shuffle: true,
            drop_last: true,
            seed: 31,
            part: (0, 1),
        }
    }
}

/// One tensor of a batch: `count × batch` crops of `size`² pixels, crop-major
/// (all samples' first crop, then all samples' second crop, ...), each 3×size×size.
#[derive(Debug, Clone)]
pub struct CropBatch {
    pub size: usize,
    pub count: usize,
    pub data: Vec<f32>,
}

impl CropBatch {
    /// NCHW shape of the whole tensor.
    pub fn shape(&self, batch: usize) -> [usize; 4] {
        [self.count * batch, 3, self.size, self.size]
    }
}

/// A batch ready for the model.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Position of the batch in its epoch.
    pub index: usize,
    /// One tensor per crop resolution.
    pub crops: Vec<CropBatch>,
    /// Labels (ImageFolder), in sample order.
    pub labels: Vec<Option<usize>>,
    /// Dataset indices of the samples.
    pub samples: Vec<usize>,
}

impl Batch {
    /// Number of samples (smaller than the batch size only when images were skipped or at the end).
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Split into `parts` batches of consecutive samples (data-parallel ranks' shards): part `w`
    /// holds samples [`part_range`]`(n, w, parts)`, each crop tensor still crop-major.
    pub fn split(self, parts: usize) -> Vec<Batch> {
        let n = self.len();
        (0..parts)
            .map(|w| {
                let std::ops::Range { start, end } = part_range(n, w, parts);
                let crops = self
                    .crops
                    .iter()
                    .map(|c| {
                        let px = 3 * c.size * c.size;
                        let mut data = Vec::with_capacity(c.count * (end - start) * px);
                        for k in 0..c.count {
                            data.extend_from_slice(
                                &c.data[(k * n + start) * px..(k * n + end) * px],
                            );
                        }
                        CropBatch {
                            size: c.size,
                            count: c.count,
                            data,
                        }
                    })
                    .collect();
                Batch {
                    index: self.index,
                    crops,
                    labels: self.labels[start..end].to_vec(),
                    samples: self.samples[start..end].to_vec(),
                }
            })
            .collect()
    }
}

struct Job {
    batch: usize,
    slot: usize,
    sample: usize,
}

type Crops = Vec<Vec<f32>>;

struct Done {
    batch: usize,
    slot: usize,
    sample: usize,
    result: Result<Crops, String>,
}

struct Queue {
    jobs: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
}

/// Images that could not be read, each once, in the order they were met (so that "the
/// entries after the first `n`" are exactly the ones not reported yet).
#[derive(Debug, Default)]
pub struct SkipLog {
    entries: Vec<(String, String)>,
    seen: HashSet<String>,
}

impl SkipLog {
    /// Record `path` with its error, unless it is recorded already.
    pub fn record(&mut self, path: String, error: String) {
        if self.seen.insert(path.clone()) {
            self.entries.push((path, error));
        }
    }

    /// Number of images recorded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// `(path, error)` of the images recorded after the first `n`.
    pub fn since(&self, n: usize) -> &[(String, String)] {
        &self.entries[n.min(self.entries.len())..]
    }
}

/// One epoch's iterator over batches.
pub struct Loader {
    dataset: Arc<Dataset>,
    groups: Vec<(usize, usize)>,
    batch_size: usize,
    part: (usize, usize),
    order: Vec<usize>,
    batches: usize,
    next_out: usize,
    next_in: usize,
    prefetch: usize,
    queue: Arc<Queue>,
    results: mpsc::Receiver<Done>,
    pending: HashMap<usize, BTreeMap<usize, (usize, Crops)>>,
    expected: HashMap<usize, usize>,
    workers: Vec<thread::JoinHandle<()>>,
    /// Images that could not be read: path → error (each reported once).
    pub skipped: Arc<Mutex<SkipLog>>,
    reported: usize,
}

impl Loader {
    /// Start loading epoch `epoch` of `dataset`.
    pub fn new(
        dataset: Arc<Dataset>,
        pipeline: Pipeline,
        cfg: &LoaderConfig,
        epoch: u64,
    ) -> Loader {
        let n = dataset.len();
        let mut order: Vec<usize> = (0..n).collect();
        if cfg.shuffle {
            Rng::for_sample(cfg.seed, epoch, u64::MAX).shuffle(&mut order);
        }
        let bs = cfg.batch_size.max(1);
        let batches = if cfg.drop_last {
            n / bs
        } else {
            n.div_ceil(bs)
        };
        let queue = Arc::new(Queue {
            jobs: Mutex::new((VecDeque::new(), false)),
            ready: Condvar::new(),
        });
        let (tx, rx) = mpsc::channel();
        let pipeline = Arc::new(pipeline);
        let workers = (0..cfg.workers.max(1))
            .map(|_| {
                let (queue, tx, dataset, pipeline) =
                    (queue.clone(), tx.clone(), dataset.clone(), pipeline.clone());
                let seed = cfg.seed;
                thread::spawn(move || worker(&queue, &tx, &dataset, &pipeline, seed, epoch))
            })
            .collect();
        let groups = pipeline.groups();
        let mut l = Loader {
            dataset,
            groups,
            batch_size: bs,
            part: if cfg.part.1 == 0 || cfg.part.0 >= cfg.part.1 {
                (0, 1)
            } else {
                cfg.part
            },
            order,
            batches,
            next_out: 0,
            next_in: 0,
            prefetch: cfg.prefetch.max(1),
            queue,
            results: rx,
            pending: HashMap::new(),
            expected: HashMap::new(),
            workers,
            skipped: Arc::new(Mutex::new(SkipLog::default())),
            reported: 0,
        };
        l.fill();
        l
    }

    /// Number of batches in the epoch.
    pub fn len(&self) -> usize {
        self.batches
    }

    /// Whether the epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.batches == 0
    }

    /// Queue the samples of batches up to `prefetch` ahead of the consumer.
    fn fill(&mut self) {
        let mut q = self.queue.jobs.lock().expect("queue lock");
        while self.next_in < self.batches && self.next_in < self.next_out + self.prefetch {
            let b = self.next_in;
            let first = b * self.batch_size;
            let last = ((b + 1) * self.batch_size).min(self.order.len());
            let (p, parts) = self.part;
            let mine = part_range(last - first, p, parts);
            let (start, end) = (first + mine.start, first + mine.end);
            for (slot, &sample) in self.order[start..end].iter().enumerate() {
                q.0.push_back(Job {
                    batch: b,
                    slot,
                    sample,
                });
            }
            self.expected.insert(b, end - start);
            self.next_in += 1;
        }
        drop(q);
        self.queue.ready.notify_all();
    }

    /// Newly skipped images since the last call (for logging each once).
    pub fn take_new_skips(&mut self) -> Vec<(String, String)> {
        let s = self.skipped.lock().expect("skip lock");
        let new = s.since(self.reported).to_vec();
        self.reported = s.len();
        new
    }

    fn assemble(&mut self, b: usize) -> Batch {
        let parts = self.pending.remove(&b).unwrap_or_default();
        self.expected.remove(&b);
        let n = parts.len();
        let mut crops: Vec<CropBatch> = self
            .groups
            .iter()
            .map(|&(size, count)| CropBatch {
                size,
                count,
                data: vec![0.0; count * n * 3 * size * size],
            })
            .collect();
        let mut labels = Vec::with_capacity(n);
        let mut samples = Vec::with_capacity(n);
        for (i, (_, (sample, data))) in parts.into_iter().enumerate() {
            for (g, cb) in crops.iter_mut().enumerate() {
                let plane = 3 * cb.size * cb.size;
                for k in 0..cb.count {
                    let dst = (k * n + i) * plane;
                    cb.data[dst..dst + plane].copy_from_slice(&data[g][k * plane..(k + 1) * plane]);
                }
            }
            labels.push(self.dataset.samples[sample].label);
            samples.push(sample);
        }
        Batch {
            index: b,
            crops,
            labels,
            samples,
        }
    }
}

impl Iterator for Loader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next_out >= self.batches {
            return None;
        }
        let b = self.next_out;
        loop {
            let have = self.pending.get(&b).map_or(0, |m| m.len());
            if have >= self.expected.get(&b).copied().unwrap_or(0) {
                break;
            }
            let done = self.results.recv().expect("loader workers stopped");
            match done.result {
                Ok(crops) => {
                    self.pending
                        .entry(done.batch)
                        .or_default()
                        .insert(done.slot, (done.sample, crops));
                }
                Err(e) => {
                    // Skipped: recorded once by path, and the batch waits for one sample less.
                    let path = self.dataset.samples[done.sample].path.display().to_string();
                    self.skipped.lock().expect("skip lock").record(path, e);
                    if let Some(e) = self.expected.get_mut(&done.batch) {
                        *e -= 1;
                    }
                }
            }
        }
        let batch = self.assemble(b);
        self.next_out += 1;
        self.fill();
        Some(batch)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if let Ok(mut q) = self.queue.jobs.lock() {
            q.0.clear();
            q.1 = true;
        }
        self.queue.ready.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A file whose decoding panics, for tests of the loader's recovery.
static PANIC_ON: Mutex<Option<std::path::PathBuf>> = Mutex::new(None);

/// Make decoding `path` panic (`None`: nothing does); tests only.
#[doc(hidden)]
pub fn inject_decoder_panic(path: Option<std::path::PathBuf>) {
    *PANIC_ON.lock().unwrap_or_else(|e| e.into_inner()) = path;
}

fn injected_panic(path: &std::path::Path) -> bool {
    PANIC_ON
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_deref()
        == Some(path)
}

fn worker(
    queue: &Queue,
    tx: &mpsc::Sender<Done>,
    dataset: &Dataset,
    pipeline: &Pipeline,
    seed: u64,
    epoch: u64,
) {
    let mut resizer = fast_image_resize::Resizer::new();
    let groups = pipeline.groups();
    loop {
        let job = {
            let mut q = queue.jobs.lock().expect("queue lock");
            loop {
                if q.1 {
                    return;
                }
                if let Some(j) = q.0.pop_front() {
                    break j;
                }
                q = queue.ready.wait(q).expect("queue lock");
            }
        };
        let sample = &dataset.samples[job.sample];
        let mut rng = Rng::for_sample(seed, epoch, job.sample as u64);
        let mut out: Crops = groups
            .iter()
            .map(|&(s, c)| vec![0.0; c * 3 * s * s])
            .collect();
        // A panic in a decoder (third-party code) skips the image like a corrupt one, instead
        // of ending the worker and leaving the loader waiting for its samples.
        let decode = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if injected_panic(&sample.path) {
                panic!("injected decoder panic");
            }
            std::fs::read(&sample.path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    let mut views: Vec<&mut [f32]> =
                        out.iter_mut().map(|v| v.as_mut_slice()).collect();
                    match pipeline {
                        Pipeline::MultiCrop(m) => {
                            m.apply(&bytes, &mut rng, &mut resizer, &mut views)
                        }
                        Pipeline::Eval {
                            transform,
                            mean,
                            std,
                        } => transform.apply(&bytes, *mean, *std, &mut rng, &mut resizer, views[0]),
                    }
                    .map_err(|e| e.to_string())
                })
        }));
        let result = decode.unwrap_or_else(|p| {
            resizer = fast_image_resize::Resizer::new();
            Err(crate::report::panic_message(p.as_ref())
                .replace("panicked", "the decoder panicked"))
        });
        let result = result.map(|()| out);
        if tx
            .send(Done {
                batch: job.batch,
                slot: job.slot,
                sample: job.sample,
                result,
            })
            .is_err()
        {
            return;
        }
    }
}
