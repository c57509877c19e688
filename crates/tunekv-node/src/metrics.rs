//! What a node counts for `GET /metrics` (docs/observability.md lists every family).
//!
//! Two kinds of families: those counted as things happen (requests, served staleness,
//! refusals, fsyncs, connections, leader changes, snapshots) live in [`Metrics`], made once
//! per node in a registry of its own (the simulator runs many nodes in one process); those that
//! are a reading of the node's state now (Raft indexes, replication lag, probes, hints,
//! anti-entropy) are read at each scrape by [`crate::Node::metrics_text`] into a registry made
//! for that scrape. Names follow Prometheus conventions: `tunekv_` prefix, base units last,
//! counters end in `_total` (the encoder adds it), and labels are bounded sets — keyspace,
//! level, op, protocol, code, group and replica, never keys.

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, RwLock};
use std::time::Duration;
use tunekv_core::{Code, Level, SloSpec, SloWindow, Staleness};

/// The `Content-Type` of `GET /metrics` (OpenMetrics text, which Prometheus scrapes).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Request latency buckets, seconds: 100 µs to ~26 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 19)
}

/// Served staleness buckets, seconds. The first, 0, holds the reads served at the newest
/// commit (most strong and session reads).
pub const STALENESS_SECONDS_BUCKETS: &[f64] = &[
    0.0, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Served staleness buckets, entries behind the newest commit the copy knew of.
pub const STALENESS_ENTRIES_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0, 10_000.0, 100_000.0,
];

/// Which front end a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Resp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Resp => "resp",
        }
    }
}

/// A level's label value: its kind, without parameters (a bounded set:
/// `bounded(t=3s)` and `bounded(k=5)` are both `bounded`).
pub fn level_label(level: Level) -> &'static str {
    level.kind()
}

/// The level label of a request that reads no data (a write, an admin call).
pub const NO_LEVEL: &str = "none";
/// The code label of a request that succeeded.
pub const OK: &str = "ok";

/// Whether a failed read was a refusal to serve weaker than asked (or a failure to reach the
/// copies the level needs), as opposed to a bad request.
pub fn is_refusal(code: Code) -> bool {
    matches!(
        code,
        Code::SessionUnmet
            | Code::StalenessBoundUnmet
            | Code::NoQuorum
            | Code::Timeout
            | Code::Unavailable
            | Code::ClockSkew
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    protocol: &'static str,
    op: &'static str,
    level: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    protocol: &'static str,
    op: &'static str,
    level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadLabels {
    keyspace: String,
    level: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    keyspace: String,
    level: &'static str,
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupLabels {
    pub(crate) group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SloLabels {
    keyspace: String,
    level: &'static str,
    slo: String,
}

/// One SLO's window and whether it was last seen violated (to log changes once).
struct SloEntry {
    window: SloWindow,
    violated: bool,
}

/// Where one SLO of one keyspace stands on this node (`GET /v1/slo`, `tunekv slo`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SloReport {
    pub keyspace: String,
    /// The SLO's id: `eventual<=5000ms@0.95/5m`.
    pub slo: String,
    pub level: String,
    pub staleness_ms: u64,
    pub target: f64,
    pub window: String,
    /// Over the window now.
    pub good: u64,
    pub valid: u64,
    pub compliance: f64,
    pub burn_rate: f64,
    pub violated: bool,
    /// Since the node started.
    pub good_total: u64,
    pub valid_total: u64,
}

/// A request's label values by address (see [`Metrics::request`]).
type RequestKey = (usize, usize, usize, usize);
/// Bound on that cache (the label sets are bounded; this only guards against a surprise).
const REQUEST_SERIES_CACHED_MAX: usize = 4096;

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

fn staleness_seconds_histogram() -> Histogram {
    Histogram::new(STALENESS_SECONDS_BUCKETS.iter().copied())
}

fn staleness_entries_histogram() -> Histogram {
    Histogram::new(STALENESS_ENTRIES_BUCKETS.iter().copied())
}

/// One keyspace's and level's served-read series, kept so a read records without building a
/// label set (the keyspace name is the only owned label).
#[derive(Clone)]
struct ServedSeries {
    seconds: Histogram,
    entries: Histogram,
    unknown: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CutLabels {
    protocol: &'static str,
    reason: &'static str,
}

/// Open and accepted connections of one front end; `open()` counts one until its guard drops.
#[derive(Clone, Default, Debug)]
pub struct Connections {
    open: Gauge,
    accepted: Counter,
    cut: Family<CutLabels, Counter>,
    protocol: &'static str,
}

/// Held while a connection is open.
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Connections {
    pub fn open(&self) -> ConnectionGuard {
        self.opened();
        ConnectionGuard(self.open.clone())
    }

    /// A connection opened; [`Connections::closed`] must follow when it closes.
    pub fn opened(&self) {
        self.accepted.inc();
        self.open.inc();
    }

    pub fn closed(&self) {
        self.open.dec();
    }

    /// The server closed a connection (or refused to open one) for `reason`: over the
    /// connection cap, a slow or stalled client, a malformed or oversized request, a failed
    /// TLS handshake. Counted in `{prefix}_connections_cut_total{protocol,reason}`.
    pub fn cut(&self, reason: &'static str) {
        self.cut
            .get_or_create(&CutLabels {
                protocol: self.protocol,
                reason,
            })
            .inc();
    }

    /// The HTTP and RESP connections of a process, counted in `registry` as
    /// `{prefix}_connections{protocol}` (open now) and
    /// `{prefix}_connections_accepted_total{protocol}`.
    pub fn registered(registry: &mut Registry, prefix: &str) -> (Connections, Connections) {
        let open: Family<ProtocolLabels, Gauge> = Family::default();
        let accepted: Family<ProtocolLabels, Counter> = Family::default();
        let cut: Family<CutLabels, Counter> = Family::default();
        let of = |protocol: Protocol| {
            let labels = ProtocolLabels {
                protocol: protocol.as_str(),
            };
            Connections {
                open: open.get_or_create_owned(&labels),
                accepted: accepted.get_or_create_owned(&labels),
                cut: cut.clone(),
                protocol: protocol.as_str(),
            }
        };
        let both = (of(Protocol::Http), of(Protocol::Resp));
        registry.register(
            format!("{prefix}_connections"),
            "Client connections open now",
            open,
        );
        registry.register(
            format!("{prefix}_connections_accepted"),
            "Client connections accepted since start",
            accepted,
        );
        registry.register(
            format!("{prefix}_connections_cut"),
            "Client connections the server closed or refused, by reason (over_cap, \
             header_timeout, idle_timeout, request_timeout, slow_reader, protocol_error, busy, \
             tls_handshake)",
            cut,
        );
        both
    }
}

/// The metrics a node counts as things happen.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    // (protocol, op, level, code) by their static strings' addresses → the two series.
    request_series: RwLock<HashMap<RequestKey, (Counter, Histogram)>>,
    latency: HistogramFamily<LatencyLabels>,
    staleness_seconds: HistogramFamily<ReadLabels>,
    staleness_entries: HistogramFamily<ReadLabels>,
    staleness_unknown: Family<ReadLabels, Counter>,
    // Per keyspace, each level kind's series (at most one per kind).
    served: RwLock<HashMap<String, Vec<(&'static str, ServedSeries)>>>,
    refusals: Family<RefusalLabels, Counter>,
    fsync: Histogram,
    batch: Histogram,
    sync_errors: Counter,
    leader_changes: Family<GroupLabels, Counter>,
    pub http: Connections,
    pub resp: Connections,
    started: tokio::time::Instant,
    // Refused reads by cause, for the status page.
    refusal_totals: Mutex<BTreeMap<&'static str, u64>>,
    slos: Mutex<BTreeMap<(String, String), SloEntry>>,
    slo_good: Family<SloLabels, Counter>,
    slo_valid: Family<SloLabels, Counter>,
    slo_compliance: Family<SloLabels, Gauge<f64, AtomicU64>>,
    slo_target: Family<SloLabels, Gauge<f64, AtomicU64>>,
    slo_burn: Family<SloLabels, Gauge<f64, AtomicU64>>,
    slo_violated: Family<SloLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// What a [`Metrics`] is for: a node (every family), or a front end of its own such as
/// `tunekv cache` (requests, latency, served staleness, refusals, connections; no storage or
/// Raft families).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Node,
    FrontEnd,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::for_role(Role::Node)
    }

    pub fn for_role(role: Role) -> Metrics {
        let mut registry = Registry::default();
        // Families a front end does not have go to a registry never encoded.
        let mut unused = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "tunekv_requests",
            "Client requests answered, by front end, operation, read level (none: not a read) \
             and outcome code (ok or the error code)",
            requests.clone(),
        );
        let latency: HistogramFamily<LatencyLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "tunekv_request_duration",
            "Time from a request's arrival to its answer",
            Unit::Seconds,
            latency.clone(),
        );
        let staleness_seconds: HistogramFamily<ReadLabels> =
            Family::new_with_constructor(staleness_seconds_histogram);
        registry.register_with_unit(
            "tunekv_read_staleness",
            "Served staleness of each read, as its receipt says: how long before the read \
             began the newest freshness proof the served state satisfies was taken",
            Unit::Seconds,
            staleness_seconds.clone(),
        );
        let staleness_entries: HistogramFamily<ReadLabels> =
            Family::new_with_constructor(staleness_entries_histogram);
        registry.register_with_unit(
            "tunekv_read_staleness",
            "Served staleness of each read in log entries behind the newest commit the serving \
             copy knew of",
            Unit::Other("entries".into()),
            staleness_entries.clone(),
        );
        let staleness_unknown = Family::<ReadLabels, Counter>::default();
        registry.register(
            "tunekv_read_staleness_unknown",
            "Reads served whose receipt could not bound their staleness in time (the copy had \
             no freshness proof yet)",
            staleness_unknown.clone(),
        );
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "tunekv_read_refusals",
            "Reads refused rather than served weaker than asked, by cause (session_unmet, \
             staleness_bound_unmet, no_quorum, timeout, unavailable, clock_skew)",
            refusals.clone(),
        );
        let node_only = if role == Role::Node {
            &mut registry
        } else {
            &mut unused
        };
        let fsync = Histogram::new(latency_buckets());
        node_only.register_with_unit(
            "tunekv_fsync_duration",
            "Time of each group-commit sync of the log to disk",
            Unit::Seconds,
            fsync.clone(),
        );
        let batch = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            1.0, 2.0, 14,
        ));
        node_only.register_with_unit(
            "tunekv_group_commit_batch",
            "Durability requests (appended log entries waiting for disk) one sync covered",
            Unit::Other("entries".into()),
            batch.clone(),
        );
        let sync_errors = Counter::default();
        node_only.register(
            "tunekv_fsync_errors",
            "Syncs that failed (each fails every write it covered)",
            sync_errors.clone(),
        );
        let leader_changes = Family::<GroupLabels, Counter>::default();
        node_only.register(
            "tunekv_raft_leader_changes",
            "Times this replica saw its group's leader change (a new leader known)",
            leader_changes.clone(),
        );
        let (http, resp) = Connections::registered(&mut registry, "tunekv");
        let slo_good = Family::<SloLabels, Counter>::default();
        registry.register(
            "tunekv_slo_good_reads",
            "Reads an SLO covers that were served at most its staleness_ms stale",
            slo_good.clone(),
        );
        let slo_valid = Family::<SloLabels, Counter>::default();
        registry.register(
            "tunekv_slo_valid_reads",
            "Reads an SLO covers: served, or refused for lack of a fresh enough copy",
            slo_valid.clone(),
        );
        let slo_compliance = Family::<SloLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "tunekv_slo_compliance",
            "Good reads / valid reads over the SLO's window (1 with no valid read)",
            Unit::Other("ratio".into()),
            slo_compliance.clone(),
        );
        let slo_target = Family::<SloLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "tunekv_slo_target",
            "The SLO's target share of good reads",
            Unit::Other("ratio".into()),
            slo_target.clone(),
        );
        let slo_burn = Family::<SloLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "tunekv_slo_error_budget_burn_rate",
            "(1 - compliance) / (1 - target) over the window: above 1 the SLO is missed",
            slo_burn.clone(),
        );
        let slo_violated = Family::<SloLabels, Gauge>::default();
        registry.register(
            "tunekv_slo_violated",
            "1 while the SLO's compliance over its window is below target",
            slo_violated.clone(),
        );
        Metrics {
            registry,
            requests,
            request_series: RwLock::new(HashMap::new()),
            latency,
            staleness_seconds,
            staleness_entries,
            staleness_unknown,
            served: RwLock::new(HashMap::new()),
            refusals,
            fsync,
            batch,
            sync_errors,
            leader_changes,
            http,
            resp,
            started: tokio::time::Instant::now(),
            refusal_totals: Mutex::new(BTreeMap::new()),
            slos: Mutex::new(BTreeMap::new()),
            slo_good,
            slo_valid,
            slo_compliance,
            slo_target,
            slo_burn,
            slo_violated,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A read of `keyspace` at `level` that its SLOs (`specs`) may cover: served with this
    /// staleness (`Some(ms)`; `u64::MAX`: unknown) or refused (`None`).
    pub fn slo_read(
        &self,
        keyspace: &str,
        specs: &[SloSpec],
        level: Level,
        served_ms: Option<u64>,
    ) {
        if specs.is_empty() {
            return;
        }
        let now = self.now_ms();
        let mut slos = self.slos.lock().unwrap_or_else(|p| p.into_inner());
        for spec in specs.iter().filter(|s| s.covers(level)) {
            let id = spec.id();
            let labels = SloLabels {
                keyspace: keyspace.to_string(),
                level: level_label(level),
                slo: id.clone(),
            };
            let entry = slos
                .entry((keyspace.to_string(), id))
                .or_insert_with(|| SloEntry {
                    window: SloWindow::new(spec),
                    violated: false,
                });
            if entry.window.record(now, served_ms) {
                self.slo_good.get_or_create(&labels).inc();
            } else {
                // Made so the family shows 0 good reads rather than no series.
                let _ = self.slo_good.get_or_create(&labels);
            }
            self.slo_valid.get_or_create(&labels).inc();
        }
    }

    /// Every SLO of `keyspaces` (name, SLOs) as it stands now; updates the SLO gauges and logs
    /// each SLO that starts or stops being violated, once.
    pub fn slo_reports(&self, keyspaces: &[(String, Vec<SloSpec>)]) -> Vec<SloReport> {
        let now = self.now_ms();
        let mut slos = self.slos.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (ks, specs) in keyspaces {
            for spec in specs {
                let id = spec.id();
                let entry = slos
                    .entry((ks.clone(), id.clone()))
                    .or_insert_with(|| SloEntry {
                        window: SloWindow::new(spec),
                        violated: false,
                    });
                let st = entry.window.state(now);
                if st.violated != entry.violated {
                    entry.violated = st.violated;
                    if st.violated {
                        tracing::warn!(keyspace = %ks, slo = %id, good = st.good, valid = st.valid,
                            compliance = st.compliance, burn_rate = st.burn_rate, "SLO violated");
                    } else {
                        tracing::info!(keyspace = %ks, slo = %id, good = st.good, valid = st.valid,
                            compliance = st.compliance, "SLO met again");
                    }
                }
                let labels = SloLabels {
                    keyspace: ks.clone(),
                    level: spec.level().map_or("none", level_label),
                    slo: id.clone(),
                };
                self.slo_compliance
                    .get_or_create(&labels)
                    .set(st.compliance);
                self.slo_target.get_or_create(&labels).set(spec.target.0);
                self.slo_burn.get_or_create(&labels).set(st.burn_rate);
                self.slo_violated
                    .get_or_create(&labels)
                    .set(i64::from(st.violated));
                out.push(SloReport {
                    keyspace: ks.clone(),
                    slo: id,
                    level: spec.level.clone(),
                    staleness_ms: spec.staleness_ms,
                    target: spec.target.0,
                    window: spec.window.clone(),
                    good: st.good,
                    valid: st.valid,
                    compliance: st.compliance,
                    burn_rate: st.burn_rate,
                    violated: st.violated,
                    good_total: entry.window.good_total,
                    valid_total: entry.window.valid_total,
                });
            }
        }
        out
    }

    /// One client request answered: its front end, operation (a bounded name: the route or
    /// command), read level label (`NO_LEVEL` for others), outcome (`OK` or the error code)
    /// and how long it took.
    pub fn request(
        &self,
        protocol: Protocol,
        op: &'static str,
        level: &'static str,
        code: &'static str,
        took: Duration,
    ) {
        // The label values are static strings: their addresses key a cache of the two series,
        // so the hot path hashes four words instead of the label strings, twice (a RESP GET
        // costs about a microsecond; building label sets cost a third of it).
        let key = (
            protocol as usize,
            op.as_ptr() as usize,
            level.as_ptr() as usize,
            code.as_ptr() as usize,
        );
        let cached = self
            .request_series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let (count, latency) = match cached {
            Some(s) => s,
            None => {
                let protocol = protocol.as_str();
                let s = (
                    self.requests.get_or_create_owned(&RequestLabels {
                        protocol,
                        op,
                        level,
                        code,
                    }),
                    self.latency.get_or_create_owned(&LatencyLabels {
                        protocol,
                        op,
                        level,
                    }),
                );
                let mut cache = self
                    .request_series
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                if cache.len() < REQUEST_SERIES_CACHED_MAX {
                    cache.insert(key, s.clone());
                }
                s
            }
        };
        count.inc();
        latency.observe(took.as_secs_f64());
    }

    fn series(&self, keyspace: &str, level: Level) -> ServedSeries {
        let kind = level.kind();
        if let Some(s) = self
            .served
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(keyspace)
            .and_then(|row| row.iter().find(|(k, _)| *k == kind).map(|(_, s)| s.clone()))
        {
            return s;
        }
        let labels = ReadLabels {
            keyspace: keyspace.to_string(),
            level: level_label(level),
        };
        let s = ServedSeries {
            seconds: self.staleness_seconds.get_or_create_owned(&labels),
            entries: self.staleness_entries.get_or_create_owned(&labels),
            unknown: self.staleness_unknown.get_or_create_owned(&labels),
        };
        let mut map = self.served.write().unwrap_or_else(|p| p.into_inner());
        let row = map.entry(keyspace.to_string()).or_default();
        if !row.iter().any(|(k, _)| *k == kind) {
            row.push((kind, s.clone()));
        }
        s
    }

    /// The level kinds reads of `keyspace` were served at on this node.
    pub fn levels_read(&self, keyspace: &str) -> Vec<&'static str> {
        self.served
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(keyspace)
            .map(|row| row.iter().map(|(k, _)| *k).collect())
            .unwrap_or_default()
    }

    /// A read served on `keyspace` at `level` with this staleness (from its receipt; `ms` of
    /// `u64::MAX`: unknown).
    pub fn served(&self, keyspace: &str, level: Level, staleness: Staleness) {
        let s = self.series(keyspace, level);
        s.entries.observe(staleness.entries as f64);
        if staleness.ms == u64::MAX {
            s.unknown.inc();
        } else {
            s.seconds.observe(staleness.ms as f64 / 1000.0);
        }
    }

    /// A read on `keyspace` at `level` refused with `code` (only refusals count; see
    /// [`is_refusal`]).
    pub fn refused(&self, keyspace: &str, level: Level, code: Code) {
        if !is_refusal(code) {
            return;
        }
        *self
            .refusal_totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code.as_str())
            .or_default() += 1;
        self.refusals
            .get_or_create(&RefusalLabels {
                keyspace: keyspace.to_string(),
                level: level_label(level),
                cause: code.as_str(),
            })
            .inc();
    }

    /// Reads refused since start, by cause.
    pub fn refusal_totals(&self) -> BTreeMap<String, u64> {
        self.refusal_totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    /// One group-commit sync: how long it took, how many requests it answered, whether it
    /// failed.
    pub fn synced(&self, took: Duration, requests: usize, ok: bool) {
        self.fsync.observe(took.as_secs_f64());
        self.batch.observe(requests as f64);
        if !ok {
            self.sync_errors.inc();
        }
    }

    pub(crate) fn leader_changed(&self, group: &str) {
        self.leader_changes
            .get_or_create(&GroupLabels {
                group: group.to_string(),
            })
            .inc();
    }

    /// The counted families, then `scrape`'s (families read from the node's state now), then
    /// the OpenMetrics end marker.
    pub fn encode(&self, scrape: Option<&Registry>) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, nor can the encoder's own formatting of numbers.
        let _ = encode_registry(&mut out, &self.registry);
        if let Some(r) = scrape {
            let _ = encode_registry(&mut out, r);
        }
        let _ = encode_eof(&mut out);
        out
    }
}

/// Helpers to add families read at scrape time to a registry.
pub mod scrape {
    use super::*;

    /// A gauge family with owned label sets, filled from the state read at a scrape.
    pub fn gauges<L>(registry: &mut Registry, name: &str, help: &str, rows: Vec<(L, i64)>)
    where
        L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    {
        let f = Family::<L, Gauge>::default();
        for (l, v) in rows {
            f.get_or_create(&l).set(v);
        }
        registry.register(name, help, f);
    }

    /// A gauge family of fractional values (seconds).
    pub fn gauges_f64<L>(
        registry: &mut Registry,
        name: &str,
        help: &str,
        unit: Unit,
        rows: Vec<(L, f64)>,
    ) where
        L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    {
        let f = Family::<L, Gauge<f64, AtomicU64>>::default();
        for (l, v) in rows {
            f.get_or_create(&l).set(v);
        }
        registry.register_with_unit(name, help, unit, f);
    }

    /// A gauge without labels.
    pub fn gauge(registry: &mut Registry, name: &str, help: &str, v: i64) {
        registry.register(
            name,
            help,
            prometheus_client::metrics::gauge::ConstGauge::new(v),
        );
    }

    /// A gauge without labels, in `unit`.
    pub fn gauge_f64(registry: &mut Registry, name: &str, help: &str, unit: Unit, v: f64) {
        registry.register_with_unit(
            name,
            help,
            unit,
            prometheus_client::metrics::gauge::ConstGauge::new(v),
        );
    }

    /// A counter without labels whose total is kept elsewhere.
    pub fn counter(registry: &mut Registry, name: &str, help: &str, v: u64) {
        registry.register(
            name,
            help,
            prometheus_client::metrics::counter::ConstCounter::new(v),
        );
    }

    /// A counter family whose totals the node keeps itself (read at the scrape).
    pub fn counters<L>(registry: &mut Registry, name: &str, help: &str, rows: Vec<(L, u64)>)
    where
        L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
    {
        let f = Family::<L, Counter>::default();
        for (l, v) in rows {
            f.get_or_create(&l).inc_by(v);
        }
        registry.register(name, help, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_units_and_totals_follow_the_conventions() {
        let m = Metrics::new();
        m.request(
            Protocol::Http,
            "get",
            "eventual",
            OK,
            Duration::from_millis(3),
        );
        m.served("users", Level::Eventual, Staleness { entries: 2, ms: 40 });
        m.served(
            "users",
            Level::Eventual,
            Staleness {
                entries: 0,
                ms: u64::MAX,
            },
        );
        m.refused("users", Level::Session, Code::SessionUnmet);
        m.refused("users", Level::Session, Code::BadRequest);
        m.synced(Duration::from_micros(800), 7, true);
        let text = m.encode(None);
        assert!(text.contains(
            "tunekv_requests_total{protocol=\"http\",op=\"get\",level=\"eventual\",code=\"ok\"} 1"
        ));
        assert!(text.contains(
            "tunekv_read_staleness_seconds_bucket{le=\"0.05\",keyspace=\"users\",level=\"eventual\"} 1"
        ) || text.contains(
            "tunekv_read_staleness_seconds_bucket{keyspace=\"users\",level=\"eventual\",le=\"0.05\"} 1"
        ), "{text}");
        assert!(text.contains(
            "tunekv_read_staleness_unknown_total{keyspace=\"users\",level=\"eventual\"} 1"
        ));
        assert!(text.contains("cause=\"session_unmet\"} 1"));
        assert!(!text.contains("bad_request"), "only refusals count");
        assert!(text.contains("tunekv_group_commit_batch_entries_count 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
