//! Where this process stands in a run of several processes, as the launcher says: torchrun's
//! variables (`MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE`, `LOCAL_RANK`), or SLURM's
//! (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`, the first host of `SLURM_JOB_NODELIST` as
//! the master), read as facebookresearch/swav's `init_distributed_mode` reads them.

/// The port of the master under SLURM when `MASTER_PORT` is not set (torchrun's default).
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// A launcher variable that is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchError {
    #[error("{launcher} launch: {var} is not set (needed with {others})")]
    Missing {
        launcher: &'static str,
        var: &'static str,
        others: &'static str,
    },
    #[error("{var}={value:?}: {why}")]
    Invalid {
        var: &'static str,
        value: String,
        why: String,
    },
}

/// Which launcher's variables were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    Torchrun,
    Slurm,
}

impl std::fmt::Display for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Launcher::Torchrun => "torchrun",
            Launcher::Slurm => "SLURM",
        })
    }
}

/// This process's place among the run's processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    /// This process's index, from 0 (process 0 is the master).
    pub rank: usize,
    /// Number of processes.
    pub world: usize,
    /// This process's index on its host (the default CUDA device's index).
    pub local_rank: usize,
    /// Where process 0 listens for the others.
    pub master_addr: String,
    pub master_port: u16,
}

impl Launch {
    /// Read the launcher's variables from the environment: `None` when no launcher started
    /// this process (or started it alone: a world of one process).
    pub fn from_env() -> Result<Option<Launch>, LaunchError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Launch::from_env`] with the variables from `get`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>, LaunchError> {
        let launch = if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
            let need = |var: &'static str| {
                get(var).ok_or(LaunchError::Missing {
                    launcher: "torchrun",
                    var,
                    others: "RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT",
                })
            };
            let world = number("WORLD_SIZE", &need("WORLD_SIZE")?)?;
            let rank = number("RANK", &need("RANK")?)?;
            let local_rank = match get("LOCAL_RANK") {
                Some(v) => number("LOCAL_RANK", &v)?,
                None => 0,
            };
            if world <= 1 {
                return check_rank(rank, world).map(|_| None);
            }
            Launch {
                launcher: Launcher::Torchrun,
                rank,
                world,
                local_rank,
                master_addr: need("MASTER_ADDR")?,
                master_port: port(&need("MASTER_PORT")?)?,
            }
        } else if let (Some(procid), Some(ntasks)) = (get("SLURM_PROCID"), get("SLURM_NTASKS")) {
            let world = number("SLURM_NTASKS", &ntasks)?;
            let rank = number("SLURM_PROCID", &procid)?;
            if world <= 1 {
                return check_rank(rank, world).map(|_| None);
            }
            let local_rank = match get("SLURM_LOCALID") {
                Some(v) => number("SLURM_LOCALID", &v)?,
                None => 0,
            };
            let master_addr = match get("MASTER_ADDR") {
                Some(a) => a,
                None => {
                    let (var, list) = get("SLURM_JOB_NODELIST")
                        .map(|l| ("SLURM_JOB_NODELIST", l))
                        .or_else(|| get("SLURM_NODELIST").map(|l| ("SLURM_NODELIST", l)))
                        .ok_or(LaunchError::Missing {
                            launcher: "SLURM",
                            var: "SLURM_JOB_NODELIST",
                            others: "SLURM_PROCID and SLURM_NTASKS, or MASTER_ADDR",
                        })?;
                    first_host(&list).map_err(|why| LaunchError::Invalid {
                        var,
                        value: list.clone(),
                        why,
                    })?
                }
            };
            let master_port = match get("MASTER_PORT") {
                Some(p) => port(&p)?,
                None => DEFAULT_MASTER_PORT,
            };
            Launch {
                launcher: Launcher::Slurm,
                rank,
                world,
                local_rank,
                master_addr,
                master_port,
            }
        } else {
            return Ok(None);
        };
        check_rank(launch.rank, launch.world)?;
        if launch.master_addr.trim().is_empty() {
            return Err(LaunchError::Invalid {
                var: "MASTER_ADDR",
                value: launch.master_addr,
                why: "empty".into(),
            });
        }
        Ok(Some(launch))
    }

    /// Whether this process is the master (process 0).
    pub fn is_master(&self) -> bool {
        self.rank == 0
    }

    /// This process's device when none is named: `cuda:LOCAL_RANK` when the config trains on
    /// CUDA (one GPU per process, as facebookresearch/swav's `torch.cuda.set_device`), else the
    /// config's device (`cpu`).
    pub fn default_device(&self, configured: &str) -> String {
        if configured.trim_start().starts_with("cuda") {
            format!("cuda:{}", self.local_rank)
        } else {
            configured.to_string()
        }
    }
}

impl Launch {
    /// This process's device for a `--device` given under the launcher: a bare `cuda` (or
    /// PASSL's `gpu`) is this process's GPU, `cuda:LOCAL_RANK` (torchrun passes the same
    /// arguments to every process); anything else as given.
    pub fn device_flag(&self, given: &str) -> String {
        match given.trim() {
            "cuda" | "gpu" => format!("cuda:{}", self.local_rank),
            other => other.to_string(),
        }
    }
}

fn number(var: &'static str, value: &str) -> Result<usize, LaunchError> {
    value.trim().parse().map_err(|_| LaunchError::Invalid {
        var,
        value: value.into(),
        why: "not a whole number".into(),
    })
}

fn port(value: &str) -> Result<u16, LaunchError> {
    match value.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(LaunchError::Invalid {
            var: "MASTER_PORT",
            value: value.into(),
            why: "not a port (1 to 65535)".into(),
        }),
    }
}

fn check_rank(rank: usize, world: usize) -> Result<(), LaunchError> {
    if world == 0 {
        return Err(LaunchError::Invalid {
            var: "WORLD_SIZE",
            value: "0".into(),
            why: "a run needs at least one process".into(),
        });
    }
    if rank >= world {
        return Err(LaunchError::Invalid {
            var: "RANK",
            value: rank.to_string(),
            why: format!("not below the number of processes ({world})"),
        });
    }
    Ok(())
}

/// The first host of a SLURM node list (`node[01-04,07],gpu3` → `node01`, `a,b` → `a`,
/// `rack1-[3-5]-ib` → `rack1-3-ib`), as `scontrol show hostnames` would list it first.
pub fn first_host(list: &str) -> Result<String, String> {
    let list = list.trim();
    // The first entry: up to the first comma outside brackets.
    let mut depth = 0usize;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or("a ']' without its '['")?,
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let entry = &list[..end];
    let mut host = String::new();
    let mut rest = entry;
    while let Some(open) = rest.find('[') {
        host.push_str(&rest[..open]);
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or("a '[' without its ']'")?;
        let first = rest[open + 1..close]
            .split(',')
            .next()
            .and_then(|range| range.split('-').next())
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
            .ok_or("a bracket that does not start with a number")?;
        host.push_str(first);
        rest = &rest[close + 1..];
    }
    host.push_str(rest);
    if host.is_empty() || host.contains(']') {
        return Err("no host name".into());
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>, LaunchError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn slurm_node_lists_give_their_first_host() {
        assert_eq!(first_host("node[01-04,07],gpu3").unwrap(), "node01");
        assert_eq!(first_host("a,b").unwrap(), "a");
        assert_eq!(first_host("single").unwrap(), "single");
        assert_eq!(first_host("rack1-[3-5]-ib").unwrap(), "rack1-3-ib");
        assert_eq!(first_host("r[2,4]n[10-12]").unwrap(), "r2n10");
        assert!(first_host("node[01-04").is_err());
        assert!(first_host("node]").is_err());
        assert!(first_host("").is_err());
    }

    #[test]
    fn torchrun_variables() {
        let l = launch(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29501"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (l.rank, l.world, l.local_rank, l.master_port),
            (1, 2, 1, 29501)
        );
        assert_eq!(l.launcher, Launcher::Torchrun);
        // Devices: a CUDA config, or a bare `cuda` flag, is this process's GPU.
        assert_eq!(l.default_device("cuda:0"), "cuda:1");
        assert_eq!(l.default_device("cpu"), "cpu");
        assert_eq!(l.device_flag("cuda"), "cuda:1");
        assert_eq!(l.device_flag("gpu"), "cuda:1");
        assert_eq!(l.device_flag("cuda:3"), "cuda:3");
        assert_eq!(l.device_flag("cpu,cpu"), "cpu,cpu");
        let e = launch(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "1")]).unwrap_err();
        assert!(e.to_string().contains("MASTER_ADDR is not set"), "{e}");
        let e = launch(&[
            ("RANK", "2"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("RANK=\"2\""), "{e}");
        let e = launch(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "70000"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("MASTER_PORT"), "{e}");
        // A world of one process is no distributed run.
        assert_eq!(launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None);
        assert_eq!(launch(&[]).unwrap(), None);
    }

    #[test]
    fn slurm_variables() {
        let l = launch(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_JOB_NODELIST", "gpu[07-08]"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(l.master_addr, "gpu07");
        assert_eq!(l.master_port, DEFAULT_MASTER_PORT);
        assert_eq!((l.rank, l.world, l.local_rank), (9, 16, 1));
        let e = launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]).unwrap_err();
        assert!(e.to_string().contains("SLURM_JOB_NODELIST"), "{e}");
        assert_eq!(
            launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap(),
            None
        );
    }
}
