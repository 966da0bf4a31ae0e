//! Publishing the committed log to NATS JetStream (the outbox), and reading it back (`tail`).
//!
//! RocksDB is the point of commit; JetStream is fed *after* commit, never in the commit path, so
//! a slow or absent NATS never slows or fails a write. The publisher is one task that follows
//! the writer's durable head ([`crate::storage::writer::Ledger::heads`]), reads committed entries
//! from the store and publishes them in sequence order. What it guarantees, and how:
//!
//! - **No gap, no reorder.** Every message carries `Nats-Expected-Last-Sequence` (the stream
//!   sequence it must follow), so when one publish in the in-flight window fails, every later
//!   one is refused by the server too; the publisher then re-reads the stream's tail and resumes
//!   from the entry after the last one the stream holds.
//! - **No duplicate.** Every message carries `Nats-Msg-Id` = `<ledger id>:<seq>`, so a retried
//!   publish whose first attempt was stored is dropped by JetStream's duplicate window; and on
//!   every (re)connect the resume point is taken from the stream itself, so a restart long after
//!   the window still does not publish an entry twice.
//! - **Bounded.** At most `max_in_flight` publishes wait for their acknowledgement (more than
//!   about 5,000 outstanding hangs the client against nats-server 2.9).
//! - **Cursor.** The sequence after the last acknowledged entry is kept in the `outbox` column
//!   family, for the lag metric and for the restart of a stream that lost its messages.
//!
//! What it is not: the consumer. [`follow`] verifies what a consumer reads.

pub mod follow;

use crate::ledger::checkpoint::Checkpoint;
use crate::ledger::entry::{Entry, LedgerId, Seq};
use crate::ledger::merkle;
use crate::registry::statement::{Statement, STATEMENT_PAYLOAD_TYPE};
use crate::storage::keys::cf;
use crate::storage::Store;
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use serde::Deserialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Header names (documented in docs/nats.md).
pub mod header {
    pub const MSG_ID: &str = "Nats-Msg-Id";
    pub const EXPECTED_LAST_SEQUENCE: &str = "Nats-Expected-Last-Sequence";
    pub const LEDGER: &str = "PromptLedger-Ledger";
    pub const SEQ: &str = "PromptLedger-Seq";
    pub const LEAF_HASH: &str = "PromptLedger-Leaf-Hash";
    pub const KIND: &str = "PromptLedger-Kind";
    pub const PROMPT: &str = "PromptLedger-Prompt";
    pub const ACTOR: &str = "PromptLedger-Actor";
    pub const CHECKPOINT_SIZE: &str = "PromptLedger-Checkpoint-Size";
}

/// `[nats]` in the server's config file. Without `url`, nothing is published.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// e.g. `nats://127.0.0.1:4222`.
    pub url: Option<String>,
    /// JetStream stream, created if missing.
    pub stream: String,
    /// First subject token: events go to `<prefix>.<ledger>.events.<kind>.<prompt>`,
    /// checkpoints to `<prefix>.<ledger>.checkpoints`.
    pub subject_prefix: String,
    /// `limits`, `interest` or `workqueue` (used only when the stream is created).
    pub retention: String,
    /// `file` or `memory` (used only when the stream is created).
    pub storage: String,
    pub replicas: usize,
    /// JetStream's duplicate window, seconds.
    pub duplicate_window_secs: u64,
    /// Most publishes waiting for their acknowledgement.
    pub max_in_flight: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: None,
            stream: "PROMPTLEDGER".into(),
            subject_prefix: "promptledger".into(),
            retention: "limits".into(),
            storage: "file".into(),
            replicas: 1,
            duplicate_window_secs: 120,
            max_in_flight: 1024,
        }
    }
}

impl NatsConfig {
    pub fn validate(&self) -> Result<(), String> {
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !token_ok(&self.stream) {
            return Err("nats.stream must be letters, digits, '_' or '-'".into());
        }
        if !token_ok(&self.subject_prefix) {
            return Err("nats.subject_prefix must be one subject token".into());
        }
        if self.max_in_flight == 0 || self.max_in_flight > 4096 {
            return Err("nats.max_in_flight must be between 1 and 4096".into());
        }
        if !(1..=5).contains(&self.replicas) {
            return Err("nats.replicas must be between 1 and 5".into());
        }
        self.retention_policy()?;
        self.storage_type()?;
        Ok(())
    }

    fn retention_policy(&self) -> Result<stream::RetentionPolicy, String> {
        match self.retention.as_str() {
            "limits" => Ok(stream::RetentionPolicy::Limits),
            "interest" => Ok(stream::RetentionPolicy::Interest),
            "workqueue" => Ok(stream::RetentionPolicy::WorkQueue),
            other => Err(format!(
                "nats.retention {other:?}: expected limits, interest or workqueue"
            )),
        }
    }

    fn storage_type(&self) -> Result<stream::StorageType, String> {
        match self.storage.as_str() {
            "file" => Ok(stream::StorageType::File),
            "memory" => Ok(stream::StorageType::Memory),
            other => Err(format!("nats.storage {other:?}: expected file or memory")),
        }
    }

    /// Subjects of one ledger: `<prefix>.<ledger hex>`.
    pub fn ledger_subject(&self, ledger: &LedgerId) -> String {
        format!("{}.{}", self.subject_prefix, ledger.to_hex())
    }
}

/// A subject token for a prompt name: names may hold `.`, which separates subject tokens, so it
/// is written `%2E` (names cannot hold `%`). Events without a prompt use `-` (no name starts
/// with it).
pub fn prompt_token(prompt: Option<&str>) -> String {
    match prompt {
        Some(p) => p.replace('.', "%2E"),
        None => "-".into(),
    }
}

/// What the subject and headers say about an entry, read from its statement.
struct Described {
    kind: String,
    prompt: Option<String>,
    actor: Option<String>,
}

fn describe(entry: &Entry) -> Described {
    let statement = (entry.envelope.payload_type == STATEMENT_PAYLOAD_TYPE)
        .then(|| Statement::from_payload(&entry.envelope.payload).ok())
        .flatten();
    match statement {
        Some(s) => Described {
            kind: s.action.kind().to_owned(),
            prompt: s.action.prompt().map(str::to_owned),
            actor: Some(s.actor),
        },
        None => Described {
            kind: "raw".into(),
            prompt: None,
            actor: None,
        },
    }
}

/// Publish progress, shared with the status API.
#[derive(Debug, Default)]
pub struct PublishStatus {
    /// The next sequence number to publish (everything below is in the stream).
    pub cursor: AtomicU64,
    pub connected: AtomicBool,
    /// Size of the last checkpoint published.
    pub checkpoint_size: AtomicU64,
}

/// Publication lag, for the status API and logs.
#[derive(Clone, Debug, PartialEq)]
pub struct Lag {
    pub published: Seq,
    pub head: Seq,
    pub entries: u64,
    /// Age of the oldest unpublished entry (0 when caught up).
    pub seconds: f64,
    pub connected: bool,
}

impl PublishStatus {
    pub fn lag(&self, store: &Store, head: Seq, now_ms: u64) -> Lag {
        let published = self.cursor.load(Ordering::Acquire).min(head);
        let seconds = if published < head {
            store
                .entry(published)
                .ok()
                .flatten()
                .and_then(|bytes| Entry::decode(&bytes).ok())
                .map_or(0.0, |e| {
                    now_ms.saturating_sub(e.timestamp_ms) as f64 / 1000.0
                })
        } else {
            0.0
        };
        Lag {
            published,
            head,
            entries: head - published,
            seconds,
            connected: self.connected.load(Ordering::Acquire),
        }
    }
}

/// The outbox key of a stream's cursor.
fn cursor_key(stream: &str) -> Vec<u8> {
    format!("nats/{stream}/cursor").into_bytes()
}

/// The stored publish cursor of `stream` (0 if none).
pub fn stored_cursor(store: &Store, stream: &str) -> Seq {
    store
        .raw_get(cf::OUTBOX, &cursor_key(stream))
        .ok()
        .flatten()
        .and_then(|v| v.try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("storage: {0}")]
    Store(#[from] crate::storage::StoreError),
    #[error("entry {seq} in the store does not decode")]
    Corrupt { seq: Seq },
}

fn nats_err(e: impl std::fmt::Display) -> PublishError {
    PublishError::Nats(e.to_string())
}

/// Entries read from the store per round trip to the blocking pool.
const READ_CHUNK: u64 = 1024;

/// The publisher task. Runs until `shutdown` flips to true, reconnecting and resuming after
/// every failure; never returns an error to the server.
pub async fn run(
    config: NatsConfig,
    store: Arc<Store>,
    ledger: LedgerId,
    mut heads: watch::Receiver<Seq>,
    status: Arc<PublishStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(url) = config.url.clone() else {
        return;
    };
    status
        .cursor
        .store(stored_cursor(&store, &config.stream), Ordering::Release);
    // One client for the task's life: it reconnects by itself (a client per attempt would leave
    // each old one reconnecting in the background).
    let client = loop {
        let connect = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(5)))
            .connect(url.as_str());
        tokio::select! {
            r = connect => match r {
                Ok(c) => break c,
                Err(e) => tracing::warn!(error = %e, "NATS publisher: cannot connect; retrying"),
            },
            _ = shutdown.changed() => return,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let js = jetstream::new(client);
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let result = tokio::select! {
            r = async {
                let mut s = Session::start(&js, &config, &store, ledger, &status).await?;
                backoff = Duration::from_millis(100);
                s.pump(&mut heads).await
            } => r,
            _ = shutdown.changed() => return,
        };
        status.connected.store(false, Ordering::Release);
        if let Err(e) = result {
            tracing::warn!(error = %e, retry_in = ?backoff, "NATS publisher: will resume from the stream's tail");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// One connection's worth of publishing.
struct Session<'a> {
    js: jetstream::Context,
    config: &'a NatsConfig,
    store: &'a Arc<Store>,
    ledger: LedgerId,
    status: &'a PublishStatus,
    subject: String,
    /// Next ledger sequence to publish.
    next: Seq,
    /// The stream sequence the next message must follow.
    stream_last: u64,
}

impl<'a> Session<'a> {
    async fn start(
        js: &jetstream::Context,
        config: &'a NatsConfig,
        store: &'a Arc<Store>,
        ledger: LedgerId,
        status: &'a PublishStatus,
    ) -> Result<Session<'a>, PublishError> {
        if js.client().connection_state() != async_nats::connection::State::Connected {
            return Err(PublishError::Nats("not connected".into()));
        }
        let js = js.clone();
        let subject = config.ledger_subject(&ledger);
        let mut stream = js
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![format!("{subject}.>")],
                retention: config.retention_policy().map_err(PublishError::Nats)?,
                storage: config.storage_type().map_err(PublishError::Nats)?,
                num_replicas: config.replicas,
                duplicate_window: Duration::from_secs(config.duplicate_window_secs),
                ..Default::default()
            })
            .await
            .map_err(nats_err)?;
        let state = stream.info().await.map_err(nats_err)?.state.clone();
        let (stream_first, stream_last) = (state.first_sequence, state.last_sequence);
        // Resume after the newest entry the stream holds; the stream, not our cursor, says what
        // was stored (an acknowledgement may have been lost, or our cursor write with it).
        let (mut next, mut checkpoint) = (None, 0);
        let mut seq = stream_last;
        while seq >= stream_first.max(1) && stream_last - seq < 256 {
            match stream.get_raw_message(seq).await {
                Ok(m) => {
                    let number = |name: &str| {
                        m.headers
                            .get(name)
                            .and_then(|v| v.as_str().parse::<u64>().ok())
                    };
                    if checkpoint == 0 {
                        checkpoint = number(header::CHECKPOINT_SIZE).unwrap_or(0);
                    }
                    if let Some(s) = number(header::SEQ) {
                        next = Some(s + 1);
                        break;
                    }
                }
                // Deleted or expired: look further back.
                Err(e) => tracing::debug!(seq, error = %e, "stream message not readable"),
            }
            seq -= 1;
        }
        let stored = stored_cursor(store, &config.stream);
        let next = match next {
            Some(n) => n,
            // A stream that never held a message (new or recreated) gets the whole log.
            None if stream_last == 0 => 0,
            // Every message expired (retention limits): trust our own cursor.
            None => stored,
        };
        if next != stored {
            tracing::info!(
                stream = %config.stream,
                resume_at = next,
                cursor = stored,
                "NATS publisher resumes from the stream's tail"
            );
        }
        status.cursor.store(next, Ordering::Release);
        status
            .checkpoint_size
            .fetch_max(checkpoint, Ordering::AcqRel);
        status.connected.store(true, Ordering::Release);
        Ok(Session {
            js,
            config,
            store,
            ledger,
            status,
            subject,
            next,
            stream_last,
        })
    }

    /// Publishes everything committed, then waits for more; returns only on failure.
    async fn pump(&mut self, heads: &mut watch::Receiver<Seq>) -> Result<(), PublishError> {
        loop {
            let head = *heads.borrow_and_update();
            if self.next < head {
                self.publish_range(head).await?;
            } else {
                self.publish_checkpoint().await?;
                if heads.changed().await.is_err() {
                    // The writer is gone (shutdown): everything committed is published.
                    std::future::pending::<()>().await;
                }
            }
        }
    }

    fn headers_for(&mut self, msg_id: String) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::MSG_ID, msg_id.as_str());
        if self.stream_last > 0 {
            // Sequence 0 means "not set" to the server, so the very first message goes without.
            h.insert(
                header::EXPECTED_LAST_SEQUENCE,
                self.stream_last.to_string().as_str(),
            );
        }
        h.insert(header::LEDGER, self.ledger.to_hex().as_str());
        self.stream_last += 1;
        h
    }

    async fn publish_range(&mut self, head: Seq) -> Result<(), PublishError> {
        let end = head.min(self.next + READ_CHUNK);
        let (store, from) = (self.store.clone(), self.next);
        let entries = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<u8>>, PublishError> {
            let mut out = Vec::with_capacity((end - from) as usize);
            for item in store.entries_from(from).take((end - from) as usize) {
                out.push(item?.1);
            }
            Ok(out)
        })
        .await
        .map_err(nats_err)??;
        let mut in_flight = VecDeque::with_capacity(self.config.max_in_flight);
        for (i, bytes) in entries.into_iter().enumerate() {
            let seq = from + i as u64;
            let entry = Entry::decode(&bytes).map_err(|_| PublishError::Corrupt { seq })?;
            let d = describe(&entry);
            let mut h = self.headers_for(format!("{}:{seq}", self.ledger.to_hex()));
            h.insert(header::SEQ, seq.to_string().as_str());
            h.insert(
                header::LEAF_HASH,
                hex::encode(merkle::leaf_hash(&bytes)).as_str(),
            );
            h.insert(header::KIND, d.kind.as_str());
            if let Some(p) = &d.prompt {
                h.insert(header::PROMPT, p.as_str());
            }
            if let Some(a) = &d.actor {
                h.insert(header::ACTOR, a.as_str());
            }
            let subject = format!(
                "{}.events.{}.{}",
                self.subject,
                d.kind,
                prompt_token(d.prompt.as_deref())
            );
            if in_flight.len() == self.config.max_in_flight {
                self.settle(&mut in_flight).await?;
            }
            let ack = self
                .js
                .publish_with_headers(subject, h, bytes.into())
                .await
                .map_err(nats_err)?;
            in_flight.push_back((seq, ack));
        }
        while !in_flight.is_empty() {
            self.settle(&mut in_flight).await?;
        }
        // Persisted once per chunk: the stream's tail, not this cursor, decides where a
        // restarted publisher resumes, so a stale cursor costs nothing but lag accounting.
        self.store.raw_put(
            cf::OUTBOX,
            &cursor_key(&self.config.stream),
            &end.to_be_bytes(),
        )?;
        Ok(())
    }

    /// Waits for the oldest in-flight acknowledgement and advances the cursor past it.
    async fn settle(
        &mut self,
        in_flight: &mut VecDeque<(Seq, jetstream::context::PublishAckFuture)>,
    ) -> Result<(), PublishError> {
        let (seq, ack) = in_flight.pop_front().expect("something in flight");
        ack.await.map_err(nats_err)?;
        self.next = seq + 1;
        self.status.cursor.store(self.next, Ordering::Release);
        Ok(())
    }

    /// Publishes the latest checkpoint if it is new and every entry it covers is in the stream.
    async fn publish_checkpoint(&mut self) -> Result<(), PublishError> {
        let Some(note) = self.store.checkpoint()? else {
            return Ok(());
        };
        // The writer signed it; only its size matters here.
        let Ok(cp) = Checkpoint::read_unverified(&note) else {
            return Ok(());
        };
        if cp.size > self.next || cp.size <= self.status.checkpoint_size.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut h = self.headers_for(format!("{}:checkpoint:{}", self.ledger.to_hex(), cp.size));
        h.insert(header::CHECKPOINT_SIZE, cp.size.to_string().as_str());
        self.js
            .publish_with_headers(format!("{}.checkpoints", self.subject), h, note.into())
            .await
            .map_err(nats_err)?
            .await
            .map_err(nats_err)?;
        self.status
            .checkpoint_size
            .store(cp.size, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_tokens_keep_subjects_unambiguous() {
        assert_eq!(
            prompt_token(Some("support.en/greeting")),
            "support%2Een/greeting"
        );
        assert_eq!(prompt_token(Some("a-b_c")), "a-b_c");
        assert_eq!(prompt_token(None), "-");
    }

    #[test]
    fn config_is_checked_at_start() {
        assert_eq!(NatsConfig::default().validate(), Ok(()));
        let bad = |c: NatsConfig| c.validate().unwrap_err();
        assert!(bad(NatsConfig {
            stream: "a.b".into(),
            ..NatsConfig::default()
        })
        .contains("nats.stream"));
        assert!(bad(NatsConfig {
            max_in_flight: 10_000,
            ..NatsConfig::default()
        })
        .contains("max_in_flight"));
        assert!(bad(NatsConfig {
            retention: "forever".into(),
            ..NatsConfig::default()
        })
        .contains("nats.retention"));
        let from_toml: crate::server::Config =
            toml::from_str("[nats]\nurl = \"nats://127.0.0.1:4222\"\nstream = \"PL\"\n").unwrap();
        assert_eq!(from_toml.nats.url.as_deref(), Some("nats://127.0.0.1:4222"));
        assert_eq!(from_toml.nats.max_in_flight, 1024);
        assert!(toml::from_str::<crate::server::Config>("[nats]\nurll = \"x\"\n").is_err());
    }
}
