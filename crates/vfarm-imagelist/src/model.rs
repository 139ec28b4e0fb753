//! The image list document: `{"hv:imagelist": {…}}`.
//!
//! Parsing is lenient where real publishers differ (`hv:size` as integer or string of digits,
//! `hv:endorser` as one object or an array) and strict where consumers depend on it (dates in
//! exactly `%Y-%m-%dT%H:%M:%SZ`, sha512 as 128 hex digits). Unknown keys are kept in `extra`
//! and written back unchanged, so a list survives a parse/serialise round trip.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value};

/// The only date form image lists use (UTC, no fractions, literal `Z`).
pub const DATE_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("not an image list: the top-level object has no `hv:imagelist` key")]
    NotImageList,
    #[error("`{field}` is missing")]
    Missing { field: String },
    #[error("`{field}` must be {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("`{field}`: `{value}` is not a date of the form YYYY-MM-DDTHH:MM:SSZ")]
    BadDate { field: String, value: String },
    #[error("`{field}`: `{value}` is not a sha512 checksum (128 hex digits)")]
    BadChecksum { field: String, value: String },
    #[error("`{field}`: `{value}` is not a size in bytes")]
    BadSize { field: String, value: String },
    #[error("`hv:endorser` names no endorser")]
    NoEndorser,
    #[error("image identifier `{identifier}` appears more than once in `hv:images`")]
    DuplicateImage { identifier: String },
}

/// One `hv:x509` endorser credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endorser {
    /// `hv:dn`: the signer's subject, OpenSSL one-line form.
    pub dn: String,
    /// `hv:ca`: the signer's issuer, OpenSSL one-line form.
    pub ca: String,
    pub email: String,
    /// `dc:creator`.
    pub creator: String,
    pub extra: BTreeMap<String, Value>,
}

/// One `hv:image` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub identifier: String,
    pub title: String,
    pub description: String,
    pub uri: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex.
    pub sha512: String,
    pub arch: String,
    pub os: String,
    pub os_version: String,
    pub comments: String,
    pub hypervisor: String,
    pub version: String,
    pub format: Option<String>,
    /// Per-image `dc:date:expires` (an AppDB extension).
    pub expires: Option<DateTime<Utc>>,
    /// Every other key (`ad:*`, `sl:osname`, `hv:ram_minimum`, …), unchanged.
    pub extra: BTreeMap<String, Value>,
}

/// The `hv:imagelist` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageList {
    pub identifier: String,
    pub created: DateTime<Utc>,
    pub expires: DateTime<Utc>,
    pub title: String,
    pub description: String,
    pub source: String,
    pub uri: String,
    pub version: String,
    pub endorsers: Vec<Endorser>,
    /// Whether `hv:endorser` was written as an array; kept so serialising keeps the form.
    pub endorser_array: bool,
    pub images: Vec<Image>,
    pub extra: BTreeMap<String, Value>,
}

pub fn parse_date(s: &str) -> Option<DateTime<Utc>> {
    // chrono's %Y also takes signs and short years (`-027`, which is then written as `-0027`);
    // the format is fixed-width digits.
    let shape = s.len() == 20
        && s.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !shape {
        return None;
    }
    NaiveDateTime::parse_from_str(s, DATE_FORMAT)
        .ok()
        .map(|d| d.and_utc())
}

pub fn format_date(d: &DateTime<Utc>) -> String {
    d.format(DATE_FORMAT).to_string()
}

/// A JSON object being taken apart, remembering its path for error messages and which
/// keys were consumed so the rest can be kept as `extra`.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
    used: BTreeSet<&'static str>,
}

impl<'a> Obj<'a> {
    fn new(value: &'a Value, path: &str) -> Result<Obj<'a>, ModelError> {
        let map = value.as_object().ok_or_else(|| ModelError::WrongType {
            field: path.to_string(),
            expected: "an object",
        })?;
        Ok(Obj {
            map,
            path: path.to_string(),
            used: BTreeSet::new(),
        })
    }

    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.insert(key);
        self.map.get(key)
    }

    fn req(&mut self, key: &'static str) -> Result<&'a Value, ModelError> {
        let field = self.field(key);
        self.get(key).ok_or(ModelError::Missing { field })
    }

    fn str(&mut self, key: &'static str) -> Result<String, ModelError> {
        let field = self.field(key);
        match self.req(key)? {
            Value::String(s) => Ok(s.clone()),
            _ => Err(ModelError::WrongType {
                field,
                expected: "a string",
            }),
        }
    }

    fn opt_str(&mut self, key: &'static str) -> Result<Option<String>, ModelError> {
        let field = self.field(key);
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ModelError::WrongType {
                field,
                expected: "a string",
            }),
        }
    }

    fn date(&mut self, key: &'static str) -> Result<DateTime<Utc>, ModelError> {
        let value = self.str(key)?;
        parse_date(&value).ok_or_else(|| ModelError::BadDate {
            field: self.field(key),
            value,
        })
    }

    fn opt_date(&mut self, key: &'static str) -> Result<Option<DateTime<Utc>>, ModelError> {
        match self.opt_str(key)? {
            None => Ok(None),
            Some(value) => parse_date(&value)
                .map(Some)
                .ok_or_else(|| ModelError::BadDate {
                    field: self.field(key),
                    value,
                }),
        }
    }

    fn extra(&self) -> BTreeMap<String, Value> {
        self.map
            .iter()
            .filter(|(k, _)| !self.used.contains(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

fn parse_size(value: &Value, field: String) -> Result<u64, ModelError> {
    match value {
        Value::Number(n) => n.as_u64().ok_or_else(|| ModelError::BadSize {
            field,
            value: n.to_string(),
        }),
        // AppDB writes sizes as strings of digits.
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().map_err(|_| ModelError::BadSize {
                field,
                value: s.clone(),
            })
        }
        other => Err(ModelError::BadSize {
            field,
            value: other.to_string(),
        }),
    }
}

pub fn is_sha512_hex(s: &str) -> bool {
    s.len() == 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Endorser {
    fn parse(value: &Value, path: &str) -> Result<Endorser, ModelError> {
        let mut wrapper = Obj::new(value, path)?;
        let inner = wrapper.req("hv:x509")?;
        let mut o = Obj::new(inner, &format!("{path}.hv:x509"))?;
        Ok(Endorser {
            dn: o.str("hv:dn")?,
            ca: o.str("hv:ca")?,
            email: o.str("hv:email")?,
            creator: o.str("dc:creator")?,
            extra: o.extra(),
        })
    }

    fn to_value(&self) -> Value {
        let mut m: Map<String, Value> = self.extra.clone().into_iter().collect();
        m.insert("hv:dn".into(), self.dn.clone().into());
        m.insert("hv:ca".into(), self.ca.clone().into());
        m.insert("hv:email".into(), self.email.clone().into());
        m.insert("dc:creator".into(), self.creator.clone().into());
        let mut w = Map::new();
        w.insert("hv:x509".into(), Value::Object(m));
        Value::Object(w)
    }
}

impl Image {
    /// Parse one `{"hv:image": {…}}` element; `path` names it in errors.
    pub fn parse(value: &Value, path: &str) -> Result<Image, ModelError> {
        let mut wrapper = Obj::new(value, path)?;
        let inner = wrapper.req("hv:image")?;
        let mut o = Obj::new(inner, &format!("{path}.hv:image"))?;
        let size_field = o.field("hv:size");
        let size = parse_size(o.req("hv:size")?, size_field)?;
        let sha = o.str("sl:checksum:sha512")?;
        if !is_sha512_hex(&sha) {
            return Err(ModelError::BadChecksum {
                field: o.field("sl:checksum:sha512"),
                value: sha,
            });
        }
        Ok(Image {
            identifier: o.str("dc:identifier")?,
            title: o.str("dc:title")?,
            description: o.str("dc:description")?,
            uri: o.str("hv:uri")?,
            size,
            sha512: sha.to_ascii_lowercase(),
            arch: o.str("sl:arch")?,
            os: o.str("sl:os")?,
            os_version: o.str("sl:osversion")?,
            comments: o.str("sl:comments")?,
            hypervisor: o.str("hv:hypervisor")?,
            version: o.str("hv:version")?,
            format: o.opt_str("hv:format")?,
            expires: o.opt_date("dc:date:expires")?,
            extra: o.extra(),
        })
    }

    pub fn to_value(&self) -> Value {
        let mut m: Map<String, Value> = self.extra.clone().into_iter().collect();
        let s = |v: &str| Value::String(v.to_string());
        m.insert("dc:identifier".into(), s(&self.identifier));
        m.insert("dc:title".into(), s(&self.title));
        m.insert("dc:description".into(), s(&self.description));
        m.insert("hv:uri".into(), s(&self.uri));
        m.insert("hv:size".into(), Value::from(self.size));
        m.insert("sl:checksum:sha512".into(), s(&self.sha512));
        m.insert("sl:arch".into(), s(&self.arch));
        m.insert("sl:os".into(), s(&self.os));
        m.insert("sl:osversion".into(), s(&self.os_version));
        m.insert("sl:comments".into(), s(&self.comments));
        m.insert("hv:hypervisor".into(), s(&self.hypervisor));
        m.insert("hv:version".into(), s(&self.version));
        if let Some(f) = &self.format {
            m.insert("hv:format".into(), s(f));
        }
        if let Some(e) = &self.expires {
            m.insert("dc:date:expires".into(), s(&format_date(e)));
        }
        let mut w = Map::new();
        w.insert("hv:image".into(), Value::Object(m));
        Value::Object(w)
    }

    /// Whether the image's own expiry (if any) has passed at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| now > e)
    }

    /// A string extra key, e.g. `ad:mpuri`.
    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(Value::as_str)
    }
}

impl ImageList {
    /// Parse a JSON document `{"hv:imagelist": {…}}` (CRLF line endings are fine).
    pub fn from_json(bytes: &[u8]) -> Result<ImageList, ModelError> {
        let doc: Value = serde_json::from_slice(bytes).map_err(ModelError::NotJson)?;
        Self::from_value(&doc)
    }

    pub fn from_value(doc: &Value) -> Result<ImageList, ModelError> {
        let inner = doc
            .as_object()
            .and_then(|o| o.get("hv:imagelist"))
            .ok_or(ModelError::NotImageList)?;
        let mut o = Obj::new(inner, "hv:imagelist")?;
        let endorser_field = o.field("hv:endorser");
        let (endorsers, endorser_array) = match o.req("hv:endorser")? {
            Value::Array(items) => {
                let list = items
                    .iter()
                    .enumerate()
                    .map(|(i, e)| Endorser::parse(e, &format!("{endorser_field}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?;
                (list, true)
            }
            single => (vec![Endorser::parse(single, &endorser_field)?], false),
        };
        if endorsers.is_empty() {
            return Err(ModelError::NoEndorser);
        }
        let images_field = o.field("hv:images");
        let images = match o.req("hv:images")? {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| Image::parse(v, &format!("{images_field}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?,
            _ => {
                return Err(ModelError::WrongType {
                    field: images_field,
                    expected: "an array",
                })
            }
        };
        let mut seen = BTreeSet::new();
        for img in &images {
            if !seen.insert(img.identifier.as_str()) {
                return Err(ModelError::DuplicateImage {
                    identifier: img.identifier.clone(),
                });
            }
        }
        Ok(ImageList {
            identifier: o.str("dc:identifier")?,
            created: o.date("dc:date:created")?,
            expires: o.date("dc:date:expires")?,
            title: o.str("dc:title")?,
            description: o.str("dc:description")?,
            source: o.str("dc:source")?,
            uri: o.str("hv:uri")?,
            version: o.str("hv:version")?,
            endorsers,
            endorser_array,
            images,
            extra: o.extra(),
        })
    }

    pub fn to_value(&self) -> Value {
        let mut m: Map<String, Value> = self.extra.clone().into_iter().collect();
        let s = |v: &str| Value::String(v.to_string());
        m.insert("dc:identifier".into(), s(&self.identifier));
        m.insert("dc:date:created".into(), s(&format_date(&self.created)));
        m.insert("dc:date:expires".into(), s(&format_date(&self.expires)));
        m.insert("dc:title".into(), s(&self.title));
        m.insert("dc:description".into(), s(&self.description));
        m.insert("dc:source".into(), s(&self.source));
        m.insert("hv:uri".into(), s(&self.uri));
        m.insert("hv:version".into(), s(&self.version));
        let endorser = if self.endorser_array || self.endorsers.len() != 1 {
            Value::Array(self.endorsers.iter().map(Endorser::to_value).collect())
        } else {
            self.endorsers[0].to_value()
        };
        m.insert("hv:endorser".into(), endorser);
        m.insert(
            "hv:images".into(),
            Value::Array(self.images.iter().map(Image::to_value).collect()),
        );
        let mut doc = Map::new();
        doc.insert("hv:imagelist".into(), Value::Object(m));
        Value::Object(doc)
    }

    /// The document as vmcaster writes it: sorted keys, 4-space indent, trailing newline.
    pub fn to_json_pretty(&self) -> Vec<u8> {
        let value = sorted(self.to_value());
        let mut out = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        serde::Serialize::serialize(&value, &mut ser)
            .expect("serialising a JSON value into memory cannot fail");
        out.push(b'\n');
        out
    }

    pub fn image(&self, identifier: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.identifier == identifier)
    }

    /// A string list-level extra key, e.g. `ad:vo`.
    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extra.get(key).and_then(Value::as_str)
    }
}

/// Sort object keys recursively, whatever map ordering serde_json was built with.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let b: BTreeMap<String, Value> = m.into_iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(b.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found by the `imagelist` fuzz target: a signed short year was accepted and written back
    // as `-0027-…`, which the same parser then refused.
    #[test]
    fn dates_are_exactly_yyyy_mm_ddthh_mm_ssz() {
        assert!(parse_date("2027-01-01T00:00:00Z").is_some());
        for bad in [
            "-027-01-01T00:00:00Z",
            "+027-01-01T00:00:00Z",
            "2027- 1-01T00:00:00Z",
            "2027-01-01 00:00:00Z",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    fn minimal() -> Value {
        serde_json::json!({"hv:imagelist": {
            "dc:identifier": "L1", "dc:date:created": "2020-01-01T00:00:00Z",
            "dc:date:expires": "2030-01-01T00:00:00Z", "dc:title": "t", "dc:description": "d",
            "dc:source": "s", "hv:uri": "http://x/l", "hv:version": "1",
            "x:unknown": {"a": [1, 2]},
            "hv:endorser": {"hv:x509": {"hv:dn": "/CN=a", "hv:ca": "/CN=ca", "hv:email": "e", "dc:creator": "c"}},
            "hv:images": [{"hv:image": {
                "dc:identifier": "I1", "dc:title": "t", "dc:description": "", "hv:uri": "file:///x",
                "hv:size": "42", "sl:checksum:sha512": "AB".repeat(64), "sl:arch": "x86_64", "sl:os": "Linux",
                "sl:osversion": "12", "sl:comments": "", "hv:hypervisor": "kvm", "hv:version": "1",
                "ad:mpuri": "m"}}]
        }})
    }

    #[test]
    fn lenient_size_and_checksum_case_and_unknown_keys_round_trip() {
        let l = ImageList::from_value(&minimal()).unwrap();
        assert_eq!(l.images[0].size, 42);
        assert_eq!(l.images[0].sha512, "ab".repeat(64));
        assert_eq!(l.images[0].extra_str("ad:mpuri"), Some("m"));
        assert!(l.extra.contains_key("x:unknown"));
        let again = ImageList::from_json(&l.to_json_pretty()).unwrap();
        assert_eq!(again, l);
    }

    #[test]
    fn endorser_array_is_accepted_and_kept() {
        let mut v = minimal();
        let e = v["hv:imagelist"]["hv:endorser"].clone();
        v["hv:imagelist"]["hv:endorser"] = Value::Array(vec![e.clone(), e]);
        let l = ImageList::from_value(&v).unwrap();
        assert_eq!(l.endorsers.len(), 2);
        assert!(l.to_value()["hv:imagelist"]["hv:endorser"].is_array());
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = minimal();
        v["hv:imagelist"]["dc:date:expires"] = "2030-01-01 00:00:00".into();
        let e = ImageList::from_value(&v).unwrap_err().to_string();
        assert!(e.contains("hv:imagelist.dc:date:expires"), "{e}");

        let mut v = minimal();
        v["hv:imagelist"]["hv:images"][0]["hv:image"]
            .as_object_mut()
            .unwrap()
            .remove("sl:os");
        let e = ImageList::from_value(&v).unwrap_err().to_string();
        assert_eq!(e, "`hv:imagelist.hv:images[0].hv:image.sl:os` is missing");

        let mut v = minimal();
        v["hv:imagelist"]["hv:images"][0]["hv:image"]["hv:size"] = "-1".into();
        assert!(matches!(
            ImageList::from_value(&v),
            Err(ModelError::BadSize { .. })
        ));

        let mut v = minimal();
        v["hv:imagelist"]["hv:images"][0]["hv:image"]["sl:checksum:sha512"] = "abc".into();
        assert!(matches!(
            ImageList::from_value(&v),
            Err(ModelError::BadChecksum { .. })
        ));
    }

    #[test]
    fn strict_dates() {
        assert!(parse_date("2011-03-10T17:09:12Z").is_some());
        assert!(parse_date("2011-03-10T17:09:12.5Z").is_none());
        assert!(parse_date("2011-03-10T17:09:12+00:00").is_none());
        assert!(parse_date("+2011-03-10T17:09:12Z").is_none());
    }
}
