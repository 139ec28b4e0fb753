//! The two benchmarks, printed as one JSON document:
//!
//! 1. streaming verify + cache of a 1 GiB image (file://) against `sha512sum` of the same
//!    file: the ratio of medians (goal ≤ 1.0);
//!    (`vfarm_rehash_s` is `cache verify` of the copy: read + hash only, like sha512sum);
//! 2. a subscription update of an unchanged list over loopback HTTP: requests made and time
//!    (goal: one request, ≤ 50 ms).
//!
//! Run: `cargo run --release -p vfarm-imagelist --example bench [SIZE_MIB] [DIR]`

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::BasicConstraints;
use openssl::x509::{X509Builder, X509NameBuilder};
use vfarm_imagelist::cache::{fetch_bytes, Cache, Expected, FetchOptions};
use vfarm_imagelist::model::{Endorser, ImageList};
use vfarm_imagelist::subscription::{decide, Current, Decision};
use vfarm_imagelist::trust::oneline;
use vfarm_imagelist::{verify, Policy, TrustStore};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let dir = tempfile::tempdir_in(args.get(2).map(String::as_str).unwrap_or("/var/tmp"))
        .expect("temp dir");
    let (ratio, ours, theirs, rehash) = streaming(dir.path(), mib);
    let (requests, ms) = unchanged_update(dir.path());
    let doc = serde_json::json!({
        "streaming_cache": {"size_mib": mib, "vfarm_s": ours, "sha512sum_s": theirs, "ratio": ratio, "vfarm_rehash_s": rehash, "goal": "<= 1.0"},
        "unchanged_update": {"http_requests": requests, "median_ms": ms, "goal": "1 request, <= 50 ms"},
    });
    println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
}

/// (ratio, vfarm fetch s, sha512sum s, vfarm re-hash of the cached copy s)
fn streaming(dir: &Path, mib: u64) -> (f64, f64, f64, f64) {
    let src = dir.join("image.raw");
    {
        let mut f = std::fs::File::create(&src).expect("create");
        let mut chunk = vec![0u8; 1 << 20];
        openssl::rand::rand_bytes(&mut chunk).expect("random");
        let mut h = openssl::sha::Sha512::new();
        for i in 0..mib {
            chunk[0] = i as u8;
            h.update(&chunk);
            f.write_all(&chunk).expect("write");
        }
        f.sync_all().expect("sync");
        std::fs::write(dir.join("image.sha512"), hex::encode(h.finish())).expect("write");
    }
    let sha512 = std::fs::read_to_string(dir.join("image.sha512")).expect("read");
    let expected = Expected {
        uri: format!("file://{}", src.display()),
        size: mib << 20,
        sha512,
    };
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut hash_only = Vec::new();
    for round in 0..3 {
        let t = Instant::now();
        let out = Command::new("sha512sum")
            .arg(&src)
            .output()
            .expect("sha512sum");
        assert!(out.status.success());
        theirs.push(t.elapsed().as_secs_f64());

        let cache = Cache::open(&dir.join(format!("cache{round}"))).expect("cache");
        let t = Instant::now();
        cache
            .fetch(
                "img",
                &expected,
                &FetchOptions {
                    // A local file, as a subscription to a local list may name.
                    allow_file: true,
                    ..FetchOptions::default()
                },
            )
            .expect("fetch");
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        cache.verify("img", &expected).expect("verify");
        hash_only.push(t.elapsed().as_secs_f64());
        std::fs::remove_dir_all(dir.join(format!("cache{round}"))).expect("cleanup");
    }
    let (o, s) = (median(ours), median(theirs));
    (o / s, o, s, median(hash_only))
}

fn unchanged_update(dir: &Path) -> (usize, f64) {
    // A self-signed endorser that is its own trust anchor.
    let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_text("CN", "bench endorser")
        .expect("cn");
    let name = name.build();
    let mut b = X509Builder::new().expect("builder");
    b.set_version(2).expect("v3");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(&name).expect("issuer");
    b.set_pubkey(&key).expect("key");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("t"))
        .expect("nb");
    b.set_not_after(&Asn1Time::days_from_now(30).expect("t"))
        .expect("na");
    b.append_extension(BasicConstraints::new().ca().build().expect("bc"))
        .expect("ext");
    b.sign(&key, MessageDigest::sha256()).expect("sign");
    let cert = b.build();
    let ca = dir.join("ca");
    std::fs::create_dir_all(&ca).expect("ca dir");
    std::fs::write(
        ca.join(format!("{:08x}.0", cert.subject_name_hash())),
        cert.to_pem().expect("pem"),
    )
    .expect("write");

    let now = chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("now");
    let list = ImageList {
        identifier: "bench".into(),
        created: now - chrono::Duration::hours(1),
        expires: now + chrono::Duration::days(1),
        title: "bench".into(),
        description: String::new(),
        source: String::new(),
        uri: "http://127.0.0.1/list".into(),
        version: "1".into(),
        endorsers: vec![Endorser {
            dn: oneline(cert.subject_name()),
            ca: oneline(cert.issuer_name()),
            email: String::new(),
            creator: String::new(),
            extra: Default::default(),
        }],
        endorser_array: false,
        images: Vec::new(),
        extra: Default::default(),
    };
    let signed =
        vfarm_imagelist::smime::sign(&list.to_json_pretty(), &cert, &key, &[]).expect("sign");

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/list", listener.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let body = signed.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            h.fetch_add(1, Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });

    let trust = TrustStore::load(&ca).expect("trust");
    let accepted = verify(&signed, &trust, &Policy::at(Utc::now())).expect("accepted");
    let current = Current {
        identifier: accepted.list.identifier.clone(),
        version: accepted.list.version.clone(),
        list_sha512: accepted.raw_sha512.clone(),
        images: Default::default(),
    };
    let mut times = Vec::new();
    let rounds = 10;
    for _ in 0..rounds {
        let t = Instant::now();
        let raw = fetch_bytes(&url, Duration::from_secs(10)).expect("fetch");
        // The byte-identical check needs no signature work, but an update verifies anyway so
        // a CA or CRL change is noticed; that is what is timed.
        let trust = TrustStore::load(&ca).expect("trust");
        let v = verify(&raw, &trust, &Policy::at(Utc::now())).expect("verified");
        assert!(matches!(
            decide(Some(&current), &v, Utc::now()),
            Ok(Decision::Unchanged)
        ));
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (hits.load(Ordering::SeqCst) / rounds, median(times))
}
