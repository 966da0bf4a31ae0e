//! `ListEvents`: every filter combination returns exactly the events a brute-force scan of the
//! stored log finds, in both orders, across pages.

mod common;

use common::{commit, hash_of, key, tree_size, Server};
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

/// A server on a new ledger (shipped roles, gates that ask for nothing) with `actors`
/// registered by its admin: the data directory, the config (to restart it), the server and the
/// admin's client.
async fn started(
    tmp: &std::path::Path,
    actors: &[(&str, &str)],
) -> (DataDir, Config, Server, Client) {
    let dir = DataDir::new(tmp.join("data"));
    let config = Config {
        data_dir: dir.root.clone(),
        policy_dir: Some(open_gates(&tmp.join("policy"))),
        ..Config::default()
    };
    let server = Server::start(config.clone()).await;
    let mut admin = Client::connect(
        server.endpoint(),
        keyfile::read_key(&dir.admin_key()).unwrap(),
    )
    .await
    .unwrap();
    for &(name, role) in actors {
        admin
            .submit(Action::RegisterActor {
                name: name.into(),
                key: key(name).public().to_vkey(),
                roles: vec![role.into()],
            })
            .await
            .unwrap();
    }
    (dir, config, server, admin)
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
    let actors = [
        ("alice", "author"),
        ("amir", "author"),
        ("bob", "reviewer"),
        ("dora", "deployer"),
        ("audrey", "auditor"),
    ];
    let (dir, config, server, mut admin) = started(tmp.path(), &actors).await;
    let url = server.endpoint();
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
        // The indexed paths (prompt, actor) within sequence and time bounds.
        pb::ListEventsRequest {
            prompt: "support/a".into(),
            from_sequence: 12,
            to_sequence: 25,
            ..base.clone()
        },
        pb::ListEventsRequest {
            actor: "dora".into(),
            from_time_ms: times[0],
            to_time_ms: times[2],
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
    drop((alice, amir, bob, dora, audrey, admin, svc));
    server.stop().await;

    // A ledger written before the index existed: no index keys, no marker. The server builds the
    // index when it starts, and every query answers as before.
    let registration = {
        let store = Store::open(&dir.db()).unwrap();
        let keys: Vec<Vec<u8>> = store.scan("index").map(|r| r.unwrap().0).collect();
        assert!(
            keys.len() > 40,
            "every statement is indexed as it is written"
        );
        for k in keys {
            store.raw_delete("index", &k).unwrap();
        }
        store.raw_delete("meta", &[0x04]).unwrap();
        assert!(!store.has_event_index().unwrap());
        // The service's registration, after the answers above.
        store.head().unwrap().size - 1
    };
    let server = Server::start(config).await;
    let mut audrey = Client::connect(server.endpoint(), key("audrey"))
        .await
        .unwrap();
    for (q, before) in queries.iter().zip(&answers) {
        let mut got = all_pages(&mut audrey, q.clone()).await;
        got.retain(|s| *s < registration);
        assert_eq!(&got, before, "rebuilt: {q:?}");
    }
    drop(audrey);
    server.stop().await;
    assert!(Store::open_read_only(&dir.db())
        .unwrap()
        .has_event_index()
        .unwrap());

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

/// Reads a watch stream until `until` (exclusive) is reached or it ends; returns the sequence
/// numbers seen.
async fn read_watch(
    stream: &mut tonic::Streaming<pb::WatchEventsResponse>,
    until: u64,
    seen: &mut Vec<u64>,
) {
    while seen.last().is_none_or(|&s| s + 1 < until) {
        match tokio::time::timeout(std::time::Duration::from_secs(30), stream.message()).await {
            Ok(Ok(Some(e))) => seen.push(e.event.unwrap().sequence),
            Ok(Ok(None)) | Ok(Err(_)) => return,
            Err(_) => panic!("the watch stalled at {:?} waiting for {until}", seen.last()),
        }
    }
}

async fn watch(c: &mut Client, from: u64) -> tonic::Streaming<pb::WatchEventsResponse> {
    let request = c
        .authorized(pb::WatchEventsRequest {
            from_sequence: from,
            ..Default::default()
        })
        .await
        .unwrap();
    c.registry()
        .watch_events(request)
        .await
        .unwrap()
        .into_inner()
}

async fn create(c: &mut Client, tag: &str, n: usize) {
    for i in 0..n {
        c.submit(Action::CreatePrompt {
            prompt: format!("{tag}{i}"),
            description: String::new(),
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_delivers_every_event_once_in_order_across_a_restart_and_never_blocks_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, config, server, _admin) =
        started(tmp.path(), &[("alice", "author"), ("audrey", "auditor")]).await;
    let mut alice = Client::connect(server.endpoint(), key("alice"))
        .await
        .unwrap();
    let mut audrey = Client::connect(server.endpoint(), key("audrey"))
        .await
        .unwrap();

    // A consumer that never reads does not hold up writers.
    let _stalled = watch(&mut audrey, 0).await;
    create(&mut alice, "stalled-", 600).await;

    // History, then live events while alice writes.
    let mut stream = watch(&mut audrey, 0).await;
    let writer = tokio::spawn(async move {
        create(&mut alice, "live-", 150).await;
    });
    let mut seen = Vec::new();
    writer.await.unwrap();
    let size = tree_size(&mut audrey).await;
    read_watch(&mut stream, size, &mut seen).await;
    assert_eq!(
        seen,
        (0..size).collect::<Vec<_>>(),
        "every event once, in order"
    );

    // The server restarts; the consumer resumes after the last sequence it saw.
    server.stop().await;
    assert!(
        matches!(stream.message().await, Ok(None) | Err(_)),
        "the stream ends when the server stops"
    );
    let server = Server::start(config).await;
    let mut audrey = Client::connect(server.endpoint(), key("audrey"))
        .await
        .unwrap();
    let mut alice = Client::connect(server.endpoint(), key("alice"))
        .await
        .unwrap();
    let mut stream = watch(&mut audrey, seen.last().unwrap() + 1).await;
    create(&mut alice, "after-", 40).await;
    let size = tree_size(&mut audrey).await;
    read_watch(&mut stream, size, &mut seen).await;
    assert_eq!(
        seen,
        (0..size).collect::<Vec<_>>(),
        "no gap, no duplicate across the restart"
    );
    server.stop().await;
}

fn hashes(proof: &[Vec<u8>]) -> Vec<[u8; 32]> {
    proof
        .iter()
        .map(|h| h.as_slice().try_into().unwrap())
        .collect()
}

/// Every proof the server serves verifies against roots computed independently from the
/// entries: inclusion for every entry at its own size and at the latest, consistency between
/// every size and the latest and between neighbouring sizes, for every tree size up to ~260.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_proof_verifies_for_every_tree_size() {
    use promptledger::ledger::merkle::{self, MemoryTree};
    use promptledger::proto::ledger::v1 as lpb;
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, _, server, _admin) =
        started(tmp.path(), &[("alice", "author"), ("audrey", "auditor")]).await;
    let mut alice = Client::connect(server.endpoint(), key("alice"))
        .await
        .unwrap();
    create(&mut alice, "p", 256).await;
    let mut audrey = Client::connect(server.endpoint(), key("audrey"))
        .await
        .unwrap();
    let size = tree_size(&mut audrey).await;
    assert!(size >= 260);

    // The leaves, fetched once, and every prefix root computed from them.
    let mut leaves = Vec::new();
    for seq in 0..size {
        let request = audrey
            .authorized(lpb::GetEntryRequest {
                sequence: seq,
                tree_size: 0,
            })
            .await
            .unwrap();
        let e = audrey
            .ledger()
            .get_entry(request)
            .await
            .unwrap()
            .into_inner();
        leaves.push(merkle::leaf_hash(&e.entry));
    }
    let roots: Vec<[u8; 32]> = (0..=size)
        .map(|n| MemoryTree::from_leaf_hashes(leaves[..n as usize].iter().copied()).root())
        .collect();
    let mut checked = 0;
    for n in 1..=size {
        for seq in [0, n / 2, n - 1] {
            let request = audrey
                .authorized(lpb::GetEntryRequest {
                    sequence: seq,
                    tree_size: n,
                })
                .await
                .unwrap();
            let e = audrey
                .ledger()
                .get_entry(request)
                .await
                .unwrap()
                .into_inner();
            assert_eq!(e.tree_size, n);
            merkle::verify_inclusion(
                &leaves[seq as usize],
                seq,
                n,
                &hashes(&e.inclusion_proof),
                &roots[n as usize],
            )
            .unwrap_or_else(|err| panic!("inclusion of {seq} in {n}: {err}"));
            checked += 1;
        }
        for m in [1, n / 2, n - 1].into_iter().filter(|&m| m >= 1) {
            for new in [n, size] {
                let p = audrey
                    .ledger()
                    .get_consistency_proof(lpb::GetConsistencyProofRequest {
                        old_tree_size: m,
                        new_tree_size: new,
                    })
                    .await
                    .unwrap()
                    .into_inner();
                merkle::verify_consistency(
                    m,
                    new,
                    &roots[m as usize],
                    &roots[new as usize],
                    &hashes(&p.proof),
                )
                .unwrap_or_else(|err| panic!("consistency {m} -> {new}: {err}"));
                checked += 1;
            }
        }
    }
    assert!(checked > 2000, "{checked} proofs");
    // A proof beyond the log is refused, not invented.
    let beyond = audrey
        .ledger()
        .get_consistency_proof(lpb::GetConsistencyProofRequest {
            old_tree_size: 1,
            new_tree_size: size + 1,
        })
        .await;
    let status = beyond.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("new_tree_size")
            && status
                .message()
                .contains(&format!("latest tree size {size}")),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_names_every_change_between_two_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let (_dir, _, server, _admin) = started(tmp.path(), &[("alice", "author")]).await;
    let mut alice = Client::connect(server.endpoint(), key("alice"))
        .await
        .unwrap();
    alice
        .submit(Action::CreatePrompt {
            prompt: "support/d".into(),
            description: String::new(),
        })
        .await
        .unwrap();
    alice
        .submit(commit("support/d", None, "Hello {{customer}}\nBye"))
        .await
        .unwrap();
    let template = "Hi {{customer}} about {{order}}\nBye";
    let mut parameters = std::collections::BTreeMap::new();
    parameters.insert("temperature".to_owned(), serde_json::json!(0.7));
    parameters.insert("max_tokens".to_owned(), serde_json::json!(256));
    let variables = vec!["customer".to_owned(), "order".to_owned()];
    alice
        .submit(Action::CommitVersion {
            prompt: "support/d".into(),
            parent_version: Some(1),
            template: template.into(),
            model: "gpt-4.1".into(),
            content_hash: promptledger::registry::model::content_hash(
                template,
                "gpt-4.1",
                &parameters,
                &variables,
            ),
            parameters,
            variables,
            message: "ask for the order".into(),
        })
        .await
        .unwrap();
    let request = alice
        .authorized(pb::DiffVersionsRequest {
            prompt: "support/d".into(),
            from_version: 1,
            to_version: 2,
        })
        .await
        .unwrap();
    let d = alice
        .registry()
        .diff_versions(request)
        .await
        .unwrap()
        .into_inner();
    assert!(d.model_changed);
    let changes: Vec<(&str, &str, &str)> = d
        .parameters
        .iter()
        .map(|p| (p.key.as_str(), p.from_json.as_str(), p.to_json.as_str()))
        .collect();
    assert_eq!(
        changes,
        [("max_tokens", "", "256"), ("temperature", "0.2", "0.7")]
    );
    assert_eq!(d.variables_added, ["order"]);
    assert!(d.variables_removed.is_empty());
    assert!(
        d.template_diff
            .contains("-Hello {{customer}}\n+Hi {{customer}} about {{order}}\n"),
        "{}",
        d.template_diff
    );
    assert!(d.template_diff.contains(" Bye"), "{}", d.template_diff);
    let request = alice
        .authorized(pb::DiffVersionsRequest {
            prompt: "support/d".into(),
            from_version: 1,
            to_version: 3,
        })
        .await
        .unwrap();
    assert_eq!(
        alice
            .registry()
            .diff_versions(request)
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    server.stop().await;
}
