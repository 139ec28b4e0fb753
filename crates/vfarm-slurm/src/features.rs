//! Images offered as Slurm node features, so `--constraint` routes a job by OS to nodes that
//! have a matching vfarm image.
//!
//! Feature names: `vfarm-os-<os>-<version>-<arch>` (e.g. `vfarm-os-debian-12-x86_64`) for
//! routing by OS requirements, and `vfarm-img-<first 12 hex of the image id>` for a job that
//! names an image exactly.

/// What the feature names are made from; fields as the image metadata has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMeta {
    /// Image id (hex); `None` for OS-only routing.
    pub id: Option<String>,
    /// OS name, e.g. `debian`, `Debian`, `ubuntu`.
    pub os: String,
    /// OS version, e.g. `12`, `22.04`.
    pub os_version: String,
    /// CPU architecture, e.g. `x86_64`, `aarch64`.
    pub arch: String,
}

/// Lower case; anything outside `[a-z0-9._]` becomes `_` (so `-` stays a separator and the
/// result is always a valid feature name).
fn slug(s: &str) -> String {
    let s: String = s
        .trim()
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "unknown".into()
    } else {
        s
    }
}

/// The routing feature for an OS requirement: `vfarm-os-debian-12-x86_64`.
pub fn os_feature(os: &str, os_version: &str, arch: &str) -> String {
    format!("vfarm-os-{}-{}-{}", slug(os), slug(os_version), slug(arch))
}

/// The feature for one exact image: `vfarm-img-<12 hex>`; `None` when the id is not hex.
pub fn image_feature(id: &str) -> Option<String> {
    let id = id.trim().to_lowercase();
    if id.len() < 12 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    Some(format!("vfarm-img-{}", &id[..12]))
}

/// Every feature a node holding these images offers: sorted, without duplicates.
pub fn image_features(images: &[ImageMeta]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in images {
        out.push(os_feature(&m.os, &m.os_version, &m.arch));
        if let Some(f) = m.id.as_deref().and_then(image_feature) {
            out.push(f);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Features a node should offer: the ones it has that vfarm does not manage, plus `vfarm`'s
/// current set. Keeps a site's own features (`ssd`, `gpu`…) when images change.
pub fn merge_node_features(current: &[String], vfarm: &[String]) -> Vec<String> {
    let mut out: Vec<String> = current
        .iter()
        .filter(|f| !f.starts_with("vfarm-os-") && !f.starts_with("vfarm-img-"))
        .cloned()
        .collect();
    for f in vfarm {
        if !out.contains(f) {
            out.push(f.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::check_feature;

    #[test]
    fn names() {
        assert_eq!(
            os_feature("Debian", "12", "x86_64"),
            "vfarm-os-debian-12-x86_64"
        );
        assert_eq!(
            os_feature("ubuntu", "22.04", "aarch64"),
            "vfarm-os-ubuntu-22.04-aarch64"
        );
        assert_eq!(
            os_feature("Scientific Linux", "", "i386"),
            "vfarm-os-scientific_linux-unknown-i386"
        );
        assert_eq!(
            image_feature("AB12cd34ef56789000").as_deref(),
            Some("vfarm-img-ab12cd34ef56")
        );
        assert_eq!(image_feature("xyz"), None);
        assert_eq!(image_feature("0123456789az"), None);
    }

    #[test]
    fn all_names_are_valid_features() {
        for f in [os_feature("a b&c|d", "1,2", "x[0]"), os_feature("", "", "")] {
            check_feature("f", &f).unwrap();
        }
    }

    #[test]
    fn from_images() {
        let imgs = vec![
            ImageMeta {
                id: Some("0123456789abcdef".into()),
                os: "debian".into(),
                os_version: "12".into(),
                arch: "x86_64".into(),
            },
            ImageMeta {
                id: None,
                os: "debian".into(),
                os_version: "12".into(),
                arch: "x86_64".into(),
            },
        ];
        assert_eq!(
            image_features(&imgs),
            vec!["vfarm-img-0123456789ab", "vfarm-os-debian-12-x86_64"]
        );
    }

    #[test]
    fn merge_keeps_site_features() {
        let cur = vec!["ssd".to_string(), "vfarm-os-debian-11-x86_64".to_string()];
        let new = vec!["vfarm-os-debian-12-x86_64".to_string()];
        assert_eq!(
            merge_node_features(&cur, &new),
            vec!["ssd", "vfarm-os-debian-12-x86_64"]
        );
    }
}
