//! The governance commands of the real binary against a real server: keys, actors, evaluations,
//! approvals, a refused and an allowed promotion, rollouts, rollback, break-glass, the policy,
//! and the compliance questions. Exit codes: 0 done, 1 refused by the server.

mod common;

use common::Server;
use promptledger::node::DataDir;
use promptledger::server::Config;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` as the holder of `key` (off the async runtime).
async fn cli(server: &str, key: Option<&Path>, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_promptledger"));
    cmd.args(["--server", server]);
    if let Some(k) = key {
        cmd.arg("--key").arg(k);
    }
    cmd.args(args)
        .env_remove("PROMPTLEDGER_KEY")
        .env_remove("PROMPTLEDGER_KEY_FILE")
        .env_remove("PROMPTLEDGER_CLIENT_CONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the binary configured only through the environment, as the CI recipe in
/// docs/ci-recipe.md does: PROMPTLEDGER_SERVER and PROMPTLEDGER_KEY (the key itself).
async fn cli_from_env(server: &str, key_text: &str, args: &[&str]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_promptledger"));
    cmd.args(args)
        .env("PROMPTLEDGER_SERVER", server)
        .env("PROMPTLEDGER_KEY", key_text)
        .env_remove("PROMPTLEDGER_KEY_FILE");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(r: &Run, what: &str) {
    assert_eq!(r.code, 0, "{what}: {}{}", r.stdout, r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governance_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let policies = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies");
    let server = Server::start(Config {
        data_dir: dir.root.clone(),
        policy_dir: Some(policies.clone()),
        ..Config::default()
    })
    .await;
    let url = server.endpoint();
    let admin = dir.admin_key();

    // Keys, and the admin registers their owners.
    let mut keys = std::collections::HashMap::new();
    for (name, role) in [
        ("alice", "author"),
        ("bob", "reviewer"),
        ("rita", "reviewer"),
        ("ci", "ci"),
        ("dora", "deployer"),
        ("brenda", "breakglass"),
        ("audrey", "auditor"),
    ] {
        let path = tmp.path().join(format!("{name}.key"));
        let r = cli(
            &url,
            None,
            &["keygen", "--name", name, "--out", path.to_str().unwrap()],
        )
        .await;
        ok(&r, "keygen");
        let vkey = r.stdout.trim().to_owned();
        assert!(vkey.starts_with(&format!("{name}+")), "{vkey}");
        let again = cli(
            &url,
            None,
            &["keygen", "--name", name, "--out", path.to_str().unwrap()],
        )
        .await;
        assert_eq!(again.code, 2, "an existing key is never overwritten");
        let r = cli(
            &url,
            Some(&admin),
            &["actor", "register", name, "--vkey", &vkey, "--role", role],
        )
        .await;
        ok(&r, "register");
        keys.insert(name, path);
    }
    let key = |name: &str| keys[name].clone();

    // Alice writes the prompt from the command line: create, then two versions from files.
    let p = "support/greeting";
    ok(
        &cli(
            &url,
            Some(&key("alice")),
            &["prompt", "create", p, "--description", "first line"],
        )
        .await,
        "create",
    );
    for (i, text) in ["Hello {{customer}}", "Hi {{customer}}"].iter().enumerate() {
        let file = tmp.path().join(format!("v{}.txt", i + 1));
        std::fs::write(&file, text).unwrap();
        let r = cli(
            &url,
            Some(&key("alice")),
            &[
                "commit",
                p,
                "--template-file",
                file.to_str().unwrap(),
                "--model",
                "gpt-4o",
                "--param",
                "temperature=0.2",
                "--message",
                "draft",
            ],
        )
        .await;
        ok(&r, "commit");
        assert!(
            r.stdout.contains(&format!("version {}", i + 1)),
            "{}",
            r.stdout
        );
    }
    let r = cli(
        &url,
        Some(&key("audrey")),
        &["diff", p, "--from", "1", "--to", "2"],
    )
    .await;
    ok(&r, "diff");
    assert!(
        r.stdout.contains("-Hello {{customer}}") && r.stdout.contains("+Hi {{customer}}"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("parameter"),
        "the parameters did not change: {}",
        r.stdout
    );
    // The content hash the CLI computed is the one anyone can recompute.
    let mut params = std::collections::BTreeMap::new();
    params.insert("temperature".to_owned(), serde_json::json!(0.2));
    let want = promptledger::registry::model::content_hash(
        "Hi {{customer}}",
        "gpt-4o",
        &params,
        &["customer".to_owned()],
    );
    let r = cli(&url, Some(&key("audrey")), &["get", p, "--version", "2"]).await;
    ok(&r, "get version");
    assert_eq!(r.stdout, "Hi {{customer}}");
    assert!(r.stderr.contains(&want), "{}", r.stderr);

    for env in ["dev"] {
        for v in ["1", "2"] {
            let r = cli(
                &url,
                Some(&key("dora")),
                &["promote", p, "--version", v, "--env", env],
            )
            .await;
            ok(&r, "promote to dev");
        }
    }
    // Staging without evidence: refused, exit 1, the gate named.
    let r = cli(
        &url,
        Some(&key("dora")),
        &["promote", p, "--version", "1", "--env", "staging"],
    )
    .await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("FailedPrecondition") && r.stderr.contains("evaluation:regression"),
        "{}",
        r.stderr
    );
    // Authors may not approve: PERMISSION_DENIED.
    let r = cli(
        &url,
        Some(&key("alice")),
        &["approve", p, "--version", "1", "--env", "staging"],
    )
    .await;
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("PermissionDenied") && r.stderr.contains("may not approve"),
        "{}",
        r.stderr
    );

    // The CI recipe: the pipeline's key comes from a secret environment variable.
    let ci_key = std::fs::read_to_string(key("ci")).unwrap();
    let r = cli_from_env(
        &url,
        ci_key.trim(),
        &[
            "evaluate",
            p,
            "--version",
            "1",
            "--suite",
            "smoke",
            "--score",
            "1",
            "--threshold",
            "1",
            "--evidence-uri",
            "https://ci.example/run/1",
        ],
    )
    .await;
    ok(&r, "CI recipe: evaluate");
    for v in ["1", "2"] {
        ok(
            &cli(
                &url,
                Some(&key("ci")),
                &[
                    "evaluate",
                    p,
                    "--version",
                    v,
                    "--suite",
                    "regression",
                    "--score",
                    "0.95",
                    "--threshold",
                    "0.9",
                ],
            )
            .await,
            "evaluate regression",
        );
        ok(
            &cli(
                &url,
                Some(&key("ci")),
                &[
                    "evaluate",
                    p,
                    "--version",
                    v,
                    "--suite",
                    "safety",
                    "--score",
                    "1",
                    "--threshold",
                    "0.99",
                ],
            )
            .await,
            "evaluate safety",
        );
        for (who, env) in [
            ("bob", "staging"),
            ("bob", "production"),
            ("rita", "production"),
        ] {
            ok(
                &cli(
                    &url,
                    Some(&key(who)),
                    &["approve", p, "--version", v, "--env", env],
                )
                .await,
                "approve",
            );
        }
        ok(
            &cli(
                &url,
                Some(&key("dora")),
                &["promote", p, "--version", v, "--env", "staging"],
            )
            .await,
            "promote to staging",
        );
    }
    let r = cli(
        &url,
        Some(&key("dora")),
        &["promote", p, "--version", "1", "--env", "production"],
    )
    .await;
    ok(&r, "promote v1 to production");
    assert!(r.stdout.contains("pass approvals"), "{}", r.stdout);
    // A 90/10 rollout of version 2.
    let r = cli(
        &url,
        Some(&key("dora")),
        &[
            "promote",
            p,
            "--version",
            "2",
            "--env",
            "production",
            "--weight",
            "1=90",
            "--weight",
            "2=10",
        ],
    )
    .await;
    ok(&r, "rollout");
    assert!(
        r.stdout.contains("version 1 90%, version 2 10%"),
        "{}",
        r.stdout
    );
    let rollout_seq: u64 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("recorded at sequence "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();

    // A service-side read with a routing key says which version it got.
    let r = cli(
        &url,
        Some(&key("audrey")),
        &["get", p, "--env", "production", "--routing-key", "user-1"],
    )
    .await;
    ok(&r, "get with a routing key");
    assert!(
        r.stdout == "Hello {{customer}}" || r.stdout == "Hi {{customer}}",
        "{}",
        r.stdout
    );
    let r = cli(&url, Some(&key("audrey")), &["history", p]).await;
    ok(&r, "history");
    assert!(
        r.stdout.contains("create_prompt") && r.stdout.contains("approve_version"),
        "{}",
        r.stdout
    );

    // Compliance: what is live, why it was allowed.
    let r = cli(
        &url,
        Some(&key("audrey")),
        &["live", p, "--env", "production"],
    )
    .await;
    ok(&r, "live");
    assert!(
        r.stdout.contains(&format!("sequence {rollout_seq}")),
        "{}",
        r.stdout
    );
    let r = cli(
        &url,
        Some(&key("audrey")),
        &["why", p, "--seq", &rollout_seq.to_string()],
    )
    .await;
    ok(&r, "why");
    for needle in [
        "pass evaluation:safety",
        "approve_version",
        "bob",
        "rita",
        "record_evaluation",
    ] {
        assert!(
            r.stdout.contains(needle),
            "why lacks {needle}: {}",
            r.stdout
        );
    }

    // The audit log, filtered, as JSON lines with the signed statements.
    let r = cli(
        &url,
        Some(&key("audrey")),
        &[
            "audit",
            "log",
            "--prompt",
            p,
            "--kind",
            "promote_version",
            "--env",
            "production",
            "--output",
            "json",
        ],
    )
    .await;
    ok(&r, "audit log");
    let lines: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "v1, then the rollout: {}", r.stdout);
    assert_eq!(lines[1]["seq"], rollout_seq);
    assert_eq!(lines[1]["statement"]["action"]["rollout"][1]["weight"], 10);

    let r = cli(
        &url,
        Some(&key("audrey")),
        &[
            "--output",
            "json",
            "why",
            p,
            "--seq",
            &rollout_seq.to_string(),
        ],
    )
    .await;
    ok(&r, "why as JSON");
    let why: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(why["deployment"]["sequence"], rollout_seq);
    assert_eq!(why["deployment"]["splits"][1]["weight"], 10);
    assert!(why["deployment"]["decision"]["gates"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["passed"] == true));
    assert!(why["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "approve_version" && e["actor"] == "rita"));

    // Rollback needs a reason and a version that was live there; break-glass is flagged.
    ok(
        &cli(
            &url,
            Some(&key("dora")),
            &[
                "rollback",
                p,
                "--version",
                "1",
                "--env",
                "production",
                "--reason",
                "INC-7 rollout errors",
            ],
        )
        .await,
        "rollback",
    );
    let r = cli(
        &url,
        Some(&key("brenda")),
        &[
            "break-glass",
            p,
            "--version",
            "2",
            "--env",
            "production",
            "--reason",
            "hotfix for INC-8",
        ],
    )
    .await;
    ok(&r, "break-glass");
    assert!(
        r.stdout.contains("BREAK-GLASS") && r.stdout.contains("gates BYPASSED"),
        "{}",
        r.stdout
    );

    // CSV for lists and records; refused (usage, exit 2) where it makes no sense.
    let r = cli(
        &url,
        Some(&key("audrey")),
        &["--output", "csv", "actor", "roles"],
    )
    .await;
    ok(&r, "roles as CSV");
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("actor,roles,revoked,at_sequence"));
    assert!(
        lines.any(|l| l.starts_with("dora,deployer,false,")),
        "{}",
        r.stdout
    );
    let r = cli(
        &url,
        Some(&key("audrey")),
        &[
            "--output",
            "csv",
            "audit",
            "log",
            "--kind",
            "rollback_prompt",
        ],
    )
    .await;
    ok(&r, "audit log as CSV");
    assert_eq!(
        r.stdout.lines().count(),
        2,
        "a header and the one rollback: {}",
        r.stdout
    );
    let r = cli(
        &url,
        Some(&key("audrey")),
        &["--output", "csv", "why", p, "--env", "production"],
    )
    .await;
    assert_eq!(r.code, 2, "{}", r.stderr);

    // Who held which role; the policy; a policy change by the admin.
    let r = cli(&url, Some(&key("audrey")), &["actor", "roles"]).await;
    ok(&r, "roles");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.starts_with("dora") && l.ends_with("deployer")),
        "{}",
        r.stdout
    );
    let r = cli(&url, Some(&key("audrey")), &["policy", "show"]).await;
    ok(&r, "policy show");
    let shipped = promptledger::policy::PolicyFiles::read_dir(&policies).unwrap();
    assert!(r.stdout.contains(&shipped.version()) && r.stdout.contains("==> gates.toml <=="));
    let relaxed = tmp.path().join("relaxed");
    std::fs::create_dir_all(&relaxed).unwrap();
    std::fs::write(relaxed.join("model.conf"), &shipped.model).unwrap();
    std::fs::write(relaxed.join("policy.csv"), &shipped.policy).unwrap();
    std::fs::write(relaxed.join("gates.toml"), "[production]\napprovals = 1\n").unwrap();
    let r = cli(
        &url,
        Some(&key("dora")),
        &["policy", "set", "--dir", relaxed.to_str().unwrap()],
    )
    .await;
    assert_eq!(r.code, 1, "only admins set policy: {}", r.stderr);
    let r = cli(
        &url,
        Some(&admin),
        &["policy", "set", "--dir", relaxed.to_str().unwrap()],
    )
    .await;
    ok(&r, "policy set");
    assert!(r.stdout.contains("is in force"), "{}", r.stdout);

    // Server and key from a client config file alone.
    let config = tmp.path().join("client.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{url}\"\nkey_file = \"{}\"\n",
            key("audrey").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_promptledger"));
    cmd.args([
        "--client-config",
        config.to_str().unwrap(),
        "live",
        p,
        "--env",
        "production",
    ])
    .env_remove("PROMPTLEDGER_KEY")
    .env_remove("PROMPTLEDGER_KEY_FILE")
    .env_remove("PROMPTLEDGER_SERVER");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("BREAK-GLASS"));

    // No key: a usage error, exit 2.
    let r = cli(&url, None, &["live", p, "--env", "production"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    server.stop().await;
}
