//! Instances: their lifecycle state machine and the validation of what a user asks for.
//!
//! Every state change of an instance goes through [`next`]: the CLI, the service and the
//! reaper ask it before acting, so which operation is legal in which state is written once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::size::parse_size;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Recorded; the driver is preparing it (disks, overlays, config).
    Creating,
    /// Prepared, never started.
    Created,
    Running,
    Paused,
    /// Stopped on request or its main process exited with status 0.
    Stopped,
    /// Its main process exited non-zero, died without a status, or preparing it failed.
    Failed,
    /// Gone from the host; the record remains only in the event log.
    Destroyed,
    /// On a node that stopped answering: what runs there is unknown until it answers again
    /// (then the node's own state is taken over). Never dropped silently.
    Lost,
}

impl State {
    pub const ALL: &'static [State] = &[
        State::Creating,
        State::Created,
        State::Running,
        State::Paused,
        State::Stopped,
        State::Failed,
        State::Destroyed,
        State::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Creating => "creating",
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
            State::Failed => "failed",
            State::Destroyed => "destroyed",
            State::Lost => "lost",
        }
    }

    /// Whether processes of the instance may be alive (the driver must be asked).
    pub fn is_active(self) -> bool {
        matches!(self, State::Running | State::Paused)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<State, String> {
        State::ALL
            .iter()
            .copied()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown instance state `{s}`"))
    }
}

/// Something that happens to an instance: a user request or an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The driver finished preparing.
    Prepared,
    /// Preparing failed.
    PrepareFailed,
    Start,
    Pause,
    Resume,
    /// Stop on request (graceful or forced); the exit status does not make it a failure.
    Stop,
    /// The main process ended by itself with this status.
    Exited {
        code: i32,
    },
    /// Nothing runs any more and no status was recorded.
    Lost,
    /// Run another process inside (state unchanged).
    Exec,
    /// Take a snapshot (state unchanged).
    Snapshot,
    /// Revert to a snapshot (a running or paused instance runs again afterwards).
    Revert,
    /// Save a VM's whole state (memory, devices, disk instant); with `stop` the VM ends
    /// afterwards, the checkpoint being its state from then on.
    Checkpoint {
        stop: bool,
    },
    /// Bring a VM back to a checkpoint; it runs afterwards whatever it was doing before.
    Restore,
    Destroy,
}

impl Event {
    /// The verb, for messages ("cannot pause …").
    pub fn verb(self) -> &'static str {
        match self {
            Event::Prepared => "finish preparing",
            Event::PrepareFailed => "fail preparing",
            Event::Start => "start",
            Event::Pause => "pause",
            Event::Resume => "resume",
            Event::Stop => "stop",
            Event::Exited { .. } => "record the exit of",
            Event::Lost => "record the loss of",
            Event::Exec => "exec in",
            Event::Snapshot => "snapshot",
            Event::Revert => "revert",
            Event::Checkpoint { .. } => "checkpoint",
            Event::Restore => "restore",
            Event::Destroy => "destroy",
        }
    }
}

/// An event that is not legal in the current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {verb} an instance that is {state}{hint}")]
pub struct TransitionError {
    pub state: State,
    pub event: Event,
    verb: &'static str,
    hint: &'static str,
}

/// The one transition function: the state after `event`, or why `event` is refused.
pub fn next(state: State, event: Event) -> Result<State, TransitionError> {
    use Event as E;
    use State as S;
    let to = match (state, event) {
        (S::Creating, E::Prepared) => S::Created,
        (S::Creating, E::PrepareFailed) => S::Failed,

        (S::Created | S::Stopped | S::Failed, E::Start) => S::Running,
        (S::Running, E::Pause) => S::Paused,
        (S::Paused, E::Resume) => S::Running,
        (S::Running | S::Paused, E::Stop) => S::Stopped,
        (S::Running | S::Paused, E::Exited { code: 0 }) => S::Stopped,
        (S::Running | S::Paused, E::Exited { .. } | E::Lost) => S::Failed,

        (S::Running, E::Exec) => S::Running,
        (S::Created | S::Running | S::Paused | S::Stopped | S::Failed, E::Snapshot) => state,
        // Revert restarts what was running; a paused instance comes back running.
        (S::Running | S::Paused, E::Revert) => S::Running,
        (S::Created | S::Stopped | S::Failed, E::Revert) => state,
        // Only a live VM has memory to save.
        (S::Running | S::Paused, E::Checkpoint { stop: false }) => state,
        (S::Running | S::Paused, E::Checkpoint { stop: true }) => S::Stopped,
        // A checkpoint exists only if the instance ran; restoring replaces whatever runs now.
        (S::Running | S::Paused | S::Stopped | S::Failed, E::Restore) => S::Running,

        (S::Destroyed, E::Destroy) => return Err(refuse(state, event, "")),
        (_, E::Destroy) => S::Destroyed,
        _ => return Err(refuse(state, event, hint(state, event))),
    };
    Ok(to)
}

fn hint(state: State, event: Event) -> &'static str {
    match (state, event) {
        (State::Paused, Event::Exec | Event::Start) => " (resume it first)",
        (
            State::Stopped | State::Failed | State::Created,
            Event::Exec | Event::Pause | Event::Stop | Event::Checkpoint { .. },
        ) => " (start it first)",
        (State::Created, Event::Restore) => " (it never ran, so it has no checkpoint)",
        (State::Running, Event::Start) | (State::Running, Event::Resume) => {
            " (it is already running)"
        }
        (State::Creating, _) => " (it is still being prepared)",
        (State::Lost, _) => {
            " (its host is not answering; it is taken over again when the host is back)"
        }
        _ => "",
    }
}

fn refuse(state: State, event: Event, hint: &'static str) -> TransitionError {
    TransitionError {
        state,
        event,
        verb: event.verb(),
        hint,
    }
}

/// Why a request for an instance was refused; names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} `{value}`: {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub value: String,
    pub reason: String,
}

fn invalid(field: &'static str, value: &str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Longest duration accepted anywhere (about 100 years): every timestamp `now + duration`
/// stays representable, so no caller can overflow date arithmetic.
pub const MAX_DURATION_SECS: u64 = 100 * 365 * 86_400;

/// A duration like `90s`, `30m`, `2h`, `2d`, `1w` (or plain seconds), in seconds, at most
/// [`MAX_DURATION_SECS`].
pub fn parse_duration(field: &'static str, s: &str) -> Result<u64, InvalidField> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        invalid(
            field,
            s,
            "expected a number with a unit, e.g. 90s, 30m, 2h, 2d",
        )
    })?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(invalid(field, s, "unknown unit (use s, m, h, d or w)")),
    };
    match n.checked_mul(mult) {
        Some(0) => Err(invalid(field, s, "must be longer than zero")),
        Some(v) if v <= MAX_DURATION_SECS => Ok(v),
        _ => Err(invalid(field, s, "too long (at most 100 years)")),
    }
}

/// `K=V` for the instance's environment.
/// A command line as execve takes it: a program name, and no NUL byte anywhere (no argument
/// can hold one).
pub fn validate_command(argv: &[String]) -> Result<(), InvalidField> {
    match argv.first() {
        None => return Err(invalid("command", "", "a command is required")),
        Some(c) if c.is_empty() => return Err(invalid("command", "", "the command name is empty")),
        Some(_) => {}
    }
    if let Some(a) = argv.iter().find(|a| a.contains('\0')) {
        return Err(invalid(
            "command",
            &a.escape_debug().to_string(),
            "contains a NUL byte, which no program argument can hold",
        ));
    }
    Ok(())
}

pub fn parse_env(s: &str) -> Result<(String, String), InvalidField> {
    if s.contains('\0') {
        return Err(invalid(
            "env",
            &s.escape_debug().to_string(),
            "contains a NUL byte, which no environment variable can hold",
        ));
    }
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| invalid("env", s, "expected KEY=VALUE"))?;
    let ok = !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(invalid(
            "env",
            s,
            "the name must be letters, digits and _, not starting with a digit",
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Instance names: what users type instead of ids. Lowercase DNS-label-like, so a name can
/// also serve as a host name.
pub fn validate_name(s: &str) -> Result<(), InvalidField> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        return Err(invalid(
            "name",
            s,
            "use 1-63 of a-z 0-9 -, starting with a letter or digit",
        ));
    }
    // References resolve ids and id prefixes of 4+ hex digits: a name like that could
    // shadow (or be shadowed by) another instance's id.
    if s.len() >= 4 && s.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(
            "name",
            s,
            "a name of 4 or more hex digits could be taken for an instance id; add another letter or a -",
        ));
    }
    Ok(())
}

/// Snapshot names, as the drivers accept them: 1-64 of `A-Z a-z 0-9 . - _`, not starting
/// with a dot (so never `.` or `..`, which a URL or a path would resolve).
pub fn validate_snapshot_name(s: &str) -> Result<(), InvalidField> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            s,
            "a snapshot name is 1-64 of A-Z a-z 0-9 . - _, not starting with a dot",
        ))
    }
}

/// RFC 1123 host names.
pub fn validate_hostname(s: &str) -> Result<(), InvalidField> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "hostname",
            s,
            "use dot-separated labels of letters, digits and inner hyphens",
        ))
    }
}

/// What a user asks for, as typed (CLI flags, API fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceRequest {
    pub name: Option<String>,
    pub cpus: Option<f64>,
    pub memory: Option<String>,
    pub pids: Option<u64>,
    pub hostname: Option<String>,
    pub expiry: Option<String>,
    pub env: Vec<String>,
    pub command: Vec<String>,
}

/// A validated request: limits in numbers, expiry in seconds from creation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSettings {
    pub name: Option<String>,
    pub cpus: Option<f64>,
    pub memory: Option<u64>,
    pub pids: Option<u64>,
    /// `None`: the caller derives one (from the name or the id).
    pub hostname: Option<String>,
    pub expiry_secs: Option<u64>,
    pub env: Vec<(String, String)>,
    pub command: Vec<String>,
}

/// Smallest memory limit accepted: below it not even a shell starts.
pub const MIN_MEMORY: u64 = 4 << 20;
/// Default process limit, so a fork bomb stays inside even when none is asked for.
pub const DEFAULT_PIDS: u64 = 4096;

impl InstanceRequest {
    pub fn validate(&self) -> Result<InstanceSettings, InvalidField> {
        if let Some(n) = &self.name {
            validate_name(n)?;
        }
        if let Some(h) = &self.hostname {
            validate_hostname(h)?;
        }
        if let Some(c) = self.cpus {
            if !(c.is_finite() && (0.01..=1024.0).contains(&c)) {
                return Err(invalid(
                    "cpus",
                    &c.to_string(),
                    "must be between 0.01 and 1024",
                ));
            }
        }
        let memory = match &self.memory {
            Some(m) => {
                let b = parse_size(m).map_err(|r| invalid("memory", m, r))?;
                if b < MIN_MEMORY {
                    return Err(invalid("memory", m, "must be at least 4M"));
                }
                Some(b)
            }
            None => None,
        };
        if self.pids == Some(0) {
            return Err(invalid("pids", "0", "must be at least 1"));
        }
        let expiry_secs = self
            .expiry
            .as_deref()
            .map(|e| parse_duration("expiry", e))
            .transpose()?;
        let env = self
            .env
            .iter()
            .map(|e| parse_env(e))
            .collect::<Result<Vec<_>, _>>()?;
        if !self.command.is_empty() {
            validate_command(&self.command)?;
        }
        Ok(InstanceSettings {
            name: self.name.clone(),
            cpus: self.cpus,
            memory,
            pids: Some(self.pids.unwrap_or(DEFAULT_PIDS)),
            hostname: self.hostname.clone(),
            expiry_secs,
            env,
            command: self.command.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_transitions() {
        let mut s = State::Creating;
        for (e, want) in [
            (Event::Prepared, State::Created),
            (Event::Start, State::Running),
            (Event::Exec, State::Running),
            (Event::Pause, State::Paused),
            (Event::Resume, State::Running),
            (Event::Snapshot, State::Running),
            (Event::Revert, State::Running),
            (Event::Stop, State::Stopped),
            (Event::Start, State::Running),
            (Event::Exited { code: 3 }, State::Failed),
            (Event::Start, State::Running),
            (Event::Exited { code: 0 }, State::Stopped),
            (Event::Destroy, State::Destroyed),
        ] {
            s = next(s, e).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(s, want, "after {e:?}");
        }
    }

    #[test]
    fn illegal_transitions_are_refused_with_a_clear_message() {
        let e = next(State::Stopped, Event::Pause).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot pause an instance that is stopped (start it first)"
        );
        let e = next(State::Paused, Event::Exec).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot exec in an instance that is paused (resume it first)"
        );
        assert!(next(State::Running, Event::Start).is_err());
        assert!(next(State::Destroyed, Event::Destroy).is_err());
        assert!(next(State::Destroyed, Event::Start).is_err());
        assert!(next(State::Creating, Event::Start).is_err());
        assert_eq!(next(State::Paused, Event::Lost), Ok(State::Failed));
        assert_eq!(next(State::Paused, Event::Revert), Ok(State::Running));
        assert_eq!(next(State::Creating, Event::Destroy), Ok(State::Destroyed));
        // Every state except destroyed can be destroyed.
        for s in State::ALL {
            assert_eq!(next(*s, Event::Destroy).is_ok(), *s != State::Destroyed);
        }
    }

    #[test]
    fn checkpoint_and_restore() {
        assert_eq!(
            next(State::Running, Event::Checkpoint { stop: false }),
            Ok(State::Running)
        );
        assert_eq!(
            next(State::Paused, Event::Checkpoint { stop: false }),
            Ok(State::Paused)
        );
        let s = next(State::Running, Event::Checkpoint { stop: true }).unwrap();
        assert_eq!(s, State::Stopped);
        assert_eq!(next(s, Event::Restore), Ok(State::Running));
        assert_eq!(next(State::Running, Event::Restore), Ok(State::Running));
        assert_eq!(next(State::Paused, Event::Restore), Ok(State::Running));
        assert_eq!(next(State::Failed, Event::Restore), Ok(State::Running));
        let e = next(State::Stopped, Event::Checkpoint { stop: true }).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot checkpoint an instance that is stopped (start it first)"
        );
        let e = next(State::Created, Event::Restore).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot restore an instance that is created (it never ran, so it has no checkpoint)"
        );
        assert!(next(State::Creating, Event::Restore).is_err());
        assert!(next(State::Destroyed, Event::Restore).is_err());
    }

    #[test]
    fn states_round_trip_as_text() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), *s);
        }
        assert!("zombie".parse::<State>().is_err());
    }

    /// Finding 16 of issue 15: a name could equal another instance's id or id prefix.
    #[test]
    fn names_cannot_look_like_ids() {
        for bad in ["abcd", "0123456789ab", "deadbeef"] {
            assert_eq!(validate_name(bad).unwrap_err().field, "name", "{bad}");
        }
        for ok in ["web", "abc", "web-1", "deadbeefs", "a-bcd"] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("expiry", "2h").unwrap(), 7200);
        assert_eq!(parse_duration("expiry", "2d").unwrap(), 172_800);
        assert_eq!(parse_duration("timeout", "60s").unwrap(), 60);
        assert_eq!(parse_duration("timeout", "45").unwrap(), 45);
        assert_eq!(parse_duration("expiry", "1w").unwrap(), 604_800);
        assert!(parse_duration("expiry", "2x")
            .unwrap_err()
            .to_string()
            .contains("expiry"));
        assert!(parse_duration("expiry", "0h").is_err());
        assert!(parse_duration("expiry", "h").is_err());
        assert!(parse_duration("expiry", "99999999999999999999d").is_err());
        // Fits in u64 seconds but not in any date: refused as a field error (finding 10).
        let e = parse_duration("expiry", "999999999999w").unwrap_err();
        assert_eq!(e.field, "expiry");
        assert!(e.reason.contains("too long"), "{e}");
        assert_eq!(parse_duration("expiry", "5200w").unwrap(), 5200 * 604_800);
        assert!(parse_duration("expiry", &format!("{}", MAX_DURATION_SECS + 1)).is_err());
        let req = InstanceRequest {
            expiry: Some("999999999999w".into()),
            ..Default::default()
        };
        assert_eq!(req.validate().unwrap_err().field, "expiry");
    }

    #[test]
    fn request_validation_names_the_field() {
        let ok = InstanceRequest {
            name: Some("web-1".into()),
            cpus: Some(2.0),
            memory: Some("512M".into()),
            hostname: Some("web-1.example".into()),
            expiry: Some("2h".into()),
            env: vec!["A=1".into(), "B=x=y".into()],
            command: vec!["sleep".into(), "1".into()],
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(ok.memory, Some(512 << 20));
        assert_eq!(ok.expiry_secs, Some(7200));
        assert_eq!(ok.env[1], ("B".into(), "x=y".into()));
        assert_eq!(ok.pids, Some(DEFAULT_PIDS));

        let field = |r: InstanceRequest| r.validate().unwrap_err().field;
        assert_eq!(
            field(InstanceRequest {
                name: Some("Web".into()),
                ..Default::default()
            }),
            "name"
        );
        assert_eq!(
            field(InstanceRequest {
                cpus: Some(0.0),
                ..Default::default()
            }),
            "cpus"
        );
        assert_eq!(
            field(InstanceRequest {
                memory: Some("1K".into()),
                ..Default::default()
            }),
            "memory"
        );
        assert_eq!(
            field(InstanceRequest {
                memory: Some("lots".into()),
                ..Default::default()
            }),
            "memory"
        );
        assert_eq!(
            field(InstanceRequest {
                hostname: Some("a_b".into()),
                ..Default::default()
            }),
            "hostname"
        );
        assert_eq!(
            field(InstanceRequest {
                expiry: Some("soon".into()),
                ..Default::default()
            }),
            "expiry"
        );
        assert_eq!(
            field(InstanceRequest {
                env: vec!["NOVALUE".into()],
                ..Default::default()
            }),
            "env"
        );
        assert_eq!(
            field(InstanceRequest {
                env: vec!["1X=2".into()],
                ..Default::default()
            }),
            "env"
        );
        // execve cannot pass a NUL byte: bad input, named, with the value shown escaped.
        let e = InstanceRequest {
            command: vec!["sh".into(), "a\0b".into()],
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "command");
        assert_eq!(e.value, "a\\0b");
        assert_eq!(
            field(InstanceRequest {
                env: vec!["A=x\0y".into()],
                ..Default::default()
            }),
            "env"
        );
        assert_eq!(validate_command(&[]).unwrap_err().field, "command");
        assert_eq!(
            field(InstanceRequest {
                pids: Some(0),
                ..Default::default()
            }),
            "pids"
        );
    }
}
