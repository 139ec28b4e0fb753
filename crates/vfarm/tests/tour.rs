//! The README's tour and the guide's commands stay true: the tour's block is run as written
//! (all but its VM part, which the QEMU tests cover), every `vfarm` command line of the README
//! and of docs/guide uses only subcommands and flags the binary has, and the refusals a
//! newcomer meets on the tour name their fix.

mod common;

use common::{fresh_dir, require, serving, text, tmp, vfarm_cmd, Vf};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The ```sh blocks of a markdown text, each as its lines.
fn sh_blocks(md: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut cur: Option<Vec<String>> = None;
    for line in md.lines() {
        match (&mut cur, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => cur = Some(Vec::new()),
            (Some(_), l) if l.starts_with("```") => blocks.push(cur.take().unwrap()),
            (Some(b), _) => b.push(line.to_string()),
            _ => {}
        }
    }
    blocks
}

/// The README's tour: the first sh block after `## Tour`.
fn tour() -> Vec<String> {
    let readme = read("README.md");
    let at = readme
        .find("\n## Tour")
        .expect("README has a `## Tour` section");
    sh_blocks(&readme[at..])
        .into_iter()
        .next()
        .expect("a sh block in the tour")
}

struct TourParts {
    script: Vec<String>,
    vm: Vec<String>,
    serve: String,
    open: String,
}

/// The tour split: what the test runs as a script, the VM part it leaves to the QEMU tests,
/// and the service lines it runs itself (on a free port).
fn split_tour(lines: &[String]) -> TourParts {
    let mut p = TourParts {
        script: Vec::new(),
        vm: Vec::new(),
        serve: String::new(),
        open: String::new(),
    };
    let mut in_vm = false;
    for l in lines {
        let t = l.trim();
        if t.starts_with('#') {
            in_vm = t.starts_with("# A VM");
            continue;
        }
        if in_vm {
            p.vm.push(t.to_string());
        } else if t.starts_with("vfarm serve ") {
            p.serve = t.to_string();
        } else if t.starts_with("xdg-open ") {
            p.open = t.to_string();
        } else if !t.is_empty() {
            p.script.push(t.to_string());
        }
    }
    p
}

#[test]
fn the_readme_is_short_and_links_every_guide_page() {
    let readme = read("README.md");
    let n = readme.lines().count();
    assert!(n <= 120, "README.md has {n} lines (at most 120)");
    let mut pages: Vec<String> = std::fs::read_dir(repo().join("docs/guide"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    assert!(pages.len() >= 7, "{pages:?}");
    for p in pages {
        assert!(
            readme.contains(&format!("(docs/guide/{p})")),
            "README.md does not link docs/guide/{p}"
        );
    }
    assert!(!readme.contains("What works today"));
    let t = tour();
    assert!(
        t.len() <= 40,
        "the tour has {} lines (about 40 at most)",
        t.len()
    );
    assert!(
        readme.contains("scripts/setup.sh && ") && readme.contains("\nscripts/test.sh\n"),
        "the two set-up commands"
    );
}

#[test]
fn the_readme_tour_runs() {
    for tool in ["runc", "mmdebstrap"] {
        require(tool);
    }
    let parts = split_tour(&tour());
    assert!(
        parts.vm.iter().any(|l| l.contains("--driver qemu")),
        "the tour's VM part (left to the QEMU tests) is not where expected: {:?}",
        parts.vm
    );
    assert!(!parts.serve.is_empty() && !parts.open.is_empty());
    let dir = fresh_dir("tour");
    let data = dir.join("data");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_vfarm")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = format!("set -euo pipefail\n{}\n", parts.script.join("\n"));
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&dir)
        .env("PATH", &path)
        .env("VFARM_DATA_DIR", &data)
        .env_remove("VFARM_OUTPUT")
        .env_remove("VFARM_SERVER")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "the tour failed:\n{script}\n{all}");
    for expected in ["core: works", "\n12.", "curl ", "reverted"] {
        assert!(all.contains(expected), "`{expected}` not in:\n{all}");
    }

    // The service part: as written, but on a free port.
    let listen = parts
        .serve
        .split_whitespace()
        .skip_while(|w| *w != "--listen")
        .nth(1)
        .unwrap()
        .to_string();
    assert!(
        parts.open.contains(&format!("http://{listen}/")),
        "the page opened is not the one served: {}",
        parts.open
    );
    let args: Vec<String> = parts
        .serve
        .trim_end_matches('&')
        .split_whitespace()
        .skip(1)
        .map(|w| {
            if w == listen {
                "127.0.0.1:0".into()
            } else {
                w.to_string()
            }
        })
        .collect();
    let mut cmd = vfarm_cmd(&data);
    cmd.args(&args);
    let (serve, base) = serving(cmd);
    let token_line = parts
        .script
        .iter()
        .find(|l| l.starts_with("vfarm token create"))
        .unwrap();
    let t = vfarm_cmd(&data)
        .args(token_line.split_whitespace().skip(1))
        .output()
        .unwrap();
    assert!(t.status.success(), "{}", text(&t));
    let token = String::from_utf8(t.stdout).unwrap().trim().to_string();
    let http = reqwest::blocking::Client::new();
    let page = http.get(format!("{base}/")).send().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().unwrap().contains("<html"), "the web page");
    let who = http
        .get(format!("{base}/api/v1/whoami"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(who.status().as_u16(), 200, "the printed token signs in");
    drop(serve);
}

/// `vfarm <path> --help`, cached.
fn help(cache: &mut HashMap<Vec<String>, String>, path: &[String]) -> String {
    cache
        .entry(path.to_vec())
        .or_insert_with(|| {
            let out = Command::new(env!("CARGO_BIN_EXE_vfarm"))
                .args(path)
                .arg("--help")
                .env("VFARM_DATA_DIR", tmp().join("tour-help"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "vfarm {path:?} --help: {}",
                text(&out)
            );
            String::from_utf8(out.stdout).unwrap()
        })
        .clone()
}

fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn has_flag(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(i, _)| {
        let after = help[i + flag.len()..].chars().next();
        let before = help[..i].chars().last();
        !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
            && !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// Every `vfarm …` command of these shell lines, as words.
fn commands(lines: &[String]) -> Vec<Vec<String>> {
    let mut joined = Vec::new();
    let mut cur = String::new();
    for l in lines {
        let l = match l.find(" #") {
            Some(i) => &l[..i],
            None if l.trim_start().starts_with('#') => "",
            None => l,
        };
        if let Some(s) = l.trim_end().strip_suffix('\\') {
            cur.push_str(s);
            cur.push(' ');
            continue;
        }
        cur.push_str(l);
        joined.push(std::mem::take(&mut cur));
    }
    let mut out = Vec::new();
    for l in joined {
        for seg in l.split([';', '|']).flat_map(|s| s.split("&&")) {
            let seg = seg
                .split("$(")
                .last()
                .unwrap()
                .trim()
                .trim_end_matches([')', '&']);
            let Some(rest) = seg.trim().strip_prefix("vfarm ") else {
                continue;
            };
            out.push(rest.split_whitespace().map(str::to_string).collect());
        }
    }
    out
}

#[test]
fn every_documented_command_and_flag_exists() {
    let mut cache = HashMap::new();
    let mut docs = vec!["README.md".to_string()];
    for e in std::fs::read_dir(repo().join("docs/guide")).unwrap() {
        docs.push(format!(
            "docs/guide/{}",
            e.unwrap().file_name().to_string_lossy()
        ));
    }
    let mut checked = 0;
    for doc in &docs {
        for block in sh_blocks(&read(doc)) {
            for words in commands(&block) {
                let mut path: Vec<String> = Vec::new();
                let mut flags = Vec::new();
                let mut i = 0;
                while i < words.len() {
                    let w = &words[i];
                    if w == "--" {
                        break;
                    }
                    if w.starts_with('-') {
                        flags.push((path.clone(), w.split('=').next().unwrap().to_string()));
                        i += 1;
                        continue;
                    }
                    let h = help(&mut cache, &path);
                    if subcommands(&h).contains(w) {
                        path.push(w.clone());
                    } else if path.is_empty() {
                        // A value of a global flag given before the subcommand.
                    } else {
                        // An argument: the subcommand path is complete.
                        let h2 = help(&mut cache, &path);
                        assert!(
                            subcommands(&h2).is_empty()
                                || !w.chars().all(|c| c.is_ascii_lowercase()),
                            "{doc}: `vfarm {}`: `{w}` is not a subcommand of `vfarm {}`",
                            words.join(" "),
                            path.join(" ")
                        );
                    }
                    i += 1;
                }
                assert!(
                    !path.is_empty(),
                    "{doc}: `vfarm {}`: no subcommand",
                    words.join(" ")
                );
                let full = help(&mut cache, &path);
                for (at, flag) in flags {
                    // A flag before the subcommand belongs to `vfarm` itself (global flags
                    // are listed by every subcommand too).
                    let h = if at.is_empty() {
                        help(&mut cache, &[])
                    } else {
                        full.clone()
                    };
                    assert!(
                        has_flag(&h, &flag) || has_flag(&full, &flag),
                        "{doc}: `vfarm {}`: `vfarm {}` has no {flag}",
                        words.join(" "),
                        path.join(" ")
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} flags checked");
}

#[test]
fn refusals_on_the_tour_name_their_fix() {
    require("runc");
    require("qemu-system-x86_64");
    let vf = Vf::with_minbase(fresh_dir("tour-refusals"));
    let refused = |args: &[&str], code: i32, fix: &str| {
        let o = vf.run(args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(code), "vfarm {args:?}: {t}");
        assert!(
            t.contains(fix),
            "vfarm {args:?} does not name the fix `{fix}`:\n{t}"
        );
    };
    refused(
        &["run", "--image", "web", "--", "true"],
        3,
        "fix: `vfarm image ls` lists the images; `vfarm image build --suite bookworm --name web` builds one",
    );
    vf.ok(&[
        "instance", "create", "--image", "minbase", "--name", "n1", "--", "sleep", "infinity",
    ]);
    refused(
        &[
            "instance", "create", "--image", "minbase", "--name", "n1", "--", "sleep", "infinity",
        ],
        2,
        "fix: choose another --name, or remove the old one: vfarm instance destroy n1",
    );
    vf.ok(&["instance", "destroy", "n1"]);
    refused(
        &["instance", "exec", "n1", "--", "hostname"],
        3,
        "fix: `vfarm instance ls` lists the instances",
    );
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    refused(
        &["serve", "--listen", &addr],
        1,
        "fix: another process listens there: choose another port with --listen ADDR:PORT",
    );
    refused(
        &["serve", "--listen", "0.0.0.0:0"],
        2,
        "add --tls-cert FILE --tls-key FILE",
    );
    // The VM part of the tour with an image that cannot boot.
    refused(
        &[
            "instance",
            "create",
            "--driver",
            "qemu",
            "--profile",
            "fast",
            "--image",
            "minbase",
        ],
        2,
        "build it with --boot vm",
    );
    let o = vf.run(&["run", "--image", "web", "--output", "json", "--", "true"]);
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        doc["error"]["fix"]
            .as_str()
            .unwrap()
            .contains("vfarm image ls"),
        "{doc}"
    );
}

/// Acceptance 3: a Slurm submit on a host without a Slurm configuration is one line naming
/// what to configure, and leaves no job record; a configured slurm.conf that is not there
/// is named at once (scontrol would retry it for a minute).
#[test]
fn slurm_submit_without_slurm_is_one_line_and_stores_nothing() {
    require("scontrol");
    let data = fresh_dir("tour-slurm");
    let cases: [(Option<&str>, &[&str], &str); 2] = [
        (None, &["--", "hostname"], "under [slurm] in"),
        (
            Some("[queues.batch]\n[slurm]\nconf = \"nope/slurm.conf\"\n"),
            &["--image", "web", "--", "hostname"],
            "`nope/slurm.conf` (conf under [slurm] in",
        ),
    ];
    for (config, args, fix) in cases {
        if let Some(c) = config {
            std::fs::write(data.join("jobs.toml"), c).unwrap();
        }
        let o = vfarm_cmd(&data)
            .args(["job", "submit", "--backend", "slurm"])
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{}", text(&o));
        assert_eq!(err.lines().count(), 1, "not one line:\n{err}");
        assert!(
            err.contains(fix) && err.contains("jobs.toml"),
            "does not name `{fix}`: {err}"
        );
        let ls = vfarm_cmd(&data)
            .args(["job", "ls", "--output", "json"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&ls.stdout).trim(),
            "[]",
            "a refused submit left a job"
        );
    }
}

/// `vfarm serve` says what it does at info level without -v: its configuration, then each
/// request with its status; `--log-format json` makes each line a JSON object.
#[test]
fn serve_logs_config_and_requests() {
    use std::io::BufRead;
    let data = fresh_dir("tour-serve-log");
    let mut cmd = vfarm_cmd(&data);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env_remove("VFARM_LOG")
        .stderr(Stdio::piped());
    let (mut serve, base) = serving(cmd);
    let stderr = serve.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let page = reqwest::blocking::get(format!("{base}/healthz")).unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let mut seen = Vec::new();
    let wanted = |seen: &[serde_json::Value]| {
        let config = seen
            .iter()
            .any(|v| v["fields"]["message"] == "config loaded" && v["level"] == "INFO");
        let request = seen.iter().any(|v| {
            v["span"]["uri"] == "/healthz" && v["fields"]["status"] == 200 && v["level"] == "INFO"
        });
        config && request
    };
    while !wanted(&seen) {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no config and request lines in:\n{seen:#?}"));
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        seen.push(v);
    }
    drop(serve);
}

/// Routing by OS takes only images a driver can run, and says which it chose and why; when
/// none can, the refusal says for each matching image which drivers run it.
#[test]
fn routing_by_os_says_what_it_chose() {
    let vf = Vf::with_minbase(fresh_dir("tour-route"));
    std::fs::write(
        vf.data.join("jobs.toml"),
        "default_queue = \"batch\"\n[queues.batch]\n[queues.route]\nroutes = [{ os = \"LINUX\", queue = \"batch\" }]\n",
    )
    .unwrap();
    let o = vf.run(&[
        "job", "submit", "--queue", "route", "--os", "LINUX", "--driver", "oci", "--", "true",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("routed to image minbase") && t.contains("the newest of 1 image(s)"),
        "{t}"
    );
    let o = vf.run(&[
        "job", "submit", "--queue", "route", "--os", "LINUX", "--driver", "qemu", "--output",
        "json", "--", "true",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["error"]["field"], "os", "{doc}");
    assert!(
        doc["error"]["message"]
            .as_str()
            .unwrap()
            .contains("minbase Linux/12/")
            && doc["error"]["message"]
                .as_str()
                .unwrap()
                .contains("(runs with oci)"),
        "{doc}"
    );
    let jobs = vf.json(&["job", "ls"]);
    assert_eq!(jobs.as_array().unwrap().len(), 1, "{jobs}");
}

/// `job queues` in table mode is a table (it printed raw JSON), and JSON mode the document.
#[test]
fn job_queues_prints_a_table() {
    let data = fresh_dir("tour-queues");
    let o = vfarm_cmd(&data).args(["job", "queues"]).output().unwrap();
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", text(&o));
    assert!(t.starts_with("capacity: "), "{t}");
    let batch = t
        .lines()
        .find(|l| l.starts_with("batch* "))
        .expect("batch row");
    assert!(batch.contains("512M") && batch.contains("3600s"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("route ") && l.contains("-> batch")),
        "{t}"
    );
    let o = vfarm_cmd(&data)
        .args(["job", "queues", "--output", "json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["config"]["default_queue"], "batch");
}

/// One exit code per error code: a missing input file is the caller's input at fault
/// (exit 2, naming the flag or argument) whichever command reads it.
#[test]
fn a_missing_input_file_is_exit_2_naming_its_field() {
    let data = fresh_dir("tour-missing-input");
    let missing = data.join("no-such-file");
    let m = missing.to_str().unwrap();
    let ca = data.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["image", "import", m], "file"),
        (&["imagelist", "create", "-f", m], "file"),
        (&["imagelist", "verify", m, "--ca-dir", ca], "file"),
        (&["imagelist", "publish", m], "file"),
        (&["job", "submit", "--jsdl", m], "jsdl"),
    ];
    for (args, field) in cases {
        let o = vfarm_cmd(&data)
            .args(args)
            .args(["--output", "json"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(doc["error"]["field"], field, "{args:?}: {doc}");
        assert!(
            doc["error"]["message"].as_str().unwrap().contains(m),
            "{args:?} does not name the file: {doc}"
        );
    }
}
