//! Real networks on this host, between network namespaces this test makes (and removes):
//! addresses, DNS names from dnsmasq, HTTP between instances on one network, isolation from
//! another network while forwarding between two open ones works, and nothing left behind.
//! Needs root, iproute2, nftables, dnsmasq-base and busybox (scripts/setup.sh installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vfarm_net::{Kind, Lease, Link, Network, NetworkConfig};

fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is missing: apt-get install {package} (scripts/setup.sh does)"
    );
}

/// A network namespace of this test, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(name: String) -> Ns {
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        Ns(name)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.0)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }

    /// (success, stdout) of busybox `args` inside.
    fn busybox(&self, args: &[&str]) -> (bool, String) {
        let mut a = vec!["busybox"];
        a.extend_from_slice(args);
        let out = self.cmd(&a).stdin(Stdio::null()).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// busybox httpd on port 8080 serving `body` as /index.html.
    fn serve(&self, dir: &Path, body: &str) -> Child {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("index.html"), body).unwrap();
        self.cmd(&["busybox", "httpd", "-f", "-p", "8080", "-h"])
            .arg(dir)
            .stdin(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn fetch(&self, host: &str) -> Option<String> {
        let url = format!("http://{host}:8080/index.html");
        let out = self
            .cmd(&["curl", "-sS", "--max-time", "3", &url])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn links() -> String {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tables() -> String {
    let out = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nat_networks_serve_names_isolate_and_leave_nothing() {
    for (t, p) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("dnsmasq", "dnsmasq-base"),
    ] {
        require(t, p);
    }
    require("busybox", "busybox-static");
    require("curl", "curl");
    let tag = format!("{:x}", std::process::id() & 0xfff);
    let oct = std::process::id() % 200 + 20;
    let state = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("net-{tag}"));
    let _ = std::fs::remove_dir_all(&state);
    let forward_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let net = |name: &str, subnet: String, isolated: bool| {
        Network::new(
            &NetworkConfig {
                name: format!("{name}{tag}"),
                kind: Kind::Nat,
                subnet,
                isolated,
                nat: isolated,
                bridge: None,
                gateway: None,
                dns: Vec::new(),
            },
            &state,
        )
        .unwrap()
    };
    // 198.18.0.0/15 is set aside for benchmarks: no host network uses it.
    let a = net("a", format!("198.18.{oct}.0/24"), true);
    let c = net("c", format!("198.19.{oct}.0/25"), false);
    let d = net("d", format!("198.19.{oct}.128/25"), false);
    for n in [&a, &c, &d] {
        n.up().unwrap();
        n.up().unwrap(); // idempotent
    }
    let (a1, a2, c1, d1) = (
        Ns::new(format!("vft{tag}a1")),
        Ns::new(format!("vft{tag}a2")),
        Ns::new(format!("vft{tag}c1")),
        Ns::new(format!("vft{tag}d1")),
    );
    let t = Instant::now();
    let la1: Lease = a
        .attach("inst-a1", Link::Netns(&a1.path()), "a1.grid.test", None)
        .unwrap();
    let la2 = a
        .attach("inst-a2", Link::Netns(&a2.path()), "a2.grid.test", None)
        .unwrap();
    let lc1 = c
        .attach("inst-c1", Link::Netns(&c1.path()), "c1.grid.test", None)
        .unwrap();
    let ld1 = d
        .attach("inst-d1", Link::Netns(&d1.path()), "d1.grid.test", None)
        .unwrap();
    eprintln!("4 attaches took {:?}", t.elapsed());
    assert_ne!(la1.address, la2.address);
    assert_eq!(la1.gateway.unwrap().to_string(), format!("198.18.{oct}.1"));
    // The same key gets the same address again.
    assert_eq!(
        a.attach("inst-a1", Link::Netns(&a1.path()), "a1.grid.test", None)
            .unwrap()
            .address,
        la1.address
    );

    let www = state.with_extension("www");
    let mut servers = vec![
        a1.serve(&www.join("a1"), "hello from a1"),
        d1.serve(&www.join("d1"), "d1 here"),
    ];
    // Wait for the servers by trying, not by sleeping a fixed time.
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        if let Some(b) = a2.fetch(&la1.address.to_string()) {
            break b;
        }
        assert!(Instant::now() < deadline, "a2 never reached a1's server");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(got, "hello from a1");
    // The network's DNS answers for the instances' names (full and short).
    for name in ["a1.grid.test", "a1"] {
        let (ok, out) = a2.busybox(&["nslookup", name, &la2.nameservers[0].to_string()]);
        assert!(
            ok && out.contains(&la1.address.to_string()),
            "{name}: {out}"
        );
    }
    // Open networks forward to each other; an isolated one refuses them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c1.fetch(&ld1.address.to_string()).is_none() {
        assert!(
            Instant::now() < deadline,
            "c1 never reached d1 across open networks"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        c1.fetch(&la1.address.to_string()),
        None,
        "c1 reached a1 on an isolated network"
    );
    let (_, ping) = c1.busybox(&["ping", "-c", "1", "-W", "2", &la1.address.to_string()]);
    assert!(!ping.contains("1 packets received"), "{ping}");
    let _ = lc1;

    for s in &mut servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    // Detach frees the address and the name.
    a.detach("inst-a2").unwrap();
    a.detach("inst-a2").unwrap();
    assert!(!a.leases().unwrap().contains_key("inst-a2"));
    assert!(!links().contains(&la2.host_ifname));
    let (_, out) = a1.busybox(&["nslookup", "a2.grid.test", &la1.nameservers[0].to_string()]);
    assert!(!out.contains(&la2.address.to_string()), "{out}");
    for n in [&a, &c, &d] {
        n.down().unwrap();
    }
    let l = links();
    let tb = tables();
    for n in [&a, &c, &d] {
        assert!(!l.contains(&n.bridge()), "{} left: {l}", n.bridge());
        assert!(
            !tb.contains(&format!("vfarm_{}", n.name)),
            "rules left: {tb}"
        );
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        forward_before,
        "ip_forward not restored"
    );
    let _ = std::fs::remove_dir_all(&state);
    let _ = std::fs::remove_dir_all(&www);
}
