//! A synchronous QMP client with a timeout on every exchange.
//!
//! Why not the `qapi` crate (its `qmp` feature): its synchronous client reads lines with no
//! notion of a deadline (a socket read timeout in the middle of its line reader loses the
//! partial line and the stream's framing with it), its typed commands are generated from a
//! newer QEMU schema than the QEMU 7.2 this project runs on, the generation makes it a heavy
//! build, and its guest-agent side has no `guest-sync-delimited` (its line reader would choke on
//! the 0xFF sentinel). The commands vfarm needs are few, so a small client over `serde_json`
//! with one shared, deadline-aware line transport (`wire`) serves both QMP and the agent.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::wire::{reply_error, Deadline, Wire};

const WHAT: &str = "QMP";

/// The QEMU version from the QMP greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuVersion {
    pub major: u64,
    pub minor: u64,
    pub micro: u64,
    pub package: String,
}

/// `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VmStatus {
    pub running: bool,
    /// QEMU's run state: `running`, `paused`, `shutdown`, `inmigrate`, `postmigrate`, …
    pub status: String,
}

/// One block device's I/O counters from `query-blockstats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockStats {
    /// The `-drive id` (the device name) or, for nodes without one, the node name.
    pub device: String,
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
    pub flush_operations: u64,
}

/// An asynchronous QMP event (`SHUTDOWN`, `STOP`, `RESUME`, `MIGRATION`, …) received while
/// waiting for a reply; kept so a caller can look at them later.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub event: String,
    pub data: Value,
}

pub struct Qmp {
    wire: Wire,
    timeout: Duration,
    version: QemuVersion,
    events: Vec<QmpEvent>,
    next_id: u64,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capability-negotiation mode, each step bounded by
    /// `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Qmp> {
        let mut wire = Wire::connect(socket, WHAT, timeout)?;
        let greeting = wire.read_json(Deadline::after(timeout), "greeting")?;
        let version = parse_greeting(&greeting)?;
        let mut qmp = Qmp {
            wire,
            timeout,
            version,
            events: Vec::new(),
            next_id: 1,
        };
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Keeps connecting until QEMU's socket accepts or `wait` has passed (QEMU creates the
    /// socket a moment after it starts).
    pub fn connect_retry(socket: &Path, wait: Duration, timeout: Duration) -> Result<Qmp> {
        let deadline = Deadline::after(wait);
        loop {
            match Qmp::connect(socket, timeout) {
                Ok(q) => return Ok(q),
                Err(Error::Socket { .. }) if !deadline.expired() => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(Error::Socket { source, .. }) => {
                    return Err(Error::Timeout {
                        what: format!(
                            "connecting to the QMP socket {} ({source})",
                            socket.display()
                        ),
                        after: wait,
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn version(&self) -> &QemuVersion {
        &self.version
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Takes the events received so far.
    pub fn take_events(&mut self) -> Vec<QmpEvent> {
        std::mem::take(&mut self.events)
    }

    /// Runs any command and returns its `return` value. Commands without a typed wrapper
    /// (`migrate`, `snapshot-save`, `blockdev-snapshot-sync`, …) go through here.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let id = self.send(command, arguments)?;
        self.wait_reply(command, id)
    }

    fn send(&mut self, command: &str, arguments: Option<Value>) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        self.wire.send_json(&msg)?;
        Ok(id)
    }

    fn wait_reply(&mut self, command: &str, id: u64) -> Result<Value> {
        let deadline = Deadline::after(self.timeout);
        loop {
            let msg = self.wire.read_json(deadline, command)?;
            if let Some(event) = msg.get("event").and_then(Value::as_str) {
                self.events.push(QmpEvent {
                    event: event.to_string(),
                    data: msg.get("data").cloned().unwrap_or(Value::Null),
                });
                continue;
            }
            // A reply to an earlier command whose wait timed out: not ours, skip it.
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            if let Some((class, desc)) = reply_error(&msg) {
                return Err(Error::Qmp {
                    command: command.to_string(),
                    class,
                    desc,
                });
            }
            return msg.get("return").cloned().ok_or_else(|| Error::Protocol {
                what: WHAT,
                detail: format!("reply to {command} has neither return nor error: {msg}"),
            });
        }
    }

    pub fn query_status(&mut self) -> Result<VmStatus> {
        let v = self.execute("query-status", None)?;
        decode(v, "query-status")
    }

    /// Pauses the guest's CPUs.
    pub fn stop(&mut self) -> Result<()> {
        self.execute("stop", None).map(drop)
    }

    /// Resumes the guest's CPUs.
    pub fn cont(&mut self) -> Result<()> {
        self.execute("cont", None).map(drop)
    }

    /// Presses the ACPI power button. The guest decides what to do: a guest without an ACPI
    /// listener (such as the fast profile, where qemu-ga is PID 1) ignores it.
    pub fn system_powerdown(&mut self) -> Result<()> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// Ends QEMU at once (the guest gets no chance to shut down). QEMU may close the socket
    /// before or after replying; both mean it is going away.
    pub fn quit(mut self) -> Result<()> {
        let id = self.send("quit", None)?;
        match self.wait_reply("quit", id) {
            Ok(_) | Err(Error::Disconnected { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn query_blockstats(&mut self) -> Result<Vec<BlockStats>> {
        let v = self.execute("query-blockstats", None)?;
        parse_blockstats(&v)
    }

    /// Runs a human monitor (HMP) command (`info snapshots`, `savevm NAME`, `loadvm NAME`, …) and
    /// returns its text output. HMP commands report many failures only in that text.
    pub fn human_monitor_command(&mut self, command_line: &str) -> Result<String> {
        let v = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": command_line })),
        )?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::Protocol {
                what: WHAT,
                detail: format!("human-monitor-command returned {v}"),
            })
    }

    /// Runs an HMP command that prints nothing on success (`savevm`, `loadvm`, `delvm`) and turns
    /// any output into an error: those commands report failures only as text.
    pub fn hmp_silent(&mut self, command_line: &str) -> Result<()> {
        let out = self.human_monitor_command(command_line)?;
        if out.trim().is_empty() {
            Ok(())
        } else {
            Err(Error::Qmp {
                command: format!("human-monitor-command {command_line:?}"),
                class: "HmpError".into(),
                desc: out.trim().to_string(),
            })
        }
    }

    /// Starts a migration (or a checkpoint, with an `exec:` or `file:` URI) to `uri`.
    pub fn migrate(&mut self, uri: &str) -> Result<()> {
        self.execute("migrate", Some(json!({ "uri": uri })))
            .map(drop)
    }

    pub fn query_migrate(&mut self) -> Result<MigrationInfo> {
        let v = self.execute("query-migrate", None)?;
        decode(v, "query-migrate")
    }

    /// Polls `query-migrate` until the migration completed (`Ok`), failed or was cancelled
    /// (`Err`), for at most `limit`.
    pub fn wait_migration(&mut self, limit: Duration) -> Result<MigrationInfo> {
        let deadline = Deadline::after(limit);
        loop {
            let info = self.query_migrate()?;
            match info.status.as_deref() {
                Some("completed") => return Ok(info),
                Some(s @ ("failed" | "cancelled")) => {
                    return Err(Error::Qmp {
                        command: "migrate".into(),
                        class: s.to_string(),
                        desc: info.error_desc.unwrap_or_default(),
                    })
                }
                _ => {}
            }
            if deadline.expired() {
                return Err(Error::Timeout {
                    what: "migration".into(),
                    after: limit,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for an incoming migration on `uri` (a QEMU started with `-incoming defer`).
    pub fn migrate_incoming(&mut self, uri: &str) -> Result<()> {
        self.execute("migrate-incoming", Some(json!({ "uri": uri })))
            .map(drop)
    }

    /// Cancels a running outgoing migration (the source keeps its state).
    pub fn migrate_cancel(&mut self) -> Result<()> {
        self.execute("migrate_cancel", None).map(drop)
    }

    /// Turns migration capabilities (`pause-before-switchover`, …) on or off.
    pub fn migrate_set_capabilities(&mut self, caps: &[(&str, bool)]) -> Result<()> {
        let list: Vec<Value> = caps
            .iter()
            .map(|(c, on)| json!({ "capability": c, "state": on }))
            .collect();
        self.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": list })),
        )
        .map(drop)
    }

    pub fn query_block_jobs(&mut self) -> Result<Vec<BlockJob>> {
        let v = self.execute("query-block-jobs", None)?;
        decode(v, "query-block-jobs")
    }

    /// The block node behind a `-drive id=…` device (what `block-export-add` takes).
    pub fn block_node_name(&mut self, device: &str) -> Result<String> {
        let v = self.execute("query-block", None)?;
        v.as_array()
            .into_iter()
            .flatten()
            .find(|b| b.get("device").and_then(Value::as_str) == Some(device))
            .and_then(|b| b.pointer("/inserted/node-name"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::Protocol {
                what: WHAT,
                detail: format!("query-block lists no medium for device {device}"),
            })
    }

    /// Polls `query-status` until the VM's run state is `status`, for at most `limit` (e.g.
    /// `running` after an incoming migration).
    pub fn wait_status(&mut self, status: &str, limit: Duration) -> Result<VmStatus> {
        let deadline = Deadline::after(limit);
        loop {
            let st = self.query_status()?;
            if st.status == status {
                return Ok(st);
            }
            if deadline.expired() {
                return Err(Error::Timeout {
                    what: format!("VM state {status} (still {})", st.status),
                    after: limit,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `query-migrate` (the parts used here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// `setup`, `active`, `completed`, `failed`, `cancelled`, …; absent before any migration.
    pub status: Option<String>,
    /// Milliseconds the migration took, once completed.
    pub total_time: Option<u64>,
    /// How long the guest was paused for the final copy, in milliseconds.
    pub downtime: Option<u64>,
    pub error_desc: Option<String>,
    /// RAM transfer counters (absent before a migration starts).
    #[serde(default)]
    pub ram: Option<MigrationRam>,
}

/// `query-migrate`'s `ram` section (the parts used here).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MigrationRam {
    /// Bytes sent so far (what went over the wire, zero pages as a few bytes each).
    pub transferred: u64,
    /// Guest RAM size.
    pub total: u64,
    pub remaining: u64,
}

/// One running block job (`query-block-jobs`), e.g. a `drive-mirror`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockJob {
    /// The job id (`job-id`, or the device name when none was given).
    pub device: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Progress: `offset` of `len` bytes done (both grow while the guest writes).
    pub len: u64,
    pub offset: u64,
    /// A mirror is ready once source and target are in sync.
    pub ready: bool,
    pub status: String,
}

fn decode<T: for<'de> Deserialize<'de>>(v: Value, command: &str) -> Result<T> {
    serde_json::from_value(v).map_err(|e| Error::Protocol {
        what: WHAT,
        detail: format!("{command}: {e}"),
    })
}

fn parse_greeting(greeting: &Value) -> Result<QemuVersion> {
    let q = greeting
        .pointer("/QMP/version")
        .ok_or_else(|| Error::Protocol {
            what: WHAT,
            detail: format!("expected a greeting, got {greeting}"),
        })?;
    let num = |k: &str| {
        q.pointer(&format!("/qemu/{k}"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(QemuVersion {
        major: num("major"),
        minor: num("minor"),
        micro: num("micro"),
        package: q
            .get("package")
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_string(),
    })
}

fn parse_blockstats(v: &Value) -> Result<Vec<BlockStats>> {
    let items = v.as_array().ok_or_else(|| Error::Protocol {
        what: WHAT,
        detail: format!("query-blockstats returned {v}"),
    })?;
    Ok(items
        .iter()
        .map(|item| {
            let name = item
                .get("device")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .or_else(|| item.get("node-name").and_then(Value::as_str))
                .unwrap_or("")
                .to_string();
            let stat = |k: &str| {
                item.pointer(&format!("/stats/{k}"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            BlockStats {
                device: name,
                rd_bytes: stat("rd_bytes"),
                wr_bytes: stat("wr_bytes"),
                rd_operations: stat("rd_operations"),
                wr_operations: stat("wr_operations"),
                flush_operations: stat("flush_operations"),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A scripted QMP server: for each expected command (checked by name) it writes the given
    /// lines, with `{id}` replaced by the request's id.
    fn fake_server(
        dir: &Path,
        script: Vec<(&'static str, Vec<&'static str>)>,
    ) -> std::thread::JoinHandle<()> {
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"Debian 1:7.2\"}, \"capabilities\": [\"oob\"]}}\r\n").unwrap();
            let mut r = BufReader::new(stream);
            for (expect, replies) in script {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    return;
                }
                let req: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(req["execute"], expect, "{line}");
                let id = req["id"].to_string();
                for reply in replies {
                    w.write_all(reply.replace("{id}", &id).as_bytes()).unwrap();
                    w.write_all(b"\r\n").unwrap();
                }
            }
            // Keep the connection open until the client is done.
            let mut rest = String::new();
            let _ = r.read_line(&mut rest);
        })
    }

    #[test]
    fn handshake_status_events_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let server = fake_server(
            dir.path(),
            vec![
                ("qmp_capabilities", vec![r#"{"return": {}, "id": {id}}"#]),
                (
                    "query-status",
                    vec![
                        r#"{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}"#,
                        r#"{"return": {"status": "paused", "singlestep": false, "running": false}, "id": {id}}"#,
                    ],
                ),
                (
                    "cont",
                    vec![
                        r#"{"error": {"class": "GenericError", "desc": "cannot cont"}, "id": {id}}"#,
                    ],
                ),
                (
                    "query-blockstats",
                    vec![
                        r#"{"return": [{"device": "disk0", "stats": {"rd_bytes": 512, "wr_bytes": 1024, "rd_operations": 1, "wr_operations": 2, "flush_operations": 3}}], "id": {id}}"#,
                    ],
                ),
                (
                    "human-monitor-command",
                    vec![r#"{"return": "No snapshots\r\n", "id": {id}}"#],
                ),
            ],
        );
        let mut qmp = Qmp::connect(&dir.path().join("qmp.sock"), Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.version().major, 7);
        assert_eq!(qmp.version().minor, 2);
        let st = qmp.query_status().unwrap();
        assert_eq!(
            st,
            VmStatus {
                running: false,
                status: "paused".into()
            }
        );
        let ev = qmp.take_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].event, "STOP");
        match qmp.cont() {
            Err(Error::Qmp {
                command,
                class,
                desc,
            }) => {
                assert_eq!(
                    (command.as_str(), class.as_str(), desc.as_str()),
                    ("cont", "GenericError", "cannot cont")
                );
            }
            other => panic!("expected a QMP error, got {other:?}"),
        }
        let bs = qmp.query_blockstats().unwrap();
        assert_eq!(bs[0].device, "disk0");
        assert_eq!(
            (bs[0].rd_bytes, bs[0].wr_bytes, bs[0].flush_operations),
            (512, 1024, 3)
        );
        assert_eq!(
            qmp.human_monitor_command("info snapshots").unwrap(),
            "No snapshots\r\n"
        );
        drop(qmp);
        server.join().unwrap();
    }

    #[test]
    fn migration_helpers_decode_qemu_replies() {
        let dir = tempfile::tempdir().unwrap();
        let server = fake_server(
            dir.path(),
            vec![
                ("qmp_capabilities", vec![r#"{"return": {}, "id": {id}}"#]),
                (
                    "query-block",
                    vec![
                        r##"{"return": [{"device": "other", "inserted": {"node-name": "#block1"}}, {"device": "disk0", "inserted": {"node-name": "#block198"}}], "id": {id}}"##,
                    ],
                ),
                (
                    "query-block-jobs",
                    vec![
                        r#"{"return": [{"auto-finalize": true, "io-status": "ok", "device": "m", "busy": false, "len": 4096, "offset": 1024, "status": "running", "paused": false, "speed": 0, "ready": false, "type": "mirror"}], "id": {id}}"#,
                    ],
                ),
                (
                    "query-migrate",
                    vec![
                        r#"{"return": {"status": "completed", "downtime": 43, "total-time": 639, "ram": {"total": 536948736, "remaining": 0, "transferred": 71167657, "mbps": 892.6}}, "id": {id}}"#,
                    ],
                ),
                (
                    "migrate-set-capabilities",
                    vec![r#"{"return": {}, "id": {id}}"#],
                ),
            ],
        );
        let mut qmp = Qmp::connect(&dir.path().join("qmp.sock"), Duration::from_secs(5)).unwrap();
        assert_eq!(qmp.block_node_name("disk0").unwrap(), "#block198");
        let jobs = qmp.query_block_jobs().unwrap();
        assert_eq!(
            (
                jobs[0].device.as_str(),
                jobs[0].kind.as_str(),
                jobs[0].offset,
                jobs[0].ready
            ),
            ("m", "mirror", 1024, false)
        );
        let m = qmp.query_migrate().unwrap();
        assert_eq!((m.downtime, m.total_time), (Some(43), Some(639)));
        assert_eq!(m.ram.map(|r| r.transferred), Some(71_167_657));
        qmp.migrate_set_capabilities(&[("pause-before-switchover", true)])
            .unwrap();
        drop(qmp);
        server.join().unwrap();
    }

    #[test]
    fn silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // Accepts but never greets: a hung QEMU.
        let t = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(600));
            drop(s);
        });
        let err = Qmp::connect(&path, Duration::from_millis(200))
            .err()
            .expect("must time out");
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(err.is_retryable());
        t.join().unwrap();
    }

    #[test]
    fn missing_socket_is_a_socket_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(&dir.path().join("none.sock"), Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(matches!(err, Error::Socket { .. }), "{err}");
    }
}
