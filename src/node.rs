//! Whole-ledger operations shared by the CLI, the server and the tests: creating a ledger in a
//! data directory, opening it, and verifying it offline.
//!
//! A data directory holds:
//!
//! ```text
//! DIR/db/            RocksDB (entries, Merkle nodes, metadata, ...)
//! DIR/ledger.pub     the ledger's verifier key (public; what auditors trust)
//! DIR/keys/ledger.key  the ledger's signer key (0600; signs checkpoints)
//! DIR/keys/admin.key   the first administrator's signer key (0600; move it somewhere safe)
//! ```

use crate::keyfile::{self, KeyFileError};
use crate::ledger::dsse::Envelope;
use crate::ledger::entry::LedgerId;
use crate::ledger::entry::FORMAT_VERSION;
use crate::ledger::keys::{KeyError, KeyPair, PublicKey};
use crate::ledger::merkle::{Hash, NodeId};
use crate::ledger::verify::{self, Observers, Verified, VerifyError};
use crate::policy::{Policy, PolicyFiles};
use crate::registry::keyring::RegistryKeyring;
use crate::registry::personality::{Registry, Submission};
use crate::registry::statement::{Action, Statement, STATEMENT_PAYLOAD_TYPE};
use crate::storage::writer::{Ledger, Personality, WriterConfig};
use crate::storage::{LedgerInfo, Store, StoreError};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;

/// Environment variable that may hold the ledger's signer key instead of `DIR/keys/ledger.key`.
pub const LEDGER_KEY_ENV: &str = "PROMPTLEDGER_LEDGER_KEY";

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("ledger key: {0}")]
    LedgerKey(KeyError),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the ledger has no checkpoint yet (no entry was ever committed)")]
    NoCheckpoint,
    #[error("checkpoint at tree size {size}: {source}")]
    Checkpoint { size: u64, source: VerifyError },
    #[error(transparent)]
    Verify(VerifyError),
    #[error("checkpoint at tree size {size}: the signed state root does not match the projection replayed from the log")]
    StateRootMismatch { size: u64 },
    #[error("the genesis entry could not be written: {0}")]
    Genesis(String),
}

impl NodeError {
    /// The sequence number a verification failure concerns, if any.
    pub fn seq(&self) -> Option<u64> {
        match self {
            NodeError::Verify(e) => e.seq(),
            NodeError::Checkpoint { size, .. } | NodeError::StateRootMismatch { size } => {
                Some(*size)
            }
            _ => None,
        }
    }
}

/// Paths inside a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }
    pub fn db(&self) -> PathBuf {
        self.root.join("db")
    }
    pub fn ledger_pub(&self) -> PathBuf {
        self.root.join("ledger.pub")
    }
    pub fn ledger_key(&self) -> PathBuf {
        self.root.join("keys").join("ledger.key")
    }
    pub fn admin_key(&self) -> PathBuf {
        self.root.join("keys").join("admin.key")
    }
    pub fn is_initialized(&self) -> bool {
        self.db().join("CURRENT").exists()
    }
}

/// What `init` created.
#[derive(Debug)]
pub struct InitReport {
    pub ledger_id: LedgerId,
    pub origin: String,
    pub ledger_vkey: String,
    pub admin_vkey: String,
    pub admin_key_path: PathBuf,
    pub genesis_checkpoint: Vec<u8>,
}

/// Creates a new ledger in `dir` under the shipped default policy; see [`init_with_policy`].
pub fn init(dir: &DataDir, now_ms: u64) -> Result<InitReport, NodeError> {
    init_with_policy(dir, now_ms, PolicyFiles::builtin())
}

/// Creates a new ledger in `dir`: ledger id, ledger key, first admin key, the genesis entry
/// (sequence 0) and the admin's `set_policy` entry recording `policy` (sequence 1).
pub fn init_with_policy(
    dir: &DataDir,
    now_ms: u64,
    policy: PolicyFiles,
) -> Result<InitReport, NodeError> {
    // A broken policy must not leave a half-made ledger behind.
    Policy::new(policy.clone()).map_err(|e| NodeError::Genesis(format!("policy: {e}")))?;
    if dir.is_initialized() {
        return Err(StoreError::AlreadyInitialized(dir.root.clone()).into());
    }
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    let ledger_id = LedgerId(id);
    let origin = format!("promptledger/{}", ledger_id.to_hex());
    let ledger_key = KeyPair::generate(&origin, &mut OsRng).map_err(NodeError::LedgerKey)?;
    let admin_key = KeyPair::generate("admin", &mut OsRng).map_err(NodeError::LedgerKey)?;

    keyfile::write_key(&dir.ledger_key(), &ledger_key)?;
    keyfile::write_key(&dir.admin_key(), &admin_key)?;
    let ledger_vkey = ledger_key.public().to_vkey();
    std::fs::write(dir.ledger_pub(), format!("{ledger_vkey}\n")).map_err(|source| {
        NodeError::Io {
            path: dir.ledger_pub(),
            source,
        }
    })?;

    let store = Arc::new(Store::create(&dir.db())?);
    store.put_ledger_info(&LedgerInfo {
        ledger_id: ledger_id.to_hex(),
        origin: origin.clone(),
        ledger_vkey: ledger_vkey.clone(),
        format_version: FORMAT_VERSION,
    })?;
    let statement = Statement {
        ledger_id: ledger_id.to_hex(),
        actor: admin_key.name().to_owned(),
        issued_at_ms: now_ms,
        nonce: random_nonce(),
        action: Action::Genesis {
            origin: origin.clone(),
            ledger_key: ledger_vkey.clone(),
            admin_key: admin_key.public().to_vkey(),
        },
    };
    let registry = Registry::load(&store)?;
    let ledger = Ledger::open(store, ledger_key, registry, WriterConfig::default())?;
    let submit = |statement: Statement| {
        let payload = statement.to_payload();
        let envelope = Envelope::sign(
            STATEMENT_PAYLOAD_TYPE,
            payload.clone(),
            admin_key.key_id().as_str(),
            admin_key.signing_key(),
        );
        ledger
            .appender()
            .submit_blocking(Submission {
                envelope,
                statement,
                signer: admin_key.key_id().to_string(),
                payload_hash: Sha256::digest(&payload).into(),
            })
            .map_err(|e| NodeError::Genesis(e.to_string()))
    };
    submit(statement)?;
    let receipt = submit(Statement {
        ledger_id: ledger_id.to_hex(),
        actor: admin_key.name().to_owned(),
        issued_at_ms: now_ms,
        nonce: random_nonce(),
        action: Action::SetPolicy { files: policy },
    })?;
    ledger.close();
    Ok(InitReport {
        ledger_id,
        origin,
        ledger_vkey,
        admin_vkey: admin_key.public().to_vkey(),
        admin_key_path: dir.admin_key(),
        genesis_checkpoint: receipt.checkpoint.to_vec(),
    })
}

/// 16 random bytes, hex.
pub fn random_nonce() -> String {
    let mut nonce = [0u8; 16];
    OsRng.fill_bytes(&mut nonce);
    hex::encode(nonce)
}

/// The ledger's signer key: `$PROMPTLEDGER_LEDGER_KEY` if set, else `DIR/keys/ledger.key`.
pub fn ledger_signer(dir: &DataDir) -> Result<KeyPair, NodeError> {
    Ok(keyfile::load_key(Some(&dir.ledger_key()), LEDGER_KEY_ENV)?)
}

/// Opens the ledger in `dir` for appending, with the given personality.
pub fn open<P: Personality>(
    dir: &DataDir,
    personality: P,
    config: WriterConfig,
) -> Result<Ledger<P>, NodeError> {
    let key = ledger_signer(dir)?;
    let store = Arc::new(Store::open(&dir.db())?);
    Ok(Ledger::open(store, key, personality, config)?)
}

/// The ledger's public key: `vkey` if given, else `DIR/ledger.pub`.
pub fn ledger_public_key(dir: &DataDir, vkey: Option<&str>) -> Result<PublicKey, NodeError> {
    let text = match vkey {
        Some(v) => v.to_owned(),
        None => std::fs::read_to_string(dir.ledger_pub()).map_err(|source| NodeError::Io {
            path: dir.ledger_pub(),
            source,
        })?,
    };
    PublicKey::from_vkey(text.trim()).map_err(NodeError::LedgerKey)
}

/// Verifies the whole ledger in `dir`, read-only: every entry, link and signature, every stored
/// Merkle node, and the stored checkpoint against the ledger's public key. `progress` gets
/// `(checked, total)`.
pub fn verify_dir(
    dir: &DataDir,
    ledger_vkey: Option<&str>,
    progress: Option<&mut dyn FnMut(u64, u64)>,
) -> Result<Verified, NodeError> {
    let key = ledger_public_key(dir, ledger_vkey)?;
    let store = Store::open_read_only(&dir.db())?;
    verify_store(&store, &key, progress)
}

/// [`verify_dir`] on an open store.
pub fn verify_store(
    store: &Store,
    key: &PublicKey,
    progress: Option<&mut dyn FnMut(u64, u64)>,
) -> Result<Verified, NodeError> {
    let head = store.head()?;
    let note = store.checkpoint()?.ok_or(NodeError::NoCheckpoint)?;
    let entries = store
        .scan_entries_from(0)
        .map(|r| r.map(|(_, bytes)| bytes));
    // Nodes of each level are produced in index order, so one sequential cursor per level
    // compares them with what is stored, without random reads.
    type LevelCursor<'s> = Box<dyn Iterator<Item = Result<(NodeId, Hash), StoreError>> + 's>;
    let mut cursors: Vec<LevelCursor<'_>> = Vec::new();
    let mut node_check = |id: NodeId, hash: &[u8; 32]| -> Result<(), String> {
        while cursors.len() <= id.level as usize {
            let level = cursors.len() as u8;
            cursors.push(Box::new(store.level_nodes(level)));
        }
        match cursors[id.level as usize].next() {
            Some(Ok((stored_id, stored))) if stored_id == id && &stored == hash => Ok(()),
            Some(Ok((stored_id, _))) if stored_id == id => Err("hash differs".into()),
            Some(Ok(_)) | None => Err("missing".into()),
            Some(Err(e)) => Err(e.to_string()),
        }
    };
    let mut progress_total = progress.map(|p| move |n: u64| p(n, head.size));
    let observers = Observers {
        progress: progress_total.as_mut().map(|p| p as &mut dyn FnMut(u64)),
        node: Some(&mut node_check),
    };
    let mut keyring = RegistryKeyring::new();
    let verified =
        verify::verify_log(entries, key, &note, &mut keyring, observers).map_err(|e| match e {
            VerifyError::Checkpoint(_) | VerifyError::RootMismatch { .. } => {
                NodeError::Checkpoint {
                    size: head.size,
                    source: e,
                }
            }
            other => NodeError::Verify(other),
        })?;
    // The projection replayed from the log alone must match the state root the ledger signed.
    if let Some(signed) = verified.checkpoint.state_root() {
        if signed != keyring.state().state_root() {
            return Err(NodeError::StateRootMismatch {
                size: verified.checkpoint.size,
            });
        }
    }
    Ok(verified)
}

/// What `rebuild` found.
#[derive(Debug)]
pub struct RebuildReport {
    pub entries: u64,
    /// State root of the projection replayed from the log alone.
    pub replayed: Hash,
    /// State root of the projection stored beside the log.
    pub stored: Hash,
    /// State root in the latest checkpoint, if the last commit wrote one.
    pub signed: Option<Hash>,
}

impl RebuildReport {
    pub fn consistent(&self) -> bool {
        self.replayed == self.stored && self.signed.is_none_or(|s| s == self.replayed)
    }
}

/// Replays the whole log into a fresh projection (verifying it on the way) and compares its
/// state root with the stored projection's and the signed checkpoint's.
pub fn rebuild(dir: &DataDir) -> Result<RebuildReport, NodeError> {
    let key = ledger_public_key(dir, None)?;
    let store = Store::open_read_only(&dir.db())?;
    let note = store.checkpoint()?.ok_or(NodeError::NoCheckpoint)?;
    let entries = store
        .scan_entries_from(0)
        .map(|r| r.map(|(_, bytes)| bytes));
    let mut keyring = RegistryKeyring::new();
    let verified = verify::verify_log(entries, &key, &note, &mut keyring, Observers::default())
        .map_err(NodeError::Verify)?;
    let stored = Registry::load(&store)?.state().state_root();
    Ok(RebuildReport {
        entries: verified.checkpoint.size,
        replayed: keyring.state().state_root(),
        stored,
        signed: verified.checkpoint.state_root(),
    })
}
