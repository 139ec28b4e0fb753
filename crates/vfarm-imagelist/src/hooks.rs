//! Event hooks: a site's shell command, run with the `VMCATCHER_EVENT_*` environment that
//! existing vmcatcher handler scripts read, so they keep working unchanged.

use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::model::{Image, ImageList};

/// The event types, spelled as handler scripts expect them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum EventType {
    ProcessPrefix,
    ProcessPostfix,
    AvailablePrefix,
    AvailablePostfix,
    ExpirePrefix,
    ExpirePostfix,
    SubscriptionImageNew,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ProcessPrefix => "ProcessPrefix",
            EventType::ProcessPostfix => "ProcessPostfix",
            EventType::AvailablePrefix => "AvailablePrefix",
            EventType::AvailablePostfix => "AvailablePostfix",
            EventType::ExpirePrefix => "ExpirePrefix",
            EventType::ExpirePostfix => "ExpirePostfix",
            EventType::SubscriptionImageNew => "SubscriptionImageNew",
        }
    }
}

/// One event: its type plus the metadata that becomes environment variables.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: EventType,
    /// One id per run, shared by all its events.
    pub session: String,
    /// `(variable suffix, value)`, e.g. `("DC_IDENTIFIER", "…")`.
    pub vars: Vec<(&'static str, String)>,
    pub cache_dir: Option<PathBuf>,
    pub download_dir: Option<PathBuf>,
    pub expire_dir: Option<PathBuf>,
}

impl Event {
    pub fn new(kind: EventType, session: &str) -> Event {
        Event {
            kind,
            session: session.to_string(),
            vars: Vec::new(),
            cache_dir: None,
            download_dir: None,
            expire_dir: None,
        }
    }

    /// An event about `image` of `list`; `filename` is relative to the cache (or expired) dir.
    pub fn image(
        kind: EventType,
        session: &str,
        image: &Image,
        list: Option<&ImageList>,
        filename: Option<&str>,
    ) -> Event {
        let mut e = Event::new(kind, session);
        let mut set = |k: &'static str, v: &str| e.vars.push((k, v.to_string()));
        set("DC_IDENTIFIER", &image.identifier);
        set("DC_TITLE", &image.title);
        set("DC_DESCRIPTION", &image.description);
        set("HV_URI", &image.uri);
        set("HV_SIZE", &image.size.to_string());
        set("HV_VERSION", &image.version);
        set("HV_HYPERVISOR", &image.hypervisor);
        set("HV_FORMAT", image.format.as_deref().unwrap_or(""));
        set("SL_ARCH", &image.arch);
        set("SL_OS", &image.os);
        set("SL_OSVERSION", &image.os_version);
        set("SL_COMMENTS", &image.comments);
        set("SL_CHECKSUM_SHA512", &image.sha512);
        set("FILENAME", filename.unwrap_or(""));
        set("AD_MPURI", image.extra_str("ad:mpuri").unwrap_or(""));
        if let Some(l) = list {
            set("IL_DC_IDENTIFIER", &l.identifier);
            set("VO", l.extra_str("ad:vo").unwrap_or(""));
        }
        e
    }

    /// The environment, as `(name, value)`; a variable is set only when its value is non-empty.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut out = vec![
            (
                "VMCATCHER_EVENT_TYPE".to_string(),
                self.kind.as_str().to_string(),
            ),
            (
                "VMCATCHER_EVENT_UUID_SESSION".to_string(),
                self.session.clone(),
            ),
        ];
        for (k, v) in &self.vars {
            if !v.is_empty() {
                out.push((format!("VMCATCHER_EVENT_{k}"), v.clone()));
            }
        }
        for (k, v) in [
            ("VMCATCHER_CACHE_DIR_CACHE", &self.cache_dir),
            ("VMCATCHER_CACHE_DIR_DOWNLOAD", &self.download_dir),
            ("VMCATCHER_CACHE_DIR_EXPIRE", &self.expire_dir),
        ] {
            if let Some(p) = v {
                out.push((k.to_string(), p.display().to_string()));
            }
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot start event hook `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("event hook `{command}` did not finish within {timeout:?} and was killed")]
    Timeout { command: String, timeout: Duration },
    #[error("event hook `{command}` failed with {status}")]
    Failed { command: String, status: ExitStatus },
}

/// A configured handler command, run through `/bin/sh -c`.
#[derive(Debug, Clone)]
pub struct Hook {
    pub command: String,
    pub timeout: Duration,
}

impl Hook {
    pub fn new(command: impl Into<String>) -> Hook {
        Hook {
            command: command.into(),
            timeout: Duration::from_secs(10),
        }
    }

    /// Run the hook for `event`. Output goes to the caller's stderr/stdout is discarded:
    /// hooks report through their own logs, as with vmcatcher.
    pub fn run(&self, event: &Event) -> Result<(), HookError> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.command)
            .envs(event.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|source| HookError::Spawn {
                command: self.command.clone(),
                source,
            })?;
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(HookError::Failed {
                        command: self.command.clone(),
                        status,
                    })
                }
                Ok(None) if start.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(HookError::Timeout {
                        command: self.command.clone(),
                        timeout: self.timeout,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(source) => {
                    return Err(HookError::Spawn {
                        command: self.command.clone(),
                        source,
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_with_vmcatcher_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let mut ev = Event::new(EventType::AvailablePostfix, "s-1");
        ev.vars.push(("DC_IDENTIFIER", "img-1".into()));
        ev.vars.push(("SL_COMMENTS", String::new()));
        let hook = Hook::new(format!(
            "echo \"$VMCATCHER_EVENT_TYPE $VMCATCHER_EVENT_DC_IDENTIFIER ${{VMCATCHER_EVENT_SL_COMMENTS-unset}}\" > {}",
            out.display()
        ));
        hook.run(&ev).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "AvailablePostfix img-1 unset\n"
        );
    }

    #[test]
    fn image_events_carry_the_list_metadata() {
        let doc = serde_json::json!({"hv:imagelist": {
            "dc:identifier": "L1", "dc:date:created": "2020-01-01T00:00:00Z",
            "dc:date:expires": "2030-01-01T00:00:00Z", "dc:title": "t", "dc:description": "d",
            "dc:source": "s", "hv:uri": "http://x/l", "hv:version": "1", "ad:vo": "vo.example",
            "hv:endorser": {"hv:x509": {"hv:dn": "/CN=a", "hv:ca": "/CN=ca", "hv:email": "e", "dc:creator": "c"}},
            "hv:images": [{"hv:image": {
                "dc:identifier": "I1", "dc:title": "img", "dc:description": "", "hv:uri": "file:///x",
                "hv:size": 42, "sl:checksum:sha512": "ab".repeat(64), "sl:arch": "x86_64", "sl:os": "Linux",
                "sl:osversion": "12", "sl:comments": "", "hv:hypervisor": "kvm", "hv:version": "3",
                "hv:format": "qcow2", "ad:mpuri": "m"}}]
        }});
        let list = ImageList::from_value(&doc).unwrap();
        let ev = Event::image(
            EventType::AvailablePostfix,
            "s",
            &list.images[0],
            Some(&list),
            Some("I1"),
        );
        let env: std::collections::BTreeMap<String, String> = ev.env().into_iter().collect();
        for (k, v) in [
            ("VMCATCHER_EVENT_TYPE", "AvailablePostfix"),
            ("VMCATCHER_EVENT_DC_IDENTIFIER", "I1"),
            ("VMCATCHER_EVENT_DC_TITLE", "img"),
            ("VMCATCHER_EVENT_HV_URI", "file:///x"),
            ("VMCATCHER_EVENT_HV_SIZE", "42"),
            ("VMCATCHER_EVENT_HV_VERSION", "3"),
            ("VMCATCHER_EVENT_HV_FORMAT", "qcow2"),
            ("VMCATCHER_EVENT_FILENAME", "I1"),
            ("VMCATCHER_EVENT_IL_DC_IDENTIFIER", "L1"),
            ("VMCATCHER_EVENT_AD_MPURI", "m"),
            ("VMCATCHER_EVENT_VO", "vo.example"),
        ] {
            assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert_eq!(env["VMCATCHER_EVENT_SL_CHECKSUM_SHA512"], "ab".repeat(64));
        // Empty values are not set at all.
        assert!(!env.contains_key("VMCATCHER_EVENT_SL_COMMENTS"));
        assert!(!env.contains_key("VMCATCHER_EVENT_DC_DESCRIPTION"));
    }

    #[test]
    fn failing_and_hanging_hooks_are_reported() {
        let ev = Event::new(EventType::ExpirePrefix, "s");
        assert!(matches!(
            Hook::new("exit 3").run(&ev),
            Err(HookError::Failed { .. })
        ));
        let hook = Hook {
            command: "sleep 5".into(),
            timeout: Duration::from_millis(100),
        };
        assert!(matches!(hook.run(&ev), Err(HookError::Timeout { .. })));
    }
}
