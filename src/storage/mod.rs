//! RocksDB storage of the ledger: entries, Merkle nodes, metadata, and (later) indexes, the
//! projection, nonces and the outbox, one column family each (see [`keys::cf`]).
//!
//! What it is: typed reads, and the one atomic write ([`Store::commit`]) through which every
//! change goes, synced before it returns. What it is not: the decision of what to write; that is
//! the writer's ([`writer`]) and, above it, the personality's.

pub mod keys;
pub mod writer;

use crate::ledger::entry::{LedgerId, Seq};
use crate::ledger::merkle::{Hash, NodeId, NodeReader};
use keys::{cf, MetaKey};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode,
    MemtableFactory, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Storage failures. Never shown to API clients verbatim: they get `INTERNAL`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb at {path}: {source}")]
    Rocks {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("rocksdb: {0}")]
    Io(#[from] rocksdb::Error),
    #[error("stored {what} is corrupt")]
    Corrupt { what: &'static str },
    #[error("tree node level {} index {} is missing", .0.level, .0.index)]
    MissingNode(NodeId),
    #[error("no ledger in {0}: run `promptledger init` first")]
    NotInitialized(PathBuf),
    #[error("{0} already holds a ledger")]
    AlreadyInitialized(PathBuf),
}

/// The ledger's identity, written once by `init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerInfo {
    /// Hex of the 16-byte ledger id.
    pub ledger_id: String,
    /// The checkpoint origin, also the ledger key's name.
    pub origin: String,
    /// The ledger key's verifier key (`name+hhhhhhhh+base64`).
    pub ledger_vkey: String,
    /// Entry format version written by this ledger.
    pub format_version: u8,
}

impl LedgerInfo {
    pub fn id(&self) -> Result<LedgerId, StoreError> {
        LedgerId::from_hex(&self.ledger_id).ok_or(StoreError::Corrupt { what: "ledger id" })
    }
}

/// The head of the log: how many entries, the last leaf hash, the last timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    pub last_leaf_hash: Hash,
    pub last_timestamp_ms: u64,
}

impl Head {
    pub const EMPTY: Head = Head {
        size: 0,
        last_leaf_hash: [0; 32],
        last_timestamp_ms: 0,
    };

    pub fn encode(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out[..8].copy_from_slice(&self.size.to_be_bytes());
        out[8..40].copy_from_slice(&self.last_leaf_hash);
        out[40..].copy_from_slice(&self.last_timestamp_ms.to_be_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Head> {
        if bytes.len() != 48 {
            return None;
        }
        Some(Head {
            size: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            last_leaf_hash: bytes[8..40].try_into().ok()?,
            last_timestamp_ms: u64::from_be_bytes(bytes[40..].try_into().ok()?),
        })
    }
}

/// An open RocksDB ledger store.
pub struct Store {
    db: DB,
    path: PathBuf,
}

fn cf_options(name: &str, cache: &Cache) -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::Lz4);
    if WRITE_ONLY_CFS.contains(&name) {
        // Written on every commit, read only by a full scan when the ledger opens: a vector
        // memtable appends in O(1) where the skip list searched ~20 levels for each random key
        // (nonces are random; a profile of the commit path put it at a fifth of the writer).
        opts.set_memtable_factory(MemtableFactory::Vector);
    }
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table);
    opts
}

/// Column families with no point reads while the ledger is open (see [`cf_options`]).
const WRITE_ONLY_CFS: [&str; 2] = [cf::STATE, cf::NONCES];

impl Store {
    /// Creates the store of a new ledger; fails if `path` already holds one.
    pub fn create(path: &Path) -> Result<Store, StoreError> {
        if path.join("CURRENT").exists() {
            return Err(StoreError::AlreadyInitialized(path.to_owned()));
        }
        Self::open_with(path, true)
    }

    /// Opens an existing store for reading and writing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if !path.join("CURRENT").exists() {
            return Err(StoreError::NotInitialized(path.to_owned()));
        }
        Self::open_with(path, false)
    }

    fn open_with(path: &Path, create: bool) -> Result<Store, StoreError> {
        let cache = Cache::new_lru_cache(64 << 20);
        let mut opts = Options::default();
        opts.create_if_missing(create);
        opts.create_missing_column_families(true);
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.increase_parallelism(2);
        // One writer thread; and vector memtables (write-only column families) need it off.
        opts.set_allow_concurrent_memtable_write(false);
        let cfs = cf::ALL
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &cache)));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| StoreError::Rocks {
            path: path.to_owned(),
            source,
        })?;
        Ok(Store {
            db,
            path: path.to_owned(),
        })
    }

    /// Opens an existing store read-only: `verify` and `export` never write, and may run beside
    /// a live server.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.join("CURRENT").exists() {
            return Err(StoreError::NotInitialized(path.to_owned()));
        }
        let cache = Cache::new_lru_cache(64 << 20);
        let mut opts = Options::default();
        opts.set_allow_concurrent_memtable_write(false);
        let cfs = cf::ALL
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &cache)));
        let db = DB::open_cf_descriptors_read_only(&opts, path, cfs, false).map_err(|source| {
            StoreError::Rocks {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(Store {
            db,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is opened")
    }

    fn meta(&self, key: MetaKey) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf::META), key.bytes())?)
    }

    pub fn ledger_info(&self) -> Result<LedgerInfo, StoreError> {
        let raw = self
            .meta(MetaKey::LedgerInfo)?
            .ok_or_else(|| StoreError::NotInitialized(self.path.clone()))?;
        serde_json::from_slice(&raw).map_err(|_| StoreError::Corrupt {
            what: "ledger info",
        })
    }

    pub fn head(&self) -> Result<Head, StoreError> {
        match self.meta(MetaKey::Head)? {
            None => Ok(Head::EMPTY),
            Some(raw) => Head::decode(&raw).ok_or(StoreError::Corrupt { what: "head" }),
        }
    }

    /// The latest signed checkpoint note, if any entry was committed.
    pub fn checkpoint(&self) -> Result<Option<Vec<u8>>, StoreError> {
        self.meta(MetaKey::Checkpoint)
    }

    pub fn entry(&self, seq: Seq) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf::ENTRIES), keys::entry_key(seq))?)
    }

    /// Stored entries from `from` on, in order, with their keys' sequence numbers: for readers
    /// of a few pages (queries, watch streams, the publisher), through the block cache.
    pub fn entries_from(
        &self,
        from: Seq,
    ) -> impl Iterator<Item = Result<(Seq, Vec<u8>), StoreError>> + '_ {
        self.entries_with(from, ReadOptions::default())
    }

    /// [`Self::entries_from`] for a read of the whole log (verification, export, rebuild): large
    /// readahead, and the block cache left to the server. A query reading a page this way read
    /// 4 MiB for 50 entries (7 ms instead of 1 ms per `ListEvents` call).
    pub fn scan_entries_from(
        &self,
        from: Seq,
    ) -> impl Iterator<Item = Result<(Seq, Vec<u8>), StoreError>> + '_ {
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        ro.set_readahead_size(4 << 20);
        self.entries_with(from, ro)
    }

    fn entries_with(
        &self,
        from: Seq,
        ro: ReadOptions,
    ) -> impl Iterator<Item = Result<(Seq, Vec<u8>), StoreError>> + '_ {
        let start = keys::entry_key(from);
        self.db
            .iterator_cf_opt(
                self.cf(cf::ENTRIES),
                ro,
                IteratorMode::From(&start, Direction::Forward),
            )
            .map(|item| {
                let (k, v) = item?;
                let seq =
                    keys::decode_entry_key(&k).ok_or(StoreError::Corrupt { what: "entry key" })?;
                Ok((seq, v.into_vec()))
            })
    }

    /// Sequence numbers indexed under `prefix` ([`keys::index_prefix`]): from `from` upwards,
    /// or with `reverse` from below `from` downwards.
    pub fn indexed(
        &self,
        prefix: Vec<u8>,
        from: Seq,
        reverse: bool,
    ) -> impl Iterator<Item = Result<Seq, StoreError>> + '_ {
        let start = [prefix.as_slice(), &from.to_be_bytes()].concat();
        let direction = if reverse {
            Direction::Reverse
        } else {
            Direction::Forward
        };
        self.db
            .iterator_cf(self.cf(cf::INDEX), IteratorMode::From(&start, direction))
            .map(|item| item.map_err(StoreError::from))
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix)))
            .map(|item| {
                let (k, _) = item?;
                let seq = k[k.len().saturating_sub(8)..]
                    .try_into()
                    .ok()
                    .map(Seq::from_be_bytes);
                seq.ok_or(StoreError::Corrupt { what: "index key" })
            })
            // In reverse the seek lands on `from` itself when it is indexed: below means below.
            .filter(move |seq| !reverse || seq.as_ref().map_or(true, |s| *s < from))
    }

    /// Does the `index` column family cover every entry ([`MetaKey::EventIndex`])?
    pub fn has_event_index(&self) -> Result<bool, StoreError> {
        Ok(self.meta(MetaKey::EventIndex)?.is_some())
    }

    /// Every key and value of a column family, in key order.
    pub fn scan(
        &self,
        cf_name: &str,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_ {
        self.db
            .iterator_cf(self.cf(cf_name), IteratorMode::Start)
            .map(|item| {
                item.map(|(k, v)| (k.into_vec(), v.into_vec()))
                    .map_err(StoreError::from)
            })
    }

    /// Stored Merkle nodes of one level from index 0 on, in index order: a sequential scan, so
    /// checking every node of a large tree costs no random reads.
    pub fn level_nodes(
        &self,
        level: u8,
    ) -> impl Iterator<Item = Result<(NodeId, Hash), StoreError>> + '_ {
        let start = keys::node_key(NodeId { level, index: 0 });
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        ro.set_readahead_size(2 << 20);
        self.db
            .iterator_cf_opt(
                self.cf(cf::MERKLE),
                ro,
                IteratorMode::From(&start, Direction::Forward),
            )
            .map(|item| {
                let (k, v) = item?;
                let id =
                    keys::decode_node_key(&k).ok_or(StoreError::Corrupt { what: "node key" })?;
                let hash = v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    what: "merkle node",
                })?;
                Ok((id, hash))
            })
            .take_while(move |r| r.as_ref().map_or(true, |(id, _)| id.level == level))
    }

    /// Every stored Merkle node, in key order (level, then index).
    pub fn nodes(&self) -> impl Iterator<Item = Result<(NodeId, Vec<u8>), StoreError>> + '_ {
        self.db
            .iterator_cf(self.cf(cf::MERKLE), IteratorMode::Start)
            .map(|item| {
                let (k, v) = item?;
                let id =
                    keys::decode_node_key(&k).ok_or(StoreError::Corrupt { what: "node key" })?;
                Ok((id, v.into_vec()))
            })
    }

    /// Writes a batch atomically and syncs the WAL before returning: after `Ok`, the batch
    /// survives a crash or power loss. This is the only way anything reaches the disk.
    pub fn commit(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    pub fn put_ledger_info(&self, info: &LedgerInfo) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        let json = serde_json::to_vec(info).expect("ledger info serializes");
        batch.put_cf(self.cf(cf::META), MetaKey::LedgerInfo.bytes(), json);
        self.commit(batch)
    }

    /// Low-level access for tamper tests and tools: overwrite one value of a column family.
    #[doc(hidden)]
    pub fn raw_put(&self, cf_name: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(cf_name), key, value);
        self.commit(batch)
    }

    /// Low-level removal of one value, for tamper tests and tools.
    #[doc(hidden)]
    pub fn raw_delete(&self, cf_name: &str, key: &[u8]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(cf_name), key);
        self.commit(batch)
    }

    /// Low-level read of one value, for tamper tests and tools.
    #[doc(hidden)]
    pub fn raw_get(&self, cf_name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf_name), key)?)
    }

    /// Total size of the SST and WAL files, for the bytes-per-entry benchmark.
    pub fn disk_usage(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p).map_or(0, |rd| {
                rd.flatten()
                    .map(|e| match e.metadata() {
                        Ok(m) if m.is_dir() => walk(&e.path()),
                        Ok(m) => m.len(),
                        Err(_) => 0,
                    })
                    .sum()
            })
        }
        walk(&self.path)
    }

    /// Flushes memtables to SST files (benchmarks, before measuring disk use).
    pub fn flush(&self) -> Result<(), StoreError> {
        for name in cf::ALL {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }
}

impl NodeReader for Store {
    type Error = StoreError;
    fn node(&self, id: NodeId) -> Result<Hash, StoreError> {
        let raw = self
            .db
            .get_pinned_cf(self.cf(cf::MERKLE), keys::node_key(id))?
            .ok_or(StoreError::MissingNode(id))?;
        raw.as_ref().try_into().map_err(|_| StoreError::Corrupt {
            what: "merkle node",
        })
    }
}
