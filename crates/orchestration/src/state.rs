//! States and statuses, with Medusa's names and allowed transitions (§3.1 and §3.3).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The state of a whole transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionState {
    /// Created, not yet begun.
    NotStarted,
    /// Running steps forward.
    Invoking,
    /// A failure or a cancel happened; in-flight steps are awaited before compensating.
    WaitingToCompensate,
    /// Running compensations, children before parents.
    Compensating,
    /// Every step finished forward.
    Done,
    /// Every step that ran was compensated.
    Reverted,
    /// A compensation failed for good.
    Failed,
}

impl TransactionState {
    /// Whether the transaction has reached `done`, `reverted` or `failed`.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Done | Self::Reverted | Self::Failed)
    }
    /// Medusa's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "not_started",
            Self::Invoking => "invoking",
            Self::WaitingToCompensate => "waiting_to_compensate",
            Self::Compensating => "compensating",
            Self::Done => "done",
            Self::Reverted => "reverted",
            Self::Failed => "failed",
        }
    }
}

/// The state of one side (invoke or compensate) of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Eligible, not yet run.
    NotStarted,
    /// The invoke handler is running or awaited.
    Invoking,
    /// The compensate handler is running or awaited.
    Compensating,
    /// The invoke finished.
    Done,
    /// The compensation finished.
    Reverted,
    /// Failed for good.
    Failed,
    /// The compensate side before compensation begins.
    Dormant,
    /// The handler asked to be skipped.
    Skipped,
    /// Skipped because an ancestor failed under `skipOnPermanentFailure`.
    SkippedFailure,
    /// The step or the transaction timed out while the step ran.
    Timeout,
}

impl StepState {
    /// Medusa's name of the state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotStarted => "not_started",
            Self::Invoking => "invoking",
            Self::Compensating => "compensating",
            Self::Done => "done",
            Self::Reverted => "reverted",
            Self::Failed => "failed",
            Self::Dormant => "dormant",
            Self::Skipped => "skipped",
            Self::SkippedFailure => "skipped_failure",
            Self::Timeout => "timeout",
        }
    }

    /// Whether Medusa allows moving from `self` to `to` (the same state is always allowed).
    pub fn can_become(self, to: StepState) -> bool {
        use StepState::*;
        self == to
            || matches!(
                (self, to),
                (Dormant, NotStarted)
                    | (
                        NotStarted,
                        Invoking | Compensating | Failed | Skipped | SkippedFailure
                    )
                    | (Invoking, Failed | Done | Timeout | Skipped)
                    | (Compensating, Reverted | Failed)
                    | (Done, Compensating)
            )
    }
}

/// The status of one side of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StepStatus {
    /// Nothing in progress.
    #[serde(rename = "idle")]
    Idle,
    /// Finished successfully.
    #[serde(rename = "ok")]
    Ok,
    /// The handler runs, or an async step waits for its response.
    #[serde(rename = "waiting_response")]
    Waiting,
    /// Failed, will be retried.
    #[serde(rename = "temp_failure")]
    TemporaryFailure,
    /// Failed for good.
    #[serde(rename = "permanent_failure")]
    PermanentFailure,
}

impl StepStatus {
    /// Medusa's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Ok => "ok",
            Self::Waiting => "waiting_response",
            Self::TemporaryFailure => "temp_failure",
            Self::PermanentFailure => "permanent_failure",
        }
    }

    /// Whether Medusa allows moving from `self` to `to`. Unlike Medusa 2.21.2, `ok` is
    /// terminal-safe: asking an `ok` step to fail is refused by the caller, not half-applied.
    pub fn can_become(self, to: StepStatus) -> bool {
        use StepStatus::*;
        self == to
            || to == Waiting
            || matches!(
                (self, to),
                (Waiting, Ok | TemporaryFailure | PermanentFailure)
                    | (TemporaryFailure, Idle | PermanentFailure)
                    | (PermanentFailure, Idle)
            )
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(TransactionState, StepState, StepStatus, HandlerType);

/// Which handler of a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandlerType {
    /// The forward action.
    Invoke,
    /// The compensation.
    Compensate,
}

impl HandlerType {
    /// Medusa's name of the handler type.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invoke => "invoke",
            Self::Compensate => "compensate",
        }
    }
}

/// The state and status of one side of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SideState {
    /// Where the side is in its life.
    pub state: StepState,
    /// What it is doing now.
    pub status: StepStatus,
}

/// Everything the state machine tracks about one step of one transaction.
///
/// Times are milliseconds from the engine's [`Clock`](crate::Clock).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    /// The invoke side.
    pub invoke: SideState,
    /// The compensate side.
    pub compensate: SideState,
    /// Whether the step has switched to compensation (Medusa's `stepFailed`).
    pub compensating: bool,
    /// Handler calls of the current side (reset when compensation begins).
    pub attempts: u32,
    /// Failures of the current side (reset when compensation begins).
    pub failures: u32,
    /// When the current side was last attempted.
    pub last_attempt: Option<u64>,
    /// When the step first started (spans retries).
    pub started_at: Option<u64>,
    /// When the step timed out.
    pub timed_out_at: Option<u64>,
    /// When a retry was last scheduled (cleared when it runs).
    pub retry_rescheduled_at: Option<u64>,
    /// Whether a retry timer was ever scheduled.
    pub has_scheduled_retry: bool,
    /// When an `autoRetry: false` step parked after a temporary failure.
    pub temporary_failed_at: Option<u64>,
}

impl Default for StepRun {
    fn default() -> Self {
        StepRun {
            invoke: SideState {
                state: StepState::NotStarted,
                status: StepStatus::Idle,
            },
            compensate: SideState {
                state: StepState::Dormant,
                status: StepStatus::Idle,
            },
            compensating: false,
            attempts: 0,
            failures: 0,
            last_attempt: None,
            started_at: None,
            timed_out_at: None,
            retry_rescheduled_at: None,
            has_scheduled_retry: false,
            temporary_failed_at: None,
        }
    }
}

impl StepRun {
    /// The side in effect: compensate once compensation began, else invoke.
    pub fn side(&self) -> &SideState {
        if self.compensating {
            &self.compensate
        } else {
            &self.invoke
        }
    }
    /// The side in effect, mutably.
    pub fn side_mut(&mut self) -> &mut SideState {
        if self.compensating {
            &mut self.compensate
        } else {
            &mut self.invoke
        }
    }
    /// The handler type of the side in effect.
    pub fn handler_type(&self) -> HandlerType {
        if self.compensating {
            HandlerType::Compensate
        } else {
            HandlerType::Invoke
        }
    }
    /// Switches to compensation, resetting the attempt counters.
    pub fn begin_compensation(&mut self) {
        if self.compensating {
            return;
        }
        self.compensating = true;
        self.attempts = 0;
        self.failures = 0;
        self.last_attempt = None;
    }
    /// Whether the state of the side in effect may become `to`.
    pub fn can_change_state(&self, to: StepState) -> bool {
        self.side().state.can_become(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_medusas() {
        assert_eq!(
            serde_json::to_string(&StepStatus::Waiting).unwrap(),
            "\"waiting_response\""
        );
        assert_eq!(
            serde_json::to_string(&StepState::SkippedFailure).unwrap(),
            "\"skipped_failure\""
        );
        assert_eq!(
            TransactionState::WaitingToCompensate.to_string(),
            "waiting_to_compensate"
        );
    }

    #[test]
    fn transitions_follow_medusa() {
        assert!(StepState::Dormant.can_become(StepState::NotStarted));
        assert!(!StepState::Dormant.can_become(StepState::Compensating));
        assert!(StepState::Done.can_become(StepState::Compensating));
        assert!(!StepState::Reverted.can_become(StepState::Compensating));
        assert!(!StepStatus::Ok.can_become(StepStatus::TemporaryFailure));
        assert!(StepStatus::Ok.can_become(StepStatus::Waiting));
        assert!(StepStatus::TemporaryFailure.can_become(StepStatus::Idle));
    }
}
