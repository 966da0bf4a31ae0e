//! Crash test: a real `promptledger` process appends under load and is killed with SIGKILL at
//! random moments, again and again. After every kill: every acknowledged entry is present, the
//! whole ledger verifies, the old prefix is unchanged (no fork), and the next run continues at
//! the old head (no gap).
//!
//! Cycles: `PROMPTLEDGER_CRASH_CYCLES` (default 20).

use promptledger::ledger::merkle;
use promptledger::node::{self, DataDir};
use promptledger::storage::Store;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn head_and_root(dir: &DataDir, size: Option<u64>) -> (u64, merkle::Hash) {
    let store = Store::open_read_only(&dir.db()).unwrap();
    let head = store.head().unwrap().size;
    let root = merkle::root(&store, size.unwrap_or(head)).unwrap();
    (head, root)
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_entry() {
    let cycles: u64 = std::env::var("PROMPTLEDGER_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let bin = env!("CARGO_BIN_EXE_promptledger");
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    node::init(&dir, 1_700_000_000_000).unwrap();
    let mut rng = 0x2545F4914F6CDD1Du64 ^ std::process::id() as u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut total_acked = 0usize;
    for cycle in 0..cycles {
        let (size_before, root_before) = head_and_root(&dir, None);
        let mut child = Command::new(bin)
            .args(["load", "--data-dir"])
            .arg(&dir.root)
            .args(["--writers", "16", "--payload", "1024"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = acked.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(seq) = line.strip_prefix("acked ") {
                    sink.lock().unwrap().push(seq.parse().unwrap());
                }
            }
        });
        // Wait for the load to be running, then kill at a random moment.
        let start = Instant::now();
        while acked.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(next() % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = acked.lock().unwrap().clone();
        assert!(
            !acked.is_empty(),
            "cycle {cycle}: the load never acknowledged anything"
        );

        let verified = node::verify_dir(&dir, None, None)
            .unwrap_or_else(|e| panic!("cycle {cycle}: ledger does not verify after SIGKILL: {e}"));
        let size_after = verified.checkpoint.size;
        let max_acked = *acked.iter().max().unwrap();
        assert!(
            max_acked < size_after,
            "cycle {cycle}: acked {max_acked} but only {size_after} entries survive"
        );
        let min_acked = *acked.iter().min().unwrap();
        assert!(
            min_acked >= size_before,
            "cycle {cycle}: seq {min_acked} reused (head was {size_before})"
        );
        let (_, old_root_now) = head_and_root(&dir, Some(size_before));
        assert_eq!(
            old_root_now, root_before,
            "cycle {cycle}: the old prefix changed (fork)"
        );
        total_acked += acked.len();
    }
    eprintln!("{cycles} SIGKILL cycles, {total_acked} acknowledged entries, none lost");
}
