//! The sbatch command line and batch script for a [`BatchJob`], as pure functions.
//!
//! Resources and paths go on sbatch's command line (exact argv, no `#SBATCH` line parsing
//! or quoting rules involved); the script itself only exports the job's environment and
//! `exec`s its argv, every word single-quoted, so the job's exit status is the command's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// One batch job: what runs, where its output goes, and what it needs from a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchJob {
    /// Slurm job name (`--job-name`), shown by squeue.
    pub name: String,
    /// Partition; `None` = the cluster's default partition.
    pub partition: Option<String>,
    /// CPUs for the single task (`--cpus-per-task`), at least 1.
    pub cpus: u32,
    /// Memory per node in MiB (`--mem`); `None` = the cluster's default.
    pub memory_mib: Option<u64>,
    /// Wall-time limit (`--time`, rounded up to whole minutes, Slurm's unit); `None` = the
    /// partition's limit.
    pub time_limit: Option<Duration>,
    /// Node features the job needs, all of them (`--constraint=a&b`).
    pub features: Vec<String>,
    /// Working directory on the node (absolute).
    pub workdir: PathBuf,
    /// File for the job's stdout on the node (absolute).
    pub stdout: PathBuf,
    /// File for the job's stderr on the node (absolute).
    pub stderr: PathBuf,
    /// The command and its arguments; `argv[0]` is looked up on the node's PATH.
    pub argv: Vec<String>,
    /// Extra environment variables, in order.
    pub env: Vec<(String, String)>,
}

impl BatchJob {
    /// A job with one CPU, default memory and time, no features, running `argv` in `workdir`
    /// with stdout/stderr in `workdir/{name}.out|.err`.
    pub fn new(name: impl Into<String>, workdir: impl Into<PathBuf>, argv: Vec<String>) -> Self {
        let name = name.into();
        let workdir = workdir.into();
        BatchJob {
            stdout: workdir.join(format!("{name}.out")),
            stderr: workdir.join(format!("{name}.err")),
            name,
            partition: None,
            cpus: 1,
            memory_mib: None,
            time_limit: None,
            features: Vec::new(),
            workdir,
            argv,
            env: Vec::new(),
        }
    }

    /// Checks every field; the first problem is returned naming the field.
    pub fn validate(&self) -> Result<()> {
        check_word("name", &self.name)?;
        if let Some(p) = &self.partition {
            check_word("partition", p)?;
        }
        if self.cpus == 0 {
            return Err(Error::invalid("cpus", "must be at least 1"));
        }
        if self.memory_mib == Some(0) {
            return Err(Error::invalid("memory_mib", "must be at least 1 MiB"));
        }
        if let Some(t) = self.time_limit {
            if t.is_zero() {
                return Err(Error::invalid("time_limit", "must be longer than 0 s"));
            }
        }
        for f in &self.features {
            check_feature("features", f)?;
        }
        check_path("workdir", &self.workdir)?;
        check_path("stdout", &self.stdout)?;
        check_path("stderr", &self.stderr)?;
        if self.argv.is_empty() {
            return Err(Error::invalid("argv", "is empty: the job needs a command"));
        }
        if self.argv[0].is_empty() {
            return Err(Error::invalid("argv[0]", "is empty"));
        }
        for (i, a) in self.argv.iter().enumerate() {
            if a.contains('\0') {
                return Err(Error::invalid(format!("argv[{i}]"), "contains a NUL byte"));
            }
        }
        for (k, v) in &self.env {
            let ok = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(Error::invalid(
                    format!("env {k:?}"),
                    "a variable name is letters, digits and '_', not starting with a digit",
                ));
            }
            if v.contains('\0') {
                return Err(Error::invalid(
                    format!("env {k}"),
                    "value contains a NUL byte",
                ));
            }
        }
        Ok(())
    }
}

fn check_word(field: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(field, "is empty"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || *c == ',')
    {
        return Err(Error::invalid(
            field,
            format!("{s:?} contains {c:?} (no spaces, commas or control characters)"),
        ));
    }
    Ok(())
}

/// Slurm feature names: letters, digits, `_`, `-`, `.` — anything else (`&|,[]()*!:` or
/// spaces) has a meaning in constraint expressions or node lists.
pub(crate) fn check_feature(field: &str, f: &str) -> Result<()> {
    if f.is_empty() {
        return Err(Error::invalid(field, "a feature name is empty"));
    }
    if let Some(c) = f
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(Error::invalid(
            field,
            format!("feature {f:?} contains {c:?} (allowed: letters, digits, '_', '-', '.')"),
        ));
    }
    Ok(())
}

fn check_path(field: &str, p: &Path) -> Result<()> {
    let Some(s) = p.to_str() else {
        return Err(Error::invalid(field, "is not valid UTF-8"));
    };
    if !p.is_absolute() {
        return Err(Error::invalid(
            field,
            format!("{s:?} is not absolute (it is a path on the compute node)"),
        ));
    }
    if s.contains(['\n', '\r', '\0']) {
        return Err(Error::invalid(field, "contains a line break or NUL byte"));
    }
    // sbatch treats a backslash as "no % substitution at all"; escaping % cannot combine
    // with that, so such names are refused rather than silently mangled.
    if s.contains('\\') {
        return Err(Error::invalid(field, "contains a backslash"));
    }
    Ok(())
}

/// sbatch expands `%j`, `%u`, … in output file names; `%%` is a literal `%`.
fn escape_filename_pattern(p: &Path) -> String {
    p.to_string_lossy().replace('%', "%%")
}

/// Whole minutes, rounded up: Slurm's time limits have minute resolution.
pub fn time_limit_minutes(d: Duration) -> u64 {
    d.as_secs().div_ceil(60).max(1)
}

/// The arguments after `sbatch` (the script is read from stdin). Validates the job first.
pub fn sbatch_args(job: &BatchJob) -> Result<Vec<String>> {
    job.validate()?;
    let mut a = vec![
        "--parsable".to_string(),
        format!("--job-name={}", job.name),
        "--nodes=1".into(),
        "--ntasks=1".into(),
        format!("--cpus-per-task={}", job.cpus),
        // The node's login environment of the submitting user, not the vfarm service's own
        // environment; the job's variables are exported by the script.
        "--export=NONE".into(),
        format!("--chdir={}", job.workdir.display()),
        format!("--output={}", escape_filename_pattern(&job.stdout)),
        format!("--error={}", escape_filename_pattern(&job.stderr)),
        // vfarm decides about retries; Slurm must not run a job twice after a node failure.
        "--no-requeue".into(),
    ];
    if let Some(p) = &job.partition {
        a.push(format!("--partition={p}"));
    }
    if let Some(m) = job.memory_mib {
        a.push(format!("--mem={m}M"));
    }
    if let Some(t) = job.time_limit {
        a.push(format!("--time={}", time_limit_minutes(t)));
    }
    if !job.features.is_empty() {
        a.push(format!("--constraint={}", job.features.join("&")));
    }
    Ok(a)
}

/// Single-quotes a word for POSIX sh: `'` becomes `'\''`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch script: environment exports, then `exec` of argv. Validates the job first.
pub fn render_script(job: &BatchJob) -> Result<String> {
    job.validate()?;
    let mut s =
        String::from("#!/bin/sh\n# vfarm batch job: resources are on the sbatch command line.\n");
    s.push_str(&format!("# job name: {}\n", job.name));
    for (k, v) in &job.env {
        s.push_str(&format!("export {k}={}\n", sh_quote(v)));
    }
    s.push_str("exec");
    for a in &job.argv {
        s.push(' ');
        s.push_str(&sh_quote(a));
    }
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> BatchJob {
        let mut j = BatchJob::new(
            "vfarm-job-42",
            "/srv/jobs/42",
            vec!["printf".into(), "%s\\n".into(), "it's".into(), "a b".into()],
        );
        j.env = vec![
            ("GREETING".into(), "hello world".into()),
            ("QUOTE".into(), "don't $HOME `x`".into()),
        ];
        j
    }

    #[test]
    fn script_golden() {
        let got = render_script(&job()).unwrap();
        let want = r#"#!/bin/sh
# vfarm batch job: resources are on the sbatch command line.
# job name: vfarm-job-42
export GREETING='hello world'
export QUOTE='don'\''t $HOME `x`'
exec 'printf' '%s\n' 'it'\''s' 'a b'
"#;
        assert_eq!(got, want);
    }

    #[test]
    fn args_minimal() {
        let got = sbatch_args(&job()).unwrap();
        assert_eq!(
            got,
            vec![
                "--parsable",
                "--job-name=vfarm-job-42",
                "--nodes=1",
                "--ntasks=1",
                "--cpus-per-task=1",
                "--export=NONE",
                "--chdir=/srv/jobs/42",
                "--output=/srv/jobs/42/vfarm-job-42.out",
                "--error=/srv/jobs/42/vfarm-job-42.err",
                "--no-requeue",
            ]
        );
    }

    #[test]
    fn args_resources() {
        let mut j = job();
        j.partition = Some("batch".into());
        j.cpus = 4;
        j.memory_mib = Some(2048);
        j.time_limit = Some(Duration::from_secs(3601));
        j.features = vec!["vfarm-os-debian-12-x86_64".into(), "ssd".into()];
        j.stdout = "/o/100%.out".into();
        let got = sbatch_args(&j).unwrap();
        assert!(got.contains(&"--cpus-per-task=4".to_string()));
        assert!(got.contains(&"--partition=batch".to_string()));
        assert!(got.contains(&"--mem=2048M".to_string()));
        assert!(got.contains(&"--time=61".to_string()));
        assert!(got.contains(&"--constraint=vfarm-os-debian-12-x86_64&ssd".to_string()));
        assert!(got.contains(&"--output=/o/100%%.out".to_string()));
    }

    #[test]
    fn minutes_round_up() {
        assert_eq!(time_limit_minutes(Duration::from_secs(1)), 1);
        assert_eq!(time_limit_minutes(Duration::from_secs(60)), 1);
        assert_eq!(time_limit_minutes(Duration::from_secs(61)), 2);
        assert_eq!(time_limit_minutes(Duration::from_secs(7200)), 120);
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidInput { field, .. } => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn bad_fields_are_named() {
        type Mutate = Box<dyn Fn(&mut BatchJob)>;
        let cases: Vec<(&str, Mutate)> = vec![
            ("name", Box::new(|j| j.name = "a b".into())),
            ("partition", Box::new(|j| j.partition = Some(String::new()))),
            ("cpus", Box::new(|j| j.cpus = 0)),
            ("memory_mib", Box::new(|j| j.memory_mib = Some(0))),
            (
                "time_limit",
                Box::new(|j| j.time_limit = Some(Duration::ZERO)),
            ),
            ("features", Box::new(|j| j.features = vec!["a|b".into()])),
            ("workdir", Box::new(|j| j.workdir = "rel/dir".into())),
            ("stdout", Box::new(|j| j.stdout = "/a\nb".into())),
            ("stderr", Box::new(|j| j.stderr = "/a\\b".into())),
            ("argv", Box::new(|j| j.argv.clear())),
            ("argv[0]", Box::new(|j| j.argv[0].clear())),
            ("argv[2]", Box::new(|j| j.argv[2] = "a\0b".into())),
            (
                "env \"1X\"",
                Box::new(|j| j.env.push(("1X".into(), "v".into()))),
            ),
            (
                "env \"A-B\"",
                Box::new(|j| j.env.push(("A-B".into(), "v".into()))),
            ),
        ];
        for (want, mutate) in cases {
            let mut j = job();
            mutate(&mut j);
            let e = render_script(&j).unwrap_err();
            assert_eq!(e.code().as_str(), "invalid_job");
            assert_eq!(field_of(e), want);
            assert!(sbatch_args(&j).is_err());
        }
    }
}
