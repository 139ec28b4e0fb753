//! Running the external tools (mmdebstrap, tar, mkfs.ext4, e2fsck, qemu-img).
//!
//! Command lines are built by pure functions (tested without running anything); `run_logged`
//! executes one, appending every output line to the build log and to a progress callback.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{ImageError, Result};

/// Quote a string for `/bin/sh` (hooks are shell snippets run by mmdebstrap).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Paths inside the rootfs that must not go into the cached base layer: virtual filesystems,
/// apt's package lists and caches (refreshed by every build), and host files mmdebstrap
/// copies in for the build's duration.
const BASE_EXCLUDES: &[&str] = &[
    "./proc/*",
    "./sys/*",
    "./dev/*",
    "./var/lib/apt/lists/*",
    "./var/cache/apt/*",
    "./etc/resolv.conf",
    "./etc/hostname",
];

/// While hooks run, mmdebstrap has replaced `start-stop-daemon` and `policy-rc.d` by
/// stand-ins that stop services from starting (the originals are renamed `*.REAL`). The
/// saved base must hold the originals, so the hook swaps them back for the duration of the
/// `tar` and swaps again afterwards, leaving mmdebstrap's own restore step intact. Paths
/// below a symlinked directory (merged /usr: `sbin -> usr/sbin`) are the same files and are
/// skipped.
fn save_base_hook(save_base: &Path) -> String {
    let excludes: String = BASE_EXCLUDES
        .iter()
        .map(|e| format!(" --exclude={}", sh_quote(e)))
        .collect();
    format!(
        r#"r="$1"; swap() {{ for p in usr/sbin/start-stop-daemon sbin/start-stop-daemon usr/sbin/policy-rc.d; do d="${{p%/*}}"; [ -L "$r/$d" ] && continue; if [ -e "$r/$p.REAL" ]; then mv "$r/$p" "$r/$p.vfarm-swap" && mv "$r/$p.REAL" "$r/$p" && mv "$r/$p.vfarm-swap" "$r/$p.REAL"; elif [ "$p" = usr/sbin/policy-rc.d ] && [ -e "$r/$p" ]; then mv "$r/$p" "$r/$p.vfarm-hidden"; elif [ -e "$r/$p.vfarm-hidden" ]; then mv "$r/$p.vfarm-hidden" "$r/$p"; fi; done; }}; swap; tar -C "$r" --numeric-owner --xattrs --xattrs-include='*' --warning=no-file-changed{excludes} --exclude='*.REAL' --exclude='*.vfarm-hidden' -cf {} .; rc=$?; swap; [ $rc -le 1 ]"#,
        sh_quote(&save_base.to_string_lossy())
    )
}

/// How the root filesystem is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap<'a> {
    /// Bootstrap the variant from scratch; save the variant-only tree to `save_base` (a tar)
    /// before installing `packages`.
    Cold {
        variant: &'a str,
        save_base: &'a Path,
    },
    /// Start from a cached base layer tarball and only install `packages`.
    Layered { base: &'a Path },
}

/// The mmdebstrap invocation for one build. `target` is a directory that must not exist yet.
/// The whole run is wrapped in private mount and PID namespaces (`unshare -m -p`) so the
/// chroot's /proc, /sys and /dev mounts vanish with the process even if it is killed, and
/// in `setpriv --pdeathsig`: when vfarm dies, unshare dies, its child (PID 1 of the new
/// namespace) is killed by `--kill-child`, and with it every apt and dpkg process below.
pub fn mmdebstrap_command(
    suite: &str,
    arch: &str,
    how: &Bootstrap<'_>,
    packages: &[String],
    target: &Path,
) -> Command {
    let mut args: Vec<String> = vec![
        "--pdeathsig".into(),
        "SIGKILL".into(),
        "unshare".into(),
        "--mount".into(),
        "--propagation".into(),
        "private".into(),
        "--pid".into(),
        "--fork".into(),
        "--kill-child".into(),
        "mmdebstrap".into(),
        "--mode=root".into(),
        "--format=directory".into(),
        format!("--architectures={arch}"),
    ];
    match how {
        Bootstrap::Cold { variant, save_base } => {
            args.push(format!("--variant={variant}"));
            args.push(format!("--customize-hook={}", save_base_hook(save_base)));
        }
        Bootstrap::Layered { base } => {
            args.push("--variant=custom".into());
            args.push(format!(
                "--setup-hook=tar -C \"$1\" --numeric-owner --xattrs --xattrs-include='*' -xf {}",
                sh_quote(&base.to_string_lossy())
            ));
        }
    }
    if !packages.is_empty() {
        let list: Vec<String> = packages.iter().map(|p| sh_quote(p)).collect();
        // Recommends are left out: images are meant to be minimal and their content
        // predictable from the spec alone.
        args.push(format!(
            "--customize-hook=chroot \"$1\" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
            list.join(" ")
        ));
    }
    args.push(suite.to_string());
    args.push(target.to_string_lossy().into_owned());
    let mut cmd = Command::new("setpriv");
    cmd.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8");
    cmd
}

/// Which known failures the log shows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogDiagnosis {
    pub unknown_packages: Vec<String>,
    pub suite_missing: bool,
}

/// Read apt's and mmdebstrap's error lines.
pub fn diagnose(lines: &[String]) -> LogDiagnosis {
    let mut d = LogDiagnosis::default();
    for l in lines {
        let l = l.trim();
        for prefix in ["E: Unable to locate package ", "E: Package '"] {
            if let Some(rest) = l.strip_prefix(prefix) {
                let name = rest.split(['\'', ' ']).next().unwrap_or("").to_string();
                if !name.is_empty() && !d.unknown_packages.contains(&name) {
                    d.unknown_packages.push(name);
                }
            }
        }
        if (l.contains("does not have a Release file") || l.contains("Release' does not"))
            || (l.starts_with("E: ") && l.contains("no such suite"))
        {
            d.suite_missing = true;
        }
    }
    d
}

/// Progress of a build, parsed from the tools' output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A new phase (`bootstrapping`, `installing packages`, `writing qcow2` …).
    Phase(String),
    /// Packages set up so far, and bytes downloaded so far.
    Counters { packages: u64, bytes: u64 },
    /// A raw output line (plain-log mode prints these when verbose).
    Line(String),
}

/// Incremental parser of mmdebstrap/apt output into [`Progress`].
#[derive(Debug, Default)]
pub struct ProgressParser {
    packages: u64,
    bytes: u64,
}

impl ProgressParser {
    pub fn feed(&mut self, line: &str) -> Vec<Progress> {
        let mut out = Vec::new();
        let t = line.trim();
        if let Some(msg) = t.strip_prefix("I: ") {
            out.push(Progress::Phase(
                msg.trim_end_matches("...").trim().to_string(),
            ));
        } else if t.starts_with("Setting up ") {
            self.packages += 1;
            out.push(self.counters());
        } else if t.starts_with("Get:") {
            if let Some(b) = parse_apt_size(t) {
                self.bytes += b;
                out.push(self.counters());
            }
        }
        out.push(Progress::Line(line.to_string()));
        out
    }

    fn counters(&self) -> Progress {
        Progress::Counters {
            packages: self.packages,
            bytes: self.bytes,
        }
    }
}

/// apt prints `Get:3 http://… amd64 libc6 amd64 2.36-9 [2757 kB]`.
fn parse_apt_size(line: &str) -> Option<u64> {
    let open = line.rfind('[')?;
    let inner = line[open + 1..].trim_end_matches(']');
    let mut it = inner.split_whitespace();
    let num: f64 = it.next()?.replace(',', "").parse().ok()?;
    let mult = match it.next()? {
        "B" => 1.0,
        "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    Some((num * mult) as u64)
}

/// Run `cmd`, merging stdout and stderr line by line into `log` and `on_line`. On failure
/// the error carries the last lines of output.
pub fn run_logged(
    tool: &'static str,
    mut cmd: Command,
    log: &mut File,
    log_path: Option<&Path>,
    on_line: &mut dyn FnMut(&str),
) -> Result<Vec<String>> {
    let (reader, writer) = std::io::pipe().map_err(ImageError::io("create pipe for", tool))?;
    let writer2 = writer
        .try_clone()
        .map_err(ImageError::io("create pipe for", tool))?;
    cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
    let _ = writeln!(log, "$ {}", describe(&cmd));
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImageError::ToolMissing { tool },
        _ => ImageError::Io {
            op: "start",
            path: tool.into(),
            source: e,
        },
    })?;
    // The command object still holds the write ends; drop it so EOF arrives when the child exits.
    drop(cmd);
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut errors: Vec<String> = Vec::new();
    for line in BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        on_line(&line);
        if line.starts_with("E: ") {
            errors.push(line.clone());
        }
        tail.push_back(line);
        if tail.len() > 25 {
            tail.pop_front();
        }
    }
    let status = child.wait().map_err(ImageError::io("wait for", tool))?;
    let _ = log.flush();
    if status.success() {
        return Ok(errors);
    }
    let mut lines: Vec<String> = errors;
    lines.extend(tail);
    Err(ToolFailure {
        tool,
        status: status
            .code()
            .map(|c| c.to_string())
            .unwrap_or_else(|| format!("{status}")),
        lines,
        log: log_path.map(Path::to_path_buf),
    }
    .into())
}

/// A failed tool run, before it is classified into an [`ImageError`].
#[derive(Debug)]
pub struct ToolFailure {
    pub tool: &'static str,
    pub status: String,
    pub lines: Vec<String>,
    pub log: Option<std::path::PathBuf>,
}

impl From<ToolFailure> for ImageError {
    fn from(f: ToolFailure) -> ImageError {
        let tail: Vec<&str> = f.lines.iter().rev().take(15).map(String::as_str).collect();
        ImageError::ToolFailed {
            tool: f.tool,
            status: f.status,
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            log: f.log,
        }
    }
}

/// Run a short command, capturing its output; fail with the output's tail.
pub fn run_quiet(tool: &'static str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ImageError::ToolMissing { tool },
            _ => ImageError::Io {
                op: "start",
                path: tool.into(),
                source: e,
            },
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        return Ok(stdout);
    }
    let mut text = stdout;
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let tail: Vec<&str> = text.lines().rev().take(15).collect();
    Err(ImageError::ToolFailed {
        tool,
        status: out
            .status
            .code()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "signal".into()),
        tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        log: None,
    })
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        let a = a.to_string_lossy();
        if a.contains([' ', '"', '\'', '$']) {
            s.push_str(&sh_quote(&a));
        } else {
            s.push_str(&a);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn cold_command_saves_base_then_installs() {
        let base = Path::new("/d/layers/.tmp-x.tar");
        let c = mmdebstrap_command(
            "bookworm",
            "amd64",
            &Bootstrap::Cold {
                variant: "minbase",
                save_base: base,
            },
            &["curl".into()],
            Path::new("/d/tmp/rootfs"),
        );
        assert_eq!(c.get_program(), "setpriv");
        let a = args(&c);
        assert_eq!(
            &a[..10],
            [
                "--pdeathsig",
                "SIGKILL",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--pid",
                "--fork",
                "--kill-child",
                "mmdebstrap"
            ]
        );
        assert!(a.contains(&"--variant=minbase".to_string()));
        let save = a
            .iter()
            .position(|x| x.contains("-cf '/d/layers/.tmp-x.tar'"))
            .expect("save hook");
        let install = a
            .iter()
            .position(|x| x.contains("apt-get install -y --no-install-recommends 'curl'"))
            .expect("install hook");
        assert!(
            save < install,
            "the base is saved before packages are installed"
        );
        assert!(a
            .iter()
            .any(|x| x.contains("--exclude='./var/lib/apt/lists/*'")));
        assert_eq!(&a[a.len() - 2..], ["bookworm", "/d/tmp/rootfs"]);
    }

    #[test]
    fn layered_command_unpacks_base_and_has_no_bootstrap_variant() {
        let c = mmdebstrap_command(
            "trixie",
            "i386",
            &Bootstrap::Layered {
                base: Path::new("/d/l/b.tar"),
            },
            &["a1".into(), "b2".into()],
            Path::new("/t"),
        );
        let a = args(&c);
        assert!(a.contains(&"--variant=custom".to_string()));
        assert!(a.contains(&"--architectures=i386".to_string()));
        assert!(a
            .iter()
            .any(|x| x.starts_with("--setup-hook=tar") && x.ends_with("-xf '/d/l/b.tar'")));
        assert!(a.iter().any(|x| x.ends_with("'a1' 'b2'")));
    }

    #[test]
    fn quoting_survives_hostile_paths() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn diagnoses_apt_errors() {
        let lines: Vec<String> = [
            "E: Unable to locate package nosuchpkg-xyz",
            "E: Package 'ghost' has no installation candidate",
            "E: Unable to locate package nosuchpkg-xyz",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let d = diagnose(&lines);
        assert_eq!(d.unknown_packages, vec!["nosuchpkg-xyz", "ghost"]);
        assert!(!d.suite_missing);
        let d = diagnose(&[
            "E: The repository 'http://x foo Release' does not have a Release file.".to_string(),
        ]);
        assert!(d.suite_missing);
    }

    #[test]
    fn progress_counts_packages_and_bytes() {
        let mut p = ProgressParser::default();
        assert_eq!(
            p.feed("I: installing remaining packages inside the chroot...")[0],
            Progress::Phase("installing remaining packages inside the chroot".into())
        );
        p.feed("Get:1 http://x bookworm/main amd64 libc6 amd64 2.36-9 [2757 kB]");
        p.feed("Get:2 http://x bookworm/main amd64 curl amd64 7.88 [315 B]");
        let last = p.feed("Setting up curl (7.88) ...");
        assert_eq!(
            last[0],
            Progress::Counters {
                packages: 1,
                bytes: 2_757_315
            }
        );
    }
}
