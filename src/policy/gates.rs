//! `gates.toml`: what a version needs before it may enter each environment. Parsing only; the
//! registry evaluates the gates against its state (`registry::governance`).

use crate::registry::model::Environment;
use serde::{Deserialize, Serialize};

/// The gates of the three environments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gates {
    #[serde(default)]
    pub dev: Gate,
    #[serde(default)]
    pub staging: Gate,
    #[serde(default)]
    pub production: Gate,
}

/// What entering one environment requires.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// The version must have been live in the environment before this one (none for dev).
    #[serde(default = "yes")]
    pub require_previous: bool,
    /// ... for at least this many minutes in one continuous stretch.
    #[serde(default)]
    pub min_minutes_in_previous: u64,
    /// Approvals needed from distinct actors who may approve and did not write the version.
    #[serde(default)]
    pub approvals: u32,
    /// Evaluation suites that must have passed for the version's exact content hash.
    #[serde(default)]
    pub evaluations: Vec<SuiteGate>,
}

fn yes() -> bool {
    true
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            require_previous: true,
            min_minutes_in_previous: 0,
            approvals: 0,
            evaluations: vec![],
        }
    }
}

/// One required evaluation suite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteGate {
    pub suite: String,
    /// The latest result must also have at least this score (besides `passed`).
    #[serde(default)]
    pub min_score: Option<f64>,
}

impl Gates {
    pub fn parse(text: &str) -> Result<Gates, String> {
        let gates: Gates = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        for env in Environment::ALL {
            let gate = gates.gate(env);
            let mut seen = std::collections::BTreeSet::new();
            for s in &gate.evaluations {
                if s.suite.trim().is_empty() {
                    return Err(format!("[{env}] an evaluation needs a suite name"));
                }
                if !seen.insert(&s.suite) {
                    return Err(format!("[{env}] suite {:?} is listed twice", s.suite));
                }
                if s.min_score.is_some_and(|m| !m.is_finite()) {
                    return Err(format!(
                        "[{env}] suite {:?}: min_score must be a number",
                        s.suite
                    ));
                }
            }
            if gate.min_minutes_in_previous > 0 && !gate.require_previous {
                return Err(format!(
                    "[{env}] min_minutes_in_previous needs require_previous = true"
                ));
            }
        }
        Ok(gates)
    }

    pub fn gate(&self, env: Environment) -> &Gate {
        match env {
            Environment::Dev => &self.dev,
            Environment::Staging => &self.staging,
            Environment::Production => &self.production,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_gates_parse() {
        let g = Gates::parse(include_str!("../../policies/gates.toml")).unwrap();
        assert_eq!(g.production.approvals, 2);
        assert_eq!(g.staging.evaluations[0].suite, "regression");
        assert!(g.staging.require_previous);
    }

    #[test]
    fn mistakes_are_named() {
        assert!(Gates::parse("[prod]\napprovals = 1")
            .unwrap_err()
            .contains("prod"));
        assert!(Gates::parse("[staging]\napproval = 1")
            .unwrap_err()
            .contains("approval"));
        let twice = "[staging]\nevaluations = [{ suite = \"a\" }, { suite = \"a\" }]";
        assert!(Gates::parse(twice).unwrap_err().contains("twice"));
        let empty = Gates::parse("").unwrap();
        assert_eq!(empty.production.approvals, 0);
        assert!(empty.production.require_previous);
    }
}
