//! Client commands for governance and compliance: keys, actors and their roles, the policy,
//! evaluations, approvals, promotions (with rollout weights), rollback, break-glass, and the
//! questions compliance asks (what was live, why it was allowed, who held which role).
//!
//! Each signs its statement with the caller's key and talks to a running server. Exit codes:
//! 0 done, 1 the server refused (the status and its reason are printed), 2 usage or I/O error.

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use promptledger::client::Client;
use promptledger::keyfile;
use promptledger::ledger::keys::KeyPair;
use promptledger::policy::PolicyFiles;
use promptledger::proto::registry::v1 as pb;
use promptledger::registry::model::{Environment, Split};
use promptledger::registry::statement::Action;
use std::path::PathBuf;
use std::process::ExitCode;
use tonic::{Code, Status};

/// Where the server is and who you are: flags, then environment, then the client config file,
/// then defaults.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// Server address [default: http://127.0.0.1:50051].
    #[arg(long, env = "PROMPTLEDGER_SERVER", global = true)]
    server: Option<String>,
    /// Your secret key file (`promptledger keygen` writes one). PROMPTLEDGER_KEY, holding the
    /// key itself, takes precedence.
    #[arg(long, env = "PROMPTLEDGER_KEY_FILE", global = true)]
    key: Option<PathBuf>,
    /// Client config file (TOML: `server`, `key_file`) [default:
    /// $XDG_CONFIG_HOME/promptledger/client.toml or ~/.config/promptledger/client.toml, if it
    /// exists].
    #[arg(long, env = "PROMPTLEDGER_CLIENT_CONFIG", global = true)]
    client_config: Option<PathBuf>,
    /// Output of client commands: `text` for people, `json` (one object per line) or `csv`
    /// (lists and single records, with a header row) for scripts.
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
    Csv,
}

/// CSV on standard output, header first.
pub struct Csv(csv::Writer<std::io::Stdout>);

impl Csv {
    pub fn new(header: &[&str]) -> Result<Csv> {
        let mut w = csv::Writer::from_writer(std::io::stdout());
        w.write_record(header)?;
        Ok(Csv(w))
    }

    pub fn row<I: IntoIterator<Item = String>>(&mut self, fields: I) -> Result<()> {
        self.0
            .write_record(fields.into_iter().collect::<Vec<_>>())?;
        self.0.flush()?;
        Ok(())
    }
}

fn no_csv(what: &str) -> Refusal {
    Refusal::Other(anyhow::anyhow!(
        "--output csv is for lists and single records; {what} is text or json"
    ))
}

/// The client config file.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    server: Option<String>,
    key_file: Option<PathBuf>,
}

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

impl ClientArgs {
    pub fn output(&self) -> Output {
        self.output
    }

    fn file(&self) -> Result<ClientFile> {
        let path = match &self.client_config {
            Some(p) => p.clone(),
            None => {
                let base = std::env::var_os("XDG_CONFIG_HOME")
                    .map(PathBuf::from)
                    .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
                match base.map(|b| b.join("promptledger/client.toml")) {
                    Some(p) if p.exists() => p,
                    _ => return Ok(ClientFile::default()),
                }
            }
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The server address: flag or environment, else the config file, else the default.
    pub fn server(&self) -> Result<String> {
        Ok(match &self.server {
            Some(s) => s.clone(),
            None => self
                .file()?
                .server
                .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
        })
    }

    pub async fn connect(&self) -> Result<Client> {
        let key_file = match &self.key {
            Some(k) => Some(k.clone()),
            None => self.file()?.key_file,
        };
        let key = keyfile::load_key(key_file.as_deref(), "PROMPTLEDGER_KEY").context(
            "your key: pass --key FILE, set PROMPTLEDGER_KEY, or key_file in the client config",
        )?;
        let server = self.server()?;
        Client::connect(server.clone(), key)
            .await
            .map_err(|s| anyhow::anyhow!("connecting to {server}: {}", s.message()))
    }
}

#[derive(Args)]
pub struct KeygenArgs {
    /// The actor name the key belongs to.
    #[arg(long)]
    name: String,
    /// Where to write the secret key (mode 0600); refused if it exists.
    #[arg(long)]
    out: PathBuf,
}

/// Writes a new key and prints its verifier key (what an admin registers).
pub fn keygen(args: KeygenArgs) -> Result<ExitCode> {
    if args.out.exists() {
        anyhow::bail!("{} exists; not overwriting a key", args.out.display());
    }
    let key =
        KeyPair::generate(&args.name, &mut rand_core::OsRng).map_err(|e| anyhow::anyhow!("{e}"))?;
    keyfile::write_key(&args.out, &key)?;
    println!("{}", key.public().to_vkey());
    eprintln!(
        "secret key written to {}; give the line above to an admin to register {}",
        args.out.display(),
        args.name
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum ActorCommand {
    /// Register an actor with its verifier key and role assignments (`role` or
    /// `role@namespace`). Needs manage_actors.
    Register {
        name: String,
        /// The actor's verifier key (`promptledger keygen` prints it).
        #[arg(long)]
        vkey: String,
        /// A role assignment; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// Replace an actor's key (an admin, or the actor itself); the old key stops signing.
    Rotate {
        name: String,
        /// The new verifier key (`promptledger keygen` prints it).
        #[arg(long)]
        vkey: String,
    },
    /// Revoke an actor and all its keys from this entry on. Needs manage_actors.
    Revoke {
        name: String,
        #[arg(long)]
        reason: String,
    },
    /// Replace an actor's role assignments. Needs manage_actors.
    SetRoles {
        name: String,
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Who held which roles at a sequence number (default: now).
    Roles {
        #[arg(long)]
        at: Option<u64>,
        /// Only this actor.
        #[arg(long)]
        actor: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// The policy in force at a sequence number (default: now): version, where it was set, and
    /// its three files.
    Show {
        #[arg(long)]
        at: Option<u64>,
    },
    /// Put the files of a directory (model.conf, policy.csv, gates.toml) in force. Needs
    /// set_policy.
    Set {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Args)]
pub struct Target {
    /// The prompt.
    prompt: String,
    #[arg(long)]
    version: u64,
    /// dev, staging or production.
    #[arg(long = "env")]
    environment: Environment,
}

#[derive(Subcommand)]
pub enum PromptCommand {
    /// Create an empty prompt (author).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
}

#[derive(Subcommand)]
pub enum GovernCommand {
    /// Create prompts.
    #[command(subcommand)]
    Prompt(PromptCommand),
    /// Commit a new version of a prompt on top of its head (author). Variables default to the
    /// `{{name}}` placeholders of the template.
    #[command(
        after_help = "Example:\n  promptledger --key alice.key commit support/greeting --template-file greeting.txt --model gpt-4o --param temperature=0.2 --message \"shorter\""
    )]
    Commit {
        prompt: String,
        /// The template text (`-` for standard input).
        #[arg(long)]
        template_file: PathBuf,
        #[arg(long)]
        model: String,
        /// A model parameter as KEY=JSON (e.g. temperature=0.2, stop='["\\n"]'); repeat.
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, serde_json::Value)>,
        /// A declared variable; repeat (default: the template's `{{name}}` placeholders).
        #[arg(long = "variable")]
        variables: Vec<String>,
        #[arg(long, default_value = "")]
        message: String,
        /// The version this one replaces (default: the current head, read from the server).
        #[arg(long)]
        parent: Option<u64>,
    },
    /// Print a prompt's template (the reference goes to stderr): what is live in an
    /// environment (optionally picked by a routing key), or an exact version.
    Get {
        prompt: String,
        #[arg(long = "env", conflicts_with = "version")]
        environment: Option<Environment>,
        #[arg(long)]
        version: Option<u64>,
        #[arg(long, requires = "environment")]
        routing_key: Option<String>,
    },
    /// Every event of a prompt, oldest first.
    #[command(
        after_help = "Example:\n  promptledger --key audrey.key --output csv history support/greeting > history.csv"
    )]
    History { prompt: String },
    /// What changed between two versions: template (unified diff), model, parameters,
    /// variables.
    Diff {
        prompt: String,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
    /// Manage actors and see who held which role.
    #[command(subcommand)]
    Actor(ActorCommand),
    /// Show or change the promotion policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Record an evaluation result for a version's exact content hash (CI).
    #[command(
        after_help = "Example:\n  promptledger --key ci.key evaluate support/greeting --version 3 --suite regression --score 0.94 --threshold 0.9 --evidence-uri https://ci.example/run/812"
    )]
    Evaluate {
        prompt: String,
        #[arg(long)]
        version: u64,
        #[arg(long)]
        suite: String,
        #[arg(long)]
        score: f64,
        #[arg(long)]
        threshold: f64,
        /// The suite passed (default: score >= threshold).
        #[arg(long, conflicts_with = "failed")]
        passed: bool,
        /// The suite failed.
        #[arg(long)]
        failed: bool,
        /// Who or what evaluated (default: your actor name).
        #[arg(long)]
        evaluator: Option<String>,
        #[arg(long, default_value = "")]
        evidence_digest: String,
        #[arg(long, default_value = "")]
        evidence_uri: String,
    },
    /// Approve a version (its exact content hash) for an environment.
    #[command(
        after_help = "Example:\n  promptledger --key bob.key approve support/greeting --version 3 --env staging"
    )]
    Approve(Target),
    /// Withdraw your approval.
    RevokeApproval {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reason: String,
    },
    /// Promote a version past the environment's gates, alone or as a rollout step.
    #[command(
        after_help = "Example:\n  promptledger --key dora.key promote support/greeting --version 3 --env production\n  promptledger --key dora.key promote support/greeting --version 4 --env production --weight 3=90 --weight 4=10"
    )]
    Promote {
        #[command(flatten)]
        target: Target,
        /// Rollout weights as VERSION=PERCENT, summing to 100 (e.g. --weight 3=90 --weight
        /// 4=10); the other versions must be live there now.
        #[arg(long = "weight", value_parser = parse_split)]
        weights: Vec<Split>,
    },
    /// Put back a version that was live in the environment before.
    #[command(
        after_help = "Example:\n  promptledger --key dora.key rollback support/greeting --version 3 --env production --reason \"INC-7: v4 misroutes refunds\""
    )]
    Rollback {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reason: String,
    },
    /// Promote past the gates in an emergency (break_glass permission). Flagged everywhere.
    #[command(
        after_help = "Example:\n  promptledger --key oncall.key break-glass support/greeting --version 5 --env production --reason \"INC-9 hotfix\""
    )]
    BreakGlass {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        reason: String,
        #[arg(long = "weight", value_parser = parse_split)]
        weights: Vec<Split>,
    },
    /// What was live in an environment now, at a sequence number or at a time.
    #[command(
        after_help = "Example:\n  promptledger --key audrey.key live support/greeting --env production --at-time-ms 1767225600000"
    )]
    Live {
        prompt: String,
        #[arg(long = "env")]
        environment: Environment,
        #[arg(long, conflicts_with = "at_time_ms")]
        at: Option<u64>,
        /// Milliseconds since the Unix epoch.
        #[arg(long)]
        at_time_ms: Option<u64>,
    },
    /// Why a promotion, rollback or break-glass promotion was allowed: policy, gates, evidence.
    #[command(
        after_help = "Example:\n  promptledger --key audrey.key why support/greeting --env production\n  promptledger --key audrey.key --output json why support/greeting --seq 42"
    )]
    Why {
        prompt: String,
        /// Its sequence number (`live` shows it).
        #[arg(long, required_unless_present = "environment")]
        seq: Option<u64>,
        /// Or: the deployment live in this environment now.
        #[arg(long = "env", conflicts_with = "seq")]
        environment: Option<Environment>,
    },
}

fn parse_param(s: &str) -> Result<(String, serde_json::Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=JSON"))?;
    // A bare word that is not JSON is taken as a string.
    let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
    Ok((k.to_owned(), value))
}

/// The `{{name}}` placeholders of a template, in order of first appearance.
fn placeholders(template: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find("}}") else { break };
        let name = rest[..end].trim();
        if !name.is_empty() && !out.iter().any(|n| n == name) {
            out.push(name.to_owned());
        }
        rest = &rest[end + 2..];
    }
    out
}

/// The head version of a prompt (None: no version yet).
async fn head(c: &mut Client, prompt: &str) -> Result<Option<u64>, Status> {
    let mut token = String::new();
    let mut last = None;
    loop {
        let request = c
            .authorized(pb::ListVersionsRequest {
                prompt: prompt.into(),
                page_size: 1000,
                page_token: token,
            })
            .await?;
        let page = c.registry().list_versions(request).await?.into_inner();
        last = page.versions.last().map(|v| v.version).or(last);
        if page.next_page_token.is_empty() {
            return Ok(last);
        }
        token = page.next_page_token;
    }
}

fn parse_split(s: &str) -> Result<Split, String> {
    let (v, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected VERSION=PERCENT"))?;
    Ok(Split {
        version: v
            .parse()
            .map_err(|_| format!("{v:?} is not a version number"))?,
        weight: w
            .parse()
            .map_err(|_| format!("{w:?} is not a percentage"))?,
    })
}

/// Runs a governance command. A refusal by the server is exit code 1 with its reason.
pub fn run(client: ClientArgs, command: GovernCommand) -> Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut c = client.connect().await?;
        match execute(&mut c, client.output, command).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(Refusal::Status(s)) => {
                eprintln!("refused ({:?}): {}", s.code(), s.message());
                Ok(ExitCode::from(1))
            }
            Err(Refusal::Other(e)) => Err(e),
        }
    })
}

enum Refusal {
    Status(Status),
    Other(anyhow::Error),
}

impl From<Status> for Refusal {
    fn from(s: Status) -> Self {
        Refusal::Status(s)
    }
}

impl From<anyhow::Error> for Refusal {
    fn from(e: anyhow::Error) -> Self {
        Refusal::Other(e)
    }
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Self {
        Refusal::Other(e.into())
    }
}

fn receipt(out: Output, r: &pb::Receipt) {
    if out == Output::Csv {
        let _ = Csv::new(&["sequence", "leaf_hash", "duplicate"]).and_then(|mut w| {
            w.row([
                r.sequence.to_string(),
                hex::encode(&r.leaf_hash),
                r.duplicate.to_string(),
            ])
        });
        return;
    }
    if out == Output::Json {
        println!(
            "{}",
            serde_json::json!({
                "sequence": r.sequence,
                "leaf_hash": hex::encode(&r.leaf_hash),
                "duplicate": r.duplicate,
            })
        );
        return;
    }
    println!(
        "recorded at sequence {}{}",
        r.sequence,
        if r.duplicate {
            " (a retry: already recorded)"
        } else {
            ""
        }
    );
}

/// The sequence number of the deployment live in `env` now (0: none), for compare-and-swap.
async fn live_seq(c: &mut Client, prompt: &str, env: Environment) -> Result<u64, Status> {
    let request = c
        .authorized(pb::GetDeploymentRequest {
            prompt: prompt.into(),
            environment: env.as_str().into(),
            ..Default::default()
        })
        .await?;
    match c.registry().get_deployment(request).await {
        Ok(r) => Ok(r.into_inner().deployment.map_or(0, |d| d.sequence)),
        Err(s) if s.code() == Code::NotFound && s.message().starts_with("nothing") => Ok(0),
        Err(s) => Err(s),
    }
}

async fn content_hash(c: &mut Client, prompt: &str, version: u64) -> Result<String, Status> {
    let request = c
        .authorized(pb::GetVersionRequest {
            prompt: prompt.into(),
            version,
        })
        .await?;
    Ok(c.registry()
        .get_version(request)
        .await?
        .into_inner()
        .version
        .map(|v| v.content_hash)
        .unwrap_or_default())
}

fn deployment_json(d: &pb::Deployment) -> serde_json::Value {
    serde_json::json!({
        "prompt": d.prompt,
        "environment": d.environment,
        "version": d.version,
        "splits": d.splits.iter().map(|s| serde_json::json!({"version": s.version, "weight": s.weight})).collect::<Vec<_>>(),
        "sequence": d.sequence,
        "timestamp_ms": d.timestamp_ms,
        "actor": d.actor,
        "rollback": d.rollback,
        "break_glass": d.break_glass,
        "reason": d.reason,
        "decision": d.decision.as_ref().map(|dec| serde_json::json!({
            "policy_version": dec.policy_version,
            "policy_sequence": dec.policy_sequence,
            "break_glass_reason": dec.break_glass_reason,
            "gates": dec.gates.iter().map(|g| serde_json::json!({
                "gate": g.gate, "passed": g.passed, "evidence": g.evidence, "detail": g.detail,
            })).collect::<Vec<_>>(),
        })),
    })
}

fn show_deployment(out: Output, d: &pb::Deployment) {
    match out {
        Output::Json => println!("{}", deployment_json(d)),
        Output::Text => print_deployment(d),
        Output::Csv => {
            let splits: Vec<String> = d
                .splits
                .iter()
                .map(|s| format!("{}:{}", s.version, s.weight))
                .collect();
            let header = [
                "prompt",
                "environment",
                "version",
                "splits",
                "sequence",
                "timestamp_ms",
                "actor",
                "rollback",
                "break_glass",
                "reason",
                "policy_version",
            ];
            let _ = Csv::new(&header).and_then(|mut w| {
                w.row([
                    d.prompt.clone(),
                    d.environment.clone(),
                    d.version.to_string(),
                    splits.join(" "),
                    d.sequence.to_string(),
                    d.timestamp_ms.to_string(),
                    d.actor.clone(),
                    d.rollback.to_string(),
                    d.break_glass.to_string(),
                    d.reason.clone(),
                    d.decision
                        .as_ref()
                        .map(|x| x.policy_version.clone())
                        .unwrap_or_default(),
                ])
            });
        }
    }
}

fn print_deployment(d: &pb::Deployment) {
    let weights: Vec<String> = d
        .splits
        .iter()
        .map(|s| format!("version {} {}%", s.version, s.weight))
        .collect();
    println!(
        "{} {}: {} (sequence {}, {} ms, by {}{}{})",
        d.prompt,
        d.environment,
        weights.join(", "),
        d.sequence,
        d.timestamp_ms,
        d.actor,
        if d.rollback { ", rollback" } else { "" },
        if d.break_glass { ", BREAK-GLASS" } else { "" },
    );
    if !d.reason.is_empty() {
        println!("  reason: {}", d.reason);
    }
    match &d.decision {
        None => println!("  decision: none recorded (made before any policy was in force)"),
        Some(dec) => {
            println!(
                "  policy: {} (set at sequence {})",
                dec.policy_version, dec.policy_sequence
            );
            if !dec.break_glass_reason.is_empty() {
                println!("  gates BYPASSED (break-glass): {}", dec.break_glass_reason);
            }
            for g in &dec.gates {
                println!(
                    "  {} {}: {} {:?}",
                    if g.passed { "pass" } else { "FAIL" },
                    g.gate,
                    g.detail,
                    g.evidence
                );
            }
        }
    }
}

/// Signs `action` against the deployment live now (compare-and-swap) and sends it to the
/// method of its `kind`.
async fn deployment_write(
    c: &mut Client,
    out: Output,
    target: &Target,
    kind: &str,
    action: impl FnOnce(u64) -> Action,
) -> Result<(), Refusal> {
    let expected = live_seq(c, &target.prompt, target.environment).await?;
    let statement = Some(c.sign(action(expected)));
    let r = c.registry();
    let (receipt_pb, deployment) = match kind {
        "rollback_prompt" => {
            let x = r
                .rollback_prompt(pb::RollbackPromptRequest { statement })
                .await?
                .into_inner();
            (x.receipt, x.deployment)
        }
        "break_glass_promote" => {
            let x = r
                .break_glass_promote(pb::BreakGlassPromoteRequest { statement })
                .await?
                .into_inner();
            (x.receipt, x.deployment)
        }
        _ => {
            let x = r
                .promote_version(pb::PromoteVersionRequest { statement })
                .await?
                .into_inner();
            (x.receipt, x.deployment)
        }
    };
    if let Some(rc) = &receipt_pb {
        receipt(out, rc);
    }
    if let Some(d) = &deployment {
        show_deployment(out, d);
    }
    Ok(())
}

async fn execute(c: &mut Client, out: Output, command: GovernCommand) -> Result<(), Refusal> {
    match command {
        GovernCommand::Actor(ActorCommand::Register { name, vkey, roles }) => {
            receipt(
                out,
                &c.submit(Action::RegisterActor {
                    name,
                    key: vkey,
                    roles,
                })
                .await?,
            );
        }
        GovernCommand::Actor(ActorCommand::Rotate { name, vkey }) => {
            receipt(
                out,
                &c.submit(Action::RotateKey {
                    name,
                    new_key: vkey,
                })
                .await?,
            );
        }
        GovernCommand::Actor(ActorCommand::Revoke { name, reason }) => {
            receipt(out, &c.submit(Action::RevokeActor { name, reason }).await?);
        }
        GovernCommand::Prompt(PromptCommand::Create { name, description }) => {
            receipt(
                out,
                &c.submit(Action::CreatePrompt {
                    prompt: name,
                    description,
                })
                .await?,
            );
        }
        GovernCommand::Commit {
            prompt,
            template_file,
            model,
            params,
            variables,
            message,
            parent,
        } => {
            let template = if template_file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&template_file)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", template_file.display()))?
            };
            let parameters: std::collections::BTreeMap<String, serde_json::Value> =
                params.into_iter().collect();
            let variables = if variables.is_empty() {
                placeholders(&template)
            } else {
                variables
            };
            let parent_version = match parent {
                Some(p) => Some(p),
                None => head(c, &prompt).await?,
            };
            let content_hash = promptledger::registry::model::content_hash(
                &template,
                &model,
                &parameters,
                &variables,
            );
            let statement = Some(c.sign(Action::CommitVersion {
                prompt,
                parent_version,
                template,
                model,
                parameters,
                variables,
                message,
                content_hash,
            }));
            let r = c
                .registry()
                .commit_version(pb::CommitVersionRequest { statement })
                .await?
                .into_inner();
            let rc = r.receipt.clone().unwrap_or_default();
            match out {
                Output::Text => {
                    receipt(out, &rc);
                    println!("version {} ({})", r.version, r.content_hash);
                }
                Output::Json => println!(
                    "{}",
                    serde_json::json!({
                        "sequence": rc.sequence, "leaf_hash": hex::encode(&rc.leaf_hash),
                        "duplicate": rc.duplicate, "version": r.version,
                        "content_hash": r.content_hash,
                    })
                ),
                Output::Csv => Csv::new(&["sequence", "version", "content_hash"])?.row([
                    rc.sequence.to_string(),
                    r.version.to_string(),
                    r.content_hash.clone(),
                ])?,
            }
        }
        GovernCommand::Get {
            prompt,
            environment,
            version,
            routing_key,
        } => {
            let r = c
                .get_prompt(pb::GetPromptRequest {
                    prompt,
                    environment: environment
                        .map(|e| e.as_str().to_owned())
                        .unwrap_or_default(),
                    version: version.unwrap_or(0),
                    content_hash: String::new(),
                    routing_key: routing_key.unwrap_or_default(),
                })
                .await?;
            if out == Output::Csv {
                return Err(no_csv("a template"));
            }
            if out == Output::Json {
                let reference = r.reference.clone().unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({
                        "template": r.template, "model": r.model,
                        "parameters": serde_json::from_str::<serde_json::Value>(&r.parameters_json).unwrap_or_default(),
                        "variables": r.variables,
                        "reference": {
                            "prompt": reference.prompt, "version": reference.version,
                            "content_hash": reference.content_hash,
                            "deployment_sequence": reference.deployment_sequence,
                            "environment": reference.environment, "weight": reference.weight,
                            "break_glass": reference.break_glass,
                        },
                    })
                );
                return Ok(());
            }
            print!("{}", r.template);
            if let Some(reference) = &r.reference {
                eprintln!(
                    "{} version {} {} (model {}, deployment {}{}{})",
                    reference.prompt,
                    reference.version,
                    reference.content_hash,
                    r.model,
                    reference.deployment_sequence,
                    if reference.weight > 0 && reference.weight < 100 {
                        format!(", {}% of routing keys", reference.weight)
                    } else {
                        String::new()
                    },
                    if reference.break_glass {
                        ", BREAK-GLASS"
                    } else {
                        ""
                    }
                );
            }
        }
        GovernCommand::Diff { prompt, from, to } => {
            let request = c
                .authorized(pb::DiffVersionsRequest {
                    prompt,
                    from_version: from,
                    to_version: to,
                })
                .await?;
            let d = c.registry().diff_versions(request).await?.into_inner();
            if out == Output::Csv {
                return Err(no_csv("a diff"));
            }
            if out == Output::Json {
                let (a, b) = (
                    d.from.clone().unwrap_or_default(),
                    d.to.clone().unwrap_or_default(),
                );
                println!(
                    "{}",
                    serde_json::json!({
                        "from": {"version": a.version, "content_hash": a.content_hash, "model": a.model},
                        "to": {"version": b.version, "content_hash": b.content_hash, "model": b.model},
                        "model_changed": d.model_changed,
                        "parameters": d.parameters.iter().map(|p| serde_json::json!({
                            "key": p.key, "from": p.from_json, "to": p.to_json,
                        })).collect::<Vec<_>>(),
                        "variables_added": d.variables_added,
                        "variables_removed": d.variables_removed,
                        "template_diff": d.template_diff,
                    })
                );
                return Ok(());
            }
            let (a, b) = (d.from.unwrap_or_default(), d.to.unwrap_or_default());
            println!(
                "v{} {} -> v{} {}",
                a.version, a.content_hash, b.version, b.content_hash
            );
            if d.model_changed {
                println!("model: {} -> {}", a.model, b.model);
            }
            for p in &d.parameters {
                let show = |j: &str| {
                    if j.is_empty() {
                        "(none)".to_owned()
                    } else {
                        j.to_owned()
                    }
                };
                println!(
                    "parameter {}: {} -> {}",
                    p.key,
                    show(&p.from_json),
                    show(&p.to_json)
                );
            }
            if !d.variables_added.is_empty() {
                println!("variables added: {}", d.variables_added.join(", "));
            }
            if !d.variables_removed.is_empty() {
                println!("variables removed: {}", d.variables_removed.join(", "));
            }
            print!("{}", d.template_diff);
        }
        GovernCommand::History { prompt } => {
            let mut token = String::new();
            let mut table = match out {
                Output::Csv => Some(Csv::new(&[
                    "sequence",
                    "timestamp_ms",
                    "kind",
                    "actor",
                    "version",
                    "environment",
                    "break_glass",
                ])?),
                _ => None,
            };
            loop {
                let request = c
                    .authorized(pb::ListPromptHistoryRequest {
                        prompt: prompt.clone(),
                        page_size: 1000,
                        page_token: token,
                    })
                    .await?;
                let page = c
                    .registry()
                    .list_prompt_history(request)
                    .await?
                    .into_inner();
                if let Some(w) = table.as_mut() {
                    for e in &page.events {
                        w.row([
                            e.sequence.to_string(),
                            e.timestamp_ms.to_string(),
                            e.kind.clone(),
                            e.actor.clone(),
                            e.version.to_string(),
                            e.environment.clone(),
                            e.break_glass.to_string(),
                        ])?;
                    }
                }
                for e in page.events.iter().filter(|_| out == Output::Json) {
                    println!(
                        "{}",
                        serde_json::json!({
                            "sequence": e.sequence, "kind": e.kind, "actor": e.actor,
                            "timestamp_ms": e.timestamp_ms, "version": e.version,
                            "environment": e.environment, "break_glass": e.break_glass,
                        })
                    );
                }
                for e in page.events.iter().filter(|_| out == Output::Text) {
                    println!(
                        "{:>8} {:>15} {:<20} {:<16} {:>4} {}{}",
                        e.sequence,
                        e.timestamp_ms,
                        e.kind,
                        e.actor,
                        if e.version > 0 {
                            format!("v{}", e.version)
                        } else {
                            String::new()
                        },
                        e.environment,
                        if e.break_glass { " BREAK-GLASS" } else { "" }
                    );
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                token = page.next_page_token;
            }
        }
        GovernCommand::Actor(ActorCommand::SetRoles { name, roles }) => {
            receipt(out, &c.submit(Action::SetActorRoles { name, roles }).await?);
        }
        GovernCommand::Actor(ActorCommand::Roles { at, actor }) => {
            let mut token = String::new();
            let mut table = match out {
                Output::Csv => Some(Csv::new(&["actor", "roles", "revoked", "at_sequence"])?),
                _ => None,
            };
            loop {
                let request = c
                    .authorized(pb::ListRoleAssignmentsRequest {
                        at_sequence: at.unwrap_or(0),
                        actor: actor.clone().unwrap_or_default(),
                        page_size: 1000,
                        page_token: token,
                    })
                    .await?;
                let page = c
                    .registry()
                    .list_role_assignments(request)
                    .await?
                    .into_inner();
                if let Some(w) = table.as_mut() {
                    for a in &page.assignments {
                        w.row([
                            a.actor.clone(),
                            a.roles.join(" "),
                            a.revoked.to_string(),
                            page.at_sequence.to_string(),
                        ])?;
                    }
                }
                for a in page.assignments.iter().filter(|_| out == Output::Json) {
                    println!(
                        "{}",
                        serde_json::json!({
                            "actor": a.actor, "roles": a.roles, "revoked": a.revoked,
                            "at_sequence": page.at_sequence,
                        })
                    );
                }
                for a in page.assignments.iter().filter(|_| out == Output::Text) {
                    println!(
                        "{:<24} {}{}",
                        a.actor,
                        a.roles.join(" "),
                        if a.revoked { " (revoked)" } else { "" }
                    );
                }
                if page.next_page_token.is_empty() {
                    eprintln!("as of sequence {}", page.at_sequence);
                    break;
                }
                token = page.next_page_token;
            }
        }
        GovernCommand::Policy(PolicyCommand::Show { at }) => {
            let request = c
                .authorized(pb::GetPolicyRequest {
                    at_sequence: at.unwrap_or(0),
                })
                .await?;
            let p = c.registry().get_policy(request).await?.into_inner();
            if out == Output::Csv {
                return Err(no_csv("a policy"));
            }
            if out == Output::Json {
                println!(
                    "{}",
                    serde_json::json!({
                        "policy_version": p.policy_version, "sequence": p.sequence,
                        "set_by": p.set_by, "timestamp_ms": p.timestamp_ms,
                        "model_conf": p.model_conf, "policy_csv": p.policy_csv,
                        "gates_toml": p.gates_toml,
                    })
                );
                return Ok(());
            }
            println!(
                "policy {} set at sequence {} by {} ({} ms)",
                p.policy_version, p.sequence, p.set_by, p.timestamp_ms
            );
            for (name, text) in [
                ("model.conf", &p.model_conf),
                ("policy.csv", &p.policy_csv),
                ("gates.toml", &p.gates_toml),
            ] {
                println!("\n==> {name} <==\n{}", text.trim_end());
            }
        }
        GovernCommand::Policy(PolicyCommand::Set { dir }) => {
            let files = PolicyFiles::read_dir(&dir)?;
            let version = files.version();
            receipt(out, &c.submit(Action::SetPolicy { files }).await?);
            println!("policy {version} is in force");
        }
        GovernCommand::Evaluate {
            prompt,
            version,
            suite,
            score,
            threshold,
            passed,
            failed,
            evaluator,
            evidence_digest,
            evidence_uri,
        } => {
            let content_hash = content_hash(c, &prompt, version).await?;
            let passed = if passed || failed {
                passed
            } else {
                score >= threshold
            };
            let evaluator = evaluator.unwrap_or_else(|| c.actor().to_owned());
            receipt(
                out,
                &c.submit(Action::RecordEvaluation {
                    prompt,
                    version,
                    content_hash,
                    suite,
                    score,
                    threshold,
                    passed,
                    evaluator,
                    evidence_digest,
                    evidence_uri,
                })
                .await?,
            );
        }
        GovernCommand::Approve(t) => {
            let content_hash = content_hash(c, &t.prompt, t.version).await?;
            receipt(
                out,
                &c.submit(Action::ApproveVersion {
                    prompt: t.prompt,
                    version: t.version,
                    content_hash,
                    environment: t.environment,
                })
                .await?,
            );
        }
        GovernCommand::RevokeApproval { target, reason } => {
            receipt(
                out,
                &c.submit(Action::RevokeApproval {
                    prompt: target.prompt,
                    version: target.version,
                    environment: target.environment,
                    reason,
                })
                .await?,
            );
        }
        GovernCommand::Promote { target, weights } => {
            let t = &target;
            deployment_write(c, out, t, "promote_version", |expected| {
                Action::PromoteVersion {
                    prompt: t.prompt.clone(),
                    version: t.version,
                    environment: t.environment,
                    rollout: weights,
                    expected_deployment: Some(expected),
                }
            })
            .await?;
        }
        GovernCommand::Rollback { target, reason } => {
            let t = &target;
            deployment_write(c, out, t, "rollback_prompt", |expected| {
                Action::RollbackPrompt {
                    prompt: t.prompt.clone(),
                    version: t.version,
                    environment: t.environment,
                    reason,
                    expected_deployment: Some(expected),
                }
            })
            .await?;
        }
        GovernCommand::BreakGlass {
            target,
            reason,
            weights,
        } => {
            let t = &target;
            deployment_write(c, out, t, "break_glass_promote", |expected| {
                Action::BreakGlassPromote {
                    prompt: t.prompt.clone(),
                    version: t.version,
                    environment: t.environment,
                    rollout: weights,
                    reason,
                    expected_deployment: Some(expected),
                }
            })
            .await?;
        }
        GovernCommand::Live {
            prompt,
            environment,
            at,
            at_time_ms,
        } => {
            let request = c
                .authorized(pb::GetDeploymentRequest {
                    prompt,
                    environment: environment.as_str().into(),
                    at_sequence: at.unwrap_or(0),
                    at_time_ms: at_time_ms.unwrap_or(0),
                })
                .await?;
            let d = c.registry().get_deployment(request).await?.into_inner();
            if let Some(d) = &d.deployment {
                show_deployment(out, d);
            }
        }
        GovernCommand::Why {
            prompt,
            seq,
            environment,
        } => {
            let sequence = match (seq, environment) {
                (Some(seq), _) => seq,
                (None, Some(env)) => match live_seq(c, &prompt, env).await? {
                    0 => {
                        return Err(Refusal::Status(Status::not_found(format!(
                            "nothing of {prompt} is live in {env}"
                        ))))
                    }
                    seq => seq,
                },
                (None, None) => unreachable!("clap requires one"),
            };
            let request = c
                .authorized(pb::ExplainDeploymentRequest { prompt, sequence })
                .await?;
            let why = c.registry().explain_deployment(request).await?.into_inner();
            if out == Output::Csv {
                return Err(no_csv("an explanation"));
            }
            if out == Output::Json {
                let evidence: Vec<serde_json::Value> = why
                    .evidence
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "sequence": e.sequence, "kind": e.kind, "actor": e.actor,
                            "timestamp_ms": e.timestamp_ms, "summary": e.summary,
                        })
                    })
                    .collect();
                let deployment = why.deployment.as_ref().map(deployment_json);
                println!(
                    "{}",
                    serde_json::json!({"deployment": deployment, "evidence": evidence})
                );
                return Ok(());
            }
            if let Some(d) = &why.deployment {
                print_deployment(d);
            }
            if !why.evidence.is_empty() {
                println!("evidence:");
            }
            for e in &why.evidence {
                println!(
                    "  {:>8} {:<18} {:<16} {}",
                    e.sequence, e.kind, e.actor, e.summary
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_default_to_the_placeholders_in_order() {
        assert_eq!(
            placeholders("Hi {{ name }}, about {{order}}: {{name}} {{}} {{open"),
            vec!["name".to_owned(), "order".to_owned()]
        );
        assert!(placeholders("no variables").is_empty());
    }

    #[test]
    fn parameters_are_json_or_strings() {
        assert_eq!(
            parse_param("temperature=0.2").unwrap(),
            ("temperature".into(), serde_json::json!(0.2))
        );
        assert_eq!(
            parse_param("stop=[\"a\"]").unwrap().1,
            serde_json::json!(["a"])
        );
        assert_eq!(
            parse_param("style=terse").unwrap().1,
            serde_json::json!("terse")
        );
        assert!(parse_param("nothing").is_err());
    }
}
