//! Making a new list from a short description (JSON or TOML): sizes and sha512 are computed
//! from local files, identifiers are generated, dates are filled in.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

use crate::model::{is_sha512_hex, Endorser, Image, ImageList};

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid JSON list description", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{} is not a valid TOML list description", path.display())]
    Toml {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("images[{index}]: give `file`, or both `sha512` and `size`")]
    NoChecksum { index: usize },
    #[error("images[{index}]: `sha512` is not 128 hex digits")]
    BadChecksum { index: usize },
    #[error("images[{index}]: `uri` is missing and there is no `file` to derive it from")]
    NoUri { index: usize },
    #[error("`lifetime_days` must be at least 1")]
    BadLifetime,
    #[error("`endorser` is missing: give it in the description or sign with a certificate")]
    NoEndorser,
}

/// The endorser block of a description.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EndorserDesc {
    pub dn: String,
    pub ca: String,
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub creator: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDesc {
    /// A local file: its size and sha512 are computed.
    pub file: Option<PathBuf>,
    /// Where subscribers download it; defaults to `file://<absolute file>`.
    pub uri: Option<String>,
    pub sha512: Option<String>,
    pub size: Option<u64>,
    pub identifier: Option<String>,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_arch")]
    pub arch: String,
    #[serde(default = "default_os")]
    pub os: String,
    #[serde(default)]
    pub osversion: String,
    #[serde(default)]
    pub comments: String,
    #[serde(default = "default_hypervisor")]
    pub hypervisor: String,
    #[serde(default = "default_version")]
    pub version: String,
    pub format: Option<String>,
    /// Extra keys copied verbatim (`ad:*`, …).
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn default_arch() -> String {
    "x86_64".into()
}
fn default_os() -> String {
    "Linux".into()
}
fn default_hypervisor() -> String {
    "kvm".into()
}
fn default_version() -> String {
    "1".into()
}
fn default_lifetime() -> i64 {
    28
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListDesc {
    pub identifier: Option<String>,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub source: String,
    /// Where the signed list will be published.
    pub uri: String,
    #[serde(default = "default_version")]
    pub version: String,
    /// Days from creation to `dc:date:expires`.
    #[serde(default = "default_lifetime")]
    pub lifetime_days: i64,
    pub endorser: Option<EndorserDesc>,
    #[serde(default)]
    pub images: Vec<ImageDesc>,
    #[serde(default)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl ListDesc {
    /// Read a description; `.toml` files are TOML, anything else JSON. Relative image
    /// `file`s are resolved against the description's directory.
    pub fn load(path: &Path) -> Result<ListDesc, CreateError> {
        let text = std::fs::read_to_string(path).map_err(|source| CreateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut d: ListDesc = if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|source| CreateError::Toml {
                path: path.to_path_buf(),
                source,
            })?
        } else {
            serde_json::from_str(&text).map_err(|source| CreateError::Json {
                path: path.to_path_buf(),
                source,
            })?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        for img in &mut d.images {
            if let Some(f) = &img.file {
                if f.is_relative() {
                    img.file = Some(base.join(f));
                }
            }
        }
        Ok(d)
    }
}

/// sha512 (lowercase hex) and size of a file, in one read.
pub fn hash_file(path: &Path) -> Result<(String, u64), CreateError> {
    let err = |source| CreateError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    let mut h = openssl::sha::Sha512::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf).map_err(err)?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((hex::encode(h.finish()), n))
}

/// Build the list. `endorser` (from the signing certificate) is used when the description
/// names none.
pub fn build(
    desc: &ListDesc,
    endorser: Option<EndorserDesc>,
    now: DateTime<Utc>,
) -> Result<ImageList, CreateError> {
    if desc.lifetime_days < 1 {
        return Err(CreateError::BadLifetime);
    }
    let e = desc
        .endorser
        .clone()
        .or(endorser)
        .ok_or(CreateError::NoEndorser)?;
    let mut images = Vec::new();
    for (index, d) in desc.images.iter().enumerate() {
        let (sha512, size) = match (&d.file, &d.sha512, d.size) {
            (_, Some(s), Some(n)) => (s.to_ascii_lowercase(), n),
            (Some(f), _, _) => hash_file(f)?,
            _ => return Err(CreateError::NoChecksum { index }),
        };
        if !is_sha512_hex(&sha512) {
            return Err(CreateError::BadChecksum { index });
        }
        let uri = match (&d.uri, &d.file) {
            (Some(u), _) => u.clone(),
            (None, Some(f)) => {
                let abs = std::path::absolute(f).map_err(|source| CreateError::Read {
                    path: f.clone(),
                    source,
                })?;
                format!("file://{}", abs.display())
            }
            (None, None) => return Err(CreateError::NoUri { index }),
        };
        images.push(Image {
            identifier: d
                .identifier
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            title: d.title.clone(),
            description: d.description.clone(),
            uri,
            size,
            sha512,
            arch: d.arch.clone(),
            os: d.os.clone(),
            os_version: d.osversion.clone(),
            comments: d.comments.clone(),
            hypervisor: d.hypervisor.clone(),
            version: d.version.clone(),
            format: d.format.clone(),
            expires: None,
            extra: d.extra.clone(),
        });
    }
    let now = DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now);
    Ok(ImageList {
        identifier: desc
            .identifier
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        created: now,
        expires: now + Duration::days(desc.lifetime_days),
        title: desc.title.clone(),
        description: desc.description.clone(),
        source: desc.source.clone(),
        uri: desc.uri.clone(),
        version: desc.version.clone(),
        endorsers: vec![Endorser {
            dn: e.dn,
            ca: e.ca,
            email: e.email,
            creator: e.creator,
            extra: BTreeMap::new(),
        }],
        endorser_array: false,
        images,
        extra: desc.extra.clone(),
    })
}
