//! openraft's network traits on the peer pool: every group gets links that share the node's
//! one connection per peer.

use crate::rpc::{CallError, PeerPool, Request, Response};
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use std::future::Future;
use std::sync::Arc;
use tunekv_core::{GroupId, NodeId};
use tunekv_raft::TypeConfig;

pub struct GroupNetwork {
    pub group: GroupId,
    pub pool: Arc<PeerPool>,
}

pub struct PeerLink {
    group: GroupId,
    target: NodeId,
    pool: Arc<PeerPool>,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> PeerLink {
        PeerLink {
            group: self.group,
            target: NodeId(target),
            pool: self.pool.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

fn rpc_error(e: CallError) -> RPCError<TypeConfig> {
    match e {
        CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&Msg(m))),
        other => RPCError::Network(NetworkError::new(&Msg(other.to_string()))),
    }
}

fn unexpected() -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&Msg("unexpected response kind".into())))
}

impl RaftNetworkV2<TypeConfig> for PeerLink {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .pool
            .call(
                self.target,
                self.group.0,
                Request::Append(rpc),
                option.soft_ttl(),
            )
            .await
        {
            Ok(Response::Append(r)) => Ok(r),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .pool
            .call(
                self.target,
                self.group.0,
                Request::Vote(rpc),
                option.soft_ttl(),
            )
            .await
        {
            Ok(Response::Vote(r)) => Ok(r),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .pool
            .call(
                self.target,
                self.group.0,
                Request::TransferLeader(req),
                option.soft_ttl(),
            )
            .await
        {
            Ok(Response::TransferLeader(r)) => Ok(r),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(rpc_error(e)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = Request::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        match self
            .pool
            .call(self.target, self.group.0, req, option.hard_ttl())
            .await
        {
            Ok(Response::Snapshot(r)) => Ok(r),
            Ok(_) => Err(StreamingError::Unreachable(Unreachable::new(&Msg(
                "unexpected response kind".into(),
            )))),
            Err(e) => Err(StreamingError::Unreachable(Unreachable::new(&Msg(
                e.to_string()
            )))),
        }
    }
}
