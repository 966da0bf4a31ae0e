//! The pure layers must stay pure: no storage, RPC, messaging, clock or filesystem inside
//! `src/ledger/`, the registry's domain or the gate parser (STYLE.md habit 1). This test fails if
//! one creeps in.

const FORBIDDEN: [&str; 11] = [
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

/// Fails if the code of `path` (comments aside: docs may say what a module avoids) names an
/// edge crate or facility.
fn assert_pure(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for word in FORBIDDEN {
        assert!(!code.contains(word), "{} uses {word}", path.display());
    }
}

#[test]
fn ledger_mechanics_import_no_edge_crate() {
    let dir = format!("{}/src/ledger", env!("CARGO_MANIFEST_DIR"));
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        assert_pure(&entry.unwrap().path());
        checked += 1;
    }
    assert!(checked >= 6);
}

/// The registry's domain (statements, projection, gates, audit filters) and the gate-file
/// parser are pure as well: the writer and the verifier call them.
#[test]
fn the_domain_and_the_gates_import_no_edge_crate() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in [
        "src/registry/state.rs",
        "src/registry/governance.rs",
        "src/registry/model.rs",
        "src/registry/statement.rs",
        "src/registry/events.rs",
        "src/policy/gates.rs",
    ] {
        assert_pure(&std::path::Path::new(root).join(file));
    }
}
