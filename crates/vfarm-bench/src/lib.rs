//! `vfarm bench`: statistics over repeated runs, the overhead report (native vs OCI vs VM),
//! its table and its chart. Running the workloads is the binary's job (it drives the public
//! CLI); this crate is pure apart from writing the chart file.

pub mod chart;
pub mod report;
pub mod stats;

pub use report::{DriverRun, Machine, Report, Row};
pub use stats::Stats;

/// Failures of this crate. Codes are stable.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot write the chart {path}: {reason}")]
    Chart { path: String, reason: String },
    #[error(
        "the report has nothing to chart: no workload has figures for native and another driver"
    )]
    NothingToChart,
}

impl BenchError {
    pub fn code(&self) -> vfarm_proto::ErrorCode {
        match self {
            BenchError::Chart { .. } => vfarm_proto::ErrorCode::ChartFailed,
            BenchError::NothingToChart => vfarm_proto::ErrorCode::NothingToChart,
        }
    }
}
