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
