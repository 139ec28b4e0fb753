//! REST API request bodies: JSON into each request type the handlers take, then the domain
//! validation the service runs on it (instance settings, sizes, durations, commands,
//! environment, names). The first byte picks the body type, the rest is the JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfarm_api::instances::{
    CreateInstance, ExecRequest, ExtendRequest, MigrateRequest, SnapshotRequest, StopRequest,
};
use vfarm_api::live::SessionRequest;
use vfarm_api::migration::{FinishRequest, ImportRequest, SourceRequest};
use vfarm_proto::hosts::{HeartbeatRequest, JoinRequest};
use vfarm_service::hosts::token_hash;
use vfarm_core::instance::{
    parse_duration, parse_env, validate_command, validate_hostname, validate_name, InstanceRequest,
};

fn create(req: CreateInstance) {
    // The fields the service turns into instance settings (crates/vfarm/src/service.rs).
    let settings = InstanceRequest {
        name: req.name,
        cpus: req.cpus,
        memory: req.memory,
        pids: None,
        hostname: req.hostname,
        expiry: req.expiry,
        env: req.env,
        command: req.command,
    };
    let _ = settings.validate();
    if let Some(d) = &req.disk {
        let _ = vfarm_core::parse_size(d);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 11 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<CreateInstance>(body) {
                create(r);
            }
        }
        1 => {
            if let Ok(r) = serde_json::from_slice::<ExtendRequest>(body) {
                let _ = parse_duration("by", &r.by);
            }
        }
        2 => {
            if let Ok(r) = serde_json::from_slice::<ExecRequest>(body) {
                let _ = validate_command(&r.command);
                for e in &r.env {
                    let _ = parse_env(e);
                }
            }
        }
        3 => {
            if let Ok(r) = serde_json::from_slice::<JoinRequest>(body) {
                let _ = validate_hostname(&r.name);
                let _ = r.address.parse::<std::net::IpAddr>();
                let _ = token_hash(&r.token);
            }
        }
        4 => {
            if let Ok(r) = serde_json::from_slice::<HeartbeatRequest>(body) {
                for i in &r.instances {
                    let _ = validate_name(&i.id);
                }
            }
        }
        5 => {
            if let Ok(r) = serde_json::from_slice::<SnapshotRequest>(body) {
                let _ = validate_name(&r.name);
            }
        }
        6 => {
            let _ = serde_json::from_slice::<MigrateRequest>(body);
        }
        7 => {
            let _ = serde_json::from_slice::<StopRequest>(body);
        }
        8 => {
            if let Ok(r) = serde_json::from_slice::<SessionRequest>(body) {
                let _ = token_hash(&r.token);
            }
        }
        9 => {
            let _ = serde_json::from_slice::<ImportRequest>(body);
            let _ = serde_json::from_slice::<FinishRequest>(body);
        }
        _ => {
            let _ = serde_json::from_slice::<SourceRequest>(body);
        }
    }
});
