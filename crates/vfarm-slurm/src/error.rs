use std::path::PathBuf;

/// Everything that can go wrong talking to Slurm. Each variant has a stable [`Error::code`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of a [`crate::BatchJob`] (or a feature name) is unusable; nothing was submitted.
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: String, reason: String },

    /// A Slurm command-line tool is not installed (or not on PATH).
    #[error("{tool} is not installed (Debian packages slurm-client / slurm-wlm): {source}")]
    ToolMissing {
        tool: String,
        #[source]
        source: std::io::Error,
    },

    /// The tool ran but could not reach slurmctld (down, wrong SLURM_CONF, munge failing).
    #[error("{tool} cannot reach the Slurm controller: {message}")]
    Unreachable { tool: String, message: String },

    /// The tool found no slurm.conf (nor a DNS SRV record for the controller): this host is
    /// not set up as a Slurm client.
    #[error(
        "{tool} finds no Slurm configuration (no slurm.conf, no SLURM_CONF, no DNS SRV record)"
    )]
    NotConfigured { tool: String },

    /// sbatch refused the job (unknown feature, partition, impossible resources…).
    #[error("Slurm refused the job: {message}")]
    SubmitRefused { message: String },

    /// No node of the cluster could ever run the job (checked by the caller before submit).
    #[error("no Slurm node can run this job: {field}: {reason}")]
    Unsatisfiable { field: String, reason: String },

    /// Slurm does not know this job id (never existed, or purged after MinJobAge).
    #[error("Slurm job {id} not found (unknown, or purged after the controller's MinJobAge)")]
    JobNotFound { id: u64 },

    /// Slurm does not know this node.
    #[error("Slurm node {node:?} not found")]
    NodeNotFound { node: String },

    /// A tool exited non-zero for a reason not classified above.
    #[error("{tool} failed ({status}): {stderr}")]
    CommandFailed {
        tool: String,
        status: String,
        stderr: String,
    },

    /// A tool did not finish within the deadline and was killed.
    #[error("{tool} did not answer within {secs} s")]
    Timeout { tool: String, secs: u64 },

    /// A tool's output is not what this version of the parser understands.
    #[error("cannot parse {tool} output ({what}): {output:?}")]
    Parse {
        tool: String,
        what: String,
        output: String,
    },

    /// Running a tool, or the test cluster script, failed at the OS level.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// The test cluster (scripts/slurm-cluster.sh) did not start.
    #[error("test Slurm cluster in {dir} did not start: {message}")]
    ClusterStart { dir: PathBuf, message: String },
}

impl Error {
    /// Stable machine-readable code, independent of the message wording.
    pub fn code(&self) -> vfarm_proto::ErrorCode {
        match self {
            Error::InvalidInput { .. } => vfarm_proto::ErrorCode::InvalidJob,
            Error::ToolMissing { .. } => vfarm_proto::ErrorCode::SlurmToolMissing,
            Error::Unreachable { .. } | Error::NotConfigured { .. } => {
                vfarm_proto::ErrorCode::SlurmUnreachable
            }
            Error::SubmitRefused { .. } => vfarm_proto::ErrorCode::SlurmSubmitRefused,
            Error::Unsatisfiable { .. } => vfarm_proto::ErrorCode::SlurmUnsatisfiable,
            Error::JobNotFound { .. } => vfarm_proto::ErrorCode::SlurmJobNotFound,
            Error::NodeNotFound { .. } => vfarm_proto::ErrorCode::SlurmNodeNotFound,
            Error::CommandFailed { .. } => vfarm_proto::ErrorCode::SlurmCommandFailed,
            Error::Timeout { .. } => vfarm_proto::ErrorCode::SlurmTimeout,
            Error::Parse { .. } => vfarm_proto::ErrorCode::SlurmParse,
            Error::Io { .. } => vfarm_proto::ErrorCode::SlurmIo,
            Error::ClusterStart { .. } => vfarm_proto::ErrorCode::SlurmClusterStart,
        }
    }

    /// Worth trying again later (the controller may come back; the job was not judged).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Timeout { .. })
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
