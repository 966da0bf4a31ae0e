//! `ListEvents`: every filter combination returns exactly the events a brute-force scan of the
//! stored log finds, in both orders, across pages.

mod common;

use common::{commit, hash_of, key, Server};
use promptledger::client::Client;
use promptledger::keyfile;
use promptledger::ledger::entry::Entry;
use promptledger::node::DataDir;
use promptledger::proto::registry::v1 as pb;
use promptledger::registry::model::Environment;
use promptledger::registry::statement::Action;
use promptledger::server::Config;
use promptledger::storage::Store;

fn open_gates(dir: &std::path::Path) -> std::path::PathBuf {
    let shipped = promptledger::policy::PolicyFiles::builtin();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.conf"), shipped.model).unwrap();
    std::fs::write(dir.join("policy.csv"), shipped.policy).unwrap();
    std::fs::write(dir.join("gates.toml"), "").unwrap();
    dir.to_owned()
}

/// Every event of a filtered query, paging with `page_size`.
async fn all_pages(c: &mut Client, mut q: pb::ListEventsRequest) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let request = c.authorized(q.clone()).await.unwrap();
        let page = c
            .registry()
            .list_events(request)
            .await
            .unwrap()
            .into_inner();
        assert!(page.events.len() <= q.page_size.max(1) as usize);
        out.extend(page.events.iter().map(|e| e.sequence));
        if page.next_page_token.is_empty() {
            return out;
        }
        q.page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_return_exactly_what_a_brute_force_scan_finds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let server = Server::start(Config {
        data_dir: dir.root.clone(),
        policy_dir: Some(open_gates(&tmp.path().join("policy"))),
        ..Config::default()
    })
    .await;
    let url = server.endpoint();
    let mut admin = Client::connect(url.clone(), keyfile::read_key(&dir.admin_key()).unwrap())
        .await
        .unwrap();
    for (name, role) in [
        ("alice", "author"),
        ("amir", "author"),
        ("bob", "reviewer"),
        ("dora", "deployer"),
        ("audrey", "auditor"),
    ] {
        admin
            .submit(Action::RegisterActor {
                name: name.into(),
                key: key(name).public().to_vkey(),
                roles: vec![role.into()],
            })
            .await
            .unwrap();
    }
    let c = |name: &str| Client::connect(url.clone(), key(name));
    let (mut alice, mut amir, mut bob, mut dora) = (
        c("alice").await.unwrap(),
        c("amir").await.unwrap(),
        c("bob").await.unwrap(),
        c("dora").await.unwrap(),
    );
    let mut times = Vec::new();
    for (i, prompt) in ["support/a", "support/b", "billing/c"]
        .into_iter()
        .enumerate()
    {
        let author = if i == 1 { &mut amir } else { &mut alice };
        author
            .submit(Action::CreatePrompt {
                prompt: prompt.into(),
                description: String::new(),
            })
            .await
            .unwrap();
        author.submit(commit(prompt, None, "v1")).await.unwrap();
        author.submit(commit(prompt, Some(1), "v2")).await.unwrap();
        for env in Environment::ALL {
            for v in [1, 2] {
                bob.submit(Action::ApproveVersion {
                    prompt: prompt.into(),
                    version: v,
                    content_hash: hash_of(if v == 1 { "v1" } else { "v2" }),
                    environment: env,
                })
                .await
                .unwrap();
                dora.submit(Action::PromoteVersion {
                    prompt: prompt.into(),
                    version: v,
                    environment: env,
                    rollout: vec![],
                    expected_deployment: None,
                })
                .await
                .unwrap();
            }
        }
        dora.submit(Action::RollbackPrompt {
            prompt: prompt.into(),
            version: 1,
            environment: Environment::Production,
            reason: "r".into(),
            expected_deployment: None,
        })
        .await
        .unwrap();
        times.push(promptledger::storage::writer::system_clock_ms());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let mut audrey = c("audrey").await.unwrap();
    let base = pb::ListEventsRequest {
        page_size: 4,
        ..Default::default()
    };
    let queries: Vec<pb::ListEventsRequest> = vec![
        base.clone(),
        pb::ListEventsRequest {
            actor: "bob".into(),
            ..base.clone()
        },
        pb::ListEventsRequest {
            prompt: "support/b".into(),
            ..base.clone()
        },
        pb::ListEventsRequest {
            kind: "promote_version".into(),
            ..base.clone()
        },
        pb::ListEventsRequest {
            environment: "production".into(),
            ..base.clone()
        },
        pb::ListEventsRequest {
            actor: "dora".into(),
            environment: "staging".into(),
            prompt: "billing/c".into(),
            ..base.clone()
        },
        pb::ListEventsRequest {
            from_sequence: 7,
            to_sequence: 30,
            ..base.clone()
        },
        pb::ListEventsRequest {
            from_time_ms: times[0],
            to_time_ms: times[1],
            ..base.clone()
        },
        pb::ListEventsRequest {
            from_time_ms: times[1],
            kind: "rollback_prompt".into(),
            ..base.clone()
        },
        pb::ListEventsRequest {
            actor: "nobody".into(),
            ..base.clone()
        },
    ];
    let mut answers = Vec::new();
    for q in &queries {
        let oldest = all_pages(&mut audrey, q.clone()).await;
        let mut newest = all_pages(
            &mut audrey,
            pb::ListEventsRequest {
                newest_first: true,
                ..q.clone()
            },
        )
        .await;
        newest.reverse();
        assert_eq!(oldest, newest, "both orders find the same events: {q:?}");
        answers.push(oldest);
    }
    // Services may not list the log.
    register_service(&mut admin).await;
    let mut svc = c("svc").await.unwrap();
    let request = svc.authorized(base.clone()).await.unwrap();
    let refused = svc.registry().list_events(request).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    server.stop().await;

    // Brute force over the stored entries, reading the statements' JSON directly.
    let store = Store::open_read_only(&dir.db()).unwrap();
    let entries: Vec<(u64, u64, serde_json::Value)> = store
        .entries_from(0)
        .map(|r| {
            let (seq, bytes) = r.unwrap();
            let e = Entry::decode(&bytes).unwrap();
            (
                seq,
                e.timestamp_ms,
                serde_json::from_slice(&e.envelope.payload).unwrap(),
            )
        })
        .collect();
    for (q, got) in queries.iter().zip(answers) {
        let want: Vec<u64> = entries
            .iter()
            .filter(|(seq, t, st)| {
                let field = |f: &str| st["action"][f].as_str().unwrap_or("").to_owned();
                (q.actor.is_empty() || st["actor"] == q.actor.as_str())
                    && (q.prompt.is_empty() || field("prompt") == q.prompt)
                    && (q.kind.is_empty() || field("type") == q.kind)
                    && (q.environment.is_empty() || field("environment") == q.environment)
                    && *seq >= q.from_sequence
                    && (q.to_sequence == 0 || *seq < q.to_sequence)
                    && *t >= q.from_time_ms
                    && (q.to_time_ms == 0 || *t < q.to_time_ms)
            })
            .map(|(seq, _, _)| *seq)
            .collect();
        // The service's registration (the last entry) came after the queries.
        let registration = entries.len() as u64 - 1;
        let want: Vec<u64> = want.into_iter().filter(|s| *s < registration).collect();
        assert_eq!(got, want, "{q:?}");
        assert!(
            !got.is_empty() || q.actor == "nobody",
            "a query that finds nothing proves little: {q:?}"
        );
    }
}

async fn register_service(admin: &mut Client) {
    admin
        .submit(Action::RegisterActor {
            name: "svc".into(),
            key: key("svc").public().to_vkey(),
            roles: vec!["service".into()],
        })
        .await
        .unwrap();
}
