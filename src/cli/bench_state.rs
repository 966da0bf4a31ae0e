//! `promptledger bench state`: what the state root costs per commit group as the registry
//! grows. The writer puts a state root in every checkpoint; it is kept in a tree updated in
//! O(objects changed) (`registry::state`), measured here against recomputing it from every
//! object (what a flat hash over the whole state costs), in the same run.

use anyhow::Result;
use clap::Args;
use promptledger::ledger::entry::Seq;
use promptledger::ledger::keys::KeyPair;
use promptledger::policy::PolicyFiles;
use promptledger::registry::model::content_hash;
use promptledger::registry::state::{Event, State};
use promptledger::registry::statement::{Action, Statement};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args)]
pub struct StateArgs {
    /// Registry sizes (prompts) to measure at.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    prompts: Vec<usize>,
    /// Statements per simulated commit group.
    #[arg(long, default_value_t = 32)]
    group: usize,
}

struct Feed {
    state: State,
    seq: Seq,
}

impl Feed {
    fn apply(&mut self, key: &KeyPair, action: Action) {
        let statement = Statement {
            ledger_id: "00".repeat(16),
            actor: key.name().to_owned(),
            issued_at_ms: 0,
            nonce: format!("n{}", self.seq),
            action,
        };
        let keyid = key.key_id().to_string();
        let ev = Event {
            seq: self.seq,
            timestamp_ms: self.seq,
            signer: &keyid,
            statement: &statement,
            payload_hash: [0; 32],
        };
        let verdict = self
            .state
            .decide(&ev)
            .expect("the bench's statements are valid");
        self.state.apply_decided(&ev, Some(verdict));
        self.seq += 1;
    }
}

fn commit(prompt: &str, parent: Option<u64>, n: usize) -> Action {
    let template = format!("v{n} of {prompt}");
    let parameters = BTreeMap::new();
    Action::CommitVersion {
        prompt: prompt.into(),
        parent_version: parent,
        content_hash: content_hash(&template, "m", &parameters, &[]),
        template,
        model: "m".into(),
        parameters,
        variables: vec![],
        message: String::new(),
    }
}

pub fn run(args: StateArgs) -> Result<ExitCode> {
    let admin = KeyPair::from_seed("admin", &[1; 32])?;
    let author = KeyPair::from_seed("author", &[2; 32])?;
    println!(
        "{:>9} {:>22} {:>22} {:>8}",
        "prompts", "incremental µs/group", "from scratch µs/group", "ratio"
    );
    for &n in &args.prompts {
        let mut feed = Feed {
            state: State::new(),
            seq: 0,
        };
        feed.apply(
            &admin,
            Action::Genesis {
                origin: "bench".into(),
                ledger_key: admin.public().to_vkey(),
                admin_key: admin.public().to_vkey(),
            },
        );
        feed.apply(
            &admin,
            Action::SetPolicy {
                files: PolicyFiles::builtin(),
            },
        );
        feed.apply(
            &admin,
            Action::RegisterActor {
                name: "author".into(),
                key: author.public().to_vkey(),
                roles: vec!["author".into()],
            },
        );
        for i in 0..n {
            feed.apply(
                &author,
                Action::CreatePrompt {
                    prompt: format!("bench/p{i}"),
                    description: String::new(),
                },
            );
        }
        feed.state.state_root();
        // Groups of commits to prompts spread over the registry, a root after each group.
        let groups = 200;
        let mut heads = vec![None; n];
        let mut incremental = std::time::Duration::ZERO;
        let mut scratch = std::time::Duration::ZERO;
        for g in 0..groups {
            for j in 0..args.group {
                let p = (g * 7919 + j * 104_729) % n;
                let head: Option<u64> = heads[p];
                feed.apply(&author, commit(&format!("bench/p{p}"), head, g));
                heads[p] = Some(head.map_or(1, |h| h + 1));
            }
            let t = Instant::now();
            let root = feed.state.state_root();
            incremental += t.elapsed();
            let t = Instant::now();
            let again = feed.state.state_root_from_scratch();
            scratch += t.elapsed();
            assert_eq!(
                root, again,
                "the incremental root must equal the recomputed one"
            );
        }
        let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / groups as f64;
        println!(
            "{:>9} {:>22.1} {:>22.1} {:>7.0}x",
            n,
            per(incremental),
            per(scratch),
            per(scratch) / per(incremental)
        );
    }
    Ok(ExitCode::SUCCESS)
}
