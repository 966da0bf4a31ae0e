//! Auditor commands: `export` (a bundle from a data directory), `verify-bundle` (offline, trusting
//! only the ledger key given), `audit verify` (online: the server's new checkpoint must extend
//! the one trusted last time).

use super::progress_bar;
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use promptledger::bundle::{self, BundleError};
use promptledger::ledger::checkpoint::Checkpoint;
use promptledger::ledger::keys::PublicKey;
use promptledger::ledger::merkle;
use promptledger::node::{self, DataDir};
use promptledger::proto::ledger::v1 as lpb;
use promptledger::storage::Store;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct ExportArgs {
    #[arg(
        long,
        env = "PROMPTLEDGER_DATA_DIR",
        default_value = "promptledger-data"
    )]
    data_dir: PathBuf,
    /// The bundle to write (refused if it exists).
    #[arg(long)]
    out: PathBuf,
}

/// Writes a bundle of the latest checkpoint and every entry it covers, read-only (it can run
/// beside a live server). Written to a temporary file and renamed: never a partial bundle.
pub fn export(args: ExportArgs) -> Result<ExitCode> {
    if args.out.exists() {
        anyhow::bail!("{} exists; not overwriting", args.out.display());
    }
    let dir = DataDir::new(&args.data_dir);
    let key = node::ledger_public_key(&dir, None)?;
    let store = Store::open_read_only(&dir.db())?;
    let note = store
        .checkpoint()?
        .context("the ledger has no checkpoint yet")?;
    let size = Checkpoint::open(&note, &key)
        .context("the stored checkpoint does not open with the ledger key")?
        .size;
    let tmp = args.out.with_extension("partial");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let bar = progress_bar(size);
    bar.set_message("exporting");
    let entries = store
        .scan_entries_from(0)
        .map(|r| r.map(|(_, bytes)| bytes));
    let written = bundle::write(&mut out, &note, &key.to_vkey(), size, entries, |n| {
        bar.set_position(n)
    })?;
    out.flush()?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &args.out)?;
    bar.finish_and_clear();
    println!(
        "exported {written} entries and the checkpoint of size {size} to {}",
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct VerifyBundleArgs {
    /// The bundle.
    file: PathBuf,
    /// The ledger's verifier key, obtained out of band (e.g. its ledger.pub). The only thing
    /// trusted.
    #[arg(long)]
    ledger_key: String,
    /// An earlier bundle of the same ledger that this one must extend.
    #[arg(long)]
    extends: Option<PathBuf>,
}

fn verify_one(file: &Path, key: &PublicKey) -> Result<bundle::Report, BundleError> {
    let bar = progress_bar(0);
    bar.set_message(format!("verifying {}", file.display()));
    let mut tick = |n: u64| bar.set_position(n);
    let report = bundle::verify(file, key, Some(&mut tick));
    bar.finish_and_clear();
    report
}

/// Exit 0: the bundle (and the extension) verifies; 1: it does not, and why; 2: usage or I/O.
pub fn verify_bundle(args: VerifyBundleArgs) -> Result<ExitCode> {
    let key = PublicKey::from_vkey(args.ledger_key.trim())
        .map_err(|e| anyhow::anyhow!("--ledger-key: {e}"))?;
    let fail = |file: &Path, e: BundleError| {
        match e.seq() {
            Some(seq) => println!("FAILED {}: at sequence number {seq}: {e}", file.display()),
            None => println!("FAILED {}: {e}", file.display()),
        }
        Ok(ExitCode::from(1))
    };
    let report = match verify_one(&args.file, &key) {
        Ok(r) => r,
        Err(BundleError::Io(e)) => return Err(e).context(args.file.display().to_string()),
        Err(e) => return fail(&args.file, e),
    };
    println!(
        "verified {}: {} entries, root {}, checkpoint signed by {}",
        args.file.display(),
        report.entries,
        hex::encode(report.verified.checkpoint.root),
        key.name()
    );
    if let Some(old) = &args.extends {
        let earlier = match verify_one(old, &key) {
            Ok(r) => r,
            Err(BundleError::Io(e)) => return Err(e).context(old.display().to_string()),
            Err(e) => return fail(old, e),
        };
        if let Err(e) = bundle::check_extends(&args.file, &earlier.verified.checkpoint) {
            return fail(&args.file, e);
        }
        println!(
            "extends {} (size {} is a prefix of size {})",
            old.display(),
            earlier.entries,
            report.entries
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// The log's events with filters, oldest first (or newest), as a table or JSON lines.
    Log(AuditLogArgs),
    /// Check that the server's latest checkpoint extends the one trusted last time (kept in
    /// --state), then trust the new one. Refuses a log that was rolled back, rewritten or forked.
    Verify(AuditVerifyArgs),
}

#[derive(Args)]
pub struct AuditLogArgs {
    #[arg(long)]
    actor: Option<String>,
    #[arg(long)]
    prompt: Option<String>,
    /// Event kind (commit_version, promote_version, approve_version, ...).
    #[arg(long)]
    kind: Option<String>,
    #[arg(long = "env")]
    environment: Option<String>,
    /// Sequence range [from, to).
    #[arg(long)]
    from_seq: Option<u64>,
    #[arg(long)]
    to_seq: Option<u64>,
    /// Server time range [since, until), milliseconds since the Unix epoch.
    #[arg(long)]
    since_ms: Option<u64>,
    #[arg(long)]
    until_ms: Option<u64>,
    #[arg(long)]
    newest_first: bool,
    /// Stop after this many events.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Args)]
pub struct AuditVerifyArgs {
    /// The ledger's verifier key, obtained out of band.
    #[arg(long)]
    ledger_key: String,
    /// Where the last trusted checkpoint is kept (created on the first run).
    #[arg(long, default_value = "promptledger-audit.checkpoint")]
    state: PathBuf,
}

pub fn audit(client: &super::govern::ClientArgs, command: AuditCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command {
        AuditCommand::Verify(args) => runtime.block_on(audit_verify(&client.server()?, args)),
        AuditCommand::Log(args) => runtime.block_on(audit_log(client, args)),
    }
}

async fn audit_log(client: &super::govern::ClientArgs, args: AuditLogArgs) -> Result<ExitCode> {
    use promptledger::proto::registry::v1 as pb;
    let json = client.output() == super::govern::Output::Json;
    let mut table = match client.output() {
        super::govern::Output::Csv => Some(super::govern::Csv::new(&[
            "sequence",
            "timestamp_ms",
            "kind",
            "actor",
            "prompt",
            "version",
            "environment",
            "break_glass",
            "leaf_hash",
        ])?),
        _ => None,
    };
    let mut c = client.connect().await?;
    let mut q = pb::ListEventsRequest {
        actor: args.actor.unwrap_or_default(),
        prompt: args.prompt.unwrap_or_default(),
        kind: args.kind.unwrap_or_default(),
        environment: args.environment.unwrap_or_default(),
        from_sequence: args.from_seq.unwrap_or(0),
        to_sequence: args.to_seq.unwrap_or(0),
        from_time_ms: args.since_ms.unwrap_or(0),
        to_time_ms: args.until_ms.unwrap_or(0),
        newest_first: args.newest_first,
        page_size: 1000,
        page_token: String::new(),
    };
    let limit = args.limit.unwrap_or(usize::MAX);
    let mut shown = 0;
    'pages: loop {
        let request = c
            .authorized(q.clone())
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        let page = match c.registry().list_events(request).await {
            Ok(p) => p.into_inner(),
            Err(s) => {
                eprintln!("refused ({:?}): {}", s.code(), s.message());
                return Ok(ExitCode::from(1));
            }
        };
        for e in &page.events {
            if shown == limit {
                break 'pages;
            }
            shown += 1;
            if let Some(w) = table.as_mut() {
                w.row([
                    e.sequence.to_string(),
                    e.timestamp_ms.to_string(),
                    e.kind.clone(),
                    e.actor.clone(),
                    e.prompt.clone(),
                    e.version.to_string(),
                    e.environment.clone(),
                    e.break_glass.to_string(),
                    hex::encode(&e.leaf_hash),
                ])?;
            } else if json {
                let statement: serde_json::Value =
                    serde_json::from_str(&e.statement_json).unwrap_or(serde_json::Value::Null);
                println!(
                    "{}",
                    serde_json::json!({
                        "seq": e.sequence, "kind": e.kind, "actor": e.actor,
                        "timestamp_ms": e.timestamp_ms, "prompt": e.prompt,
                        "version": e.version, "environment": e.environment,
                        "break_glass": e.break_glass, "leaf_hash": hex::encode(&e.leaf_hash),
                        "statement": statement,
                    })
                );
            } else {
                println!(
                    "{:>8} {:>15} {:<20} {:<16} {:<28} {:>4} {}{}",
                    e.sequence,
                    e.timestamp_ms,
                    e.kind,
                    e.actor,
                    e.prompt,
                    if e.version > 0 {
                        format!("v{}", e.version)
                    } else {
                        String::new()
                    },
                    e.environment,
                    if e.break_glass { " BREAK-GLASS" } else { "" }
                );
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        q.page_token = page.next_page_token;
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit 0: the new checkpoint extends the trusted one (now trusted); 1: it does not.
async fn audit_verify(server: &str, args: AuditVerifyArgs) -> Result<ExitCode> {
    let key = PublicKey::from_vkey(args.ledger_key.trim())
        .map_err(|e| anyhow::anyhow!("--ledger-key: {e}"))?;
    let mut ledger = lpb::ledger_service_client::LedgerServiceClient::connect(server.to_owned())
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let note = ledger
        .get_checkpoint(lpb::GetCheckpointRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("GetCheckpoint: {}", s.message()))?
        .into_inner()
        .checkpoint;
    let new = match Checkpoint::open(&note, &key) {
        Ok(c) => c,
        Err(e) => {
            println!("FAILED: the server's checkpoint is not signed by the trusted key: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let trusted = match std::fs::read(&args.state) {
        Ok(bytes) => Some(Checkpoint::open(&bytes, &key).with_context(|| {
            format!(
                "{} is not a checkpoint of this ledger",
                args.state.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context(args.state.display().to_string()),
    };
    if let Some(old) = &trusted {
        let refuse = |why: String| {
            println!("FAILED: {why}");
            Ok(ExitCode::from(1))
        };
        if new.origin != old.origin {
            return refuse(format!(
                "the server is ledger {}, not {}",
                new.origin, old.origin
            ));
        }
        if new.size < old.size {
            return refuse(format!(
                "rolled back: the server's log has {} entries, {} were seen before",
                new.size, old.size
            ));
        }
        if new.size == old.size && new.root != old.root {
            return refuse(format!(
                "forked: at size {} the server signs root {}, {} was seen before",
                new.size,
                hex::encode(new.root),
                hex::encode(old.root)
            ));
        }
        if new.size > old.size {
            let proof = ledger
                .get_consistency_proof(lpb::GetConsistencyProofRequest {
                    old_tree_size: old.size,
                    new_tree_size: new.size,
                })
                .await
                .map_err(|s| anyhow::anyhow!("GetConsistencyProof: {}", s.message()))?
                .into_inner()
                .proof;
            let proof: Vec<merkle::Hash> = match proof
                .iter()
                .map(|h| h.as_slice().try_into())
                .collect::<Result<_, _>>()
            {
                Ok(p) => p,
                Err(_) => return refuse("the consistency proof is malformed".into()),
            };
            if merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &proof).is_err()
            {
                return refuse(format!(
                    "history rewritten: the log of size {} does not extend the log of size {} seen before (no valid consistency proof)",
                    new.size, old.size
                ));
            }
        }
    }
    let tmp = args.state.with_extension("partial");
    std::fs::write(&tmp, &note)?;
    std::fs::rename(&tmp, &args.state)?;
    match trusted {
        Some(old) => println!(
            "consistent: size {} extends size {}; now trusting size {}",
            new.size, old.size, new.size
        ),
        None => println!(
            "first run: trusting size {} (root {})",
            new.size,
            hex::encode(new.root)
        ),
    }
    Ok(ExitCode::SUCCESS)
}
