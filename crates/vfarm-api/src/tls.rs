//! TLS for `vfarm serve`: rustls (the TLS stack reqwest already brings, on ring) through
//! tokio-rustls, with axum's own `serve` over a custom [`Listener`].
//!
//! Why not axum-server: its rustls acceptor hides the TLS session from the router, so the
//! client certificate cannot reach a request without wrapping it anyway; here the listener
//! does the handshake (concurrently, each in its own task with a deadline, so one slow client
//! does not stall accepts) and hands axum the stream plus a [`Peer`] carrying the verified
//! certificate's subject DN, which arrives in every request as `ConnectInfo<Peer>`.
//!
//! Client certificates are optional at the TLS level (`allow_unauthenticated`) so token users
//! connect too; a certificate that is presented must chain to the CA directory (IGTF layout,
//! `<hash>.0`), lie in its issuer's namespace (`<hash>.namespaces` / `.signing_policy`), and
//! neither it nor any CA above it may be on its issuer's CRL (`<hash>.r0`), else the handshake
//! fails. The directory is re-read when a file in it changes (fetch-crl updates CRLs in place).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The TCP peer (None on the unix socket).
    pub addr: Option<SocketAddr>,
    /// The verified client certificate's subject (`/C=…/O=…/CN=…`,
    /// [`escaped`](vfarm_auth::dn::escaped)), when one was presented.
    pub client_dn: Option<String>,
    /// Its issuer, the same way: subject and issuer together are the identity.
    pub client_issuer: Option<String>,
    /// The peer's uid from the kernel (`SO_PEERCRED`), on the unix socket.
    pub unix_uid: Option<u32>,
    /// The verified client certificate's serial (hex) and SHA-256 fingerprint (hex), for
    /// pinning nodes and control to the very certificates issued at join.
    pub client_serial: Option<String>,
    pub client_fingerprint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {}: {message}", path.display())]
    Cert { path: PathBuf, message: String },
    #[error("--tls-key {}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("--client-ca-dir {}: {message}", path.display())]
    CaDir { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// What `vfarm serve` was given.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca_dir: Option<PathBuf>,
    /// `[trust] crl_missing` of serve.toml.
    pub crl_missing: vfarm_imagelist::trust::CrlMissing,
    /// `[trust] require_namespaces` of serve.toml.
    pub require_namespaces: Option<bool>,
    /// Told of every refused client certificate (for the audit log).
    pub on_refusal: Option<RefusalSink>,
}

/// Receives (subject, code, reason) of each client certificate refused at the handshake.
#[derive(Clone)]
pub struct RefusalSink(pub Arc<RefusalFn>);

/// (subject, code, reason) of a refused client certificate.
pub type RefusalFn = dyn Fn(&str, &str, &str) + Send + Sync;

impl std::fmt::Debug for RefusalSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefusalSink")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build the rustls server configuration from the files as they are now.
pub fn server_config(s: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&s.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: s.cert.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: s.cert.clone(),
            message: "no PEM certificate in the file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&s.key).map_err(|e| TlsError::Key {
        path: s.key.clone(),
        message: e.to_string(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &s.client_ca_dir {
        None => builder.with_no_client_auth(),
        Some(dir) => builder.with_client_cert_verifier(client_verifier(s, dir)?),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Key {
            path: s.key.clone(),
            message: format!("does not fit the certificate: {e}"),
        })?;
    // HTTP/1.1 only: axum is built without its http2 feature.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Trust every CA of the IGTF directory, as a grid site does: rustls (webpki) checks the
/// chain's signatures, validity and the clientAuth purpose; then the directory's own judgement
/// ([`TrustStore::check_path`](vfarm_imagelist::trust::TrustStore::check_path)) checks every
/// certificate of the chain against its issuer's namespace and its issuer's CRL, refusing a
/// missing or stale CRL unless `crl_missing = "warn"`.
fn client_verifier(
    s: &TlsSettings,
    dir: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let bad = |message: String| TlsError::CaDir {
        path: dir.to_path_buf(),
        message,
    };
    let trust = vfarm_imagelist::trust::TrustStore::load(dir).map_err(|e| bad(format!("{e}")))?;
    let mut roots = RootCertStore::empty();
    for ca in trust.cas() {
        let der = ca.to_der().map_err(|e| bad(e.to_string()))?;
        if let Err(e) = roots.add(CertificateDer::from(der)) {
            // One odd CA among the IGTF bundle must not stop the service; say which.
            let subject = vfarm_auth::dn::oneline(ca.subject_name());
            tracing::warn!(ca = %subject, "CA certificate not usable by rustls, skipped: {e}");
        }
    }
    if roots.is_empty() {
        return Err(bad("no usable CA certificate".into()));
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad(e.to_string()))?;
    Ok(Arc::new(GridVerifier {
        inner,
        trust,
        crl_missing: s.crl_missing,
        require_namespaces: s.require_namespaces,
        on_refusal: s.on_refusal.clone(),
    }))
}

/// The webpki verifier plus the CA directory's namespaces and chain-wide CRLs.
struct GridVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    trust: vfarm_imagelist::trust::TrustStore,
    crl_missing: vfarm_imagelist::trust::CrlMissing,
    require_namespaces: Option<bool>,
    on_refusal: Option<RefusalSink>,
}

impl std::fmt::Debug for GridVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GridVerifier")
            .field("ca_dir", &self.trust.dir())
            .finish()
    }
}

impl rustls::server::danger::ClientCertVerifier for GridVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let parse = |d: &CertificateDer<'_>| {
            openssl::x509::X509::from_der(d)
                .map_err(|e| rustls::Error::General(format!("certificate not readable: {e}")))
        };
        let leaf = parse(end_entity)?;
        let chain = intermediates
            .iter()
            .map(parse)
            .collect::<Result<Vec<_>, _>>()?;
        let policy = vfarm_imagelist::trust::PathPolicy {
            at: chrono::DateTime::from_timestamp(now.as_secs() as i64, 0).unwrap_or_default(),
            crl_missing: self.crl_missing,
            require_namespaces: self.require_namespaces,
        };
        let subject = vfarm_auth::dn::oneline(leaf.subject_name());
        match self.trust.verify_client(&leaf, &chain, &policy) {
            Ok((_, warnings)) => {
                for w in warnings {
                    tracing::warn!(%subject, "client certificate accepted with crl_missing = warn: {w}");
                }
                Ok(verified)
            }
            Err(e) => {
                tracing::warn!(%subject, code = e.code().as_str(), "client certificate refused: {e}");
                if let Some(sink) = &self.on_refusal {
                    (sink.0)(&subject, e.code().as_str(), &e.to_string());
                }
                // The TLS alert says the kind (curl prints "certificate revoked"); the
                // reason is in the log.
                use rustls::CertificateError as C;
                use vfarm_imagelist::trust::PathError as P;
                Err(rustls::Error::InvalidCertificate(match e {
                    P::Revoked { .. } => C::Revoked,
                    P::CrlNotCurrent { .. } => C::UnknownRevocationStatus,
                    P::Untrusted { .. } => C::UnknownIssuer,
                    P::OutsideNamespace { .. } | P::NoNamespace { .. } => {
                        C::ApplicationVerificationFailure
                    }
                }))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The files' names, sizes and modification times: a change means "reload".
fn signature(s: &TlsSettings) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files = vec![s.cert.clone(), s.key.clone()];
    if let Some(d) = &s.client_ca_dir {
        files.push(d.clone());
        if let Ok(rd) = std::fs::read_dir(d) {
            files.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let len = m.as_ref().map(|m| m.len()).unwrap_or(0);
            let mtime = m.and_then(|m| m.modified().ok());
            (p, len, mtime)
        })
        .collect()
}

type Signature = Vec<(PathBuf, u64, Option<SystemTime>)>;

/// The current TLS configuration, rebuilt when the certificate, key or CA directory change
/// (checked at most every two seconds, on accept). A broken update keeps the last good one.
pub struct TlsConfigSource {
    settings: TlsSettings,
    state: Mutex<(Instant, Signature, Arc<ServerConfig>)>,
}

const RECHECK: Duration = Duration::from_secs(2);

impl TlsConfigSource {
    pub fn new(settings: TlsSettings) -> Result<TlsConfigSource, TlsError> {
        let sig = signature(&settings);
        let cfg = server_config(&settings)?;
        Ok(TlsConfigSource {
            settings,
            state: Mutex::new((Instant::now(), sig, cfg)),
        })
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0.elapsed() >= RECHECK {
            st.0 = Instant::now();
            let sig = signature(&self.settings);
            if sig != st.1 {
                match server_config(&self.settings) {
                    Ok(cfg) => {
                        tracing::info!("TLS certificate, key or CA directory changed: reloaded");
                        st.2 = cfg;
                    }
                    Err(e) => tracing::error!("TLS reload failed, keeping the previous: {e}"),
                }
                st.1 = sig;
            }
        }
        st.2.clone()
    }
}

/// Accepts TCP connections, does the TLS handshakes concurrently and yields finished ones.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: SocketAddr,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

impl TlsListener {
    pub fn new(tcp: TcpListener, source: Arc<TlsConfigSource>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: wait a little instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = TlsAcceptor::from(source.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%addr, "TLS handshake refused: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%addr, "TLS handshake timed out");
                            return;
                        }
                    };
                    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                    let peer = Peer {
                        addr: Some(addr),
                        client_dn: leaf.and_then(|der| vfarm_auth::dn::subject_of_der(der).ok()),
                        client_issuer: leaf.and_then(|der| vfarm_auth::dn::issuer_of_der(der).ok()),
                        unix_uid: None,
                        client_serial: leaf.and_then(|der| vfarm_auth::dn::serial_of_der(der).ok()),
                        client_fingerprint: leaf.map(|der| vfarm_auth::dn::fingerprint_of_der(der)),
                    };
                    let _ = tx.send((tls, peer)).await;
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task never ends while the listener lives; if it did, wait forever
            // rather than spin (graceful shutdown still ends the server).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: Some(self.local),
            ..Peer::default()
        })
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Plain TCP (loopback only: `vfarm serve` refuses anything else without TLS).
pub struct PlainListener(pub TcpListener);

impl Listener for PlainListener {
    type Io = TcpStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = Listener::accept(&mut self.0).await;
        (
            io,
            Peer {
                addr: Some(addr),
                ..Peer::default()
            },
        )
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: Some(self.0.local_addr()?),
            ..Peer::default()
        })
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// The local unix socket: the kernel tells who connected (`SO_PEERCRED`), so the peer's login
/// name is its identity without any credential.
pub struct UnixPeerListener(pub tokio::net::UnixListener);

impl Listener for UnixPeerListener {
    type Io = tokio::net::UnixStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((io, _)) => {
                    let unix_uid = io.peer_cred().ok().map(|c| c.uid());
                    return (
                        io,
                        Peer {
                            unix_uid,
                            ..Peer::default()
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!("accept on the unix socket failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer::default())
    }
}

impl Connected<IncomingStream<'_, UnixPeerListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixPeerListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Bind the unix socket at `path`: a leftover socket file nobody answers on is replaced, one
/// a running service answers on is refused. Only the service's user may connect (0600), or
/// also the members of `group` (0660): every local caller is a tenant the kernel names, so
/// the site chooses which local accounts are.
pub fn bind_unix(path: &Path, group: Option<u32>) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by a running service", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let l = tokio::net::UnixListener::bind(path)?;
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfarm_auth::ca::SiteCa;

    fn pair(dir: &Path, name: &str, ca: &SiteCa, host: &str) -> (PathBuf, PathBuf) {
        let i = ca.issue_host(host, 1, chrono::Utc::now()).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &i.cert_pem).unwrap();
        std::fs::write(&k, &i.key_pem).unwrap();
        (c, k)
    }

    #[test]
    fn bad_files_are_named_by_flag() {
        let d = tempfile::tempdir().unwrap();
        let ca = SiteCa::init(
            &d.path().join("ca"),
            "/C=XX/O=t/CN=CA",
            10,
            chrono::Utc::now(),
        )
        .unwrap();
        let (cert, key) = pair(d.path(), "a", &ca, "localhost");
        let (_, other_key) = pair(d.path(), "b", &ca, "localhost");
        let ok = TlsSettings {
            cert: cert.clone(),
            key: key.clone(),
            client_ca_dir: Some(ca.certificates_dir()),
            crl_missing: Default::default(),
            require_namespaces: None,
            on_refusal: None,
        };
        assert!(server_config(&ok).is_ok());
        let e = server_config(&TlsSettings {
            cert: d.path().join("nope.crt"),
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("--tls-cert"), "{e}");
        let e = server_config(&TlsSettings {
            key: other_key,
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("--tls-key"), "{e}");
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = server_config(&TlsSettings {
            client_ca_dir: Some(empty),
            ..ok.clone()
        })
        .unwrap_err();
        assert!(e.to_string().starts_with("--client-ca-dir"), "{e}");
    }

    #[test]
    fn reload_picks_up_a_changed_directory() {
        let d = tempfile::tempdir().unwrap();
        let ca = SiteCa::init(
            &d.path().join("ca"),
            "/C=XX/O=t/CN=CA",
            10,
            chrono::Utc::now(),
        )
        .unwrap();
        let (cert, key) = pair(d.path(), "a", &ca, "localhost");
        let src = TlsConfigSource::new(TlsSettings {
            cert,
            key,
            client_ca_dir: Some(ca.certificates_dir()),
            crl_missing: Default::default(),
            require_namespaces: None,
            on_refusal: None,
        })
        .unwrap();
        let first = src.current();
        // Pretend the last check was long ago, change the directory, and ask again.
        src.state.lock().unwrap().0 = Instant::now() - RECHECK * 2;
        let u = ca
            .issue_user("/C=XX/O=t/CN=U", 1, chrono::Utc::now())
            .unwrap();
        ca.revoke(&u.serial, chrono::Utc::now()).unwrap();
        std::fs::write(ca.certificates_dir().join("extra.txt"), "x").unwrap();
        let second = src.current();
        assert!(!Arc::ptr_eq(&first, &second), "not reloaded");
        // Unchanged: the same configuration is kept.
        src.state.lock().unwrap().0 = Instant::now() - RECHECK * 2;
        assert!(Arc::ptr_eq(&second, &src.current()));
    }
}
