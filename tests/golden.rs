//! Golden vectors for the stored entry encoding and the signed checkpoint text. An accidental
//! format change fails here. Regenerate deliberately with:
//!
//! ```text
//! UPDATE_GOLDEN=1 cargo test --test golden
//! ```

use promptledger::ledger::checkpoint::Checkpoint;
use promptledger::ledger::dsse::Envelope;
use promptledger::ledger::entry::{Entry, LedgerId};
use promptledger::ledger::keys::KeyPair;
use promptledger::ledger::merkle;

fn golden(name: &str, actual: &str) {
    let path = format!("{}/tests/golden/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{path} missing: run UPDATE_GOLDEN=1 cargo test --test golden"));
    assert_eq!(
        actual, expected,
        "{name} changed; if on purpose, bump the format version and regenerate"
    );
}

fn sample_entry() -> Entry {
    let actor = KeyPair::from_seed("alice", &[0x11; 32]).unwrap();
    let envelope = Envelope::sign(
        "application/vnd.promptledger.statement.v1+json",
        br#"{"example":"payload"}"#.to_vec(),
        actor.key_id().as_str(),
        actor.signing_key(),
    );
    Entry {
        ledger_id: LedgerId([0xAB; 16]),
        seq: 1,
        prev_leaf_hash: merkle::leaf_hash(b"genesis"),
        timestamp_ms: 1_767_225_600_000,
        envelope,
    }
}

#[test]
fn entry_v1_encoding_is_frozen() {
    let entry = sample_entry();
    let bytes = entry.encode();
    let text = format!(
        "entry_hex {}\nleaf_hash_hex {}\n",
        hex::encode(&bytes),
        hex::encode(merkle::leaf_hash(&bytes))
    );
    golden("entry_v1.txt", &text);
    assert_eq!(Entry::decode(&bytes).unwrap(), entry);
}

#[test]
fn checkpoint_text_is_frozen() {
    let key =
        KeyPair::from_seed("promptledger/abababababababababababababababab", &[0x22; 32]).unwrap();
    let cp = Checkpoint {
        origin: key.name().to_owned(),
        size: 2,
        root: merkle::node_hash(
            &merkle::leaf_hash(b"genesis"),
            &merkle::leaf_hash(&sample_entry().encode()),
        ),
        extensions: vec![],
    }
    .with_state_root(&[0x33; 32]);
    let note = cp.sign(&key);
    golden("checkpoint_v1.txt", std::str::from_utf8(&note).unwrap());
    golden("ledger_v1.pub", &format!("{}\n", key.public().to_vkey()));
    assert_eq!(Checkpoint::open(&note, &key.public()).unwrap(), cp);
}
