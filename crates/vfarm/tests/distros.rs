//! Distributions beyond Debian and the site's own repositories, end to end with the real
//! tools: no mirror of another distribution is reachable from the test machines, so the
//! tests make their own signed repositories (rpmbuild, `rpm --addsign`, createrepo_c; dpkg-deb,
//! reprepro), serve them over loopback HTTP and build from them with real dnf and mmdebstrap.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use common::{require, text, Vf};
use serde_json::Value;

/// A static file server on 127.0.0.1 (one thread per connection, `Connection: close`),
/// enough for apt and dnf. Lives as long as the test binary.
fn serve(root: PathBuf) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(&conn);
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
                let rel = path.split('?').next().unwrap_or("").trim_start_matches('/');
                let file = root.join(rel);
                let mut out = &conn;
                match (rel.contains(".."), std::fs::read(&file)) {
                    (false, Ok(body)) if file.is_file() => {
                        let _ = write!(
                            out,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        if method != "HEAD" {
                            let _ = out.write_all(&body);
                        }
                    }
                    _ => {
                        let _ = write!(
                            out,
                            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                    }
                }
            });
        }
    });
    base
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A GnuPG home with one signing key of `uid`; returns (home, armored public key file).
fn gpg_key(dir: &Path, uid: &str) -> (PathBuf, PathBuf) {
    require("gpg");
    let home = dir.join(format!("gnupg-{uid}"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    run(
        "gpg --quick-gen-key",
        Command::new("gpg")
            .env("GNUPGHOME", &home)
            .args(["--batch", "--passphrase", "", "--quick-gen-key"])
            .arg(format!("{uid} <{uid}@example.invalid>"))
            .args(["rsa2048", "sign", "never"]),
    );
    let key = dir.join(format!("{uid}.asc"));
    let armored = run(
        "gpg --export",
        Command::new("gpg")
            .env("GNUPGHOME", &home)
            .args(["--armor", "--export"]),
    );
    std::fs::write(&key, armored).unwrap();
    (home, key)
}

const BASE_SPEC: &str = "Name: vfarm-test-base
Version: 1.0
Release: 1
Summary: Debian's busybox-static as /bin/sh, and an os-release
License: GPL-2.0
Provides: /bin/sh
%description
The smallest system a test repository's core group installs.
%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/etc
cp /bin/busybox %{buildroot}/usr/bin/busybox
for t in sh cat ls echo; do ln -s busybox %{buildroot}/usr/bin/$t; done
ln -s usr/bin %{buildroot}/bin
printf 'NAME=\"AlmaLinux (vfarm test repository)\"\\nID=almalinux\\nVERSION_ID=9\\n' > %{buildroot}/etc/os-release
%files
/usr/bin/*
/bin
/etc/os-release
";

const SITE_SPEC: &str = "Name: site-tools
Version: 1.0
Release: 1
Summary: a site's middleware stand-in
License: MIT
BuildArch: noarch
%description
Prints its version.
%install
mkdir -p %{buildroot}/usr/bin
printf '#!/bin/sh\\necho site-tools 1.0\\n' > %{buildroot}/usr/bin/site-tools
chmod 755 %{buildroot}/usr/bin/site-tools
%files
/usr/bin/site-tools
";

const COMPS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE comps PUBLIC "-//Red Hat, Inc.//DTD Comps info//EN" "comps.dtd">
<comps>
  <group><id>core</id><name>Core</name><description>Smallest possible installation</description>
    <default>true</default><uservisible>false</uservisible>
    <packagelist><packagereq type="mandatory">vfarm-test-base</packagereq></packagelist>
  </group>
</comps>
"#;

const SITE_CA_SPEC: &str = "Name: site-ca
Version: 1.0
Release: 1
Summary: a site CA bundle stand-in, only in the site's own repository
License: MIT
BuildArch: noarch
%description
A file under /etc.
%install
mkdir -p %{buildroot}/etc/grid-security
echo 'site CA' > %{buildroot}/etc/grid-security/site-ca.pem
%files
/etc/grid-security/site-ca.pem
";

/// The signed RPM repositories, built once per test binary: the distribution's (a `core`
/// group and site-tools, the mirror of mirrors.toml) and a site's own (site-ca, another key).
struct RpmRepo {
    url: String,
    key: PathBuf,
    wrong_key: PathBuf,
    site_url: String,
    site_key: PathBuf,
}

/// rpmbuild `specs` into `repo`, sign the packages with `uid`'s key from `home`, write the
/// metadata (with `comps`, if any) and sign `repomd.xml`.
fn signed_rpm_repo(
    dir: &Path,
    repo: &Path,
    specs: &[(&str, &str)],
    comps: Option<&str>,
    home: &Path,
    uid: &str,
) {
    let top = dir.join("rpmbuild");
    let _ = std::fs::remove_dir_all(top.join("RPMS"));
    std::fs::create_dir_all(repo).unwrap();
    for (name, spec) in specs {
        let f = dir.join(format!("{name}.spec"));
        std::fs::write(&f, spec).unwrap();
        run(
            "rpmbuild",
            Command::new("rpmbuild")
                .arg("--define")
                .arg(format!("_topdir {}", top.display()))
                // No debuginfo or brp scripts: the "build" only copies files.
                .args(["--define", "__os_install_post %{nil}"])
                .args(["--define", "debug_package %{nil}"])
                .arg("-bb")
                .arg(&f),
        );
    }
    let mut rpms = Vec::new();
    for arch in ["noarch", "x86_64"] {
        for e in std::fs::read_dir(top.join("RPMS").join(arch))
            .into_iter()
            .flatten()
            .flatten()
        {
            let to = repo.join(e.file_name());
            std::fs::copy(e.path(), &to).unwrap();
            rpms.push(to);
        }
    }
    assert_eq!(rpms.len(), specs.len(), "rpmbuild made {rpms:?}");
    run(
        "rpm --addsign",
        Command::new("rpm")
            .env("GNUPGHOME", home)
            // Debian's rpm calls gpg2, which Debian names gpg.
            .args(["--define", "__gpg /usr/bin/gpg"])
            .arg("--define")
            .arg(format!("_gpg_name {uid}"))
            .args([
                "--define",
                "_gpg_sign_cmd_extra_args --batch --pinentry-mode loopback --passphrase ''",
            ])
            .arg("--addsign")
            .args(&rpms),
    );
    let mut createrepo = Command::new("createrepo_c");
    if let Some(c) = comps {
        let f = dir.join("comps.xml");
        std::fs::write(&f, c).unwrap();
        createrepo.arg("-g").arg(f);
    }
    run("createrepo_c", createrepo.arg(repo));
    run(
        "gpg --detach-sign repomd.xml",
        Command::new("gpg")
            .env("GNUPGHOME", home)
            .args(["--batch", "--yes", "--armor", "--detach-sign"])
            .arg(repo.join("repodata/repomd.xml")),
    );
}

fn rpm_repo() -> &'static RpmRepo {
    static REPO: OnceLock<RpmRepo> = OnceLock::new();
    REPO.get_or_init(|| {
        for t in ["rpmbuild", "rpm", "createrepo_c", "gpg", "busybox"] {
            require(t);
        }
        let t0 = Instant::now();
        let dir = common::fresh_dir("rpmrepo");
        let (home, key) = gpg_key(&dir, "vfarm-test-rpm");
        let (_, wrong_key) = gpg_key(&dir, "someone-else");
        let (site_home, site_key) = gpg_key(&dir, "vfarm-test-site");
        let www = dir.join("www");
        signed_rpm_repo(
            &dir,
            &www.join("el"),
            &[("base", BASE_SPEC), ("site", SITE_SPEC)],
            Some(COMPS),
            &home,
            "vfarm-test-rpm",
        );
        signed_rpm_repo(
            &dir,
            &www.join("site"),
            &[("site-ca", SITE_CA_SPEC)],
            None,
            &site_home,
            "vfarm-test-site",
        );
        let base = serve(www);
        eprintln!(
            "signed RPM repositories made in {:.1} s",
            t0.elapsed().as_secs_f64()
        );
        RpmRepo {
            url: format!("{base}/el/"),
            key,
            wrong_key,
            site_url: format!("{base}/site/"),
            site_key,
        }
    })
}

fn mirrors_toml(vf: &Vf, repo: &RpmRepo, key: &Path) {
    std::fs::write(
        vf.data.join("mirrors.toml"),
        format!(
            "[almalinux]\nkey = \"{}\"\nrepo_gpgcheck = true\n[[almalinux.repos]]\nname = \"baseos\"\nbaseurl = \"{}\"\n",
            key.display(),
            repo.url
        ),
    )
    .unwrap();
}

/// `image build` of site-tools alone on AlmaLinux 9 (no `core` group: another id than the
/// first build's, on the same base).
const EL_SITE_TOOLS: [&str; 8] = [
    "image",
    "build",
    "--distro",
    "almalinux",
    "--suite",
    "9",
    "--package",
    "site-tools",
];

fn ls_ids(vf: &Vf) -> Vec<String> {
    let v = vf.json(&["image", "ls"]);
    let mut ids: Vec<String> = v
        .as_array()
        .expect("image ls prints a list")
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// Run `image build ARGS`, expect a refusal whose text holds every needle and an unchanged
/// image listing; the line naming the repository.
fn refused_build(vf: &Vf, args: &[&str], needles: &[&str]) -> String {
    let before = ls_ids(vf);
    let mut a = vec!["image", "build"];
    a.extend_from_slice(args);
    let out = vf.run(&a);
    let t = text(&out);
    assert!(!out.status.success(), "{args:?} was accepted:\n{t}");
    for n in needles {
        assert!(t.contains(n), "the refusal should name {n}:\n{t}");
    }
    assert_eq!(ls_ids(vf), before, "a refused build changed the listing");
    t.lines()
        .find(|l| l.contains("repository `"))
        .unwrap_or_default()
        .to_string()
}

fn new_vf(name: &str) -> Vf {
    let data = common::fresh_dir(name);
    Vf { data }
}

fn build_json(vf: &Vf, args: &[&str]) -> Value {
    let mut a = vec!["image", "build"];
    a.extend_from_slice(args);
    vf.json(&a)
}

#[test]
fn almalinux_from_a_signed_rpm_repository_builds_runs_and_is_cached() {
    require("dnf");
    require("runc");
    let repo = rpm_repo();
    let vf = new_vf("el");
    mirrors_toml(&vf, repo, &repo.key);
    let args = [
        "--distro",
        "almalinux",
        "--suite",
        "9",
        "--group",
        "core",
        "--package",
        "site-tools",
    ];
    let t0 = Instant::now();
    let first = build_json(&vf, &args);
    let cold = t0.elapsed().as_secs_f64();
    assert_eq!(first["cached"], false, "{first}");
    assert_eq!(first["os_version"], "9", "{first}");
    let id = first["id"].as_str().unwrap().to_string();

    let t1 = Instant::now();
    let again = build_json(&vf, &args);
    assert_eq!(
        (again["id"].as_str(), &again["cached"]),
        (Some(id.as_str()), &Value::Bool(true))
    );
    eprintln!(
        "almalinux 9 cold build {cold:.1} s, identical rebuild {:.2} s (cache hit)",
        t1.elapsed().as_secs_f64()
    );

    // The image's own rpm database knows the package (read on the host: the test
    // repository's system has no rpm binary of its own).
    let root = vf.data.join("unpacked");
    std::fs::create_dir_all(&root).unwrap();
    let tar = first["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["format"] == "tar")
        .expect("a tar artifact")["path"]
        .as_str()
        .unwrap()
        .to_string();
    run(
        "tar -x",
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-xf")
            .arg(&tar),
    );
    let q = run(
        "rpm -q",
        Command::new("rpm").arg("--root").arg(&root).args([
            "--dbpath",
            "/var/lib/rpm",
            "-q",
            "site-tools",
            "vfarm-test-base",
        ]),
    );
    assert!(q.contains("site-tools-1.0-1.noarch"), "{q}");

    let out = vf.ok(&[
        "run",
        "--image",
        &id,
        "--",
        "sh",
        "-c",
        "cat /etc/os-release; site-tools --version",
    ]);
    assert!(
        out.contains("ID=almalinux") && out.contains("site-tools 1.0"),
        "{out}"
    );

    // A layered build on the cached base installs only what it adds.
    let t2 = Instant::now();
    let layered = build_json(&vf, &EL_SITE_TOOLS[2..]);
    assert_eq!(
        (&layered["cached"], &layered["base_cached"]),
        (&Value::Bool(false), &Value::Bool(true))
    );
    eprintln!(
        "almalinux 9 layered build {:.1} s",
        t2.elapsed().as_secs_f64()
    );

    // A package the repositories do not have is named, as apt's are.
    let e = refused_build(
        &vf,
        &[
            "--distro",
            "almalinux",
            "--suite",
            "9",
            "--package",
            "no-such-rpm",
        ],
        &["unknown package(s) no-such-rpm"],
    );
    assert!(e.is_empty(), "not a repository's fault: {e}");
}

#[test]
fn a_wrong_rpm_key_fails_the_build_naming_repository_and_key_and_changes_nothing() {
    require("dnf");
    let repo = rpm_repo();
    let vf = new_vf("el-wrong");
    mirrors_toml(&vf, repo, &repo.wrong_key);
    let key = repo.wrong_key.display().to_string();
    let line = refused_build(&vf, &EL_SITE_TOOLS[2..], &["repository `baseos`", &key]);
    eprintln!("wrong rpm key refused as: {line}");
    assert!(
        !std::fs::read_dir(vf.data.join("layers"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".tar")),
        "no base layer is saved from a failed bootstrap"
    );

    // The site fixes its key, builds (the base and dnf's metadata are cached now, both
    // trusting that key), then the key is replaced by a wrong one again: the cached metadata
    // and base do not vouch for the mirror under the new key.
    mirrors_toml(&vf, repo, &repo.key);
    let ok = build_json(&vf, &EL_SITE_TOOLS[2..]);
    let tar = ok["artifacts"][0]["path"].as_str().unwrap();
    let listing = run("tar -t", Command::new("tar").arg("-tf").arg(tar));
    assert!(
        !listing.contains("dnf-metadata") && !listing.contains("var/cache/dnf/baseos"),
        "build-host paths or dnf's cache in the image:\n{listing}"
    );
    // One metadata cache per key the site used, none inside the image.
    let cached = std::fs::read_dir(vf.data.join("layers/dnf-metadata"))
        .expect("dnf's metadata is kept per base")
        .count();
    assert_eq!(cached, 2);
    mirrors_toml(&vf, repo, &repo.wrong_key);
    let mut args = EL_SITE_TOOLS[2..].to_vec();
    args.extend(["--group", "core"]);
    refused_build(&vf, &args, &["repository `baseos`", &key]);
}

/// A signed apt repository (reprepro) holding `site-hello`, served on loopback.
fn apt_repo() -> &'static (String, PathBuf, PathBuf) {
    static REPO: OnceLock<(String, PathBuf, PathBuf)> = OnceLock::new();
    REPO.get_or_init(|| {
        for t in ["reprepro", "dpkg-deb", "gpg"] {
            require(t);
        }
        let dir = common::fresh_dir("aptrepo");
        let (home, key) = gpg_key(&dir, "vfarm-test-apt");
        let (_, wrong) = gpg_key(&dir, "apt-someone-else");
        let pkg = dir.join("pkg");
        std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
        std::fs::create_dir_all(pkg.join("usr/bin")).unwrap();
        std::fs::write(
            pkg.join("DEBIAN/control"),
            "Package: site-hello\nVersion: 1.0\nSection: misc\nPriority: optional\nArchitecture: all\nMaintainer: vfarm tests <t@example.invalid>\nDescription: a package only the site repository has\n",
        )
        .unwrap();
        let bin = pkg.join("usr/bin/site-hello");
        std::fs::write(&bin, "#!/bin/sh\necho hello from the site repository\n").unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let deb = dir.join("site-hello_1.0_all.deb");
        run("dpkg-deb --build", Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&pkg).arg(&deb));
        let www = dir.join("www/debian");
        std::fs::create_dir_all(www.join("conf")).unwrap();
        let fpr = run(
            "gpg --list-keys",
            Command::new("gpg").env("GNUPGHOME", &home).args(["--with-colons", "--list-secret-keys"]),
        );
        let fpr = fpr
            .lines()
            .find_map(|l| l.strip_prefix("fpr:").map(|r| r.trim_matches(':').to_string()))
            .expect("a fingerprint");
        std::fs::write(
            www.join("conf/distributions"),
            format!("Codename: bookworm\nArchitectures: amd64\nComponents: main\nSignWith: {fpr}\n"),
        )
        .unwrap();
        run(
            "reprepro includedeb",
            Command::new("reprepro")
                .env("GNUPGHOME", &home)
                .arg("-b")
                .arg(&www)
                .args(["includedeb", "bookworm"])
                .arg(&deb),
        );
        let base = serve(dir.join("www"));
        (format!("{base}/debian"), key, wrong)
    })
}

/// The data dir's bookworm base layer is the shared minbase tarball: these tests are about
/// repositories, and a second bootstrap would only cost time.
fn vf_with_debian_base(name: &str) -> Vf {
    let vf = new_vf(name);
    let layers = vf.data.join("layers");
    std::fs::create_dir_all(&layers).unwrap();
    let to = layers.join("debian-bookworm-amd64-minbase.tar");
    std::fs::hard_link(common::minbase_tar(), &to)
        .or_else(|_| std::fs::copy(common::minbase_tar(), &to).map(|_| ()))
        .unwrap();
    vf
}

/// A spec file of `head` plus the repository `site` at `url` (under `url_field`) with `key`.
fn spec_with_site_repo(vf: &Vf, head: &str, url_field: &str, url: &str, key: &Path) -> PathBuf {
    let stem = key.file_stem().unwrap().to_string_lossy();
    let f = vf.data.join(format!("spec-{stem}.toml"));
    let repo = format!(
        "[[repositories]]\nname = \"site\"\n{url_field} = \"{url}\"\nkey = \"{}\"\n",
        key.display()
    );
    std::fs::write(&f, format!("{head}{repo}")).unwrap();
    f
}

fn apt_spec(vf: &Vf, url: &str, key: &Path) -> PathBuf {
    let head = "suite = \"bookworm\"\npackages = [\"site-hello\"]\n";
    spec_with_site_repo(vf, head, "url", url, key)
}

#[test]
fn debian_with_a_signed_site_repository_builds_and_a_wrong_key_is_refused() {
    require("mmdebstrap");
    let (url, key, wrong) = apt_repo();
    let vf = vf_with_debian_base("apt-site");
    let spec = apt_spec(&vf, url, key);
    let t0 = Instant::now();
    let built = build_json(&vf, &["-f", spec.to_str().unwrap()]);
    eprintln!(
        "bookworm + site repository build {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let id = built["id"].as_str().unwrap().to_string();
    assert_eq!(built["spec"]["repositories"][0]["name"], "site", "{built}");
    let out = vf.ok(&["run", "--image", &id, "--", "site-hello"]);
    assert!(out.contains("hello from the site repository"), "{out}");

    let spec = apt_spec(&vf, url, wrong);
    let line = refused_build(
        &vf,
        &["-f", spec.to_str().unwrap()],
        &["repository `site`", "signature"],
    );
    eprintln!("wrong apt key refused as: {line}");
}

#[test]
fn bad_distribution_input_is_refused_by_name_and_changes_nothing() {
    let vf = new_vf("distro-bad");
    let key_file = vf.data.join("k.toml");
    std::fs::write(
        &key_file,
        "suite = \"bookworm\"\n[[repositories]]\nname = \"site\"\nurl = \"http://127.0.0.1:9/debian\"\n",
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--distro", "slackware"], "slackware"),
        (
            vec!["--distro", "almalinux", "--suite", "7"],
            "almalinux releases: 8, 9, 10",
        ),
        (
            vec![
                "--distro",
                "rocky",
                "--suite",
                "9",
                "--group",
                "build-essential",
            ],
            "rocky groups",
        ),
        (vec!["-f", key_file.to_str().unwrap()], "repository.key"),
        (
            vec!["--distro", "rocky", "--suite", "9"],
            "add a [rocky] table to",
        ),
    ];
    for (args, needle) in cases {
        let mut a = vec!["image", "build"];
        a.extend(args.iter().copied());
        let out = vf.run(&a);
        let t = text(&out);
        assert!(!out.status.success(), "{args:?} was accepted:\n{t}");
        assert!(t.contains(needle), "{args:?} should name {needle}:\n{t}");
    }
    assert!(ls_ids(&vf).is_empty());
    let logs = std::fs::read_dir(vf.data.join("logs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(logs, 0, "a refused build left a log");
    // Every distribution lists its groups.
    let g = vf.json(&["image", "groups", "--distro", "almalinux"]);
    assert!(
        g.as_array()
            .unwrap()
            .iter()
            .any(|x| x["packages"][0] == "@core"),
        "{g}"
    );
}

#[test]
fn osfarm_orders_an_almalinux_class_synchronously_or_not() {
    require("dnf");
    let repo = rpm_repo();
    let vf = new_vf("el-osfarm");
    mirrors_toml(&vf, repo, &repo.key);
    let server = common::Server::start(&vf.data);
    let http = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(300))
        .build()
        .unwrap();
    let order = "class=almalinux9&arch=x86_64&filetype=.tar&package=site-tools";
    let r = http
        .get(format!("{}/osfarm/create?{order}", server.base))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let img: Value = r.json().unwrap();
    assert_eq!(img["os_version"], "9", "{img}");
    assert!(
        img["summary"].as_str().unwrap().starts_with("almalinux 9"),
        "{img}"
    );

    // `synchronous=off` answers at once with the build's operation, which finishes.
    let t0 = Instant::now();
    let r = http
        .get(format!(
            "{}/osfarm/create?{order}&group=core&synchronous=off",
            server.base
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let started: Value = r.json().unwrap();
    eprintln!(
        "osfarm synchronous=off answered in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    let op = started["links"]["self"].as_str().unwrap();
    let done: Value = server
        .client()
        .get(format!("{}{op}?wait=120", server.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_ne!(
        started["operation"]["target"], img["id"],
        "the core group makes another image"
    );
}

#[test]
fn an_el_spec_installs_from_the_sites_own_signed_repository_and_refuses_a_wrong_key() {
    require("dnf");
    let repo = rpm_repo();
    let vf = new_vf("el-site");
    mirrors_toml(&vf, repo, &repo.key);
    let head = "distro = \"almalinux\"\nsuite = \"9\"\npackages = [\"site-ca\"]\n";
    let spec = |key: &Path| spec_with_site_repo(&vf, head, "baseurl", &repo.site_url, key);
    let built = build_json(&vf, &["-f", spec(&repo.site_key).to_str().unwrap()]);
    let id = built["id"].as_str().unwrap().to_string();
    let out = vf.ok(&[
        "run",
        "--image",
        &id,
        "--",
        "cat",
        "/etc/grid-security/site-ca.pem",
    ]);
    assert_eq!(out.trim(), "site CA");
    let repo_file = vf.ok(&[
        "run",
        "--image",
        &id,
        "--",
        "cat",
        "/etc/yum.repos.d/vfarm-site.repo",
    ]);
    assert!(
        repo_file.contains("gpgcheck=1")
            && repo_file.contains("gpgkey=file:///etc/pki/rpm-gpg/vfarm-site.asc"),
        "{repo_file}"
    );

    // The distribution's key (trusted by the image already) does not vouch for the site's
    // packages: the build names the site repository and the key it was given.
    let spec = spec(&repo.key);
    refused_build(
        &vf,
        &["-f", spec.to_str().unwrap()],
        &["repository `site`", "sha256:"],
    );
}
