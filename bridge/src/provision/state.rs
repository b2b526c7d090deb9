//! The states of a provisioning record and of its steps, as explicit transition tables.

use serde::{Deserialize, Serialize};

/// Where a host request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum HostState {
    /// Its objects are being made (or, after a crash, will be made by the next server).
    Creating,
    /// A step failed; what was made is being removed.
    RollingBack,
    /// Every object is made; the host is provisioning or running (see `printableStatus`).
    Created,
    /// Rolled back: nothing the request made is left. The error names the step.
    Failed,
    /// `DELETE` was asked; its objects are going.
    Deleting,
    /// Every object is gone. The record stays.
    Deleted,
}

pub const HOST_STATES: [HostState; 6] = [
    HostState::Creating,
    HostState::RollingBack,
    HostState::Created,
    HostState::Failed,
    HostState::Deleting,
    HostState::Deleted,
];

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Creating => "Creating",
            HostState::RollingBack => "RollingBack",
            HostState::Created => "Created",
            HostState::Failed => "Failed",
            HostState::Deleting => "Deleting",
            HostState::Deleted => "Deleted",
        }
    }

    pub fn parse(s: &str) -> Option<HostState> {
        HOST_STATES.into_iter().find(|h| h.as_str() == s)
    }

    /// The transition table: every move a record may make.
    pub fn may_become(self, next: HostState) -> bool {
        use HostState::*;
        matches!(
            (self, next),
            (Creating, Created)
                | (Creating, RollingBack)
                | (RollingBack, Failed)
                | (Created, Deleting)
                | (Deleting, Deleted)
        )
    }

    /// A record someone still has to act on: the server resumes these after a restart.
    pub fn unfinished(self) -> bool {
        matches!(self, HostState::Creating | HostState::RollingBack | HostState::Deleting)
    }
}

/// Where one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
    /// Its object was made and then removed by a rollback.
    RolledBack,
    /// Never run: an earlier step failed.
    Skipped,
}

pub const STEP_STATES: [StepState; 6] = [
    StepState::Pending,
    StepState::Running,
    StepState::Done,
    StepState::Failed,
    StepState::RolledBack,
    StepState::Skipped,
];

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "Pending",
            StepState::Running => "Running",
            StepState::Done => "Done",
            StepState::Failed => "Failed",
            StepState::RolledBack => "RolledBack",
            StepState::Skipped => "Skipped",
        }
    }

    pub fn parse(s: &str) -> Option<StepState> {
        STEP_STATES.into_iter().find(|h| h.as_str() == s)
    }

    /// The transition table. A step interrupted by a crash is Running; the next server either
    /// finishes it (Done) or rolls it back.
    pub fn may_become(self, next: StepState) -> bool {
        use StepState::*;
        matches!(
            (self, next),
            (Pending, Running)
                | (Pending, Skipped)
                | (Running, Done)
                | (Running, Failed)
                | (Running, RolledBack)
                | (Done, RolledBack)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_transition_is_decided_by_the_table() {
        use HostState::*;
        let allowed = [
            (Creating, Created),
            (Creating, RollingBack),
            (RollingBack, Failed),
            (Created, Deleting),
            (Deleting, Deleted),
        ];
        for from in HOST_STATES {
            for to in HOST_STATES {
                assert_eq!(from.may_become(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
            assert_eq!(HostState::parse(from.as_str()), Some(from));
        }
        // Terminal states go nowhere.
        for to in HOST_STATES {
            assert!(!Failed.may_become(to) && !Deleted.may_become(to));
        }
    }

    #[test]
    fn every_step_transition_is_decided_by_the_table() {
        use StepState::*;
        let allowed = [
            (Pending, Running),
            (Pending, Skipped),
            (Running, Done),
            (Running, Failed),
            (Running, RolledBack),
            (Done, RolledBack),
        ];
        for from in STEP_STATES {
            for to in STEP_STATES {
                assert_eq!(from.may_become(to), allowed.contains(&(from, to)), "{from:?} -> {to:?}");
            }
            assert_eq!(StepState::parse(from.as_str()), Some(from));
        }
    }
}
