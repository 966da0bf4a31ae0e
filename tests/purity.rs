//! The pure layers must stay pure: no storage, RPC, messaging, clock or filesystem inside
//! `src/ledger/` (STYLE.md habit 1). This test fails if one creeps in.

#[test]
fn ledger_mechanics_import_no_edge_crate() {
    let forbidden = [
        "rocksdb",
        "tonic",
        "tokio",
        "async_nats",
        "SystemTime",
        "Instant::now",
        "std::fs",
        "std::net",
        "OsRng",
        "thread_rng",
        "std::env",
    ];
    let dir = format!("{}/src/ledger", env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // Only the code, not the docs that say what the module avoids.
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for word in forbidden {
            assert!(!code.contains(word), "{} uses {word}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 6);
}

/// The registry's domain (statements, projection, gates) and the gate-file parser are pure as
/// well: the writer and the verifier call them, so they must not read clocks or storage.
#[test]
fn the_domain_and_the_gates_import_no_edge_crate() {
    let forbidden = [
        "rocksdb",
        "tonic",
        "tokio",
        "async_nats",
        "SystemTime",
        "Instant::now",
        "std::fs",
        "std::net",
        "OsRng",
        "thread_rng",
        "std::env",
    ];
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "src/registry/state.rs",
        "src/registry/governance.rs",
        "src/registry/model.rs",
        "src/registry/statement.rs",
        "src/policy/gates.rs",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for word in forbidden {
            assert!(!code.contains(word), "{file} uses {word}");
        }
    }
}
