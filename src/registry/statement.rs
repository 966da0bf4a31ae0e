//! Signed statements: what an actor asks the ledger to record, as the JSON payload of a DSSE
//! envelope with payload type [`STATEMENT_PAYLOAD_TYPE`]. Every accepted statement is one
//! ledger entry: the statements *are* the domain events.
//!
//! The payload bytes are stored exactly as the actor signed them, so their JSON spelling
//! (field order, whitespace) never matters to verification; it only has to parse.

use super::model::{Environment, Split};
use crate::policy::PolicyFiles;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// DSSE payload type of PromptLedger statements.
pub const STATEMENT_PAYLOAD_TYPE: &str = "application/vnd.promptledger.statement.v1+json";

/// A request signed by an actor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// Hex ledger id: a statement is only valid on the ledger it names.
    pub ledger_id: String,
    /// The acting actor's name; it must be the name of the signing key.
    pub actor: String,
    /// When the actor signed, milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
    /// Random, unique per actor: a replayed statement is recognised by it.
    pub nonce: String,
    pub action: Action,
}

/// What the statement asks for. The `type` tag names the event kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Entry 0 of every ledger: creates it and its first administrator.
    Genesis {
        /// Checkpoint origin and ledger key name.
        origin: String,
        /// The ledger key's verifier key.
        ledger_key: String,
        /// The first administrator's verifier key; it signs this statement.
        admin_key: String,
    },
    /// Asks for a read session token. Never appended to the log.
    OpenSession {},
    /// Registers an actor (person, CI pipeline, service) with a key and role assignments:
    /// `role` (every namespace) or `role@namespace`.
    RegisterActor {
        name: String,
        key: String,
        roles: Vec<String>,
    },
    /// Replaces an actor's role assignments from this entry on.
    SetActorRoles { name: String, roles: Vec<String> },
    /// Puts new policy files in force from this entry on.
    SetPolicy { files: PolicyFiles },
    /// Replaces an actor's key; the old key stops being valid at this entry.
    RotateKey { name: String, new_key: String },
    /// Revokes an actor and all its keys from this entry on.
    RevokeActor { name: String, reason: String },
    /// Creates an empty prompt.
    CreatePrompt { prompt: String, description: String },
    /// Commits a new version of a prompt on top of `parent_version` (absent for the first).
    CommitVersion {
        prompt: String,
        parent_version: Option<u64>,
        template: String,
        model: String,
        parameters: BTreeMap<String, serde_json::Value>,
        variables: Vec<String>,
        message: String,
        /// `sha256:<hex>` of the canonical content; see [`super::model::content_hash`].
        content_hash: String,
    },
    /// A CI system records an evaluation result for an exact content hash.
    RecordEvaluation {
        prompt: String,
        version: u64,
        content_hash: String,
        suite: String,
        score: f64,
        threshold: f64,
        passed: bool,
        evaluator: String,
        evidence_digest: String,
        evidence_uri: String,
    },
    /// Approves a version (by content hash) for an environment.
    ApproveVersion {
        prompt: String,
        version: u64,
        content_hash: String,
        environment: Environment,
    },
    /// Withdraws an earlier approval.
    RevokeApproval {
        prompt: String,
        version: u64,
        environment: Environment,
        reason: String,
    },
    /// Makes a version live in an environment, past its gates: alone, or with `rollout`
    /// weights over it and versions live there now (90/10).
    PromoteVersion {
        prompt: String,
        version: u64,
        environment: Environment,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rollout: Vec<Split>,
        /// Compare-and-swap: the sequence number of the deployment the actor saw live (0: none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_deployment: Option<u64>,
    },
    /// Puts back a version that was live in the environment before.
    RollbackPrompt {
        prompt: String,
        version: u64,
        environment: Environment,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_deployment: Option<u64>,
    },
    /// Promotes past the gates in an emergency. Needs the `break_glass` permission and a
    /// reason; flagged in the deployment, the history and every audit view.
    BreakGlassPromote {
        prompt: String,
        version: u64,
        environment: Environment,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        rollout: Vec<Split>,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_deployment: Option<u64>,
    },
}

impl Action {
    /// The event kind, as in the JSON `type` tag.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Genesis { .. } => "genesis",
            Action::OpenSession {} => "open_session",
            Action::RegisterActor { .. } => "register_actor",
            Action::SetActorRoles { .. } => "set_actor_roles",
            Action::SetPolicy { .. } => "set_policy",
            Action::RotateKey { .. } => "rotate_key",
            Action::RevokeActor { .. } => "revoke_actor",
            Action::CreatePrompt { .. } => "create_prompt",
            Action::CommitVersion { .. } => "commit_version",
            Action::RecordEvaluation { .. } => "record_evaluation",
            Action::ApproveVersion { .. } => "approve_version",
            Action::RevokeApproval { .. } => "revoke_approval",
            Action::PromoteVersion { .. } => "promote_version",
            Action::RollbackPrompt { .. } => "rollback_prompt",
            Action::BreakGlassPromote { .. } => "break_glass_promote",
        }
    }

    /// The prompt the action concerns, if any.
    pub fn prompt(&self) -> Option<&str> {
        match self {
            Action::CreatePrompt { prompt, .. }
            | Action::CommitVersion { prompt, .. }
            | Action::RecordEvaluation { prompt, .. }
            | Action::ApproveVersion { prompt, .. }
            | Action::RevokeApproval { prompt, .. }
            | Action::PromoteVersion { prompt, .. }
            | Action::RollbackPrompt { prompt, .. }
            | Action::BreakGlassPromote { prompt, .. } => Some(prompt),
            _ => None,
        }
    }
}

impl Statement {
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("statements serialize")
    }

    pub fn from_payload(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}
