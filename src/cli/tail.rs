//! `promptledger tail`: read the ledger's JetStream stream from the start, verify the chain and
//! every checkpoint as it goes (see `promptledger::publish::follow`), and print the events from
//! `--from` on. Exit codes: 0 everything read verifies, 1 the stream is not a faithful copy of
//! the log (a gap, a duplicate, a broken link, a bad checkpoint), 2 usage or connection error.

use anyhow::{Context as _, Result};
use async_nats::jetstream;
use clap::Args;
use futures_util::StreamExt;
use promptledger::ledger::keys::PublicKey;
use promptledger::publish::follow::{Followed, Follower};
use promptledger::publish::header;
use promptledger::registry::statement::Statement;
use std::process::ExitCode;
use std::time::Duration;

use super::govern::Output;

#[derive(Args)]
pub struct TailArgs {
    /// NATS server, e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "PROMPTLEDGER_NATS_URL")]
    nats_url: String,
    /// The JetStream stream the server publishes to.
    #[arg(long, env = "PROMPTLEDGER_NATS_STREAM", default_value = "PROMPTLEDGER")]
    stream: String,
    /// The ledger's verifier key (contents of ledger.pub): checkpoints must be signed by it.
    /// Without it, checkpoints are checked against the entries but not for their signature.
    #[arg(long, env = "PROMPTLEDGER_LEDGER_KEY")]
    ledger_key: Option<String>,
    /// Print events from this sequence number on (earlier ones are still verified).
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Keep waiting for new events instead of stopping at the end of the stream.
    #[arg(long)]
    follow: bool,
}

/// Prints text, or JSON lines with the global `--output json`.
pub fn run(args: TailArgs, output: Output) -> Result<ExitCode> {
    if output == Output::Csv {
        anyhow::bail!("tail prints text or json (--output json), not csv");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(tail(args, output))
}

fn print_event(f: &Followed, output: Output) {
    let statement = Statement::from_payload(&f.entry.envelope.payload).ok();
    let kind = statement.as_ref().map_or("raw", |s| s.action.kind());
    let prompt = statement
        .as_ref()
        .and_then(|s| s.action.prompt())
        .unwrap_or("-");
    let actor = statement.as_ref().map_or("-", |s| s.actor.as_str());
    match output {
        Output::Text | Output::Csv => println!(
            "{:>8}  {:<18} {:<32} {:<20} {}",
            f.seq, kind, prompt, actor, f.entry.timestamp_ms
        ),
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "seq": f.seq,
                "kind": kind,
                "prompt": statement.as_ref().and_then(|s| s.action.prompt()),
                "actor": statement.as_ref().map(|s| s.actor.as_str()),
                "timestamp_ms": f.entry.timestamp_ms,
            })
        ),
    }
}

async fn tail(args: TailArgs, output: Output) -> Result<ExitCode> {
    let key = args
        .ledger_key
        .as_deref()
        .map(|k| PublicKey::from_vkey(k.trim()))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--ledger-key: {e}"))?;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to {}", args.nats_url))?;
    let js = jetstream::new(client);
    let mut stream = js
        .get_stream(&args.stream)
        .await
        .with_context(|| format!("stream {}", args.stream))?;
    let end = stream.info().await?.state.last_sequence;
    if end == 0 && !args.follow {
        eprintln!("stream {} is empty", args.stream);
        return Ok(ExitCode::SUCCESS);
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut follower = Follower::new(key);
    let (mut events, mut printed) = (0u64, 0u64);
    while let Some(message) = messages.next().await {
        let message = message?;
        let stream_seq = message.info().map_err(anyhow::Error::msg)?.stream_sequence;
        let headers = message.headers.clone().unwrap_or_default();
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let verdict = if let Some(seq) = get(header::SEQ) {
            let seq: u64 = seq.parse().context("PromptLedger-Seq header")?;
            let leaf = get(header::LEAF_HASH).unwrap_or_default();
            follower.event(seq, &leaf, &message.payload).map(|f| {
                events += 1;
                if f.seq >= args.from {
                    printed += 1;
                    print_event(&f, output);
                }
            })
        } else if get(header::CHECKPOINT_SIZE).is_some() {
            follower.checkpoint(&message.payload).map(|_| ())
        } else {
            Ok(())
        };
        if let Err(e) = verdict {
            println!("FAILED at stream message {stream_seq}: {e}");
            return Ok(ExitCode::from(1));
        }
        if !args.follow && stream_seq >= end {
            break;
        }
    }
    eprintln!(
        "verified {events} events (sequence {}..{}), {} checkpoints; printed {printed}",
        follower.first().unwrap_or(0),
        follower.next(),
        follower.checkpoints_verified()
    );
    Ok(ExitCode::SUCCESS)
}
