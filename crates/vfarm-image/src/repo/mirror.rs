//! Mirroring an image from another repository (a node taking its control's images): same
//! id, same metadata, artifacts fetched by the caller and checked here against the sha512
//! and size the source recorded, so a node runs exactly the bytes its control has.

use std::fs;
use std::path::Path;

use vfarm_store::append_event;
use vfarm_store::images::{upsert_image, ArtifactRow, ImageRow};

use super::{remove_tree, Image, Repository};
use crate::error::{ImageError, Result};
use crate::formats;

impl Repository {
    /// Make `img` (another repository's, with its paths) an image of this repository under
    /// the same id. `fetch(file_name, dest)` writes one artifact file to `dest`; every one
    /// is verified before the image is recorded. An image already here is returned as is
    /// (and `false`: nothing was fetched).
    pub fn mirror(
        &self,
        img: &Image,
        fetch: &mut dyn FnMut(&str, &Path) -> std::result::Result<(), String>,
        actor: &str,
    ) -> Result<(Image, bool)> {
        // The id names a directory here: nothing but the 64 hex digits ids are.
        if img.id.len() != 64 || !img.id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ImageError::Import {
                path: img.id.clone().into(),
                reason: "an image id is 64 hex digits".into(),
            });
        }
        let _lock = self.lock(&format!("image-{}", img.id), &mut |_| {})?;
        if let Some(have) = self.get(&img.id)? {
            return Ok((have, false));
        }
        let work = self.tmp.join(format!(
            "mirror-{}-{}",
            img.id,
            &uuid::Uuid::new_v4().to_string()[..8]
        ));
        let result = (|| {
            fs::create_dir_all(&work).map_err(ImageError::io("create", &work))?;
            let mut arts = Vec::new();
            for a in &img.artifacts {
                let name = a
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| a.format.file_name().to_string());
                let dest = work.join(&name);
                fetch(&name, &dest).map_err(|reason| ImageError::Import {
                    path: dest.clone(),
                    reason,
                })?;
                let (size, sha512) = formats::hash_file(&dest)?;
                if sha512 != a.sha512 || size != a.size {
                    return Err(ImageError::Import {
                        path: dest.clone(),
                        reason: format!(
                            "{name} does not match its source: {size} bytes with sha512 {}…, \
                             expected {} bytes with sha512 {}…",
                            &sha512[..16.min(sha512.len())],
                            a.size,
                            &a.sha512[..16.min(a.sha512.len())]
                        ),
                    });
                }
                arts.push(ArtifactRow {
                    format: a.format.to_string(),
                    file: name,
                    size,
                    sha512,
                    disk_size: a.disk_size,
                });
            }
            // A bootable image's kernel and initramfs (no digest is recorded for them; they
            // come over the same authenticated channel as the verified artifacts).
            let mut boot = [None, None];
            for (slot, (have, name)) in [(&img.kernel, "vmlinuz"), (&img.initrd, "initrd.img")]
                .into_iter()
                .enumerate()
            {
                if have.is_some() {
                    fetch(name, &work.join(name)).map_err(|reason| ImageError::Import {
                        path: work.join(name),
                        reason,
                    })?;
                    boot[slot] = Some(name.to_string());
                }
            }
            let [kernel, initrd] = boot;
            fs::write(
                work.join("spec.json"),
                serde_json::to_vec_pretty(&img.spec).unwrap_or_default(),
            )
            .map_err(ImageError::io("write", &work))?;
            let dest = self.images.join(&img.id);
            if dest.exists() {
                remove_tree(&dest)?;
            }
            fs::rename(&work, &dest).map_err(ImageError::io("move into repository", &dest))?;
            let row = ImageRow {
                id: img.id.clone(),
                name: img.name.clone(),
                spec: img.spec.to_string(),
                summary: img.summary.clone(),
                origin: img.origin.clone(),
                created: img.created.clone(),
                os: img.os.clone(),
                os_version: img.os_version.clone(),
                arch: img.arch.clone(),
                kernel,
                initrd,
            };
            self.store.tx(|tx| {
                upsert_image(tx, &row, &arts)?;
                append_event(
                    tx,
                    actor,
                    "image.mirrored",
                    &row.id,
                    &serde_json::json!({ "artifacts": arts.len() }),
                )?;
                Ok::<_, ImageError>(())
            })?;
            self.get(&img.id)?
                .ok_or_else(|| ImageError::NotFound(img.id.clone()))
        })();
        if work.exists() {
            remove_tree(&work)?;
        }
        result.map(|i| (i, true))
    }
}
