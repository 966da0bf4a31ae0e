//! The walk-through of docs/cli.md, run verbatim with the real binary against a real server.

mod common;

use common::Server;
use promptledger::node::DataDir;
use promptledger::server::Config;
use std::path::PathBuf;

/// The shell block fenced as ```sh walkthrough in docs/cli.md.
fn walkthrough() -> String {
    let doc =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md"))
            .unwrap();
    let start = doc
        .find("```sh walkthrough\n")
        .expect("docs/cli.md has a walkthrough block");
    let body = &doc[start + "```sh walkthrough\n".len()..];
    body[..body.find("\n```").expect("the block ends")].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_walkthrough_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    let server = Server::start(Config {
        data_dir: dir.root.clone(),
        policy_dir: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies")),
        ..Config::default()
    })
    .await;
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::copy(dir.admin_key(), work.join("admin.key")).unwrap();
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_promptledger"))
        .parent()
        .unwrap()
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = walkthrough();
    let endpoint = server.endpoint();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(&work)
            .env("PATH", path)
            .env("PROMPTLEDGER_SERVER", endpoint)
            .env("RUST_LOG", "warn")
            .env("XDG_CONFIG_HOME", "/nonexistent")
            .env_remove("PROMPTLEDGER_KEY")
            .env_remove("PROMPTLEDGER_KEY_FILE")
            .env_remove("PROMPTLEDGER_CLIENT_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walk-through failed:\n{stdout}\n{stderr}"
    );
    // The answers the walk-through promises.
    for needle in [
        "Hello {{customer}}, how can I help?",
        "support/greeting production: version 1 100%",
        "pass approvals: 2 of 2",
        "pass evaluation:safety",
        "rita",
        "approve_version",
    ] {
        assert!(
            stdout.contains(needle),
            "the walk-through's output lacks {needle:?}:\n{stdout}"
        );
    }
    server.stop().await;
}
