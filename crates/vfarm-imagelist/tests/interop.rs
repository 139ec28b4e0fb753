//! Interoperability with the real `openssl smime` command, both ways.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use vfarm_imagelist::{verify, Policy, TrustStore};

fn openssl(args: &[&str], dir: &Path) -> std::process::Output {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command must be installed for these tests");
    out
}

struct Setup {
    dir: tempfile::TempDir,
    ca: Cred,
    endorser: Cred,
}

fn setup() -> Setup {
    let n = now();
    let ca = ca(
        &[("C", "XX"), ("O", "interop"), ("CN", "Interop CA")],
        n - days(10),
        n + days(100),
    );
    let endorser = issue(
        &ca,
        &[("C", "XX"), ("O", "interop"), ("CN", "Interop Endorser")],
        n - days(1),
        n + days(50),
    );
    let dir = tempfile::tempdir().unwrap();
    ca_dir(&dir.path().join("ca"), &[&ca], &[]);
    std::fs::write(dir.path().join("ca.pem"), ca.cert.to_pem().unwrap()).unwrap();
    endorser.write_pem(dir.path(), "endorser");
    Setup { dir, ca, endorser }
}

fn sample(s: &Setup) -> vfarm_imagelist::ImageList {
    let img = s.dir.path().join("img");
    std::fs::write(&img, b"image bytes\n").unwrap();
    let n = now();
    list(
        "b7c1e5a4-1111-4222-8333-444455556666",
        "1",
        &s.endorser,
        n - days(1),
        n + days(7),
        vec![image_for("I", &img, "1")],
    )
}

#[test]
fn lists_signed_here_verify_with_openssl_smime() {
    let s = setup();
    let signed = sign(&sample(&s), &s.endorser);
    std::fs::write(s.dir.path().join("list.signed"), &signed).unwrap();
    let out = openssl(
        &[
            "smime",
            "-verify",
            "-in",
            "list.signed",
            "-CAfile",
            "ca.pem",
            "-out",
            "content.json",
        ],
        s.dir.path(),
    );
    assert!(
        out.status.success(),
        "openssl refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Verification successful"));
    // What openssl hands out is the list we signed.
    let content = std::fs::read(s.dir.path().join("content.json")).unwrap();
    let l = vfarm_imagelist::ImageList::from_json(&content).unwrap();
    assert_eq!(l.identifier, "b7c1e5a4-1111-4222-8333-444455556666");
    assert_eq!(l.endorsers[0].dn, s.endorser.dn());
    // And -CApath with the hashed dir works as well.
    let out = openssl(
        &[
            "smime",
            "-verify",
            "-in",
            "list.signed",
            "-CApath",
            "ca",
            "-out",
            "/dev/null",
        ],
        s.dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn lists_signed_by_openssl_smime_verify_here() {
    let s = setup();
    let json = sample(&s).to_json_pretty();
    std::fs::write(s.dir.path().join("list.json"), &json).unwrap();
    let trust = TrustStore::load(&s.dir.path().join("ca")).unwrap();
    for md in ["sha256", "sha1"] {
        let out_name = format!("list.{md}.signed");
        let out = openssl(
            &[
                "smime",
                "-sign",
                "-md",
                md,
                "-signer",
                "endorser.cert.pem",
                "-inkey",
                "endorser.key.pem",
                "-in",
                "list.json",
                "-out",
                &out_name,
            ],
            s.dir.path(),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let raw = std::fs::read(s.dir.path().join(&out_name)).unwrap();
        let v = verify(&raw, &trust, &Policy::at(now()))
            .unwrap_or_else(|r| panic!("{md}: {}", r.reason()));
        assert_eq!(v.signer.subject, s.endorser.dn());
        assert_eq!(v.signer.issuer, s.ca.dn());
        let want = if md == "sha1" { "sha1" } else { "sha-256" };
        assert_eq!(v.micalg.as_deref(), Some(want));
        assert_eq!(v.list.images[0].identifier, "I");

        // One changed byte in the body makes it fail, here and in openssl.
        let tampered = String::from_utf8(raw)
            .unwrap()
            .replacen("\"1\"", "\"2\"", 1);
        std::fs::write(s.dir.path().join("t.signed"), &tampered).unwrap();
        let err = verify(tampered.as_bytes(), &trust, &Policy::at(now())).unwrap_err();
        assert_eq!(err.code().as_str(), "bad_signature");
        let out = openssl(
            &[
                "smime",
                "-verify",
                "-in",
                "t.signed",
                "-CAfile",
                "ca.pem",
                "-out",
                "/dev/null",
            ],
            s.dir.path(),
        );
        assert!(!out.status.success());
    }
}

#[test]
fn one_line_dn_matches_openssl_compat_output() {
    let s = setup();
    let out = openssl(
        &[
            "x509",
            "-in",
            "endorser.cert.pem",
            "-noout",
            "-subject",
            "-issuer",
            "-nameopt",
            "compat",
        ],
        s.dir.path(),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!("subject={}", s.endorser.dn())),
        "{text}"
    );
    assert!(
        text.contains(&format!("issuer={}", s.endorser.ca())),
        "{text}"
    );
}
