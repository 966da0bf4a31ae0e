//! Which actor keys may sign at each point of the log, derived from the log itself.
//!
//! Entry 0 must be a genesis statement signed by the administrator key it introduces. After
//! that, an entry may be signed only by keys the log has introduced; a statement's `actor` must
//! be the name of the key that signs it.

use super::statement::{Action, Statement, STATEMENT_PAYLOAD_TYPE};
use crate::ledger::entry::Entry;
use crate::ledger::keys::PublicKey;
use crate::ledger::verify::Keyring;
use ed25519_dalek::VerifyingKey;
use std::collections::HashMap;

#[derive(Clone, Debug, Default)]
pub struct ActorKeyring {
    keys: HashMap<String, VerifyingKey>,
}

/// The genesis statement of `entry`, if it is one, with the admin key it introduces.
fn genesis(entry: &Entry) -> Option<(Statement, PublicKey)> {
    if entry.envelope.payload_type != STATEMENT_PAYLOAD_TYPE {
        return None;
    }
    let statement = Statement::from_payload(&entry.envelope.payload).ok()?;
    let Action::Genesis { admin_key, .. } = &statement.action;
    let admin = PublicKey::from_vkey(admin_key).ok()?;
    Some((statement, admin))
}

impl ActorKeyring {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Keyring for ActorKeyring {
    fn key(&self, entry: &Entry, keyid: &str) -> Option<VerifyingKey> {
        if entry.seq == 0 {
            let (_, admin) = genesis(entry)?;
            return (admin.key_id().as_str() == keyid).then_some(*admin.verifying_key());
        }
        self.keys.get(keyid).copied()
    }

    fn observe(&mut self, entry: &Entry) -> Result<(), String> {
        if entry.seq == 0 {
            let (statement, admin) = genesis(entry).ok_or("entry 0 is not a genesis statement")?;
            if statement.ledger_id != entry.ledger_id.to_hex() {
                return Err("genesis statement names another ledger".into());
            }
            if statement.actor != admin.name() {
                return Err("genesis statement is not made by the admin it introduces".into());
            }
            self.keys
                .insert(admin.key_id().to_string(), *admin.verifying_key());
            return Ok(());
        }
        if entry.envelope.payload_type == STATEMENT_PAYLOAD_TYPE {
            let statement = Statement::from_payload(&entry.envelope.payload)
                .map_err(|e| format!("statement does not parse: {e}"))?;
            if statement.ledger_id != entry.ledger_id.to_hex() {
                return Err("statement names another ledger".into());
            }
            for s in &entry.envelope.signatures {
                let signer = s
                    .keyid
                    .rsplit_once('+')
                    .map_or(s.keyid.as_str(), |(n, _)| n);
                if signer != statement.actor {
                    return Err(format!(
                        "statement by {} is signed by {}",
                        statement.actor, s.keyid
                    ));
                }
            }
            #[allow(irrefutable_let_patterns)] // more actions come with the registry
            if matches!(statement.action, Action::Genesis { .. }) {
                return Err("a second genesis statement".into());
            }
        }
        Ok(())
    }
}
