//! `vfarm image …`: the image farm from the command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use vfarm_core::{ByteSize, Format, SpecRequest};
use vfarm_image::{BuildOutcome, Image, ImportOptions, Progress};

use crate::ctx::Ctx;
use vfarm_service::{images, Caller};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Build an image from a spec (flags and/or a TOML file). An identical spec returns the
    /// existing image at once; a spec that only adds packages to a cached base reuses it.
    #[command(
        after_help = "Examples:\n  vfarm image build --suite bookworm --package curl --format tar --format qcow2\n  vfarm image build -f spec.toml --name web\n\nPackage groups: core, base, build-essential, python3, ssh-server, networking (see `vfarm image groups`)."
    )]
    Build(BuildArgs),
    /// List the images in the repository.
    #[command(alias = "list")]
    Ls,
    /// Show one image: spec, artifacts with sizes and sha512, kernel and initramfs.
    Show {
        /// Image id, unique id prefix (at least 4 characters) or name.
        image: String,
    },
    /// Remove an image and its files.
    #[command(alias = "remove")]
    Rm {
        /// Image id, unique id prefix or name.
        image: String,
    },
    /// Print the build log of an image, or of a failed build (by the id it printed).
    Log {
        /// Image id, id prefix or name.
        image: String,
    },
    /// Write an image in a given format to a file (converting from the rootfs if needed).
    Export {
        /// Image id, id prefix or name.
        image: String,
        /// tar, raw, qcow2, vmdk or vdi.
        #[arg(long, short = 'F')]
        format: String,
        /// Destination file.
        #[arg(long = "out", short = 'o', value_name = "FILE")]
        out: PathBuf,
    },
    /// Make a repository image from an existing rootfs tarball or disk image.
    Import {
        /// A rootfs tarball (lists etc/debian_version or etc/os-release) or a raw/qcow2/vmdk/vdi disk.
        file: PathBuf,
        /// Alias for the image.
        #[arg(long)]
        name: Option<String>,
        /// Format of the file, when detection is not wanted.
        #[arg(long)]
        format: Option<String>,
    },
    /// The exact packages a build put into an image (name, version, architecture, source),
    /// read from the image's package database when it was built.
    Manifest {
        /// Image id, id prefix or name.
        image: String,
    },
    /// What changed in the packages from image A to image B: added, removed, new versions.
    Diff {
        /// The earlier image: id, id prefix or name.
        a: String,
        /// The later image: id, id prefix or name.
        b: String,
    },
    /// List the package groups that `--group` accepts.
    Groups {
        /// Distribution whose groups to list: debian, ubuntu (apt), almalinux, rocky, centos-stream, fedora (dnf comps groups).
        #[arg(long, default_value = "debian")]
        distro: String,
    },
}

#[derive(Args, Default)]
pub struct BuildArgs {
    /// Spec file (TOML: name, distro, suite, arch, variant, groups, packages, formats, size, boot, repositories). Flags override it.
    #[arg(long = "file", short = 'f', value_name = "SPEC.toml")]
    file: Option<PathBuf>,
    /// Alias for the image (default: named by its id).
    #[arg(long)]
    name: Option<String>,
    /// Distribution: debian, ubuntu, almalinux, rocky, centos-stream, fedora (default debian; all but debian need a mirror in <data>/mirrors.toml).
    #[arg(long, value_name = "debian")]
    distro: Option<String>,
    /// Release: bookworm, trixie … for debian, noble, jammy … for ubuntu, 8, 9, 10 for EL (default: the distribution's current one).
    #[arg(long)]
    suite: Option<String>,
    /// Debian architecture: amd64, i386 … (default: the host's).
    #[arg(long)]
    arch: Option<String>,
    /// Bootstrap variant: minbase, essential, apt, required, important, standard (default minbase).
    #[arg(long)]
    variant: Option<String>,
    /// Package group from the catalogue (repeatable).
    #[arg(long = "group", short = 'g')]
    groups: Vec<String>,
    /// Extra package (repeatable).
    #[arg(long = "package", short = 'p')]
    packages: Vec<String>,
    /// Output format: tar, raw, qcow2, vmdk, vdi (repeatable; default tar). The tar is always kept.
    #[arg(long = "format", short = 'F')]
    formats: Vec<String>,
    /// Disk size for raw/qcow2/vmdk/vdi, e.g. 4G (default: content + 50 %).
    #[arg(long)]
    size: Option<String>,
    /// Boot profile: none, or vm (adds a kernel, an initramfs for a virtio root disk and qemu-guest-agent).
    #[arg(long)]
    boot: Option<String>,
}

impl BuildArgs {
    pub fn to_request(&self) -> Result<SpecRequest> {
        let file = match &self.file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read spec file {}", p.display()))?;
                let mut spec = SpecRequest::from_toml(&text)
                    .with_context(|| format!("in spec file {}", p.display()))?;
                read_repository_keys(&mut spec, p.parent().unwrap_or(std::path::Path::new(".")))?;
                spec
            }
            None => SpecRequest::default(),
        };
        let flags = SpecRequest {
            name: self.name.clone(),
            distro: self.distro.clone(),
            suite: self.suite.clone(),
            arch: self.arch.clone(),
            variant: self.variant.clone(),
            groups: self.groups.clone(),
            packages: self.packages.clone(),
            formats: self.formats.clone(),
            size: self.size.clone(),
            boot: self.boot.clone(),
            repositories: Vec::new(),
        };
        Ok(file.merge(flags))
    }
}

/// A repository `key` that is not the armored key itself names a file (relative to the spec
/// file): the CLI reads it, so the service, which cannot see the caller's files, only ever
/// gets key text.
fn read_repository_keys(spec: &mut SpecRequest, base: &std::path::Path) -> Result<()> {
    for r in &mut spec.repositories {
        let Some(k) = r.key.as_deref() else { continue };
        if vfarm_core::spec::is_armored_key(k) {
            continue;
        }
        let path = base.join(k.trim());
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "invalid repository.key of repository `{}`: cannot read key file {}",
                r.name.as_deref().unwrap_or_default(),
                path.display()
            )
        })?;
        r.key = Some(text);
    }
    Ok(())
}

pub fn run(ctx: &Ctx, cmd: ImageCmd) -> Result<i32> {
    match cmd {
        ImageCmd::Build(args) => {
            let outcome = build(ctx, &args)?;
            print_outcome(ctx, &outcome)?;
        }
        ImageCmd::Ls => {
            let images = ctx.images()?.list()?;
            if ctx.json() {
                ctx.print_json(&images)?;
            } else {
                print_table(&images);
            }
        }
        ImageCmd::Show { image } => {
            let img = ctx.images()?.resolve(&image)?;
            if ctx.json() {
                ctx.print_json(&img)?;
            } else {
                print_image(&img);
            }
        }
        ImageCmd::Manifest { image } => {
            print_manifest(ctx, &images::manifest(&ctx.images()?, &image)?)?
        }
        ImageCmd::Diff { a, b } => return print_diff(ctx, &images::diff(&ctx.images()?, &a, &b)?),
        ImageCmd::Rm { image } => {
            let img = images::remove(&ctx.images()?, &Caller::local(), &image)?;
            if ctx.json() {
                ctx.print_json(&serde_json::json!({ "removed": img.id, "name": img.name }))?;
            } else {
                println!("removed {} ({})", img.display_name(), img.id);
            }
        }
        ImageCmd::Log { image } => {
            let b = ctx.images()?.build_log(&image)?;
            if ctx.json() {
                let text = std::fs::read_to_string(&b.log).unwrap_or_default();
                ctx.print_json(&serde_json::json!({ "build": b, "log": text }))?;
            } else {
                let text = std::fs::read_to_string(&b.log)
                    .with_context(|| format!("cannot read build log {}", b.log))?;
                eprintln!(
                    "# build {} of {}: {} (log {})",
                    b.id, b.image_id, b.status, b.log
                );
                print!("{text}");
            }
        }
        ImageCmd::Export { image, format, out } => {
            let format: Format = format.parse()?;
            let repo = ctx.images()?;
            let img = repo.resolve(&image)?;
            let mut ui = BuildUi::new(ctx);
            let art = images::ensure_format(&repo, &img, format, &mut |p| ui.update(&p))?;
            ui.finish();
            std::fs::copy(&art.path, &out)
                .with_context(|| format!("cannot write {}", out.display()))?;
            if ctx.json() {
                ctx.print_json(&serde_json::json!({ "image": img.id, "format": format, "path": out, "size": art.size, "sha512": art.sha512 }))?;
            } else {
                println!(
                    "wrote {} ({}, {})",
                    out.display(),
                    format,
                    ByteSize(art.size)
                );
            }
        }
        ImageCmd::Import { file, name, format } => {
            let format = format.map(|f| f.parse::<Format>()).transpose()?;
            let opts = ImportOptions {
                name,
                format,
                ..Default::default()
            };
            let outcome = images::import(&ctx.images()?, &Caller::local(), &file, &opts)?;
            print_outcome(ctx, &outcome)?;
        }
        ImageCmd::Groups { distro } => {
            let distro: vfarm_core::Distro = distro.parse()?;
            let catalogue = vfarm_core::groups::catalogue(distro.family());
            if ctx.json() {
                let groups: Vec<_> = catalogue
                    .iter()
                    .map(|g| serde_json::json!({ "name": g.name, "description": g.description, "packages": g.packages }))
                    .collect();
                ctx.print_json(&groups)?;
            } else {
                for g in catalogue {
                    println!(
                        "{:<16} {}\n{:<16} packages: {}",
                        g.name,
                        g.description,
                        "",
                        if g.packages.is_empty() {
                            "(none)".to_string()
                        } else {
                            g.packages.join(" ")
                        }
                    );
                }
            }
        }
    }
    Ok(0)
}

pub fn build(ctx: &Ctx, args: &BuildArgs) -> Result<BuildOutcome> {
    let req = args.to_request()?.resolve()?;
    let repo = ctx.images()?;
    let id = req.spec.id();
    let mut ui = BuildUi::new(ctx);
    ui.start(&format!("image {} ({})", &id[..12], req.spec.summary()));
    let result = images::build(&repo, &Caller::local(), &req, &mut |p| ui.update(&p));
    ui.finish();
    result.with_context(|| {
        format!(
            "build of image {id} failed (see `vfarm image log {}`)",
            &id[..12]
        )
    })
}

pub(crate) fn print_outcome(ctx: &Ctx, o: &BuildOutcome) -> Result<()> {
    if ctx.json() {
        return ctx.print_json(o);
    }
    let how = if o.cached {
        "cached (identical spec already built)".to_string()
    } else if o.build_id.is_none() {
        "added formats".to_string()
    } else if o.base_cached {
        format!("built on cached base in {:.1} s", o.seconds)
    } else {
        format!("built in {:.1} s", o.seconds)
    };
    println!("{}  {}  {}", o.image.id, o.image.display_name(), how);
    for a in &o.image.artifacts {
        println!(
            "  {:<6} {:>10}  {}",
            a.format.as_str(),
            ByteSize(a.size).to_string(),
            a.path.display()
        );
    }
    Ok(())
}

pub(crate) fn print_table(images: &[Image]) {
    println!(
        "{:<14} {:<20} {:<8} {:<24} {:>10}  SPEC",
        "ID", "NAME", "ORIGIN", "FORMATS", "SIZE"
    );
    for i in images {
        let formats: Vec<&str> = i.artifacts.iter().map(|a| a.format.as_str()).collect();
        println!(
            "{:<14} {:<20} {:<8} {:<24} {:>10}  {}",
            &i.id[..12.min(i.id.len())],
            i.name.as_deref().unwrap_or("-"),
            i.origin,
            formats.join(","),
            ByteSize(i.size()).to_string(),
            i.summary
        );
    }
}

pub(crate) fn print_image(i: &Image) {
    println!("id:        {}", i.id);
    println!("name:      {}", i.name.as_deref().unwrap_or("-"));
    println!("summary:   {}", i.summary);
    println!("origin:    {}", i.origin);
    println!("created:   {}", i.created);
    println!(
        "os:        {} {} ({})",
        i.os.as_deref().unwrap_or("?"),
        i.os_version.as_deref().unwrap_or("?"),
        i.arch.as_deref().unwrap_or("?")
    );
    if let Some(k) = &i.kernel {
        println!("kernel:    {}", k.display());
    }
    if let Some(k) = &i.initrd {
        println!("initrd:    {}", k.display());
    }
    println!("artifacts:");
    for a in &i.artifacts {
        println!(
            "  {:<6} {:>10}  {}",
            a.format.as_str(),
            ByteSize(a.size).to_string(),
            a.path.display()
        );
        if let Some(d) = a.disk_size {
            println!("         disk size {}", ByteSize(d));
        }
        println!("         sha512 {}", a.sha512);
    }
    println!("spec:      {}", i.spec);
}

/// Build progress: a spinner with phase, packages and bytes on a terminal; plain phase lines
/// (and every tool line with -v) otherwise. Nothing goes to stdout, which belongs to the result.
pub struct BuildUi {
    bar: Option<ProgressBar>,
    verbose: bool,
    phase: String,
    packages: u64,
    bytes: u64,
}

impl BuildUi {
    pub fn new(ctx: &Ctx) -> BuildUi {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        let bar = tty.then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .expect("valid template"),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        BuildUi {
            bar,
            verbose: ctx.verbose > 0,
            phase: String::new(),
            packages: 0,
            bytes: 0,
        }
    }

    pub fn start(&mut self, what: &str) {
        match &self.bar {
            Some(b) => b.set_message(what.to_string()),
            None => eprintln!("vfarm: {what}"),
        }
    }

    pub fn update(&mut self, p: &Progress) {
        match p {
            Progress::Phase(ph) => {
                self.phase = crate::cmd::progress::short_phase(ph);
                if self.bar.is_none() {
                    eprintln!("vfarm: {}", self.phase);
                }
            }
            Progress::Counters { packages, bytes } => {
                self.packages = *packages;
                self.bytes = *bytes;
            }
            Progress::Line(l) => {
                if self.verbose && self.bar.is_none() {
                    eprintln!("  {l}");
                }
            }
        }
        if let Some(b) = &self.bar {
            // Counters only mean something while packages are fetched and installed.
            if self.packages > 0 || self.bytes > 0 {
                b.set_message(format!(
                    "{} | {} packages set up | {} downloaded",
                    self.phase,
                    self.packages,
                    ByteSize(self.bytes)
                ));
            } else {
                b.set_message(self.phase.clone());
            }
        }
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// `image manifest`: one package per line, or the JSON document.
pub fn print_manifest(ctx: &Ctx, m: &images::Manifest) -> Result<()> {
    if ctx.json() {
        return ctx.print_json(m);
    }
    let w = |f: fn(&vfarm_image::manifest::Package) -> &str| {
        m.packages.iter().map(|p| f(p).len()).max().unwrap_or(0)
    };
    let (wn, wv, wa) = (w(|p| &p.name), w(|p| &p.version), w(|p| &p.arch));
    for p in &m.packages {
        println!(
            "{:<wn$}  {:<wv$}  {:<wa$}  {}",
            p.name, p.version, p.arch, p.source
        );
    }
    eprintln!("{} packages in {}", m.packages.len(), m.image);
    Ok(())
}

/// `image diff`: `+ name version`, `- name version`, `~ name from -> to`; exit 0 when the
/// manifests agree, 1 when they differ (as `diff` does).
pub fn print_diff(ctx: &Ctx, d: &images::Diff) -> Result<i32> {
    if ctx.json() {
        ctx.print_json(d)?;
    } else {
        for p in &d.diff.added {
            println!("+ {} {} {}", p.name, p.version, p.arch);
        }
        for p in &d.diff.removed {
            println!("- {} {} {}", p.name, p.version, p.arch);
        }
        for c in &d.diff.changed {
            println!("~ {} {} -> {}", c.name, c.from, c.to);
        }
        eprintln!(
            "{} added, {} removed, {} changed",
            d.diff.added.len(),
            d.diff.removed.len(),
            d.diff.changed.len()
        );
    }
    Ok(i32::from(!d.diff.is_empty()))
}
