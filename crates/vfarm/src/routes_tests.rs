//! Every instance route of the HTTP API, in-process: the real router, middleware and
//! service over the real store, with vfarm-driver's in-memory `FakeDriver` instead of runc
//! and QEMU. Seconds, no root, no images to build; the end-to-end tests in `tests/` cover the
//! same routes against the real drivers.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::ConnectInfo;
use axum::http::Request;
use serde_json::{json, Value};
use tower::ServiceExt;
use vfarm_api::tls::Peer;
use vfarm_api::AppState;
use vfarm_driver::fake::FakeDriver;
use vfarm_driver::Observed;

use crate::ctx::{Ctx, OutputFormat};

const ALICE: &str = "/CN=alice";
const BOB: &str = "/CN=bob";
const ADMIN: &str = "/CN=admin";
/// The issuer of every test certificate.
const CA: &str = "/CN=test CA";

/// The identity (owner, actor) of a certificate user: subject bound to its issuer.
fn key(dn: &str) -> String {
    format!("{dn} issuer={CA}")
}

struct Api {
    state: AppState,
    fake: FakeDriver,
    ctx: Ctx,
    _dir: tempfile::TempDir,
}

/// A service on a fresh data dir whose store holds one image, `base` (records only: the
/// fake driver reads no image files).
fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeDriver::new("oci", dir.path().join("fake-logs"));
    let mut ctx = Ctx::new(dir.path().to_path_buf(), OutputFormat::Table, 0);
    ctx.env = ctx.env.fresh().with_fake_drivers(fake.clone());
    let store = ctx.store().unwrap();
    store
        .tx(|tx| {
            vfarm_store::images::upsert_image(
                tx,
                &vfarm_store::images::ImageRow {
                    id: "f".repeat(64),
                    name: Some("base".into()),
                    spec: "{}".into(),
                    summary: "test image".into(),
                    origin: "import".into(),
                    created: vfarm_store::now(),
                    os: Some("Linux".into()),
                    os_version: None,
                    arch: Some("amd64".into()),
                    kernel: None,
                    initrd: None,
                },
                &[vfarm_store::images::ArtifactRow {
                    format: "tar".into(),
                    file: "rootfs.tar".into(),
                    size: 1,
                    sha512: "0".repeat(128),
                    disk_size: None,
                }],
            )
        })
        .unwrap();
    let mut state = AppState::new(ctx.data_dir.clone(), store).unwrap();
    state.auth = vfarm_api::AuthPolicy::new([ADMIN.to_string()]);
    let service = vfarm_service::local::Service::new(
        &ctx,
        crate::cmd::instance::Admission::default(),
        vfarm_service::local::Busy::default(),
    );
    state.instances = Some(Arc::new(service));
    state.grids = Some(Arc::new(vfarm_service::grids::GridService {
        env: ctx.env.fresh(),
        admission: Default::default(),
    }));
    Api {
        state,
        fake,
        ctx,
        _dir: dir,
    }
}

impl Api {
    /// One request as the holder of a client certificate with subject `dn`.
    async fn call(&self, dn: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let mut req = req
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(Peer {
            addr: Some("127.0.0.1:1".parse().unwrap()),
            client_dn: Some(dn.to_string()),
            client_issuer: Some(CA.to_string()),
            ..Peer::default()
        }));
        let resp = vfarm_api::router(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = to_bytes(resp.into_body(), 16 << 20).await.unwrap();
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, v)
    }

    async fn ok(&self, dn: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        let (st, v) = self.call(dn, method, path, body).await;
        assert!((200..300).contains(&st), "{method} {path}: {st} {v}");
        v
    }

    /// The state the store records for `name`.
    fn state_of(&self, name: &str) -> String {
        let store = self.ctx.store().unwrap();
        store.find_instance(name).unwrap().state
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_route_on_the_fake_driver() {
    let api = api();
    // Create (waiting for it to run), as alice; her quota view counts it.
    let v = api
        .ok(
            ALICE,
            "POST",
            "/api/v1/instances?wait=true",
            Some(json!({"image": "base", "name": "a1", "command": ["sleep", "inf"]})),
        )
        .await;
    assert_eq!(
        (v["name"].as_str(), v["state"].as_str()),
        (Some("a1"), Some("running")),
        "{v}"
    );
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(api.fake.observed_now(&id), Some(Observed::Running));
    let q = api.ok(ALICE, "GET", "/api/v1/quota", None).await;
    assert_eq!(q["usage"]["instances"], 1, "{q}");

    // List and show: the owner and the admin see it, bob does not (404, like a missing one).
    let l = api.ok(ALICE, "GET", "/api/v1/instances", None).await;
    assert_eq!(l.as_array().unwrap().len(), 1, "{l}");
    assert_eq!(
        api.ok(BOB, "GET", "/api/v1/instances", None).await,
        json!([])
    );
    assert_eq!(
        api.ok(ADMIN, "GET", "/api/v1/instances", None)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let s = api.ok(ALICE, "GET", "/api/v1/instances/a1", None).await;
    assert_eq!(s["owner"], key(ALICE), "{s}");
    let (st, v) = api.call(BOB, "GET", "/api/v1/instances/a1", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("instance_not_found"))
    );
    let (st, _) = api
        .call(BOB, "POST", "/api/v1/instances/a1/stop", None)
        .await;
    assert_eq!(st, 404, "bob may not stop alice's instance");
    assert_eq!(api.state_of("a1"), "running");

    // Exec runs and answers the command's output and status.
    let e = api
        .ok(
            ALICE,
            "POST",
            "/api/v1/instances/a1/exec",
            Some(json!({"command": ["sh", "-c", "echo out; echo err >&2; exit 3"]})),
        )
        .await;
    assert_eq!(
        (
            e["exit_code"].as_i64(),
            e["stdout"].as_str(),
            e["stderr"].as_str()
        ),
        (Some(3), Some("out\n"), Some("err\n")),
        "{e}"
    );
    let (st, v) = api
        .call(
            ALICE,
            "POST",
            "/api/v1/instances/a1/exec",
            Some(json!({"command": []})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("command")),
        "{v}"
    );

    // Pause and resume; pausing twice is an illegal transition (409), recorded nowhere.
    api.ok(ALICE, "POST", "/api/v1/instances/a1/pause", None)
        .await;
    assert_eq!(api.state_of("a1"), "paused");
    let (st, v) = api
        .call(ALICE, "POST", "/api/v1/instances/a1/pause", None)
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("illegal_state")),
        "{v}"
    );
    api.ok(ALICE, "POST", "/api/v1/instances/a1/resume", None)
        .await;
    assert_eq!(api.fake.observed_now(&id), Some(Observed::Running));

    // Extend, with bad input naming the field.
    let x = api
        .ok(
            ALICE,
            "POST",
            "/api/v1/instances/a1/extend",
            Some(json!({"by": "2h"})),
        )
        .await;
    assert!(x["expires"].is_string(), "{x}");
    let (st, v) = api
        .call(
            ALICE,
            "POST",
            "/api/v1/instances/a1/extend",
            Some(json!({"by": "forever"})),
        )
        .await;
    assert_eq!(st, 400, "{v}");

    // Snapshots: create, list, revert, remove; an unknown one is 404.
    api.ok(
        ALICE,
        "POST",
        "/api/v1/instances/a1/snapshots",
        Some(json!({"name": "s1"})),
    )
    .await;
    let snaps = api
        .ok(ALICE, "GET", "/api/v1/instances/a1/snapshots", None)
        .await;
    assert_eq!(snaps[0]["name"], "s1", "{snaps}");
    api.ok(
        ALICE,
        "POST",
        "/api/v1/instances/a1/snapshots/s1/revert",
        None,
    )
    .await;
    let (st, v) = api
        .call(
            ALICE,
            "POST",
            "/api/v1/instances/a1/snapshots/nope/revert",
            None,
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("snapshot_not_found")),
        "{v}"
    );
    api.ok(ALICE, "DELETE", "/api/v1/instances/a1/snapshots/s1", None)
        .await;
    let snaps = api
        .ok(ALICE, "GET", "/api/v1/instances/a1/snapshots", None)
        .await;
    assert_eq!(snaps, json!([]));

    // Console: the driver's log.
    let (st, c) = api
        .call(ALICE, "GET", "/api/v1/instances/a1/console", None)
        .await;
    assert_eq!(st, 200);
    assert!(c.as_str().unwrap_or("").contains("fake console"), "{c}");

    // Stop and start again; the process failing on its own is seen on the next read.
    api.ok(
        ALICE,
        "POST",
        "/api/v1/instances/a1/stop",
        Some(json!({"force": true})),
    )
    .await;
    assert_eq!(api.state_of("a1"), "stopped");
    api.ok(ALICE, "POST", "/api/v1/instances/a1/start", None)
        .await;
    assert_eq!(api.state_of("a1"), "running");
    api.fake.exit(&id, 7);
    let s = api.ok(ALICE, "GET", "/api/v1/instances/a1", None).await;
    assert_eq!(
        (s["state"].as_str(), s["exit_code"].as_i64()),
        (Some("failed"), Some(7)),
        "{s}"
    );

    // Migrate needs nodes: refused here, naming why, and nothing changes.
    let (st, v) = api
        .call(
            ADMIN,
            "POST",
            "/api/v1/instances/a1/migrate",
            Some(json!({"to": "node1"})),
        )
        .await;
    assert!((400..500).contains(&st) || st == 503, "{st} {v}");
    assert_eq!(api.state_of("a1"), "failed");

    // Bad creates change nothing: an unknown image, a bad memory size.
    let (st, v) = api
        .call(
            ALICE,
            "POST",
            "/api/v1/instances",
            Some(json!({"image": "nosuch"})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("image_not_found")),
        "{v}"
    );
    let (st, v) = api
        .call(
            ALICE,
            "POST",
            "/api/v1/instances",
            Some(json!({"image": "base", "memory": "lots"})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("memory")),
        "{v}"
    );
    assert_eq!(
        api.ok(ALICE, "GET", "/api/v1/instances", None)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Destroy: bob cannot, the admin can; then the fake holds nothing and the event log
    // names each caller.
    let (st, _) = api.call(BOB, "DELETE", "/api/v1/instances/a1", None).await;
    assert_eq!(st, 404);
    api.ok(ADMIN, "DELETE", "/api/v1/instances/a1", None).await;
    assert_eq!(api.fake.observed_now(&id), None);
    assert_eq!(
        api.ok(ADMIN, "GET", "/api/v1/instances", None).await,
        json!([])
    );
    let events = api.ctx.store().unwrap().events(1000).unwrap();
    let by = |dn: &str, kind: &str| events.iter().any(|e| e.actor == key(dn) && e.kind == kind);
    assert!(by(ALICE, "instance.create"), "{events:?}");
    assert!(by(ALICE, "instance.paused"), "{events:?}");
    assert!(by(ALICE, "snapshot.create"), "{events:?}");
    assert!(by(ADMIN, "instance.destroyed"), "{events:?}");
}

const GRID: &str = r#"
[grid]
name = "t"
expiry = "2h"
network = "none"

[roles.web]
image = "base"
command = ["httpd", "-f"]

[roles.client]
image = "base"
after = ["web"]
count = 2
env = { WEB = "{{ roles.web.hostname }}" }
command = ["sh", "-c", "fetch http://{{ roles.web.hostnames }}/ as {{ member.index }}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grid_routes_on_the_fake_driver() {
    let api = api();
    let store = api.ctx.store().unwrap();
    // A bad file is refused by name, and nothing is made.
    let (st, v) = api
        .call(
            ALICE,
            "POST",
            "/api/v1/grids",
            Some(json!({"file": GRID.replace("count = 2", "count = 2\ncolour = 1")})),
        )
        .await;
    assert_eq!(
        (
            st,
            v["error"]["code"].as_str(),
            v["error"]["field"].as_str()
        ),
        (400, Some("invalid_spec"), Some("colour")),
        "{v}"
    );
    let (st, v) = api
        .call(
            ALICE,
            "POST",
            "/api/v1/grids",
            Some(json!({"file": GRID.replace("after = [\"web\"]", "after = [\"ce\"]")})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["field"].as_str()),
        (400, Some("roles.client.after")),
        "{v}"
    );
    assert!(store.grids(None).unwrap().is_empty());
    assert!(store.instances().unwrap().is_empty());

    // Up: web first, then the clients, which learn web's name.
    let g = api
        .ok(ALICE, "POST", "/api/v1/grids", Some(json!({"file": GRID})))
        .await;
    assert_eq!(
        (g["name"].as_str(), g["state"].as_str()),
        (Some("t"), Some("up")),
        "{g}"
    );
    let roles: Vec<&str> = g["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["web", "client", "client"], "{g}");
    assert!(
        g["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "running"),
        "{g}"
    );
    let client = store.find_instance("t-client-2").unwrap();
    assert!(
        client.spec.contains("fetch http://t-web-1/ as 2"),
        "{}",
        client.spec
    );
    assert!(
        client.spec.contains(r#"["WEB","t-web-1"]"#),
        "{}",
        client.spec
    );
    assert_eq!(client.owner, key(ALICE));
    assert!(client.expires.is_some());
    // Members are the owner's instances: they count against her quota.
    let q = api.ok(ALICE, "GET", "/api/v1/quota", None).await;
    assert_eq!(q["usage"]["instances"], 3, "{q}");

    // Owners as for instances.
    assert_eq!(api.ok(BOB, "GET", "/api/v1/grids", None).await, json!([]));
    assert_eq!(
        api.ok(ADMIN, "GET", "/api/v1/grids", None)
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (st, v) = api.call(BOB, "GET", "/api/v1/grids/t", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (404, Some("not_found")),
        "{v}"
    );
    let (st, _) = api.call(BOB, "DELETE", "/api/v1/grids/t", None).await;
    assert_eq!(st, 404);
    let (st, v) = api
        .call(ALICE, "POST", "/api/v1/grids", Some(json!({"file": GRID})))
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );

    // Extend moves the grid's expiry and every member's.
    let before = store.grid("t").unwrap().unwrap().expires.unwrap();
    let e = api
        .ok(
            ALICE,
            "POST",
            "/api/v1/grids/t/extend",
            Some(json!({"by": "1d"})),
        )
        .await;
    assert!(e["expires"].as_str().unwrap() > before.as_str(), "{e}");
    assert!(store.find_instance("t-web-1").unwrap().expires.unwrap() > before);
    // The instance reaper leaves members to their grid's.
    assert!(vfarm_service::instances::reap_expired(&api.ctx)
        .unwrap()
        .is_empty());

    // Down: no member, no grid, no quota share left.
    let (st, _) = api.call(ALICE, "DELETE", "/api/v1/grids/t", None).await;
    assert_eq!(st, 204);
    assert!(store.grid("t").unwrap().is_none());
    assert!(store.instances().unwrap().is_empty());
    assert_eq!(store.quota_usage(&key(ALICE)).unwrap().instances, 0);

    // A failure half-way (a member's name is taken) tears down what was made.
    api.ok(
        ALICE,
        "POST",
        "/api/v1/instances?wait=true",
        Some(json!({"image": "base", "name": "t-client-2", "command": ["sleep", "inf"]})),
    )
    .await;
    let (st, v) = api
        .call(ALICE, "POST", "/api/v1/grids", Some(json!({"file": GRID})))
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("t-client-2"),
        "{v}"
    );
    assert!(store.grid("t").unwrap().is_none());
    let left: Vec<Option<String>> = store
        .instances()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(left, [Some("t-client-2".to_string())]);
    // …unless asked to keep it: the grid is `failed`, and down removes it.
    let (st, _) = api
        .call(
            ALICE,
            "POST",
            "/api/v1/grids",
            Some(json!({"file": GRID, "keep_on_failure": true})),
        )
        .await;
    assert_eq!(st, 409);
    let g = api.ok(ALICE, "GET", "/api/v1/grids/t", None).await;
    assert_eq!(g["state"], "failed", "{g}");
    assert_eq!(g["members"].as_array().unwrap().len(), 2, "{g}");
    api.ok(ALICE, "DELETE", "/api/v1/grids/t", None).await;
    assert_eq!(store.instances().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grid_left_half_made_or_half_torn_down_is_settled_at_start() {
    let api = api();
    let store = api.ctx.store().unwrap();
    api.ok(ALICE, "POST", "/api/v1/grids", Some(json!({"file": GRID})))
        .await;
    api.ok(
        ALICE,
        "POST",
        "/api/v1/grids",
        Some(json!({"file": GRID, "name": "u"})),
    )
    .await;
    // As a killed service leaves them: one in the middle of up, one of down.
    assert!(store
        .set_grid_state("test", "t", "up", "creating", None)
        .unwrap());
    assert!(store
        .set_grid_state("test", "u", "up", "deleting", None)
        .unwrap());
    let s = vfarm_service::grids::reconcile(&api.ctx).unwrap();
    assert_eq!(
        (s.rolled_back, s.finished),
        (vec!["t".to_string()], vec!["u".to_string()])
    );
    assert!(store.grids(None).unwrap().is_empty());
    assert!(store.instances().unwrap().is_empty());
    // An expired grid is reaped as a whole.
    api.ok(
        ALICE,
        "POST",
        "/api/v1/grids",
        Some(json!({"file": GRID.replace("2h", "1s")})),
    )
    .await;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(vfarm_service::grids::reap_expired(&api.ctx).unwrap(), ["t"]);
    assert!(store.instances().unwrap().is_empty());
}
