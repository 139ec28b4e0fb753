//! Virtual grids end to end (issue 19) with real oci instances on a real `nat` network of the
//! site's: `examples/grids/web.toml` brought up (the client fetches from the web member by
//! its pool host name, learnt through a template), shown, and torn down leaving no member
//! instance, hostname lease, address lease, veth or valid host certificate; a bad grid file
//! refused naming the field, creating nothing. Up and down go through a `vfarm serve`
//! (`--server`), the refusals through the local CLI.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fresh_dir, require, Server, Vf};
use serde_json::Value;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/grids")
        .join(name)
}

/// Links enslaved to `bridge`.
fn links_on(bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap().to_string())
        .collect()
}

/// Removes what the test made on the host, also when it fails half-way.
struct Cleanup {
    data: PathBuf,
    net: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let vf = Vf {
            data: self.data.clone(),
        };
        let ls = vf.run(&["--output", "json", "instance", "ls"]);
        if let Ok(rows) = serde_json::from_slice::<Vec<Value>>(&ls.stdout) {
            for r in rows {
                let _ = vf.run(&["instance", "destroy", r["id"].as_str().unwrap()]);
            }
        }
        let _ = vf.run(&["network", "down", &self.net]);
    }
}

#[test]
fn the_web_example_comes_up_answers_by_name_and_goes_down_leaving_nothing() {
    for t in ["ip", "nft", "dnsmasq", "openssl", "runc"] {
        require(t);
    }
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
    let pid = std::process::id();
    // 198.18.0.0/15 is set aside for benchmarks; the other tests take .20 and up of each half.
    let oct = pid % 20;
    let net = format!("g{:03x}", pid & 0xfff);
    let data = fresh_dir("grids");
    let vf = Vf::with_minbase(data.clone());
    let _cleanup = Cleanup {
        data: data.clone(),
        net: net.clone(),
    };
    vf.ok(&[
        "ca",
        "init",
        "--subject",
        "/DC=test/O=vfarm/CN=Grids Test CA",
    ]);
    let mut toml = format!("[[networks]]\nname = \"{net}\"\nsubnet = \"198.19.{oct}.0/24\"\n");
    for i in 1..=4 {
        toml.push_str(&format!("[[hostnames]]\nname = \"g{i:02}.grid.test\"\n"));
    }
    std::fs::write(data.join("serve.toml"), toml).unwrap();
    step("minbase imported, CA and network configured");

    // A bad file: refused by the local CLI naming the field, exit status non-zero, nothing
    // made.
    let bad = data.join("bad.toml");
    let text = std::fs::read_to_string(example("web.toml")).unwrap();
    std::fs::write(&bad, text.replace("after = [\"web\"]", "after = [\"db\"]")).unwrap();
    let out = vf.run(&["--output", "json", "grid", "up", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", common::text(&out));
    let err: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| serde_json::from_slice(&out.stderr).unwrap_or(Value::Null));
    let shown = common::text(&out);
    assert!(
        shown.contains("roles.client.after") && shown.contains("`db` is not a role"),
        "{shown} {err}"
    );
    std::fs::write(
        &bad,
        text.replacen("cpus = 0.5\n", "cpus = 0.5\ncolour = 1\n", 1),
    )
    .unwrap();
    let out = vf.run(&["grid", "up", bad.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    // The key by name, and its line.
    let shown = common::text(&out);
    assert!(
        shown.contains("unknown field `colour`") && shown.contains("line 18"),
        "{shown}"
    );
    assert_eq!(vf.json(&["grid", "ls"]), Value::Array(vec![]));
    assert_eq!(vf.json(&["instance", "ls"]), Value::Array(vec![]));

    // Up, through the service.
    let srv = Server::start(&data);
    let remote = |args: &[&str]| {
        let out = vf
            .cmd(args)
            .env("VFARM_SERVER", &srv.base)
            .env("VFARM_TOKEN", srv.token())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "vfarm {args:?}: {}",
            common::text(&out)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let t = Instant::now();
    let g = remote(&[
        "--output",
        "json",
        "grid",
        "up",
        example("web.toml").to_str().unwrap(),
    ]);
    let up_time = t.elapsed();
    step(&format!("grid up: {up_time:?}"));
    assert_eq!(
        (g["name"].as_str(), g["state"].as_str()),
        (Some("web"), Some("up")),
        "{g}"
    );
    assert_eq!(g["network"], net.as_str(), "{g}");
    let members = g["members"].as_array().unwrap().clone();
    assert_eq!(members.len(), 2, "{g}");
    let (web, client) = (&members[0], &members[1]);
    assert_eq!(
        (web["role"].as_str(), client["role"].as_str()),
        (Some("web"), Some("client"))
    );
    for m in &members {
        assert_eq!(m["state"], "running", "{m}");
        assert!(
            m["hostname"].as_str().unwrap().ends_with(".grid.test"),
            "pool names: {m}"
        );
        assert!(
            m["address"]
                .as_str()
                .unwrap()
                .starts_with(&format!("198.19.{oct}.")),
            "{m}"
        );
    }
    let web_host = web["hostname"].as_str().unwrap();

    // The client fetched from the web member by its host name (it retries until it answers).
    let client_id = client["instance_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let page = loop {
        let out = vf.run(&["instance", "exec", client_id, "--", "cat", "/tmp/page"]);
        let page = String::from_utf8_lossy(&out.stdout).into_owned();
        if page.contains("hello from web web 1") {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "the client never fetched from {web_host}: {}",
            common::text(&out)
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    step(&format!(
        "the client fetched from {web_host}: {}",
        page.trim().lines().last().unwrap_or("")
    ));
    let env = vf.ok(&[
        "instance",
        "exec",
        client_id,
        "--",
        "sh",
        "-c",
        "echo $WEB; cat /etc/grid-web",
    ]);
    assert!(env.starts_with(&format!("{web_host}\n")), "{env}");
    assert!(
        env.contains(&format!(
            "web members: {web_host} at {}",
            web["address"].as_str().unwrap()
        )),
        "{env}"
    );

    // Show, by the service and here, lists the members with their addresses.
    let shown = remote(&["--output", "json", "grid", "show", "web"]);
    assert_eq!(shown["members"], g["members"], "{shown}");
    let table = vf.ok(&["grid", "show", "web"]);
    assert!(
        table.contains(web_host) && table.contains("web → client"),
        "{table}"
    );
    assert_eq!(
        remote(&["--output", "json", "grid", "ls"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Each member holds a host certificate for its own name, from the site CA.
    let certs = data.join("ca/certificates");
    let web_id = web["instance_id"].as_str().unwrap();
    let pem = vf.ok(&[
        "instance",
        "exec",
        web_id,
        "--",
        "cat",
        "/etc/grid-security/hostcert.pem",
    ]);
    let cert = data.join("web-hostcert.pem");
    std::fs::write(&cert, pem).unwrap();
    let verify = || {
        Command::new("openssl")
            .args(["verify", "-crl_check", "-CApath"])
            .arg(&certs)
            .arg(&cert)
            .output()
            .unwrap()
    };
    assert!(verify().status.success(), "{:?}", verify());
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&subject.stdout).contains(web_host),
        "{subject:?}"
    );
    let bridge = format!("vfbr-{net}");
    assert_eq!(links_on(&bridge).len(), 2, "one veth per member");

    // Down leaves nothing: no member, hostname lease, address lease, veth or valid
    // certificate.
    let t = Instant::now();
    let out = vf
        .cmd(&["grid", "down", "web"])
        .env("VFARM_SERVER", &srv.base)
        .env("VFARM_TOKEN", srv.token())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out));
    step(&format!("grid down: {:?}", t.elapsed()));
    assert_eq!(vf.json(&["grid", "ls"]), Value::Array(vec![]));
    assert_eq!(vf.json(&["instance", "ls"]), Value::Array(vec![]));
    let store = common::store_of(&data);
    assert!(store.hostname_leases().unwrap().is_empty());
    let n = vf.json(&["network", "show", &net]);
    assert_eq!(n["leases"], Value::Array(vec![]), "{n}");
    assert!(links_on(&bridge).is_empty(), "{:?}", links_on(&bridge));
    let v = verify();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    assert!(
        !v.status.success() && said.contains("revoked"),
        "the member's certificate is revoked: {said}"
    );
    let (st, _) = {
        let r = srv
            .client()
            .get(format!("{}/api/v1/grids/web", srv.base))
            .send()
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(st, 404);
}
