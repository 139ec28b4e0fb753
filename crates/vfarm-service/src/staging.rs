//! Files between the host and instances: `vfarm instance cp` and the staging flags of
//! `vfarm run` (`--copy-in`, `--copy-out`, `--workdir`), on the drivers' `Files` capability.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vfarm_core::instance::InvalidField;
use vfarm_driver::{Driver, DriverError, Files};

/// One copy of `vfarm run`: a host path and a path in the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub host: PathBuf,
    pub guest: String,
}

fn bad(field: &'static str, value: &str, reason: String) -> anyhow::Error {
    InvalidField {
        field,
        value: value.to_string(),
        reason,
    }
    .into()
}

/// `HOST:GUEST` (copy-in) or `GUEST:HOST` (copy-out, `guest_first`). A relative guest path is
/// relative to `workdir` (default `/`), so JSDL-style file names land in the working directory.
pub fn parse_stage(
    field: &'static str,
    s: &str,
    guest_first: bool,
    workdir: Option<&str>,
) -> Result<Stage> {
    let parts: Vec<&str> = s.split(':').collect();
    let [a, b] = parts[..] else {
        let shape = if guest_first {
            "GUEST:HOST"
        } else {
            "HOST:GUEST"
        };
        return Err(bad(
            field,
            s,
            format!("must be {shape} (exactly one `:`; paths with `:` are not supported)"),
        ));
    };
    let (host, guest) = if guest_first { (b, a) } else { (a, b) };
    if host.is_empty() || guest.is_empty() {
        return Err(bad(field, s, "a path is empty".into()));
    }
    let guest = if guest.starts_with('/') {
        guest.to_string()
    } else {
        format!("{}/{guest}", workdir.unwrap_or("").trim_end_matches('/'))
    };
    vfarm_driver::validate_instance_path(field, &guest).map_err(|e| match e {
        DriverError::InvalidSpec { reason, .. } => bad(field, s, reason),
        e => e.into(),
    })?;
    Ok(Stage {
        host: PathBuf::from(host),
        guest,
    })
}

/// Check `--workdir`: an absolute path inside the instance.
pub fn check_workdir(dir: &str) -> Result<()> {
    if !dir.starts_with('/') || dir.split('/').any(|c| c == "..") {
        return Err(bad(
            "workdir",
            dir,
            "must be an absolute path inside the instance, without `..`".into(),
        ));
    }
    Ok(())
}

/// The command run in `dir` (made if missing): the image's shell changes directory and then
/// replaces itself with the command, so exit status and signals are the command's own.
pub fn in_workdir(dir: &str, command: &[String]) -> Vec<String> {
    let mut argv = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        r#"mkdir -p "$1" && cd "$1" && shift && exec "$@""#.to_string(),
        "sh".to_string(),
        dir.to_string(),
    ];
    argv.extend(command.iter().cloned());
    argv
}

pub fn files_of(driver: &dyn Driver) -> Result<&dyn Files> {
    driver.files().ok_or_else(|| {
        DriverError::Unsupported {
            driver: driver.kind(),
            what: "copying files".into(),
        }
        .into()
    })
}

pub fn copy_in_all(driver: &dyn Driver, id: &str, stages: &[Stage]) -> Result<()> {
    if stages.is_empty() {
        return Ok(());
    }
    let files = files_of(driver)?;
    for s in stages {
        files
            .copy_in(id, &s.host, &s.guest)
            .with_context(|| format!("cannot copy {} into {}", s.host.display(), s.guest))?;
    }
    Ok(())
}

/// Copy every stage out; failures are reported on stderr and counted, so one missing output
/// does not hide the others.
pub fn copy_out_all(driver: &dyn Driver, id: &str, stages: &[Stage]) -> usize {
    if stages.is_empty() {
        return 0;
    }
    let files = match files_of(driver) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("run: {e:#}");
            return stages.len();
        }
    };
    let mut failed = 0;
    for s in stages {
        if let Err(e) = files.copy_out(id, &s.guest, &s.host) {
            tracing::warn!(
                "run: cannot copy {} out to {}: {e}",
                s.guest,
                s.host.display()
            );
            failed += 1;
        }
    }
    failed
}

/// Which side of a `vfarm instance cp` argument is in an instance: `NAME:/path`.
#[derive(Debug, PartialEq, Eq)]
pub enum CpEnd<'a> {
    Host(&'a Path),
    Instance { instance: &'a str, path: &'a str },
}

pub fn parse_cp_end(s: &str) -> CpEnd<'_> {
    match s.split_once(':') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') => CpEnd::Instance {
            instance: name,
            path,
        },
        _ => CpEnd::Host(Path::new(s)),
    }
}

/// The direction of a `cp`: (instance, instance path, host path, into the instance).
pub fn cp_plan<'a>(src: &'a str, dst: &'a str) -> Result<(&'a str, &'a str, &'a Path, bool)> {
    match (parse_cp_end(src), parse_cp_end(dst)) {
        (CpEnd::Host(h), CpEnd::Instance { instance, path }) => Ok((instance, path, h, true)),
        (CpEnd::Instance { instance, path }, CpEnd::Host(h)) => Ok((instance, path, h, false)),
        (CpEnd::Host(_), CpEnd::Host(_)) => Err(bad(
            "destination",
            dst,
            "one side must name a path in an instance, INSTANCE:/path".into(),
        )),
        _ => Err(bad(
            "source",
            src,
            "copying from one instance to another is not supported; copy through the host".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_and_resolve_relative_guest_paths() {
        let s = parse_stage("copy-in", "data/in.txt:in.txt", false, Some("/work")).unwrap();
        assert_eq!(s.host, PathBuf::from("data/in.txt"));
        assert_eq!(s.guest, "/work/in.txt");
        let s = parse_stage("copy-out", "/out/r.json:r.json", true, None).unwrap();
        assert_eq!(
            (s.guest.as_str(), s.host.as_path()),
            ("/out/r.json", Path::new("r.json"))
        );
        let s = parse_stage("copy-out", "r.json:x", true, None).unwrap();
        assert_eq!(s.guest, "/r.json");
    }

    #[test]
    fn bad_stages_name_the_field() {
        for (arg, want) in [
            ("a:b:c", "exactly one"),
            ("nocolon", "exactly one"),
            (":x", "path is empty"),
            ("x:/a/../etc", ".."),
            ("x:/", "root"),
            ("x:/etc/", "directory"),
        ] {
            let e = parse_stage("copy-in", arg, false, None).unwrap_err();
            let msg = format!("{e:#}");
            assert!(
                msg.contains("copy-in") && msg.contains(want),
                "{arg}: {msg}"
            );
        }
        assert!(check_workdir("rel").is_err());
        assert!(check_workdir("/a/../b").is_err());
        check_workdir("/scratch/job").unwrap();
    }

    #[test]
    fn workdir_wraps_the_command_without_quoting_it_into_the_script() {
        let argv = in_workdir("/w d", &["echo".into(), "a b".into()]);
        assert_eq!(argv[0], "/bin/sh");
        assert_eq!(&argv[4..], ["/w d", "echo", "a b"]);
    }

    #[test]
    fn cp_ends() {
        assert_eq!(
            cp_plan("./f", "web:/etc/f").unwrap(),
            ("web", "/etc/f", Path::new("./f"), true)
        );
        assert_eq!(
            cp_plan("web:/etc/f", "/tmp/f").unwrap(),
            ("web", "/etc/f", Path::new("/tmp/f"), false)
        );
        assert!(cp_plan("/a", "/b").is_err());
        assert!(cp_plan("a:/x", "b:/y").is_err());
        // A host path with a slash before the colon is a host path.
        assert_eq!(parse_cp_end("./a:b"), CpEnd::Host(Path::new("./a:b")));
    }
}
