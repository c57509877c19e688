//! openraft's network traits on the peer pool: every group gets links that share the node's
//! one connection per peer.

use crate::rpc::{
    snapshot_chunk_timeout, CallError, PeerPool, Request, Response, SNAPSHOT_CHUNK_BYTES,
};
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tunekv_core::{GroupId, NodeId};
use tunekv_raft::{snapshot_chunk, SnapshotData, TypeConfig};

pub struct GroupNetwork {
    pub group: GroupId,
    pub pool: Arc<PeerPool>,
    /// How long an append that carries entries may wait for its answer (half the shortest
    /// election timeout); see [`PeerLink::append_entries`].
    pub append_ttl: Duration,
}

pub struct PeerLink {
    group: GroupId,
    target: NodeId,
    pool: Arc<PeerPool>,
    append_ttl: Duration,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerLink {
        // A member added since this node started (a joining node) is found by its address in
        // the group's membership.
        self.pool.learn(NodeId(target), &node.addr);
        PeerLink {
            group: self.group,
            target: NodeId(target),
            pool: self.pool.clone(),
            append_ttl: self.append_ttl,
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
    type SnapshotData = SnapshotData;

    /// openraft gives every append the heartbeat interval to be answered (100 ms by default).
    /// A heartbeat keeps that. An append that carries entries waits up to `append_ttl`: its
    /// follower answers after writing them to disk, and on 2 busy cores that took longer than
    /// 75 ms often enough that appends were abandoned and sent again, stalling writes for up to
    /// a second (issue 21: the worst SET). Entries go to each follower one append at a time,
    /// so a slow one delays only its own copy; a majority still commits.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let ttl = if rpc.entries.is_empty() {
            option.soft_ttl()
        } else {
            option.soft_ttl().max(self.append_ttl)
        };
        match self
            .pool
            .call(self.target, self.group.0, Request::Append(rpc), ttl)
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

    /// Streams the snapshot's frozen view in chunks of records, one at a time; the peer
    /// stages them on disk and installs the snapshot with the last.
    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let SnapshotData::View(view) = snapshot.snapshot else {
            return Err(StreamingError::Unreachable(Unreachable::new(&Msg(
                "a staged snapshot cannot be sent".into(),
            ))));
        };
        static TRANSFERS: AtomicU64 = AtomicU64::new(1);
        let transfer = TRANSFERS.fetch_add(1, Ordering::Relaxed);
        let storage_error = |e: std::io::Error| {
            StreamingError::Network(NetworkError::new(&Msg(format!(
                "reading the snapshot to send: {e}"
            ))))
        };
        tokio::pin!(cancel);
        let mut after: Option<Vec<u8>> = None;
        for seq in 0.. {
            let (records, last) = snapshot_chunk(&*view, after.as_deref(), SNAPSHOT_CHUNK_BYTES)
                .map_err(storage_error)?;
            after = records.last().map(|(k, _)| k.clone()).or(after);
            let bytes = records.iter().map(|(k, v)| k.len() + v.len()).sum();
            let timeout = snapshot_chunk_timeout(option.hard_ttl(), bytes, last);
            let req = Request::SnapshotChunk {
                vote,
                meta: snapshot.meta.clone(),
                transfer,
                seq,
                records,
                last,
            };
            let sent = tokio::select! {
                r = self.pool.call(self.target, self.group.0, req, timeout) => r,
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
            };
            match sent {
                Ok(Response::SnapshotChunk) if !last => {}
                Ok(Response::Snapshot(r)) if last => return Ok(r),
                Ok(_) => {
                    return Err(StreamingError::Unreachable(Unreachable::new(&Msg(
                        "unexpected response kind".into(),
                    ))))
                }
                Err(e) => {
                    return Err(StreamingError::Unreachable(Unreachable::new(&Msg(
                        e.to_string()
                    ))))
                }
            }
        }
        unreachable!("a snapshot ends with its last chunk")
    }
}
