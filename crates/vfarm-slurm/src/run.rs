//! Running one Slurm tool with a deadline, its stdin fed and its output collected.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

#[derive(Debug)]
pub(crate) struct Output {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
    pub status: String,
}

pub(crate) fn run(
    tool: &str,
    args: &[String],
    conf: Option<&Path>,
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<Output> {
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(c) = conf {
        cmd.env("SLURM_CONF", c);
    }
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::ToolMissing {
                tool: tool.into(),
                source: e,
            }
        } else {
            Error::Io {
                what: format!("starting {tool}"),
                source: e,
            }
        }
    })?;
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    // Readers in threads so a chatty tool never blocks on a full pipe while we wait.
    let out_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes the pipe: its exit status tells why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout {
                    tool: tool.into(),
                    secs: timeout.as_secs(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                return Err(Error::Io {
                    what: format!("waiting for {tool}"),
                    source: e,
                })
            }
        }
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Ok(Output {
        stdout,
        stderr: stderr.trim().to_string(),
        success: status.success(),
        status: status.to_string(),
    })
}

/// Classifies a failed tool run: controller unreachable, or a plain failure.
pub(crate) fn failure(tool: &str, out: Output) -> Error {
    let e = &out.stderr;
    if e.contains("Could not establish a configuration source")
        || e.contains("_establish_config_source")
    {
        return Error::NotConfigured { tool: tool.into() };
    }
    if e.contains("Unable to contact slurm controller")
        || e.contains("Munge")
        || e.contains("munge")
        || e.contains("Socket timed out")
        || e.contains("Connection refused")
    {
        return Error::Unreachable {
            tool: tool.into(),
            message: e.clone(),
        };
    }
    Error::CommandFailed {
        tool: tool.into(),
        status: out.status,
        stderr: if e.is_empty() { out.stdout } else { e.clone() },
    }
}
