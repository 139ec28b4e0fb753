//! Several hosts on one machine: a control (`vfarm serve` with a site CA) and nodes
//! (`vfarm node`), each node in its own network namespace joined to a bridge by a veth pair,
//! with its own data dir and address. Only the bridge's own addresses are ever contacted.
//!
//! Nodes are started with `nsenter --net=…` rather than `ip netns exec`: the latter also
//! remounts /sys in a new mount namespace, which hides the cgroup hierarchy runc needs.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fresh_dir, require, Vf};
use serde_json::{json, Value};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge in this namespace (the control's side) and one namespace per node.
struct Net {
    bridge: String,
    prefix: String,
    namespaces: Vec<String>,
    host_ifs: Vec<String>,
}

/// The LAN bridge a node with a `bridged` network has in its namespace (eth0 on it).
const NODE_LAN: &str = "vflan";

impl Net {
    fn new(nodes: usize) -> Net {
        require("ip");
        require("nsenter");
        // Names and a /24 of its own per test (several run at once in one process), in a
        // private range.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{:x}{n}", pid & 0xffff);
        let prefix = format!("10.{}.{}", 200 + (pid % 50), (pid / 50 + n * 97) % 250);
        let bridge = format!("vfb{tag}");
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{prefix}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        let mut net = Net {
            bridge,
            prefix,
            namespaces: Vec::new(),
            host_ifs: Vec::new(),
        };
        for i in 1..=nodes {
            net.add(i);
        }
        net
    }

    fn add(&mut self, i: usize) {
        let tag = self.bridge.trim_start_matches("vfb").to_string();
        let ns = format!("vfn{tag}-{i}");
        let host_if = format!("vfh{tag}{i}");
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["link", "set", &host_if, "master", &self.bridge, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", self.node_addr(i)),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.namespaces.push(ns);
        self.host_ifs.push(host_if);
    }

    /// Put node `i`'s eth0 on a bridge of its own (with the node's address), as a site host
    /// with a `bridged` network has it: the instances' links join that bridge, so they are on
    /// the LAN (this namespace's bridge) beside the node.
    fn lan(&self, i: usize) {
        let ns = &self.namespaces[i - 1];
        let cidr = format!("{}/24", self.node_addr(i));
        ip(&["-n", ns, "link", "add", NODE_LAN, "type", "bridge"]);
        ip(&["-n", ns, "addr", "del", &cidr, "dev", "eth0"]);
        ip(&["-n", ns, "link", "set", "eth0", "master", NODE_LAN]);
        ip(&["-n", ns, "addr", "add", &cidr, "dev", NODE_LAN]);
        ip(&["-n", ns, "link", "set", NODE_LAN, "up"]);
    }

    /// The name of the site LAN as a vfarm network (its state goes with the test).
    fn lan_name(&self) -> String {
        format!("lan{}", self.bridge.trim_start_matches("vfb"))
    }

    /// vfarm's links (veths `vfh-`, taps `vft-`) in node `i`'s namespace.
    fn vfarm_links(&self, i: usize) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-n", &self.namespaces[i - 1], "-o", "link", "show"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("vfh-") || n.starts_with("vft-"))
            .collect()
    }

    fn control_addr(&self) -> String {
        format!("{}.1", self.prefix)
    }

    fn node_addr(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, 10 + i)
    }

    /// Cut (or restore) node `i`'s only link.
    fn link(&self, i: usize, up: bool) {
        ip(&[
            "link",
            "set",
            &self.host_ifs[i - 1],
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            // vfarm keeps a namespace's network state under its inode (vfarm_net::state_dir).
            use std::os::unix::fs::MetadataExt;
            if let Ok(m) = std::fs::metadata(format!("/var/run/netns/{ns}")) {
                let _ = std::fs::remove_dir_all(format!("/run/vfarm/net-ns{}", m.ino()));
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = std::fs::remove_dir_all(format!("/run/vfarm/net/{}", self.lan_name()));
    }
}

/// A child process killed (SIGKILL) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Read stdout lines until one holds `needle`; returns it.
fn wait_line(child: &mut Child, needle: &str) -> String {
    let out = child.stdout.take().expect("piped stdout");
    let mut r = BufReader::new(out);
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).unwrap();
        assert!(n > 0, "the process ended before printing `{needle}`");
        if line.contains(needle) {
            // Keep draining so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while r.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                    sink.clear();
                }
            });
            return line;
        }
    }
}

struct Cluster {
    net: Net,
    control: Vf,
    url: String,
    ca: PathBuf,
    _serve: Proc,
    nodes: Vec<(Vf, Option<Proc>)>,
    http: reqwest::blocking::Client,
}

impl Cluster {
    fn start(dir: &Path, n: usize, config: &str) -> Cluster {
        Cluster::start_with(dir, n, &|_| config.to_string(), None)
    }

    /// The control's serve.toml and (given) each node's, from the LAN the test made; nodes
    /// with a config of their own get their eth0 on a bridge (`Net::lan`).
    fn start_with(
        dir: &Path,
        n: usize,
        config: &dyn Fn(&Net) -> String,
        node_config: Option<&dyn Fn(&Net) -> String>,
    ) -> Cluster {
        let net = Net::new(n);
        let control = Vf::with_minbase(dir.join("control"));
        control.ok(&["ca", "init", "--subject", "/C=XX/O=vfarm tests/CN=Site CA"]);
        let srv = control.data.join("srv");
        control.ok(&[
            "ca",
            "issue-host",
            &net.control_addr(),
            "--out",
            srv.to_str().unwrap(),
        ]);
        std::fs::write(control.data.join("serve.toml"), config(&net)).unwrap();
        if let Some(node_config) = node_config {
            for i in 1..=n {
                net.lan(i);
                let data = dir.join(format!("node{i}"));
                std::fs::create_dir_all(&data).unwrap();
                std::fs::write(data.join("serve.toml"), node_config(&net)).unwrap();
            }
        }
        let mut serve = control
            .cmd(&[
                "serve",
                "--listen",
                &format!("{}:0", net.control_addr()),
                "--tls-cert",
                srv.join("hostcert.pem").to_str().unwrap(),
                "--tls-key",
                srv.join("hostkey.pem").to_str().unwrap(),
                "--client-ca-dir",
                control.data.join("ca/certificates").to_str().unwrap(),
                "--admin",
                "admin",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let line = wait_line(&mut serve, "serving on https://");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("https://"))
            .unwrap()
            .to_string();
        let ca = control.data.join("ca/ca.pem");
        let token = control.ok(&["token", "create", "--user", "alice", "--name", "t"]);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {}", token.trim()).parse().unwrap(),
        );
        let http = reqwest::blocking::Client::builder()
            .default_headers(headers)
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap(),
            )
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap();
        let mut c = Cluster {
            net,
            control,
            url,
            ca,
            _serve: Proc(serve),
            nodes: Vec::new(),
            http,
        };
        for i in 1..=n {
            c.join(i, dir);
        }
        c
    }

    /// `vfarm host add`, then `vfarm node` in namespace `i`.
    fn join(&mut self, i: usize, dir: &Path) {
        let name = format!("node{i}");
        let added = self.control.json(&["host", "add", &name]);
        let token = added["token"].as_str().unwrap().to_string();
        let node = Vf {
            data: dir.join(&name),
        };
        std::fs::create_dir_all(&node.data).unwrap();
        let proc = self.start_node(i, &node, Some(&token));
        self.nodes.push((node, Some(proc)));
    }

    fn start_node(&self, i: usize, node: &Vf, token: Option<&str>) -> Proc {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!(
            "--net=/var/run/netns/{}",
            self.net.namespaces[i - 1]
        ))
        .arg(env!("CARGO_BIN_EXE_vfarm"))
        .args([
            "node",
            "--control",
            &self.url,
            "--name",
            &format!("node{i}"),
            "--listen",
            &format!("{}:8751", self.net.node_addr(i)),
            "--ca",
            self.ca.to_str().unwrap(),
        ])
        .env("VFARM_DATA_DIR", &node.data)
        .env_remove("VFARM_OUTPUT")
        // A node's own records stay in its data dir (SQLite); a PostgreSQL the suite may
        // run the control on is on loopback, which a namespace does not reach.
        .env_remove("VFARM_DATABASE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
        // In the environment, never in argv (where `ps` shows it).
        match token {
            Some(t) => cmd.env("VFARM_JOIN_TOKEN", t),
            None => cmd.env_remove("VFARM_JOIN_TOKEN"),
        };
        let mut child = cmd.spawn().expect("start vfarm node");
        wait_line(&mut child, "serving on https://");
        Proc(child)
    }

    fn hosts(&self) -> HashMap<String, Value> {
        self.control
            .json(&["host", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["name"].as_str().unwrap().to_string(), h.clone()))
            .collect()
    }

    /// Wait (at most `limit`) until `pred` holds for the host inventory.
    fn wait_hosts(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&HashMap<String, Value>) -> bool,
    ) -> Duration {
        let t0 = Instant::now();
        loop {
            let h = self.hosts();
            if pred(&h) {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < limit, "{what}: not within {limit:?}: {h:#?}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(Value::Null))
    }

    /// Instances as the control's own CLI lists them.
    fn instances(&self) -> Vec<Value> {
        self.control
            .json(&["instance", "ls"])
            .as_array()
            .unwrap()
            .clone()
    }

    /// A node's own records (its data dir, read from this namespace: a file, not the net).
    fn node_instances(&self, i: usize) -> Vec<Value> {
        let out = self.nodes[i - 1]
            .0
            .cmd(&["instance", "ls", "--output", "json"])
            .env_remove("VFARM_DATABASE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

/// Whatever a test leaves on the nodes goes with it (pass or fail): the node processes end,
/// then each node's instances are destroyed through its own data dir.
impl Drop for Cluster {
    fn drop(&mut self) {
        for (i, (node, proc)) in self.nodes.iter_mut().enumerate() {
            drop(proc.take());
            // In the node's namespace: its networks' links and state are there.
            let in_ns = |args: &[&str]| {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/var/run/netns/{}", self.net.namespaces[i]))
                    .arg(env!("CARGO_BIN_EXE_vfarm"))
                    .args(args)
                    .env("VFARM_DATA_DIR", &node.data)
                    .env_remove("VFARM_OUTPUT")
                    .env_remove("VFARM_DATABASE");
                c.output()
            };
            let ls = in_ns(&["instance", "ls", "--output", "json"]);
            let ids: Vec<String> = ls
                .ok()
                .and_then(|o| serde_json::from_slice::<Value>(&o.stdout).ok())
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
                .iter()
                .filter_map(|v| v["id"].as_str().map(str::to_string))
                .collect();
            for id in ids {
                let _ = in_ns(&["instance", "destroy", &id]);
            }
        }
    }
}

fn up(h: &Value) -> bool {
    h["state"] == "up"
}

/// Acceptance 1, 2 and 5 of several hosts: 30 instances placed by the spread policy over
/// three nodes in namespaces, no over-commit, a node cut off and marked down (its instances
/// `lost`) and re-adopted when its link returns, and nodes without a valid certificate
/// refused.
#[test]
fn control_and_three_nodes_place_lose_and_readopt() {
    let dir = fresh_dir("cluster");
    // 2 CPUs per node here; 0.2 CPU per instance fits exactly 10 per node.
    let mut c = Cluster::start(&dir, 3, "[placement]\npolicy = \"spread\"\n");
    c.wait_hosts(Duration::from_secs(30), "three nodes up", |h| {
        h.len() == 3 && h.values().all(up)
    });
    let cpus = c.hosts()["node1"]["cpus"].as_i64().unwrap();
    assert!(cpus >= 1, "{cpus}");
    let per_node = (cpus * 5) as usize; // 0.2 CPU each
    let total = per_node * 3;
    eprintln!("{cpus} CPUs per node: {per_node} instances of 0.2 CPU each fit on one");

    // Placement: as many creates as fit, concurrently.
    let t0 = Instant::now();
    let ids: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let c = &c;
                s.spawn(move || {
                    (0..total)
                        .filter(|k| k % 4 == t)
                        .map(|_| {
                            let (st, v) = c.api(
                                reqwest::Method::POST,
                                "/api/v1/instances?wait=true",
                                Some(json!({"image": "minbase", "cpus": 0.2, "memory": "64M"})),
                            );
                            assert_eq!(st, 201, "{v}");
                            v
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{total} instances placed and running in {secs:.1} s ({:.2}/s)",
        total as f64 / secs
    );
    assert_eq!(ids.len(), total);
    for v in &ids {
        assert_eq!(v["state"], "running", "{v}");
        assert!(v["host"].as_str().unwrap().starts_with("node"), "{v}");
    }
    // One more does not fit anywhere: refused, nothing recorded.
    let (st, v) = c.api(
        reqwest::Method::POST,
        "/api/v1/instances?wait=true",
        Some(json!({"image": "minbase", "cpus": 0.2})),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("no_capacity")),
        "{v}"
    );
    // Spread: the same number on each; the CLI shows the hosts.
    let listed = c.instances();
    assert_eq!(listed.len(), total);
    let mut by_host: HashMap<String, HashSet<String>> = HashMap::new();
    for v in &listed {
        by_host
            .entry(v["host"].as_str().unwrap().to_string())
            .or_default()
            .insert(v["id"].as_str().unwrap().to_string());
    }
    for n in ["node1", "node2", "node3"] {
        assert_eq!(by_host[n].len(), per_node, "{n}: {by_host:?}");
    }
    let table = c.control.ok(&["instance", "ls"]);
    assert!(table.contains("HOST") && table.contains("node2"), "{table}");
    let hosts = c.hosts();
    for n in ["node1", "node2", "node3"] {
        assert_eq!(hosts[n]["instances"], per_node as i64);
        assert_eq!(hosts[n]["used_cpus_milli"], cpus * 1000);
    }
    let table = c.control.ok(&["host", "ls"]);
    assert!(table.contains("node3") && table.contains("up"), "{table}");
    // Each node holds exactly its own, running; the image came from the control.
    for i in 1..=3 {
        let mine: HashSet<String> = c
            .node_instances(i)
            .iter()
            .map(|v| {
                assert_eq!(v["state"], "running", "{v}");
                v["id"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(mine, by_host[&format!("node{i}")], "node{i}");
    }
    // Exec and destroy go through the control to the node.
    let one = by_host["node1"].iter().next().unwrap().clone();
    let (st, v) = c.api(
        reqwest::Method::POST,
        &format!("/api/v1/instances/{one}/exec"),
        Some(json!({"command": ["cat", "/proc/1/cmdline"]})),
    );
    assert_eq!((st, v["exit_code"].as_i64()), (200, Some(0)), "{v}");
    let (st, v) = c.api(
        reqwest::Method::DELETE,
        &format!("/api/v1/instances/{one}"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    assert!(!c.node_instances(1).iter().any(|v| v["id"] == one));
    assert_eq!(c.instances().len(), total - 1);

    // Acceptance 2: node2's link goes; within 30 s it is down and its instances lost.
    let cut = Instant::now();
    c.net.link(2, false);
    let took = c.wait_hosts(Duration::from_secs(30), "node2 down", |h| {
        h["node2"]["state"] == "down"
    });
    eprintln!(
        "node2 marked down {:.1} s after its link was cut",
        took.as_secs_f64()
    );
    let lost: HashSet<String> = c
        .instances()
        .iter()
        .filter(|v| v["state"] == "lost")
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(lost, by_host["node2"], "exactly node2's instances are lost");
    assert_eq!(c.instances().len(), total - 1, "nothing dropped");
    assert_eq!(c.hosts()["node2"]["lost"], per_node as i64);
    // node2 itself runs on regardless.
    assert!(c.node_instances(2).iter().all(|v| v["state"] == "running"));
    // No new instance goes to a down host.
    let (st, v) = c.api(
        reqwest::Method::POST,
        "/api/v1/instances?wait=true",
        Some(json!({"image": "minbase", "cpus": 0.2, "host": "node2"})),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("no_capacity")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("node2: down"),
        "{v}"
    );
    // Back: re-adopted, nothing duplicated.
    c.net.link(2, true);
    let took = c.wait_hosts(Duration::from_secs(30), "node2 up again", |h| {
        up(&h["node2"]) && h["node2"]["lost"] == 0
    });
    eprintln!(
        "node2 re-adopted {:.1} s after its link returned ({:.1} s after the cut)",
        took.as_secs_f64(),
        cut.elapsed().as_secs_f64()
    );
    let after = c.instances();
    assert_eq!(after.len(), total - 1);
    let unique: HashSet<&str> = after.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), after.len(), "no instance twice");
    for v in &after {
        assert_eq!(v["state"], "running", "{v}");
    }
    let on2: HashSet<String> = after
        .iter()
        .filter(|v| v["host"] == "node2")
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(on2, by_host["node2"]);
    assert_eq!(c.node_instances(2).len(), per_node);
    let events = c.control.ok(&["host", "show", "node2"]);
    assert!(events.contains("up"), "{events}");

    // Acceptance 5: a node certificate from another CA, none at all, or a revoked one.
    let other = Vf {
        data: dir.join("other-ca"),
    };
    std::fs::create_dir_all(&other.data).unwrap();
    other.ok(&["ca", "init", "--subject", "/C=XX/O=elsewhere/CN=Other CA"]);
    other.ok(&[
        "ca",
        "issue-host",
        "node9",
        "--out",
        other.data.join("n9").to_str().unwrap(),
    ]);
    let beat = json!({"url": "https://192.0.2.1:1", "cpus": 64, "memory_mib": 1, "disk_mib": 1, "features": ["oci"], "instances": []});
    let ca_pem = std::fs::read(&c.ca).unwrap();
    let with_cert = |dir: &Path| {
        let mut pem = std::fs::read(dir.join("hostcert.pem")).unwrap();
        pem.extend(std::fs::read(dir.join("hostkey.pem")).unwrap());
        reqwest::blocking::Client::builder()
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let r = with_cert(&other.data.join("n9"))
        .post(format!("{}/api/v1/hosts/heartbeat", c.url))
        .json(&beat)
        .send();
    assert!(
        r.is_err(),
        "a certificate of another CA must fail the handshake: {r:?}"
    );
    let anon = reqwest::blocking::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&c.ca).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let r = anon
        .post(format!("{}/api/v1/hosts/heartbeat", c.url))
        .json(&beat)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // A user's certificate from the right CA is not a node.
    let (st, v) = c.api(
        reqwest::Method::POST,
        "/api/v1/hosts/heartbeat",
        Some(beat.clone()),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (403, Some("node_certificate_required")),
        "{v}"
    );
    // Join a fourth node, remove it: its certificate is revoked and refused from then on.
    c.net.add(4);
    c.join(4, &dir);
    c.wait_hosts(Duration::from_secs(30), "node4 up", |h| {
        h.get("node4").is_some_and(up)
    });
    let n4 = c.nodes[3].0.data.join("node");
    // Issue 24, acceptance 3: its own certificate still cannot move its URL or report a
    // state outside the closed set; nothing changes.
    let url4 = c.hosts()["node4"]["url"].clone();
    assert_eq!(url4, format!("https://{}:8751", c.net.node_addr(4)));
    for (bad, field) in [
        (json!({"url": "https://attacker"}), "url"),
        (
            json!({"url": "", "instances": [{"id": "x", "state": "owned"}]}),
            "instances",
        ),
    ] {
        let mut b = beat.clone();
        for (k, v) in bad.as_object().unwrap() {
            b[k] = v.clone();
        }
        let r = with_cert(&n4)
            .post(format!("{}/api/v1/hosts/heartbeat", c.url))
            .json(&b)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let v: Value = r.json().unwrap();
        assert_eq!(v["error"]["field"], field, "{v}");
        assert_eq!(c.hosts()["node4"]["url"], url4);
        assert_ne!(c.hosts()["node4"]["cpus"], 64);
    }
    let mut b = beat.clone();
    b["url"] = json!("");
    let r = with_cert(&n4)
        .post(format!("{}/api/v1/hosts/heartbeat", c.url))
        .json(&b)
        .send()
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "a joined node's heartbeat is taken"
    );
    assert_eq!(c.hosts()["node4"]["url"], url4);
    // A host with instances is not removed.
    let o = c.control.run(&["host", "rm", "node1"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("instance"),
        "{o:?}"
    );
    let rm = c.control.ok(&["host", "rm", "node4"]);
    assert!(rm.contains("revoked"), "{rm}");
    let t0 = Instant::now();
    loop {
        // The CRL is re-read when the CA directory changes.
        let r = with_cert(&n4)
            .post(format!("{}/api/v1/hosts/heartbeat", c.url))
            .json(&beat)
            .send();
        if r.is_err() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "revoked node still accepted: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!c.hosts().contains_key("node4"));
    // A used token does not join again.
    let o = Command::new(env!("CARGO_BIN_EXE_vfarm"))
        .args([
            "node",
            "--control",
            &c.url,
            "--name",
            "node5",
            "--listen",
            "127.0.0.1:1",
            "--ca",
        ])
        .arg(&c.ca)
        .env("VFARM_JOIN_TOKEN", "vfj_0000")
        .env("VFARM_DATA_DIR", dir.join("node5"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("refused"),
        "{o:?}"
    );

    // Cold migration of an oci instance: stopped, its writable layer copied, started on the
    // other node (node1 has room: one of its instances was destroyed above).
    let mv = by_host["node2"].iter().next().unwrap().clone();
    let (st, v) = c.api(
        reqwest::Method::POST,
        &format!("/api/v1/instances/{mv}/exec"),
        Some(json!({"command": ["sh", "-c", "echo moved > /root/marker"]})),
    );
    assert_eq!((st, v["exit_code"].as_i64()), (200, Some(0)), "{v}");
    let (st, v) = c.api(
        reqwest::Method::POST,
        &format!("/api/v1/instances/{mv}/migrate"),
        Some(json!({"to": "node1", "shared_storage": true})),
    );
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("shared_storage")),
        "{v}"
    );
    let (st, m) = c.api(
        reqwest::Method::POST,
        &format!("/api/v1/instances/{mv}/migrate"),
        Some(json!({"to": "node1"})),
    );
    assert_eq!(st, 200, "{m}");
    eprintln!("oci instance moved node2 -> node1 (cold): {m}");
    assert_eq!(
        (m["to"].as_str(), m["state"].as_str()),
        (Some("node1"), Some("running")),
        "{m}"
    );
    let (st, v) = c.api(
        reqwest::Method::POST,
        &format!("/api/v1/instances/{mv}/exec"),
        Some(json!({"command": ["cat", "/root/marker"]})),
    );
    assert_eq!((st, v["stdout"].as_str()), (200, Some("moved\n")), "{v}");
    assert!(c.node_instances(1).iter().any(|v| v["id"] == mv.as_str()));
    assert!(!c.node_instances(2).iter().any(|v| v["id"] == mv.as_str()));
    let shown = c.instances();
    let row = shown.iter().find(|v| v["id"] == mv.as_str()).unwrap();
    assert_eq!(
        (row["host"].as_str(), row["state"].as_str()),
        (Some("node1"), Some("running"))
    );
    // node1 is full again: nothing more moves there.
    let other = by_host["node2"].iter().find(|i| **i != mv).unwrap();
    let (st, v) = c.api(
        reqwest::Method::POST,
        &format!("/api/v1/instances/{other}/migrate"),
        Some(json!({"to": "node1"})),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("no_capacity")),
        "{v}"
    );

    // Destroy everything through the control; the nodes end empty.
    for v in c.instances() {
        let id = v["id"].as_str().unwrap();
        let (st, body) = c.api(
            reqwest::Method::DELETE,
            &format!("/api/v1/instances/{id}"),
            None,
        );
        assert_eq!(st, 200, "{body}");
    }
    for i in 1..=3 {
        assert!(c.node_instances(i).is_empty(), "node{i} not empty");
    }
    let hosts = c.hosts();
    for n in ["node1", "node2", "node3"] {
        assert_eq!(hosts[n]["instances"], 0);
        assert_eq!(hosts[n]["used_cpus_milli"], 0);
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest's counter through the control (exec forwarded to the VM's node), once it is
/// above `floor`.
fn counter_above(c: &Cluster, id: &str, floor: u64, what: &str) -> u64 {
    let t0 = Instant::now();
    loop {
        let (st, v) = c.api(
            reqwest::Method::POST,
            &format!("/api/v1/instances/{id}/exec"),
            Some(json!({"command": ["cat", "/root/counter"]})),
        );
        let n = (st == 200)
            .then(|| {
                v["stdout"]
                    .as_str()
                    .and_then(|s| s.trim().parse::<u64>().ok())
            })
            .flatten();
        if let Some(n) = n.filter(|n| *n > floor) {
            return n;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "{what}: the counter did not get above {floor}: {st} {v}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// http://ADDR:8080/ from this namespace (the LAN's own bridge, where the control is).
fn fetch_here(addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = format!("{addr}:8080").parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(5))
        .map_err(|e| format!("connect {sa}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Run `command` in instance `id` through the control; (exit code, stdout and stderr).
fn exec(c: &Cluster, id: &str, command: &[&str]) -> (i64, String) {
    let (st, v) = c.api(
        reqwest::Method::POST,
        &format!("/api/v1/instances/{id}/exec"),
        Some(json!({ "command": command, "timeout": "60s" })),
    );
    assert_eq!(st, 200, "exec {command:?} in {id}: {v}");
    (
        v["exit_code"].as_i64().unwrap_or(-1),
        format!(
            "{}{}",
            v["stdout"].as_str().unwrap_or_default(),
            v["stderr"].as_str().unwrap_or_default()
        ),
    )
}

/// Acceptance 3 of several hosts, and 4 of instance networking: a VM live-migrates between
/// two nodes in their own namespaces (disk copied over NBD, RAM over the bridge) and keeps
/// running: its counter continues on the other node; the downtime is printed, there and
/// back. Both nodes have the site's `bridged` LAN: the VM on node1 reaches an oci instance
/// on node2 at its pool address, and the VM answers at its own pool address from the LAN
/// before and after each move (its tap follows it; nothing of it stays behind).
#[test]
fn a_vm_moves_between_nodes_and_keeps_counting() {
    let _vm = common::one_vm();
    let dir = fresh_dir("cluster-migrate");
    let lan = |net: &Net, bridge: &str| {
        format!(
            "[[networks]]\nname = \"{name}\"\nkind = \"bridged\"\nbridge = \"{bridge}\"\n\
             subnet = \"{p}.0/24\"\ngateway = \"{gw}\"\n",
            name = net.lan_name(),
            p = net.prefix,
            gw = net.control_addr()
        )
    };
    let control_cfg = |net: &Net| {
        format!(
            "{}[[hostnames]]\nname = \"vm.lan.test\"\naddress = \"{p}.100\"\n\
             [[hostnames]]\nname = \"peer.lan.test\"\naddress = \"{p}.101\"\n",
            lan(net, &net.bridge),
            p = net.prefix
        )
    };
    let node_cfg = |net: &Net| lan(net, NODE_LAN);
    let c = Cluster::start_with(&dir, 2, &control_cfg, Some(&node_cfg));
    let (vm_addr, peer_addr) = (
        format!("{}.100", c.net.prefix),
        format!("{}.101", c.net.prefix),
    );
    common::build_bootable(&c.control.data, "vm", &[]);
    c.wait_hosts(Duration::from_secs(30), "two nodes up", |h| {
        h.len() == 2 && h.values().all(up)
    });
    let (st, v) = c.api(
        reqwest::Method::POST,
        "/api/v1/instances?wait=true",
        Some(
            json!({"image": "vm", "driver": "qemu", "profile": "fast", "memory": "256M",
                    "cpus": 1, "host": "node1", "name": "mig", "hostname": "vm.lan.test"}),
        ),
    );
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        (v["host"].as_str(), v["state"].as_str()),
        (Some("node1"), Some("running")),
        "{v}"
    );
    assert_eq!(
        (v["network"].as_str(), v["address"].as_str()),
        (Some(c.net.lan_name().as_str()), Some(vm_addr.as_str())),
        "the pool's address on the site LAN: {v}"
    );
    let id = v["id"].as_str().unwrap().to_string();
    let (st, v) = c.api(
        reqwest::Method::POST,
        &format!("/api/v1/instances/{id}/exec"),
        Some(json!({"command": ["sh", "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /root/counter; sleep 0.1; done </dev/null >/dev/null 2>&1 &"]})),
    );
    assert_eq!(st, 200, "{v}");
    let before = counter_above(&c, &id, 1, "before the migration");

    // The LAN: an oci instance on node2; node1's VM fetches from it at its pool address,
    // and serves in turn (reached from node2's instance and from the LAN's own bridge).
    let (st, peer) = c.api(
        reqwest::Method::POST,
        "/api/v1/instances?wait=true",
        Some(json!({"image": "minbase", "host": "node2", "name": "peer",
                    "hostname": "peer.lan.test",
                    "command": common::http_server_cmd("peer")})),
    );
    assert_eq!(st, 201, "{peer}");
    assert_eq!(peer["address"], peer_addr.as_str(), "{peer}");
    let peer_id = peer["id"].as_str().unwrap().to_string();
    let (rc, out) = exec(&c, &id, &["bash", "-c", common::FETCH, &peer_addr]);
    assert!(
        rc == 0 && out.contains("hello from peer"),
        "the VM on node1 did not reach node2's instance at {peer_addr} ({rc}): {out}"
    );
    let serve = "perl -MIO::Socket::INET -e \"$0\" </dev/null >/dev/null 2>&1 &\n\
         for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && exit 0; sleep 0.1; done; exit 1";
    let (rc, out) = exec(
        &c,
        &id,
        &["bash", "-c", serve, &common::http_server_script("vm")],
    );
    assert_eq!(rc, 0, "the VM's server did not start: {out}");
    let (rc, out) = exec(&c, &peer_id, &["bash", "-c", common::FETCH, &vm_addr]);
    assert!(
        rc == 0 && out.contains("hello from vm"),
        "node2's instance did not reach the VM at {vm_addr} ({rc}): {out}"
    );
    let here = fetch_here(&vm_addr).unwrap();
    assert!(here.contains("hello from vm"), "{here}");
    assert_eq!(c.net.vfarm_links(1).len(), 1, "node1: the VM's tap");
    assert_eq!(c.net.vfarm_links(2).len(), 1, "node2: the instance's veth");

    // Refusals change nothing: an unknown node, the node it is on, an oci instance.
    let (st, v) = c.api(
        reqwest::Method::POST,
        &format!("/api/v1/instances/{id}/migrate"),
        Some(json!({"to": "node9"})),
    );
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("host_not_found")),
        "{v}"
    );
    let (st, v) = c.api(
        reqwest::Method::POST,
        &format!("/api/v1/instances/{id}/migrate"),
        Some(json!({"to": "node1"})),
    );
    assert_eq!((st, v["error"]["field"].as_str()), (400, Some("to")), "{v}");

    let (st, m) = c.api(
        reqwest::Method::POST,
        &format!("/api/v1/instances/{id}/migrate"),
        Some(json!({"to": "node2"})),
    );
    assert_eq!(st, 200, "{m}");
    eprintln!(
        "node1 -> node2: downtime {} ms, total {} ms, RAM {} bytes, disk {} bytes",
        m["downtime_ms"], m["total_ms"], m["ram_bytes"], m["disk_bytes"]
    );
    assert_eq!(
        (m["from"].as_str(), m["to"].as_str(), m["state"].as_str()),
        (Some("node1"), Some("node2"), Some("running")),
        "{m}"
    );
    assert!(m["ram_bytes"].as_u64().is_some_and(|b| b > 0), "{m}");
    let at_dest = counter_above(&c, &id, 0, "right after the migration");
    assert!(
        at_dest >= before,
        "counter went back from {before} to {at_dest}: the guest restarted"
    );
    counter_above(&c, &id, at_dest, "on node2");
    // The same address on the other node, its tap gone from the first.
    let t0 = Instant::now();
    let here = loop {
        match fetch_here(&vm_addr) {
            Ok(h) => break h,
            Err(e) if t0.elapsed() > Duration::from_secs(30) => {
                panic!("the migrated VM does not answer at {vm_addr}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(here.contains("hello from vm"), "{here}");
    eprintln!(
        "after the move, the VM answered at {vm_addr} in {} ms",
        t0.elapsed().as_millis()
    );
    let (rc, out) = exec(&c, &id, &["bash", "-c", common::FETCH, &peer_addr]);
    assert!(rc == 0 && out.contains("hello from peer"), "({rc}) {out}");
    assert!(
        c.net.vfarm_links(1).is_empty(),
        "node1 kept the VM's tap: {:?}",
        c.net.vfarm_links(1)
    );
    assert_eq!(
        c.net.vfarm_links(2).len(),
        2,
        "node2: the VM's tap and the veth"
    );
    let (st, v) = c.api(
        reqwest::Method::DELETE,
        &format!("/api/v1/instances/{peer_id}"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    let listed = c.instances();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0]["host"].as_str(), listed[0]["state"].as_str()),
        (Some("node2"), Some("running"))
    );
    assert!(c.node_instances(1).is_empty(), "node1 still has it");
    assert_eq!(c.node_instances(2)[0]["state"], "running");
    assert!(
        common::live_qemus(c.nodes[0].0.data.to_str().unwrap()).is_empty(),
        "a QEMU is left on node1"
    );
    let hosts = c.hosts();
    assert_eq!(
        (
            hosts["node1"]["instances"].as_i64(),
            hosts["node2"]["instances"].as_i64()
        ),
        (Some(0), Some(1))
    );

    // Back through the CLI (`--server` on the control), which prints the downtime.
    let token = c
        .control
        .ok(&["token", "create", "--user", "alice", "--name", "cli"]);
    let o = c
        .control
        .cmd(&[
            "--server",
            &c.url,
            "--ca",
            c.ca.to_str().unwrap(),
            "instance",
            "migrate",
            "mig",
            "--to",
            "node1",
        ])
        .env("VFARM_TOKEN", token.trim())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{}", out.trim());
    assert!(
        out.contains("from node2 to node1") && out.contains("downtime"),
        "{out}"
    );
    let back = counter_above(&c, &id, at_dest, "back on node1");
    counter_above(&c, &id, back, "still counting on node1");
    assert_eq!(c.instances()[0]["host"], "node1");
    let t0 = Instant::now();
    while fetch_here(&vm_addr).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the VM does not answer at {vm_addr} back on node1"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let (st, v) = c.api(
        reqwest::Method::DELETE,
        &format!("/api/v1/instances/{id}"),
        None,
    );
    assert_eq!(st, 200, "{v}");
    for i in 1..=2 {
        assert!(c.node_instances(i).is_empty(), "node{i} not empty");
        assert!(common::live_qemus(c.nodes[i - 1].0.data.to_str().unwrap()).is_empty());
        assert!(
            c.net.vfarm_links(i).is_empty(),
            "node{i}: {:?}",
            c.net.vfarm_links(i)
        );
    }
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 24, acceptance 1 "by a node": a node's TLS (`vfarm node` serves through the same
/// `vfarm serve` code, its client CA directory being the trust files it received at join)
/// refuses a certificate from a second CA in its directory carrying a DN in the site CA's
/// namespace (the control's own DN here), while that CA's own users get through, and the
/// control's real certificate (the same DN from the site CA) is still its admin.
#[test]
fn a_node_refuses_a_second_ca_minting_a_dn_of_the_site_namespace() {
    require("curl");
    let dir = fresh_dir("cluster-namespaces");
    let c = Cluster::start(&dir, 1, "");
    // Heartbeats still find the node by its certificate's subject (the user is now subject
    // and issuer together). Waiting for the node's doctor report too means its KVM probe is
    // over before the test ends (a node killed mid-probe leaves the probe's QEMU behind).
    c.wait_hosts(Duration::from_secs(60), "node1 up with its checks", |h| {
        h.get("node1")
            .is_some_and(|n| up(n) && n["checks"].is_object())
    });
    let node_dir = c.nodes[0].0.data.join("node/certificates");
    assert!(
        std::fs::read_dir(&node_dir)
            .unwrap()
            .flatten()
            .any(|f| f.file_name().to_string_lossy().ends_with(".namespaces")),
        "the node received no namespace file at join"
    );
    let srv = c.control.data.join("srv");
    let control_dn =
        vfarm_auth::dn::subject_of_pem(&std::fs::read(srv.join("hostcert.pem")).unwrap()).unwrap();
    assert!(
        control_dn.starts_with("/C=XX/O=vfarm tests/"),
        "{control_dn}"
    );
    // A second CA with namespace files of its own, its user, and the control's DN.
    let beta = Vf {
        data: dir.join("beta"),
    };
    beta.ok(&["ca", "init", "--subject", "/C=XX/O=Beta/CN=Beta CA"]);
    let (forged, bea) = (dir.join("forged"), dir.join("bea"));
    beta.ok(&[
        "ca",
        "issue-user",
        &control_dn,
        "--out",
        forged.to_str().unwrap(),
    ]);
    beta.ok(&[
        "ca",
        "issue-user",
        "/C=XX/O=Beta/CN=Bea",
        "--out",
        bea.to_str().unwrap(),
    ]);
    for f in std::fs::read_dir(beta.data.join("ca/certificates")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), node_dir.join(f.file_name())).unwrap();
    }
    // The node's own URL, from this namespace over the bridge. `-k`: what is under test is
    // the node's judgement of the client, not ours of the node.
    let url = format!("https://{}:8751/api/v1/whoami", c.net.node_addr(1));
    let curl = |cert: &Path, key: &Path| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-k",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                "--cert",
            ])
            .arg(cert)
            .arg("--key")
            .arg(key)
            .arg(&url)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            out.clone(),
            body.to_string(),
            code.trim().parse::<u16>().unwrap_or(0),
        )
    };
    let user = |d: &Path| (d.join("usercert.pem"), d.join("userkey.pem"));
    // The node re-reads its directory within seconds: Beta's own user gets in then.
    let (bc, bk) = user(&bea);
    let t0 = Instant::now();
    let body = loop {
        let (out, body, code) = curl(&bc, &bk);
        if code == 200 {
            break body;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "Beta's own user never accepted by the node: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let who: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        who["user"],
        "/C=XX/O=Beta/CN=Bea issuer=/C=XX/O=Beta/CN=Beta CA"
    );
    assert_eq!(who["admin"], false);
    // The control's DN from Beta: refused at the handshake.
    let (fc, fk) = user(&forged);
    let (out, body, code) = curl(&fc, &fk);
    assert_ne!(code, 200, "the node took Beta's control DN: {body}");
    assert!(!out.status.success(), "the handshake must fail: {out:?}");
    // The same DN from the site CA (the control's own certificate) is the node's admin.
    let (out, body, code) = curl(&srv.join("hostcert.pem"), &srv.join("hostkey.pem"));
    assert_eq!(code, 200, "{out:?}");
    let who: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(who["admin"], true, "{who}");
    assert_eq!(who["subject"], control_dn.as_str());
}
