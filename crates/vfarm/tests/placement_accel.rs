//! A control with two nodes that report their `vfarm doctor` verdicts by heartbeat: a qemu
//! instance goes to the one whose accelerator is KVM, and the placement says why. The nodes
//! are the test itself (join with the token, heartbeat with the issued certificate): the
//! verdicts are injected, the control's join, heartbeat and placement paths are the real ones.

mod common;

use common::{fresh_dir, require, serving, text, Proc, Vf};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};

fn client(ca: &Path, identity: Option<&Path>, bearer: Option<&str>) -> reqwest::blocking::Client {
    let mut b = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap())
        .timeout(Duration::from_secs(120));
    if let Some(dir) = identity {
        let mut pem = std::fs::read(dir.join("cert.pem")).unwrap();
        pem.extend(std::fs::read(dir.join("key.pem")).unwrap());
        b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
    }
    if let Some(t) = bearer {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        b = b.default_headers(h);
    }
    b.build().unwrap()
}

fn report(accelerator: &str) -> Value {
    json!({
        "checks": [{"capability": "qemu", "ok": true, "verdict": accelerator.to_uppercase()}],
        "accelerator": accelerator,
        "core_ok": true,
        "elapsed_ms": 1
    })
}

/// A control service over TLS on loopback with a site CA: (its CLI, the process, its URL, the
/// CA certificate).
fn start_control(dir: &Path) -> (Vf, Proc, String, PathBuf) {
    let control = Vf::with_minbase(dir.join("control"));
    control.ok(&["ca", "init", "--subject", "/C=XX/O=vfarm tests/CN=Site CA"]);
    let srv = control.data.join("srv");
    control.ok(&[
        "ca",
        "issue-host",
        "127.0.0.1",
        "--out",
        srv.to_str().unwrap(),
    ]);
    let (serve, url) = serving(control.cmd(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        srv.join("hostcert.pem").to_str().unwrap(),
        "--tls-key",
        srv.join("hostkey.pem").to_str().unwrap(),
        "--client-ca-dir",
        control.data.join("ca/certificates").to_str().unwrap(),
        "--admin",
        "admin",
    ]));
    let ca = control.data.join("ca/ca.pem");
    (control, serve, url, ca)
}

#[test]
fn a_qemu_instance_goes_to_the_kvm_node_and_says_why() {
    require("qemu-system-x86_64");
    let dir = fresh_dir("placement-accel");
    let (control, _serve, url, ca) = start_control(&dir);

    // Two nodes: the TCG one is bigger, so spreading alone would pick it.
    for (name, cpus, accel) in [("kvmnode", 4, "kvm"), ("tcgnode", 8, "tcg")] {
        let added = control.json(&["host", "add", name]);
        let resp = client(&ca, None, None)
            .post(format!("{url}/api/v1/hosts/join"))
            .json(
                &json!({"name": name, "token": added["token"], "address": "127.0.0.1", "port": 9}),
            )
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201, "join {name}");
        let j: Value = resp.json().unwrap();
        let creds = dir.join(name);
        std::fs::create_dir_all(&creds).unwrap();
        std::fs::write(creds.join("cert.pem"), j["cert_pem"].as_str().unwrap()).unwrap();
        std::fs::write(creds.join("key.pem"), j["key_pem"].as_str().unwrap()).unwrap();
        let resp = client(&ca, Some(&creds), None)
            .post(format!("{url}/api/v1/hosts/heartbeat"))
            .json(&json!({
                // Nothing listens there: the create on the node fails after placement.
                "url": "https://127.0.0.1:9",
                "cpus": cpus, "memory_mib": 8192, "disk_mib": 100000,
                "features": ["oci", "qemu"], "instances": [],
                "checks": report(accel),
            }))
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "heartbeat of {name}");
    }

    let ls = control.ok(&["host", "ls"]);
    let header = ls.lines().next().unwrap();
    assert!(header.contains("ACCEL"), "{ls}");
    for (name, accel) in [("kvmnode", "kvm"), ("tcgnode", "tcg")] {
        let row = ls.lines().find(|l| l.starts_with(name)).unwrap();
        assert!(row.split_whitespace().any(|w| w == accel), "{row}");
    }
    let show = control.ok(&["host", "show", "kvmnode"]);
    assert!(show.contains("accelerator:     kvm"), "{show}");
    let admin_token = control.ok(&["token", "create", "--user", "admin", "--name", "t"]);
    let admin = client(&ca, None, Some(admin_token.trim()));
    let h: Value = admin
        .get(format!("{url}/api/v1/hosts/tcgnode"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(h["accelerator"], "tcg", "{h}");
    assert_eq!(h["checks"]["checks"][0]["verdict"], "TCG", "{h}");

    let alice_token = control.ok(&["token", "create", "--user", "alice", "--name", "t"]);
    let alice = client(&ca, None, Some(alice_token.trim()));
    let resp = alice
        .post(format!("{url}/api/v1/instances"))
        .json(&json!({"image": "minbase", "driver": "qemu", "profile": "fast"}))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    let v: Value = resp.json().unwrap_or(Value::Null);
    assert!(status < 300, "create: {status} {v}");
    assert_eq!(v["instance"]["host"], "kvmnode", "{v}");
    let id = v["instance"]["id"].as_str().unwrap().to_string();

    let why = "KVM works there (tcgnode would emulate with TCG)";
    let reason = v["instance"]["placement"].as_str().unwrap_or_default();
    assert!(reason.starts_with(why), "{v}");
    // Recorded with the placement, for `instance show` later.
    let store = common::store_of(&control.data);
    assert_eq!(
        store.placement_reason(&id).unwrap().as_deref(),
        Some(reason)
    );

    // A node older than the verdicts is still taken, and its stale verdict is dropped.
    let resp = client(&ca, Some(&dir.join("tcgnode")), None)
        .post(format!("{url}/api/v1/hosts/heartbeat"))
        .json(
            &json!({"url": "https://127.0.0.1:9", "cpus": 8, "memory_mib": 8192,
                      "disk_mib": 100000, "features": ["oci", "qemu"], "instances": []}),
        )
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let show = control.run(&["host", "show", "tcgnode"]);
    assert!(
        text(&show).contains("accelerator:     -"),
        "{}",
        text(&show)
    );
}

/// The real `vfarm node` measures what it can run and the control shows it.
#[test]
fn a_node_reports_its_doctor_verdicts_in_its_heartbeat() {
    for tool in ["runc", "qemu-system-x86_64"] {
        require(tool);
    }
    let dir = fresh_dir("node-checks");
    let (control, _serve, url, ca) = start_control(&dir);
    let added = control.json(&["host", "add", "n1"]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let node = Vf {
        data: dir.join("n1"),
    };
    std::fs::create_dir_all(&node.data).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let child = node
        .cmd(&[
            "node",
            "--control",
            &url,
            "--name",
            "n1",
            "--listen",
            &listen,
            "--ca",
            ca.to_str().unwrap(),
        ])
        // Never in argv (issue 24): the join token comes from the environment.
        .env("VFARM_JOIN_TOKEN", added["token"].as_str().unwrap())
        .env_remove("VFARM_DATABASE")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _node = Proc(child);
    let t0 = std::time::Instant::now();
    let h = loop {
        let h = control.json(&["host", "show", "n1"]);
        if h["checks"].is_object() {
            break h;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no checks from the node within 60 s: {h}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let accel = h["accelerator"].as_str().unwrap_or_default();
    assert!(accel == "kvm" || accel == "tcg", "{h}");
    let checks = h["checks"]["checks"].as_array().unwrap();
    let names: Vec<&str> = checks
        .iter()
        .map(|c| c["capability"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["oci", "qemu", "builds", "slurm", "database"], "{h}");
    assert_eq!(h["checks"]["core_ok"], true, "{h}");
    let show = control.ok(&["host", "show", "n1"]);
    assert!(
        show.contains(&format!("accelerator:     {accel}")),
        "{show}"
    );
    assert!(
        show.contains("checks (the node's `vfarm doctor`):"),
        "{show}"
    );
}
