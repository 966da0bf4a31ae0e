//! The registry's vocabulary: roles, environments, and the content hash of a prompt version.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// What an actor may do. The promotion-policy issue moves the rules to Casbin; here they are a
/// plain table ([`Role::may`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Author,
    Reviewer,
    Deployer,
    Ci,
    Service,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Admin,
        Role::Author,
        Role::Reviewer,
        Role::Deployer,
        Role::Ci,
        Role::Service,
        Role::Auditor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Author => "author",
            Role::Reviewer => "reviewer",
            Role::Deployer => "deployer",
            Role::Ci => "ci",
            Role::Service => "service",
            Role::Auditor => "auditor",
        }
    }

    /// Whether this role may perform `permission`.
    pub fn may(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Author => matches!(permission, WritePrompt | ReadDeployed | ReadAll),
            Role::Reviewer => matches!(permission, Approve | ReadDeployed | ReadAll),
            Role::Deployer => matches!(permission, Promote | ReadDeployed | ReadAll),
            Role::Ci => matches!(permission, Evaluate | Approve | ReadDeployed | ReadAll),
            Role::Service => matches!(permission, ReadDeployed),
            Role::Auditor => matches!(permission, ReadDeployed | ReadAll),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (one of admin, author, reviewer, deployer, ci, service, auditor)"))
    }
}

/// Coarse permissions the roles grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Register, rotate, revoke actors.
    ManageActors,
    /// Create prompts and commit versions.
    WritePrompt,
    /// Record evaluation results.
    Evaluate,
    /// Approve and revoke approvals.
    Approve,
    /// Promote and roll back.
    Promote,
    /// Fetch the prompt deployed in an environment (the hot path).
    ReadDeployed,
    /// Read everything else: versions, history, lists.
    ReadAll,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::ManageActors => "manage actors",
            Permission::WritePrompt => "write prompts",
            Permission::Evaluate => "record evaluations",
            Permission::Approve => "approve versions",
            Permission::Promote => "promote versions",
            Permission::ReadDeployed => "read deployed prompts",
            Permission::ReadAll => "read the registry",
        }
    }

    /// The roles that grant this permission, for error messages.
    pub fn roles(self) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| r.may(self)).collect()
    }
}

/// Deployment environments, in promotion order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    Dev,
    Staging,
    Production,
}

impl Environment {
    pub const ALL: [Environment; 3] = [
        Environment::Dev,
        Environment::Staging,
        Environment::Production,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Dev => "dev",
            Environment::Staging => "staging",
            Environment::Production => "production",
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Environment::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| format!("unknown environment {s:?} (one of dev, staging, production)"))
    }
}

/// The content hash of a version: `sha256:` and the lowercase hex SHA-256 of the canonical JSON
/// `{"model":…,"parameters":{…},"template":…,"variables":[…]}`: keys sorted at every level, no
/// white space, strings escaped as JSON requires (serde_json's compact form). Anyone can
/// recompute it from the version's fields.
pub fn content_hash(
    template: &str,
    model: &str,
    parameters: &BTreeMap<String, serde_json::Value>,
    variables: &[String],
) -> String {
    let canonical = canonical_content(template, model, parameters, variables);
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}

/// The canonical content JSON that [`content_hash`] hashes.
pub fn canonical_content(
    template: &str,
    model: &str,
    parameters: &BTreeMap<String, serde_json::Value>,
    variables: &[String],
) -> String {
    // serde_json's Map is a BTreeMap (no preserve_order feature), so nested objects come out
    // with sorted keys too.
    let value = serde_json::json!({
        "model": model,
        "parameters": parameters,
        "template": template,
        "variables": variables,
    });
    serde_json::to_string(&value).expect("JSON values serialize")
}

/// Names of prompts and actors: 1 to 128 characters of `[A-Za-z0-9._/-]`, not starting with
/// `.`, `/` or `-`. Conservative so that names are safe in key ids, NATS subjects and paths.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
        && !name.starts_with(['.', '/', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_over_sorted_compact_json() {
        let mut params = BTreeMap::new();
        params.insert("temperature".to_owned(), serde_json::json!(0.2));
        params.insert("max_tokens".to_owned(), serde_json::json!({"b": 1, "a": 2}));
        let canonical = canonical_content("Hi {{name}}", "gpt-x", &params, &["name".into()]);
        assert_eq!(
            canonical,
            r#"{"model":"gpt-x","parameters":{"max_tokens":{"a":2,"b":1},"temperature":0.2},"template":"Hi {{name}}","variables":["name"]}"#
        );
        let want = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        assert_eq!(
            content_hash("Hi {{name}}", "gpt-x", &params, &["name".into()]),
            want
        );
    }

    #[test]
    fn roles_grant_what_the_table_says() {
        assert!(Role::Author.may(Permission::WritePrompt));
        assert!(!Role::Author.may(Permission::Promote));
        assert!(!Role::Service.may(Permission::ReadAll));
        assert!(Role::Service.may(Permission::ReadDeployed));
        assert!(!Role::Auditor.may(Permission::WritePrompt));
        assert_eq!(
            Permission::Promote.roles(),
            vec![Role::Admin, Role::Deployer]
        );
    }

    #[test]
    fn names_are_conservative() {
        assert!(valid_name("support/greeting-v2.en"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("/abs"));
        assert!(!valid_name(&"x".repeat(129)));
    }
}
