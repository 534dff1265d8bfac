//! The rendezvous of a run's processes and the watch kept over them afterwards: small TCP code
//! of ours that exchanges who is who and what they run, never tensors (the reductions are the
//! collective engine's, [`crate::collective`]).
//!
//! Process 0 listens on `MASTER_PORT`; every other process connects to `MASTER_ADDR:MASTER_PORT`
//! (retrying until the timeout) and says hello: its rank, the number of processes it expects,
//! its ranks per process, its resolved config and its engine. Process 0 checks them all (the
//! first differing config key is named) and sets the engine up: for NCCL (CUDA ranks) it makes
//! the communicator's unique id and sends it to the others, NCCL doing the rest; for
//! burn-collective's global level (CPU ranks) it starts the orchestrator on a free port and
//! sends its address. Or it refuses every process with the reason.
//!
//! The connections then stay open for the whole run, one JSON line per message:
//! - a process whose connection closes before it said goodbye is gone (killed, crashed, or
//!   ended by an error): process 0 tells the others, and every process ends with a line naming
//!   it, at once (not after the timeout);
//! - each process reports how many collectives its ranks completed; a rank that waits in one
//!   longer than the timeout ends its process with a line naming the ranks that never reached
//!   it (stalled), as process 0 last heard.

use super::launch::Launch;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the rendezvous and every collective may wait by default (`--dist-timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause between attempts to reach the master.
const CONNECT_RETRY: Duration = Duration::from_millis(200);
/// How long a process waits for the master's answer about who is behind.
const ANSWER_WAIT: Duration = Duration::from_secs(5);
/// How often the watchdog looks at the ranks and reports progress.
const WATCH_PERIOD: Duration = Duration::from_millis(100);
/// How often a process reports its progress even when it did not change (its heartbeat).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A process not heard from for this long is taken for stopped or cut off.
const SILENT: Duration = Duration::from_millis(2500);
/// Longest message line accepted on a control connection.
const MAX_LINE: usize = 1 << 20;

/// What ends a run of several processes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DistError {
    #[error(transparent)]
    Launch(#[from] super::launch::LaunchError),
    #[error("MASTER_PORT {port}: cannot listen there ({detail})")]
    Listen { port: u16, detail: String },
    #[error("no master at {addr} after {secs} s ({detail})")]
    MasterUnreachable {
        addr: String,
        secs: u64,
        detail: String,
    },
    #[error("rendezvous at {addr}: {detail}")]
    Protocol { addr: String, detail: String },
    #[error("{0}")]
    Refused(String),
    #[error("{who} left the run: {detail}")]
    Gone { who: String, detail: String },
    #[error("rank {rank} waited {secs} s in collective #{seq} (--dist-timeout): {behind}")]
    Stalled {
        rank: usize,
        secs: u64,
        seq: u64,
        behind: String,
    },
    #[error("collective engine: {0}")]
    Engine(String),
}

/// A control message (one JSON line).
#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Hello {
        rank: usize,
        world: usize,
        ranks_per_process: usize,
        config: BTreeMap<String, String>,
        nccl: bool,
    },
    Welcome {
        /// burn-collective's orchestrator, on process 0's host.
        orchestrator_port: Option<u16>,
        /// NCCL's unique id, in hexadecimal.
        nccl_id: Option<String>,
    },
    Refused {
        reason: String,
    },
    Progress {
        done: u64,
    },
    WhoIsBehind,
    Behind {
        reason: String,
    },
    Gone {
        who: String,
        detail: String,
    },
    Bye,
}

fn send(stream: &Mutex<TcpStream>, m: &Msg) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(m).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut s = stream.lock().unwrap_or_else(|e| e.into_inner());
    s.write_all(&line)
}

fn recv<R: BufRead>(reader: &mut R) -> std::io::Result<Option<Msg>> {
    let mut line = Vec::new();
    let n = std::io::Read::take(&mut *reader, MAX_LINE as u64 + 1).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > MAX_LINE || !line.ends_with(b"\n") {
        return Err(std::io::Error::other("a message line too long or cut"));
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("not a swav-rs control message: {e}")))
}

/// Per local rank: collectives completed, and since when it waits in one.
pub struct Progress {
    started: Instant,
    done: Vec<AtomicU64>,
    /// Milliseconds since `started` + 1 when the rank entered its current collective; 0 when
    /// it waits in none.
    waiting: Vec<AtomicU64>,
}

impl Progress {
    fn new(ranks: usize) -> Progress {
        Progress {
            started: Instant::now(),
            done: (0..ranks).map(|_| AtomicU64::new(0)).collect(),
            waiting: (0..ranks).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Local rank `local` enters a collective.
    pub fn enter(&self, local: usize) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        self.waiting[local].store(now, Ordering::SeqCst);
    }

    /// Local rank `local` completed its collective.
    pub fn leave(&self, local: usize) {
        self.done[local].fetch_add(1, Ordering::SeqCst);
        self.waiting[local].store(0, Ordering::SeqCst);
    }

    /// Collectives completed by this process's slowest rank.
    fn done(&self) -> u64 {
        self.done
            .iter()
            .map(|d| d.load(Ordering::SeqCst))
            .min()
            .unwrap_or(0)
    }
}

/// Called once, from a watch thread, when the run must end (a peer is gone or stalled). The
/// binary prints the error on one line and exits.
pub type Fatal = Arc<dyn Fn(DistError) + Send + Sync>;

/// What the rendezvous needs from this process.
pub struct Join {
    pub launch: Launch,
    /// Ranks (devices) of this process; the same in every process.
    pub ranks_per_process: usize,
    /// This process's resolved config, flattened ([`flatten`]); compared with process 0's.
    pub config: BTreeMap<String, String>,
    /// How long the rendezvous and every collective may wait.
    pub timeout: Duration,
    /// For ranks that talk through NCCL (every process's must): what makes the communicator's
    /// unique id, called by process 0 once every process has joined. `None`: burn-collective.
    pub nccl_id: Option<NcclId>,
}

/// What makes NCCL's unique id (`ncclGetUniqueId`'s 128 bytes) in process 0.
pub type NcclId = fn() -> Result<Vec<u8>, String>;

/// What the processes' ranks talk through, as set up at the rendezvous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEngine {
    /// burn-collective's global level.
    BurnCollective {
        /// The orchestrator, `ws://host:port`.
        orchestrator: String,
        /// Where this process's node serves its peers, `ws://host:port`, and its port.
        node_address: String,
        data_port: u16,
    },
    /// NCCL, every process's communicators made from process 0's unique id (128 bytes).
    Nccl { unique_id: Vec<u8> },
}

/// This process's membership in a run of several processes.
pub struct Session {
    pub launch: Launch,
    pub ranks_per_process: usize,
    pub timeout: Duration,
    pub engine: SessionEngine,
    progress: Arc<Progress>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Session(process {} of {}, {} ranks each)",
            self.launch.rank, self.launch.world, self.ranks_per_process
        )
    }
}

/// What the watch threads share.
struct Shared {
    /// This process said goodbye: connections closing are no longer failures.
    finished: AtomicBool,
    /// Process 0 said goodbye (seen by the others).
    master_finished: AtomicBool,
    /// The fatal handler ran (it runs once).
    fatal_called: AtomicBool,
    fatal: Fatal,
    /// Process 0: every other process's connection and last reported progress.
    peers: Vec<Option<Peer>>,
    /// The others: the connection to process 0, and answers about who is behind.
    master: Option<Arc<Mutex<TcpStream>>>,
    answers: Mutex<Option<mpsc::Sender<String>>>,
    ranks_per_process: usize,
}

struct Peer {
    stream: Arc<Mutex<TcpStream>>,
    done: AtomicU64,
    /// When process 0 last heard from it.
    heard: Mutex<Instant>,
}

impl Shared {
    fn new(
        fatal: Fatal,
        peers: Vec<Option<Peer>>,
        master: Option<Arc<Mutex<TcpStream>>>,
        ranks_per_process: usize,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            finished: AtomicBool::new(false),
            master_finished: AtomicBool::new(false),
            fatal_called: AtomicBool::new(false),
            fatal,
            peers,
            master,
            answers: Mutex::new(None),
            ranks_per_process,
        })
    }

    fn fatal(&self, e: DistError) {
        if !self.fatal_called.swap(true, Ordering::SeqCst) {
            (self.fatal)(e);
        }
    }

    fn who(&self, process: usize) -> String {
        who(process, self.ranks_per_process)
    }
}

/// "rank 3", or "process 1 (ranks 2-3)" with several ranks per process.
fn who(process: usize, ranks_per_process: usize) -> String {
    if ranks_per_process == 1 {
        format!("rank {process}")
    } else {
        let first = process * ranks_per_process;
        format!(
            "process {process} (ranks {first}-{})",
            first + ranks_per_process - 1
        )
    }
}

/// A config as dotted keys and their values (`model.head.epsilon` → `0.05`), minus the keys
/// that may differ between processes (`device`).
pub fn flatten(value: &serde_json::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out.remove("device");
    out
}

/// The first key whose value differs between two flattened configs, with both values.
fn first_difference(
    a: &BTreeMap<String, String>,
    b: &BTreeMap<String, String>,
) -> Option<(String, String, String)> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter().find_map(|k| {
        let (x, y) = (a.get(k), b.get(k));
        (x != y).then(|| {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(absent)".into());
            (k.clone(), show(x), show(y))
        })
    })
}

/// The engine as set up at the rendezvous: NCCL with process 0's id, or burn-collective's
/// global level with its orchestrator and a node of this process on `node_host`, whichever
/// this process asked for (process 0 refused a process that asked for the other).
fn engine(
    join: &Join,
    orchestrator_port: Option<u16>,
    nccl_id: Option<Vec<u8>>,
    node_host: &str,
) -> Result<SessionEngine, DistError> {
    match (join.nccl_id.is_some(), orchestrator_port, nccl_id) {
        (true, _, Some(unique_id)) => Ok(SessionEngine::Nccl { unique_id }),
        (false, Some(port), _) => {
            let data_port = free_port()?;
            Ok(SessionEngine::BurnCollective {
                orchestrator: ws_address(&join.launch.master_addr, port),
                node_address: ws_address(node_host, data_port),
                data_port,
            })
        }
        _ => Err(DistError::Engine(
            "process 0 set up another engine than this process's".into(),
        )),
    }
}

/// A port free on every interface at the time of asking.
fn free_port() -> Result<u16, DistError> {
    TcpListener::bind(("0.0.0.0", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DistError::Engine(format!("no free port for the engine: {e}")))
}

/// `ws://host:port` (IPv6 hosts in brackets).
fn ws_address(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("ws://[{host}]:{port}")
    } else {
        format!("ws://{host}:{port}")
    }
}

impl Session {
    /// Meet the run's other processes (see the module's documentation). Returns once every
    /// process has joined and been accepted, or with a one-line error within `timeout`.
    pub fn join(join: Join, fatal: Fatal) -> Result<Session, DistError> {
        silence_engine_logs();
        quiet_engine_panics();
        if join.launch.is_master() {
            Self::join_as_master(join, fatal)
        } else {
            Self::join_as_worker(join, fatal)
        }
    }

    fn join_as_master(join: Join, fatal: Fatal) -> Result<Session, DistError> {
        let Launch {
            world, master_port, ..
        } = join.launch;
        let listener =
            TcpListener::bind(("0.0.0.0", master_port)).map_err(|e| DistError::Listen {
                port: master_port,
                detail: e.to_string(),
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| DistError::Listen {
                port: master_port,
                detail: e.to_string(),
            })?;
        let deadline = Instant::now() + join.timeout;
        let mut joined: Vec<Option<(TcpStream, BufReader<TcpStream>)>> =
            (0..world).map(|_| None).collect();
        let mut problem: Option<String> = None;
        while joined.iter().skip(1).any(Option::is_none) && problem.is_none() {
            if Instant::now() >= deadline {
                let missing: Vec<String> = (1..world)
                    .filter(|p| joined[*p].is_none())
                    .map(|p| who(p, join.ranks_per_process))
                    .collect();
                problem = Some(format!(
                    "{} did not join within {} s (WORLD_SIZE={world})",
                    missing.join(", "),
                    join.timeout.as_secs()
                ));
                break;
            }
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(_) => continue,
            };
            // A connection that does not say hello in time is not one of ours: dropped.
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let Ok(read) = stream.try_clone() else {
                continue;
            };
            let mut reader = BufReader::new(read);
            let Ok(Some(Msg::Hello {
                rank,
                world: theirs,
                ranks_per_process,
                config,
                nccl,
            })) = recv(&mut reader)
            else {
                continue;
            };
            let _ = stream.set_read_timeout(None);
            let them = who(rank, join.ranks_per_process);
            problem = if theirs != world {
                Some(format!(
                    "{them} was started with WORLD_SIZE={theirs}, rank 0 with WORLD_SIZE={world}"
                ))
            } else if rank == 0 || rank >= world || joined[rank].is_some() {
                Some(format!(
                    "two processes say they are rank {rank} (check RANK / SLURM_PROCID)"
                ))
            } else if ranks_per_process != join.ranks_per_process {
                Some(format!(
                    "{them} has {ranks_per_process} devices, rank 0 has {} (every process needs as many)",
                    join.ranks_per_process
                ))
            } else if let Some((key, ours, theirs)) = first_difference(&join.config, &config) {
                Some(format!(
                    "{them}'s config differs from rank 0's at `{key}`: {theirs} there, {ours} at rank 0"
                ))
            } else if nccl != join.nccl_id.is_some() {
                let engine = |nccl: bool| if nccl { "NCCL" } else { "burn-collective" };
                Some(format!(
                    "{them} talks through {}, rank 0 through {} (--collective, and NCCL's library \
                     on each host)",
                    engine(nccl),
                    engine(join.nccl_id.is_some())
                ))
            } else {
                None
            };
            if problem.is_some() {
                // Refuse the newcomer too, even if its slot is taken.
                let _ = send(
                    &Mutex::new(stream),
                    &Msg::Refused {
                        reason: problem.clone().unwrap_or_default(),
                    },
                );
                break;
            }
            joined[rank] = Some((stream, reader));
        }
        let refuse_all = |joined: &mut Vec<Option<(TcpStream, BufReader<TcpStream>)>>,
                          reason: &str| {
            for (s, _) in joined.iter_mut().flatten() {
                let _ = s.write_all(
                    format!(
                        "{}\n",
                        serde_json::to_string(&Msg::Refused {
                            reason: reason.into()
                        })
                        .unwrap_or_default()
                    )
                    .as_bytes(),
                );
            }
        };
        if let Some(reason) = problem {
            refuse_all(&mut joined, &reason);
            return Err(DistError::Refused(reason));
        }
        let set_up = match join.nccl_id {
            Some(make) => make()
                .map(|id| (None, Some(id)))
                .map_err(|e| DistError::Engine(format!("NCCL: {e}"))),
            None => start_orchestrator().map(|port| (Some(port), None)),
        };
        let (orchestrator_port, nccl_id) = match set_up {
            Ok(p) => p,
            Err(e) => {
                refuse_all(&mut joined, &e.to_string());
                return Err(e);
            }
        };
        let welcome = Msg::Welcome {
            orchestrator_port,
            nccl_id: nccl_id.as_deref().map(crate::digest::encode),
        };
        let mut peers = Vec::with_capacity(world);
        let mut readers = Vec::new();
        peers.push(None);
        for (p, slot) in joined.into_iter().enumerate().skip(1) {
            let (stream, reader) = slot.expect("every process joined");
            let stream = Arc::new(Mutex::new(stream));
            send(&stream, &welcome).map_err(|e| DistError::Gone {
                who: who(p, join.ranks_per_process),
                detail: format!("its connection failed at the rendezvous ({e})"),
            })?;
            readers.push((p, reader));
            peers.push(Some(Peer {
                stream,
                done: AtomicU64::new(0),
                heard: Mutex::new(Instant::now()),
            }));
        }
        let progress = Arc::new(Progress::new(join.ranks_per_process));
        let shared = Shared::new(fatal, peers, None, join.ranks_per_process);
        for (p, reader) in readers {
            let (shared, progress) = (shared.clone(), progress.clone());
            std::thread::Builder::new()
                .name(format!("dist-peer-{p}"))
                .spawn(move || watch_peer(p, reader, &shared, &progress))
                .map_err(|e| DistError::Engine(e.to_string()))?;
        }
        let host = join.launch.master_addr.clone();
        let engine = engine(&join, orchestrator_port, nccl_id, &host)?;
        Session::start(join, engine, progress, shared)
    }

    /// The session of a process that joined, its watchdog started.
    fn start(
        join: Join,
        engine: SessionEngine,
        progress: Arc<Progress>,
        shared: Arc<Shared>,
    ) -> Result<Session, DistError> {
        let session = Session {
            engine,
            ranks_per_process: join.ranks_per_process,
            timeout: join.timeout,
            launch: join.launch,
            progress,
            shared,
        };
        session.start_watchdog()?;
        Ok(session)
    }

    fn join_as_worker(join: Join, fatal: Fatal) -> Result<Session, DistError> {
        let l = &join.launch;
        let addr = format!("{}:{}", l.master_addr, l.master_port);
        let started = Instant::now();
        let deadline = started + join.timeout;
        let stream = loop {
            let attempt = addr
                .to_socket_addrs()
                .map_err(|e| e.to_string())
                .and_then(|mut it| it.next().ok_or_else(|| "no address".to_string()))
                .and_then(|sa: SocketAddr| {
                    let left = deadline.saturating_duration_since(Instant::now());
                    TcpStream::connect_timeout(
                        &sa,
                        left.clamp(Duration::from_millis(1), Duration::from_secs(5)),
                    )
                    .map_err(|e| e.to_string())
                });
            match attempt {
                Ok(s) => break s,
                Err(detail) if Instant::now() + CONNECT_RETRY >= deadline => {
                    return Err(DistError::MasterUnreachable {
                        addr,
                        secs: started.elapsed().as_secs(),
                        detail,
                    })
                }
                Err(_) => std::thread::sleep(CONNECT_RETRY),
            }
        };
        let protocol = |detail: String| DistError::Protocol {
            addr: addr.clone(),
            detail,
        };
        let local_ip = stream
            .local_addr()
            .map_err(|e| protocol(e.to_string()))?
            .ip();
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| protocol(e.to_string()))?);
        let stream = Arc::new(Mutex::new(stream));
        send(
            &stream,
            &Msg::Hello {
                rank: l.rank,
                world: l.world,
                ranks_per_process: join.ranks_per_process,
                config: join.config.clone(),
                nccl: join.nccl_id.is_some(),
            },
        )
        .map_err(|e| protocol(format!("cannot say hello ({e})")))?;
        // Process 0 answers once every process has joined: up to its own timeout, and a
        // little more.
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(10);
        let _ = reader.get_ref().set_read_timeout(Some(wait));
        let (orchestrator_port, nccl_id) = match recv(&mut reader) {
            Ok(Some(Msg::Welcome {
                orchestrator_port,
                nccl_id,
            })) => (orchestrator_port, nccl_id),
            Ok(Some(Msg::Refused { reason })) => return Err(DistError::Refused(reason)),
            Ok(Some(other)) => return Err(protocol(format!("unexpected answer {other:?}"))),
            Ok(None) => {
                return Err(protocol(
                    "the master closed the connection before the run started".into(),
                ))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(protocol(format!(
                    "no answer within {} s (is it a swav-rs master?)",
                    wait.as_secs()
                )))
            }
            Err(e) => return Err(protocol(e.to_string())),
        };
        let _ = reader.get_ref().set_read_timeout(None);
        let nccl_id = nccl_id
            .map(|h| {
                crate::digest::decode(&h)
                    .ok_or_else(|| protocol(format!("NCCL id '{h}' is not hexadecimal")))
            })
            .transpose()?;
        let engine = engine(&join, orchestrator_port, nccl_id, &local_ip.to_string())
            .map_err(|e| protocol(e.to_string()))?;
        let progress = Arc::new(Progress::new(join.ranks_per_process));
        let shared = Shared::new(fatal, Vec::new(), Some(stream), join.ranks_per_process);
        {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("dist-master".into())
                .spawn(move || watch_master(reader, &shared))
                .map_err(|e| DistError::Engine(e.to_string()))?;
        }
        Session::start(join, engine, progress, shared)
    }

    /// Number of processes.
    pub fn processes(&self) -> usize {
        self.launch.world
    }

    /// This process's index (0: the master, which alone writes the run's files).
    pub fn process(&self) -> usize {
        self.launch.rank
    }

    /// This process's part of every global batch, `(process, processes)` (see
    /// `LoaderConfig::part`).
    pub fn part(&self) -> (usize, usize) {
        (self.process(), self.processes())
    }

    /// Ranks over every process.
    pub fn world(&self) -> usize {
        self.launch.world * self.ranks_per_process
    }

    /// The global rank of this process's local rank `local`.
    pub fn rank_of(&self, local: usize) -> usize {
        self.launch.rank * self.ranks_per_process + local
    }

    /// The progress of this process's ranks, updated by their communicators.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// This process is done: its connections closing are no longer failures.
    pub fn finish(&self) {
        self.shared.finished.store(true, Ordering::SeqCst);
        if let Some(m) = &self.shared.master {
            let _ = send(m, &Msg::Bye);
        }
        for p in self.shared.peers.iter().flatten() {
            let _ = send(&p.stream, &Msg::Bye);
        }
    }

    fn start_watchdog(&self) -> Result<(), DistError> {
        let (shared, progress) = (self.shared.clone(), self.progress.clone());
        let (timeout, process, rpp) = (self.timeout, self.launch.rank, self.ranks_per_process);
        std::thread::Builder::new()
            .name("dist-watchdog".into())
            .spawn(move || watchdog(&shared, &progress, timeout, process, rpp))
            .map(|_| ())
            .map_err(|e| DistError::Engine(e.to_string()))
    }
}

/// Process 0's watch over process `p`'s connection.
fn watch_peer(p: usize, mut reader: BufReader<TcpStream>, shared: &Shared, progress: &Progress) {
    let peer = shared.peers[p].as_ref().expect("a peer's slot");
    let mut said_bye = false;
    let end = loop {
        let msg = recv(&mut reader);
        *peer.heard.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        match msg {
            Ok(Some(Msg::Progress { done })) => peer.done.store(done, Ordering::SeqCst),
            Ok(Some(Msg::WhoIsBehind)) => {
                let reason = behind(shared, progress);
                let _ = send(&peer.stream, &Msg::Behind { reason });
            }
            Ok(Some(Msg::Bye)) => said_bye = true,
            Ok(Some(_)) => {}
            Ok(None) => break "its connection closed".to_string(),
            Err(e) => break format!("its connection failed ({e})"),
        }
    };
    if said_bye || shared.finished.load(Ordering::SeqCst) {
        return;
    }
    let who = shared.who(p);
    let detail = format!("{end} before it finished (killed, crashed or ended by an error)");
    for (q, other) in shared.peers.iter().enumerate() {
        if let (Some(o), true) = (other, q != p) {
            let _ = send(
                &o.stream,
                &Msg::Gone {
                    who: who.clone(),
                    detail: detail.clone(),
                },
            );
        }
    }
    shared.fatal(DistError::Gone { who, detail });
}

/// Which processes hold the others up, as process 0 knows: those it has not heard from lately
/// (stopped, or cut off), else those that completed fewer collectives than the furthest.
fn behind(shared: &Shared, progress: &Progress) -> String {
    let silent: Vec<String> = shared
        .peers
        .iter()
        .enumerate()
        .filter_map(|(p, peer)| {
            let quiet = peer.as_ref()?.heard.lock().ok()?.elapsed();
            (quiet > SILENT).then(|| {
                format!(
                    "{} sent nothing for {} s (stopped, or cut off)",
                    shared.who(p),
                    quiet.as_secs()
                )
            })
        })
        .collect();
    if !silent.is_empty() {
        return silent.join(", ");
    }
    let mut done: Vec<(usize, u64)> = vec![(0, progress.done())];
    for (p, peer) in shared.peers.iter().enumerate() {
        if let Some(peer) = peer {
            done.push((p, peer.done.load(Ordering::SeqCst)));
        }
    }
    let max = done.iter().map(|d| d.1).max().unwrap_or(0);
    let late: Vec<String> = done
        .iter()
        .filter(|d| d.1 < max)
        .map(|&(p, n)| format!("{} completed {n} collectives", shared.who(p)))
        .collect();
    if late.is_empty() {
        format!("every process reported {max} completed collectives (the engine itself stalled, or a report was late)")
    } else {
        format!("{} (the others {max}): stalled", late.join(", "))
    }
}

/// A worker's watch over its connection to process 0.
fn watch_master(mut reader: BufReader<TcpStream>, shared: &Shared) {
    let end = loop {
        match recv(&mut reader) {
            Ok(Some(Msg::Gone { who, detail })) => {
                shared.fatal(DistError::Gone { who, detail });
                return;
            }
            Ok(Some(Msg::Behind { reason })) => {
                if let Some(tx) = shared
                    .answers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                {
                    let _ = tx.send(reason);
                }
            }
            Ok(Some(Msg::Bye)) => shared.master_finished.store(true, Ordering::SeqCst),
            Ok(Some(_)) => {}
            Ok(None) => break "its connection closed".to_string(),
            Err(e) => break format!("its connection failed ({e})"),
        }
    };
    if shared.finished.load(Ordering::SeqCst) || shared.master_finished.load(Ordering::SeqCst) {
        return;
    }
    shared.fatal(DistError::Gone {
        who: shared.who(0),
        detail: format!("{end} before it finished (killed, crashed or ended by an error)"),
    });
}

/// Reports this process's progress to process 0 and ends the run when a rank waits in a
/// collective longer than `timeout`.
fn watchdog(shared: &Shared, progress: &Progress, timeout: Duration, process: usize, rpp: usize) {
    let (mut reported, mut last_report) = (0, Instant::now());
    loop {
        std::thread::sleep(WATCH_PERIOD);
        if shared.finished.load(Ordering::SeqCst) || shared.fatal_called.load(Ordering::SeqCst) {
            return;
        }
        let done = progress.done();
        if let (Some(m), true) = (
            &shared.master,
            done != reported || last_report.elapsed() >= HEARTBEAT,
        ) {
            let _ = send(m, &Msg::Progress { done });
            (reported, last_report) = (done, Instant::now());
        }
        let now = progress.started.elapsed().as_millis() as u64 + 1;
        let stalled = progress.waiting.iter().enumerate().find_map(|(local, w)| {
            let since = w.load(Ordering::SeqCst);
            (since != 0 && now.saturating_sub(since) > timeout.as_millis() as u64).then_some(local)
        });
        let Some(local) = stalled else {
            continue;
        };
        let behind = match &shared.master {
            None => behind(shared, progress),
            Some(m) => {
                let (tx, rx) = mpsc::channel();
                *shared.answers.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
                let _ = send(m, &Msg::WhoIsBehind);
                rx.recv_timeout(ANSWER_WAIT).unwrap_or_else(|_| {
                    format!("{} does not answer (stopped, or cut off)", shared.who(0))
                })
            }
        };
        shared.fatal(DistError::Stalled {
            rank: process * rpp + local,
            secs: timeout.as_secs(),
            seq: progress.done[local].load(Ordering::SeqCst) + 1,
            behind,
        });
        return;
    }
}

/// Start burn-collective's global orchestrator on a free port, on a thread of its own for the
/// life of the process; returns the port.
fn start_orchestrator() -> Result<u16, DistError> {
    let port = free_port()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| DistError::Engine(format!("orchestrator runtime: {e}")))?;
    std::thread::Builder::new()
        .name("dist-orchestrator".into())
        .spawn(move || {
            let run = burn_collective::start_global_orchestrator_until(
                port,
                std::future::pending::<()>(),
            );
            if let Err(e) = runtime.block_on(run) {
                eprintln!("swav-rs: error: collective engine's orchestrator on port {port}: {e}");
                std::process::exit(crate::cli::EXIT_ERROR.into());
            }
        })
        .map_err(|e| DistError::Engine(e.to_string()))?;
    Ok(port)
}

/// burn-collective's global level panics in its runtime's threads when a peer's connection
/// breaks (`unwrap`s on lost transfers): the session reports the cause (the process that left,
/// or the stall) on one line, so those panics are not printed. Every other thread's are.
fn quiet_engine_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let engine = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("tokio-"));
        if !engine {
            previous(info);
        }
    }));
}

/// The engine (burn-communication) installs a tracing subscriber printing every transfer at
/// INFO level on stdout unless one is installed already: install a silent one first.
fn silence_engine_logs() {
    let _ = tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_compared_key_by_key() {
        let a = flatten(
            &serde_json::json!({"device": "cpu", "model": {"head": {"epsilon": 0.05, "k": 3}}}),
        );
        let b = flatten(
            &serde_json::json!({"device": "cuda:1", "model": {"head": {"epsilon": 0.03, "k": 3}}}),
        );
        assert_eq!(a.len(), 2, "device is not compared: {a:?}");
        assert_eq!(
            first_difference(&a, &b),
            Some(("model.head.epsilon".into(), "0.05".into(), "0.03".into()))
        );
        assert_eq!(first_difference(&a, &a), None);
    }

    /// Process `rank` of two, meeting at 127.0.0.1:`port`, asking for NCCL when `nccl`.
    fn join(rank: usize, port: u16, nccl: bool) -> Result<Session, DistError> {
        let launch = Launch {
            launcher: super::super::Launcher::Torchrun,
            rank,
            world: 2,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        };
        let join = Join {
            launch,
            ranks_per_process: 1,
            config: BTreeMap::new(),
            timeout: Duration::from_secs(20),
            nccl_id: nccl.then_some(fake_nccl_id as NcclId),
        };
        Session::join(join, Arc::new(|_| {}))
    }

    /// NCCL's library is not on a CPU host: process 0's id maker stands in for
    /// `ncclGetUniqueId` (its 128 bytes are what the rendezvous carries).
    fn fake_nccl_id() -> Result<Vec<u8>, String> {
        Ok((0..128).map(|i| i as u8 ^ 0xa5).collect())
    }

    fn port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    }

    #[test]
    fn process_0_sends_its_nccl_id_to_the_others() {
        let port = port();
        let master = std::thread::spawn(move || join(0, port, true));
        let worker = join(1, port, true).expect("process 1 joins");
        let master = master.join().expect("no panic").expect("process 0 joins");
        let id = fake_nccl_id().unwrap();
        for s in [&master, &worker] {
            assert_eq!(
                s.engine,
                SessionEngine::Nccl {
                    unique_id: id.clone()
                }
            );
            s.finish();
        }
    }

    #[test]
    fn processes_asking_for_different_engines_are_refused() {
        let port = port();
        let master = std::thread::spawn(move || join(0, port, true));
        let worker = join(1, port, false).expect_err("refused");
        let master = master.join().expect("no panic").expect_err("refused");
        for e in [worker.to_string(), master.to_string()] {
            assert_eq!(
                e,
                "rank 1 talks through burn-collective, rank 0 through NCCL (--collective, and \
                 NCCL's library on each host)"
            );
        }
    }

    #[test]
    fn ranks_are_named_by_process() {
        assert_eq!(who(1, 1), "rank 1");
        assert_eq!(who(1, 2), "process 1 (ranks 2-3)");
    }
}
