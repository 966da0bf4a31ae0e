//! The log as audit events: what each statement says (kind, actor, prompt, version,
//! environment) and the filters of `ListEvents`. Pure.

use super::model::Environment;
use super::statement::{Action, Statement};

/// The fields of a statement an audit query filters on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFacts<'a> {
    pub kind: &'static str,
    pub actor: &'a str,
    pub prompt: Option<&'a str>,
    pub version: Option<u64>,
    pub environment: Option<Environment>,
    pub break_glass: bool,
}

impl<'a> EventFacts<'a> {
    pub fn of(st: &'a Statement) -> Self {
        let (version, environment) = match &st.action {
            Action::CommitVersion { .. } => (None, None),
            Action::RecordEvaluation { version, .. } => (Some(*version), None),
            Action::ApproveVersion {
                version,
                environment,
                ..
            }
            | Action::RevokeApproval {
                version,
                environment,
                ..
            }
            | Action::PromoteVersion {
                version,
                environment,
                ..
            }
            | Action::RollbackPrompt {
                version,
                environment,
                ..
            }
            | Action::BreakGlassPromote {
                version,
                environment,
                ..
            } => (Some(*version), Some(*environment)),
            _ => (None, None),
        };
        EventFacts {
            kind: st.action.kind(),
            actor: &st.actor,
            prompt: st.action.prompt(),
            version,
            environment,
            break_glass: matches!(st.action, Action::BreakGlassPromote { .. }),
        }
    }
}

/// What `ListEvents` keeps: every filter that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub actor: Option<String>,
    pub prompt: Option<String>,
    pub kind: Option<String>,
    pub environment: Option<Environment>,
}

impl EventFilter {
    pub fn matches(&self, facts: &EventFacts<'_>) -> bool {
        self.actor.as_deref().is_none_or(|a| a == facts.actor)
            && self
                .prompt
                .as_deref()
                .is_none_or(|p| Some(p) == facts.prompt)
            && self.kind.as_deref().is_none_or(|k| k == facts.kind)
            && self
                .environment
                .is_none_or(|e| Some(e) == facts.environment)
    }
}
