//! PromptLedger: the operational record for LLM prompts.
//!
//! # Layout
//!
//! - [`ledger`]: the generic, pure ledger mechanics: RFC 6962 Merkle trees, the entry format,
//!   DSSE envelopes, Ed25519 keys, signed checkpoints and the one verification routine. No
//!   RocksDB, tonic, NATS or clock inside (a test enforces it).
//! - [`storage`]: RocksDB column families, the atomic synced commit, and the single
//!   group-committing writer, generic over a [`storage::writer::Personality`].
//! - [`registry`]: the prompt registry personality: signed statements and the actor keyring.
//! - [`keyfile`]: key files and key environment variables.
//! - [`node`]: whole-ledger operations the CLI and the server share (`init`, `verify`).
//!
//! The binary (`src/main.rs`) is a thin CLI over these.

pub mod keyfile;
pub mod ledger;
pub mod node;
pub mod registry;
pub mod storage;

/// Generated protobuf and gRPC code (`proto/`).
pub mod proto {
    pub mod ledger {
        pub mod v1 {
            tonic::include_proto!("promptledger.ledger.v1");
        }
    }
    /// Encoded `FileDescriptorSet` of every proto file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("promptledger_descriptor");
}
