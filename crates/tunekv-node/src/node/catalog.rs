//! The keyspace catalog: keyspaces live in the metadata group; each node caches parsed specs.

use super::*;

impl Node {
    pub(super) fn catalog_key(name: &str) -> Vec<u8> {
        let mut k = CATALOG_PREFIX.to_vec();
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// Keyspaces as this node's copy of the catalog knows them.
    pub fn list_keyspaces(&self) -> Vec<KeyspaceInfo> {
        let meta = self.metadata();
        let listed = meta
            .data
            .read()
            .and_then(|view| view.scan_prefix(CATALOG_PREFIX));
        let listed = match listed {
            Ok(listed) => listed,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the keyspace catalog");
                return Vec::new();
            }
        };
        listed
            .into_iter()
            .filter_map(|(k, v)| {
                let name = std::str::from_utf8(k.get(CATALOG_PREFIX.len()..)?)
                    .ok()?
                    .to_string();
                let spec: KeyspaceSpec = serde_json::from_slice(&v.value).ok()?;
                Some(KeyspaceInfo {
                    name,
                    id: v.create_index,
                    spec,
                })
            })
            .collect()
    }

    pub(super) fn local_keyspace(&self, name: &str) -> Option<Arc<KeyspaceInfo>> {
        let meta = self.metadata();
        // The catalog cannot have changed while the metadata copy applied nothing: a spec
        // checked at this applied index is served without opening a view (the same index is
        // the same log prefix, so the same catalog, even on a reopened copy).
        let applied = meta.data.applied().index;
        {
            let cache = self
                .keyspace_cache
                .read()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(name) {
                if c.seen_at.load(Ordering::Acquire) == applied {
                    return Some(c.info.clone());
                }
            }
        }
        let read = meta.data.read().and_then(|view| {
            let at = view.applied().index;
            view.get(&Self::catalog_key(name)).map(|v| (v, at))
        });
        let (v, at) = match read {
            Ok((v, at)) => (v?, at),
            Err(e) => {
                tracing::error!(error = %e, keyspace = name, "cannot read the keyspace catalog");
                return None;
            }
        };
        let version = (v.create_index, v.mod_index);
        {
            let cache = self
                .keyspace_cache
                .read()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(c) = cache.get(name) {
                if c.version == version {
                    c.seen_at.store(at, Ordering::Release);
                    return Some(c.info.clone());
                }
            }
        }
        let spec: KeyspaceSpec = serde_json::from_slice(&v.value).ok()?;
        let info = Arc::new(KeyspaceInfo {
            name: name.to_string(),
            id: v.create_index,
            spec,
        });
        let mut cache = self
            .keyspace_cache
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if cache.len() >= KEYSPACE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(
            name.to_string(),
            CachedKeyspace {
                version,
                seen_at: AtomicU64::new(at),
                info: info.clone(),
            },
        );
        Some(info)
    }

    /// The default read level of keyspace `name` if this node has parsed its spec already
    /// (for metrics labels: never waits, never reads the catalog).
    pub fn default_level_of(&self, name: &str) -> Option<Level> {
        self.keyspace_cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|c| c.info.spec.default_level())
    }

    /// The keyspace, confirmed with the catalog's leader if this node has not heard of it yet
    /// (it may have been created a moment ago through another node).
    pub async fn keyspace(
        &self,
        name: &str,
        deadline: Instant,
    ) -> Result<Arc<KeyspaceInfo>, TunekvError> {
        check_keyspace_name(name)?;
        if let Some(ks) = self.local_keyspace(name) {
            return Ok(ks);
        }
        let index = self.read_index(GroupId::METADATA, deadline).await?;
        self.wait_applied(&self.metadata(), index, deadline).await?;
        self.local_keyspace(name).ok_or_else(|| {
            err(
                Code::KeyspaceNotFound,
                format!("keyspace {name:?} does not exist"),
            )
        })
    }

    /// Creates a keyspace (idempotent for an identical spec). Returns whether it was created.
    pub async fn create_keyspace(
        &self,
        name: &str,
        spec: KeyspaceSpec,
    ) -> Result<(KeyspaceInfo, bool), TunekvError> {
        check_keyspace_name(name)?;
        // Stored with the mode's defaults filled in, so a later GET shows what applies.
        let asked_placement = spec.placement;
        let spec = spec.normalized();
        spec.validate(self.active_nodes().len())?;
        let deadline = Instant::now() + Duration::from_millis(self.config.write_wait_ms_default);
        let value = serde_json::to_vec(&spec).map_err(internal)?;
        // The keyspace and where its data lives, in one entry: no node ever sees one without
        // the other.
        let placement = serde_json::to_vec(&self.new_placement(name, &spec)).map_err(internal)?;
        let key = Self::catalog_key(name);
        let op = Op::Txn {
            compare: vec![(key.clone(), tunekv_raft::Expect::Version(0))],
            success: vec![
                Op::Put {
                    key: key.clone(),
                    value,
                },
                Op::Put {
                    key: Self::placement_key(name),
                    value: placement,
                },
            ],
            failure: vec![Op::Get { key }],
        };
        let written = self.propose(GroupId::METADATA, op, deadline).await?;
        let created = written.result.int == 1;
        if !created {
            let existing = written
                .result
                .results
                .first()
                .and_then(|r| r.current.as_ref())
                .and_then(|c| serde_json::from_slice::<KeyspaceSpec>(&c.value).ok());
            // The same spec, as it applies: a request that names no ring placement takes the
            // keyspace's, and an entry written before placements existed is `dealt`.
            let applied = |s: &KeyspaceSpec| {
                let mut s = s.clone();
                if s.mode != tunekv_core::Mode::Ordered {
                    s.placement = Some(s.ring_placement());
                }
                s
            };
            let same = existing.as_ref().is_some_and(|e| {
                let mut wanted = spec.clone();
                if asked_placement.is_none() {
                    wanted.placement = e.placement;
                }
                applied(e) == applied(&wanted)
            });
            if !same {
                return Err(err(
                    Code::KeyspaceExists,
                    format!(
                        "keyspace {name:?} exists with a different spec: {}",
                        existing
                            .map(|s| serde_json::to_string(&s).unwrap_or_default())
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        let meta = self.metadata();
        self.wait_applied(&meta, written.index, deadline).await?;
        let info = self
            .local_keyspace(name)
            .ok_or_else(|| internal("keyspace missing from the catalog after it was applied"))?;
        self.wait_keyspace_ready(&info).await;
        Ok(((*info).clone(), created))
    }

    /// Waits (bounded) until every hosted shard group of the keyspace knows its leader.
    pub(super) async fn wait_keyspace_ready(&self, ks: &KeyspaceInfo) {
        if ks.spec.mode != Mode::Ordered {
            // No groups: a leaderless or volatile keyspace is ready once in the catalog.
            return;
        }
        let deadline = Instant::now() + KEYSPACE_READY_WAIT;
        for shard in 0..ks.spec.shards {
            let gid = GroupId::for_shard(ks.id, ShardId(shard));
            if !self.shard_placement(ks, ShardId(shard)).hosts(self.id) {
                continue;
            }
            while Instant::now() < deadline {
                if let Some(g) = self.group(gid) {
                    if g.raft.metrics().borrow_watched().current_leader.is_some() {
                        break;
                    }
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}
