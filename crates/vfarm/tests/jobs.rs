//! Black-box tests of batch jobs: `vfarm job …` and the dispatcher of `vfarm serve`, with
//! the real OCI runtime and a real Debian minbase image. Missing components fail loudly.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{tmp, Server, Vf};
use serde_json::Value;

/// Capacity is fixed in the config so the checks do not depend on the machine's size.
const CONFIG: &str = r#"
default_queue = "batch"
[capacity]
cpus = 2
memory = "4G"
slots = { oci = 4 }
[fair_share]
window = "1d"
half_life = "1h"
[queues.batch]
image = "minbase"
walltime = "2m"
[queues.route]
routes = [{ os = "LINUX", os_version = "12", queue = "batch" }]
"#;
const CAPACITY_MILLI: i64 = 2000;

impl Vf {
    /// A fresh data dir with the minbase image imported and the test queue config.
    fn new(name: &str) -> Vf {
        let data = tmp().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("jobs.toml"), CONFIG).unwrap();
        Vf::with_minbase(data)
    }

    fn submit(&self, args: &[&str]) -> i64 {
        let mut a = vec!["job", "submit"];
        a.extend(args);
        self.ok(&a)
            .trim()
            .parse()
            .expect("submit prints the job id")
    }

    fn show(&self, id: i64) -> Value {
        self.json(&["job", "show", &id.to_string()])
    }

    /// Wait for the jobs to finish; panics with the job table on timeout.
    fn wait(&self, ids: &[i64], secs: u64) {
        let mut a: Vec<String> = vec!["job".into(), "wait".into()];
        a.extend(ids.iter().map(|i| i.to_string()));
        a.extend(["--timeout".into(), format!("{secs}s")]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = self.run(&a);
        assert_ne!(
            o.status.code(),
            Some(124),
            "jobs not finished after {secs}s:\n{}",
            self.ok(&["job", "ls"])
        );
    }

    /// Poll until `f(show)` holds for job `id`.
    fn until(&self, id: i64, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let v = self.show(id);
            if f(&v) {
                return v;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "job {id}: not {what} after {secs}s: {v:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Vf {
    fn drop(&mut self) {
        // Leave no instances behind (kept failure instances included).
        if let Ok(o) = self.cmd(&["instance", "ls", "--output", "json"]).output() {
            if let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&o.stdout) {
                for i in list {
                    if let Some(id) = i["id"].as_str() {
                        let _ = self.run(&["instance", "destroy", id]);
                    }
                }
            }
        }
        // Keep a failed test's data for inspection; a passed test's goes.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.data);
        }
    }
}

fn ms(t: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t.as_str().expect("a timestamp"))
        .unwrap()
        .timestamp_millis()
}

fn events<'a>(job: &'a Value, kind: &str) -> Vec<&'a Value> {
    job["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

/// Acceptance 1: 50 jobs of mixed priorities from two owners all finish with the right
/// exit statuses, start in priority / fair-share order, and never exceed capacity.
#[test]
fn fifty_jobs_follow_priority_and_fair_share_within_capacity() {
    let vf = Vf::new("jobs-fifty");
    // History: alice ran two 1-CPU jobs of 2 s just now; bob ran nothing.
    let server = Server::start(&vf.data);
    let before: Vec<i64> = (0..2)
        .map(|_| vf.submit(&["--owner", "alice", "--", "sleep", "2"]))
        .collect();
    vf.wait(&before, 60);
    drop(server);
    let t0 = Instant::now();
    // (id, priority, cpus milli, expected exit)
    let mut jobs: Vec<(i64, i32, i64, i32)> = Vec::new();
    // Submitted before the service runs, so the dispatcher sees them all at once and the
    // whole start order is the scheduler's.
    for i in 0..50 {
        let owner = if i % 3 == 0 { "bob" } else { "alice" };
        let prio = [0, 0, 5, 10, 0][i % 5];
        let cpus = if i % 7 == 0 { "0.5" } else { "1" };
        let (cmd, exit): (Vec<&str>, i32) = match i % 4 {
            0 => (vec!["true"], 0),
            1 => (vec!["sh", "-c", "exit 3"], 3),
            2 => (vec!["sleep", "0.3"], 0),
            _ => (vec!["sh", "-c", "sleep 0.2; exit 0"], 0),
        };
        let p = prio.to_string();
        let mut a = vec!["--owner", owner, "--priority", &p, "--cpus", cpus, "--"];
        a.extend(cmd);
        let id = vf.submit(&a);
        jobs.push((id, prio, if cpus == "1" { 1000 } else { 500 }, exit));
    }
    let submitted = t0.elapsed();
    let server = Server::start(&vf.data);
    let ids: Vec<i64> = jobs.iter().map(|j| j.0).collect();
    vf.wait(&ids, 200);
    let ran = t0.elapsed() - submitted;
    drop(server);

    let shows: BTreeMap<i64, Value> = ids.iter().map(|i| (*i, vf.show(*i))).collect();
    // Exit statuses and states.
    for (id, _, _, exit) in &jobs {
        let v = &shows[id];
        assert_eq!(v["exit_code"], *exit, "job {id}: {v:#}");
        let want = if *exit == 0 { "succeeded" } else { "failed" };
        assert_eq!(v["state"], want, "job {id}: {v:#}");
        assert_eq!(v["reason"], "exit", "job {id}");
        assert_eq!(events(v, "claim").len(), 1, "job {id} claimed once");
        assert_eq!(events(v, "end").len(), 1, "job {id} ended once");
    }
    // Capacity: CPUs are held from claim to end; at no claim instant is more held.
    let spans: Vec<(i64, i64, i64)> = jobs
        .iter()
        .map(|(id, _, cpus, _)| (ms(&shows[id]["claimed"]), ms(&shows[id]["ended"]), *cpus))
        .collect();
    let mut peak = 0;
    for (t, _, _) in &spans {
        let held: i64 = spans
            .iter()
            .filter(|(a, b, _)| a <= t && t < b)
            .map(|s| s.2)
            .sum();
        let n = spans.iter().filter(|(a, b, _)| a <= t && t < b).count();
        assert!(held <= CAPACITY_MILLI, "{held} milli-CPUs held at {t}");
        assert!(n <= 4, "{n} instances at {t}, 4 slots");
        peak = peak.max(held);
    }
    assert!(
        peak >= 1500,
        "the queue never ran jobs side by side (peak {peak})"
    );

    // Order: claims in sequence, with the facts each decision was made on.
    let mut claims: Vec<(i64, i64, &Value)> = ids
        .iter()
        .map(|id| {
            let c = events(&shows[id], "claim")[0];
            (c["seq"].as_i64().unwrap(), *id, &c["detail"])
        })
        .collect();
    claims.sort_by_key(|c| c.0);
    let prio: BTreeMap<i64, i32> = jobs.iter().map(|j| (j.0, j.1)).collect();
    let owner: BTreeMap<i64, String> = ids
        .iter()
        .map(|i| (*i, shows[i]["owner"].as_str().unwrap().to_string()))
        .collect();
    let mut left: BTreeSet<i64> = ids.iter().copied().collect();
    let mut owner_switches = 0;
    let mut last_owner = String::new();
    // The first decision between the two: alice's history (≥ 4 CPU-seconds, barely decayed)
    // makes her yield to bob.
    let first = claims
        .iter()
        .find(|c| !c.2["rivals"].as_object().unwrap().is_empty())
        .expect("the owners competed");
    assert_eq!(
        owner[&first.1], "bob",
        "alice ran much and still went first: {}",
        first.2
    );
    assert!(
        first.2["rivals"]["alice"].as_f64().unwrap() >= 3.9,
        "{}",
        first.2
    );
    for (_, id, d) in &claims {
        // Priority: nothing of higher priority was still waiting.
        let top = left.iter().map(|j| prio[j]).max().unwrap();
        assert_eq!(
            prio[id], top,
            "job {id} (priority {}) started before a priority {top} job",
            prio[id]
        );
        // Fair share: the rivals recorded are exactly the other owners still waiting at this
        // priority, and none of them had a lower usage.
        let rivals: BTreeSet<String> = left
            .iter()
            .filter(|j| prio[*j] == top && owner[*j] != owner[id])
            .map(|j| owner[j].clone())
            .collect();
        let recorded: BTreeSet<String> = d["rivals"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(recorded, rivals, "job {id}: rivals");
        let mine = d["usage"].as_f64().unwrap();
        for (o, u) in d["rivals"].as_object().unwrap() {
            assert!(
                mine <= u.as_f64().unwrap() + 1e-9,
                "job {id} of {} (usage {mine}) went before {o} (usage {u})",
                owner[id]
            );
        }
        if !rivals.is_empty() && owner[id] != last_owner {
            owner_switches += 1;
        }
        last_owner = owner[id].clone();
        left.remove(id);
    }
    // How often the owners alternated depends on how long each job really ran (usage is
    // measured), so it is reported, not asserted.
    eprintln!(
        "fifty jobs: submitted in {:.1}s, ran in {:.1}s, peak {peak} milli-CPUs, {owner_switches} owner switches",
        submitted.as_secs_f64(),
        ran.as_secs_f64()
    );
}

/// A one-file HTTP server for stage-in from http://.
fn serve_once(body: &'static [u8]) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten().take(4) {
            let mut s = s;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(body);
        }
    });
    format!("http://{addr}/input.txt")
}

/// Acceptance 2: every JSDL document of the test data gets its verdict: the valid POSIX ones
/// run (arguments, environment, stdout/stderr files honoured; a missing executable is the
/// command's failure, 127), the others are refused at submit naming the element at fault.
/// A document written here covers staging (file: and http:) and a working directory.
#[test]
fn jsdl_documents_run_or_are_refused_naming_the_element() {
    let vf = Vf::new("jobs-jsdl");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/jsdl");
    assert!(
        root.is_dir(),
        "JSDL test data missing at {}",
        root.display()
    );
    enum Want {
        Refused(&'static [&'static str]),
        /// (state, exit, text in stdout, text in stderr)
        Runs(&'static str, i32, &'static str, &'static str),
    }
    use Want::*;
    let table: &[(&str, Want)] = &[
        (
            "gridsam/bes-netstat.jsdl",
            Runs("failed", 127, "", "netstat"),
        ),
        (
            "gridsam/cat-staging.jsdl",
            Refused(&["DataStaging", "ftp://"]),
        ),
        ("gridsam/echoenv.jsdl", Refused(&["DataStaging", "ftp://"])),
        (
            "gridsam/helloworld.jsdl",
            Runs("succeeded", 0, "hello world", ""),
        ),
        (
            "gridsam/invalid.jsdl",
            Refused(&["line 1", "JobDefinition", "not in the JSDL namespace"]),
        ),
        ("gridsam/mpi-sample.jsdl", Refused(&["MPIApplication"])),
        ("gridsam/staging.jsdl", Refused(&["DataStaging", "ftp://"])),
        (
            "ogf/jsdl-blast-20060629b4d7.xml",
            Refused(&["DataStaging", "no such file"]),
        ),
        ("unicore/date_with_resources.jsdl", Refused(&["Executable"])),
        ("unicore/ex_posix.jsdl", Runs("succeeded", 0, "UTC", "")),
        (
            "unicore/jsdl_sample_with_hpc_ext.jsdl",
            Refused(&["DataStaging", "ftp://"]),
        ),
        (
            "unicore/posix.jsdl",
            Runs("failed", 1, "", "invalid option -- 'v'"),
        ),
        (
            "unicore/range3.jsdl",
            Refused(&["line 1", "jsdl:JobDefinition"]),
        ),
        (
            "unicore/spmd2.jsdl",
            Runs("failed", 1, "", "invalid option -- 'v'"),
        ),
        (
            "unicore/staging_1.jsdl",
            Refused(&["line 4", "jsdl:DataStaging", "jsdl:FileName"]),
        ),
        ("xenbee/example.jsdl", Refused(&["DataStaging", "rsync://"])),
        ("xenbee/example5.xsdl", Refused(&["XBEApplication"])),
        (
            "xenbee/hello-world.xsdl",
            Refused(&["DataStaging", "ftp://"]),
        ),
    ];
    // Every document in the directory has a verdict here.
    let mut on_disk = BTreeSet::new();
    for d in std::fs::read_dir(&root).unwrap().flatten() {
        if d.path().is_dir() && d.file_name() != "schema" {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                on_disk.insert(format!(
                    "{}/{}",
                    d.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                ));
            }
        }
    }
    let listed: BTreeSet<String> = table.iter().map(|t| t.0.to_string()).collect();
    assert_eq!(on_disk, listed, "documents without a verdict in this test");

    // posix.jsdl and spmd2.jsdl read their stdin from a file named `stdin`: stage one in.
    let stdin_file = vf.data.join("stdin-for-jsdl");
    std::fs::write(&stdin_file, "input\n").unwrap();
    let stage_stdin = format!("{}:stdin", stdin_file.display());

    let mut runs = Vec::new();
    for (rel, want) in table {
        let path = root.join(rel);
        let p = path.to_str().unwrap();
        let mut args = vec!["job", "submit", "--jsdl", p, "--output", "json"];
        if *rel == "unicore/posix.jsdl" || *rel == "unicore/spmd2.jsdl" {
            args.extend(["--stage-in", &stage_stdin]);
        }
        let o = vf.run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        match want {
            Refused(words) => {
                assert_eq!(o.status.code(), Some(2), "{rel} must be refused:\n{err}");
                let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
                let msg = doc["error"]["message"].as_str().unwrap();
                for w in *words {
                    assert!(msg.contains(w), "{rel}: refusal does not name `{w}`: {msg}");
                }
            }
            Runs(..) => {
                assert!(o.status.success(), "{rel} must be accepted:\n{err}");
                let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
                runs.push((*rel, doc["id"].as_i64().unwrap(), want));
            }
        }
    }
    assert_eq!(
        vf.json(&["job", "ls"]).as_array().unwrap().len(),
        runs.len(),
        "a refused document left a job"
    );

    // Staging, working directory, arguments, environment and output files, end to end.
    let input = vf.data.join("input-file.txt");
    std::fs::write(&input, "from a file: URI\n").unwrap();
    let url = serve_once(b"from http\n");
    let delivered = vf.data.join("delivered.txt");
    let doc = format!(
        r#"<?xml version="1.0"?>
<jsdl:JobDefinition xmlns:jsdl="http://schemas.ggf.org/jsdl/2005/11/jsdl"
  xmlns:posix="http://schemas.ggf.org/jsdl/2005/11/jsdl-posix">
 <jsdl:JobDescription>
  <jsdl:JobIdentification><jsdl:JobName>staging</jsdl:JobName></jsdl:JobIdentification>
  <jsdl:Application><posix:POSIXApplication>
   <posix:Executable>/bin/sh</posix:Executable>
   <posix:Argument>-c</posix:Argument>
   <posix:Argument>echo "$GREETING $0 in $(pwd)"; cat a.txt b.txt; cat a.txt b.txt > result.txt; echo to-stderr &gt;&amp;2</posix:Argument>
   <posix:Argument>two words</posix:Argument>
   <posix:Output>out.txt</posix:Output>
   <posix:Error>err.txt</posix:Error>
   <posix:WorkingDirectory>/work/here</posix:WorkingDirectory>
   <posix:Environment name="GREETING">hello</posix:Environment>
   <posix:WallTimeLimit>60</posix:WallTimeLimit>
  </posix:POSIXApplication></jsdl:Application>
  <jsdl:Resources><jsdl:OperatingSystem><jsdl:OperatingSystemType>
    <jsdl:OperatingSystemName>LINUX</jsdl:OperatingSystemName></jsdl:OperatingSystemType>
    <jsdl:OperatingSystemVersion>12</jsdl:OperatingSystemVersion></jsdl:OperatingSystem>
   <jsdl:CPUArchitecture><jsdl:CPUArchitectureName>x86_64</jsdl:CPUArchitectureName></jsdl:CPUArchitecture>
  </jsdl:Resources>
  <jsdl:DataStaging><jsdl:FileName>a.txt</jsdl:FileName><jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
   <jsdl:Source><jsdl:URI>file://{input}</jsdl:URI></jsdl:Source></jsdl:DataStaging>
  <jsdl:DataStaging><jsdl:FileName>b.txt</jsdl:FileName><jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
   <jsdl:Source><jsdl:URI>{url}</jsdl:URI></jsdl:Source></jsdl:DataStaging>
  <jsdl:DataStaging><jsdl:FileName>result.txt</jsdl:FileName><jsdl:CreationFlag>overwrite</jsdl:CreationFlag>
   <jsdl:Target><jsdl:URI>file://{delivered}</jsdl:URI></jsdl:Target></jsdl:DataStaging>
 </jsdl:JobDescription>
</jsdl:JobDefinition>"#,
        input = input.display(),
        delivered = delivered.display()
    );
    let own = vf.data.join("staging.jsdl");
    std::fs::write(&own, doc).unwrap();
    // Routed by OS through the routing queue.
    let staging = vf.submit(&["--queue", "route", "--jsdl", own.to_str().unwrap()]);

    let server = Server::start(&vf.data);
    let mut all: Vec<i64> = runs.iter().map(|r| r.1).collect();
    all.push(staging);
    vf.wait(&all, 120);
    drop(server);

    for (rel, id, want) in &runs {
        let Runs(state, exit, out, err) = want else {
            unreachable!()
        };
        let v = vf.show(*id);
        assert_eq!(
            (
                v["state"].as_str().unwrap(),
                v["exit_code"].as_i64().unwrap() as i32
            ),
            (*state, *exit),
            "{rel}: {v:#}"
        );
        let logs = vf.run(&["job", "logs", &id.to_string()]);
        let (so, se) = (
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr),
        );
        assert!(so.contains(out), "{rel}: stdout {so:?} lacks {out:?}");
        assert!(se.contains(err), "{rel}: stderr {se:?} lacks {err:?}");
    }
    let v = vf.show(staging);
    assert_eq!(
        v["state"],
        "succeeded",
        "{v:#}\n{}",
        String::from_utf8_lossy(&vf.run(&["job", "logs", &staging.to_string()]).stderr)
    );
    assert_eq!(v["name"], "staging");
    assert_eq!(v["walltime_secs"], 60);
    let logs = vf.run(&["job", "logs", &staging.to_string()]);
    let so = String::from_utf8_lossy(&logs.stdout);
    assert!(so.contains("hello two words in /work/here"), "{so}");
    assert!(so.contains("from a file: URI\nfrom http\n"), "{so}");
    assert!(String::from_utf8_lossy(&logs.stderr).contains("to-stderr"));
    assert_eq!(
        std::fs::read_to_string(&delivered).unwrap(),
        "from a file: URI\nfrom http\n"
    );
    let files = vf.json(&["job", "output", &staging.to_string()]);
    let names: BTreeSet<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains("out.txt") && names.contains("err.txt"),
        "{names:?}"
    );
    let out = vf.ok(&["job", "output", &staging.to_string(), "out.txt"]);
    assert!(out.contains("hello two words"), "{out}");
}

/// Jobs over the API, with owners as for instances: a JSDL document and a JSON job run as
/// their submitter, whose outputs download; others get 404, the admin sees all; a caller
/// over the API cannot stage from or to the server's files; cancel through the API.
#[test]
fn jobs_over_the_api_belong_to_their_submitter() {
    let vf = Vf::new("jobs-api");
    let srv = Server::start_with(&vf.data, &["--admin", "site-admin"]);
    let (alice, bob, admin) = (
        srv.client_for("alice"),
        srv.client_for("bob"),
        srv.client_for("site-admin"),
    );
    let url = |p: &str| format!("{}/api/v1/jobs{p}", srv.base);
    let get = |c: &reqwest::blocking::Client, p: &str| {
        let r = c.get(url(p)).send().unwrap();
        let st = r.status().as_u16();
        (st, r.json::<Value>().unwrap_or(Value::Null))
    };
    let wait_final = |id: i64| -> Value {
        let t = Instant::now();
        loop {
            let (st, v) = get(&alice, &format!("/{id}"));
            assert_eq!(st, 200, "{v}");
            if ["succeeded", "failed", "cancelled"].contains(&v["state"].as_str().unwrap_or("")) {
                return v;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "job {id} not done: {v:#}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    // A JSDL document as the request body.
    let jsdl = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data/jsdl/gridsam/helloworld.jsdl"),
    )
    .unwrap();
    let r = alice
        .post(url(""))
        .header("content-type", "application/xml")
        .body(jsdl)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().unwrap();
    assert_eq!(v["job"]["owner"], "alice", "{v}");
    assert!(
        v["job"].get("dir").is_none(),
        "a server path in the answer: {v}"
    );
    let hello = v["job"]["id"].as_i64().unwrap();

    // A JSON job whose output is kept with the job and downloaded.
    let r = alice
        .post(url(""))
        .json(&serde_json::json!({
            "command": ["sh", "-c", "echo from-the-api > result.txt"],
            "stage_out": ["result.txt:result.txt"],
        }))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let made = r.json::<Value>().unwrap()["job"]["id"].as_i64().unwrap();
    let h = wait_final(hello);
    assert_eq!(h["state"], "succeeded");
    // The document names no Output file: the command's own stdout is one of the job's
    // streams, downloaded like an output.
    let names = |v: &Value, k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&h, "streams"), ["stdout", "stderr"], "{h}");
    assert_eq!(names(&h, "outputs"), Vec::<String>::new(), "{h}");
    let download = |p: String| {
        let r = alice.get(url(&p)).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(
        download(format!("/{hello}/outputs/stdout")),
        (200, "hello world\n".into())
    );
    let done = wait_final(made);
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["outputs"][0]["name"], "result.txt", "{done}");
    assert_eq!(
        download(format!("/{made}/outputs/result.txt")),
        (200, "from-the-api\n".into())
    );

    // Bob sees none of it; the admin sees both.
    for p in [
        format!("/{made}"),
        format!("/{made}/outputs/result.txt"),
        format!("/{hello}/outputs/stdout"),
    ] {
        let (st, v) = get(&bob, &p);
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (404, Some("job_not_found")),
            "{p}: {v}"
        );
    }
    let r = bob.post(url(&format!("/{made}/cancel"))).send().unwrap();
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(get(&bob, "").1, serde_json::json!([]));
    let all = get(&admin, "").1;
    let ids: BTreeSet<i64> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert!(ids.contains(&hello) && ids.contains(&made), "{all}");

    // Refusals over the API store nothing: the server's files, another owner, bad input.
    let before = get(&admin, "").1.as_array().unwrap().len();
    for (body, field, status) in [
        (
            serde_json::json!({"command": ["true"], "stage_in": ["/etc/shadow:x"]}),
            "stage_in",
            400,
        ),
        (
            serde_json::json!({"command": ["true"], "stage_in": ["file:///etc/shadow:x"]}),
            "stage_in",
            400,
        ),
        (
            serde_json::json!({"command": ["true"], "stage_out": ["x:/tmp/x"]}),
            "stage_out",
            400,
        ),
        (
            serde_json::json!({"command": ["true"], "owner": "bob"}),
            "owner",
            403,
        ),
        (
            serde_json::json!({"command": ["true"], "memory": "lots"}),
            "memory",
            400,
        ),
        (serde_json::json!({"command": []}), "command", 400),
    ] {
        let r = alice.post(url("")).json(&body).send().unwrap();
        assert_eq!(r.status().as_u16(), status, "{body}");
        let v: Value = r.json().unwrap();
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let r = alice
        .post(url(""))
        .header("content-type", "application/xml")
        .body("<not-jsdl/>")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(r.json::<Value>().unwrap()["error"]["code"], "invalid_jsdl");
    assert_eq!(get(&admin, "").1.as_array().unwrap().len(), before);

    // Cancel through the API ends a running job.
    let r = alice
        .post(url(""))
        .json(&serde_json::json!({"command": ["sleep", "600"]}))
        .send()
        .unwrap();
    let long = r.json::<Value>().unwrap()["job"]["id"].as_i64().unwrap();
    let t = Instant::now();
    while get(&alice, &format!("/{long}")).1["state"] != "running" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "job {long} never ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = alice.post(url(&format!("/{long}/cancel"))).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(wait_final(long)["state"], "cancelled");

    // The same through the CLI with --server, with the output of the local commands.
    let tokens: BTreeMap<&str, String> = ["alice", "bob", "site-admin"]
        .into_iter()
        .map(|u| (u, srv.token_for(u)))
        .collect();
    let remote = |user: &str, args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_vfarm"))
            .args(["--server", &srv.base])
            .args(args)
            .env("VFARM_TOKEN", &tokens[user])
            .env_remove("VFARM_DATA_DIR")
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (o.status.code(), text(&o.stdout), text(&o.stderr))
    };
    let jsdl_file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/jsdl/gridsam/helloworld.jsdl");
    let jsdl_file = jsdl_file.to_str().unwrap();
    let (code, out, err) = remote("alice", &["job", "submit", "--jsdl", jsdl_file]);
    assert_eq!(code, Some(0), "{err}");
    let id: i64 = out.trim().parse().expect("submit prints the job id");
    assert!(err.contains(&format!("job {id} queued")), "{err}");
    let (code, out, _) = remote("alice", &["job", "wait", &id.to_string()]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), format!("{id} succeeded (exit) exit 0").as_str())
    );
    let (code, out, _) = remote("alice", &["job", "logs", &id.to_string()]);
    assert_eq!((code, out.as_str()), (Some(0), "hello world\n"));
    // `show` answers as the local command does, without the server's directory.
    let (code, out, err) = remote(
        "alice",
        &["--output", "json", "job", "show", &id.to_string()],
    );
    assert_eq!(code, Some(0), "{err}");
    let mut there: Value = serde_json::from_str(&out).unwrap();
    let mut here = vf.show(id);
    for v in [&mut there, &mut here] {
        let o = v.as_object_mut().unwrap();
        // The server's directory is the CLI's; the downloads are the API's.
        for k in ["dir", "outputs", "streams"] {
            o.remove(k);
        }
    }
    assert_eq!(there, here);
    // Another user gets "not found" with the exit status of a missing object.
    for args in [
        vec!["job", "show"],
        vec!["job", "logs"],
        vec!["job", "cancel"],
    ] {
        let mut a = args.clone();
        let id = id.to_string();
        a.push(&id);
        let (code, _, err) = remote("bob", &a);
        assert_eq!(code, Some(3), "{a:?}: {err}");
        assert!(err.contains("job_not_found"), "{a:?}: {err}");
    }
    let (_, out, _) = remote("site-admin", &["--output", "json", "job", "ls"]);
    let all: Value = serde_json::from_str(&out).unwrap();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == id && j["owner"] == "alice"),
        "{all}"
    );
    // Flags beside a JSDL file would be lost over the API: refused, nothing stored.
    let before = get(&admin, "").1.as_array().unwrap().len();
    let (code, _, err) = remote(
        "alice",
        &["job", "submit", "--jsdl", jsdl_file, "--cpus", "1"],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("jsdl"), "{err}");
    assert_eq!(get(&admin, "").1.as_array().unwrap().len(), before);
    // A JSON job, cancelled while it runs: `cancel` waits for the end, as locally.
    let (_, out, err) = remote("alice", &["job", "submit", "--", "sleep", "600"]);
    let long: i64 = out.trim().parse().unwrap_or_else(|_| panic!("{err}"));
    let t = Instant::now();
    while get(&alice, &format!("/{long}")).1["state"] != "running" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "job {long} never ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = remote("alice", &["job", "cancel", &long.to_string()]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), format!("{long} cancelled").as_str()),
        "{err}"
    );
    let (code, out, _) = remote("alice", &["--output", "json", "job", "queues"]);
    assert_eq!(code, Some(0));
    let q: Value = serde_json::from_str(&out).unwrap();
    assert!(q["config"]["queues"]["batch"].is_object(), "{q}");
}

/// Acceptance 3 (and cancel): the wall-time limit kills and records why; keep-on-failure
/// leaves a stopped instance with a `failure` snapshot; cancel works queued and running.
#[test]
fn walltime_keep_on_failure_and_cancel() {
    let vf = Vf::new("jobs-walltime");
    let server = Server::start(&vf.data);
    eprintln!("jobs dispatched by the service at {}", server.base);
    let wall = vf.submit(&["--walltime", "2s", "--", "sleep", "60"]);
    let kept = vf.submit(&[
        "--keep-on-failure",
        "--",
        "sh",
        "-c",
        "echo broken > /tmp/job/state; exit 4",
    ]);
    // Issue 16, acceptance 3: a command that exits 124 by itself was once taken for a
    // wall-time kill.
    let own124 = vf.submit(&["--walltime", "5m", "--", "sh", "-c", "exit 124"]);
    let t = Instant::now();
    vf.wait(&[wall, kept, own124], 60);
    let v = vf.show(own124);
    assert_eq!(
        (
            v["state"].as_str(),
            v["reason"].as_str(),
            v["exit_code"].as_i64()
        ),
        (Some("failed"), Some("exit"), Some(124)),
        "{v:#}"
    );
    assert!(v["error"].is_null(), "{v:#}");
    let v = vf.show(wall);
    assert_eq!(
        (
            v["state"].as_str(),
            v["reason"].as_str(),
            v["exit_code"].as_i64()
        ),
        (Some("failed"), Some("walltime"), Some(124)),
        "{v:#}"
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("wall-time limit of 2 s"),
        "{v:#}"
    );
    let run = v["run_secs"].as_f64().unwrap();
    assert!((2.0..30.0).contains(&run), "ran {run}s with a 2s wall time");
    assert!(t.elapsed() < Duration::from_secs(50));

    let v = vf.show(kept);
    assert_eq!(
        (v["state"].as_str(), v["exit_code"].as_i64()),
        (Some("failed"), Some(4)),
        "{v:#}"
    );
    let inst = v["instance_kept"]
        .as_str()
        .expect("a kept instance")
        .to_string();
    let snaps = vf.ok(&["snapshot", "ls", &inst]);
    assert!(snaps.contains("failure"), "{snaps}");
    vf.ok(&["instance", "start", &inst]);
    assert_eq!(
        vf.ok(&["instance", "exec", &inst, "--", "cat", "/tmp/job/state"]),
        "broken\n"
    );
    vf.ok(&["instance", "destroy", &inst]);

    // Cancel a running job (its instance goes) and a queued one (it never starts).
    let running = vf.submit(&["--cpus", "2", "--", "sleep", "60"]);
    let queued = vf.submit(&["--", "true"]);
    vf.until(running, "running", 30, |v| v["state"] == "running");
    assert_eq!(vf.show(queued)["state"], "queued", "capacity is full");
    assert_eq!(
        vf.ok(&["job", "cancel", &queued.to_string()]).trim(),
        format!("{queued} cancelled")
    );
    assert_eq!(
        vf.ok(&["job", "cancel", &running.to_string()]).trim(),
        format!("{running} cancelled")
    );
    let v = vf.show(running);
    assert_eq!(v["reason"], "cancelled");
    let v = vf.show(queued);
    assert!(
        events(&v, "claim").is_empty(),
        "a cancelled queued job was claimed: {v:#}"
    );
    let left = vf.json(&["instance", "ls"]);
    assert!(
        left.as_array().unwrap().is_empty(),
        "instances left: {left:#}"
    );
    // Cancelling a finished job changes nothing.
    assert_eq!(
        vf.ok(&["job", "cancel", &wall.to_string()]).trim(),
        format!("{wall} failed")
    );
    drop(server);

    // Refused at submit, naming the field: nothing is stored.
    for (args, field) in [
        (vec!["--cpus", "3", "--", "true"], "cpus"),
        (vec!["--memory", "64G", "--", "true"], "memory"),
        (vec!["--queue", "nope", "--", "true"], "queue"),
        (
            vec![
                "--queue",
                "route",
                "--os",
                "LINUX",
                "--os-version",
                "11",
                "--",
                "true",
            ],
            "queue",
        ),
        (
            vec!["--os", "WINNT", "--image", "minbase", "--", "true"],
            "os",
        ),
        (vec!["--os", "LINUX", "--arch", "arm64", "--", "true"], "os"),
        (vec!["--walltime", "5x", "--", "true"], "walltime"),
        (vec!["--driver", "qemu", "--", "true"], "driver"),
        (
            vec!["--stage-in", "/nonexistent/file:x", "--", "true"],
            "stage-in",
        ),
    ] {
        let before = vf.json(&["job", "ls"]).as_array().unwrap().len();
        let mut a = vec!["job", "submit", "--output", "json"];
        a.extend(&args);
        let o = vf.run(&a);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let doc: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        if field != "os" || args[1] != "WINNT" {
            assert_eq!(doc["error"]["field"], field, "{args:?}: {doc:#}");
        }
        assert_eq!(
            vf.json(&["job", "ls"]).as_array().unwrap().len(),
            before,
            "{args:?} stored a job"
        );
    }
}

fn instances_with_hostname(vf: &Vf, host: &str) -> usize {
    vf.json(&["instance", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["hostname"] == host)
        .count()
}

/// Acceptance 4: kill -9 of the service with jobs queued and running: the running ones
/// finish on their own, and after a restart every job finishes exactly once. A runner that
/// dies is recorded as lost (never re-run) and its instance removed.
#[test]
fn killed_service_loses_no_job_and_runs_none_twice() {
    let vf = Vf::new("jobs-kill9");
    let ids: Vec<i64> = (0..6).map(|_| vf.submit(&["--", "sleep", "3"])).collect();
    let server = Server::start(&vf.data);
    vf.until(ids[0], "running", 60, |v| v["state"] == "running");
    drop(server); // SIGKILL
    let states: Vec<String> = ids
        .iter()
        .map(|i| vf.show(*i)["state"].as_str().unwrap().to_string())
        .collect();
    assert!(
        states.iter().any(|s| s == "queued"),
        "all started already: {states:?}"
    );
    // The running jobs end without a service.
    vf.until(ids[0], "finished without the service", 60, |v| {
        v["state"] == "succeeded"
    });

    let server = Server::start(&vf.data);
    vf.wait(&ids, 120);
    for id in &ids {
        let v = vf.show(*id);
        assert_eq!(v["state"], "succeeded", "{v:#}");
        for kind in ["claim", "runner", "start", "end"] {
            assert_eq!(events(&v, kind).len(), 1, "job {id}: {kind} events: {v:#}");
        }
    }

    // A runner killed outright: the job is lost, not re-run, and its instance removed.
    let lost = vf.submit(&["--", "sleep", "60"]);
    let v = vf.until(lost, "running", 60, |v| v["state"] == "running");
    let host = format!("vfjob-{lost}");
    let t = Instant::now();
    while instances_with_hostname(&vf, &host) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "job {lost} has no instance"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = v["runner_pid"].as_i64().unwrap();
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let v = vf.until(lost, "lost", 30, |v| v["state"] == "failed");
    assert_eq!(v["reason"], "lost", "{v:#}");
    let t = Instant::now();
    while instances_with_hostname(&vf, &host) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the lost job's instance is still there"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    let v = vf.show(lost);
    assert_eq!(
        events(&v, "claim").len(),
        1,
        "a lost job was started again: {v:#}"
    );
    drop(server);
}

/// Acceptance 5: the same job with `--backend slurm` runs through a real Slurm cluster
/// (slurmctld + slurmd + munge, started here), and its exit status and output come back
/// into the job record; cancel reaches it; what Slurm cannot place is refused at submit.
#[test]
fn slurm_backend_runs_the_job_and_reports_back() {
    let mut cluster =
        vfarm_slurm::testcluster::TestCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let vf = Vf::new("jobs-slurm");
    std::fs::write(
        vf.data.join("jobs.toml"),
        format!(
            "{CONFIG}\n[slurm]\nconf = \"{}\"\n",
            cluster.conf().display()
        ),
    )
    .unwrap();
    // No `vfarm serve`: Slurm dispatches, the payload records the end.
    let id = vf.submit(&[
        "--backend",
        "slurm",
        "--",
        "sh",
        "-c",
        "echo from-slurm $(hostname); echo oops >&2; exit 5",
    ]);
    vf.wait(&[id], 120);
    let v = vf.show(id);
    assert_eq!(
        (
            v["state"].as_str(),
            v["reason"].as_str(),
            v["exit_code"].as_i64()
        ),
        (Some("failed"), Some("exit"), Some(5)),
        "{v:#}"
    );
    assert_eq!(v["backend"], "slurm");
    let sid = v["slurm_id"].as_i64().expect("a Slurm job id");
    let info = cluster.slurm().job(sid as u64).unwrap();
    assert!(info.state.is_terminal(), "{info:?}");
    let logs = vf.run(&["job", "logs", &id.to_string()]);
    let out = String::from_utf8_lossy(&logs.stdout);
    assert!(out.contains(&format!("from-slurm vfjob-{id}")), "{out}");
    assert!(String::from_utf8_lossy(&logs.stderr).contains("oops"));
    // The instance's console log is kept with the job after the instance is gone.
    let console = vf.run(&["job", "logs", &id.to_string(), "--console"]);
    assert!(
        String::from_utf8_lossy(&console.stdout).contains(&format!("from-slurm vfjob-{id}")),
        "{}",
        String::from_utf8_lossy(&console.stderr)
    );

    // Cancel reaches the Slurm job; the instance goes with it.
    let long = vf.submit(&["--backend", "slurm", "--", "sleep", "120"]);
    vf.until(long, "running", 60, |v| v["state"] == "running");
    let host = format!("vfjob-{long}");
    let t = Instant::now();
    while instances_with_hostname(&vf, &host) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "job {long} has no instance"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        vf.ok(&["job", "cancel", &long.to_string()]).trim(),
        format!("{long} cancelled")
    );
    let t = Instant::now();
    while instances_with_hostname(&vf, &host) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the cancelled job's instance is left"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // More CPUs than any node has: Slurm's verdict, at submit.
    let o = vf.run(&[
        "job",
        "submit",
        "--backend",
        "slurm",
        "--cpus",
        "512",
        "--output",
        "json",
        "--",
        "true",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["error"]["code"], "slurm_unsatisfiable", "{doc:#}");
    cluster.stop().unwrap();
}

// Issue 22, acceptance 2: `job show ID --jsdl` of every JSDL test document vfarm accepts is a
// valid JSDL 1.0 + POSIX document (xmllint against the GFD.56 schemas in tests/data), and
// vfarm accepts it back as the same job.
#[test]
fn job_show_jsdl_validates_against_the_jsdl_and_posix_schemas() {
    common::require("xmllint");
    let vf = Vf::new("jobs-jsdl-out");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/jsdl");
    let schema = root.join("schema/jsdl-with-posix.xsd");
    let xmllint = |doc: &std::path::Path| {
        Command::new("xmllint")
            .arg("--noout")
            .arg("--schema")
            .arg(&schema)
            .arg(doc)
            .output()
            .expect("run xmllint")
    };
    let stdin_file = vf.data.join("stdin-for-jsdl");
    std::fs::write(&stdin_file, "input\n").unwrap();
    let stage_stdin = format!("{}:stdin", stdin_file.display());
    let out_dir = vf.data.join("jsdl-out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut docs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .filter(|d| d.path().is_dir() && d.file_name() != "schema")
        .flat_map(|d| {
            std::fs::read_dir(d.path())
                .unwrap()
                .flatten()
                .map(|f| f.path())
        })
        .collect();
    docs.sort();
    let mut accepted = Vec::new();
    for doc in &docs {
        // Every document gets a stage-in (posix.jsdl and spmd2.jsdl read `stdin`), so the
        // output has a DataStaging too.
        let o = vf.run(&[
            "job",
            "submit",
            "--jsdl",
            doc.to_str().unwrap(),
            "--stage-in",
            &stage_stdin,
        ]);
        if !o.status.success() {
            continue;
        }
        let id: i64 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
        let jsdl = vf.ok(&["job", "show", &id.to_string(), "--jsdl"]);
        let name = doc.file_name().unwrap().to_string_lossy().replace('.', "_");
        let out = out_dir.join(format!("{name}.jsdl"));
        std::fs::write(&out, &jsdl).unwrap();
        let v = xmllint(&out);
        assert!(
            v.status.success(),
            "job show --jsdl of {} does not validate:\n{}\n{jsdl}",
            doc.display(),
            String::from_utf8_lossy(&v.stderr)
        );
        // vfarm takes its own output back as the same command.
        let again = vf.submit(&["--jsdl", out.to_str().unwrap()]);
        assert_eq!(vf.show(again)["argv"], vf.show(id)["argv"], "{jsdl}");
        accepted.push(doc.strip_prefix(&root).unwrap().display().to_string());
    }
    eprintln!(
        "{} of {} test documents accepted; each one's `job show --jsdl` validates: {accepted:?}",
        accepted.len(),
        docs.len()
    );
    assert_eq!(accepted.len(), 5, "{accepted:?}");
    // The check can fail: an element POSIX does not define is refused by the same schemas.
    let good = std::fs::read_to_string(out_dir.join("helloworld_jsdl.jsdl")).unwrap();
    assert!(good.contains("<jsdl-posix:Executable>"), "{good}");
    let bad = out_dir.join("bad.jsdl");
    std::fs::write(
        &bad,
        good.replace(
            "<jsdl-posix:Executable>",
            "<jsdl-posix:Bogus/><jsdl-posix:Executable>",
        ),
    )
    .unwrap();
    assert!(!xmllint(&bad).status.success());
    // Through the API the same document (written from the spec the service answers with).
    // The jobs are cancelled first: the service's dispatcher is not to run them.
    let jobs = vf.json(&["job", "ls"]);
    let ids: Vec<String> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap().to_string())
        .collect();
    let mut cancel = vec!["job", "cancel"];
    cancel.extend(ids.iter().map(String::as_str));
    vf.ok(&cancel);
    let owner = jobs[0]["owner"].as_str().unwrap().to_string();
    let first = ids[0].clone();
    let server = Server::start(&vf.data);
    let remote = Command::new(env!("CARGO_BIN_EXE_vfarm"))
        .args(["--server", &server.base, "job", "show", &first, "--jsdl"])
        .env("VFARM_TOKEN", server.token_for(&owner))
        .env("VFARM_DATA_DIR", &vf.data)
        .output()
        .unwrap();
    common::assert_success(&remote, "job show --jsdl --server");
    assert_eq!(
        String::from_utf8_lossy(&remote.stdout),
        vf.ok(&["job", "show", &first, "--jsdl"])
    );
    drop(server);
    // An unknown job is refused naming it (exit 3), with nothing on stdout.
    let o = vf.run(&["job", "show", "999999", "--jsdl"]);
    assert_eq!(o.status.code(), Some(3), "{}", common::text(&o));
    assert!(o.stdout.is_empty());
}
