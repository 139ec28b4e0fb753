//! Deterministic benchmark workloads for `vfarm bench overhead`.
//!
//! The same binary (`vfarm-workload`) runs natively, in an OCI instance and in a VM, so every
//! environment runs exactly the same code. Each workload prints one JSON line: its parameters,
//! its metrics (value, unit, whether higher is better) and a checksum of what it computed, so
//! the bench can prove that all environments did the same work.
//!
//! Only std and libc: the binary is copied into minimal images and must not need anything
//! beyond the C library every Debian image has.

pub mod cpu;
pub mod io;
pub mod mmu;
pub mod net;
pub mod rng;

mod json;

use std::fmt;

pub use json::Line;

/// Why a workload could not run. Codes are stable (the bench reports them).
#[derive(Debug)]
pub enum WorkloadError {
    /// A bad command-line argument: which one and why.
    Usage { field: String, reason: String },
    /// The workload ran into an operating-system failure.
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The workload's own self-check failed (data read back differs from data written).
    Check { what: String },
}

impl WorkloadError {
    pub fn code(&self) -> vfarm_proto::ErrorCode {
        match self {
            WorkloadError::Usage { .. } => vfarm_proto::ErrorCode::InvalidArgument,
            WorkloadError::Io { .. } => vfarm_proto::ErrorCode::IoError,
            WorkloadError::Check { .. } => vfarm_proto::ErrorCode::CheckFailed,
        }
    }

    /// Process exit status: 2 for bad input (as clap), 1 otherwise.
    pub fn exit_status(&self) -> i32 {
        match self {
            WorkloadError::Usage { .. } => 2,
            _ => 1,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> WorkloadError {
        let what = what.into();
        move |source| WorkloadError::Io { what, source }
    }
}

impl fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadError::Usage { field, reason } => write!(f, "{field}: {reason}"),
            WorkloadError::Io { what, source } => write!(f, "{what}: {source}"),
            WorkloadError::Check { what } => write!(f, "self-check failed: {what}"),
        }
    }
}

impl std::error::Error for WorkloadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WorkloadError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, WorkloadError>;

const USAGE: &str = "usage: vfarm-workload WORKLOAD [OPTIONS]
  cpu [--events N] [--threads N (0 = all cores)] [--seed N]
      Monte Carlo particle transport through slabs; events/s and a checksum.
  io  [--size BYTES] [--dir DIR] [--block BYTES]
      write a file with fsync, drop it from the page cache, read it back; MB/s.
  mmu [--faults N] [--pages N (per mapping)]
      mmap + touch every page + munmap, repeated; page faults/s.
  net [--size BYTES]
      TCP over loopback: send BYTES to a local listener; MB/s.
Sizes take K, M, G (powers of 1024). Each run prints one JSON line on stdout.";

/// Parsed `--key value` options of one workload; unknown keys are refused by name.
struct Opts {
    workload: &'static str,
    pairs: Vec<(String, String)>,
}

impl Opts {
    fn parse(workload: &'static str, args: &[String], known: &[&str]) -> Result<Opts> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let key = a.strip_prefix("--").ok_or_else(|| WorkloadError::Usage {
                field: a.clone(),
                reason: format!("unexpected argument for `{workload}`"),
            })?;
            let (key, value) = match key.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => {
                    let v = it.next().ok_or_else(|| WorkloadError::Usage {
                        field: format!("--{key}"),
                        reason: "needs a value".into(),
                    })?;
                    (key.to_string(), v.clone())
                }
            };
            if !known.contains(&key.as_str()) {
                return Err(WorkloadError::Usage {
                    field: format!("--{key}"),
                    reason: format!(
                        "unknown option for `{workload}` (known: {})",
                        known
                            .iter()
                            .map(|k| format!("--{k}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            }
            pairs.push((key, value));
        }
        Ok(Opts { workload, pairs })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, key: &str, default: u64) -> Result<u64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse::<u64>().map_err(|_| WorkloadError::Usage {
                field: format!("--{key}"),
                reason: format!("`{v}` is not a whole number (workload `{}`)", self.workload),
            }),
        }
    }

    fn size(&self, key: &str, default: u64) -> Result<u64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_size(v).ok_or_else(|| WorkloadError::Usage {
                field: format!("--{key}"),
                reason: format!("`{v}` is not a size (e.g. 4096, 64K, 256M, 1G)"),
            }),
        }
    }
}

/// `4096`, `64K`, `256M`, `1G` (optionally with `iB`/`B`), powers of 1024.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1u64 << 10),
        'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
        'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

fn positive(field: &str, v: u64) -> Result<u64> {
    if v == 0 {
        return Err(WorkloadError::Usage {
            field: format!("--{field}"),
            reason: "must be greater than 0".into(),
        });
    }
    Ok(v)
}

/// Run the workload named by `args[0]` and return its JSON line.
pub fn run(args: &[String]) -> Result<Line> {
    let Some((name, rest)) = args.split_first() else {
        return Err(WorkloadError::Usage {
            field: "WORKLOAD".into(),
            reason: format!("missing\n{USAGE}"),
        });
    };
    match name.as_str() {
        "cpu" => {
            let o = Opts::parse("cpu", rest, &["events", "threads", "seed"])?;
            let p = cpu::Params {
                events: positive("events", o.count("events", cpu::DEFAULT_EVENTS)?)?,
                threads: o.count("threads", 1)? as usize,
                seed: o.count("seed", cpu::DEFAULT_SEED)?,
            };
            Ok(cpu::run(&p).line())
        }
        "io" => {
            let o = Opts::parse("io", rest, &["size", "dir", "block"])?;
            let p = io::Params {
                size: positive("size", o.size("size", io::DEFAULT_SIZE)?)?,
                block: positive("block", o.size("block", io::DEFAULT_BLOCK)?)?,
                dir: o.get("dir").unwrap_or(io::DEFAULT_DIR).into(),
            };
            Ok(io::run(&p)?.line())
        }
        "mmu" => {
            let o = Opts::parse("mmu", rest, &["faults", "pages"])?;
            let p = mmu::Params {
                faults: positive("faults", o.count("faults", mmu::DEFAULT_FAULTS)?)?,
                pages: positive("pages", o.count("pages", mmu::DEFAULT_PAGES)?)?,
            };
            Ok(mmu::run(&p)?.line())
        }
        "net" => {
            let o = Opts::parse("net", rest, &["size"])?;
            let p = net::Params {
                size: positive("size", o.size("size", net::DEFAULT_SIZE)?)?,
            };
            Ok(net::run(&p)?.line())
        }
        "help" | "--help" | "-h" => Err(WorkloadError::Usage {
            field: "WORKLOAD".into(),
            reason: format!("help requested\n{USAGE}"),
        }),
        other => Err(WorkloadError::Usage {
            field: "WORKLOAD".into(),
            reason: format!("unknown workload `{other}` (known: cpu, io, mmu, net)\n{USAGE}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64K"), Some(65536));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("2MiB"), Some(2 << 20));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn bad_arguments_name_the_field() {
        let e = run(&args("cpu --events lots")).unwrap_err();
        assert_eq!(e.code().as_str(), "invalid_argument");
        assert!(e.to_string().starts_with("--events:"), "{e}");
        let e = run(&args("cpu --bogus 1")).unwrap_err();
        assert!(e.to_string().contains("--bogus"), "{e}");
        let e = run(&args("io --size 0")).unwrap_err();
        assert!(e.to_string().contains("greater than 0"), "{e}");
        let e = run(&args("gpu")).unwrap_err();
        assert!(e.to_string().contains("unknown workload `gpu`"), "{e}");
        assert_eq!(e.exit_status(), 2);
        assert!(run(&[]).is_err());
    }

    #[test]
    fn a_run_prints_one_json_line() {
        let line = run(&args("cpu --events 200")).unwrap().to_string();
        assert!(!line.contains('\n'));
        assert!(line.starts_with("{\"workload\":\"cpu\""), "{line}");
        assert!(line.contains("\"checksum\":\""), "{line}");
    }
}
