//! Export bundles: one file with a signed checkpoint and every entry it covers, for auditors
//! who verify offline, trusting only the ledger's public key. Format (`docs/ledger-format.md`
//! §10), all integers big-endian:
//!
//! ```text
//! 8      magic "PLBUNDLE"
//! 1      bundle format version, 0x01
//! 4 + C  checkpoint note, as the ledger signed it
//! 4 + K  the ledger's verifier key (`name+hhhhhhhh+base64`), UTF-8
//! 8      entry count N (must equal the checkpoint's tree size)
//! N ×    4 + E  an entry's stored bytes (docs/ledger-format.md §4), sequence numbers 0..N
//! ```
//!
//! Nothing follows the last entry. Actor keys need no section of their own: the log
//! introduces them (genesis, `register_actor`, `rotate_key`), and verification replays it.

use crate::ledger::checkpoint::Checkpoint;
use crate::ledger::keys::PublicKey;
use crate::ledger::merkle::{self, Frontier, Hash};
use crate::ledger::verify::{self, Observers, Verified, VerifyError};
use crate::registry::keyring::RegistryKeyring;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"PLBUNDLE";
pub const FORMAT_VERSION: u8 = 1;
/// Largest checkpoint note or key a bundle may carry.
const MAX_HEADER_FIELD: u32 = 64 * 1024;
/// Largest entry a bundle may carry (the format's payload limit plus framing).
const MAX_ENTRY: u32 = 1 << 30;

/// Why a bundle is refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("reading the bundle: {0}")]
    Io(#[from] io::Error),
    #[error("not a PromptLedger bundle (the file does not start with PLBUNDLE)")]
    NotABundle,
    #[error("bundle format version {0} is not supported (this verifier reads version 1)")]
    Version(u8),
    #[error("the bundle ends inside {what}")]
    Truncated { what: String },
    #[error("{what} is {len} bytes, more than a bundle may hold")]
    Oversized { what: &'static str, len: u32 },
    #[error("the bundle's ledger key field is not UTF-8")]
    KeyNotUtf8,
    #[error("the bundle names ledger key {found}, but you trust {trusted}")]
    KeyMismatch { trusted: String, found: String },
    #[error("the bundle holds {count} entries but its checkpoint covers {size}")]
    CountMismatch { count: u64, size: u64 },
    #[error("{0} bytes follow the last entry")]
    TrailingBytes(u64),
    #[error("{0}")]
    Verify(#[from] VerifyError),
    #[error("the state root replayed from the entries differs from the one the checkpoint signs")]
    StateRootMismatch,
    #[error("not an extension: the earlier bundle's checkpoint (size {old_size}) is not a prefix of this one (size {new_size}): {why}")]
    NotExtension {
        old_size: u64,
        new_size: u64,
        why: String,
    },
}

impl BundleError {
    /// The sequence number involved, if the failure concerns one entry.
    pub fn seq(&self) -> Option<u64> {
        match self {
            BundleError::Verify(e) => e.seq(),
            _ => None,
        }
    }
}

fn put_field(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u32).to_be_bytes())?;
    out.write_all(bytes)
}

/// Writes a bundle of `checkpoint` (signed by `ledger_vkey`'s key) and its `count` entries.
/// `progress` is called with the number of entries written.
pub fn write<W: Write, E: std::fmt::Display>(
    out: &mut W,
    checkpoint: &[u8],
    ledger_vkey: &str,
    count: u64,
    entries: impl IntoIterator<Item = Result<Vec<u8>, E>>,
    mut progress: impl FnMut(u64),
) -> Result<u64, io::Error> {
    out.write_all(MAGIC)?;
    out.write_all(&[FORMAT_VERSION])?;
    put_field(out, checkpoint)?;
    put_field(out, ledger_vkey.as_bytes())?;
    out.write_all(&count.to_be_bytes())?;
    let mut written = 0;
    for entry in entries.into_iter().take(count as usize) {
        let entry = entry.map_err(|e| io::Error::other(format!("entry {written}: {e}")))?;
        put_field(out, &entry)?;
        written += 1;
        if written % 4096 == 0 {
            progress(written);
        }
    }
    if written != count {
        return Err(io::Error::other(format!(
            "the store holds {written} entries, the checkpoint covers {count}"
        )));
    }
    progress(written);
    Ok(written)
}

/// A bundle's header.
#[derive(Clone, Debug)]
pub struct Header {
    pub checkpoint: Vec<u8>,
    pub ledger_vkey: String,
    pub count: u64,
}

/// Reads a bundle: the header at once, the entries as an iterator.
pub struct Reader<R: BufRead> {
    input: R,
    header: Header,
    next: u64,
    failed: bool,
}

fn read_exact_or(
    input: &mut impl Read,
    buf: &mut [u8],
    what: impl Fn() -> String,
) -> Result<(), BundleError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => BundleError::Truncated { what: what() },
        _ => BundleError::Io(e),
    })
}

fn read_field(input: &mut impl Read, what: &'static str, max: u32) -> Result<Vec<u8>, BundleError> {
    let mut len = [0u8; 4];
    read_exact_or(input, &mut len, || format!("the length of {what}"))?;
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(BundleError::Oversized { what, len });
    }
    let mut buf = vec![0u8; len as usize];
    read_exact_or(input, &mut buf, || what.to_owned())?;
    Ok(buf)
}

impl<R: BufRead> Reader<R> {
    pub fn open(mut input: R) -> Result<Self, BundleError> {
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|_| BundleError::NotABundle)?;
        if &magic != MAGIC {
            return Err(BundleError::NotABundle);
        }
        let mut version = [0u8; 1];
        read_exact_or(&mut input, &mut version, || "the format version".into())?;
        if version[0] != FORMAT_VERSION {
            return Err(BundleError::Version(version[0]));
        }
        let checkpoint = read_field(&mut input, "the checkpoint", MAX_HEADER_FIELD)?;
        let vkey = read_field(&mut input, "the ledger key", MAX_HEADER_FIELD)?;
        let ledger_vkey = String::from_utf8(vkey).map_err(|_| BundleError::KeyNotUtf8)?;
        let mut count = [0u8; 8];
        read_exact_or(&mut input, &mut count, || "the entry count".into())?;
        Ok(Reader {
            input,
            header: Header {
                checkpoint,
                ledger_vkey,
                count: u64::from_be_bytes(count),
            },
            next: 0,
            failed: false,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<Vec<u8>, BundleError>;

    /// The next entry; after the last one, an error if anything follows it.
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.next == self.header.count {
            self.failed = true; // once
            return match self.input.fill_buf() {
                Ok([]) => None,
                Ok(_) => {
                    let mut rest = 0u64;
                    let mut sink = [0u8; 8192];
                    while let Ok(n) = self.input.read(&mut sink) {
                        if n == 0 {
                            break;
                        }
                        rest += n as u64;
                    }
                    Some(Err(BundleError::TrailingBytes(rest)))
                }
                Err(e) => Some(Err(e.into())),
            };
        }
        let seq = self.next;
        self.next += 1;
        let mut len = [0u8; 4];
        let item =
            read_exact_or(&mut self.input, &mut len, || format!("entry {seq}")).and_then(|()| {
                let len = u32::from_be_bytes(len);
                if len > MAX_ENTRY {
                    return Err(BundleError::Oversized {
                        what: "an entry",
                        len,
                    });
                }
                let mut buf = vec![0u8; len as usize];
                read_exact_or(&mut self.input, &mut buf, || format!("entry {seq}"))?;
                Ok(buf)
            });
        if item.is_err() {
            self.failed = true;
        }
        Some(item)
    }
}

/// What a verified bundle holds.
#[derive(Debug)]
pub struct Report {
    pub verified: Verified,
    pub entries: u64,
}

/// Verifies the bundle at `path` completely, trusting only `ledger_key`: the header, every
/// entry (encoding, sequence, chain, timestamps, actor keys and signatures, every decision
/// replayed), the Merkle root and state root the checkpoint signs, and that nothing follows.
pub fn verify(
    path: &Path,
    ledger_key: &PublicKey,
    progress: Option<&mut dyn FnMut(u64)>,
) -> Result<Report, BundleError> {
    let mut reader = Reader::open(BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path)?,
    ))?;
    let header = reader.header().clone();
    if header.ledger_vkey != ledger_key.to_vkey() {
        return Err(BundleError::KeyMismatch {
            trusted: ledger_key.to_vkey(),
            found: header.ledger_vkey,
        });
    }
    let checkpoint = Checkpoint::open(&header.checkpoint, ledger_key).map_err(VerifyError::from)?;
    if header.count != checkpoint.size {
        return Err(BundleError::CountMismatch {
            count: header.count,
            size: checkpoint.size,
        });
    }
    // Trailing bytes surface as the iterator's last item; keep it apart from verify_log's
    // read errors so the message says what it is.
    let mut trailing: Option<BundleError> = None;
    let entries = reader.by_ref().map_while(|item| match item {
        Err(BundleError::TrailingBytes(n)) => {
            trailing = Some(BundleError::TrailingBytes(n));
            None
        }
        other => Some(other),
    });
    let mut keyring = RegistryKeyring::new();
    let observers = Observers {
        progress,
        node: None,
    };
    let verified = verify::verify_log(
        entries,
        ledger_key,
        &header.checkpoint,
        &mut keyring,
        observers,
    )?;
    if let Some(e) = trailing {
        return Err(e);
    }
    if let Some(signed) = verified.checkpoint.state_root() {
        if signed != keyring.state().state_root() {
            return Err(BundleError::StateRootMismatch);
        }
    }
    Ok(Report {
        entries: header.count,
        verified,
    })
}

/// Checks that the bundle at `path` extends an earlier verified checkpoint: the Merkle root of
/// its first `old.size` entries is `old.root`. Verify both bundles first.
pub fn check_extends(path: &Path, old: &Checkpoint) -> Result<(), BundleError> {
    let reader = Reader::open(BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path)?,
    ))?;
    let new_size = reader.header().count;
    let not = |why: String| BundleError::NotExtension {
        old_size: old.size,
        new_size,
        why,
    };
    if old.size > new_size {
        return Err(not("the earlier one is longer".into()));
    }
    let mut frontier = Frontier::new();
    for entry in reader.take(old.size as usize) {
        frontier.append(merkle::leaf_hash(&entry?), |_, _| {});
    }
    let root: Hash = frontier.root();
    if root != old.root {
        return Err(not(format!(
            "the root of its first {} entries is {}, the earlier checkpoint signs {}",
            old.size,
            hex::encode(root),
            hex::encode(old.root)
        )));
    }
    Ok(())
}
