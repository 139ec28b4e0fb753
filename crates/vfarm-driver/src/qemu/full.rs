//! The full boot profile: q35, the image's own kernel and Debian initramfs, systemd as init,
//! cloud-init from a NoCloud seed disk made here (host name, a user with the given SSH keys,
//! files), sshd behind a user-mode-network port forward on 127.0.0.1.
//!
//! Ready means more than "the agent answers": `start` returns once cloud-init's network
//! stage (user, keys, host keys, files) is done in this boot (its per-boot status file in
//! `/run`; the config and final stages go on in the background), the guest's new SSH host keys
//! are in the instance's own `known_hosts` (read through the guest agent, so `vfarm instance
//! ssh` checks them strictly without trusting the first connection) and sshd greets on the
//! forwarded port.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use vfarm_qemu::cloudinit::{self, InitStage, Seed, SeedFile, DEFAULT_USER, STATUS_FILE};
use vfarm_qemu::profile::{full_vm_config, seed_path};
use vfarm_qemu::qga::ExecRequest;
use vfarm_qemu::{Accel, GuestAgent, HostFwd, QemuProcess, Qmp, RunFiles, UserNet, VmConfig};

use super::errors::{classify, io_err};
use super::{QemuDriver, Record, AGENT_TIMEOUT, QMP_TIMEOUT};
use crate::{DriverError, InstanceSpec, Network, Result};

/// QEMU's user-mode network: the guest's name server.
const SLIRP_DNS: &str = "10.0.2.3";
/// The MAC QEMU gives the first NIC when none is set; the seed's network config matches it.
const NIC_MAC: &str = "52:54:00:12:34:56";
/// Host key types read from the guest for `known_hosts`.
const HOST_KEY_TYPES: [&str; 3] = ["ed25519", "ecdsa", "rsa"];
/// What the full profile needs in the image, and how to get it there.
const NEEDS: [(&str, &[&str]); 2] = [
    ("cloud-init", &["usr/bin/cloud-init", "bin/cloud-init"]),
    ("openssh-server", &["usr/sbin/sshd", "sbin/sshd"]),
];

/// What the runtime record keeps about a full-profile VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct FullRecord {
    /// The host port on 127.0.0.1 forwarded to the guest's port 22.
    pub ssh_port: u16,
    pub user: String,
    pub identity: Option<PathBuf>,
    pub seed: PathBuf,
    /// The guest's host keys, under the alias `vfarm-<id>` (the port may change on restart).
    pub known_hosts: PathBuf,
}

/// How to reach a full-profile VM over SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshInfo {
    pub host: Ipv4Addr,
    pub port: u16,
    pub user: String,
    /// The private key `vfarm instance ssh` uses unless told otherwise.
    pub identity: Option<PathBuf>,
    pub known_hosts: PathBuf,
    pub host_key_alias: String,
}

impl SshInfo {
    /// The `ssh` argument vector (without the program name) for `command` (empty: a login
    /// shell). Host keys are checked strictly against the instance's own known_hosts, which
    /// vfarm filled from the guest; the user's own known_hosts is neither read nor written.
    pub fn ssh_args(&self, identity: Option<&Path>, command: &[String]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-p".into(),
            self.port.to_string(),
            "-o".into(),
            format!("HostKeyAlias={}", self.host_key_alias),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "GlobalKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "UpdateHostKeys=no".into(),
        ];
        if let Some(i) = identity.or(self.identity.as_deref()) {
            a.push("-i".into());
            a.push(i.display().to_string());
            // Only that key: an agent full of others could exhaust the server's tries.
            a.push("-o".into());
            a.push("IdentitiesOnly=yes".into());
        }
        a.push(format!("{}@{}", self.user, self.host));
        if !command.is_empty() {
            // ssh joins its arguments with spaces for the remote shell; `--` keeps a command
            // starting with `-` from being read as an option.
            a.push("--".into());
            a.extend(command.iter().cloned());
        }
        a
    }

    /// The command line for display (`instance show`).
    pub fn command_line(&self) -> String {
        std::iter::once("ssh".to_string())
            .chain(self.ssh_args(None, &[]).into_iter().map(|a| shell_word(&a)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=@:,+".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A port on 127.0.0.1 nobody listens on right now. QEMU binds it a moment later; a start that
/// loses the race fails and is retried by the caller.
pub(super) fn free_port(id: &str) -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| io_err("pick an SSH port", id, "127.0.0.1:0", e))?;
    let port = l
        .local_addr()
        .map_err(|e| io_err("pick an SSH port", id, "127.0.0.1:0", e))?
        .port();
    Ok(port)
}

fn port_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// Refuses an image without what the full profile needs, naming what to add. The rootfs tar
/// (every repository image has one) is listed, not unpacked; only the names are read.
pub(super) fn check_image(spec: &InstanceSpec) -> Result<()> {
    let image = &spec.image;
    if image.initrd.is_none() {
        return Err(DriverError::InvalidSpec {
            field: "image",
            reason: format!(
                "image {} has no initramfs; the full profile boots the image's kernel with its \
                 own initramfs: build it with --boot vm",
                image.id
            ),
        });
    }
    let Some(tar) = image
        .files
        .iter()
        .find(|f| f.format == vfarm_core::Format::Tar)
    else {
        return Ok(());
    };
    let missing = missing_packages(&tar.path).map_err(|e| {
        io_err(
            "prepare",
            &spec.id,
            format!("listing {}", tar.path.display()),
            e,
        )
    })?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(DriverError::InvalidSpec {
        field: "image",
        reason: format!(
            "image {} lacks {} which the full profile needs (cloud-init sets up the user and \
             SSH keys, sshd serves `vfarm instance ssh`): build the image with --boot vm \
             --group ssh-server --package cloud-init, or use --profile fast",
            image.id,
            missing.join(" and ")
        ),
    })
}

/// The packages of [`NEEDS`] whose files are not in the tar.
fn missing_packages(tar: &Path) -> std::io::Result<Vec<&'static str>> {
    let f = std::fs::File::open(tar)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(f));
    let mut found = [false; NEEDS.len()];
    for entry in archive.entries()? {
        let entry = entry?;
        let path = entry.path()?;
        let name = path.to_string_lossy();
        let name = name.trim_start_matches("./");
        for (i, (_, files)) in NEEDS.iter().enumerate() {
            found[i] |= files.contains(&name);
        }
        if found.iter().all(|f| *f) {
            break;
        }
    }
    Ok(NEEDS
        .iter()
        .zip(found)
        .filter(|(_, f)| !f)
        .map(|((p, _), _)| *p)
        .collect())
}

/// The full profile's VM config and record part: seed disk written, port picked.
pub(super) fn make(
    spec: &InstanceSpec,
    accel: Accel,
    kernel: &Path,
    files: &RunFiles,
    dir: &Path,
) -> Result<(VmConfig, FullRecord)> {
    let id = &spec.id;
    let initrd = spec
        .image
        .initrd
        .as_ref()
        .expect("check_image refused images without an initramfs");
    let user = spec
        .vm
        .user
        .clone()
        .unwrap_or_else(|| DEFAULT_USER.to_string());
    // Through QEMU's user-mode network the guest reaches nothing but the forwarded port unless
    // the host network was asked for (on a site network, it goes out through that).
    let restrict = spec.network != Network::Host;
    let seed = Seed {
        instance_id: format!("vfarm-{id}"),
        hostname: spec.hostname.clone(),
        user: user.clone(),
        authorized_keys: spec.vm.ssh_authorized_keys.clone(),
        files: spec
            .vm
            .files
            .iter()
            .map(|f| SeedFile {
                path: f.path.clone(),
                content: f.content.clone(),
                mode: f.mode,
            })
            .collect(),
        nic_mac: Some(NIC_MAC.to_string()),
        dns: match spec.network.attachment() {
            Some(a) => a.nameservers.first().map(|n| n.to_string()),
            None => (!restrict).then(|| SLIRP_DNS.to_string()),
        },
        site_nic: spec
            .network
            .attachment()
            .map(|a| (a.mac.clone(), super::static_ip(a))),
    };
    let seed_file = seed_path(dir);
    cloudinit::write_seed(&seed_file, &seed).map_err(|e| match e {
        vfarm_qemu::Error::InvalidConfig { reason } => DriverError::InvalidSpec {
            field: "vm",
            reason,
        },
        e => classify("prepare", id, e),
    })?;
    let port = free_port(id)?;
    let vm = full_vm_config(
        id,
        accel,
        kernel,
        initrd,
        files,
        &seed_file,
        UserNet {
            hostfwd: vec![HostFwd::ssh(port)],
            restrict,
        },
    );
    Ok((
        vm,
        FullRecord {
            ssh_port: port,
            user,
            identity: spec.vm.ssh_identity.clone(),
            seed: seed_file,
            known_hosts: dir.join("known_hosts"),
        },
    ))
}

impl QemuDriver {
    /// Before QEMU starts: if another program took the SSH port since it was picked, pick a
    /// new one (in the record and in `vm`, the config about to be started).
    pub(super) fn full_refresh_port(&self, rec: &mut Record, vm: &mut VmConfig) -> Result<()> {
        let Some(full) = rec.full.as_mut() else {
            return Ok(());
        };
        if port_free(full.ssh_port) {
            return Ok(());
        }
        let port = free_port(&rec.id)?;
        full.ssh_port = port;
        for cfg in [&mut rec.vm, vm] {
            if let Some(net) = cfg.net.as_mut() {
                for f in net.hostfwd.iter_mut().filter(|f| f.guest_port == 22) {
                    f.host_port = port;
                }
            }
        }
        Ok(())
    }

    /// After the agent answers: waits for cloud-init's end of this boot, records the guest's
    /// host keys and waits for sshd's greeting on the forwarded port.
    pub(super) fn full_wait_ready(&self, rec: &Record, p: &QemuProcess) -> Result<()> {
        let Some(full) = &rec.full else {
            return Ok(());
        };
        let begun = Instant::now();
        let failed = |detail: String, retryable: bool| DriverError::Backend {
            op: "start",
            id: rec.id.clone(),
            detail,
            retryable,
            source: None,
        };
        let timed_out = |what: &str| {
            failed(
                format!(
                    "{what} within {:?}; console:\n{}",
                    self.boot_timeout,
                    self.console_tail(rec)
                ),
                true,
            )
        };
        loop {
            if !p.is_alive() {
                return Err(failed(
                    format!(
                        "QEMU exited while the guest booted; console:\n{}",
                        self.console_tail(rec)
                    ),
                    false,
                ));
            }
            let status = self.agent(rec).and_then(|mut ga| {
                ga.read_file(STATUS_FILE)
                    .map_err(|e| classify("start", &rec.id, e))
            });
            // Not there yet (or half written) until cloud-init runs: keep polling.
            let stage = status
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .map(|v| cloudinit::init_stage(&v));
            match stage {
                Some(InitStage::Done) => break,
                Some(InitStage::Failed(errors)) => {
                    return Err(failed(
                        format!(
                            "cloud-init reported errors (see /var/log/cloud-init.log in the \
                             guest): {}",
                            errors.join("; ")
                        ),
                        false,
                    ))
                }
                Some(InitStage::Running) | None => {}
            }
            if begun.elapsed() > self.boot_timeout {
                return Err(timed_out("cloud-init did not set up the guest"));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        self.record_host_keys(rec, full)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, full.ssh_port));
        loop {
            if ssh_banner(addr) {
                return Ok(());
            }
            if !p.is_alive() {
                return Err(failed("QEMU exited while sshd started".into(), false));
            }
            if begun.elapsed() > self.boot_timeout {
                return Err(timed_out(&format!("sshd did not answer on {addr}")));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Writes the guest's SSH host public keys, read through the agent, to the instance's
    /// known_hosts under its alias.
    fn record_host_keys(&self, rec: &Record, full: &FullRecord) -> Result<()> {
        let mut ga = self.agent(rec)?;
        let alias = host_key_alias(&rec.id);
        let mut lines = String::new();
        for t in HOST_KEY_TYPES {
            // A type the guest does not have is skipped; at least one is required below.
            let Ok(bytes) = ga.read_file(&format!("/etc/ssh/ssh_host_{t}_key.pub")) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            let mut parts = text.split_whitespace();
            if let (Some(kind), Some(key)) = (parts.next(), parts.next()) {
                lines.push_str(&format!("{alias} {kind} {key}\n"));
            }
        }
        if lines.is_empty() {
            return Err(DriverError::Backend {
                op: "start",
                id: rec.id.clone(),
                detail: "the guest has no SSH host keys in /etc/ssh".into(),
                retryable: false,
                source: None,
            });
        }
        std::fs::write(&full.known_hosts, lines)
            .map_err(|e| io_err("start", &rec.id, full.known_hosts.display(), e))
    }

    /// A systemd guest powers off when asked through the agent (`systemctl poweroff`, which
    /// needs neither D-Bus nor logind, unlike the agent's own `guest-shutdown` and the ACPI
    /// power button in a minimal image); ACPI is the fallback. Returns whether either was
    /// sent; QEMU exits when the guest has shut down.
    pub(super) fn full_powerdown(&self, rec: &Record, timeout: Duration) -> Result<bool> {
        let t = timeout.min(AGENT_TIMEOUT).max(Duration::from_millis(100));
        let mut qmp = Qmp::connect(&rec.vm.qmp_socket, t.min(QMP_TIMEOUT))
            .map_err(|e| classify("stop", &rec.id, e))?;
        if !qmp
            .query_status()
            .map_err(|e| classify("stop", &rec.id, e))?
            .running
        {
            let _ = qmp.cont();
        }
        let asked = rec.vm.qga_socket.as_ref().is_some_and(|sock| {
            GuestAgent::connect(sock, t)
                .and_then(|mut ga| {
                    ga.sync(t)?;
                    ga.exec_start(&ExecRequest::new("systemctl", &["--no-block", "poweroff"]))
                })
                .is_ok()
        });
        if !asked {
            qmp.system_powerdown()
                .map_err(|e| classify("stop", &rec.id, e))?;
        }
        Ok(true)
    }

    /// How to log in to a full-profile VM.
    pub fn ssh_info(&self, id: &str) -> Result<SshInfo> {
        let rec = self.load(id)?;
        let full = rec.full.as_ref().ok_or_else(|| DriverError::Unsupported {
            driver: "qemu",
            what: format!(
                "ssh into instance `{id}`: it runs the fast profile (no sshd); create it with \
                 --profile full"
            ),
        })?;
        if rec.spec.vm.ssh_authorized_keys.is_empty() {
            return Err(DriverError::Unsupported {
                driver: "qemu",
                what: format!(
                    "ssh into instance `{id}`: no SSH key was given at create (--ssh-key), so \
                     nobody can log in; use `vfarm instance exec`"
                ),
            });
        }
        Ok(ssh_info_of(&rec.id, full))
    }

    /// Network counters of the VM's NIC. QEMU 7.2's QMP has no counters for a user-mode
    /// netdev, so they come from the guest: the agent's `guest-network-get-interfaces`
    /// statistics of the interface whose MAC is the one QMP `query-rx-filter` reports for the
    /// VM's NIC. `Ok(None)` for a VM without a NIC.
    pub(super) fn net_stats(&self, rec: &Record, qmp: &mut Qmp) -> Result<Option<NetStats>> {
        if rec.vm.net.is_none() {
            return Ok(None);
        }
        let filters = qmp
            .execute("query-rx-filter", None)
            .map_err(|e| classify("stats", &rec.id, e))?;
        let Some(mac) = filters
            .as_array()
            .and_then(|a| a.first())
            .and_then(|f| f["main-mac"].as_str())
            .map(str::to_ascii_lowercase)
        else {
            return Ok(None);
        };
        let sock = rec
            .vm
            .qga_socket
            .as_ref()
            .ok_or_else(|| DriverError::Backend {
                op: "stats",
                id: rec.id.clone(),
                detail: "the VM has no guest agent channel".into(),
                retryable: false,
                source: None,
            })?;
        // Short: `show` must not hang on a busy guest.
        let t = Duration::from_secs(3);
        let ifaces = GuestAgent::connect(sock, t)
            .and_then(|mut ga| {
                ga.set_timeout(t);
                ga.execute("guest-network-get-interfaces", None)
            })
            .map_err(|e| classify("stats", &rec.id, e))?;
        Ok(parse_net_stats(&ifaces, &mac))
    }
}

/// Counters of one guest NIC, as the guest kernel counts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetStats {
    pub interface: String,
    pub mac: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

fn parse_net_stats(ifaces: &Value, mac: &str) -> Option<NetStats> {
    let i = ifaces.as_array()?.iter().find(|i| {
        i["hardware-address"]
            .as_str()
            .is_some_and(|m| m.eq_ignore_ascii_case(mac))
    })?;
    let s = &i["statistics"];
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    if s.is_null() {
        return None;
    }
    Some(NetStats {
        interface: i["name"].as_str().unwrap_or_default().to_string(),
        mac: mac.to_string(),
        rx_bytes: n("rx-bytes"),
        rx_packets: n("rx-packets"),
        rx_errors: n("rx-errs"),
        rx_dropped: n("rx-dropped"),
        tx_bytes: n("tx-bytes"),
        tx_packets: n("tx-packets"),
        tx_errors: n("tx-errs"),
        tx_dropped: n("tx-dropped"),
    })
}

fn host_key_alias(id: &str) -> String {
    format!("vfarm-{id}")
}

pub(super) fn ssh_info_of(id: &str, full: &FullRecord) -> SshInfo {
    SshInfo {
        host: Ipv4Addr::LOCALHOST,
        port: full.ssh_port,
        user: full.user.clone(),
        identity: full.identity.clone(),
        known_hosts: full.known_hosts.clone(),
        host_key_alias: host_key_alias(id),
    }
}

/// Whether an SSH server greets on `addr` (its first line starts with `SSH-`).
fn ssh_banner(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4];
    // slirp accepts the connection itself and closes it when the guest does not answer, so
    // an accepted connection alone proves nothing.
    s.read_exact(&mut buf).is_ok() && &buf == b"SSH-"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SshInfo {
        ssh_info_of(
            "abc123",
            &FullRecord {
                ssh_port: 40022,
                user: "vfarm".into(),
                identity: Some("/home/me/.ssh/id_ed25519".into()),
                seed: "/d/seed.img".into(),
                known_hosts: "/d/known hosts".into(),
            },
        )
    }

    #[test]
    fn ssh_arguments() {
        let a = info().ssh_args(None, &["id".into(), "-un".into()]);
        assert_eq!(
            a,
            [
                "-p",
                "40022",
                "-o",
                "HostKeyAlias=vfarm-abc123",
                "-o",
                "UserKnownHostsFile=/d/known hosts",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "UpdateHostKeys=no",
                "-i",
                "/home/me/.ssh/id_ed25519",
                "-o",
                "IdentitiesOnly=yes",
                "vfarm@127.0.0.1",
                "--",
                "id",
                "-un"
            ]
        );
        // An explicit key wins over the recorded one; no command means a login shell.
        let a = info().ssh_args(Some(Path::new("/k")), &[]);
        assert!(a.windows(2).any(|w| w == ["-i", "/k"]));
        assert_eq!(a.last().unwrap(), "vfarm@127.0.0.1");
        assert!(info()
            .command_line()
            .contains("'UserKnownHostsFile=/d/known hosts'"));
    }

    #[test]
    fn net_stats_of_the_nic_with_the_mac() {
        let v: Value = serde_json::json!([
            {"name": "lo", "hardware-address": "00:00:00:00:00:00",
             "statistics": {"rx-bytes": 1, "tx-bytes": 1}},
            {"name": "enp0s3", "hardware-address": "52:54:00:12:34:56",
             "statistics": {"tx-packets": 46, "tx-errs": 0, "rx-bytes": 7466, "rx-dropped": 0,
                            "rx-packets": 48, "rx-errs": 0, "tx-bytes": 8916, "tx-dropped": 0}}
        ]);
        let s = parse_net_stats(&v, "52:54:00:12:34:56").unwrap();
        assert_eq!(s.interface, "enp0s3");
        assert_eq!(
            (s.rx_bytes, s.rx_packets, s.tx_bytes, s.tx_packets),
            (7466, 48, 8916, 46)
        );
        assert_eq!(parse_net_stats(&v, "52:54:00:00:00:01"), None);
    }

    #[test]
    fn image_check_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("rootfs.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h.clone(), "./usr/sbin/sshd", std::io::empty())
            .unwrap();
        b.finish().unwrap();
        drop(b);
        assert_eq!(missing_packages(&tar_path).unwrap(), ["cloud-init"]);
    }
}
