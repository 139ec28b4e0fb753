//! What `/proc/<pid>/stat` says about a host process: the fields the drivers and the job
//! runner need (run state, CPU time, start time), parsed in one place.

/// The parsed fields; times are in clock ticks (`USER_HZ`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead) …
    pub state: char,
    /// Fields 14 and 15.
    pub utime: u64,
    pub stime: u64,
    /// Field 22: when the process started, since boot. Pid plus start time identifies a
    /// process even after its pid is reused.
    pub start_time: u64,
}

impl ProcStat {
    /// Exited (a zombie waiting to be reaped, or dead): it runs nothing and holds nothing.
    pub fn ended(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Parse the text of `/proc/<pid>/stat`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) may hold spaces and parentheses; everything after the last
    // ')' is space separated, starting with field 3 (state) at index 0.
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    Some(ProcStat {
        state: f.first()?.chars().next()?,
        utime: ticks(11)?,
        stime: ticks(12)?,
        start_time: ticks(19)?,
    })
}

/// The process's stat, if it exists (zombies included).
pub fn stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Start time of a live, non-zombie process; `None` if it is gone.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).filter(|s| !s.ended()).map(|s| s.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_name_with_spaces_and_parentheses() {
        let text = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 987654 1000 100";
        let s = parse_stat(text).unwrap();
        assert_eq!(
            s,
            ProcStat {
                state: 'S',
                utime: 250,
                stime: 50,
                start_time: 987654
            }
        );
        assert!(!s.ended());
        assert!(parse_stat("4242 (x) Z 1").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        assert!(start_time(std::process::id()).is_some());
        assert!(start_time(u32::MAX - 1).is_none());
    }
}
