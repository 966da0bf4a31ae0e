//! Which actor keys may sign at each point of the log, derived from the log itself by
//! replaying the projection: the verifier's keyring *is* the registry state.
//!
//! Entry 0 must be a genesis statement signed by the administrator key it introduces. After
//! that, an entry may be signed only by keys valid at that point (registered, not rotated away,
//! actor not revoked), and every statement must pass [`State::decide`] against the state before
//! it: replay reproduces every decision the server made.

use super::state::{Event, State};
use super::statement::{Action, Statement, STATEMENT_PAYLOAD_TYPE};
use crate::ledger::entry::Entry;
use crate::ledger::keys::PublicKey;
use crate::ledger::verify::Keyring;
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, Default)]
pub struct RegistryKeyring {
    state: State,
}

/// The admin key a genesis entry introduces.
fn genesis_admin(entry: &Entry) -> Option<PublicKey> {
    if entry.envelope.payload_type != STATEMENT_PAYLOAD_TYPE {
        return None;
    }
    match Statement::from_payload(&entry.envelope.payload)
        .ok()?
        .action
    {
        Action::Genesis { admin_key, .. } => PublicKey::from_vkey(&admin_key).ok(),
        _ => None,
    }
}

impl RegistryKeyring {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state replayed so far.
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn into_state(self) -> State {
        self.state
    }
}

impl Keyring for RegistryKeyring {
    fn key(&self, entry: &Entry, keyid: &str) -> Option<VerifyingKey> {
        if entry.seq == 0 {
            let admin = genesis_admin(entry)?;
            return (admin.key_id().as_str() == keyid).then_some(*admin.verifying_key());
        }
        self.state.signing_key(keyid).map(|(_, key)| key)
    }

    fn observe(&mut self, entry: &Entry) -> Result<(), String> {
        if entry.envelope.payload_type != STATEMENT_PAYLOAD_TYPE {
            // The core allows foreign payloads signed by valid keys; only entry 0 is special.
            return if entry.seq == 0 {
                Err("entry 0 is not a genesis statement".into())
            } else {
                Ok(())
            };
        }
        let statement = Statement::from_payload(&entry.envelope.payload)
            .map_err(|e| format!("statement does not parse: {e}"))?;
        if statement.ledger_id != entry.ledger_id.to_hex() {
            return Err("statement names another ledger".into());
        }
        if entry.seq == 0 {
            let admin = genesis_admin(entry).ok_or("entry 0 is not a genesis statement")?;
            if statement.actor != admin.name() {
                return Err("genesis statement is not made by the admin it introduces".into());
            }
        }
        let signer = &entry.envelope.signatures[0].keyid;
        for s in &entry.envelope.signatures {
            let name = s
                .keyid
                .rsplit_once('+')
                .map_or(s.keyid.as_str(), |(n, _)| n);
            if name != statement.actor {
                return Err(format!(
                    "statement by {} is signed by {}",
                    statement.actor, s.keyid
                ));
            }
        }
        let ev = Event {
            seq: entry.seq,
            timestamp_ms: entry.timestamp_ms,
            signer,
            statement: &statement,
            payload_hash: Sha256::digest(&entry.envelope.payload).into(),
        };
        let verdict = self
            .state
            .decide(&ev)
            .map_err(|r| format!("the registry would refuse it: {r}"))?;
        self.state.apply_decided(&ev, Some(verdict));
        Ok(())
    }
}
