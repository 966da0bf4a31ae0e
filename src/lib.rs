//! PromptLedger: the operational record for LLM prompts.
//!
//! # Layout
//!
//! - [`ledger`]: the generic, pure ledger mechanics: RFC 6962 Merkle trees, the entry format,
//!   DSSE envelopes, Ed25519 keys, signed checkpoints and the one verification routine. No
//!   RocksDB, tonic, NATS or clock inside (a test enforces it).
//! - [`storage`]: RocksDB column families, the atomic synced commit, and the single
//!   group-committing writer, generic over a [`storage::writer::Personality`].
//! - [`registry`]: the prompt registry personality: signed statements (the domain events), the
//!   pure projection (`decide`, `apply`, state root), the replaying keyring, the read view.
//! - [`keyfile`]: key files and key environment variables.
//! - [`node`]: whole-ledger operations the CLI and the server share (`init`, `verify`,
//!   `rebuild`).
//! - [`server`]: the gRPC server (`serve(config, listener, shutdown)`), authentication, and the
//!   one mapping of errors to gRPC status codes.
//! - [`client`]: a Rust client that signs statements and manages read sessions.
//! - [`sigbatch`]: batched Ed25519 verification with strict semantics for the write path.
//!
//! The binary (`src/main.rs`) is a thin CLI over these.

pub mod bundle;
pub mod client;
pub mod keyfile;
pub mod ledger;
pub mod node;
pub mod policy;
pub mod publish;
pub mod registry;
pub mod server;
pub mod sigbatch;
pub mod storage;

/// Generated protobuf and gRPC code (`proto/`).
pub mod proto {
    pub mod ledger {
        pub mod v1 {
            tonic::include_proto!("promptledger.ledger.v1");
        }
    }
    pub mod registry {
        pub mod v1 {
            tonic::include_proto!("promptledger.registry.v1");
        }
    }
    /// The echo baseline of the gRPC benchmark.
    pub mod bench {
        pub mod v1 {
            tonic::include_proto!("promptledger.bench.v1");
        }
    }
    /// Encoded `FileDescriptorSet` of every proto file, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("promptledger_descriptor");
}
