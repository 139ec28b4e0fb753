//! End-to-end: identity and access of `vfarm serve` with the real binary, the site CA it
//! makes, and real clients (curl on OpenSSL, the `openssl` tool): TLS with client
//! certificates from an IGTF-layout CA directory (CRLs honoured), bearer tokens, 401s, and
//! the refusal of plain HTTP off loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::require;
use serde_json::Value;

const CA_DN: &str = "/C=XX/O=vfarm test/CN=vfarm test CA";
const ALICE: &str = "/C=XX/O=vfarm test/OU=users/CN=Alice";
const MALLORY: &str = "/C=XX/O=vfarm test/OU=users/CN=Mallory";
const ADMIN: &str = "/C=XX/O=vfarm test/OU=admins/CN=Site Admin";

/// A certificate user as the service names it: subject and issuer.
fn issued(subject: &str, issuer: &str) -> String {
    format!("{subject} issuer={issuer}")
}

fn vfarm(data: &Path, cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfarm"))
        .args(args)
        .env("VFARM_DATA_DIR", data)
        .current_dir(cwd)
        .output()
        .expect("run vfarm")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `vfarm serve` with TLS on an ephemeral loopback port, killed on drop.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start(data: &Path, srv: &Path, extra: &[&str]) -> TlsServer {
        let ca_dir = data.join("ca/certificates");
        let mut child = Command::new(env!("CARGO_BIN_EXE_vfarm"))
            .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(srv.join("hostcert.pem"))
            .arg("--tls-key")
            .arg(srv.join("hostkey.pem"))
            .arg("--client-ca-dir")
            .arg(&ca_dir)
            .args(extra)
            .env("VFARM_DATA_DIR", data)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vfarm serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the serving line");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("https://"))
            .unwrap_or_else(|| panic!("no https address in {line:?}"));
        let port = url.rsplit(':').next().unwrap().parse().unwrap();
        TlsServer { child, port }
    }

    /// curl (OpenSSL) against `path` with the site CA as the only trust anchor; the host
    /// certificate names `localhost`, which resolves to the server's loopback address.
    fn curl(&self, data: &Path, path: &str, args: &[&str]) -> (Output, String, u16) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "30",
                "-w",
                "\n%{http_code}",
                "--cacert",
            ])
            .arg(data.join("ca/ca.pem"))
            .arg("--resolve")
            .arg(format!("localhost:{}:127.0.0.1", self.port))
            .args(args)
            .arg(format!("https://localhost:{}{path}", self.port))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let code = code.trim().parse().unwrap_or(0);
        (out.clone(), body.to_string(), code)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cert_args(dir: &Path) -> Vec<String> {
    vec![
        "--cert".into(),
        dir.join("usercert.pem").display().to_string(),
        "--key".into(),
        dir.join("userkey.pem").display().to_string(),
    ]
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn tls_client_certs_tokens_crls_and_401s() {
    require("curl");
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    let run = |args: &[&str]| vfarm(&data, t, args);

    ok(&run(&["ca", "init", "--subject", CA_DN]), "ca init");
    let again = run(&["ca", "init", "--subject", CA_DN]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "second ca init must be refused"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let key_mode = std::fs::metadata(data.join("ca/ca.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );
    let show = json(&ok(&run(&["--output", "json", "ca", "show"]), "ca show"));
    assert_eq!(show["subject"], CA_DN);

    ok(
        &run(&["ca", "issue-host", "localhost", "--out", "srv"]),
        "issue-host",
    );
    for (dn, dir) in [(ALICE, "alice"), (MALLORY, "mallory"), (ADMIN, "admin")] {
        ok(&run(&["ca", "issue-user", dn, "--out", dir]), "issue-user");
    }
    // The files are refused, not overwritten, the second time.
    let twice = run(&["ca", "issue-user", ALICE, "--out", "alice"]);
    assert_eq!(twice.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&twice.stderr).contains("exists already"));

    // Mallory's certificate is revoked; the CRL lands as <hash>.r0 and OpenSSL itself agrees.
    let rev = ok(
        &run(&["--output", "json", "ca", "revoke", "mallory/usercert.pem"]),
        "revoke",
    );
    let crl = PathBuf::from(json(&rev)["crl"].as_str().unwrap());
    assert_eq!(crl.extension().unwrap(), "r0");
    let verify = |who: &str| {
        Command::new("openssl")
            .args(["verify", "-crl_check", "-CApath"])
            .arg(data.join("ca/certificates"))
            .arg(t.join(who).join("usercert.pem"))
            .output()
            .unwrap()
    };
    ok(&verify("alice"), "openssl verify alice");
    let v = verify("mallory");
    assert!(!v.status.success(), "openssl must refuse mallory");
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("revoked")
            || String::from_utf8_lossy(&v.stderr).contains("revoked"),
        "{v:?}"
    );

    // Tokens: one for bob, one that will be revoked.
    let bob = ok(
        &run(&["token", "create", "--user", "bob", "--name", "ci"]),
        "token create",
    )
    .trim()
    .to_string();
    assert!(bob.starts_with("vft_"), "{bob}");
    let gone = ok(
        &run(&["token", "create", "--user", "carol"]),
        "token create",
    )
    .trim()
    .to_string();
    let ls = ok(&run(&["--output", "json", "token", "ls"]), "token ls");
    let secret = |tok: &str| tok.rsplit('_').next().unwrap().to_string();
    assert!(
        !ls.contains(&secret(&bob)) && !ls.contains(&secret(&gone)),
        "{ls}"
    );
    let gone_id = gone.split('_').nth(1).unwrap().to_string();
    ok(&run(&["token", "revoke", &gone_id]), "token revoke");
    let missing = run(&["token", "revoke", "ffffffffffff"]);
    assert_eq!(missing.status.code(), Some(3));

    let srv = TlsServer::start(&data, &t.join("srv"), &["--admin", ADMIN]);

    let (out, body, code) = srv.curl(&data, "/api/v1/whoami", &[]);
    assert_eq!(code, 401, "{out:?}");
    assert_eq!(json(&body)["error"]["code"], "unauthenticated");
    let (_, body, code) = srv.curl(&data, "/healthz", &[]);
    assert_eq!((code, body.as_str()), (200, "ok"));

    let alice_args = cert_args(&t.join("alice"));
    let a: Vec<&str> = alice_args.iter().map(String::as_str).collect();
    let (out, body, code) = srv.curl(&data, "/api/v1/whoami", &a);
    assert_eq!(code, 200, "{out:?}");
    let who = json(&body);
    assert_eq!(who["user"], issued(ALICE, CA_DN));
    assert_eq!(
        (who["subject"].as_str(), who["issuer"].as_str()),
        (Some(ALICE), Some(CA_DN))
    );
    assert_eq!(who["method"], "client-cert");
    assert_eq!(who["admin"], false);
    // The identity opens the rest of the API too.
    let (_, _, code) = srv.curl(&data, "/api/v1/images", &a);
    assert_eq!(code, 200);

    let admin_args = cert_args(&t.join("admin"));
    let a: Vec<&str> = admin_args.iter().map(String::as_str).collect();
    let (_, body, _) = srv.curl(&data, "/api/v1/whoami", &a);
    assert_eq!(json(&body)["admin"], true, "{body}");

    let auth = format!("Authorization: Bearer {bob}");
    let (_, body, code) = srv.curl(&data, "/api/v1/whoami", &["-H", &auth]);
    assert_eq!(code, 200, "{body}");
    let who = json(&body);
    assert_eq!(
        (who["user"].as_str(), who["method"].as_str()),
        (Some("bob"), Some("token"))
    );

    let auth = format!("Authorization: Bearer {gone}");
    let (_, body, code) = srv.curl(&data, "/api/v1/whoami", &["-H", &auth]);
    assert_eq!(code, 401);
    assert_eq!(json(&body)["error"]["code"], "token_revoked");
    let (_, body, code) = srv.curl(
        &data,
        "/api/v1/whoami",
        &[
            "-H",
            "Authorization: Bearer vft_0123456789ab_nottherightsecret",
        ],
    );
    assert_eq!(code, 401);
    assert_eq!(json(&body)["error"]["code"], "invalid_token");

    // The revoked certificate does not get through the handshake.
    let mallory_args = cert_args(&t.join("mallory"));
    let a: Vec<&str> = mallory_args.iter().map(String::as_str).collect();
    let (out, _, code) = srv.curl(&data, "/api/v1/whoami", &a);
    assert!(!out.status.success(), "mallory got through: {out:?}");
    assert_ne!(code, 200);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("revoked"), "curl said: {err}");

    // A certificate from a CA the server does not trust is refused as well.
    let other = t.join("other");
    ok(
        &vfarm(
            &other,
            t,
            &["ca", "init", "--subject", "/C=XX/O=elsewhere/CN=Other CA"],
        ),
        "other ca init",
    );
    ok(
        &vfarm(
            &other,
            t,
            &[
                "ca",
                "issue-user",
                "/C=XX/O=elsewhere/CN=Eve",
                "--out",
                "eve",
            ],
        ),
        "other issue-user",
    );
    let eve_args = cert_args(&t.join("eve"));
    let a: Vec<&str> = eve_args.iter().map(String::as_str).collect();
    let (out, _, code) = srv.curl(&data, "/api/v1/whoami", &a);
    assert!(
        !out.status.success() && code != 200,
        "eve got through: {out:?}"
    );

    // A CRL updated while the service runs (as fetch-crl does) takes effect without a
    // restart: revoke Alice now and wait (bounded) until her handshake is refused.
    ok(
        &run(&["ca", "revoke", "alice/usercert.pem"]),
        "revoke alice",
    );
    let a: Vec<&str> = alice_args.iter().map(String::as_str).collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (out, _, code) = srv.curl(&data, "/api/v1/whoami", &a);
        if !out.status.success() && code != 200 {
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("revoked"),
                "{out:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the updated CRL was not picked up within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    // The token user is unaffected.
    let auth = format!("Authorization: Bearer {bob}");
    let (_, _, code) = srv.curl(&data, "/api/v1/whoami", &["-H", &auth]);
    assert_eq!(code, 200);

    // The audit log has the local admin's actions.
    let store = common::store_of(&data);
    let actions: Vec<String> = store
        .audit_log(None, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    for a in [
        "ca.init",
        "ca.issue-host",
        "ca.issue-user",
        "ca.revoke",
        "token.create",
        "token.revoke",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} not in {actions:?}");
    }
}

#[test]
fn plain_http_off_loopback_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = vfarm(
        &data,
        tmp.path(),
        &["--output", "json", "serve", "--listen", "0.0.0.0:0"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--tls-cert") && err.contains("0.0.0.0"),
        "{err}"
    );
    let doc = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(doc["error"]["code"], "invalid_argument");
    assert_eq!(doc["error"]["field"], "listen");
    // Nothing was created.
    assert!(!data.join("state.db").exists());
    // --client-ca-dir without TLS is a usage error too.
    let out = vfarm(
        &data,
        tmp.path(),
        &[
            "serve",
            "--client-ca-dir",
            "/etc/grid-security/certificates",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn loopback_plain_http_still_needs_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = common::Server::start(&data);
    let r = reqwest::blocking::get(format!("{}/api/v1/images", srv.base)).unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "unauthenticated");
    let who: Value = srv
        .client()
        .get(format!("{}/api/v1/whoami", srv.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(who["user"], "vfarm-tests");
    assert_eq!(who["method"], "token");
}

#[test]
fn unix_socket_callers_are_their_login_name() {
    require("curl");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sock = tmp.path().join("vfarm.sock");
    let mut child = serve_on_socket(&data, &sock, &[]);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--unix-socket"])
        .arg(&sock)
        .arg("http://localhost/api/v1/whoami")
        .output()
        .unwrap();
    // Issue 15, finding 1: the socket is the service user's alone (0600) unless a group is
    // named, so a local account is not a tenant by default.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    let nobody = whoami_as_nobody(&sock);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(mode, 0o600);
    assert!(!nobody.status.success(), "nobody connected: {nobody:?}");
    let who = json(&ok(&out, "curl over the unix socket"));
    assert_eq!(who["method"], "unix-peer");
    // The kernel's answer, compared with what `id -un` says for this process's user.
    let me = Command::new("id").arg("-un").output().unwrap();
    assert_eq!(
        who["user"].as_str().unwrap(),
        String::from_utf8_lossy(&me.stdout).trim()
    );
}

/// `vfarm serve` on loopback and on the unix socket `sock`, once it answers on both.
fn serve_on_socket(data: &Path, sock: &Path, extra: &[&str]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vfarm"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--socket")
        .arg(sock)
        .env("VFARM_DATA_DIR", data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start vfarm serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    assert!(first.contains("http://127.0.0.1:"), "{first}");
    assert!(second.contains("unix:"), "{second}");
    child
}

/// `GET /api/v1/whoami` over the unix socket `sock` as the host user nobody.
fn whoami_as_nobody(sock: &Path) -> std::process::Output {
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "curl",
            "-sS",
        ])
        .args(["--max-time", "30", "--unix-socket"])
        .arg(sock)
        .arg("http://localhost/api/v1/whoami")
        .output()
        .unwrap()
}

/// With `--socket-group`, the group's members are tenants named by the kernel (not admins).
#[test]
fn socket_group_members_connect_as_themselves() {
    require("curl");
    require("setpriv");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    // nobody must reach the socket's directory.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    let sock = tmp.path().join("vfarm.sock");
    let mut child = serve_on_socket(&data, &sock, &["--socket-group", "nogroup"]);
    let meta = std::fs::metadata(&sock).unwrap();
    let out = whoami_as_nobody(&sock);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), 65534);
    let who = json(&ok(&out, "curl as nobody over the unix socket"));
    assert_eq!(who["user"], "nobody");
    assert_eq!(who["admin"], false);
    // A group that does not exist is refused before anything starts.
    let out = vfarm(
        &data,
        tmp.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--socket",
            "/tmp/x.sock",
            "--socket-group",
            "no-such-group-x",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--socket-group"),
        "{out:?}"
    );
}

#[test]
fn bad_service_config_is_refused_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("serve.toml"),
        "[[hostnames]]\nname = \"n1.example.org\"\naddress = \"not-an-ip\"\n",
    )
    .unwrap();
    let out = vfarm(&data, tmp.path(), &["serve", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hostnames[0].address"), "{err}");
    // A `crl_missing` that is neither "refuse" nor "warn" is refused by name too.
    std::fs::write(
        data.join("serve.toml"),
        "[trust]\ncrl_missing = \"maybe\"\n",
    )
    .unwrap();
    let out = vfarm(&data, tmp.path(), &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("crl_missing"), "{err}");
    let out = vfarm(
        &data,
        tmp.path(),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            "/nonexistent/serve.toml",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config") && err.contains("no such file"),
        "{err}"
    );
    assert!(!data.join("state.db").exists());
}

/// Issue 24, acceptance 1 (the service; nodes run the same `serve` with their trust dir):
/// two CAs in one IGTF directory, each with its namespace files. A certificate from CA B
/// with the admin's DN (inside CA A's namespace) is refused at the handshake; the same DN
/// from CA A is the admin; CA B's own users are accepted.
#[test]
fn a_second_ca_cannot_mint_the_admins_dn() {
    require("curl");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    let beta = t.join("beta");
    let run = |d: &Path, args: &[&str]| vfarm(d, t, args);
    ok(
        &run(&data, &["ca", "init", "--subject", CA_DN]),
        "ca init A",
    );
    ok(
        &run(
            &beta,
            &["ca", "init", "--subject", "/C=XX/O=Beta/CN=Beta CA"],
        ),
        "ca init B",
    );
    ok(
        &run(&data, &["ca", "issue-host", "localhost", "--out", "srv"]),
        "issue-host",
    );
    ok(
        &run(&data, &["ca", "issue-user", ADMIN, "--out", "admin-a"]),
        "issue-user A",
    );
    // CA B signs the admin's DN (it can: nothing in a CA stops it) and its own user.
    ok(
        &run(&beta, &["ca", "issue-user", ADMIN, "--out", "admin-b"]),
        "issue-user B",
    );
    ok(
        &run(
            &beta,
            &["ca", "issue-user", "/C=XX/O=Beta/CN=Bea", "--out", "bea"],
        ),
        "issue-user B",
    );
    let dir = data.join("ca/certificates");
    let mut copied = 0;
    for f in std::fs::read_dir(beta.join("ca/certificates")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
        copied += 1;
    }
    assert_eq!(copied, 4, "B's .0, .r0, .namespaces, .signing_policy");
    let srv = TlsServer::start(&data, &t.join("srv"), &["--admin", ADMIN]);
    let whoami = |who: &str| {
        let c = cert_args(&t.join(who));
        let args: Vec<&str> = c.iter().map(String::as_str).collect();
        srv.curl(&data, "/api/v1/whoami", &args)
    };
    let (out, body, code) = whoami("admin-a");
    assert_eq!(code, 200, "{out:?}");
    assert_eq!(json(&body)["admin"], true);
    assert_eq!(json(&body)["user"], issued(ADMIN, CA_DN));
    let (out, body, code) = whoami("bea");
    assert_eq!(code, 200, "{out:?}");
    assert_eq!(json(&body)["admin"], false);
    let (out, body, code) = whoami("admin-b");
    assert_ne!(code, 200, "CA B's admin DN must be refused: {body} {out:?}");
    assert!(!out.status.success(), "the handshake must fail: {out:?}");
    // The refusal is in the audit log with its reason.
    let c = cert_args(&t.join("admin-a"));
    let args: Vec<&str> = c.iter().map(String::as_str).collect();
    let mut found = None;
    for _ in 0..50 {
        let (_, body, _) = srv.curl(&data, "/api/v1/audit", &args);
        found = json(&body)
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "TLS handshake")
            .cloned();
        if found.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let entry = found.expect("no audit entry for the refused handshake");
    assert_eq!(entry["actor"], ADMIN);
    assert_eq!(entry["outcome"], "denied:outside_namespace");
    assert!(
        entry["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("Beta CA"),
        "{entry}"
    );
    // Each CA's CRL age is a metric.
    let (out, body, code) = srv.curl(&data, "/metrics", &args);
    assert_eq!(code, 200, "{out:?}");
    for ca in [CA_DN, "/C=XX/O=Beta/CN=Beta CA"] {
        let line = body
            .lines()
            .find(|l| l.starts_with(&format!("vfarm_crl_age_seconds{{issuer=\"{ca}\"}}")))
            .unwrap_or_else(|| panic!("no CRL age of {ca} in {body}"));
        let secs: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((0..3600).contains(&secs), "{line}");
    }
}

/// Issue 24, acceptance 2 at the service: a CA whose CRL is missing refuses its users by
/// default; `crl_missing = "warn"` lets them in.
#[test]
fn a_missing_crl_refuses_by_default_and_warn_lets_in() {
    require("curl");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    let run = |args: &[&str]| vfarm(&data, t, args);
    ok(&run(&["ca", "init", "--subject", CA_DN]), "ca init");
    ok(
        &run(&["ca", "issue-host", "localhost", "--out", "srv"]),
        "host",
    );
    ok(&run(&["ca", "issue-user", ALICE, "--out", "alice"]), "user");
    let mut removed = 0;
    for f in std::fs::read_dir(data.join("ca/certificates")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "r0") {
            std::fs::remove_file(p).unwrap();
            removed += 1;
        }
    }
    assert_eq!(removed, 1);
    let c = cert_args(&t.join("alice"));
    let args: Vec<&str> = c.iter().map(String::as_str).collect();
    {
        let srv = TlsServer::start(&data, &t.join("srv"), &[]);
        let (out, _, code) = srv.curl(&data, "/api/v1/whoami", &args);
        assert_ne!(code, 200, "{out:?}");
        assert!(!out.status.success(), "{out:?}");
    }
    std::fs::write(data.join("serve.toml"), "[trust]\ncrl_missing = \"warn\"\n").unwrap();
    let srv = TlsServer::start(&data, &t.join("srv"), &[]);
    let (out, body, code) = srv.curl(&data, "/api/v1/whoami", &args);
    assert_eq!(code, 200, "{out:?}");
    assert_eq!(json(&body)["user"], issued(ALICE, CA_DN));
}

/// Issue 24, acceptance 5: no token on the command line (refused with the reason), none
/// sent over plain HTTP to another host (refused before any connection), and the token
/// read from a file or the environment is in no process's argv.
#[test]
fn tokens_stay_out_of_argv_and_off_plain_http() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = common::Server::start(&data);
    let token = srv.token();
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_vfarm"))
            .args(args)
            .env_remove("VFARM_TOKEN")
            .env_remove("VFARM_TOKEN_FILE")
            .envs(env.iter().copied())
            .env("VFARM_DATA_DIR", &data)
            .output()
            .unwrap()
    };
    let o = cli(
        &["--server", &srv.base, "--token", &token, "instance", "ls"],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("`ps`"), "{o:?}");
    let started = std::time::Instant::now();
    let o = cli(
        &["--server", "http://192.0.2.1:8750", "instance", "ls"],
        &[("VFARM_TOKEN", &token)],
    );
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("plain HTTP"),
        "{o:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "it tried to connect"
    );
    // From the environment and from a file: it works, and no argv holds the token.
    let o = cli(
        &["--server", &srv.base, "--output", "json", "instance", "ls"],
        &[("VFARM_TOKEN", &token)],
    );
    assert!(o.status.success(), "{o:?}");
    let file = tmp.path().join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vfarm"))
        .args(["--server", &srv.base, "--token-file", "-", "instance", "ls"])
        .env_remove("VFARM_TOKEN")
        .env("VFARM_DATA_DIR", &data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // While it waits for the token on stdin, its argv is what `ps` shows.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let argv = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    assert!(!argv.is_empty());
    assert!(
        !String::from_utf8_lossy(&argv).contains(&token),
        "token in argv"
    );
    use std::io::Write as _;
    writeln!(child.stdin.take().unwrap(), "{token}").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{o:?}");
    let o = cli(
        &[
            "--server",
            &srv.base,
            "--token-file",
            file.to_str().unwrap(),
            "instance",
            "ls",
        ],
        &[],
    );
    assert!(o.status.success(), "{o:?}");
}

/// Issue 15, finding 2 (acceptance 3): the host certificate found inside an instance is in
/// `OU=instances`, a server certificate for the lease only, refused by the service as a
/// client, and revoked when the instance goes; an instance cannot take an address,
/// `localhost` or the service's own name as its host name.
#[test]
fn an_instance_certificate_is_no_client() {
    require("runc");
    require("curl");
    let vf = common::Vf::with_minbase(common::fresh_dir("inst-cert"));
    let t = vf.data.clone();
    vf.ok(&["ca", "init", "--subject", CA_DN]);
    let srv_dir = t.join("srv");
    vf.ok(&[
        "ca",
        "issue-host",
        "localhost",
        "--out",
        srv_dir.to_str().unwrap(),
    ]);
    for bad in ["127.0.0.1", "localhost", "10.1.2.3"] {
        let o = vf.run(&[
            "instance",
            "create",
            "--image",
            "minbase",
            "--hostname",
            bad,
            "--no-start",
        ]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {o:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("hostname"),
            "{o:?}"
        );
    }
    let inst: Value = serde_json::from_str(&vf.ok(&[
        "--output",
        "json",
        "instance",
        "create",
        "--image",
        "minbase",
        "--hostname",
        "vm1",
        "--expiry",
        "2h",
        "--",
        "sleep",
        "600",
    ]))
    .unwrap();
    let id = inst["id"].as_str().unwrap().to_string();
    let cat = |path: &str| vf.ok(&["instance", "exec", &id, "--", "cat", path]);
    let (cert, key) = (
        cat("/etc/grid-security/hostcert.pem"),
        cat("/etc/grid-security/hostkey.pem"),
    );
    let stolen = t.join("stolen");
    std::fs::create_dir_all(&stolen).unwrap();
    std::fs::write(stolen.join("usercert.pem"), &cert).unwrap();
    std::fs::write(stolen.join("userkey.pem"), &key).unwrap();
    let x = vfarm_imagelist::trust::certificate_from_pem(cert.as_bytes()).unwrap();
    let subject = vfarm_imagelist::trust::oneline(x.subject_name());
    assert_eq!(subject, "/C=XX/O=vfarm test/OU=instances/CN=vm1");
    let left = vfarm_imagelist::trust::asn1_to_utc(x.not_after()).unwrap() - chrono::Utc::now();
    assert!(left <= chrono::Duration::hours(2), "valid for {left}");

    let srv = TlsServer::start(&t, &srv_dir, &["--admin", &subject]);
    let c = cert_args(&stolen);
    let args: Vec<&str> = c.iter().map(String::as_str).collect();
    let (out, body, code) = srv.curl(&t, "/api/v1/whoami", &args);
    assert_ne!(
        code, 200,
        "an instance certificate was taken as a client: {body}"
    );
    assert!(!out.status.success(), "{out:?}");
    drop(srv);

    // Destroyed: its serial is on the CRL.
    vf.ok(&["instance", "destroy", &id]);
    let v = Command::new("openssl")
        .args(["verify", "-crl_check", "-purpose", "sslserver", "-CApath"])
        .arg(t.join("ca/certificates"))
        .arg(stolen.join("usercert.pem"))
        .output()
        .unwrap();
    assert!(!v.status.success());
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("revoked")
            || String::from_utf8_lossy(&v.stderr).contains("revoked"),
        "{v:?}"
    );
    let _ = std::fs::remove_dir_all(&t);
}

/// `vfarm serve --socket PATH` alone (no TCP listener, so a second one does not collide on
/// the default port), and the CLI on it with `--server unix:PATH`: root is an admin, a
/// local non-root user is a tenant, neither needs a token.
#[test]
fn the_cli_over_the_socket_alone_root_is_admin_others_are_not() {
    require("setpriv");
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let serve_alone = |name: &str| {
        let sock = tmp.path().join(format!("{name}.sock"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_vfarm"))
            .args(["serve", "--socket-group", "nogroup", "--socket"])
            .arg(&sock)
            .env("VFARM_DATA_DIR", tmp.path().join(name))
            .env_remove("VFARM_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start vfarm serve");
        let first = BufReader::new(child.stdout.take().unwrap())
            .lines()
            .next()
            .unwrap()
            .unwrap();
        (child, sock, first)
    };
    let (mut a, sock, first) = serve_alone("a");
    // A second service on its own socket starts beside the first.
    let (mut b, _, second) = serve_alone("b");
    let cli = |as_nobody: bool, args: &[&str]| {
        let mut c = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_vfarm"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_vfarm"))
        };
        c.arg("--server")
            .arg(format!("unix:{}", sock.display()))
            .args(args)
            .env_remove("VFARM_TOKEN")
            .env_remove("VFARM_TOKEN_FILE")
            .env("VFARM_DATA_DIR", tmp.path().join("unused"))
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    let root = cli(false, &["whoami", "--output", "json"]);
    let root_ls = cli(false, &["instance", "ls", "--output", "json"]);
    let nobody = cli(true, &["whoami", "--output", "json"]);
    let nobody_ls = cli(true, &["instance", "ls", "--output", "json"]);
    for c in [&mut a, &mut b] {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(first.starts_with("vfarm: serving on unix:"), "{first}");
    assert!(second.starts_with("vfarm: serving on unix:"), "{second}");
    let root = json(&ok(&root, "whoami as root over the socket"));
    assert_eq!(
        (&root["user"], &root["method"], &root["admin"]),
        (
            &Value::from("root"),
            &Value::from("unix-peer"),
            &Value::from(true)
        ),
        "{root}"
    );
    let nobody = json(&ok(&nobody, "whoami as nobody over the socket"));
    assert_eq!(
        (&nobody["user"], &nobody["admin"]),
        (&Value::from("nobody"), &Value::from(false))
    );
    for (out, who) in [(root_ls, "root"), (nobody_ls, "nobody")] {
        assert!(json(&ok(&out, who)).is_array(), "instance ls as {who}");
    }
}
