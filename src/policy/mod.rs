//! The promotion policy: who may do what (a Casbin model and policy, RBAC with domains) and what
//! a version needs before each environment (gates). The three files live under `policies/`,
//! are recorded in the ledger (`set_policy` statements) and are judged by the version in force
//! at each position of the log. This module parses and evaluates them; it does no I/O except
//! [`PolicyFiles::read_dir`].
//!
//! Casbin is asked about *roles*, not actors: `(role, namespace, environment, action)`. An
//! actor's role assignments (`role` everywhere, `role@namespace` in one namespace) come from the
//! ledger's actor events, so they are versioned with the log; the Casbin policy says what each
//! role may do, and its `g` lines say which role inherits which.

pub mod gates;

use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

pub use gates::{Gate, Gates, SuiteGate};

/// File names under a policy directory, in the order the policy version hashes them.
pub const MODEL_FILE: &str = "model.conf";
pub const POLICY_FILE: &str = "policy.csv";
pub const GATES_FILE: &str = "gates.toml";

/// The namespace of prompts whose name has no `/`.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A prompt's namespace (its Casbin domain): the name's first `/`-separated segment, or
/// [`DEFAULT_NAMESPACE`] for a name without `/`.
pub fn namespace_of(prompt: &str) -> &str {
    prompt
        .split_once('/')
        .map_or(DEFAULT_NAMESPACE, |(ns, _)| ns)
}

/// The three policy files, as text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFiles {
    /// `model.conf`: the Casbin model.
    pub model: String,
    /// `policy.csv`: the Casbin policy (`p` and `g` lines).
    pub policy: String,
    /// `gates.toml`: the gates per environment.
    pub gates: String,
}

impl PolicyFiles {
    /// The defaults shipped in `policies/`, compiled in.
    pub fn builtin() -> Self {
        PolicyFiles {
            model: include_str!("../../policies/model.conf").to_owned(),
            policy: include_str!("../../policies/policy.csv").to_owned(),
            gates: include_str!("../../policies/gates.toml").to_owned(),
        }
    }

    /// Reads `model.conf`, `policy.csv` and `gates.toml` from `dir`.
    pub fn read_dir(dir: &Path) -> std::io::Result<Self> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(name).display()))
            })
        };
        Ok(PolicyFiles {
            model: read(MODEL_FILE)?,
            policy: read(POLICY_FILE)?,
            gates: read(GATES_FILE)?,
        })
    }

    /// The policy version: `sha256:` and the hex SHA-256 over, for each file in the order
    /// model.conf, policy.csv, gates.toml: the file name's length (u32 big-endian), the name,
    /// the content's length in bytes (u64 big-endian), the content.
    pub fn version(&self) -> String {
        let mut h = Sha256::new();
        for (name, text) in [
            (MODEL_FILE, &self.model),
            (POLICY_FILE, &self.policy),
            (GATES_FILE, &self.gates),
        ] {
            h.update((name.len() as u32).to_be_bytes());
            h.update(name.as_bytes());
            h.update((text.len() as u64).to_be_bytes());
            h.update(text.as_bytes());
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

/// What the policy is asked about: Casbin's `act`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    ManageActors,
    SetPolicy,
    CreatePrompt,
    CommitVersion,
    RecordEvaluation,
    Approve,
    Promote,
    Rollback,
    BreakGlass,
    /// Read everything: versions, history, lists, audit queries.
    Read,
    /// Read the prompt live in an environment (the hot path); `read` implies it.
    ReadDeployed,
}

impl Act {
    pub const ALL: [Act; 11] = [
        Act::ManageActors,
        Act::SetPolicy,
        Act::CreatePrompt,
        Act::CommitVersion,
        Act::RecordEvaluation,
        Act::Approve,
        Act::Promote,
        Act::Rollback,
        Act::BreakGlass,
        Act::Read,
        Act::ReadDeployed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Act::ManageActors => "manage_actors",
            Act::SetPolicy => "set_policy",
            Act::CreatePrompt => "create_prompt",
            Act::CommitVersion => "commit_version",
            Act::RecordEvaluation => "record_evaluation",
            Act::Approve => "approve",
            Act::Promote => "promote",
            Act::Rollback => "rollback",
            Act::BreakGlass => "break_glass",
            Act::Read => "read",
            Act::ReadDeployed => "read_deployed",
        }
    }

    pub fn parse(s: &str) -> Option<Act> {
        Act::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role assignment as actor events carry it: `role` (every namespace) or `role@namespace`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant<'a> {
    pub role: &'a str,
    /// `None`: every namespace.
    pub namespace: Option<&'a str>,
}

impl<'a> Grant<'a> {
    pub fn parse(s: &'a str) -> Option<Grant<'a>> {
        let (role, namespace) = match s.split_once('@') {
            Some((r, ns)) => (r, Some(ns)),
            None => (s, None),
        };
        let word = |w: &str| {
            !w.is_empty()
                && w.len() <= 64
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        (word(role) && namespace.is_none_or(word)).then_some(Grant { role, namespace })
    }

    /// Whether the grant applies in `namespace` (`"*"`: a request about every namespace, which
    /// only an unrestricted grant covers).
    pub fn covers(&self, namespace: &str) -> bool {
        match self.namespace {
            None => true,
            Some(ns) => ns == namespace,
        }
    }
}

/// Why policy files are refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("model.conf: {0}")]
    Model(String),
    #[error("policy.csv line {line}: {reason}")]
    PolicyLine { line: usize, reason: String },
    #[error("policy.csv: {0}")]
    Policy(String),
    #[error("gates.toml: {0}")]
    Gates(String),
}

/// Largest number of cached decisions before the cache starts over.
const CACHE_LIMIT: usize = 100_000;

/// A parsed, ready policy. Immutable: a policy change makes a new one.
pub struct Policy {
    files: PolicyFiles,
    version: String,
    gates: Gates,
    roles: BTreeSet<String>,
    /// Namespaces named by `p` lines (other than `*`).
    namespaces: BTreeSet<String>,
    enforcer: Enforcer,
    /// `(role, namespace, environment, act)` → allowed. An uncached `enforce` costs tens of
    /// microseconds (Casbin evaluates the matcher with a script engine); the answers of one
    /// immutable policy never change, so they are remembered.
    cache: Mutex<HashMap<(String, String, String, Act), bool>>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("version", &self.version)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// Runs a future that never waits (Casbin's loaders are `async` for their file and database
/// adapters; ours reads strings).
fn ready<F: std::future::Future>(f: F) -> F::Output {
    futures_executor::block_on(f)
}

/// A Casbin enforcer of `model` and `policy` text. Casbin panics on some malformed models
/// (e.g. an unsupported policy effect); that panic is caught and returned as an error, so a
/// bad `set_policy` statement is refused instead of stopping the writer.
pub fn enforcer(model: &str, policy: &str) -> Result<Enforcer, casbin::Error> {
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ready(async {
            let m = DefaultModel::from_str(model).await?;
            Enforcer::new(m, StringAdapter::new(policy)).await
        })
    }));
    built.unwrap_or_else(|panic| Err(casbin_panic(panic)))
}

fn casbin_panic(panic: Box<dyn std::any::Any + Send>) -> casbin::Error {
    let what = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "the model is not usable".into());
    casbin::Error::ModelError(casbin::error::ModelError::Other(what))
}

const ENVIRONMENTS: [&str; 3] = ["dev", "staging", "production"];

impl Policy {
    /// Parses and checks the three files.
    pub fn new(files: PolicyFiles) -> Result<Policy, PolicyError> {
        let gates = Gates::parse(&files.gates).map_err(PolicyError::Gates)?;
        let (roles, namespaces) = check_policy_csv(&files.policy)?;
        for section in ["[request_definition]", "[policy_definition]", "[matchers]"] {
            if !files.model.contains(section) {
                return Err(PolicyError::Model(format!("no {section} section")));
            }
        }
        let enforcer = enforcer(&files.model, &files.policy).map_err(|e| match e {
            casbin::Error::ModelError(e) => PolicyError::Model(e.to_string()),
            e => PolicyError::Policy(e.to_string()),
        })?;
        let policy = Policy {
            version: files.version(),
            files,
            gates,
            roles,
            namespaces,
            enforcer,
            cache: Mutex::new(HashMap::new()),
        };
        // A model whose request is not (sub, dom, obj, act) fails here, not at the first use.
        let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            policy.enforcer.enforce(("admin", "*", "*", "read"))
        }))
        .unwrap_or_else(|panic| Err(casbin_panic(panic)));
        probe.map_err(|e| {
            PolicyError::Model(format!(
                "cannot answer (role, namespace, environment, action): {e}"
            ))
        })?;
        Ok(policy)
    }

    pub fn files(&self) -> &PolicyFiles {
        &self.files
    }

    /// See [`PolicyFiles::version`].
    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn gates(&self) -> &Gates {
        &self.gates
    }

    /// Every role the policy names.
    pub fn roles(&self) -> &BTreeSet<String> {
        &self.roles
    }

    /// Namespaces the policy's `p` lines name.
    pub fn namespaces(&self) -> &BTreeSet<String> {
        &self.namespaces
    }

    /// Whether `role` may `act` in `namespace` and `environment` (`"*"` when the action has
    /// none). Answers are cached; a matcher error counts as a refusal.
    pub fn allows(&self, role: &str, namespace: &str, environment: &str, act: Act) -> bool {
        let key = (
            role.to_owned(),
            namespace.to_owned(),
            environment.to_owned(),
            act,
        );
        if let Some(&hit) = self.cache.lock().expect("policy cache").get(&key) {
            return hit;
        }
        let allowed = self.enforce_uncached(role, namespace, environment, act);
        let mut cache = self.cache.lock().expect("policy cache");
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, allowed);
        allowed
    }

    /// One Casbin `enforce`, without the cache (benchmarks use it). A matcher error, or a
    /// panic inside Casbin, counts as a refusal.
    pub fn enforce_uncached(
        &self,
        role: &str,
        namespace: &str,
        environment: &str,
        act: Act,
    ) -> bool {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.enforcer
                .enforce((role, namespace, environment, act.as_str()))
                .unwrap_or(false)
        }))
        .unwrap_or(false)
    }

    /// Whether an actor holding `grants` may `act` in `namespace` (`"*"`: every namespace) and
    /// `environment`: some grant that covers the namespace names a role the policy allows.
    pub fn grants_allow<'a>(
        &self,
        grants: impl IntoIterator<Item = &'a str>,
        namespace: &str,
        environment: &str,
        act: Act,
    ) -> bool {
        grants
            .into_iter()
            .filter_map(Grant::parse)
            .any(|g| g.covers(namespace) && self.allows(g.role, namespace, environment, act))
    }
}

/// Checks every `policy.csv` line's shape; returns the roles and namespaces it names.
fn check_policy_csv(text: &str) -> Result<(BTreeSet<String>, BTreeSet<String>), PolicyError> {
    let mut roles = BTreeSet::new();
    let mut namespaces = BTreeSet::new();
    let mut allows = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: String| PolicyError::PolicyLine {
            line: i + 1,
            reason,
        };
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        match cols.as_slice() {
            ["p", role, ns, env, act] => {
                if Grant::parse(role).is_none_or(|g| g.namespace.is_some()) {
                    return Err(bad(format!("role {role:?} is not a role name")));
                }
                if *env != "*" && !ENVIRONMENTS.contains(env) {
                    return Err(bad(format!(
                        "environment {env:?} is not one of *, dev, staging, production"
                    )));
                }
                if Act::parse(act).is_none() {
                    let all: Vec<&str> = Act::ALL.iter().map(|a| a.as_str()).collect();
                    return Err(bad(format!(
                        "action {act:?} is not one of {}",
                        all.join(", ")
                    )));
                }
                if *ns != "*" {
                    namespaces.insert((*ns).to_owned());
                }
                roles.insert((*role).to_owned());
                allows += 1;
            }
            ["g", role, parent, _ns] => {
                roles.insert((*role).to_owned());
                roles.insert((*parent).to_owned());
            }
            _ => {
                return Err(bad(
                    "expected `p, role, namespace, environment, action` or `g, role, inherited role, namespace`"
                        .into(),
                ))
            }
        }
    }
    if allows == 0 {
        return Err(PolicyError::Policy(
            "no `p` line: nobody could do anything".into(),
        ));
    }
    Ok((roles, namespaces))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_first_segments() {
        assert_eq!(namespace_of("support/greeting"), "support");
        assert_eq!(namespace_of("support/a/b"), "support");
        assert_eq!(namespace_of("greeting"), DEFAULT_NAMESPACE);
    }

    #[test]
    fn grants_parse() {
        assert_eq!(
            Grant::parse("service@checkout"),
            Some(Grant {
                role: "service",
                namespace: Some("checkout")
            })
        );
        assert_eq!(
            Grant::parse("author"),
            Some(Grant {
                role: "author",
                namespace: None
            })
        );
        assert_eq!(Grant::parse("a@"), None);
        assert_eq!(Grant::parse("a b"), None);
        assert!(Grant::parse("service@checkout").unwrap().covers("checkout"));
        assert!(!Grant::parse("service@checkout").unwrap().covers("*"));
        assert!(Grant::parse("auditor").unwrap().covers("*"));
    }

    #[test]
    fn builtin_policy_loads_and_decides() {
        let p = Policy::new(PolicyFiles::builtin()).unwrap();
        assert!(p.allows("deployer", "support", "production", Act::Promote));
        assert!(!p.allows("author", "support", "production", Act::Promote));
        assert!(
            p.allows("author", "support", "*", Act::ReadDeployed),
            "read implies read_deployed"
        );
        assert!(!p.allows("service", "support", "*", Act::Read));
        assert!(p.allows("service", "support", "*", Act::ReadDeployed));
        assert!(p.grants_allow(["service@support"], "support", "*", Act::ReadDeployed));
        assert!(!p.grants_allow(["service@support"], "billing", "*", Act::ReadDeployed));
        assert!(!p.grants_allow(["service@support"], "*", "*", Act::ReadDeployed));
        assert!(p.roles().contains("breakglass"));
        assert_eq!(p.version(), PolicyFiles::builtin().version());
    }

    #[test]
    fn version_changes_with_any_byte() {
        let a = PolicyFiles::builtin();
        let mut b = a.clone();
        b.gates.push(' ');
        assert_ne!(a.version(), b.version());
        // Moving bytes between files changes it too (lengths are hashed).
        let mut c = a.clone();
        c.model.push('x');
        let mut d = a.clone();
        d.policy.insert(0, 'x');
        assert_ne!(c.version(), d.version());
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        let mut f = PolicyFiles::builtin();
        f.policy.push_str("\np, author, *, prod, promote\n");
        let e = Policy::new(f).unwrap_err();
        assert!(matches!(e, PolicyError::PolicyLine { .. }), "{e}");
        assert!(e.to_string().contains("\"prod\""), "{e}");

        let mut f = PolicyFiles::builtin();
        f.policy.push_str("\np, author, *, *, deploy\n");
        assert!(Policy::new(f).unwrap_err().to_string().contains("deploy"));

        let mut f = PolicyFiles::builtin();
        f.model = "[matchers]\nm = true".into();
        assert!(matches!(Policy::new(f).unwrap_err(), PolicyError::Model(_)));

        let mut f = PolicyFiles::builtin();
        f.gates = "[staging]\napprovals = -1".into();
        assert!(matches!(Policy::new(f).unwrap_err(), PolicyError::Gates(_)));
    }

    #[test]
    fn a_model_that_makes_casbin_panic_is_refused_not_fatal() {
        let mut f = PolicyFiles::builtin();
        f.model = f.model.replace(
            "e = some(where (p.eft == allow))",
            "e = !some(where (p.eft == allow))",
        );
        let e = Policy::new(f).unwrap_err();
        assert!(matches!(e, PolicyError::Model(_)), "{e}");
        assert!(e.to_string().contains("unsupported effect"), "{e}");
    }

    #[test]
    fn inherited_roles_apply() {
        let mut f = PolicyFiles::builtin();
        f.policy.push_str("\ng, release-manager, deployer, *\n");
        let p = Policy::new(f).unwrap();
        assert!(p.allows("release-manager", "support", "production", Act::Promote));
        assert!(!p.allows("release-manager", "support", "production", Act::Approve));
    }
}
