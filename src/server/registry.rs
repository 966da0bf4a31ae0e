//! `promptledger.registry.v1.RegistryService`: proto in, domain through the checks of
//! [`super::auth`], out through [`super::status`]. Handlers see only domain types after the edge.

use super::auth::{verify_statement, AuthConfig, Sessions};
use super::status::ApiError;
use crate::ledger::merkle;
use crate::proto::registry::v1 as pb;
use crate::proto::registry::v1::registry_service_server::RegistryService;
use crate::registry::model::{Environment, Permission};
use crate::registry::personality::{Registry, ViewCell};
use crate::registry::state::{Prompt, Rejection, Version};
use crate::registry::statement::Statement;
use crate::sigbatch::SignatureBatcher;
use crate::storage::writer::{AppendError, Appender};
use crate::storage::Store;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Clock in milliseconds since the Unix epoch (injected: tests control time).
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Clone)]
pub struct RegistryApi {
    pub appender: Appender<Registry>,
    pub view: ViewCell,
    pub store: Arc<Store>,
    pub sessions: Arc<Sessions>,
    pub auth: AuthConfig,
    pub clock: Clock,
    pub batcher: SignatureBatcher,
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1000;

fn page_size(size: i32) -> Result<usize, ApiError> {
    match size {
        s if s < 0 => Err(ApiError::invalid(
            "page_size",
            "zero (default 50) or a positive number",
        )),
        0 => Ok(DEFAULT_PAGE),
        s => Ok((s as usize).min(MAX_PAGE)),
    }
}

/// Page tokens are the decimal offset of the next item.
fn page_offset(token: &str) -> Result<usize, ApiError> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .parse()
        .map_err(|_| ApiError::invalid("page_token", "a token from a previous response"))
}

/// One page of `items` (an `ExactSizeIterator`, so a persistent list is not copied whole).
fn page<T>(
    items: impl ExactSizeIterator<Item = T>,
    size: i32,
    token: &str,
) -> Result<(Vec<T>, String), ApiError> {
    let (size, start) = (page_size(size)?, page_offset(token)?);
    let len = items.len();
    let end = (start + size).min(len);
    let slice: Vec<T> = items.skip(start).take(end.saturating_sub(start)).collect();
    let next = if end < len {
        end.to_string()
    } else {
        String::new()
    };
    Ok((slice, next))
}

fn version_pb(prompt: &str, v: &Version) -> pb::Version {
    pb::Version {
        prompt: prompt.to_owned(),
        version: v.number,
        parent_version: v.parent.unwrap_or(0),
        template: v.template.clone(),
        model: v.model.clone(),
        parameters_json: serde_json::to_string(&v.parameters).expect("JSON serializes"),
        variables: v.variables.clone(),
        message: v.message.clone(),
        content_hash: v.content_hash.clone(),
        author: v.author.clone(),
        sequence: v.seq,
        timestamp_ms: v.timestamp_ms,
    }
}

fn summary(p: &Prompt) -> pb::PromptSummary {
    pb::PromptSummary {
        name: p.name.clone(),
        description: p.description.clone(),
        head_version: p.head().unwrap_or(0),
        created_by: p.created_by.clone(),
        deployments: p
            .deployments
            .iter()
            .map(|(e, d)| (e.as_str().to_owned(), d.version))
            .collect(),
    }
}

fn prompt_of<'a>(
    view: &'a crate::registry::personality::View,
    name: &str,
) -> Result<&'a Arc<Prompt>, ApiError> {
    if name.is_empty() {
        return Err(ApiError::invalid("prompt", "a prompt name"));
    }
    view.prompts
        .get(name)
        .ok_or_else(|| ApiError::NotFound(format!("prompt {name} not found")))
}

impl RegistryApi {
    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// The write pipeline: authenticate and verify here (off the writer), then let the writer
    /// decide against the current state, append, apply and commit; answer with the receipt.
    async fn write(
        &self,
        signed: Option<pb::SignedStatement>,
        kind: &str,
    ) -> Result<pb::Receipt, ApiError> {
        Ok(self.write_statement(signed, kind).await?.0)
    }

    /// [`Self::write`], also returning the statement that was written.
    async fn write_statement(
        &self,
        signed: Option<pb::SignedStatement>,
        kind: &str,
    ) -> Result<(pb::Receipt, Statement), ApiError> {
        let sub = verify_statement(
            &self.view.load(),
            signed,
            kind,
            self.now(),
            &self.auth,
            &self.batcher,
        )
        .await?;
        let statement = sub.statement.clone();
        let receipt = match self.appender.submit(sub).await {
            Ok(r) => pb::Receipt {
                sequence: r.seq,
                leaf_hash: r.leaf_hash.to_vec(),
                checkpoint: r.checkpoint.to_vec(),
                duplicate: false,
            },
            // A retry of a statement already recorded: answer as the first time, append nothing.
            Err(AppendError::Rejected(Rejection::Duplicate { seq })) => {
                self.duplicate_receipt(seq)?
            }
            Err(AppendError::Rejected(r)) => return Err(r.into()),
            Err(AppendError::WriterStopped) => return Err(ApiError::Unavailable),
            Err(AppendError::Storage(e)) => return Err(ApiError::Internal(e)),
        };
        Ok((receipt, statement))
    }

    fn duplicate_receipt(&self, seq: u64) -> Result<pb::Receipt, ApiError> {
        let entry = self
            .store
            .entry(seq)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::internal("missing entry"))?;
        let checkpoint = self
            .store
            .checkpoint()
            .map_err(ApiError::internal)?
            .unwrap_or_default();
        Ok(pb::Receipt {
            sequence: seq,
            leaf_hash: merkle::leaf_hash(&entry).to_vec(),
            checkpoint,
            duplicate: true,
        })
    }
}

#[tonic::async_trait]
impl RegistryService for RegistryApi {
    async fn create_session(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let view = self.view.load();
        let now = self.now();
        let sub = verify_statement(
            &view,
            request.into_inner().statement,
            "open_session",
            now,
            &self.auth,
            &self.batcher,
        )
        .await?;
        let (token, session) = self.sessions.open(&view, &sub, now, &self.auth)?;
        Ok(Response::new(pb::CreateSessionResponse {
            token,
            actor: session.actor,
            roles: session
                .roles
                .iter()
                .map(|r| r.as_str().to_owned())
                .collect(),
            expires_at_ms: session.expires_at_ms,
        }))
    }

    async fn register_actor(
        &self,
        request: Request<pb::RegisterActorRequest>,
    ) -> Result<Response<pb::RegisterActorResponse>, Status> {
        let receipt = self
            .write(request.into_inner().statement, "register_actor")
            .await?;
        Ok(Response::new(pb::RegisterActorResponse {
            receipt: Some(receipt),
        }))
    }

    async fn rotate_actor_key(
        &self,
        request: Request<pb::RotateActorKeyRequest>,
    ) -> Result<Response<pb::RotateActorKeyResponse>, Status> {
        let receipt = self
            .write(request.into_inner().statement, "rotate_key")
            .await?;
        Ok(Response::new(pb::RotateActorKeyResponse {
            receipt: Some(receipt),
        }))
    }

    async fn revoke_actor(
        &self,
        request: Request<pb::RevokeActorRequest>,
    ) -> Result<Response<pb::RevokeActorResponse>, Status> {
        let receipt = self
            .write(request.into_inner().statement, "revoke_actor")
            .await?;
        Ok(Response::new(pb::RevokeActorResponse {
            receipt: Some(receipt),
        }))
    }

    async fn create_prompt(
        &self,
        request: Request<pb::CreatePromptRequest>,
    ) -> Result<Response<pb::CreatePromptResponse>, Status> {
        let receipt = self
            .write(request.into_inner().statement, "create_prompt")
            .await?;
        Ok(Response::new(pb::CreatePromptResponse {
            receipt: Some(receipt),
        }))
    }

    async fn record_evaluation(
        &self,
        request: Request<pb::RecordEvaluationRequest>,
    ) -> Result<Response<pb::RecordEvaluationResponse>, Status> {
        let receipt = self
            .write(request.into_inner().statement, "record_evaluation")
            .await?;
        Ok(Response::new(pb::RecordEvaluationResponse {
            receipt: Some(receipt),
        }))
    }

    async fn approve_version(
        &self,
        request: Request<pb::ApproveVersionRequest>,
    ) -> Result<Response<pb::ApproveVersionResponse>, Status> {
        let receipt = self
            .write(request.into_inner().statement, "approve_version")
            .await?;
        Ok(Response::new(pb::ApproveVersionResponse {
            receipt: Some(receipt),
        }))
    }

    async fn revoke_approval(
        &self,
        request: Request<pb::RevokeApprovalRequest>,
    ) -> Result<Response<pb::RevokeApprovalResponse>, Status> {
        let receipt = self
            .write(request.into_inner().statement, "revoke_approval")
            .await?;
        Ok(Response::new(pb::RevokeApprovalResponse {
            receipt: Some(receipt),
        }))
    }

    async fn promote_version(
        &self,
        request: Request<pb::PromoteVersionRequest>,
    ) -> Result<Response<pb::PromoteVersionResponse>, Status> {
        let receipt = self
            .write(request.into_inner().statement, "promote_version")
            .await?;
        Ok(Response::new(pb::PromoteVersionResponse {
            receipt: Some(receipt),
        }))
    }

    async fn rollback_prompt(
        &self,
        request: Request<pb::RollbackPromptRequest>,
    ) -> Result<Response<pb::RollbackPromptResponse>, Status> {
        let receipt = self
            .write(request.into_inner().statement, "rollback_prompt")
            .await?;
        Ok(Response::new(pb::RollbackPromptResponse {
            receipt: Some(receipt),
        }))
    }

    async fn commit_version(
        &self,
        request: Request<pb::CommitVersionRequest>,
    ) -> Result<Response<pb::CommitVersionResponse>, Status> {
        let (receipt, statement) = self
            .write_statement(request.into_inner().statement, "commit_version")
            .await?;
        // The view was swapped before the writer answered, so the new version is in it.
        let view = self.view.load();
        let version = statement
            .action
            .prompt()
            .and_then(|name| view.prompts.get(name))
            .and_then(|p| {
                p.versions
                    .iter()
                    .rev()
                    .find(|v| v.seq == receipt.sequence)
                    .cloned()
            });
        let (version, content_hash) =
            version.map_or((0, String::new()), |v| (v.number, v.content_hash.clone()));
        Ok(Response::new(pb::CommitVersionResponse {
            receipt: Some(receipt),
            version,
            content_hash,
        }))
    }

    async fn get_prompt(
        &self,
        request: Request<pb::GetPromptRequest>,
    ) -> Result<Response<pb::GetPromptResponse>, Status> {
        let view = self.view.load();
        let now = self.now();
        let selectors = {
            let r = request.get_ref();
            (!r.environment.is_empty()) as u8
                + (r.version != 0) as u8
                + (!r.content_hash.is_empty()) as u8
        };
        if selectors != 1 {
            return Err(ApiError::invalid(
                "environment",
                "exactly one of environment, version, content_hash",
            )
            .into());
        }
        // Services may only read what is deployed; exact versions are for people and auditors.
        let permission = if request.get_ref().environment.is_empty() {
            Permission::ReadAll
        } else {
            Permission::ReadDeployed
        };
        self.sessions.check(&request, &view, permission, now)?;
        let r = request.into_inner();
        let prompt = prompt_of(&view, &r.prompt)?;
        let (version, environment, deployment_sequence) = if !r.environment.is_empty() {
            let env: Environment = r
                .environment
                .parse()
                .map_err(|e: String| ApiError::invalid("environment", e))?;
            let d = prompt.deployments.get(&env).ok_or_else(|| {
                ApiError::NotFound(format!("prompt {} has no version live in {env}", r.prompt))
            })?;
            let v = prompt
                .version(d.version)
                .ok_or_else(|| ApiError::internal("deployed version missing"))?;
            (v, env.as_str().to_owned(), d.seq)
        } else if r.version != 0 {
            let v = prompt.version(r.version).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "prompt {} version {} not found",
                    r.prompt, r.version
                ))
            })?;
            (v, String::new(), 0)
        } else {
            let v = prompt.version_by_hash(&r.content_hash).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "prompt {} has no version {}",
                    r.prompt, r.content_hash
                ))
            })?;
            (v, String::new(), 0)
        };
        Ok(Response::new(pb::GetPromptResponse {
            template: version.template.clone(),
            model: version.model.clone(),
            parameters_json: serde_json::to_string(&version.parameters).expect("JSON serializes"),
            variables: version.variables.clone(),
            reference: Some(pb::PromptReference {
                prompt: r.prompt,
                version: version.number,
                content_hash: version.content_hash.clone(),
                deployment_sequence,
                environment,
            }),
        }))
    }

    async fn list_prompts(
        &self,
        request: Request<pb::ListPromptsRequest>,
    ) -> Result<Response<pb::ListPromptsResponse>, Status> {
        let view = self.view.load();
        self.sessions
            .check(&request, &view, Permission::ReadAll, self.now())?;
        let r = request.into_inner();
        let (items, next_page_token) = page(view.prompts.values(), r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListPromptsResponse {
            prompts: items.iter().map(|p| summary(p)).collect(),
            next_page_token,
        }))
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let view = self.view.load();
        self.sessions
            .check(&request, &view, Permission::ReadAll, self.now())?;
        let r = request.into_inner();
        let prompt = prompt_of(&view, &r.prompt)?;
        let (items, next_page_token) = page(prompt.versions.iter(), r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListVersionsResponse {
            versions: items.iter().map(|v| version_pb(&r.prompt, v)).collect(),
            next_page_token,
        }))
    }

    async fn get_version(
        &self,
        request: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        let view = self.view.load();
        self.sessions
            .check(&request, &view, Permission::ReadAll, self.now())?;
        let r = request.into_inner();
        let prompt = prompt_of(&view, &r.prompt)?;
        if r.version == 0 {
            return Err(ApiError::invalid("version", "a version number (1 or more)").into());
        }
        let v = prompt.version(r.version).ok_or_else(|| {
            ApiError::NotFound(format!(
                "prompt {} version {} not found",
                r.prompt, r.version
            ))
        })?;
        Ok(Response::new(pb::GetVersionResponse {
            version: Some(version_pb(&r.prompt, v)),
        }))
    }

    async fn list_prompt_history(
        &self,
        request: Request<pb::ListPromptHistoryRequest>,
    ) -> Result<Response<pb::ListPromptHistoryResponse>, Status> {
        let view = self.view.load();
        self.sessions
            .check(&request, &view, Permission::ReadAll, self.now())?;
        let r = request.into_inner();
        let prompt = prompt_of(&view, &r.prompt)?;
        let (items, next_page_token) = page(prompt.history.iter(), r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListPromptHistoryResponse {
            events: items
                .iter()
                .map(|h| pb::HistoryEvent {
                    sequence: h.seq,
                    kind: h.kind.clone(),
                    actor: h.actor.clone(),
                    timestamp_ms: h.timestamp_ms,
                    version: h.version.unwrap_or(0),
                    environment: h
                        .environment
                        .map(|e| e.as_str().to_owned())
                        .unwrap_or_default(),
                })
                .collect(),
            next_page_token,
        }))
    }
}
