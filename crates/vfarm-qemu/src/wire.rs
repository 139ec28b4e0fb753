//! The line-oriented JSON transport shared by QMP and the guest agent: one JSON object per
//! line over a local unix stream socket, every read bounded by a deadline.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};

/// A point in time an operation must finish by, with the budget it was given (for messages).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) budget: Duration,
}

impl Deadline {
    pub(crate) fn after(budget: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + budget,
            budget,
        }
    }
    pub(crate) fn expired(&self) -> bool {
        Instant::now() >= self.at
    }
}

pub(crate) struct Wire {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Names the peer in errors ("QMP", "guest agent").
    what: &'static str,
}

impl Wire {
    pub(crate) fn connect(path: &Path, what: &'static str, timeout: Duration) -> Result<Wire> {
        // A unix-socket connect does not block on a listening socket, so the timeout only
        // matters for the writes and reads that follow.
        let stream = UnixStream::connect(path).map_err(|source| Error::Socket { what, source })?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|source| Error::Socket { what, source })?;
        Ok(Wire {
            stream,
            buf: Vec::new(),
            what,
        })
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let what = self.what;
        self.stream
            .write_all(bytes)
            .map_err(|source| match source.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => Error::Timeout {
                    what: format!("writing to the {what} socket"),
                    after: self
                        .stream
                        .write_timeout()
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                },
                ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => Error::Disconnected { what },
                _ => Error::Socket { what, source },
            })
    }

    pub(crate) fn send_json(&mut self, value: &Value) -> Result<()> {
        let mut line = serde_json::to_vec(value).expect("a serde_json::Value always serializes");
        line.push(b'\n');
        self.send(&line)
    }

    /// Reads more bytes into the buffer, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Deadline, doing: &str) -> Result<()> {
        let what = self.what;
        let now = Instant::now();
        if now >= deadline.at {
            return Err(self.timeout(doing, deadline));
        }
        self.stream
            .set_read_timeout(Some(deadline.at - now))
            .map_err(|source| Error::Socket { what, source })?;
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(Error::Disconnected { what }),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(self.timeout(doing, deadline))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => Err(Error::Disconnected { what }),
            Err(source) => Err(Error::Socket { what, source }),
        }
    }

    fn timeout(&self, doing: &str, deadline: Deadline) -> Error {
        Error::Timeout {
            what: format!("{} ({doing})", self.what),
            after: deadline.budget,
        }
    }

    /// The next non-empty line, without its newline.
    pub(crate) fn read_line(&mut self, deadline: Deadline, doing: &str) -> Result<Vec<u8>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(line);
            }
            self.fill(deadline, doing)?;
        }
    }

    /// The next line parsed as a JSON object.
    pub(crate) fn read_json(&mut self, deadline: Deadline, doing: &str) -> Result<Value> {
        let line = self.read_line(deadline, doing)?;
        serde_json::from_slice(&line).map_err(|e| Error::Protocol {
            what: self.what,
            detail: format!("{e} in {:?}", String::from_utf8_lossy(&line)),
        })
    }

    /// Discards input up to and including the next 0xFF byte — the guest agent's marker that a
    /// `guest-sync-delimited` reply follows and everything before it is stale.
    pub(crate) fn skip_past_sentinel(&mut self, deadline: Deadline, doing: &str) -> Result<()> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == 0xFF) {
                self.buf.drain(..=pos);
                return Ok(());
            }
            self.buf.clear();
            self.fill(deadline, doing)?;
        }
    }
}

/// The `{"error": {"class", "desc"}}` of a reply, if it is one.
pub(crate) fn reply_error(reply: &Value) -> Option<(String, String)> {
    let err = reply.get("error")?;
    let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    Some((field("class"), field("desc")))
}
