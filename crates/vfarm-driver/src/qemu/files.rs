//! Copying files in and out of a running VM through the guest agent (`guest-file-*` for the
//! bytes, `guest-exec` of the image's `/bin/sh` for directories, modes and the final rename).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use vfarm_qemu::qga::{ExecRequest, ExitKind};

use super::errors::{classify, not_running};
use super::{QemuDriver, Record};
use crate::{DriverError, Files, Observed, Result};

impl QemuDriver {
    fn running_record(&self, op: &'static str, id: &str) -> Result<Record> {
        let rec = self.load(id)?;
        match self.observe_rec(&rec) {
            Observed::Running => Ok(rec),
            o => Err(not_running(op, id, o)),
        }
    }

    /// Run a short shell script in the guest; its exit code, or an error with its stderr.
    fn guest_sh(&self, rec: &Record, op: &'static str, script: &str, args: &[&str]) -> Result<i32> {
        let mut argv = vec!["-c", script, "sh"];
        argv.extend_from_slice(args);
        let out = self.guest_exec(rec, &ExecRequest::new("/bin/sh", &argv))?;
        match out.exit {
            ExitKind::Code(c) => Ok(c as i32),
            ExitKind::Signal(s) => Err(DriverError::Backend {
                op,
                id: rec.id.clone(),
                detail: format!(
                    "guest shell killed by signal {s}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                retryable: false,
                source: None,
            }),
        }
    }
}

fn failed(op: &'static str, id: &str, detail: String) -> DriverError {
    DriverError::Backend {
        op,
        id: id.to_string(),
        detail,
        retryable: false,
        source: None,
    }
}

impl Files for QemuDriver {
    fn copy_in(&self, id: &str, src: &Path, dst: &str) -> Result<()> {
        crate::validate_instance_path("destination", dst)?;
        let data = std::fs::read(src).map_err(|e| DriverError::InvalidSpec {
            field: "source",
            reason: format!("cannot read {}: {e}", src.display()),
        })?;
        let mode = std::fs::metadata(src)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644);
        let rec = self.running_record("copy in", id)?;
        let dir = match dst.rsplit_once('/') {
            Some(("", _)) | None => "/",
            Some((d, _)) => d,
        };
        let tmp = format!("{dst}.vfarm-{}", uuid::Uuid::new_v4().simple());
        if self.guest_sh(&rec, "copy in", r#"mkdir -p "$1""#, &[dir])? != 0 {
            return Err(failed(
                "copy in",
                id,
                format!("cannot make directory {dir}"),
            ));
        }
        self.agent(&rec)?
            .write_file(&tmp, &data)
            .map_err(|e| classify("copy in", id, e))?;
        // Mode, then rename over the target: readers see the old file or the whole new one.
        let code = self.guest_sh(
            &rec,
            "copy in",
            r#"chmod "$1" "$2" && mv -f "$2" "$3" || { rm -f "$2"; exit 1; }"#,
            &[&format!("{mode:o}"), &tmp, dst],
        )?;
        if code != 0 {
            return Err(failed(
                "copy in",
                id,
                format!("cannot put the file at {dst}"),
            ));
        }
        Ok(())
    }

    fn copy_out(&self, id: &str, src: &str, dst: &Path) -> Result<()> {
        crate::validate_instance_path("source", src)?;
        let rec = self.running_record("copy out", id)?;
        let kind = self.guest_sh(
            &rec,
            "copy out",
            r#"if [ -f "$1" ]; then exit 0; elif [ -e "$1" ]; then exit 2; else exit 1; fi"#,
            &[src],
        )?;
        match kind {
            0 => {}
            1 => {
                return Err(DriverError::NotFound {
                    kind: "file",
                    id: format!("{id}:{src}"),
                })
            }
            _ => {
                return Err(DriverError::InvalidSpec {
                    field: "source",
                    reason: format!("{src} in instance {id} is not a regular file"),
                })
            }
        }
        let data = self
            .agent(&rec)?
            .read_file(src)
            .map_err(|e| classify("copy out", id, e))?;
        crate::record::copy_to_host(&mut data.as_slice(), 0o644, dst)
            .map_err(|e| failed("copy out", id, format!("write {}: {e}", dst.display())))
    }
}
