//! The projection: registry state as a deterministic function of the log.
//!
//! `decide(state, event)` says whether a statement may be appended to the log now;
//! `apply(state, event)` changes the state by an appended statement. Both are pure: no I/O, no
//! clock (the event carries its sequence number and timestamp). `apply` is total: it never
//! fails, so replaying any verified log gives a state, and replaying the same log gives the same
//! state and the same [`State::state_root`].

use super::governance::{self, Decision};
use super::model::{content_hash, valid_name, Environment, Split};
use super::statement::{Action, Statement};
use crate::ledger::entry::Seq;
use crate::ledger::keys::PublicKey;
use crate::ledger::merkle::Hash;
use crate::policy::{namespace_of, Act, Grant, Policy, PolicyFiles};
use ed25519_dalek::VerifyingKey;
use imbl::{OrdMap, Vector};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// One statement as it is (or would be) placed in the log.
#[derive(Clone, Copy, Debug)]
pub struct Event<'a> {
    pub seq: Seq,
    pub timestamp_ms: u64,
    /// Key id of the (first) signature.
    pub signer: &'a str,
    pub statement: &'a Statement,
    /// SHA-256 of the payload bytes: recognises a retried statement.
    pub payload_hash: Hash,
}

/// What [`State::decide`] found, for [`State::apply_decided`].
#[derive(Clone, Debug)]
pub struct Verdict {
    seq: Seq,
    decision: Option<Decision>,
}

/// Why a statement may not be appended. Each variant maps to one gRPC status in the API layer.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("statement is for ledger {found}, this is ledger {expected}")]
    WrongLedger { expected: String, found: String },
    #[error("key {keyid} is unknown, retired or revoked")]
    UnknownKey { keyid: String },
    #[error("statement names actor {actor:?} but is signed by {keyid}")]
    ActorMismatch { actor: String, keyid: String },
    #[error("nonce already used by the statement at sequence {seq}")]
    NonceReused { seq: Seq },
    /// Not an error to the client: the same statement was already appended at `seq`.
    #[error("statement already recorded at sequence {seq}")]
    Duplicate { seq: Seq },
    #[error("{0}")]
    PermissionDenied(Box<Denied>),
    #[error("no policy is in force: an admin must record one first (promptledger policy set)")]
    NoPolicy,
    #[error("{0}")]
    GateFailed(Box<GateFailure>),
    /// The state the statement was signed against has changed (compare-and-swap).
    #[error("{reason}")]
    Conflict { reason: String },
    #[error("{field}: {expected}")]
    InvalidArgument {
        field: &'static str,
        expected: String,
    },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("prompt {prompt}: parent version {given} is stale, the current head is {head}", given = fmt_version(*given), head = fmt_version(*head))]
    StaleParent {
        prompt: String,
        given: Option<u64>,
        head: Option<u64>,
    },
    #[error("{reason}")]
    FailedPrecondition { reason: String },
    #[error("a {kind} statement cannot be appended")]
    NotAppendable { kind: &'static str },
}

/// Who may not do what, where, under which policy.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("actor {actor} may not {act} in namespace {namespace}{}: none of its roles ({}) allows it under policy {policy}", env_part(environment), held(roles))]
pub struct Denied {
    pub actor: String,
    pub act: Act,
    pub namespace: String,
    pub environment: String,
    pub roles: Vec<String>,
    pub policy: String,
}

/// The first gate a promotion failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{prompt} version {version} may not enter {environment}: gate {gate} failed: {detail} (policy {policy})")]
pub struct GateFailure {
    pub prompt: String,
    pub version: u64,
    pub environment: Environment,
    pub gate: String,
    pub detail: String,
    pub policy: String,
}

fn env_part(environment: &str) -> String {
    if environment == "*" {
        String::new()
    } else {
        format!(", environment {environment}")
    }
}

fn held(roles: &[String]) -> String {
    if roles.is_empty() {
        "none".into()
    } else {
        roles.join(", ")
    }
}

fn approval_name(prompt: &str, version: u64, environment: Environment, by: &str) -> String {
    format!("approval of {prompt} version {version} for {environment} by {by}")
}

fn fmt_version(v: Option<u64>) -> String {
    v.map_or("none".to_owned(), |v| v.to_string())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActorKey {
    pub keyid: String,
    pub vkey: String,
    pub added_seq: Seq,
    pub retired_seq: Option<Seq>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    pub name: String,
    /// Role assignments now: `role` or `role@namespace`.
    pub roles: BTreeSet<String>,
    /// Every assignment the actor held, oldest first; empty until the first change (then the
    /// registration's assignments are its first item).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_history: Vec<RoleChange>,
    pub keys: Vec<ActorKey>,
    pub registered_seq: Seq,
    pub revoked_seq: Option<Seq>,
    pub revoked_reason: Option<String>,
}

/// Role assignments an actor held from `seq` on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoleChange {
    pub seq: Seq,
    pub roles: BTreeSet<String>,
}

impl Actor {
    /// The role assignments held after the entry at `seq` (empty before registration and
    /// from revocation on).
    pub fn roles_at(&self, seq: Seq) -> BTreeSet<String> {
        if seq < self.registered_seq || self.revoked_seq.is_some_and(|r| r <= seq) {
            return BTreeSet::new();
        }
        self.role_history
            .iter()
            .rev()
            .find(|c| c.seq <= seq)
            .map_or_else(|| self.roles.clone(), |c| c.roles.clone())
    }
}

/// A policy put in force by a `set_policy` event (or by nothing: see [`State::policy`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub seq: Seq,
    pub version: String,
    pub by: String,
    pub timestamp_ms: u64,
    pub files: PolicyFiles,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Version {
    pub number: u64,
    pub parent: Option<u64>,
    pub template: String,
    pub model: String,
    pub parameters: BTreeMap<String, serde_json::Value>,
    pub variables: Vec<String>,
    pub message: String,
    pub content_hash: String,
    pub author: String,
    pub seq: Seq,
    pub timestamp_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub environment: Environment,
    /// The version this deployment promoted (or rolled back to).
    pub version: u64,
    /// Sequence number of the promotion or rollback that made it live.
    pub seq: Seq,
    pub timestamp_ms: u64,
    pub by: String,
    pub rollback: bool,
    /// Rollout weights; empty: `version` takes all traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub splits: Vec<Split>,
    /// Made past the gates by a break-glass promotion.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
    /// The reason given (rollback, break-glass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The policy and evidence that let it through (absent before any policy was in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub seq: Seq,
    pub version: u64,
    pub content_hash: String,
    pub suite: String,
    pub score: f64,
    pub threshold: f64,
    pub passed: bool,
    pub evaluator: String,
    pub evidence_digest: String,
    pub evidence_uri: String,
    pub by: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    pub seq: Seq,
    pub version: u64,
    pub content_hash: String,
    pub environment: Environment,
    pub by: String,
    pub revoked_seq: Option<Seq>,
}

/// One line of a prompt's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryItem {
    pub seq: Seq,
    pub kind: String,
    pub actor: String,
    pub timestamp_ms: u64,
    pub version: Option<u64>,
    pub environment: Option<Environment>,
    /// A break-glass promotion: made past the gates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub break_glass: bool,
}

/// A prompt. Its header (these serialized fields) is one row of the `state` column family; each
/// version, history item, evaluation, approval and past deployment is a row of its own, so a
/// change writes only what changed (see [`Row`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub name: String,
    pub description: String,
    pub created_by: String,
    pub created_seq: Seq,
    /// Derived: what is live now, per environment (the last deployment made there; its row
    /// holds it, so the header stays small).
    #[serde(skip)]
    pub deployments: BTreeMap<Environment, Deployment>,
    #[serde(skip)]
    pub versions: Vector<Arc<Version>>,
    /// Every deployment ever made, oldest first.
    #[serde(skip)]
    pub deployment_history: Vector<Arc<Deployment>>,
    #[serde(skip)]
    pub evaluations: Vector<Arc<Evaluation>>,
    #[serde(skip)]
    pub approvals: Vec<Approval>,
    #[serde(skip)]
    pub history: Vector<Arc<HistoryItem>>,
    /// Derived: `deployment_history` per environment, in [`Environment::ALL`] order, so gates
    /// read one environment's past without walking the others'.
    #[serde(skip)]
    by_environment: [Vector<Arc<Deployment>>; 3],
    /// Running hashes of the append-only lists, for the state root in O(1) per change.
    #[serde(skip)]
    chains: Chains,
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Chains {
    versions: Hash,
    deployments: Hash,
    evaluations: Hash,
    history: Hash,
    /// Approvals as made (unrevoked), in order.
    approvals: Hash,
    /// `(approval seq, revoked seq)` pairs, in revocation order.
    revocations: Hash,
}

/// `chain' = SHA-256(chain ‖ SHA-256(item JSON))`.
fn extend_chain<T: Serialize>(chain: &mut Hash, item: &T) {
    let mut h = Sha256::new();
    h.update(*chain);
    h.update(digest(item));
    *chain = h.finalize().into();
}

impl Prompt {
    pub fn head(&self) -> Option<u64> {
        self.versions.last().map(|v| v.number)
    }

    pub fn version(&self, number: u64) -> Option<&Version> {
        number
            .checked_sub(1)
            .and_then(|i| self.versions.get(usize::try_from(i).ok()?))
            .map(|v| v.as_ref())
    }

    pub fn version_by_hash(&self, hash: &str) -> Option<&Version> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.content_hash == hash)
            .map(|v| v.as_ref())
    }

    /// Commitment to the whole prompt: header, the running hashes of its lists, and its
    /// approvals (which change in place when revoked, so they are hashed whole).
    fn digest(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(digest(self));
        h.update(self.chains.versions);
        h.update(self.chains.deployments);
        h.update(self.chains.evaluations);
        h.update(self.chains.history);
        h.update(self.chains.approvals);
        h.update(self.chains.revocations);
        h.finalize().into()
    }

    /// Appends an approval as made.
    fn push_approval(&mut self, a: Approval) {
        let made = Approval {
            revoked_seq: None,
            ..a.clone()
        };
        extend_chain(&mut self.chains.approvals, &made);
        self.approvals.push(a);
    }

    fn chain_revocation(&mut self, approval_seq: Seq, revoked_seq: Seq) {
        extend_chain(&mut self.chains.revocations, &(approval_seq, revoked_seq));
    }

    /// Whether `by` has an unrevoked approval of `version` for `environment`.
    pub fn active_approval(&self, version: u64, environment: Environment, by: &str) -> bool {
        self.approvals.iter().any(|a| {
            a.version == version
                && a.environment == environment
                && a.by == by
                && a.revoked_seq.is_none()
        })
    }

    fn push_version(&mut self, v: Version) {
        extend_chain(&mut self.chains.versions, &v);
        self.versions.push_back(Arc::new(v));
    }

    fn push_deployment(&mut self, d: Deployment) {
        extend_chain(&mut self.chains.deployments, &d);
        self.deployments.insert(d.environment, d.clone());
        let d = Arc::new(d);
        self.by_environment[d.environment as usize].push_back(d.clone());
        self.deployment_history.push_back(d);
    }

    /// Every deployment made in `env`, oldest first.
    pub fn deployments_in(&self, env: Environment) -> &Vector<Arc<Deployment>> {
        &self.by_environment[env as usize]
    }

    fn push_evaluation(&mut self, e: Evaluation) {
        extend_chain(&mut self.chains.evaluations, &e);
        self.evaluations.push_back(Arc::new(e));
    }

    fn push_history(&mut self, item: HistoryItem) {
        extend_chain(&mut self.chains.history, &item);
        self.history.push_back(Arc::new(item));
    }
}

/// A key that may sign now.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub actor: String,
    pub key: VerifyingKey,
}

/// One row of the `state` column family. Keys are text: `a/<actor>`, `p/<prompt>` (header),
/// and `p/<prompt>#<kind>/<20-digit number>` for the prompt's list items, where kind is `v`
/// (version, by number), `h` (history), `e` (evaluation), `a` (approval), `d` (deployment), each
/// by sequence number. `#` sorts before every character a name may contain, so a prompt's rows
/// follow its header directly.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Row {
    Actor(String),
    Prompt(String),
    Version(String, u64),
    History(String, Seq),
    Evaluation(String, Seq),
    Approval(String, Seq),
    Deployment(String, Seq),
    /// A policy put in force, by the sequence number of its `set_policy` event.
    Policy(Seq),
}

impl Row {
    pub fn encode(&self) -> String {
        match self {
            Row::Actor(n) => format!("a/{n}"),
            Row::Prompt(n) => format!("p/{n}"),
            Row::Version(n, i) => format!("p/{n}#v/{i:020}"),
            Row::History(n, i) => format!("p/{n}#h/{i:020}"),
            Row::Evaluation(n, i) => format!("p/{n}#e/{i:020}"),
            Row::Approval(n, i) => format!("p/{n}#a/{i:020}"),
            Row::Deployment(n, i) => format!("p/{n}#d/{i:020}"),
            Row::Policy(i) => format!("r/{i:020}"),
        }
    }

    pub fn decode(s: &str) -> Option<Self> {
        if let Some(n) = s.strip_prefix("a/") {
            return Some(Row::Actor(n.to_owned()));
        }
        if let Some(i) = s.strip_prefix("r/") {
            return i.parse().ok().map(Row::Policy);
        }
        let rest = s.strip_prefix("p/")?;
        let Some((name, item)) = rest.split_once('#') else {
            return Some(Row::Prompt(rest.to_owned()));
        };
        let (kind, number) = item.split_once('/')?;
        let (n, i) = (name.to_owned(), number.parse().ok()?);
        match kind {
            "v" => Some(Row::Version(n, i)),
            "h" => Some(Row::History(n, i)),
            "e" => Some(Row::Evaluation(n, i)),
            "a" => Some(Row::Approval(n, i)),
            "d" => Some(Row::Deployment(n, i)),
            _ => None,
        }
    }
}

/// log2 of the number of buckets of the state tree.
const BUCKET_BITS: u32 = 12;
const BUCKETS: usize = 1 << BUCKET_BITS;

/// The commitment to the projected objects behind the state root, updated in O(objects
/// changed). Each object (key, digest) falls into bucket `b` = the first 12 bits of
/// SHA-256(key); a bucket's hash is `SHA-256(0x00 ‖ for each of its objects in key order:
/// len(key) (u32 BE) ‖ key ‖ digest)`; the 4096 bucket hashes are the leaves, in order, of a
/// complete binary tree whose nodes are `SHA-256(0x01 ‖ left ‖ right)`.
#[derive(Debug)]
struct StateTree(std::sync::Mutex<TreeNodes>);

#[derive(Clone, Debug)]
struct TreeNodes {
    buckets: Vec<BTreeMap<String, Hash>>,
    /// Heap order: 1 is the root, `BUCKETS + b` the leaf of bucket `b`; 0 unused.
    nodes: Vec<Hash>,
    /// Buckets changed since the nodes were last brought up to date.
    dirty: BTreeSet<usize>,
}

fn bucket_of(key: &str) -> usize {
    let h = Sha256::digest(key.as_bytes());
    (usize::from(u16::from_be_bytes([h[0], h[1]])) >> (16 - BUCKET_BITS)) & (BUCKETS - 1)
}

fn bucket_hash(objects: &BTreeMap<String, Hash>) -> Hash {
    let mut h = Sha256::new();
    h.update([0]);
    for (key, d) in objects {
        h.update((key.len() as u32).to_be_bytes());
        h.update(key.as_bytes());
        h.update(d);
    }
    h.finalize().into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

impl Default for StateTree {
    fn default() -> Self {
        let empty = bucket_hash(&BTreeMap::new());
        let mut nodes = vec![[0u8; 32]; 2 * BUCKETS];
        nodes[BUCKETS..].fill(empty);
        for i in (1..BUCKETS).rev() {
            nodes[i] = node_hash(&nodes[2 * i], &nodes[2 * i + 1]);
        }
        StateTree(std::sync::Mutex::new(TreeNodes {
            buckets: vec![BTreeMap::new(); BUCKETS],
            nodes,
            dirty: BTreeSet::new(),
        }))
    }
}

impl Clone for StateTree {
    fn clone(&self) -> Self {
        StateTree(std::sync::Mutex::new(
            self.0.lock().expect("state tree").clone(),
        ))
    }
}

impl StateTree {
    fn set(&mut self, key: String, digest: Hash) {
        let t = self.0.get_mut().expect("state tree");
        let b = bucket_of(&key);
        t.buckets[b].insert(key, digest);
        t.dirty.insert(b);
    }

    /// The root, after rehashing the changed buckets and the nodes above them, level by level.
    fn root(&self) -> Hash {
        let mut t = self.0.lock().expect("state tree");
        let t = &mut *t;
        let mut level: BTreeSet<usize> = std::mem::take(&mut t.dirty)
            .into_iter()
            .map(|b| {
                t.nodes[BUCKETS + b] = bucket_hash(&t.buckets[b]);
                (BUCKETS + b) / 2
            })
            .collect();
        while !level.is_empty() {
            for &i in &level {
                t.nodes[i] = node_hash(&t.nodes[2 * i], &t.nodes[2 * i + 1]);
            }
            level = level
                .into_iter()
                .filter(|&i| i > 1)
                .map(|i| i / 2)
                .collect();
        }
        t.nodes[1]
    }

    fn root_from_scratch(&self) -> Hash {
        let t = self.0.lock().expect("state tree");
        let mut level: Vec<Hash> = t.buckets.iter().map(bucket_hash).collect();
        while level.len() > 1 {
            level = level.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
        }
        level[0]
    }
}

/// The registry state.
#[derive(Clone, Debug, Default)]
pub struct State {
    ledger_id: String,
    actors: OrdMap<String, Arc<Actor>>,
    prompts: OrdMap<String, Arc<Prompt>>,
    /// Derived: keys valid now.
    keys: OrdMap<String, KeyEntry>,
    /// Derived: (actor, nonce) → (seq, payload hash). Replay protection and idempotency.
    nonces: HashMap<(String, String), (Seq, Hash)>,
    /// Derived: digest of each actor, prompt (see [`Prompt::digest`]) and policy record, in
    /// the tree whose root is the state root.
    tree: StateTree,
    /// Every policy put in force, oldest first.
    policy_history: Vector<Arc<PolicyRecord>>,
    /// Derived: the policy in force, parsed, and the sequence number that put it in force.
    policy: Option<(Arc<Policy>, Seq)>,
    /// Derived: sequence number of the last change to roles, revocations or policy. Read
    /// sessions resolve their permissions again when it moves.
    authz_epoch: Seq,
}

/// Whether `actor` (live) may `act` in `namespace` (`"*"`: every namespace) and `environment`
/// (`"*"`: none in particular) under `policy`. Without a policy, only the administrators
/// may manage actors and record the first policy.
pub fn actor_may(
    policy: Option<&Policy>,
    actor: Option<&Actor>,
    act: Act,
    namespace: &str,
    environment: &str,
) -> bool {
    let Some(actor) = actor.filter(|a| a.revoked_seq.is_none()) else {
        return false;
    };
    match policy {
        Some(p) => p.grants_allow(
            actor.roles.iter().map(String::as_str),
            namespace,
            environment,
            act,
        ),
        None => matches!(act, Act::ManageActors | Act::SetPolicy) && actor.roles.contains("admin"),
    }
}

fn digest<T: Serialize>(value: &T) -> Hash {
    Sha256::digest(serde_json::to_vec(value).expect("state serializes")).into()
}

fn invalid(field: &'static str, expected: impl Into<String>) -> Rejection {
    Rejection::InvalidArgument {
        field,
        expected: expected.into(),
    }
}

/// A compare-and-swap guard: the deployment live in `env` must be the one the actor saw.
fn check_expected(p: &Prompt, env: Environment, expected: Option<u64>) -> Result<(), Rejection> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let live = p.deployments.get(&env).map_or(0, |d| d.seq);
    if live != expected {
        return Err(Rejection::Conflict {
            reason: format!(
                "{} in {env} changed: the statement expected the deployment at sequence {expected}, the live one is at {live}",
                p.name
            ),
        });
    }
    Ok(())
}

/// The weights a promotion asks for, checked: empty (the version alone), or weights of at
/// least 1 summing to 100 over distinct versions that include `version`, every other one live
/// in `env` now.
fn check_rollout(
    p: &Prompt,
    version: u64,
    env: Environment,
    rollout: &[Split],
) -> Result<Vec<Split>, Rejection> {
    if rollout.is_empty() {
        return Ok(vec![]);
    }
    let live: BTreeSet<u64> = p
        .deployments
        .get(&env)
        .map(|d| governance::splits_of(d).iter().map(|s| s.version).collect())
        .unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut total = 0u64;
    for s in rollout {
        if s.weight == 0 || !seen.insert(s.version) {
            return Err(invalid(
                "rollout",
                "distinct versions with weights of at least 1",
            ));
        }
        if s.version != version && !live.contains(&s.version) {
            return Err(invalid(
                "rollout",
                format!(
                    "besides version {version}, only versions live in {env} now ({live:?}); version {} is not",
                    s.version
                ),
            ));
        }
        total += u64::from(s.weight);
    }
    if total != 100 || !seen.contains(&version) {
        return Err(invalid(
            "rollout",
            format!("weights summing to 100 that include version {version}, got {total}"),
        ));
    }
    Ok(rollout.to_vec())
}

/// The splits a deployment will route by.
fn effective(splits: &[Split], version: u64) -> Vec<Split> {
    if splits.is_empty() {
        vec![Split {
            version,
            weight: 100,
        }]
    } else {
        splits.to_vec()
    }
}

impl State {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn ledger_id(&self) -> &str {
        &self.ledger_id
    }

    pub fn actor(&self, name: &str) -> Option<&Arc<Actor>> {
        self.actors.get(name)
    }

    pub fn actors(&self) -> impl Iterator<Item = &Arc<Actor>> {
        self.actors.values()
    }

    /// Every actor by name (a persistent map: cloning it is O(1)).
    pub fn actor_map(&self) -> &OrdMap<String, Arc<Actor>> {
        &self.actors
    }

    /// The keys that may sign now, by key id (a persistent map: cloning it is O(1)).
    pub fn valid_keys(&self) -> &OrdMap<String, KeyEntry> {
        &self.keys
    }

    pub fn prompt(&self, name: &str) -> Option<&Arc<Prompt>> {
        self.prompts.get(name)
    }

    pub fn prompts(&self) -> &OrdMap<String, Arc<Prompt>> {
        &self.prompts
    }

    /// The actor and public key of `keyid`, if it may sign now.
    pub fn signing_key(&self, keyid: &str) -> Option<(&str, VerifyingKey)> {
        self.keys.get(keyid).map(|k| (k.actor.as_str(), k.key))
    }

    /// The policy in force and the sequence number of the event that put it in force.
    pub fn policy(&self) -> Option<&(Arc<Policy>, Seq)> {
        self.policy.as_ref()
    }

    /// Every policy put in force, oldest first (a persistent list: cloning it is O(1)).
    pub fn policy_history(&self) -> &Vector<Arc<PolicyRecord>> {
        &self.policy_history
    }

    /// See the field.
    pub fn authz_epoch(&self) -> Seq {
        self.authz_epoch
    }

    /// See [`actor_may`].
    pub fn may(&self, actor: &str, act: Act, namespace: &str, environment: &str) -> bool {
        actor_may(
            self.policy.as_ref().map(|(p, _)| p.as_ref()),
            self.actors.get(actor).map(|a| a.as_ref()),
            act,
            namespace,
            environment,
        )
    }

    fn need(
        &self,
        actor: &str,
        act: Act,
        namespace: &str,
        environment: &str,
    ) -> Result<(), Rejection> {
        if self.may(actor, act, namespace, environment) {
            return Ok(());
        }
        let Some((policy, _)) = &self.policy else {
            return Err(Rejection::NoPolicy);
        };
        Err(Rejection::PermissionDenied(Box::new(Denied {
            actor: actor.to_owned(),
            act,
            namespace: namespace.to_owned(),
            environment: environment.to_owned(),
            roles: self
                .actors
                .get(actor)
                .map(|a| a.roles.iter().cloned().collect())
                .unwrap_or_default(),
            policy: policy.version().to_owned(),
        })))
    }

    /// Role assignments must parse and, once a policy is in force, name roles it knows.
    fn check_roles(&self, roles: &[String]) -> Result<(), Rejection> {
        for r in roles {
            let Some(grant) = Grant::parse(r) else {
                return Err(invalid(
                    "roles",
                    format!("`role` or `role@namespace` of [A-Za-z0-9._-], got {r:?}"),
                ));
            };
            if let Some((policy, _)) = &self.policy {
                if !policy.roles().contains(grant.role) {
                    let known: Vec<&str> = policy.roles().iter().map(String::as_str).collect();
                    return Err(invalid(
                        "roles",
                        format!(
                            "roles the policy in force names ({}), got {:?}",
                            known.join(", "),
                            grant.role
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Where a nonce of `actor` was used.
    pub fn nonce(&self, actor: &str, nonce: &str) -> Option<(Seq, Hash)> {
        self.nonces
            .get(&(actor.to_owned(), nonce.to_owned()))
            .copied()
    }

    /// Hash over the whole projected state: `SHA-256(0x02 ‖ SHA-256(ledger id hex) ‖ tree
    /// root)`, the tree being [`StateTree`]'s. Costs O(objects changed since the last call).
    pub fn state_root(&self) -> Hash {
        let mut h = Sha256::new();
        h.update([2]);
        h.update(Sha256::digest(self.ledger_id.as_bytes()));
        h.update(self.tree.root());
        h.finalize().into()
    }

    /// [`Self::state_root`] computed from scratch, without the tree's cached nodes (tests).
    pub fn state_root_from_scratch(&self) -> Hash {
        let mut h = Sha256::new();
        h.update([2]);
        h.update(Sha256::digest(self.ledger_id.as_bytes()));
        h.update(self.tree.root_from_scratch());
        h.finalize().into()
    }

    /// Decides whether `ev` may be appended now. Never changes the state.
    pub fn decide(&self, ev: &Event<'_>) -> Result<Verdict, Rejection> {
        let mut decision = None;
        self.check(ev, &mut decision)?;
        Ok(Verdict {
            seq: ev.seq,
            decision,
        })
    }

    /// [`Self::decide`]; a promotion's gate decision is left in `decision_out`.
    fn check(&self, ev: &Event<'_>, decision_out: &mut Option<Decision>) -> Result<(), Rejection> {
        let st = ev.statement;
        if let Action::Genesis { .. } = st.action {
            return if ev.seq == 0 && self.actors.is_empty() {
                Ok(())
            } else {
                Err(Rejection::NotAppendable { kind: "genesis" })
            };
        }
        if let Action::OpenSession {} = st.action {
            return Err(Rejection::NotAppendable {
                kind: "open_session",
            });
        }
        self.authenticate(ev)?;
        let actor = st.actor.as_str();
        let ns = st.action.prompt().map(namespace_of).unwrap_or("*");
        match &st.action {
            Action::Genesis { .. } | Action::OpenSession {} => unreachable!("handled above"),
            Action::RegisterActor { name, key, roles } => {
                self.need(actor, Act::ManageActors, "*", "*")?;
                if !valid_name(name) {
                    return Err(invalid("name", "1-128 characters of [A-Za-z0-9._/-]"));
                }
                if self.actors.contains_key(name) {
                    return Err(Rejection::AlreadyExists {
                        what: format!("actor {name}"),
                    });
                }
                self.check_new_key(name, key)?;
                if roles.is_empty() {
                    return Err(invalid("roles", "at least one role"));
                }
                self.check_roles(roles)
            }
            Action::SetActorRoles { name, roles } => {
                self.need(actor, Act::ManageActors, "*", "*")?;
                let current = self.live_actor(name)?;
                self.check_roles(roles)?;
                let new: BTreeSet<String> = roles.iter().cloned().collect();
                if new == current.roles {
                    return Err(Rejection::FailedPrecondition {
                        reason: format!("actor {name} already holds exactly these roles"),
                    });
                }
                Ok(())
            }
            Action::SetPolicy { files } => {
                self.need(actor, Act::SetPolicy, "*", "*")?;
                let policy = Policy::new(files.clone())
                    .map_err(|e| invalid("files", format!("valid policy files: {e}")))?;
                if self
                    .policy
                    .as_ref()
                    .is_some_and(|(p, _)| p.version() == policy.version())
                {
                    return Err(Rejection::FailedPrecondition {
                        reason: format!("policy {} is already in force", policy.version()),
                    });
                }
                // Refuse a policy under which nobody could ever change the policy again.
                let someone = self
                    .actors
                    .values()
                    .any(|a| actor_may(Some(&policy), Some(a), Act::SetPolicy, "*", "*"));
                if !someone {
                    return Err(Rejection::FailedPrecondition {
                        reason: "under the new policy no live actor could set the policy again"
                            .into(),
                    });
                }
                Ok(())
            }
            Action::RotateKey { name, new_key } => {
                if name != actor {
                    self.need(actor, Act::ManageActors, "*", "*")?;
                }
                self.live_actor(name)?;
                self.check_new_key(name, new_key)
            }
            Action::RevokeActor { name, reason } => {
                self.need(actor, Act::ManageActors, "*", "*")?;
                self.live_actor(name)?;
                if reason.trim().is_empty() {
                    return Err(invalid("reason", "a non-empty reason"));
                }
                Ok(())
            }
            Action::CreatePrompt { prompt, .. } => {
                if !valid_name(prompt) {
                    return Err(invalid("prompt", "1-128 characters of [A-Za-z0-9._/-]"));
                }
                self.need(actor, Act::CreatePrompt, ns, "*")?;
                if self.prompts.contains_key(prompt) {
                    return Err(Rejection::AlreadyExists {
                        what: format!("prompt {prompt}"),
                    });
                }
                Ok(())
            }
            Action::CommitVersion {
                prompt,
                parent_version,
                template,
                model,
                parameters,
                variables,
                content_hash: hash,
                ..
            } => {
                self.need(actor, Act::CommitVersion, ns, "*")?;
                let p = self.existing_prompt(prompt)?;
                if *parent_version != p.head() {
                    return Err(Rejection::StaleParent {
                        prompt: prompt.clone(),
                        given: *parent_version,
                        head: p.head(),
                    });
                }
                if template.is_empty() {
                    return Err(invalid("template", "a non-empty template"));
                }
                if model.trim().is_empty() {
                    return Err(invalid("model", "a model name"));
                }
                let mut seen = BTreeSet::new();
                for v in variables {
                    if !valid_name(v) || !seen.insert(v) {
                        return Err(invalid(
                            "variables",
                            format!("unique variable names, got {v:?} twice or malformed"),
                        ));
                    }
                }
                let want = content_hash(template, model, parameters, variables);
                if *hash != want {
                    return Err(invalid(
                        "content_hash",
                        format!("{want} (the hash of the canonical content)"),
                    ));
                }
                Ok(())
            }
            Action::RecordEvaluation {
                prompt,
                version,
                content_hash: hash,
                suite,
                score,
                threshold,
                evaluator,
                ..
            } => {
                self.need(actor, Act::RecordEvaluation, ns, "*")?;
                let v = self.existing_version(prompt, *version)?;
                if v.content_hash != *hash {
                    return Err(invalid(
                        "content_hash",
                        format!("{} (version {version}'s content hash)", v.content_hash),
                    ));
                }
                if suite.trim().is_empty() {
                    return Err(invalid("suite", "an evaluation suite name"));
                }
                if evaluator.trim().is_empty() {
                    return Err(invalid("evaluator", "the evaluator's name"));
                }
                if !score.is_finite() || !threshold.is_finite() {
                    return Err(invalid("score", "finite score and threshold"));
                }
                Ok(())
            }
            Action::ApproveVersion {
                prompt,
                version,
                content_hash: hash,
                environment,
            } => {
                self.need(actor, Act::Approve, ns, environment.as_str())?;
                let v = self.existing_version(prompt, *version)?;
                if v.content_hash != *hash {
                    return Err(invalid(
                        "content_hash",
                        format!("{} (version {version}'s content hash)", v.content_hash),
                    ));
                }
                if v.author == actor {
                    return Err(Rejection::FailedPrecondition {
                        reason: format!(
                            "{actor} wrote version {version} and may not approve it (four eyes)"
                        ),
                    });
                }
                let p = self.existing_prompt(prompt)?;
                if p.active_approval(*version, *environment, actor) {
                    return Err(Rejection::AlreadyExists {
                        what: approval_name(prompt, *version, *environment, actor),
                    });
                }
                Ok(())
            }
            Action::RevokeApproval {
                prompt,
                version,
                environment,
                reason,
            } => {
                self.need(actor, Act::Approve, ns, environment.as_str())?;
                let p = self.existing_prompt(prompt)?;
                if reason.trim().is_empty() {
                    return Err(invalid("reason", "a non-empty reason"));
                }
                if !p.active_approval(*version, *environment, actor) {
                    return Err(Rejection::NotFound {
                        what: approval_name(prompt, *version, *environment, actor),
                    });
                }
                Ok(())
            }
            Action::PromoteVersion {
                prompt,
                version,
                environment,
                rollout,
                expected_deployment,
            }
            | Action::BreakGlassPromote {
                prompt,
                version,
                environment,
                rollout,
                expected_deployment,
                ..
            } => {
                let break_glass = match &st.action {
                    Action::BreakGlassPromote { reason, .. } => Some(reason),
                    _ => None,
                };
                let act = if break_glass.is_some() {
                    Act::BreakGlass
                } else {
                    Act::Promote
                };
                self.need(actor, act, ns, environment.as_str())?;
                if break_glass.is_some_and(|r| r.trim().is_empty()) {
                    return Err(invalid(
                        "reason",
                        "a non-empty reason for breaking the glass",
                    ));
                }
                let v = self.existing_version(prompt, *version)?;
                let p = self.existing_prompt(prompt)?;
                check_expected(p, *environment, *expected_deployment)?;
                let splits = check_rollout(p, *version, *environment, rollout)?;
                let current = p.deployments.get(environment).map(governance::splits_of);
                if current.as_deref() == Some(effective(&splits, *version).as_slice()) {
                    return Err(Rejection::FailedPrecondition {
                        reason: format!(
                            "{prompt} version {version} is already live in {environment} with these weights"
                        ),
                    });
                }
                if break_glass.is_none() {
                    let decision = self.decision(p, v, *environment, ev.timestamp_ms);
                    if let Some(failed) = decision.as_ref().and_then(|d| d.failed()) {
                        return Err(Rejection::GateFailed(Box::new(GateFailure {
                            prompt: prompt.clone(),
                            version: *version,
                            environment: *environment,
                            gate: failed.gate.clone(),
                            detail: failed.detail.clone(),
                            policy: decision
                                .as_ref()
                                .map(|d| d.policy_version.clone())
                                .unwrap_or_default(),
                        })));
                    }
                    *decision_out = decision;
                }
                Ok(())
            }
            Action::RollbackPrompt {
                prompt,
                version,
                environment,
                reason,
                expected_deployment,
            } => {
                self.need(actor, Act::Rollback, ns, environment.as_str())?;
                let p = self.existing_prompt(prompt)?;
                if reason.trim().is_empty() {
                    return Err(invalid("reason", "a non-empty reason"));
                }
                check_expected(p, *environment, *expected_deployment)?;
                let current = p.deployments.get(environment).map(governance::splits_of);
                let was_live = p
                    .deployments_in(*environment)
                    .iter()
                    .any(|d| governance::routes_to(d, *version));
                let whole = [Split {
                    version: *version,
                    weight: 100,
                }];
                if !was_live || current.as_deref() == Some(whole.as_slice()) {
                    return Err(Rejection::FailedPrecondition {
                        reason: format!(
                            "{prompt} version {version} was not live in {environment} before (or is live now); rollback only returns to an earlier live version"
                        ),
                    });
                }
                Ok(())
            }
        }
    }

    /// The gate decision for `version` entering `env` now, under the policy in force.
    fn decision(&self, p: &Prompt, v: &Version, env: Environment, now_ms: u64) -> Option<Decision> {
        let (policy, seq) = self.policy.as_ref()?;
        Some(governance::evaluate(
            policy,
            *seq,
            p,
            v,
            env,
            &self.actors,
            now_ms,
        ))
    }

    /// Signature-independent checks every appended statement needs: right ledger, a valid key
    /// of the named actor, a fresh nonce.
    fn authenticate(&self, ev: &Event<'_>) -> Result<(), Rejection> {
        let st = ev.statement;
        if st.ledger_id != self.ledger_id {
            return Err(Rejection::WrongLedger {
                expected: self.ledger_id.clone(),
                found: st.ledger_id.clone(),
            });
        }
        let Some((owner, _)) = self.signing_key(ev.signer) else {
            return Err(Rejection::UnknownKey {
                keyid: ev.signer.to_owned(),
            });
        };
        if owner != st.actor {
            return Err(Rejection::ActorMismatch {
                actor: st.actor.clone(),
                keyid: ev.signer.to_owned(),
            });
        }
        if st.nonce.is_empty() || st.nonce.len() > 128 {
            return Err(invalid("nonce", "1 to 128 characters"));
        }
        if let Some((seq, hash)) = self.nonce(&st.actor, &st.nonce) {
            return Err(if hash == ev.payload_hash {
                Rejection::Duplicate { seq }
            } else {
                Rejection::NonceReused { seq }
            });
        }
        Ok(())
    }

    fn check_new_key(&self, name: &str, vkey: &str) -> Result<(), Rejection> {
        let key = PublicKey::from_vkey(vkey)
            .map_err(|e| invalid("key", format!("a verifier key name+hhhhhhhh+base64 ({e})")))?;
        if key.name() != name {
            return Err(invalid(
                "key",
                format!("a key named {name:?}, got {:?}", key.name()),
            ));
        }
        if self
            .actors
            .values()
            .any(|a| a.keys.iter().any(|k| k.keyid == key.key_id().as_str()))
        {
            return Err(Rejection::AlreadyExists {
                what: format!("key {}", key.key_id()),
            });
        }
        Ok(())
    }

    fn live_actor(&self, name: &str) -> Result<&Actor, Rejection> {
        match self.actors.get(name) {
            Some(a) if a.revoked_seq.is_none() => Ok(a),
            Some(_) => Err(Rejection::FailedPrecondition {
                reason: format!("actor {name} is revoked"),
            }),
            None => Err(Rejection::NotFound {
                what: format!("actor {name}"),
            }),
        }
    }

    fn existing_prompt(&self, name: &str) -> Result<&Prompt, Rejection> {
        self.prompts
            .get(name)
            .map(|p| p.as_ref())
            .ok_or_else(|| Rejection::NotFound {
                what: format!("prompt {name}"),
            })
    }

    fn existing_version(&self, prompt: &str, version: u64) -> Result<&Version, Rejection> {
        self.existing_prompt(prompt)?
            .version(version)
            .ok_or_else(|| Rejection::NotFound {
                what: format!("prompt {prompt} version {version}"),
            })
    }

    /// Applies an appended statement. Total: statements that `decide` would refuse change
    /// nothing but the nonce table. Returns the rows it changed.
    pub fn apply(&mut self, ev: &Event<'_>) -> Vec<Row> {
        self.apply_decided(ev, None)
    }

    /// [`Self::apply`] with the verdict [`Self::decide`] just gave for `ev` against this same
    /// state, so a promotion's gates are not evaluated twice.
    pub fn apply_decided(&mut self, ev: &Event<'_>, verdict: Option<Verdict>) -> Vec<Row> {
        let decided = verdict.filter(|v| v.seq == ev.seq).and_then(|v| v.decision);
        let st = ev.statement;
        let actor = st.actor.clone();
        self.nonces
            .insert((actor.clone(), st.nonce.clone()), (ev.seq, ev.payload_hash));
        let mut changed = Vec::new();
        let new_actor = |name: &str, vkey: &str, roles: BTreeSet<String>| {
            let key = PublicKey::from_vkey(vkey).ok()?;
            Some(Actor {
                name: name.to_owned(),
                roles,
                role_history: vec![],
                keys: vec![ActorKey {
                    keyid: key.key_id().to_string(),
                    vkey: vkey.to_owned(),
                    added_seq: ev.seq,
                    retired_seq: None,
                }],
                registered_seq: ev.seq,
                revoked_seq: None,
                revoked_reason: None,
            })
        };
        match &st.action {
            Action::Genesis { admin_key, .. } => {
                self.ledger_id = st.ledger_id.clone();
                let name = PublicKey::from_vkey(admin_key)
                    .map(|k| k.name().to_owned())
                    .unwrap_or_default();
                if let Some(a) = new_actor(&name, admin_key, BTreeSet::from(["admin".to_owned()])) {
                    changed.push(self.put_actor(a));
                }
            }
            Action::OpenSession {} => {}
            Action::RegisterActor { name, key, roles } => {
                if !self.actors.contains_key(name) {
                    if let Some(a) = new_actor(name, key, roles.iter().cloned().collect()) {
                        changed.push(self.put_actor(a));
                        self.authz_epoch = ev.seq;
                    }
                }
            }
            Action::SetActorRoles { name, roles } => {
                if let Some(a) = self.actors.get(name) {
                    let mut a = Actor::clone(a);
                    if a.role_history.is_empty() {
                        a.role_history.push(RoleChange {
                            seq: a.registered_seq,
                            roles: a.roles.clone(),
                        });
                    }
                    a.roles = roles.iter().cloned().collect();
                    a.role_history.push(RoleChange {
                        seq: ev.seq,
                        roles: a.roles.clone(),
                    });
                    changed.push(self.put_actor(a));
                    self.authz_epoch = ev.seq;
                }
            }
            Action::SetPolicy { files } => {
                if let Ok(policy) = Policy::new(files.clone()) {
                    let record = PolicyRecord {
                        seq: ev.seq,
                        version: policy.version().to_owned(),
                        by: actor.clone(),
                        timestamp_ms: ev.timestamp_ms,
                        files: files.clone(),
                    };
                    changed.push(self.put_policy(record, Arc::new(policy)));
                }
            }
            Action::RotateKey { name, new_key } => {
                if let (Some(a), Ok(k)) = (self.actors.get(name), PublicKey::from_vkey(new_key)) {
                    let mut a = Actor::clone(a);
                    for old in a.keys.iter_mut().filter(|k| k.retired_seq.is_none()) {
                        old.retired_seq = Some(ev.seq);
                    }
                    a.keys.push(ActorKey {
                        keyid: k.key_id().to_string(),
                        vkey: new_key.clone(),
                        added_seq: ev.seq,
                        retired_seq: None,
                    });
                    changed.push(self.put_actor(a));
                }
            }
            Action::RevokeActor { name, reason } => {
                if let Some(a) = self.actors.get(name) {
                    let mut a = Actor::clone(a);
                    a.revoked_seq = Some(ev.seq);
                    a.revoked_reason = Some(reason.clone());
                    for k in a.keys.iter_mut().filter(|k| k.retired_seq.is_none()) {
                        k.retired_seq = Some(ev.seq);
                    }
                    changed.push(self.put_actor(a));
                    self.authz_epoch = ev.seq;
                }
            }
            Action::CreatePrompt {
                prompt,
                description,
            } => {
                if !self.prompts.contains_key(prompt) {
                    let p = Prompt {
                        name: prompt.clone(),
                        description: description.clone(),
                        created_by: actor.clone(),
                        created_seq: ev.seq,
                        deployments: BTreeMap::new(),
                        versions: Vector::new(),
                        deployment_history: Vector::new(),
                        by_environment: Default::default(),
                        evaluations: Vector::new(),
                        approvals: vec![],
                        history: Vector::new(),
                        chains: Chains::default(),
                    };
                    self.prompts.insert(prompt.clone(), Arc::new(p));
                }
                changed.extend(self.record(prompt, ev, None, None, |_| vec![]));
            }
            Action::CommitVersion {
                prompt,
                parent_version,
                template,
                model,
                parameters,
                variables,
                message,
                content_hash,
            } => {
                let number = self
                    .prompts
                    .get(prompt)
                    .map_or(1, |p| p.versions.len() as u64 + 1);
                changed.extend(self.record(prompt, ev, Some(number), None, |p| {
                    p.push_version(Version {
                        number,
                        parent: *parent_version,
                        template: template.clone(),
                        model: model.clone(),
                        parameters: parameters.clone(),
                        variables: variables.clone(),
                        message: message.clone(),
                        content_hash: content_hash.clone(),
                        author: actor.clone(),
                        seq: ev.seq,
                        timestamp_ms: ev.timestamp_ms,
                    });
                    vec![Row::Version(prompt.clone(), number)]
                }));
            }
            Action::RecordEvaluation {
                prompt,
                version,
                content_hash,
                suite,
                score,
                threshold,
                passed,
                evaluator,
                evidence_digest,
                evidence_uri,
            } => {
                changed.extend(self.record(prompt, ev, Some(*version), None, |p| {
                    p.push_evaluation(Evaluation {
                        seq: ev.seq,
                        version: *version,
                        content_hash: content_hash.clone(),
                        suite: suite.clone(),
                        score: *score,
                        threshold: *threshold,
                        passed: *passed,
                        evaluator: evaluator.clone(),
                        evidence_digest: evidence_digest.clone(),
                        evidence_uri: evidence_uri.clone(),
                        by: actor.clone(),
                    });
                    vec![Row::Evaluation(prompt.clone(), ev.seq)]
                }));
            }
            Action::ApproveVersion {
                prompt,
                version,
                content_hash,
                environment,
            } => {
                changed.extend(
                    self.record(prompt, ev, Some(*version), Some(*environment), |p| {
                        p.push_approval(Approval {
                            seq: ev.seq,
                            version: *version,
                            content_hash: content_hash.clone(),
                            environment: *environment,
                            by: actor.clone(),
                            revoked_seq: None,
                        });
                        vec![Row::Approval(prompt.clone(), ev.seq)]
                    }),
                );
            }
            Action::RevokeApproval {
                prompt,
                version,
                environment,
                ..
            } => {
                changed.extend(
                    self.record(prompt, ev, Some(*version), Some(*environment), |p| {
                        let mut revoked = vec![];
                        for a in p.approvals.iter_mut().filter(|a| {
                            a.version == *version
                                && a.environment == *environment
                                && a.by == actor
                                && a.revoked_seq.is_none()
                        }) {
                            a.revoked_seq = Some(ev.seq);
                            revoked.push(a.seq);
                        }
                        for &seq in &revoked {
                            p.chain_revocation(seq, ev.seq);
                        }
                        revoked
                            .into_iter()
                            .map(|seq| Row::Approval(prompt.clone(), seq))
                            .collect()
                    }),
                );
            }
            Action::PromoteVersion {
                prompt,
                version,
                environment,
                ..
            }
            | Action::RollbackPrompt {
                prompt,
                version,
                environment,
                ..
            }
            | Action::BreakGlassPromote {
                prompt,
                version,
                environment,
                ..
            } => {
                let (rollback, splits, reason) = match &st.action {
                    Action::PromoteVersion { rollout, .. } => (false, rollout.clone(), None),
                    Action::RollbackPrompt { reason, .. } => (true, vec![], Some(reason.clone())),
                    Action::BreakGlassPromote {
                        rollout, reason, ..
                    } => (false, rollout.clone(), Some(reason.clone())),
                    _ => unreachable!("matched above"),
                };
                let break_glass = matches!(st.action, Action::BreakGlassPromote { .. });
                let decision = match (self.prompts.get(prompt), &self.policy) {
                    _ if decided.is_some() && !rollback && !break_glass => decided,
                    (Some(p), Some((policy, policy_seq))) if rollback => Some(
                        governance::rollback(policy, *policy_seq, p, *version, *environment),
                    ),
                    (Some(p), Some(_)) => p.version(*version).and_then(|v| {
                        let mut d = self.decision(p, v, *environment, ev.timestamp_ms)?;
                        d.break_glass = reason.clone().filter(|_| break_glass);
                        Some(d)
                    }),
                    _ => None,
                };
                changed.extend(
                    self.record(prompt, ev, Some(*version), Some(*environment), |p| {
                        let d = Deployment {
                            environment: *environment,
                            version: *version,
                            seq: ev.seq,
                            timestamp_ms: ev.timestamp_ms,
                            by: actor.clone(),
                            rollback,
                            splits,
                            break_glass,
                            reason,
                            decision,
                        };
                        p.push_deployment(d);
                        vec![Row::Deployment(prompt.clone(), ev.seq)]
                    }),
                );
            }
        }
        changed
    }

    /// Changes a prompt (if it exists) and appends the event to its history. `change` returns
    /// the list rows it touched; the header and the history row are added here.
    fn record(
        &mut self,
        prompt: &str,
        ev: &Event<'_>,
        version: Option<u64>,
        environment: Option<Environment>,
        change: impl FnOnce(&mut Prompt) -> Vec<Row>,
    ) -> Vec<Row> {
        let Some(p) = self.prompts.get_mut(prompt) else {
            return vec![];
        };
        // Copy-on-write: a reader's view may still hold this prompt; the copy shares every
        // list item (`Arc`), so it costs pointers, not content.
        let p = Arc::make_mut(p);
        let mut rows = change(p);
        p.push_history(HistoryItem {
            seq: ev.seq,
            kind: ev.statement.action.kind().to_owned(),
            actor: ev.statement.actor.clone(),
            timestamp_ms: ev.timestamp_ms,
            version,
            environment,
            break_glass: matches!(ev.statement.action, Action::BreakGlassPromote { .. }),
        });
        rows.push(Row::History(prompt.to_owned(), ev.seq));
        rows.push(Row::Prompt(prompt.to_owned()));
        self.tree
            .set(Row::Prompt(prompt.to_owned()).encode(), p.digest());
        rows
    }

    fn put_policy(&mut self, record: PolicyRecord, policy: Arc<Policy>) -> Row {
        let row = Row::Policy(record.seq);
        self.tree.set(row.encode(), digest(&record));
        self.policy = Some((policy, record.seq));
        self.authz_epoch = self.authz_epoch.max(record.seq);
        self.policy_history.push_back(Arc::new(record));
        row
    }

    fn put_actor(&mut self, actor: Actor) -> Row {
        let key = Row::Actor(actor.name.clone());
        self.tree.set(key.encode(), digest(&actor));
        self.index_keys(&actor);
        self.actors.insert(actor.name.clone(), Arc::new(actor));
        key
    }

    fn index_keys(&mut self, actor: &Actor) {
        for k in &actor.keys {
            let valid = k.retired_seq.is_none() && actor.revoked_seq.is_none();
            match (valid, PublicKey::from_vkey(&k.vkey)) {
                (true, Ok(public)) => {
                    self.keys.insert(
                        k.keyid.clone(),
                        KeyEntry {
                            actor: actor.name.clone(),
                            key: *public.verifying_key(),
                        },
                    );
                }
                _ => {
                    self.keys.remove(&k.keyid);
                }
            }
        }
    }

    /// The JSON stored for a row of the `state` column family.
    pub fn row_json(&self, row: &Row) -> Option<Vec<u8>> {
        fn json<T: Serialize>(v: &T) -> Vec<u8> {
            serde_json::to_vec(v).expect("state serializes")
        }
        /// The newest item of `items` recorded at `seq` (rows are written right after the
        /// event that made them, so the search ends at once).
        fn at<'a, T: Serialize + 'a>(
            items: impl DoubleEndedIterator<Item = &'a T>,
            seq: Seq,
            seq_of: impl Fn(&T) -> Seq,
        ) -> Option<Vec<u8>> {
            items.rev().find(|i| seq_of(i) == seq).map(json)
        }
        let prompt = |n: &str| self.prompts.get(n);
        match row {
            Row::Actor(n) => self.actors.get(n).map(|a| json(&**a)),
            Row::Prompt(n) => prompt(n).map(|p| json(&**p)),
            Row::Version(n, i) => prompt(n)?.version(*i).map(json),
            Row::History(n, s) => at(prompt(n)?.history.iter().map(|h| &**h), *s, |h| h.seq),
            Row::Evaluation(n, s) => at(prompt(n)?.evaluations.iter().map(|e| &**e), *s, |e| e.seq),
            Row::Approval(n, s) => at(prompt(n)?.approvals.iter(), *s, |a| a.seq),
            Row::Deployment(n, s) => at(
                prompt(n)?.deployment_history.iter().map(|d| &**d),
                *s,
                |d| d.seq,
            ),
            Row::Policy(s) => at(self.policy_history.iter().map(|r| &**r), *s, |r| r.seq),
        }
    }

    /// Rebuilds a state from its stored rows (in key order) and nonces, without replay.
    pub fn load(
        ledger_id: &str,
        rows: impl IntoIterator<Item = (Row, Vec<u8>)>,
        nonces: impl IntoIterator<Item = ((String, String), (Seq, Hash))>,
    ) -> Result<State, serde_json::Error> {
        let mut state = State {
            ledger_id: ledger_id.to_owned(),
            ..State::default()
        };
        let mut current: Option<Prompt> = None;
        let finish = |state: &mut State, p: Option<Prompt>| {
            if let Some(mut p) = p {
                // Revocations were chained in the order they happened.
                let mut revocations: Vec<(Seq, Seq)> = p
                    .approvals
                    .iter()
                    .filter_map(|a| a.revoked_seq.map(|r| (r, a.seq)))
                    .collect();
                revocations.sort_unstable();
                for (revoked, approval) in revocations {
                    p.chain_revocation(approval, revoked);
                }
                state
                    .tree
                    .set(Row::Prompt(p.name.clone()).encode(), p.digest());
                state.prompts.insert(p.name.clone(), Arc::new(p));
            }
        };
        for (row, json) in rows {
            match row {
                Row::Actor(_) => {
                    let a: Actor = serde_json::from_slice(&json)?;
                    let changes = [Some(a.registered_seq), a.revoked_seq]
                        .into_iter()
                        .flatten()
                        .chain(a.role_history.iter().map(|c| c.seq));
                    state.authz_epoch = changes.fold(state.authz_epoch, Seq::max);
                    state.put_actor(a);
                }
                Row::Policy(_) => {
                    let record: PolicyRecord = serde_json::from_slice(&json)?;
                    let policy = Policy::new(record.files.clone()).map_err(|e| {
                        <serde_json::Error as serde::de::Error>::custom(format!(
                            "stored policy at {} no longer loads: {e}",
                            record.seq
                        ))
                    })?;
                    state.put_policy(record, Arc::new(policy));
                }
                Row::Prompt(_) => {
                    let header: Prompt = serde_json::from_slice(&json)?;
                    finish(&mut state, current.replace(header));
                }
                item => {
                    // Rows of a prompt follow its header (see `Row`).
                    let Some(p) = current.as_mut() else { continue };
                    match item {
                        Row::Version(..) => p.push_version(serde_json::from_slice(&json)?),
                        Row::History(..) => p.push_history(serde_json::from_slice(&json)?),
                        Row::Evaluation(..) => p.push_evaluation(serde_json::from_slice(&json)?),
                        Row::Approval(..) => p.push_approval(serde_json::from_slice(&json)?),
                        Row::Deployment(..) => p.push_deployment(serde_json::from_slice(&json)?),
                        Row::Actor(_) | Row::Prompt(_) | Row::Policy(_) => {
                            unreachable!("matched above")
                        }
                    }
                }
            }
        }
        finish(&mut state, current);
        state.nonces = nonces.into_iter().collect();
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::keys::KeyPair;
    use std::collections::BTreeMap;

    struct Log {
        state: State,
        seq: Seq,
        /// What the `state` column family would hold.
        rows: BTreeMap<String, Vec<u8>>,
        nonces: Vec<((String, String), (Seq, Hash))>,
    }

    impl Log {
        fn append(&mut self, key: &KeyPair, action: Action) {
            let st = Statement {
                ledger_id: "00".repeat(16),
                actor: key.name().to_owned(),
                issued_at_ms: 0,
                nonce: format!("n{}", self.seq),
                action,
            };
            let keyid = key.key_id().to_string();
            let ev = Event {
                seq: self.seq,
                timestamp_ms: 1_000 + self.seq,
                signer: &keyid,
                statement: &st,
                payload_hash: [self.seq as u8; 32],
            };
            let verdict = self
                .state
                .decide(&ev)
                .unwrap_or_else(|r| panic!("{}: {r}", st.action.kind()));
            for row in self.state.apply_decided(&ev, Some(verdict)) {
                let json = self.state.row_json(&row).unwrap();
                self.rows.insert(row.encode(), json);
            }
            self.nonces.push((
                (st.actor.clone(), st.nonce.clone()),
                (self.seq, ev.payload_hash),
            ));
            self.seq += 1;
        }
    }

    fn key(name: &str) -> KeyPair {
        KeyPair::from_seed(name, &[name.len() as u8; 32]).unwrap()
    }

    #[test]
    fn the_state_root_is_incremental_and_survives_a_reload() {
        let (admin, alice, bob, dora) = (key("admin"), key("alice"), key("bob"), key("dora"));
        let mut log = Log {
            state: State::new(),
            seq: 0,
            rows: BTreeMap::new(),
            nonces: vec![],
        };
        log.append(
            &admin,
            Action::Genesis {
                origin: "o".into(),
                ledger_key: admin.public().to_vkey(),
                admin_key: admin.public().to_vkey(),
            },
        );
        log.append(
            &admin,
            Action::SetPolicy {
                files: PolicyFiles::builtin(),
            },
        );
        for (k, role) in [(&alice, "author"), (&bob, "reviewer"), (&dora, "deployer")] {
            log.append(
                &admin,
                Action::RegisterActor {
                    name: k.name().into(),
                    key: k.public().to_vkey(),
                    roles: vec![role.into()],
                },
            );
        }
        let mut roots = BTreeSet::new();
        for i in 0..40 {
            let prompt = format!("ns{}/p{i}", i % 3);
            log.append(
                &alice,
                Action::CreatePrompt {
                    prompt: prompt.clone(),
                    description: String::new(),
                },
            );
            let template = format!("t{i}");
            let parameters = BTreeMap::new();
            log.append(
                &alice,
                Action::CommitVersion {
                    prompt: prompt.clone(),
                    parent_version: None,
                    content_hash: content_hash(&template, "m", &parameters, &[]),
                    template: template.clone(),
                    model: "m".into(),
                    parameters: parameters.clone(),
                    variables: vec![],
                    message: String::new(),
                },
            );
            for env in [Environment::Staging, Environment::Production] {
                log.append(
                    &bob,
                    Action::ApproveVersion {
                        prompt: prompt.clone(),
                        version: 1,
                        content_hash: content_hash(&template, "m", &parameters, &[]),
                        environment: env,
                    },
                );
            }
            if i % 2 == 0 {
                log.append(
                    &bob,
                    Action::RevokeApproval {
                        prompt: prompt.clone(),
                        version: 1,
                        environment: Environment::Production,
                        reason: "r".into(),
                    },
                );
            }
            log.append(
                &dora,
                Action::PromoteVersion {
                    prompt,
                    version: 1,
                    environment: Environment::Dev,
                    rollout: vec![],
                    expected_deployment: None,
                },
            );
            let root = log.state.state_root();
            assert_eq!(
                root,
                log.state.state_root_from_scratch(),
                "after prompt {i}"
            );
            assert!(roots.insert(root), "every change moves the root");
        }
        // The projection loaded from its rows (no replay) commits to the same state.
        let rows = log
            .rows
            .iter()
            .map(|(k, v)| (Row::decode(k).unwrap(), v.clone()));
        let loaded = State::load(&"00".repeat(16), rows, log.nonces.clone()).unwrap();
        assert_eq!(loaded.state_root(), log.state.state_root());
        // And an approval revoked in the other order would not.
        let mut other = log.rows.clone();
        let key = other.keys().find(|k| k.contains("#a/")).cloned().unwrap();
        let mut a: Approval = serde_json::from_slice(&other[&key]).unwrap();
        a.revoked_seq = Some(a.revoked_seq.map_or(1, |s| s + 1));
        other.insert(key, serde_json::to_vec(&a).unwrap());
        let rows = other
            .iter()
            .map(|(k, v)| (Row::decode(k).unwrap(), v.clone()));
        let tampered = State::load(&"00".repeat(16), rows, log.nonces).unwrap();
        assert_ne!(tampered.state_root(), log.state.state_root());
    }
}
