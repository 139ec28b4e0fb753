//! Batch jobs over HTTP: submit (JSON, or a JSDL 1.0 document as `application/xml`), list,
//! show, cancel and download outputs. The handlers call `vfarm_service::jobs` with the
//! request's identity; another owner's job is 404 like a missing one; admins see all.

use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;
use vfarm_auth::Identity;
use vfarm_service::jobs::{self, JobRequest, Origin};
use vfarm_service::{Caller, Env};
use vfarm_store::jobs::JobRow;
use vfarm_store::StoreError;

use crate::instances::{identity, Who};
use crate::{blocking, ApiError, AppState, ErrorBody, ErrorCode};

/// Errors of the job operations as API errors: the service's one conversion.
fn job_error(e: anyhow::Error) -> ApiError {
    vfarm_service::ServiceError::from_anyhow(e).into()
}

/// The job `id` if the caller may see it: another owner's is not found, as a missing one.
fn visible(s: &AppState, who: &Identity, id: &str) -> Result<JobRow, ApiError> {
    let not_found = || ApiError::new(ErrorCode::JobNotFound, format!("job `{id}` not found"));
    let n: i64 = id
        .trim_start_matches("job-")
        .parse()
        .map_err(|_| not_found())?;
    let j = s.store.job(n).map_err(|e| match e {
        StoreError::NotFound { .. } => not_found(),
        e => ApiError::internal(e.to_string()),
    })?;
    if !who.may_access(&j.owner) {
        return Err(not_found());
    }
    Ok(j)
}

/// The command's own output streams, captured beside the job's files (what `vfarm job logs`
/// shows): downloadable under these names unless a staged-out file has the name.
const STREAMS: [&str; 2] = ["stdout", "stderr"];

/// The captured streams of the job in `dir` that exist and no staged-out file hides.
fn captured_streams(dir: &std::path::Path, outputs: &[(String, u64)]) -> Vec<(String, u64)> {
    STREAMS
        .into_iter()
        .filter(|s| !outputs.iter().any(|(n, _)| n == s))
        .filter_map(|s| {
            let m = std::fs::symlink_metadata(dir.join(s)).ok()?;
            m.is_file().then(|| (s.to_string(), m.len()))
        })
        .collect()
}

/// A job as the API shows it: the CLI's view without the server's paths, plus its outputs
/// and captured streams.
fn job_json(env: &Env, j: &JobRow, detail: bool) -> Result<serde_json::Value, ApiError> {
    let store = env.store().map_err(job_error)?;
    let v = jobs::view(env, &store, j, detail).map_err(job_error)?;
    let files = jobs::output_files(&v.dir);
    let list = |l: &[(String, u64)]| -> Vec<serde_json::Value> {
        l.iter()
            .map(|(name, size)| serde_json::json!({ "name": name, "size": size }))
            .collect()
    };
    let (outputs, streams) = (list(&files), list(&captured_streams(&v.dir, &files)));
    let mut doc = serde_json::to_value(&v).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Some(o) = doc.as_object_mut() {
        o.remove("dir");
        o.insert("outputs".into(), outputs.into());
        o.insert("streams".into(), streams.into());
    }
    Ok(doc)
}

/// `POST /api/v1/jobs`: a JSON request, or a JSDL document with `Content-Type:
/// application/xml`. 201 with the job, `warnings` (what of the request vfarm cannot
/// honour) and `routed` (the image routing by OS chose, and why); a refusal stores nothing.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body(content = JobRequest, description = "A job; or a JSDL 1.0 JobDefinition as application/xml"),
    responses((status = 201, description = "Queued: the job and warnings", body = Object), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(crate) async fn submit(
    State(s): State<AppState>,
    who: Who,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = identity(who)?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let req = if ctype.starts_with("application/xml") || ctype.starts_with("text/xml") {
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("body", "a JSDL document must be UTF-8"))?;
        JobRequest {
            jsdl: Some(("request body".into(), text)),
            ..Default::default()
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("body", e.to_string()))?
    };
    let env = s.env();
    let doc = blocking(move || {
        let done = jobs::submit(&env, None, &Caller::from(&who), Origin::Remote, req)
            .map_err(job_error)?;
        let mut doc = serde_json::Map::new();
        doc.insert("job".into(), job_json(&env, &done.job, false)?);
        doc.insert("warnings".into(), done.warnings.into());
        doc.insert("routed".into(), done.routed.into());
        Ok(serde_json::Value::Object(doc))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct JobFilter {
    /// Only jobs in this state (queued, starting, running, succeeded, failed, cancelled).
    state: Option<String>,
    /// Only this owner's jobs (admins; others see only their own anyway).
    owner: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", operation_id = "list_jobs", params(JobFilter),
    responses((status = 200, description = "The caller's jobs (all, for admins)", body = [Object]), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(crate) async fn list(
    State(s): State<AppState>,
    who: Who,
    q: Result<Query<JobFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let who = identity(who)?;
    let Query(f) = crate::instances::query(q)?;
    if let Some(st) = &f.state {
        if vfarm_jobs::JobState::parse(st).is_none() {
            return Err(ApiError::bad_request(
                "state",
                format!("`{st}` is not a job state"),
            ));
        }
    }
    let env = s.env();
    let docs = blocking(move || {
        let states: Vec<&str> = f.state.iter().map(String::as_str).collect();
        let rows = s
            .store
            .jobs(&states)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        rows.iter()
            .filter(|j| who.may_access(&j.owner))
            .filter(|j| f.owner.as_ref().is_none_or(|o| &j.owner == o))
            .map(|j| job_json(&env, j, false))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    Ok(Json(docs).into_response())
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs", operation_id = "show_job", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The job with its spec, events, outputs (staged-out files) and streams (the command's captured stdout and stderr)", body = Object), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn show(
    State(s): State<AppState>,
    who: Who,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let who = identity(who)?;
    let env = s.env();
    let doc = blocking(move || {
        let j = visible(&s, &who, &id)?;
        job_json(&env, &j, true)
    })
    .await?;
    Ok(Json(doc).into_response())
}

#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, description = "The job's state after the request: cancelled, or still running while its instance is removed", body = Object), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub(crate) async fn cancel(
    State(s): State<AppState>,
    who: Who,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let who = identity(who)?;
    let env = s.env();
    let doc = blocking(move || {
        let j = visible(&s, &who, &id)?;
        let cfg = jobs::load_config(&env, None).map_err(job_error)?;
        let state =
            jobs::request_cancel(&s.store, &cfg, &Caller::from(&who), j.id).map_err(job_error)?;
        Ok(serde_json::json!({ "id": j.id, "state": state }))
    })
    .await?;
    Ok(Json(doc).into_response())
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/outputs/{name}", tag = "jobs", params(("id" = String, Path, description = "Job id"), ("name" = String, Path, description = "An output's name (the job's `outputs`), or `stdout`/`stderr` (its `streams`)")),
    responses((status = 200, description = "The file: a staged-out file of that name, else the captured stream", content_type = "application/octet-stream"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn output(
    State(s): State<AppState>,
    who: Who,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let who = identity(who)?;
    let env = s.env();
    let path: PathBuf = blocking(move || {
        let j = visible(&s, &who, &id)?;
        let missing = || {
            ApiError::new(
                ErrorCode::ArtifactNotFound,
                format!("job {} has no output `{name}`", j.id),
            )
        };
        // A bare name: nothing outside the job's output directory.
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(missing());
        }
        let dir = jobs::job_dir(&env, j.id);
        let is_file = |p: &PathBuf| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
        let staged = dir.join("output").join(&name);
        if is_file(&staged) {
            return Ok(staged);
        }
        let stream = dir.join(&name);
        if STREAMS.contains(&name.as_str()) && is_file(&stream) {
            return Ok(stream);
        }
        Err(missing())
    })
    .await?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs/{stream}", tag = "jobs", operation_id = "job_logs", params(("id" = String, Path, description = "Job id"), ("stream" = String, Path, description = "`stdout`, `stderr` or `console` (the instance's console, a VM's boot messages)")),
    responses((status = 200, description = "The stream so far (also what JSDL redirected to a file)", content_type = "text/plain"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn logs(
    State(s): State<AppState>,
    who: Who,
    Path((id, stream)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let who = identity(who)?;
    let st = jobs::LogStream::parse(&stream).ok_or_else(|| {
        ApiError::bad_request(
            "stream",
            format!("`{stream}`: one of stdout, stderr, console"),
        )
    })?;
    let env = s.env();
    let bytes = blocking(move || {
        let j = visible(&s, &who, &id)?;
        let files = jobs::log_files(&env, &j, st).map_err(job_error)?;
        if st == jobs::LogStream::Console && files.is_empty() {
            return Err(ApiError::new(
                ErrorCode::LogNotFound,
                format!("job {} has no console log", j.id),
            ));
        }
        let mut out = Vec::new();
        for f in files {
            out.extend(std::fs::read(&f).map_err(|e| ApiError::internal(e.to_string()))?);
        }
        Ok(out)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], bytes).into_response())
}

#[utoipa::path(get, path = "/api/v1/queues", tag = "jobs", operation_id = "list_queues",
    responses((status = 200, description = "The queue configuration and this host's capacity for jobs", body = Object), (status = 401, body = ErrorBody)))]
pub(crate) async fn queues(State(s): State<AppState>, who: Who) -> Result<Response, ApiError> {
    identity(who)?;
    let env = s.env();
    let doc = blocking(move || {
        let cfg = jobs::load_config(&env, None).map_err(job_error)?;
        let cap = jobs::host_capacity(&cfg);
        Ok(serde_json::json!({ "config": cfg, "capacity": cap }))
    })
    .await?;
    Ok(Json(doc).into_response())
}
