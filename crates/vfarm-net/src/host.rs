//! The host's tools: iproute2, nft, dnsmasq, and the ip_forward switch.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{NetError, Result};

/// The Debian package that brings each tool, for the error that names the fix.
fn package(tool: &str) -> &'static str {
    match tool {
        "ip" => "iproute2",
        "nft" => "nftables",
        "dnsmasq" => "dnsmasq-base",
        _ => "?",
    }
}

fn run(tool: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut c = Command::new(tool);
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| NetError::Host {
        tool,
        detail: format!(
            "cannot run {tool} ({e}); install it with `apt-get install {}`",
            package(tool)
        ),
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| NetError::Host {
        tool,
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(NetError::Host {
            tool,
            detail: format!(
                "`{tool} {}`: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    run("ip", args, None).map(|_| ())
}

pub(crate) fn ip_out(args: &[&str]) -> Result<String> {
    run("ip", args, None)
}

/// `ip` inside the network namespace at path `ns` (`ip -n` takes names only).
pub(crate) fn ip_in(ns: &str, args: &[&str]) -> Result<()> {
    let net = format!("--net={ns}");
    let mut a = vec![net.as_str(), "ip"];
    a.extend_from_slice(args);
    run_nsenter(&a)
}

fn run_nsenter(args: &[&str]) -> Result<()> {
    let mut c = Command::new("nsenter");
    let out = c
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetError::Host {
            tool: "ip",
            detail: format!("cannot run nsenter ({e}); install util-linux"),
        })?;
    if !out.status.success() {
        return Err(NetError::Host {
            tool: "ip",
            detail: format!(
                "`nsenter {}`: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Whether this network namespace has a link `name`. /proc/self/net is the calling process's
/// namespace; /sys/class/net is the one sysfs was mounted in, which a process entered into
/// another namespace with `nsenter --net` (a node of a test cluster) still sees.
pub(crate) fn link_exists(name: &str) -> bool {
    std::fs::read_to_string("/proc/self/net/dev").is_ok_and(|t| {
        t.lines()
            .skip(2)
            .any(|l| l.split(':').next().map(str::trim) == Some(name))
    })
}

/// The interfaces enslaved to `bridge` (none when it does not exist).
pub(crate) fn links_on(bridge: &str) -> Result<Vec<String>> {
    if !link_exists(bridge) {
        return Ok(Vec::new());
    }
    let out = ip_out(&["-o", "link", "show", "master", bridge])?;
    // "7: vfh-0123456789a@if6: <…" → "vfh-0123456789a"
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect())
}

pub(crate) fn nft_apply(ruleset: &str) -> Result<()> {
    run("nft", &["-f", "-"], Some(ruleset)).map(|_| ())
}

pub(crate) fn nft_delete_table(table: &str) -> Result<()> {
    let tables = run("nft", &["list", "tables", "ip"], None)?;
    if tables
        .lines()
        .any(|l| l.trim() == format!("table ip {table}"))
    {
        run("nft", &["delete", "table", "ip", table], None)?;
    }
    Ok(())
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turn forwarding on, remembering (once) what the host had, so the last `down` restores it.
pub(crate) fn enable_forwarding(state_dir: &Path) -> Result<()> {
    let io = |what: &str, source| NetError::Io {
        network: "*".into(),
        what: what.into(),
        source,
    };
    let now = std::fs::read_to_string(IP_FORWARD).map_err(|e| io(IP_FORWARD, e))?;
    let prev = state_dir.join("ip_forward.prev");
    if !prev.exists() {
        std::fs::create_dir_all(state_dir).map_err(|e| io("state dir", e))?;
        std::fs::write(&prev, now.trim()).map_err(|e| io("ip_forward.prev", e))?;
    }
    if now.trim() != "1" {
        std::fs::write(IP_FORWARD, "1").map_err(|e| io(IP_FORWARD, e))?;
    }
    Ok(())
}

/// When no network of this state dir is left up, put ip_forward back as vfarm found it.
pub(crate) fn restore_forwarding(state_dir: &Path) -> Result<()> {
    let prev = state_dir.join("ip_forward.prev");
    let Ok(was) = std::fs::read_to_string(&prev) else {
        return Ok(());
    };
    let others_up = std::fs::read_dir(state_dir)
        .map(|rd| rd.flatten().any(|e| e.path().join("hosts").exists()))
        .unwrap_or(false);
    if others_up {
        return Ok(());
    }
    let io = |source| NetError::Io {
        network: "*".into(),
        what: IP_FORWARD.into(),
        source,
    };
    std::fs::write(IP_FORWARD, was.trim()).map_err(io)?;
    let _ = std::fs::remove_file(prev);
    Ok(())
}

fn pid_of(pidfile: &Path) -> Option<rustix::process::Pid> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let pid = rustix::process::Pid::from_raw(pid)?;
    // Only a dnsmasq is ours to signal (the pid may have been reused).
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", pid.as_raw_nonzero())).ok()?;
    (comm.trim() == "dnsmasq").then_some(pid)
}

/// A dnsmasq for one bridge: DNS only, on the gateway address, answering from `hosts` and
/// forwarding the rest to the host's resolvers. Nothing if one already runs.
pub(crate) fn dnsmasq_start(
    bridge: &str,
    gateway: Ipv4Addr,
    hosts: &Path,
    pidfile: &Path,
) -> Result<()> {
    if pid_of(pidfile).is_some() {
        return Ok(());
    }
    run(
        "dnsmasq",
        &[
            "--conf-file=/dev/null",
            "--bind-interfaces",
            &format!("--interface={bridge}"),
            "--except-interface=lo",
            &format!("--listen-address={gateway}"),
            "--no-hosts",
            &format!("--addn-hosts={}", hosts.display()),
            &format!("--pid-file={}", pidfile.display()),
            // The hosts file lives in a root-only directory.
            "--user=root",
            "--domain-needed",
        ],
        None,
    )
    .map(|_| ())
}

pub(crate) fn dnsmasq_reload(pidfile: &Path) {
    if let Some(pid) = pid_of(pidfile) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::HUP);
    }
}

pub(crate) fn dnsmasq_stop(pidfile: &Path) {
    if let Some(pid) = pid_of(pidfile) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        for _ in 0..100 {
            if pid_of(pidfile).is_none() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    let _ = std::fs::remove_file(pidfile);
}
