//! `promptledger.ledger.v1.LedgerService`: checkpoints and proofs for auditors. Checkpoints and
//! consistency proofs are public (they reveal only hashes); entries need a session that may read
//! everything.

use super::auth::Need;
use super::auth::Sessions;
use super::registry::Clock;
use super::status::ApiError;
use crate::ledger::checkpoint::Checkpoint;
use crate::ledger::keys::PublicKey;
use crate::ledger::merkle;
use crate::policy::Act;
use crate::proto::ledger::v1 as pb;
use crate::proto::ledger::v1::ledger_service_server::LedgerService;
use crate::publish::PublishStatus;
use crate::registry::personality::ViewCell;
use crate::storage::Store;
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct LedgerApi {
    pub store: Arc<Store>,
    pub ledger_key: PublicKey,
    pub view: ViewCell,
    pub sessions: Arc<Sessions>,
    pub clock: Clock,
    /// The durable head size, from the writer.
    pub heads: tokio::sync::watch::Receiver<u64>,
    /// Set when the server publishes to NATS.
    pub nats: Option<(String, Arc<PublishStatus>)>,
}

impl LedgerApi {
    fn latest(&self) -> Result<(Vec<u8>, Checkpoint), ApiError> {
        let note = self
            .store
            .checkpoint()
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::internal("no checkpoint"))?;
        let cp = Checkpoint::open(&note, &self.ledger_key).map_err(ApiError::internal)?;
        Ok((note, cp))
    }

    fn size(&self, requested: u64, latest: u64, field: &'static str) -> Result<u64, ApiError> {
        match requested {
            0 => Ok(latest),
            n if n <= latest => Ok(n),
            n => Err(ApiError::invalid(
                field,
                format!("at most the latest tree size {latest}, got {n}"),
            )),
        }
    }
}

fn proof_error<E: std::fmt::Display>(e: merkle::ProofError<E>) -> ApiError {
    match e {
        merkle::ProofError::IndexOutOfRange { index, size } => {
            ApiError::NotFound(format!("entry {index} is not in the tree of size {size}"))
        }
        merkle::ProofError::BadSizes { old, new } => ApiError::invalid(
            "old_tree_size",
            format!("at most new_tree_size {new}, got {old}"),
        ),
        merkle::ProofError::Read(e) => ApiError::internal(e),
    }
}

#[tonic::async_trait]
impl LedgerService for LedgerApi {
    async fn get_checkpoint(
        &self,
        _: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::GetCheckpointResponse>, Status> {
        let (note, cp) = self.latest()?;
        Ok(Response::new(pb::GetCheckpointResponse {
            checkpoint: note,
            tree_size: cp.size,
        }))
    }

    async fn get_entry(
        &self,
        request: Request<pb::GetEntryRequest>,
    ) -> Result<Response<pb::GetEntryResponse>, Status> {
        self.sessions.check(
            &request,
            &self.view.load(),
            Need::Everywhere(Act::Read),
            (self.clock)(),
        )?;
        let r = request.into_inner();
        let (_, cp) = self.latest()?;
        let size = self.size(r.tree_size, cp.size, "tree_size")?;
        let proof =
            merkle::inclusion_proof(self.store.as_ref(), r.sequence, size).map_err(proof_error)?;
        let entry = self
            .store
            .entry(r.sequence)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::NotFound(format!("entry {}", r.sequence)))?;
        Ok(Response::new(pb::GetEntryResponse {
            entry,
            inclusion_proof: proof.iter().map(|h| h.to_vec()).collect(),
            tree_size: size,
        }))
    }

    async fn get_consistency_proof(
        &self,
        request: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::GetConsistencyProofResponse>, Status> {
        let r = request.into_inner();
        let (_, cp) = self.latest()?;
        let new = self.size(r.new_tree_size, cp.size, "new_tree_size")?;
        let proof = merkle::consistency_proof(self.store.as_ref(), r.old_tree_size, new)
            .map_err(proof_error)?;
        Ok(Response::new(pb::GetConsistencyProofResponse {
            proof: proof.iter().map(|h| h.to_vec()).collect(),
            old_tree_size: r.old_tree_size,
            new_tree_size: new,
        }))
    }

    async fn get_status(
        &self,
        _request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let size = *self.heads.borrow();
        let nats = self.nats.as_ref().map(|(stream, status)| {
            let lag = status.lag(&self.store, size, (self.clock)());
            pb::NatsStatus {
                stream: stream.clone(),
                connected: lag.connected,
                published: lag.published,
                lag_entries: lag.entries,
                lag_seconds: lag.seconds,
                checkpoint_size: status
                    .checkpoint_size
                    .load(std::sync::atomic::Ordering::Acquire),
            }
        });
        Ok(Response::new(pb::GetStatusResponse { size, nats }))
    }
}
