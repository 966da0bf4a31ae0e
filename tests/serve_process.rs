//! `promptledger serve` as a real process: SIGTERM under write load loses no acknowledged write
//! and exits 0; settings come from defaults, then the config file, then the environment, then
//! flags.

mod common;

use common::{free_port, key, serve_process, wait_serving};
use promptledger::client::{sign_statement, Client};
use promptledger::keyfile;
use promptledger::node::{self, DataDir};
use promptledger::proto::registry::v1 as pb;
use promptledger::registry::statement::{Action, Statement};
use promptledger::storage::Store;
use std::time::Duration;
use tonic::Code;

async fn author(dir: &DataDir, endpoint: &str) -> Client {
    let mut admin = Client::connect(
        endpoint.to_owned(),
        keyfile::read_key(&dir.admin_key()).unwrap(),
    )
    .await
    .unwrap();
    let k = key("writer");
    admin
        .submit(Action::RegisterActor {
            name: "writer".into(),
            key: k.public().to_vkey(),
            roles: vec!["author".into()],
        })
        .await
        .unwrap();
    Client::connect(endpoint.to_owned(), k).await.unwrap()
}

fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_writes_and_loses_no_acknowledged_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let (mut child, endpoint) = serve_process(&dir.root, &[], &[]).await;
    author(&dir, &endpoint).await;

    // Eight writers create prompts as fast as they are acknowledged.
    let mut writers = Vec::new();
    for w in 0..8 {
        let endpoint = endpoint.clone();
        writers.push(tokio::spawn(async move {
            let mut c = Client::connect(endpoint, key("writer")).await.unwrap();
            let mut acked = Vec::new();
            for i in 0.. {
                let prompt = format!("w{w}/p{i}");
                let action = Action::CreatePrompt {
                    prompt: prompt.clone(),
                    description: String::new(),
                };
                match c.submit(action).await {
                    Ok(r) => acked.push((r.sequence, prompt)),
                    Err(_) => break, // the server is going away
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sigterm(&child);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    assert!(
        acked.len() > 50,
        "load was applied: {} acknowledged",
        acked.len()
    );

    // Every acknowledged write is in the log, at its sequence number, and the log verifies.
    let verified = node::verify_dir(&dir, None, None).unwrap();
    let store = Store::open_read_only(&dir.db()).unwrap();
    for (seq, prompt) in &acked {
        assert!(
            *seq < verified.checkpoint.size,
            "acknowledged {seq} is missing"
        );
        let entry =
            promptledger::ledger::entry::Entry::decode(&store.entry(*seq).unwrap().unwrap())
                .unwrap();
        let st = Statement::from_payload(&entry.envelope.payload).unwrap();
        assert_eq!(st.action.prompt(), Some(prompt.as_str()), "entry {seq}");
    }
    drop(store);
    let report = node::rebuild(&dir).unwrap();
    assert!(report.consistent(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_defaults_then_file_then_environment_then_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let config = tmp.path().join("promptledger.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{file_port}\"\nsession_ttl_secs = 100\nclock_skew_secs = 50\nmax_payload_bytes = 2000\n"
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_promptledger"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(&dir.root)
        .args(["--listen", &format!("127.0.0.1:{flag_port}")])
        .args(["--max-payload-bytes", "4000"])
        .env("PROMPTLEDGER_LISTEN", format!("127.0.0.1:{env_port}"))
        .env("PROMPTLEDGER_SESSION_TTL_SECS", "200")
        .env("PROMPTLEDGER_MAX_PAYLOAD_BYTES", "3000")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // listen: the flag wins over environment and file.
    let endpoint = format!("http://127.0.0.1:{flag_port}");
    wait_serving(&endpoint).await;
    for port in [file_port, env_port] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "nothing listens on {port}"
        );
    }
    let mut c = author(&dir, &endpoint).await;

    // session_ttl_secs: the environment (200) wins over the file (100).
    let statement = Some(c.sign(Action::OpenSession {}));
    let s = c
        .registry()
        .create_session(pb::CreateSessionRequest { statement })
        .await
        .unwrap()
        .into_inner();
    let ttl = s.expires_at_ms - promptledger::storage::writer::system_clock_ms();
    assert!((195_000..=200_000).contains(&ttl), "session lives {ttl} ms");

    // max_payload_bytes: the flag (4000) wins over the environment (3000) and the file (2000).
    let sized = |n: usize| Action::CreatePrompt {
        prompt: format!("p{n}"),
        description: "x".repeat(n),
    };
    c.submit(sized(3500)).await.unwrap();
    let refused = c.submit(sized(4500)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");

    // clock_skew_secs: only the file sets it (50, not the default 300).
    let stale = Statement {
        ledger_id: c.ledger_id().to_owned(),
        actor: "writer".into(),
        issued_at_ms: promptledger::storage::writer::system_clock_ms() - 100_000,
        nonce: "stale".into(),
        action: Action::CreatePrompt {
            prompt: "stale".into(),
            description: String::new(),
        },
    };
    let refused = c
        .registry()
        .create_prompt(pb::CreatePromptRequest {
            statement: Some(sign_statement(&stale, &key("writer"))),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("clock"), "{}", refused.message());

    child.kill().unwrap();
    child.wait().unwrap();
}
