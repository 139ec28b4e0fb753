//! End-to-end tests of the image farm: the real `vfarm` binary driving the real mmdebstrap,
//! tar, e2fsprogs and qemu-img, and `vfarm serve` answering real HTTP clients (reqwest and
//! curl). One data directory per test run; the base image is built once and shared.
//!
//! These tests need root and the packages `scripts/setup.sh` installs; a missing component
//! fails the test with its name, never skips it.

mod common;
use common::{assert_success, require, text, vfarm, Server};

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha512};

const BIN: &str = env!("CARGO_BIN_EXE_vfarm");

struct Fixture {
    data: PathBuf,
    /// `image build` output of the shared base spec.
    built: Value,
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

/// Tests that add or refuse images compare the repository before and after; they take this
/// lock so that another test's new image does not land in between.
static REPO_WRITES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn repo_writes() -> std::sync::MutexGuard<'static, ()> {
    REPO_WRITES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The base spec every test can rely on: bookworm minbase + curl, as tar and qcow2.
const BASE_SPEC: &[&str] = &[
    "--suite",
    "bookworm",
    "--variant",
    "minbase",
    "--package",
    "curl",
    "--format",
    "tar",
    "--format",
    "qcow2",
];

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(|| {
        for t in [
            "mmdebstrap",
            "tar",
            "mkfs.ext4",
            "e2fsck",
            "qemu-img",
            "curl",
            "setpriv",
            "unshare",
        ] {
            require(t);
        }
        assert!(
            // SAFETY-free: reading the effective uid through the id command keeps the test
            // crate free of unsafe code.
            String::from_utf8_lossy(&Command::new("id").arg("-u").output().unwrap().stdout).trim()
                == "0",
            "end-to-end image builds need root (mmdebstrap --mode=root)"
        );
        let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("image-farm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        common::remove_at_exit(&data);
        let mut args = vec!["image", "build"];
        args.extend_from_slice(BASE_SPEC);
        args.extend(["--output", "json"]);
        let out = vfarm(&data, &args);
        assert_success(&out, "base build");
        let built: Value =
            serde_json::from_slice(&out.stdout).expect("build prints one JSON document");
        Fixture { data, built }
    })
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn sha512_file(p: &Path) -> (u64, String) {
    let mut f = std::fs::File::open(p).unwrap();
    let mut h = Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    (n, hex::encode(h.finalize()))
}

fn artifact<'a>(v: &'a Value, format: &str) -> &'a Value {
    v["artifacts"]
        .as_array()
        .expect("artifacts array")
        .iter()
        .find(|a| a["format"] == format)
        .unwrap_or_else(|| panic!("no {format} artifact in {v}"))
}

fn ls_ids(data: &Path) -> Vec<String> {
    let out = vfarm(data, &["image", "ls", "--output", "json"]);
    assert_success(&out, "image ls");
    let mut ids: Vec<String> = json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn build_prints_json_and_identical_spec_is_cached() {
    let f = fixture();
    let b = &f.built;
    let id = b["id"].as_str().unwrap();
    assert_eq!(id.len(), 64, "id is a sha256: {b}");
    assert_eq!(b["cached"], false);
    assert!(b.get("name").is_some());
    for a in b["artifacts"].as_array().unwrap() {
        for key in ["format", "path", "size", "sha512"] {
            assert!(a.get(key).is_some(), "artifact lacks {key}: {a}");
        }
    }
    let mut args = vec!["image", "build"];
    args.extend_from_slice(BASE_SPEC);
    args.extend(["--output", "json"]);
    let again = vfarm(&f.data, &args);
    assert_success(&again, "second build");
    let again = json(&again);
    assert_eq!(again["id"], id);
    assert_eq!(again["cached"], true);
}

#[test]
fn artifacts_hold_what_the_record_says() {
    let f = fixture();
    let tar = artifact(&f.built, "tar");
    let tar_path = PathBuf::from(tar["path"].as_str().unwrap());
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&tar_path)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().any(|l| l == "./usr/bin/curl"),
        "tar lacks usr/bin/curl"
    );
    let qcow = artifact(&f.built, "qcow2");
    let qcow_path = PathBuf::from(qcow["path"].as_str().unwrap());
    let check = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&qcow_path)
        .output()
        .unwrap();
    assert_success(&check, "qemu-img check");
    for (a, p) in [(tar, &tar_path), (qcow, &qcow_path)] {
        let (size, sha) = sha512_file(p);
        assert_eq!(a["size"].as_u64().unwrap(), size, "size of {}", p.display());
        assert_eq!(
            a["sha512"].as_str().unwrap(),
            sha,
            "sha512 of {}",
            p.display()
        );
    }
}

#[test]
fn serve_downloads_ranges_and_osfarm_orders() {
    let f = fixture();
    let id = f.built["id"].as_str().unwrap();
    let tar = artifact(&f.built, "tar");
    let srv = Server::start(&f.data);
    // `/api/v1/*` needs an identity (a token here); `/repository` and `/osfarm` do not.
    let http = srv.client();

    let url = format!(
        "{}/api/v1/images/{}/download?format=tar",
        srv.base,
        &id[..12]
    );
    let resp = http.get(&url).send().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        tar["size"].as_u64().unwrap().to_string()
    );
    assert_eq!(
        resp.headers()["etag"].to_str().unwrap(),
        format!("\"{}\"", tar["sha512"].as_str().unwrap())
    );
    let body = resp.bytes().unwrap();
    assert_eq!(
        hex::encode(Sha512::digest(&body)),
        tar["sha512"].as_str().unwrap()
    );

    let part = http
        .get(&url)
        .header("Range", "bytes=1000-1999")
        .send()
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().unwrap().as_ref(), &body[1000..2000]);

    // The stable per-file URL that published image lists point at.
    let by_file = http
        .get(format!("{}/repository/{id}/rootfs.tar", srv.base))
        .send()
        .unwrap();
    assert_eq!(by_file.status(), 200);
    assert_eq!(
        hex::encode(Sha512::digest(by_file.bytes().unwrap())),
        tar["sha512"].as_str().unwrap()
    );
    let missing = http
        .get(format!("{}/repository/{id}/disk.iso", srv.base))
        .send()
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The OS-Farm order with curl alone: the same spec finds the same image.
    let order = format!(
        "{}/osfarm/create?name=&class=bookworm&arch=amd64&filetype=.tar&package=curl",
        srv.base
    );
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", &order])
        .output()
        .unwrap();
    assert_success(&out, "curl osfarm order");
    assert_eq!(json(&out)["id"], id);
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("osfarm-{}.tar", std::process::id()));
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-o"])
        .arg(&file)
        .arg(format!("{order}&download=on"))
        .output()
        .unwrap();
    assert_success(&out, "curl osfarm download");
    assert_eq!(sha512_file(&file).1, tar["sha512"].as_str().unwrap());
    let _ = std::fs::remove_file(&file);
    let bad = Command::new("curl")
        .args([
            "-s",
            "-w",
            "%{http_code}",
            &format!("{}/osfarm/create?class=nosuch", srv.base),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(text.ends_with("400") && text.contains("nosuch"), "{text}");

    // POST a spec: 202 + an operation that finishes with the (cached) image.
    let resp = http
        .post(format!("{}/api/v1/images", srv.base))
        .json(
            &serde_json::json!({ "suite": "bookworm", "packages": ["curl"], "formats": ["qcow2"] }),
        )
        .send()
        .unwrap();
    assert_eq!(resp.status(), 202);
    let op: Value = resp.json().unwrap();
    let op_url = format!(
        "{}{}?wait=120",
        srv.base,
        op["links"]["self"].as_str().unwrap()
    );
    let done: Value = http.get(&op_url).send().unwrap().json().unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["id"], id);

    // A change through the API is the caller's in the event log, not the server's user.
    let _w = repo_writes();
    let copy = f.data.join("api-actor.tar");
    std::fs::copy(tar["path"].as_str().unwrap(), &copy).unwrap();
    let imp = import(&f.data, &copy, "api-actor");
    let _ = std::fs::remove_file(&copy);
    let removed = imp["id"].as_str().unwrap().to_string();
    // An imported image is public: an admin removes it.
    drop(srv);
    let srv = Server::start_with(&f.data, &["--admin", "vfarm-tests"]);
    let resp = srv
        .client()
        .delete(format!("{}/api/v1/images/api-actor", srv.base))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let events = common::store_of(&f.data).events(50).unwrap();
    let e = events
        .iter()
        .rfind(|e| e.kind == "image.removed" && e.object == removed)
        .expect("an image.removed event");
    assert_eq!(e.actor, "vfarm-tests", "{e:?}");
}

#[test]
fn bad_specs_are_refused_by_name_and_change_nothing() {
    let f = fixture();
    let _w = repo_writes();
    let before = ls_ids(&f.data);
    let cases: &[(&[&str], &str)] = &[
        (&["--suite", "wheezy-nope"], "wheezy-nope"),
        (&["--group", "kde-desktop"], "kde-desktop"),
        (&["--format", "iso"], "iso"),
        (&["--format", "raw", "--size", "4X"], "4X"),
        (&["--format", "raw", "--size", "1K"], "1K"),
        (&["--format", "qcow2", "--size", "70M"], "size"),
        (
            &["--package", "nosuchpkg-vfarm-test"],
            "nosuchpkg-vfarm-test",
        ),
    ];
    for (extra, named) in cases {
        let mut args = vec!["image", "build"];
        if !extra.contains(&"--suite") {
            args.extend(["--suite", "bookworm"]);
        }
        args.extend_from_slice(extra);
        let out = vfarm(&f.data, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(
            stderr.contains(named),
            "{extra:?}: error does not name `{named}`: {stderr}"
        );
    }
    assert_eq!(
        ls_ids(&f.data),
        before,
        "a refused spec changed the repository"
    );
}

#[test]
fn identical_concurrent_builds_build_once_on_the_cached_base() {
    let f = fixture();
    let _w = repo_writes();
    let spawn = || {
        Command::new(BIN)
            .args([
                "image",
                "build",
                "--suite",
                "bookworm",
                "--package",
                "curl",
                "--package",
                "wget",
                "--output",
                "json",
            ])
            .env("VFARM_DATA_DIR", &f.data)
            .env("CI", "true")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_success(&a, "first concurrent build");
    assert_success(&b, "second concurrent build");
    let (a, b) = (json(&a), json(&b));
    assert_eq!(a["id"], b["id"]);
    let built: Vec<&Value> = [&a, &b]
        .into_iter()
        .filter(|v| v["cached"] == false)
        .collect();
    assert_eq!(
        built.len(),
        1,
        "exactly one of two identical builds builds: {a} {b}"
    );
    assert_eq!(
        built[0]["base_cached"], true,
        "the base layer of the shared spec is reused"
    );
    let id = a["id"].as_str().unwrap();
    let logs = std::fs::read_dir(f.data.join("logs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(id))
        .count();
    assert_eq!(logs, 1, "one build log for one build");

    // Issue 26: every build records its exact packages; the diff to the base names wget.
    let base = f.built["id"].as_str().unwrap();
    let m = json(&vfarm(
        &f.data,
        &["image", "manifest", base, "--output", "json"],
    ));
    let pkgs = m["packages"].as_array().unwrap();
    let curl = pkgs
        .iter()
        .find(|p| p["name"] == "curl")
        .expect("curl in the manifest");
    assert!(curl["version"].as_str().unwrap().contains('.'), "{curl}");
    assert_eq!(curl["arch"], "amd64");
    assert!(pkgs
        .iter()
        .any(|p| p["name"] == "libc6" && p["source"] == "glibc"));
    assert!(!pkgs.iter().any(|p| p["name"] == "wget"));
    let d = vfarm(&f.data, &["image", "diff", base, id]);
    assert_eq!(
        d.status.code(),
        Some(1),
        "manifests that differ: exit 1\n{}",
        text(&d)
    );
    let out = String::from_utf8_lossy(&d.stdout);
    assert!(out.lines().any(|l| l.starts_with("+ wget ")), "{out}");
    assert!(
        !out.lines()
            .any(|l| l.starts_with("- ") || l.starts_with("~ ")),
        "{out}"
    );
    let same = vfarm(&f.data, &["image", "diff", id, id]);
    assert_eq!(same.status.code(), Some(0), "{}", text(&same));
}

#[test]
fn killed_build_leaves_no_half_image_and_keeps_its_log() {
    let f = fixture();
    let _w = repo_writes();
    let before = ls_ids(&f.data);
    let mut child = Command::new(BIN)
        .args([
            "image",
            "build",
            "--suite",
            "bookworm",
            "--package",
            "less",
            "--format",
            "raw",
        ])
        .env("VFARM_DATA_DIR", &f.data)
        .env("CI", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the builder is really at work (its work area exists), then kill -9.
    let deadline = Instant::now() + Duration::from_secs(120);
    let work = loop {
        let found = std::fs::read_dir(f.data.join("tmp"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("rootfs").exists());
        if let Some(w) = found {
            break w;
        }
        assert!(Instant::now() < deadline, "the build never started");
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(Duration::from_secs(2));
    child.kill().unwrap();
    child.wait().unwrap();
    let name = work.file_name().unwrap().to_string_lossy().into_owned();
    let id = name.split('-').nth(1).unwrap().to_string();
    // The next command cleans up after the dead build.
    assert_eq!(ls_ids(&f.data), before);
    assert!(!work.exists(), "work area {} survived", work.display());
    let log = vfarm(&f.data, &["image", "log", &id[..12]]);
    assert_success(&log, "image log of the killed build");
    assert!(String::from_utf8_lossy(&log.stderr).contains("interrupted"));
    assert!(
        String::from_utf8_lossy(&log.stdout).contains("mmdebstrap"),
        "the log was kept"
    );
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(f.data.to_str().unwrap()),
        "mounts left under the data dir"
    );
    // No builder process of that build may survive it.
    std::thread::sleep(Duration::from_millis(500));
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.lines().any(|l| l.contains(&name)),
        "builder processes survived:\n{ps}"
    );
}

#[test]
fn boot_vm_images_carry_a_kernel_and_an_initramfs_for_virtio_disks() {
    let f = fixture();
    let _w = repo_writes();
    let out = vfarm(
        &f.data,
        &[
            "image", "build", "--suite", "bookworm", "--boot", "vm", "--format", "qcow2", "--name",
            "vm", "--output", "json",
        ],
    );
    assert_success(&out, "boot vm build");
    let show = vfarm(&f.data, &["image", "show", "vm", "--output", "json"]);
    assert_success(&show, "image show");
    let img = json(&show);
    let kernel = PathBuf::from(img["kernel"].as_str().expect("kernel in image show"));
    let initrd = PathBuf::from(img["initrd"].as_str().expect("initrd in image show"));
    let k = std::fs::read(&kernel).unwrap();
    assert_eq!(&k[0x202..0x206], b"HdrS", "kernel is an x86 bzImage");
    require("lsinitramfs");
    let list = Command::new("lsinitramfs").arg(&initrd).output().unwrap();
    assert_success(&list, "lsinitramfs");
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.contains("virtio_blk.ko"),
        "initramfs cannot mount a virtio root disk"
    );
    let table = vfarm(&f.data, &["image", "show", "vm"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("kernel:") && table.contains("initrd:"),
        "{table}"
    );
}

#[test]
fn export_converts_and_import_adopts() {
    let f = fixture();
    let _w = repo_writes();
    let id = f.built["id"].as_str().unwrap();
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("x.raw");
    let out = vfarm(
        &f.data,
        &[
            "image",
            "export",
            &id[..12],
            "--format",
            "raw",
            "-o",
            raw.to_str().unwrap(),
        ],
    );
    assert_success(&out, "export raw");
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(&raw)
        .output()
        .unwrap();
    assert_success(&fsck, "e2fsck of the exported raw image");
    for fmt in ["vmdk", "vdi"] {
        let p = dir.join(format!("x.{fmt}"));
        let out = vfarm(
            &f.data,
            &[
                "image",
                "export",
                id,
                "--format",
                fmt,
                "-o",
                p.to_str().unwrap(),
            ],
        );
        assert_success(&out, "export");
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&p)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&info.stdout).contains(&format!("\"format\": \"{fmt}\"")));
    }
    // A rootfs tarball from elsewhere becomes a repository image, once.
    let tar = artifact(&f.built, "tar")["path"]
        .as_str()
        .unwrap()
        .to_string();
    let copy = dir.join("rootfs.tar");
    std::fs::copy(&tar, &copy).unwrap();
    let imp = import(&f.data, &copy, "imported");
    assert_eq!(imp["origin"], "import");
    assert_eq!(imp["os"], "Linux");
    assert_eq!(imp["os_version"], "12");
    let again = json(&vfarm(
        &f.data,
        &[
            "image",
            "import",
            copy.to_str().unwrap(),
            "--output",
            "json",
        ],
    ));
    assert_eq!(again["id"], imp["id"]);
    assert_eq!(again["cached"], true);
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, b"not an image").unwrap();
    let bad = vfarm(&f.data, &["image", "import", junk.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("junk.bin"));
    let rm = vfarm(&f.data, &["image", "rm", "imported"]);
    assert_success(&rm, "image rm");
    assert!(!ls_ids(&f.data).contains(&imp["id"].as_str().unwrap().to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `vfarm image import FILE --name NAME`, its JSON.
fn import(data: &Path, file: &Path, name: &str) -> Value {
    let out = vfarm(
        data,
        &[
            "image",
            "import",
            file.to_str().unwrap(),
            "--name",
            name,
            "--output",
            "json",
        ],
    );
    assert_success(&out, "import");
    json(&out)
}
