//! The registry's vocabulary: environments, rollout splits, and the content hash of a prompt
//! version. Roles and what they may do are policy (`crate::policy`).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One version's share of an environment in a rollout: `weight` percent of routing keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub version: u64,
    pub weight: u32,
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
    fn names_are_conservative() {
        assert!(valid_name("support/greeting-v2.en"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("/abs"));
        assert!(!valid_name(&"x".repeat(129)));
    }
}
