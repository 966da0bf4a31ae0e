//! `promptledger bench grpc`: echo (the limit of tonic on this machine) vs `GetPrompt` vs signed,
//! durable `CommitVersion`, each with the same number of concurrent streams, in one run, so the
//! ratios are meaningful on a noisy machine. The cases take turns in rounds (echo, `GetPrompt`,
//! `CommitVersion`, then again), so a slow moment of the shared machine falls on every case
//! rather than on one; each round's ratios are reported, and their median.

use anyhow::Result;
use clap::Args;
use promptledger::client::{sign_statement, Client};
use promptledger::keyfile;
use promptledger::ledger::keys::KeyPair;
use promptledger::node::{self, DataDir};
use promptledger::proto::bench::v1 as echo;
use promptledger::proto::registry::v1 as pb;
use promptledger::registry::model::{content_hash, Environment};
use promptledger::registry::statement::{Action, Statement};
use promptledger::storage::writer::system_clock_ms;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Args)]
pub struct GrpcArgs {
    /// Seconds per case in each round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds: each runs every case once, in turn.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent streams (in-flight requests).
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// HTTP/2 connections the streams share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Run only the signed-commit case after the echo baseline (for profiling the write path).
    #[arg(long)]
    commit_only: bool,
}

struct EchoImpl;

#[tonic::async_trait]
impl echo::echo_service_server::EchoService for EchoImpl {
    async fn echo(
        &self,
        r: tonic::Request<echo::EchoRequest>,
    ) -> Result<tonic::Response<echo::EchoResponse>, tonic::Status> {
        Ok(tonic::Response::new(echo::EchoResponse {
            payload: r.into_inner().payload,
        }))
    }
}

pub(super) struct Outcome {
    pub(super) name: &'static str,
    pub(super) requests: usize,
    pub(super) errors: usize,
    pub(super) elapsed: Duration,
    pub(super) latencies_us: Vec<u32>,
}

impl Outcome {
    /// One outcome of several runs of the same case: requests and time add up, latencies merge.
    fn merge(runs: &[Outcome]) -> Outcome {
        let mut latencies_us: Vec<u32> = runs
            .iter()
            .flat_map(|o| o.latencies_us.iter().copied())
            .collect();
        latencies_us.sort_unstable();
        Outcome {
            name: runs.first().map_or("", |o| o.name),
            requests: runs.iter().map(|o| o.requests).sum(),
            errors: runs.iter().map(|o| o.errors).sum(),
            elapsed: runs.iter().map(|o| o.elapsed).sum(),
            latencies_us,
        }
    }

    pub(super) fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    pub(super) fn pct(&self, p: f64) -> f64 {
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    }
}

/// Runs `streams` loops of `call` for `seconds` (or until a loop's `call` returns `None`: out
/// of pre-signed work), collecting latencies.
pub(super) async fn drive<F, Fut>(
    name: &'static str,
    streams: usize,
    seconds: u64,
    call: F,
) -> Outcome
where
    F: Fn(usize, usize) -> Option<Fut> + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..streams {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut i) = (Vec::with_capacity(100_000), 0usize, 0usize);
            while Instant::now() < deadline {
                let Some(fut) = call(s, i) else { break };
                let t = Instant::now();
                if !fut.await {
                    errors += 1;
                }
                lat.push(t.elapsed().as_micros() as u32);
                i += 1;
            }
            (lat, errors)
        }));
    }
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("bench task");
        latencies_us.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies_us.sort_unstable();
    Outcome {
        name,
        requests: latencies_us.len(),
        errors,
        elapsed,
        latencies_us,
    }
}

pub(super) async fn channels(addr: std::net::SocketAddr, n: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    Ok(out)
}

pub(super) fn commit(prompt: &str, parent: Option<u64>, template: String) -> Action {
    let parameters: BTreeMap<String, serde_json::Value> =
        BTreeMap::from([("temperature".to_owned(), serde_json::json!(0.2))]);
    let variables = vec!["customer".to_owned()];
    Action::CommitVersion {
        prompt: prompt.into(),
        parent_version: parent,
        content_hash: content_hash(&template, "gpt-4o", &parameters, &variables),
        template,
        model: "gpt-4o".into(),
        parameters,
        variables,
        message: "bench".into(),
    }
}

pub fn run(args: GrpcArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn bench(args: GrpcArgs) -> Result<()> {
    let tmp = tempfile_dir()?;
    let dir = DataDir::new(tmp.join("ledger"));
    let init_dir = dir.clone();
    tokio::task::spawn_blocking(move || node::init(&init_dir, system_clock_ms())).await??;

    // The product server and the echo baseline, both in this process on loopback.
    let (addr, stop, server) = serve_in_process(&dir).await?;
    let echo_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo_listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(echo::echo_service_server::EchoServiceServer::new(EchoImpl))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(echo_listener).with_nodelay(Some(true)),
            ),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Cast and data: an author, a deployer, a service; one deployed prompt per stream.
    let endpoint = format!("http://{addr}");
    let mut admin = Client::connect(endpoint.clone(), keyfile::read_key(&dir.admin_key())?)
        .await
        .map_err(anyhow::Error::msg)?;
    let author = KeyPair::from_seed("author", &[1; 32])?;
    let deployer = KeyPair::from_seed("deployer", &[2; 32])?;
    let service = KeyPair::from_seed("svc", &[3; 32])?;
    // The deployer breaks the glass: the setup is not what is measured, the gates are not in
    // the read path.
    for (k, roles) in [
        (&author, &["author"][..]),
        (&deployer, &["deployer", "breakglass"][..]),
        (&service, &["service"][..]),
    ] {
        admin
            .submit(Action::RegisterActor {
                name: k.name().into(),
                key: k.public().to_vkey(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
            })
            .await?;
    }
    let mut author_client = Client::connect(endpoint.clone(), author.clone()).await?;
    let mut deployer_client = Client::connect(endpoint.clone(), deployer).await?;
    for s in 0..args.streams {
        let prompt = format!("bench/p{s}");
        author_client
            .submit(Action::CreatePrompt {
                prompt: prompt.clone(),
                description: String::new(),
            })
            .await?;
        author_client
            .submit(commit(
                &prompt,
                None,
                format!("Hello {{{{customer}}}} from {prompt}"),
            ))
            .await?;
        deployer_client
            .submit(Action::BreakGlassPromote {
                prompt,
                version: 1,
                environment: Environment::Production,
                rollout: vec![],
                reason: "benchmark setup".into(),
                expected_deployment: None,
            })
            .await?;
    }
    let mut svc = Client::connect(endpoint.clone(), service).await?;
    let token: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", svc.token().await?).parse()?;
    let ledger_id = author_client.ledger_id().to_owned();

    let echo_channels = channels(echo_addr, args.connections).await?;
    let echo_case = {
        let chans = echo_channels.clone();
        move |s: usize, _i: usize| {
            let mut c =
                echo::echo_service_client::EchoServiceClient::new(chans[s % chans.len()].clone());
            Some(async move {
                c.echo(echo::EchoRequest {
                    payload: vec![7; 64],
                })
                .await
                .is_ok()
            })
        }
    };

    let chans = channels(addr, args.connections).await?;
    let get_case = {
        let chans = chans.clone();
        move |s: usize, _i: usize| {
            let mut c = pb::registry_service_client::RegistryServiceClient::new(
                chans[s % chans.len()].clone(),
            );
            let mut req = tonic::Request::new(pb::GetPromptRequest {
                prompt: format!("bench/p{s}"),
                environment: "production".into(),
                ..Default::default()
            });
            req.metadata_mut().insert("authorization", token.clone());
            Some(async move { c.get_prompt(req).await.is_ok() })
        }
    };

    // Pre-signed commits: each stream extends its own prompt, so parents chain without races.
    // Enough for 20,000 commits/s; a stream that runs out stops early.
    let per_stream = (args.seconds as usize * args.rounds * 20_000) / args.streams.max(1) + 1;
    let signed: Vec<Vec<pb::SignedStatement>> = {
        use rayon::prelude::*;
        (0..args.streams)
            .into_par_iter()
            .map(|s| {
                let prompt = format!("bench/p{s}");
                (0..per_stream)
                    .map(|i| {
                        let st = Statement {
                            ledger_id: ledger_id.clone(),
                            actor: "author".into(),
                            issued_at_ms: system_clock_ms(),
                            nonce: format!("bench-{s}-{i}"),
                            action: commit(
                                &prompt,
                                Some(1 + i as u64),
                                format!("v{} of {prompt} {{{{customer}}}}", i + 2),
                            ),
                        };
                        sign_statement(&st, &author)
                    })
                    .collect()
            })
            .collect()
    };
    let signed = std::sync::Arc::new(signed);
    // Where each stream is in its statements, across rounds.
    let cursors: std::sync::Arc<Vec<std::sync::atomic::AtomicUsize>> =
        std::sync::Arc::new((0..args.streams).map(|_| Default::default()).collect());
    tracing::info!("statements signed; measuring");
    let commit_case = {
        let chans = chans.clone();
        move |s: usize, _i: usize| {
            let next = cursors[s].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let statement = signed[s].get(next)?.clone();
            let mut c = pb::registry_service_client::RegistryServiceClient::new(
                chans[s % chans.len()].clone(),
            );
            Some(async move {
                c.commit_version(pb::CommitVersionRequest {
                    statement: Some(statement),
                })
                .await
                .is_ok()
            })
        }
    };

    let (mut echoes, mut gets, mut commits) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.rounds.max(1) {
        let (n, s) = (args.streams, args.seconds);
        echoes.push(drive("echo (baseline)", n, s, echo_case.clone()).await);
        if !args.commit_only {
            gets.push(drive("GetPrompt", n, s, get_case.clone()).await);
        }
        commits.push(drive("CommitVersion (signed, durable)", n, s, commit_case.clone()).await);
    }

    println!(
        "{} streams over {} connections, loopback, one process; {} rounds of {} s per case",
        args.streams, args.connections, args.rounds, args.seconds
    );
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>8} {:>7} {:>20}  p99 ms per round",
        "case", "req/s", "p50 ms", "p99 ms", "errors", "vs echo", "rounds (median)"
    );
    for runs in [&echoes, &gets, &commits] {
        if runs.is_empty() {
            continue;
        }
        let all = Outcome::merge(runs);
        let mut ratios: Vec<f64> = runs
            .iter()
            .zip(&echoes)
            .map(|(o, e)| 100.0 * o.rps() / e.rps())
            .collect();
        let per_round = ratios
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join("/");
        ratios.sort_by(f64::total_cmp);
        let p99s = runs
            .iter()
            .map(|o| format!("{:.2}", o.pct(0.99)))
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "{:<34} {:>10.0} {:>9.3} {:>9.3} {:>8} {:>6.0}% {:>14} ({:.0}%)  {p99s}",
            all.name,
            all.rps(),
            all.pct(0.50),
            all.pct(0.99),
            all.errors,
            100.0 * all.rps() / Outcome::merge(&echoes).rps(),
            per_round,
            ratios[ratios.len() / 2]
        );
    }
    let _ = stop.send(());
    server.await??;
    let verified =
        tokio::task::spawn_blocking(move || node::verify_dir(&dir, None, None)).await??;
    println!(
        "ledger after the run verifies: {} entries",
        verified.checkpoint.size
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// The server on `dir`, in this process on a loopback port: its address, the sender that stops
/// it, and its task.
pub(super) async fn serve_in_process(
    dir: &DataDir,
) -> Result<(
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), promptledger::server::ServeError>>,
)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = promptledger::server::Config {
        data_dir: dir.root.clone(),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(promptledger::server::serve(config, listener, async {
        let _ = stopped.await;
    }));
    Ok((addr, stop, server))
}

pub(super) fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("promptledger-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
