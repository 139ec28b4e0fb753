//! The instance REST API of `vfarm serve` end to end, with the real oci driver (runc):
//! owners and admins, the hostname pool and quotas under 200 concurrent creates, a kill -9
//! in the middle of a burst, the reaper and the audit log, live events.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{fresh_dir, Server, Vf};
use serde_json::{json, Value};

struct User {
    http: reqwest::blocking::Client,
    base: String,
}

impl User {
    fn new(server: &Server, name: &str) -> User {
        User::with_token(server, &server.token_for(name))
    }

    fn with_token(server: &Server, token: &str) -> User {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        User {
            http: reqwest::blocking::Client::builder()
                .default_headers(h)
                .timeout(Duration::from_secs(300))
                .build()
                .unwrap(),
            base: server.base.clone(),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(m, url);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (s, v) = self.call(method, path, body);
        assert!((200..300).contains(&s), "{method} {path}: {s} {v}");
        v
    }

    fn create(&self, body: Value) -> Value {
        let (s, v) = self.call("POST", "/api/v1/instances?wait=true", Some(body));
        assert_eq!(s, 201, "{v}");
        v
    }

    fn ids(&self) -> HashSet<String> {
        self.ok("GET", "/api/v1/instances", None)
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    }
}

fn write_config(data: &Path, text: &str) -> String {
    let p = data.join("test-serve.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn pool(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[hostnames]]\nname = \"wn{i:03}.example.org\"\naddress = \"192.0.2.{}\"\n",
                i % 250 + 1
            )
        })
        .collect()
}

/// Acceptance 1 (API part): each user sees and touches only their own instances, another's
/// is 404 and untouched, the admin sees all, no identity is a 401. Also exec, snapshots,
/// extend, console and the live events of the caller's own instances only.
#[test]
fn owners_admins_and_live_events() {
    let vf = Vf::with_minbase(fresh_dir("svc-owners"));
    // With a site CA, every kept instance gets a host certificate for its hostname.
    vf.ok(&[
        "ca",
        "init",
        "--subject",
        "/C=XX/O=vfarm tests/CN=Test Site CA",
    ]);
    let server = Server::start_with(&vf.data, &["--admin", "site-admin"]);
    let (alice, bob, admin) = (
        User::new(&server, "alice"),
        User::new(&server, "bob"),
        User::new(&server, "site-admin"),
    );

    // Alice listens for events before anything happens.
    let alice_token = server.token_for("alice");
    let events = std::thread::spawn({
        let base = server.base.clone();
        move || {
            let resp = reqwest::blocking::Client::new()
                .get(format!("{base}/api/v1/events"))
                .bearer_auth(alice_token)
                .send()
                .unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            for line in BufReader::new(resp).lines() {
                let line = line.unwrap();
                if let Some(d) = line.strip_prefix("data: ") {
                    let v: Value = serde_json::from_str(d).unwrap();
                    seen.push(v.clone());
                    if v["name"] == "a1" && v["state"] == "running" {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    break;
                }
            }
            seen
        }
    });
    std::thread::sleep(Duration::from_millis(700));

    let a1 = alice.create(json!({"image": "minbase", "name": "a1", "expiry": "2h"}));
    assert_eq!(a1["state"], "running");
    assert_eq!(a1["owner"], "alice");
    let b1 = bob.create(json!({"image": "minbase", "name": "b1"}));
    assert_eq!(b1["owner"], "bob");

    assert_eq!(
        alice.ids(),
        HashSet::from([a1["id"].as_str().unwrap().to_string()])
    );
    assert_eq!(
        bob.ids(),
        HashSet::from([b1["id"].as_str().unwrap().to_string()])
    );
    assert_eq!(admin.ids().len(), 2);
    for (m, p) in [
        ("GET", "/api/v1/instances/b1"),
        ("DELETE", "/api/v1/instances/b1"),
        ("POST", "/api/v1/instances/b1/stop"),
        ("GET", "/api/v1/instances/b1/console"),
    ] {
        let (s, v) = alice.call(m, p, None);
        assert_eq!(s, 404, "{m} {p}: {v}");
        assert_eq!(v["error"]["code"], "instance_not_found", "{v}");
    }
    assert_eq!(
        bob.ok("GET", "/api/v1/instances/b1", None)["state"],
        "running"
    );
    let anon = reqwest::blocking::get(format!("{}/api/v1/instances", server.base)).unwrap();
    assert_eq!(anon.status().as_u16(), 401);

    // The CLI against the service (--server): the same commands and output as locally.
    let remote = |token: &str, args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_vfarm"));
        c.args(["--server", &server.base])
            .env("VFARM_TOKEN", token)
            .env("VFARM_DATA_DIR", "/nonexistent-vfarm-data")
            .args(args);
        c.output().unwrap()
    };
    let bob_token = server.token_for("bob");
    let o = remote(&bob_token, &["instance", "ls", "--output", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["name"], "b1");
    let o = remote(&bob_token, &["instance", "ls"]);
    let table = String::from_utf8_lossy(&o.stdout);
    // By the NAME column: a random id may well contain "a1".
    let names: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(table.starts_with("ID") && names == ["b1"], "{table}");
    let o = remote(&bob_token, &["instance", "show", "a1"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    let o = remote(
        &bob_token,
        &[
            "instance",
            "exec",
            "b1",
            "--",
            "sh",
            "-c",
            "echo hi; exit 4",
        ],
    );
    assert_eq!(
        (o.status.code(), o.stdout.as_slice()),
        (Some(4), &b"hi\n"[..])
    );
    // Images too: list, show, export (download), and a refused build.
    let o = remote(&bob_token, &["image", "ls"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("minbase"),
        "{o:?}"
    );
    let o = remote(
        &bob_token,
        &["image", "show", "minbase", "--output", "json"],
    );
    let img: Value = serde_json::from_slice(&o.stdout).unwrap();
    let tar = img["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["format"] == "tar")
        .unwrap()
        .clone();
    let out = vf.data.join("exported.tar");
    let o = remote(
        &bob_token,
        &[
            "image",
            "export",
            "minbase",
            "--format",
            "tar",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        tar["size"].as_u64().unwrap()
    );
    std::fs::remove_file(&out).unwrap();
    let o = remote(&bob_token, &["image", "build", "--suite", "nosuch"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("nosuch"));
    let o = remote("vft_bogus", &["instance", "ls"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // The host certificate is in the instance, for its hostname, signed by the site CA; the
    // key is readable by root only.
    let r = alice.ok(
        "POST",
        "/api/v1/instances/a1/exec",
        Some(json!({"command": ["sh", "-c", "cat /etc/grid-security/hostcert.pem; stat -c %a /etc/grid-security/hostkey.pem"]})),
    );
    let out = r["stdout"].as_str().unwrap();
    assert!(out.trim_end().ends_with("600"), "{out}");
    let pem = &out[..out
        .find("-----END CERTIFICATE-----")
        .expect("a certificate")
        + 25];
    let ca = vf.data.join("ca/ca.pem");
    let cert_file = vf.data.join("a1-hostcert.pem");
    std::fs::write(&cert_file, pem).unwrap();
    let subject = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-nameopt", "compat", "-in"])
        .arg(&cert_file)
        .output()
        .unwrap();
    let subject = String::from_utf8_lossy(&subject.stdout);
    assert!(subject.contains("CN=a1"), "{subject}");
    let verify = std::process::Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca)
        .arg(&cert_file)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let record = vf.json(&["instance", "show", "a1"]);
    assert!(
        !record.to_string().contains("PRIVATE KEY"),
        "the host key leaked into the record"
    );

    // exec: output and exit status come back.
    let r = alice.ok(
        "POST",
        "/api/v1/instances/a1/exec",
        Some(json!({"command": ["sh", "-c", "echo out; echo err >&2; echo x > /marker; exit 3"]})),
    );
    assert_eq!(
        (
            r["exit_code"].as_i64(),
            r["stdout"].as_str(),
            r["stderr"].as_str()
        ),
        (Some(3), Some("out\n"), Some("err\n"))
    );
    // Bad input names the field and changes nothing.
    let (s, v) = alice.call(
        "POST",
        "/api/v1/instances/a1/exec",
        Some(json!({"command": []})),
    );
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("command")),
        "{v}"
    );
    let (s, v) = alice.call(
        "POST",
        "/api/v1/instances",
        Some(json!({"image": "minbase", "memory": "lots"})),
    );
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (400, Some("memory")),
        "{v}"
    );
    assert_eq!(alice.ids().len(), 1);

    // Snapshots: take, change, revert, remove.
    let snap = alice.call(
        "POST",
        "/api/v1/instances/a1/snapshots",
        Some(json!({"name": "s1"})),
    );
    assert_eq!(snap.0, 201, "{}", snap.1);
    alice.ok(
        "POST",
        "/api/v1/instances/a1/exec",
        Some(json!({"command": ["rm", "/marker"]})),
    );
    alice.ok("POST", "/api/v1/instances/a1/snapshots/s1/revert", None);
    let r = alice.ok(
        "POST",
        "/api/v1/instances/a1/exec",
        Some(json!({"command": ["cat", "/marker"]})),
    );
    assert_eq!(r["stdout"], "x\n", "{r}");
    assert_eq!(
        alice.ok("GET", "/api/v1/instances/a1/snapshots", None)[0]["name"],
        "s1"
    );
    alice.ok("DELETE", "/api/v1/instances/a1/snapshots/s1", None);
    let (s, _) = alice.call("DELETE", "/api/v1/instances/a1/snapshots/s1", None);
    assert_eq!(s, 404);

    // Expiry: extend moves it later; the list shows time left.
    let before = alice.ok("GET", "/api/v1/instances/a1", None)["expires_in_secs"]
        .as_i64()
        .unwrap();
    assert!((7000..=7200).contains(&before), "{before}");
    let ext = alice.ok(
        "POST",
        "/api/v1/instances/a1/extend",
        Some(json!({"by": "1d"})),
    );
    assert!(
        ext["expires_in_secs"].as_i64().unwrap() > before + 86_000,
        "{ext}"
    );
    let (s, v) = alice.call(
        "POST",
        "/api/v1/instances/a1/extend",
        Some(json!({"by": "soon"})),
    );
    assert_eq!((s, v["error"]["field"].as_str()), (400, Some("by")), "{v}");

    // Stop, start, pause, resume through the API.
    assert_eq!(
        alice.ok("POST", "/api/v1/instances/a1/pause", None)["state"],
        "paused"
    );
    assert_eq!(
        alice.ok("POST", "/api/v1/instances/a1/resume", None)["state"],
        "running"
    );
    assert_eq!(
        alice.ok(
            "POST",
            "/api/v1/instances/a1/stop",
            Some(json!({"force": true}))
        )["state"],
        "stopped"
    );
    let (s, v) = alice.call(
        "POST",
        "/api/v1/instances/a1/exec",
        Some(json!({"command": ["true"]})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("illegal_state")),
        "{v}"
    );
    assert_eq!(
        alice.ok("POST", "/api/v1/instances/a1/start", None)["state"],
        "running"
    );

    let seen = events.join().unwrap();
    assert!(
        seen.iter()
            .any(|v| v["name"] == "a1" && v["state"] == "running"),
        "alice's stream never showed a1 running: {seen:?}"
    );
    assert!(
        seen.iter().all(|v| v["owner"] == "alice"),
        "alice saw someone else's instance: {seen:?}"
    );

    // The admin may destroy anyone's; then nothing is left.
    admin.ok("DELETE", "/api/v1/instances/b1", None);
    alice.ok("DELETE", "/api/v1/instances/a1", None);
    assert!(admin.ids().is_empty());
    let dirs = std::fs::read_dir(vf.data.join("instances"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(dirs, 0, "instance directories left behind");
    // Every change is in the audit log with its actor.
    let audit = admin.ok("GET", "/api/v1/audit?limit=1000", None);
    let by = |actor: &str, action: &str| {
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"] == actor && e["action"].as_str().unwrap().starts_with(action))
    };
    assert!(by("alice", "POST /api/v1/instances"), "{audit}");
    assert!(by("site-admin", "DELETE /api/v1/instances/b1"), "{audit}");
    let own = alice.ok("GET", "/api/v1/audit", None);
    assert!(
        own.as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"] == "alice"),
        "{own}"
    );
    // The event log names the caller of each state change, not the service's own user:
    // alice's instance was made, started and destroyed by alice, bob's destroyed by the admin.
    let events = common::store_of(&vf.data).events(10_000).unwrap();
    let acts = |actor: &str, kind: &str| {
        events
            .iter()
            .filter(|e| e.actor == actor && e.kind == kind)
            .count()
    };
    assert!(acts("alice", "instance.create") >= 1, "{events:?}");
    assert!(acts("alice", "instance.running") >= 1, "{events:?}");
    assert!(acts("alice", "instance.destroyed") >= 1, "{events:?}");
    assert!(acts("site-admin", "instance.destroyed") >= 1, "{events:?}");
    let service_user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    assert!(
        events
            .iter()
            .all(|e| e.actor != service_user || !e.kind.starts_with("instance.")),
        "a change recorded as the service's user {service_user}: {events:?}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&vf.data);
}

/// Acceptance 2: 200 concurrent creates over a pool of 150 hostnames, from 4 users with a
/// quota of 45 instances each: exactly 150 succeed, every refusal says pool exhausted or
/// quota exceeded, no hostname is given twice, no user holds more than the quota.
#[test]
fn two_hundred_concurrent_creates_against_pool_and_quota() {
    let vf = Vf::with_minbase(fresh_dir("svc-burst"));
    let cfg = write_config(
        &vf.data,
        // Names given back come straight back here (the quarantine is tests/networks.rs's).
        &format!(
            "hostname_quarantine = \"0\"\n[quotas.default]\ninstances = 45\n{}",
            pool(150)
        ),
    );
    let server = Server::start_with(&vf.data, &["--config", &cfg, "--admin", "site-admin"]);
    let users: Vec<Arc<User>> = (0..4)
        .map(|i| Arc::new(User::new(&server, &format!("user{i}"))))
        .collect();
    let barrier = Arc::new(Barrier::new(200));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let (u, b) = (users[i % 4].clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                // Reservations: prepared and holding a name, not started (the pool and quota
                // logic is the same; 150 running containers would only slow the test).
                u.call(
                    "POST",
                    "/api/v1/instances?wait=true",
                    Some(json!({"image": "minbase", "reserve": true, "cpus": 0.1})),
                )
            })
        })
        .collect();
    let results: Vec<(u16, Value)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!("200 concurrent creates answered in {:.1?}", t0.elapsed());
    let ok: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 201)
        .map(|(_, v)| v)
        .collect();
    let refused: Vec<&(u16, Value)> = results.iter().filter(|(s, _)| *s != 201).collect();
    let codes: Vec<&str> = refused
        .iter()
        .map(|(_, v)| v["error"]["code"].as_str().unwrap_or("?"))
        .collect();
    eprintln!(
        "created {}, refused {} (pool_exhausted {}, quota_exceeded {})",
        ok.len(),
        refused.len(),
        codes.iter().filter(|c| **c == "pool_exhausted").count(),
        codes.iter().filter(|c| **c == "quota_exceeded").count()
    );
    assert_eq!(ok.len(), 150, "refusals: {refused:?}");
    for (s, v) in &refused {
        assert_eq!(*s, 409, "{v}");
        let code = v["error"]["code"].as_str().unwrap();
        assert!(
            code == "pool_exhausted" || code == "quota_exceeded",
            "unexpected refusal {v}"
        );
    }
    for v in &ok {
        assert_eq!(v["state"], "created", "{v}");
    }
    let names: HashSet<&str> = ok.iter().map(|v| v["hostname"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 150, "a hostname was given twice");
    assert!(names.iter().all(|n| n.ends_with(".example.org")));
    assert!(ok.iter().all(|v| v["address"].as_str().is_some()));
    for (i, u) in users.iter().enumerate() {
        let n = u.ids().len();
        assert!(n <= 45, "user{i} holds {n} instances, over the quota of 45");
    }
    let admin = User::new(&server, "site-admin");
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("vfarm_hostname_leases 150"), "{metrics}");
    // Destroying one frees its name for the next create.
    let victim = ok[0]["id"].as_str().unwrap();
    let freed = ok[0]["hostname"].as_str().unwrap();
    let owner: usize = ok[0]["owner"].as_str().unwrap()["user".len()..]
        .parse()
        .unwrap();
    admin.ok("DELETE", &format!("/api/v1/instances/{victim}"), None);
    let u = &users[owner];
    let again = u.create(json!({"image": "minbase", "reserve": true, "cpus": 0.1}));
    assert_eq!(again["hostname"], freed);
    let q = u.ok("GET", "/api/v1/quota", None);
    assert_eq!(q["limits"]["instances"], 45, "{q}");
    // Everything goes again, names and all.
    let all: Vec<String> = admin.ids().into_iter().collect();
    let admin = Arc::new(admin);
    let gone: Vec<_> = all
        .chunks(all.len().div_ceil(8))
        .map(|ids| {
            let (a, ids) = (admin.clone(), ids.to_vec());
            std::thread::spawn(move || {
                for id in ids {
                    a.ok("DELETE", &format!("/api/v1/instances/{id}"), None);
                }
            })
        })
        .collect();
    for g in gone {
        g.join().unwrap();
    }
    assert!(admin.ids().is_empty());
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("vfarm_hostname_leases 0"), "{metrics}");
    drop(server);
    let _ = std::fs::remove_dir_all(&vf.data);
}

/// Acceptance 3: kill -9 of the service during a burst of creates and destroys, then a
/// restart: every record agrees with the host (running ones run), no instance directory
/// without a record, no hostname held by an instance that is gone.
#[test]
fn killed_mid_burst_the_service_restarts_consistent() {
    let vf = Vf::with_minbase(fresh_dir("svc-kill"));
    let cfg = write_config(&vf.data, &pool(60));
    let mut server = Server::start_with(&vf.data, &["--config", &cfg]);
    let token = server.token_for("carol");
    let carol = Arc::new(User::with_token(&server, &token));
    // Some instances exist before the burst, so destroys are part of it.
    let early: Vec<String> = (0..6)
        .map(|_| {
            carol.create(json!({"image": "minbase"}))["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut burst = Vec::new();
    // Answers with 202 so far: the kill waits for the first, not for a guessed delay (on a
    // loaded machine none had come back after half a second).
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..24 {
        let c = carol.clone();
        let answered = answered.clone();
        let victim = early.get(i % 8).cloned().filter(|_| i % 4 == 0);
        burst.push(std::thread::spawn(move || match victim {
            Some(v) => {
                let _ = c
                    .http
                    .delete(format!("{}/api/v1/instances/{v}", c.base))
                    .send();
                None
            }
            // What an accepted create promised: an operation about an instance.
            None => c
                .http
                .post(format!("{}/api/v1/instances", c.base))
                .json(&json!({"image": "minbase"}))
                .send()
                .ok()
                .filter(|r| r.status().as_u16() == 202)
                .and_then(|r| r.json::<Value>().ok())
                .inspect(|_| {
                    answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }),
        }));
        std::thread::sleep(Duration::from_millis(15));
    }
    // Mid-burst: the first 202s came back, prepares and starts are under way, the last
    // requests may not even have been answered.
    let t0 = std::time::Instant::now();
    while answered.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no create was accepted within 60 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill9();
    let accepted: Vec<Value> = burst
        .into_iter()
        .filter_map(|b| b.join().ok().flatten())
        .collect();
    let server = Server::start_with(&vf.data, &["--config", &cfg]);
    let carol = User::with_token(&server, &token);
    // The watcher and a show reconcile; give the driver-side starts that were under way
    // a moment to be observed.
    std::thread::sleep(Duration::from_secs(2));
    let list = carol.ok("GET", "/api/v1/instances", None);
    let rows = list.as_array().unwrap();
    let ids: HashSet<String> = rows
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    eprintln!(
        "after restart: {} instances ({:?})",
        rows.len(),
        rows.iter()
            .map(|r| r["state"].as_str().unwrap())
            .collect::<Vec<_>>()
    );
    assert!(!rows.is_empty());
    // No accepted create is lost: its operation either succeeded and the instance is there,
    // or says it failed (the restart) and there is no instance.
    eprintln!("{} creates were accepted before the kill", accepted.len());
    assert!(!accepted.is_empty());
    for a in &accepted {
        let op = a["operation"]["id"].as_str().unwrap();
        let id = a["instance"]["id"].as_str().unwrap();
        let o = carol.ok("GET", &format!("/api/v1/operations/{op}"), None);
        match o["status"].as_str() {
            Some("succeeded") => assert!(ids.contains(id), "{id} succeeded but is gone: {o}"),
            Some("failed") => assert!(!ids.contains(id), "{id} failed but exists: {o}"),
            _ => panic!("operation of {id} still {o} after the restart"),
        }
    }
    for r in rows {
        let id = r["id"].as_str().unwrap();
        let state = carol.ok("GET", &format!("/api/v1/instances/{id}"), None)["state"]
            .as_str()
            .unwrap()
            .to_string();
        // `failed`: a destroy (or start) cut short by the kill ended the processes but not the
        // record; the record says so, and a destroy now finishes it.
        assert!(
            ["created", "running", "stopped", "failed"].contains(&state.as_str()),
            "{id} is {state} after the restart"
        );
        if state == "running" {
            let e = carol.ok(
                "POST",
                &format!("/api/v1/instances/{id}/exec"),
                Some(json!({"command": ["true"]})),
            );
            assert_eq!(
                e["exit_code"], 0,
                "{id}: recorded running but exec failed: {e}"
            );
        }
    }
    let dirs: HashSet<String> = std::fs::read_dir(vf.data.join("instances"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    // Every directory has its record, and every record its directory, except a `failed`
    // one whose destroy the kill cut short after the directory went (the record says so,
    // and the destroy below finishes it).
    let failed: HashSet<String> = rows
        .iter()
        .filter(|r| r["state"] == "failed")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        dirs.is_subset(&ids),
        "directories without a record: {:?}",
        dirs.difference(&ids)
    );
    let missing: HashSet<&String> = ids.difference(&dirs).collect();
    assert!(
        missing.iter().all(|id| failed.contains(*id)),
        "records without a directory that are not failed: {missing:?} (failed: {failed:?})"
    );
    let leases = vf.json(&["instance", "ls"]);
    let hosts: Vec<&str> = leases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts.iter().collect::<HashSet<_>>().len(),
        hosts.len(),
        "a hostname is held twice"
    );
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.base))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(&format!("vfarm_hostname_leases {}", ids.len())),
        "leases and instances differ ({} instances):\n{metrics}",
        ids.len()
    );
    for id in &ids {
        carol.ok("DELETE", &format!("/api/v1/instances/{id}"), None);
    }
    assert!(carol.ids().is_empty());
    drop(server);
    let _ = std::fs::remove_dir_all(&vf.data);
}

/// Acceptance 4: an instance past its expiry is destroyed by the service's reaper, and the
/// audit log says so.
#[test]
fn the_reaper_destroys_expired_instances_and_audits_it() {
    let vf = Vf::with_minbase(fresh_dir("svc-reap"));
    let server = Server::start_with(&vf.data, &["--admin", "site-admin"]);
    let dave = User::new(&server, "dave");
    let admin = User::new(&server, "site-admin");
    let v = dave.create(json!({"image": "minbase", "expiry": "3s"}));
    let id = v["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    while dave.ids().contains(&id) {
        assert!(Instant::now() < deadline, "instance {id} was not reaped");
        std::thread::sleep(Duration::from_millis(500));
    }
    let audit = admin.ok("GET", "/api/v1/audit?limit=100", None);
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "instance.reap" && e["object"] == id.as_str())
        .unwrap_or_else(|| panic!("no reap entry for {id} in {audit}"));
    assert_eq!(entry["actor"], "vfarm-reaper");
    assert_eq!(entry["detail"]["owner"], "dave");
    assert!(!vf.data.join("instances").join(&id).exists());
    drop(server);
    let _ = std::fs::remove_dir_all(&vf.data);
}

/// Issue 15, finding 1 and acceptance 2: an instance made through the API runs as its
/// owner's unprivileged host id range (seen from the host), under seccomp; a set-uid file made
/// inside belongs to that range on the host and nobody on the host reaches it; the data dir
/// is not listable and the state database is 0600. Only an admin may ask for a privileged one.
#[test]
fn api_instances_are_unprivileged_on_the_host() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let vf = Vf::with_minbase(fresh_dir("svc-userns"));
    let server = Server::start_with(&vf.data, &["--admin", "site-admin"]);
    let (erin, admin) = (User::new(&server, "erin"), User::new(&server, "site-admin"));
    let v = erin.create(json!({"image": "minbase", "name": "e1"}));
    let id = v["id"].as_str().unwrap().to_string();
    let r = erin.ok(
        "POST",
        "/api/v1/instances/e1/exec",
        Some(json!({"command": ["sh", "-c",
            "cat /proc/self/uid_map; id -u; grep Seccomp: /proc/self/status; \
             cp /usr/bin/id /tmp/sid && chmod 4755 /tmp/sid && echo made"]})),
    );
    assert_eq!(r["exit_code"], 0, "{r}");
    let out = r["stdout"].as_str().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    let map: Vec<u64> = lines[0]
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let base = map[1];
    assert_eq!((map[0], map[2]), (0, 65536), "{out}");
    assert!(base >= 1 << 20, "uid 0 maps to host uid {base}: {out}");
    assert_eq!(lines[1], "0", "{out}");
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["Seccomp:", "2"]
    );
    assert_eq!(lines[3], "made");
    // The instance's main process, as the host sees it.
    let dir = vf.data.join("instances").join(&id);
    let pid = std::fs::read_to_string(dir.join("run/container.pid")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let uid: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(uid, base, "{status}");
    let sid = dir.join("upper/tmp/sid");
    let m = std::fs::metadata(&sid).unwrap();
    assert_eq!((u64::from(m.uid()), m.mode() & 0o4000), (base, 0o4000));
    // Through a shell: the path is looked up as nobody, as a local account would.
    let nobody = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            "exec \"$0\"",
        ])
        .arg(&sid)
        .output()
        .unwrap();
    assert!(
        !nobody.status.success(),
        "nobody ran {}: {nobody:?}",
        sid.display()
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&vf.data), 0o711);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&vf.data.join("rootfs")), 0o700);
    if vf.data.join("state.db").exists() {
        assert_eq!(mode(&vf.data.join("state.db")), 0o600);
    }
    // Privileged instances are an admin's explicit choice.
    let (s, e) = erin.call(
        "POST",
        "/api/v1/instances",
        Some(json!({"image": "minbase", "privileged": true})),
    );
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (400, Some("privileged")),
        "{e}"
    );
    let p = admin.create(json!({"image": "minbase", "name": "p1", "privileged": true}));
    let r = admin.ok(
        "POST",
        "/api/v1/instances/p1/exec",
        Some(json!({"command": ["cat", "/proc/self/uid_map"]})),
    );
    let map: Vec<&str> = r["stdout"].as_str().unwrap().split_whitespace().collect();
    assert_eq!(
        map[1], "0",
        "privileged instances share the host's ids: {r}"
    );
    for i in [&id, p["id"].as_str().unwrap()] {
        admin.ok("DELETE", &format!("/api/v1/instances/{i}"), None);
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&vf.data);
}

/// Shell completions and man pages come from the same definitions as the parser.
#[test]
fn completions_and_man_pages() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vfarm"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(
        script.contains("vfarm__instance__create") || script.contains("instance"),
        "{}",
        &script[..200]
    );
    assert!(script.contains("--server"));
    let dir = fresh_dir("man-pages");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vfarm"))
        .arg("man")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = std::fs::read_to_string(dir.join("vfarm-instance-create.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH"),
        "{}",
        &page[..100]
    );
    assert!(page.contains("expiry"));
}

/// Acceptance 1 with grid identities: two users with client certificates from a test CA
/// (the site CA) drive the service through the CLI (`--server https://… --cert --key --ca`);
/// each sees only their own instances, and the certificate's subject with its issuer is the
/// owner. Issue 24: a second trusted CA (without namespace files, `require_namespaces =
/// false`) issuing Carol's very DN is another user, who sees and touches none of hers.
#[test]
fn certificate_users_through_the_cli() {
    let vf = Vf::with_minbase(fresh_dir("svc-certs"));
    vf.ok(&["ca", "init", "--subject", "/C=XX/O=vfarm tests/CN=Test CA"]);
    let srv = vf.data.join("srv");
    vf.ok(&[
        "ca",
        "issue-host",
        "localhost",
        "--out",
        srv.to_str().unwrap(),
    ]);
    let carol = "/C=XX/O=vfarm tests/CN=Carol";
    let users = [
        (carol, vf.data.join("carol")),
        ("/C=XX/O=vfarm tests/CN=Dave", vf.data.join("dave")),
        (carol, vf.data.join("carol-other")),
    ];
    for (dn, dir) in &users[..2] {
        vf.ok(&["ca", "issue-user", dn, "--out", dir.to_str().unwrap()]);
    }
    let other = Vf {
        data: fresh_dir("svc-certs-other-ca"),
    };
    other.ok(&["ca", "init", "--subject", "/C=XX/O=Other/CN=Other CA"]);
    other.ok(&[
        "ca",
        "issue-user",
        carol,
        "--out",
        users[2].1.to_str().unwrap(),
    ]);
    for f in std::fs::read_dir(other.data.join("ca/certificates")).unwrap() {
        let f = f.unwrap();
        let name = f.file_name().to_string_lossy().into_owned();
        if name.ends_with(".0") || name.ends_with(".r0") {
            std::fs::copy(f.path(), vf.data.join("ca/certificates").join(&name)).unwrap();
        }
    }
    std::fs::write(
        vf.data.join("serve.toml"),
        "[trust]\nrequire_namespaces = false\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vfarm"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(srv.join("hostcert.pem"))
        .arg("--tls-key")
        .arg(srv.join("hostkey.pem"))
        .arg("--client-ca-dir")
        .arg(vf.data.join("ca/certificates"))
        .env("VFARM_DATA_DIR", &vf.data)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .split_whitespace()
        .find(|w| w.starts_with("https://"))
        .and_then(|u| u.rsplit(':').next())
        .unwrap_or_else(|| panic!("no https address in {line:?}"))
        .to_string();
    let url = format!("https://localhost:{port}");
    let cli = |who: usize, args: &[&str]| {
        let dir = &users[who].1;
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_vfarm"))
            .args(["--server", &url, "--cert"])
            .arg(dir.join("usercert.pem"))
            .arg("--key")
            .arg(dir.join("userkey.pem"))
            .arg("--ca")
            .arg(vf.data.join("ca/ca.pem"))
            .env_remove("VFARM_TOKEN")
            .args(args)
            .output()
            .unwrap();
        o
    };
    let o = cli(
        0,
        &[
            "instance", "create", "--image", "minbase", "--name", "c1", "--output", "json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c1: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        c1["owner"],
        format!("{carol} issuer=/C=XX/O=vfarm tests/CN=Test CA")
    );
    assert_eq!(c1["state"], "running");
    let o = cli(
        1,
        &["instance", "create", "--image", "minbase", "--name", "d1"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("d1"));
    for (who, mine) in [(0, &["c1"][..]), (1, &["d1"][..]), (2, &[][..])] {
        let o = cli(who, &["instance", "ls", "--output", "json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let names: Vec<&str> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, mine, "user {who}");
    }
    // Carol's DN from the other CA: not Carol's instance (not found, exit 3).
    let o = cli(2, &["instance", "destroy", "c1"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = cli(0, &["instance", "destroy", "d1"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = cli(0, &["snapshot", "create", "c1", "s1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli(0, &["snapshot", "ls", "c1"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("s1"));
    // Without a certificate or token: 401, exit 2, nothing changed.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vfarm"))
        .args(["--server", &url, "--ca"])
        .arg(vf.data.join("ca/ca.pem"))
        .env_remove("VFARM_TOKEN")
        .args(["instance", "destroy", "c1"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("401"));
    for (who, name) in [(0, "c1"), (1, "d1")] {
        let o = cli(who, &["instance", "destroy", name]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&vf.data);
    let _ = std::fs::remove_dir_all(&other.data);
}

/// `vfarm ARGS` on a data dir with extra environment (a shared database).
fn vfarm_env(data: &Path, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    common::vfarm_cmd(data)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run vfarm")
}

/// Pass or fail, what the services of a test left running is destroyed on the way out,
/// each instance through the data dir that runs it.
struct DestroyLeft<'a> {
    dirs: Vec<std::path::PathBuf>,
    env: &'a [(&'a str, &'a str)],
}

impl Drop for DestroyLeft<'_> {
    fn drop(&mut self) {
        for d in &self.dirs {
            let Ok(rd) = std::fs::read_dir(d.join("instances")) else {
                continue;
            };
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = vfarm_env(d, self.env, &["instance", "destroy", &id]);
            }
        }
    }
}

/// Several hosts: two `vfarm serve` processes, each with its own data dir, share one
/// PostgreSQL schema. The pool and tokens are common to both; each keeps to its own local
/// instances (the other's are neither marked lost by its watcher nor touched by its restart
/// reconciliation), and acting on the other's through it is refused with a code.
#[test]
fn two_services_share_one_postgresql() {
    let url = std::env::var("VFARM_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty() && u != "off")
        .expect(
            "two services sharing a database need PostgreSQL: set VFARM_TEST_POSTGRES \
             (scripts/test.sh sets it; scripts/setup.sh starts the server)",
        );
    let schema = format!("t_shared_{}", std::process::id());
    let env = [
        ("VFARM_DATABASE", url.as_str()),
        ("VFARM_DATABASE_SCHEMA", schema.as_str()),
    ];
    let root = fresh_dir("svc-shared");
    let (da, db) = (root.join("a"), root.join("b"));
    let _left = DestroyLeft {
        dirs: vec![da.clone(), db.clone()],
        env: &env,
    };
    let tar = common::minbase_tar();
    for d in [&da, &db] {
        std::fs::create_dir_all(d).unwrap();
        // Each service needs the image's files in its own data dir.
        let import = [
            "image",
            "import",
            tar.to_str().unwrap(),
            "--name",
            "minbase",
        ];
        common::assert_success(&vfarm_env(d, &env, &import), "image import");
        write_config(d, &pool(4));
    }
    let start = |d: &Path| {
        let cfg = d.join("test-serve.toml");
        Server::start_env(d, &["--config", cfg.to_str().unwrap()], &env)
    };
    let a = start(&da);
    let mut b = start(&db);
    // A token made through one service is good at the other: users are in the database.
    let token = a.token_for("alice");
    let (alice_a, alice_b) = (
        Arc::new(User::with_token(&a, &token)),
        Arc::new(User::with_token(&b, &token)),
    );

    // Six creates at once, three through each, over one pool of four hostnames.
    let barrier = Arc::new(Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let u = if i % 2 == 0 { &alice_a } else { &alice_b }.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let r = u.call(
                    "POST",
                    "/api/v1/instances?wait=true",
                    Some(json!({"image": "minbase", "cpus": 0.1, "memory": "64M"})),
                );
                (i % 2 == 0, r)
            })
        })
        .collect();
    let results: Vec<(bool, (u16, Value))> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let made: Vec<(bool, &Value)> = results
        .iter()
        .filter(|(_, (s, _))| *s == 201)
        .map(|(via_a, (_, v))| (*via_a, v))
        .collect();
    assert_eq!(made.len(), 4, "{results:?}");
    for (_, (s, v)) in results.iter().filter(|(_, (s, _))| *s != 201) {
        assert_eq!(
            (*s, v["error"]["code"].as_str()),
            (409, Some("pool_exhausted")),
            "{v}"
        );
    }
    let hostnames: HashSet<&str> = made
        .iter()
        .map(|(_, v)| v["hostname"].as_str().unwrap())
        .collect();
    assert_eq!(hostnames.len(), 4, "a hostname was given twice: {made:?}");
    let of = |via_a: bool| -> Vec<String> {
        made.iter()
            .filter(|(a, _)| *a == via_a)
            .map(|(_, v)| v["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (ids_a, ids_b) = (of(true), of(false));
    assert!(
        !ids_a.is_empty() && !ids_b.is_empty(),
        "both services made some: {ids_a:?} {ids_b:?}"
    );
    eprintln!("through a: {ids_a:?}; through b: {ids_b:?}");

    // Several watcher rounds (every 0.5 s) later, both list all four, all running.
    let all_running = |u: &User, what: &str| {
        let v = u.ok("GET", "/api/v1/instances", None);
        let states: Vec<(String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["id"].as_str().unwrap().to_string(),
                    i["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(states.len(), 4, "{what}: {states:?}");
        assert!(
            states.iter().all(|(_, s)| s == "running"),
            "{what}: {states:?}"
        );
    };
    std::thread::sleep(Duration::from_secs(3));
    all_running(&alice_a, "listed through a");
    all_running(&alice_b, "listed through b");
    // Each data dir holds exactly its own service's instances.
    let dirs = |d: &Path| -> HashSet<String> {
        std::fs::read_dir(d.join("instances"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(dirs(&da), ids_a.iter().cloned().collect());
    assert_eq!(dirs(&db), ids_b.iter().cloned().collect());

    // Acting through a on b's instance is refused, naming where it runs.
    let (s, v) = alice_a.call(
        "POST",
        &format!("/api/v1/instances/{}/stop", ids_b[0]),
        None,
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("instance_elsewhere")),
        "{v}"
    );
    let canon_b = std::fs::canonicalize(&db).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(canon_b.to_str().unwrap()),
        "{v}"
    );

    // b killed and restarted: its reconciliation leaves a's instances (and its own) be.
    b.kill9();
    let b = start(&db);
    let alice_b = User::with_token(&b, &token);
    std::thread::sleep(Duration::from_secs(2));
    all_running(&alice_a, "after b's restart, through a");
    all_running(&alice_b, "after b's restart, through b");

    // Each destroys its own; nothing is left anywhere.
    for id in &ids_a {
        alice_a.ok("DELETE", &format!("/api/v1/instances/{id}"), None);
    }
    for id in &ids_b {
        alice_b.ok("DELETE", &format!("/api/v1/instances/{id}"), None);
    }
    assert!(alice_a.ids().is_empty());
    assert!(dirs(&da).is_empty() && dirs(&db).is_empty());
    drop((a, b));
}

/// Issue 16: `GET /api/v1/instances` filters and pages in the store. Records are written
/// straight into the store (stopped instances need no runtime): pages follow the `Link`
/// header without repeats or gaps while instances are added between pages, filters select,
/// bad values are 400s naming their field, and no filter shows a non-admin another's
/// instance. The CLI lists through the same query, locally and through `--server`.
#[test]
fn lists_page_and_filter_in_the_store() {
    let data = fresh_dir("svc-paging");
    let store = common::store_of(&data);
    let record = |id: &str, n: usize, owner: &str, state: &str, image: &str| {
        store
            .insert_instance(&vfarm_store::instances::InstanceRow {
                id: id.into(),
                name: None,
                image_id: image.into(),
                driver: "oci".into(),
                owner: owner.into(),
                state: state.into(),
                exit_code: None,
                hostname: format!("{id}.example.org"),
                spec: "{}".into(),
                created: format!("2026-01-01T00:{:02}:{:02}.000Z", n / 60, n % 60),
                started: None,
                expires: None,
                updated: "2026-01-01T00:00:00.000Z".into(),
                error: None,
            })
            .unwrap();
    };
    // 20 of alice's (images a/b alternating; every third failed), 5 of bob's.
    for n in 0..20 {
        let state = if n % 3 == 0 { "failed" } else { "stopped" };
        let image = if n % 2 == 0 { "img-a" } else { "img-b" };
        record(&format!("a{n:011}"), n, "alice", state, image);
    }
    for n in 0..5 {
        record(&format!("b{n:011}"), 20 + n, "bob", "stopped", "img-a");
    }
    let server = Server::start_with(&data, &["--admin", "site-admin"]);
    let (alice, admin) = (
        User::new(&server, "alice"),
        User::new(&server, "site-admin"),
    );
    let get = |u: &User, path: &str| -> (u16, Option<String>, Vec<String>) {
        let resp = u.http.get(format!("{}{path}", u.base)).send().unwrap();
        let status = resp.status().as_u16();
        let link = resp
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_string());
        let v: Value = resp.json().unwrap();
        let ids = v
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| i["id"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        (status, link, ids)
    };
    let next_of = |link: &str| -> String {
        assert!(link.ends_with(">; rel=\"next\""), "{link}");
        link.trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_string()
    };

    // Without a limit: the whole list, oldest first, as before; no Link.
    let (s, link, all) = get(&admin, "/api/v1/instances");
    assert_eq!((s, link, all.len()), (200, None, 25));
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);

    // Pages of 7 by Link, an instance added between pages: each old one once, in order,
    // and the newcomer at the end.
    let mut seen = Vec::new();
    let mut path = "/api/v1/instances?limit=7".to_string();
    let mut pages = 0;
    loop {
        let (s, link, ids) = get(&admin, &path);
        assert_eq!(s, 200);
        assert!(ids.len() <= 7);
        seen.extend(ids);
        pages += 1;
        if pages == 2 {
            record("c00000000001", 59, "bob", "stopped", "img-a");
        }
        match link {
            Some(l) => {
                path = next_of(&l);
                assert!(
                    path.starts_with("/api/v1/instances?limit=7&cursor="),
                    "{path}"
                );
            }
            None => break,
        }
    }
    let mut want = all.clone();
    want.push("c00000000001".into());
    assert_eq!(seen, want);
    assert_eq!(pages, 4);

    // Filters combine and stay in the next page's link.
    let (_, link, ids) = get(&admin, "/api/v1/instances?owner=alice&state=failed&limit=3");
    assert_eq!(ids, ["a00000000000", "a00000000003", "a00000000006"]);
    let next = next_of(&link.unwrap());
    assert!(
        next.contains("owner=alice") && next.contains("state=failed"),
        "{next}"
    );
    let (_, link, ids) = get(&admin, &next);
    assert_eq!(ids, ["a00000000009", "a00000000012", "a00000000015"]);
    let (_, link, ids) = get(&admin, &next_of(&link.unwrap()));
    assert_eq!((link, ids), (None, vec!["a00000000018".to_string()]));
    let (_, _, ids) = get(&admin, "/api/v1/instances?image=img-b&owner=alice");
    assert_eq!(ids.len(), 10);
    let (_, _, ids) = get(&admin, "/api/v1/instances?owner=bob");
    assert_eq!(ids.len(), 6);

    // A non-admin: their own only, whatever the filter says.
    let (_, _, ids) = get(&alice, "/api/v1/instances");
    assert_eq!(ids.len(), 20);
    for q in [
        "owner=bob",
        "owner=bob&limit=5",
        "image=img-a&owner=site-admin",
    ] {
        let (s, link, ids) = get(&alice, &format!("/api/v1/instances?{q}"));
        assert_eq!((s, link, ids.len()), (200, None, 0), "{q}");
    }
    let (_, _, ids) = get(&alice, "/api/v1/instances?image=img-a&limit=1000");
    assert!(
        ids.len() == 10 && ids.iter().all(|i| i.starts_with('a')),
        "{ids:?}"
    );
    // Even a cursor taken from the admin's listing pages alice's own rows only.
    let (_, link, _) = get(&admin, "/api/v1/instances?limit=22");
    let (_, _, ids) = get(&alice, &next_of(&link.unwrap()));
    assert!(ids.is_empty(), "{ids:?}");

    // Bad values: 400 naming the field.
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("state=sleeping", "state"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=616263", "cursor"),
    ] {
        let (s, v) = admin.call("GET", &format!("/api/v1/instances?{q}"), None);
        assert_eq!(s, 400, "{q}: {v}");
        assert_eq!(v["error"]["field"], field, "{q}: {v}");
    }

    // The CLI: through the service (following pages) and locally, the same selection.
    let token = data.join("alice.token");
    std::fs::write(&token, server.token_for("alice")).unwrap();
    let cli = |args: &[&str]| -> Vec<String> {
        let out = common::vfarm(&data, args);
        common::assert_success(&out, &format!("{args:?}"));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let remote = |extra: &[&str]| {
        let mut a = vec![
            "--server",
            server.base.as_str(),
            "--token-file",
            token.to_str().unwrap(),
            "--output",
            "json",
            "instance",
            "ls",
        ];
        a.extend(extra);
        cli(&a)
    };
    assert_eq!(remote(&[]).len(), 20);
    assert_eq!(remote(&["--state", "failed"]).len(), 7);
    assert_eq!(remote(&["--owner", "bob"]).len(), 0);
    assert_eq!(
        remote(&["--image", "img-b", "--limit", "2"]),
        ["a00000000001", "a00000000003"]
    );
    let mut local = vec!["--output", "json", "instance", "ls"];
    local.extend(["--owner", "bob", "--limit", "5"]);
    assert_eq!(cli(&local).len(), 5);
    assert_eq!(
        cli(&["--output", "json", "instance", "ls", "--state", "failed"]).len(),
        7
    );
    let out = common::vfarm(&data, &["instance", "ls", "--state", "sleeping"]);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    drop(server);
}
