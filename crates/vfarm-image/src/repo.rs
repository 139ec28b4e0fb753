//! The content-addressed image repository in the data directory.
//!
//! Layout (all under the data dir):
//! - `images/<id>/`   one directory per complete image: artifacts, kernel/initrd, `spec.json`
//! - `layers/<distro>-<suite>-<arch>-<variant>.tar`   cached bootstraps (layer reuse);
//!   `layers/dnf-metadata/<base>-<hash>/`: dnf's metadata of an EL base's repositories
//! - `logs/<id>-<time>.log`   every build's full log, kept whether it succeeded or not
//! - `tmp/`   work areas of running builds; `locks/`   one lock file per image id and base
//!
//! Invariants: an `images/<id>` directory is complete before it gets its name (built in `tmp/`,
//! then renamed); the database row is written after the rename, and a directory without a row
//! whose lock is free is a leftover of a crash and is removed at the next open. Builds of one
//! id are serialised by a file lock, so identical concurrent builds build once.

use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vfarm_core::{Boot, BuildRequest, Family, Format, ImageSpec};
use vfarm_store::images::{upsert_image, ArtifactRow, BuildRow, ImageRow};
use vfarm_store::{append_event, Store};

use crate::error::{ImageError, Result};
use crate::formats::{self, Written};
use crate::mirrors::{Mirror, Mirrors};
use crate::tools::{self, Bootstrap, Progress, ProgressParser};

mod mirror;

/// A repository image with absolute paths.
/// The package manifest of a built image, beside its artifacts.
pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub id: String,
    pub name: Option<String>,
    pub summary: String,
    pub origin: String,
    pub created: String,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub arch: Option<String>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub spec: serde_json::Value,
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    pub format: Format,
    pub path: PathBuf,
    pub size: u64,
    pub sha512: String,
    pub disk_size: Option<u64>,
}

impl Image {
    pub fn artifact(&self, format: Format) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.format == format)
    }
    /// Name if it has one, else the first 12 characters of the id.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.id[..12.min(self.id.len())].to_string())
    }
    pub fn size(&self) -> u64 {
        self.artifacts.iter().map(|a| a.size).sum()
    }
}

/// What `build` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildOutcome {
    #[serde(flatten)]
    pub image: Image,
    /// True when nothing had to be built.
    pub cached: bool,
    /// True when the bootstrap came from the layer cache (or nothing was bootstrapped).
    pub base_cached: bool,
    pub build_id: Option<String>,
    pub log: Option<PathBuf>,
    pub seconds: f64,
}

/// Options for [`Repository::import`].
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub name: Option<String>,
    /// `import` for user imports, `imagelist` for images cached from a subscription.
    pub origin: Option<String>,
    pub format: Option<Format>,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub arch: Option<String>,
    /// Hard-link instead of copy (the source stays in place and must not be modified).
    pub link: bool,
    /// Extra metadata kept in the image's spec document.
    pub extra: Option<serde_json::Value>,
}

/// Metadata of a file adopted from elsewhere (e.g. an image cached from a signed image list).
#[derive(Debug, Clone, Default)]
pub struct AdoptMeta {
    pub name: Option<String>,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub arch: Option<String>,
    /// Kept in the image's spec document (e.g. the image list entry it came from).
    pub extra: Option<serde_json::Value>,
}

pub struct Repository {
    store: Arc<Store>,
    images: PathBuf,
    layers: PathBuf,
    logs: PathBuf,
    tmp: PathBuf,
    locks: PathBuf,
    mirrors: PathBuf,
}

/// A held exclusive file lock; released on drop (also when the process dies).
struct Lock(#[allow(dead_code)] File);

impl Repository {
    /// Open the repository under `data_dir`, creating its directories, and clean up what a
    /// crashed or killed build left behind.
    pub fn open(data_dir: &Path, store: Arc<Store>) -> Result<Repository> {
        let repo = Repository {
            store,
            images: data_dir.join("images"),
            layers: data_dir.join("layers"),
            logs: data_dir.join("logs"),
            tmp: data_dir.join("tmp"),
            locks: data_dir.join("locks"),
            mirrors: data_dir.join("mirrors.toml"),
        };
        for d in [
            &repo.images,
            &repo.layers,
            &repo.logs,
            &repo.tmp,
            &repo.locks,
        ] {
            fs::create_dir_all(d).map_err(ImageError::io("create", d))?;
        }
        repo.reconcile()?;
        Ok(repo)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.locks.join(format!("{key}.lock"))
    }

    fn lock(&self, key: &str, on: &mut dyn FnMut(Progress)) -> Result<Lock> {
        let path = self.lock_path(key);
        let f = File::create(&path).map_err(ImageError::io("create lock", &path))?;
        match f.try_lock() {
            Ok(()) => return Ok(Lock(f)),
            Err(TryLockError::WouldBlock) => {}
            Err(TryLockError::Error(e)) => return Err(ImageError::io("lock", &path)(e)),
        }
        on(Progress::Phase(
            "waiting for a concurrent build of the same spec".into(),
        ));
        f.lock().map_err(ImageError::io("lock", &path))?;
        Ok(Lock(f))
    }

    /// None when someone else holds the lock.
    fn try_lock(&self, key: &str) -> Result<Option<Lock>> {
        let path = self.lock_path(key);
        let f = File::create(&path).map_err(ImageError::io("create lock", &path))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(Lock(f))),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(ImageError::io("lock", &path)(e)),
        }
    }

    /// Remove leftovers of builds whose process is gone; mark their build records interrupted.
    fn reconcile(&self) -> Result<()> {
        for entry in fs::read_dir(&self.tmp)
            .map_err(ImageError::io("read", &self.tmp))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Work areas are named <kind>-<lock key>-<nonce>.
            let Some(key) = name.split('-').nth(1).map(|id| format!("image-{id}")) else {
                continue;
            };
            if let Some(_l) = self.try_lock(&key)? {
                remove_tree(&entry.path())?;
            }
        }
        for entry in fs::read_dir(&self.layers)
            .map_err(ImageError::io("read", &self.layers))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(".tmp-") {
                let slug = rest.rsplit_once('-').map(|(s, _)| s).unwrap_or(rest);
                if let Some(_l) = self.try_lock(&format!("base-{slug}"))? {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        for b in self.store.running_builds()? {
            if let Some(_l) = self.try_lock(&format!("image-{}", b.image_id))? {
                self.store.finish_build(
                    &b.id,
                    "interrupted",
                    Some("the build process ended before finishing"),
                )?;
            }
        }
        for entry in fs::read_dir(&self.images)
            .map_err(ImageError::io("read", &self.images))?
            .flatten()
        {
            let id = entry.file_name().to_string_lossy().into_owned();
            if self.store.image(&id)?.is_none() {
                if let Some(_l) = self.try_lock(&format!("image-{id}"))? {
                    remove_tree(&entry.path())?;
                }
            }
        }
        Ok(())
    }

    fn to_image(&self, row: ImageRow) -> Result<Image> {
        let dir = self.images.join(&row.id);
        let artifacts = self
            .store
            .artifacts(&row.id)?
            .into_iter()
            .filter_map(|a| {
                Some(Artifact {
                    format: a.format.parse().ok()?,
                    path: dir.join(&a.file),
                    size: a.size,
                    sha512: a.sha512,
                    disk_size: a.disk_size,
                })
            })
            .collect();
        Ok(Image {
            spec: serde_json::from_str(&row.spec).unwrap_or(serde_json::Value::Null),
            kernel: row.kernel.map(|k| dir.join(k)),
            initrd: row.initrd.map(|k| dir.join(k)),
            id: row.id,
            name: row.name,
            summary: row.summary,
            origin: row.origin,
            created: row.created,
            os: row.os,
            os_version: row.os_version,
            arch: row.arch,
            artifacts,
        })
    }

    /// Look up by id, unique id prefix (≥ 4 hex digits) or name.
    /// The packages a build recorded for `img` (None: imported, or built before manifests).
    pub fn manifest(&self, img: &Image) -> Result<Option<Vec<crate::manifest::Package>>> {
        let path = self.images.join(&img.id).join(MANIFEST);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                ImageError::io("read", &path)(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e,
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io("read", &path)(e)),
        }
    }

    pub fn resolve(&self, reference: &str) -> Result<Image> {
        let row = self.store.find_image(reference)?;
        self.to_image(row)
    }

    pub fn get(&self, id: &str) -> Result<Option<Image>> {
        self.store.image(id)?.map(|r| self.to_image(r)).transpose()
    }

    /// The image `id` if its files are in this repository. Several services sharing one
    /// database each have a repository of their own: a record another one made says nothing
    /// about this data dir, so a build or import makes the files here (same id, same record).
    fn get_here(&self, id: &str) -> Result<Option<Image>> {
        if !self.images.join(id).is_dir() {
            return Ok(None);
        }
        self.get(id)
    }

    pub fn list(&self) -> Result<Vec<Image>> {
        self.store
            .images()?
            .into_iter()
            .map(|r| self.to_image(r))
            .collect()
    }

    /// One page of [`list`](Self::list): `owner`'s images (`None`: all) after `after`, at
    /// most `limit`, selected in the store ([`Store::images_page`]).
    pub fn list_page(
        &self,
        owner: Option<&str>,
        after: Option<&vfarm_store::Cursor>,
        limit: Option<usize>,
    ) -> Result<vfarm_store::Page<Image>> {
        let page = self.store.images_page(owner, after, limit)?;
        Ok(vfarm_store::Page {
            items: page
                .items
                .into_iter()
                .map(|r| self.to_image(r))
                .collect::<Result<_>>()?,
            next: page.next,
        })
    }

    /// The build log of an image (by reference), or of the latest build of an id prefix —
    /// failed builds have no image, so their logs are found by the id the failure printed.
    pub fn build_log(&self, reference: &str) -> Result<BuildRow> {
        let id = match self.store.find_image(reference) {
            Ok(r) => r.id,
            Err(_) => reference.to_ascii_lowercase(),
        };
        if id.len() < vfarm_core::MIN_ID_PREFIX {
            return Err(ImageError::NotFound(reference.to_string()));
        }
        self.store
            .latest_build(&id)?
            .ok_or_else(|| ImageError::NotFound(reference.to_string()))
    }

    /// Remove an image: record first, then files (a crash in between leaves an orphan
    /// directory that the next open removes). Refused while instances' disks sit on it.
    pub fn remove(&self, reference: &str, actor: &str) -> Result<Image> {
        let img = self.resolve(reference)?;
        let _lock = self.lock(&format!("image-{}", img.id), &mut |_| {})?;
        let users = self.store.instances_on_image(&img.id)?;
        if !users.is_empty() {
            return Err(ImageError::InUse {
                id: img.id.clone(),
                instances: users,
            });
        }
        self.store.tx(|tx| {
            tx.execute("DELETE FROM images WHERE id = ?1", [&img.id])?;
            append_event(
                tx,
                actor,
                "image.removed",
                &img.id,
                &serde_json::json!({ "name": img.name }),
            )?;
            Ok::<_, ImageError>(())
        })?;
        remove_tree(&self.images.join(&img.id))?;
        Ok(img)
    }

    /// Build (or find) the image for `req`. Identical specs are never rebuilt; a cached base
    /// is never bootstrapped again; missing output formats of an existing image are made
    /// from its rootfs tarball.
    pub fn build(
        &self,
        req: &BuildRequest,
        actor: &str,
        on: &mut dyn FnMut(Progress),
    ) -> Result<BuildOutcome> {
        let t0 = Instant::now();
        let id = req.spec.id();
        let _lock = self.lock(&format!("image-{id}"), on)?;
        if let Some(img) = self.get_here(&id)? {
            let missing = missing_formats(&img, req);
            if missing.is_empty() {
                let image = self.set_name(img, req.name.as_deref())?;
                return Ok(BuildOutcome {
                    image,
                    cached: true,
                    base_cached: true,
                    build_id: None,
                    log: None,
                    seconds: t0.elapsed().as_secs_f64(),
                });
            }
            let image = self.add_formats(&img, &missing, req.disk_size, on)?;
            let image = self.set_name(image, req.name.as_deref())?;
            return Ok(BuildOutcome {
                image,
                cached: false,
                base_cached: true,
                build_id: None,
                log: None,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        let mirrors = self.preflight(&req.spec)?;
        let build_id = uuid::Uuid::new_v4().to_string();
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ");
        let log_path = self.logs.join(format!("{id}-{stamp}.log"));
        let mut log = File::create(&log_path).map_err(ImageError::io("create", &log_path))?;
        self.store.insert_build(&BuildRow {
            id: build_id.clone(),
            image_id: id.clone(),
            spec: req.spec.canonical_json(),
            started: vfarm_store::now(),
            ended: None,
            status: "running".into(),
            error: None,
            log: log_path.to_string_lossy().into_owned(),
        })?;
        let work = self.tmp.join(format!("build-{id}-{}", &build_id[..8]));
        let result = fs::create_dir_all(&work)
            .map_err(ImageError::io("create", &work))
            .and_then(|_| {
                self.build_into(req, &id, &work, &mirrors, &mut log, &log_path, actor, on)
            });
        let cleanup = remove_tree(&work);
        match result {
            Ok((image, base_cached)) => {
                cleanup?;
                self.store.finish_build(&build_id, "succeeded", None)?;
                Ok(BuildOutcome {
                    image,
                    cached: false,
                    base_cached,
                    build_id: Some(build_id),
                    log: Some(log_path),
                    seconds: t0.elapsed().as_secs_f64(),
                })
            }
            Err(e) => {
                use std::io::Write;
                let _ = writeln!(log, "vfarm: build failed: {e}");
                self.store
                    .finish_build(&build_id, "failed", Some(&e.to_string()))?;
                Err(e)
            }
        }
    }

    /// Everything checkable before a build is recorded: a refusal here changes nothing.
    fn preflight(&self, spec: &ImageSpec) -> Result<Mirrors> {
        if let Some(host) = vfarm_core::Arch::host() {
            if !spec.arch.native_on(host) {
                return Err(ImageError::ForeignArch {
                    arch: spec.arch.to_string(),
                    host: host.to_string(),
                });
            }
        }
        let builder = match spec.distro.family() {
            Family::Apt => "mmdebstrap",
            Family::Dnf => "dnf",
        };
        for tool in [builder, "setpriv", "unshare", "tar"] {
            if !on_path(tool) {
                return Err(ImageError::ToolMissing { tool });
            }
        }
        let mirrors = Mirrors::load(&self.mirrors)?;
        if let Some(m) = mirrors.for_distro(spec.distro)? {
            if let Some(r) = spec
                .repositories
                .iter()
                .find(|r| m.repos.iter().any(|o| o.name == r.name))
            {
                return Err(vfarm_core::SpecError::Invalid {
                    field: "repository.name",
                    value: r.name.clone(),
                    reason: format!(
                        "the site's {} mirror has a repository of that name",
                        spec.distro
                    ),
                }
                .into());
            }
        }
        Ok(mirrors)
    }

    /// The spec's repository keys as files under the work dir (`keys/<name>.asc`).
    fn write_keys<'a>(
        &self,
        spec: &'a ImageSpec,
        work: &Path,
    ) -> Result<Vec<(&'a vfarm_core::Repository, PathBuf)>> {
        let dir = work.join("keys");
        if !spec.repositories.is_empty() {
            fs::create_dir_all(&dir).map_err(ImageError::io("create", &dir))?;
        }
        spec.repositories
            .iter()
            .map(|r| {
                let p = dir.join(format!("{}.asc", r.name));
                fs::write(&p, format!("{}\n", r.key)).map_err(ImageError::io("write", &p))?;
                Ok((r, p))
            })
            .collect()
    }

    /// An EL-family bootstrap with Debian's dnf: the `core` comps group into `rootfs` (saved
    /// as the base layer) or the cached base unpacked, then `packages` from the mirror's
    /// repositories and the spec's.
    #[allow(clippy::too_many_arguments)]
    fn dnf_bootstrap(
        &self,
        spec: &ImageSpec,
        mirror: &Mirror,
        mirrors: &Mirrors,
        work: &Path,
        rootfs: &Path,
        how: &Bootstrap<'_>,
        packages: &[String],
        log: &mut File,
        log_path: &Path,
        on: &mut dyn FnMut(Progress),
    ) -> Result<()> {
        let home = work.join("home");
        fs::create_dir_all(&home).map_err(ImageError::io("create", &home))?;
        fs::write(
            home.join(".rpmmacros"),
            format!("%_dbpath {}\n", tools::rpm_dbpath(spec.distro, &spec.suite)),
        )
        .map_err(ImageError::io("write", &home))?;
        let repos_d = work.join("repos.d");
        fs::create_dir_all(&repos_d).map_err(ImageError::io("create", &repos_d))?;
        let mut repos: Vec<tools::DnfRepoConf> = mirror
            .repos
            .iter()
            .map(|r| tools::DnfRepoConf {
                name: r.name.clone(),
                baseurl: r.baseurl.clone(),
                // Checked by Mirrors::parse: every repo has its own key or the table's.
                key: mirrors.key_path(
                    r.key
                        .as_deref()
                        .or(mirror.key.as_deref())
                        .unwrap_or_default(),
                ),
                repo_gpgcheck: mirror.repo_gpgcheck,
            })
            .collect();
        // Metadata is kept per base between builds (they hold the base lock, so one at a
        // time): a later build fetches repomd.xml and reuses what did not change. The
        // directory is named by the mirror's repositories and key contents too, so a key the
        // site replaced is never trusted from an older cache.
        let mut h = Sha256::new();
        h.update(tools::dnf_repo_file(&repos));
        for r in &repos {
            let key = r
                .key
                .to_string_lossy()
                .replace("$releasever", &spec.suite)
                .replace("$basearch", spec.arch.rpm_name().unwrap_or_default());
            h.update(fs::read(key).unwrap_or_default());
        }
        let cache = self.layers.join("dnf-metadata").join(format!(
            "{}-{}",
            spec.base().slug(),
            &hex::encode(h.finalize())[..12]
        ));
        fs::write(work.join("dnf.conf"), tools::dnf_conf(work))
            .map_err(ImageError::io("write", work))?;
        let write_repos = |repos: &[tools::DnfRepoConf]| {
            let f = repos_d.join("vfarm.repo");
            fs::write(&f, tools::dnf_repo_file(repos)).map_err(ImageError::io("write", &f))
        };
        let mut parser = ProgressParser::default();
        let mut run = |packages: &[String], log: &mut File| {
            let cmd = tools::dnf_command(work, &cache, &spec.suite, rootfs, packages);
            tools::run_logged("dnf", cmd, log, Some(log_path), &mut |line| {
                for p in parser.feed(line) {
                    on(p);
                }
            })
        };
        match how {
            Bootstrap::Cold { save_base, .. } => {
                write_repos(&repos)?;
                run(&["@core".to_string()], log)?;
                tools::run_quiet("tar", &mut tools::dnf_base_tar_command(rootfs, save_base))?;
            }
            Bootstrap::Layered { base } => {
                fs::create_dir_all(rootfs).map_err(ImageError::io("create", rootfs))?;
                tools::run_quiet(
                    "tar",
                    std::process::Command::new("tar")
                        .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
                        .arg(rootfs)
                        .arg("-xf")
                        .arg(base),
                )?;
            }
        }
        // The base is the core group already: a second dnf run for it alone would cost a
        // start-up and a transaction for nothing.
        let packages: Vec<String> = packages.iter().filter(|p| *p != "@core").cloned().collect();
        if !packages.is_empty() {
            for (r, key) in self.write_keys(spec, work)? {
                repos.push(tools::DnfRepoConf {
                    name: r.name.clone(),
                    baseurl: r.url.clone(),
                    key,
                    repo_gpgcheck: false,
                });
            }
            write_repos(&repos)?;
            run(&packages, log)?;
        }
        // As on apt images: the site's repositories stay configured in the image, each
        // checked with its own key, so the image can update from them.
        for r in &spec.repositories {
            let key = format!("etc/pki/rpm-gpg/vfarm-{}.asc", r.name);
            let conf = tools::dnf_repo_file(&[tools::DnfRepoConf {
                name: r.name.clone(),
                baseurl: r.url.clone(),
                key: Path::new("/").join(&key),
                repo_gpgcheck: false,
            }]);
            for (rel, text) in [
                (key, format!("{}\n", r.key)),
                (format!("etc/yum.repos.d/vfarm-{}.repo", r.name), conf),
            ] {
                let path = rootfs.join(rel);
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(ImageError::io("create", dir))?;
                }
                fs::write(&path, text).map_err(ImageError::io("write", &path))?;
            }
        }
        Ok(())
    }

    /// Which repository a signature failure in the build log is about, and its key.
    fn unverified_repository(
        spec: &ImageSpec,
        mirror: Option<&Mirror>,
        mirrors: &Mirrors,
        work: &Path,
        lines: &[(String, String)],
    ) -> (String, String) {
        let mut candidates: Vec<(String, Vec<String>, String)> = spec
            .repositories
            .iter()
            .map(|r| {
                let key = work.join("keys").join(format!("{}.asc", r.name));
                (
                    r.name.clone(),
                    vec![
                        r.url.clone(),
                        format!("'{}'", r.name),
                        format!("\"{}\"", r.name),
                        key.display().to_string(),
                    ],
                    format!("sha256:{}", r.key_sha256()),
                )
            })
            .collect();
        if let Some(m) = mirror {
            for r in &m.repos {
                let key = r.key.as_deref().or(m.key.as_deref()).unwrap_or_default();
                let path = mirrors.key_path(key).display().to_string();
                candidates.push((
                    r.name.clone(),
                    vec![
                        format!("'{}'", r.name),
                        format!("\"{}\"", r.name),
                        path.clone(),
                    ],
                    path,
                ));
            }
            if let Some(u) = &m.url {
                let key = m
                    .key
                    .as_deref()
                    .map(|k| mirrors.key_path(k).display().to_string());
                candidates.push((
                    format!("{} mirror", spec.distro),
                    vec![u.clone()],
                    key.unwrap_or_default(),
                ));
            }
        }
        for (name, needles, key) in &candidates {
            let hit = |l: &str| needles.iter().any(|n| l.contains(n.as_str()));
            if lines.iter().any(|(l, next)| hit(l) || hit(next)) {
                return (name.clone(), key.clone());
            }
        }
        let names: Vec<&str> = candidates.iter().map(|c| c.0.as_str()).collect();
        (names.join(" or "), "(see the log)".into())
    }

    #[allow(clippy::too_many_arguments)]
    fn build_into(
        &self,
        req: &BuildRequest,
        id: &str,
        work: &Path,
        mirrors: &Mirrors,
        log: &mut File,
        log_path: &Path,
        actor: &str,
        on: &mut dyn FnMut(Progress),
    ) -> Result<(Image, bool)> {
        let mirror = mirrors.for_distro(req.spec.distro)?;
        let spec = &req.spec;
        let base_key = spec.base();
        let slug = base_key.slug();
        let base_tar = self.layers.join(format!("{slug}.tar"));
        let packages: Vec<String> = spec.install_packages().into_iter().collect();
        let rootfs = work.join("rootfs");

        // Holding the base lock while bootstrapping makes a concurrent build of another spec
        // on the same base wait and then reuse the layer instead of bootstrapping it twice.
        let base_lock = self.lock(&format!("base-{slug}"), on)?;
        let base_cached = base_tar.exists();
        if base_cached && packages.is_empty() && spec.repositories.is_empty() {
            drop(base_lock);
            on(Progress::Phase(format!("unpacking cached base {slug}")));
            fs::create_dir_all(&rootfs).map_err(ImageError::io("create", &rootfs))?;
            tools::run_quiet(
                "tar",
                std::process::Command::new("tar")
                    .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
                    .arg(&rootfs)
                    .arg("-xf")
                    .arg(&base_tar),
            )?;
        } else {
            let tmp_base = self.layers.join(format!(
                ".tmp-{slug}-{}",
                &uuid::Uuid::new_v4().to_string()[..8]
            ));
            let how = if base_cached {
                on(Progress::Phase(format!(
                    "installing {} package(s) on cached base {slug}",
                    packages.len()
                )));
                Bootstrap::Layered { base: &base_tar }
            } else {
                on(Progress::Phase(format!("bootstrapping {slug}")));
                Bootstrap::Cold {
                    variant: spec.variant.as_str(),
                    save_base: &tmp_base,
                }
            };
            let res = match (spec.distro.family(), mirror) {
                (Family::Dnf, Some(m)) => self.dnf_bootstrap(
                    spec, m, mirrors, work, &rootfs, &how, &packages, log, log_path, on,
                ),
                (Family::Dnf, None) => Err(ImageError::MirrorMissing {
                    distro: spec.distro.to_string(),
                    path: self.mirrors.clone(),
                }),
                (Family::Apt, m) => (|| {
                    let sources = tools::AptSources {
                        mirror: m.map(|m| tools::AptMirror {
                            url: m.url.as_deref().unwrap_or_default(),
                            keyring: m.key.as_deref().map(|k| mirrors.key_path(k)),
                            components: &m.components,
                        }),
                        repos: self.write_keys(spec, work)?,
                    };
                    let cmd = tools::mmdebstrap_command(
                        &spec.suite,
                        spec.arch.as_str(),
                        &how,
                        &packages,
                        &sources,
                        &rootfs,
                    );
                    let mut parser = ProgressParser::default();
                    tools::run_logged("mmdebstrap", cmd, log, Some(log_path), &mut |line| {
                        for p in parser.feed(line) {
                            on(p);
                        }
                    })
                    .map(|_| ())
                })(),
            };
            if let Err(ImageError::ToolFailed { ref tail, .. }) = res {
                let lines: Vec<String> = tail.lines().map(str::to_string).collect();
                let full = fs::read_to_string(log_path).unwrap_or_default();
                let all: Vec<String> = full.lines().map(str::to_string).chain(lines).collect();
                let d = tools::diagnose(&all);
                let _ = fs::remove_file(&tmp_base);
                if !d.unverified.is_empty() {
                    let (repository, key) =
                        Self::unverified_repository(spec, mirror, mirrors, work, &d.unverified);
                    let tail: Vec<&str> = full.lines().rev().take(8).collect();
                    return Err(ImageError::RepositoryUnverified {
                        repository,
                        key,
                        reason: d.unverified[0].0.clone(),
                        log: log_path.to_path_buf(),
                        tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                    });
                }
                if !d.unknown_packages.is_empty() {
                    let tail: Vec<&str> = full.lines().rev().take(8).collect();
                    return Err(ImageError::UnknownPackages {
                        packages: d.unknown_packages,
                        suite: spec.suite.clone(),
                        log: log_path.to_path_buf(),
                        tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                    });
                }
                if d.suite_missing {
                    return Err(ImageError::SuiteUnavailable {
                        suite: spec.suite.clone(),
                        log: log_path.to_path_buf(),
                    });
                }
            }
            if res.is_err() {
                let _ = fs::remove_file(&tmp_base);
            }
            res?;
            if !base_cached {
                // The layer is complete only once the whole bootstrap succeeded.
                fs::rename(&tmp_base, &base_tar)
                    .map_err(ImageError::io("save base layer", &base_tar))?;
            }
            drop(base_lock);
        }

        let out = work.join("out");
        fs::create_dir_all(&out).map_err(ImageError::io("create", &out))?;
        let (os, os_version) = os_release(&rootfs);
        let (mut kernel, mut initrd) = (None, None);
        if spec.boot == Boot::Vm {
            let (k, i) = find_boot_files(&rootfs)?;
            fs::copy(&k, out.join("vmlinuz")).map_err(ImageError::io("copy kernel", &k))?;
            fs::copy(&i, out.join("initrd.img")).map_err(ImageError::io("copy initrd", &i))?;
            kernel = Some("vmlinuz".to_string());
            initrd = Some("initrd.img".to_string());
        }
        // The exact packages, from the tree's own package database, before it is packed.
        if let Some(packages) = crate::manifest::of_rootfs(&rootfs)? {
            let path = out.join(MANIFEST);
            fs::write(
                &path,
                serde_json::to_vec_pretty(&packages).expect("packages serialise"),
            )
            .map_err(ImageError::io("write", &path))?;
        }
        let written = self.write_formats(&rootfs, &out, &req.formats, req.disk_size, on)?;
        let spec_doc = serde_json::json!({
            "spec": serde_json::from_str::<serde_json::Value>(&spec.canonical_json()).unwrap_or_default(),
            "formats": req.formats,
        });
        fs::write(
            out.join("spec.json"),
            serde_json::to_vec_pretty(&spec_doc).unwrap_or_default(),
        )
        .map_err(ImageError::io("write", out.join("spec.json")))?;
        remove_tree(&rootfs)?;

        let dest = self.images.join(id);
        if dest.exists() {
            remove_tree(&dest)?;
        }
        fs::rename(&out, &dest).map_err(ImageError::io("move into repository", &dest))?;
        let row = ImageRow {
            id: id.to_string(),
            name: req.name.clone(),
            spec: spec.canonical_json(),
            summary: spec.summary(),
            origin: "build".into(),
            created: vfarm_store::now(),
            os,
            os_version,
            arch: Some(spec.arch.to_string()),
            kernel,
            initrd,
        };
        let arts: Vec<ArtifactRow> = written.iter().map(artifact_row).collect();
        self.store.tx(|tx| {
            upsert_image(tx, &row, &arts)?;
            append_event(
                tx,
                actor,
                "image.built",
                id,
                &serde_json::json!({ "summary": row.summary, "name": row.name }),
            )?;
            Ok::<_, ImageError>(())
        })?;
        let img = self
            .get(id)?
            .ok_or_else(|| ImageError::NotFound(id.to_string()))?;
        Ok((img, base_cached))
    }

    /// Write the requested formats (always including the tar, which is the master copy other
    /// formats and instances are made from) from a rootfs tree into `out`.
    fn write_formats(
        &self,
        rootfs: &Path,
        out: &Path,
        formats: &std::collections::BTreeSet<Format>,
        disk_size: Option<u64>,
        on: &mut dyn FnMut(Progress),
    ) -> Result<Vec<Written>> {
        let mut written = Vec::new();
        if formats.contains(&Format::Tar) || !out.join(Format::Tar.file_name()).exists() {
            on(Progress::Phase("writing tar".into()));
            written.push(formats::write_tar(
                rootfs,
                &out.join(Format::Tar.file_name()),
            )?);
        }
        let disks: Vec<Format> = formats.iter().copied().filter(|f| f.is_disk()).collect();
        if disks.is_empty() {
            return Ok(written);
        }
        let content = formats::tree_size(rootfs)?;
        let minimum = formats::minimum_disk(content);
        let size = disk_size.unwrap_or_else(|| formats::default_disk(content));
        if size < minimum {
            return Err(ImageError::SizeTooSmall {
                value: size,
                needed: content,
                minimum,
            });
        }
        on(Progress::Phase(format!(
            "writing raw ext4 ({})",
            vfarm_core::ByteSize(size)
        )));
        let raw_path = out.join(Format::Raw.file_name());
        let raw = formats::write_raw(rootfs, &raw_path, size)?;
        for f in disks.iter().filter(|f| **f != Format::Raw) {
            on(Progress::Phase(format!("converting to {f}")));
            written.push(formats::convert(
                &raw_path,
                *f,
                &out.join(f.file_name()),
                size,
            )?);
        }
        if disks.contains(&Format::Raw) {
            written.push(raw);
        } else {
            let _ = fs::remove_file(&raw_path);
        }
        Ok(written)
    }

    /// Make missing output formats of an existing image from its rootfs tarball.
    fn add_formats(
        &self,
        img: &Image,
        missing: &[Format],
        disk_size: Option<u64>,
        on: &mut dyn FnMut(Progress),
    ) -> Result<Image> {
        let tar = img
            .artifact(Format::Tar)
            .ok_or_else(|| ImageError::NoArtifact(img.id.clone(), "tar".into()))?;
        let work = self.tmp.join(format!(
            "fmt-{}-{}",
            img.id,
            &uuid::Uuid::new_v4().to_string()[..8]
        ));
        let rootfs = work.join("rootfs");
        let out = work.join("out");
        let result = (|| {
            fs::create_dir_all(&rootfs).map_err(ImageError::io("create", &rootfs))?;
            fs::create_dir_all(&out).map_err(ImageError::io("create", &out))?;
            on(Progress::Phase("unpacking rootfs".into()));
            tools::run_quiet(
                "tar",
                std::process::Command::new("tar")
                    .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-C"])
                    .arg(&rootfs)
                    .arg("-xf")
                    .arg(&tar.path),
            )?;
            // The tar already exists: touch a marker so write_formats does not rewrite it.
            fs::write(out.join(Format::Tar.file_name()), b"")
                .map_err(ImageError::io("write", &out))?;
            let set: std::collections::BTreeSet<Format> = missing.iter().copied().collect();
            let written = self.write_formats(&rootfs, &out, &set, disk_size, on)?;
            let dest = self.images.join(&img.id);
            let mut rows = Vec::new();
            for w in &written {
                let target = dest.join(w.format.file_name());
                fs::rename(&w.path, &target)
                    .map_err(ImageError::io("move into repository", &target))?;
                rows.push(artifact_row(w));
            }
            let row = self
                .store
                .image(&img.id)?
                .ok_or_else(|| ImageError::NotFound(img.id.clone()))?;
            self.store.tx(|tx| {
                upsert_image(tx, &row, &rows)?;
                Ok::<_, ImageError>(())
            })?;
            self.get(&img.id)?
                .ok_or_else(|| ImageError::NotFound(img.id.clone()))
        })();
        remove_tree(&work)?;
        result
    }

    fn set_name(&self, img: Image, name: Option<&str>) -> Result<Image> {
        match name {
            Some(n) if img.name.as_deref() != Some(n) => {
                let mut row = self
                    .store
                    .image(&img.id)?
                    .ok_or_else(|| ImageError::NotFound(img.id.clone()))?;
                row.name = Some(n.to_string());
                self.store.tx(|tx| {
                    upsert_image(tx, &row, &[])?;
                    Ok::<_, ImageError>(())
                })?;
                Ok(Image {
                    name: Some(n.to_string()),
                    ..img
                })
            }
            _ => Ok(img),
        }
    }

    /// Make sure `img` has `format` (building it from the tarball if needed) and return it.
    pub fn ensure_format(
        &self,
        img: &Image,
        format: Format,
        on: &mut dyn FnMut(Progress),
    ) -> Result<Artifact> {
        if let Some(a) = img.artifact(format) {
            return Ok(a.clone());
        }
        let _lock = self.lock(&format!("image-{}", img.id), on)?;
        let fresh = self
            .get(&img.id)?
            .ok_or_else(|| ImageError::NotFound(img.id.clone()))?;
        if let Some(a) = fresh.artifact(format) {
            return Ok(a.clone());
        }
        let updated = self.add_formats(&fresh, &[format], None, on)?;
        updated
            .artifact(format)
            .cloned()
            .ok_or_else(|| ImageError::NoArtifact(img.id.clone(), format.to_string()))
    }

    /// Adopt a verified file (hard-linked, not copied) as an image with `origin = "imagelist"`.
    pub fn adopt_file(
        &self,
        src: &Path,
        format: Format,
        meta: AdoptMeta,
        actor: &str,
    ) -> Result<Image> {
        let opts = ImportOptions {
            name: meta.name,
            origin: Some("imagelist".into()),
            format: Some(format),
            os: meta.os,
            os_version: meta.os_version,
            arch: meta.arch,
            link: true,
            extra: meta.extra,
        };
        Ok(self.import(src, &opts, actor)?.image)
    }

    /// Turn an existing rootfs tarball or disk image into a repository image. The id is
    /// derived from the file's sha512, so importing the same file twice gives one image.
    pub fn import(&self, src: &Path, opts: &ImportOptions, actor: &str) -> Result<BuildOutcome> {
        let t0 = Instant::now();
        let meta = fs::metadata(src).map_err(|e| ImageError::Import {
            path: src.to_path_buf(),
            reason: e.to_string(),
        })?;
        if !meta.is_file() {
            return Err(ImageError::Import {
                path: src.to_path_buf(),
                reason: "not a regular file".into(),
            });
        }
        if let Some(n) = &opts.name {
            vfarm_core::spec::validate_image_name(n)?;
        }
        let format = match opts.format {
            Some(f) => f,
            None => formats::detect_format(src)?,
        };
        let (size, sha512) = formats::hash_file(src)?;
        let origin = opts.origin.clone().unwrap_or_else(|| "import".into());
        let canon =
            serde_json::json!({ "v": 1, "origin": origin, "format": format, "sha512": sha512 });
        let id = hex::encode(Sha256::digest(canon.to_string().as_bytes()));
        let _lock = self.lock(&format!("image-{id}"), &mut |_| {})?;
        if let Some(img) = self.get_here(&id)? {
            let image = self.set_name(img, opts.name.as_deref())?;
            return Ok(BuildOutcome {
                image,
                cached: true,
                base_cached: true,
                build_id: None,
                log: None,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        let work = self.tmp.join(format!(
            "import-{id}-{}",
            &uuid::Uuid::new_v4().to_string()[..8]
        ));
        let result = (|| {
            fs::create_dir_all(&work).map_err(ImageError::io("create", &work))?;
            let file = work.join(format.file_name());
            if opts.link {
                fs::hard_link(src, &file).or_else(|_| fs::copy(src, &file).map(|_| ()))
            } else {
                fs::copy(src, &file).map(|_| ())
            }
            .map_err(ImageError::io("copy", src))?;
            let (os, os_version, disk_size) = if format == Format::Tar {
                formats::check_tar(&file)?;
                // /etc/os-release is usually a symlink to ../usr/lib/os-release, which
                // `tar -xO` would print as nothing: read the file itself first.
                let text = [
                    "./usr/lib/os-release",
                    "usr/lib/os-release",
                    "./etc/os-release",
                    "etc/os-release",
                ]
                .iter()
                .find_map(|member| {
                    let mut cmd = std::process::Command::new("tar");
                    cmd.arg("-xOf").arg(&file).arg(member);
                    tools::run_quiet("tar", &mut cmd)
                        .ok()
                        .filter(|t| !t.trim().is_empty())
                })
                .unwrap_or_default();
                let (os, ver) = parse_os_release(&text);
                (os, ver, None)
            } else {
                if format == Format::Raw {
                    formats::check_raw(&file).map_err(|e| ImageError::Import {
                        path: src.to_path_buf(),
                        reason: e.to_string(),
                    })?;
                } else {
                    formats::check_image(format, &file)?;
                }
                (None, None, Some(formats::virtual_size(&file)?))
            };
            let mut spec = canon.clone();
            if let Some(extra) = &opts.extra {
                spec["extra"] = extra.clone();
            }
            spec["source"] = serde_json::json!(src.to_string_lossy());
            fs::write(
                work.join("spec.json"),
                serde_json::to_vec_pretty(&spec).unwrap_or_default(),
            )
            .map_err(ImageError::io("write", &work))?;
            let dest = self.images.join(&id);
            if dest.exists() {
                remove_tree(&dest)?;
            }
            fs::rename(&work, &dest).map_err(ImageError::io("move into repository", &dest))?;
            let row = ImageRow {
                id: id.clone(),
                name: opts.name.clone(),
                spec: spec.to_string(),
                summary: format!(
                    "{origin} of {} ({format})",
                    src.file_name()
                        .map(|f| f.to_string_lossy())
                        .unwrap_or_default()
                ),
                origin: origin.clone(),
                created: vfarm_store::now(),
                os: opts.os.clone().or(os),
                os_version: opts.os_version.clone().or(os_version),
                arch: opts.arch.clone(),
                kernel: None,
                initrd: None,
            };
            let art = ArtifactRow {
                format: format.to_string(),
                file: format.file_name().to_string(),
                size,
                sha512: sha512.clone(),
                disk_size,
            };
            self.store.tx(|tx| {
                upsert_image(tx, &row, std::slice::from_ref(&art))?;
                append_event(
                    tx,
                    actor,
                    "image.imported",
                    &id,
                    &serde_json::json!({ "source": src.to_string_lossy(), "origin": origin }),
                )?;
                Ok::<_, ImageError>(())
            })?;
            self.get(&id)?
                .ok_or_else(|| ImageError::NotFound(id.clone()))
        })();
        if work.exists() {
            remove_tree(&work)?;
        }
        Ok(BuildOutcome {
            image: result?,
            cached: false,
            base_cached: true,
            build_id: None,
            log: None,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

fn missing_formats(img: &Image, req: &BuildRequest) -> Vec<Format> {
    req.formats
        .iter()
        .copied()
        .filter(|f| match img.artifact(*f) {
            None => true,
            Some(a) => f.is_disk() && req.disk_size.is_some_and(|d| Some(d) != a.disk_size),
        })
        .collect()
}

fn artifact_row(w: &Written) -> ArtifactRow {
    ArtifactRow {
        format: w.format.to_string(),
        file: w.format.file_name().to_string(),
        size: w.size,
        sha512: w.sha512.clone(),
        disk_size: w.disk_size,
    }
}

/// Newest kernel and matching initramfs under `/boot` of the tree.
fn find_boot_files(rootfs: &Path) -> Result<(PathBuf, PathBuf)> {
    let boot = rootfs.join("boot");
    let mut kernels: Vec<String> = fs::read_dir(&boot)
        .map_err(ImageError::io("read", &boot))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vmlinuz-"))
        .collect();
    kernels.sort();
    let k = kernels.pop().ok_or_else(|| ImageError::CheckFailed {
        format: "boot".into(),
        reason: "no /boot/vmlinuz-* in the image".into(),
    })?;
    let version = k.trim_start_matches("vmlinuz-");
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.exists() {
        return Err(ImageError::CheckFailed {
            format: "boot".into(),
            reason: format!("no /boot/initrd.img-{version} for kernel {k}"),
        });
    }
    Ok((boot.join(&k), initrd))
}

/// (os, os_version) from `/etc/os-release`: os is `Linux` for any Linux distribution (the
/// JSDL OperatingSystemName vocabulary), the version is VERSION_ID, else debian_version.
fn os_release(rootfs: &Path) -> (Option<String>, Option<String>) {
    let text = fs::read_to_string(rootfs.join("etc/os-release"))
        .or_else(|_| fs::read_to_string(rootfs.join("usr/lib/os-release")))
        .unwrap_or_default();
    let (os, ver) = parse_os_release(&text);
    let ver = ver.or_else(|| {
        fs::read_to_string(rootfs.join("etc/debian_version"))
            .ok()
            .map(|s| s.trim().to_string())
    });
    (os, ver)
}

pub(crate) fn parse_os_release(text: &str) -> (Option<String>, Option<String>) {
    let mut id = None;
    let mut ver = None;
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').to_string();
            match k.trim() {
                "ID" => id = Some(v),
                "VERSION_ID" => ver = Some(v),
                _ => {}
            }
        }
    }
    (id.map(|_| "Linux".to_string()), ver)
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Remove a directory tree, refusing to descend into mount points: a build's chroot mounts
/// live in a private namespace, but a tree must never be deleted through a stray bind mount
/// of the host's /dev or /proc.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let canon = fs::canonicalize(path).map_err(ImageError::io("resolve", path))?;
    if let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") {
        let prefix = format!("{}/", canon.display());
        for line in mounts.lines() {
            if let Some(mp) = line.split(' ').nth(4) {
                if mp == canon.to_string_lossy() || mp.starts_with(&prefix) {
                    return Err(ImageError::Io {
                        op: "refuse to remove (a filesystem is mounted inside)",
                        path: path.to_path_buf(),
                        source: std::io::Error::other(format!("mount point {mp}")),
                    });
                }
            }
        }
    }
    fs::remove_dir_all(path).map_err(ImageError::io("remove", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_maps_to_linux() {
        let (os, v) = parse_os_release(
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        );
        assert_eq!(os.as_deref(), Some("Linux"));
        assert_eq!(v.as_deref(), Some("12"));
        assert_eq!(parse_os_release(""), (None, None));
    }

    #[test]
    fn open_cleans_orphans_and_keeps_complete_images() {
        for db in vfarm_store::testing::TestDb::all() {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(db.open());
            let repo = Repository::open(dir.path(), store.clone()).unwrap();
            // An image directory without a record (crash between rename and insert)…
            fs::create_dir_all(dir.path().join("images/deadbeef")).unwrap();
            // …a build work area of a dead process, and a running build record.
            fs::create_dir_all(dir.path().join("tmp/build-cafe0001-1234/rootfs")).unwrap();
            store
                .insert_build(&BuildRow {
                    id: "b".into(),
                    image_id: "cafe0001".into(),
                    spec: "{}".into(),
                    started: vfarm_store::now(),
                    ended: None,
                    status: "running".into(),
                    error: None,
                    log: "/x".into(),
                })
                .unwrap();
            // A work area whose build is alive (lock held) must survive.
            fs::create_dir_all(dir.path().join("tmp/build-beef0002-1234")).unwrap();
            let held = repo.try_lock("image-beef0002").unwrap().expect("free");
            drop(repo);
            let _repo = Repository::open(dir.path(), store.clone()).unwrap();
            assert!(!dir.path().join("images/deadbeef").exists());
            assert!(!dir.path().join("tmp/build-cafe0001-1234").exists());
            assert!(dir.path().join("tmp/build-beef0002-1234").exists());
            assert_eq!(
                store.latest_build("cafe0001").unwrap().unwrap().status,
                "interrupted"
            );
            drop(held);
        }
    }
}
