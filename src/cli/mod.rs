//! Command implementations. Exit codes: 0 success, 1 a verification found a problem, 2 a usage,
//! I/O or storage error.

pub mod audit;
pub mod bench;
mod bench_audit;
mod bench_governance;
mod bench_grpc;
mod bench_nats;
mod bench_state;
pub mod govern;
pub mod tail;

use anyhow::{Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use promptledger::keyfile;
use promptledger::ledger::dsse::Envelope;
use promptledger::node::{self, DataDir};
use promptledger::storage::writer::{system_clock_ms, RawLog, WriterConfig};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn init(data_dir: &Path, policy_dir: Option<&Path>) -> Result<ExitCode> {
    let dir = DataDir::new(data_dir);
    let policy = match policy_dir {
        Some(p) => promptledger::policy::PolicyFiles::read_dir(p)?,
        None => promptledger::policy::PolicyFiles::builtin(),
    };
    let version = policy.version();
    let report = node::init_with_policy(&dir, system_clock_ms(), policy)
        .with_context(|| format!("initializing {}", data_dir.display()))?;
    println!("ledger id:   {}", report.ledger_id);
    println!("origin:      {}", report.origin);
    println!(
        "ledger key:  {} (public; give it to auditors)",
        report.ledger_vkey
    );
    println!(
        "admin key:   {} (secret; move it somewhere safe)",
        report.admin_key_path.display()
    );
    println!("policy:      {version} (recorded at sequence 1)");
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(total: u64) -> ProgressBar {
    // Hidden automatically when stderr is not a terminal.
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} entries ({per_sec}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message("verifying");
    bar
}

pub fn verify(data_dir: &Path, ledger_key: Option<&str>) -> Result<ExitCode> {
    let dir = DataDir::new(data_dir);
    let mut bar: Option<ProgressBar> = None;
    let mut progress = |done: u64, total: u64| {
        bar.get_or_insert_with(|| progress_bar(total))
            .set_position(done);
    };
    let result = node::verify_dir(&dir, ledger_key, Some(&mut progress));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match result {
        Ok(v) => {
            println!(
                "verified: {} entries, root {}, checkpoint signed by {}",
                v.checkpoint.size,
                hex::encode(v.checkpoint.root),
                v.checkpoint.origin
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (node::NodeError::Verify(_) | node::NodeError::Checkpoint { .. })) => {
            match e.seq() {
                Some(seq) => println!("FAILED at sequence number {seq}: {e}"),
                None => println!("FAILED: {e}"),
            }
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

/// Appends admin-signed entries from `writers` concurrent tasks and prints `acked <seq>` for
/// each, after it is durable. Signatures are verified before submission, as the server does.
pub fn load(
    data_dir: &Path,
    writers: usize,
    count: Option<u64>,
    payload: usize,
) -> Result<ExitCode> {
    let dir = DataDir::new(data_dir);
    if !dir.is_initialized() {
        node::init(&dir, system_clock_ms())?;
    }
    let admin = keyfile::read_key(&dir.admin_key())?;
    let ledger = node::open(&dir, RawLog, WriterConfig::default())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let remaining = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(
        count.map_or(i64::MAX, |c| c as i64),
    ));
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for w in 0..writers {
            let appender = ledger.appender();
            let admin = admin.clone();
            let remaining = remaining.clone();
            tasks.push(tokio::spawn(async move {
                let keyid = admin.key_id().to_string();
                let public = *admin.public().verifying_key();
                let mut i = 0u64;
                while remaining.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) > 0 {
                    let mut body = format!("load writer {w} entry {i} ").into_bytes();
                    body.resize(payload.max(body.len()), b'x');
                    let env = Envelope::sign(
                        "application/octet-stream",
                        body,
                        &keyid,
                        admin.signing_key(),
                    );
                    env.verify_all(|k| (k == keyid).then_some(public))?;
                    let receipt = appender.submit(env).await?;
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "acked {}", receipt.seq)?;
                    out.flush()?;
                    i += 1;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    })?;
    ledger.close();
    Ok(ExitCode::SUCCESS)
}

/// `serve` flags; each also reads a `PROMPTLEDGER_*` environment variable.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "PROMPTLEDGER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:50051].
    #[arg(long, env = "PROMPTLEDGER_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Ledger data directory [default: promptledger-data].
    #[arg(long, env = "PROMPTLEDGER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Largest statement payload in bytes [default: 1048576].
    #[arg(long, env = "PROMPTLEDGER_MAX_PAYLOAD_BYTES")]
    max_payload_bytes: Option<usize>,
    /// Allowed clock skew of statements, seconds [default: 300].
    #[arg(long, env = "PROMPTLEDGER_CLOCK_SKEW_SECS")]
    clock_skew_secs: Option<u64>,
    /// Read session lifetime, seconds [default: 900].
    #[arg(long, env = "PROMPTLEDGER_SESSION_TTL_SECS")]
    session_ttl_secs: Option<u64>,
    /// PEM certificate chain for TLS (with --tls-key).
    #[arg(long, env = "PROMPTLEDGER_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, env = "PROMPTLEDGER_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Publish every committed entry and checkpoint to this NATS server's JetStream
    /// (e.g. nats://127.0.0.1:4222). Without it nothing is published.
    #[arg(long, env = "PROMPTLEDGER_NATS_URL")]
    nats_url: Option<String>,
    /// Policy files (model.conf, policy.csv, gates.toml) for the ledger the first start creates
    /// [default: the shipped policies/].
    #[arg(long, env = "PROMPTLEDGER_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// JetStream stream to publish to, created if missing [default: PROMPTLEDGER].
    #[arg(long, env = "PROMPTLEDGER_NATS_STREAM")]
    nats_stream: Option<String>,
}

impl ServeArgs {
    /// Defaults, overridden by the file, overridden by environment and flags.
    fn config(self) -> Result<promptledger::server::Config> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => promptledger::server::Config::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.max_payload_bytes {
            c.max_payload_bytes = v;
        }
        if let Some(v) = self.clock_skew_secs {
            c.clock_skew_secs = v;
        }
        if let Some(v) = self.session_ttl_secs {
            c.session_ttl_secs = v;
        }
        if self.tls_cert.is_some() {
            c.tls_cert = self.tls_cert;
        }
        if self.tls_key.is_some() {
            c.tls_key = self.tls_key;
        }
        if self.nats_url.is_some() {
            c.nats.url = self.nats_url;
        }
        if let Some(v) = self.nats_stream {
            c.nats.stream = v;
        }
        if self.policy_dir.is_some() {
            c.policy_dir = self.policy_dir;
        }
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        eprintln!(
            "promptledger listening on {} (data in {})",
            listener.local_addr()?,
            config.data_dir.display()
        );
        promptledger::server::serve(config, listener, shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested: finishing in-flight requests and commits");
}

pub fn rebuild(data_dir: &Path) -> Result<ExitCode> {
    let report = node::rebuild(&DataDir::new(data_dir))?;
    println!("replayed {} entries", report.entries);
    println!(
        "state root (replayed from the log): {}",
        hex::encode(report.replayed)
    );
    println!(
        "state root (stored projection):     {}",
        hex::encode(report.stored)
    );
    match report.signed {
        Some(s) => println!("state root (latest checkpoint):     {}", hex::encode(s)),
        None => println!("state root (latest checkpoint):     none (last commit carried none)"),
    }
    if report.consistent() {
        println!("consistent");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("MISMATCH: the projection is not what the log implies");
        Ok(ExitCode::from(1))
    }
}
