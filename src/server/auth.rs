//! Authentication at the edge, off the writer:
//!
//! - writes: a DSSE-signed statement, checked here for shape, size, action, ledger id, clock
//!   skew and a valid Ed25519 signature by a key valid in the current read view. The writer then
//!   re-checks key validity, nonce and permissions against the authoritative state.
//! - reads: a session token from [`Sessions`], obtained once with a signed `open_session`
//!   statement. Looking a token up is a hash-map read; its read permissions were resolved from the
//!   policy when the session was opened (and again only after roles or policy change), so the
//!   hot path does no signature check and no Casbin call.

use super::status::ApiError;
use crate::ledger::dsse::{Envelope, Signature as DsseSignature};
use crate::policy::{Act, Grant};
use crate::proto::registry::v1 as pb;
use crate::registry::model::Environment;
use crate::registry::personality::{Submission, View};
use crate::registry::state::{actor_may, KeyEntry};
use crate::registry::statement::{Statement, STATEMENT_PAYLOAD_TYPE};
use crate::sigbatch::{SigItem, SignatureBatcher};
use ed25519_dalek::Signature;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

/// Limits and tolerances of statement checking.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub max_payload_bytes: usize,
    pub clock_skew_ms: u64,
    pub session_ttl_ms: u64,
}

/// Checks a signed statement and turns it into a [`Submission`] for the writer.
pub async fn verify_statement(
    view: &View,
    signed: Option<pb::SignedStatement>,
    expected_kind: &str,
    now_ms: u64,
    config: &AuthConfig,
    batcher: &SignatureBatcher,
) -> Result<Submission, ApiError> {
    let (submission, items) = check_statement(view, signed, expected_kind, now_ms, config)?;
    if batcher.verify(items.clone()).await {
        return Ok(submission);
    }
    // Name the signature that failed (rare path: strict checks one by one).
    let failed = submission
        .envelope
        .signatures
        .iter()
        .zip(&items)
        .find(|(_, item)| {
            item.key
                .verify_strict(&item.message, &item.signature)
                .is_err()
        })
        .map_or_else(|| submission.signer.clone(), |(s, _)| s.keyid.clone());
    Err(ApiError::Unauthenticated(format!(
        "signature by {failed} does not verify"
    )))
}

/// Everything [`verify_statement`] checks except the Ed25519 equations, which it returns as
/// items for the [`SignatureBatcher`].
fn check_statement(
    view: &View,
    signed: Option<pb::SignedStatement>,
    expected_kind: &str,
    now_ms: u64,
    config: &AuthConfig,
) -> Result<(Submission, Vec<SigItem>), ApiError> {
    let signed = signed.ok_or_else(|| ApiError::invalid("statement", "a signed statement"))?;
    if signed.payload.len() > config.max_payload_bytes {
        return Err(ApiError::TooLarge {
            field: "statement.payload",
            size: signed.payload.len(),
            limit: config.max_payload_bytes,
        });
    }
    if signed.payload_type != STATEMENT_PAYLOAD_TYPE {
        return Err(ApiError::invalid(
            "statement.payload_type",
            format!("{STATEMENT_PAYLOAD_TYPE:?}"),
        ));
    }
    let envelope = Envelope {
        payload_type: signed.payload_type,
        payload: signed.payload,
        signatures: signed
            .signatures
            .into_iter()
            .map(|s| DsseSignature {
                keyid: s.keyid,
                sig: s.sig,
            })
            .collect(),
    };
    envelope
        .check_shape()
        .map_err(|e| ApiError::invalid("statement.signatures", e.to_string()))?;
    let statement = Statement::from_payload(&envelope.payload).map_err(|e| {
        ApiError::invalid(
            "statement.payload",
            format!("a statement JSON object ({e})"),
        )
    })?;
    if statement.action.kind() != expected_kind {
        return Err(ApiError::invalid(
            "statement.action.type",
            format!(
                "{expected_kind:?} for this method, got {:?}",
                statement.action.kind()
            ),
        ));
    }
    if statement.ledger_id != view.ledger_id {
        return Err(ApiError::invalid(
            "statement.ledger_id",
            format!("{}, got {}", view.ledger_id, statement.ledger_id),
        ));
    }
    let skew = now_ms.abs_diff(statement.issued_at_ms);
    if skew > config.clock_skew_ms {
        return Err(ApiError::Unauthenticated(format!(
            "statement issued_at_ms {} is {} s away from the server clock; the limit is {} s",
            statement.issued_at_ms,
            skew / 1000,
            config.clock_skew_ms / 1000
        )));
    }
    let message = envelope.pae();
    let mut items = Vec::with_capacity(envelope.signatures.len());
    for s in &envelope.signatures {
        let Some(KeyEntry { actor, key }) = view.keys.get(&s.keyid) else {
            return Err(ApiError::Unauthenticated(format!(
                "key {} is unknown, retired or revoked",
                s.keyid
            )));
        };
        if *actor != statement.actor {
            return Err(ApiError::Unauthenticated(format!(
                "statement names actor {:?} but is signed by {}",
                statement.actor, s.keyid
            )));
        }
        let signature = Signature::from_slice(&s.sig).map_err(|_| {
            ApiError::invalid("statement.signatures.sig", "a 64-byte Ed25519 signature")
        })?;
        items.push(SigItem {
            message: message.clone(),
            signature,
            key: *key,
        });
    }
    let signer = envelope.signatures[0].keyid.clone();
    let payload_hash = Sha256::digest(&envelope.payload).into();
    Ok((
        Submission {
            envelope,
            statement,
            signer,
            payload_hash,
        },
        items,
    ))
}

/// Where a session may read something.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Everywhere,
    In(BTreeSet<String>),
}

impl Scope {
    fn covers(&self, namespace: &str) -> bool {
        match self {
            Scope::Everywhere => true,
            Scope::In(set) => set.contains(namespace),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Scope::In(set) if set.is_empty())
    }
}

/// What a read needs: `act` over every namespace, over at least one (the answer is then
/// filtered), or in one.
#[derive(Clone, Copy, Debug)]
pub enum Need<'a> {
    Everywhere(Act),
    Somewhere(Act),
    In(Act, &'a str),
    /// The prompt deployed in an environment of a namespace.
    Deployed(&'a str, Environment),
}

/// A session's read permissions, resolved from the policy and the actor's roles once (and again
/// only when roles or policy change), so that a read is a set lookup, not a Casbin call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadAccess {
    pub read: Scope,
    /// `read_deployed`, per environment in [`Environment::ALL`] order.
    pub deployed: [Scope; 3],
}

impl ReadAccess {
    pub fn resolve(view: &View, actor: &str) -> ReadAccess {
        let policy = view.policy.as_ref().map(|(p, _)| p.as_ref());
        let actor = view.actors.get(actor).map(|a| a.as_ref());
        let scope = |act: Act, env: &str| {
            if actor_may(policy, actor, act, "*", env) {
                return Scope::Everywhere;
            }
            let mut candidates: BTreeSet<String> =
                policy.map(|p| p.namespaces().clone()).unwrap_or_default();
            for grant in actor.iter().flat_map(|a| a.roles.iter()) {
                if let Some(ns) = Grant::parse(grant).and_then(|g| g.namespace) {
                    candidates.insert(ns.to_owned());
                }
            }
            candidates.retain(|ns| actor_may(policy, actor, act, ns, env));
            Scope::In(candidates)
        };
        ReadAccess {
            read: scope(Act::Read, "*"),
            deployed: Environment::ALL.map(|e| scope(Act::ReadDeployed, e.as_str())),
        }
    }

    /// Whether `need` is met.
    pub fn allows(&self, need: Need<'_>) -> bool {
        match need {
            Need::Everywhere(Act::Read) => self.read == Scope::Everywhere,
            Need::Somewhere(Act::Read) => !self.read.is_empty(),
            Need::In(Act::Read, ns) => self.read.covers(ns),
            Need::Deployed(ns, env) => {
                self.read.covers(ns) || self.deployed[env as usize].covers(ns)
            }
            // Sessions only read.
            Need::Everywhere(_) | Need::Somewhere(_) | Need::In(..) => false,
        }
    }

    /// Whether prompts of `namespace` may be read (to filter lists).
    pub fn reads(&self, namespace: &str) -> bool {
        self.read.covers(namespace)
    }
}

/// A read session.
#[derive(Debug)]
pub struct Session {
    pub actor: String,
    pub roles: Vec<String>,
    pub expires_at_ms: u64,
    pub access: ReadAccess,
    /// The view's `authz_epoch` the access was resolved at.
    epoch: u64,
}

/// Open sessions, and the nonces of the `open_session` statements that opened them (which are
/// not in the log, so replay protection for them lives here).
#[derive(Default)]
pub struct Sessions {
    tokens: RwLock<HashMap<String, Arc<Session>>>,
    nonces: Mutex<HashMap<(String, String), u64>>,
}

impl Sessions {
    /// Opens a session for a verified `open_session` statement.
    pub fn open(
        &self,
        view: &View,
        sub: &Submission,
        now_ms: u64,
        config: &AuthConfig,
    ) -> Result<(String, Arc<Session>), ApiError> {
        let st = &sub.statement;
        {
            let mut nonces = self.nonces.lock().expect("nonce lock");
            nonces.retain(|_, expiry| *expiry > now_ms);
            let key = (st.actor.clone(), st.nonce.clone());
            if nonces.contains_key(&key) {
                return Err(ApiError::Rejected(
                    crate::registry::state::Rejection::NonceReused { seq: 0 },
                ));
            }
            nonces.insert(key, now_ms + 2 * config.clock_skew_ms);
        }
        let actor = view
            .actors
            .get(&st.actor)
            .filter(|a| a.revoked_seq.is_none())
            .ok_or_else(|| {
                ApiError::Unauthenticated(format!("actor {} is unknown or revoked", st.actor))
            })?;
        let mut raw = [0u8; 32];
        OsRng.fill_bytes(&mut raw);
        let token = hex::encode(raw);
        let session = Arc::new(Session {
            actor: actor.name.clone(),
            roles: actor.roles.iter().cloned().collect(),
            expires_at_ms: now_ms + config.session_ttl_ms,
            access: ReadAccess::resolve(view, &actor.name),
            epoch: view.authz_epoch,
        });
        let mut tokens = self.tokens.write().expect("session lock");
        tokens.retain(|_, s| s.expires_at_ms > now_ms);
        tokens.insert(token.clone(), session.clone());
        Ok((token, session))
    }

    /// The session of a request's `authorization: Bearer <token>` metadata, if valid now and
    /// its actor is not revoked, and if its access meets `need`.
    pub fn check<T>(
        &self,
        request: &tonic::Request<T>,
        view: &View,
        need: Need<'_>,
        now_ms: u64,
    ) -> Result<Arc<Session>, ApiError> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            ApiError::Unauthenticated("missing authorization: Bearer <session token>".into())
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::Unauthenticated("authorization must be Bearer <session token>".into())
            })?;
        let mut session = self
            .tokens
            .read()
            .expect("session lock")
            .get(token)
            .cloned()
            .filter(|s| s.expires_at_ms > now_ms)
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "session token unknown or expired: open a new session".into(),
                )
            })?;
        let Some(actor) = view
            .actors
            .get(&session.actor)
            .filter(|a| a.revoked_seq.is_none())
        else {
            return Err(ApiError::Unauthenticated(format!(
                "actor {} is revoked",
                session.actor
            )));
        };
        if session.epoch != view.authz_epoch {
            // Roles or policy changed since the session resolved its access.
            let fresh = Arc::new(Session {
                actor: session.actor.clone(),
                roles: actor.roles.iter().cloned().collect(),
                expires_at_ms: session.expires_at_ms,
                access: ReadAccess::resolve(view, &session.actor),
                epoch: view.authz_epoch,
            });
            let mut tokens = self.tokens.write().expect("session lock");
            if let Some(slot) = tokens.get_mut(token) {
                *slot = fresh.clone();
            }
            session = fresh;
        }
        if !session.access.allows(need) {
            let (act, place) = match need {
                Need::Everywhere(act) => (act.as_str(), "in every namespace".to_owned()),
                Need::Somewhere(act) => (act.as_str(), "in any namespace".to_owned()),
                Need::In(act, ns) => (act.as_str(), format!("in namespace {ns}")),
                Need::Deployed(ns, env) => (
                    "read_deployed",
                    format!("in namespace {ns}, environment {env}"),
                ),
            };
            return Err(ApiError::PermissionDenied(format!(
                "actor {} may not {act} {place}: its roles ({}) do not allow it under the policy in force",
                session.actor,
                session.roles.join(", ")
            )));
        }
        Ok(session)
    }
}
