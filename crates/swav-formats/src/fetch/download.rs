//! One URL into one partial file: resumable, retried, never saving an HTML page as weights.
//!
//! - Resume: `Range: bytes=N-` with `If-Range` (the ETag or Last-Modified recorded in the
//!   sidecar); a `206` must start at N, a `200` means the server sent the whole file again
//!   and the partial file restarts from zero. Without a validator nothing is resumed.
//! - Retries with exponential backoff on connect errors, timeouts, 408, 429 and 5xx,
//!   honouring `Retry-After`; a failure in the middle of the body resumes from what arrived.
//!   An attempt whose bytes reached past the furthest byte received so far does not count
//!   against the limit; one that breaks at the same point again does.
//! - Timeouts: connect, and per read (never a total deadline for big files).
//! - `Accept-Encoding: identity`: weights are not compressed in transit.
//! - HTML (by `Content-Type` or by the first bytes) is classified: Drive's warning page is
//!   followed, quota / sign-in / not-found pages are named errors.

use super::cache::{self, Sidecar};
use super::html::{self, Page};
use super::FetchError;
use crate::report::Reporter;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

/// Network behaviour.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed for any one read (headers or a piece of the body) to make progress. Time
    /// spent writing a piece to disk counts against the next read, so a disk that stalls
    /// longer than this ends the attempt, which then resumes.
    pub read_timeout: Duration,
    /// Failed attempts allowed per URL before trying the next mirror.
    pub retries: u32,
    /// First backoff; doubles each retry.
    pub retry_wait: Duration,
    /// Longest wait, whatever `Retry-After` asks.
    pub max_wait: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            retries: 5,
            retry_wait: Duration::from_secs(1),
            max_wait: Duration::from_secs(120),
        }
    }
}

/// Most Drive confirmation pages followed for one file.
pub const MAX_CONFIRM_HOPS: usize = 3;
/// Most bytes of an HTML answer read to classify it.
pub const MAX_HTML: u64 = 1 << 20;
/// Body bytes between sidecar updates.
const SIDECAR_EVERY: u64 = 64 << 20;
/// Body bytes handed to the hashing thread at a time.
const BODY_BUFFER: usize = 1 << 20;
/// Batches of [`BODY_BUFFER`] bytes waiting for the hashing thread at most: how far receiving
/// may run ahead of hashing.
const HASH_QUEUE: usize = 4;

/// The HTTP client, and a runtime that drives it on the calling thread: a body is written and
/// hashed straight from the buffers hyper received it into, with no copy into a buffer of
/// ours and no hand-over between threads (reqwest's blocking client does both).
pub struct Http {
    client: reqwest::Client,
    /// Always set; taken only when dropped.
    rt: Option<tokio::runtime::Runtime>,
}

impl Http {
    /// Run `work` to completion on the runtime.
    fn run<F: std::future::Future>(&self, work: F) -> F::Output {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the client")
            .block_on(work)
    }
}

/// Build the HTTP client.
pub fn client(opts: &HttpOptions) -> Result<Http, FetchError> {
    let failed = |e: &dyn std::fmt::Display| FetchError::Network {
        url: String::new(),
        message: format!("cannot build the HTTP client: {e}"),
    };
    // rustls needs a process-wide crypto provider; ring is the one compiled in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(&e))?;
    let client = {
        let _in_runtime = rt.enter();
        reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .user_agent(concat!("swav-fetch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| failed(&e))?
    };
    Ok(Http {
        client,
        rt: Some(rt),
    })
}

impl Drop for Http {
    fn drop(&mut self) {
        // Nothing of ours runs on the runtime once a download returns; do not wait for a
        // resolver thread that may still be blocked.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// What a finished download produced.
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// Size of the file.
    pub size: u64,
    /// Its SHA-256 (hex).
    pub sha256: String,
    /// The final URL (after Drive's confirmation).
    pub url: String,
    /// Bytes this process received over the network.
    pub received: u64,
    /// Where the partial file stood when this process started on it.
    pub resumed_from: u64,
}

enum Outcome {
    Done,
    Retry {
        wait: Option<Duration>,
        why: String,
        /// How far into the file this attempt's bytes reached.
        reached: u64,
    },
    Follow(String),
}

/// Download `url` into `part` (resuming what `sidecar` describes), hashing as it goes.
pub fn download(
    http: &Http,
    url: &str,
    part: &Path,
    mut sidecar: Option<Sidecar>,
    opts: &HttpOptions,
    report: &Reporter,
) -> Result<Downloaded, FetchError> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(part)
        .map_err(|e| io_err(part, e))?;
    let mut url = url.to_string();
    if sidecar
        .as_ref()
        .is_some_and(|s| s.url != url && !same_origin_redirect(&url, &s.url))
    {
        sidecar = None;
    }
    if let Some(sc) = &sidecar {
        // A resume re-sends from the confirmed URL the sidecar recorded.
        url = sc.url.clone();
    }
    let mut state = State {
        hasher: Sha256::new(),
        hashed: 0,
        received: 0,
        resumed_from: 0,
        sidecar: sidecar.unwrap_or_default(),
    };
    let start_len = file.metadata().map_err(|e| io_err(part, e))?.len();
    if state.sidecar.etag.is_none() && state.sidecar.last_modified.is_none() {
        // Nothing to validate a resume with: start over.
        file.set_len(0).map_err(|e| io_err(part, e))?;
    } else {
        state.resumed_from = start_len;
    }
    let mut failures = 0u32;
    let mut furthest = start_len;
    let mut hops = 0usize;
    loop {
        match attempt(http, &url, &mut file, part, &mut state, report)? {
            Outcome::Done => break,
            Outcome::Follow(next) => {
                hops += 1;
                if hops > MAX_CONFIRM_HOPS {
                    return Err(FetchError::Html {
                        url,
                        title: "Google Drive kept answering with a confirmation page".into(),
                    });
                }
                report.event("follow", &[("url", &next)]);
                url = next;
            }
            Outcome::Retry { wait, why, reached } => {
                // Only bytes past the furthest ever received are progress: a server that
                // breaks at the same point on every attempt, or answers a range request with
                // the same first bytes each time, runs out of attempts.
                if reached > furthest {
                    furthest = reached;
                    failures = 0;
                }
                failures += 1;
                if failures > opts.retries {
                    return Err(FetchError::Network {
                        url,
                        message: format!("{why} (gave up after {} attempts)", opts.retries + 1),
                    });
                }
                let backoff = opts.retry_wait.saturating_mul(1 << (failures - 1).min(16));
                let wait = wait.unwrap_or(backoff).min(opts.max_wait);
                let have = file.metadata().map(|m| m.len()).unwrap_or(0);
                report.event(
                    "retry",
                    &[
                        ("url", &url),
                        ("why", &why),
                        ("attempt", &(failures + 1).to_string()),
                        ("wait_ms", &wait.as_millis().to_string()),
                        ("have", &have.to_string()),
                    ],
                );
                std::thread::sleep(wait);
            }
        }
    }
    let size = file.metadata().map_err(|e| io_err(part, e))?.len();
    if let Some(total) = state.sidecar.total {
        if size != total {
            return Err(FetchError::Size {
                url,
                expected: total,
                got: size,
            });
        }
    }
    file.sync_all().map_err(|e| io_err(part, e))?;
    Ok(Downloaded {
        size,
        sha256: crate::digest::encode(&state.hasher.finalize()),
        url,
        received: state.received,
        resumed_from: state.resumed_from,
    })
}

/// A Drive download URL and its confirmed form share the file id; resuming the confirmed one
/// is right when the registry gives the unconfirmed one.
fn same_origin_redirect(asked: &str, recorded: &str) -> bool {
    let id = |u: &str| {
        reqwest::Url::parse(u).ok().and_then(|u| {
            u.query_pairs()
                .find(|(k, _)| k == "id")
                .map(|(_, v)| v.into_owned())
        })
    };
    id(asked).is_some() && id(asked) == id(recorded)
}

struct State {
    hasher: Sha256,
    hashed: u64,
    received: u64,
    resumed_from: u64,
    sidecar: Sidecar,
}

fn io_err(path: &Path, e: io::Error) -> FetchError {
    FetchError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Make the hash cover exactly the first `len` bytes of the file.
fn rehash(file: &mut File, part: &Path, st: &mut State, len: u64) -> Result<(), FetchError> {
    if st.hashed == len {
        return Ok(());
    }
    st.hasher = Sha256::new();
    st.hashed = 0;
    file.seek(SeekFrom::Start(0)).map_err(|e| io_err(part, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = file
            .read(&mut buf[..left.min(1 << 20) as usize])
            .map_err(|e| io_err(part, e))?;
        if n == 0 {
            return Err(io_err(
                part,
                io::Error::new(io::ErrorKind::UnexpectedEof, "partial file shrank"),
            ));
        }
        st.hasher.update(&buf[..n]);
        left -= n as u64;
    }
    st.hashed = len;
    Ok(())
}

fn retryable(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || (500..600).contains(&status)
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn header(resp: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL).
fn content_range(resp: &reqwest::Response) -> Option<(u64, Option<u64>)> {
    let v = header(resp, reqwest::header::CONTENT_RANGE)?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

fn attempt(
    http: &Http,
    url: &str,
    file: &mut File,
    part: &Path,
    st: &mut State,
    report: &Reporter,
) -> Result<Outcome, FetchError> {
    let have = file.metadata().map_err(|e| io_err(part, e))?.len();
    let validator = st
        .sidecar
        .etag
        .clone()
        .or_else(|| st.sidecar.last_modified.clone());
    let resuming = have > 0 && validator.is_some();
    if have > 0 && !resuming {
        file.set_len(0).map_err(|e| io_err(part, e))?;
    }
    let mut req = http
        .client
        .get(url)
        .header(reqwest::header::ACCEPT_ENCODING, "identity");
    if resuming {
        req = req
            .header(reqwest::header::RANGE, format!("bytes={have}-"))
            .header(
                reqwest::header::IF_RANGE,
                validator.clone().unwrap_or_default(),
            );
    }
    let mut resp = match http.run(async move { req.send().await }) {
        Ok(r) => r,
        Err(e) => {
            return Ok(Outcome::Retry {
                wait: None,
                why: describe(&e),
                reached: 0,
            })
        }
    };
    let status = resp.status().as_u16();
    let mut offset = 0u64;
    match status {
        200 => {
            if resuming {
                report.event(
                    "restart",
                    &[
                        ("url", url),
                        (
                            "reason",
                            "server sent the whole file (200) to a range request",
                        ),
                    ],
                );
            }
            file.set_len(0).map_err(|e| io_err(part, e))?;
        }
        206 if resuming => match content_range(&resp) {
            Some((start, _)) if start == have => offset = have,
            _ => {
                // A range that does not continue the file: start over.
                file.set_len(0).map_err(|e| io_err(part, e))?;
                st.sidecar = Sidecar::default();
                return Ok(Outcome::Retry {
                    wait: Some(Duration::ZERO),
                    why: "server answered a different range".into(),
                    reached: 0,
                });
            }
        },
        416 if resuming => {
            if st.sidecar.total == Some(have) {
                rehash(file, part, st, have)?;
                return Ok(Outcome::Done);
            }
            file.set_len(0).map_err(|e| io_err(part, e))?;
            st.sidecar = Sidecar::default();
            return Ok(Outcome::Retry {
                wait: Some(Duration::ZERO),
                why: "range not satisfiable".into(),
                reached: 0,
            });
        }
        s if retryable(s) => {
            return Ok(Outcome::Retry {
                wait: retry_after(&resp),
                why: format!("HTTP {s}"),
                reached: 0,
            })
        }
        s => {
            return Err(FetchError::Http {
                url: url.to_string(),
                status: s,
            })
        }
    }
    let content_type = header(&resp, reqwest::header::CONTENT_TYPE).unwrap_or_default();
    let total = match status {
        206 => content_range(&resp).and_then(|(_, t)| t),
        _ => header(&resp, reqwest::header::CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
    };
    let mut first = Received::default();
    if offset == 0 {
        // Sniff the start of the body: an HTML page is never weights, whatever its type says.
        first = read_upto(http, &mut resp, Received::default(), 512);
        let start = first.joined(512);
        if content_type.to_ascii_lowercase().contains("text/html")
            || crate::checkpoint::sniff::looks_like_html(&start)
        {
            let page = read_upto(http, &mut resp, first, MAX_HTML as usize).joined(usize::MAX);
            let text = String::from_utf8_lossy(&page);
            let url = url.to_string();
            return match html::classify(&text, &url) {
                Page::Confirm(next) => Ok(Outcome::Follow(next)),
                Page::Quota => Err(FetchError::Quota { url }),
                Page::SignIn => Err(FetchError::SignIn { url }),
                Page::NotFound => Err(FetchError::NotFound { url }),
                Page::Other(title) => Err(FetchError::Html { url, title }),
            };
        }
    }
    // The response is the file (or its continuation): record how to resume it.
    st.sidecar = Sidecar {
        url: url.to_string(),
        etag: header(&resp, reqwest::header::ETAG).filter(|e| !e.starts_with("W/")),
        last_modified: header(&resp, reqwest::header::LAST_MODIFIED),
        total,
        bytes: offset,
    };
    cache::write_sidecar(part, &st.sidecar).map_err(|e| io_err(part, e))?;
    rehash(file, part, st, offset)?;
    if offset > 0 {
        st.resumed_from = st.resumed_from.max(offset);
        report.event("resume", &[("url", url), ("offset", &offset.to_string())]);
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| io_err(part, e))?;
    let bar = report.start_bar(total, offset, super::BAR);
    let mut hashing = Hashing::start(std::mem::take(&mut st.hasher));
    let body = receive(
        http,
        &mut resp,
        first,
        &*file,
        &mut hashing,
        |n, written| {
            bar.inc(n);
            st.hashed += n;
            st.received += n;
            if written / SIDECAR_EVERY != (written - n) / SIDECAR_EVERY {
                st.sidecar.bytes = written;
                cache::write_sidecar(part, &st.sidecar).ok();
            }
        },
        offset,
    );
    st.hasher = hashing.finish().map_err(|e| io_err(part, e))?;
    let written = match body {
        Ok(written) => written,
        Err(Stopped::Write(e)) => return Err(io_err(part, e)),
        Err(Stopped::Broke { written, error }) => {
            st.sidecar.bytes = written;
            cache::write_sidecar(part, &st.sidecar).ok();
            return Ok(Outcome::Retry {
                wait: None,
                why: format!("connection broke after {written} bytes: {error}"),
                reached: written,
            });
        }
    };
    report.finish_bar();
    if let Some(t) = total {
        if written < t {
            return Ok(Outcome::Retry {
                wait: None,
                why: format!("body ended after {written} of {t} bytes"),
                reached: written,
            });
        }
    }
    Ok(Outcome::Done)
}

/// Body bytes received before the body proper is written (the start that was sniffed), and
/// the error that ended them, if one did.
#[derive(Default)]
struct Received {
    chunks: Vec<bytes::Bytes>,
    len: usize,
    /// The body ended within them.
    ended: bool,
    error: Option<reqwest::Error>,
}

impl Received {
    /// At most `max` of the bytes, in one piece.
    fn joined(&self, max: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len.min(max));
        for c in &self.chunks {
            out.extend_from_slice(&c[..c.len().min(max - out.len())]);
        }
        out
    }
}

/// Read more of `resp` into `got` until it holds `max` bytes, the body ends or it fails.
fn read_upto(http: &Http, resp: &mut reqwest::Response, mut got: Received, max: usize) -> Received {
    while got.len < max && got.error.is_none() && !got.ended {
        match http.run(async { resp.chunk().await }) {
            Ok(Some(c)) => {
                got.len += c.len();
                got.chunks.push(c);
            }
            Ok(None) => got.ended = true,
            Err(e) => got.error = Some(e),
        }
    }
    got
}

/// How receiving a body stopped short.
enum Stopped {
    /// The file could not be written.
    Write(io::Error),
    /// The connection broke; `written` bytes of the file are on disk and hashed.
    Broke { written: u64, error: String },
}

/// Receive the body into `file` from `offset` on (`first`: what was read of it already),
/// writing each chunk as it arrives and handing the hashing thread about a [`BODY_BUFFER`] of
/// them at a time, and telling `progress` each chunk's size and the file's length. Write-back
/// to disk starts every [`crate::atomic::WRITEBACK_EVERY`] bytes, so the final `fsync` has
/// little left to do. Returns the file's length.
fn receive(
    http: &Http,
    resp: &mut reqwest::Response,
    first: Received,
    mut file: &File,
    hashing: &mut Hashing,
    mut progress: impl FnMut(u64, u64),
    offset: u64,
) -> Result<u64, Stopped> {
    let mut written = offset;
    let mut writeback = crate::atomic::Writeback::default();
    let mut batch = Vec::new();
    let mut batched = 0;
    let mut next = first.chunks.into_iter();
    let mut error = first.error;
    loop {
        let chunk = match next.next() {
            Some(c) => c,
            None if error.is_some() || first.ended => break,
            None => match http.run(async { resp.chunk().await }) {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            },
        };
        if let Err(e) = file.write_all(&chunk) {
            // What is on disk stays hashed, as after a broken connection.
            hashing.feed(batch);
            return Err(Stopped::Write(e));
        }
        let n = chunk.len() as u64;
        written += n;
        writeback.wrote(file, n);
        progress(n, written);
        batched += chunk.len();
        batch.push(chunk);
        if batched >= BODY_BUFFER {
            hashing.feed(std::mem::take(&mut batch));
            batched = 0;
        }
    }
    hashing.feed(batch);
    match error {
        Some(e) => Err(Stopped::Broke {
            written,
            error: describe(&e),
        }),
        None => Ok(written),
    }
}

/// SHA-256 on a thread of its own, fed the body's chunks as they are written: hashing a fast
/// download overlaps receiving it instead of following it.
struct Hashing {
    to: Option<std::sync::mpsc::SyncSender<Vec<bytes::Bytes>>>,
    thread: Option<std::thread::JoinHandle<Sha256>>,
}

impl Hashing {
    /// Carry on hashing from `hasher`.
    fn start(mut hasher: Sha256) -> Hashing {
        let (to, from) = std::sync::mpsc::sync_channel::<Vec<bytes::Bytes>>(HASH_QUEUE);
        let thread = std::thread::spawn(move || {
            for batch in from {
                for chunk in &batch {
                    hasher.update(chunk);
                }
            }
            hasher
        });
        Hashing {
            to: Some(to),
            thread: Some(thread),
        }
    }

    /// Hash `batch`, in order after what was fed before.
    fn feed(&mut self, batch: Vec<bytes::Bytes>) {
        if let Some(to) = &self.to {
            // A send fails only when the thread is gone, which `finish` reports.
            let _ = to.send(batch);
        }
    }

    /// Wait for everything fed to be hashed.
    fn finish(mut self) -> io::Result<Sha256> {
        self.to = None;
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .ok_or_else(|| io::Error::other("the hashing thread failed"))
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        format!("cannot connect: {}", root_cause(e))
    } else {
        root_cause(e)
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
