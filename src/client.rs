//! A Rust client for the registry: signs statements with the actor's key, and opens (and
//! re-opens) read sessions as needed. Used by the CLI and the tests.

use crate::ledger::checkpoint::parse_body;
use crate::ledger::dsse::Envelope;
use crate::ledger::keys::KeyPair;
use crate::proto::ledger::v1::ledger_service_client::LedgerServiceClient;
use crate::proto::ledger::v1::GetCheckpointRequest;
use crate::proto::registry::v1 as pb;
use crate::proto::registry::v1::registry_service_client::RegistryServiceClient;
use crate::registry::statement::{Action, Statement, STATEMENT_PAYLOAD_TYPE};
use crate::storage::writer::system_clock_ms;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// A connection acting as one actor.
pub struct Client {
    registry: RegistryServiceClient<Channel>,
    ledger: LedgerServiceClient<Channel>,
    key: KeyPair,
    ledger_id: String,
    token: Option<(String, u64)>,
}

/// Refresh a session this long before it expires.
const REFRESH_MARGIN_MS: u64 = 30_000;

impl Client {
    /// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`) as the owner of `key`, and learns
    /// the ledger id from the public checkpoint.
    pub async fn connect(endpoint: String, key: KeyPair) -> Result<Client, Status> {
        let endpoint =
            Endpoint::from_shared(endpoint).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Self::connect_endpoint(endpoint, key).await
    }

    /// [`Self::connect`] with a configured endpoint (TLS, timeouts).
    pub async fn connect_endpoint(endpoint: Endpoint, key: KeyPair) -> Result<Client, Status> {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("{e:?}")))?;
        let mut ledger = LedgerServiceClient::new(channel.clone());
        let note = ledger
            .get_checkpoint(GetCheckpointRequest {})
            .await?
            .into_inner()
            .checkpoint;
        let text = String::from_utf8_lossy(&note).into_owned();
        let origin = parse_body(&text)
            .map_err(|e| Status::internal(e.to_string()))?
            .origin
            .to_owned();
        let ledger_id = origin.rsplit('/').next().unwrap_or_default().to_owned();
        Ok(Client {
            registry: RegistryServiceClient::new(channel),
            ledger,
            key,
            ledger_id,
            token: None,
        })
    }

    pub fn ledger_id(&self) -> &str {
        &self.ledger_id
    }

    pub fn actor(&self) -> &str {
        self.key.name()
    }

    pub fn registry(&mut self) -> &mut RegistryServiceClient<Channel> {
        &mut self.registry
    }

    pub fn ledger(&mut self) -> &mut LedgerServiceClient<Channel> {
        &mut self.ledger
    }

    /// Signs `action` as a fresh statement (now, random nonce) of this ledger.
    pub fn sign(&self, action: Action) -> pb::SignedStatement {
        let statement = Statement {
            ledger_id: self.ledger_id.clone(),
            actor: self.key.name().to_owned(),
            issued_at_ms: system_clock_ms(),
            nonce: crate::node::random_nonce(),
            action,
        };
        sign_statement(&statement, &self.key)
    }

    /// Submits an action through the method its kind calls for; returns the receipt.
    pub async fn submit(&mut self, action: Action) -> Result<pb::Receipt, Status> {
        let statement = Some(self.sign(action.clone()));
        let r = &mut self.registry;
        let receipt = match action {
            Action::RegisterActor { .. } => {
                r.register_actor(pb::RegisterActorRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::RotateKey { .. } => {
                r.rotate_actor_key(pb::RotateActorKeyRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::RevokeActor { .. } => {
                r.revoke_actor(pb::RevokeActorRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::CreatePrompt { .. } => {
                r.create_prompt(pb::CreatePromptRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::CommitVersion { .. } => {
                r.commit_version(pb::CommitVersionRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::RecordEvaluation { .. } => {
                r.record_evaluation(pb::RecordEvaluationRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::ApproveVersion { .. } => {
                r.approve_version(pb::ApproveVersionRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::RevokeApproval { .. } => {
                r.revoke_approval(pb::RevokeApprovalRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::PromoteVersion { .. } => {
                r.promote_version(pb::PromoteVersionRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::RollbackPrompt { .. } => {
                r.rollback_prompt(pb::RollbackPromptRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::SetActorRoles { .. } => {
                r.set_actor_roles(pb::SetActorRolesRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::SetPolicy { .. } => {
                r.set_policy(pb::SetPolicyRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::BreakGlassPromote { .. } => {
                r.break_glass_promote(pb::BreakGlassPromoteRequest { statement })
                    .await?
                    .into_inner()
                    .receipt
            }
            Action::Genesis { .. } | Action::OpenSession {} => {
                return Err(Status::invalid_argument(
                    "genesis and open_session are not submitted as writes",
                ))
            }
        };
        receipt.ok_or_else(|| Status::internal("response without receipt"))
    }

    /// A valid session token, opening a new session when there is none or it is about to expire.
    pub async fn token(&mut self) -> Result<String, Status> {
        let now = system_clock_ms();
        if let Some((token, expires)) = &self.token {
            if *expires > now + REFRESH_MARGIN_MS {
                return Ok(token.clone());
            }
        }
        let statement = Some(self.sign(Action::OpenSession {}));
        let s = self
            .registry
            .create_session(pb::CreateSessionRequest { statement })
            .await?
            .into_inner();
        self.token = Some((s.token.clone(), s.expires_at_ms));
        Ok(s.token)
    }

    /// Wraps a read request with the session token.
    pub async fn authorized<T>(&mut self, message: T) -> Result<Request<T>, Status> {
        let token = self.token().await?;
        let mut request = Request::new(message);
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("token is not ASCII"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }

    /// `GetPrompt`, re-opening the session once if the server forgot it (e.g. it restarted).
    pub async fn get_prompt(
        &mut self,
        request: pb::GetPromptRequest,
    ) -> Result<pb::GetPromptResponse, Status> {
        let first = self.authorized(request.clone()).await?;
        match self.registry.get_prompt(first).await {
            Err(s) if s.code() == Code::Unauthenticated => {
                self.token = None;
                let again = self.authorized(request).await?;
                Ok(self.registry.get_prompt(again).await?.into_inner())
            }
            other => Ok(other?.into_inner()),
        }
    }
}

/// Signs a statement as a DSSE envelope in its protobuf form.
pub fn sign_statement(statement: &Statement, key: &KeyPair) -> pb::SignedStatement {
    let env = Envelope::sign(
        STATEMENT_PAYLOAD_TYPE,
        statement.to_payload(),
        key.key_id().as_str(),
        key.signing_key(),
    );
    pb::SignedStatement {
        payload_type: env.payload_type,
        payload: env.payload,
        signatures: env
            .signatures
            .into_iter()
            .map(|s| pb::Signature {
                keyid: s.keyid,
                sig: s.sig,
            })
            .collect(),
    }
}
