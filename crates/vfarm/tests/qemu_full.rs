//! End-to-end tests of the qemu driver's `full` boot profile through the real binary: a
//! bootable bookworm image with cloud-init and sshd built by vfarm, booted by real QEMU (TCG
//! where KVM does not work) with the image's own kernel, Debian initramfs and systemd,
//! cloud-init from vfarm's NoCloud seed, logged into with the real OpenSSH client. Needs root
//! and the packages `scripts/setup.sh` installs; a missing component fails the test with its
//! name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::{
    assert_success, build_bootable, fresh_dir, live_qemus, one_vm, require, text, vfarm_cmd,
};

struct Fixture {
    data: PathBuf,
    /// A HOME of its own, so the test can show the user's known_hosts is left alone.
    home: PathBuf,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();
fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        require("ssh");
        require("ssh-keygen");
        let root = fresh_dir("qemu-full");
        let data = root.join("data");
        let home = root.join("home");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        // A site CA: every kept VM gets a host certificate through cloud-init.
        let ca = vfarm_cmd(&data)
            .args([
                "ca",
                "init",
                "--subject",
                "/C=XX/O=vfarm tests/CN=VM Test CA",
            ])
            .output()
            .unwrap();
        assert!(
            ca.status.success(),
            "{}",
            String::from_utf8_lossy(&ca.stderr)
        );
        let begun = Instant::now();
        build_bootable(
            &data,
            "full",
            &["--group", "ssh-server", "--package", "cloud-init"],
        );
        eprintln!(
            "image with cloud-init + sshd built in {:?}",
            begun.elapsed()
        );
        Fixture { data, home }
    })
}

fn vfarm(f: &Fixture, args: &[&str]) -> Output {
    vfarm_cmd(&f.data)
        .env("HOME", &f.home)
        .args(args)
        .output()
        .expect("run vfarm")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", text(out)))
}

/// QEMU processes of this data dir that are still alive.
fn qemu_processes(data: &Path) -> Vec<String> {
    live_qemus(data.to_str().unwrap())
}

fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("id_test");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "vfarm-test", "-f"])
        .arg(&key)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh-keygen");
    assert_success(&out, "ssh-keygen");
    key
}

#[test]
fn vm_options_are_refused_for_containers_and_the_fast_profile() {
    // Refused before any image is looked at: no fixture needed, nothing is made.
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("qemu-full-refusals");
    std::fs::create_dir_all(&root).unwrap();
    let f = Fixture {
        data: root.join("data"),
        home: root.clone(),
    };
    let key = root.join("k.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKx test\n").unwrap();
    let key = key.to_str().unwrap();
    let out = vfarm(
        &f,
        &["instance", "create", "--image", "x", "--ssh-key", key],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--ssh-key is for VMs"),
        "{}",
        text(&out)
    );
    let out = vfarm(
        &f,
        &[
            "instance",
            "create",
            "--driver",
            "qemu",
            "--profile",
            "fast",
            "--image",
            "x",
            "--ssh-key",
            key,
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("full profile"), "{}", text(&out));
    let out = vfarm(
        &f,
        &[
            "instance",
            "create",
            "--driver",
            "qemu",
            "--image",
            "x",
            "--ssh-key",
            "/nonexistent/key.pub",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("/nonexistent/key.pub"),
        "{}",
        text(&out)
    );
}

#[test]
fn full_profile_refuses_an_image_without_cloud_init_naming_what_to_add() {
    let f = fixture();
    let _vm = one_vm();
    // The plain --boot vm image (the fast profile's) has neither cloud-init nor sshd.
    let out = vfarm(
        f,
        &[
            "image", "build", "--suite", "bookworm", "--boot", "vm", "--format", "qcow2", "--name",
            "plain",
        ],
    );
    assert_success(&out, "plain bootable image build");
    let out = vfarm(
        f,
        &[
            "instance", "create", "--driver", "qemu", "--image", "plain", "--name", "p1",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = text(&out);
    for word in [
        "cloud-init",
        "openssh-server",
        "--group ssh-server --package cloud-init",
    ] {
        assert!(msg.contains(word), "error should name {word}:\n{msg}");
    }
    // Nothing was made.
    let ls = json(&vfarm(f, &["instance", "ls", "--output", "json"]));
    assert_eq!(ls.as_array().map(Vec::len), Some(0), "{ls}");
    assert!(qemu_processes(&f.data).is_empty());
}

#[test]
fn full_profile_boots_systemd_with_cloud_init_and_logs_in_over_ssh() {
    let f = fixture();
    let _vm = one_vm();
    let keys = f.data.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = keygen(&keys);
    let cert = keys.join("hostcert.pem");
    let cert_text = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n";
    std::fs::write(&cert, cert_text).unwrap();
    let pubkey = format!("{}.pub", key.display());
    let guest_file = format!("{}:/etc/vfarm-test/injected.pem", cert.display());

    let begun = Instant::now();
    let out = vfarm(
        f,
        &[
            "instance",
            "create",
            "--driver",
            "qemu",
            "--image",
            "full",
            "--name",
            "f1",
            "--ssh-key",
            &pubkey,
            "--guest-file",
            &guest_file,
            "--output",
            "json",
        ],
    );
    let boot = begun.elapsed();
    assert_success(&out, "instance create --profile full (default)");
    let created = json(&out);
    assert_eq!(created["state"], "running", "{created}");
    eprintln!(
        "full-profile create (prepare + boot until cloud-init set the guest up and sshd answers): {:.1} s",
        boot.as_secs_f64()
    );

    // ssh as the injected user, through the forwarded port, with the key beside key.pub.
    let out = vfarm(f, &["instance", "ssh", "f1", "--", "id", "-un"]);
    assert_success(&out, "instance ssh -- id -un");
    assert_eq!(stdout(&out), "vfarm");
    // The exit status passes through; an explicit -i works too.
    let key_arg = key.to_str().unwrap();
    let out = vfarm(
        f,
        &["instance", "ssh", "f1", "-i", key_arg, "--", "exit", "3"],
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    // write_files put the certificate in place, with the host file's mode.
    let out = vfarm(
        f,
        &[
            "instance",
            "ssh",
            "f1",
            "--",
            "cat",
            "/etc/vfarm-test/injected.pem",
        ],
    );
    assert_success(&out, "reading the injected file over ssh");
    assert_eq!(String::from_utf8_lossy(&out.stdout), cert_text);
    // The site CA's host certificate for the VM's hostname, and its key for root only.
    let out = vfarm(
        f,
        &[
            "instance",
            "exec",
            "f1",
            "--",
            "sh",
            "-c",
            "cat /etc/grid-security/hostcert.pem; stat -c %a /etc/grid-security/hostkey.pem",
        ],
    );
    assert_success(&out, "reading the host certificate");
    let got = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(got.trim_end().ends_with("600"), "{got}");
    let end = got
        .find("-----END CERTIFICATE-----")
        .expect("a certificate")
        + 25;
    let pem = f.data.join("f1-hostcert.pem");
    std::fs::write(&pem, &got[..end]).unwrap();
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(f.data.join("ca/ca.pem"))
        .arg(&pem)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
    let subject = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "compat", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&subject.stdout).contains("CN=f1"),
        "{}",
        text(&subject)
    );
    // Host keys were checked against vfarm's own known_hosts; the user's was not touched.
    assert!(
        !f.home.join(".ssh/known_hosts").exists(),
        "ssh wrote the user's known_hosts"
    );

    // exec through the guest agent, with systemd as the guest's init.
    let out = vfarm(f, &["instance", "exec", "f1", "--", "hostname"]);
    assert_success(&out, "instance exec hostname");
    assert_eq!(stdout(&out), "f1");
    let out = vfarm(f, &["instance", "exec", "f1", "--", "cat", "/proc/1/comm"]);
    assert_success(&out, "instance exec cat /proc/1/comm");
    assert_eq!(stdout(&out), "systemd");

    // show: profile, ssh port and command, network counters of the NIC.
    let show = json(&vfarm(f, &["instance", "show", "f1", "--output", "json"]));
    assert_eq!(show["profile"], "full", "{show}");
    let port = show["ssh"]["port"].as_u64().expect("ssh port in show");
    assert!(port > 0);
    let cmd = show["ssh"]["command"].as_str().unwrap_or_default();
    assert!(cmd.contains(&format!("-p {port}")), "{cmd}");
    let net = &show["stats"]["net"];
    assert!(
        net["rx_bytes"].as_u64().unwrap_or(0) > 0 && net["tx_packets"].as_u64().unwrap_or(0) > 0,
        "no network counters after SSH sessions: {show}"
    );
    // The port is really the VM's sshd: the system ssh client with show's command works.
    let ssh = Command::new("sh")
        .arg("-c")
        .arg(format!("{cmd} true"))
        .env("HOME", &f.home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success(&ssh, "the ssh command `instance show` prints");

    // A graceful stop powers the guest off through systemd (exit status 0), not a kill.
    let begun = Instant::now();
    let out = vfarm(f, &["instance", "stop", "f1", "--output", "json"]);
    assert_success(&out, "instance stop");
    eprintln!(
        "full-profile graceful stop: {:.1} s",
        begun.elapsed().as_secs_f64()
    );
    assert_eq!(json(&out)["exit_code"], 0, "{}", text(&out));

    let dir = f
        .data
        .join("qemu/instances")
        .join(created["id"].as_str().unwrap());
    assert!(dir.join("disk.qcow2").exists());
    let out = vfarm(f, &["instance", "destroy", "f1"]);
    assert_success(&out, "instance destroy");
    assert!(
        !dir.exists(),
        "instance dir (overlay, seed, sockets) left: {}",
        dir.display()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !qemu_processes(&f.data).is_empty() {
        assert!(
            Instant::now() < deadline,
            "QEMU left: {:?}",
            qemu_processes(&f.data)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ls = json(&vfarm(f, &["instance", "ls", "--output", "json"]));
    assert_eq!(ls.as_array().map(Vec::len), Some(0), "{ls}");
}

/// A network namespace of this test (the "desk"), removed on drop with its veth; also, if
/// the test failed half-way, its instances on its networks and the networks themselves.
struct Desk {
    ns: String,
    bridge: String,
    nets: Vec<String>,
}

impl Drop for Desk {
    fn drop(&mut self) {
        let f = fixture();
        let ls = vfarm(f, &["instance", "ls", "--output", "json"]);
        if let Ok(rows) = serde_json::from_slice::<Vec<Value>>(&ls.stdout) {
            for r in rows
                .iter()
                .filter(|r| self.nets.iter().any(|n| r["network"] == n.as_str()))
            {
                let _ = vfarm(f, &["instance", "destroy", r["id"].as_str().unwrap()]);
            }
        }
        for n in &self.nets {
            let _ = vfarm(f, &["network", "down", n]);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert_success(&out, &format!("ip {}", args.join(" ")));
}

/// Issue 18, acceptance 1: a full-profile VM made through the API on a `bridged` network is
/// reachable from a "desk" on the same LAN at its pool address: `ssh vfarm@ADDRESS id -un`
/// works from there, and the VM's host certificate names its pool hostname and verifies
/// against the site CA. The LAN is a bridge this test makes, with the desk in a network
/// namespace of its own; both go at the end.
#[test]
fn full_vm_on_a_bridged_lan_is_reached_from_a_desk_at_its_pool_address() {
    let f = fixture();
    let _vm = one_vm();
    let tag = format!("{:03x}", std::process::id() & 0xfff);
    let oct = 200 + std::process::id() % 20;
    let desk = Desk {
        ns: format!("vfdesk{tag}"),
        bridge: format!("vflan{tag}"),
        nets: vec![format!("lan{tag}"), format!("nat{tag}")],
    };
    let _ = Command::new("ip").args(["netns", "del", &desk.ns]).status();
    let _ = Command::new("ip")
        .args(["link", "del", &desk.bridge])
        .status();
    let (hv, dv) = (format!("vfdh{tag}"), format!("vfdd{tag}"));
    ip(&["link", "add", &desk.bridge, "type", "bridge"]);
    ip(&["link", "set", &desk.bridge, "up"]);
    ip(&["netns", "add", &desk.ns]);
    ip(&["link", "add", &hv, "type", "veth", "peer", "name", &dv]);
    ip(&["link", "set", &hv, "master", &desk.bridge, "up"]);
    ip(&["link", "set", &dv, "netns", &desk.ns]);
    let desk_addr = format!("198.18.{oct}.2/24");
    ip(&["-n", &desk.ns, "addr", "add", &desk_addr, "dev", &dv]);
    ip(&["-n", &desk.ns, "link", "set", &dv, "up"]);

    let vm_name = format!("desk-vm{tag}.grid.test");
    let vm_addr = format!("198.18.{oct}.10");
    let net = format!("lan{tag}");
    let nat = format!("nat{tag}");
    let cfg = f.data.join(format!("serve-lan{tag}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[[networks]]\nname = \"{net}\"\nkind = \"bridged\"\nbridge = \"{}\"\n\
             subnet = \"198.18.{oct}.0/24\"\n\
             [[networks]]\nname = \"{nat}\"\nsubnet = \"198.19.{oct}.0/24\"\n\
             [[hostnames]]\nname = \"{vm_name}\"\naddress = \"{vm_addr}\"\n\
             [[hostnames]]\nname = \"fast{tag}.grid.test\"\n",
            desk.bridge
        ),
    )
    .unwrap();
    let keys = f.data.join("desk-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = keygen(&keys);
    let pubkey = std::fs::read_to_string(key.with_extension("pub")).unwrap();

    let srv = common::Server::start_with(&f.data, &["--config", cfg.to_str().unwrap()]);
    let http = srv.client();
    let begun = Instant::now();
    let r = http
        .post(format!("{}/api/v1/instances?wait=true", srv.base))
        .json(&serde_json::json!({
            "image": "full", "driver": "qemu", "ssh_keys": [pubkey],
        }))
        .send()
        .unwrap();
    let status = r.status();
    let v: Value = r.json().unwrap();
    assert_eq!(status.as_u16(), 201, "{v}");
    eprintln!(
        "full VM on a bridged LAN, created through the API: {:.1} s",
        begun.elapsed().as_secs_f64()
    );
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["hostname"], vm_name.as_str(), "{v}");
    assert_eq!(v["network"], net.as_str(), "{v}");
    assert_eq!(v["address"], vm_addr.as_str(), "{v}");
    assert_eq!(
        v["ssh_command"],
        format!("ssh vfarm@{vm_name}").as_str(),
        "{v}"
    );

    // From the desk, at the pool address (the site's DNS would map the name to it).
    let ssh = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &desk.ns, "ssh", "-i"])
            .arg(&key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                &format!("vfarm@{vm_addr}"),
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let out = loop {
        let out = ssh(&["id", "-un"]);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_success(&out, "ssh from the desk");
    assert_eq!(stdout(&out), "vfarm");
    let out = ssh(&["cat", "/etc/grid-security/hostcert.pem"]);
    assert_success(&out, "reading the host certificate from the desk");
    let pem = keys.join("desk-vm-hostcert.pem");
    std::fs::write(&pem, &out.stdout).unwrap();
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(f.data.join("ca/ca.pem"))
        .arg(&pem)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", text(&verify));
    let subject = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
            "-in",
        ])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&subject.stdout).contains(&vm_name),
        "{}",
        text(&subject)
    );

    let r = http
        .delete(format!("{}/api/v1/instances/{id}", srv.base))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap());
    // A fast-profile VM on a nat network: the kernel's ip= argument, applied by vfarm's own
    // init, and egress through the masquerade (issue 18, acceptance 3 without the browser).
    let begun = Instant::now();
    let r = http
        .post(format!("{}/api/v1/instances?wait=true", srv.base))
        .json(&serde_json::json!({
            "image": "full", "driver": "qemu", "profile": "fast", "network": nat,
        }))
        .send()
        .unwrap();
    let status = r.status();
    let fast: Value = r.json().unwrap();
    assert_eq!(status.as_u16(), 201, "{fast}");
    eprintln!(
        "fast VM on a nat network: {:.1} s",
        begun.elapsed().as_secs_f64()
    );
    let fast_id = fast["id"].as_str().unwrap().to_string();
    let fast_addr = fast["address"].as_str().unwrap().to_string();
    assert!(fast_addr.starts_with(&format!("198.19.{oct}.")), "{fast}");
    let exec = |cmd: &str| -> Value {
        let r = http
            .post(format!("{}/api/v1/instances/{fast_id}/exec", srv.base))
            .json(&serde_json::json!({ "command": ["sh", "-c", cmd], "timeout": "300s" }))
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().unwrap());
        r.json().unwrap()
    };
    let ip = exec("ip -4 -o addr show dev eth0; ip route; cat /etc/resolv.conf");
    let shown = ip["stdout"].as_str().unwrap_or_default();
    assert!(
        shown.contains(&format!("{fast_addr}/24"))
            && shown.contains(&format!("default via 198.19.{oct}.1"))
            && shown.contains(&format!("nameserver 198.19.{oct}.1")),
        "{ip}"
    );
    let begun = Instant::now();
    let apt = exec("apt-get -q update 2>&1");
    assert_eq!(apt["exit_code"], 0, "{apt}");
    let out = apt["stdout"].as_str().unwrap_or_default();
    assert!(
        out.contains("Reading package lists") && !out.contains("Err:"),
        "{apt}"
    );
    eprintln!(
        "apt-get update in the VM through NAT: {:.1} s",
        begun.elapsed().as_secs_f64()
    );
    let r = http
        .delete(format!("{}/api/v1/instances/{fast_id}", srv.base))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap());

    // The tap went with the VM; the site's bridge stays, with only the desk on it.
    let links = Command::new("ip")
        .args(["-o", "link", "show", "master", &desk.bridge])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert!(!links.contains("vft-"), "{links}");
    assert!(links.contains(&hv), "{links}");
    drop(srv);
    assert_success(&vfarm(f, &["network", "down", &net]), "network down");
    assert_success(&vfarm(f, &["network", "down", &nat]), "network down");
    assert!(!Path::new("/run/vfarm/net").join(&net).exists());
    let _ = std::fs::remove_file(&cfg);
}
