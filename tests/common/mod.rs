//! Helpers shared by the end-to-end tests: an in-process server on port 0, deterministic test
//! keys, and version statements.
#![allow(dead_code)] // each test binary uses a different part

use promptledger::ledger::keys::KeyPair;
use promptledger::proto::ledger::v1::GetCheckpointRequest;
use promptledger::registry::model::content_hash;
use promptledger::registry::statement::Action;
use promptledger::server::{self, registry::Clock, Config};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokio::sync::oneshot;

/// `promptledger serve` in this process, on a free loopback port.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Starts serving `config` (its `listen` is ignored) and waits until it answers.
    pub async fn start(config: Config) -> Server {
        Self::start_with_clock(config, None).await
    }

    /// Same, with an injected clock.
    pub async fn start_with_clock(config: Config, clock: Option<Clock>) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            match clock {
                Some(clock) => server::serve_with_clock(config, listener, shutdown, clock).await,
                None => server::serve(config, listener, shutdown).await,
            }
            .unwrap();
        });
        wait_serving(&format!("http://{addr}")).await;
        Server {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// Waits until a server at `endpoint` answers (on first start it creates the ledger first).
pub async fn wait_serving(endpoint: &str) {
    use promptledger::proto::ledger::v1::ledger_service_client::LedgerServiceClient;
    for _ in 0..300 {
        if let Ok(mut c) = LedgerServiceClient::connect(endpoint.to_owned()).await {
            if c.get_checkpoint(GetCheckpointRequest {}).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no server at {endpoint}");
}

/// The ledger's size in its latest checkpoint.
pub async fn tree_size(c: &mut promptledger::client::Client) -> u64 {
    c.ledger()
        .get_checkpoint(GetCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
        .tree_size
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary serving `data_dir` on a free port, with `args` and `envs` added; waits
/// until it answers. Returns the child and its endpoint.
pub async fn serve_process(
    data_dir: &std::path::Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (std::process::Child, String) {
    let port = free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_promptledger"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    wait_serving(&endpoint).await;
    (child, endpoint)
}

/// A deterministic key named `name`.
pub fn key(name: &str) -> KeyPair {
    let mut seed = [0u8; 32];
    seed[..name.len().min(32)].copy_from_slice(&name.as_bytes()[..name.len().min(32)]);
    KeyPair::from_seed(name, &seed).unwrap()
}

/// A version of `prompt` with `template` on top of `parent`.
pub fn commit(prompt: &str, parent: Option<u64>, template: &str) -> Action {
    let mut parameters = BTreeMap::new();
    parameters.insert("temperature".to_owned(), serde_json::json!(0.2));
    let variables = vec!["customer".to_owned()];
    Action::CommitVersion {
        prompt: prompt.into(),
        parent_version: parent,
        template: template.into(),
        model: "gpt-4o".into(),
        content_hash: content_hash(template, "gpt-4o", &parameters, &variables),
        parameters,
        variables,
        message: "edit".into(),
    }
}

/// The content hash [`commit`] gives `template`.
pub fn hash_of(template: &str) -> String {
    let Action::CommitVersion { content_hash, .. } = commit("p", None, template) else {
        unreachable!()
    };
    content_hash
}
