//! `vfarm --server URL job …`: the job commands against a remote `vfarm serve`, through
//! its REST API, with the same output as locally (a job's server-side directory aside).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::Method;
use serde_json::Value;
use vfarm_proto::ErrorCode;
use vfarm_service::jobs::{parse_id, refuse, JobRequest, JobView};

use crate::cmd::instance::TIMEOUT_EXIT;
use crate::cmd::job::{
    print_job, print_queued, print_queues, print_table, request_of, JobArgs, JobCmd,
};
use crate::cmd::remote::{seg, Client, RemoteArgs};
use crate::ctx::Ctx;

/// How long `job cancel` waits for a running job to end (as locally under Slurm).
const CANCEL_WAIT: Duration = Duration::from_secs(90);
/// How often a waiting command asks for a job's state.
const POLL: Duration = Duration::from_millis(200);

fn is_final(state: &str) -> bool {
    vfarm_jobs::JobState::parse(state).is_some_and(|s| s.is_final())
}

fn show(c: &Client, id: i64) -> Result<(JobView, Value)> {
    let doc: Value = c.json(Method::GET, &format!("/api/v1/jobs/{id}"), None)?;
    Ok((serde_json::from_value(doc.clone())?, doc))
}

/// Ask until job `id` is final, or until `deadline`.
fn wait_for(c: &Client, id: i64, deadline: Option<Instant>) -> Result<(JobView, Value, bool)> {
    loop {
        let (v, doc) = show(c, id)?;
        if is_final(&v.state) {
            return Ok((v, doc, true));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok((v, doc, false));
        }
        std::thread::sleep(POLL);
    }
}

fn ids_of(ids: &[String]) -> Result<Vec<i64>> {
    ids.iter().map(|s| parse_id(s)).collect()
}

pub fn run_job(ctx: &Ctx, a: &RemoteArgs, args: JobArgs) -> Result<i32> {
    if args.config.is_some() {
        return Err(refuse(
            ErrorCode::InvalidRequest,
            "config",
            "--config names a queue configuration on this host; with --server the service's \
             own queues apply (`vfarm --server URL job queues` shows them)",
        ));
    }
    let c = Client::new(a)?;
    match args.cmd {
        JobCmd::Submit(s) => {
            let req = request_of(*s)?;
            let source = req.jsdl.as_ref().map(|(s, _)| s.clone());
            let resp = match &req.jsdl {
                Some((_, text)) => {
                    // The API takes a JSDL document as the whole body: flags beside it would be
                    // lost, so they are refused rather than dropped.
                    let flags = JobRequest {
                        jsdl: None,
                        ..req.clone()
                    };
                    if flags != JobRequest::default() {
                        return Err(refuse(
                            ErrorCode::InvalidRequest,
                            "jsdl",
                            "with --server, --jsdl goes alone: put the other settings in the \
                             JSDL document, or submit without --jsdl",
                        ));
                    }
                    c.call_with(
                        Method::POST,
                        "/api/v1/jobs",
                        "application/xml",
                        text.clone().into_bytes(),
                    )?
                }
                None => c.call(
                    Method::POST,
                    "/api/v1/jobs",
                    Some(serde_json::to_value(&req)?),
                )?,
            };
            let doc: Value = resp.json()?;
            let warnings: Vec<String> = serde_json::from_value(doc["warnings"].clone())?;
            let v: JobView = serde_json::from_value(doc["job"].clone())?;
            print_queued(
                ctx,
                source.as_deref(),
                &warnings,
                doc["routed"].as_str(),
                &v,
                &doc["job"],
            )?;
            Ok(0)
        }
        JobCmd::Ls { state, owner } => {
            // One request per state asked for (the API filters by one), merged by id.
            let mut docs: Vec<Value> = Vec::new();
            let states: Vec<Option<&str>> = if state.is_empty() {
                vec![None]
            } else {
                state.iter().map(|s| Some(s.as_str())).collect()
            };
            for st in states {
                let mut q = Vec::new();
                if let Some(st) = st {
                    q.push(format!("state={}", seg(st)));
                }
                if let Some(o) = &owner {
                    q.push(format!("owner={}", seg(o)));
                }
                let path = format!("/api/v1/jobs?{}", q.join("&"));
                docs.extend(c.json::<Vec<Value>>(Method::GET, &path, None)?);
            }
            docs.sort_by_key(|d| d["id"].as_i64());
            docs.dedup_by_key(|d| d["id"].as_i64());
            if ctx.json() {
                ctx.print_json(&docs)?;
            } else {
                let views = docs
                    .into_iter()
                    .map(serde_json::from_value)
                    .collect::<Result<Vec<JobView>, _>>()?;
                print_table(&views);
            }
            Ok(0)
        }
        JobCmd::Show { id, jsdl: true } => {
            // The service's answer carries the stored spec; the document is written here.
            let (_, doc) = show(&c, parse_id(&id)?)?;
            let spec: vfarm_jobs::JobSpec = serde_json::from_value(doc["spec"].clone())
                .with_context(|| format!("the service's answer has no job spec: {doc}"))?;
            print!("{}", vfarm_jsdl::write(&spec.to_jsdl()));
            Ok(0)
        }
        JobCmd::Show { id, jsdl: false } => {
            let (v, doc) = show(&c, parse_id(&id)?)?;
            if ctx.json() {
                ctx.print_json(&doc)?;
            } else {
                print_job(&v);
            }
            Ok(0)
        }
        JobCmd::Cancel { ids } => {
            for id in ids_of(&ids)? {
                c.call(Method::POST, &format!("/api/v1/jobs/{id}/cancel"), None)?;
                let (v, _, _) = wait_for(&c, id, Some(Instant::now() + CANCEL_WAIT))?;
                if ctx.json() {
                    ctx.print_json(&serde_json::json!({"id": id, "state": v.state}))?;
                } else {
                    println!("{id} {}", v.state);
                }
            }
            Ok(0)
        }
        JobCmd::Wait { ids, timeout } => {
            let deadline = timeout
                .as_deref()
                .map(|t| vfarm_core::instance::parse_duration("timeout", t))
                .transpose()?
                .map(|s| Instant::now() + Duration::from_secs(s));
            let mut all_ok = true;
            for id in ids_of(&ids)? {
                let (v, doc, done) = wait_for(&c, id, deadline)?;
                if !done {
                    eprintln!("vfarm: job wait: job {id} is still {}", v.state);
                    return Ok(TIMEOUT_EXIT);
                }
                all_ok &= v.state == "succeeded";
                if ctx.json() {
                    ctx.print_json(&doc)?;
                } else {
                    println!(
                        "{id} {}{}{}",
                        v.state,
                        v.reason
                            .as_ref()
                            .map_or(String::new(), |r| format!(" ({r})")),
                        v.exit_code.map_or(String::new(), |c| format!(" exit {c}"))
                    );
                }
            }
            Ok(if all_ok { 0 } else { 1 })
        }
        JobCmd::Logs { id, console } => {
            let id = parse_id(&id)?;
            let get = |stream: &str| -> Result<Vec<u8>> {
                let path = format!("/api/v1/jobs/{id}/logs/{stream}");
                Ok(c.call(Method::GET, &path, None)?.bytes()?.to_vec())
            };
            if console {
                std::io::stdout().write_all(&get("console")?)?;
                return Ok(0);
            }
            let mut out = std::io::stdout().lock();
            out.write_all(&get("stdout")?)?;
            out.flush()?;
            std::io::stderr().write_all(&get("stderr")?)?;
            Ok(0)
        }
        JobCmd::Output { id, file } => {
            let id = parse_id(&id)?;
            match file {
                Some(f) => {
                    let path = format!("/api/v1/jobs/{id}/outputs/{}", seg(&f));
                    let bytes = c.call(Method::GET, &path, None)?.bytes()?;
                    std::io::stdout().write_all(&bytes)?;
                }
                None => {
                    let (_, doc) = show(&c, id)?;
                    let outputs = doc["outputs"].as_array().cloned().unwrap_or_default();
                    if ctx.json() {
                        ctx.print_json(&outputs)?;
                    } else {
                        for o in outputs {
                            println!(
                                "{:>10}  {}",
                                o["size"].as_u64().unwrap_or(0),
                                o["name"].as_str().unwrap_or("")
                            );
                        }
                    }
                }
            }
            Ok(0)
        }
        JobCmd::Queues => {
            let doc: Value = c.json(Method::GET, "/api/v1/queues", None)?;
            if ctx.json() {
                ctx.print_json(&doc)?;
            } else {
                print_queues(&doc);
            }
            Ok(0)
        }
        JobCmd::RunOne { .. } => bail!("`job run-one` runs on the service's host only"),
    }
}
