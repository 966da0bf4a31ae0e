//! Verifying the log as a consumer reads it from the stream: each event must be the next
//! sequence number, link to the previous entry's leaf hash, and hash to the leaf hash its header
//! announces; each checkpoint must be signed by the ledger key (when given) and commit to
//! exactly the entries read so far (a Merkle root recomputed here). No I/O: the `tail` command
//! and the tests feed it messages.

use crate::ledger::checkpoint::Checkpoint;
use crate::ledger::entry::{Entry, Seq};
use crate::ledger::keys::PublicKey;
use crate::ledger::merkle::{self, Frontier, Hash, MemoryTree};

/// Why the stream is not a faithful copy of the log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FollowError {
    #[error("gap: expected sequence {expected}, got {got} (missing {expected}..{got})")]
    Gap { expected: Seq, got: Seq },
    #[error("sequence {got} again (a duplicate), expected {expected}")]
    Duplicate { expected: Seq, got: Seq },
    #[error("entry {seq} does not decode: {reason}")]
    Decode { seq: Seq, reason: String },
    #[error("entry {seq}: header says sequence {seq} but the entry says {inner}")]
    SeqMismatch { seq: Seq, inner: Seq },
    #[error("entry {seq} does not link to the previous entry's leaf hash")]
    BrokenLink { seq: Seq },
    #[error("entry {seq}: its leaf hash header does not match its bytes")]
    LeafMismatch { seq: Seq },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("checkpoint of size {size}: its root differs from the entries in the stream")]
    RootMismatch { size: u64 },
}

/// Follows one ledger's events from the first one the stream holds.
pub struct Follower {
    key: Option<PublicKey>,
    /// Leaf hashes from `first` on; roots are recomputed from them.
    tree: MemoryTree,
    frontier: Frontier,
    first: Option<Seq>,
    next: Seq,
    last_leaf: Option<Hash>,
    checkpoints: u64,
}

/// What one accepted event was.
#[derive(Debug, Clone, PartialEq)]
pub struct Followed {
    pub seq: Seq,
    pub entry: Entry,
}

impl Follower {
    /// `key`: the ledger's public key; without it checkpoints are checked against the entries
    /// but their signatures are not.
    pub fn new(key: Option<PublicKey>) -> Self {
        Follower {
            key,
            tree: MemoryTree::new(),
            frontier: Frontier::new(),
            first: None,
            next: 0,
            last_leaf: None,
            checkpoints: 0,
        }
    }

    /// The next sequence number expected.
    pub fn next(&self) -> Seq {
        self.next
    }

    /// The first sequence number seen (0 unless older messages expired from the stream).
    pub fn first(&self) -> Option<Seq> {
        self.first
    }

    pub fn checkpoints_verified(&self) -> u64 {
        self.checkpoints
    }

    /// One event message: its `PromptLedger-Seq` and `PromptLedger-Leaf-Hash` headers and its
    /// payload (the stored entry bytes).
    pub fn event(
        &mut self,
        seq: Seq,
        leaf_hash_hex: &str,
        bytes: &[u8],
    ) -> Result<Followed, FollowError> {
        if self.first.is_some() && seq != self.next {
            return Err(if seq < self.next {
                FollowError::Duplicate {
                    expected: self.next,
                    got: seq,
                }
            } else {
                FollowError::Gap {
                    expected: self.next,
                    got: seq,
                }
            });
        }
        if self.first.is_none() && seq != 0 {
            // The stream starts later (older messages expired): follow from here; the genesis
            // link and checkpoints cannot be checked without the missing prefix.
            self.next = seq;
        }
        let entry = Entry::decode(bytes).map_err(|e| FollowError::Decode {
            seq,
            reason: e.to_string(),
        })?;
        if entry.seq != seq {
            return Err(FollowError::SeqMismatch {
                seq,
                inner: entry.seq,
            });
        }
        let leaf = merkle::leaf_hash(bytes);
        if hex::encode(leaf) != leaf_hash_hex {
            return Err(FollowError::LeafMismatch { seq });
        }
        let expected_prev = match (self.last_leaf, seq) {
            (Some(prev), _) => Some(prev),
            (None, 0) => Some([0u8; 32]),
            (None, _) => None,
        };
        if let Some(prev) = expected_prev {
            if entry.prev_leaf_hash != prev {
                return Err(FollowError::BrokenLink { seq });
            }
        }
        self.first.get_or_insert(seq);
        if self.first == Some(0) {
            let tree = &mut self.tree;
            self.frontier.append(leaf, |id, h| tree.put(id, h));
        }
        self.last_leaf = Some(leaf);
        self.next = seq + 1;
        Ok(Followed { seq, entry })
    }

    /// One checkpoint message (a signed note). Checked when the stream held every entry from
    /// 0; otherwise only its signature is.
    pub fn checkpoint(&mut self, note: &[u8]) -> Result<Checkpoint, FollowError> {
        let cp = match &self.key {
            Some(key) => {
                Checkpoint::open(note, key).map_err(|e| FollowError::Checkpoint(e.to_string()))?
            }
            None => Checkpoint::read_unverified(note)
                .map_err(|e| FollowError::Checkpoint(e.to_string()))?,
        };
        if self.first == Some(0) || (self.first.is_none() && cp.size == 0) {
            if cp.size > self.next {
                return Err(FollowError::Checkpoint(format!(
                    "size {} is ahead of the entries in the stream ({})",
                    cp.size, self.next
                )));
            }
            let root = merkle::root(&self.tree, cp.size)
                .map_err(|e| FollowError::Checkpoint(format!("{e:?}")))?;
            if root != cp.root {
                return Err(FollowError::RootMismatch { size: cp.size });
            }
            self.checkpoints += 1;
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::dsse::Envelope;
    use crate::ledger::entry::LedgerId;
    use crate::ledger::keys::KeyPair;

    fn log(n: u64, signer: &KeyPair) -> Vec<Vec<u8>> {
        let mut prev = [0u8; 32];
        (0..n)
            .map(|seq| {
                let bytes = Entry {
                    ledger_id: LedgerId([7; 16]),
                    seq,
                    prev_leaf_hash: prev,
                    timestamp_ms: 1_000 + seq,
                    envelope: Envelope::sign(
                        "text/plain",
                        format!("entry {seq}").into_bytes(),
                        &signer.key_id().to_string(),
                        signer.signing_key(),
                    ),
                }
                .encode();
                prev = merkle::leaf_hash(&bytes);
                bytes
            })
            .collect()
    }

    fn checkpoint(entries: &[Vec<u8>], size: usize, key: &KeyPair) -> Vec<u8> {
        Checkpoint {
            origin: key.name().into(),
            size: size as u64,
            root: MemoryTree::from_leaf_hashes(
                entries[..size].iter().map(|e| merkle::leaf_hash(e)),
            )
            .root(),
            extensions: vec![],
        }
        .sign(key)
    }

    fn feed(f: &mut Follower, entries: &[Vec<u8>], seq: u64) -> Result<Followed, FollowError> {
        let bytes = &entries[seq as usize];
        f.event(seq, &hex::encode(merkle::leaf_hash(bytes)), bytes)
    }

    #[test]
    fn a_faithful_stream_verifies_with_its_checkpoints() {
        let key = KeyPair::from_seed("ledger", &[1; 32]).unwrap();
        let entries = log(10, &key);
        let mut f = Follower::new(Some(key.public()));
        for seq in 0..10 {
            feed(&mut f, &entries, seq).unwrap();
            if seq % 3 == 2 {
                f.checkpoint(&checkpoint(&entries, seq as usize + 1, &key))
                    .unwrap();
            }
        }
        // An older checkpoint (a lagging publisher) is still checked against its prefix.
        f.checkpoint(&checkpoint(&entries, 4, &key)).unwrap();
        assert_eq!((f.next(), f.checkpoints_verified()), (10, 4));

        // Without the ledger key, roots are still checked (the signature cannot be).
        let mut keyless = Follower::new(None);
        for seq in 0..4 {
            feed(&mut keyless, &entries, seq).unwrap();
        }
        let stranger = KeyPair::from_seed("ledger", &[9; 32]).unwrap();
        keyless
            .checkpoint(&checkpoint(&entries, 4, &stranger))
            .unwrap();
        let mut forged = entries.clone();
        forged[2] = log(3, &stranger)[2].clone();
        assert_eq!(
            keyless
                .checkpoint(&checkpoint(&forged, 4, &key))
                .unwrap_err(),
            FollowError::RootMismatch { size: 4 }
        );
    }

    #[test]
    fn gaps_duplicates_and_tampering_are_named() {
        let key = KeyPair::from_seed("ledger", &[1; 32]).unwrap();
        let entries = log(6, &key);
        let mut f = Follower::new(Some(key.public()));
        for seq in 0..3 {
            feed(&mut f, &entries, seq).unwrap();
        }
        assert_eq!(
            feed(&mut f, &entries, 4).unwrap_err(),
            FollowError::Gap {
                expected: 3,
                got: 4
            }
        );
        assert_eq!(
            feed(&mut f, &entries, 2).unwrap_err(),
            FollowError::Duplicate {
                expected: 3,
                got: 2
            }
        );
        let mut flipped = entries[3].clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            f.event(3, &hex::encode(merkle::leaf_hash(&entries[3])), &flipped)
                .unwrap_err(),
            FollowError::LeafMismatch { seq: 3 }
        );
        // An entry from another chain, announced with its own (true) leaf hash.
        let other = log(4, &KeyPair::from_seed("other", &[2; 32]).unwrap());
        assert_eq!(
            feed(&mut f, &other, 3).unwrap_err(),
            FollowError::BrokenLink { seq: 3 }
        );
        feed(&mut f, &entries, 3).unwrap();
        let stranger = KeyPair::from_seed("ledger", &[9; 32]).unwrap();
        assert!(matches!(
            f.checkpoint(&checkpoint(&entries, 4, &stranger)),
            Err(FollowError::Checkpoint(_))
        ));
        // Signed by the right key but over other entries.
        let mut forged = entries.clone();
        forged[1] = other[1].clone();
        assert_eq!(
            f.checkpoint(&checkpoint(&forged, 4, &key)).unwrap_err(),
            FollowError::RootMismatch { size: 4 }
        );
        assert!(matches!(
            f.checkpoint(&checkpoint(&log(6, &key), 6, &key)),
            Err(FollowError::Checkpoint(_))
        ));
    }
}
