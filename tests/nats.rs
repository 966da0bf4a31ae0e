//! The NATS JetStream outbox against a real `nats-server` (from PATH; `tools/setup.sh` installs
//! Debian's package) that each test starts itself on a free loopback port, in a temp dir, and
//! stops and restarts as the test needs.

mod common;

use async_nats::jetstream;
use common::{free_port, Server};
use futures_util::StreamExt;
use promptledger::client::Client;
use promptledger::keyfile;
use promptledger::ledger::keys::PublicKey;
use promptledger::ledger::merkle;
use promptledger::node::DataDir;
use promptledger::proto::ledger::v1::{GetStatusRequest, GetStatusResponse};
use promptledger::publish::follow::Follower;
use promptledger::publish::{header, NatsConfig};
use promptledger::registry::statement::Action;
use promptledger::server::Config;
use promptledger::storage::Store;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A nats-server with JetStream, owned by the test.
struct Nats {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
}

impl Nats {
    fn start(store: &Path) -> Nats {
        Nats::start_on(store, free_port())
    }

    fn start_on(store: &Path, port: u16) -> Nats {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH (tools/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats {
            child: Some(child),
            port,
            store: store.to_owned(),
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn restart(&mut self) {
        self.kill();
        *self = Nats::start_on(&self.store.clone(), self.port);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn start(data_dir: &Path, nats_url: &str) -> Server {
    Server::start(Config {
        data_dir: data_dir.to_owned(),
        nats: NatsConfig {
            url: Some(nats_url.to_owned()),
            ..NatsConfig::default()
        },
        ..Config::default()
    })
    .await
}

async fn status(endpoint: &str) -> GetStatusResponse {
    use promptledger::proto::ledger::v1::ledger_service_client::LedgerServiceClient;
    LedgerServiceClient::connect(endpoint.to_owned())
        .await
        .unwrap()
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Waits until everything committed is acknowledged by JetStream.
async fn caught_up(endpoint: &str, within: Duration) -> GetStatusResponse {
    let deadline = Instant::now() + within;
    loop {
        let s = status(endpoint).await;
        let n = s.nats.clone().expect("publishing is on");
        if n.lag_entries == 0 && n.published == s.size && n.checkpoint_size == s.size {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "publisher did not catch up: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client of an author (the admin registers it the first time; admins do not write prompts).
async fn author(dir: &DataDir, endpoint: &str) -> Client {
    let mut admin = Client::connect(
        endpoint.to_owned(),
        keyfile::read_key(&dir.admin_key()).unwrap(),
    )
    .await
    .unwrap();
    let writer = common::key("writer");
    let registered = admin
        .submit(Action::RegisterActor {
            name: "writer".into(),
            key: writer.public().to_vkey(),
            roles: vec!["author".into()],
        })
        .await;
    if let Err(e) = registered {
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e}");
    }
    Client::connect(endpoint.to_owned(), writer).await.unwrap()
}

/// `count` prompt creations (names with a '.', to exercise subject encoding), all acknowledged.
async fn write(c: &mut Client, from: usize, count: usize) {
    for i in from..from + count {
        c.submit(Action::CreatePrompt {
            prompt: format!("team.a/p{i}"),
            description: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
    }
}

struct Read {
    /// (subject, headers, payload) of every message, in stream order.
    messages: Vec<(String, async_nats::HeaderMap, Vec<u8>)>,
}

/// Every message of the stream, in order.
async fn read_stream(url: &str, stream: &str) -> Read {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let mut s = js.get_stream(stream).await.unwrap();
    let end = s.info().await.unwrap().state.last_sequence;
    let mut messages = Vec::new();
    if end == 0 {
        return Read { messages };
    }
    let consumer = s
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut stream_messages = consumer.messages().await.unwrap();
    while let Some(m) = stream_messages.next().await {
        let m = m.unwrap();
        let seq = m.info().unwrap().stream_sequence;
        messages.push((
            m.subject.to_string(),
            m.headers.clone().unwrap_or_default(),
            m.payload.to_vec(),
        ));
        if seq >= end {
            break;
        }
    }
    Read { messages }
}

impl Read {
    /// Feeds everything to a [`Follower`]: the stream alone must verify as the log, from 0.
    fn verify(&self, key: &PublicKey) -> (u64, u64) {
        let mut f = Follower::new(Some(key.clone()));
        for (subject, h, payload) in &self.messages {
            let get = |n: &str| h.get(n).map(|v| v.as_str().to_owned());
            if let Some(seq) = get(header::SEQ) {
                f.event(
                    seq.parse().unwrap(),
                    &get(header::LEAF_HASH).unwrap(),
                    payload,
                )
                .unwrap_or_else(|e| panic!("{subject}: {e}"));
            } else {
                assert!(subject.ends_with(".checkpoints"), "{subject}");
                f.checkpoint(payload)
                    .unwrap_or_else(|e| panic!("{subject}: {e}"));
            }
        }
        (f.next(), f.checkpoints_verified())
    }

    /// Asserts the stream's events are exactly 0..n, each once, in order (names the first
    /// difference rather than printing thousands of numbers).
    fn assert_exactly(&self, n: u64) {
        let seqs = self.event_seqs();
        if let Some(i) = (0..seqs.len()).find(|&i| seqs[i] != i as u64) {
            panic!(
                "stream position {i} holds entry {} where entry {i} belongs (neighbours {:?})",
                seqs[i],
                &seqs[i.saturating_sub(3)..(i + 3).min(seqs.len())]
            );
        }
        assert_eq!(seqs.len() as u64, n, "the stream ends early");
    }

    fn event_seqs(&self) -> Vec<u64> {
        self.messages
            .iter()
            .filter_map(|(_, h, _)| h.get(header::SEQ).map(|v| v.as_str().parse().unwrap()))
            .collect()
    }
}

fn ledger_key(dir: &DataDir) -> PublicKey {
    PublicKey::from_vkey(std::fs::read_to_string(dir.ledger_pub()).unwrap().trim()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_event_arrives_in_order_with_its_headers_and_stored_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(&tmp.path().join("nats"));
    let dir = DataDir::new(tmp.path().join("data"));
    let server = start(&dir.root, &nats.url()).await;
    let mut c = author(&dir, &server.endpoint()).await;
    write(&mut c, 0, 40).await;
    let s = caught_up(&server.endpoint(), Duration::from_secs(20)).await;
    assert_eq!(
        s.size, 43,
        "genesis, policy, the author's registration + 40 writes"
    );
    let ledger_id = c.ledger_id().to_owned();
    drop(c);
    server.stop().await;

    let read = read_stream(&nats.url(), "PROMPTLEDGER").await;
    read.assert_exactly(43);
    let store = Store::open_read_only(&dir.db()).unwrap();
    for (subject, h, payload) in &read.messages {
        let get = |n: &str| h.get(n).map(|v| v.as_str().to_owned());
        let Some(seq) = get(header::SEQ) else {
            assert_eq!(subject, &format!("promptledger.{ledger_id}.checkpoints"));
            assert!(get(header::CHECKPOINT_SIZE).is_some());
            continue;
        };
        let seq: u64 = seq.parse().unwrap();
        let stored = store.entry(seq).unwrap().unwrap();
        assert_eq!(payload, &stored, "entry {seq}: the stored bytes, exactly");
        assert_eq!(get(header::MSG_ID).unwrap(), format!("{ledger_id}:{seq}"));
        assert_eq!(get(header::LEDGER).unwrap(), ledger_id);
        assert_eq!(
            get(header::LEAF_HASH).unwrap(),
            hex::encode(merkle::leaf_hash(&stored))
        );
        let expected_subject = match seq {
            0 => format!("promptledger.{ledger_id}.events.genesis.-"),
            1 => format!("promptledger.{ledger_id}.events.set_policy.-"),
            2 => format!("promptledger.{ledger_id}.events.register_actor.-"),
            _ => {
                assert_eq!(get(header::KIND).unwrap(), "create_prompt");
                assert_eq!(get(header::PROMPT).unwrap(), format!("team.a/p{}", seq - 3));
                assert_eq!(get(header::ACTOR).unwrap(), "writer");
                format!(
                    "promptledger.{ledger_id}.events.create_prompt.team%2Ea/p{}",
                    seq - 3
                )
            }
        };
        assert_eq!(subject, &expected_subject);
    }
    let (next, checkpoints) = read.verify(&ledger_key(&dir));
    assert_eq!(next, 43);
    assert!(checkpoints >= 1, "the final checkpoint was published");

    // The consumer command: verifies the same stream and prints the events from --from on.
    let vkey = std::fs::read_to_string(dir.ledger_pub()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_promptledger"))
        .args([
            "tail",
            "--nats-url",
            &nats.url(),
            "--ledger-key",
            vkey.trim(),
        ])
        .args(["--from", "30", "--output", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tail failed: {stderr}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 13, "events 30..=42");
    assert_eq!(lines[0]["seq"], 30);
    assert_eq!(lines[12]["prompt"], "team.a/p39");
    assert!(stderr.contains("verified 43 events"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_outage_during_writes_loses_nothing_and_duplicates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nats = Nats::start(&tmp.path().join("nats"));
    let dir = DataDir::new(tmp.path().join("data"));
    let server = start(&dir.root, &nats.url()).await;
    let mut c = author(&dir, &server.endpoint()).await;
    write(&mut c, 0, 100).await;
    caught_up(&server.endpoint(), Duration::from_secs(20)).await;

    nats.kill();
    // Writes go on, acknowledged, while NATS is down.
    write(&mut c, 100, 300).await;
    let during = status(&server.endpoint()).await;
    assert_eq!(during.size, 403);
    let n = during.nats.unwrap();
    assert!(n.lag_entries > 0, "the lag shows: {n:?}");

    nats.restart();
    write(&mut c, 400, 50).await;
    let s = caught_up(&server.endpoint(), Duration::from_secs(30)).await;
    assert_eq!(s.size, 453);
    server.stop().await;

    let read = read_stream(&nats.url(), "PROMPTLEDGER").await;
    read.assert_exactly(453);
    assert_eq!(read.verify(&ledger_key(&dir)).0, 453);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_acknowledged_while_nats_is_absent_and_published_when_it_appears() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port(); // nothing listens here yet
    let dir = DataDir::new(tmp.path().join("data"));
    let server = start(&dir.root, &format!("nats://127.0.0.1:{port}")).await;
    let mut c = author(&dir, &server.endpoint()).await;
    write(&mut c, 0, 200).await;
    let s = status(&server.endpoint()).await;
    let n = s.nats.unwrap();
    assert_eq!((s.size, n.published, n.lag_entries), (203, 0, 203));
    assert!(!n.connected);

    let nats = Nats::start_on(&tmp.path().join("nats"), port);
    caught_up(&server.endpoint(), Duration::from_secs(30)).await;
    server.stop().await;
    let read = read_stream(&nats.url(), "PROMPTLEDGER").await;
    read.assert_exactly(203);
    read.verify(&ledger_key(&dir));
}

/// `promptledger serve` as a real process on a free port; returns it and its endpoint once it
/// serves.
async fn serve_process(dir: &DataDir, config: &Path) -> (Child, String) {
    common::serve_process(&dir.root, &["--config", config.to_str().unwrap()], &[]).await
}

/// The real binary, killed with SIGKILL while it publishes under write load, three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_ledger_mid_publish_leaves_no_duplicate_and_no_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let nats = Nats::start(&tmp.path().join("nats"));
    let dir = DataDir::new(tmp.path().join("data"));
    // A 1 s duplicate window, and restarts after it has passed: JetStream's deduplication
    // cannot hide a publisher that resumes at a stale cursor; only resuming after the stream's
    // own tail keeps the stream free of duplicates.
    let config = tmp.path().join("promptledger.toml");
    std::fs::write(
        &config,
        format!(
            "[nats]\nurl = \"{}\"\nduplicate_window_secs = 1\n",
            nats.url()
        ),
    )
    .unwrap();
    let mut written = 0;
    for round in 0..3 {
        let (mut child, endpoint) = serve_process(&dir, &config).await;
        let mut writers = Vec::new();
        for w in 0..4 {
            let mut c = author(&dir, &endpoint).await;
            let from = 1_000_000 * (round + 1) + 10_000 * w;
            writers.push(tokio::spawn(async move {
                let mut i = from;
                // Until the process dies under us.
                while c
                    .submit(Action::CreatePrompt {
                        prompt: format!("k/p{i}"),
                        description: String::new(),
                    })
                    .await
                    .is_ok()
                {
                    i += 1;
                }
                i - from
            }));
        }
        // Let the publisher run behind the writers, then kill the process mid-stream.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = status(&endpoint).await;
        assert!(
            before.nats.unwrap().published > 0,
            "round {round}: publishing"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        for w in writers {
            written += w.await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1500)).await; // past the duplicate window
    }
    assert!(written > 100, "load was applied ({written} acknowledged)");

    // Restart once more and let it catch up.
    let (mut child, endpoint) = serve_process(&dir, &config).await;
    let s = caught_up(&endpoint, Duration::from_secs(60)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let read = read_stream(&nats.url(), "PROMPTLEDGER").await;
    read.assert_exactly(s.size);
    assert_eq!(read.verify(&ledger_key(&dir)).0, s.size);
}
