//! Several hosts, the control's side: the instance backend of `vfarm serve` once hosts have
//! joined. New instances are recorded here (owner, hostname from the pool, quota), placed on
//! a node by the placement policy inside the transaction that promises the node's share,
//! and created on that node through its API (mutual TLS: the control's host certificate as
//! client, the site CA as the only trust). Everything else on a placed instance goes to its
//! node; the record here follows the node's heartbeats. Instances not placed on a node
//! (made before any host joined, or by the local CLI) stay with the local backend.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vfarm_proto::ErrorCode;

use crate::backend::{InstanceBackend, ListInstances};
use anyhow::Context;
use serde_json::Value;
use vfarm_auth::Identity;
use vfarm_core::placement::{self, Candidate, Policy, Ratios, Request};
use vfarm_proto::instances::{
    Action, CreateInstance, ExecRequest, ExecResult, InstanceView, MigrateRequest, MigrateResult,
    QuotaView, SnapshotView,
};
use vfarm_store::hosts::HostRow;
use vfarm_store::instances::{InstanceRow, StateChange};
use vfarm_store::Page;
use vfarm_store::{Store, StoreError};

use crate::local::Service;
use crate::{Env, ServiceError};

/// A node whose last heartbeat is older than this is down (heartbeats come every 2 s; the
/// issue's bound is 30 s).
pub const DOWN_AFTER: Duration = Duration::from_secs(10);
/// How often the control looks for silent nodes.
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(2);
/// A create on a node (image pull, prepare, start) may take this long.
const NODE_CREATE_TIMEOUT: Duration = Duration::from_secs(600);

/// How the control reaches nodes.
pub struct NodeClient {
    http: reqwest::blocking::Client,
}

impl NodeClient {
    /// `cert`/`key`: the control's own host certificate (serverAuth + clientAuth);
    /// `ca`: the site CA certificate every node's certificate chains to.
    pub fn new(cert: &PathBuf, key: &PathBuf, ca: &PathBuf) -> anyhow::Result<NodeClient> {
        let mut pem =
            std::fs::read(cert).with_context(|| format!("cannot read {}", cert.display()))?;
        pem.extend(std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?);
        let ca_pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        let http = reqwest::blocking::Client::builder()
            .identity(reqwest::Identity::from_pem(&pem).context("control certificate")?)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).context("site CA")?)
            .tls_built_in_root_certs(false)
            .connect_timeout(Duration::from_secs(3))
            .timeout(NODE_CREATE_TIMEOUT)
            .build()?;
        Ok(NodeClient { http })
    }

    /// A call to a node's API; a non-2xx answer becomes the node's error (status, code,
    /// message), an unreachable node `host_unreachable`.
    pub fn call(
        &self,
        host: &HostRow,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::blocking::Response, ServiceError> {
        let url = host
            .url
            .as_deref()
            .ok_or_else(|| unreachable(host, "it never reported"))?;
        let mut r = self.http.request(method, format!("{url}{path}"));
        if let Some(b) = body {
            r = r.json(b);
        }
        let resp = r.send().map_err(|e| unreachable(host, &format!("{e}")))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let v: Value = resp.json().unwrap_or(Value::Null);
        Err(ServiceError {
            code: node_code(v["error"]["code"].as_str().unwrap_or("")),
            message: format!(
                "node {}: {}",
                host.name,
                v["error"]["message"].as_str().unwrap_or("request failed")
            ),
            field: None,
        })
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        host: &HostRow,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ServiceError> {
        self.call(host, method, path, body)?
            .json()
            .map_err(|e| ServiceError {
                code: ErrorCode::NodeError,
                message: format!("node {}: unreadable answer: {e}", host.name),
                field: None,
            })
    }
}

fn unreachable(host: &HostRow, why: &str) -> ServiceError {
    ServiceError {
        code: ErrorCode::HostUnreachable,
        message: format!(
            "node {} ({}) cannot be reached: {why}",
            host.name, host.state
        ),
        field: None,
    }
}

/// The node's error codes that the control passes on as they are; others (an identity
/// refused between control and node, say) are `node_error`.
fn node_code(code: &str) -> ErrorCode {
    use ErrorCode::*;
    match ErrorCode::parse(code) {
        Some(
            c @ (IllegalState | Conflict | InvalidRequest | InstanceNotFound | SnapshotNotFound
            | Unsupported | ImagePullFailed | HostNotReady),
        ) => c,
        _ => NodeError,
    }
}

pub struct Cluster {
    local: Arc<Service>,
    env: Env,
    nodes: NodeClient,
    policy: Policy,
    ratios: Ratios,
    /// Accepted creates waiting for `complete` (the request the node gets).
    pending: Mutex<HashMap<String, CreateInstance>>,
}

impl Cluster {
    pub fn new(
        env: &Env,
        local: Arc<Service>,
        nodes: NodeClient,
        policy: Policy,
        ratios: Ratios,
    ) -> Cluster {
        Cluster {
            local,
            env: env.fresh(),
            nodes,
            policy,
            ratios,
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn store(&self) -> Result<Arc<Store>, ServiceError> {
        self.env
            .store()
            .map_err(|e| ServiceError::internal(format!("{e:#}")))
    }

    /// The caller's instance and the node it is on (`None`: the local backend's).
    fn placed(
        &self,
        who: &Identity,
        reference: &str,
    ) -> Result<Option<(InstanceRow, HostRow)>, ServiceError> {
        let store = self.store()?;
        let scope = crate::local::owner_scope(who);
        let row = match store.find_instance_among(reference, crate::local::scope_refs(&scope)) {
            Ok(r) => r,
            // The local backend words it (not found, ambiguous).
            Err(_) => return Ok(None),
        };
        if !who.may_access(&row.owner) {
            return Ok(None);
        }
        let Some(name) = store.instance_host(&row.id).map_err(store_err)? else {
            return Ok(None);
        };
        let host = store
            .host(&name)
            .map_err(store_err)?
            .ok_or_else(|| ServiceError::internal(format!("host {name} of {} is gone", row.id)))?;
        Ok(Some((row, host)))
    }

    /// Take over the state the node reports (compare-and-set from what the record says).
    fn follow(&self, row: &InstanceRow, v: &InstanceView) -> Result<InstanceView, ServiceError> {
        let store = self.store()?;
        if v.state != row.state {
            let _ = store.set_instance_state(
                "vfarm-control",
                &row.id,
                &row.state,
                &v.state,
                &StateChange {
                    exit_code: v.exit_code,
                    error: v.error.as_deref(),
                    started: v.state == "running",
                },
            );
        }
        let row = store
            .instance(&row.id)
            .map_err(store_err)?
            .unwrap_or_else(|| row.clone());
        crate::instances::view(&store, &row, false)
            .map_err(|e| ServiceError::internal(format!("{e:#}")))
    }

    /// Destroy a placed instance on its node, then the record (and its holds).
    pub fn destroy_placed(
        &self,
        actor: &str,
        row: &InstanceRow,
        host: &HostRow,
    ) -> Result<(), ServiceError> {
        match self
            .nodes
            .call(host, reqwest::Method::DELETE, &Self::path(row, &[])?, None)
        {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::InstanceNotFound => {}
            Err(e) => return Err(e),
        }
        crate::net::forget(&row.spec);
        self.store()?
            .delete_instance(actor, &row.id)
            .map_err(store_err)?;
        Ok(())
    }

    /// `/api/v1/instances/{id}` followed by `rest`, each segment encoded by [`node_path`].
    fn path(row: &InstanceRow, rest: &[&str]) -> Result<String, ServiceError> {
        let mut segs = vec!["api", "v1", "instances", row.id.as_str()];
        segs.extend_from_slice(rest);
        node_path(&segs)
    }
}

/// Characters left as they are in a path segment: RFC 3986 unreserved. Everything else,
/// `/`, `%`, `?` and `#` included, is percent-encoded.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The path of a control-to-node URL from its segments. The control calls nodes as an
/// admin, so a parameter must never change which endpoint or instance is addressed: each
/// segment is percent-encoded, and empty, `.` and `..` segments (which URL parsers resolve,
/// even when encoded as `%2e`) are refused.
pub(crate) fn node_path(segments: &[&str]) -> Result<String, ServiceError> {
    let mut out = String::new();
    for s in segments {
        if s.is_empty() || *s == "." || *s == ".." {
            return Err(ServiceError::bad_request(
                "path",
                format!("`{s}` is not allowed as a path segment"),
            ));
        }
        out.push('/');
        out.extend(percent_encoding::utf8_percent_encode(s, SEGMENT));
    }
    Ok(out)
}

fn store_err(e: StoreError) -> ServiceError {
    ServiceError::internal(e.to_string())
}

/// Hosts as placement sees them.
pub fn candidates(hosts: &[HostRow]) -> Vec<Candidate> {
    hosts
        .iter()
        .filter(|h| h.state != "pending")
        .map(|h| {
            let reason = if h.state != "up" {
                Some(h.state.clone())
            } else if h.drained {
                Some("drained".to_string())
            } else {
                None
            };
            Candidate {
                name: h.name.clone(),
                schedulable: reason.is_none(),
                unschedulable_reason: reason,
                features: h.features.clone(),
                cpus_milli: h.cpus.max(0) as u64 * 1000,
                memory_mib: h.memory_mib.max(0) as u64,
                used_cpus_milli: h.used_cpus_milli.max(0) as u64,
                used_memory_mib: h.used_memory_mib.max(0) as u64,
                accelerator: h.accelerator.clone(),
            }
        })
        .collect()
}

impl InstanceBackend for Cluster {
    fn list(&self, who: &Identity, q: &ListInstances) -> Result<Page<InstanceView>, ServiceError> {
        self.local.list(who, q)
    }

    fn show(&self, who: &Identity, reference: &str) -> Result<InstanceView, ServiceError> {
        let Some((row, host)) = self.placed(who, reference)? else {
            return self.local.show(who, reference);
        };
        if host.state != "up" {
            // What the control knows (lost) beats an error.
            return crate::instances::view(&*self.store()?, &row, true)
                .map_err(|e| ServiceError::internal(format!("{e:#}")));
        }
        let mut v: InstanceView =
            self.nodes
                .json(&host, reqwest::Method::GET, &Self::path(&row, &[])?, None)?;
        self.follow(&row, &v)?;
        v.host = Some(host.name.clone());
        v.expires = row.expires.clone();
        Ok(v)
    }

    fn create(
        &self,
        who: &Identity,
        mut req: CreateInstance,
    ) -> Result<InstanceView, ServiceError> {
        let store = self.store()?;
        if !store.has_hosts().map_err(store_err)? {
            if let Some(h) = &req.host {
                return Err(ServiceError::bad_request(
                    "host",
                    format!("`{h}`: no host has joined this service (vfarm host add NAME)"),
                ));
            }
            return self.local.create(who, req);
        }
        let pinned = req.host.take();
        let mut forward = req.clone();
        let v = self.local.create(who, req)?;
        let row = store
            .instance(&v.id)
            .map_err(store_err)?
            .ok_or_else(|| ServiceError::internal("the recorded instance vanished"))?;
        let cpus_milli = forward
            .cpus
            .map(|c| (c * 1000.0).round() as u64)
            .unwrap_or(1000);
        let memory_mib = forward
            .memory
            .as_deref()
            .and_then(|m| vfarm_core::parse_size(m).ok())
            .map(|b| b.div_ceil(1 << 20))
            .unwrap_or(0);
        let mut features = vec![row.driver.clone()];
        // The control leases the address (unique across the nodes of one LAN); the node
        // chosen must have the network and takes that address.
        if let Some(a) =
            crate::net::spec_of(&row.spec).and_then(|s| s.network.attachment().cloned())
        {
            features.push(crate::net::feature(&a.network));
            forward.network = Some(a.network.clone());
            forward.address = Some(a.address.to_string());
        }
        let wanted = Request {
            cpus_milli,
            memory_mib,
            features,
            pinned: pinned.clone(),
        };
        let (policy, ratios) = (self.policy, self.ratios);
        let mut why = None;
        let placed = store.place_instance(&who.user, &row.id, cpus_milli, memory_mib, |hosts| {
            placement::place(&candidates(hosts), &wanted, policy, ratios)
                .map(|p| {
                    tracing::info!(instance = %row.id, host = %p.host, reason = %p.reason, "placed");
                    why = Some(p.reason.clone());
                    (p.host, p.reason)
                })
                .map_err(|r| {
                let (code, field) = if r.unknown_host.is_some() {
                    (ErrorCode::HostNotFound, Some("host"))
                } else {
                    (ErrorCode::NoCapacity, None)
                };
                ServiceError {
                    code,
                    message: r.to_string(),
                    field: field.map(Into::into),
                }
            })
        });
        let host = match placed {
            Ok(h) => h,
            Err(e) => {
                // Nothing was made anywhere: the record and its holds go.
                crate::net::forget(&row.spec);
                let _ = store.delete_instance("vfarm-control", &row.id);
                return Err(e);
            }
        };
        forward.id = Some(row.id.clone());
        forward.owner = Some(row.owner.clone());
        forward.hostname = Some(row.hostname.clone());
        forward.image = row.image_id.clone();
        // Expiry is the control's (its reaper destroys through the node).
        forward.expiry = None;
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(row.id.clone(), forward);
        let mut v = crate::instances::view(&store, &row, false)
            .map_err(|e| ServiceError::internal(format!("{e:#}")))?;
        v.host = Some(host);
        v.placement = why;
        Ok(v)
    }

    fn complete(&self, id: &str, start: bool) -> Result<InstanceView, ServiceError> {
        let store = self.store()?;
        let Some(name) = store.instance_host(id).map_err(store_err)? else {
            return self.local.complete(id, start);
        };
        let req = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        let row = store
            .instance(id)
            .map_err(store_err)?
            .ok_or_else(|| ServiceError::internal(format!("instance {id} vanished")))?;
        let host = store
            .host(&name)
            .map_err(store_err)?
            .ok_or_else(|| ServiceError::internal(format!("host {name} vanished")))?;
        let made = (|| {
            let mut req = req.ok_or_else(|| {
                ServiceError::internal("the create request was lost (the control restarted)")
            })?;
            req.reserve = !start;
            let body =
                serde_json::to_value(&req).map_err(|e| ServiceError::internal(e.to_string()))?;
            let began = Instant::now();
            let v: InstanceView = self.nodes.json(
                &host,
                reqwest::Method::POST,
                "/api/v1/instances?wait=true",
                Some(&body),
            )?;
            tracing::info!(id, host = %host.name, ms = began.elapsed().as_millis() as u64, "created on node");
            Ok::<_, ServiceError>(v)
        })();
        match made {
            Ok(v) => {
                let mut out = self.follow(&row, &v)?;
                out.host = Some(host.name);
                Ok(out)
            }
            Err(e) => {
                // The node may hold a half-made instance: ask it to go, then drop the record.
                let _ = self.nodes.call(
                    &host,
                    reqwest::Method::DELETE,
                    &Self::path(&row, &[])?,
                    None,
                );
                crate::net::forget(&row.spec);
                let _ = store.delete_instance("vfarm-control", id);
                Err(e)
            }
        }
    }

    fn destroy(&self, who: &Identity, reference: &str) -> Result<String, ServiceError> {
        let Some((row, host)) = self.placed(who, reference)? else {
            return self.local.destroy(who, reference);
        };
        self.destroy_placed(&who.user, &row, &host)?;
        Ok(row.id)
    }

    fn act(
        &self,
        who: &Identity,
        reference: &str,
        action: Action,
    ) -> Result<InstanceView, ServiceError> {
        let Some((row, host)) = self.placed(who, reference)? else {
            return self.local.act(who, reference, action);
        };
        let (verb, body) = match action {
            Action::Start => ("start", None),
            Action::Stop { force } => ("stop", Some(serde_json::json!({ "force": force }))),
            Action::Pause => ("pause", None),
            Action::Resume => ("resume", None),
        };
        let v: InstanceView = self.nodes.json(
            &host,
            reqwest::Method::POST,
            &Self::path(&row, &[verb])?,
            body.as_ref(),
        )?;
        let mut out = self.follow(&row, &v)?;
        out.host = Some(host.name);
        Ok(out)
    }

    fn extend(
        &self,
        who: &Identity,
        reference: &str,
        by: &str,
    ) -> Result<InstanceView, ServiceError> {
        self.local.extend(who, reference, by)
    }

    fn exec(
        &self,
        who: &Identity,
        reference: &str,
        req: ExecRequest,
    ) -> Result<ExecResult, ServiceError> {
        let Some((row, host)) = self.placed(who, reference)? else {
            return self.local.exec(who, reference, req);
        };
        let body = serde_json::to_value(&req).map_err(|e| ServiceError::internal(e.to_string()))?;
        self.nodes.json(
            &host,
            reqwest::Method::POST,
            &Self::path(&row, &["exec"])?,
            Some(&body),
        )
    }

    fn console(&self, who: &Identity, reference: &str) -> Result<Vec<u8>, ServiceError> {
        let Some((row, host)) = self.placed(who, reference)? else {
            return self.local.console(who, reference);
        };
        let resp = self.nodes.call(
            &host,
            reqwest::Method::GET,
            &Self::path(&row, &["console"])?,
            None,
        )?;
        resp.bytes()
            .map(|b| b.to_vec())
            .map_err(|e| unreachable(&host, &e.to_string()))
    }

    fn snapshots(
        &self,
        who: &Identity,
        reference: &str,
    ) -> Result<Vec<SnapshotView>, ServiceError> {
        let Some((row, host)) = self.placed(who, reference)? else {
            return self.local.snapshots(who, reference);
        };
        self.nodes.json(
            &host,
            reqwest::Method::GET,
            &Self::path(&row, &["snapshots"])?,
            None,
        )
    }

    fn snapshot_create(
        &self,
        who: &Identity,
        reference: &str,
        name: &str,
    ) -> Result<SnapshotView, ServiceError> {
        let Some((row, host)) = self.placed(who, reference)? else {
            return self.local.snapshot_create(who, reference, name);
        };
        self.nodes.json(
            &host,
            reqwest::Method::POST,
            &Self::path(&row, &["snapshots"])?,
            Some(&serde_json::json!({ "name": name })),
        )
    }

    fn snapshot_revert(
        &self,
        who: &Identity,
        reference: &str,
        name: &str,
    ) -> Result<InstanceView, ServiceError> {
        let Some((row, host)) = self.placed(who, reference)? else {
            return self.local.snapshot_revert(who, reference, name);
        };
        let v: InstanceView = self.nodes.json(
            &host,
            reqwest::Method::POST,
            &Self::path(&row, &["snapshots", name, "revert"])?,
            None,
        )?;
        let mut out = self.follow(&row, &v)?;
        out.host = Some(host.name);
        Ok(out)
    }

    fn snapshot_remove(
        &self,
        who: &Identity,
        reference: &str,
        name: &str,
    ) -> Result<(), ServiceError> {
        let Some((row, host)) = self.placed(who, reference)? else {
            return self.local.snapshot_remove(who, reference, name);
        };
        self.nodes.call(
            &host,
            reqwest::Method::DELETE,
            &Self::path(&row, &["snapshots", name])?,
            None,
        )?;
        Ok(())
    }

    fn quota(&self, who: &Identity) -> Result<QuotaView, ServiceError> {
        self.local.quota(who)
    }

    fn migrate(
        &self,
        who: &Identity,
        reference: &str,
        req: MigrateRequest,
    ) -> Result<MigrateResult, ServiceError> {
        let Some((row, src)) = self.placed(who, reference)? else {
            // Not on a node (or not the caller's): the local backend words the refusal.
            self.local.show(who, reference)?;
            return Err(ServiceError::bad_request(
                "instance",
                format!("instance {reference} runs on the control's own machine, not on a node"),
            ));
        };
        self.migrate_placed(who, &row, &src, &req)
    }
}

impl Cluster {
    /// Live migration of a VM from node `src` to `req.to`: the control drives both nodes'
    /// halves (source, prepare, send, finish, complete) and undoes what was done when a step
    /// before the finish fails, so the VM runs on exactly one node at every moment.
    fn migrate_placed(
        &self,
        who: &Identity,
        row: &InstanceRow,
        src: &HostRow,
        req: &MigrateRequest,
    ) -> Result<MigrateResult, ServiceError> {
        let began = Instant::now();
        let store = self.store()?;
        let oci = row.driver == "oci";
        if oci && req.shared_storage {
            return Err(ServiceError::bad_request(
                "shared_storage",
                "an oci instance moves cold: its writable layer is copied",
            ));
        }
        if oci && !matches!(row.state.as_str(), "running" | "created" | "stopped") {
            return Err(ServiceError {
                code: ErrorCode::IllegalState,
                message: format!("instance {} is {}: it cannot move now", row.id, row.state),
                field: None,
            });
        }
        if !oci && !matches!(row.state.as_str(), "running" | "paused") {
            return Err(ServiceError {
                code: ErrorCode::IllegalState,
                message: format!(
                    "instance {} is {}: only a running or paused VM migrates",
                    row.id, row.state
                ),
                field: None,
            });
        }
        let dest = store
            .host(&req.to)
            .map_err(store_err)?
            .ok_or_else(|| ServiceError {
                code: ErrorCode::HostNotFound,
                message: format!("no host `{}` (vfarm host ls)", req.to),
                field: Some("to".into()),
            })?;
        if dest.name == src.name {
            return Err(ServiceError::bad_request(
                "to",
                format!("instance {} already runs on {}", row.id, src.name),
            ));
        }
        // The destination must take the VM's share like a new placement would.
        let (_, cpus_milli, memory_mib) = store
            .instance_placement(&row.id)
            .map_err(store_err)?
            .unwrap_or((src.name.clone(), 1000, 0));
        // A VM keeps its address: the destination must be on the same network.
        let mut features = vec![row.driver.clone()];
        if let Some(a) =
            crate::net::spec_of(&row.spec).and_then(|s| s.network.attachment().cloned())
        {
            features.push(crate::net::feature(&a.network));
        }
        let wanted = Request {
            cpus_milli: cpus_milli.max(0) as u64,
            memory_mib: memory_mib.max(0) as u64,
            features,
            pinned: Some(dest.name.clone()),
        };
        placement::choose(
            &candidates(std::slice::from_ref(&dest)),
            &wanted,
            self.policy,
            self.ratios,
        )
        .map_err(|r| ServiceError {
            code: ErrorCode::NoCapacity,
            message: r.to_string(),
            field: Some("to".into()),
        })?;
        if oci {
            return self.move_cold(who, row, src, &dest, began);
        }
        let base = node_path(&["api", "v1", "node", "migrations", &row.id])?;
        let path = |step: &str| format!("{base}/{step}");
        use reqwest::Method as M;
        let source: Value = self.nodes.json(
            src,
            M::POST,
            &path("source"),
            Some(&serde_json::json!({ "shared_storage": req.shared_storage })),
        )?;
        let incoming: Value =
            match self
                .nodes
                .json(&dest, M::POST, "/api/v1/node/migrations", Some(&source))
            {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.nodes.call(src, M::POST, &path("abort"), None);
                    return Err(e);
                }
            };
        let sent: Value = match self
            .nodes
            .json(src, M::POST, &path("send"), Some(&incoming))
        {
            Ok(v) => v,
            Err(e) => {
                // The source recovered itself; the destination's half goes.
                let _ = self.nodes.call(&dest, M::DELETE, &path("incoming"), None);
                return Err(e);
            }
        };
        let was_running = sent["was_running"].as_bool().unwrap_or(true);
        let fin = serde_json::json!({
            "was_running": was_running,
            "row": serde_json::to_value(row).map_err(|e| ServiceError::internal(e.to_string()))?,
        });
        if let Err(e) = self.nodes.call(&dest, M::POST, &path("finish"), Some(&fin)) {
            // The destination goes first, so the guest never runs twice.
            let _ = self.nodes.call(&dest, M::DELETE, &path("incoming"), None);
            let _ = self.nodes.call(src, M::POST, &path("abort"), None);
            return Err(e);
        }
        // The point of no return: the VM runs on the destination only.
        store
            .move_instance_host(&who.user, &row.id, &src.name, &dest.name)
            .map_err(store_err)?;
        match self
            .nodes
            .json::<Value>(src, M::POST, &path("complete"), None)
        {
            Ok(v) => {
                for w in v["warnings"].as_array().into_iter().flatten() {
                    tracing::warn!(id = %row.id, "after migration: {w}");
                }
            }
            Err(e) => tracing::warn!(id = %row.id, "the source could not tidy up: {}", e.message),
        }
        let state = if was_running { "running" } else { "paused" };
        self.settle(&row.id, state);
        Ok(MigrateResult {
            id: row.id.clone(),
            from: src.name.clone(),
            to: dest.name.clone(),
            storage: sent["storage"].as_str().unwrap_or("copied").to_string(),
            downtime_ms: sent["downtime_ms"].as_u64().unwrap_or(0),
            total_ms: began.elapsed().as_millis() as u64,
            ram_bytes: sent["ram_bytes"].as_u64().unwrap_or(0),
            disk_bytes: sent["disk_bytes"].as_u64().unwrap_or(0),
            state: state.into(),
        })
    }

    /// After a move the record says what runs at the destination (the source's heartbeats
    /// may have recorded the pause or stop in between).
    fn settle(&self, id: &str, state: &str) {
        let Ok(store) = self.store() else { return };
        if let Ok(Some(now)) = store.instance(id) {
            if now.state != state {
                let _ = store.set_instance_state(
                    "vfarm-control",
                    id,
                    &now.state,
                    state,
                    &StateChange::default(),
                );
            }
        }
    }

    /// Cold migration of an oci instance: stop it, copy its writable layer to the
    /// destination (which has prepared the same instance on its own copy of the image),
    /// start it there, destroy it at the source. Until the destination runs it, any failure
    /// removes the destination's copy and starts the source again.
    fn move_cold(
        &self,
        who: &Identity,
        row: &InstanceRow,
        src: &HostRow,
        dest: &HostRow,
        began: Instant,
    ) -> Result<MigrateResult, ServiceError> {
        use reqwest::Method as M;
        let store = self.store()?;
        let was_running = row.state == "running";
        let base = node_path(&["api", "v1", "node", "migrations", &row.id])?;
        let path = |step: &str| format!("{base}/{step}");
        let stopped_at = Instant::now();
        if was_running {
            self.nodes.call(
                src,
                M::POST,
                &Self::path(row, &["stop"])?,
                Some(&serde_json::json!({ "force": false })),
            )?;
        }
        let start_path = Self::path(row, &["start"])?;
        let restart_source = || {
            if was_running {
                let _ = self.nodes.call(src, M::POST, &start_path, None);
            }
        };
        // Not the repository's tmp/: it reaps entries there that no build holds.
        let tmp = self.env.data_dir.join("migrations");
        let layer = (|| {
            std::fs::create_dir_all(&tmp).map_err(|e| ServiceError::internal(e.to_string()))?;
            let file = tmp.join(format!("upper-{}.tar", row.id));
            let mut resp = self.nodes.call(src, M::GET, &path("upper"), None)?;
            let mut f =
                std::fs::File::create(&file).map_err(|e| ServiceError::internal(e.to_string()))?;
            resp.copy_to(&mut f)
                .map_err(|e| unreachable(src, &e.to_string()))?;
            Ok::<_, ServiceError>(file)
        })();
        let layer = match layer {
            Ok(f) => f,
            Err(e) => {
                let _ = self.nodes.call(src, M::POST, &path("abort"), None);
                restart_source();
                return Err(e);
            }
        };
        let disk_bytes = std::fs::metadata(&layer).map(|m| m.len()).unwrap_or(0);
        let mut record = row.clone();
        record.state = "created".into();
        let placed = (|| {
            let body = serde_json::json!({
                "row": serde_json::to_value(&record).map_err(|e| ServiceError::internal(e.to_string()))?,
            });
            self.nodes
                .call(dest, M::POST, "/api/v1/node/migrations/import", Some(&body))?;
            let f =
                std::fs::File::open(&layer).map_err(|e| ServiceError::internal(e.to_string()))?;
            let url = dest.url.as_deref().unwrap_or_default();
            let resp = self
                .nodes
                .http
                .put(format!("{url}{}", path("upper")))
                .body(f)
                .send()
                .map_err(|e| unreachable(dest, &e.to_string()))?;
            if !resp.status().is_success() {
                let v: Value = resp.json().unwrap_or(Value::Null);
                return Err(ServiceError {
                    code: ErrorCode::NodeError,
                    message: format!(
                        "node {}: {}",
                        dest.name,
                        v["error"]["message"]
                            .as_str()
                            .unwrap_or("the layer was refused")
                    ),
                    field: None,
                });
            }
            if was_running {
                self.nodes
                    .call(dest, M::POST, &Self::path(row, &["start"])?, None)?;
            }
            Ok(())
        })();
        let _ = std::fs::remove_file(&layer);
        if let Err(e) = placed {
            let _ = self
                .nodes
                .call(dest, M::DELETE, &Self::path(row, &[])?, None);
            let _ = self.nodes.call(src, M::POST, &path("abort"), None);
            restart_source();
            return Err(e);
        }
        let downtime_ms = stopped_at.elapsed().as_millis() as u64;
        store
            .move_instance_host(&who.user, &row.id, &src.name, &dest.name)
            .map_err(store_err)?;
        if let Err(e) = self.nodes.call(src, M::POST, &path("complete"), None) {
            tracing::warn!(id = %row.id, "the source could not remove its copy: {}", e.message);
        }
        self.settle(&row.id, if was_running { "running" } else { "created" });
        Ok(MigrateResult {
            id: row.id.clone(),
            from: src.name.clone(),
            to: dest.name.clone(),
            storage: "copied".into(),
            downtime_ms: if was_running { downtime_ms } else { 0 },
            total_ms: began.elapsed().as_millis() as u64,
            ram_bytes: 0,
            disk_bytes,
            state: if was_running { "running" } else { "created" }.into(),
        })
    }
}

/// The control's watch over nodes: silent ones go down (their instances `lost`), and
/// expired placed instances are destroyed through their node. Every round is one
/// compare-and-set transaction, so several control processes on one database agree.
pub fn spawn_monitor(env: &Env, cluster: Arc<Cluster>) {
    let env = env.fresh();
    std::thread::spawn(move || loop {
        if let Err(e) = monitor_once(&env, &cluster) {
            tracing::warn!("host monitor: {e:#}");
        }
        std::thread::sleep(MONITOR_INTERVAL);
    });
}

fn monitor_once(env: &Env, cluster: &Cluster) -> anyhow::Result<()> {
    let store = env.store()?;
    let cutoff = (chrono::Utc::now() - chrono::Duration::from_std(DOWN_AFTER)?)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    for (host, lost) in store.mark_hosts_down("vfarm-monitor", &cutoff)? {
        tracing::warn!(
            host = %host,
            lost = lost.len(),
            "host stopped answering: its instances are lost until it is back"
        );
    }
    let placed = store.instance_hosts()?;
    for row in store.expired_instances(&vfarm_store::now())? {
        let Some(name) = placed.get(&row.id) else {
            continue;
        };
        let Some(host) = store.host(name)? else {
            continue;
        };
        if host.state != "up" || row.state == "creating" {
            continue;
        }
        match cluster.destroy_placed("vfarm-reaper", &row, &host) {
            Ok(()) => {
                let detail = serde_json::json!({
                    "owner": row.owner, "hostname": row.hostname, "expires": row.expires, "host": name,
                });
                let _ = store.audit(
                    "vfarm-reaper",
                    "service",
                    "instance.reap",
                    &row.id,
                    "ok",
                    &detail,
                );
            }
            Err(e) => tracing::warn!("cannot reap {} on {name}: {}", row.id, e.message),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 3 of issue 15: the snapshot name `../../<id>` (sent as `..%2F..%2F<id>`)
    /// was put into the node URL as it was, and the URL parser resolved it to another
    /// instance. Every segment now stays one segment under the instance it names.
    #[test]
    fn node_paths_keep_each_parameter_inside_its_segment() {
        let p = node_path(&[
            "api",
            "v1",
            "instances",
            "abc",
            "snapshots",
            "../../victim",
            "revert",
        ])
        .unwrap();
        assert_eq!(p, "/api/v1/instances/abc/snapshots/..%2F..%2Fvictim/revert");
        let url = reqwest::Url::parse(&format!("https://node.example:8443{p}")).unwrap();
        let segs: Vec<&str> = url.path_segments().unwrap().collect();
        assert_eq!(segs.len(), 7, "{url}");
        assert_eq!(segs[3], "abc");
        for odd in ["?x=1", "a#b", "a b", "%2e%2e", "é"] {
            let p = node_path(&["snapshots", odd]).unwrap();
            let url = reqwest::Url::parse(&format!("https://n{p}")).unwrap();
            assert_eq!(url.path_segments().unwrap().count(), 2, "{odd}: {url}");
            assert!(url.query().is_none() && url.fragment().is_none(), "{url}");
        }
        for bad in ["..", ".", ""] {
            let e = node_path(&["snapshots", bad]).unwrap_err();
            assert_eq!(e.code.http_status(), 400, "{bad}");
        }
    }
}
