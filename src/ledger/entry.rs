//! The stored entry format, version 1. Frozen: `docs/ledger-format.md` describes it byte by byte
//! and `tests/golden/` pins it. Hashes and signatures are over these exact bytes; a verifier
//! decodes them but never re-encodes them.
//!
//! ```text
//! offset  size  field
//! 0       1     format version, 0x01
//! 1       16    ledger id
//! 17      8     sequence number, big-endian u64 (0 for the genesis entry)
//! 25      32    previous leaf hash (all zero for sequence 0)
//! 57      8     server timestamp, big-endian u64, milliseconds since the Unix epoch
//! 65      2     payload type length T, big-endian u16 (1..=1024)
//! 67      T     payload type, UTF-8
//! 67+T    4     payload length P, big-endian u32
//! 71+T    P     payload, the bytes the actor signed (inside DSSE PAE)
//! 71+T+P  1     signature count N (1..=16)
//! then N times:
//!         1     key id length K (0..=255)
//!         K     key id, UTF-8 (`name+hhhhhhhh`)
//!         2     signature length S, big-endian u16 (64 for Ed25519)
//!         S     signature over PAE(payload type, payload)
//! ```
//!
//! Nothing follows the last signature. The leaf hash of an entry is `SHA-256(0x00 || bytes)`.

use super::dsse::{self, Envelope, EnvelopeError, Signature};
use super::merkle::{self, Hash};
use std::fmt;

/// The only format version this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Largest payload the format can carry (`u32` length); the API limits it far lower.
pub const MAX_PAYLOAD_LEN: usize = u32::MAX as usize;

/// A ledger's random 128-bit identity; statements name it so they cannot move between ledgers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LedgerId(pub [u8; 16]);

impl LedgerId {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = hex::decode(s).ok()?;
        Some(LedgerId(bytes.try_into().ok()?))
    }
}

impl fmt::Display for LedgerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for LedgerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LedgerId({})", self.to_hex())
    }
}

/// A position in the log. Sequence numbers start at 0 (the genesis entry) and have no gaps.
pub type Seq = u64;

/// One ledger entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub ledger_id: LedgerId,
    pub seq: Seq,
    pub prev_leaf_hash: Hash,
    pub timestamp_ms: u64,
    pub envelope: Envelope,
}

/// Why bytes are not a valid version-1 entry.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DecodeError {
    #[error("entry is truncated in field {0}")]
    Truncated(&'static str),
    #[error("unsupported entry format version {0}")]
    UnsupportedVersion(u8),
    #[error("field {0} is not UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} bytes follow the last signature")]
    TrailingBytes(usize),
    #[error("envelope: {0}")]
    Envelope(#[from] EnvelopeError),
}

impl Entry {
    /// The stored bytes. Panics only if the envelope breaks the limits that
    /// [`Envelope::check_shape`] enforces, which every writer checks first.
    pub fn encode(&self) -> Vec<u8> {
        let env = &self.envelope;
        env.check_shape()
            .expect("envelope shape is checked before sealing");
        let mut out = Vec::with_capacity(
            72 + env.payload_type.len() + env.payload.len() + env.signatures.len() * 100,
        );
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&self.ledger_id.0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.prev_leaf_hash);
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&(env.payload_type.len() as u16).to_be_bytes());
        out.extend_from_slice(env.payload_type.as_bytes());
        out.extend_from_slice(&(env.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&env.payload);
        out.push(env.signatures.len() as u8);
        for s in &env.signatures {
            out.push(s.keyid.len() as u8);
            out.extend_from_slice(s.keyid.as_bytes());
            out.extend_from_slice(&(s.sig.len() as u16).to_be_bytes());
            out.extend_from_slice(&s.sig);
        }
        out
    }

    /// Strict decoding: every length is checked, nothing may trail, the envelope must have the
    /// shape the writer enforces.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        let version = r.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let ledger_id = LedgerId(r.array("ledger id")?);
        let seq = u64::from_be_bytes(r.array("sequence number")?);
        let prev_leaf_hash = r.array("previous leaf hash")?;
        let timestamp_ms = u64::from_be_bytes(r.array("timestamp")?);
        let type_len = u16::from_be_bytes(r.array("payload type length")?) as usize;
        let payload_type = r.utf8(type_len, "payload type")?;
        let payload_len = u32::from_be_bytes(r.array("payload length")?) as usize;
        let payload = r.take(payload_len, "payload")?.to_vec();
        let count = r.u8("signature count")? as usize;
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            let keyid_len = r.u8("key id length")? as usize;
            let keyid = r.utf8(keyid_len, "key id")?;
            let sig_len = u16::from_be_bytes(r.array("signature length")?) as usize;
            let sig = r.take(sig_len, "signature")?.to_vec();
            signatures.push(Signature { keyid, sig });
        }
        if r.pos != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - r.pos));
        }
        let envelope = Envelope {
            payload_type,
            payload,
            signatures,
        };
        envelope.check_shape()?;
        Ok(Entry {
            ledger_id,
            seq,
            prev_leaf_hash,
            timestamp_ms,
            envelope,
        })
    }

    /// The bytes the actor's signatures cover.
    pub fn signed_message(&self) -> Vec<u8> {
        dsse::pae(&self.envelope.payload_type, &self.envelope.payload)
    }
}

/// The RFC 6962 leaf hash of stored entry bytes.
pub fn entry_leaf_hash(stored: &[u8]) -> Hash {
    merkle::leaf_hash(stored)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated(field))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N, field)?.try_into().expect("took N bytes"))
    }

    fn utf8(&mut self, n: usize, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.take(n, field)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::NotUtf8(field))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    fn sample() -> Entry {
        let key = SigningKey::from_bytes(&[3; 32]);
        Entry {
            ledger_id: LedgerId([9; 16]),
            seq: 7,
            prev_leaf_hash: [1; 32],
            timestamp_ms: 1_700_000_000_000,
            envelope: Envelope::sign("application/x", b"hi".to_vec(), "admin+01020304", &key),
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let e = sample();
        assert_eq!(Entry::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn fixed_offsets_match_the_documented_layout() {
        let bytes = sample().encode();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(&bytes[1..17], &[9; 16]);
        assert_eq!(&bytes[17..25], &7u64.to_be_bytes());
        assert_eq!(&bytes[25..57], &[1; 32]);
        assert_eq!(&bytes[57..65], &1_700_000_000_000u64.to_be_bytes());
        assert_eq!(&bytes[65..67], &13u16.to_be_bytes());
        assert_eq!(&bytes[67..80], b"application/x");
        assert_eq!(bytes.len(), 80 + 4 + 2 + 1 + 1 + 14 + 2 + 64);
    }

    #[test]
    fn trailing_and_truncated_bytes_are_refused() {
        let mut bytes = sample().encode();
        bytes.push(0);
        assert_eq!(Entry::decode(&bytes), Err(DecodeError::TrailingBytes(1)));
        bytes.truncate(bytes.len() - 2);
        assert_eq!(
            Entry::decode(&bytes),
            Err(DecodeError::Truncated("signature"))
        );
        bytes[0] = 2;
        assert_eq!(
            Entry::decode(&bytes),
            Err(DecodeError::UnsupportedVersion(2))
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Entry::decode(&bytes);
        }

        #[test]
        fn every_truncation_is_refused(cut in 0usize..170) {
            let bytes = sample().encode();
            prop_assume!(cut < bytes.len());
            prop_assert!(Entry::decode(&bytes[..cut]).is_err());
        }
    }
}
