//! Running the external tools (mmdebstrap, dnf, tar, mkfs.ext4, e2fsck, qemu-img).
//!
//! Command lines are built by pure functions (tested without running anything); `run_logged`
//! executes one, appending every output line to the build log and to a progress callback.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use std::path::PathBuf;

use vfarm_core::Repository;

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

/// Where an apt-family build takes its packages from besides the bootstrap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AptSources<'a> {
    /// The distribution's mirror from `mirrors.toml`; None: the host's apt sources.
    pub mirror: Option<AptMirror<'a>>,
    /// The spec's repositories, each with its armored key written to a file on the host.
    pub repos: Vec<(&'a Repository, PathBuf)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptMirror<'a> {
    pub url: &'a str,
    pub keyring: Option<PathBuf>,
    pub components: &'a [String],
}

/// The prefix every bootstrap runs under: private mount and PID namespaces (`unshare -m -p`),
/// so chroot mounts vanish with the process even if it is killed, and `setpriv --pdeathsig`:
/// when vfarm dies, unshare dies, its child (PID 1 of the namespace) is killed by
/// `--kill-child`, and with it every apt, dpkg, dnf and rpm process below.
fn contained(tool: &str) -> Vec<String> {
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
        tool,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Shell commands (for a customize hook, `$1` the rootfs) that put the spec's repositories
/// into the image — key under `/etc/apt/keyrings`, a `sources.list.d` entry that is signed
/// by it alone — and refresh apt's lists: a repository whose signature fails stops here.
fn apt_repos_hook(repos: &[(&Repository, PathBuf)]) -> String {
    let mut s = String::from(r#"mkdir -p "$1/etc/apt/keyrings" "$1/etc/apt/sources.list.d""#);
    for (r, key) in repos {
        let inside = format!("/etc/apt/keyrings/vfarm-{}.asc", r.name);
        let line = format!(
            "deb [signed-by={inside}] {} {} {}\n",
            r.url,
            r.suite.as_deref().unwrap_or_default(),
            r.components.join(" ")
        );
        s.push_str(&format!(
            r#" && cp {} "$1{inside}" && printf '%s' {} > "$1/etc/apt/sources.list.d/vfarm-{}.list""#,
            sh_quote(&key.to_string_lossy()),
            sh_quote(&line),
            r.name
        ));
    }
    s.push_str(r#" && chroot "$1" apt-get update -o APT::Update::Error-Mode=any"#);
    s
}

/// The mmdebstrap invocation for one build. `target` is a directory that must not exist yet.
pub fn mmdebstrap_command(
    suite: &str,
    arch: &str,
    how: &Bootstrap<'_>,
    packages: &[String],
    sources: &AptSources<'_>,
    target: &Path,
) -> Command {
    let mut args = contained("mmdebstrap");
    args.extend([
        "--mode=root".to_string(),
        "--format=directory".into(),
        format!("--architectures={arch}"),
    ]);
    if let Some(m) = &sources.mirror {
        if !m.components.is_empty() {
            args.push(format!("--components={}", m.components.join(",")));
        }
    }
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
    // The mirror's keyring goes into the chroot's trusted.gpg.d before the first `apt
    // update` (not `--keyring`, which only the bootstrap's own apt would see): apt inside
    // the image, the install hook's included, trusts the site's mirror too.
    if let Some(k) = sources.mirror.as_ref().and_then(|m| m.keyring.as_ref()) {
        let ext = match k.extension().and_then(|e| e.to_str()) {
            Some("asc") => "asc",
            _ => "gpg",
        };
        args.push(format!(
            r#"--setup-hook=mkdir -p "$1/etc/apt/trusted.gpg.d" && cp {} "$1/etc/apt/trusted.gpg.d/vfarm-mirror.{ext}""#,
            sh_quote(&k.to_string_lossy())
        ));
    }
    if !sources.repos.is_empty() {
        args.push(format!(
            "--customize-hook={}",
            apt_repos_hook(&sources.repos)
        ));
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
    if let Some(m) = &sources.mirror {
        args.push(m.url.to_string());
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8");
    cmd
}

/// One dnf repository of a build: a mirror's or a spec's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnfRepoConf {
    pub name: String,
    pub baseurl: String,
    /// Host path of the armored key (dnf expands `$releasever` in it).
    pub key: PathBuf,
    pub repo_gpgcheck: bool,
}

/// `dnf.conf` of a build: weak dependencies and docs left out (minimal images, content
/// predictable from the spec), GPG checking on. `metadata_expire=0`: every build asks for
/// `repomd.xml` and reuses cached metadata only while it is unchanged. dnf takes `cachedir`
/// inside the installroot whatever is configured, so the cache is the image's own
/// `/var/cache/dnf`, with the persistent one mounted there (`dnf_command`).
pub fn dnf_conf(work: &Path) -> String {
    format!(
        "[main]\ngpgcheck=1\ninstall_weak_deps=False\ntsflags=nodocs\nkeepcache=False\nmetadata_expire=0\ncachedir=/var/cache/dnf\nreposdir={}\n",
        work.join("repos.d").display(),
    )
}

/// The `.repo` file of a build. Package signatures are always checked (`gpgcheck=1`).
pub fn dnf_repo_file(repos: &[DnfRepoConf]) -> String {
    let mut s = String::new();
    for r in repos {
        s.push_str(&format!(
            "[{n}]\nname={n}\nbaseurl={u}\nenabled=1\ngpgcheck=1\nrepo_gpgcheck={g}\ngpgkey=file://{k}\n\n",
            n = r.name,
            u = r.baseurl,
            g = u8::from(r.repo_gpgcheck),
            k = r.key.display()
        ));
    }
    s
}

/// Where the image's rpm keeps its database (Debian's rpm would use `~/.rpmdb`): the
/// distribution's own path, so `rpm -q` inside the image sees what was installed.
pub fn rpm_dbpath(distro: vfarm_core::Distro, release: &str) -> &'static str {
    let newer = release.parse::<u32>().map(|r| r >= 10).unwrap_or(false);
    if distro == vfarm_core::Distro::Fedora || newer {
        "/usr/lib/sysimage/rpm"
    } else {
        "/var/lib/rpm"
    }
}

/// `dnf --installroot` of `packages` into `root`, configured by the files under `work`
/// (`dnf.conf`, `repos.d/`, `home/.rpmmacros` naming the rpm database path), with `cache`
/// bind-mounted on the root's `/var/cache/dnf` in the build's private mount namespace, so the
/// metadata outlives the build but never enters the image.
pub fn dnf_command(
    work: &Path,
    cache: &Path,
    release: &str,
    root: &Path,
    packages: &[String],
) -> Command {
    let mut args = contained("sh");
    args.extend([
        "-c".to_string(),
        r#"mkdir -p "$1/var/cache/dnf" "$2" && mount --bind "$2" "$1/var/cache/dnf" && shift 2 && exec dnf "$@""#.into(),
        "sh".into(),
        root.display().to_string(),
        cache.display().to_string(),
        "-y".to_string(),
        format!("--installroot={}", root.display()),
        format!("--releasever={release}"),
        format!("--config={}", work.join("dnf.conf").display()),
        format!("--setopt=reposdir={}", work.join("repos.d").display()),
        "--noplugins".into(),
        "install".into(),
    ]);
    args.extend(packages.iter().cloned());
    let mut cmd = Command::new("setpriv");
    cmd.args(args)
        .env("HOME", work.join("home"))
        .env("LC_ALL", "C.UTF-8");
    cmd
}

/// Paths the saved EL base layer leaves out: virtual filesystems and dnf's caches.
pub fn dnf_base_tar_command(root: &Path, out: &Path) -> Command {
    let mut cmd = Command::new("tar");
    cmd.args(["--numeric-owner", "--xattrs", "--xattrs-include=*"])
        .args([
            "--exclude=./proc/*",
            "--exclude=./sys/*",
            "--exclude=./dev/*",
            "--exclude=./var/cache/dnf/*",
        ])
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(out)
        .arg(".");
    cmd
}

/// Which known failures the log shows.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LogDiagnosis {
    pub unknown_packages: Vec<String>,
    pub suite_missing: bool,
    /// Lines where apt or dnf refused a signature, each with the line after it (dnf names
    /// the key there).
    pub unverified: Vec<(String, String)>,
}

/// apt's and dnf's words for a signature that did not verify or is missing.
const SIGNATURE_FAILURES: &[&str] = &[
    "NO_PUBKEY",
    "is not signed",
    "GPG error",
    "signatures were invalid",
    "BADSIG",
    "EXPKEYSIG",
    "GPG check FAILED",
    "GPG signature verification error",
    "Public key for",
    "didn't help, wrong key",
    "not correct for this package",
];

/// Read apt's and mmdebstrap's error lines.
pub fn diagnose(lines: &[String]) -> LogDiagnosis {
    let mut d = LogDiagnosis::default();
    for (i, l) in lines.iter().enumerate() {
        let l = l.trim();
        if SIGNATURE_FAILURES.iter().any(|w| l.contains(w)) {
            let next = lines.get(i + 1).map(|n| n.trim()).unwrap_or_default();
            d.unverified.push((l.to_string(), next.to_string()));
        }
        for prefix in [
            "E: Unable to locate package ",
            "E: Package '",
            "No match for argument: ",
            "Error: Unable to find a match: ",
        ] {
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
        } else if t.starts_with("Setting up ")
            || (t.starts_with("Installing ") && t.contains(" : "))
        {
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
            &AptSources::default(),
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
            &AptSources::default(),
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

    fn site_repo() -> Repository {
        Repository {
            name: "site".into(),
            url: "http://127.0.0.1:8080/debian".into(),
            suite: Some("bookworm".into()),
            components: vec!["main".into(), "contrib".into()],
            key: "-----BEGIN PGP PUBLIC KEY BLOCK-----".into(),
        }
    }

    /// Golden: an Ubuntu build takes its mirror, keyring and components from mirrors.toml
    /// (the URL here stands for the site's), and the spec's repository is configured and
    /// refreshed before the packages are installed.
    #[test]
    fn ubuntu_command_names_mirror_keyring_and_site_repository() {
        let repo = site_repo();
        let comps = vec!["main".to_string(), "universe".to_string()];
        let sources = AptSources {
            mirror: Some(AptMirror {
                url: "http://mirror.invalid/ubuntu",
                keyring: Some(PathBuf::from(
                    "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
                )),
                components: &comps,
            }),
            repos: vec![(&repo, PathBuf::from("/d/tmp/b/keys/site.asc"))],
        };
        let c = mmdebstrap_command(
            "noble",
            "amd64",
            &Bootstrap::Layered {
                base: Path::new("/d/l/u.tar"),
            },
            &["site-tools".into()],
            &sources,
            Path::new("/t"),
        );
        let a = args(&c);
        let trust = r#"--setup-hook=mkdir -p "$1/etc/apt/trusted.gpg.d" && cp '/usr/share/keyrings/ubuntu-archive-keyring.gpg' "$1/etc/apt/trusted.gpg.d/vfarm-mirror.gpg""#;
        assert!(a.iter().any(|x| x == trust), "{a:?}");
        assert!(a.contains(&"--components=main,universe".to_string()));
        assert_eq!(
            &a[a.len() - 3..],
            ["noble", "/t", "http://mirror.invalid/ubuntu"]
        );
        let hook = a
            .iter()
            .position(|x| x.contains("vfarm-site.list"))
            .expect("repo hook");
        assert_eq!(
            a[hook],
            r#"--customize-hook=mkdir -p "$1/etc/apt/keyrings" "$1/etc/apt/sources.list.d" && cp '/d/tmp/b/keys/site.asc' "$1/etc/apt/keyrings/vfarm-site.asc" && printf '%s' 'deb [signed-by=/etc/apt/keyrings/vfarm-site.asc] http://127.0.0.1:8080/debian bookworm main contrib
' > "$1/etc/apt/sources.list.d/vfarm-site.list" && chroot "$1" apt-get update -o APT::Update::Error-Mode=any"#
        );
        let install = a
            .iter()
            .position(|x| x.contains("apt-get install"))
            .unwrap();
        assert!(hook < install);
    }

    /// Golden: the EL path, as it runs against an AlmaLinux or Rocky mirror.
    #[test]
    fn dnf_command_and_configuration() {
        let c = dnf_command(
            Path::new("/d/tmp/b"),
            Path::new("/d/layers/dnf-metadata/x"),
            "9",
            Path::new("/d/tmp/b/rootfs"),
            &["@core".into(), "site-tools".into()],
        );
        assert_eq!(c.get_program(), "setpriv");
        assert_eq!(
            args(&c)[9..],
            [
                "sh",
                "-c",
                r#"mkdir -p "$1/var/cache/dnf" "$2" && mount --bind "$2" "$1/var/cache/dnf" && shift 2 && exec dnf "$@""#,
                "sh",
                "/d/tmp/b/rootfs",
                "/d/layers/dnf-metadata/x",
                "-y",
                "--installroot=/d/tmp/b/rootfs",
                "--releasever=9",
                "--config=/d/tmp/b/dnf.conf",
                "--setopt=reposdir=/d/tmp/b/repos.d",
                "--noplugins",
                "install",
                "@core",
                "site-tools"
            ]
        );
        let home = c
            .get_envs()
            .find(|(k, _)| *k == "HOME")
            .and_then(|(_, v)| v);
        assert_eq!(home, Some(std::ffi::OsStr::new("/d/tmp/b/home")));
        let conf = dnf_conf(Path::new("/w"));
        assert!(conf.contains("gpgcheck=1\nins") && conf.contains("cachedir=/var/cache/dnf\n"));
        let f = dnf_repo_file(&[DnfRepoConf {
            name: "baseos".into(),
            baseurl: "http://mirror.invalid/almalinux/$releasever/BaseOS/$basearch/os/".into(),
            key: PathBuf::from("/etc/vfarm/RPM-GPG-KEY-AlmaLinux-9"),
            repo_gpgcheck: false,
        }]);
        assert_eq!(
            f,
            "[baseos]\nname=baseos\nbaseurl=http://mirror.invalid/almalinux/$releasever/BaseOS/$basearch/os/\nenabled=1\ngpgcheck=1\nrepo_gpgcheck=0\ngpgkey=file:///etc/vfarm/RPM-GPG-KEY-AlmaLinux-9\n\n"
        );
        assert_eq!(rpm_dbpath(vfarm_core::Distro::Rocky, "9"), "/var/lib/rpm");
        assert_eq!(
            rpm_dbpath(vfarm_core::Distro::Almalinux, "10"),
            "/usr/lib/sysimage/rpm"
        );
    }

    #[test]
    fn diagnoses_signature_failures_of_apt_and_dnf() {
        let lines: Vec<String> = [
            "W: GPG error: http://127.0.0.1:1/debian bookworm InRelease: The following signatures couldn't be verified because the public key is not available: NO_PUBKEY 25FC7D37CD998C00",
            "Public key for site-tools-1.0-1.noarch.rpm is not installed. Failing package is: site-tools-1.0-1.noarch",
            " GPG Keys are configured as: file:///d/tmp/b/keys/site.asc",
            "No match for argument: ghost",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let d = diagnose(&lines);
        assert_eq!(d.unverified.len(), 2);
        assert!(d.unverified[1].1.contains("/keys/site.asc"));
        assert_eq!(d.unknown_packages, ["ghost"]);
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
