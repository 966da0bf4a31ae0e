//! Typed RocksDB keys. Frozen like the entry format: `docs/ledger-format.md` ("On-disk layout")
//! lists them. Integers are big-endian so that RocksDB's byte order is numeric order.

use crate::ledger::entry::Seq;
use crate::ledger::merkle::NodeId;

/// Column families. Their names are part of the on-disk format.
pub mod cf {
    /// `seq (u64 BE)` → stored entry bytes.
    pub const ENTRIES: &str = "entries";
    /// `level (u8) || index (u64 BE)` → 32-byte complete-subtree hash.
    pub const MERKLE: &str = "merkle";
    /// Secondary indexes of the audit API: [`super::index_key`] → empty.
    pub const INDEX: &str = "index";
    /// [`super::MetaKey`] → value.
    pub const META: &str = "meta";
    /// The registry projection.
    pub const STATE: &str = "state";
    /// Statement nonces seen (replay protection).
    pub const NONCES: &str = "nonces";
    /// Publication cursors (NATS outbox).
    pub const OUTBOX: &str = "outbox";

    pub const ALL: [&str; 7] = [ENTRIES, MERKLE, INDEX, META, STATE, NONCES, OUTBOX];
}

/// Keys of the `meta` column family: one byte each.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaKey {
    /// `size (u64 BE) || last leaf hash (32) || last timestamp ms (u64 BE)`: 48 bytes.
    Head = 0x01,
    /// The latest signed checkpoint note, covering exactly `Head.size` entries.
    Checkpoint = 0x02,
    /// The ledger's identity, JSON ([`crate::storage::LedgerInfo`]).
    LedgerInfo = 0x03,
    /// Present (one byte, `0x01`) when the `index` column family covers every entry: written
    /// with the genesis entry, or when an older ledger's index has been built.
    EventIndex = 0x04,
}

impl MetaKey {
    pub fn bytes(self) -> [u8; 1] {
        [self as u8]
    }
}

pub fn entry_key(seq: Seq) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn decode_entry_key(key: &[u8]) -> Option<Seq> {
    Some(Seq::from_be_bytes(key.try_into().ok()?))
}

pub fn node_key(id: NodeId) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = id.level;
    k[1..].copy_from_slice(&id.index.to_be_bytes());
    k
}

/// What an `index` key indexes an entry by.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexTag {
    /// The prompt a statement is about.
    Prompt = b'p',
    /// The actor who signed it.
    Actor = b'a',
}

/// `tag (u8) || name || 0x00`: every key of one name starts with it (names never hold `0x00`).
pub fn index_prefix(tag: IndexTag, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(name.len() + 10);
    k.push(tag as u8);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

/// `index_prefix(tag, name) || seq (u64 BE)`: the entry `seq` concerns `name`.
pub fn index_key(tag: IndexTag, name: &str, seq: Seq) -> Vec<u8> {
    let mut k = index_prefix(tag, name);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn decode_node_key(key: &[u8]) -> Option<NodeId> {
    let (level, index) = key.split_first()?;
    Some(NodeId {
        level: *level,
        index: u64::from_be_bytes(index.try_into().ok()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_numerically() {
        assert_eq!(decode_entry_key(&entry_key(258)), Some(258));
        assert!(entry_key(255) < entry_key(256));
        let id = NodeId {
            level: 3,
            index: 70_000,
        };
        assert_eq!(decode_node_key(&node_key(id)), Some(id));
        assert!(
            node_key(NodeId {
                level: 0,
                index: 255
            }) < node_key(NodeId {
                level: 0,
                index: 256
            })
        );
        assert_eq!(node_key(id).len(), 9);
        assert_eq!(decode_node_key(&[1, 2]), None);
        // One name's keys sort by sequence number and never interleave with a longer name's.
        assert!(index_key(IndexTag::Prompt, "a", 255) < index_key(IndexTag::Prompt, "a", 256));
        assert!(index_key(IndexTag::Prompt, "a", u64::MAX) < index_key(IndexTag::Prompt, "a/b", 0));
        assert!(
            index_key(IndexTag::Prompt, "a", 1).starts_with(&index_prefix(IndexTag::Prompt, "a"))
        );
        assert!(
            !index_key(IndexTag::Prompt, "ab", 1).starts_with(&index_prefix(IndexTag::Prompt, "a"))
        );
    }
}
