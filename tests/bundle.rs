//! Export bundles and online audits: a bundle verifies offline with only the ledger key; any
//! changed byte, a removed, reordered or inserted entry, or a checkpoint by another key is
//! refused with what is wrong; a later bundle extends an earlier one and a fork does not;
//! `audit verify` trusts what extends and refuses a rolled-back or rewritten log.

mod common;

use common::{key, Server};
use promptledger::bundle::{self, BundleError, Reader};
use promptledger::client::Client;
use promptledger::keyfile;
use promptledger::ledger::checkpoint::Checkpoint;
use promptledger::ledger::keys::{KeyPair, PublicKey};
use promptledger::ledger::verify::VerifyError;
use promptledger::node::{self, DataDir};
use promptledger::registry::statement::Action;
use promptledger::server::Config;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

async fn start(dir: &DataDir) -> Server {
    Server::start(Config {
        data_dir: dir.root.clone(),
        policy_dir: Some(small_policy(&dir.root.with_extension("policy"))),
        ..Config::default()
    })
    .await
}

/// The shipped model with just the rules these tests use: a small policy entry keeps the
/// every-byte tampering test quick.
fn small_policy(dir: &Path) -> PathBuf {
    let shipped = promptledger::policy::PolicyFiles::builtin();
    let model: String = shipped
        .model
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("model.conf"), model).unwrap();
    std::fs::write(
        dir.join("policy.csv"),
        "p, admin, *, *, manage_actors\np, admin, *, *, set_policy\np, author, *, *, create_prompt\n",
    )
    .unwrap();
    std::fs::write(dir.join("gates.toml"), "").unwrap();
    dir.to_owned()
}

/// Registers the author "writer" (once) and creates `prompts` prompts named `<tag>-<i>`.
async fn write(server: &Server, dir: &DataDir, tag: &str, prompts: usize) {
    let mut admin = Client::connect(
        server.endpoint(),
        keyfile::read_key(&dir.admin_key()).unwrap(),
    )
    .await
    .unwrap();
    let registered = admin
        .submit(Action::RegisterActor {
            name: "writer".into(),
            key: key("writer").public().to_vkey(),
            roles: vec!["author".into()],
        })
        .await;
    if let Err(e) = registered {
        assert_eq!(e.code(), tonic::Code::AlreadyExists);
    }
    let mut c = Client::connect(server.endpoint(), key("writer"))
        .await
        .unwrap();
    for i in 0..prompts {
        c.submit(Action::CreatePrompt {
            prompt: format!("{tag}-{i}"),
            description: String::new(),
        })
        .await
        .unwrap();
    }
}

fn bin(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_promptledger"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn export(dir: &DataDir, out: &Path) {
    let (code, text) = bin(&[
        "export",
        "--data-dir",
        dir.root.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
}

fn ledger_key(dir: &DataDir) -> String {
    std::fs::read_to_string(dir.ledger_pub())
        .unwrap()
        .trim()
        .to_owned()
}

/// The bundle's parts, to rebuild it with changes.
fn parts(path: &Path) -> (bundle::Header, Vec<Vec<u8>>) {
    let mut reader = Reader::open(BufReader::new(std::fs::File::open(path).unwrap())).unwrap();
    let header = reader.header().clone();
    let entries = reader.by_ref().map(|e| e.unwrap()).collect();
    (header, entries)
}

fn rebuild(path: &Path, header: &bundle::Header, count: u64, entries: &[Vec<u8>]) {
    let mut out = std::fs::File::create(path).unwrap();
    let items = entries.iter().cloned().map(Ok::<_, String>);
    // `write` refuses fewer entries than the count; write the frame by hand for those cases.
    if (entries.len() as u64) < count {
        use std::io::Write;
        out.write_all(bundle::MAGIC).unwrap();
        out.write_all(&[bundle::FORMAT_VERSION]).unwrap();
        for field in [&header.checkpoint[..], header.ledger_vkey.as_bytes()] {
            out.write_all(&(field.len() as u32).to_be_bytes()).unwrap();
            out.write_all(field).unwrap();
        }
        out.write_all(&count.to_be_bytes()).unwrap();
        for e in entries {
            out.write_all(&(e.len() as u32).to_be_bytes()).unwrap();
            out.write_all(e).unwrap();
        }
        return;
    }
    bundle::write(
        &mut out,
        &header.checkpoint,
        &header.ledger_vkey,
        count,
        items,
        |_| {},
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundles_verify_offline_and_refuse_every_kind_of_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let server = start(&dir).await;
    write(&server, &dir, "a", 3).await;
    server.stop().await;
    let path = tmp.path().join("a.plb");
    export(&dir, &path);
    let vkey = ledger_key(&dir);
    let key = PublicKey::from_vkey(&vkey).unwrap();

    // The real binary verifies it, trusting only the key.
    let (code, text) = bin(&[
        "verify-bundle",
        path.to_str().unwrap(),
        "--ledger-key",
        &vkey,
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("verified") && text.contains("6 entries"),
        "{text}"
    );
    let report = bundle::verify(&path, &key, None).unwrap();
    assert_eq!(
        report.entries, 6,
        "genesis, policy, registration, 3 prompts"
    );

    // Any single byte changed: refused. Where it is in an entry, the error names that entry
    // (or the next, whose link to it breaks, or the root for the last one).
    let original = std::fs::read(&path).unwrap();
    let (header, entries) = parts(&path);
    let header_len = 8 + 1 + 4 + header.checkpoint.len() + 4 + header.ledger_vkey.len() + 8;
    let mut starts = vec![header_len];
    for e in &entries {
        starts.push(starts.last().unwrap() + 4 + e.len());
    }
    let bad = tmp.path().join("bad.plb");
    for i in 0..original.len() {
        let mut bytes = original.clone();
        bytes[i] ^= 0x01;
        std::fs::write(&bad, &bytes).unwrap();
        let err = match bundle::verify(&bad, &key, None) {
            Ok(_) => panic!(
                "byte {i} of {} changed and the bundle still verifies",
                original.len()
            ),
            Err(e) => e,
        };
        if let Some(entry) = starts
            .iter()
            .rposition(|&s| s <= i)
            .filter(|&k| k < entries.len())
        {
            let named = err
                .seq()
                .is_some_and(|s| s == entry as u64 || s == entry as u64 + 1);
            let last = matches!(err, BundleError::Verify(VerifyError::RootMismatch { .. }));
            let framing = matches!(
                err,
                BundleError::Truncated { .. }
                    | BundleError::Oversized { .. }
                    | BundleError::TrailingBytes(_)
            );
            assert!(named || last || framing, "byte {i} (entry {entry}): {err}");
        }
    }

    // An entry removed, two swapped, one inserted: the first wrong sequence number is named.
    let count = entries.len() as u64;
    let mut removed = entries.clone();
    removed.remove(3);
    rebuild(&bad, &header, count, &removed);
    let e = bundle::verify(&bad, &key, None).unwrap_err();
    assert_eq!(e.seq(), Some(3), "{e}");
    let mut swapped = entries.clone();
    swapped.swap(3, 4);
    rebuild(&bad, &header, count, &swapped);
    let e = bundle::verify(&bad, &key, None).unwrap_err();
    assert_eq!(e.seq(), Some(3), "{e}");
    let mut inserted = entries.clone();
    inserted.insert(3, entries[2].clone());
    rebuild(&bad, &header, count + 1, &inserted);
    assert!(matches!(
        bundle::verify(&bad, &key, None).unwrap_err(),
        BundleError::CountMismatch { count: 7, size: 6 }
    ));
    rebuild(&bad, &header, count, &inserted[..entries.len()]);
    let e = bundle::verify(&bad, &key, None).unwrap_err();
    assert_eq!(e.seq(), Some(3), "{e}");

    // A checkpoint signed by another key (with the same origin and body), or a bundle that
    // names another key than the one trusted.
    let mallory = KeyPair::from_seed(key.name(), &[66; 32]).unwrap();
    let body = Checkpoint::read_unverified(&header.checkpoint).unwrap();
    let forged = bundle::Header {
        checkpoint: body.sign(&mallory),
        ..header.clone()
    };
    rebuild(&bad, &forged, count, &entries);
    let e = bundle::verify(&bad, &key, None).unwrap_err();
    assert!(
        matches!(e, BundleError::Verify(VerifyError::Checkpoint(_))),
        "{e}"
    );
    let (code, text) = bin(&[
        "verify-bundle",
        bad.to_str().unwrap(),
        "--ledger-key",
        &vkey,
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAILED") && text.contains("checkpoint"),
        "{text}"
    );
    let other = KeyPair::from_seed("someone-else", &[5; 32]).unwrap();
    assert!(matches!(
        bundle::verify(&path, &other.public(), None).unwrap_err(),
        BundleError::KeyMismatch { .. }
    ));
}

/// A ledger, a snapshot of it, the ledger grown further, and a fork grown from the snapshot
/// with the same keys: bundles, extension checks and the online audit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_bundles_extend_earlier_ones_and_audit_verify_refuses_rollback_and_rewrites() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let server = start(&dir).await;
    write(&server, &dir, "a", 3).await;
    server.stop().await;
    let snapshot = DataDir::new(tmp.path().join("snapshot"));
    copy_dir(&dir.root, &snapshot.root);
    let first = tmp.path().join("first.plb");
    export(&dir, &first);
    let vkey = ledger_key(&dir);
    let state: PathBuf = tmp.path().join("audit.checkpoint");
    let audit = |endpoint: String| {
        let (vkey, state) = (vkey.clone(), state.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                bin(&[
                    "--server",
                    &endpoint,
                    "audit",
                    "verify",
                    "--ledger-key",
                    &vkey,
                    "--state",
                    state.to_str().unwrap(),
                ])
            })
            .await
            .unwrap()
        }
    };

    // The ledger grows; the auditor trusts it, then sees it grow again.
    let server = start(&dir).await;
    let (code, text) = audit(server.endpoint()).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("first run"), "{text}");
    write(&server, &dir, "b", 3).await;
    let (code, text) = audit(server.endpoint()).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("consistent"), "{text}");
    server.stop().await;
    let second = tmp.path().join("second.plb");
    export(&dir, &second);
    let (code, text) = bin(&[
        "verify-bundle",
        second.to_str().unwrap(),
        "--ledger-key",
        &vkey,
        "--extends",
        first.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("extends"), "{text}");

    // Rolled back: the operator restores the snapshot.
    let rolled_back = start(&snapshot).await;
    let (code, text) = audit(rolled_back.endpoint()).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("rolled back"), "{text}");

    // Rewritten: the snapshot, with the same keys, grows a different history past the size
    // the auditor saw.
    write(&rolled_back, &snapshot, "fork", 5).await;
    let (code, text) = audit(rolled_back.endpoint()).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("history rewritten"), "{text}");
    rolled_back.stop().await;
    let fork = tmp.path().join("fork.plb");
    export(&snapshot, &fork);
    // The fork verifies on its own (it is validly signed), but it does not extend the second.
    let (code, text) = bin(&[
        "verify-bundle",
        fork.to_str().unwrap(),
        "--ledger-key",
        &vkey,
    ]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = bin(&[
        "verify-bundle",
        fork.to_str().unwrap(),
        "--ledger-key",
        &vkey,
        "--extends",
        second.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not an extension"), "{text}");

    // The trusted checkpoint did not move while the server misbehaved: the real ledger is
    // still consistent with it.
    let server = start(&dir).await;
    let (code, text) = audit(server.endpoint()).await;
    assert_eq!(code, 0, "{text}");
    server.stop().await;
    node::verify_dir(&dir, None, None).unwrap();
}
