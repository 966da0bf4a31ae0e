//! The single writer: the only code that appends to the log.
//!
//! Requests queue on a channel. One OS thread takes them in groups and, for each group:
//!
//! 1. asks the [`Personality`] to decide every command against the current state, in order
//!    (so two racing requests can never both pass on stale state); a rejected command writes
//!    nothing and is answered at once;
//! 2. seals each accepted envelope into an entry: next sequence number, previous leaf hash,
//!    timestamp (never earlier than the previous one), leaf hash, Merkle nodes;
//! 3. lets the personality apply the entry to its projection, into the same batch;
//! 4. signs one checkpoint for the whole group and writes entries, nodes, projection, head and
//!    checkpoint in **one** RocksDB `WriteBatch`, synced once (group commit);
//! 5. only then answers each request with its receipt.
//!
//! Nothing is acknowledged before step 4 returns, so a crash at any point loses no acknowledged
//! entry and leaves no half-applied state: either the whole batch is in the WAL or none of it.
//! If the write itself fails the in-memory state is ahead of the disk, so the writer stops and
//! fails every later request; reopening the ledger recovers from the disk.

use super::keys::{cf, node_key, MetaKey};
use super::{Head, LedgerInfo, Store, StoreError};
use crate::ledger::checkpoint::Checkpoint;
use crate::ledger::dsse::Envelope;
use crate::ledger::entry::{Entry, LedgerId, Seq};
use crate::ledger::keys::KeyPair;
use crate::ledger::merkle::{self, Frontier, Hash};
use rocksdb::WriteBatch;
use std::convert::Infallible;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot, watch};

/// What the writer tells the personality about the entry being decided.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    /// The sequence number the entry will get if accepted.
    pub seq: Seq,
    /// The timestamp it will carry.
    pub timestamp_ms: u64,
}

/// A batch under construction, handed to the personality to add its projection changes.
pub struct Batch<'a> {
    batch: WriteBatch,
    store: &'a Store,
}

impl Batch<'_> {
    pub fn put(&mut self, cf_name: &str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.batch.put_cf(self.store.cf(cf_name), key, value);
    }

    pub fn delete(&mut self, cf_name: &str, key: impl AsRef<[u8]>) {
        self.batch.delete_cf(self.store.cf(cf_name), key);
    }
}

/// The application on top of the generic log ("personality", as tessera calls it): it decides
/// what may be appended and keeps the projection. The ledger core never looks inside payloads.
pub trait Personality: Send + 'static {
    type Command: Send + 'static;
    type Output: Send + 'static;
    type Rejection: Send + 'static;

    /// Decides `command` against the current state. `Ok` carries the envelope to append and the
    /// answer to give once it is durable. Must not change state when it rejects.
    fn decide(
        &mut self,
        command: Self::Command,
        ctx: Context,
    ) -> Result<(Envelope, Self::Output), Self::Rejection>;

    /// Applies a sealed entry to the state, adding its projection changes to `batch`.
    fn apply(&mut self, entry: &Entry, batch: &mut Batch<'_>);

    /// The state root after every applied entry; goes into the checkpoint when `Some`.
    fn state_root(&self) -> Option<Hash> {
        None
    }

    /// Called once a group is durable, before its requests are answered (swap read views here).
    fn committed(&mut self, _head: &Head) {}
}

/// The personality of a bare log: appends any envelope handed to it. Signatures are checked by
/// the caller before submission.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawLog;

impl Personality for RawLog {
    type Command = Envelope;
    type Output = ();
    type Rejection = Infallible;

    fn decide(&mut self, envelope: Envelope, _ctx: Context) -> Result<(Envelope, ()), Infallible> {
        Ok((envelope, ()))
    }

    fn apply(&mut self, _entry: &Entry, _batch: &mut Batch<'_>) {}
}

/// Proof that an entry is durable.
#[derive(Clone, Debug)]
pub struct Receipt<O> {
    pub seq: Seq,
    pub leaf_hash: Hash,
    /// The signed checkpoint of the group that committed this entry; its tree includes it.
    pub checkpoint: Arc<Vec<u8>>,
    pub output: O,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError<R> {
    #[error("refused: {0}")]
    Rejected(R),
    #[error("the ledger writer has stopped")]
    WriterStopped,
    #[error("the commit failed: {0}")]
    Storage(String),
}

/// Writer settings.
#[derive(Clone)]
pub struct WriterConfig {
    /// Most requests committed in one group (one fsync).
    pub max_group: usize,
    /// Requests that may wait in the queue before submitters wait too.
    pub queue_depth: usize,
    /// Milliseconds since the Unix epoch. Injected so tests can control time.
    pub clock: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_group: 4096,
            queue_depth: 65_536,
            clock: Arc::new(system_clock_ms),
        }
    }
}

pub fn system_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

type Reply<P> = oneshot::Sender<
    Result<Receipt<<P as Personality>::Output>, AppendError<<P as Personality>::Rejection>>,
>;

struct Job<P: Personality> {
    command: P::Command,
    reply: Reply<P>,
}

/// A ledger open for appending. Cloneable handles are cheap: clone the [`Appender`].
pub struct Ledger<P: Personality> {
    heads: watch::Receiver<Seq>,
    appender: Appender<P>,
    store: Arc<Store>,
    info: LedgerInfo,
    thread: Option<JoinHandle<()>>,
}

/// Submits commands to the writer.
pub struct Appender<P: Personality> {
    tx: mpsc::Sender<Job<P>>,
}

impl<P: Personality> Clone for Appender<P> {
    fn clone(&self) -> Self {
        Appender {
            tx: self.tx.clone(),
        }
    }
}

impl<P: Personality> Appender<P> {
    /// Queues a command and waits until it is durable (or refused).
    pub async fn submit(
        &self,
        command: P::Command,
    ) -> Result<Receipt<P::Output>, AppendError<P::Rejection>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { command, reply })
            .await
            .map_err(|_| AppendError::WriterStopped)?;
        rx.await.map_err(|_| AppendError::WriterStopped)?
    }

    /// [`Self::submit`] for callers outside an async runtime.
    pub fn submit_blocking(
        &self,
        command: P::Command,
    ) -> Result<Receipt<P::Output>, AppendError<P::Rejection>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Job { command, reply })
            .map_err(|_| AppendError::WriterStopped)?;
        rx.blocking_recv().map_err(|_| AppendError::WriterStopped)?
    }
}

impl<P: Personality> Ledger<P> {
    /// Opens the ledger in `store` and starts its writer. Restores the head and the Merkle
    /// frontier from `O(log n)` stored nodes; nothing is replayed.
    pub fn open(
        store: Arc<Store>,
        ledger_key: KeyPair,
        personality: P,
        config: WriterConfig,
    ) -> Result<Self, StoreError> {
        let info = store.ledger_info()?;
        let ledger_id = info.id()?;
        let head = store.head()?;
        let frontier = Frontier::load(head.size, store.as_ref())?;
        if let Some(note) = store.checkpoint()? {
            let cp = Checkpoint::open(&note, &ledger_key.public())
                .map_err(|_| StoreError::Corrupt { what: "checkpoint" })?;
            if cp.size != head.size || cp.root != frontier.root() {
                return Err(StoreError::Corrupt {
                    what: "head, frontier or checkpoint",
                });
            }
        }
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let (heads, head_watch) = watch::channel(head.size);
        let writer = Writer {
            heads,
            store: store.clone(),
            personality,
            ledger_key,
            origin: info.origin.clone(),
            ledger_id,
            head,
            frontier,
            config,
        };
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer.run(rx))
            .expect("spawn the writer thread");
        Ok(Ledger {
            heads: head_watch,
            appender: Appender { tx },
            store,
            info,
            thread: Some(thread),
        })
    }

    pub fn appender(&self) -> Appender<P> {
        self.appender.clone()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The durable head size, updated after each synced group. A follower reads entries below
    /// it from the store and waits with `changed()` for more.
    pub fn heads(&self) -> watch::Receiver<Seq> {
        self.heads.clone()
    }

    pub fn info(&self) -> &LedgerInfo {
        &self.info
    }

    /// Stops taking requests, lets the writer commit everything already queued, and waits for
    /// it. Other [`Appender`] clones must be dropped too for the writer to finish.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        // Replacing our sender with a closed one drops it; the writer drains the queue and
        // exits once the last sender is gone.
        let (closed, _) = mpsc::channel(1);
        self.appender.tx = closed;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl<P: Personality> Drop for Ledger<P> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Writer<P: Personality> {
    store: Arc<Store>,
    personality: P,
    ledger_key: KeyPair,
    origin: String,
    ledger_id: LedgerId,
    head: Head,
    frontier: Frontier,
    config: WriterConfig,
    /// Tells followers (the NATS publisher, watchers) the durable head size.
    heads: watch::Sender<Seq>,
}

impl<P: Personality> Writer<P> {
    fn run(mut self, mut rx: mpsc::Receiver<Job<P>>) {
        let mut group = Vec::with_capacity(self.config.max_group);
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while group.len() < self.config.max_group {
                match rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.commit_group(&mut group) {
                tracing::error!(error = %e, "commit failed; the writer stops");
                for job in group.drain(..) {
                    let _ = job.reply.send(Err(AppendError::Storage(e.to_string())));
                }
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    let _ = job.reply.send(Err(AppendError::WriterStopped));
                }
                return;
            }
        }
    }

    fn commit_group(&mut self, group: &mut Vec<Job<P>>) -> Result<(), StoreError> {
        let store = self.store.clone();
        let mut batch = Batch {
            batch: WriteBatch::default(),
            store: &store,
        };
        let mut accepted: Vec<(Reply<P>, Seq, Hash, P::Output)> = Vec::with_capacity(group.len());
        for job in group.drain(..) {
            let timestamp_ms = (self.config.clock)().max(self.head.last_timestamp_ms);
            let ctx = Context {
                seq: self.head.size,
                timestamp_ms,
            };
            let (envelope, output) = match self.personality.decide(job.command, ctx) {
                Ok(ok) => ok,
                Err(rejection) => {
                    // Rejected means unwritten: nothing of it is in the batch.
                    let _ = job.reply.send(Err(AppendError::Rejected(rejection)));
                    continue;
                }
            };
            let entry = Entry {
                ledger_id: self.ledger_id,
                seq: self.head.size,
                prev_leaf_hash: self.head.last_leaf_hash,
                timestamp_ms,
                envelope,
            };
            let bytes = entry.encode();
            let leaf = merkle::leaf_hash(&bytes);
            batch.put(cf::ENTRIES, super::keys::entry_key(entry.seq), &bytes);
            self.frontier
                .append(leaf, |id, hash| batch.put(cf::MERKLE, node_key(id), hash));
            self.personality.apply(&entry, &mut batch);
            self.head = Head {
                size: entry.seq + 1,
                last_leaf_hash: leaf,
                last_timestamp_ms: timestamp_ms,
            };
            accepted.push((job.reply, entry.seq, leaf, output));
        }
        if accepted.is_empty() {
            return Ok(());
        }
        let mut checkpoint = Checkpoint {
            origin: self.origin.clone(),
            size: self.head.size,
            root: self.frontier.root(),
            extensions: vec![],
        };
        if let Some(state_root) = self.personality.state_root() {
            checkpoint = checkpoint.with_state_root(&state_root);
        }
        let note = Arc::new(checkpoint.sign(&self.ledger_key));
        batch.put(cf::META, MetaKey::Head.bytes(), self.head.encode());
        batch.put(cf::META, MetaKey::Checkpoint.bytes(), note.as_slice());
        // Durability point: after this returns the whole group survives a crash.
        store.commit(batch.batch)?;
        self.personality.committed(&self.head);
        // Followers read committed entries from the store; they are told only after the sync.
        self.heads.send_replace(self.head.size);
        for (reply, seq, leaf_hash, output) in accepted {
            let _ = reply.send(Ok(Receipt {
                seq,
                leaf_hash,
                checkpoint: note.clone(),
                output,
            }));
        }
        Ok(())
    }
}
