//! Compiles the protobuf API with `protox` (pure Rust), so no system `protoc` is needed.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/promptledger/ledger/v1/ledger.proto",
    "proto/promptledger/registry/v1/registry.proto",
    "proto/promptledger/bench/v1/echo.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // Served by gRPC reflection.
    std::fs::write(out.join("promptledger_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
