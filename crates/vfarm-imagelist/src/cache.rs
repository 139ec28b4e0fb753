//! The image cache: `<root>/cache/<identifier>` files, downloads in `<root>/partial`, expired
//! files in `<root>/expired/<identifier>.<YYYY-mm-dd_HH-MM-SS>`.
//!
//! A download is hashed (sha512) and counted while it is written, so it is never read twice;
//! only a file with the expected size and checksum is renamed into `cache/`, atomically, so a
//! good cached copy is never replaced by a bad one.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("image name `{name}` cannot be a file name")]
    BadName { name: String },
    #[error("unsupported URI scheme in `{uri}` (file, http and https are supported)")]
    UnsupportedScheme { uri: String },
    #[error("{uri}: file:// image URIs are refused for this subscription (only http and https; a list read from a local file may name local files)")]
    FileNotAllowed { uri: String },
    #[error("{uri}: {detail} (only redirects to the same host are followed)")]
    Redirect { uri: String, detail: String },
    #[error("cannot open {uri}")]
    Open {
        uri: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot download {uri}")]
    Http {
        uri: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{uri} answered HTTP {status}")]
    Status { uri: String, status: u16 },
    #[error("download of {uri} was cut short: got {received} of {expected} bytes")]
    Truncated {
        uri: String,
        received: u64,
        expected: u64,
    },
    #[error("{uri} is larger than the expected {expected} bytes")]
    TooLarge { uri: String, expected: u64 },
    #[error("sha512 of {uri} is {found}, the list says {expected}")]
    Sha512Mismatch {
        uri: String,
        expected: String,
        found: String,
    },
    #[error("cache I/O on {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    pub fn code(&self) -> vfarm_proto::ErrorCode {
        match self {
            FetchError::BadName { .. } => vfarm_proto::ErrorCode::BadName,
            FetchError::UnsupportedScheme { .. } => vfarm_proto::ErrorCode::UnsupportedScheme,
            FetchError::FileNotAllowed { .. } => vfarm_proto::ErrorCode::FileUriNotAllowed,
            FetchError::Redirect { .. } => vfarm_proto::ErrorCode::RedirectRefused,
            FetchError::Open { .. } => vfarm_proto::ErrorCode::SourceUnreadable,
            FetchError::Http { .. } => vfarm_proto::ErrorCode::Transport,
            FetchError::Status { .. } => vfarm_proto::ErrorCode::HttpStatus,
            FetchError::Truncated { .. } => vfarm_proto::ErrorCode::Truncated,
            FetchError::TooLarge { .. } => vfarm_proto::ErrorCode::SizeMismatch,
            FetchError::Sha512Mismatch { .. } => vfarm_proto::ErrorCode::Sha512Mismatch,
            FetchError::Io { .. } => vfarm_proto::ErrorCode::CacheIo,
        }
    }

    /// Failures another attempt cannot fix.
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            FetchError::BadName { .. }
                | FetchError::UnsupportedScheme { .. }
                | FetchError::FileNotAllowed { .. }
                | FetchError::Redirect { .. }
                | FetchError::Io { .. }
        )
    }
}

/// What a download must produce.
#[derive(Debug, Clone)]
pub struct Expected {
    pub uri: String,
    pub size: u64,
    pub sha512: String,
}

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Attempts in total (at least 1).
    pub attempts: u32,
    pub retry_delay: Duration,
    pub timeout: Duration,
    /// Whether `file://` URIs may be read (a subscription to a local list); off, a signed
    /// list cannot make the cache copy a host file (`file:///etc/shadow`).
    pub allow_file: bool,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            attempts: 3,
            retry_delay: Duration::from_secs(2),
            timeout: Duration::from_secs(3600),
            allow_file: false,
        }
    }
}

/// A file that is in the cache and matched its expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub path: PathBuf,
    pub size: u64,
    pub sha512: String,
    /// Attempts used (1 = first try).
    pub attempts: u32,
}

/// A file found in the cache directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheFile {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
}

pub struct Cache {
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn check_name(name: &str) -> Result<(), FetchError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(FetchError::BadName {
            name: name.to_string(),
        });
    }
    Ok(())
}

const CHUNK: usize = 1 << 20;

/// Copy `reader` into `out`, hashing and counting; stop as soon as more than `expected.size`
/// bytes arrive. Read errors after the connection started count as a cut-short download.
fn stream(
    reader: &mut dyn Read,
    out: &mut dyn Write,
    out_path: &Path,
    expected: &Expected,
) -> Result<(u64, String), FetchError> {
    let mut hasher = openssl::sha::Sha512::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n: u64 = 0;
    loop {
        let got = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(g) => g,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => {
                return Err(FetchError::Truncated {
                    uri: expected.uri.clone(),
                    received: n,
                    expected: expected.size,
                })
            }
        };
        n += got as u64;
        if n > expected.size {
            return Err(FetchError::TooLarge {
                uri: expected.uri.clone(),
                expected: expected.size,
            });
        }
        hasher.update(&buf[..got]);
        out.write_all(&buf[..got]).map_err(io_err(out_path))?;
    }
    check_complete(n, hasher, expected)
}

/// Buffers in flight between the hashing reader and the writer thread.
const DEPTH: usize = 8;
/// Start writeback of what was written every so often, so the final sync does not wait for
/// the whole image and disk writes overlap with hashing.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// Ask the kernel to start writing `len` bytes at `offset` to disk, without waiting and
/// without a cache flush (unlike `fdatasync`, which made downloads twice as slow).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the duration of the call; the call only reads its
    // integer arguments. Failure is harmless (the final sync writes everything anyway).
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// Like [`stream`] into a new file, but hashing and writing run on two threads so a
/// download costs about max(hash, write) rather than their sum. The file is synced before
/// this returns `Ok`.
fn stream_to_file(
    reader: &mut dyn Read,
    file: File,
    path: &Path,
    expected: &Expected,
) -> Result<(u64, String), FetchError> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::sync_channel;

    let (full_tx, full_rx) = sync_channel::<Vec<u8>>(DEPTH);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(DEPTH);
    for _ in 0..DEPTH {
        free_tx
            .send(vec![0u8; CHUNK])
            .expect("the pool has room for every buffer");
    }
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = s.spawn(|| -> std::io::Result<()> {
            let mut file = file;
            let (mut written, mut flushed) = (0u64, 0u64);
            for buf in full_rx {
                file.write_all(&buf)?;
                written += buf.len() as u64;
                if written - flushed >= WRITEBACK_EVERY {
                    start_writeback(&file, flushed, written - flushed);
                    flushed = written;
                }
                // The reader may have stopped already; then the buffer is simply dropped.
                let _ = free_tx.send(buf);
            }
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            file.sync_all()
        });
        let read = (|| -> Result<Option<(u64, String)>, FetchError> {
            let mut hasher = openssl::sha::Sha512::new();
            let mut n: u64 = 0;
            loop {
                // A closed pool means the writer failed; its error is reported below.
                let Ok(mut buf) = free_rx.recv() else {
                    return Ok(None);
                };
                buf.resize(CHUNK, 0);
                let got = loop {
                    match reader.read(&mut buf) {
                        Ok(g) => break g,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => {
                            return Err(FetchError::Truncated {
                                uri: expected.uri.clone(),
                                received: n,
                                expected: expected.size,
                            })
                        }
                    }
                };
                if got == 0 {
                    break;
                }
                n += got as u64;
                if n > expected.size {
                    return Err(FetchError::TooLarge {
                        uri: expected.uri.clone(),
                        expected: expected.size,
                    });
                }
                buf.truncate(got);
                hasher.update(&buf);
                if full_tx.send(buf).is_err() {
                    return Ok(None);
                }
            }
            check_complete(n, hasher, expected).map(Some)
        })();
        if read.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        drop(full_tx);
        let written = writer
            .join()
            .expect("the cache writer thread does not panic");
        match (read, written) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(source)) => Err(FetchError::Io {
                path: path.to_path_buf(),
                source,
            }),
            (Ok(Some(done)), Ok(())) => Ok(done),
            (Ok(None), Ok(())) => Err(FetchError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::other("the cache writer stopped early"),
            }),
        }
    })
}

fn check_complete(
    n: u64,
    hasher: openssl::sha::Sha512,
    expected: &Expected,
) -> Result<(u64, String), FetchError> {
    if n < expected.size {
        return Err(FetchError::Truncated {
            uri: expected.uri.clone(),
            received: n,
            expected: expected.size,
        });
    }
    let found = hex::encode(hasher.finish());
    if found != expected.sha512 {
        return Err(FetchError::Sha512Mismatch {
            uri: expected.uri.clone(),
            expected: expected.sha512.clone(),
            found,
        });
    }
    Ok((n, found))
}

/// At most this many redirects, each to the host of the URI asked for.
const MAX_REDIRECTS: usize = 5;

/// Open a `file://` (when `allow_file`), `http://` or `https://` URI for reading. Redirects
/// are followed only to the same host: a list's signer vouches for the URI it signed, not
/// for wherever that server sends the download.
fn open(uri: &str, timeout: Duration, allow_file: bool) -> Result<Box<dyn Read>, FetchError> {
    if let Some(path) = uri.strip_prefix("file://") {
        if !allow_file {
            return Err(FetchError::FileNotAllowed {
                uri: uri.to_string(),
            });
        }
        let f = File::open(path).map_err(|source| FetchError::Open {
            uri: uri.to_string(),
            source,
        })?;
        return Ok(Box::new(f));
    }
    if uri.starts_with("http://") || uri.starts_with("https://") {
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let first = attempt.previous().first().and_then(|u| u.host_str());
            if attempt.previous().len() > MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if attempt.url().host_str() != first {
                let to = attempt.url().to_string();
                attempt.error(format!("redirected to another host: {to}"))
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .redirect(policy)
            .build()
            .map_err(|source| FetchError::Http {
                uri: uri.to_string(),
                source,
            })?;
        let resp = client.get(uri).send().map_err(|source| {
            if source.is_redirect() {
                let mut detail = String::new();
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&source);
                while let Some(e) = cur {
                    detail = e.to_string();
                    cur = e.source();
                }
                FetchError::Redirect {
                    uri: uri.to_string(),
                    detail,
                }
            } else {
                FetchError::Http {
                    uri: uri.to_string(),
                    source,
                }
            }
        })?;
        if !resp.status().is_success() {
            return Err(FetchError::Status {
                uri: uri.to_string(),
                status: resp.status().as_u16(),
            });
        }
        return Ok(Box::new(resp));
    }
    Err(FetchError::UnsupportedScheme {
        uri: uri.to_string(),
    })
}

/// Image lists are small; anything bigger than this is not one.
pub const MAX_LIST_BYTES: u64 = 64 << 20;

/// Fetch a whole small document (an image list, at most [`MAX_LIST_BYTES`]) from `file://`,
/// `http://` or `https://`.
pub fn fetch_bytes(uri: &str, timeout: Duration) -> Result<Vec<u8>, FetchError> {
    // The list's own URL is what the admin subscribed to: a local file is theirs to name.
    let r = open(uri, timeout, true)?;
    let mut v = Vec::new();
    r.take(MAX_LIST_BYTES + 1)
        .read_to_end(&mut v)
        .map_err(|source| FetchError::Open {
            uri: uri.to_string(),
            source,
        })?;
    if v.len() as u64 > MAX_LIST_BYTES {
        return Err(FetchError::TooLarge {
            uri: uri.to_string(),
            expected: MAX_LIST_BYTES,
        });
    }
    Ok(v)
}

impl Cache {
    /// Open (creating) the cache under `root`.
    pub fn open(root: &Path) -> Result<Cache, FetchError> {
        for sub in ["cache", "partial", "expired"] {
            let d = root.join(sub);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
        })
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.root.join("cache")
    }

    pub fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    pub fn expired_dir(&self) -> PathBuf {
        self.root.join("expired")
    }

    pub fn path_of(&self, name: &str) -> PathBuf {
        self.cache_dir().join(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        check_name(name).is_ok() && self.path_of(name).is_file()
    }

    /// Download `expected.uri` into the cache as `name`, verifying while streaming, retrying
    /// up to `opts.attempts` times. On failure the cache is as it was.
    pub fn fetch(
        &self,
        name: &str,
        expected: &Expected,
        opts: &FetchOptions,
    ) -> Result<Cached, FetchError> {
        check_name(name)?;
        let attempts = opts.attempts.max(1);
        let mut last = None;
        for attempt in 1..=attempts {
            match self.fetch_once(name, expected, opts) {
                Ok(mut c) => {
                    c.attempts = attempt;
                    return Ok(c);
                }
                Err(e) if e.is_permanent() => return Err(e),
                Err(e) => {
                    tracing::warn!(image = name, attempt, error = %e, "download failed");
                    last = Some(e);
                    if attempt < attempts {
                        std::thread::sleep(opts.retry_delay);
                    }
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn fetch_once(
        &self,
        name: &str,
        expected: &Expected,
        opts: &FetchOptions,
    ) -> Result<Cached, FetchError> {
        let partial = self
            .partial_dir()
            .join(format!("{name}.{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let mut reader = open(&expected.uri, opts.timeout, opts.allow_file)?;
            let out = File::create(&partial).map_err(io_err(&partial))?;
            let (size, sha512) = stream_to_file(&mut reader, out, &partial, expected)?;
            let dest = self.path_of(name);
            std::fs::rename(&partial, &dest).map_err(io_err(&dest))?;
            Ok(Cached {
                path: dest,
                size,
                sha512,
                attempts: 1,
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result
    }

    /// Re-read a cached file and check it against `expected` (size and sha512).
    pub fn verify(&self, name: &str, expected: &Expected) -> Result<Cached, FetchError> {
        check_name(name)?;
        let path = self.path_of(name);
        let mut f = File::open(&path).map_err(io_err(&path))?;
        let mut sink = std::io::sink();
        let e = Expected {
            uri: format!("file://{}", path.display()),
            ..expected.clone()
        };
        let (size, sha512) = stream(&mut f, &mut sink, &path, &e)?;
        Ok(Cached {
            path,
            size,
            sha512,
            attempts: 1,
        })
    }

    /// Move a cached file to the expired area; returns its new path, `None` if it was not cached.
    pub fn expire(&self, name: &str, now: DateTime<Utc>) -> Result<Option<PathBuf>, FetchError> {
        check_name(name)?;
        let src = self.path_of(name);
        if !src.exists() {
            return Ok(None);
        }
        let dest = self
            .expired_dir()
            .join(format!("{name}.{}", now.format("%Y-%m-%d_%H-%M-%S")));
        std::fs::rename(&src, &dest).map_err(io_err(&dest))?;
        Ok(Some(dest))
    }

    /// Delete a cached file (revocation); returns whether it existed.
    pub fn remove(&self, name: &str) -> Result<bool, FetchError> {
        check_name(name)?;
        let p = self.path_of(name);
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(FetchError::Io { path: p, source }),
        }
    }

    /// Files in `cache/`, sorted by name.
    pub fn files(&self) -> Result<Vec<CacheFile>, FetchError> {
        let dir = self.cache_dir();
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            let md = e.metadata().map_err(io_err(&e.path()))?;
            if md.is_file() {
                out.push(CacheFile {
                    name: e.file_name().to_string_lossy().into_owned(),
                    path: e.path(),
                    size: md.len(),
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
