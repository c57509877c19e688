//! Starting a node, its groups and its background loops; shutting down.

use super::*;

impl Node {
    /// Starts a node on the caller's runtime: binds the node-to-node listener, opens the
    /// metadata group (initializing it on the lowest-numbered node of a new cluster), and starts
    /// reconciling hosted shard groups with the catalog.
    pub async fn start(
        config: NodeConfig,
        transport: Arc<dyn Transport>,
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Node>, TunekvError> {
        config.validate().map_err(|e| err(Code::BadRequest, e))?;
        let raft_config = config
            .raft_timing
            .tuning()
            .openraft_config()
            .map_err(internal)?;
        let session_key = SessionKey::new(config.cluster_secret.as_bytes())
            .map_err(|e| err(Code::BadRequest, e))?;
        // Every draw this node makes comes from one seed: the simulator's, or the OS's.
        let mut rng = StdRng::seed_from_u64(config.rng_seed.unwrap_or_else(rand::random));
        let faults = Arc::new(Faults::new(config.enable_faults, rng.gen()));
        let peers: Vec<(NodeId, String)> = config
            .peers
            .iter()
            .map(|p| (NodeId(p.id), p.raft.clone()))
            .collect();
        let pool = Arc::new(PeerPool::new(
            NodeId(config.id),
            &peers,
            transport.clone(),
            faults.clone(),
        ));
        let mut founders: Vec<NodeId> = peers.iter().map(|(id, _)| *id).collect();
        founders.sort();
        let listener = transport
            .bind(&config.raft)
            .await
            .map_err(|e| internal(format!("cannot listen on {}: {e}", config.raft)))?;
        let clock_guard =
            ClockGuard::new(config.max_clock_offset_ms, peers.len().saturating_sub(1));
        let hlc = Arc::new(Hlc::new(config.max_clock_offset_ms));
        let metrics = Arc::new(Metrics::new());
        let observed = metrics.clone();
        let user_limiter =
            auth::quota(config.user_requests_per_s).map(governor::RateLimiter::keyed);
        let node = Arc::new(Node {
            id: NodeId(config.id),
            commit: GroupCommit::observed(
                storage.clone(),
                Arc::new(move |took, requests, ok| observed.synced(took, requests, ok)),
            ),
            metrics,
            lag_history: Mutex::new(std::collections::VecDeque::new()),
            pbs: Mutex::new(Vec::new()),
            config,
            storage,
            clock,
            hlc,
            pool,
            faults: faults.clone(),
            raft_config,
            session_key,
            epoch: Instant::now(),
            // A random id for this process, so peers notice a restart (its clock starts over).
            incarnation: rng.gen(),
            peer_clocks: Mutex::new(BTreeMap::new()),
            clock_guard: Mutex::new(clock_guard),
            clock_logged: Mutex::new(ClockHealth::Trusted),
            hlc_capped_logged: AtomicU64::new(0),
            groups: RwLock::new(BTreeMap::new()),
            opening: tokio::sync::Mutex::new(()),
            keyspace_cache: RwLock::new(HashMap::new()),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
            stop: tokio_util::sync::CancellationToken::new(),
            dynamo: Default::default(),
            me: std::sync::OnceLock::new(),
            publish_sink: std::sync::OnceLock::new(),
            ring_cache: Mutex::new(HashMap::new()),
            ring_drops: Mutex::new(HashMap::new()),
            rings_rehomed: Mutex::new(None),
            membership_stuck: Mutex::new(None),
            open_grants: Arc::new(tunekv_core::auth::Grants::open()),
            grants_cache: Mutex::new(HashMap::new()),
            login_gate: tokio::sync::Semaphore::new(auth::LOGINS_AT_ONCE),
            dummy_hash: std::sync::OnceLock::new(),
            user_limiter,
            watch_counts: Mutex::new(HashMap::new()),
        });
        let _ = node.me.set(Arc::downgrade(&node));
        node.load_hints()?;
        node.spawn_loop(rpc::serve(
            node.id,
            listener,
            node.clone() as Arc<dyn Handler>,
            faults,
        ));
        // The configured peers create the metadata group once (the lowest id proposes); a node
        // added later joins it as a learner instead (`tunekv node add`).
        let first = founders[0];
        node.open_group(GroupId::METADATA, &founders, first == node.id)
            .await?;
        node.spawn_loop(node.clone().reconcile_loop());
        node.spawn_loop(node.clone().membership_loop());
        node.spawn_loop(node.clone().calibrate_loop());
        node.spawn_loop(node.clone().watermark_loop());
        node.spawn_loop(node.clone().sweep_loop());
        node.spawn_loop(node.clone().hint_loop());
        node.spawn_loop(node.clone().anti_entropy_loop());
        node.spawn_loop(node.clone().ring_loop());
        node.spawn_loop(node.clone().leader_loop());
        node.spawn_loop(node.clone().observe_loop());
        node.spawn_loop(node.clone().auth_bootstrap_loop());
        Ok(node)
    }

    /// Runs a background loop until `shutdown` (the loop holds the node alive until then).
    fn spawn_loop(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spawn(async move {
                // Biased: a fixed polling order keeps simulated runs byte-identical.
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => {}
                    _ = fut => {}
                }
            });
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// What this node counts (`GET /metrics`); the front ends count their requests here.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Signs and checks session tokens with the cluster secret.
    pub fn session_key(&self) -> &SessionKey {
        &self.session_key
    }

    pub fn faults_enabled(&self) -> bool {
        self.faults.enabled()
    }

    pub(super) fn group(&self, id: GroupId) -> Option<Arc<Group>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    pub(super) fn all_groups(&self) -> Vec<Arc<Group>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(super) fn members_map(&self, members: &[NodeId]) -> BTreeMap<u64, BasicNode> {
        let addresses = self.node_addresses();
        members
            .iter()
            .filter_map(|m| addresses.get(&m.0).map(|r| (m.0, BasicNode::new(&r.raft))))
            .collect()
    }

    /// Opens (creates or recovers) a group; `initialize` makes this node propose the group's
    /// first membership if the group has never been initialized anywhere on this node.
    pub(super) async fn open_group(
        &self,
        id: GroupId,
        members: &[NodeId],
        initialize: bool,
    ) -> Result<Arc<Group>, TunekvError> {
        let _guard = self.opening.lock().await;
        if let Some(g) = self.group(id) {
            return Ok(g);
        }
        let sm = StateMachine::open_with(
            id.0,
            self.storage.clone(),
            self.hlc.clone(),
            tunekv_raft::FeedLimits {
                batches: self.config.watch_batches_max,
                history_bytes: self.config.watch_history_bytes,
            },
            tunekv_raft::HotLimits {
                bytes: self.config.storage.hot_values_bytes,
                keep_stale: self.config.bugs.stale_hot_values(),
            },
        )
        .map_err(internal)?;
        let data = sm.data();
        let log = LogStore::new(id.0, self.storage.clone(), self.commit.clone())
            .counting(data.counters.clone());
        let net = GroupNetwork {
            group: id,
            pool: self.pool.clone(),
            append_ttl: std::time::Duration::from_millis(self.raft_config.election_timeout_min / 2),
        };
        let raft = Raft::new(self.id.0, self.raft_config.clone(), net, log, sm)
            .await
            .map_err(internal)?;
        if initialize && !raft.is_initialized().await.map_err(internal)? {
            tracing::info!(group = %id, ?members, "initializing group");
            if let Err(e) = raft.initialize(self.members_map(members)).await {
                tracing::warn!(group = %id, error = %e, "initialize failed");
            }
        }
        let group = Arc::new(Group {
            id,
            raft,
            data,
            last_contact: Mutex::new(None),
            proofs: Mutex::new(Proofs::default()),
            probes: AtomicU64::new(0),
            probes_shared: AtomicU64::new(0),
            own_probe: tokio::sync::Mutex::new(None),
            applies: Mutex::new(std::collections::VecDeque::new()),
            acks: Mutex::new(std::collections::VecDeque::new()),
            receiving: Mutex::new(None),
        });
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, group.clone());
        if let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) {
            self.spawn_loop(me.clone().watch_leader(group.clone()));
            if !id.is_metadata() {
                self.spawn_loop(me.watch_applies(group.clone()));
            }
        }
        Ok(group)
    }

    pub(super) fn metadata(&self) -> Arc<Group> {
        // Opened in `start` before the node is handed out; never removed.
        self.group(GroupId::METADATA)
            .unwrap_or_else(|| unreachable!("the metadata group is opened at start"))
    }

    /// Keeps hosted shard groups in line with the catalog's placements: opens the groups this
    /// node replicates (or is about to, as a move's learner) and closes those that moved
    /// away. Runs after every catalog change.
    pub(super) async fn reconcile_loop(self: Arc<Self>) {
        let mut applied = self.metadata().data.subscribe();
        loop {
            // Closed only when the catalog names other replicas (never because a read failed).
            let mut moved_away = Vec::new();
            for ks in self.list_keyspaces() {
                if ks.spec.mode != Mode::Ordered {
                    continue;
                }
                let p = self.placement(&ks);
                for (shard, s) in p.shards.iter().enumerate() {
                    let gid = GroupId::for_shard(ks.id, ShardId(shard as u32));
                    if !s.hosts(self.id) {
                        if self.group(gid).is_some() {
                            moved_away.push(gid);
                        }
                        continue;
                    }
                    if self.group(gid).is_none() {
                        if let Err(e) = self.open_group(gid, &s.nodes(), s.creates(self.id)).await {
                            tracing::error!(group = %gid, error = %e, "cannot open group");
                        }
                    }
                }
            }
            for gid in moved_away {
                self.close_group(gid).await;
            }
            tokio::select! {
                biased;
                changed = applied.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Before a clean stop: hands every group this node leads to its most caught-up other
    /// voter and waits (at most `wait`) until each has a new leader, so the cluster does not
    /// wait out an election timeout, and reads and writes in flight here are answered by the
    /// next leader. Groups without another voter keep their leader. Returns the groups still
    /// led here.
    pub async fn hand_off_leadership(&self, wait: Duration) -> usize {
        let deadline = Instant::now() + wait;
        let mut led = Vec::new();
        for g in self.all_groups() {
            let m = g.raft.metrics().borrow_watched().clone();
            if m.current_leader != Some(self.id.0) {
                continue;
            }
            let matched = |v: u64| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&v).cloned().flatten())
                    .map_or(0, |l| l.index())
            };
            // Only a voter that acknowledged a heartbeat within an election timeout: one that
            // is down could not take over, and the wait would be for nothing.
            let recent = Duration::from_millis(self.config.raft_timing.election_timeout_ms_min);
            let alive = |v: u64| {
                m.heartbeat
                    .as_ref()
                    .and_then(|h| h.get(&v).cloned().flatten())
                    .is_some_and(|t| openraft::Instant::elapsed(&*t) < recent)
            };
            let to = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|&v| v != self.id.0 && alive(v))
                .max_by_key(|&v| matched(v));
            if let Some(to) = to {
                let _ = g.raft.trigger().transfer_leader(to).await;
                led.push(g);
            }
        }
        let total = led.len();
        while Instant::now() < deadline {
            led.retain(|g| g.raft.metrics().borrow_watched().current_leader == Some(self.id.0));
            if led.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(
            groups = total,
            still_led = led.len(),
            "leadership handed off before stopping"
        );
        led.len()
    }

    /// Stops every group and makes the storage durable.
    pub async fn shutdown(&self) {
        // Background loops first (the listener for peers included), so nothing starts new
        // work on the groups being shut down.
        self.stop.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        while tasks.join_next().await.is_some() {}
        for g in self.all_groups() {
            let _ = g.raft.shutdown().await;
        }
        let _ = self.commit.sync().await;
    }
}
