//! Black-box test of `vfarm bench overhead`: the real binary runs the real `vfarm-workload`
//! natively and in an OCI instance (runc, a Debian minbase image), through the public CLI.
//! Missing components fail loudly. Timings are reported, never asserted.

mod common;

use common::{fresh_dir, require, tmp, Vf};

use serde_json::Value;

fn rows<'a>(report: &'a Value, workload: &str) -> Vec<&'a Value> {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["workload"] == workload)
        .collect()
}

#[test]
fn overhead_native_vs_oci_json_checksums_and_chart() {
    require("runc");
    let data = fresh_dir("bench-cli-data");
    let vf = Vf::with_minbase(data.clone());
    let chart = data.join("overhead.svg");
    let start = std::time::Instant::now();
    let o = vf.run(&[
        "bench",
        "overhead",
        "--drivers",
        "native,oci",
        "--image",
        "minbase",
        "--repeat",
        "3",
        "--output",
        "json",
        "--cpu-events",
        "20000",
        "--io-size",
        "8M",
        "--mmu-faults",
        "2000",
        "--net-size",
        "8M",
        "--chart",
        chart.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!(
        "bench took {:.1} s; stderr:\n{stderr}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        o.status.success(),
        "bench failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
    );
    let report: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");

    // What ran where.
    let drivers: Vec<&str> = report["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(drivers, ["native", "oci"]);
    assert_eq!(report["drivers"][1]["repeat"], 3);
    assert!(report["drivers"][1]["ready_secs"].as_f64().unwrap() > 0.0);
    assert!(report["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(!report["notes"].as_array().unwrap().is_empty());

    // Every workload metric has three samples and statistics in both environments; OCI is
    // compared with native and computed the same thing.
    for w in [
        "cpu", "cpu-all", "io-write", "io-read", "mmu", "net", "startup",
    ] {
        let rs = rows(&report, w);
        assert_eq!(rs.len(), 2, "{w}: {rs:?}");
        for r in &rs {
            assert!(r["error"].is_null(), "{w}: {r}");
            assert_eq!(r["samples"].as_array().unwrap().len(), 3, "{w}: {r}");
            let s = &r["stats"];
            let (med, min, max) = (
                s["median"].as_f64().unwrap(),
                s["min"].as_f64().unwrap(),
                s["max"].as_f64().unwrap(),
            );
            assert!(min > 0.0 && min <= med && med <= max, "{w}: {s}");
            assert!(s["spread_pct"].as_f64().unwrap() >= 0.0);
        }
        let native = rs.iter().find(|r| r["driver"] == "native").unwrap();
        let oci = rs.iter().find(|r| r["driver"] == "oci").unwrap();
        assert!(native["overhead_pct"].is_null());
        assert!(oci["overhead_pct"].as_f64().is_some(), "{w}: {oci}");
        assert!(oci["relative"].as_f64().unwrap() > 0.0, "{w}: {oci}");
        if w != "startup" {
            assert_eq!(oci["checksum_matches_native"], true, "{w}: {oci}");
            assert_eq!(oci["checksum"], native["checksum"], "{w}");
            assert_eq!(oci["checksum"].as_str().unwrap().len(), 16);
        }
        eprintln!(
            "{w}: native {} / oci {} {} → overhead {:+.1} %",
            native["stats"]["median"], oci["stats"]["median"], oci["unit"], oci["overhead_pct"]
        );
    }
    // Time to a ready instance: OCI only (native has no environment to make ready).
    let ready = rows(&report, "ready");
    assert_eq!(ready.len(), 1);
    assert_eq!(ready[0]["driver"], "oci");

    // The chart: a well-formed SVG naming both drivers and the workloads.
    let svg = std::fs::read_to_string(&chart).expect("the chart file");
    let mut reader = quick_xml::Reader::from_str(&svg);
    let mut elements = 0;
    let mut root = String::new();
    let mut texts = Vec::new();
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(quick_xml::events::Event::Start(e)) | Ok(quick_xml::events::Event::Empty(e)) => {
                if root.is_empty() {
                    root = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                }
                elements += 1;
            }
            Ok(quick_xml::events::Event::Text(t)) => {
                texts.push(t.unescape().expect("text").trim().to_string());
            }
            Ok(_) => {}
            Err(e) => panic!(
                "chart is not well-formed XML at {}: {e}",
                reader.buffer_position()
            ),
        }
    }
    assert_eq!(root, "svg");
    assert!(elements > 20, "only {elements} elements");
    for s in ["native", "oci", "cpu", "mmu", "startup"] {
        assert!(
            texts.iter().any(|t| t == s),
            "text {s:?} missing from the chart: {texts:?}"
        );
    }

    // Nothing is left behind.
    let o = vf.run(&["instance", "ls", "--output", "json"]);
    let left: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(left.as_array().unwrap().len(), 0, "instances left: {left}");
}

#[test]
fn bad_arguments_name_the_field_and_change_nothing() {
    let data = tmp().join("bench-cli-bad");
    let _ = std::fs::remove_dir_all(&data);
    let vf = Vf { data: data.clone() };
    for (args, field) in [
        (&["--drivers", "oci"][..], "drivers"),
        (&["--drivers", "native,xen"][..], "drivers"),
        (&["--workloads", "cpu,gpu"][..], "workloads"),
        (&["--io-size", "lots"][..], "io_size"),
        (&["--repeat", "0"][..], "repeat"),
    ] {
        let mut a = vec!["bench", "overhead", "--output", "json"];
        a.extend(args);
        let o = vf.run(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["error"]["code"], "invalid_argument", "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    assert!(
        !data.join("instances").exists(),
        "bad input created instances"
    );
}
