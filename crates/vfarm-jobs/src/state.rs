//! Job states and the transitions between them.
//!
//! ```text
//! queued ──claim──▶ starting ──start──▶ running ──exit 0──▶ succeeded
//!   │                  │                   ├──exit ≠0 / walltime / error / lost──▶ failed
//!   │                  ├── error / lost ───┘
//!   └────────────── cancel (any non-final state) ──────────▶ cancelled
//! ```
//!
//! Final states are final: nothing moves a job out of them, which is what makes "a job never
//! runs twice" checkable in one place.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    /// Claimed by a dispatcher; its runner is starting the instance.
    Starting,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Starting,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Starting => "starting",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// Holds capacity (claimed and not yet ended).
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Starting | JobState::Running)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// The command exited (status in the record).
    Exit,
    /// Killed at its wall-time limit.
    Walltime,
    /// Its runner vanished without recording an end (e.g. the host rebooted); never re-run.
    Lost,
    /// Cancelled by a user.
    Cancelled,
    /// vfarm could not run it (instance start, staging…); the message is in the record.
    Error,
    /// The backend (Slurm) refused it after it was recorded; the message says why.
    Refused,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Exit => "exit",
            EndReason::Walltime => "walltime",
            EndReason::Lost => "lost",
            EndReason::Cancelled => "cancelled",
            EndReason::Error => "error",
            EndReason::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<EndReason> {
        [
            EndReason::Exit,
            EndReason::Walltime,
            EndReason::Lost,
            EndReason::Cancelled,
            EndReason::Error,
            EndReason::Refused,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    /// A dispatcher takes the job for start.
    Claim,
    /// The instance runs the command.
    Start,
    /// The command ended with this status.
    Exit {
        code: i32,
    },
    Walltime,
    Lost,
    Error,
    Refused,
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job is {state}: cannot {event}")]
pub struct TransitionError {
    pub state: JobState,
    pub event: &'static str,
}

impl TransitionError {
    pub fn code(&self) -> vfarm_proto::ErrorCode {
        vfarm_proto::ErrorCode::IllegalState
    }
}

fn event_name(e: JobEvent) -> &'static str {
    match e {
        JobEvent::Claim => "start it",
        JobEvent::Start => "mark it running",
        JobEvent::Exit { .. } => "record an exit",
        JobEvent::Walltime => "record a wall-time kill",
        JobEvent::Lost => "mark it lost",
        JobEvent::Error => "record an error",
        JobEvent::Refused => "record a refusal",
        JobEvent::Cancel => "cancel it",
    }
}

/// The state after `event`, and the end reason when that state is final.
pub fn next(
    state: JobState,
    event: JobEvent,
) -> Result<(JobState, Option<EndReason>), TransitionError> {
    use JobEvent as E;
    use JobState as S;
    let to = match (state, event) {
        (S::Queued, E::Claim) => (S::Starting, None),
        (S::Starting, E::Start) => (S::Running, None),
        (S::Starting | S::Running, E::Exit { code: 0 }) => (S::Succeeded, Some(EndReason::Exit)),
        (S::Starting | S::Running, E::Exit { .. }) => (S::Failed, Some(EndReason::Exit)),
        (S::Starting | S::Running, E::Walltime) => (S::Failed, Some(EndReason::Walltime)),
        (S::Starting | S::Running, E::Lost) => (S::Failed, Some(EndReason::Lost)),
        (S::Starting | S::Running, E::Error) => (S::Failed, Some(EndReason::Error)),
        (S::Starting, E::Refused) => (S::Failed, Some(EndReason::Refused)),
        (S::Queued | S::Starting | S::Running, E::Cancel) => {
            (S::Cancelled, Some(EndReason::Cancelled))
        }
        _ => {
            return Err(TransitionError {
                state,
                event: event_name(event),
            })
        }
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path_and_its_endings() {
        assert_eq!(
            next(JobState::Queued, JobEvent::Claim).unwrap(),
            (JobState::Starting, None)
        );
        assert_eq!(
            next(JobState::Starting, JobEvent::Start).unwrap(),
            (JobState::Running, None)
        );
        assert_eq!(
            next(JobState::Running, JobEvent::Exit { code: 0 }).unwrap(),
            (JobState::Succeeded, Some(EndReason::Exit))
        );
        assert_eq!(
            next(JobState::Running, JobEvent::Exit { code: 3 }).unwrap(),
            (JobState::Failed, Some(EndReason::Exit))
        );
        assert_eq!(
            next(JobState::Running, JobEvent::Walltime).unwrap(),
            (JobState::Failed, Some(EndReason::Walltime))
        );
        assert_eq!(
            next(JobState::Starting, JobEvent::Lost).unwrap(),
            (JobState::Failed, Some(EndReason::Lost))
        );
    }

    #[test]
    fn cancel_works_in_every_unfinished_state_and_final_states_are_final() {
        for s in JobState::ALL {
            let r = next(s, JobEvent::Cancel);
            assert_eq!(r.is_ok(), !s.is_final(), "{s}");
        }
        for s in JobState::ALL.into_iter().filter(|s| s.is_final()) {
            for e in [
                JobEvent::Claim,
                JobEvent::Start,
                JobEvent::Exit { code: 0 },
                JobEvent::Walltime,
                JobEvent::Lost,
                JobEvent::Error,
            ] {
                let err = next(s, e).unwrap_err();
                assert_eq!(err.state, s);
                assert_eq!(err.code().as_str(), "illegal_state");
            }
        }
    }

    #[test]
    fn a_job_is_claimed_only_from_queued() {
        for s in JobState::ALL {
            assert_eq!(next(s, JobEvent::Claim).is_ok(), s == JobState::Queued);
        }
    }

    #[test]
    fn names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(EndReason::parse("walltime"), Some(EndReason::Walltime));
        assert_eq!(JobState::parse("bogus"), None);
    }
}
