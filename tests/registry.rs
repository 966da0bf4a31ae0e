//! End to end: the real server (`serve` on port 0) and a real tonic client.

mod common;

use common::{commit, hash_of, key, tree_size, Server};
use promptledger::client::{sign_statement, Client};
use promptledger::keyfile;
use promptledger::ledger::keys::KeyPair;
use promptledger::node::{self, DataDir};
use promptledger::proto::registry::v1 as pb;
use promptledger::registry::model::Environment;
use promptledger::registry::statement::{Action, Statement};
use promptledger::server::{self, Config};
use tokio::sync::oneshot;
use tonic::Code;

/// The registry's API, not the gates (tests/governance.rs), is tested here: the shipped roles,
/// and gates that ask for nothing but the environment order.
fn open_gates_policy(data_dir: &std::path::Path) -> std::path::PathBuf {
    let policy_dir = data_dir.with_extension("policy");
    std::fs::create_dir_all(&policy_dir).unwrap();
    let shipped = promptledger::policy::PolicyFiles::builtin();
    std::fs::write(policy_dir.join("model.conf"), shipped.model).unwrap();
    std::fs::write(policy_dir.join("policy.csv"), shipped.policy).unwrap();
    std::fs::write(policy_dir.join("gates.toml"), "").unwrap();
    policy_dir
}

async fn start(data_dir: &std::path::Path, max_payload_bytes: usize) -> Server {
    Server::start(Config {
        data_dir: data_dir.to_owned(),
        max_payload_bytes,
        policy_dir: Some(open_gates_policy(data_dir)),
        ..Config::default()
    })
    .await
}

struct World {
    _tmp: tempfile::TempDir,
    dir: DataDir,
    server: Server,
    admin: KeyPair,
}

async fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let server = start(&dir.root, 64 * 1024).await; // inits the ledger on first start
    let admin = keyfile::read_key(&dir.admin_key()).unwrap();
    World {
        _tmp: tmp,
        dir,
        server,
        admin,
    }
}

async fn client(w: &World, key: &KeyPair) -> Client {
    Client::connect(w.server.endpoint(), key.clone())
        .await
        .unwrap()
}

async fn register(admin: &mut Client, k: &KeyPair, roles: &[&str]) {
    admin
        .submit(Action::RegisterActor {
            name: k.name().into(),
            key: k.public().to_vkey(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        })
        .await
        .unwrap();
}

/// Registers the usual cast and returns their clients.
struct Cast {
    admin: Client,
    alice: Client,
    bob: Client,
    ci: Client,
    dora: Client,
    svc: Client,
    audrey: Client,
}

async fn cast(w: &World) -> Cast {
    let mut admin = client(w, &w.admin).await;
    let people = [
        ("alice", "author"),
        ("bob", "reviewer"),
        ("ci-main", "ci"),
        ("dora", "deployer"),
        ("checkout-svc", "service"),
        ("audrey", "auditor"),
    ];
    for (name, role) in people {
        register(&mut admin, &key(name), &[role]).await;
    }
    Cast {
        admin,
        alice: client(w, &key("alice")).await,
        bob: client(w, &key("bob")).await,
        ci: client(w, &key("ci-main")).await,
        dora: client(w, &key("dora")).await,
        svc: client(w, &key("checkout-svc")).await,
        audrey: client(w, &key("audrey")).await,
    }
}

/// Creates `prompt` and commits its version 1 (template "v1").
async fn create_with_v1(author: &mut Client, prompt: &str) {
    author
        .submit(Action::CreatePrompt {
            prompt: prompt.into(),
            description: String::new(),
        })
        .await
        .unwrap();
    author.submit(commit(prompt, None, "v1")).await.unwrap();
}

fn get(prompt: &str, env: &str) -> pb::GetPromptRequest {
    pb::GetPromptRequest {
        prompt: prompt.into(),
        environment: env.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_life_of_a_prompt() {
    let w = world().await;
    let mut c = cast(&w).await;
    c.alice
        .submit(Action::CreatePrompt {
            prompt: "support/greeting".into(),
            description: "first line".into(),
        })
        .await
        .unwrap();
    c.alice
        .submit(commit("support/greeting", None, "Hello {{customer}}"))
        .await
        .unwrap();
    let v2 = c
        .alice
        .submit(commit(
            "support/greeting",
            Some(1),
            "Hi {{customer}}, how can I help?",
        ))
        .await
        .unwrap();
    assert!(v2.sequence > 0 && v2.leaf_hash.len() == 32);
    for (version, template) in [
        (1, "Hello {{customer}}"),
        (2, "Hi {{customer}}, how can I help?"),
    ] {
        c.ci.submit(Action::RecordEvaluation {
            prompt: "support/greeting".into(),
            version,
            content_hash: hash_of(template),
            suite: "tone".into(),
            score: 0.93,
            threshold: 0.9,
            passed: true,
            evaluator: "ci-main".into(),
            evidence_digest: "sha256:00".into(),
            evidence_uri: "https://ci.example/run/1".into(),
        })
        .await
        .unwrap();
        for env in Environment::ALL {
            c.bob
                .submit(Action::ApproveVersion {
                    prompt: "support/greeting".into(),
                    version,
                    content_hash: hash_of(template),
                    environment: env,
                })
                .await
                .unwrap();
        }
    }
    for version in [1, 2] {
        for env in Environment::ALL {
            c.dora
                .submit(Action::PromoteVersion {
                    prompt: "support/greeting".into(),
                    version,
                    environment: env,
                    rollout: vec![],
                    expected_deployment: None,
                })
                .await
                .unwrap();
        }
    }
    // The service fetches what is live in production, with a reference to log.
    let got = c
        .svc
        .get_prompt(get("support/greeting", "production"))
        .await
        .unwrap();
    assert_eq!(got.template, "Hi {{customer}}, how can I help?");
    let reference = got.reference.unwrap();
    assert_eq!(
        (reference.version, reference.environment.as_str()),
        (2, "production")
    );
    assert_eq!(
        reference.content_hash,
        hash_of("Hi {{customer}}, how can I help?")
    );
    assert!(reference.deployment_sequence > v2.sequence);

    // Roll production back to version 1 (live there before), with a reason.
    let rb = c
        .dora
        .submit(Action::RollbackPrompt {
            prompt: "support/greeting".into(),
            version: 1,
            environment: Environment::Production,
            reason: "v2 confuses customers".into(),
            expected_deployment: None,
        })
        .await
        .unwrap();
    let got = c
        .svc
        .get_prompt(get("support/greeting", "production"))
        .await
        .unwrap();
    assert_eq!(got.template, "Hello {{customer}}");
    assert_eq!(got.reference.unwrap().deployment_sequence, rb.sequence);

    // The auditor reads everything; the service only the deployed prompt.
    let req = c
        .audrey
        .authorized(pb::ListPromptHistoryRequest {
            prompt: "support/greeting".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let history = c
        .audrey
        .registry()
        .list_prompt_history(req)
        .await
        .unwrap()
        .into_inner()
        .events;
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"create_prompt"));
    assert_eq!(kinds.last(), Some(&"rollback_prompt"));
    assert_eq!(kinds.iter().filter(|k| **k == "promote_version").count(), 6);
    let req = c
        .audrey
        .authorized(pb::ListVersionsRequest {
            prompt: "support/greeting".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let page1 = c
        .audrey
        .registry()
        .list_versions(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page1.versions.len(), 1);
    assert_eq!(page1.versions[0].author, "alice");
    let req = c
        .audrey
        .authorized(pb::ListVersionsRequest {
            prompt: "support/greeting".into(),
            page_size: 1,
            page_token: page1.next_page_token,
        })
        .await
        .unwrap();
    let page2 = c
        .audrey
        .registry()
        .list_versions(req)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (page2.versions[0].version, page2.versions[0].parent_version),
        (2, 1)
    );
    assert!(page2.next_page_token.is_empty());
    let req = c
        .svc
        .authorized(pb::ListPromptsRequest::default())
        .await
        .unwrap();
    assert_eq!(
        c.svc.registry().list_prompts(req).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let by_version = pb::GetPromptRequest {
        prompt: "support/greeting".into(),
        version: 2,
        ..Default::default()
    };
    assert_eq!(
        c.svc
            .get_prompt(by_version.clone())
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    assert_eq!(
        c.audrey
            .get_prompt(by_version)
            .await
            .unwrap()
            .reference
            .unwrap()
            .version,
        2
    );

    // The log verifies offline and a rebuild from the log alone gives the same state root.
    w.server.stop().await;
    let verified = node::verify_dir(&w.dir, None, None).unwrap();
    assert!(verified.checkpoint.state_root().is_some());
    let report = node::rebuild(&w.dir).unwrap();
    assert!(report.consistent(), "{report:?}");
    assert_eq!(Some(report.replayed), verified.checkpoint.state_root());
    drop(c.admin);
}

/// Asserts the call failed with `code`, a message containing `needle`, and that the ledger did
/// not grow.
async fn refused<T: std::fmt::Debug>(
    observer: &mut Client,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    code: Code,
    needle: &str,
) {
    let before = tree_size(observer).await;
    let status = call.await.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should mention {needle:?}",
        status.message()
    );
    assert_eq!(
        tree_size(observer).await,
        before,
        "a refused request wrote something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_status_and_writes_nothing() {
    let w = world().await;
    let mut c = cast(&w).await;
    create_with_v1(&mut c.alice, "p").await;
    let mut obs = client(&w, &w.admin).await;

    // INVALID_ARGUMENT, naming the field.
    let fut = c
        .alice
        .registry()
        .create_prompt(pb::CreatePromptRequest { statement: None });
    refused(&mut obs, fut, Code::InvalidArgument, "statement").await;
    let mut bad_json = c.alice.sign(Action::CreatePrompt {
        prompt: "q".into(),
        description: String::new(),
    });
    bad_json.payload = b"{not json".to_vec();
    let fut = c.alice.registry().create_prompt(pb::CreatePromptRequest {
        statement: Some(bad_json),
    });
    refused(&mut obs, fut, Code::InvalidArgument, "statement.payload").await;
    let wrong_kind = c.alice.sign(Action::CreatePrompt {
        prompt: "q".into(),
        description: String::new(),
    });
    let fut = c.alice.registry().commit_version(pb::CommitVersionRequest {
        statement: Some(wrong_kind),
    });
    refused(
        &mut obs,
        fut,
        Code::InvalidArgument,
        "statement.action.type",
    )
    .await;
    let fut = c.alice.submit(Action::CreatePrompt {
        prompt: "bad name!".into(),
        description: String::new(),
    });
    refused(&mut obs, fut, Code::InvalidArgument, "prompt").await;
    let mut wrong_hash = commit("p", Some(1), "v2");
    if let Action::CommitVersion { content_hash, .. } = &mut wrong_hash {
        *content_hash = "sha256:00".into();
    }
    refused(
        &mut obs,
        c.alice.submit(wrong_hash),
        Code::InvalidArgument,
        "content_hash",
    )
    .await;
    let other_ledger = Statement {
        ledger_id: "00".repeat(16),
        actor: "alice".into(),
        issued_at_ms: promptledger::storage::writer::system_clock_ms(),
        nonce: "n1".into(),
        action: Action::CreatePrompt {
            prompt: "q".into(),
            description: String::new(),
        },
    };
    let fut = c.alice.registry().create_prompt(pb::CreatePromptRequest {
        statement: Some(sign_statement(&other_ledger, &key("alice"))),
    });
    refused(&mut obs, fut, Code::InvalidArgument, "statement.ledger_id").await;

    // UNAUTHENTICATED: forged signature, unknown key, stale statement, no session.
    let mut forged = c.alice.sign(Action::CreatePrompt {
        prompt: "q".into(),
        description: String::new(),
    });
    forged.signatures[0].sig[5] ^= 1;
    let fut = c.alice.registry().create_prompt(pb::CreatePromptRequest {
        statement: Some(forged),
    });
    refused(&mut obs, fut, Code::Unauthenticated, "does not verify").await;
    let mut mallory = client(&w, &key("mallory")).await;
    refused(
        &mut obs,
        mallory.submit(Action::CreatePrompt {
            prompt: "q".into(),
            description: String::new(),
        }),
        Code::Unauthenticated,
        "mallory+",
    )
    .await;
    let stale = Statement {
        ledger_id: c.alice.ledger_id().to_owned(),
        actor: "alice".into(),
        issued_at_ms: promptledger::storage::writer::system_clock_ms() - 3_600_000,
        nonce: "stale".into(),
        action: Action::CreatePrompt {
            prompt: "q".into(),
            description: String::new(),
        },
    };
    let fut = c.alice.registry().create_prompt(pb::CreatePromptRequest {
        statement: Some(sign_statement(&stale, &key("alice"))),
    });
    refused(&mut obs, fut, Code::Unauthenticated, "clock").await;
    let fut = c.alice.registry().get_prompt(get("p", "dev"));
    refused(&mut obs, fut, Code::Unauthenticated, "authorization").await;

    // PERMISSION_DENIED names the roles needed.
    let fut = c.alice.submit(Action::PromoteVersion {
        prompt: "p".into(),
        version: 1,
        environment: Environment::Dev,
        rollout: vec![],
        expected_deployment: None,
    });
    refused(&mut obs, fut, Code::PermissionDenied, "may not promote").await;

    // NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED.
    refused(
        &mut obs,
        c.alice.submit(commit("nope", None, "x")),
        Code::NotFound,
        "prompt nope",
    )
    .await;
    refused(
        &mut obs,
        c.svc.get_prompt(get("p", "production")),
        Code::NotFound,
        "production",
    )
    .await;
    refused(
        &mut obs,
        c.alice.submit(Action::CreatePrompt {
            prompt: "p".into(),
            description: String::new(),
        }),
        Code::AlreadyExists,
        "prompt p",
    )
    .await;
    let fut = c.alice.submit(Action::ApproveVersion {
        prompt: "p".into(),
        version: 1,
        content_hash: hash_of("v1"),
        environment: Environment::Dev,
    });
    refused(&mut obs, fut, Code::PermissionDenied, "may not approve").await;
    let self_approval = Action::ApproveVersion {
        prompt: "p".into(),
        version: 1,
        content_hash: hash_of("v1"),
        environment: Environment::Dev,
    };
    // Someone who did not write v1 may approve it.
    c.ci.submit(self_approval).await.unwrap();
    // Four eyes: an actor who is both author and reviewer may not approve its own version.
    let eve = key("eve");
    register(&mut c.admin, &eve, &["author", "reviewer"]).await;
    let mut eve_client = client(&w, &eve).await;
    eve_client
        .submit(commit("p", Some(1), "v2 by eve"))
        .await
        .unwrap();
    let fut = eve_client.submit(Action::ApproveVersion {
        prompt: "p".into(),
        version: 2,
        content_hash: hash_of("v2 by eve"),
        environment: Environment::Dev,
    });
    refused(&mut obs, fut, Code::FailedPrecondition, "four eyes").await;
    let fut = c.dora.submit(Action::RollbackPrompt {
        prompt: "p".into(),
        version: 1,
        environment: Environment::Dev,
        reason: "r".into(),
        expected_deployment: None,
    });
    refused(&mut obs, fut, Code::FailedPrecondition, "was not live").await;
    let fut = c.alice.submit(commit("p", None, "v2 on a stale parent"));
    refused(&mut obs, fut, Code::Aborted, "current head is 2").await;

    // ALREADY_EXISTS for a nonce used by a different statement.
    let first = Statement {
        ledger_id: c.alice.ledger_id().to_owned(),
        actor: "alice".into(),
        issued_at_ms: promptledger::storage::writer::system_clock_ms(),
        nonce: "same-nonce".into(),
        action: Action::CreatePrompt {
            prompt: "n1".into(),
            description: String::new(),
        },
    };
    c.alice
        .registry()
        .create_prompt(pb::CreatePromptRequest {
            statement: Some(sign_statement(&first, &key("alice"))),
        })
        .await
        .unwrap();
    let second = Statement {
        action: Action::CreatePrompt {
            prompt: "n2".into(),
            description: String::new(),
        },
        ..first
    };
    let fut = c.alice.registry().create_prompt(pb::CreatePromptRequest {
        statement: Some(sign_statement(&second, &key("alice"))),
    });
    refused(&mut obs, fut, Code::AlreadyExists, "nonce").await;

    // RESOURCE_EXHAUSTED for an oversized payload (limit 64 KiB in this world).
    let fut = c.alice.submit(commit("p", Some(1), &"x".repeat(70 * 1024)));
    refused(&mut obs, fut, Code::ResourceExhausted, "statement.payload").await;

    // A revoked actor's key stops working at once.
    c.admin
        .submit(Action::RevokeActor {
            name: "bob".into(),
            reason: "left".into(),
        })
        .await
        .unwrap();
    let fut = c.bob.submit(Action::ApproveVersion {
        prompt: "p".into(),
        version: 1,
        content_hash: hash_of("v1"),
        environment: Environment::Staging,
    });
    refused(&mut obs, fut, Code::Unauthenticated, "bob+").await;
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_statement_returns_the_original_receipt_and_appends_nothing() {
    let w = world().await;
    let mut c = cast(&w).await;
    let signed = c.alice.sign(Action::CreatePrompt {
        prompt: "p".into(),
        description: String::new(),
    });
    let first = c
        .alice
        .registry()
        .create_prompt(pb::CreatePromptRequest {
            statement: Some(signed.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    let size = tree_size(&mut c.admin).await;
    let again = c
        .alice
        .registry()
        .create_prompt(pb::CreatePromptRequest {
            statement: Some(signed),
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(
        (again.sequence, &again.leaf_hash),
        (first.sequence, &first.leaf_hash)
    );
    assert!(again.duplicate && !first.duplicate);
    assert_eq!(tree_size(&mut c.admin).await, size);
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_on_one_parent_exactly_one_wins() {
    let w = world().await;
    let mut c = cast(&w).await;
    create_with_v1(&mut c.alice, "p").await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let statement = c
            .alice
            .sign(commit("p", Some(1), &format!("candidate {i}")));
        let mut registry = c.alice.registry().clone();
        tasks.push(tokio::spawn(async move {
            registry
                .commit_version(pb::CommitVersionRequest {
                    statement: Some(statement),
                })
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.into_inner().version, 2);
                wins += 1;
            }
            Err(s) => assert_eq!(s.code(), Code::Aborted, "{s:?}"),
        }
    }
    assert_eq!(wins, 1);
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_everything() {
    let w = world().await;
    let mut c = cast(&w).await;
    create_with_v1(&mut c.alice, "p").await;
    c.dora
        .submit(Action::PromoteVersion {
            prompt: "p".into(),
            version: 1,
            environment: Environment::Dev,
            rollout: vec![],
            expected_deployment: None,
        })
        .await
        .unwrap();
    let World {
        _tmp,
        dir,
        server,
        admin,
    } = w;
    let size_before = tree_size(&mut c.admin).await;
    server.stop().await;
    let server = start(&dir.root, 64 * 1024).await;
    let w = World {
        _tmp,
        dir,
        server,
        admin,
    };
    let mut svc = client(&w, &key("checkout-svc")).await;
    assert_eq!(
        svc.get_prompt(get("p", "dev")).await.unwrap().template,
        "v1"
    );
    let mut alice = client(&w, &key("alice")).await;
    assert_eq!(tree_size(&mut alice).await, size_before);
    let r = alice.submit(commit("p", Some(1), "v2")).await.unwrap();
    assert_eq!(r.sequence, size_before);
    w.server.stop().await;
    assert!(node::rebuild(&w.dir).unwrap().consistent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checking_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, ServerReflectionRequest,
    };

    let w = world().await;
    let channel = tonic::transport::Channel::from_shared(w.server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in [
        "promptledger.registry.v1.RegistryService",
        "promptledger.ledger.v1.LedgerService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    // What `grpcurl -plaintext host:port list` asks.
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("{reply:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "promptledger.registry.v1.RegistryService",
        "promptledger.ledger.v1.LedgerService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    w.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_same_api_and_refuses_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key_pem) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&key_pem)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let dir = DataDir::new(tmp.path().join("data"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = Config {
        data_dir: dir.root.clone(),
        tls_cert: Some(cert.clone()),
        tls_key: Some(key_pem),
        ..Config::default()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server::serve(config, listener, async {
        let _ = stopped.await;
    }));
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(&cert).unwrap(),
        ))
        .domain_name("localhost");
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let mut connected = Err(tonic::Status::unavailable("not tried"));
    for _ in 0..100 {
        if dir.admin_key().exists() {
            connected = Client::connect_endpoint(
                endpoint.clone(),
                keyfile::read_key(&dir.admin_key()).unwrap(),
            )
            .await;
            if connected.is_ok() {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut admin = connected.expect("TLS client connects");
    let alice = key("alice");
    admin
        .submit(Action::RegisterActor {
            name: "alice".into(),
            key: alice.public().to_vkey(),
            roles: vec!["author".into()],
        })
        .await
        .unwrap();
    assert!(tree_size(&mut admin).await >= 2);
    assert!(
        Client::connect(format!("http://{addr}"), alice)
            .await
            .is_err(),
        "plaintext must not work against TLS"
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_stops_signing_and_the_new_one_works() {
    let w = world().await;
    let mut c = cast(&w).await;
    c.alice
        .submit(Action::CreatePrompt {
            prompt: "p".into(),
            description: String::new(),
        })
        .await
        .unwrap();
    let new_alice = KeyPair::from_seed("alice", &[99; 32]).unwrap();
    // The actor rotates its own key, signing with the old one.
    c.alice
        .submit(Action::RotateKey {
            name: "alice".into(),
            new_key: new_alice.public().to_vkey(),
        })
        .await
        .unwrap();
    let mut obs = client(&w, &w.admin).await;
    let fut = c
        .alice
        .submit(commit("p", None, "signed with the retired key"));
    refused(&mut obs, fut, Code::Unauthenticated, "alice+").await;
    let mut fresh = client(&w, &new_alice).await;
    fresh
        .submit(commit("p", None, "signed with the new key"))
        .await
        .unwrap();
    w.server.stop().await;
    // Each signature was judged against the keys valid at its position in the log.
    node::verify_dir(&w.dir, None, None).unwrap();
    assert!(node::rebuild(&w.dir).unwrap().consistent());
}

/// The projection is read back row by row when a ledger opens: a damaged row or nonce is refused
/// with a clear error, never skipped (a skipped row would be a silently different registry).
#[test]
fn a_damaged_projection_row_or_nonce_stops_the_load() {
    use promptledger::registry::personality::Registry;
    use promptledger::storage::{Store, StoreError};
    let damages: [(&str, &[u8], &[u8], &str); 4] = [
        ("state", b"\xffnot a row key", b"{}", "state key"),
        ("state", b"a/admin", b"not json", "registry state"),
        ("nonces", b"admin\x00n1", b"short", "nonce"),
        ("nonces", b"no separator", &[0u8; 40], "nonce"),
    ];
    for (cf, key, value, what) in damages {
        let tmp = tempfile::tempdir().unwrap();
        let dir = promptledger::node::DataDir::new(tmp.path().join("ledger"));
        promptledger::node::init(&dir, promptledger::storage::writer::system_clock_ms()).unwrap();
        {
            let store = Store::open(&dir.db()).unwrap();
            let registry = Registry::load(&store).unwrap();
            assert!(registry.state().actor("admin").is_some(), "intact: loads");
            store.raw_put(cf, key, value).unwrap();
        }
        let store = Store::open(&dir.db()).unwrap();
        match Registry::load(&store) {
            Err(StoreError::Corrupt { what: got }) => assert_eq!(got, what, "{cf} damaged"),
            Err(e) => panic!("{cf} damaged: unexpected error {e}"),
            Ok(_) => panic!("{cf} damaged with {key:?}: loaded anyway"),
        }
    }
}
