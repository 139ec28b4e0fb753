//! Issue 22: the overview of every instance (measured use side by side) and `/metrics` as
//! Prometheus tools read it, with real oci instances, real `promtool` and the Python
//! `prometheus_client` parser. A missing tool fails the test, naming it.

mod common;

use common::{require, tmp, unique, Server, Vf};

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

fn data_dir(name: &str) -> Vf {
    let data = tmp().join(unique(name));
    common::remove_at_exit(&data);
    Vf::with_minbase(data)
}

/// Destroys the instances when the test ends, pass or fail.
struct Guard<'a>(&'a Vf, Vec<String>);
impl Drop for Guard<'_> {
    fn drop(&mut self) {
        for i in &self.1 {
            let _ = self.0.run(&["instance", "destroy", i]);
        }
    }
}

fn row<'a>(rows: &'a Value, name: &str) -> &'a Value {
    rows.as_array()
        .expect("a list")
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row for {name} in {rows}"))
}

// Acceptance 4: a CPU-bound instance shows ~100 % of one CPU, an idle one ~0 %.
#[test]
fn ls_stats_shows_a_busy_instance_at_one_cpu_and_an_idle_one_at_zero() {
    let vf = data_dir("overview-cli");
    let (busy, idle) = (unique("busy"), unique("idle"));
    let _g = Guard(&vf, vec![busy.clone(), idle.clone()]);
    vf.ok(&[
        "instance",
        "create",
        "--image",
        "minbase",
        "--name",
        &busy,
        "--memory",
        "128M",
        "--",
        "sha512sum",
        "/dev/zero",
    ]);
    vf.ok(&[
        "instance", "create", "--image", "minbase", "--name", &idle, "--", "sleep", "600",
    ]);
    // The reference: the instance's process as the host's process accounting sees it over
    // the same call (another source than the cgroup the driver reads). On an idle machine it
    // is ~100 %; on a loaded one it is what the process really got.
    let id = vf.json(&["instance", "show", &busy])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pid = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            let cg = std::fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default();
            comm.trim() == "sha512sum" && cg.lines().any(|l| l.ends_with(&format!("/vfarm/{id}")))
        })
        .expect("the instance's sha512sum on the host");
    let ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<u64> = stat
            .rsplit_once(") ")
            .unwrap()
            .1
            .split(' ')
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        f[11] + f[12] // utime + stime, 1/100 s
    };
    let (t, c0) = (Instant::now(), ticks());
    let rows = vf.json(&["instance", "ls", "--stats"]);
    let took = t.elapsed();
    let reference = (ticks() - c0) as f64 / took.as_secs_f64();
    let (b, i) = (row(&rows, &busy), row(&rows, &idle));
    let cpu = |r: &Value| r["now"]["cpu_percent"].as_f64().expect("a CPU figure");
    eprintln!(
        "busy {:.1} %, idle {:.1} % of one CPU, its process per /proc {reference:.1} %; \
         ls --stats took {took:?}",
        cpu(b),
        cpu(i)
    );
    assert!(
        cpu(b) < 110.0 && cpu(b) > 25.0 && (cpu(b) - reference).abs() < 15.0,
        "busy: {b}; its process got {reference:.1} %"
    );
    assert!(cpu(i) < 5.0, "idle: {i}");
    assert_eq!(b["driver"], "oci");
    assert_eq!(b["memory_limit_bytes"], 128 << 20);
    assert!(b["now"]["memory_bytes"].as_u64().unwrap() > 0, "{b}");
    // The table shows the same.
    let text = vf.ok(&["instance", "ls", "--stats"]);
    let line = text
        .lines()
        .find(|l| l.contains(&busy))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("oci") && line.contains("(128)"), "{text}");
    // Filters that cannot apply are refused, naming them.
    let o = vf.run(&["instance", "ls", "--stats", "--state", "stopped"]);
    assert_eq!(o.status.code(), Some(2), "{}", common::text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--state"));
    // A stopped instance is not measured.
    vf.ok(&["instance", "stop", &idle]);
    let rows = vf.json(&["instance", "ls", "--stats"]);
    assert!(
        rows.as_array()
            .unwrap()
            .iter()
            .all(|r| r["name"] != idle.as_str()),
        "{rows}"
    );
}

fn scrape(base: &str, accept: Option<&str>) -> (String, String) {
    let mut req = reqwest::blocking::Client::new().get(format!("{base}/metrics"));
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let resp = req.send().expect("GET /metrics");
    assert!(resp.status().is_success(), "{:?}", resp.status());
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    (ct, resp.text().unwrap())
}

/// `python3` with `prometheus_client`: the project's .venv (scripts/setup.sh pins it).
fn python() -> std::path::PathBuf {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let ok = Command::new(&venv)
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "this test needs prometheus_client in .venv ({}): run scripts/setup.sh",
        venv.display()
    );
    venv
}

// Acceptance 3: promtool and prometheus_client read a scrape of a service with 3 instances.
#[test]
fn metrics_negotiate_the_format_and_promtool_and_prometheus_client_read_them() {
    require("promtool");
    let py = python();
    let vf = data_dir("overview-metrics");
    let names: Vec<String> = (0..3).map(|i| unique(&format!("m{i}"))).collect();
    let srv = Server::start(&vf.data);
    let tok = srv.token_for("alice");
    let _g = Guard(&vf, names.clone());
    for n in &names {
        let o = Command::new(env!("CARGO_BIN_EXE_vfarm"))
            .args([
                "--server", &srv.base, "instance", "create", "--image", "minbase",
            ])
            .args(["--name", n, "--", "sleep", "600"])
            .env("VFARM_TOKEN", &tok)
            .env("VFARM_DATA_DIR", &vf.data)
            .output()
            .unwrap();
        common::assert_success(&o, "instance create --server");
    }
    // A refused request is counted too.
    let r = reqwest::blocking::get(format!("{}/api/v1/instances", srv.base)).unwrap();
    assert_eq!(r.status(), 401);
    // The sampler has measured all three (twice, for rates).
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = |text: &str| {
        names
            .iter()
            .filter(|n| {
                text.lines().any(|l| {
                    l.starts_with("vfarm_instance_cpu_seconds_total{")
                        && l.contains(&format!("name=\"{n}\""))
                })
            })
            .count()
    };
    let classic = loop {
        let (ct, text) = scrape(&srv.base, None);
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
        if series(&text) == 3 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no series of 3 instances:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for want in [
        "# TYPE vfarm_http_requests_total counter",
        "# TYPE vfarm_http_request_duration_seconds histogram",
        "# TYPE vfarm_build_info gauge",
        "vfarm_http_requests_total{method=\"GET\",status=\"401\"}",
        "vfarm_http_request_duration_seconds_bucket{",
        "vfarm_instance_memory_bytes{",
    ] {
        assert!(classic.contains(want), "no `{want}` in:\n{classic}");
    }
    assert!(!classic.contains("# EOF"));
    // What Prometheus itself sends gets OpenMetrics.
    let (ct, om) = scrape(
        &srv.base,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
    );
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(om.ends_with("# EOF\n"));

    // promtool reads the classic format only (OpenMetrics is checked by prometheus_client's
    // strict OpenMetrics parser below).
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("classic.prom");
    std::fs::write(&p, &classic).unwrap();
    let o = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&p).unwrap())
        .output()
        .unwrap();
    eprintln!(
        "promtool check metrics: exit {:?} {}",
        o.status.code(),
        common::text(&o)
    );
    assert!(o.status.success(), "promtool: {}", common::text(&o));
    let run_py = |script: &str, input: &str| {
        let mut child = Command::new(&py)
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "prometheus_client: {}",
            common::text(&o)
        );
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let v = run_py(
        r#"
import sys, json
from prometheus_client.openmetrics.parser import text_string_to_metric_families
fams = list(text_string_to_metric_families(sys.stdin.read()))
print(json.dumps({"families": len(fams)}))
"#,
        &om,
    );
    eprintln!("prometheus_client OpenMetrics parser read: {v}");
    assert!(v["families"].as_u64().unwrap() > 10, "{v}");
    // The classic parser of prometheus_client: every family, and the per-instance series.
    let script = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(sys.stdin.read())}
cpu = fams["vfarm_instance_cpu_seconds"]
print(json.dumps({"families": len(fams), "type": cpu.type,
  "instances": sorted(s.labels["name"] for s in cpu.samples),
  "owners": sorted({s.labels["owner"] for s in cpu.samples}),
  "mem": len(fams["vfarm_instance_memory_bytes"].samples),
  "build": fams["vfarm_build_info"].samples[0].labels}))
"#;
    let v = run_py(script, &classic);
    eprintln!("prometheus_client read: {v}");
    let mut want = names.clone();
    want.sort();
    assert_eq!(v["instances"], serde_json::json!(want), "{v}");
    assert_eq!(v["type"], "counter");
    assert_eq!(v["owners"], serde_json::json!(["alice"]));
    assert_eq!(v["mem"], 3);
    assert_eq!(v["build"]["version"], env!("CARGO_PKG_VERSION"));

    // The overview through the API, as its owner sees it, once the sampler has two samples
    // of each (rates need an interval).
    let ls_stats = |token: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_vfarm"))
            .args([
                "--server", &srv.base, "--output", "json", "instance", "ls", "--stats",
            ])
            .env("VFARM_TOKEN", token)
            .env("VFARM_DATA_DIR", &vf.data)
            .output()
            .unwrap();
        common::assert_success(&o, "instance ls --stats --server");
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let rows = loop {
        let rows = ls_stats(&tok);
        if names.iter().all(|n| row(&rows, n)["avg"].is_object()) {
            break rows;
        }
        assert!(Instant::now() < deadline, "no rates yet: {rows}");
        std::thread::sleep(Duration::from_millis(500));
    };
    for n in &names {
        let r = row(&rows, n);
        assert!(r["avg"]["cpu_percent"].as_f64().unwrap() < 5.0, "{r}");
        assert!(!r["history"].as_array().unwrap().is_empty(), "{r}");
    }
    // The shipped Grafana dashboard charts only series the service exports.
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana/vfarm.json"
    ))
    .unwrap();
    let names_used: std::collections::BTreeSet<&str> = dash
        .match_indices("vfarm_")
        .map(|(i, _)| {
            let rest = &dash[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    assert!(names_used.len() >= 10, "{names_used:?}");
    for n in &names_used {
        // A family without series (no nodes here) still has its TYPE line.
        let family = n.strip_suffix("_bucket").unwrap_or(n);
        assert!(
            classic.contains(&format!("# TYPE {family} ")),
            "the dashboard charts {n}, which /metrics does not export"
        );
    }
    // Someone else sees none of them.
    assert_eq!(ls_stats(&srv.token_for("bob")), serde_json::json!([]));
}
