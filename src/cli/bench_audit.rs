//! `promptledger bench audit`: `ListEvents` latency with filters on a large registry ledger.
//! Builds the ledger in-process through the real writer (signed statements, decided and
//! applied like any other), then serves it and times queries over loopback.

use super::bench_grpc::tempfile_dir;
use anyhow::Result;
use clap::Args;
use promptledger::client::{sign_statement, Client};
use promptledger::keyfile;
use promptledger::ledger::keys::KeyPair;
use promptledger::node::{self, DataDir};
use promptledger::proto::registry::v1 as pb;
use promptledger::registry::personality::{Registry, Submission};
use promptledger::registry::statement::{Action, Statement};
use promptledger::storage::writer::{system_clock_ms, WriterConfig};
use promptledger::storage::Store;
use sha2::{Digest, Sha256};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct AuditArgs {
    /// Entries to write.
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    /// Prompts the commits spread over.
    #[arg(long, default_value_t = 1000)]
    prompts: u64,
    /// Calls per query.
    #[arg(long, default_value_t = 50)]
    calls: usize,
    /// Keep the ledger in this directory; if it already holds one written by this benchmark,
    /// reuse it instead of writing again (to time the queries and the server's start alone).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

pub fn run(args: AuditArgs) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(bench(args))?;
    Ok(ExitCode::SUCCESS)
}

fn submission(key: &KeyPair, ledger_id: &str, nonce: u64, action: Action) -> Submission {
    let statement = Statement {
        ledger_id: ledger_id.to_owned(),
        actor: key.name().to_owned(),
        issued_at_ms: system_clock_ms(),
        nonce: format!("b{nonce}"),
        action,
    };
    let signed = sign_statement(&statement, key);
    let envelope = promptledger::ledger::dsse::Envelope {
        payload_type: signed.payload_type,
        payload: signed.payload.clone(),
        signatures: signed
            .signatures
            .into_iter()
            .map(|s| promptledger::ledger::dsse::Signature {
                keyid: s.keyid,
                sig: s.sig,
            })
            .collect(),
    };
    Submission {
        envelope,
        statement,
        signer: key.key_id().to_string(),
        payload_hash: Sha256::digest(&signed.payload).into(),
    }
}

async fn bench(args: AuditArgs) -> Result<()> {
    let tmp = tempfile_dir()?;
    let dir = DataDir::new(args.data_dir.clone().unwrap_or(tmp.join("ledger")));
    let reuse = dir.db().join("CURRENT").exists();
    if !reuse {
        let init_dir = dir.clone();
        tokio::task::spawn_blocking(move || node::init(&init_dir, system_clock_ms())).await??;
    }
    let admin = keyfile::read_key(&dir.admin_key())?;
    let author = KeyPair::from_seed("author", &[7; 32])?;
    let auditor = KeyPair::from_seed("auditor", &[8; 32])?;
    let ledger_id = Store::open_read_only(&dir.db())?.ledger_info()?.ledger_id;

    // Write through the real writer: every statement signed, decided, applied, durable.
    let started = Instant::now();
    if reuse {
        println!("reusing the ledger in {}", dir.root.display());
    } else {
        let store = Arc::new(Store::open(&dir.db())?);
        let registry = Registry::load(&store)?;
        let ledger = promptledger::storage::writer::Ledger::open(
            store,
            node::ledger_signer(&dir)?,
            registry,
            WriterConfig::default(),
        )?;
        let appender = ledger.appender();
        for (i, (k, role)) in [(&author, "author"), (&auditor, "auditor")]
            .into_iter()
            .enumerate()
        {
            let action = Action::RegisterActor {
                name: k.name().into(),
                key: k.public().to_vkey(),
                roles: vec![role.into()],
            };
            appender
                .submit(submission(&admin, &ledger_id, i as u64, action))
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        let mut heads = vec![None; args.prompts as usize];
        let mut n = 0u64;
        let mut pending = tokio::task::JoinSet::new();
        while n < args.entries {
            let p = (n % args.prompts) as usize;
            let prompt = format!("bench{}/p{p}", p % 10);
            let action = if n < args.prompts {
                Action::CreatePrompt {
                    prompt,
                    description: String::new(),
                }
            } else {
                let head: Option<u64> = heads[p];
                heads[p] = Some(head.map_or(1, |h| h + 1));
                super::bench_grpc::commit(&prompt, head, format!("v{n} of {prompt}"))
            };
            // Commits to one prompt chain on their parents: one round of prompts at a time.
            let sub = submission(&author, &ledger_id, n, action);
            let appender = appender.clone();
            pending.spawn(async move { appender.submit(sub).await.is_ok() });
            n += 1;
            if n.is_multiple_of(args.prompts) {
                while let Some(ok) = pending.join_next().await {
                    anyhow::ensure!(ok?, "a benchmark write was refused");
                }
            }
        }
        while let Some(ok) = pending.join_next().await {
            anyhow::ensure!(ok?, "a benchmark write was refused");
        }
        drop(appender);
        tokio::task::spawn_blocking(move || ledger.close()).await?;
        println!(
            "wrote {} signed entries through the writer in {:.1} s",
            args.entries,
            started.elapsed().as_secs_f64()
        );
    }

    let opening = Instant::now();
    let (addr, stop, server) = super::bench_grpc::serve_in_process(&dir).await?;
    let mut c = loop {
        match Client::connect(format!("http://{addr}"), auditor.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    println!(
        "the server opened the ledger (projection loaded from its rows) and answered in {:.1} s",
        opening.elapsed().as_secs_f64()
    );
    // The newest entry's time: the time-range query asks for the last 10 s of writes.
    let newest = {
        let request = c
            .authorized(pb::ListEventsRequest {
                newest_first: true,
                page_size: 1,
                ..Default::default()
            })
            .await?;
        let page = c.registry().list_events(request).await?.into_inner();
        page.events.first().map_or(0, |e| e.timestamp_ms)
    };
    let queries: Vec<(&str, pb::ListEventsRequest)> = vec![
        ("no filter, oldest first", pb::ListEventsRequest::default()),
        (
            "no filter, newest first",
            pb::ListEventsRequest {
                newest_first: true,
                ..Default::default()
            },
        ),
        (
            "actor (every entry matches)",
            pb::ListEventsRequest {
                actor: "author".into(),
                ..Default::default()
            },
        ),
        (
            "one prompt (1 in 1000), newest first",
            pb::ListEventsRequest {
                prompt: "bench7/p777".into(),
                newest_first: true,
                ..Default::default()
            },
        ),
        (
            "kind create_prompt (first 1000 only)",
            pb::ListEventsRequest {
                kind: "create_prompt".into(),
                ..Default::default()
            },
        ),
        (
            "time range: the last 10 s of writes",
            pb::ListEventsRequest {
                from_time_ms: newest.saturating_sub(10_000),
                ..Default::default()
            },
        ),
        (
            "sequence range in the middle",
            pb::ListEventsRequest {
                from_sequence: args.entries / 2,
                to_sequence: args.entries / 2 + 1000,
                ..Default::default()
            },
        ),
    ];
    println!(
        "{:<40} {:>9} {:>9} {:>8}",
        "ListEvents (page 50), one call", "p50 ms", "p99 ms", "events"
    );
    for (name, q) in &queries {
        let mut lat = Vec::new();
        let mut events = 0;
        for _ in 0..args.calls {
            let request = c.authorized(q.clone()).await?;
            let t = Instant::now();
            let page = c.registry().list_events(request).await?.into_inner();
            lat.push(t.elapsed());
            events = page.events.len();
        }
        lat.sort();
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
        println!(
            "{name:<40} {:>9.2} {:>9.2} {events:>8}",
            pct(0.5),
            pct(0.99)
        );
    }
    // A selective filter paged to the end: the whole log is scanned, a bounded slice per call.
    let t = Instant::now();
    let (mut calls, mut found) = (0, 0);
    let mut q = pb::ListEventsRequest {
        prompt: "bench7/p777".into(),
        page_size: 1000,
        ..Default::default()
    };
    loop {
        let request = c.authorized(q.clone()).await?;
        let page = c.registry().list_events(request).await?.into_inner();
        calls += 1;
        found += page.events.len();
        if page.next_page_token.is_empty() {
            break;
        }
        q.page_token = page.next_page_token;
    }
    println!(
        "one prompt's every event, paged to the end: {found} events, {calls} calls, {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let _ = stop.send(());
    server.await??;
    // With --data-dir the ledger is not under `tmp`.
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
