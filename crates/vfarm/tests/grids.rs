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
    // The example names no network (it gets one of its own): this one joins the site's.
    let web_toml = data.join("web.toml");
    std::fs::write(
        &web_toml,
        std::fs::read_to_string(example("web.toml"))
            .unwrap()
            .replacen(
                "expiry = \"2h\"\n",
                &format!("expiry = \"2h\"\nnetwork = \"{net}\"\n"),
                1,
            ),
    )
    .unwrap();
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
    let g = remote(&["--output", "json", "grid", "up", web_toml.to_str().unwrap()]);
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

/// What is left on the host of instance `id`'s attachment: its veth and namespace (named as
/// vfarm-net names them: `vfh-` and an FNV-1a hash of the id, `vfi-<id>`).
fn link_pieces(id: &str) -> Vec<String> {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let veth = format!("vfh-{:011x}", h & 0xfff_ffff_ffff);
    let mut left = Vec::new();
    if Command::new("ip")
        .args(["link", "show", &veth])
        .output()
        .unwrap()
        .status
        .success()
    {
        left.push(format!("veth {veth} of {id}"));
    }
    if Path::new("/run/netns").join(format!("vfi-{id}")).exists() {
        left.push(format!("namespace vfi-{id}"));
    }
    left
}

/// A /22 of the shared address space (100.64.0.0/10, no host network here) per test run,
/// for the grids' own networks: four /24s.
fn grid_pool() -> String {
    let pid = std::process::id();
    format!("100.{}.{}.0/22", 64 + pid % 60, (pid / 60 % 64) * 4)
}

/// Takes down what a test's grids made, also when it fails half-way: the grids (through
/// the local CLI, as the site's admin), any instance, and the grids' networks.
struct GridCleanup {
    data: PathBuf,
    grids: Vec<String>,
    nets: Vec<String>,
}

impl Drop for GridCleanup {
    fn drop(&mut self) {
        let vf = Vf {
            data: self.data.clone(),
        };
        for g in &self.grids {
            let _ = vf.run(&["grid", "down", g]);
        }
        let ls = vf.run(&["--output", "json", "instance", "ls"]);
        if let Ok(rows) = serde_json::from_slice::<Vec<Value>>(&ls.stdout) {
            for r in rows {
                let _ = vf.run(&["instance", "destroy", r["id"].as_str().unwrap()]);
            }
        }
        for n in &self.nets {
            let _ = vf.run(&["network", "down", n]);
        }
    }
}

/// `vfarm ARGS --output json` through the service at `base` as the token's user.
fn remote(vf: &Vf, base: &str, token: &str, args: &[&str]) -> Value {
    let out = vf
        .cmd(&[&["--output", "json"], args].concat())
        .env("VFARM_SERVER", base)
        .env("VFARM_TOKEN", token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vfarm {args:?}: {}",
        common::text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The first three octets of an address: its /24.
fn net24(addr: &str) -> String {
    addr.rsplit_once('.').unwrap().0.to_string()
}

#[test]
fn two_users_grids_each_get_a_network_of_their_own_isolated_from_the_other() {
    for t in ["ip", "nft", "dnsmasq", "runc"] {
        require(t);
    }
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
    let data = fresh_dir("grids-own-net");
    let vf = Vf::with_minbase(data.clone());
    let pool = grid_pool();
    std::fs::write(
        data.join("serve.toml"),
        format!("grid_subnets = \"{pool}\"\n"),
    )
    .unwrap();
    let pool_prefix = pool.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
    let mut cleanup = GridCleanup {
        data: data.clone(),
        grids: vec!["alice-web".into(), "bob-web".into()],
        nets: Vec::new(),
    };
    let srv = Server::start(&data);
    let (alice, bob) = (srv.token_for("alice"), srv.token_for("bob"));
    let file = example("web.toml");
    let file = file.to_str().unwrap();

    // Each user brings the web example up, naming no network.
    let mut grids = Vec::new();
    for (name, token) in [("alice-web", &alice), ("bob-web", &bob)] {
        let g = remote(&vf, &srv.base, token, &["grid", "up", file, "--name", name]);
        let net = g["network"].as_str().unwrap_or_default().to_string();
        if !net.is_empty() {
            cleanup.nets.push(net.clone());
        }
        step(&format!("{name} up on network {net}"));
        assert_eq!(g["state"], "up", "{g}");
        assert!(net.starts_with("g-"), "a network of the grid's own: {g}");
        assert!(
            common::net_pieces(&net).len() == 4,
            "{:?}",
            common::net_pieces(&net)
        );
        grids.push(g);
    }
    let (a, b) = (&grids[0], &grids[1]);
    assert_ne!(a["network"], b["network"]);
    let member = |g: &Value, role: &str| -> (String, String) {
        let m = g["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["role"] == role)
            .unwrap_or_else(|| panic!("no {role} member: {g}"))
            .clone();
        (
            m["instance_id"].as_str().unwrap().to_string(),
            m["address"].as_str().unwrap().to_string(),
        )
    };
    let (a_web, a_web_addr) = member(a, "web");
    let (a_client, a_client_addr) = member(a, "client");
    let (b_web, b_web_addr) = member(b, "web");
    let (b_client, _) = member(b, "client");
    // Each grid has a /24 of the pool of its own.
    assert_eq!(net24(&a_web_addr), net24(&a_client_addr));
    assert_ne!(net24(&a_web_addr), net24(&b_web_addr));
    for addr in [&a_web_addr, &b_web_addr] {
        assert!(
            addr.starts_with(&format!("{pool_prefix}.")),
            "{addr} in {pool}"
        );
    }
    // The network is listed with the site's, its leases the grid's members.
    let shown = vf.json(&["network", "show", a["network"].as_str().unwrap()]);
    assert_eq!(shown["leases"].as_array().unwrap().len(), 2, "{shown}");

    // Within a grid the client reaches its web member by name.
    for (g, client) in [("alice-web", &a_client), ("bob-web", &b_client)] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = vf.run(&["instance", "exec", client, "--", "cat", "/tmp/page"]);
            if String::from_utf8_lossy(&out.stdout).contains(&format!("hello from {g} web 1")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{g}'s client never fetched from its web member: {}",
                common::text(&out)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    step("each client fetched from its own web member by name");

    // Across grids nothing connects (and the probe itself works: it reaches its own).
    let connects = |from: &str, to: &str| {
        let out = vf.run(&[
            "instance",
            "exec",
            from,
            "--",
            "timeout",
            "5",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{to}/8080"),
        ]);
        out.status.success()
    };
    assert!(connects(&a_client, &a_web_addr), "alice's client → her web");
    assert!(
        !connects(&a_client, &b_web_addr),
        "alice's client reached bob's web member at {b_web_addr}"
    );
    assert!(
        !connects(&b_client, &a_web_addr),
        "bob's client reached alice's web member at {a_web_addr}"
    );
    assert!(!connects(&a_web, &b_web_addr));
    assert!(!connects(&b_web, &a_web_addr));
    step("no connection across grids");

    // Owners as for instances: bob neither sees nor takes down alice's grid.
    let bob_http = srv.client_for("bob");
    let r = bob_http
        .get(format!("{}/api/v1/grids/alice-web", srv.base))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = bob_http
        .delete(format!("{}/api/v1/grids/alice-web", srv.base))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Down: the members, then the network — nothing of either grid is left.
    for (name, token) in [("alice-web", &alice), ("bob-web", &bob)] {
        let out = vf
            .cmd(&["grid", "down", name])
            .env("VFARM_SERVER", &srv.base)
            .env("VFARM_TOKEN", token)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::text(&out));
    }
    step("both down");
    assert_eq!(vf.json(&["grid", "ls"]), Value::Array(vec![]));
    assert_eq!(vf.json(&["instance", "ls"]), Value::Array(vec![]));
    for g in &grids {
        let net = g["network"].as_str().unwrap();
        assert_eq!(
            common::net_pieces(net),
            Vec::<String>::new(),
            "network {net}"
        );
        for m in g["members"].as_array().unwrap() {
            let id = m["instance_id"].as_str().unwrap();
            assert_eq!(link_pieces(id), Vec::<String>::new());
        }
    }
    let listed = vf.json(&["network", "ls"]);
    assert_eq!(listed, Value::Array(vec![]), "{listed}");
}

/// Whether grid `name` is whole (`up`, every member running) or gone with nothing of it
/// left: no member instance, hostname lease, address lease (its network is gone with its
/// state), veth or namespace, network piece, or valid host certificate. Returns the state.
fn whole_or_gone(
    vf: &Vf,
    srv: &Server,
    name: &str,
    count: usize,
    net: &str,
    ids: &[String],
) -> &'static str {
    let r = srv
        .client()
        .get(format!("{}/api/v1/grids/{name}", srv.base))
        .send()
        .unwrap();
    if r.status().as_u16() == 200 {
        let g: Value = r.json().unwrap();
        assert_eq!(g["state"], "up", "whole or gone, not half: {g}");
        let members = g["members"].as_array().unwrap();
        assert_eq!(members.len(), count, "{g}");
        assert!(members.iter().all(|m| m["state"] == "running"), "{g}");
        return "up";
    }
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(vf.json(&["grid", "ls"]), Value::Array(vec![]));
    assert_eq!(vf.json(&["instance", "ls"]), Value::Array(vec![]));
    let store = common::store_of(&vf.data);
    assert!(
        store.hostname_leases().unwrap().is_empty(),
        "{:?}",
        store.hostname_leases()
    );
    assert_eq!(
        common::net_pieces(net),
        Vec::<String>::new(),
        "network {net}"
    );
    for id in ids {
        assert_eq!(link_pieces(id), Vec::<String>::new());
    }
    // Every certificate the CA issued (only this grid's members had any) is revoked.
    let issued = vf.data.join("ca/issued");
    for e in std::fs::read_dir(&issued).into_iter().flatten().flatten() {
        let v = Command::new("openssl")
            .args(["verify", "-crl_check", "-CApath"])
            .arg(vf.data.join("ca/certificates"))
            .arg(e.path())
            .output()
            .unwrap();
        let said = common::text(&v);
        assert!(
            !v.status.success() && said.contains("revoked"),
            "{}: {said}",
            e.path().display()
        );
    }
    "gone"
}

#[test]
fn a_service_killed_during_grid_up_or_down_leaves_the_grid_whole_or_gone() {
    for t in ["ip", "nft", "dnsmasq", "openssl", "runc"] {
        require(t);
    }
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
    let data = fresh_dir("grids-kill");
    let vf = Vf::with_minbase(data.clone());
    vf.ok(&[
        "ca",
        "init",
        "--subject",
        "/DC=test/O=vfarm/CN=Grid Kill CA",
    ]);
    let mut toml = format!("grid_subnets = \"{}\"\n", grid_pool());
    // Twice the grid: names given back stay out of the pool a while (hostname_quarantine).
    for i in 1..=12 {
        toml.push_str(&format!("[[hostnames]]\nname = \"k{i:02}.grid.test\"\n"));
    }
    std::fs::write(data.join("serve.toml"), toml).unwrap();
    let file = data.join("six.toml");
    std::fs::write(
        &file,
        "[grid]\nname = \"six\"\nexpiry = \"1h\"\n\n[roles.w]\nimage = \"minbase\"\ncount = 6\n\
         cpus = 0.25\nmemory = \"64M\"\n\
         command = [\"sh\", \"-c\", \"trap 'exit 0' TERM; while :; do sleep 1; done\"]\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let mut cleanup = GridCleanup {
        data: data.clone(),
        grids: vec!["six".into()],
        nets: Vec::new(),
    };

    // Killed during up, half-way: once three members are recorded (the network is up).
    let mut srv = Server::start(&data);
    let token = srv.token();
    let http = srv.client();
    let mut up = vf
        .cmd(&["grid", "up", file])
        .env("VFARM_SERVER", &srv.base)
        .env("VFARM_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        let r = http
            .get(format!("{}/api/v1/grids/six", srv.base))
            .send()
            .unwrap();
        if r.status().as_u16() == 200 {
            let g: Value = r.json().unwrap();
            if g["members"].as_array().unwrap().len() >= 3 {
                break g;
            }
        }
        assert!(Instant::now() < deadline, "six never had 3 members in 120s");
        std::thread::sleep(Duration::from_millis(50));
    };
    srv.kill9();
    let _ = up.wait();
    assert_eq!(seen["state"], "creating", "{seen}");
    let net = seen["network"].as_str().unwrap().to_string();
    cleanup.nets.push(net.clone());
    step(&format!(
        "killed during up with {} member(s) recorded, network {net}",
        seen["members"].as_array().unwrap().len()
    ));
    let srv = Server::start(&data);
    // Whatever was made before the kill; the instance ids are the store's, as recorded.
    let ids: Vec<String> = seen["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["instance_id"].as_str().unwrap().to_string())
        .collect();
    let outcome = whole_or_gone(&vf, &srv, "six", 6, &net, &ids);
    step(&format!("after the restart: {outcome}"));

    // Up whole; killed while up (kept whole), then during down once a member is gone.
    if outcome == "gone" {
        let g = remote(&vf, &srv.base, &srv.token(), &["grid", "up", file]);
        assert_eq!(g["state"], "up", "{g}");
    }
    let mut srv = srv;
    let g: Value = srv
        .client()
        .get(format!("{}/api/v1/grids/six", srv.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let net = g["network"].as_str().unwrap().to_string();
    cleanup.nets.push(net.clone());
    let ids: Vec<String> = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["instance_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 6, "{g}");
    assert_eq!(
        common::net_pieces(&net).len(),
        4,
        "{:?}",
        common::net_pieces(&net)
    );
    step("six up");

    // A service killed while the grid is up finds its network again at the restart: the
    // grid stays whole, and its members still resolve each other's names on it.
    srv.kill9();
    let mut srv = Server::start(&data);
    assert_eq!(whole_or_gone(&vf, &srv, "six", 6, &net, &ids), "up");
    assert_eq!(
        common::net_pieces(&net).len(),
        4,
        "{:?}",
        common::net_pieces(&net)
    );
    let (first, last) = (&g["members"][0], &g["members"][5]);
    let found = vf.ok(&[
        "instance",
        "exec",
        first["instance_id"].as_str().unwrap(),
        "--",
        "getent",
        "hosts",
        last["hostname"].as_str().unwrap(),
    ]);
    assert!(
        found.starts_with(&format!("{} ", last["address"].as_str().unwrap())),
        "{found}"
    );
    step("a restart keeps the grid and its network");
    let token = srv.token();
    let http = srv.client();
    let mut down = vf
        .cmd(&["grid", "down", "six"])
        .env("VFARM_SERVER", &srv.base)
        .env("VFARM_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = http
            .get(format!("{}/api/v1/grids/six", srv.base))
            .send()
            .unwrap();
        let g: Value = r.json().unwrap_or(Value::Null);
        if g["state"] == "deleting" && g["members"].as_array().map_or(0, |m| m.len()) < 6 {
            break;
        }
        assert!(
            Instant::now() < deadline && g["state"] != Value::Null,
            "down never got under way (or ended before the kill): {g}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    srv.kill9();
    let _ = down.wait();
    step("killed during down");
    let srv = Server::start(&data);
    let outcome = whole_or_gone(&vf, &srv, "six", 6, &net, &ids);
    assert_eq!(outcome, "gone", "a grid being torn down is finished");
    step("after the restart: gone");
}
