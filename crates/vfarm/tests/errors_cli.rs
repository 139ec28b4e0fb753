//! End-to-end: the CLI's exit status and `--output json` error document follow from the one
//! list of error codes (`vfarm_proto::ErrorCode`), the same for every command of a group.

mod common;

use common::{fresh_dir, text, vfarm};
use serde_json::Value;

/// Every host command naming a host that does not exist: `host_not_found`, exit 3.
#[test]
fn a_missing_host_is_host_not_found_with_exit_3_for_every_host_command() {
    let data = fresh_dir("errors-host");
    for cmd in ["show", "rm", "drain", "undrain"] {
        let out = vfarm(&data, &["--output", "json", "host", cmd, "nosuch"]);
        assert_eq!(out.status.code(), Some(3), "host {cmd}: {}", text(&out));
        let doc: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("host {cmd}: no JSON error document ({e}): {}", text(&out)));
        assert_eq!(doc["error"]["code"], "host_not_found", "host {cmd}: {doc}");
        assert!(
            doc["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("nosuch"),
            "host {cmd}: {doc}"
        );
    }
    // Bad input is exit 2 and names the field; nothing was added.
    let out = vfarm(&data, &["--output", "json", "host", "add", "Bad Name!"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["field"], "name", "{doc}");
    let ls = vfarm(&data, &["--output", "json", "host", "ls"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&ls.stdout).unwrap(),
        serde_json::json!([])
    );
}
