//! Ledger mechanics, pure: hashing, Merkle trees and proofs, the entry format, DSSE envelopes,
//! keys, checkpoints, verification. Nothing here does I/O or reads a clock; storage reaches the
//! Merkle code through [`merkle::NodeReader`], and time and randomness are passed in.
//!
//! It knows nothing about prompts: payloads are opaque bytes to it.

pub mod checkpoint;
pub mod dsse;
pub mod entry;
pub mod keys;
pub mod merkle;
pub mod verify;
