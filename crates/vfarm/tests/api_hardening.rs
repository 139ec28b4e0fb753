//! Attacks on the instance API from issue 15, each against a real `vfarm serve` with the oci
//! driver (runc), now refused or harmless: runaway and abandoned execs, exec output floods,
//! overflowing durations, path tricks in snapshot names.

mod common;

use std::time::{Duration, Instant};

use common::{fresh_dir, require, Server, Vf};
use serde_json::{json, Value};

fn client(token: &str, timeout: Duration) -> reqwest::blocking::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::blocking::Client::builder()
        .default_headers(h)
        .timeout(timeout)
        .build()
        .unwrap()
}

fn call(
    c: &reqwest::blocking::Client,
    base: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = c.request(m, format!("{base}{path}"));
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `POST /api/v1/instances?wait=true`.
fn create(c: &reqwest::blocking::Client, base: &str, body: Value) -> (u16, Value) {
    call(c, base, "POST", "/api/v1/instances?wait=true", Some(body))
}

/// `POST /api/v1/instances/a1/exec`.
fn exec_a1(c: &reqwest::blocking::Client, base: &str, body: Value) -> (u16, Value) {
    call(c, base, "POST", "/api/v1/instances/a1/exec", Some(body))
}

/// An error answer with this status and this `code` or `field`.
fn refused(status: u16, body: &Value, want: u16, key: &str, value: &str) {
    assert_eq!(
        (status, body["error"][key].as_str()),
        (want, Some(value)),
        "{body}"
    );
}

/// Processes on this host whose command line is exactly `argv` (the exec'd process runs in
/// the container's pid namespace but is visible from the host's /proc).
fn processes(argv: &[&str]) -> usize {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| *c == want)
        .count()
}

fn wait_until_gone(argv: &[&str], within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if processes(argv) == 0 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Findings 4, 5, 10, 11, 16 and 3 of issue 15 against one service.
#[test]
fn exec_limits_durations_quotas_references_and_path_parameters() {
    require("runc");
    let vf = Vf::with_minbase(fresh_dir("api-hardening"));
    std::fs::write(
        vf.data.join("serve.toml"),
        "[quotas]\ndefault_memory = \"256M\"\ndefault_disk = \"2G\"\n[quotas.default]\ndisk = \"3G\"\n",
    )
    .unwrap();
    let server = Server::start_with(&vf.data, &["--admin", "site-admin"]);
    let base = server.base.clone();
    let alice_token = server.token_for("alice");
    let alice = client(&alice_token, Duration::from_secs(120));
    let bob = client(&server.token_for("bob"), Duration::from_secs(120));

    let (s, a1) = create(&alice, &base, json!({"image": "minbase", "name": "a1"}));
    assert_eq!(s, 201, "{a1}");
    let (s, b1) = create(&bob, &base, json!({"image": "minbase", "name": "b1"}));
    assert_eq!(s, 201, "{b1}");

    // Finding 11: no memory asked for is the site's default limit, counted in the quota,
    // and the oci instance's disk counts too: a second 2G one is over alice's 3G.
    let (_, q) = call(&alice, &base, "GET", "/api/v1/quota", None);
    assert_eq!(
        (
            q["usage"]["memory_mib"].as_u64(),
            q["usage"]["disk_mib"].as_u64()
        ),
        (Some(256), Some(2048)),
        "{q}"
    );
    let a1_id = a1["id"].as_str().unwrap();
    let limit = std::fs::read_to_string(format!("/sys/fs/cgroup/vfarm/{a1_id}/memory.max"))
        .or_else(|_| {
            std::fs::read_to_string(format!(
                "/sys/fs/cgroup/memory/vfarm/{a1_id}/memory.limit_in_bytes"
            ))
        })
        .expect("the instance's memory cgroup");
    assert_eq!(limit.trim(), (256u64 << 20).to_string());
    let (s, r) = create(&alice, &base, json!({"image": "minbase", "name": "a2"}));
    refused(s, &r, 409, "code", "quota_exceeded");

    // Finding 4: a command past its time limit is killed, inside the container too.
    let t = Instant::now();
    let (s, r) = exec_a1(
        &alice,
        &base,
        json!({"command": ["sleep", "3131"], "timeout": "2s"}),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["timed_out"].as_bool(), r["exit_code"].as_i64()),
        (Some(true), Some(137))
    );
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert!(wait_until_gone(&["sleep", "3131"], Duration::from_secs(5)));
    // A limit over the maximum is a field error.
    let (s, r) = exec_a1(&alice, &base, json!({"command": ["true"], "timeout": "2h"}));
    refused(s, &r, 400, "field", "timeout");

    // Finding 4: a client that goes away takes its command with it.
    let impatient = client(&alice_token, Duration::from_secs(2));
    let gone = impatient
        .post(format!("{base}/api/v1/instances/a1/exec"))
        .json(&json!({"command": ["sleep", "3132"]}))
        .send();
    assert!(gone.is_err(), "the exec answered before the client gave up");
    assert!(
        wait_until_gone(&["sleep", "3132"], Duration::from_secs(10)),
        "the exec kept running after its client disconnected"
    );

    // Finding 4: a user runs a few execs at a time; everyone else is still answered.
    let hold: Vec<_> = (0..4)
        .map(|_| {
            let c = client(&alice_token, Duration::from_secs(60));
            let base = base.clone();
            std::thread::spawn(move || {
                call(
                    &c,
                    &base,
                    "POST",
                    "/api/v1/instances/a1/exec",
                    Some(json!({"command": ["sleep", "3133"], "timeout": "6s"})),
                )
            })
        })
        .collect();
    let t = Instant::now();
    while processes(&["sleep", "3133"]) < 4 && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (s, r) = exec_a1(&alice, &base, json!({"command": ["true"]}));
    refused(s, &r, 429, "code", "rate_limited");
    let t = Instant::now();
    let (s, _) = call(&bob, &base, "GET", "/api/v1/instances", None);
    assert_eq!(s, 200);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    for h in hold {
        let (s, r) = h.join().unwrap();
        assert_eq!((s, r["timed_out"].as_bool()), (200, Some(true)), "{r}");
    }

    // Finding 5: output is capped, whatever the command writes.
    let (s, r) = exec_a1(
        &alice,
        &base,
        json!({"command": ["sh", "-c", "head -c 30000000 /dev/zero | tr '\\0' x; echo done >&2"]}),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["stdout"].as_str().unwrap().len(), 8 << 20);
    assert_eq!(r["truncated"], true);
    assert_eq!(
        (r["exit_code"].as_i64(), r["stderr"].as_str()),
        (Some(0), Some("done\n"))
    );

    // A process the command leaves behind holding the output pipe (runc exec waits for
    // it too, so the time limit ends the exec) costs neither the answer nor a reader
    // thread that lives on.
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", server.pid()))
            .unwrap()
            .count()
    };
    let before = threads();
    for _ in 0..3 {
        let t = Instant::now();
        let (s, r) = exec_a1(
            &alice,
            &base,
            json!({"command": ["sh", "-c", "sleep 3134 & echo started"], "timeout": "2s"}),
        );
        assert_eq!((s, r["stdout"].as_str()), (200, Some("started\n")), "{r}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        threads() < before + 3,
        "reader threads stayed: {before} -> {}",
        threads()
    );

    // Finding 10: an expiry past any date is a field error, and nothing is taken.
    let (_, quota_before) = call(&alice, &base, "GET", "/api/v1/quota", None);
    let (s, r) = create(
        &alice,
        &base,
        json!({"image": "minbase", "expiry": "999999999999w"}),
    );
    refused(s, &r, 400, "field", "expiry");
    let (_, quota_after) = call(&alice, &base, "GET", "/api/v1/quota", None);
    assert_eq!(quota_before, quota_after);

    // Finding 16: references resolve among the caller's own instances. Two owners' ids
    // share a prefix (an admin, as a control does, picks the ids): for each owner the
    // prefix is their own instance, and no error names the other's id.
    let admin = client(&server.token_for("site-admin"), Duration::from_secs(120));
    let mut shared = Vec::new();
    for (id, owner) in [("beef00000001", "carol"), ("beef00000002", "dave")] {
        let (s, r) = create(
            &admin,
            &base,
            json!({"image": "minbase", "id": id, "owner": owner, "reserve": true}),
        );
        assert_eq!(s, 201, "{r}");
        shared.push(id);
    }
    let carol = client(&server.token_for("carol"), Duration::from_secs(120));
    let (s, r) = call(&carol, &base, "GET", "/api/v1/instances/beef", None);
    assert_eq!((s, r["id"].as_str()), (200, Some("beef00000001")), "{r}");
    let (s, r) = call(&carol, &base, "GET", "/api/v1/instances/beef00000002", None);
    refused(s, &r, 404, "code", "instance_not_found");
    let (s, r) = call(&admin, &base, "GET", "/api/v1/instances/beef", None);
    refused(s, &r, 400, "code", "ambiguous_reference");
    // A name that looks like an id (prefix) is refused.
    let (s, r) = create(
        &carol,
        &base,
        json!({"image": "minbase", "name": "beef0000"}),
    );
    refused(s, &r, 400, "field", "name");
    for id in shared {
        let (s, r) = call(
            &admin,
            &base,
            "DELETE",
            &format!("/api/v1/instances/{id}"),
            None,
        );
        assert!((200..300).contains(&s), "{r}");
    }

    // Finding 3: a snapshot name cannot climb out of its instance's path.
    for name in ["..%2F..%2Fb1", "..", "%2E%2E"] {
        let (s, r) = call(
            &alice,
            &base,
            "POST",
            &format!("/api/v1/instances/a1/snapshots/{name}/revert"),
            None,
        );
        assert!(s == 400 || s == 404, "{name}: {s} {r}");
    }
    let (s, r) = call(&bob, &base, "GET", "/api/v1/instances/b1", None);
    assert_eq!((s, r["state"].as_str()), (200, Some("running")), "{r}");

    for (c, id) in [(&alice, &a1["id"]), (&bob, &b1["id"])] {
        let (s, r) = call(
            c,
            &base,
            "DELETE",
            &format!("/api/v1/instances/{}", id.as_str().unwrap()),
            None,
        );
        assert!((200..300).contains(&s), "{r}");
    }
}

/// Finding 17 of issue 15: a 50,000-deep JSDL document crashed `vfarm job submit` with a
/// stack overflow. It is refused with an error naming the nesting, and the process exits
/// normally (a crash would end it by a signal).
#[test]
fn job_submit_refuses_a_deeply_nested_jsdl() {
    use std::os::unix::process::ExitStatusExt;
    let data = fresh_dir("api-hardening-jsdl");
    let depth = 50_000;
    let doc = format!(
        "<jsdl:JobDefinition xmlns:jsdl=\"http://schemas.ggf.org/jsdl/2005/11/jsdl\">\n<jsdl:JobDescription>\n{}{}\n</jsdl:JobDescription>\n</jsdl:JobDefinition>\n",
        "<x>".repeat(depth),
        "</x>".repeat(depth)
    );
    let path = data.join("deep.jsdl");
    std::fs::write(&path, doc).unwrap();
    let out = common::vfarm(&data, &["job", "submit", "--jsdl", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "killed by a signal: {err}");
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("nested") && err.contains("deep.jsdl"), "{err}");
}
