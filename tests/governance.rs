//! Promotion governance end to end, against the real policy files under `policies/`: roles
//! (Casbin), gates, approvals, rollouts, rollback, break-glass, policy changes in the ledger,
//! and the questions compliance asks.

mod common;

use common::{commit, hash_of, key, tree_size, Server};
use promptledger::client::Client;
use promptledger::keyfile;
use promptledger::node::{self, DataDir};
use promptledger::policy::{Act, Policy, PolicyFiles};
use promptledger::proto::registry::v1 as pb;
use promptledger::registry::model::{Environment, Split};
use promptledger::registry::statement::Action;
use promptledger::server::{registry::Clock, Config};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tonic::{Code, Status};

use Environment::{Dev, Production, Staging};

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn shipped() -> PolicyFiles {
    PolicyFiles::read_dir(&policies_dir()).unwrap()
}

struct World {
    _tmp: tempfile::TempDir,
    dir: DataDir,
    server: Server,
    /// Milliseconds added to the server's clock (statements may be that far off: the skew
    /// allowed is a week).
    offset: Arc<AtomicU64>,
}

impl World {
    async fn new() -> World {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path().join("data"));
        let offset = Arc::new(AtomicU64::new(0));
        let server = start(&dir, offset.clone()).await;
        World {
            _tmp: tmp,
            dir,
            server,
            offset,
        }
    }

    async fn client(&self, name: &str) -> Client {
        Client::connect(self.server.endpoint(), key(name))
            .await
            .unwrap()
    }

    async fn admin(&self) -> Client {
        Client::connect(
            self.server.endpoint(),
            keyfile::read_key(&self.dir.admin_key()).unwrap(),
        )
        .await
        .unwrap()
    }

    fn advance_minutes(&self, minutes: u64) {
        self.offset.fetch_add(minutes * 60_000, Ordering::SeqCst);
    }
}

async fn start(dir: &DataDir, offset: Arc<AtomicU64>) -> Server {
    let clock: Clock = Arc::new(move || {
        promptledger::storage::writer::system_clock_ms() + offset.load(Ordering::SeqCst)
    });
    Server::start_with_clock(
        Config {
            data_dir: dir.root.clone(),
            policy_dir: Some(policies_dir()),
            clock_skew_secs: 7 * 24 * 3600,
            ..Config::default()
        },
        Some(clock),
    )
    .await
}

async fn register(admin: &mut Client, name: &str, roles: &[&str]) {
    admin
        .submit(Action::RegisterActor {
            name: name.into(),
            key: key(name).public().to_vkey(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        })
        .await
        .unwrap_or_else(|e| panic!("registering {name}: {e}"));
}

/// The usual cast: two authors, two reviewers, CI, two deployers, a break-glass responder, a
/// service of the `checkout` namespace, an auditor.
async fn cast(w: &World) {
    let mut admin = w.admin().await;
    for (name, roles) in [
        ("alice", &["author"][..]),
        ("amir", &["author"][..]),
        ("bob", &["reviewer"][..]),
        ("rita", &["reviewer"][..]),
        ("ci", &["ci"][..]),
        ("dora", &["deployer"][..]),
        ("dan", &["deployer"][..]),
        ("brenda", &["breakglass"][..]),
        ("checkout-svc", &["service@checkout"][..]),
        ("audrey", &["auditor"][..]),
    ] {
        register(&mut admin, name, roles).await;
    }
}

/// Asserts that `result` failed with `code` and a message containing `needle`.
fn refused<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, needle: &str) {
    match result {
        Ok(v) => panic!("expected {code:?} ({needle}), got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{}", s.message());
            assert!(
                s.message().contains(needle),
                "{:?} does not mention {needle:?}",
                s.message()
            );
        }
    }
}

fn promote_action(prompt: &str, version: u64, env: Environment) -> Action {
    Action::PromoteVersion {
        prompt: prompt.into(),
        version,
        environment: env,
        rollout: vec![],
        expected_deployment: None,
    }
}

async fn promote(c: &mut Client, action: Action) -> Result<pb::Deployment, Status> {
    let statement = Some(c.sign(action));
    Ok(c.registry()
        .promote_version(pb::PromoteVersionRequest { statement })
        .await?
        .into_inner()
        .deployment
        .unwrap())
}

async fn evaluate(
    ci: &mut Client,
    prompt: &str,
    version: u64,
    template: &str,
    suite: &str,
    score: f64,
    passed: bool,
) -> u64 {
    ci.submit(Action::RecordEvaluation {
        prompt: prompt.into(),
        version,
        content_hash: hash_of(template),
        suite: suite.into(),
        score,
        threshold: 0.5,
        passed,
        evaluator: "ci".into(),
        evidence_digest: "sha256:ab".into(),
        evidence_uri: "https://ci.example/run/7".into(),
    })
    .await
    .unwrap()
    .sequence
}

async fn approve(
    reviewer: &mut Client,
    prompt: &str,
    version: u64,
    template: &str,
    env: Environment,
) -> u64 {
    reviewer
        .submit(Action::ApproveVersion {
            prompt: prompt.into(),
            version,
            content_hash: hash_of(template),
            environment: env,
        })
        .await
        .unwrap()
        .sequence
}

/// Clients of the cast.
struct People {
    alice: Client,
    bob: Client,
    rita: Client,
    ci: Client,
    dora: Client,
}

async fn people(w: &World) -> People {
    People {
        alice: w.client("alice").await,
        bob: w.client("bob").await,
        rita: w.client("rita").await,
        ci: w.client("ci").await,
        dora: w.client("dora").await,
    }
}

/// Creates `prompt` with version 1 = `template` (by alice).
async fn create(p: &mut People, prompt: &str, template: &str) {
    p.alice
        .submit(Action::CreatePrompt {
            prompt: prompt.into(),
            description: String::new(),
        })
        .await
        .unwrap();
    p.alice
        .submit(commit(prompt, None, template))
        .await
        .unwrap();
}

/// Gives `version` what the shipped gates ask for `env`, and promotes it there.
async fn pass_and_promote(
    p: &mut People,
    prompt: &str,
    version: u64,
    template: &str,
    env: Environment,
) -> pb::Deployment {
    match env {
        Dev => {}
        Staging => {
            evaluate(
                &mut p.ci,
                prompt,
                version,
                template,
                "regression",
                0.85,
                true,
            )
            .await;
            approve(&mut p.bob, prompt, version, template, Staging).await;
        }
        Production => {
            evaluate(
                &mut p.ci,
                prompt,
                version,
                template,
                "regression",
                0.95,
                true,
            )
            .await;
            evaluate(&mut p.ci, prompt, version, template, "safety", 1.0, true).await;
            approve(&mut p.bob, prompt, version, template, Production).await;
            approve(&mut p.rita, prompt, version, template, Production).await;
        }
    }
    promote(&mut p.dora, promote_action(prompt, version, env))
        .await
        .unwrap_or_else(|e| panic!("promoting {prompt} v{version} to {env}: {e}"))
}

async fn through_production(
    p: &mut People,
    prompt: &str,
    version: u64,
    template: &str,
) -> pb::Deployment {
    for env in [Dev, Staging] {
        pass_and_promote(p, prompt, version, template, env).await;
    }
    pass_and_promote(p, prompt, version, template, Production).await
}

// ---------------------------------------------------------------------------------------------
// The policy matrix.

/// What the shipped `policy.csv` grants each role (in every namespace and environment).
const MATRIX: &[(&str, &[Act])] = &[
    (
        "admin",
        &[
            Act::ManageActors,
            Act::SetPolicy,
            Act::Read,
            Act::ReadDeployed,
        ],
    ),
    (
        "author",
        &[
            Act::CreatePrompt,
            Act::CommitVersion,
            Act::Read,
            Act::ReadDeployed,
        ],
    ),
    ("reviewer", &[Act::Approve, Act::Read, Act::ReadDeployed]),
    (
        "deployer",
        &[Act::Promote, Act::Rollback, Act::Read, Act::ReadDeployed],
    ),
    (
        "ci",
        &[
            Act::RecordEvaluation,
            Act::Approve,
            Act::Read,
            Act::ReadDeployed,
        ],
    ),
    ("service", &[Act::ReadDeployed]),
    ("auditor", &[Act::Read, Act::ReadDeployed]),
    (
        "breakglass",
        &[Act::BreakGlass, Act::Rollback, Act::Read, Act::ReadDeployed],
    ),
];

#[test]
fn the_shipped_policy_grants_exactly_the_matrix() {
    let policy = Policy::new(shipped()).unwrap();
    let roles: Vec<&str> = MATRIX.iter().map(|(r, _)| *r).collect();
    assert_eq!(
        policy
            .roles()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        {
            let mut sorted = roles.clone();
            sorted.sort();
            sorted
        },
        "the matrix covers every role the policy names"
    );
    for (role, granted) in MATRIX {
        for act in Act::ALL {
            for env in ["dev", "staging", "production"] {
                for ns in ["support", "checkout", "default"] {
                    assert_eq!(
                        policy.allows(role, ns, env, act),
                        granted.contains(&act),
                        "{role} {act} in {ns}/{env}"
                    );
                    // Cached and uncached answers agree.
                    assert_eq!(
                        policy.enforce_uncached(role, ns, env, act),
                        granted.contains(&act)
                    );
                }
            }
        }
    }
}

/// Casbin's own RBAC reference vectors, through the same enforcer constructor the ledger uses.
#[test]
fn casbin_reference_vectors_decide_as_casbin_says() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/casbin_rbac_vectors.json"),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files = &v["files"];
    let mut checked = 0;
    for suite in v["suites"].as_array().unwrap() {
        let (Some(model), Some(policy)) = (suite["model"].as_str(), suite["policy"].as_str())
        else {
            continue;
        };
        let Some(cases) = suite["enforce"].as_array() else {
            continue;
        };
        let e = promptledger::policy::enforcer(
            files[model].as_str().unwrap(),
            files[policy].as_str().unwrap(),
        )
        .unwrap();
        for case in cases {
            let request: Vec<String> = case["request"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect();
            use casbin::CoreApi;
            assert_eq!(
                e.enforce(request.clone()).unwrap(),
                case["want"].as_bool().unwrap(),
                "{}: {request:?}",
                suite["name"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} vectors");
}

/// Role × action × environment through the server: what the policy refuses is
/// PERMISSION_DENIED naming the action and writes nothing; what it allows is not refused for
/// permission (it may still meet a gate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_action_and_environment_is_decided_by_the_policy() {
    let w = World::new().await;
    cast(&w).await;
    let mut p = people(&w).await;
    create(&mut p, "matrix/p", "v1").await;
    pass_and_promote(&mut p, "matrix/p", 1, "v1", Dev).await;
    let mut admin = w.admin().await;
    for (role, _) in MATRIX {
        register(&mut admin, &format!("m-{role}"), &[role]).await;
    }
    let policy = Policy::new(shipped()).unwrap();
    let mut observer = w.client("audrey").await;
    let mut decided = 0;
    for (role, _) in MATRIX {
        let mut c = w.client(&format!("m-{role}")).await;
        let mut cases: Vec<(Act, &str, Action)> = vec![(
            Act::CommitVersion,
            "*",
            commit("matrix/p", Some(1), &format!("by {role}")),
        )];
        cases.push((
            Act::RecordEvaluation,
            "*",
            Action::RecordEvaluation {
                prompt: "matrix/p".into(),
                version: 1,
                content_hash: hash_of("v1"),
                suite: "regression".into(),
                score: 0.9,
                threshold: 0.8,
                passed: true,
                evaluator: "m".into(),
                evidence_digest: String::new(),
                evidence_uri: String::new(),
            },
        ));
        for env in Environment::ALL {
            cases.push((
                Act::Approve,
                env.as_str(),
                Action::ApproveVersion {
                    prompt: "matrix/p".into(),
                    version: 1,
                    content_hash: hash_of("v1"),
                    environment: env,
                },
            ));
            cases.push((
                Act::Promote,
                env.as_str(),
                promote_action("matrix/p", 1, env),
            ));
            cases.push((
                Act::Rollback,
                env.as_str(),
                Action::RollbackPrompt {
                    prompt: "matrix/p".into(),
                    version: 1,
                    environment: env,
                    reason: "matrix".into(),
                    expected_deployment: None,
                },
            ));
            cases.push((
                Act::BreakGlass,
                env.as_str(),
                Action::BreakGlassPromote {
                    prompt: "matrix/p".into(),
                    version: 1,
                    environment: env,
                    rollout: vec![],
                    reason: "matrix".into(),
                    expected_deployment: None,
                },
            ));
        }
        for (act, env, action) in cases {
            let allowed = policy.allows(role, "matrix", env, act);
            let before = tree_size(&mut observer).await;
            let result = c.submit(action).await;
            match (allowed, result) {
                (false, Ok(r)) => panic!("{role} {act} in {env}: allowed at {}", r.sequence),
                (false, Err(s)) => {
                    assert_eq!(
                        s.code(),
                        Code::PermissionDenied,
                        "{role} {act} {env}: {s:?}"
                    );
                    assert!(
                        s.message().contains(&format!("may not {act}")),
                        "{role} {act} {env}: {}",
                        s.message()
                    );
                    assert_eq!(tree_size(&mut observer).await, before, "a refusal wrote");
                }
                (true, Err(s)) => assert_ne!(
                    s.code(),
                    Code::PermissionDenied,
                    "{role} {act} in {env} is allowed by the policy: {s:?}"
                ),
                (true, Ok(_)) => {}
            }
            decided += 1;
        }
    }
    assert_eq!(decided, MATRIX.len() * 14);
    w.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Gates.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_refuse_what_is_missing_and_name_it() {
    let w = World::new().await;
    cast(&w).await;
    let mut p = people(&w).await;
    let mut observer = w.client("audrey").await;
    create(&mut p, "support/greeting", "v1").await;

    // Skipping an environment: production before staging (and staging before dev).
    let size = tree_size(&mut observer).await;
    refused(
        promote(&mut p.dora, promote_action("support/greeting", 1, Staging)).await,
        Code::FailedPrecondition,
        "previous_environment failed: version 1 was never live in dev",
    );
    pass_and_promote(&mut p, "support/greeting", 1, "v1", Dev).await;
    refused(
        promote(
            &mut p.dora,
            promote_action("support/greeting", 1, Production),
        )
        .await,
        Code::FailedPrecondition,
        "never live in staging",
    );

    // Staging: a missing evaluation, a failed one, one below the gate's score.
    refused(
        promote(&mut p.dora, promote_action("support/greeting", 1, Staging)).await,
        Code::FailedPrecondition,
        "evaluation:regression failed: no regression evaluation",
    );
    evaluate(
        &mut p.ci,
        "support/greeting",
        1,
        "v1",
        "regression",
        0.95,
        false,
    )
    .await;
    refused(
        promote(&mut p.dora, promote_action("support/greeting", 1, Staging)).await,
        Code::FailedPrecondition,
        "failed",
    );
    evaluate(
        &mut p.ci,
        "support/greeting",
        1,
        "v1",
        "regression",
        0.7,
        true,
    )
    .await;
    refused(
        promote(&mut p.dora, promote_action("support/greeting", 1, Staging)).await,
        Code::FailedPrecondition,
        "scored 0.7, the gate needs 0.8",
    );
    let eval = evaluate(
        &mut p.ci,
        "support/greeting",
        1,
        "v1",
        "regression",
        0.85,
        true,
    )
    .await;

    // Approvals: none yet; an approval for another environment does not count.
    refused(
        promote(&mut p.dora, promote_action("support/greeting", 1, Staging)).await,
        Code::FailedPrecondition,
        "0 of 1 approvals",
    );
    approve(&mut p.bob, "support/greeting", 1, "v1", Production).await;
    refused(
        promote(&mut p.dora, promote_action("support/greeting", 1, Staging)).await,
        Code::FailedPrecondition,
        "0 of 1 approvals",
    );
    let approval = approve(&mut p.rita, "support/greeting", 1, "v1", Staging).await;
    // Nothing refused above was written.
    assert_eq!(
        tree_size(&mut observer).await,
        size + 6,
        "the dev promotion, 3 evaluations and 2 approvals: nothing refused was written"
    );
    let d = promote(&mut p.dora, promote_action("support/greeting", 1, Staging))
        .await
        .unwrap();
    let decision = d.decision.unwrap();
    assert_eq!(decision.policy_version, shipped().version());
    let gate = |name: &str| {
        decision
            .gates
            .iter()
            .find(|g| g.gate == name)
            .unwrap()
            .clone()
    };
    assert!(decision.gates.iter().all(|g| g.passed));
    assert_eq!(gate("evaluation:regression").evidence, vec![eval]);
    assert_eq!(gate("approvals").evidence, vec![approval]);
    assert_eq!(gate("previous_environment").evidence.len(), 1);

    // Production needs two approvers, safety too; a revoked approval stops counting.
    evaluate(
        &mut p.ci,
        "support/greeting",
        1,
        "v1",
        "regression",
        0.95,
        true,
    )
    .await;
    evaluate(&mut p.ci, "support/greeting", 1, "v1", "safety", 0.99, true).await;
    refused(
        promote(
            &mut p.dora,
            promote_action("support/greeting", 1, Production),
        )
        .await,
        Code::FailedPrecondition,
        "1 of 2 approvals",
    );
    approve(&mut p.rita, "support/greeting", 1, "v1", Production).await;
    p.bob
        .submit(Action::RevokeApproval {
            prompt: "support/greeting".into(),
            version: 1,
            environment: Production,
            reason: "found a typo".into(),
        })
        .await
        .unwrap();
    refused(
        promote(
            &mut p.dora,
            promote_action("support/greeting", 1, Production),
        )
        .await,
        Code::FailedPrecondition,
        "1 of 2 approvals",
    );
    approve(&mut p.bob, "support/greeting", 1, "v1", Production).await;
    promote(
        &mut p.dora,
        promote_action("support/greeting", 1, Production),
    )
    .await
    .unwrap();
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_eyes_self_approval_is_refused_and_never_counts() {
    let w = World::new().await;
    cast(&w).await;
    let mut admin = w.admin().await;
    register(&mut admin, "eve", &["author", "reviewer"]).await;
    let mut p = people(&w).await;
    let mut eve = w.client("eve").await;
    create(&mut p, "support/faq", "v1").await;
    eve.submit(commit("support/faq", Some(1), "v2 by eve"))
        .await
        .unwrap();
    let own = eve
        .submit(Action::ApproveVersion {
            prompt: "support/faq".into(),
            version: 2,
            content_hash: hash_of("v2 by eve"),
            environment: Staging,
        })
        .await;
    refused(own, Code::FailedPrecondition, "four eyes");
    // Eve may approve alice's version: she did not write it.
    approve(&mut eve, "support/faq", 1, "v1", Staging).await;
    // An author approving a version with the same content as someone else's: the approval is
    // recorded (eve did not write version 1) but never counts for eve's own version 2.
    pass_and_promote(&mut p, "support/faq", 2, "v2 by eve", Dev).await;
    evaluate(
        &mut p.ci,
        "support/faq",
        2,
        "v2 by eve",
        "regression",
        0.9,
        true,
    )
    .await;
    refused(
        promote(&mut p.dora, promote_action("support/faq", 2, Staging)).await,
        Code::FailedPrecondition,
        "other than its author eve",
    );
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_for_another_content_hash_does_not_count() {
    let w = World::new().await;
    cast(&w).await;
    let mut p = people(&w).await;
    create(&mut p, "support/bye", "bye v1").await;
    p.alice
        .submit(commit("support/bye", Some(1), "bye v2"))
        .await
        .unwrap();
    // Version 1 has everything staging needs; version 2 has nothing of its own.
    pass_and_promote(&mut p, "support/bye", 1, "bye v1", Dev).await;
    pass_and_promote(&mut p, "support/bye", 2, "bye v2", Dev).await;
    evaluate(
        &mut p.ci,
        "support/bye",
        1,
        "bye v1",
        "regression",
        0.99,
        true,
    )
    .await;
    approve(&mut p.bob, "support/bye", 1, "bye v1", Staging).await;
    refused(
        promote(&mut p.dora, promote_action("support/bye", 2, Staging)).await,
        Code::FailedPrecondition,
        "no regression evaluation",
    );
    // An evaluation statement must name the version's own hash.
    let wrong =
        p.ci.submit(Action::RecordEvaluation {
            prompt: "support/bye".into(),
            version: 2,
            content_hash: hash_of("bye v1"),
            suite: "regression".into(),
            score: 1.0,
            threshold: 0.8,
            passed: true,
            evaluator: "ci".into(),
            evidence_digest: String::new(),
            evidence_uri: String::new(),
        })
        .await;
    refused(wrong, Code::InvalidArgument, "content_hash");
    evaluate(
        &mut p.ci,
        "support/bye",
        2,
        "bye v2",
        "regression",
        0.99,
        true,
    )
    .await;
    refused(
        promote(&mut p.dora, promote_action("support/bye", 2, Staging)).await,
        Code::FailedPrecondition,
        "0 of 1 approvals",
    );
    approve(&mut p.bob, "support/bye", 2, "bye v2", Staging).await;
    promote(&mut p.dora, promote_action("support/bye", 2, Staging))
        .await
        .unwrap();
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minimum_time_in_the_previous_environment_is_enforced_by_the_event_clock() {
    let w = World::new().await;
    cast(&w).await;
    let mut files = shipped();
    files.gates = "[production]\nmin_minutes_in_previous = 60\n".into();
    let mut admin = w.admin().await;
    admin.submit(Action::SetPolicy { files }).await.unwrap();
    let mut p = people(&w).await;
    create(&mut p, "support/slow", "v1").await;
    for env in [Dev, Staging] {
        promote(&mut p.dora, promote_action("support/slow", 1, env))
            .await
            .unwrap();
    }
    w.advance_minutes(59);
    refused(
        promote(&mut p.dora, promote_action("support/slow", 1, Production)).await,
        Code::FailedPrecondition,
        "min_time_in_previous failed: live in staging for 59 min",
    );
    w.advance_minutes(2);
    promote(&mut p.dora, promote_action("support/slow", 1, Production))
        .await
        .unwrap();
    w.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Decisions in order.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_promotions_on_stale_state_at_most_one_passes() {
    let w = World::new().await;
    cast(&w).await;
    let mut p = people(&w).await;
    create(&mut p, "support/race", "v1").await;
    for i in 2..=5 {
        p.alice
            .submit(commit("support/race", Some(i - 1), &format!("v{i}")))
            .await
            .unwrap();
    }
    let live = promote(&mut p.dora, promote_action("support/race", 1, Dev))
        .await
        .unwrap();
    // Four deployers' statements, all signed against the same observed state (version 1 live
    // at `live.sequence`), each promoting another version, sent at once.
    let mut tasks = Vec::new();
    for (i, name) in ["dora", "dan", "dora", "dan"].into_iter().enumerate() {
        let mut c = w.client(name).await;
        let action = Action::PromoteVersion {
            prompt: "support/race".into(),
            version: i as u64 + 2,
            environment: Dev,
            rollout: vec![],
            expected_deployment: Some(live.sequence),
        };
        tasks.push(tokio::spawn(async move { promote(&mut c, action).await }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::Aborted, "{s:?}");
                assert!(s.message().contains("changed"), "{}", s.message());
            }
        }
    }
    assert_eq!(wins, 1, "exactly one promotion passes on the shared state");

    // A promotion racing the revocation of the approval it relies on: decided in log order,
    // never both on the state before them.
    through_production(&mut p, "support/race", 1, "v1").await;
    pass_and_promote(&mut p, "support/race", 2, "v2", Dev).await;
    pass_and_promote(&mut p, "support/race", 2, "v2", Staging).await;
    evaluate(&mut p.ci, "support/race", 2, "v2", "regression", 0.95, true).await;
    evaluate(&mut p.ci, "support/race", 2, "v2", "safety", 0.95, true).await;
    approve(&mut p.bob, "support/race", 2, "v2", Production).await;
    approve(&mut p.rita, "support/race", 2, "v2", Production).await;
    let mut dora = w.client("dora").await;
    let mut bob = w.client("bob").await;
    let promotion = tokio::spawn(async move {
        promote(&mut dora, promote_action("support/race", 2, Production)).await
    });
    let revocation = tokio::spawn(async move {
        bob.submit(Action::RevokeApproval {
            prompt: "support/race".into(),
            version: 2,
            environment: Production,
            reason: "wait".into(),
        })
        .await
    });
    let (promotion, revocation) = (promotion.await.unwrap(), revocation.await.unwrap());
    let revoked_at = revocation.unwrap().sequence;
    match promotion {
        // It passed: then it was decided before the revocation.
        Ok(d) => assert!(d.sequence < revoked_at),
        Err(s) => {
            assert_eq!(s.code(), Code::FailedPrecondition);
            assert!(s.message().contains("1 of 2 approvals"), "{}", s.message());
        }
    }
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_returns_only_to_a_version_that_was_live_there() {
    let w = World::new().await;
    cast(&w).await;
    let mut p = people(&w).await;
    create(&mut p, "support/rb", "v1").await;
    p.alice
        .submit(commit("support/rb", Some(1), "v2"))
        .await
        .unwrap();
    p.alice
        .submit(commit("support/rb", Some(2), "v3"))
        .await
        .unwrap();
    let first = through_production(&mut p, "support/rb", 1, "v1").await;
    through_production(&mut p, "support/rb", 2, "v2").await;
    // The approvals of version 1 are withdrawn: a rollback needs none.
    for reviewer in [&mut p.bob, &mut p.rita] {
        reviewer
            .submit(Action::RevokeApproval {
                prompt: "support/rb".into(),
                version: 1,
                environment: Production,
                reason: "superseded".into(),
            })
            .await
            .unwrap();
    }
    let rollback = |version: u64, reason: &str| Action::RollbackPrompt {
        prompt: "support/rb".into(),
        version,
        environment: Production,
        reason: reason.into(),
        expected_deployment: None,
    };
    refused(
        p.dora.submit(rollback(3, "never there")).await,
        Code::FailedPrecondition,
        "was not live in production before",
    );
    refused(
        p.dora.submit(rollback(1, " ")).await,
        Code::InvalidArgument,
        "reason",
    );
    // Authors may not roll back.
    refused(
        p.alice.submit(rollback(1, "I prefer it")).await,
        Code::PermissionDenied,
        "may not rollback",
    );
    let statement = Some(p.dora.sign(rollback(1, "v2 confuses customers")));
    let d = p
        .dora
        .registry()
        .rollback_prompt(pb::RollbackPromptRequest { statement })
        .await
        .unwrap()
        .into_inner()
        .deployment
        .unwrap();
    assert!(d.rollback);
    assert_eq!(d.reason, "v2 confuses customers");
    let gate = &d.decision.unwrap().gates[0];
    assert_eq!(
        (gate.gate.as_str(), gate.passed, gate.evidence.clone()),
        ("previously_live", true, vec![first.sequence])
    );
    let mut svc = w.client("audrey").await;
    let got = svc.get_prompt(pb::GetPromptRequest {
        prompt: "support/rb".into(),
        environment: "production".into(),
        ..Default::default()
    });
    assert_eq!(got.await.unwrap().template, "v1");
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_bypasses_the_gates_and_is_flagged_everywhere() {
    let w = World::new().await;
    cast(&w).await;
    let mut p = people(&w).await;
    create(&mut p, "checkout/banner", "v1").await;
    let glass = |reason: &str| Action::BreakGlassPromote {
        prompt: "checkout/banner".into(),
        version: 1,
        environment: Production,
        rollout: vec![],
        reason: reason.into(),
        expected_deployment: None,
    };
    // A deployer cannot break the glass; the responder must give a reason.
    refused(
        p.dora.submit(glass("now")).await,
        Code::PermissionDenied,
        "may not break_glass",
    );
    let mut brenda = w.client("brenda").await;
    refused(
        brenda.submit(glass("")).await,
        Code::InvalidArgument,
        "reason",
    );
    let statement = Some(brenda.sign(glass("checkout is down, INC-42")));
    let d = brenda
        .registry()
        .break_glass_promote(pb::BreakGlassPromoteRequest { statement })
        .await
        .unwrap()
        .into_inner()
        .deployment
        .unwrap();
    assert!(d.break_glass);
    assert_eq!(d.reason, "checkout is down, INC-42");
    let decision = d.decision.clone().unwrap();
    assert_eq!(decision.break_glass_reason, "checkout is down, INC-42");
    assert!(
        decision.gates.iter().any(|g| !g.passed),
        "the bypassed gates are reported: {decision:?}"
    );
    // The service sees the flag with the prompt; history and audit views carry it.
    let mut svc = w.client("checkout-svc").await;
    let got = svc
        .get_prompt(pb::GetPromptRequest {
            prompt: "checkout/banner".into(),
            environment: "production".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(got.reference.unwrap().break_glass);
    let mut audrey = w.client("audrey").await;
    let request = audrey
        .authorized(pb::ListPromptHistoryRequest {
            prompt: "checkout/banner".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let history = audrey
        .registry()
        .list_prompt_history(request)
        .await
        .unwrap()
        .into_inner();
    let last = history.events.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.break_glass),
        ("break_glass_promote", true)
    );
    let request = audrey
        .authorized(pb::ExplainDeploymentRequest {
            prompt: "checkout/banner".into(),
            sequence: d.sequence,
        })
        .await
        .unwrap();
    let why = audrey
        .registry()
        .explain_deployment(request)
        .await
        .unwrap()
        .into_inner();
    assert!(why.deployment.unwrap().break_glass);
    w.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Policy in the ledger.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_takes_effect_at_its_sequence_and_replay_reproduces_every_decision() {
    let w = World::new().await;
    cast(&w).await;
    let mut p = people(&w).await;
    let mut admin = w.admin().await;
    create(&mut p, "support/pol", "v1").await;
    pass_and_promote(&mut p, "support/pol", 1, "v1", Dev).await;
    let first = promote(&mut p.dora, promote_action("support/pol", 1, Staging)).await;
    refused(first, Code::FailedPrecondition, "evaluation:regression");

    // Only admins change policy, and only to files that load.
    let mut relaxed = shipped();
    relaxed.gates = "[staging]\napprovals = 0\n[production]\napprovals = 1\n".into();
    refused(
        p.alice
            .submit(Action::SetPolicy {
                files: relaxed.clone(),
            })
            .await,
        Code::PermissionDenied,
        "may not set_policy",
    );
    let mut broken = relaxed.clone();
    broken.policy.push_str("p, author, *, *, deploy\n");
    refused(
        admin.submit(Action::SetPolicy { files: broken }).await,
        Code::InvalidArgument,
        "policy.csv line",
    );
    // A model Casbin panics on is refused like any bad file; the writer lives on.
    let mut panicky = relaxed.clone();
    panicky.model = panicky.model.replace(
        "e = some(where (p.eft == allow))",
        "e = !some(where (p.eft == allow))",
    );
    refused(
        admin.submit(Action::SetPolicy { files: panicky }).await,
        Code::InvalidArgument,
        "model.conf",
    );
    let mut lockout = relaxed.clone();
    lockout.policy = lockout.policy.replace("p, admin, *, *, set_policy", "");
    refused(
        admin.submit(Action::SetPolicy { files: lockout }).await,
        Code::FailedPrecondition,
        "no live actor could set the policy again",
    );
    let statement = Some(admin.sign(Action::SetPolicy {
        files: relaxed.clone(),
    }));
    let set = admin
        .registry()
        .set_policy(pb::SetPolicyRequest { statement })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.policy_version, relaxed.version());
    let changed_at = set.receipt.unwrap().sequence;

    // From that sequence number on, the relaxed gates decide.
    let d = promote(&mut p.dora, promote_action("support/pol", 1, Staging))
        .await
        .unwrap();
    assert!(d.sequence > changed_at);
    let decision = d.decision.unwrap();
    assert_eq!(decision.policy_version, relaxed.version());
    assert_eq!(decision.policy_sequence, changed_at);
    approve(&mut p.bob, "support/pol", 1, "v1", Production).await;
    promote(&mut p.dora, promote_action("support/pol", 1, Production))
        .await
        .unwrap();

    // Which policy was in force when: asked by an auditor.
    let mut audrey = w.client("audrey").await;
    for (at, want) in [
        (changed_at - 1, shipped().version()),
        (changed_at, relaxed.version()),
        (0, relaxed.version()),
    ] {
        let request = audrey
            .authorized(pb::GetPolicyRequest { at_sequence: at })
            .await
            .unwrap();
        let got = audrey
            .registry()
            .get_policy(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.policy_version, want, "at {at}");
    }

    // Replay from the log alone: every statement decided again under the policy in force at
    // its position (verification fails otherwise), and the same state root, decisions and
    // evidence included.
    let World { dir, server, .. } = w;
    server.stop().await;
    node::verify_dir(&dir, None, None).expect("every decision replays");
    let report = node::rebuild(&dir).unwrap();
    assert!(report.consistent(), "{report:?}");
}

// ---------------------------------------------------------------------------------------------
// Rollouts on the read path.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_routes_keys_stickily_and_close_to_its_weights() {
    let w = World::new().await;
    cast(&w).await;
    let mut p = people(&w).await;
    create(&mut p, "checkout/welcome", "old").await;
    p.alice
        .submit(commit("checkout/welcome", Some(1), "new"))
        .await
        .unwrap();
    let live = through_production(&mut p, "checkout/welcome", 1, "old").await;
    for env in [Dev, Staging] {
        pass_and_promote(&mut p, "checkout/welcome", 2, "new", env).await;
    }
    evaluate(
        &mut p.ci,
        "checkout/welcome",
        2,
        "new",
        "regression",
        0.95,
        true,
    )
    .await;
    evaluate(
        &mut p.ci,
        "checkout/welcome",
        2,
        "new",
        "safety",
        0.95,
        true,
    )
    .await;
    approve(&mut p.bob, "checkout/welcome", 2, "new", Production).await;
    approve(&mut p.rita, "checkout/welcome", 2, "new", Production).await;
    let rollout = |splits: &[(u64, u32)]| Action::PromoteVersion {
        prompt: "checkout/welcome".into(),
        version: 2,
        environment: Production,
        rollout: splits
            .iter()
            .map(|&(version, weight)| Split { version, weight })
            .collect(),
        expected_deployment: Some(live.sequence),
    };
    // Weights must sum to 100 and name only the new version and versions live there.
    for (bad, needle) in [
        (&[(1, 90), (2, 20)][..], "summing to 100"),
        (&[(1, 90), (3, 10)][..], "only versions live in production"),
        (&[(1, 100), (2, 0)][..], "at least 1"),
    ] {
        refused(
            promote(&mut p.dora, rollout(bad)).await,
            Code::InvalidArgument,
            needle,
        );
    }
    let d = promote(&mut p.dora, rollout(&[(1, 90), (2, 10)]))
        .await
        .unwrap();
    assert_eq!(d.splits.len(), 2);

    let mut svc = w.client("checkout-svc").await;
    let token: tonic::metadata::MetadataValue<_> = format!("Bearer {}", svc.token().await.unwrap())
        .parse()
        .unwrap();
    let get = |key: String| {
        let mut request = tonic::Request::new(pb::GetPromptRequest {
            prompt: "checkout/welcome".into(),
            environment: "production".into(),
            routing_key: key,
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", token.clone());
        request
    };
    let mut picked = std::collections::HashMap::new();
    let mut on_new = 0;
    for i in 0..10_000 {
        let r = svc
            .registry()
            .get_prompt(get(format!("user-{i}")))
            .await
            .unwrap()
            .into_inner();
        let reference = r.reference.unwrap();
        if reference.version == 2 {
            on_new += 1;
            assert_eq!((r.template.as_str(), reference.weight), ("new", 10));
        } else {
            assert_eq!((r.template.as_str(), reference.weight), ("old", 90));
        }
        assert_eq!(reference.deployment_sequence, d.sequence);
        picked.insert(i, reference.version);
    }
    // 10 % of 10,000 = 1,000 keys, binomial standard deviation 30: allow four of them.
    assert!(
        (880..=1120).contains(&on_new),
        "{on_new} keys on the 10 % version"
    );
    // Sticky: the same keys get the same versions again.
    for i in (0..10_000).step_by(97) {
        let r = svc
            .registry()
            .get_prompt(get(format!("user-{i}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.reference.unwrap().version,
            picked[&i],
            "key user-{i} moved"
        );
    }
    // No key: the version with the largest weight.
    let r = svc
        .registry()
        .get_prompt(get(String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.reference.unwrap().version, 1);
    w.server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Questions compliance asks.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_asks_what_was_live_why_and_who_held_which_role() {
    let w = World::new().await;
    cast(&w).await;
    let mut p = people(&w).await;
    create(&mut p, "support/c", "v1").await;
    p.alice
        .submit(commit("support/c", Some(1), "v2"))
        .await
        .unwrap();
    let d1 = through_production(&mut p, "support/c", 1, "v1").await;
    let between = tree_size(&mut p.alice).await - 1;
    w.advance_minutes(5);
    let d2 = through_production(&mut p, "support/c", 2, "v2").await;

    let mut audrey = w.client("audrey").await;
    // What was live in production at a sequence number, and at a time.
    for (at_sequence, at_time_ms, want) in [
        (between, 0, 1),
        (d2.sequence, 0, 2),
        (0, d1.timestamp_ms + 60_000, 1),
        (0, d2.timestamp_ms, 2),
        (0, 0, 2),
    ] {
        let request = audrey
            .authorized(pb::GetDeploymentRequest {
                prompt: "support/c".into(),
                environment: "production".into(),
                at_sequence,
                at_time_ms,
            })
            .await
            .unwrap();
        let d = audrey
            .registry()
            .get_deployment(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            d.deployment.unwrap().version,
            want,
            "at {at_sequence}/{at_time_ms}"
        );
    }
    let request = audrey
        .authorized(pb::GetDeploymentRequest {
            prompt: "support/c".into(),
            environment: "production".into(),
            at_sequence: d1.sequence - 1,
            at_time_ms: 0,
        })
        .await
        .unwrap();
    refused(
        audrey.registry().get_deployment(request).await,
        Code::NotFound,
        "nothing of support/c was live",
    );

    // Why the promotion of version 2 was allowed: every gate, and the events behind it.
    let request = audrey
        .authorized(pb::ExplainDeploymentRequest {
            prompt: "support/c".into(),
            sequence: d2.sequence,
        })
        .await
        .unwrap();
    let why = audrey
        .registry()
        .explain_deployment(request)
        .await
        .unwrap()
        .into_inner();
    let decision = why.deployment.unwrap().decision.unwrap();
    let gates: Vec<&str> = decision.gates.iter().map(|g| g.gate.as_str()).collect();
    assert_eq!(
        gates,
        [
            "previous_environment",
            "evaluation:regression",
            "evaluation:safety",
            "approvals"
        ]
    );
    let approvers: Vec<&str> = why
        .evidence
        .iter()
        .filter(|e| e.kind == "approve_version")
        .map(|e| e.actor.as_str())
        .collect();
    assert_eq!(approvers, ["bob", "rita"]);
    assert!(why.evidence.iter().any(|e| e.kind == "record_evaluation"
        && e.summary.starts_with("safety")
        && e.actor == "ci"));
    let cited: Vec<u64> = decision
        .gates
        .iter()
        .flat_map(|g| g.evidence.clone())
        .collect();
    assert!(why.evidence.iter().all(|e| cited.contains(&e.sequence)));

    // Who held which role when: bob becomes a deployer; the past stays as it was.
    let mut admin = w.admin().await;
    let changed = admin
        .submit(Action::SetActorRoles {
            name: "bob".into(),
            roles: vec!["deployer".into()],
        })
        .await
        .unwrap()
        .sequence;
    let roles_of_bob = |at: u64| pb::ListRoleAssignmentsRequest {
        at_sequence: at,
        actor: "bob".into(),
        ..Default::default()
    };
    for (at, want) in [
        (changed - 1, "reviewer"),
        (changed, "deployer"),
        (0, "deployer"),
    ] {
        let request = audrey.authorized(roles_of_bob(at)).await.unwrap();
        let got = audrey
            .registry()
            .list_role_assignments(request)
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.assignments[0].roles, vec![want.to_owned()], "at {at}");
    }
    // Services read only the deployed prompt of their namespace, and no audit view.
    let mut svc = w.client("checkout-svc").await;
    let request = svc.authorized(roles_of_bob(0)).await.unwrap();
    refused(
        svc.registry().list_role_assignments(request).await,
        Code::PermissionDenied,
        "may not read",
    );
    refused(
        svc.get_prompt(pb::GetPromptRequest {
            prompt: "support/c".into(),
            environment: "production".into(),
            ..Default::default()
        })
        .await,
        Code::PermissionDenied,
        "namespace support",
    );
    // A role change reaches open sessions without a new one.
    admin
        .submit(Action::SetActorRoles {
            name: "checkout-svc".into(),
            roles: vec!["service@checkout".into(), "service@support".into()],
        })
        .await
        .unwrap();
    let got = svc
        .get_prompt(pb::GetPromptRequest {
            prompt: "support/c".into(),
            environment: "production".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(got.template, "v2");
    // Unknown roles are refused when assigned.
    refused(
        admin
            .submit(Action::SetActorRoles {
                name: "bob".into(),
                roles: vec!["superuser".into()],
            })
            .await,
        Code::InvalidArgument,
        "roles the policy in force names",
    );
    w.server.stop().await;
}
