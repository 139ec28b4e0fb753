//! Streaming downloads into the cache, over file:// and loopback HTTP.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use vfarm_imagelist::cache::{Cache, Expected, FetchOptions};

fn opts(attempts: u32) -> FetchOptions {
    FetchOptions {
        attempts,
        retry_delay: Duration::ZERO,
        timeout: Duration::from_secs(30),
        allow_file: true,
    }
}

fn expect(uri: &str, body: &[u8]) -> Expected {
    Expected {
        uri: uri.to_string(),
        size: body.len() as u64,
        sha512: sha512_hex(body),
    }
}

#[test]
fn file_download_is_verified_and_moved_in() {
    let d = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let src = d.path().join("src.img");
    std::fs::write(&src, &body).unwrap();
    let cache = Cache::open(&d.path().join("c")).unwrap();
    let got = cache
        .fetch(
            "img-1",
            &expect(&format!("file://{}", src.display()), &body),
            &opts(1),
        )
        .unwrap();
    assert_eq!(got.size, body.len() as u64);
    assert_eq!(got.sha512, sha512_hex(&body));
    assert_eq!(std::fs::read(cache.path_of("img-1")).unwrap(), body);
    assert!(std::fs::read_dir(cache.partial_dir())
        .unwrap()
        .next()
        .is_none());
    cache.verify("img-1", &expect("x", &body)).unwrap();
    let files = cache.files().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].name, "img-1");
}

#[test]
fn a_failed_download_never_replaces_a_good_copy() {
    let d = tempfile::tempdir().unwrap();
    let good = b"good image".to_vec();
    let src = d.path().join("good");
    std::fs::write(&src, &good).unwrap();
    let cache = Cache::open(&d.path().join("c")).unwrap();
    let uri = format!("file://{}", src.display());
    cache.fetch("img", &expect(&uri, &good), &opts(1)).unwrap();

    // The source changes under us (a new list announces other bytes); every kind of failure
    // leaves the cached copy alone.
    std::fs::write(&src, b"evil image!!").unwrap();
    let wrong_sha = Expected {
        uri: uri.clone(),
        size: 12,
        sha512: sha512_hex(b"something else"),
    };
    let e = cache.fetch("img", &wrong_sha, &opts(2)).unwrap_err();
    assert_eq!(e.code().as_str(), "sha512_mismatch");
    let too_small = Expected {
        size: 5,
        ..wrong_sha.clone()
    };
    assert_eq!(
        cache
            .fetch("img", &too_small, &opts(1))
            .unwrap_err()
            .code()
            .as_str(),
        "size_mismatch"
    );
    let too_big = Expected {
        size: 500,
        ..wrong_sha.clone()
    };
    assert_eq!(
        cache
            .fetch("img", &too_big, &opts(1))
            .unwrap_err()
            .code()
            .as_str(),
        "truncated"
    );
    let missing = Expected {
        uri: format!("file://{}/nope", d.path().display()),
        ..wrong_sha
    };
    assert_eq!(
        cache
            .fetch("img", &missing, &opts(1))
            .unwrap_err()
            .code()
            .as_str(),
        "source_unreadable"
    );
    assert_eq!(std::fs::read(cache.path_of("img")).unwrap(), good);
    assert!(std::fs::read_dir(cache.partial_dir())
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn http_download_retries_a_cut_short_transfer_then_succeeds() {
    let server = Server::start();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
    let mut r = reply(body.clone());
    r.cut_first = 1;
    let url = server.put("/img", r);
    let d = tempfile::tempdir().unwrap();
    let cache = Cache::open(d.path()).unwrap();
    let got = cache.fetch("img", &expect(&url, &body), &opts(3)).unwrap();
    assert_eq!(got.attempts, 2);
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    assert_eq!(std::fs::read(cache.path_of("img")).unwrap(), body);
}

#[test]
fn http_failures_are_bounded_and_named() {
    let server = Server::start();
    let d = tempfile::tempdir().unwrap();
    let cache = Cache::open(d.path()).unwrap();
    let body = b"0123456789".to_vec();
    // 404: retried up to the bound, then reported with the status.
    let e = cache
        .fetch(
            "x",
            &expect(&format!("{}/missing", server.base), &body),
            &opts(3),
        )
        .unwrap_err();
    assert_eq!(e.code().as_str(), "http_status");
    assert_eq!(server.hits.load(Ordering::SeqCst), 3);
    // Server sends more than hv:size.
    let url = server.put("/big", reply(b"0123456789abcdef".to_vec()));
    assert_eq!(
        cache
            .fetch("x", &expect(&url, &body), &opts(1))
            .unwrap_err()
            .code()
            .as_str(),
        "size_mismatch"
    );
    assert!(!cache.contains("x"));
    // Bad names and schemes are refused before any I/O.
    assert_eq!(
        cache
            .fetch("../x", &expect(&url, &body), &opts(1))
            .unwrap_err()
            .code()
            .as_str(),
        "bad_name"
    );
    assert_eq!(
        cache
            .fetch("x", &expect("ftp://127.0.0.1/x", &body), &opts(3))
            .unwrap_err()
            .code()
            .as_str(),
        "unsupported_scheme"
    );
}

#[test]
fn expire_moves_the_file_aside() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("s");
    std::fs::write(&src, b"abc").unwrap();
    let cache = Cache::open(&d.path().join("c")).unwrap();
    cache
        .fetch(
            "i",
            &expect(&format!("file://{}", src.display()), b"abc"),
            &opts(1),
        )
        .unwrap();
    let at = vfarm_imagelist::model::parse_date("2026-01-02T03:04:05Z").unwrap();
    let moved = cache.expire("i", at).unwrap().unwrap();
    assert_eq!(moved.file_name().unwrap(), "i.2026-01-02_03-04-05");
    assert!(!cache.contains("i"));
    assert_eq!(cache.expire("i", at).unwrap(), None);
    assert!(!cache.remove("i").unwrap());
}

/// Issue 24, acceptance 4: a signed list's image URI cannot make the cache read a host file
/// (`file://` is off unless the subscription allows it) nor follow a redirect to another
/// host; each is refused with its reason and the cache is unchanged.
#[test]
fn file_uris_and_off_host_redirects_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let secret = d.path().join("shadow");
    std::fs::write(&secret, b"root:$6$secret").unwrap();
    let cache = Cache::open(&d.path().join("c")).unwrap();
    let strict = FetchOptions {
        allow_file: false,
        ..opts(3)
    };
    let before = snapshot(&cache.cache_dir());
    let uri = format!("file://{}", secret.display());
    let e = cache
        .fetch("img", &expect(&uri, b"root:$6$secret"), &strict)
        .unwrap_err();
    assert_eq!(e.code().as_str(), "file_uri_not_allowed", "{e}");
    assert!(e.to_string().contains("only http and https"), "{e}");

    // Another host: 127.0.0.2 is loopback too, but not the host the list named.
    let body = b"image bytes".to_vec();
    let origin = Server::start();
    let elsewhere = Server::start();
    let there = elsewhere
        .put("/img", reply(body.clone()))
        .replace("127.0.0.1", "127.0.0.2");
    let mut r = reply(Vec::new());
    r.redirect = Some(there.clone());
    let url = origin.put("/img", r);
    let e = cache
        .fetch("img", &expect(&url, &body), &strict)
        .unwrap_err();
    assert_eq!(e.code().as_str(), "redirect_refused", "{e}");
    assert!(e.to_string().contains("127.0.0.2"), "{e}");
    assert_eq!(
        elsewhere.hits.load(Ordering::SeqCst),
        0,
        "followed the redirect"
    );
    assert_eq!(
        origin.hits.load(Ordering::SeqCst),
        1,
        "refusals are not retried"
    );
    assert_eq!(snapshot(&cache.cache_dir()), before);
    assert_eq!(std::fs::read_dir(cache.partial_dir()).unwrap().count(), 0);

    // The same host: followed.
    let same = origin.put("/real", reply(body.clone()));
    let mut r = reply(Vec::new());
    r.redirect = Some(same);
    let url = origin.put("/moved", r);
    cache.fetch("img", &expect(&url, &body), &strict).unwrap();
    assert_eq!(std::fs::read(cache.path_of("img")).unwrap(), body);
}
