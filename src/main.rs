//! The `promptledger` binary: a thin CLI over the library. Only this file and `src/cli/` read
//! flags and environment variables.

mod cli;

/// mimalloc instead of glibc's malloc: the request paths allocate small buffers on one thread
/// and free them on another, where glibc spent ~9 % of a commit's CPU (malloc, free and
/// consolidation in a profile); see docs/PERFORMANCE.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "promptledger",
    version,
    about = "The operational record for LLM prompts: a signed, hash-chained, Merkle-proven log.",
    after_help = "Examples:\n  promptledger init --data-dir ./promptledger-data\n  promptledger verify --data-dir ./promptledger-data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Where the server is and whose key signs (client commands only).
    #[command(flatten)]
    client: cli::govern::ClientArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new ledger: ledger id, ledger key, first admin key, the genesis entry and the
    /// initial policy (entry 1).
    #[command(after_help = "Example:\n  promptledger init --data-dir ./promptledger-data")]
    Init {
        /// Where the ledger lives.
        #[arg(
            long,
            env = "PROMPTLEDGER_DATA_DIR",
            default_value = "promptledger-data"
        )]
        data_dir: PathBuf,
        /// Directory with model.conf, policy.csv and gates.toml [default: the shipped policies/].
        #[arg(long, env = "PROMPTLEDGER_POLICY_DIR")]
        policy_dir: Option<PathBuf>,
    },
    /// Verify a ledger offline and read-only: every entry, chain link, actor signature, Merkle
    /// node and the signed checkpoint. Exit code 0 only if everything verifies.
    #[command(
        after_help = "Exit codes: 0 verified, 1 verification failed, 2 usage or I/O error.\n\nExample:\n  promptledger verify --data-dir ./promptledger-data --ledger-key \"$(cat ledger.pub)\""
    )]
    Verify {
        #[arg(
            long,
            env = "PROMPTLEDGER_DATA_DIR",
            default_value = "promptledger-data"
        )]
        data_dir: PathBuf,
        /// The ledger's verifier key to trust (default: DATA_DIR/ledger.pub).
        #[arg(long)]
        ledger_key: Option<String>,
    },
    /// Run the gRPC server (registry, ledger, health, reflection). Creates the ledger on first
    /// start. Settings: flags, then PROMPTLEDGER_* environment, then --config FILE (TOML).
    #[command(
        after_help = "Examples:\n  promptledger serve\n  promptledger serve --listen 0.0.0.0:50051 --data-dir /var/lib/promptledger\n  promptledger serve --config promptledger.toml"
    )]
    Serve(cli::ServeArgs),
    /// Replay the whole log into a fresh projection and check that its state root equals the
    /// stored projection's and the signed checkpoint's. Exit 0 only if all agree.
    Rebuild {
        #[arg(
            long,
            env = "PROMPTLEDGER_DATA_DIR",
            default_value = "promptledger-data"
        )]
        data_dir: PathBuf,
    },
    /// Read the ledger's NATS JetStream stream, verify the chain and checkpoints as it goes,
    /// and print the events. Exit 0 verified, 1 a gap, duplicate or bad entry, 2 other errors.
    #[command(
        after_help = "Examples:\n  promptledger tail --nats-url nats://127.0.0.1:4222 --ledger-key \"$(cat promptledger-data/ledger.pub)\"\n  promptledger tail --nats-url nats://127.0.0.1:4222 --from 1200 --follow --output json"
    )]
    Tail(cli::tail::TailArgs),
    /// Append signed test entries under load, printing each acknowledged sequence number
    /// (crash tests and demos).
    #[command(hide = true)]
    Load {
        #[arg(long)]
        data_dir: PathBuf,
        /// Concurrent submitters.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Stop after this many entries (default: never).
        #[arg(long)]
        count: Option<u64>,
        /// Payload bytes per entry.
        #[arg(long, default_value_t = 256)]
        payload: usize,
    },
    /// Benchmarks of the ledger core (see tools/bench-ledger.sh).
    #[command(hide = true)]
    Bench(cli::bench::BenchArgs),
    /// Write a new Ed25519 key for an actor and print its verifier key (for `actor register`).
    #[command(after_help = "Example:\n  promptledger keygen --name alice --out alice.key")]
    Keygen(cli::govern::KeygenArgs),
    #[command(flatten)]
    Govern(cli::govern::GovernCommand),
    /// Write an export bundle: the latest signed checkpoint and every entry it covers, from a
    /// data directory (read-only; it can run beside a live server).
    #[command(
        after_help = "Example:\n  promptledger export --data-dir ./promptledger-data --out ledger-2026-11.plb"
    )]
    Export(cli::audit::ExportArgs),
    /// Verify an export bundle offline, trusting only the ledger key given, and optionally that
    /// it extends an earlier bundle. Exit 0 verified, 1 refused (the reason and sequence number
    /// are printed), 2 usage or I/O error.
    #[command(
        after_help = "Example:\n  promptledger verify-bundle ledger-2026-12.plb --ledger-key \"$(cat ledger.pub)\" --extends ledger-2026-11.plb"
    )]
    VerifyBundle(cli::audit::VerifyBundleArgs),
    /// Online audit against a running server.
    #[command(
        subcommand,
        after_help = "Example:\n  promptledger --server http://ledger:50051 audit verify --ledger-key \"$(cat ledger.pub)\" --state audit.checkpoint"
    )]
    Audit(cli::audit::AuditCommand),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init {
            data_dir,
            policy_dir,
        } => cli::init(&data_dir, policy_dir.as_deref()),
        Command::Verify {
            data_dir,
            ledger_key,
        } => cli::verify(&data_dir, ledger_key.as_deref()),
        Command::Load {
            data_dir,
            writers,
            count,
            payload,
        } => cli::load(&data_dir, writers, count, payload),
        Command::Bench(args) => cli::bench::run(args),
        Command::Serve(args) => cli::serve(args),
        Command::Rebuild { data_dir } => cli::rebuild(&data_dir),
        Command::Tail(args) => cli::tail::run(args, cli.client.output()),
        Command::Keygen(args) => cli::govern::keygen(args),
        Command::Govern(command) => cli::govern::run(cli.client, command),
        Command::Export(args) => cli::audit::export(args),
        Command::VerifyBundle(args) => cli::audit::verify_bundle(args),
        Command::Audit(command) => cli::audit::audit(&cli.client, command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
