//! What a long command is doing, while it waits: a spinner with the current step and the
//! time so far, on a terminal only. With `--output json`, or stderr not a terminal (a pipe,
//! a log file, CI), nothing is shown: the result alone is the output.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::ctx::Ctx;

/// Whether this command may draw progress on stderr.
pub fn shown(ctx: &Ctx) -> bool {
    !ctx.json() && std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
}

/// A spinner naming the current step; cleared when dropped, so the result prints alone.
pub struct Steps {
    bar: Option<ProgressBar>,
}

impl Steps {
    /// Steps of `what` (e.g. `instance web`).
    pub fn new(ctx: &Ctx) -> Steps {
        let bar = shown(ctx).then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")
                    .expect("valid template"),
            );
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Steps { bar }
    }

    pub fn step(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_message(msg.into());
        }
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// A tool's phase as one short line: mmdebstrap names a hook by its whole shell command.
pub fn short_phase(phase: &str) -> String {
    let first = phase.lines().next().unwrap_or("");
    let p = match first.split_once(" in shell:") {
        Some((head, _)) => head,
        None => first,
    };
    const MAX: usize = 80;
    match p.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &p[..i]),
        None => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::short_phase;

    #[test]
    fn phases_are_one_short_line() {
        assert_eq!(
            short_phase("running --customize-hook in shell: sh -c 'chroot \"$1\" apt-get install -y linux-image-cloud-amd64 && …'"),
            "running --customize-hook"
        );
        assert_eq!(short_phase("downloading packages"), "downloading packages");
        assert_eq!(short_phase(&"x".repeat(200)).chars().count(), 81);
        assert_eq!(short_phase("a\nb"), "a");
    }
}
