//! The one list of client-visible error codes.
//!
//! Every error the HTTP API answers with, and every error document `--output json` prints,
//! carries one of these codes. Libraries classify their errors into an [`ErrorCode`]; the HTTP
//! status ([`ErrorCode::http_status`]) and the CLI's exit status ([`ErrorCode::exit_code`])
//! are each derived from it in one `match`, so the two front ends cannot disagree. The table
//! in `docs/API.md` lists exactly these codes (a test compares them).

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($( $(#[doc = $doc:literal])* $variant:ident = $code:literal, )*) => {
        /// A stable, machine-readable error code (`snake_case` on the wire).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum ErrorCode {
            $( $(#[doc = $doc])* #[serde(rename = $code)] $variant, )*
        }

        impl ErrorCode {
            /// Every code, in the order of the table in `docs/API.md`.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The code as sent on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( ErrorCode::$variant => $code, )*
                }
            }

            /// The code for a wire string; `None` for one this build does not know (a newer
            /// peer's), which a client treats as a generic failure.
            pub fn parse(s: &str) -> Option<ErrorCode> {
                match s {
                    $( $code => Some(ErrorCode::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

codes! {
    // Bad input: the request or the command line is at fault; `field` names the input.
    /// A request field is missing, malformed or out of range.
    InvalidRequest = "invalid_request",
    /// An image or instance specification is invalid.
    InvalidSpec = "invalid_spec",
    /// A command-line argument or option is invalid.
    InvalidArgument = "invalid_argument",
    /// A configuration file (serve.toml, queues, subscriptions) is invalid.
    InvalidConfig = "invalid_config",
    /// An archive or disk offered for import is not usable.
    InvalidImport = "invalid_import",
    /// A job description (JSON or JSDL) is invalid.
    InvalidJob = "invalid_job",
    /// A JSDL document is not valid JSDL 1.0 (the message names the element).
    InvalidJsdl = "invalid_jsdl",
    /// A CA directory (certificates, namespaces, CRLs) cannot be used.
    InvalidCaDir = "invalid_ca_dir",
    /// A package named in an image spec is not in the suite.
    UnknownPackage = "unknown_package",
    /// The suite is not available from the mirror.
    SuiteUnavailable = "suite_unavailable",
    /// A reference (id prefix or name) matches more than one object.
    AmbiguousReference = "ambiguous_reference",
    /// The driver or this build cannot do what was asked.
    Unsupported = "unsupported",
    /// A job names a queue that is not configured.
    UnknownQueue = "unknown_queue",
    /// No queue route accepts the job.
    NoRoute = "no_route",
    /// The job asks for more than any queue or host can give.
    Unsatisfiable = "unsatisfiable",
    /// No image satisfies the job's operating-system requirements.
    NoMatchingImage = "no_matching_image",
    /// Slurm cannot satisfy the job's resources.
    SlurmUnsatisfiable = "slurm_unsatisfiable",
    /// The requested hostname is not in the pool.
    HostnameNotInPool = "hostname_not_in_pool",
    /// An image-list or cache entry name is not a safe file name.
    BadName = "bad_name",
    /// Nothing to chart: the benchmark results hold no series.
    NothingToChart = "nothing_to_chart",
    // Identity.
    /// No identity: neither a client certificate nor a bearer token.
    Unauthenticated = "unauthenticated",
    /// The bearer token is unknown or malformed.
    InvalidToken = "invalid_token",
    /// The bearer token was revoked.
    TokenRevoked = "token_revoked",
    /// The bearer token has expired.
    TokenExpired = "token_expired",
    /// The join token is unknown, used or expired.
    InvalidJoinToken = "invalid_join_token",
    /// The caller may not do this (not the owner, not an admin).
    Forbidden = "forbidden",
    /// A state-changing browser request from another origin.
    CrossOrigin = "cross_origin",
    /// The route is for nodes: it needs a node certificate.
    NodeCertificateRequired = "node_certificate_required",
    /// The node certificate names no known host.
    UnknownNode = "unknown_node",
    // Not found.
    /// An object (named in the message) does not exist.
    NotFound = "not_found",
    /// No such instance (or not the caller's).
    InstanceNotFound = "instance_not_found",
    /// No such image (or not the caller's).
    ImageNotFound = "image_not_found",
    /// No such snapshot.
    SnapshotNotFound = "snapshot_not_found",
    /// No such operation.
    OperationNotFound = "operation_not_found",
    /// The image has no artifact in the requested format.
    ArtifactNotFound = "artifact_not_found",
    /// No such log.
    LogNotFound = "log_not_found",
    /// No such token.
    TokenNotFound = "token_not_found",
    /// No such host.
    HostNotFound = "host_not_found",
    /// No such job (or not the caller's).
    JobNotFound = "job_not_found",
    /// Slurm does not know the job.
    SlurmJobNotFound = "slurm_job_not_found",
    /// Slurm does not know the node.
    SlurmNodeNotFound = "slurm_node_not_found",
    // Conflicts with the current state.
    /// The name or object already exists, or changed meanwhile.
    Conflict = "conflict",
    /// The operation is not allowed in the object's current state.
    IllegalState = "illegal_state",
    /// The instance runs under another service or on a node; the message says where.
    InstanceElsewhere = "instance_elsewhere",
    /// The instance's image was revoked by its image list.
    ImageRevoked = "image_revoked",
    /// The image is used by instances.
    ImageInUse = "image_in_use",
    /// No hostname is left in the pool.
    PoolExhausted = "pool_exhausted",
    /// The hostname is taken.
    HostnameTaken = "hostname_taken",
    /// The owner's quota would be exceeded.
    QuotaExceeded = "quota_exceeded",
    /// No host has room for the instance.
    NoCapacity = "no_capacity",
    /// The site CA exists already.
    CaExists = "ca_exists",
    /// Slurm refused the submission.
    SlurmSubmitRefused = "slurm_submit_refused",
    /// The subscription is revoked: its list is no longer fetched.
    SubscriptionRevoked = "subscription_revoked",
    // A document or download failed its checks (image lists and their images).
    /// The image list is not signed.
    NotSigned = "not_signed",
    /// The image list has not exactly one signer.
    SignerCount = "signer_count",
    /// The signature does not verify.
    BadSignature = "bad_signature",
    /// The signer is not trusted for this list.
    UntrustedSigner = "untrusted_signer",
    /// The signer's issuer is not the CA it claims.
    RogueIssuer = "rogue_issuer",
    /// A certificate has expired.
    CertificateExpired = "certificate_expired",
    /// A certificate is not valid yet.
    CertificateNotYetValid = "certificate_not_yet_valid",
    /// A certificate of the chain is revoked.
    CertificateRevoked = "certificate_revoked",
    /// A CRL of the chain is missing or past its nextUpdate.
    CrlNotCurrent = "crl_not_current",
    /// The certificate chain does not verify.
    ChainInvalid = "chain_invalid",
    /// The signer's certificate is not for signing.
    SignerPurpose = "signer_purpose",
    /// The image list is not a well-formed list.
    MalformedList = "malformed_list",
    /// The list's endorser is not its signer.
    EndorserMismatch = "endorser_mismatch",
    /// The endorser is not authorised by the subscription.
    EndorserNotAuthorised = "endorser_not_authorised",
    /// The endorser is revoked.
    EndorserRevoked = "endorser_revoked",
    /// The image list has expired.
    ListExpired = "list_expired",
    /// The image list is dated in the future.
    ListFromFuture = "list_from_future",
    /// The list's identifier changed since the last update.
    IdentifierChanged = "identifier_changed",
    /// The list is older than one accepted before.
    Rollback = "rollback",
    /// No trust anchor issued the certificate.
    Untrusted = "untrusted",
    /// The subject lies outside its issuer's IGTF namespace.
    OutsideNamespace = "outside_namespace",
    /// The issuer has no namespace files and namespaces are required.
    NoNamespace = "no_namespace",
    /// The URI's scheme is not http(s).
    UnsupportedScheme = "unsupported_scheme",
    /// A `file://` URI where the subscription does not allow files.
    FileUriNotAllowed = "file_uri_not_allowed",
    /// The server redirected to another host.
    RedirectRefused = "redirect_refused",
    /// The download is larger than the list declares.
    SizeMismatch = "size_mismatch",
    /// The download's SHA-512 differs from the list's.
    Sha512Mismatch = "sha512_mismatch",
    /// The download ended early.
    Truncated = "truncated",
    /// The built image failed its check.
    CheckFailed = "check_failed",
    // Too much at once.
    /// Too many requests; wait and retry.
    RateLimited = "rate_limited",
    // Failures of this service or of what it drives.
    /// A failure the client cannot act on; the message quotes an id for the log.
    Internal = "internal",
    /// A command failed; the message says why.
    Failed = "error",
    /// The state database failed.
    StoreError = "store_error",
    /// The state database holds a record it cannot read.
    StoreCorrupt = "store_corrupt",
    /// A file operation failed.
    IoError = "io_error",
    /// A certificate could not be made or read.
    CertificateError = "certificate_error",
    /// The instance driver (runc, QEMU) failed.
    BackendFailure = "backend_failure",
    /// An image build tool (mmdebstrap, dnf, qemu-img) failed.
    BuildFailed = "build_failed",
    /// The trust anchors cannot be read.
    TrustAnchors = "trust_anchors",
    /// The image cache cannot be written.
    CacheIo = "cache_io",
    /// A Slurm command failed.
    SlurmCommandFailed = "slurm_command_failed",
    /// A Slurm command's output could not be read.
    SlurmParse = "slurm_parse",
    /// Talking to Slurm failed.
    SlurmIo = "slurm_io",
    /// The test Slurm cluster did not start.
    SlurmClusterStart = "slurm_cluster_start",
    /// A Slurm command timed out.
    SlurmTimeout = "slurm_timeout",
    /// A benchmark chart could not be drawn.
    ChartFailed = "chart_failed",
    // Something upstream failed.
    /// A node answered with an error or unreadably.
    NodeError = "node_error",
    /// Fetching an image from the control failed.
    ImagePullFailed = "image_pull_failed",
    /// A download failed in transport.
    Transport = "transport",
    /// A download answered with an HTTP error status.
    HttpStatus = "http_status",
    /// A list or image source cannot be read.
    SourceUnreadable = "source_unreadable",
    // Not ready.
    /// A component this needs is missing or not working; the message names the fix.
    HostNotReady = "host_not_ready",
    /// A node cannot be reached.
    HostUnreachable = "host_unreachable",
    /// The state database cannot be opened.
    StoreUnavailable = "store_unavailable",
    /// The state database was written by a newer vfarm.
    StoreTooNew = "store_too_new",
    /// The service has no site CA (`vfarm ca init`).
    NoSiteCa = "no_site_ca",
    /// There is no site CA yet (`vfarm ca init`).
    CaNotInitialised = "ca_not_initialised",
    /// A Slurm command is not installed.
    SlurmToolMissing = "slurm_tool_missing",
    /// Slurm's controller cannot be reached.
    SlurmUnreachable = "slurm_unreachable",
}

impl ErrorCode {
    /// The HTTP status of an answer carrying this code.
    pub const fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidRequest | InvalidSpec | InvalidArgument | InvalidConfig | InvalidImport
            | InvalidJob | InvalidJsdl | InvalidCaDir | UnknownPackage | SuiteUnavailable
            | AmbiguousReference | Unsupported | UnknownQueue | NoRoute | Unsatisfiable
            | NoMatchingImage | SlurmUnsatisfiable | HostnameNotInPool | BadName
            | NothingToChart => 400,
            Unauthenticated | InvalidToken | TokenRevoked | TokenExpired | InvalidJoinToken => 401,
            Forbidden | CrossOrigin | NodeCertificateRequired | UnknownNode => 403,
            NotFound | InstanceNotFound | ImageNotFound | SnapshotNotFound | OperationNotFound
            | ArtifactNotFound | LogNotFound | TokenNotFound | HostNotFound | JobNotFound
            | SlurmJobNotFound | SlurmNodeNotFound => 404,
            Conflict | IllegalState | InstanceElsewhere | ImageRevoked | ImageInUse
            | PoolExhausted | HostnameTaken | QuotaExceeded | NoCapacity | CaExists
            | SlurmSubmitRefused | SubscriptionRevoked => 409,
            NotSigned
            | SignerCount
            | BadSignature
            | UntrustedSigner
            | RogueIssuer
            | CertificateExpired
            | CertificateNotYetValid
            | CertificateRevoked
            | CrlNotCurrent
            | ChainInvalid
            | SignerPurpose
            | MalformedList
            | EndorserMismatch
            | EndorserNotAuthorised
            | EndorserRevoked
            | ListExpired
            | ListFromFuture
            | IdentifierChanged
            | Rollback
            | Untrusted
            | OutsideNamespace
            | NoNamespace
            | UnsupportedScheme
            | FileUriNotAllowed
            | RedirectRefused
            | SizeMismatch
            | Sha512Mismatch
            | Truncated
            | CheckFailed => 422,
            RateLimited => 429,
            Internal | Failed | StoreError | StoreCorrupt | IoError | CertificateError
            | BackendFailure | BuildFailed | TrustAnchors | CacheIo | SlurmCommandFailed
            | SlurmParse | SlurmIo | SlurmClusterStart | SlurmTimeout | ChartFailed => 500,
            NodeError | ImagePullFailed | Transport | HttpStatus | SourceUnreadable => 502,
            HostNotReady | HostUnreachable | StoreUnavailable | StoreTooNew | NoSiteCa
            | CaNotInitialised | SlurmToolMissing | SlurmUnreachable => 503,
        }
    }

    /// The CLI's exit status for a command that failed with this code: 2 bad input or a
    /// refusal, 3 not found, 4 this host lacks a component, 5 a build or its check failed,
    /// 1 anything else.
    pub const fn exit_code(self) -> u8 {
        use ErrorCode::*;
        match self {
            BuildFailed | CheckFailed => 5,
            HostNotReady | StoreTooNew | NoSiteCa | CaNotInitialised | SlurmToolMissing => 4,
            _ => match self.http_status() {
                404 => 3,
                400 | 401 | 403 | 409 => 2,
                _ => 1,
            },
        }
    }

    /// A client's mistake (4xx): the message may be shown as is; a 5xx's detail goes to the
    /// log only.
    pub const fn is_client_error(self) -> bool {
        let s = self.http_status();
        s >= 400 && s < 500
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error document every failing request answers with (and `--output json` prints).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: one of the codes in docs/API.md.
    pub code: ErrorCode,
    pub message: String,
    /// The input field at fault, when there is one.
    pub field: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(
                json,
                format!("\"{}\"", c.as_str()),
                "serde and as_str agree"
            );
        }
        assert_eq!(ErrorCode::parse("no_such_code"), None);
    }

    #[test]
    fn statuses_and_exits_follow_the_documented_classes() {
        assert_eq!(ErrorCode::HostNotFound.http_status(), 404);
        assert_eq!(ErrorCode::HostNotFound.exit_code(), 3);
        assert_eq!(ErrorCode::InvalidRequest.exit_code(), 2);
        assert_eq!(ErrorCode::HostNotReady.exit_code(), 4);
        assert_eq!(ErrorCode::BuildFailed.exit_code(), 5);
        assert_eq!(ErrorCode::Internal.exit_code(), 1);
        assert!(ErrorCode::QuotaExceeded.is_client_error());
        assert!(!ErrorCode::NodeError.is_client_error());
    }

    /// docs/API.md's table of codes lists exactly [`ErrorCode::ALL`], each with the status
    /// and exit the code derives.
    #[test]
    fn the_api_document_lists_exactly_these_codes() {
        let doc = include_str!("../../../docs/API.md");
        let start = doc
            .find("<!-- error-codes -->")
            .expect("docs/API.md has an <!-- error-codes --> table");
        let end = doc[start..]
            .find("<!-- /error-codes -->")
            .expect("the table ends with <!-- /error-codes -->")
            + start;
        let mut listed = Vec::new();
        for line in doc[start..end].lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let code = cells[1].trim_matches('`');
            let c = ErrorCode::parse(code)
                .unwrap_or_else(|| panic!("docs/API.md lists `{code}`, which the code lacks"));
            assert_eq!(cells[2], c.http_status().to_string(), "status of {code}");
            assert_eq!(cells[3], c.exit_code().to_string(), "exit of {code}");
            listed.push(c);
        }
        for &c in ErrorCode::ALL {
            assert!(listed.contains(&c), "docs/API.md does not list `{c}`");
        }
        assert_eq!(listed.len(), ErrorCode::ALL.len(), "a code is listed twice");
    }
}
