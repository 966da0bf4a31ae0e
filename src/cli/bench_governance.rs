//! `promptledger bench governance`: what policy evaluation costs. Casbin `enforce` latency,
//! uncached and cached; then, over loopback in one run, signed writes without a policy decision
//! worth the name (`CommitVersion`, the baseline), promotions checked against the policy but
//! no gates (dev rollouts), and promotions through every production gate (environment order,
//! two evaluations, two approvals), each a rollout step so one prompt can be promoted again and
//! again.

use super::bench_grpc::{channels, commit, drive, serve_in_process, tempfile_dir, Outcome};
use anyhow::{Context as _, Result};
use clap::Args;
use promptledger::client::{sign_statement, Client};
use promptledger::keyfile;
use promptledger::ledger::keys::KeyPair;
use promptledger::node::{self, DataDir};
use promptledger::policy::{Act, Policy, PolicyFiles};
use promptledger::proto::registry::v1 as pb;
use promptledger::registry::model::{Environment, Split};
use promptledger::registry::statement::{Action, Statement};
use promptledger::storage::writer::system_clock_ms;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct GovernanceArgs {
    /// Seconds per case.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent streams; each owns one prompt.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// HTTP/2 connections the streams share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Pre-signed statements per stream and case (a case ends early when they run out).
    #[arg(long, default_value_t = 3000)]
    statements: usize,
}

pub fn run(args: GovernanceArgs) -> Result<ExitCode> {
    enforce_latency()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))?;
    Ok(ExitCode::SUCCESS)
}

/// Casbin `enforce` on the shipped policy: uncached (what every check would cost) and through
/// the policy's decision cache (what the writer and session resolution pay).
fn enforce_latency() -> Result<()> {
    let policy = Policy::new(PolicyFiles::builtin())?;
    let roles = [
        "admin", "author", "reviewer", "deployer", "ci", "service", "auditor",
    ];
    let envs = ["dev", "staging", "production"];
    let requests: Vec<(&str, &str, Act)> = roles
        .iter()
        .flat_map(|r| {
            envs.iter()
                .flat_map(move |e| Act::ALL.iter().map(move |a| (*r, *e, *a)))
        })
        .collect();
    let time = |n: usize, f: &dyn Fn(&str, &str, Act) -> bool| {
        let start = Instant::now();
        let mut allowed = 0;
        for i in 0..n {
            let (r, e, a) = requests[i % requests.len()];
            allowed += usize::from(f(r, e, a));
        }
        (start.elapsed().as_secs_f64() * 1e6 / n as f64, allowed)
    };
    let (uncached, a1) = time(20_000, &|r, e, a| {
        policy.enforce_uncached(r, "support", e, a)
    });
    let (cached, a2) = time(1_000_000, &|r, e, a| policy.allows(r, "support", e, a));
    println!(
        "Casbin enforce, shipped policy ({} distinct requests):",
        requests.len()
    );
    println!("  uncached  {uncached:>8.2} µs per call ({a1} of 20,000 allowed)");
    println!("  cached    {cached:>8.3} µs per call ({a2} of 1,000,000 allowed)");
    Ok(())
}

/// The actors of the benchmark, by role.
struct Cast {
    author: KeyPair,
    ci: KeyPair,
    reviewers: [KeyPair; 2],
    deployer: KeyPair,
}

impl Cast {
    fn new() -> Result<Cast> {
        Ok(Cast {
            author: KeyPair::from_seed("author", &[1; 32])?,
            ci: KeyPair::from_seed("ci", &[2; 32])?,
            reviewers: [
                KeyPair::from_seed("bob", &[3; 32])?,
                KeyPair::from_seed("rita", &[4; 32])?,
            ],
            deployer: KeyPair::from_seed("deployer", &[5; 32])?,
        })
    }
}

fn template(prompt: &str, version: u64) -> String {
    format!("v{version} of {prompt} {{{{customer}}}}")
}

fn hash(prompt: &str, version: u64) -> String {
    let Action::CommitVersion { content_hash, .. } =
        commit(prompt, None, template(prompt, version))
    else {
        unreachable!("commit makes a CommitVersion")
    };
    content_hash
}

fn evaluation(prompt: &str, version: u64, suite: &str) -> Action {
    Action::RecordEvaluation {
        prompt: prompt.into(),
        version,
        content_hash: hash(prompt, version),
        suite: suite.into(),
        score: 0.97,
        threshold: 0.9,
        passed: true,
        evaluator: "bench".into(),
        evidence_digest: String::new(),
        evidence_uri: String::new(),
    }
}

fn approval(prompt: &str, version: u64, env: Environment) -> Action {
    Action::ApproveVersion {
        prompt: prompt.into(),
        version,
        content_hash: hash(prompt, version),
        environment: env,
    }
}

fn promotion(prompt: &str, version: u64, env: Environment, rollout: Vec<Split>) -> Action {
    Action::PromoteVersion {
        prompt: prompt.into(),
        version,
        environment: env,
        rollout,
        expected_deployment: None,
    }
}

/// Brings `bench/g<s>` to: version 1 live alone in production; version 2 live in dev and
/// staging with everything production asks of it; `bench/c<s>` with one version.
async fn set_up(endpoint: String, cast: Arc<Cast>, streams: Vec<usize>) -> Result<()> {
    let connect = |k: &KeyPair| Client::connect(endpoint.clone(), k.clone());
    let mut author = connect(&cast.author).await?;
    let mut ci = connect(&cast.ci).await?;
    let mut bob = connect(&cast.reviewers[0]).await?;
    let mut rita = connect(&cast.reviewers[1]).await?;
    let mut deployer = connect(&cast.deployer).await?;
    for s in streams {
        let (g, c) = (format!("bench/g{s}"), format!("bench/c{s}"));
        for p in [&g, &c] {
            author
                .submit(Action::CreatePrompt {
                    prompt: p.clone(),
                    description: String::new(),
                })
                .await?;
            author.submit(commit(p, None, template(p, 1))).await?;
        }
        author.submit(commit(&g, Some(1), template(&g, 2))).await?;
        for version in [1, 2] {
            deployer
                .submit(promotion(&g, version, Environment::Dev, vec![]))
                .await?;
            ci.submit(evaluation(&g, version, "regression")).await?;
            bob.submit(approval(&g, version, Environment::Staging))
                .await?;
            deployer
                .submit(promotion(&g, version, Environment::Staging, vec![]))
                .await?;
            ci.submit(evaluation(&g, version, "safety")).await?;
            bob.submit(approval(&g, version, Environment::Production))
                .await?;
            rita.submit(approval(&g, version, Environment::Production))
                .await?;
            if version == 1 {
                deployer
                    .submit(promotion(&g, 1, Environment::Production, vec![]))
                    .await?;
            }
        }
    }
    Ok(())
}

async fn bench(args: GovernanceArgs) -> Result<()> {
    let tmp = tempfile_dir()?;
    let dir = DataDir::new(tmp.join("ledger"));
    let init_dir = dir.clone();
    tokio::task::spawn_blocking(move || node::init(&init_dir, system_clock_ms())).await??;
    let (addr, stop, server) = serve_in_process(&dir).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let endpoint = format!("http://{addr}");

    let cast = Arc::new(Cast::new()?);
    let mut admin = Client::connect(endpoint.clone(), keyfile::read_key(&dir.admin_key())?)
        .await
        .map_err(anyhow::Error::msg)?;
    for (k, role) in [
        (&cast.author, "author"),
        (&cast.ci, "ci"),
        (&cast.reviewers[0], "reviewer"),
        (&cast.reviewers[1], "reviewer"),
        (&cast.deployer, "deployer"),
    ] {
        admin
            .submit(Action::RegisterActor {
                name: k.name().into(),
                key: k.public().to_vkey(),
                roles: vec![role.into()],
            })
            .await?;
    }
    let started = Instant::now();
    let workers = args.streams.clamp(1, 8);
    let mut setup = Vec::new();
    for w in 0..workers {
        let mine: Vec<usize> = (0..args.streams).filter(|s| s % workers == w).collect();
        setup.push(tokio::spawn(set_up(endpoint.clone(), cast.clone(), mine)));
    }
    for t in setup {
        t.await?.context("setting up the prompts")?;
    }
    let ledger_id = admin.ledger_id().to_owned();
    println!(
        "set up {} prompts through dev, staging and production in {:.1} s",
        args.streams,
        started.elapsed().as_secs_f64()
    );

    // Pre-signed statements, per case and stream. Rollout weights change with every step (the
    // same weights twice would be refused as already live).
    let sign = |key: &KeyPair, s: usize, i: usize, tag: &str, action: Action| {
        sign_statement(
            &Statement {
                ledger_id: ledger_id.clone(),
                actor: key.name().to_owned(),
                issued_at_ms: system_clock_ms(),
                nonce: format!("{tag}-{s}-{i}"),
                action,
            },
            key,
        )
    };
    let weights = |first: u64, second: u64, i: usize| {
        let w = 1 + (i % 98) as u32;
        vec![
            Split {
                version: first,
                weight: 100 - w,
            },
            Split {
                version: second,
                weight: w,
            },
        ]
    };
    let n = args.statements;
    let commits: Vec<Vec<pb::SignedStatement>> = (0..args.streams)
        .map(|s| {
            let p = format!("bench/c{s}");
            (0..n)
                .map(|i| {
                    let parent = 1 + i as u64;
                    let action = commit(&p, Some(parent), template(&p, parent + 1));
                    sign(&cast.author, s, i, "c", action)
                })
                .collect()
        })
        .collect();
    let dev: Vec<Vec<pb::SignedStatement>> = (0..args.streams)
        .map(|s| {
            let g = format!("bench/g{s}");
            (0..n)
                .map(|i| {
                    let action = promotion(&g, 1, Environment::Dev, weights(2, 1, i));
                    sign(&cast.deployer, s, i, "d", action)
                })
                .collect()
        })
        .collect();
    let production: Vec<Vec<pb::SignedStatement>> = (0..args.streams)
        .map(|s| {
            let g = format!("bench/g{s}");
            (0..n)
                .map(|i| {
                    let action = promotion(&g, 2, Environment::Production, weights(1, 2, i));
                    sign(&cast.deployer, s, i, "p", action)
                })
                .collect()
        })
        .collect();

    let chans = channels(addr, args.connections).await?;
    let case = |signed: Vec<Vec<pb::SignedStatement>>, promote: bool| {
        let signed = Arc::new(signed);
        let chans = chans.clone();
        move |s: usize, i: usize| {
            let statement = Some(signed[s].get(i)?.clone());
            let mut c = pb::registry_service_client::RegistryServiceClient::new(
                chans[s % chans.len()].clone(),
            );
            Some(async move {
                if promote {
                    c.promote_version(pb::PromoteVersionRequest { statement })
                        .await
                        .is_ok()
                } else {
                    c.commit_version(pb::CommitVersionRequest { statement })
                        .await
                        .is_ok()
                }
            })
        }
    };
    let baseline = drive(
        "CommitVersion (baseline)",
        args.streams,
        args.seconds,
        case(commits, false),
    )
    .await;
    let dev = drive(
        "promote, policy only (dev)",
        args.streams,
        args.seconds,
        case(dev, true),
    )
    .await;
    let gated = drive(
        "promote, 4 gates (production)",
        args.streams,
        args.seconds,
        case(production, true),
    )
    .await;

    println!(
        "{} streams over {} connections, loopback, one process; every write signed and durable",
        args.streams, args.connections
    );
    println!(
        "{:<32} {:>9} {:>9} {:>9} {:>8} {:>12}",
        "case", "writes/s", "p50 ms", "p99 ms", "errors", "vs baseline"
    );
    for o in [&baseline, &dev, &gated] {
        print_row(o, &baseline);
    }
    let _ = stop.send(());
    server.await??;
    // Replaying the log decides every promotion again under the policy in force.
    let verified =
        tokio::task::spawn_blocking(move || node::verify_dir(&dir, None, None)).await??;
    println!(
        "ledger after the run verifies, every decision replayed: {} entries",
        verified.checkpoint.size
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

fn print_row(o: &Outcome, baseline: &Outcome) {
    println!(
        "{:<32} {:>9.0} {:>9.3} {:>9.3} {:>8} {:>11.0}%",
        o.name,
        o.rps(),
        o.pct(0.50),
        o.pct(0.99),
        o.errors,
        100.0 * o.rps() / baseline.rps()
    );
}
