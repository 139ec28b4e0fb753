//! A client for the QEMU guest agent (qemu-ga) on its host-side unix socket.
//!
//! The socket is a stream that outlives any one client and keeps whatever the agent wrote
//! earlier: replies to commands of a client that gave up, or to commands sent before the agent
//! was even running (QEMU holds them until the guest opens its port). So before every command
//! the client resynchronises as the agent's protocol prescribes: it sends a 0xFF byte (which
//! resets the agent's JSON parser), then `guest-sync-delimited` with a fresh random id, discards
//! everything up to the 0xFF sentinel that precedes that reply and checks the id. Only then is
//! the next reply known to belong to the next command.

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::wire::{reply_error, Deadline, Wire};

const WHAT: &str = "guest agent";

/// How a guest process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Code(i64),
    Signal(i64),
}

/// A finished `guest-exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit: ExitKind,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The agent keeps at most a few MB of output per stream; more is cut off.
    pub truncated: bool,
}

impl ExecOutput {
    pub fn code(&self) -> Option<i64> {
        match self.exit {
            ExitKind::Code(c) => Some(c),
            ExitKind::Signal(_) => None,
        }
    }
}

/// `guest-exec-status` of a process that may still run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecStatus {
    Running,
    Exited(ExecOutput),
}

/// `guest-get-osinfo` (fields from the guest's os-release and uname).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct OsInfo {
    pub id: Option<String>,
    pub name: Option<String>,
    pub pretty_name: Option<String>,
    pub version: Option<String>,
    pub version_id: Option<String>,
    pub kernel_release: Option<String>,
    pub kernel_version: Option<String>,
    pub machine: Option<String>,
}

/// What to run with `guest-exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// Program path; the agent searches its `PATH` for a bare name.
    pub path: String,
    pub args: Vec<String>,
    /// `NAME=value` entries; when given they replace the agent's environment.
    pub env: Vec<String>,
    pub stdin: Option<Vec<u8>>,
}

impl ExecRequest {
    pub fn new(path: impl Into<String>, args: &[&str]) -> ExecRequest {
        ExecRequest {
            path: path.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }
}

pub struct GuestAgent {
    wire: Wire,
    timeout: Duration,
}

impl GuestAgent {
    /// Connects to the agent's socket; nothing is exchanged yet.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<GuestAgent> {
        Ok(GuestAgent {
            wire: Wire::connect(socket, WHAT, timeout)?,
            timeout,
        })
    }

    /// Waits until the agent in a booting guest answers, for at most `wait`. Connects once and
    /// keeps the connection: QEMU queues what is sent until the guest opens its port, and a
    /// reconnect would leave those queued commands to be answered to nobody.
    pub fn wait_ready(socket: &Path, wait: Duration, timeout: Duration) -> Result<GuestAgent> {
        let deadline = Deadline::after(wait);
        let mut agent = loop {
            match GuestAgent::connect(socket, timeout) {
                Ok(a) => break a,
                Err(Error::Socket { .. }) if !deadline.expired() => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(Error::Socket { source, .. }) => {
                    return Err(Error::Timeout {
                        what: format!(
                            "connecting to the guest agent socket {} ({source})",
                            socket.display()
                        ),
                        after: wait,
                    })
                }
                Err(e) => return Err(e),
            }
        };
        // Short attempts, so a sync sent before the agent ran (lost with the unopened port) is
        // soon followed by a fresh one: the wait after the agent starts is at most one
        // attempt. They grow, so an agent slower to answer than an attempt still gets through.
        let mut attempt = Duration::from_millis(25);
        loop {
            let remaining = deadline
                .at
                .saturating_duration_since(std::time::Instant::now());
            match agent.sync(remaining.min(attempt)) {
                Ok(()) => break,
                Err(Error::Timeout { .. }) if !deadline.expired() => {
                    attempt = (attempt * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(Error::Timeout { .. }) => {
                    return Err(Error::Timeout {
                        what: "waiting for the guest agent to answer".into(),
                        after: wait,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        agent.raw_execute("guest-ping", None)?;
        Ok(agent)
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Resynchronises the stream (see the module comment), waiting at most `timeout`.
    pub fn sync(&mut self, timeout: Duration) -> Result<()> {
        // The agent's sync id is a JSON int; keep it positive and within i32 for any agent.
        let id = i64::from(fastrand::u32(1..i32::MAX as u32));
        self.wire.send(&[0xFF])?;
        self.wire.send_json(&json!({
            "execute": "guest-sync-delimited",
            "arguments": { "id": id }
        }))?;
        let deadline = Deadline::after(timeout);
        loop {
            self.wire
                .skip_past_sentinel(deadline, "guest-sync-delimited")?;
            let reply = self.wire.read_json(deadline, "guest-sync-delimited")?;
            // Replies to earlier syncs (ours that timed out, or another client's) are stale.
            if reply.get("return").and_then(Value::as_i64) == Some(id) {
                return Ok(());
            }
        }
    }

    /// Syncs, then runs any agent command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.sync(self.timeout)?;
        self.raw_execute(command, arguments)
    }

    /// Syncs, then sends a command that does not answer on success (`guest-shutdown`,
    /// `guest-suspend-*`).
    pub fn execute_no_reply(&mut self, command: &str, arguments: Option<Value>) -> Result<()> {
        self.sync(self.timeout)?;
        self.wire.send_json(&command_json(command, arguments))
    }

    fn raw_execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.wire.send_json(&command_json(command, arguments))?;
        let reply = self
            .wire
            .read_json(Deadline::after(self.timeout), command)?;
        if let Some((class, desc)) = reply_error(&reply) {
            return Err(Error::GuestAgent {
                command: command.to_string(),
                class,
                desc,
            });
        }
        reply.get("return").cloned().ok_or_else(|| Error::Protocol {
            what: WHAT,
            detail: format!("reply to {command} has neither return nor error: {reply}"),
        })
    }

    pub fn ping(&mut self) -> Result<()> {
        self.execute("guest-ping", None).map(drop)
    }

    pub fn osinfo(&mut self) -> Result<OsInfo> {
        let v = self.execute("guest-get-osinfo", None)?;
        serde_json::from_value(v).map_err(|e| protocol(format!("guest-get-osinfo: {e}")))
    }

    /// Starts a process with captured output and returns its guest pid.
    pub fn exec_start(&mut self, req: &ExecRequest) -> Result<i64> {
        let mut args = json!({
            "path": req.path,
            "arg": req.args,
            "capture-output": true,
        });
        if !req.env.is_empty() {
            args["env"] = json!(req.env);
        }
        if let Some(input) = &req.stdin {
            args["input-data"] = json!(B64.encode(input));
        }
        let v = self.execute("guest-exec", Some(args))?;
        v.get("pid")
            .and_then(Value::as_i64)
            .ok_or_else(|| protocol(format!("guest-exec returned {v}")))
    }

    pub fn exec_status(&mut self, pid: i64) -> Result<ExecStatus> {
        let v = self.execute("guest-exec-status", Some(json!({ "pid": pid })))?;
        parse_exec_status(&v)
    }

    /// Runs a process to completion, polling its status, for at most `limit`. On timeout the
    /// process keeps running in the guest (the agent has no kill command).
    pub fn exec(&mut self, req: &ExecRequest, limit: Duration) -> Result<ExecOutput> {
        let deadline = Deadline::after(limit);
        let pid = self.exec_start(req)?;
        let mut pause = Duration::from_millis(20);
        loop {
            if let ExecStatus::Exited(out) = self.exec_status(pid)? {
                return Ok(out);
            }
            if deadline.expired() {
                return Err(Error::Timeout {
                    what: format!("guest process {} (pid {pid})", req.path),
                    after: limit,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// Opens a guest file (`mode` as for fopen: "r", "w", "a", "r+" …) and returns the handle.
    pub fn file_open(&mut self, path: &str, mode: &str) -> Result<i64> {
        let v = self.execute(
            "guest-file-open",
            Some(json!({ "path": path, "mode": mode })),
        )?;
        v.as_i64()
            .ok_or_else(|| protocol(format!("guest-file-open returned {v}")))
    }

    /// Reads up to `count` bytes; the flag is true at end of file.
    pub fn file_read(&mut self, handle: i64, count: usize) -> Result<(Vec<u8>, bool)> {
        let v = self.execute(
            "guest-file-read",
            Some(json!({ "handle": handle, "count": count })),
        )?;
        let data = decode_b64(v.get("buf-b64"), "guest-file-read")?;
        let eof = v.get("eof").and_then(Value::as_bool).unwrap_or(false);
        Ok((data, eof))
    }

    /// Writes bytes and returns how many the guest took.
    pub fn file_write(&mut self, handle: i64, data: &[u8]) -> Result<usize> {
        let v = self.execute(
            "guest-file-write",
            Some(json!({ "handle": handle, "buf-b64": B64.encode(data) })),
        )?;
        v.get("count")
            .and_then(Value::as_u64)
            .map(|c| c as usize)
            .ok_or_else(|| protocol(format!("guest-file-write returned {v}")))
    }

    pub fn file_close(&mut self, handle: i64) -> Result<()> {
        self.execute("guest-file-close", Some(json!({ "handle": handle })))
            .map(drop)
    }

    /// Reads a whole guest file (in chunks the agent accepts).
    pub fn read_file(&mut self, path: &str) -> Result<Vec<u8>> {
        let handle = self.file_open(path, "r")?;
        let result = (|| {
            let mut out = Vec::new();
            loop {
                let (chunk, eof) = self.file_read(handle, FILE_CHUNK)?;
                out.extend_from_slice(&chunk);
                if eof || chunk.is_empty() {
                    return Ok(out);
                }
            }
        })();
        // Close even after a failed read, or the agent keeps the handle open.
        let closed = self.file_close(handle);
        let out = result?;
        closed?;
        Ok(out)
    }

    /// Writes a whole guest file, replacing it.
    pub fn write_file(&mut self, path: &str, data: &[u8]) -> Result<()> {
        let handle = self.file_open(path, "w")?;
        let result = (|| {
            let mut rest = data;
            while !rest.is_empty() {
                let n = rest.len().min(FILE_CHUNK);
                let written = self.file_write(handle, &rest[..n])?;
                if written == 0 {
                    return Err(protocol("guest-file-write wrote nothing".into()));
                }
                rest = &rest[written..];
            }
            Ok(())
        })();
        let closed = self.file_close(handle);
        result?;
        closed
    }

    /// Freezes the guest's file systems (for a consistent disk snapshot); returns how many.
    pub fn fsfreeze_freeze(&mut self) -> Result<u64> {
        let v = self.execute("guest-fsfreeze-freeze", None)?;
        v.as_u64()
            .ok_or_else(|| protocol(format!("guest-fsfreeze-freeze returned {v}")))
    }

    /// Thaws them again; returns how many.
    pub fn fsfreeze_thaw(&mut self) -> Result<u64> {
        let v = self.execute("guest-fsfreeze-thaw", None)?;
        v.as_u64()
            .ok_or_else(|| protocol(format!("guest-fsfreeze-thaw returned {v}")))
    }

    /// "thawed" or "frozen".
    pub fn fsfreeze_status(&mut self) -> Result<String> {
        let v = self.execute("guest-fsfreeze-status", None)?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| protocol(format!("guest-fsfreeze-status returned {v}")))
    }
}

/// Bytes per guest-file-read/write: the agent's replies must stay well below its message
/// size limit once base64-encoded.
const FILE_CHUNK: usize = 48 * 1024;

fn command_json(command: &str, arguments: Option<Value>) -> Value {
    let mut msg = json!({ "execute": command });
    if let Some(args) = arguments {
        msg["arguments"] = args;
    }
    msg
}

fn protocol(detail: String) -> Error {
    Error::Protocol { what: WHAT, detail }
}

fn decode_b64(v: Option<&Value>, command: &str) -> Result<Vec<u8>> {
    match v.and_then(Value::as_str) {
        None => Ok(Vec::new()),
        Some(s) => B64
            .decode(s)
            .map_err(|e| protocol(format!("{command}: bad base64: {e}"))),
    }
}

fn parse_exec_status(v: &Value) -> Result<ExecStatus> {
    let exited = v
        .get("exited")
        .and_then(Value::as_bool)
        .ok_or_else(|| protocol(format!("guest-exec-status returned {v}")))?;
    if !exited {
        return Ok(ExecStatus::Running);
    }
    let exit = match (
        v.get("exitcode").and_then(Value::as_i64),
        v.get("signal").and_then(Value::as_i64),
    ) {
        (_, Some(sig)) => ExitKind::Signal(sig),
        (Some(code), None) => ExitKind::Code(code),
        (None, None) => return Err(protocol(format!("exited without code or signal: {v}"))),
    };
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    Ok(ExecStatus::Exited(ExecOutput {
        exit,
        stdout: decode_b64(v.get("out-data"), "guest-exec-status")?,
        stderr: decode_b64(v.get("err-data"), "guest-exec-status")?,
        truncated: flag("out-truncated") || flag("err-truncated"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    /// A fake agent that answers like qemu-ga, including the stale reply a previous client left
    /// behind and the parser-error reply to the 0xFF byte.
    fn fake_agent(path: &Path) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            // Left over from someone else's command.
            s.write_all(b"{\"return\": {\"pid\": 999}}\n").unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                // Split the input into JSON messages on newlines, 0xFF resets the parser.
                while let Some(pos) = buf.iter().position(|&b| b == b'\n' || b == 0xFF) {
                    let msg: Vec<u8> = buf.drain(..=pos).collect();
                    if msg.last() == Some(&0xFF) {
                        s.write_all(b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"Invalid JSON syntax\"}}\n").unwrap();
                        continue;
                    }
                    let req: Value = serde_json::from_slice(&msg[..msg.len() - 1]).unwrap();
                    let cmd = req["execute"].as_str().unwrap().to_string();
                    let reply = match cmd.as_str() {
                        "guest-sync-delimited" => {
                            s.write_all(&[0xFF]).unwrap();
                            json!({ "return": req["arguments"]["id"] })
                        }
                        "guest-ping" => json!({ "return": {} }),
                        "guest-exec" => json!({ "return": { "pid": 42 } }),
                        "guest-exec-status" => json!({ "return": {
                            "exited": true, "exitcode": 7,
                            "out-data": B64.encode("hello\n"), "out-truncated": false
                        }}),
                        "guest-get-osinfo" => json!({ "return": {
                            "id": "debian", "version-id": "12", "kernel-release": "6.1.0"
                        }}),
                        _ => {
                            json!({ "error": { "class": "CommandNotFound", "desc": format!("{cmd} unknown") } })
                        }
                    };
                    s.write_all(format!("{reply}\n").as_bytes()).unwrap();
                }
                let n = s.read(&mut chunk).unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        })
    }

    #[test]
    fn sync_discards_stale_replies_and_exec_decodes_output() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let server = fake_agent(&path);
        let mut ga =
            GuestAgent::wait_ready(&path, Duration::from_secs(5), Duration::from_secs(5)).unwrap();
        ga.ping().unwrap();
        let out = ga
            .exec(
                &ExecRequest::new("/bin/sh", &["-c", "exit 7"]),
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(out.exit, ExitKind::Code(7));
        assert_eq!(out.stdout, b"hello\n");
        let info = ga.osinfo().unwrap();
        assert_eq!(info.id.as_deref(), Some("debian"));
        assert_eq!(info.version_id.as_deref(), Some("12"));
        match ga.execute("guest-nope", None) {
            Err(Error::GuestAgent { class, .. }) => assert_eq!(class, "CommandNotFound"),
            other => panic!("expected an agent error, got {other:?}"),
        }
        drop(ga);
        server.join().unwrap();
    }

    #[test]
    fn silent_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(800));
            drop(s);
        });
        let err = GuestAgent::wait_ready(
            &path,
            Duration::from_millis(300),
            Duration::from_millis(300),
        )
        .err()
        .expect("must time out");
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        t.join().unwrap();
    }

    #[test]
    fn exec_status_parsing() {
        assert_eq!(
            parse_exec_status(&json!({ "exited": false })).unwrap(),
            ExecStatus::Running
        );
        let st = parse_exec_status(&json!({ "exited": true, "signal": 9 })).unwrap();
        match st {
            ExecStatus::Exited(o) => {
                assert_eq!(o.exit, ExitKind::Signal(9));
                assert_eq!(o.code(), None);
            }
            ExecStatus::Running => panic!("exited"),
        }
        assert!(parse_exec_status(&json!({ "exited": true })).is_err());
    }
}
