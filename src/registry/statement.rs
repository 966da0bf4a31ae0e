//! Signed statements: what an actor asks the ledger to record, as the JSON payload of a DSSE
//! envelope with payload type [`STATEMENT_PAYLOAD_TYPE`].
//!
//! The payload bytes are stored exactly as the actor signed them, so their JSON spelling
//! (field order, whitespace) never matters to verification; it only has to parse.

use serde::{Deserialize, Serialize};

/// DSSE payload type of PromptLedger statements.
pub const STATEMENT_PAYLOAD_TYPE: &str = "application/vnd.promptledger.statement.v1+json";

/// A request signed by an actor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// What the statement asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Statement {
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("statements serialize")
    }

    pub fn from_payload(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }
}
