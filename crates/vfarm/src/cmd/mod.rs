//! One module per command group; each `run` returns the process exit code.

pub mod bench;
pub mod ca;
pub mod grid;
pub mod host;
pub mod image;
pub mod imagelist;
pub mod instance;
pub mod job;
pub mod migrate;
pub mod network;
pub mod node;
pub mod progress;
pub mod remote;
pub mod remote_job;
pub mod remote_lists;
pub mod serve;
pub use vfarm_service::staging;
pub mod token;

use crate::ctx::Ctx;
use vfarm_proto::ErrorCode;

/// A secret (token) from `file` (`-`: one line from standard input, the prompt) or else the
/// environment variable `var`; a value given on the command line (`argv`) is refused, since
/// every local user sees it in `ps`.
pub fn secret(
    flag: &str,
    argv: Option<&str>,
    file: Option<&std::path::Path>,
    var: &str,
) -> anyhow::Result<Option<String>> {
    use anyhow::{bail, Context};
    if argv.is_some() {
        return Err(vfarm_auth::AuthError::Invalid {
            field: "token",
            value: "(not shown)".into(),
            reason: format!(
                "--{flag}: a secret on the command line is visible to every user in `ps`; put \
                 it in ${var}, or in a file for --{flag}-file FILE (`-` reads it from standard \
                 input)"
            ),
        }
        .into());
    }
    let value = match file {
        Some(p) if p.as_os_str() == "-" => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("{flag}: ");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .with_context(|| format!("--{flag}-file -: cannot read standard input"))?;
            Some(line)
        }
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("--{flag}-file {}: cannot read", p.display()))?,
        ),
        None => std::env::var(var).ok(),
    };
    match value.map(|v| v.trim().to_string()) {
        Some(v) if v.is_empty() => bail!("--{flag}-file / ${var}: the {flag} is empty"),
        v => Ok(v),
    }
}

/// The code and the field at fault of a failed command: the one classification of the
/// CLI's errors (the exit status and `--output json` follow from it; the API's instance
/// handlers use it too).
pub fn classify(err: &anyhow::Error) -> (ErrorCode, Option<String>) {
    if let Some(e) = err.downcast_ref::<remote::RemoteError>() {
        return (
            ErrorCode::parse(&e.code).unwrap_or(ErrorCode::Error),
            e.field.clone(),
        );
    }
    if let Some(e) = err.downcast_ref::<vfarm_api::ApiError>() {
        return (e.code, e.field.as_deref().map(str::to_string));
    }
    if let Some(e) = err.downcast_ref::<bench::Invalid>() {
        return (ErrorCode::InvalidArgument, Some(e.field.to_string()));
    }
    if let Some(c) = vfarm_service::classify(err) {
        return c;
    }
    (ErrorCode::Error, None)
}

/// The exit status of a failed command (see [`ErrorCode::exit_code`]).
pub fn exit_code(err: &anyhow::Error) -> u8 {
    classify(err).0.exit_code()
}

/// The one thing to do about `err`, for refusals whose own message does not say it (a
/// newcomer's first errors: a missing image, instance or tool, a taken name or port).
pub fn fix(err: &anyhow::Error) -> Option<String> {
    use vfarm_driver::DriverError;
    use vfarm_image::ImageError;
    use vfarm_store::StoreError;
    let store = |e: &StoreError| {
        match e {
        StoreError::NotFound { kind, .. } if kind.starts_with("instance") => {
            Some("`vfarm instance ls` lists the instances".to_string())
        }
        StoreError::NotFound { kind: "image", id } => Some(format!(
            "`vfarm image ls` lists the images; `vfarm image build --suite bookworm --name {id}` builds one"
        )),
        StoreError::Conflict { kind: "instance name", id } => Some(format!(
            "choose another --name, or remove the old one: vfarm instance destroy {id}"
        )),
        _ => None,
    }
    };
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<ImageError>() {
            match e {
                ImageError::NotFound(r) => {
                    return Some(format!(
                        "`vfarm image ls` lists the images; `vfarm image build --suite bookworm --name {r}` builds one"
                    ))
                }
                ImageError::ToolMissing { tool } => {
                    let package = match *tool {
                        "setpriv" | "unshare" => "util-linux",
                        t => t,
                    };
                    return Some(format!("apt-get install {package}"));
                }
                ImageError::Store(s) => return store(s),
                _ => {}
            }
        }
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return store(e);
        }
        if let Some(e) = cause.downcast_ref::<DriverError>() {
            match e {
                DriverError::NotFound { kind, id } if kind.starts_with("checkpoint") => {
                    let instance = id.split(':').next().unwrap_or(id.as_str());
                    return Some(format!(
                        "`vfarm checkpoint ls {instance}` lists its checkpoints; `vfarm instance checkpoint {instance}` makes one"
                    ));
                }
                DriverError::NotFound { .. } => {
                    return Some("`vfarm instance ls` lists the instances".into())
                }
                DriverError::HostNotReady { reason, .. } if !reason.contains("install") => {
                    return Some(
                        "`vfarm doctor` shows what this machine can run and how to fix the rest"
                            .into(),
                    )
                }
                _ => {}
            }
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                return Some(
                    "another process listens there: choose another port with --listen ADDR:PORT"
                        .into(),
                );
            }
        }
    }
    None
}

/// For an instance this data dir does not have: where a migration took it, if one did.
fn moved(ctx: &Ctx, err: &anyhow::Error) -> Option<String> {
    let id = err
        .chain()
        .find_map(|c| match c.downcast_ref::<vfarm_store::StoreError>() {
            Some(vfarm_store::StoreError::NotFound { kind, id })
                if kind.starts_with("instance") =>
            {
                Some(id.clone())
            }
            _ => None,
        })?;
    let store = ctx.store().ok()?;
    let (to, at) = vfarm_service::migrate::moved_to(&store, &id)?;
    Some(format!(
        "instance `{id}` was migrated to {} at {at}: vfarm --data-dir {} instance ls",
        to.display(),
        to.display()
    ))
}

/// Print the error chain on stderr (and the fix, when there is one to name); with
/// `--output json` also an error document on stdout.
pub fn report_error(ctx: &Ctx, err: &anyhow::Error) {
    let mut msg = format!("vfarm: error: {err}");
    for cause in err.chain().skip(1) {
        msg.push_str(&format!("\n  caused by: {cause}"));
    }
    let fix = moved(ctx, err).or_else(|| fix(err));
    if let Some(f) = &fix {
        msg.push_str(&format!("\n  fix: {f}"));
    }
    eprintln!("{msg}");
    if ctx.json() {
        let (code, field) = classify(err);
        let mut doc = serde_json::json!({ "error": { "code": code, "field": field, "message": format!("{err:#}") } });
        if let Some(f) = fix {
            doc["error"]["fix"] = f.into();
        }
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    }
}

/// An input file named on the command line, read whole: one that cannot be read is the
/// caller's input at fault (exit 2, naming the flag or argument), as `image import` says.
pub fn read_input(field: &'static str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        vfarm_service::ServiceError::bad_request(
            field,
            format!("cannot read {}: {e}", path.display()),
        )
        .into()
    })
}

/// [`read_input`] as text.
pub fn read_input_text(field: &'static str, path: &std::path::Path) -> anyhow::Result<String> {
    String::from_utf8(read_input(field, path)?).map_err(|_| {
        vfarm_service::ServiceError::bad_request(
            field,
            format!("{} is not UTF-8 text", path.display()),
        )
        .into()
    })
}

/// Copy a file's content to `out` (a log to the terminal, say); `false` if there is no such
/// file, so each caller decides whether that is an error.
pub fn print_file(path: &std::path::Path, out: &mut dyn std::io::Write) -> anyhow::Result<bool> {
    use anyhow::Context;
    match std::fs::File::open(path) {
        Ok(mut f) => {
            std::io::copy(&mut f, out)?;
            out.flush()?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod fix_tests {
    use super::fix;

    #[test]
    fn a_missing_checkpoint_points_at_checkpoints_not_instances() {
        for (kind, id, want) in [
            (
                "checkpoint",
                "abc123:/x/c.vmstate",
                "`vfarm checkpoint ls abc123` lists its checkpoints; `vfarm instance checkpoint abc123` makes one",
            ),
            ("instance", "web", "`vfarm instance ls` lists the instances"),
        ] {
            let e = anyhow::Error::from(vfarm_driver::DriverError::NotFound {
                kind,
                id: id.into(),
            });
            assert_eq!(fix(&e).as_deref(), Some(want), "{kind}");
        }
    }
}
