//! `/metrics`: Prometheus exposition in the format the scraper asks for (OpenMetrics 1.0 or
//! the classic text format 0.0.4), every response counted and timed. Names and labels are
//! listed in docs/metrics.md; docs/grafana/vfarm.json charts them.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::{blocking, ApiError, AppState};

pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance_id: String,
    name: String,
    owner: String,
    driver: String,
    host: String,
}

type Timings = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 1 ms .. ~16 s: an API call, not a build (builds run behind operations).
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

/// Counters that live as long as the service.
#[derive(Clone)]
pub struct Metrics {
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) durations: Timings,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(duration_histogram),
        }
    }
}

/// A request's method as a label: the standard ones, `other` for anything else, so a client
/// cannot grow the series without bound.
fn method_label(m: &axum::http::Method) -> String {
    use axum::http::Method as M;
    let known = [
        M::GET,
        M::HEAD,
        M::POST,
        M::PUT,
        M::DELETE,
        M::PATCH,
        M::OPTIONS,
    ];
    if known.contains(m) {
        m.as_str().to_string()
    } else {
        "other".to_string()
    }
}

/// The outermost layer: every response, also a 401 or 429 from the auth layer, is counted
/// and timed (to the response head; streamed bodies are not waited for).
pub(crate) async fn count(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let resp = next.run(req).await;
    let labels = RequestLabels {
        method,
        status: resp.status().as_u16(),
    };
    s.metrics.requests.get_or_create(&labels).inc();
    s.metrics
        .durations
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Whether the scraper prefers OpenMetrics to the classic text format (by the `q` of each in
/// `Accept`; a tie goes to OpenMetrics, no `Accept` to the classic format every parser reads).
pub fn wants_openmetrics(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (mut om, mut text) = (0.0_f64, 0.0_f64);
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or("").to_ascii_lowercase();
        let q = params
            .find_map(|p| p.strip_prefix("q="))
            .and_then(|q| q.parse::<f64>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    om > 0.0 && om >= text
}

/// OpenMetrics text (as prometheus-client writes it) → the classic format 0.0.4: counters'
/// families take their samples' `_total` name, `info` becomes a gauge named `_info`, `unknown`
/// is `untyped`; no `# UNIT`, no `# EOF`. Samples are the same lines in both formats.
pub fn to_classic(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, typ) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, typ) = match typ {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_string(), "untyped"),
                t => (name.to_string(), t),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {typ}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `GET /metrics`. Instance, job and host figures are read from the store at every scrape,
/// so they are right whichever process changed them; instance usage is the sampler's latest.
pub(crate) async fn metrics(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let store = s.store.clone();
    let ca_dir = s.client_ca_dir.clone();
    let (instances, jobs, leases, crls, hosts) = blocking(move || {
        let e = |e: vfarm_store::StoreError| ApiError::internal(format!("metrics: {e}"));
        // The CRLs fetch-crl keeps current: their age and time left, for alerting before
        // `crl_missing = "refuse"` locks a CA's users out.
        let crls = ca_dir
            .and_then(|d| vfarm_imagelist::TrustStore::load(&d).ok())
            .map(|t| t.crl_ages(chrono::Utc::now()))
            .unwrap_or_default();
        Ok((
            store.instance_state_counts().map_err(e)?,
            store.job_state_counts().map_err(e)?,
            store.hostname_leases().map_err(e)?.len(),
            crls,
            store.hosts().map_err(e)?,
        ))
    })
    .await?;
    let mut reg = Registry::default();
    reg.register(
        "vfarm_build",
        "The running vfarm",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    reg.register(
        "vfarm_http_requests",
        "HTTP responses, by method and status (401s and 429s included)",
        s.metrics.requests.clone(),
    );
    reg.register(
        "vfarm_http_request_duration_seconds",
        "Time to the response head, by method and status",
        s.metrics.durations.clone(),
    );
    let gauge_family = |counts: Vec<(String, i64)>| {
        let f = Family::<StateLabels, Gauge>::default();
        for (state, n) in counts {
            f.get_or_create(&StateLabels { state }).set(n);
        }
        f
    };
    reg.register(
        "vfarm_instances",
        "Instances on record, by state",
        gauge_family(instances),
    );
    reg.register("vfarm_jobs", "Jobs on record, by state", gauge_family(jobs));
    let l = Gauge::<i64>::default();
    l.set(leases as i64);
    reg.register("vfarm_hostname_leases", "Pool hostnames held", l);
    register_crls(&mut reg, crls);
    register_hosts(&mut reg, &hosts);
    if let Some(sampler) = &s.usage {
        register_usage(&mut reg, sampler);
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)
        .map_err(|e| ApiError::internal(format!("metrics: {e}")))?;
    let (content_type, body) = if wants_openmetrics(&headers) {
        (OPENMETRICS, out)
    } else {
        (CLASSIC, to_classic(&out))
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

fn register_crls(reg: &mut Registry, crls: Vec<(String, Option<i64>, Option<i64>)>) {
    let (age, left) = (
        Family::<IssuerLabels, Gauge>::default(),
        Family::<IssuerLabels, Gauge>::default(),
    );
    for (issuer, a, r) in crls {
        let labels = IssuerLabels { issuer };
        if let Some(a) = a {
            age.get_or_create(&labels).set(a);
        }
        if let Some(r) = r {
            left.get_or_create(&labels).set(r);
        }
    }
    reg.register(
        "vfarm_crl_age_seconds",
        "Age of each CRL of the client CA directory (now - lastUpdate), by issuer",
        age,
    );
    reg.register(
        "vfarm_crl_remaining_seconds",
        "Time left of each CRL of the client CA directory (nextUpdate - now; negative: expired)",
        left,
    );
}

/// Per host: what it has and what placement promised on it (one series per host and figure).
fn register_hosts(reg: &mut Registry, hosts: &[vfarm_store::hosts::HostRow]) {
    let family = || Family::<HostLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let (cpus, mem, p_cpus, p_mem, n, up) =
        (family(), family(), family(), family(), family(), family());
    for h in hosts {
        let l = HostLabels {
            host: h.name.clone(),
        };
        cpus.get_or_create(&l).set(h.cpus as f64);
        mem.get_or_create(&l).set(h.memory_mib as f64 * 1048576.0);
        p_cpus
            .get_or_create(&l)
            .set(h.used_cpus_milli as f64 / 1000.0);
        p_mem
            .get_or_create(&l)
            .set(h.used_memory_mib as f64 * 1048576.0);
        n.get_or_create(&l).set(h.instances as f64);
        up.get_or_create(&l)
            .set(if h.state == "up" { 1.0 } else { 0.0 });
    }
    for (name, help, f) in [
        ("vfarm_host_cpus", "CPUs a host has", cpus),
        ("vfarm_host_memory_bytes", "Memory a host has", mem),
        (
            "vfarm_host_promised_cpus",
            "CPUs placement promised to instances on a host",
            p_cpus,
        ),
        (
            "vfarm_host_promised_memory_bytes",
            "Memory placement promised to instances on a host",
            p_mem,
        ),
        ("vfarm_host_instances", "Instances placed on a host", n),
        ("vfarm_host_up", "1 when a host's heartbeat is current", up),
    ] {
        reg.register(name, help, f);
    }
}

/// Per instance, from the sampler: at most one series per instance this service runs and
/// figure, labelled with what a dashboard groups by (owner, driver, host). Totals since the
/// instance started are counters (a restart resets them, which `rate()` handles).
fn register_usage(reg: &mut Registry, sampler: &Arc<vfarm_service::stats::Sampler>) {
    use std::sync::atomic::AtomicU64;
    let gauge = Family::<InstanceLabels, Gauge<f64, AtomicU64>>::default;
    let counter = Family::<InstanceLabels, Counter<f64, AtomicU64>>::default;
    let (cpus, mem, limit) = (gauge(), gauge(), gauge());
    let (cpu, rd, wr, rx, tx) = (counter(), counter(), counter(), counter(), counter());
    for u in sampler.overview() {
        let Some(last) = &u.last else { continue };
        let l = InstanceLabels {
            instance_id: u.id.clone(),
            name: u.name.clone(),
            owner: u.owner.clone(),
            driver: u.driver.clone(),
            host: u.host.clone(),
        };
        cpus.get_or_create(&l).set(u.cpus);
        cpu.get_or_create(&l).inc_by(last.cpu_seconds);
        mem.get_or_create(&l).set(u.memory_bytes as f64);
        if let Some(m) = u.memory_limit_bytes {
            limit.get_or_create(&l).set(m as f64);
        }
        rd.get_or_create(&l).inc_by(last.disk_read_bytes as f64);
        wr.get_or_create(&l).inc_by(last.disk_write_bytes as f64);
        if let Some(n) = last.net_rx_bytes {
            rx.get_or_create(&l).inc_by(n as f64);
        }
        if let Some(n) = last.net_tx_bytes {
            tx.get_or_create(&l).inc_by(n as f64);
        }
    }
    for (name, help, f) in [
        ("vfarm_instance_cpus", "CPUs an instance may use", cpus),
        (
            "vfarm_instance_memory_bytes",
            "Memory an instance uses",
            mem,
        ),
        (
            "vfarm_instance_memory_limit_bytes",
            "Memory an instance may use",
            limit,
        ),
    ] {
        reg.register(name, help, f);
    }
    for (name, help, f) in [
        (
            "vfarm_instance_cpu_seconds",
            "CPU time an instance used since it started",
            cpu,
        ),
        (
            "vfarm_instance_disk_read_bytes",
            "Bytes an instance read from block devices since it started",
            rd,
        ),
        (
            "vfarm_instance_disk_written_bytes",
            "Bytes an instance wrote to block devices since it started",
            wr,
        ),
        (
            "vfarm_instance_network_receive_bytes",
            "Bytes an instance received since it started",
            rx,
        ),
        (
            "vfarm_instance_network_transmit_bytes",
            "Bytes an instance sent since it started",
            tx,
        ),
    ] {
        reg.register(name, help, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_choose_the_format() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, v.parse().unwrap());
            m
        };
        // What Prometheus 2.x/3.x sends.
        assert!(wants_openmetrics(&h("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")));
        assert!(!wants_openmetrics(&h("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(&h("*/*")));
        assert!(!wants_openmetrics(&HeaderMap::new()));
        assert!(!wants_openmetrics(&h(
            "application/openmetrics-text;q=0.2,text/plain;q=0.9"
        )));
        assert!(!wants_openmetrics(&h("application/openmetrics-text;q=0")));
    }

    #[test]
    fn classic_format_names_counter_families_by_their_samples() {
        let om =
            "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{a=\"1\"} 3\n\
                  # HELP x_build The build.\n# TYPE x_build info\nx_build_info{version=\"1\"} 1\n\
                  # HELP x_g A gauge.\n# TYPE x_g gauge\n# UNIT x_g seconds\nx_g 2\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{a=\"1\"} 3\n\
             # HELP x_build_info The build.\n# TYPE x_build_info gauge\nx_build_info{version=\"1\"} 1\n\
             # HELP x_g A gauge.\n# TYPE x_g gauge\nx_g 2\n"
        );
    }
}

/// `GET /api/v1/stats`: the overview (admins see every instance, others their own).
#[utoipa::path(get, path = "/api/v1/stats", tag = "instances",
    responses((status = 200, description = "Measured use of each running instance this service runs: now, avg and max over the last minutes",
               body = Vec<vfarm_service::stats::InstanceUsage>),
              (status = 401, body = crate::ErrorBody), (status = 503, body = crate::ErrorBody)))]
pub(crate) async fn stats(
    State(s): State<AppState>,
    who: crate::instances::Who,
) -> Result<Response, ApiError> {
    let caller = crate::tokens::caller(who)?;
    let Some(sampler) = s.usage.clone() else {
        return Err(ApiError {
            code: crate::ErrorCode::HostNotReady,
            message: "this service samples no instance usage".into(),
            field: None,
        });
    };
    Ok(axum::Json(sampler.overview_for(&caller)).into_response())
}
