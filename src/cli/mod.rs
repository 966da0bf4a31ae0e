//! Command implementations. Exit codes: 0 success, 1 a verification found a problem, 2 a usage,
//! I/O or storage error.

pub mod bench;

use anyhow::{Context as _, Result};
use indicatif::{ProgressBar, ProgressStyle};
use promptledger::keyfile;
use promptledger::ledger::dsse::Envelope;
use promptledger::node::{self, DataDir};
use promptledger::storage::writer::{system_clock_ms, RawLog, WriterConfig};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub fn init(data_dir: &Path) -> Result<ExitCode> {
    let dir = DataDir::new(data_dir);
    let report = node::init(&dir, system_clock_ms())
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
