//! Flattening a [`JobDefinition`] into the [`JobRequest`] the batch queue works with, and
//! routing a request to an image by OS / version / architecture.
//!
//! Units: every size is in **bytes** and every time in **seconds**, as JSDL itself defines
//! them (GFD.56 RangeValues for memory/disk are bytes, POSIX MemoryLimit is bytes,
//! WallTimeLimit/CPUTimeLimit are seconds), so no scaling happens here; range requirements are
//! turned into one number with [`RangeValue::allocation`].

use crate::model::*;
use serde::{Deserialize, Serialize};

/// What the queue needs to run one JSDL job.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobRequest {
    pub job_name: Option<String>,
    /// `Application/ApplicationName` (informative; the queue runs `executable`).
    pub application_name: Option<String>,
    /// Path of the program; `None` for a data-staging-only job or an application given by
    /// name alone.
    pub executable: Option<String>,
    pub args: Vec<String>,
    /// Environment as (name, value), in document order.
    pub env: Vec<(String, String)>,
    pub stdin: Option<String>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub working_dir: Option<String>,
    pub user_name: Option<String>,
    /// POSIX WallTimeLimit, seconds.
    pub wall_time_seconds: Option<u64>,
    /// POSIX CPUTimeLimit, else IndividualCPUTime, else TotalCPUTime; seconds.
    pub cpu_time_seconds: Option<u64>,
    /// IndividualPhysicalMemory, else TotalPhysicalMemory, else POSIX MemoryLimit; bytes.
    pub memory_bytes: Option<u64>,
    /// IndividualDiskSpace, else TotalDiskSpace; bytes.
    pub disk_bytes: Option<u64>,
    /// TotalCPUCount, else IndividualCPUCount, else SPMD NumberOfProcesses.
    pub cpu_count: Option<u64>,
    pub os: Option<OperatingSystemName>,
    pub os_version: Option<String>,
    pub arch: Option<CpuArchitectureName>,
    /// Image named with the vfarm extension (`vfarm:Image`); when set it takes precedence over
    /// routing by OS/arch.
    pub image: Option<String>,
    /// `vfarm:Driver`, `Any` when not given.
    pub driver: Driver,
    /// A VM instance given with the XenBEE extension (kernel/initrd/image locations).
    pub instance: Option<InstanceContent>,
    /// Files fetched into the job's working area before it starts.
    pub stage_in: Vec<StageFile>,
    /// Files delivered after the job ends.
    pub stage_out: Vec<StageFile>,
}

/// One file to stage in or out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageFile {
    pub uri: String,
    pub scheme: UriScheme,
    /// Path in the job's area: relative to the working directory, or made absolute through
    /// the referenced FileSystem's mount point.
    pub file_name: String,
    pub creation_flag: CreationFlag,
    /// Absent in the document reads as `true`.
    pub delete_on_termination: bool,
}

/// URI schemes vfarm can stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UriScheme {
    File,
    Http,
    Https,
}

/// Why a parsed job cannot be turned into a [`JobRequest`].
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("DataStaging `{file_name}`: URI `{uri}` uses a scheme vfarm cannot stage (file, http, https)")]
    UnsupportedScheme { file_name: String, uri: String },
    #[error("DataStaging `{file_name}`: {direction} has no URI")]
    MissingUri {
        file_name: String,
        direction: &'static str,
    },
    #[error("application <{element}> is not one vfarm can run (POSIX, HPC Profile or SPMD)")]
    ForeignApplication { element: String },
    #[error("{referenced_by} refers to FileSystem `{name}`, which Resources does not declare")]
    UnknownFileSystem { name: String, referenced_by: String },
}

fn scheme_of(uri: &str) -> Option<UriScheme> {
    let (scheme, _) = uri.split_once(':')?;
    match scheme.to_ascii_lowercase().as_str() {
        "file" => Some(UriScheme::File),
        "http" => Some(UriScheme::Http),
        "https" => Some(UriScheme::Https),
        _ => None,
    }
}

/// Resolves `filesystemName` references against `Resources/FileSystem` mount points.
struct Paths<'a> {
    file_systems: &'a [FileSystem],
}

impl Paths<'_> {
    fn resolve(&self, value: &str, fs: Option<&str>, what: &str) -> Result<String, MappingError> {
        let Some(name) = fs else {
            return Ok(value.to_owned());
        };
        let Some(fs) = self.file_systems.iter().find(|f| f.name == name) else {
            return Err(MappingError::UnknownFileSystem {
                name: name.to_owned(),
                referenced_by: what.to_owned(),
            });
        };
        // A file system without a mount point leaves placement to the site: keep the path.
        let Some(mount) = fs.mount_point.as_deref() else {
            return Ok(value.to_owned());
        };
        if value.is_empty() {
            return Ok(mount.to_owned());
        }
        Ok(format!(
            "{}/{}",
            mount.trim_end_matches('/'),
            value.trim_start_matches('/')
        ))
    }

    fn file(&self, f: &Option<FileRef>, what: &str) -> Result<Option<String>, MappingError> {
        f.as_ref()
            .map(|f| self.resolve(&f.value, f.filesystem_name.as_deref(), what))
            .transpose()
    }
}

impl JobDefinition {
    /// Flattens the job for the queue. Fails on what vfarm cannot carry out: staging URIs
    /// other than file/http/https, references to undeclared file systems, and foreign
    /// application elements.
    pub fn to_job_request(&self) -> Result<JobRequest, MappingError> {
        let d = &self.description;
        let no_fs = Vec::new();
        let res = d.resources.as_ref();
        let paths = Paths {
            file_systems: res.map_or(&no_fs, |r| &r.file_systems),
        };
        let mut req = JobRequest {
            job_name: d.identification.as_ref().and_then(|i| i.job_name.clone()),
            ..Default::default()
        };

        let mut spmd_processes = None;
        let mut posix_cpu_time = None;
        let mut posix_memory = None;
        if let Some(app) = &d.application {
            req.application_name = app.name.clone();
            match &app.body {
                Some(ApplicationBody::Posix(p)) => {
                    req.executable = paths.file(&p.executable, "Executable")?;
                    req.args = resolve_args(&paths, &p.arguments)?;
                    req.env = resolve_env(&paths, &p.environment)?;
                    req.stdin = paths.file(&p.input, "Input")?;
                    req.stdout = paths.file(&p.output, "Output")?;
                    req.stderr = paths.file(&p.error, "Error")?;
                    req.working_dir = paths.file(&p.working_directory, "WorkingDirectory")?;
                    req.user_name = p.user_name.clone();
                    req.wall_time_seconds = p.wall_time_limit;
                    posix_cpu_time = p.cpu_time_limit;
                    posix_memory = p.memory_limit;
                }
                Some(ApplicationBody::HpcProfile(h)) => {
                    req.executable = h.executable.clone();
                    req.args = h.arguments.clone();
                    req.env = h
                        .environment
                        .iter()
                        .map(|e| (e.name.clone(), e.value.clone()))
                        .collect();
                    req.stdin = h.input.clone();
                    req.stdout = h.output.clone();
                    req.stderr = h.error.clone();
                    req.working_dir = h.working_directory.clone();
                    req.user_name = h.user_name.clone();
                }
                Some(ApplicationBody::Spmd(s)) => {
                    req.executable = paths.file(&s.executable, "Executable")?;
                    req.args = resolve_args(&paths, &s.arguments)?;
                    req.env = resolve_env(&paths, &s.environment)?;
                    req.stdin = paths.file(&s.input, "Input")?;
                    req.stdout = paths.file(&s.output, "Output")?;
                    req.stderr = paths.file(&s.error, "Error")?;
                    req.working_dir = paths.file(&s.working_directory, "WorkingDirectory")?;
                    req.user_name = s.user_name.clone();
                    spmd_processes = s.number_of_processes.as_ref().and_then(|n| n.value);
                }
                Some(ApplicationBody::Foreign(f)) => {
                    return Err(MappingError::ForeignApplication {
                        element: f.name.to_string(),
                    })
                }
                None => {}
            }
        }

        let alloc = |f: fn(&Resources) -> &Option<RangeValue>| {
            res.and_then(|r| f(r).as_ref())
                .and_then(RangeValue::allocation)
        };
        req.cpu_time_seconds = posix_cpu_time
            .or_else(|| alloc(|r| &r.individual_cpu_time))
            .or_else(|| alloc(|r| &r.total_cpu_time));
        req.memory_bytes = alloc(|r| &r.individual_physical_memory)
            .or_else(|| alloc(|r| &r.total_physical_memory))
            .or(posix_memory);
        req.disk_bytes =
            alloc(|r| &r.individual_disk_space).or_else(|| alloc(|r| &r.total_disk_space));
        req.cpu_count = alloc(|r| &r.total_cpu_count)
            .or_else(|| alloc(|r| &r.individual_cpu_count))
            .or(spmd_processes);

        if let Some(r) = res {
            if let Some(os) = &r.operating_system {
                req.os = os.name;
                req.os_version = os.version.clone();
            }
            req.arch = r.cpu_architecture;
            req.instance = r
                .instance_definition
                .as_ref()
                .map(|i| i.description.content.clone());
        }
        // The parser refuses two different values, so either place may be read first.
        let vf = [res.map(|r| &r.vfarm), Some(&d.vfarm)];
        req.image = vf.iter().flatten().find_map(|v| v.image.clone());
        req.driver = vf
            .iter()
            .flatten()
            .find_map(|v| v.driver)
            .unwrap_or(Driver::Any);

        for s in &d.data_staging {
            let file_name = paths.resolve(
                &s.file_name,
                s.filesystem_name.as_deref(),
                &format!("DataStaging `{}`", s.file_name),
            )?;
            for (loc, direction, list) in [
                (&s.source, "Source", &mut req.stage_in),
                (&s.target, "Target", &mut req.stage_out),
            ] {
                let Some(loc) = loc else { continue };
                let uri = loc.uri.clone().ok_or_else(|| MappingError::MissingUri {
                    file_name: s.file_name.clone(),
                    direction,
                })?;
                let scheme = scheme_of(&uri).ok_or_else(|| MappingError::UnsupportedScheme {
                    file_name: s.file_name.clone(),
                    uri: uri.clone(),
                })?;
                list.push(StageFile {
                    uri,
                    scheme,
                    file_name: file_name.clone(),
                    creation_flag: s.creation_flag_or_default(),
                    delete_on_termination: s.delete_on_termination_or_default(),
                });
            }
        }
        Ok(req)
    }
}

fn resolve_args(paths: &Paths<'_>, args: &[FileRef]) -> Result<Vec<String>, MappingError> {
    args.iter()
        .map(|a| paths.resolve(&a.value, a.filesystem_name.as_deref(), "Argument"))
        .collect()
}

fn resolve_env(paths: &Paths<'_>, env: &[EnvVar]) -> Result<Vec<(String, String)>, MappingError> {
    env.iter()
        .map(|e| {
            let what = format!("Environment `{}`", e.name);
            let v = paths.resolve(&e.value, e.filesystem_name.as_deref(), &what)?;
            Ok((e.name.clone(), v))
        })
        .collect()
}

/// Whether an image's `arch` (Debian spelling such as `amd64`, or kernel spelling such as
/// `x86_64`) satisfies a JSDL CPUArchitectureName. `other` matches only architectures that
/// none of the named JSDL values covers.
pub fn arch_matches(jsdl: CpuArchitectureName, image_arch: &str) -> bool {
    let a = image_arch.trim().to_ascii_lowercase();
    let family = |a: &str| -> Option<CpuArchitectureName> {
        use CpuArchitectureName as C;
        Some(match a {
            "amd64" | "x86_64" | "x64" | "x86-64" => C::X86_64,
            "i386" | "i486" | "i586" | "i686" | "x86" | "x86_32" | "ia32" => C::X86_32,
            "arm" | "arm64" | "aarch64" | "armhf" | "armel" | "armv7" | "armv7l" => C::Arm,
            "powerpc" | "ppc" | "ppc64" | "ppc64el" | "ppc64le" => C::Powerpc,
            "sparc" | "sparc64" => C::Sparc,
            "mips" | "mipsel" | "mips64" | "mips64el" => C::Mips,
            "ia64" => C::Ia64,
            "parisc" | "hppa" => C::Parisc,
            _ => return None,
        })
    };
    match (jsdl, family(&a)) {
        // JSDL has both `x86` and `x86_32` for 32-bit x86.
        (CpuArchitectureName::X86 | CpuArchitectureName::X86_32, Some(f)) => {
            f == CpuArchitectureName::X86_32
        }
        (CpuArchitectureName::Other, f) => f.is_none() && !a.is_empty(),
        (j, Some(f)) => j == f,
        (_, None) => false,
    }
}

/// Whether an image's `os` satisfies a JSDL OperatingSystemName: `LINUX` matches an image
/// whose os is Linux (any letter case, or `gnu/linux`); other names compare case-insensitively.
pub fn os_matches(jsdl: OperatingSystemName, image_os: &str) -> bool {
    let os = image_os.trim();
    match jsdl {
        OperatingSystemName::LINUX => {
            os.eq_ignore_ascii_case("linux") || os.eq_ignore_ascii_case("gnu/linux")
        }
        other => os.eq_ignore_ascii_case(other.as_str()),
    }
}

/// Version match by dotted prefix: `12` matches `12` and `12.8` but not `120`.
pub fn version_matches(wanted: &str, image_version: &str) -> bool {
    let (w, v) = (wanted.trim(), image_version.trim());
    if w.is_empty() {
        return true;
    }
    v == w
        || v.strip_prefix(w)
            .is_some_and(|rest| rest.starts_with(['.', '-', '+', '~']))
}

impl JobRequest {
    /// Routing: whether an image with this metadata satisfies the job's OS, OS version and
    /// architecture requirements. Requirements the job does not state match anything.
    pub fn matches_image(&self, os: &str, os_version: &str, arch: &str) -> bool {
        self.os.is_none_or(|o| os_matches(o, os))
            && self
                .os_version
                .as_deref()
                .is_none_or(|v| version_matches(v, os_version))
            && self.arch.is_none_or(|a| arch_matches(a, arch))
    }
}
