//! `vfarm --server URL token|subscription|cache|imagelist …` against a real `vfarm serve` on
//! loopback: the same output as the local commands on the service's data dir (text and
//! JSON), the owner rules of tokens, admins-only image lists, and the exit statuses of the
//! API's refusals.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{text, vfarm, vfarm_cmd, Server};
use serde_json::Value;
use vfarm_proto::ErrorCode;

const ADMIN: &str = "root-admin";

fn fixture(rel: &str) -> PathBuf {
    std::fs::canonicalize(
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/data/imagelists/cloudkeeper"
        ))
        .join(rel),
    )
    .unwrap()
}

/// `vfarm --server … ARGS` as the holder of `token`, on a data dir of its own (empty), so
/// nothing can come from the service's files.
fn remote(srv: &Server, client_dir: &Path, token: &str, args: &[&str]) -> Output {
    vfarm_cmd(client_dir)
        .args(["--server", &srv.base])
        .args(args)
        .env("VFARM_TOKEN", token)
        .output()
        .expect("run vfarm --server")
}

fn stdout(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", text(out));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The error document of a failed `--output json` command.
fn error_code(out: &Output) -> String {
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON error ({e}): {}", text(out)));
    v["error"]["code"].as_str().unwrap_or("").to_string()
}

#[test]
fn remote_lists_tokens_and_cache_print_as_locally() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let client = tmp.path().join("client");
    let srv = Server::start_with(&data, &["--admin", ADMIN]);
    let admin = srv.token_for(ADMIN);
    let alice = srv.token_for("alice");
    let local = |args: &[&str]| vfarm(&data, args);

    // An admin subscribes through the API; the paths are the service's.
    let list = fixture("imagelist01.signed");
    let ca = fixture("ca");
    let url = format!("file://{}", list.display());
    let added = stdout(
        &remote(
            &srv,
            &client,
            &admin,
            &[
                "--output",
                "json",
                "subscription",
                "add",
                &url,
                "--ca-dir",
                ca.to_str().unwrap(),
                "--no-update",
            ],
        ),
        "subscription add --server",
    );
    let added: Value = serde_json::from_str(&added).unwrap();
    let id = added["id"].as_str().expect("a subscription id").to_string();
    assert_eq!(added["url"].as_str(), Some(url.as_str()), "{added}");
    // Nothing went to the client's own data dir.
    assert!(!client.join("state.db").exists());

    // The update's exit status and report are the same as locally: this fixture list is
    // refused today (it has long expired), which is exit 1 with the reason.
    let upd_remote = remote(
        &srv,
        &client,
        &admin,
        &["--output", "json", "subscription", "update", &id],
    );
    let upd_local = local(&["--output", "json", "subscription", "update", &id]);
    assert_eq!(
        upd_remote.status.code(),
        upd_local.status.code(),
        "{}\n{}",
        text(&upd_remote),
        text(&upd_local)
    );
    let (r, l): (Value, Value) = (
        serde_json::from_slice(&upd_remote.stdout).unwrap(),
        serde_json::from_slice(&upd_local.stdout).unwrap(),
    );
    assert_eq!(r[0]["subscription"], l[0]["subscription"]);
    assert_eq!(r[0]["result"], l[0]["result"]);
    assert_eq!(r[0]["refused"]["code"], l[0]["refused"]["code"], "{r}\n{l}");

    // Reads: byte for byte the local output, as JSON and as text.
    for args in [
        vec!["subscription", "ls"],
        vec!["subscription", "show", &id],
        vec!["cache", "ls"],
        vec!["token", "ls", "--user", "alice"],
    ] {
        for json in [true, false] {
            let mut a: Vec<&str> = if json {
                vec!["--output", "json"]
            } else {
                vec![]
            };
            a.extend(&args);
            let here = stdout(&local(&a), &format!("local {a:?}"));
            let there = stdout(
                &remote(&srv, &client, &admin, &a),
                &format!("--server {a:?}"),
            );
            assert_eq!(there, here, "{a:?}");
            // Not two empty answers: each names what it lists.
            let named = if args[0] == "token" {
                "alice"
            } else {
                id.as_str()
            };
            assert!(args[0] == "cache" || here.contains(named), "{a:?}: {here}");
            if json {
                serde_json::from_str::<Value>(&there).expect("a JSON document");
            }
        }
    }

    // Alice is no admin: image lists are refused (403, exit 2), nothing changes.
    let out = remote(
        &srv,
        &client,
        &alice,
        &["--output", "json", "subscription", "rm", &id],
    );
    assert_eq!(
        out.status.code(),
        Some(i32::from(ErrorCode::Forbidden.exit_code()))
    );
    assert_eq!(error_code(&out), "forbidden");
    let out = remote(&srv, &client, &alice, &["cache", "ls"]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(ErrorCode::Forbidden.exit_code()))
    );
    stdout(
        &local(&["subscription", "show", &id]),
        "the subscription is still there",
    );

    // Tokens: alice makes her own; she sees only hers; the admin's is not found for her.
    let made = stdout(
        &remote(
            &srv,
            &client,
            &alice,
            &["--output", "json", "token", "create", "--name", "laptop"],
        ),
        "token create --server",
    );
    let made: Value = serde_json::from_str(&made).unwrap();
    assert_eq!(made["user"], "alice", "{made}");
    assert!(
        made["token"].as_str().unwrap().starts_with("vft_"),
        "{made}"
    );
    let mine: Value = serde_json::from_str(&stdout(
        &remote(&srv, &client, &alice, &["--output", "json", "token", "ls"]),
        "token ls --server",
    ))
    .unwrap();
    let users: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["user"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "alice"], "{mine}");
    let out = remote(
        &srv,
        &client,
        &alice,
        &["--output", "json", "token", "create", "--user", "bob"],
    );
    assert_eq!(error_code(&out), "forbidden", "{}", text(&out));
    let admin_id = admin.split('_').nth(1).unwrap();
    let out = remote(
        &srv,
        &client,
        &alice,
        &["--output", "json", "token", "revoke", admin_id],
    );
    // As locally for a missing token: not found, exit 3.
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(error_code(&out), "token_not_found");
    let missing = local(&["token", "revoke", "ffffffffffff"]);
    assert_eq!(missing.status.code(), Some(3));
    // Her own new token, revoked through the API, stops working.
    let out = remote(
        &srv,
        &client,
        &alice,
        &["token", "revoke", made["id"].as_str().unwrap()],
    );
    assert!(stdout(&out, "token revoke --server").starts_with("revoked token "));
    let out = remote(
        &srv,
        &client,
        made["token"].as_str().unwrap(),
        &["token", "ls"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // A purely local command says what to do instead.
    let out = remote(
        &srv,
        &client,
        &admin,
        &[
            "imagelist",
            "verify",
            list.to_str().unwrap(),
            "--ca-dir",
            ca.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("without --server"), "{}", text(&out));

    // The admin removes the subscription remotely; locally it is gone.
    let out = remote(&srv, &client, &admin, &["subscription", "rm", &id]);
    assert!(stdout(&out, "subscription rm --server").starts_with("removed subscription "));
    let gone = local(&["subscription", "show", &id]);
    assert_eq!(gone.status.code(), Some(3), "{}", text(&gone));
}
