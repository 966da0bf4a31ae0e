//! `promptledger bench nats`: what publishing to JetStream costs and how fast it catches up, on
//! loopback against a nats-server this command starts (from PATH) and kills itself.
//!
//! Phases, all with the same signed-write load (`--streams` clients, each statement signed by
//! the client as it goes):
//! 1. writes/s with publishing off (the baseline);
//! 2. writes/s with publishing on but NATS absent (a backlog builds);
//! 3. NATS appears: the backlog is published with no writes running: events/s into JetStream;
//! 4. writes/s with NATS up, then NATS killed for `--outage-secs` under the same write load,
//!    restarted, and the time until the publisher has caught up (writes still running).

use anyhow::{bail, Context as _, Result};
use clap::Args;
use promptledger::client::Client;
use promptledger::keyfile;
use promptledger::node::{self, DataDir};
use promptledger::proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use promptledger::proto::ledger::v1::{GetStatusRequest, GetStatusResponse};
use promptledger::publish::NatsConfig;
use promptledger::registry::statement::Action;
use promptledger::storage::writer::system_clock_ms;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct NatsArgs {
    /// Seconds of writes per measured phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds NATS is down in the outage phase.
    #[arg(long, default_value_t = 30)]
    outage_secs: u64,
    /// Concurrent writing clients.
    #[arg(long, default_value_t = 32)]
    streams: usize,
}

struct NatsServer {
    child: Child,
}

impl NatsServer {
    fn start(port: u16, store: &Path) -> Result<NatsServer> {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (from PATH; tools/setup.sh installs it)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(NatsServer { child })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Running {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), promptledger::server::ServeError>>,
}

async fn start_server(dir: &DataDir, nats_url: Option<String>) -> Result<Running> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = promptledger::server::Config {
        data_dir: dir.root.clone(),
        nats: NatsConfig {
            url: nats_url,
            ..NatsConfig::default()
        },
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(promptledger::server::serve(config, listener, async {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(Running { addr, stop, task })
}

impl Running {
    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }

    async fn status(&self) -> Result<GetStatusResponse> {
        Ok(
            LedgerServiceClient::connect(format!("http://{}", self.addr))
                .await?
                .get_status(GetStatusRequest {})
                .await?
                .into_inner(),
        )
    }

    /// Polls until the publisher has everything committed; returns how long that took from the
    /// moment it was connected (its reconnect backoff is not publishing).
    async fn until_caught_up(&self, limit: Duration) -> Result<Duration> {
        let deadline = Instant::now() + limit;
        while !self
            .status()
            .await?
            .nats
            .context("publishing is on")?
            .connected
        {
            if Instant::now() > deadline {
                bail!("publisher did not connect within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let start = Instant::now();
        loop {
            let s = self.status().await?;
            let n = s.nats.context("publishing is on")?;
            if n.lag_entries == 0 && n.published == s.size {
                return Ok(start.elapsed());
            }
            if Instant::now() > deadline {
                bail!("publisher did not catch up within {limit:?}: {n:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Write load: `streams` clients committing versions until `stop`; `done` counts acknowledged
/// ones.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(dir: &DataDir, addr: SocketAddr, streams: usize, tag: &str) -> Result<Load> {
        let (stop, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut tasks = Vec::new();
        for s in 0..streams {
            let mut c = Client::connect(
                format!("http://{addr}"),
                keyfile::read_key(&dir.admin_key())?,
            )
            .await
            .map_err(anyhow::Error::msg)?;
            let (stop, done, tag) = (stop.clone(), done.clone(), tag.to_owned());
            // One prompt per client, then versions on it: the state keeps its number of
            // objects, so every phase writes against a state of the same shape.
            let prompt = format!("bench/{tag}/{s}");
            c.submit(Action::CreatePrompt {
                prompt: prompt.clone(),
                description: String::new(),
            })
            .await
            .map_err(anyhow::Error::msg)?;
            tasks.push(tokio::spawn(async move {
                let mut parent = None;
                while !stop.load(Ordering::Relaxed) {
                    let version = parent.map_or(1, |p| p + 1);
                    let action = super::bench_grpc::commit(
                        &prompt,
                        parent,
                        format!("v{version} of {prompt} {{{{customer}}}}"),
                    );
                    if c.submit(action).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                        parent = Some(version);
                    }
                }
            }));
        }
        Ok(Load { stop, done, tasks })
    }

    /// Acknowledged writes per second over the next `secs` seconds.
    async fn rate(&self, secs: u64) -> f64 {
        let (start, before) = (Instant::now(), self.done.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_secs(secs)).await;
        (self.done.load(Ordering::Relaxed) - before) as f64 / start.elapsed().as_secs_f64()
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

pub fn run(args: NatsArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))?;
    Ok(ExitCode::SUCCESS)
}

async fn bench(args: NatsArgs) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("promptledger-bench-nats-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = phases(&args, &tmp).await;
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

async fn fresh_ledger(root: PathBuf) -> Result<DataDir> {
    let dir = DataDir::new(root);
    let init_dir = dir.clone();
    // `init` runs its own writer and blocks on it: keep it off the runtime.
    tokio::task::spawn_blocking(move || node::init(&init_dir, system_clock_ms())).await??;
    Ok(dir)
}

async fn phases(args: &NatsArgs, tmp: &Path) -> Result<()> {
    let secs = args.seconds;
    println!(
        "{} writing clients, {secs} s per phase, loopback, one process + nats-server",
        args.streams
    );

    // 1. Baseline: publishing off.
    let base_dir = fresh_ledger(tmp.join("baseline")).await?;
    let server = start_server(&base_dir, None).await?;
    let load = Load::start(&base_dir, server.addr, args.streams, "base").await?;
    let baseline = load.rate(secs).await;
    load.stop().await;
    server.stop().await?;
    println!("1. writes, publishing off:             {baseline:>9.0} writes/s (baseline)");

    // 2. Publishing on, NATS absent.
    let dir = fresh_ledger(tmp.join("ledger")).await?;
    let port = free_port()?;
    let url = format!("nats://127.0.0.1:{port}");
    let server = start_server(&dir, Some(url)).await?;
    let load = Load::start(&dir, server.addr, args.streams, "absent").await?;
    let absent = load.rate(secs).await;
    load.stop().await;
    let backlog = server
        .status()
        .await?
        .nats
        .context("publishing")?
        .lag_entries;
    println!(
        "2. writes, NATS absent:                {absent:>9.0} writes/s ({:.0}% of baseline; backlog {backlog})",
        100.0 * absent / baseline
    );

    // 3. NATS appears: publish the backlog, no writes.
    let store = tmp.join("nats");
    let mut nats = Some(NatsServer::start(port, &store)?);
    let took = server.until_caught_up(Duration::from_secs(600)).await?;
    println!(
        "3. backlog published:                  {:>9.0} events/s ({backlog} events in {:.2} s from connect)",
        backlog as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );

    // 4. Writes with NATS up; an outage under load; catch-up.
    let load = Load::start(&dir, server.addr, args.streams, "outage").await?;
    let up = load.rate(secs).await;
    println!(
        "4. writes, NATS up and publishing:     {up:>9.0} writes/s ({:.0}% of baseline)",
        100.0 * up / baseline
    );
    drop(nats.take()); // kill it
    let during = load.rate(args.outage_secs).await;
    let lag = server.status().await?.nats.context("publishing")?;
    println!(
        "   writes during a {} s NATS outage:   {during:>9.0} writes/s ({:.0}% of baseline; lag {} entries, {:.1} s)",
        args.outage_secs,
        100.0 * during / baseline,
        lag.lag_entries,
        lag.lag_seconds
    );
    let _nats = NatsServer::start(port, &store)?;
    let catch_up = server.until_caught_up(Duration::from_secs(600)).await?;
    println!(
        "   after NATS restarts, under load:    caught up {:.2} s after reconnecting",
        catch_up.as_secs_f64()
    );
    load.stop().await;
    let s = server.status().await?;
    server.stop().await?;
    println!("ledger size at the end: {} entries, all published", s.size);
    Ok(())
}
