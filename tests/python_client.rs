//! The Python example client (tools/python_client/client.py) commits a version and fetches it
//! against a real server: a stranger's implementation of our signing scheme, from docs/api.md.
//! Needs python3 with grpcio, grpcio-tools and cryptography (tools/setup.sh installs them).

use promptledger::client::Client;
use promptledger::keyfile;
use promptledger::ledger::keys::KeyPair;
use promptledger::node::DataDir;
use promptledger::proto::registry::v1 as pb;
use promptledger::registry::model::content_hash;
use promptledger::registry::statement::Action;
use promptledger::server::{self, Config};
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_commits_and_fetches_a_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let data_dir = dir.root.clone();
    tokio::task::spawn_blocking(move || {
        promptledger::node::init(
            &DataDir::new(data_dir),
            promptledger::storage::writer::system_clock_ms(),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = Config {
        data_dir: dir.root.clone(),
        ..Config::default()
    };
    let server = tokio::spawn(server::serve(config, listener, async {
        let _ = stopped.await;
    }));

    let admin_key = keyfile::read_key(&dir.admin_key()).unwrap();
    let mut admin = Client::connect(format!("http://{addr}"), admin_key)
        .await
        .unwrap();
    let alice = KeyPair::from_seed("alice", &[42; 32]).unwrap();
    admin
        .submit(Action::RegisterActor {
            name: "alice".into(),
            key: alice.public().to_vkey(),
            roles: vec!["author".into()],
        })
        .await
        .unwrap();
    let mut alice_client = Client::connect(format!("http://{addr}"), alice.clone())
        .await
        .unwrap();
    alice_client
        .submit(Action::CreatePrompt {
            prompt: "support/greeting".into(),
            description: String::new(),
        })
        .await
        .unwrap();
    let key_file = tmp.path().join("alice.key");
    keyfile::write_key(&key_file, &alice).unwrap();

    let template = "Grüß dich, {{customer}}!";
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/python_client/client.py");
    let endpoint = addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .args(["--endpoint", &endpoint, "--key-file"])
            .arg(&key_file)
            .args([
                "--prompt",
                "support/greeting",
                "--template",
                template,
                "--variables",
                "customer",
            ])
            .output()
            .expect("python3 runs")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python client failed: {stderr}");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    // The server accepted Python's content hash and signature; both sides agree on the hash.
    let mut params = BTreeMap::new();
    params.insert("temperature".to_owned(), serde_json::json!(0.2));
    let want = content_hash(template, "gpt-4o", &params, &["customer".to_owned()]);
    assert_eq!(result["version"], 1);
    assert_eq!(result["content_hash"], want.as_str());
    assert_eq!(result["local_content_hash"], want.as_str());
    assert_eq!(result["template"], template);
    assert_eq!(result["reference"]["version"], 1);

    let fetched = alice_client
        .get_prompt(pb::GetPromptRequest {
            prompt: "support/greeting".into(),
            version: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(fetched.template, template);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
