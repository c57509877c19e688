//! Requests from other nodes: Raft messages, forwarded writes and read indexes, status, clock
//! rounds and watermark pushes.

use super::*;

impl Node {
    pub(super) async fn handle_request(
        &self,
        group: u64,
        req: Request,
    ) -> Result<Response, RemoteError> {
        let gid = GroupId(group);
        match req {
            Request::Status => return Ok(Response::Status(self.node_report())),
            Request::Clock => {
                return Ok(Response::Clock {
                    incarnation: self.incarnation,
                    now_us: self.mono_us(Instant::now()),
                    wall_ms: self.clock.wall_ms(),
                })
            }
            Request::Watermarks(push) => {
                self.accept_watermarks(push);
                return Ok(Response::Done);
            }
            Request::Publish { channel, message } => {
                self.publish_here(&channel, &message);
                return Ok(Response::Done);
            }
            Request::Get {
                ks,
                key,
                level,
                wait_ms,
                session,
            } => {
                let read = self.serve_forwarded_get(&ks, &key, &level, wait_ms, &session);
                return match tokio::time::timeout(FORWARDED_WORK_MAX, read).await {
                    Ok(r) => r.map(Response::Read),
                    Err(_) => Err(RemoteError::new(
                        Code::Timeout,
                        "the replica did not finish the read in time",
                    )),
                };
            }
            Request::ShardChanges {
                ks,
                shard,
                after,
                wait_ms,
            } => {
                let read = self.serve_shard_changes(&ks, shard, after, wait_ms);
                return match tokio::time::timeout(FORWARDED_WORK_MAX, read).await {
                    Ok(r) => r.map(Response::ShardChanges),
                    Err(_) => Err(RemoteError::new(
                        Code::Timeout,
                        "the replica did not answer the changes in time",
                    )),
                };
            }
            Request::ScanShard {
                ks,
                shard,
                from,
                want,
                level,
                wait_ms,
                session,
            } => {
                let read = self.serve_forwarded_scan(
                    (&ks, shard),
                    (from, want),
                    &level,
                    wait_ms,
                    &session,
                );
                return match tokio::time::timeout(FORWARDED_WORK_MAX, read).await {
                    Ok(r) => r.map(Response::Scanned),
                    Err(_) => Err(RemoteError::new(
                        Code::Timeout,
                        "the replica did not finish the read in time",
                    )),
                };
            }
            Request::ReadShard {
                ks,
                shard,
                keys,
                level,
                wait_ms,
                bytes_max,
                bytes_before,
                session,
            } => {
                let read = self.serve_forwarded_shard(
                    (&ks, shard, keys),
                    &level,
                    wait_ms,
                    (bytes_max, bytes_before),
                    &session,
                );
                return match tokio::time::timeout(FORWARDED_WORK_MAX, read).await {
                    Ok(r) => r.map(Response::Shard),
                    Err(_) => Err(RemoteError::new(
                        Code::Timeout,
                        "the replica did not finish the read in time",
                    )),
                };
            }
            Request::Dynamo(req) => {
                return match tokio::time::timeout(FORWARDED_WORK_MAX, self.handle_dynamo(req)).await
                {
                    Ok(r) => r.map(Response::Dynamo),
                    Err(_) => Err(RemoteError::new(
                        Code::Timeout,
                        "the replica did not finish in time",
                    )),
                }
            }
            _ => {}
        }
        // Not open here (never, or its replica moved away): not the leader either, so the
        // caller retries on the leader it learns next; nothing happened.
        let g = self.group(gid).ok_or_else(|| RemoteError {
            code: Code::Unavailable,
            message: format!("group {gid} is not open on node {}", self.id),
            leader_hint: None,
            not_leader: true,
        })?;
        let fatal = |e: openraft::error::Fatal<tunekv_raft::TypeConfig>| {
            RemoteError::new(Code::Internal, e.to_string())
        };
        match req {
            Request::Append(rpc) => {
                let resp = g
                    .raft
                    .append_entries(rpc)
                    .await
                    .map_err(|e| RemoteError::new(Code::Internal, e.to_string()))?;
                if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
                    *g.last_contact.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                }
                Ok(Response::Append(resp))
            }
            Request::Vote(rpc) => g
                .raft
                .vote(rpc)
                .await
                .map(Response::Vote)
                .map_err(|e| RemoteError::new(Code::Internal, e.to_string())),
            Request::SnapshotChunk {
                vote,
                meta,
                transfer,
                seq,
                records,
                last,
            } => {
                let chunk_error = |e: std::io::Error| {
                    RemoteError::new(Code::Internal, format!("storing a snapshot chunk: {e}"))
                };
                // Taken out of the slot while it is written: a chunk of another transfer
                // (or out of order) finds none and is refused; the sender starts over.
                let mut receiving = {
                    let mut slot = super::leaderless::lock(&g.receiving);
                    match slot.take() {
                        Some(r) if r.transfer == transfer && r.next == seq => r,
                        _ if seq == 0 => Receiving {
                            transfer,
                            next: 0,
                            stage: self
                                .storage
                                .state_stage(gid.0)
                                .map_err(|e| chunk_error(std::io::Error::from(e)))?,
                        },
                        _ => {
                            return Err(RemoteError::new(
                                Code::Unavailable,
                                format!(
                                    "snapshot chunk {seq} of transfer {transfer} is not the \
                                     next one expected; restart the transfer"
                                ),
                            ))
                        }
                    }
                };
                receiving
                    .stage
                    .write(&records)
                    .map_err(|e| chunk_error(e.into()))?;
                if !last {
                    if self.config.crash_at == Some(crate::CrashAt::SnapshotInstall) {
                        tracing::error!(group = %gid, "--crash-at snapshot-install: aborting");
                        std::process::abort();
                    }
                    receiving.next = seq + 1;
                    *super::leaderless::lock(&g.receiving) = Some(receiving);
                    return Ok(Response::SnapshotChunk);
                }
                let snapshot = tunekv_raft::Snapshot {
                    meta,
                    snapshot: tunekv_raft::SnapshotData::Staged(receiving.stage),
                };
                g.raft
                    .install_full_snapshot(vote, snapshot)
                    .await
                    .map(Response::Snapshot)
                    .map_err(fatal)
            }
            Request::Write(op) => {
                match tokio::time::timeout(FORWARDED_WORK_MAX, self.leader_propose(&g, op)).await {
                    Ok(r) => r.map(Response::Write),
                    Err(_) => Err(RemoteError::new(
                        Code::Timeout,
                        "the leader could not commit in time",
                    )),
                }
            }
            Request::ReadIndex => {
                match tokio::time::timeout(FORWARDED_WORK_MAX, self.leader_read_index(&g)).await {
                    Ok(r) => r.map(Response::ReadIndex),
                    Err(_) => Err(RemoteError::new(
                        Code::NoQuorum,
                        "the leader could not confirm with a quorum in time",
                    )),
                }
            }
            Request::ChangeMembers { learners, voters } => {
                let deadline = Instant::now() + super::membership::MEMBERSHIP_HOP_WAIT;
                self.change_members_here(&g, learners, voters, deadline)
                    .await
                    .map(|()| Response::Done)
                    .map_err(|e| RemoteError::new(e.code, e.message))
            }
            Request::TransferLeader(req) => g
                .raft
                .handle_transfer_leader(req)
                .await
                .map(Response::TransferLeader)
                .map_err(fatal),
            Request::Status
            | Request::Clock
            | Request::Watermarks(_)
            | Request::Dynamo(_)
            | Request::Publish { .. }
            | Request::Get { .. }
            | Request::ReadShard { .. }
            | Request::ScanShard { .. }
            | Request::ShardChanges { .. } => {
                Err(RemoteError::new(Code::Internal, "handled above"))
            }
        }
    }
}

impl Handler for Node {
    fn handle(&self, group: u64, req: Request) -> BoxFuture<'_, Result<Response, RemoteError>> {
        Box::pin(self.handle_request(group, req))
    }
}
