//! `promptledger bench ledger|grpc`: the benchmarks of docs/PERFORMANCE.md, run by
//! `tools/bench-ledger.sh` and `tools/bench-grpc.sh`. Not timed tests: numbers to read, from a
//! release build.

use anyhow::Result;
use clap::Args;
use promptledger::keyfile;
use promptledger::ledger::dsse::Envelope;
use promptledger::ledger::merkle;
use promptledger::node::{self, DataDir};
use promptledger::sigbatch::{SigItem, SignatureBatcher};
use promptledger::storage::writer::{RawLog, WriterConfig};
use promptledger::storage::Store;
use rayon::prelude::*;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    which: Which,
}

#[derive(clap::Subcommand)]
enum Which {
    /// Appends, verification, proofs, reopen, disk use of the ledger core.
    Ledger(LedgerArgs),
    /// Requests/s and latency of echo (baseline), GetPrompt and CommitVersion over loopback.
    Grpc(super::bench_grpc::GrpcArgs),
    /// Publishing to NATS JetStream: write cost, publish rate, catch-up after an outage.
    Nats(super::bench_nats::NatsArgs),
    /// Policy evaluation: Casbin enforce latency, gate-checked promotions/s vs plain writes.
    Governance(super::bench_governance::GovernanceArgs),
    /// The state root's cost per commit group as the registry grows.
    State(super::bench_state::StateArgs),
    /// ListEvents latency with filters on a large registry ledger.
    Audit(super::bench_audit::AuditArgs),
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    match args.which {
        Which::Ledger(a) => ledger(a),
        Which::Grpc(a) => super::bench_grpc::run(a),
        Which::Nats(a) => super::bench_nats::run(a),
        Which::Governance(a) => super::bench_governance::run(a),
        Which::State(a) => super::bench_state::run(a),
        Which::Audit(a) => super::bench_audit::run(a),
    }
}

#[derive(Args)]
pub struct LedgerArgs {
    /// An empty or missing directory for the benchmark ledger.
    #[arg(long)]
    data_dir: PathBuf,
    /// Entries to append.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Payload bytes per entry.
    #[arg(long, default_value_t = 1024)]
    payload: usize,
    /// Concurrent submitters.
    #[arg(long, default_value_t = 512)]
    submitters: usize,
    /// Proofs to generate for the proof benchmark.
    #[arg(long, default_value_t = 20_000)]
    proofs: u64,
}

const ROUND: u64 = 100_000;

fn ledger(args: LedgerArgs) -> Result<ExitCode> {
    let dir = DataDir::new(&args.data_dir);
    node::init(&dir, promptledger::storage::writer::system_clock_ms())?;
    let admin = keyfile::read_key(&dir.admin_key())?;
    let keyid = admin.key_id().to_string();
    let public = *admin.public().verifying_key();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    // 1. Durable appends through the group-commit writer, signatures pre-made, verified on
    //    append (batched, strict semantics, off the writer thread, as the server does).
    let ledger = node::open(&dir, RawLog, WriterConfig::default())?;
    let batcher = SignatureBatcher::start();
    let mut append_time = Duration::ZERO;
    let mut done = 0u64;
    while done < args.entries {
        let n = ROUND.min(args.entries - done);
        let envelopes: Vec<Envelope> = (done..done + n)
            .into_par_iter()
            .map(|i| {
                // Pseudo-random base64 text: about as compressible as real prompt JSON.
                let mut body = format!("{{\"bench\":{i},\"pad\":\"").into_bytes();
                let mut x = i.wrapping_mul(0x9E3779B97F4A7C15) | 1;
                const B64: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
                while body.len() < args.payload - 2 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    body.push(B64[(x % 64) as usize]);
                }
                body.extend_from_slice(b"\"}");
                Envelope::sign("application/json", body, &keyid, admin.signing_key())
            })
            .collect();
        let per_task = envelopes.len().div_ceil(args.submitters);
        let chunks: Vec<Vec<Envelope>> = envelopes
            .chunks(per_task)
            .map(<[Envelope]>::to_vec)
            .collect();
        let start = Instant::now();
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for chunk in chunks {
                let appender = ledger.appender();
                let keyid = keyid.clone();
                let batcher = batcher.clone();
                tasks.push(tokio::spawn(async move {
                    for env in chunk {
                        let items = env
                            .signatures
                            .iter()
                            .map(|s| {
                                anyhow::ensure!(s.keyid == keyid, "unknown key {}", s.keyid);
                                Ok(SigItem {
                                    message: env.pae(),
                                    signature: ed25519_dalek::Signature::from_slice(&s.sig)?,
                                    key: public,
                                })
                            })
                            .collect::<Result<Vec<_>>>()?;
                        anyhow::ensure!(batcher.verify(items).await, "signature does not verify");
                        appender.submit(env).await?;
                    }
                    anyhow::Ok(())
                }));
            }
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        })?;
        append_time += start.elapsed();
        done += n;
        eprintln!("appended {done}/{}", args.entries);
    }
    let appends_per_s = args.entries as f64 / append_time.as_secs_f64();
    println!(
        "append: {} entries of {} B payload in {:.2} s = {:.0} durable appends/s",
        args.entries,
        args.payload,
        append_time.as_secs_f64(),
        appends_per_s
    );
    let store = ledger.store().clone();
    ledger.close();

    // 5. Bytes on disk per entry (after flushing memtables and compacting).
    store.flush()?;
    let size = store.head()?.size;
    drop(store);
    let disk = Store::open(&dir.db())?.disk_usage();
    println!(
        "disk: {} bytes for {} entries = {:.0} B/entry (payload {} B, stored entry ~{} B)",
        disk,
        size,
        disk as f64 / size as f64,
        args.payload,
        args.payload + 71 + 16 + 1 + 1 + 8 + 2 + 64
    );

    // 4. Reopen time: open RocksDB, read head and frontier, check the checkpoint.
    let start = Instant::now();
    let ledger = node::open(&dir, RawLog, WriterConfig::default())?;
    let reopen = start.elapsed();
    println!(
        "reopen: {:.1} ms at {} entries",
        reopen.as_secs_f64() * 1e3,
        size
    );

    // 3. Proof generation at this size.
    let store = ledger.store().clone();
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let start = Instant::now();
    for _ in 0..args.proofs {
        let index = next() % size;
        merkle::inclusion_proof(store.as_ref(), index, size).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let inclusion = start.elapsed() / args.proofs as u32;
    let start = Instant::now();
    for _ in 0..args.proofs {
        let old = 1 + next() % size;
        merkle::consistency_proof(store.as_ref(), old, size).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let consistency = start.elapsed() / args.proofs as u32;
    println!(
        "proofs at {size} entries: inclusion {:.1} us, consistency {:.1} us (mean of {})",
        inclusion.as_secs_f64() * 1e6,
        consistency.as_secs_f64() * 1e6,
        args.proofs
    );
    drop(store);
    ledger.close();

    // 2. Full verification, as `promptledger verify` runs it.
    let start = Instant::now();
    let verified = node::verify_dir(&dir, None, None)?;
    let t = start.elapsed();
    println!(
        "verify: {} entries in {:.2} s = {:.0} entries/s ({:.1} MB/s)",
        verified.checkpoint.size,
        t.as_secs_f64(),
        verified.checkpoint.size as f64 / t.as_secs_f64(),
        (verified.checkpoint.size as f64 * (args.payload + 180) as f64) / t.as_secs_f64() / 1e6
    );
    Ok(ExitCode::SUCCESS)
}
