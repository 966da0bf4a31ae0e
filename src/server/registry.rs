//! `promptledger.registry.v1.RegistryService`: proto in, domain through the checks of
//! [`super::auth`], out through [`super::status`]. Handlers see only domain types after the edge.

use super::auth::{verify_statement, AuthConfig, Need, Sessions};
use super::status::ApiError;
use crate::ledger::entry::Entry;
use crate::ledger::merkle;
use crate::policy::{namespace_of, Act};
use crate::proto::registry::v1 as pb;
use crate::proto::registry::v1::registry_service_server::RegistryService;
use crate::registry::events::{EventFacts, EventFilter};
use crate::registry::governance::{self, Decision};
use crate::registry::model::Environment;
use crate::registry::personality::{Registry, View, ViewCell};
use crate::registry::state::{Deployment, Prompt, Rejection, Version};
use crate::registry::statement::Statement;
use crate::sigbatch::SignatureBatcher;
use crate::storage::keys::{index_prefix, IndexTag};
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
    /// The writer's durable head: watch streams follow it.
    pub heads: tokio::sync::watch::Receiver<u64>,
    /// Becomes true when shutdown begins: watch streams end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
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

fn decision_pb(d: &Decision) -> pb::Decision {
    pb::Decision {
        policy_version: d.policy_version.clone(),
        policy_sequence: d.policy_seq,
        gates: d
            .gates
            .iter()
            .map(|g| pb::GateResult {
                gate: g.gate.clone(),
                passed: g.passed,
                evidence: g.evidence.clone(),
                detail: g.detail.clone(),
            })
            .collect(),
        break_glass_reason: d.break_glass.clone().unwrap_or_default(),
    }
}

fn deployment_pb(prompt: &str, d: &Deployment) -> pb::Deployment {
    pb::Deployment {
        prompt: prompt.to_owned(),
        environment: d.environment.as_str().to_owned(),
        version: d.version,
        splits: governance::splits_of(d)
            .iter()
            .map(|s| pb::Split {
                version: s.version,
                weight: s.weight,
            })
            .collect(),
        sequence: d.seq,
        timestamp_ms: d.timestamp_ms,
        actor: d.by.clone(),
        rollback: d.rollback,
        break_glass: d.break_glass,
        reason: d.reason.clone().unwrap_or_default(),
        decision: d.decision.as_ref().map(decision_pb),
    }
}

fn environment(field: &str, value: &str) -> Result<Environment, ApiError> {
    if value.is_empty() {
        return Err(ApiError::invalid(
            field.to_owned(),
            "one of dev, staging, production",
        ));
    }
    value
        .parse()
        .map_err(|e: String| ApiError::invalid(field.to_owned(), e))
}

/// One line describing an evidence event.
fn evidence_pb(p: &Prompt, seq: u64) -> Option<pb::EvidenceEvent> {
    let i = p.history.binary_search_by_key(&seq, |h| h.seq).ok()?;
    let h = &p.history[i];
    let summary = if let Some(a) = p.approvals.iter().find(|a| a.seq == seq) {
        let revoked = a
            .revoked_seq
            .map(|r| format!(" (revoked at {r})"))
            .unwrap_or_default();
        format!(
            "approved version {} ({}) for {}{revoked}",
            a.version, a.content_hash, a.environment
        )
    } else if let Some(e) = p.evaluations.iter().rev().find(|e| e.seq == seq) {
        format!(
            "{} of version {} ({}): score {} threshold {} {} by {}; evidence {} {}",
            e.suite,
            e.version,
            e.content_hash,
            e.score,
            e.threshold,
            if e.passed { "passed" } else { "failed" },
            e.evaluator,
            e.evidence_digest,
            e.evidence_uri
        )
    } else if let Some(d) = p.deployment_history.iter().rev().find(|d| d.seq == seq) {
        let weights: Vec<String> = governance::splits_of(d)
            .iter()
            .map(|s| format!("v{} {}%", s.version, s.weight))
            .collect();
        format!(
            "{} live in {}: {}",
            h.kind,
            d.environment,
            weights.join(", ")
        )
    } else {
        h.kind.clone()
    };
    Some(pb::EvidenceEvent {
        sequence: seq,
        kind: h.kind.clone(),
        actor: h.actor.clone(),
        timestamp_ms: h.timestamp_ms,
        summary,
    })
}

fn prompt_of<'a>(view: &'a View, name: &str) -> Result<&'a Arc<Prompt>, ApiError> {
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

    /// A deployment write: the receipt and the deployment it made, with its decision.
    async fn deploy(
        &self,
        signed: Option<pb::SignedStatement>,
        kind: &str,
    ) -> Result<(pb::Receipt, pb::Deployment), ApiError> {
        let (receipt, statement) = self.write_statement(signed, kind).await?;
        // The view was swapped before the writer answered, so the deployment is in it.
        let name = statement.action.prompt().unwrap_or_default();
        let deployment = self
            .view
            .load()
            .prompts
            .get(name)
            .and_then(|p| {
                p.deployment_history
                    .iter()
                    .rev()
                    .find(|d| d.seq == receipt.sequence)
                    .map(|d| deployment_pb(name, d))
            })
            .ok_or_else(|| ApiError::internal("deployment missing from the view"))?;
        Ok((receipt, deployment))
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
            actor: session.actor.clone(),
            roles: session.roles.clone(),
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
        let (receipt, deployment) = self
            .deploy(request.into_inner().statement, "promote_version")
            .await?;
        Ok(Response::new(pb::PromoteVersionResponse {
            receipt: Some(receipt),
            deployment: Some(deployment),
        }))
    }

    async fn rollback_prompt(
        &self,
        request: Request<pb::RollbackPromptRequest>,
    ) -> Result<Response<pb::RollbackPromptResponse>, Status> {
        let (receipt, deployment) = self
            .deploy(request.into_inner().statement, "rollback_prompt")
            .await?;
        Ok(Response::new(pb::RollbackPromptResponse {
            receipt: Some(receipt),
            deployment: Some(deployment),
        }))
    }

    async fn break_glass_promote(
        &self,
        request: Request<pb::BreakGlassPromoteRequest>,
    ) -> Result<Response<pb::BreakGlassPromoteResponse>, Status> {
        let (receipt, deployment) = self
            .deploy(request.into_inner().statement, "break_glass_promote")
            .await?;
        tracing::warn!(
            prompt = %deployment.prompt,
            environment = %deployment.environment,
            version = deployment.version,
            actor = %deployment.actor,
            reason = %deployment.reason,
            "break-glass promotion"
        );
        Ok(Response::new(pb::BreakGlassPromoteResponse {
            receipt: Some(receipt),
            deployment: Some(deployment),
        }))
    }

    async fn set_actor_roles(
        &self,
        request: Request<pb::SetActorRolesRequest>,
    ) -> Result<Response<pb::SetActorRolesResponse>, Status> {
        let receipt = self
            .write(request.into_inner().statement, "set_actor_roles")
            .await?;
        Ok(Response::new(pb::SetActorRolesResponse {
            receipt: Some(receipt),
        }))
    }

    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::SetPolicyResponse>, Status> {
        let (receipt, statement) = self
            .write_statement(request.into_inner().statement, "set_policy")
            .await?;
        let policy_version = match &statement.action {
            crate::registry::statement::Action::SetPolicy { files } => files.version(),
            _ => String::new(),
        };
        Ok(Response::new(pb::SetPolicyResponse {
            receipt: Some(receipt),
            policy_version,
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
        let r = request.get_ref();
        let ns = namespace_of(&r.prompt);
        let env = if r.environment.is_empty() {
            None
        } else {
            Some(environment("environment", &r.environment)?)
        };
        // Services may only read what is deployed; exact versions are for people and auditors.
        let need = match env {
            Some(env) => Need::Deployed(ns, env),
            None => Need::In(Act::Read, ns),
        };
        self.sessions.check(&request, &view, need, now)?;
        let r = request.into_inner();
        let prompt = prompt_of(&view, &r.prompt)?;
        let (version, environment, deployment_sequence, weight, break_glass) =
            if let Some(env) = env {
                let d = prompt.deployments.get(&env).ok_or_else(|| {
                    ApiError::NotFound(format!("prompt {} has no version live in {env}", r.prompt))
                })?;
                let (number, weight) = if d.splits.is_empty() {
                    (d.version, 100)
                } else if r.routing_key.is_empty() {
                    // No key: the version with the largest weight (the first of equals).
                    let top = d.splits.iter().fold(d.splits[0], |best, s| {
                        if s.weight > best.weight {
                            *s
                        } else {
                            best
                        }
                    });
                    (top.version, top.weight)
                } else {
                    let pick = governance::route(&r.prompt, &r.routing_key, &d.splits)
                        .ok_or_else(|| ApiError::internal("rollout without weights"))?;
                    (pick.version, pick.weight)
                };
                let v = prompt
                    .version(number)
                    .ok_or_else(|| ApiError::internal("deployed version missing"))?;
                (v, env.as_str().to_owned(), d.seq, weight, d.break_glass)
            } else if r.version != 0 {
                let v = prompt.version(r.version).ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "prompt {} version {} not found",
                        r.prompt, r.version
                    ))
                })?;
                (v, String::new(), 0, 0, false)
            } else {
                let v = prompt.version_by_hash(&r.content_hash).ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "prompt {} has no version {}",
                        r.prompt, r.content_hash
                    ))
                })?;
                (v, String::new(), 0, 0, false)
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
                weight,
                break_glass,
            }),
        }))
    }

    async fn list_prompts(
        &self,
        request: Request<pb::ListPromptsRequest>,
    ) -> Result<Response<pb::ListPromptsResponse>, Status> {
        let view = self.view.load();
        let session =
            self.sessions
                .check(&request, &view, Need::Somewhere(Act::Read), self.now())?;
        let r = request.into_inner();
        let (items, next_page_token) = if session.access.reads("*") {
            page(view.prompts.values(), r.page_size, &r.page_token)?
        } else {
            let readable: Vec<_> = view
                .prompts
                .values()
                .filter(|p| session.access.reads(namespace_of(&p.name)))
                .collect();
            page(readable.into_iter(), r.page_size, &r.page_token)?
        };
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
        let need = Need::In(Act::Read, namespace_of(&request.get_ref().prompt));
        self.sessions.check(&request, &view, need, self.now())?;
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
        let need = Need::In(Act::Read, namespace_of(&request.get_ref().prompt));
        self.sessions.check(&request, &view, need, self.now())?;
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
        let need = Need::In(Act::Read, namespace_of(&request.get_ref().prompt));
        self.sessions.check(&request, &view, need, self.now())?;
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
                    break_glass: h.break_glass,
                })
                .collect(),
            next_page_token,
        }))
    }

    async fn get_deployment(
        &self,
        request: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::GetDeploymentResponse>, Status> {
        let view = self.view.load();
        let need = Need::In(Act::Read, namespace_of(&request.get_ref().prompt));
        self.sessions.check(&request, &view, need, self.now())?;
        let r = request.into_inner();
        let prompt = prompt_of(&view, &r.prompt)?;
        let env = environment("environment", &r.environment)?;
        if r.at_sequence != 0 && r.at_time_ms != 0 {
            return Err(
                ApiError::invalid("at_sequence", "at most one of at_sequence, at_time_ms").into(),
            );
        }
        let (at_seq, at_time, when) = match (r.at_sequence, r.at_time_ms) {
            (0, 0) => (u64::MAX, u64::MAX, "now".to_owned()),
            (seq, 0) => (seq, u64::MAX, format!("at sequence {seq}")),
            (_, t) => (u64::MAX, t, format!("at time {t} ms")),
        };
        let d = prompt
            .deployment_history
            .iter()
            .rev()
            .find(|d| d.environment == env && d.seq <= at_seq && d.timestamp_ms <= at_time)
            .ok_or_else(|| {
                ApiError::NotFound(format!("nothing of {} was live in {env} {when}", r.prompt))
            })?;
        Ok(Response::new(pb::GetDeploymentResponse {
            deployment: Some(deployment_pb(&r.prompt, d)),
        }))
    }

    async fn explain_deployment(
        &self,
        request: Request<pb::ExplainDeploymentRequest>,
    ) -> Result<Response<pb::ExplainDeploymentResponse>, Status> {
        let view = self.view.load();
        let need = Need::In(Act::Read, namespace_of(&request.get_ref().prompt));
        self.sessions.check(&request, &view, need, self.now())?;
        let r = request.into_inner();
        let prompt = prompt_of(&view, &r.prompt)?;
        let d = prompt
            .deployment_history
            .iter()
            .rev()
            .find(|d| d.seq == r.sequence)
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "no promotion or rollback of {} at sequence {}",
                    r.prompt, r.sequence
                ))
            })?;
        let mut seqs: Vec<u64> = d
            .decision
            .iter()
            .flat_map(|dec| dec.gates.iter().flat_map(|g| g.evidence.iter().copied()))
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        Ok(Response::new(pb::ExplainDeploymentResponse {
            deployment: Some(deployment_pb(&r.prompt, d)),
            evidence: seqs
                .into_iter()
                .filter_map(|s| evidence_pb(prompt, s))
                .collect(),
        }))
    }

    async fn list_role_assignments(
        &self,
        request: Request<pb::ListRoleAssignmentsRequest>,
    ) -> Result<Response<pb::ListRoleAssignmentsResponse>, Status> {
        let view = self.view.load();
        self.sessions
            .check(&request, &view, Need::Everywhere(Act::Read), self.now())?;
        let r = request.into_inner();
        let at = if r.at_sequence == 0 {
            view.head.saturating_sub(1)
        } else {
            r.at_sequence
        };
        let assignments: Vec<pb::RoleAssignment> = view
            .actors
            .values()
            .filter(|a| r.actor.is_empty() || a.name == r.actor)
            .filter(|a| a.registered_seq <= at)
            .map(|a| pb::RoleAssignment {
                actor: a.name.clone(),
                roles: a.roles_at(at).into_iter().collect(),
                revoked: a.revoked_seq.is_some_and(|s| s <= at),
            })
            .collect();
        if !r.actor.is_empty() && assignments.is_empty() {
            return Err(ApiError::NotFound(format!(
                "actor {} was not registered at sequence {at}",
                r.actor
            ))
            .into());
        }
        let (assignments, next_page_token) =
            page(assignments.into_iter(), r.page_size, &r.page_token)?;
        Ok(Response::new(pb::ListRoleAssignmentsResponse {
            assignments,
            at_sequence: at,
            next_page_token,
        }))
    }

    async fn get_policy(
        &self,
        request: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::GetPolicyResponse>, Status> {
        let view = self.view.load();
        self.sessions
            .check(&request, &view, Need::Everywhere(Act::Read), self.now())?;
        let at = match request.get_ref().at_sequence {
            0 => u64::MAX,
            n => n,
        };
        let record = view
            .policy_history
            .iter()
            .rev()
            .find(|p| p.seq <= at)
            .ok_or_else(|| ApiError::NotFound("no policy was in force then".into()))?;
        Ok(Response::new(pb::GetPolicyResponse {
            policy_version: record.version.clone(),
            sequence: record.seq,
            set_by: record.by.clone(),
            timestamp_ms: record.timestamp_ms,
            model_conf: record.files.model.clone(),
            policy_csv: record.files.policy.clone(),
            gates_toml: record.files.gates.clone(),
        }))
    }

    async fn diff_versions(
        &self,
        request: Request<pb::DiffVersionsRequest>,
    ) -> Result<Response<pb::DiffVersionsResponse>, Status> {
        let view = self.view.load();
        let need = Need::In(Act::Read, namespace_of(&request.get_ref().prompt));
        self.sessions.check(&request, &view, need, self.now())?;
        let r = request.into_inner();
        let prompt = prompt_of(&view, &r.prompt)?;
        let version = |field: &'static str, n: u64| {
            if n == 0 {
                return Err(ApiError::invalid(field, "a version number (1 or more)"));
            }
            prompt.version(n).ok_or_else(|| {
                ApiError::NotFound(format!("prompt {} version {n} not found", r.prompt))
            })
        };
        let (a, b) = (
            version("from_version", r.from_version)?,
            version("to_version", r.to_version)?,
        );
        let template_diff = if a.template == b.template {
            String::new()
        } else {
            similar::TextDiff::from_lines(&a.template, &b.template)
                .unified_diff()
                .header(
                    &format!("{} v{}", r.prompt, a.number),
                    &format!("{} v{}", r.prompt, b.number),
                )
                .to_string()
        };
        let json = |v: Option<&serde_json::Value>| v.map(|v| v.to_string()).unwrap_or_default();
        let keys: std::collections::BTreeSet<&String> =
            a.parameters.keys().chain(b.parameters.keys()).collect();
        let parameters = keys
            .into_iter()
            .filter(|k| a.parameters.get(*k) != b.parameters.get(*k))
            .map(|k| pb::ParameterChange {
                key: k.clone(),
                from_json: json(a.parameters.get(k)),
                to_json: json(b.parameters.get(k)),
            })
            .collect();
        let minus = |x: &[String], y: &[String]| -> Vec<String> {
            x.iter().filter(|v| !y.contains(v)).cloned().collect()
        };
        Ok(Response::new(pb::DiffVersionsResponse {
            from: Some(version_pb(&r.prompt, a)),
            to: Some(version_pb(&r.prompt, b)),
            template_diff,
            model_changed: a.model != b.model,
            parameters,
            variables_added: minus(&b.variables, &a.variables),
            variables_removed: minus(&a.variables, &b.variables),
        }))
    }

    type WatchEventsStream = std::pin::Pin<
        Box<
            dyn futures_util::Stream<Item = Result<pb::WatchEventsResponse, Status>>
                + Send
                + 'static,
        >,
    >;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let view = self.view.load();
        self.sessions
            .check(&request, &view, Need::Everywhere(Act::Read), self.now())?;
        let r = request.into_inner();
        let filter = EventFilter {
            actor: Some(r.actor).filter(|s| !s.is_empty()),
            prompt: Some(r.prompt).filter(|s| !s.is_empty()),
            kind: Some(r.kind).filter(|s| !s.is_empty()),
            environment: if r.environment.is_empty() {
                None
            } else {
                Some(environment("environment", &r.environment)?)
            },
        };
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        tokio::spawn(watch_feed(
            self.store.clone(),
            self.heads.clone(),
            self.stopping.clone(),
            filter,
            r.from_sequence,
            tx,
        ));
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let view = self.view.load();
        self.sessions
            .check(&request, &view, Need::Everywhere(Act::Read), self.now())?;
        let r = request.into_inner();
        let page = page_size(r.page_size)?;
        let environment = if r.environment.is_empty() {
            None
        } else {
            Some(environment("environment", &r.environment)?)
        };
        if r.to_time_ms != 0 && r.to_time_ms < r.from_time_ms {
            return Err(ApiError::invalid("to_time_ms", "0 or at least from_time_ms").into());
        }
        if r.to_sequence != 0 && r.to_sequence < r.from_sequence {
            return Err(ApiError::invalid("to_sequence", "0 or at least from_sequence").into());
        }
        let cursor =
            if r.page_token.is_empty() {
                None
            } else {
                Some(r.page_token.parse::<u64>().map_err(|_| {
                    ApiError::invalid("page_token", "a token from a previous response")
                })?)
            };
        let query = EventQuery {
            filter: EventFilter {
                actor: Some(r.actor).filter(|s| !s.is_empty()),
                prompt: Some(r.prompt).filter(|s| !s.is_empty()),
                kind: Some(r.kind).filter(|s| !s.is_empty()),
                environment,
            },
            from_time_ms: r.from_time_ms,
            to_time_ms: r.to_time_ms,
            from_sequence: r.from_sequence,
            to_sequence: r.to_sequence,
            newest_first: r.newest_first,
            page,
            cursor,
            // Only what is durable and in the read view.
            head: view.head,
        };
        let store = self.store.clone();
        let (events, next) = tokio::task::spawn_blocking(move || query.run(&store))
            .await
            .map_err(ApiError::internal)??;
        Ok(Response::new(pb::ListEventsResponse {
            events,
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }
}

/// Entries one `ListEvents` call reads at most, so a selective filter over a long log answers
/// in bounded time (with a token to go on).
const SCAN_BUDGET: u64 = 20_000;

struct EventQuery {
    filter: EventFilter,
    from_time_ms: u64,
    to_time_ms: u64,
    from_sequence: u64,
    to_sequence: u64,
    newest_first: bool,
    page: usize,
    cursor: Option<u64>,
    head: u64,
}

/// The audit event of an entry, if it is a statement that `filter` keeps.
fn event_of(
    filter: &EventFilter,
    seq: u64,
    entry: &Entry,
    bytes: &[u8],
) -> Option<pb::LedgerEvent> {
    let st = Statement::from_payload(&entry.envelope.payload).ok()?;
    let facts = EventFacts::of(&st);
    if !filter.matches(&facts) {
        return None;
    }
    Some(pb::LedgerEvent {
        sequence: seq,
        kind: facts.kind.to_owned(),
        actor: facts.actor.to_owned(),
        timestamp_ms: entry.timestamp_ms,
        prompt: facts.prompt.unwrap_or_default().to_owned(),
        version: facts.version.unwrap_or(0),
        environment: facts
            .environment
            .map(|e| e.as_str().to_owned())
            .unwrap_or_default(),
        break_glass: facts.break_glass,
        leaf_hash: merkle::leaf_hash(bytes).to_vec(),
        statement_json: String::from_utf8_lossy(&entry.envelope.payload).into_owned(),
    })
}

/// Events a watch stream may have queued for a slow consumer before its reader waits.
const WATCH_BUFFER: usize = 256;

/// Feeds a watch stream: reads committed entries from `next` on, up to the durable head, and
/// waits for the head to move. It reads the store, never the writer, so a slow consumer only
/// slows its own stream.
async fn watch_feed(
    store: Arc<Store>,
    mut heads: tokio::sync::watch::Receiver<u64>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    filter: EventFilter,
    mut next: u64,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchEventsResponse, Status>>,
) {
    loop {
        let head = *heads.borrow_and_update();
        while next < head {
            let end = head.min(next + 1024);
            let (store2, filter2, from) = (store.clone(), filter.clone(), next);
            let chunk = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                for item in store2.entries_from(from).take((end - from) as usize) {
                    let (seq, bytes) = item.map_err(ApiError::internal)?;
                    let entry = Entry::decode(&bytes).map_err(ApiError::internal)?;
                    out.extend(event_of(&filter2, seq, &entry, &bytes));
                }
                Ok::<_, ApiError>(out)
            })
            .await;
            let events = match chunk {
                Ok(Ok(events)) => events,
                Ok(Err(e)) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(ApiError::internal(e).into())).await;
                    return;
                }
            };
            for event in events {
                // A consumer that does not read must not hold up a shutdown.
                tokio::select! {
                    sent = tx.send(Ok(pb::WatchEventsResponse { event: Some(event) })) => if sent.is_err() { return }, // it went away
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
            next = end;
        }
        if *stopping.borrow() {
            let _ = tx
                .send(Err(Status::unavailable(format!(
                    "the server is shutting down; resume from sequence {next}"
                ))))
                .await;
            return;
        }
        tokio::select! {
            changed = heads.changed() => if changed.is_err() { return },
            _ = stopping.changed() => {}
            () = tx.closed() => return,
        }
    }
}

fn read_entry(store: &Store, seq: u64) -> Result<(Entry, Vec<u8>), ApiError> {
    let bytes = store
        .entry(seq)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal(format!("entry {seq} missing")))?;
    let entry = Entry::decode(&bytes).map_err(ApiError::internal)?;
    Ok((entry, bytes))
}

impl EventQuery {
    /// The first sequence number in `[0, head)` whose timestamp is at least `t` (timestamps
    /// never decrease along the log), or `head`.
    fn seq_at_time(&self, store: &Store, t: u64) -> Result<u64, ApiError> {
        let (mut lo, mut hi) = (0, self.head);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if read_entry(store, mid)?.0.timestamp_ms < t {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// One page of events and the cursor to continue from (`None`: done).
    fn run(self, store: &Store) -> Result<(Vec<pb::LedgerEvent>, Option<u64>), ApiError> {
        let mut lo = self.from_sequence;
        let mut hi = match self.to_sequence {
            0 => self.head,
            n => n.min(self.head),
        };
        if self.from_time_ms > 0 {
            lo = lo.max(self.seq_at_time(store, self.from_time_ms)?);
        }
        if self.to_time_ms > 0 {
            hi = hi.min(self.seq_at_time(store, self.to_time_ms)?);
        }
        let mut events = Vec::new();
        let keep =
            |seq: u64, entry: &Entry, bytes: &[u8]| event_of(&self.filter, seq, entry, bytes);

        // A prompt or an actor: walk that name's index instead of the log, O(its entries).
        let index = match (&self.filter.prompt, &self.filter.actor) {
            (Some(p), _) => Some(index_prefix(IndexTag::Prompt, p)),
            (None, Some(a)) => Some(index_prefix(IndexTag::Actor, a)),
            (None, None) => None,
        };
        if let Some(prefix) = index {
            // The cursor means what it means in a scan: the next sequence number upwards, or
            // the exclusive upper bound downwards.
            let from = if self.newest_first {
                self.cursor.unwrap_or(hi).min(hi)
            } else {
                self.cursor.unwrap_or(lo).max(lo)
            };
            for (visited, seq) in store.indexed(prefix, from, self.newest_first).enumerate() {
                let seq = seq.map_err(ApiError::internal)?;
                if seq < lo || seq >= hi {
                    break;
                }
                if events.len() >= self.page || visited as u64 >= SCAN_BUDGET {
                    let next = if self.newest_first { seq + 1 } else { seq };
                    return Ok((events, Some(next)));
                }
                let (entry, bytes) = read_entry(store, seq)?;
                events.extend(keep(seq, &entry, &bytes));
            }
            return Ok((events, None));
        }

        if self.newest_first {
            // Sequence numbers below the cursor, downwards.
            let mut seq = self.cursor.unwrap_or(hi).min(hi);
            let stop = seq.saturating_sub(SCAN_BUDGET).max(lo);
            while seq > stop && events.len() < self.page {
                seq -= 1;
                let (entry, bytes) = read_entry(store, seq)?;
                events.extend(keep(seq, &entry, &bytes));
            }
            Ok((events, (seq > lo).then_some(seq)))
        } else {
            // Sequence numbers from the cursor, upwards.
            let mut seq = self.cursor.unwrap_or(lo).max(lo);
            let stop = seq.saturating_add(SCAN_BUDGET).min(hi);
            for item in store.entries_from(seq) {
                if seq >= stop || events.len() >= self.page {
                    break;
                }
                let (_, bytes) = item.map_err(ApiError::internal)?;
                let entry = Entry::decode(&bytes).map_err(ApiError::internal)?;
                events.extend(keep(seq, &entry, &bytes));
                seq += 1;
            }
            Ok((events, (seq < hi).then_some(seq)))
        }
    }
}
