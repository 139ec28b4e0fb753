//! Black-box tests of signed image lists through the real `vfarm` binary: `imagelist
//! sign/verify/publish`, `subscription add/update/show`, `cache ls/show`, `image ls/show` and
//! `vfarm serve`. Every PKI is made in the test with the real `openssl` CLI (`req`, `ca`,
//! `x509 -hash`, `ca -gencrl`), lists are cross-checked with `openssl smime`, and every
//! network address is loopback.
//!
//! A missing tool (openssl, tar) fails the test with its name, never skips it.

mod common;
use common::{assert_success, require, text, vfarm_cmd, Server};

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use sha2::{Digest, Sha512};

fn testdata(rel: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/data/imagelists"
    ))
    .join(rel)
}

fn vfarm_env(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    vfarm_cmd(data)
        .args(args)
        .env_remove("VMCATCHER_CACHE_EVENT")
        .env_remove("VFARM_OUTPUT")
        .envs(env.iter().copied())
        .output()
        .expect("run vfarm")
}

fn vfarm(data: &Path, args: &[&str]) -> Output {
    vfarm_env(data, args, &[])
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", text(out)))
}

fn sha512_hex(bytes: &[u8]) -> String {
    hex::encode(Sha512::digest(bytes))
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", text(&out));
    out
}

fn openssl(dir: &Path, args: &[&str]) -> Output {
    run(
        Command::new("openssl").current_dir(dir).args(args),
        &format!("openssl {}", args.join(" ")),
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ---------------------------------------------------------------------------------------
// A PKI made with `openssl req` / `openssl ca`.

const CA_CONF: &str = r#"
[ ca ]
default_ca = test_ca

[ test_ca ]
dir = .
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = $dir/ca.pem
private_key = $dir/ca.key
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 365
default_crl_days = 30
policy = policy_any
preserve = yes
unique_subject = no
copy_extensions = none
x509_extensions = endorser_ext
email_in_dn = no

[ policy_any ]
countryName = optional
organizationName = optional
organizationalUnitName = optional
commonName = supplied

[ endorser_ext ]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment
extendedKeyUsage = emailProtection, clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"#;

/// A certificate authority run by `openssl ca` in its own directory.
struct Ca {
    dir: PathBuf,
    cert: PathBuf,
}

/// An endorser: certificate and key (PEM) and its one-line subject.
#[derive(Clone)]
struct Cred {
    cert: PathBuf,
    key: PathBuf,
    dn: String,
}

impl Ca {
    fn new(dir: &Path, subject: &str) -> Ca {
        require("openssl");
        std::fs::create_dir_all(dir.join("newcerts")).unwrap();
        std::fs::write(dir.join("openssl.cnf"), CA_CONF).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("index.txt.attr"), "unique_subject = no\n").unwrap();
        std::fs::write(dir.join("serial"), "1000\n").unwrap();
        std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "3650",
                "-subj",
                subject,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca {
            dir: dir.to_path_buf(),
            cert: dir.join("ca.pem"),
        }
    }

    /// Issue a certificate valid from `start` to `end` (`YYYYMMDDHHMMSSZ`).
    fn issue(&self, stem: &str, subject: &str, start: &str, end: &str) -> Cred {
        let d = &self.dir;
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{stem}.key"),
                "-out",
                &format!("{stem}.csr"),
                "-subj",
                subject,
            ],
        );
        openssl(
            d,
            &[
                "ca",
                "-batch",
                "-config",
                "openssl.cnf",
                "-preserveDN",
                "-notext",
                "-in",
                &format!("{stem}.csr"),
                "-out",
                &format!("{stem}.pem"),
                "-startdate",
                start,
                "-enddate",
                end,
            ],
        );
        Cred {
            cert: d.join(format!("{stem}.pem")),
            key: d.join(format!("{stem}.key")),
            dn: subject.to_string(),
        }
    }

    fn endorser(&self, stem: &str, subject: &str) -> Cred {
        self.issue(stem, subject, "20200101000000Z", "20491231235959Z")
    }

    fn revoke(&self, c: &Cred) {
        openssl(
            &self.dir,
            &["ca", "-config", "openssl.cnf", "-revoke", path_str(&c.cert)],
        );
    }

    /// Install the CA (and its current CRL) in a hashed CA dir, as `c_rehash` would.
    fn install(&self, ca_dir: &Path, with_crl: bool) {
        std::fs::create_dir_all(ca_dir).unwrap();
        let out = openssl(
            &self.dir,
            &["x509", "-hash", "-noout", "-in", path_str(&self.cert)],
        );
        let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert_eq!(hash.len(), 8, "subject hash {hash:?}");
        std::fs::copy(&self.cert, ca_dir.join(format!("{hash}.0"))).unwrap();
        if with_crl {
            let crl = self.dir.join("crl.pem");
            openssl(
                &self.dir,
                &[
                    "ca",
                    "-config",
                    "openssl.cnf",
                    "-gencrl",
                    "-out",
                    path_str(&crl),
                ],
            );
            std::fs::copy(&crl, ca_dir.join(format!("{hash}.r0"))).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Lists and images.

#[derive(Clone)]
struct Img {
    identifier: String,
    title: String,
    uri: String,
    size: u64,
    sha512: String,
    version: String,
    format: Option<&'static str>,
}

impl Img {
    /// An image entry for a file on disk, downloaded from `uri`.
    fn of_file(identifier: &str, title: &str, file: &Path, uri: &str, version: &str) -> Img {
        let bytes = std::fs::read(file).unwrap();
        Img {
            identifier: identifier.into(),
            title: title.into(),
            uri: uri.into(),
            size: bytes.len() as u64,
            sha512: sha512_hex(&bytes),
            version: version.into(),
            format: None,
        }
    }

    fn local(identifier: &str, title: &str, file: &Path, version: &str) -> Img {
        Img::of_file(
            identifier,
            title,
            file,
            &format!("file://{}", file.display()),
            version,
        )
    }
}

struct ListSpec<'a> {
    identifier: &'a str,
    version: &'a str,
    created: &'a str,
    expires: &'a str,
    uri: &'a str,
    /// `hv:dn`, `hv:ca`: normally the signer's subject and issuer.
    dn: &'a str,
    ca: &'a str,
    images: Vec<Img>,
}

const LIST_ID: &str = "6f5c1f0a-3c1e-4c57-9d0b-5a1c2e7d9b10";
const CREATED: &str = "2020-01-01T00:00:00Z";
const EXPIRES: &str = "2049-01-01T00:00:00Z";

fn list_json(s: &ListSpec<'_>) -> Vec<u8> {
    let images: Vec<Value> = s
        .images
        .iter()
        .map(|i| {
            let mut m = json!({
                "dc:identifier": i.identifier,
                "dc:title": i.title,
                "dc:description": format!("test image {}", i.title),
                "hv:uri": i.uri,
                "hv:size": i.size,
                "sl:checksum:sha512": i.sha512,
                "sl:arch": "x86_64",
                "sl:os": "Linux",
                "sl:osversion": "Test 1",
                "sl:comments": "",
                "hv:hypervisor": "kvm",
                "hv:version": i.version,
            });
            if let Some(f) = i.format {
                m["hv:format"] = json!(f);
            }
            json!({ "hv:image": m })
        })
        .collect();
    let doc = json!({
        "hv:imagelist": {
            "dc:identifier": s.identifier,
            "dc:date:created": s.created,
            "dc:date:expires": s.expires,
            "dc:title": "vfarm CLI test list",
            "dc:description": "made by crates/vfarm/tests/imagelist_cli.rs",
            "dc:source": "127.0.0.1",
            "hv:uri": s.uri,
            "hv:version": s.version,
            "hv:endorser": { "hv:x509": {
                "hv:dn": s.dn, "hv:ca": s.ca,
                "hv:email": "endorser@example.org", "dc:creator": "Test Endorser"
            }},
            "hv:images": images,
        }
    });
    let mut out = serde_json::to_vec_pretty(&doc).unwrap();
    out.push(b'\n');
    out
}

/// Sign with `vfarm imagelist sign` (which insists on a matching endorser).
fn sign_vfarm(data: &Path, c: &Cred, body: &Path, out: &Path) {
    let o = vfarm(
        data,
        &[
            "imagelist",
            "sign",
            "--cert",
            path_str(&c.cert),
            "--key",
            path_str(&c.key),
            path_str(body),
            path_str(out),
        ],
    );
    assert_success(&o, "vfarm imagelist sign");
}

/// Sign with `openssl smime -sign` (detached, as vmcaster does): no checks at all.
fn sign_openssl(c: &Cred, body: &Path, out: &Path) {
    run(
        Command::new("openssl").args([
            "smime",
            "-sign",
            "-in",
            path_str(body),
            "-signer",
            path_str(&c.cert),
            "-inkey",
            path_str(&c.key),
            "-out",
            path_str(out),
        ]),
        "openssl smime -sign",
    );
}

/// `vfarm imagelist verify --output json`: (exit code, document).
fn verify_cli(file: &Path, ca_dir: &Path, at: Option<&str>) -> (i32, Value) {
    let scratch = tempfile::tempdir().unwrap();
    let mut args = vec![
        "imagelist",
        "verify",
        path_str(file),
        "--ca-dir",
        path_str(ca_dir),
        "--output",
        "json",
    ];
    if let Some(t) = at {
        args.extend(["--at", t]);
    }
    let out = vfarm(scratch.path(), &args);
    (out.status.code().unwrap_or(-1), json_of(&out))
}

fn cache_ls(data: &Path) -> Value {
    let out = vfarm(data, &["cache", "ls", "--output", "json"]);
    assert_success(&out, "cache ls");
    json_of(&out)
}

fn cached_ids(data: &Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = cache_ls(data)
        .as_array()
        .expect("cache ls prints an array")
        .iter()
        .map(|e| {
            assert_eq!(e["present"], true, "cache entry without its file: {e}");
            (
                e["identifier"].as_str().unwrap().to_string(),
                e["sha512"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Files in the cache directory itself (what is really on disk).
fn cache_files(data: &Path) -> Vec<(String, String)> {
    let dir = data.join("imagelist-cache/cache");
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd {
            let e = e.unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            v.push((
                e.file_name().to_string_lossy().into_owned(),
                sha512_hex(&bytes),
            ));
        }
    }
    v.sort();
    v
}

fn update(data: &Path, sub: &str) -> (i32, Value) {
    let out = vfarm(data, &["subscription", "update", sub, "--output", "json"]);
    let code = out.status.code().unwrap_or(-1);
    let doc = json_of(&out);
    let reports = doc.as_array().expect("update prints an array of reports");
    assert_eq!(reports.len(), 1, "{doc}");
    (code, reports[0].clone())
}

fn random_file(path: &Path, len: usize, seed: u8) {
    let mut bytes = Vec::with_capacity(len);
    let mut x: u32 = 0x9E37_79B9 ^ u32::from(seed);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.push((x >> 24) as u8);
    }
    std::fs::write(path, bytes).unwrap();
}

// ---------------------------------------------------------------------------------------
// Acceptance 1: the shared real-world lists.

#[test]
fn fixture_lists_get_the_verdicts_sources_predicts() {
    require("openssl");
    let ck_ca = testdata("cloudkeeper/ca");
    let tmp = tempfile::tempdir().unwrap();

    // cloudkeeper 01..04: signature and chain are fine (before the CA expires on
    // 2028-02-17), but hv:dn/hv:ca do not name the signer (vmcatcher error 12).
    for (n, marker) in [(1, "aaaa"), (2, "cccc"), (3, "eeee"), (4, "gggg")] {
        let f = testdata(&format!("cloudkeeper/imagelist0{n}.signed"));
        let (code, doc) = verify_cli(&f, &ck_ca, Some("2020-01-01T00:00:00Z"));
        assert_eq!(code, 1, "list {n}: {doc}");
        assert_eq!(doc["accepted"], false);
        assert_eq!(doc["code"], "endorser_mismatch", "list {n}: {doc}");
        let reason = doc["reason"].as_str().unwrap();
        assert!(
            reason.contains("/DC=XXX/DC=YYY/C=ZZZ/O=Hosts/O=AA.net/CN=some.unknown.source")
                && reason.contains("/C=AU/ST=Some-State/O=Internet Widgits Pty Ltd"),
            "list {n}: {reason}"
        );
        // The signature itself is good: openssl agrees at the same instant.
        run(
            Command::new("openssl").args([
                "smime",
                "-verify",
                "-in",
                path_str(&f),
                "-CAfile",
                path_str(&ck_ca.join("9da13359.0")),
                "-attime",
                "1577836800",
                "-out",
                path_str(&tmp.path().join(format!("content{n}"))),
            ]),
            "openssl smime -verify of a cloudkeeper list",
        );
        let content = std::fs::read_to_string(tmp.path().join(format!("content{n}"))).unwrap();
        assert!(content.contains(&format!("-{marker}-")), "list {n}");

        // After the CA expired, the certificate is the first problem.
        let (code, doc) = verify_cli(&f, &ck_ca, Some("2028-03-01T00:00:00Z"));
        assert_eq!(code, 1);
        assert_eq!(doc["code"], "certificate_expired", "list {n}: {doc}");
        assert!(
            doc["reason"]
                .as_str()
                .unwrap()
                .contains("2028-02-17T08:53:53Z"),
            "{doc}"
        );
    }

    // Signed by an untrusted self-signed cert and the digest does not match: the signature
    // is checked first, so it is refused as modified.
    let (code, doc) = verify_cli(
        &testdata("cloudkeeper/imagelist_invalid.signed"),
        &ck_ca,
        Some("2020-01-01T00:00:00Z"),
    );
    assert_eq!(
        (code, doc["code"].as_str()),
        (1, Some("bad_signature")),
        "{doc}"
    );

    // The book's copy had its whitespace changed: digest failure.
    let (code, doc) = verify_cli(
        &testdata("hepix-virtualisation-book/imagetransfer-imagelist-signed-example.smime"),
        &ck_ca,
        Some("2011-03-01T00:00:00Z"),
    );
    assert_eq!(
        (code, doc["code"].as_str()),
        (1, Some("bad_signature")),
        "{doc}"
    );

    // The README example's signature is good (LF copy, canonicalised), but its CA
    // (GridKa-CA) is not in any CA dir we have.
    let (code, doc) = verify_cli(
        &testdata("hepixvmitrust/README-signed-example.smime"),
        &ck_ca,
        Some("2011-01-01T00:00:00Z"),
    );
    assert_eq!(
        (code, doc["code"].as_str()),
        (1, Some("untrusted_signer")),
        "{doc}"
    );
    assert!(
        doc["reason"]
            .as_str()
            .unwrap()
            .contains("/C=DE/O=GermanGrid/OU=DESY/CN=Owen Synge"),
        "{doc}"
    );

    // Plain JSON lists are not signed lists.
    for rel in [
        "cloudkeeper/imagelist01.unsigned",
        "hepixvmitrust/imagelist.json",
    ] {
        let (code, doc) = verify_cli(&testdata(rel), &ck_ca, None);
        assert_eq!(
            (code, doc["code"].as_str()),
            (1, Some("not_signed")),
            "{rel}: {doc}"
        );
    }

    // The same verdict through a subscription (fixed clock): refused, exit 1, nothing cached.
    let data = tmp.path().join("data");
    let url = format!(
        "file://{}",
        testdata("cloudkeeper/imagelist01.signed").display()
    );
    let out = vfarm(
        &data,
        &[
            "subscription",
            "add",
            &url,
            "--ca-dir",
            path_str(&ck_ca),
            "--no-update",
            "--output",
            "json",
        ],
    );
    assert_success(&out, "subscription add --no-update");
    let sub = json_of(&out)["id"].as_str().unwrap().to_string();
    let out = vfarm(
        &data,
        &[
            "subscription",
            "update",
            &sub,
            "--at",
            "2020-01-01T00:00:00Z",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("refused (endorser_mismatch)") && stdout.contains("does not match"),
        "update must say why: {stdout}"
    );
    assert_eq!(cache_ls(&data), json!([]));
}

// ---------------------------------------------------------------------------------------
// Acceptance 2: interoperability with `openssl smime`.

#[test]
fn vfarm_and_openssl_verify_each_others_signatures() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    let ca = Ca::new(&t.join("ca"), "/C=XX/O=vfarm test/CN=Interop CA");
    let ca_dir = t.join("certificates");
    ca.install(&ca_dir, true);
    let e = ca.endorser(
        "endorser",
        "/C=XX/O=vfarm test/OU=sites/CN=Interop Endorser",
    );
    let img = t.join("disk.img");
    random_file(&img, 4096, 1);
    let body = t.join("list.json");
    std::fs::write(
        &body,
        list_json(&ListSpec {
            identifier: LIST_ID,
            version: "1",
            created: CREATED,
            expires: EXPIRES,
            uri: "http://127.0.0.1/imagelists/interop.list",
            dn: &e.dn,
            ca: "/C=XX/O=vfarm test/CN=Interop CA",
            images: vec![Img::local(
                "11111111-aaaa-4000-8000-000000000001",
                "disk",
                &img,
                "1",
            )],
        }),
    )
    .unwrap();

    // vfarm signs, openssl verifies against the hashed CA dir (with its CRL).
    let by_vfarm = t.join("by-vfarm.list");
    sign_vfarm(&data, &e, &body, &by_vfarm);
    let content = t.join("content.json");
    run(
        Command::new("openssl").args([
            "smime",
            "-verify",
            "-in",
            path_str(&by_vfarm),
            "-CApath",
            path_str(&ca_dir),
            "-crl_check",
            "-out",
            path_str(&content),
        ]),
        "openssl smime -verify of a list signed by vfarm",
    );
    let got: Value = serde_json::from_slice(&std::fs::read(&content).unwrap()).unwrap();
    let want: Value = serde_json::from_slice(&std::fs::read(&body).unwrap()).unwrap();
    assert_eq!(got, want, "openssl extracts the list vfarm signed");
    let (code, doc) = verify_cli(&by_vfarm, &ca_dir, None);
    assert_eq!(code, 0, "{doc}");

    // openssl signs, vfarm verifies.
    let by_openssl = t.join("by-openssl.list");
    sign_openssl(&e, &body, &by_openssl);
    let (code, doc) = verify_cli(&by_openssl, &ca_dir, None);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["accepted"], true);
    assert_eq!(doc["signer"]["subject"], e.dn.as_str(), "{doc}");
    assert_eq!(
        doc["list"]["hv:imagelist"]["dc:identifier"], LIST_ID,
        "{doc}"
    );
    // Table output names the signer and the verdict.
    let out = vfarm(
        &data,
        &[
            "imagelist",
            "verify",
            path_str(&by_openssl),
            "--ca-dir",
            path_str(&ca_dir),
        ],
    );
    assert_success(&out, "vfarm imagelist verify");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("verdict:     accepted") && s.contains(&e.dn),
        "{s}"
    );

    // One changed byte of content: both refuse it.
    for (name, signed) in [("vfarm", &by_vfarm), ("openssl", &by_openssl)] {
        let raw = std::fs::read_to_string(signed).unwrap();
        assert!(raw.contains("\"hv:version\": \"1\""), "{name}");
        let tampered = t.join(format!("tampered-{name}.list"));
        std::fs::write(
            &tampered,
            raw.replacen("\"hv:version\": \"1\"", "\"hv:version\": \"9\"", 1),
        )
        .unwrap();
        let (code, doc) = verify_cli(&tampered, &ca_dir, None);
        assert_eq!(
            (code, doc["code"].as_str()),
            (1, Some("bad_signature")),
            "{doc}"
        );
        let o = Command::new("openssl")
            .args(["smime", "-verify", "-in", path_str(&tampered)])
            .args(["-CApath", path_str(&ca_dir), "-out", "/dev/null"])
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "openssl accepted a tampered {name} list"
        );
    }

    // vfarm refuses to sign a list whose endorser is not the certificate.
    let other = t.join("other.json");
    std::fs::write(
        &other,
        String::from_utf8(std::fs::read(&body).unwrap())
            .unwrap()
            .replace("Interop Endorser", "Somebody Else"),
    )
    .unwrap();
    let out = vfarm(
        &data,
        &[
            "imagelist",
            "sign",
            "--cert",
            path_str(&e.cert),
            "--key",
            path_str(&e.key),
            path_str(&other),
            path_str(&t.join("never.list")),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!t.join("never.list").exists());
}

// ---------------------------------------------------------------------------------------
// Acceptance 3: every refusal, with its own reason, and an unchanged cache.

/// A loopback HTTP server that announces `len` bytes and sends only `send` of them.
fn truncating_server(body: Vec<u8>, send: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            // Read the request head.
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body[..send]);
            let _ = s.flush();
            // Dropping the stream closes the connection mid-body.
        }
    });
    format!("http://{addr}")
}

#[test]
fn every_refusal_has_its_own_reason_and_leaves_the_cache_unchanged() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    const CA_DN: &str = "/C=XX/O=vfarm test/CN=Site CA";
    const E_DN: &str = "/C=XX/O=vfarm test/OU=sites/CN=Endorser";
    const EXPIRED_DN: &str = "/C=XX/O=vfarm test/OU=sites/CN=Expired Endorser";
    const REVOKED_DN: &str = "/C=XX/O=vfarm test/OU=sites/CN=Revoked Endorser";

    let ca = Ca::new(&t.join("ca"), CA_DN);
    let e = ca.endorser("endorser", E_DN);
    let expired = ca.issue("expired", EXPIRED_DN, "20200101000000Z", "20210101000000Z");
    let revoked = ca.endorser("revoked", REVOKED_DN);
    ca.revoke(&revoked);
    let ca_dir = t.join("certificates");
    ca.install(&ca_dir, true);
    // Same subject as the trusted CA, different key; not in the CA dir.
    let rogue_ca = Ca::new(&t.join("rogue"), CA_DN);
    let rogue = rogue_ca.endorser("rogue", E_DN);
    // A CA nobody trusts.
    let other_ca = Ca::new(&t.join("other"), "/C=XX/O=elsewhere/CN=Other CA");
    let stranger = other_ca.endorser("stranger", "/C=XX/O=elsewhere/CN=Stranger");

    let a = t.join("a.img");
    random_file(&a, 64 * 1024, 1);
    let b = t.join("b.img");
    random_file(&b, 48 * 1024, 2);
    let img_a = Img::local("aaaaaaaa-0000-4000-8000-00000000000a", "image-a", &a, "1");
    let img_b = Img::local("bbbbbbbb-0000-4000-8000-00000000000b", "image-b", &b, "1");

    let published = t.join("published.list");
    let url = format!("file://{}", published.display());
    let spec = |version: &'static str, images: Vec<Img>| ListSpec {
        identifier: LIST_ID,
        version,
        created: CREATED,
        expires: EXPIRES,
        uri: "http://127.0.0.1/imagelists/site.list",
        dn: E_DN,
        ca: CA_DN,
        images,
    };
    let n = std::cell::Cell::new(0);
    // Write a list body, sign it with `c` (openssl: no sanity checks) and publish it.
    let publish = |s: &ListSpec<'_>, c: &Cred| {
        n.set(n.get() + 1);
        let body = t.join(format!("body{}.json", n.get()));
        std::fs::write(&body, list_json(s)).unwrap();
        sign_openssl(c, &body, &published);
    };

    // v1: image A, accepted and cached. All three endorser DNs are authorised for any
    // trusted CA, so only the certificate checks stand between them and the cache.
    publish(&spec("1", vec![img_a.clone()]), &e);
    let out = vfarm(
        &data,
        &[
            "subscription",
            "add",
            &url,
            "--ca-dir",
            path_str(&ca_dir),
            "--endorser",
            E_DN,
            "--endorser",
            EXPIRED_DN,
            "--endorser",
            REVOKED_DN,
            "--output",
            "json",
        ],
    );
    assert_success(&out, "subscription add");
    let doc = json_of(&out);
    let sub = doc["subscription"]["id"].as_str().unwrap().to_string();
    assert_eq!(doc["update"]["result"], "accepted", "{doc}");
    let held = vec![(img_a.identifier.clone(), img_a.sha512.clone())];
    assert_eq!(cached_ids(&data), held);
    let before = cache_ls(&data);
    let files_before = cache_files(&data);
    assert_eq!(files_before.len(), 1, "{files_before:?}");

    let mut seen_codes: Vec<String> = Vec::new();
    // The list now at `url` must be refused with `code`, its reason mentioning `detail`.
    let mut refused = |what: &str, code: &str, detail: &str| {
        let (exit, r) = update(&data, &sub);
        assert_eq!(exit, 1, "{what}: update must fail: {r}");
        assert_eq!(r["result"], "refused", "{what}: {r}");
        assert_eq!(r["refused"]["code"], code, "{what}: {r}");
        let reason = r["refused"]["reason"].as_str().unwrap();
        assert!(
            reason.contains(detail),
            "{what}: reason {reason:?} lacks {detail:?}"
        );
        assert_eq!(cache_ls(&data), before, "{what}: cache ls changed");
        assert_eq!(
            cache_files(&data),
            files_before,
            "{what}: cache files changed"
        );
        let show = json_of(&vfarm(
            &data,
            &["subscription", "show", &sub, "--output", "json"],
        ));
        assert_eq!(show["list"]["version"], "1", "{what}: {show}");
        assert!(
            show["subscription"]["last_error"]
                .as_str()
                .is_some_and(|e| e.starts_with(code)),
            "{what}: {show}"
        );
        seen_codes.push(code.to_string());
    };

    // Tampered body: a correctly signed v2, one byte changed afterwards.
    publish(&spec("2", vec![img_a.clone(), img_b.clone()]), &e);
    let raw = std::fs::read_to_string(&published).unwrap();
    assert!(raw.contains("image-b"));
    std::fs::write(&published, raw.replacen("image-b", "image-c", 1)).unwrap();
    refused("tampered body", "bad_signature", "modified after signing");

    publish(&spec("2", vec![img_a.clone(), img_b.clone()]), &stranger);
    refused("untrusted signer", "untrusted_signer", "Stranger");

    publish(&spec("2", vec![img_a.clone(), img_b.clone()]), &rogue);
    refused("same-DN rogue CA", "rogue_issuer", "same name");

    let mut mismatch = spec("2", vec![img_a.clone(), img_b.clone()]);
    mismatch.dn = "/C=XX/O=vfarm test/OU=sites/CN=Somebody Else";
    publish(&mismatch, &e);
    refused("DN mismatch", "endorser_mismatch", "Somebody Else");

    let mut s = spec("2", vec![img_a.clone(), img_b.clone()]);
    s.dn = EXPIRED_DN;
    publish(&s, &expired);
    refused("expired certificate", "certificate_expired", "2021-01-01");

    let mut s = spec("2", vec![img_a.clone(), img_b.clone()]);
    s.dn = REVOKED_DN;
    publish(&s, &revoked);
    refused(
        "revoked certificate",
        "certificate_revoked",
        "Revoked Endorser",
    );

    let mut s = spec("2", vec![img_a.clone(), img_b.clone()]);
    s.expires = "2021-01-01T00:00:00Z";
    publish(&s, &e);
    refused("expired list", "list_expired", "2021-01-01T00:00:00Z");

    let mut s = spec("2", vec![img_a.clone(), img_b.clone()]);
    s.created = "2099-01-01T00:00:00Z";
    s.expires = "2099-02-01T00:00:00Z";
    publish(&s, &e);
    refused("future list", "list_from_future", "2099-01-01T00:00:00Z");

    publish(&spec("0", vec![img_a.clone(), img_b.clone()]), &e);
    refused("rollback", "rollback", "version 0");

    let mut s = spec("2", vec![img_a.clone(), img_b.clone()]);
    s.identifier = "0d3a4c55-ffff-4fff-8fff-000000000000";
    publish(&s, &e);
    refused("changed identifier", "identifier_changed", LIST_ID);

    // Image-level refusals: the list is fine (and accepted), the new image B is not.
    let mut failed_codes: Vec<String> = Vec::new();
    let mut image_refused = |what: &str, version: &'static str, b: Img, code: &str| {
        publish(&spec(version, vec![img_a.clone(), b]), &e);
        let (exit, r) = update(&data, &sub);
        assert_eq!(
            exit, 1,
            "{what}: an image that cannot be cached fails the update: {r}"
        );
        assert_eq!(r["result"], "accepted", "{what}: {r}");
        let failed = r["failed"].as_array().unwrap();
        assert_eq!(failed.len(), 1, "{what}: {r}");
        assert_eq!(failed[0]["image"], img_b.identifier.as_str(), "{what}: {r}");
        assert_eq!(failed[0]["code"], code, "{what}: {r}");
        assert!(!failed[0]["reason"].as_str().unwrap().is_empty());
        assert_eq!(r["cached"], json!([]), "{what}: {r}");
        assert_eq!(cache_ls(&data), before, "{what}: cache ls changed");
        assert_eq!(
            cache_files(&data),
            files_before,
            "{what}: cache files changed"
        );
        // Nothing half-downloaded is left where the cache looks.
        let partial = data.join("imagelist-cache/partial");
        let leftovers: Vec<_> = std::fs::read_dir(&partial)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(
            leftovers.is_empty(),
            "{what}: partial files left: {leftovers:?}"
        );
        failed_codes.push(code.to_string());
    };

    let mut bad_sha = img_b.clone();
    bad_sha.sha512 = sha512_hex(b"not the image");
    image_refused("wrong sha512", "2", bad_sha, "sha512_mismatch");

    let mut bad_size = img_b.clone();
    bad_size.size -= 1000;
    image_refused("wrong size", "3", bad_size, "size_mismatch");

    let b_bytes = std::fs::read(&b).unwrap();
    let base = truncating_server(b_bytes.clone(), b_bytes.len() / 2);
    let mut truncated = img_b.clone();
    truncated.uri = format!("{base}/b.img");
    image_refused("truncated download", "4", truncated, "truncated");

    seen_codes.extend(failed_codes);
    let mut distinct = seen_codes.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        seen_codes.len(),
        "codes are not distinct: {seen_codes:?}"
    );
    assert_eq!(seen_codes.len(), 13);

    // And the good image B after all that: cached, so the cache could change all along.
    publish(&spec("5", vec![img_a.clone(), img_b.clone()]), &e);
    let (exit, r) = update(&data, &sub);
    assert_eq!(exit, 0, "{r}");
    assert_eq!(r["cached"], json!([img_b.identifier]), "{r}");
    let mut want = vec![
        (img_a.identifier.clone(), img_a.sha512.clone()),
        (img_b.identifier.clone(), img_b.sha512.clone()),
    ];
    want.sort();
    assert_eq!(cached_ids(&data), want);
}

// ---------------------------------------------------------------------------------------
// Acceptance 4: publish, serve, subscribe, update; repository images; event hooks.

/// A minimal rootfs tarball (`etc/os-release` + one file) that `vfarm` can import.
fn rootfs_tar(dir: &Path, name: &str, version: &str) -> PathBuf {
    require("tar");
    let root = dir.join(format!("{name}-root"));
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/os-release"),
        format!("ID=vfarmtest\nNAME=\"vfarm test {name}\"\nVERSION_ID=\"{version}\"\n"),
    )
    .unwrap();
    std::fs::write(root.join("etc/hostname"), format!("{name}\n")).unwrap();
    let tar = dir.join(format!("{name}-{version}.tar"));
    run(
        Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["--owner=0", "--group=0", "-cf"])
            .arg(&tar)
            .arg("."),
        "tar",
    );
    tar
}

/// `python3 -m http.server` on loopback over `dir`, killed on drop.
struct FileServer {
    child: std::process::Child,
    dir: PathBuf,
    base: String,
}

impl FileServer {
    fn start(dir: &Path) -> FileServer {
        require("python3");
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        FileServer {
            child,
            dir: dir.to_path_buf(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn url(&self, file: &Path) -> String {
        let rel = file
            .strip_prefix(&self.dir)
            .expect("a file under the served dir");
        format!("{}/{}", self.base, rel.display())
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(url: &str) -> Vec<u8> {
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let resp = reqwest::blocking::get(url).unwrap();
    assert_eq!(resp.status(), 200, "GET {url}");
    resp.bytes().unwrap().to_vec()
}

#[test]
fn published_list_is_served_subscribed_and_updated_with_hooks() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let publisher = t.join("publisher");
    let site = t.join("site");
    const CA_DN: &str = "/C=XX/O=vfarm test/CN=Publisher CA";
    const E_DN: &str = "/C=XX/O=vfarm test/OU=publishers/CN=Publisher";
    let ca = Ca::new(&t.join("ca"), CA_DN);
    let e = ca.endorser("publisher", E_DN);
    let ca_dir = t.join("certificates");
    ca.install(&ca_dir, false);

    let srv = Server::start(&publisher);
    let list_url = format!("{}/imagelists/site.list", srv.base);

    let a1 = rootfs_tar(t, "alpha", "1");
    let a2 = rootfs_tar(t, "alpha", "2");
    let b1 = rootfs_tar(t, "beta", "1");
    let c1 = rootfs_tar(t, "gamma", "1");
    // A list fetched over HTTP may name only http(s) images: the tarballs are served too.
    let files = FileServer::start(t);
    let tar_img = |id: &str, title: &str, f: &Path, v: &str| {
        let mut i = Img::of_file(id, title, f, &files.url(f), v);
        i.format = Some("tar");
        i
    };
    const A: &str = "a1a1a1a1-1111-4111-8111-111111111111";
    const B: &str = "b2b2b2b2-2222-4222-8222-222222222222";
    const C: &str = "c3c3c3c3-3333-4333-8333-333333333333";
    let img_a1 = tar_img(A, "Alpha", &a1, "1");
    let img_a2 = tar_img(A, "Alpha", &a2, "2");
    let img_b1 = tar_img(B, "Beta", &b1, "1");
    let img_c1 = tar_img(C, "Gamma", &c1, "1");

    // Sign with vfarm and publish; the served bytes are exactly the signed file.
    let publish = |version: &str, images: Vec<Img>| {
        let body = t.join(format!("site-v{version}.json"));
        std::fs::write(
            &body,
            list_json(&ListSpec {
                identifier: LIST_ID,
                version,
                created: CREATED,
                expires: EXPIRES,
                uri: &list_url,
                dn: E_DN,
                ca: CA_DN,
                images,
            }),
        )
        .unwrap();
        let signed = t.join(format!("site-v{version}.list"));
        sign_vfarm(&publisher, &e, &body, &signed);
        let out = vfarm(
            &publisher,
            &[
                "imagelist",
                "publish",
                path_str(&signed),
                "--name",
                "site",
                "--output",
                "json",
            ],
        );
        assert_success(&out, "imagelist publish");
        let doc = json_of(&out);
        assert_eq!(doc["path"], "/imagelists/site.list", "{doc}");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("warning"),
            "hv:uri is where it is served: {}",
            text(&out)
        );
        assert_eq!(http_get(&list_url), std::fs::read(&signed).unwrap());
    };

    publish("1", vec![img_a1.clone(), img_b1.clone()]);

    let events = t.join("events.log");
    let hook = format!(
        "printf '%s %s %s %s\\n' \"$VMCATCHER_EVENT_TYPE\" \"$VMCATCHER_EVENT_DC_IDENTIFIER\" \"$VMCATCHER_EVENT_HV_VERSION\" \"${{VMCATCHER_EVENT_IL_DC_IDENTIFIER:--}}\" >> {}",
        events.display()
    );
    let dirs = t.join("dirs.log");
    let hook = format!(
        "{hook}; echo \"$VMCATCHER_CACHE_DIR_CACHE $VMCATCHER_CACHE_DIR_EXPIRE\" > {}",
        dirs.display()
    );
    let out = vfarm(
        &site,
        &[
            "subscription",
            "add",
            &list_url,
            "--ca-dir",
            path_str(&ca_dir),
            "--hook",
            &hook,
            "--output",
            "json",
        ],
    );
    assert_success(&out, "subscription add");
    let doc = json_of(&out);
    let sub = doc["subscription"]["id"].as_str().unwrap().to_string();
    let u = &doc["update"];
    assert_eq!(u["result"], "accepted", "{doc}");
    assert_eq!(u["version"], "1");
    assert_eq!(
        u["warnings"],
        json!([]),
        "the list is where its hv:uri says: {doc}"
    );
    let mut new: Vec<&str> = u["new"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    new.sort();
    assert_eq!(new, vec![A, B]);
    // First use: the signer became the subscription's endorser.
    assert_eq!(doc["subscription"]["endorsers"][0]["dn"], E_DN, "{doc}");
    let mut want = vec![
        (A.to_string(), img_a1.sha512.clone()),
        (B.to_string(), img_b1.sha512.clone()),
    ];
    want.sort();
    assert_eq!(cached_ids(&site), want);

    let log = std::fs::read_to_string(&events).unwrap_or_default();
    for line in [
        format!("SubscriptionImageNew {A} 1 {LIST_ID}"),
        format!("AvailablePrefix {A} 1 {LIST_ID}"),
        format!("AvailablePostfix {A} 1 {LIST_ID}"),
        format!("AvailablePostfix {B} 1 {LIST_ID}"),
    ] {
        assert!(
            log.lines().any(|l| l == line),
            "no `{line}` event in:\n{log}"
        );
    }
    std::fs::remove_file(&events).unwrap();
    assert_eq!(
        std::fs::read_to_string(&dirs).unwrap().trim(),
        format!(
            "{} {}",
            site.join("imagelist-cache/cache").display(),
            site.join("imagelist-cache/expired").display()
        )
    );

    // v2: A replaced by a new version, B dropped (expired), C new.
    publish("2", vec![img_a2.clone(), img_c1.clone()]);
    let (code, r) = update(&site, &sub);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["result"], "accepted", "{r}");
    assert_eq!(r["version"], "2");
    assert_eq!(r["replaced"], json!([A]), "{r}");
    assert_eq!(r["expired"], json!([B]), "{r}");
    assert_eq!(r["new"], json!([C]), "{r}");
    let mut want = vec![
        (A.to_string(), img_a2.sha512.clone()),
        (C.to_string(), img_c1.sha512.clone()),
    ];
    want.sort();
    assert_eq!(cached_ids(&site), want, "cache after v2");
    // The expired image went to the expired area, not into thin air.
    let expired_dir = site.join("imagelist-cache/expired");
    let moved: Vec<String> = std::fs::read_dir(&expired_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(moved.iter().any(|n| n.contains(B)), "{moved:?}");
    let show = json_of(&vfarm(
        &site,
        &["subscription", "show", &sub, "--output", "json"],
    ));
    assert_eq!(show["list"]["version"], "2", "{show}");
    let state = |id: &str| {
        show["images"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["identifier"] == id)
            .map(|i| i["state"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert!(state(B).iter().all(|s| s == "expired"), "{show}");
    assert!(state(C).iter().any(|s| s == "available"), "{show}");

    let log = std::fs::read_to_string(&events).unwrap_or_default();
    for line in [
        format!("ExpirePrefix {B} 1 -"),
        format!("ExpirePostfix {B} 1 -"),
        format!("SubscriptionImageNew {C} 1 {LIST_ID}"),
        format!("AvailablePostfix {C} 1 {LIST_ID}"),
        format!("AvailablePostfix {A} 2 {LIST_ID}"),
    ] {
        assert!(
            log.lines().any(|l| l == line),
            "no `{line}` event in:\n{log}"
        );
    }

    // The cached images are repository images, found by their identifier…
    let ls = json_of(&vfarm(&site, &["image", "ls", "--output", "json"]));
    for (id, file, title) in [(A, &a2, "Alpha"), (C, &c1, "Gamma")] {
        let out = vfarm(&site, &["image", "show", id, "--output", "json"]);
        assert_success(&out, &format!("image show {id}"));
        let img = json_of(&out);
        let sha = sha512_hex(&std::fs::read(file).unwrap());
        let arts = img["artifacts"].as_array().unwrap();
        assert!(
            arts.iter()
                .any(|a| a["format"] == "tar" && a["sha512"] == sha.as_str()),
            "{id}: {img}"
        );
        assert!(
            ls.as_array().unwrap().iter().any(|i| i["id"] == img["id"]),
            "{id} not in image ls: {ls}"
        );
        // …and through the cache by their title.
        let out = vfarm(&site, &["cache", "show", title, "--output", "json"]);
        assert_success(&out, &format!("cache show {title}"));
        let c = json_of(&out);
        assert_eq!(c["cache"]["identifier"], id, "{c}");
        assert_eq!(c["cache"]["image_id"], img["id"], "{c}");
        // …and as repository images by their title too.
        let out = vfarm(&site, &["image", "show", title, "--output", "json"]);
        assert_success(&out, &format!("image show {title}"));
        assert_eq!(json_of(&out)["id"], img["id"]);
    }
    // The expired image's title no longer resolves either.
    let out = vfarm(&site, &["image", "show", "Beta"]);
    assert!(
        !out.status.success(),
        "expired image resolves by title: {}",
        text(&out)
    );
    // The expired image is no longer usable by its identifier.
    let out = vfarm(&site, &["image", "show", B]);
    assert!(
        !out.status.success(),
        "expired image still resolves: {}",
        text(&out)
    );

    // The same list again: nothing to do.
    let (code, r) = update(&site, &sub);
    assert_eq!((code, r["result"].as_str()), (0, Some("unchanged")), "{r}");

    // The publisher rolls back to v1: refused, exit 1, and the table says why.
    let v1 = std::fs::read(t.join("site-v1.list")).unwrap();
    std::fs::write(publisher.join("published/site.list"), &v1).unwrap();
    assert_eq!(http_get(&list_url), v1);
    let out = vfarm(&site, &["subscription", "update", "--all"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("refused (rollback)") && s.contains("lower than"),
        "{s}"
    );
    assert_eq!(cached_ids(&site), want, "a refused list changes nothing");

    // Expiring by hand (by title) does the same as the list dropping it.
    let out = vfarm(&site, &["cache", "expire", "Gamma", "--output", "json"]);
    assert_success(&out, "cache expire");
    assert_eq!(json_of(&out)["expired"], C);
    assert_eq!(
        cached_ids(&site),
        vec![(A.to_string(), img_a2.sha512.clone())]
    );
    let out = vfarm(&site, &["image", "show", C]);
    assert!(
        !out.status.success(),
        "expired image still resolves: {}",
        text(&out)
    );
    let out = vfarm(&site, &["image", "show", A]);
    assert_success(&out, "image show of the image still cached");

    // The publisher is gone: refused with the download error, nothing changes.
    let before = cache_ls(&site);
    drop(srv);
    let (code, r) = update(&site, &sub);
    assert_eq!(code, 1, "{r}");
    assert_eq!(r["refused"]["code"], "transport", "{r}");
    assert!(
        r["refused"]["reason"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{r}"
    );
    assert_eq!(cache_ls(&site), before);

    // Revoking an image: it leaves the cache and nothing new may start from it, not even by
    // its repository id.
    let out = vfarm(&site, &["image", "show", A, "--output", "json"]);
    assert_success(&out, "image show before revoke");
    let repo_id = json_of(&out)["id"].as_str().unwrap().to_string();
    let out = vfarm(
        &site,
        &["subscription", "revoke", "image", A, "--reason", "test"],
    );
    assert_success(&out, "subscription revoke image");
    assert!(cached_ids(&site).is_empty(), "revoked image still cached");
    let out = vfarm(&site, &["run", "--image", &repo_id, "--", "true"]);
    assert!(!out.status.success(), "a revoked image started an instance");
    assert!(text(&out).contains("revoked"), "{}", text(&out));
}

#[test]
fn ext4_disk_image_from_a_list_becomes_a_raw_repository_image() {
    require("openssl");
    require("mkfs.ext4");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    const CA_DN: &str = "/C=XX/O=vfarm test/CN=Disk CA";
    const E_DN: &str = "/C=XX/O=vfarm test/CN=Disk Endorser";
    let ca = Ca::new(&t.join("ca"), CA_DN);
    let e = ca.endorser("disk", E_DN);
    let ca_dir = t.join("certificates");
    ca.install(&ca_dir, true);

    let disk = t.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "vfarmtest"])
            .arg(&disk),
        "mkfs.ext4",
    );
    let mut img = Img::local("d4d4d4d4-4444-4444-8444-444444444444", "Disk", &disk, "1");
    img.format = Some("raw");
    let body = t.join("disk.json");
    std::fs::write(
        &body,
        list_json(&ListSpec {
            identifier: LIST_ID,
            version: "1",
            created: CREATED,
            expires: EXPIRES,
            uri: "http://127.0.0.1/imagelists/disk.list",
            dn: E_DN,
            ca: CA_DN,
            images: vec![img.clone()],
        }),
    )
    .unwrap();
    let signed = t.join("disk.list");
    sign_vfarm(&data, &e, &body, &signed);
    let out = vfarm(
        &data,
        &[
            "subscription",
            "add",
            path_str(&signed),
            "--ca-dir",
            path_str(&ca_dir),
            "--output",
            "json",
        ],
    );
    assert_success(&out, "subscription add");
    let doc = json_of(&out);
    assert_eq!(doc["update"]["cached"], json!([img.identifier]), "{doc}");
    // Subscribed as a path: the list's hv:uri differs, which is worth a warning.
    assert!(
        doc["update"]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("published at")),
        "{doc}"
    );
    let out = vfarm(
        &data,
        &["image", "show", &img.identifier, "--output", "json"],
    );
    assert_success(&out, "image show");
    let shown = json_of(&out);
    assert!(
        shown["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["format"] == "raw" && a["sha512"] == img.sha512.as_str()),
        "{shown}"
    );

    // A cached copy that rots is found and removed by `cache verify`.
    let entry = &cache_ls(&data)[0];
    let file = PathBuf::from(entry["file"].as_str().unwrap());
    let mut bytes = Vec::new();
    std::fs::File::open(&file)
        .unwrap()
        .read_to_end(&mut bytes)
        .unwrap();
    // Break the link to the repository copy before corrupting the cached one.
    std::fs::remove_file(&file).unwrap();
    bytes[2048] ^= 0xff;
    std::fs::write(&file, &bytes).unwrap();
    let out = vfarm(&data, &["cache", "verify", "--output", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v = json_of(&out);
    assert_eq!(v[0]["ok"], false, "{v}");
    assert_eq!(v[0]["code"], "sha512_mismatch", "{v}");
    assert_eq!(cache_ls(&data), json!([]));
}

#[test]
fn list_made_from_repository_images_keeps_its_identity_across_versions() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let publisher = t.join("publisher");
    let site = t.join("site");
    const CA_DN: &str = "/C=XX/O=vfarm test/CN=Repo CA";
    const E_DN: &str = "/C=XX/O=vfarm test/CN=Repo Publisher";
    let ca = Ca::new(&t.join("ca"), CA_DN);
    let e = ca.endorser("repo", E_DN);
    let ca_dir = t.join("certificates");
    ca.install(&ca_dir, true);
    let srv = Server::start(&publisher);
    let list_url = format!("{}/imagelists/repo.list", srv.base);

    // Import a rootfs as `web`, list it, sign and publish: version `v`.
    let release = |v: &str| -> (Value, String) {
        let tar = rootfs_tar(t, "web", v);
        let sha = sha512_hex(&std::fs::read(&tar).unwrap());
        if v != "1" {
            // A rebuild: the old `web` goes, the new one takes its name.
            assert_success(&vfarm(&publisher, &["image", "rm", "web"]), "image rm");
        }
        let out = vfarm(
            &publisher,
            &["image", "import", path_str(&tar), "--name", "web"],
        );
        assert_success(&out, "image import");
        let body = t.join(format!("repo-v{v}.json"));
        let out = vfarm(
            &publisher,
            &[
                "imagelist",
                "create",
                "--image",
                "web",
                "--uri",
                &list_url,
                // Served by the publisher: a list fetched over HTTP names no file:// images.
                "--image-base-url",
                &format!("{}/repository", srv.base),
                "--title",
                "Repo list",
                "--list-version",
                v,
                "--cert",
                path_str(&e.cert),
                "-o",
                path_str(&body),
                "--output",
                "json",
            ],
        );
        assert_success(&out, "imagelist create --image");
        let list = json_of(&out);
        let l = &list["hv:imagelist"];
        assert_eq!(l["hv:endorser"]["hv:x509"]["hv:dn"], E_DN, "{list}");
        assert_eq!(l["hv:endorser"]["hv:x509"]["hv:ca"], CA_DN, "{list}");
        assert_eq!(l["hv:uri"], list_url.as_str(), "{list}");
        assert_eq!(l["hv:version"], v, "{list}");
        let img = &l["hv:images"][0]["hv:image"];
        assert_eq!(img["sl:checksum:sha512"], sha.as_str(), "{list}");
        assert_eq!(img["hv:format"], "tar", "{list}");
        let signed = t.join(format!("repo-v{v}.list"));
        sign_vfarm(&publisher, &e, &body, &signed);
        let out = vfarm(
            &publisher,
            &["imagelist", "publish", path_str(&signed), "--name", "repo"],
        );
        assert_success(&out, "imagelist publish");
        assert_eq!(http_get(&list_url), std::fs::read(&signed).unwrap());
        (list, sha)
    };

    let (l1, sha1) = release("1");
    let id1 = l1["hv:imagelist"]["hv:images"][0]["hv:image"]["dc:identifier"]
        .as_str()
        .unwrap()
        .to_string();
    // The default hook comes from $VMCATCHER_CACHE_EVENT, as with vmcatcher.
    let events = t.join("events.log");
    let hook = format!(
        "echo \"$VMCATCHER_EVENT_TYPE $VMCATCHER_EVENT_DC_IDENTIFIER\" >> {}",
        events.display()
    );
    let out = vfarm_env(
        &site,
        &[
            "subscription",
            "add",
            &list_url,
            "--ca-dir",
            path_str(&ca_dir),
            "--output",
            "json",
        ],
        &[("VMCATCHER_CACHE_EVENT", &hook)],
    );
    assert_success(&out, "subscription add");
    let doc = json_of(&out);
    let sub = doc["subscription"]["id"].as_str().unwrap().to_string();
    assert_eq!(doc["update"]["cached"], json!([id1]), "{doc}");
    assert_eq!(cached_ids(&site), vec![(id1.clone(), sha1)]);
    let log = std::fs::read_to_string(&events).unwrap_or_default();
    assert!(
        log.lines().any(|l| l == format!("AvailablePostfix {id1}")),
        "{log}"
    );

    // The publisher rebuilds `web` and releases version 2 of the same list.
    let (l2, sha2) = release("2");
    assert_eq!(
        l2["hv:imagelist"]["dc:identifier"], l1["hv:imagelist"]["dc:identifier"],
        "version 2 of a list made from the same URL must keep its identifier"
    );
    let (code, r) = update(&site, &sub);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["result"], "accepted", "{r}");
    assert_eq!(
        r["replaced"],
        json!([id1]),
        "the rebuilt image replaces the old: {r}"
    );
    assert_eq!(r["new"], json!([]), "{r}");
    assert_eq!(r["expired"], json!([]), "{r}");
    assert_eq!(cached_ids(&site), vec![(id1.clone(), sha2.clone())]);
    let out = vfarm(&site, &["image", "show", &id1, "--output", "json"]);
    assert_success(&out, "image show");
    let shown = json_of(&out);
    assert!(
        shown["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["sha512"] == sha2.as_str()),
        "{shown}"
    );

    // Unsubscribing expires what it cached; the identifier no longer names an image.
    let out = vfarm(&site, &["subscription", "rm", &sub, "--output", "json"]);
    assert_success(&out, "subscription rm");
    assert_eq!(json_of(&out)["expired"], json!([id1]));
    assert_eq!(cache_ls(&site), json!([]));
    let out = vfarm(&site, &["image", "show", &id1]);
    assert!(!out.status.success(), "{}", text(&out));
    drop(srv);
}

/// `--server`: an admin makes a list of the service's repository images, signs it with a key
/// the service holds and publishes it, through the API, with the output of the local
/// commands; anyone else is refused and changes nothing.
#[test]
fn lists_are_made_signed_and_published_through_the_api_as_locally() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let publisher = t.join("publisher");
    let client = t.join("client");
    const CA_DN: &str = "/C=XX/O=vfarm test/CN=Remote CA";
    const E_DN: &str = "/C=XX/O=vfarm test/CN=Remote Publisher";
    let ca = Ca::new(&t.join("ca"), CA_DN);
    let e = ca.endorser("remote", E_DN);
    let ca_dir = t.join("certificates");
    ca.install(&ca_dir, true);
    let srv = Server::start_with(&publisher, &["--admin", "root-admin"]);
    let admin = srv.token_for("root-admin");
    let alice = srv.token_for("alice");
    let list_url = format!("{}/imagelists/remote.list", srv.base);
    let remote = |token: &str, args: &[&str]| {
        vfarm_cmd(&client)
            .args(["--server", &srv.base])
            .args(args)
            .env("VFARM_TOKEN", token)
            .output()
            .expect("run vfarm --server")
    };
    let tar = rootfs_tar(t, "web", "1");
    let out = vfarm(
        &publisher,
        &["image", "import", path_str(&tar), "--name", "web"],
    );
    assert_success(&out, "image import");

    // create --image: the same list as locally (but for the dates, which are now).
    let create = |out: &Path| -> Vec<String> {
        [
            "--output",
            "json",
            "imagelist",
            "create",
            "--image",
            "web",
            "--uri",
            &list_url,
            "--list-version",
            "3",
            "--cert",
            path_str(&e.cert),
            "-o",
            path_str(out),
        ]
        .map(String::from)
        .to_vec()
    };
    let undated = |out: &Output| {
        let mut v = json_of(out);
        v["hv:imagelist"]
            .as_object_mut()
            .expect("a list")
            .retain(|k, _| !k.starts_with("dc:date"));
        v
    };
    let (here, there) = (t.join("local.json"), t.join("remote.json"));
    let args = create(&here);
    let l = vfarm(
        &publisher,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_success(&l, "imagelist create");
    let args = create(&there);
    let r = remote(&admin, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_success(&r, "imagelist create --server");
    assert_eq!(undated(&r), undated(&l));
    assert!(
        undated(&l)["hv:imagelist"]["hv:images"][0].is_object(),
        "{}",
        text(&l)
    );

    // sign: the certificate and key are the service's files; the signed list lands here.
    let sign = |token: &str, out: &Path| {
        remote(
            token,
            &[
                "--output",
                "json",
                "imagelist",
                "sign",
                "--cert",
                path_str(&e.cert),
                "--key",
                path_str(&e.key),
                path_str(&there),
                path_str(out),
            ],
        )
    };
    let signed = t.join("remote.list");
    let r = sign(&admin, &signed);
    assert_success(&r, "imagelist sign --server");
    let local_signed = t.join("local.list");
    sign_vfarm(&publisher, &e, &here, &local_signed);
    let doc = json_of(&r);
    assert_eq!(doc["signer"]["subject"], E_DN, "{doc}");
    assert_eq!(doc["signed"], path_str(&signed), "{doc}");
    let (code, v) = verify_cli(&signed, &ca_dir, None);
    assert_eq!((code, &v["accepted"]), (0, &json!(true)), "{v}");

    // publish: the same document as locally, and the service serves the remote bytes.
    let publish = |token: Option<&str>, file: &Path| {
        let args = [
            "--output",
            "json",
            "imagelist",
            "publish",
            path_str(file),
            "--name",
            "remote",
        ];
        match token {
            Some(t) => remote(t, &args),
            None => vfarm(&publisher, &args),
        }
    };
    let l = publish(None, &local_signed);
    assert_success(&l, "imagelist publish");
    let r = publish(Some(&admin), &signed);
    assert_success(&r, "imagelist publish --server");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&l.stdout)
    );
    assert_eq!(http_get(&list_url), std::fs::read(&signed).unwrap());

    // Not an admin: refused (exit 2), the served list stays.
    let r = publish(Some(&alice), &local_signed);
    assert_eq!(r.status.code(), Some(2), "{}", text(&r));
    assert_eq!(json_of(&r)["error"]["code"], "forbidden", "{}", text(&r));
    assert_eq!(http_get(&list_url), std::fs::read(&signed).unwrap());
    let r = sign(&alice, &t.join("alice.list"));
    assert_eq!(json_of(&r)["error"]["code"], "forbidden", "{}", text(&r));
    assert!(!t.join("alice.list").exists());
    // A path the service would take from its own working directory names the field.
    let r = remote(
        &admin,
        &[
            "--output",
            "json",
            "imagelist",
            "sign",
            "--cert",
            "usercert.pem",
            "--key",
            path_str(&e.key),
            path_str(&there),
            path_str(&t.join("x.list")),
        ],
    );
    assert_eq!(json_of(&r)["error"]["field"], "cert", "{}", text(&r));
    // A description names local files: with --server it says what to do instead.
    let r = remote(&admin, &["imagelist", "create", "-f", path_str(&here)]);
    assert!(text(&r).contains("without --server"), "{}", text(&r));
}

// Issue 22, acceptance 1: the site CA's user certificates sign lists that S/MIME consumers
// (here `openssl smime`/`openssl cms`) accept against `vfarm ca init`'s CA directory; a TLS
// host certificate is refused by `imagelist sign` unless --force, and then by openssl too.
#[test]
fn a_list_signed_with_a_ca_issued_user_certificate_verifies_with_openssl() {
    require("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("data");
    let run_in = |args: &[&str]| vfarm_cmd(&data).current_dir(t).args(args).output().unwrap();
    let ok = |args: &[&str]| {
        let o = run_in(args);
        assert_success(&o, &args.join(" "));
        o
    };
    ok(&["ca", "init", "--subject", "/C=XX/O=vfarm test/CN=Site CA"]);
    ok(&[
        "ca",
        "issue-user",
        "/C=XX/O=vfarm test/CN=Lister",
        "--out",
        "signer",
    ]);
    ok(&["ca", "issue-host", "h1.example.org", "--out", "host"]);
    // The IGTF layout: certificate, CRL, namespaces and signing policy side by side.
    let certs = data.join("ca/certificates");
    let mut names: Vec<String> = std::fs::read_dir(&certs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let hash = names[0].split('.').next().unwrap().to_string();
    assert_eq!(
        names,
        ["0", "namespaces", "r0", "signing_policy"].map(|x| format!("{hash}.{x}")),
        "{}",
        certs.display()
    );
    let policy = std::fs::read_to_string(certs.join(format!("{hash}.signing_policy"))).unwrap();
    assert!(policy.contains("cond_subjects"), "{policy}");

    let tar = rootfs_tar(t, "web", "1");
    ok(&["image", "import", path_str(&tar), "--name", "web"]);
    let list_for = |cert: &str, out: &str| {
        ok(&[
            "imagelist",
            "create",
            "--image",
            "web",
            "--uri",
            "https://lists.example.org/site.list",
            "--cert",
            cert,
            "-o",
            out,
        ]);
    };
    list_for("signer/usercert.pem", "list.json");
    let o = ok(&[
        "imagelist",
        "sign",
        "--cert",
        "signer/usercert.pem",
        "--key",
        "signer/userkey.pem",
        "list.json",
        "list.smime",
    ]);
    assert!(!text(&o).contains("warning"), "{}", text(&o));
    let unsigned: Value =
        serde_json::from_slice(&std::fs::read(t.join("list.json")).unwrap()).unwrap();
    for tool in ["smime", "cms"] {
        let v = openssl(
            t,
            &[
                tool,
                "-verify",
                "-in",
                "list.smime",
                "-CApath",
                path_str(&certs),
            ],
        );
        let content: Value = serde_json::from_slice(&v.stdout).expect("the list, verified");
        assert_eq!(content, unsigned, "openssl {tool} -verify");
    }

    // A host certificate: TLS only. Refused, naming the field; nothing written.
    list_for("host/hostcert.pem", "host.json");
    let sign_host = |force: bool| {
        let mut args = vec![
            "imagelist",
            "sign",
            "--cert",
            "host/hostcert.pem",
            "--key",
            "host/hostkey.pem",
            "host.json",
            "host.smime",
        ];
        if force {
            args.push("--force");
        }
        run_in(&args)
    };
    let o = sign_host(false);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cert") && err.contains("e-mail protection") && err.contains("--force"),
        "{err}"
    );
    assert!(!t.join("host.smime").exists());
    // --force signs with a loud warning, and openssl refuses the result for its purpose.
    let o = sign_host(true);
    assert_success(&o, "imagelist sign --force");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("SIGNED ANYWAY"),
        "{}",
        text(&o)
    );
    let v = Command::new("openssl")
        .current_dir(t)
        .args([
            "smime",
            "-verify",
            "-in",
            "host.smime",
            "-CApath",
            path_str(&certs),
        ])
        .output()
        .expect("openssl");
    assert!(!v.status.success());
    assert!(
        String::from_utf8_lossy(&v.stderr).contains("unsuitable certificate purpose"),
        "{}",
        text(&v)
    );
}
