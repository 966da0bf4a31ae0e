//! The gRPC server: `promptledger serve`.
//!
//! [`serve`] takes an already-bound listener and a shutdown future (so tests run the real server
//! on port 0), opens or creates the ledger, and serves the registry and ledger APIs plus gRPC
//! health checking and server reflection until the shutdown future completes. Then it stops
//! accepting, finishes in-flight requests, lets the writer commit everything queued, and returns.

pub mod auth;
pub mod ledger;
pub mod registry;
pub mod status;

use crate::node::{self, DataDir, NodeError};
use crate::policy::PolicyFiles;
use crate::proto::ledger::v1::ledger_service_server::LedgerServiceServer;
use crate::proto::registry::v1::registry_service_server::RegistryServiceServer;
use crate::publish::{NatsConfig, PublishStatus};
use crate::registry::personality::Registry;
use crate::storage::writer::{system_clock_ms, Ledger, WriterConfig};
use crate::storage::Store;
use auth::{AuthConfig, Sessions};
use serde::Deserialize;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Server settings: one struct, from a TOML file, environment and flags (in rising priority;
/// see docs/cli.md). Defaults just work on a laptop.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Ledger data directory; created with `init` on first start if empty.
    pub data_dir: PathBuf,
    /// Largest statement payload accepted, in bytes (larger: RESOURCE_EXHAUSTED).
    pub max_payload_bytes: usize,
    /// How far a statement's issued_at may be from the server clock, in seconds.
    pub clock_skew_secs: u64,
    /// How long a read session token lives, in seconds.
    pub session_ttl_secs: u64,
    /// PEM certificate chain and key: both set means TLS (rustls), neither means plaintext.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Publishing to NATS JetStream (`[nats]` table); off without `nats.url`.
    pub nats: NatsConfig,
    /// Directory with model.conf, policy.csv and gates.toml recorded by the `init` of the first
    /// start; without it, the defaults shipped in `policies/`. Ignored once the ledger exists
    /// (change the policy with a signed `set_policy` statement).
    pub policy_dir: Option<PathBuf>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: PathBuf::from("promptledger-data"),
            max_payload_bytes: 1 << 20,
            clock_skew_secs: 300,
            session_ttl_secs: 900,
            tls_cert: None,
            tls_key: None,
            nats: NatsConfig::default(),
            policy_dir: None,
        }
    }
}

impl Config {
    /// Checked once at start-up.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_payload_bytes == 0 || self.max_payload_bytes > 64 << 20 {
            return Err("max_payload_bytes must be between 1 and 67108864".into());
        }
        if self.clock_skew_secs == 0 {
            return Err("clock_skew_secs must be at least 1".into());
        }
        if self.session_ttl_secs == 0 {
            return Err("session_ttl_secs must be at least 1".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("tls_cert and tls_key must be given together".into());
        }
        self.nats.validate()
    }

    fn auth(&self) -> AuthConfig {
        AuthConfig {
            max_payload_bytes: self.max_payload_bytes,
            clock_skew_ms: self.clock_skew_secs * 1000,
            session_ttl_ms: self.session_ttl_secs * 1000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves until `shutdown` completes, with the system clock.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with_clock(config, listener, shutdown, Arc::new(system_clock_ms)).await
}

/// [`serve`] with an injected clock (milliseconds since the Unix epoch).
pub async fn serve_with_clock(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    clock: registry::Clock,
) -> Result<(), ServeError> {
    config.validate().map_err(ServeError::Config)?;
    let dir = DataDir::new(&config.data_dir);
    if !dir.is_initialized() {
        let (init_dir, now) = (dir.clone(), clock());
        let policy = match &config.policy_dir {
            Some(p) => PolicyFiles::read_dir(p)
                .map_err(|e| ServeError::Config(format!("policy_dir: {e}")))?,
            None => PolicyFiles::builtin(),
        };
        // `init` runs its own short-lived writer and blocks on it: keep it off the runtime.
        let report =
            tokio::task::spawn_blocking(move || node::init_with_policy(&init_dir, now, policy))
                .await
                .map_err(|e| ServeError::Config(format!("init task: {e}")))??;
        tracing::info!(
            ledger_id = %report.ledger_id,
            admin_key = %report.admin_key_path.display(),
            "created a new ledger; the first admin's secret key is in admin_key: move it somewhere safe"
        );
    }
    let ledger_key = node::ledger_signer(&dir)?;
    let opening = std::time::Instant::now();
    let store = Arc::new(Store::open(&dir.db()).map_err(NodeError::from)?);
    let indexed = Registry::ensure_event_index(&store).map_err(NodeError::from)?;
    if indexed > 0 {
        tracing::info!(
            entries = indexed,
            "built the audit index of a ledger written without it"
        );
    }
    let registry = Registry::load(&store).map_err(NodeError::from)?;
    let view = registry.view();
    {
        let v = view.load();
        tracing::info!(
            entries = v.head,
            prompts = v.prompts.len(),
            ms = opening.elapsed().as_millis() as u64,
            "opened the ledger and loaded the registry"
        );
    }
    let writer_config = WriterConfig {
        clock: clock.clone(),
        ..WriterConfig::default()
    };
    let ledger = Ledger::open(store.clone(), ledger_key.clone(), registry, writer_config)
        .map_err(NodeError::from)?;
    let sessions = Arc::new(Sessions::default());

    // The outbox: after commit, never in the commit path (see `publish`).
    let (stop_publisher, publisher_stopped) = tokio::sync::watch::channel(false);
    let publisher = config.nats.url.as_ref().map(|url| {
        let status = Arc::new(PublishStatus::default());
        tracing::info!(url = %url, stream = %config.nats.stream, "publishing to NATS JetStream");
        let task = tokio::spawn(crate::publish::run(
            config.nats.clone(),
            store.clone(),
            ledger.info().id().expect("ledger id checked at open"),
            ledger.heads(),
            status.clone(),
            publisher_stopped,
        ));
        (status, task)
    });

    // Watch streams end when shutdown begins (graceful shutdown waits for open streams).
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    let registry_api = registry::RegistryApi {
        appender: ledger.appender(),
        view: view.clone(),
        store: store.clone(),
        sessions: sessions.clone(),
        auth: config.auth(),
        clock: clock.clone(),
        batcher: crate::sigbatch::SignatureBatcher::start(),
        heads: ledger.heads(),
        stopping: stopping_rx,
    };
    let ledger_api = ledger::LedgerApi {
        store: store.clone(),
        ledger_key: ledger_key.public(),
        view,
        sessions,
        clock,
        heads: ledger.heads(),
        nats: publisher
            .as_ref()
            .map(|(status, _)| (config.nats.stream.clone(), status.clone())),
    };
    // tonic's own limit sits above ours so that oversized statements get our clear
    // RESOURCE_EXHAUSTED message rather than a transport error.
    let decode_limit = config.max_payload_bytes * 4 + (1 << 20);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RegistryServiceServer<registry::RegistryApi>>()
        .await;
    health
        .set_serving::<LedgerServiceServer<ledger::LedgerApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Config(e.to_string()))?;

    let mut builder = tonic::transport::Server::builder();
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| ServeError::Tls(format!("{}: {e}", p.display())))
        };
        let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, tls = config.tls_cert.is_some(), "serving");
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            RegistryServiceServer::new(registry_api).max_decoding_message_size(decode_limit),
        )
        .add_service(LedgerServiceServer::new(ledger_api))
        .serve_with_incoming_shutdown(
            // Without TCP_NODELAY a response written after the request was read (the writer
            // answers later) waits ~40 ms for the client's delayed ACK (Nagle).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    // The services (and their appenders) are gone; let the writer commit what is queued.
    tokio::task::spawn_blocking(move || ledger.close())
        .await
        .map_err(|e| ServeError::Config(format!("writer shutdown: {e}")))?;
    if let Some((_, task)) = publisher {
        // What was not published yet stays in the outbox for the next start.
        let _ = stop_publisher.send(true);
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file_overrides_defaults_and_refuses_unknown_keys() {
        let c: Config =
            toml::from_str("listen = \"0.0.0.0:6000\"\nclock_skew_secs = 30\n").unwrap();
        assert_eq!(c.listen, "0.0.0.0:6000".parse().unwrap());
        assert_eq!(c.clock_skew_secs, 30);
        assert_eq!(c.data_dir, Config::default().data_dir);
        assert_eq!(c.validate(), Ok(()));
        assert!(toml::from_str::<Config>("lisen = \"0.0.0.0:6000\"").is_err());
        let half_tls = Config {
            tls_cert: Some("c.pem".into()),
            ..Config::default()
        };
        assert_eq!(
            half_tls.validate(),
            Err("tls_cert and tls_key must be given together".into())
        );
        let zero = Config {
            max_payload_bytes: 0,
            ..Config::default()
        };
        assert!(zero.validate().is_err());
    }

    #[test]
    fn defaults_just_work() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.validate(), Ok(()));
    }
}
