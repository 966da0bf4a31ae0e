//! The registry as the writer's personality: decides statements against the current state inside
//! the single writer, applies them into the same atomic batch as their entry (objects in the
//! `state` column family, nonces in `nonces`), puts the state root into every checkpoint, and
//! publishes a fresh read view after each durable commit.

use super::model::Environment;
use super::state::{Actor, Event, KeyEntry, PolicyRecord, Prompt, Rejection, Row, State, Verdict};
use super::statement::Statement;
use crate::ledger::dsse::Envelope;
use crate::ledger::entry::{Entry, Seq};
use crate::ledger::merkle::Hash;
use crate::policy::Policy;
use crate::storage::keys::{cf, index_key, IndexTag, MetaKey};
use crate::storage::writer::{Batch, Context, Personality};
use crate::storage::{Head, Store, StoreError};
use std::sync::{Arc, RwLock};

/// A statement whose signature was verified (off the writer) and that is ready to be decided.
#[derive(Clone, Debug)]
pub struct Submission {
    pub envelope: Envelope,
    pub statement: Statement,
    /// Key id of the signature that was verified.
    pub signer: String,
    /// SHA-256 of the payload bytes.
    pub payload_hash: Hash,
}

/// What readers see: an immutable snapshot of the registry after a durable commit. The hot
/// read path takes an `Arc` of it and never waits for the writer.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub ledger_id: String,
    pub head: Seq,
    pub actors: imbl::OrdMap<String, Arc<Actor>>,
    pub prompts: imbl::OrdMap<String, Arc<Prompt>>,
    /// Keys valid now: key id → (actor, key).
    pub keys: imbl::OrdMap<String, KeyEntry>,
    /// The policy in force and the sequence number that put it in force.
    pub policy: Option<(Arc<Policy>, Seq)>,
    /// Every policy put in force, oldest first.
    pub policy_history: imbl::Vector<Arc<PolicyRecord>>,
    /// See [`State::authz_epoch`].
    pub authz_epoch: Seq,
}

impl View {
    /// A snapshot of `state`: every map is persistent, so this costs O(1), not O(state).
    fn of(state: &State, head: Seq) -> View {
        View {
            ledger_id: state.ledger_id().to_owned(),
            head,
            actors: state.actor_map().clone(),
            prompts: state.prompts().clone(),
            keys: state.valid_keys().clone(),
            policy: state.policy().cloned(),
            policy_history: state.policy_history().clone(),
            authz_epoch: state.authz_epoch(),
        }
    }

    /// The deployment live in `env` and its version.
    pub fn deployed(
        &self,
        prompt: &str,
        env: Environment,
    ) -> Option<(&Prompt, &super::state::Deployment)> {
        let p = self.prompts.get(prompt)?;
        Some((p, p.deployments.get(&env)?))
    }
}

/// The shared, swappable read view.
#[derive(Clone, Default)]
pub struct ViewCell(Arc<RwLock<Arc<View>>>);

impl ViewCell {
    /// The current snapshot. The lock is held only to clone an `Arc`.
    pub fn load(&self) -> Arc<View> {
        self.0.read().expect("view lock").clone()
    }

    fn store(&self, view: View) {
        *self.0.write().expect("view lock") = Arc::new(view);
    }
}

/// A decided statement waiting for `apply` (its envelope went to the writer).
struct Decided {
    statement: Statement,
    signer: String,
    payload_hash: Hash,
    verdict: Verdict,
}

pub struct Registry {
    state: State,
    view: ViewCell,
    /// The statement decided last, applied next (the writer always calls them in pairs).
    pending: Option<Decided>,
}

/// `nonces` column family key: actor ‖ 0x00 ‖ nonce.
fn nonce_key(actor: &str, nonce: &str) -> Vec<u8> {
    [actor.as_bytes(), &[0], nonce.as_bytes()].concat()
}

/// The `index` keys of the entry `seq` holding `st`: its actor, and its prompt if it has one.
fn index_keys(st: &Statement, seq: Seq) -> impl Iterator<Item = Vec<u8>> + '_ {
    let prompt = st.action.prompt();
    std::iter::once(index_key(IndexTag::Actor, &st.actor, seq))
        .chain(prompt.map(|p| index_key(IndexTag::Prompt, p, seq)))
}

impl Registry {
    /// Loads the projection stored beside the log (no replay).
    pub fn load(store: &Store) -> Result<Registry, StoreError> {
        let info = store.ledger_info()?;
        let corrupt = |_| StoreError::Corrupt {
            what: "registry state",
        };
        // Rows are parsed as they are read, not collected first: at a million versions the
        // collected JSON alone was hundreds of megabytes, touched once and thrown away.
        let mut scan_error = None;
        let objects = store.scan(cf::STATE).map_while(|r| {
            let row = r.and_then(|(k, v)| {
                let key = std::str::from_utf8(&k).ok().and_then(Row::decode);
                Ok((key.ok_or(StoreError::Corrupt { what: "state key" })?, v))
            });
            row.map_err(|e| scan_error = Some(e)).ok()
        });
        let mut nonce_error = None;
        let nonces = store
            .scan(cf::NONCES)
            .map(|r| -> Result<_, StoreError> {
                let (k, v) = r?;
                let split = k.iter().position(|&b| b == 0);
                let bad = StoreError::Corrupt { what: "nonce" };
                let (Some(i), true) = (split, v.len() == 40) else {
                    return Err(bad);
                };
                let actor = String::from_utf8(k[..i].to_vec())
                    .map_err(|_| StoreError::Corrupt { what: "nonce" })?;
                let nonce = String::from_utf8(k[i + 1..].to_vec())
                    .map_err(|_| StoreError::Corrupt { what: "nonce" })?;
                let seq = u64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
                let hash: Hash = v[8..].try_into().expect("32 bytes");
                Ok(((actor, nonce), (seq, hash)))
            })
            .map_while(|r| r.map_err(|e| nonce_error = Some(e)).ok());
        let state = State::load(&info.ledger_id, objects, nonces).map_err(corrupt);
        if let Some(e) = scan_error.or(nonce_error) {
            return Err(e);
        }
        let state = state?;
        let head = store.head()?;
        let view = ViewCell::default();
        view.store(View::of(&state, head.size));
        Ok(Registry {
            state,
            view,
            pending: None,
        })
    }

    /// Builds the audit indexes of a ledger written before they existed: one pass over the log,
    /// in batches, the marker last (so an interrupted build simply runs again). Returns how many
    /// entries were indexed (0 when the index was already complete).
    pub fn ensure_event_index(store: &Store) -> Result<u64, StoreError> {
        if store.has_event_index()? {
            return Ok(0);
        }
        let mut batch = rocksdb::WriteBatch::default();
        let mut indexed = 0u64;
        for item in store.scan_entries_from(0) {
            let (seq, bytes) = item?;
            let entry = Entry::decode(&bytes).map_err(|_| StoreError::Corrupt { what: "entry" })?;
            if let Ok(st) = Statement::from_payload(&entry.envelope.payload) {
                for key in index_keys(&st, seq) {
                    batch.put_cf(store.cf(cf::INDEX), key, []);
                }
            }
            indexed += 1;
            if batch.len() >= 20_000 {
                store.commit(std::mem::take(&mut batch))?;
            }
        }
        batch.put_cf(store.cf(cf::META), MetaKey::EventIndex.bytes(), [1]);
        store.commit(batch)?;
        Ok(indexed)
    }

    /// The read view this registry publishes to.
    pub fn view(&self) -> ViewCell {
        self.view.clone()
    }

    pub fn state(&self) -> &State {
        &self.state
    }
}

impl Personality for Registry {
    type Command = Submission;
    type Output = ();
    type Rejection = Rejection;

    fn decide(&mut self, sub: Submission, ctx: Context) -> Result<(Envelope, ()), Rejection> {
        let ev = Event {
            seq: ctx.seq,
            timestamp_ms: ctx.timestamp_ms,
            signer: &sub.signer,
            statement: &sub.statement,
            payload_hash: sub.payload_hash,
        };
        let verdict = self.state.decide(&ev)?;
        // The envelope moves on to the writer; the parsed statement waits for `apply`.
        let Submission {
            envelope,
            statement,
            signer,
            payload_hash,
        } = sub;
        self.pending = Some(Decided {
            statement,
            signer,
            payload_hash,
            verdict,
        });
        Ok((envelope, ()))
    }

    fn apply(&mut self, entry: &Entry, batch: &mut Batch<'_>) {
        let sub = self
            .pending
            .take()
            .expect("apply follows a successful decide");
        let ev = Event {
            seq: entry.seq,
            timestamp_ms: entry.timestamp_ms,
            signer: &sub.signer,
            statement: &sub.statement,
            payload_hash: sub.payload_hash,
        };
        for row in self.state.apply_decided(&ev, Some(sub.verdict)) {
            let json = self.state.row_json(&row).expect("a changed row exists");
            batch.put(cf::STATE, row.encode(), json);
        }
        // The audit API's indexes, in the same batch as the entry (docs/ledger-format.md §9).
        for key in index_keys(&sub.statement, entry.seq) {
            batch.put(cf::INDEX, key, []);
        }
        if entry.seq == 0 {
            // A ledger indexed from its genesis on.
            batch.put(cf::META, MetaKey::EventIndex.bytes(), [1]);
        }
        let mut value = entry.seq.to_be_bytes().to_vec();
        value.extend_from_slice(&sub.payload_hash);
        batch.put(
            cf::NONCES,
            nonce_key(&sub.statement.actor, &sub.statement.nonce),
            value,
        );
    }

    fn state_root(&self) -> Option<Hash> {
        Some(self.state.state_root())
    }

    fn committed(&mut self, head: &Head) {
        self.view.store(View::of(&self.state, head.size));
    }
}
