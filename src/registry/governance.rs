//! Gate evaluation: whether a version may enter an environment under a policy, and the evidence
//! that says why. Pure: it reads the prompt, the actors and the policy, and the time the event
//! carries. The writer calls it to decide (refusing what fails) and again to record the decision
//! in the deployment, so replaying the log recomputes every decision and its evidence.

use super::model::{Environment, Split};
use super::state::{Actor, Deployment, Prompt, Version};
use crate::ledger::entry::Seq;
use crate::policy::{namespace_of, Act, Policy};
use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

/// One gate's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    /// `previous_environment`, `min_time_in_previous`, `evaluation:<suite>`, `approvals`, or for
    /// a rollback `previously_live`.
    pub gate: String,
    pub passed: bool,
    /// Sequence numbers of the events that satisfy (or partly satisfy) the gate.
    pub evidence: Vec<Seq>,
    /// What was found, or what is missing.
    pub detail: String,
}

/// The decision recorded with a promotion, rollback or break-glass promotion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The policy in force ([`crate::policy::PolicyFiles::version`]).
    pub policy_version: String,
    /// The sequence number of the `set_policy` event that put it in force.
    pub policy_seq: Seq,
    pub gates: Vec<GateResult>,
    /// Set for a break-glass promotion: the reason given. Its gates were reported, not enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
}

impl Decision {
    /// The first gate that failed.
    pub fn failed(&self) -> Option<&GateResult> {
        self.gates.iter().find(|g| !g.passed)
    }
}

/// The versions a deployment routes to, with their weights (a plain promotion is 100 %).
pub fn splits_of(d: &Deployment) -> Vec<Split> {
    if d.splits.is_empty() {
        vec![Split {
            version: d.version,
            weight: 100,
        }]
    } else {
        d.splits.clone()
    }
}

/// Whether `d` routes any traffic to `version`.
pub fn routes_to(d: &Deployment, version: u64) -> bool {
    if d.splits.is_empty() {
        d.version == version
    } else {
        d.splits.iter().any(|s| s.version == version)
    }
}

/// Stretches during which `version` was live (at any weight) in `env`: (start seq, start time,
/// end time or `now`).
fn live_stretches(
    prompt: &Prompt,
    env: Environment,
    version: u64,
    now_ms: u64,
) -> Vec<(Seq, u64, u64)> {
    let mut out = vec![];
    let mut open: Option<(Seq, u64)> = None;
    for d in prompt.deployments_in(env).iter() {
        let includes = routes_to(d, version);
        match (open, includes) {
            (None, true) => open = Some((d.seq, d.timestamp_ms)),
            (Some((seq, start)), false) => {
                out.push((seq, start, d.timestamp_ms));
                open = None;
            }
            _ => {}
        }
    }
    if let Some((seq, start)) = open {
        out.push((seq, start, now_ms));
    }
    out
}

/// Evaluates the gates `policy` sets for `version` entering `env` at `now_ms`.
pub fn evaluate(
    policy: &Policy,
    policy_seq: Seq,
    prompt: &Prompt,
    version: &Version,
    env: Environment,
    actors: &OrdMap<String, Arc<Actor>>,
    now_ms: u64,
) -> Decision {
    let gate = policy.gates().gate(env);
    let mut gates = vec![];
    let previous = match env {
        Environment::Dev => None,
        Environment::Staging => Some(Environment::Dev),
        Environment::Production => Some(Environment::Staging),
    };
    if let (Some(prev), true) = (previous, gate.require_previous) {
        let stretches = live_stretches(prompt, prev, version.number, now_ms);
        gates.push(GateResult {
            gate: "previous_environment".into(),
            passed: !stretches.is_empty(),
            // The deployment that began the latest stretch.
            evidence: stretches.last().map(|s| s.0).into_iter().collect(),
            detail: if stretches.is_empty() {
                format!("version {} was never live in {prev}", version.number)
            } else {
                format!("version {} was live in {prev}", version.number)
            },
        });
        if gate.min_minutes_in_previous > 0 {
            let need_ms = gate.min_minutes_in_previous * 60_000;
            let longest = stretches
                .iter()
                .max_by_key(|s| s.2.saturating_sub(s.1))
                .copied();
            let got_ms = longest.map_or(0, |s| s.2.saturating_sub(s.1));
            gates.push(GateResult {
                gate: "min_time_in_previous".into(),
                passed: got_ms >= need_ms,
                evidence: longest.map(|s| s.0).into_iter().collect(),
                detail: format!(
                    "live in {prev} for {} min in one stretch, {} min required",
                    got_ms / 60_000,
                    gate.min_minutes_in_previous
                ),
            });
        }
    }
    for required in &gate.evaluations {
        let latest = prompt
            .evaluations
            .iter()
            .rev()
            .find(|e| e.content_hash == version.content_hash && e.suite == required.suite);
        let (passed, detail) = match latest {
            None => (
                false,
                format!(
                    "no {} evaluation of {} (version {})",
                    required.suite, version.content_hash, version.number
                ),
            ),
            Some(e) if !e.passed => (
                false,
                format!("the latest {} evaluation (seq {}) failed", e.suite, e.seq),
            ),
            Some(e) if required.min_score.is_some_and(|m| e.score < m) => (
                false,
                format!(
                    "the latest {} evaluation (seq {}) scored {}, the gate needs {}",
                    e.suite,
                    e.seq,
                    e.score,
                    required.min_score.unwrap_or_default()
                ),
            ),
            Some(e) => (
                true,
                format!("{} passed with {} (seq {})", e.suite, e.score, e.seq),
            ),
        };
        gates.push(GateResult {
            gate: format!("evaluation:{}", required.suite),
            passed,
            evidence: latest.map(|e| e.seq).into_iter().collect(),
            detail,
        });
    }
    if gate.approvals > 0 {
        let ns = namespace_of(&prompt.name);
        let mut approvers = BTreeSet::new();
        let mut evidence = vec![];
        for a in &prompt.approvals {
            let counts = a.revoked_seq.is_none()
                && a.environment == env
                && a.content_hash == version.content_hash
                && a.by != version.author
                && actors.get(&a.by).is_some_and(|actor| {
                    actor.revoked_seq.is_none()
                        && policy.grants_allow(
                            actor.roles.iter().map(String::as_str),
                            ns,
                            env.as_str(),
                            Act::Approve,
                        )
                });
            if counts && approvers.insert(a.by.as_str()) {
                evidence.push(a.seq);
            }
        }
        let got = approvers.len() as u32;
        gates.push(GateResult {
            gate: "approvals".into(),
            passed: got >= gate.approvals,
            evidence,
            detail: format!(
                "{got} of {} approvals of {} for {env} by distinct approvers other than its author {}",
                gate.approvals, version.content_hash, version.author
            ),
        });
    }
    Decision {
        policy_version: policy.version().to_owned(),
        policy_seq,
        gates,
        break_glass: None,
    }
}

/// The decision for a rollback to `version` in `env`: it must have been live there before.
pub fn rollback(
    policy: &Policy,
    policy_seq: Seq,
    prompt: &Prompt,
    version: u64,
    env: Environment,
) -> Decision {
    // The latest deployment there that routed to it.
    let earlier: Vec<Seq> = prompt
        .deployments_in(env)
        .iter()
        .rev()
        .find(|d| routes_to(d, version))
        .map(|d| d.seq)
        .into_iter()
        .collect();
    Decision {
        policy_version: policy.version().to_owned(),
        policy_seq,
        gates: vec![GateResult {
            gate: "previously_live".into(),
            passed: !earlier.is_empty(),
            detail: if earlier.is_empty() {
                format!("version {version} was never live in {env}")
            } else {
                format!("version {version} was live in {env} before")
            },
            evidence: earlier,
        }],
        break_glass: None,
    }
}

/// Picks a version of a rollout for `routing_key`: the first 8 bytes of
/// SHA-256(`prompt` ‖ 0x00 ‖ `routing_key`), big-endian, modulo the total weight, fall into the
/// splits' cumulative ranges in their recorded order. Deterministic and sticky while the
/// splits stand.
pub fn route(prompt: &str, routing_key: &str, splits: &[Split]) -> Option<Split> {
    use sha2::{Digest, Sha256};
    let total: u64 = splits.iter().map(|s| u64::from(s.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut h = Sha256::new();
    h.update(prompt.as_bytes());
    h.update([0]);
    h.update(routing_key.as_bytes());
    let digest = h.finalize();
    let bucket = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % total;
    let mut upper = 0;
    for s in splits {
        upper += u64::from(s.weight);
        if bucket < upper {
            return Some(*s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_sticky_and_close_to_the_weights() {
        let splits = [
            Split {
                version: 1,
                weight: 90,
            },
            Split {
                version: 2,
                weight: 10,
            },
        ];
        let mut second = 0;
        for i in 0..10_000 {
            let key = format!("user-{i}");
            let pick = route("support/greeting", &key, &splits).unwrap();
            assert_eq!(route("support/greeting", &key, &splits), Some(pick));
            if pick.version == 2 {
                second += 1;
            }
        }
        // 10 % of 10,000 is 1,000; the binomial standard deviation is 30.
        assert!(
            (880..=1120).contains(&second),
            "{second} keys on the 10 % version"
        );
        assert_eq!(route("p", "k", &[]), None);
    }
}
