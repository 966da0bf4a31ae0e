//! The ledger on real RocksDB: appends through the group-commit writer, reopen, verification,
//! and tampering with every stored byte that matters.

use promptledger::keyfile;
use promptledger::ledger::checkpoint::Checkpoint;
use promptledger::ledger::dsse::Envelope;
use promptledger::ledger::entry::Entry;
use promptledger::ledger::keys::KeyPair;
use promptledger::ledger::merkle::{self, NodeReader};
use promptledger::ledger::verify::VerifyError;
use promptledger::node::{self, DataDir, NodeError};
use promptledger::storage::keys::{cf, entry_key, node_key, MetaKey};
use promptledger::storage::writer::{RawLog, WriterConfig};
use promptledger::storage::Store;
use std::collections::BTreeSet;

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: DataDir,
    admin: KeyPair,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    node::init(&dir, 1_700_000_000_000).unwrap();
    let admin = keyfile::read_key(&dir.admin_key()).unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        admin,
    }
}

fn signed(admin: &KeyPair, i: u64) -> Envelope {
    Envelope::sign(
        "application/octet-stream",
        format!("entry {i}").into_bytes(),
        admin.key_id().as_str(),
        admin.signing_key(),
    )
}

/// Appends `n` entries from several concurrent tasks; returns the receipts' sequence numbers
/// and how many distinct checkpoints (commit groups) answered them.
fn append(f: &Fixture, n: u64) -> (Vec<u64>, usize) {
    let ledger = node::open(&f.dir, RawLog, WriterConfig::default()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let receipts = rt.block_on(async {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let appender = ledger.appender();
                let env = signed(&f.admin, i);
                tokio::spawn(async move { appender.submit(env).await.unwrap() })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    ledger.close();
    let seqs = receipts.iter().map(|r| r.seq).collect();
    let groups: BTreeSet<Vec<u8>> = receipts.iter().map(|r| r.checkpoint.to_vec()).collect();
    // Every receipt's checkpoint includes its entry.
    let key = node::ledger_public_key(&f.dir, None).unwrap();
    for r in &receipts {
        let cp = Checkpoint::open(&r.checkpoint, &key).unwrap();
        assert!(cp.size > r.seq);
    }
    (seqs, groups.len())
}

#[test]
fn concurrent_appends_get_contiguous_sequence_numbers_in_few_commits() {
    let f = fixture();
    let (mut seqs, groups) = append(&f, 500);
    seqs.sort();
    assert_eq!(
        seqs,
        (2..=501).collect::<Vec<_>>(),
        "genesis is 0, the initial policy 1, then no gap, no duplicate"
    );
    assert!(
        groups < 500,
        "group commit: {groups} commits for 500 appends"
    );
    let v = node::verify_dir(&f.dir, None, None).unwrap();
    assert_eq!(v.checkpoint.size, 502);
}

#[test]
fn reopen_restores_head_and_frontier_without_replaying_entries() {
    let f = fixture();
    append(&f, 37);
    // Remove an early entry behind the ledger's back: reopening must not notice, because it
    // reads only the head and O(log n) Merkle nodes, never the entries.
    {
        let store = Store::open(&f.dir.db()).unwrap();
        let bytes = store.entry(3).unwrap().unwrap();
        store.raw_put(cf::ENTRIES, &entry_key(3), b"").unwrap();
        drop(store);
        let ledger = node::open(&f.dir, RawLog, WriterConfig::default()).unwrap();
        let head = ledger.store().head().unwrap();
        assert_eq!(head.size, 39);
        assert_eq!(merkle::root(ledger.store().as_ref(), 39).unwrap(), {
            let cp = ledger.store().checkpoint().unwrap().unwrap();
            Checkpoint::open(&cp, &node::ledger_public_key(&f.dir, None).unwrap())
                .unwrap()
                .root
        });
        drop(ledger);
        assert!(matches!(
            node::verify_dir(&f.dir, None, None),
            Err(NodeError::Verify(VerifyError::Decode { seq: 3, .. }))
        ));
        Store::open(&f.dir.db())
            .unwrap()
            .raw_put(cf::ENTRIES, &entry_key(3), &bytes)
            .unwrap();
    }
    // Appends continue from the restored head: next sequence, chained to the last leaf.
    let (seqs, _) = append(&f, 5);
    assert_eq!(seqs.iter().min(), Some(&39));
    let store = Store::open_read_only(&f.dir.db()).unwrap();
    let e39 = Entry::decode(&store.entry(39).unwrap().unwrap()).unwrap();
    assert_eq!(
        e39.prev_leaf_hash,
        merkle::leaf_hash(&store.entry(38).unwrap().unwrap())
    );
    drop(store);
    assert_eq!(
        node::verify_dir(&f.dir, None, None)
            .unwrap()
            .checkpoint
            .size,
        44
    );
}

#[test]
fn a_second_init_is_refused() {
    let f = fixture();
    assert!(matches!(node::init(&f.dir, 0), Err(NodeError::Store(_))));
}

#[test]
fn entries_signed_by_an_unknown_key_fail_verification_at_their_sequence() {
    let f = fixture();
    append(&f, 4);
    let stranger = KeyPair::from_seed("mallory", &[9; 32]).unwrap();
    let ledger = node::open(&f.dir, RawLog, WriterConfig::default()).unwrap();
    // RawLog appends whatever it is given; the verifier must catch it.
    ledger
        .appender()
        .submit_blocking(signed(&stranger, 0))
        .unwrap();
    drop(ledger);
    let err = node::verify_dir(&f.dir, None, None).unwrap_err();
    assert!(
        matches!(&err, NodeError::Verify(VerifyError::UnknownKey { seq: 6, keyid }) if keyid.starts_with("mallory+")),
        "{err}"
    );
}

#[test]
fn verification_against_another_ledger_key_fails() {
    let f = fixture();
    let other = KeyPair::from_seed(&format!("promptledger/{}", "00".repeat(16)), &[1; 32]).unwrap();
    let err = node::verify_dir(&f.dir, Some(&other.public().to_vkey()), None).unwrap_err();
    assert!(
        matches!(err, NodeError::Checkpoint { size: 2, .. }),
        "{err}"
    );
}

/// Flips one bit of every byte of `value` in turn, runs the verifier, and restores it.
fn flip_each_byte(f: &Fixture, cf_name: &str, key: &[u8], mut check: impl FnMut(usize, NodeError)) {
    let store = Store::open(&f.dir.db()).unwrap();
    let ledger_key = node::ledger_public_key(&f.dir, None).unwrap();
    let original = store.raw_get(cf_name, key).unwrap().unwrap();
    for i in 0..original.len() {
        let mut bad = original.clone();
        bad[i] ^= 0x01;
        store.raw_put(cf_name, key, &bad).unwrap();
        match node::verify_store(&store, &ledger_key, None) {
            Ok(_) => panic!(
                "flipping byte {i} of {cf_name}/{} went unnoticed",
                hex::encode(key)
            ),
            Err(e) => check(i, e),
        }
    }
    store.raw_put(cf_name, key, &original).unwrap();
    drop(store);
    node::verify_dir(&f.dir, None, None).expect("restored ledger verifies");
}

#[test]
fn tampering_with_any_byte_of_an_entry_is_detected_at_its_sequence_number() {
    let f = fixture();
    append(&f, 9);
    for seq in [0u64, 4, 9] {
        flip_each_byte(&f, cf::ENTRIES, &entry_key(seq), |i, e| {
            assert_eq!(e.seq(), Some(seq), "byte {i} of entry {seq}: {e}");
        });
    }
}

#[test]
fn tampering_with_any_byte_of_a_merkle_node_is_detected_and_named() {
    let f = fixture();
    append(&f, 9); // 11 leaves (genesis, policy, 9): nodes at levels 0..=3
    let store = Store::open_read_only(&f.dir.db()).unwrap();
    let ids: Vec<_> = store.nodes().map(|n| n.unwrap().0).collect();
    drop(store);
    assert_eq!(ids.len(), 11 + 5 + 2 + 1);
    for id in ids {
        flip_each_byte(&f, cf::MERKLE, &node_key(id), |i, e| {
            assert!(
                matches!(e, NodeError::Verify(VerifyError::Node { seq, level, index, .. })
                    if seq == id.first_leaf() && level == id.level && index == id.index),
                "byte {i} of node {id:?}: {e}"
            );
        });
    }
}

#[test]
fn tampering_with_any_byte_of_the_checkpoint_is_detected() {
    let f = fixture();
    append(&f, 3);
    flip_each_byte(&f, cf::META, &MetaKey::Checkpoint.bytes(), |i, e| {
        assert!(
            matches!(e, NodeError::Checkpoint { size: 5, .. }),
            "byte {i}: {e}"
        );
        assert_eq!(e.seq(), Some(5));
    });
}

#[test]
fn stored_nodes_serve_proofs_that_verify_against_the_checkpoint() {
    let f = fixture();
    append(&f, 40);
    let store = Store::open_read_only(&f.dir.db()).unwrap();
    let key = node::ledger_public_key(&f.dir, None).unwrap();
    let cp = Checkpoint::open(&store.checkpoint().unwrap().unwrap(), &key).unwrap();
    for seq in 0..cp.size {
        let leaf = merkle::leaf_hash(&store.entry(seq).unwrap().unwrap());
        assert_eq!(store.node(merkle::NodeId::leaf(seq)).unwrap(), leaf);
        let proof = merkle::inclusion_proof(&store, seq, cp.size).unwrap();
        merkle::verify_inclusion(&leaf, seq, cp.size, &proof, &cp.root).unwrap();
    }
    for old in 1..cp.size {
        let old_root = merkle::root(&store, old).unwrap();
        let proof = merkle::consistency_proof(&store, old, cp.size).unwrap();
        merkle::verify_consistency(old, cp.size, &old_root, &cp.root, &proof).unwrap();
    }
}

/// The verifier checks each chunk's signatures on the pool while it reads the next chunk; the
/// first failure reported must still be the one with the smallest sequence number.
#[test]
fn the_first_bad_sequence_number_is_named_across_chunks() {
    let f = fixture();
    let ledger = node::open(&f.dir, RawLog, WriterConfig::default()).unwrap();
    // The same signed envelope 20,000 times: the signature covers only the payload, and the
    // entries still differ (sequence, previous hash), so this makes a long ledger cheaply.
    let env = signed(&f.admin, 0);
    let appender = ledger.appender();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let tasks: Vec<_> = (0..20_000)
            .map(|_| {
                let (a, e) = (appender.clone(), env.clone());
                tokio::spawn(async move { a.submit(e).await.unwrap() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    drop(appender);
    ledger.close();
    let store = Store::open(&f.dir.db()).unwrap();
    let key = node::ledger_public_key(&f.dir, None).unwrap();
    node::verify_store(&store, &key, None).expect("the long ledger verifies");
    // Without the stored-node comparison (as for an export bundle), a corrupted signature is a
    // signature failure at its entry and a broken link at the next one.
    let verify = |store: &Store| {
        let note = store.checkpoint().unwrap().unwrap();
        let entries = store.entries_from(0).map(|r| r.map(|(_, bytes)| bytes));
        let mut keyring = promptledger::registry::keyring::RegistryKeyring::new();
        promptledger::ledger::verify::verify_log(
            entries,
            &key,
            &note,
            &mut keyring,
            Default::default(),
        )
    };
    let flip_last_byte = |seq: u64| {
        let original = store.entry(seq).unwrap().unwrap();
        let mut bad = original.clone();
        *bad.last_mut().unwrap() ^= 1; // last byte of the signature
        store.raw_put(cf::ENTRIES, &entry_key(seq), &bad).unwrap();
        original
    };
    // The last entry of the first chunk: its signature is checked in the background while the
    // second chunk is read, where the broken link shows up first in time. The earlier one wins.
    let last_of_first = promptledger::ledger::verify::CHUNK as u64 - 1;
    let original = flip_last_byte(last_of_first);
    let err = verify(&store).unwrap_err();
    assert_eq!(
        err,
        VerifyError::BadSignature {
            seq: last_of_first,
            keyid: f.admin.key_id().to_string()
        }
    );
    store
        .raw_put(cf::ENTRIES, &entry_key(last_of_first), &original)
        .unwrap();
    // Inside the second chunk: the signature failure precedes the broken link after it.
    let original = flip_last_byte(18_000);
    let err = verify(&store).unwrap_err();
    assert_eq!(
        err,
        VerifyError::BadSignature {
            seq: 18_000,
            keyid: f.admin.key_id().to_string()
        }
    );
    store
        .raw_put(cf::ENTRIES, &entry_key(18_000), &original)
        .unwrap();
    verify(&store).expect("restored");
}
