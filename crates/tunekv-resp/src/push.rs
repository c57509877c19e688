//! What a connection receives without asking (issue 18): pub/sub messages (SUBSCRIBE,
//! PSUBSCRIBE, PUBLISH), keyspace notifications, and CLIENT TRACKING invalidations.
//!
//! The [`Hub`] is one per node. Each connection that subscribes or tracks gets an outbox: an
//! unbounded channel whose queued bytes are counted. Past [`PUSH_BYTES_MAX`] a message is
//! dropped, the connection is marked overflowed, and the connection closes itself (as Redis's
//! `client-output-buffer-limit pubsub` does), so a subscriber that stops reading never grows
//! the node's memory without bound.
//!
//! Keyspace notifications and invalidations come from the change feed of the keyspaces this
//! node hosts ([`tunekv_node::Node::watch`]): a feed task per keyspace, started when first
//! needed, reports every change this node applies. So a notification or an invalidation is
//! sent once the change is applied on this node, and a read after it on this node sees the new
//! value. Each node produces its own; PUBLISH messages go to every node.

use crate::conn::Login;
use crate::glob;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tunekv_core::{Code, Mode, TunekvError};
use tunekv_node::{ChangeKind, Node, WatchEvent, WatchFrom, WatchRefused};

/// The most bytes of pushed messages one connection may have waiting to be written.
pub const PUSH_BYTES_MAX: usize = 32 << 20;
/// The tracking table's default size in keys (Redis's `tracking-table-max-keys`).
pub const TRACKING_KEYS_MAX_DEFAULT: usize = 1_000_000;
/// The largest `tracking-table-max-keys` accepted.
pub const TRACKING_KEYS_MAX_CEILING: usize = 100_000_000;
/// The channel invalidations go to on a RESP2 connection that others redirect to.
pub const INVALIDATE_CHANNEL: &[u8] = b"__redis__:invalidate";
/// How often the node looks for new keyspaces while notifications or broadcast tracking are on.
const KEYSPACE_POLL: Duration = Duration::from_secs(1);
/// How long a feed task waits before resuming a feed that ended.
const FEED_RETRY: Duration = Duration::from_millis(200);
/// Positions of its own writes a connection remembers for NOLOOP.
pub(crate) const OWN_WRITES_MAX: usize = 1024;

/// One message for a connection.
#[derive(Clone, Debug)]
pub(crate) enum Push {
    Message {
        channel: Arc<[u8]>,
        payload: Arc<[u8]>,
    },
    PMessage {
        pattern: Arc<[u8]>,
        channel: Arc<[u8]>,
        payload: Arc<[u8]>,
    },
    /// CLIENT TRACKING: these keys changed (`None`: forget everything cached), for tracking
    /// connection `from`; `origin` is the change's (keyspace, shard, index), for NOLOOP.
    Invalidate {
        keys: Option<Vec<Vec<u8>>>,
        from: u64,
        origin: Option<(Arc<str>, u32, u64)>,
    },
}

impl Push {
    fn bytes(&self) -> usize {
        64 + match self {
            Push::Message { channel, payload } => channel.len() + payload.len(),
            Push::PMessage {
                pattern,
                channel,
                payload,
            } => pattern.len() + channel.len() + payload.len(),
            Push::Invalidate { keys, .. } => keys
                .as_ref()
                .map_or(0, |k| k.iter().map(|k| k.len() + 16).sum()),
        }
    }
}

/// The sending side of a connection's messages.
struct Outbox {
    tx: mpsc::UnboundedSender<Push>,
    queued: Arc<AtomicUsize>,
    overflow: Arc<Overflow>,
}

/// Set once a connection's messages overflowed; wakes the connection even while it is stuck
/// writing to a client that does not read.
#[derive(Default)]
struct Overflow {
    set: AtomicBool,
    wake: tokio::sync::Notify,
}

impl Outbox {
    /// Queues `push`; false (and the connection marked overflowed) when it has too much
    /// waiting already.
    fn send(&self, push: Push) -> bool {
        let bytes = push.bytes();
        if self.queued.fetch_add(bytes, Ordering::Relaxed) + bytes > PUSH_BYTES_MAX {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            self.overflow.set.store(true, Ordering::Relaxed);
            self.overflow.wake.notify_one();
            return false;
        }
        if self.tx.send(push).is_err() {
            self.queued.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }
}

/// The receiving side, held by the connection.
pub(crate) struct Inbox {
    rx: mpsc::UnboundedReceiver<Push>,
    queued: Arc<AtomicUsize>,
    overflow: Arc<Overflow>,
}

impl Inbox {
    /// The next message (waits).
    pub(crate) async fn recv(&mut self) -> Option<Push> {
        let p = self.rx.recv().await?;
        self.queued.fetch_sub(p.bytes(), Ordering::Relaxed);
        Some(p)
    }

    /// The next message if one is waiting.
    pub(crate) fn try_recv(&mut self) -> Option<Push> {
        let p = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(p.bytes(), Ordering::Relaxed);
        Some(p)
    }

    /// Messages were dropped because too many waited: the connection must close.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflow.set.load(Ordering::Relaxed)
    }

    /// Returns once the messages overflowed.
    pub(crate) fn overflow(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let o = self.overflow.clone();
        async move {
            while !o.set.load(Ordering::Relaxed) {
                o.wake.notified().await;
            }
        }
    }
}

/// The event classes of `notify-keyspace-events` (Redis's letters).
pub(crate) mod flags {
    pub const KEYSPACE: u32 = 1 << 0; // K
    pub const KEYEVENT: u32 = 1 << 1; // E
    pub const GENERIC: u32 = 1 << 2; // g
    pub const STRING: u32 = 1 << 3; // $
    pub const LIST: u32 = 1 << 4; // l
    pub const SET: u32 = 1 << 5; // s
    pub const HASH: u32 = 1 << 6; // h
    pub const ZSET: u32 = 1 << 7; // z
    pub const EXPIRED: u32 = 1 << 8; // x
    pub const EVICTED: u32 = 1 << 9; // e
    pub const STREAM: u32 = 1 << 10; // t
    pub const MODULE: u32 = 1 << 11; // d
    pub const MISS: u32 = 1 << 12; // m
    pub const NEW: u32 = 1 << 13; // n
    /// `A`: every class but m, n.
    pub const ALL: u32 = GENERIC | STRING | LIST | SET | HASH | ZSET | EXPIRED | EVICTED | STREAM;
    const LETTERS: &[(u8, u32)] = &[
        (b'g', GENERIC),
        (b'$', STRING),
        (b'l', LIST),
        (b's', SET),
        (b'h', HASH),
        (b'z', ZSET),
        (b'x', EXPIRED),
        (b'e', EVICTED),
        (b't', STREAM),
        (b'd', MODULE),
        (b'K', KEYSPACE),
        (b'E', KEYEVENT),
        (b'm', MISS),
        (b'n', NEW),
    ];

    /// The flags of a `notify-keyspace-events` value; `None` for an unknown letter.
    pub fn parse(text: &[u8]) -> Option<u32> {
        let mut f = 0;
        for c in text {
            f |= match c {
                b'A' => ALL,
                c => LETTERS.iter().find(|(l, _)| l == c)?.1,
            };
        }
        Some(f)
    }

    /// Redis's spelling of the flags (`AKE` for `KEA`).
    pub fn show(f: u32) -> String {
        let mut s = String::new();
        if f & ALL == ALL {
            s.push('A');
        }
        for (l, bit) in LETTERS {
            let in_all = ALL & bit != 0;
            if f & bit != 0 && !(in_all && f & ALL == ALL) {
                s.push(*l as char);
            }
        }
        s
    }
}

/// What a keyspace-notification event belongs to.
fn class_of(kind: ChangeKind) -> u32 {
    match kind {
        ChangeKind::Set | ChangeKind::IncrBy | ChangeKind::Append => flags::STRING,
        ChangeKind::Del | ChangeKind::Expire | ChangeKind::Persist => flags::GENERIC,
        ChangeKind::Expired => flags::EXPIRED,
    }
}

/// How a connection tracks keys (`CLIENT TRACKING on …`).
#[derive(Clone, Debug, Default)]
pub(crate) struct Tracking {
    /// Invalidations go to this connection instead (`REDIRECT id`).
    pub redirect: Option<u64>,
    /// `BCAST`: every change of a key starting with one of `prefixes` (all keys if none).
    pub bcast: bool,
    pub prefixes: Vec<Vec<u8>>,
    pub optin: bool,
    pub optout: bool,
    pub noloop: bool,
}

/// A tracked key: its keyspace and the key.
type TrackedKey = (Arc<str>, Vec<u8>);

struct Connection {
    outbox: Outbox,
    resp3: bool,
    /// Subscribed to [`INVALIDATE_CHANNEL`] (a RESP2 redirect target).
    invalidate_channel: bool,
    /// With auth on, the user the connection logged in as and its epoch then: key names and
    /// changes reach it only for keys that user may read now (redis#15371). None: auth off.
    reader: Option<Login>,
}

#[derive(Default)]
struct State {
    connections: HashMap<u64, Connection>,
    channels: HashMap<Vec<u8>, HashSet<u64>>,
    patterns: HashMap<Vec<u8>, HashSet<u64>>,
    trackers: HashMap<u64, Tracking>,
    /// Default-mode tracking: (keyspace, key) → (its place in eviction order, the connections
    /// that read it).
    tracked: HashMap<TrackedKey, (u64, HashSet<u64>)>,
    /// Tracked keys, oldest first.
    order: BTreeMap<u64, TrackedKey>,
    next_seq: u64,
    /// Keyspaces with a running feed task.
    feeds: HashSet<String>,
}

/// A node's pub/sub channels, keyspace notifications and tracking table.
pub struct Hub {
    node: Weak<Node>,
    state: Mutex<State>,
    notify: AtomicU32,
    tracking_keys_max: AtomicUsize,
    /// Serializes starting feeds, so one keyspace never gets two.
    starting: tokio::sync::Mutex<()>,
    poller: AtomicBool,
}

impl Hub {
    pub fn new(node: &Arc<Node>) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            node: Arc::downgrade(node),
            state: Mutex::new(State::default()),
            notify: AtomicU32::new(0),
            tracking_keys_max: AtomicUsize::new(TRACKING_KEYS_MAX_DEFAULT),
            starting: tokio::sync::Mutex::new(()),
            poller: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&hub);
        node.set_publish_sink(Arc::new(move |channel: &[u8], message: &[u8]| {
            weak.upgrade()
                .map_or(0, |hub| hub.deliver(channel, message))
        }));
        hub
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection's inbox, made on first use; `reader`: its user (auth on).
    pub(crate) fn register(&self, conn: u64, resp3: bool, reader: Option<Login>) -> Inbox {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let overflow = Arc::new(Overflow::default());
        self.state().connections.insert(
            conn,
            Connection {
                outbox: Outbox {
                    tx,
                    queued: queued.clone(),
                    overflow: overflow.clone(),
                },
                resp3,
                invalidate_channel: false,
                reader,
            },
        );
        Inbox {
            rx,
            queued,
            overflow,
        }
    }

    /// Whether connection `conn` can take pushed messages (it subscribed or tracks).
    pub(crate) fn reachable(&self, conn: u64) -> bool {
        self.state().connections.contains_key(&conn)
    }

    /// The connection logged in again (AUTH, HELLO AUTH): what it may see is that user's.
    pub(crate) fn set_reader(&self, conn: u64, reader: Option<Login>) {
        if let Some(c) = self.state().connections.get_mut(&conn) {
            c.reader = reader;
        }
    }

    /// Whether connection `c` may be told of `key` of `keyspace`: with auth on, its user must
    /// be allowed to read it now (a revoked or deleted user is told of nothing).
    fn may_see(&self, c: &Connection, keyspace: &str, key: &[u8]) -> bool {
        let Some(reader) = &c.reader else {
            return true;
        };
        let Some(node) = self.node.upgrade() else {
            return false;
        };
        reader
            .grants(&node)
            .is_ok_and(|g| g.allows(keyspace, key, tunekv_core::auth::Access::Read))
    }

    /// The connection switched protocols (HELLO).
    pub(crate) fn set_resp3(&self, conn: u64, resp3: bool) {
        if let Some(c) = self.state().connections.get_mut(&conn) {
            c.resp3 = resp3;
        }
    }

    /// Forgets a closed connection: its subscriptions and tracking.
    pub(crate) fn forget(&self, conn: u64) {
        let mut s = self.state();
        if s.connections.remove(&conn).is_none() {
            return;
        }
        s.channels.retain(|_, ids| {
            ids.remove(&conn);
            !ids.is_empty()
        });
        s.patterns.retain(|_, ids| {
            ids.remove(&conn);
            !ids.is_empty()
        });
        s.trackers.remove(&conn);
        // Its tracked keys go when they change or are evicted.
    }

    pub(crate) fn subscribe(&self, conn: u64, channel: &[u8], pattern: bool) {
        let mut s = self.state();
        if !pattern && channel == INVALIDATE_CHANNEL {
            if let Some(c) = s.connections.get_mut(&conn) {
                c.invalidate_channel = true;
            }
        }
        let map = if pattern {
            &mut s.patterns
        } else {
            &mut s.channels
        };
        map.entry(channel.to_vec()).or_default().insert(conn);
    }

    pub(crate) fn unsubscribe(&self, conn: u64, channel: &[u8], pattern: bool) {
        let mut s = self.state();
        if !pattern && channel == INVALIDATE_CHANNEL {
            if let Some(c) = s.connections.get_mut(&conn) {
                c.invalidate_channel = false;
            }
        }
        let map = if pattern {
            &mut s.patterns
        } else {
            &mut s.channels
        };
        if let Some(ids) = map.get_mut(channel) {
            ids.remove(&conn);
            if ids.is_empty() {
                map.remove(channel);
            }
        }
    }

    /// PUBSUB CHANNELS [pattern]: channels with at least one subscriber here.
    pub(crate) fn channels(&self, pattern: Option<&[u8]>) -> Vec<Vec<u8>> {
        let s = self.state();
        let mut out: Vec<Vec<u8>> = s
            .channels
            .keys()
            .filter(|c| pattern.is_none_or(|p| glob::matches(p, c)))
            .cloned()
            .collect();
        out.sort();
        out
    }

    /// PUBSUB NUMSUB: subscribers of `channel` here.
    pub(crate) fn subscribers(&self, channel: &[u8]) -> usize {
        self.state().channels.get(channel).map_or(0, HashSet::len)
    }

    /// PUBSUB NUMPAT: patterns subscribed here.
    pub(crate) fn patterns(&self) -> usize {
        self.state().patterns.len()
    }

    /// Delivers a message to this node's subscribers of `channel` (and of patterns matching
    /// it); returns how many got it.
    pub(crate) fn deliver(&self, channel: &[u8], message: &[u8]) -> usize {
        self.deliver_about(channel, message, None)
    }

    /// [`Hub::deliver`] for a message about `key` of `keyspace` (a keyspace notification):
    /// only to connections that may read it.
    fn deliver_about(&self, channel: &[u8], message: &[u8], about: Option<(&str, &[u8])>) -> usize {
        let s = self.state();
        let may = |c: &Connection| about.is_none_or(|(ks, key)| self.may_see(c, ks, key));
        if s.channels.is_empty() && s.patterns.is_empty() {
            return 0;
        }
        let channel: Arc<[u8]> = channel.into();
        let payload: Arc<[u8]> = message.into();
        let mut n = 0;
        if let Some(ids) = s.channels.get(&channel[..]) {
            for id in ids {
                if let Some(c) = s.connections.get(id).filter(|c| may(c)) {
                    let push = Push::Message {
                        channel: channel.clone(),
                        payload: payload.clone(),
                    };
                    n += usize::from(c.outbox.send(push));
                }
            }
        }
        for (pattern, ids) in &s.patterns {
            if !glob::matches(pattern, &channel) {
                continue;
            }
            let pattern: Arc<[u8]> = pattern.as_slice().into();
            for id in ids {
                if let Some(c) = s.connections.get(id).filter(|c| may(c)) {
                    let push = Push::PMessage {
                        pattern: pattern.clone(),
                        channel: channel.clone(),
                        payload: payload.clone(),
                    };
                    n += usize::from(c.outbox.send(push));
                }
            }
        }
        n
    }

    /// `notify-keyspace-events` now.
    pub(crate) fn notify_flags(&self) -> u32 {
        self.notify.load(Ordering::Relaxed)
    }

    /// Sets `notify-keyspace-events`; when it turns on, the feeds of every ordered keyspace
    /// this node hosts are running before this returns.
    pub(crate) async fn set_notify(self: &Arc<Self>, f: u32) {
        self.notify.store(f, Ordering::Relaxed);
        if f & (flags::KEYSPACE | flags::KEYEVENT) != 0 && f & flags::ALL != 0 {
            self.watch_all_keyspaces().await;
        }
    }

    pub(crate) fn tracking_keys_max(&self) -> usize {
        self.tracking_keys_max.load(Ordering::Relaxed)
    }

    /// Sets `tracking-table-max-keys`; a smaller table evicts (and invalidates) at once.
    pub(crate) fn set_tracking_keys_max(&self, n: usize) {
        self.tracking_keys_max.store(n, Ordering::Relaxed);
        let mut s = self.state();
        self.evict(&mut s, n);
    }

    /// CLIENT TRACKING on (`Some`) or off.
    pub(crate) async fn track(self: &Arc<Self>, conn: u64, tracking: Option<Tracking>) {
        let bcast = tracking.as_ref().is_some_and(|t| t.bcast);
        {
            let mut s = self.state();
            match tracking {
                Some(t) => s.trackers.insert(conn, t),
                None => s.trackers.remove(&conn),
            };
        }
        if bcast {
            self.watch_all_keyspaces().await;
        }
    }

    /// Default-mode tracking: `conn` is about to read `keys` of `keyspace`. Registered before
    /// the read, so a change applied after the value read is never missed (one applied before
    /// may cost a needless invalidation). The keyspace's feed runs before this returns.
    pub(crate) async fn track_reads(
        self: &Arc<Self>,
        conn: u64,
        keyspace: &str,
        keys: &[Vec<u8>],
    ) -> Result<(), TunekvError> {
        self.ensure_feed(keyspace, WatchFrom::Now).await?;
        self.remember(conn, &keyspace.into(), keys);
        Ok(())
    }

    /// Tracks `keys` of `keyspace` for `conn` again: a NOLOOP connection's own write removed
    /// them from the table (the invalidation it left out), but what it caches of them must
    /// still hear of the next change. Its keyspace's feed already runs.
    pub(crate) fn track_again(&self, conn: u64, keyspace: &Arc<str>, keys: &[Vec<u8>]) {
        self.remember(conn, keyspace, keys);
    }

    fn remember(&self, conn: u64, keyspace: &Arc<str>, keys: &[Vec<u8>]) {
        let max = self.tracking_keys_max();
        let mut s = self.state();
        for key in keys {
            let entry = (keyspace.clone(), key.clone());
            if let Some((_, ids)) = s.tracked.get_mut(&entry) {
                ids.insert(conn);
                continue;
            }
            let seq = s.next_seq;
            s.next_seq += 1;
            s.order.insert(seq, entry.clone());
            s.tracked.insert(entry, (seq, HashSet::from([conn])));
        }
        self.evict(&mut s, max);
    }

    /// Evicts the oldest tracked keys until at most `max` remain, invalidating each for the
    /// connections that read it (they may no longer cache it).
    fn evict(&self, s: &mut State, max: usize) {
        while s.tracked.len() > max {
            let Some((_, entry)) = s.order.pop_first() else {
                break;
            };
            if let Some((_, ids)) = s.tracked.remove(&entry) {
                for id in ids {
                    self.invalidate(s, id, Some((&entry.0, vec![entry.1.clone()])), None);
                }
            }
        }
    }

    /// Sends an invalidation for tracking connection `from` (to its redirect target, if any):
    /// of `keys` of a keyspace (only those the receiving connection may read), or of
    /// everything (None).
    fn invalidate(
        &self,
        s: &State,
        from: u64,
        keys: Option<(&str, Vec<Vec<u8>>)>,
        origin: Option<(Arc<str>, u32, u64)>,
    ) {
        let Some(t) = s.trackers.get(&from) else {
            return;
        };
        let to = t.redirect.unwrap_or(from);
        let Some(c) = s.connections.get(&to) else {
            return;
        };
        // A RESP2 connection takes invalidations only as messages of the invalidation channel.
        if !c.resp3 && !c.invalidate_channel {
            return;
        }
        let keys = match keys {
            None => None,
            Some((keyspace, mut keys)) => {
                keys.retain(|k| self.may_see(c, keyspace, k));
                if keys.is_empty() {
                    return;
                }
                Some(keys)
            }
        };
        c.outbox.send(Push::Invalidate { keys, from, origin });
    }

    /// A change this node applied to `key` of `keyspace`: notifications and invalidations.
    fn changed(&self, keyspace: &Arc<str>, key: &[u8], kind: ChangeKind, at: (u32, u64)) {
        let f = self.notify_flags();
        if f & (flags::KEYSPACE | flags::KEYEVENT) != 0 && f & class_of(kind) != 0 {
            let db = keyspace
                .strip_prefix("db")
                .filter(|n| n.parse::<u32>().is_ok())
                .unwrap_or(keyspace);
            let event = kind.event();
            if f & flags::KEYSPACE != 0 {
                let mut channel = format!("__keyspace@{db}__:").into_bytes();
                channel.extend_from_slice(key);
                self.deliver_about(&channel, event.as_bytes(), Some((keyspace, key)));
            }
            if f & flags::KEYEVENT != 0 {
                let channel = format!("__keyevent@{db}__:{event}");
                self.deliver_about(channel.as_bytes(), key, Some((keyspace, key)));
            }
        }
        let mut s = self.state();
        if s.trackers.is_empty() {
            return;
        }
        let origin = Some((keyspace.clone(), at.0, at.1));
        if let Some((seq, ids)) = s.tracked.remove(&(keyspace.clone(), key.to_vec())) {
            s.order.remove(&seq);
            for id in ids {
                self.invalidate(&s, id, Some((keyspace, vec![key.to_vec()])), origin.clone());
            }
        }
        let bcast: Vec<u64> = s
            .trackers
            .iter()
            .filter(|(_, t)| {
                t.bcast && (t.prefixes.is_empty() || t.prefixes.iter().any(|p| key.starts_with(p)))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in bcast {
            self.invalidate(&s, id, Some((keyspace, vec![key.to_vec()])), origin.clone());
        }
    }

    /// The feed of `keyspace` ended with changes possibly missed: every tracking connection
    /// forgets everything it cached.
    fn lost(&self, keyspace: &str) {
        let mut s = self.state();
        let lost: Vec<(u64, TrackedKey)> = s
            .order
            .iter()
            .filter(|(_, (ks, _))| &**ks == keyspace)
            .map(|(seq, e)| (*seq, e.clone()))
            .collect();
        for (seq, entry) in lost {
            s.order.remove(&seq);
            s.tracked.remove(&entry);
        }
        let ids: Vec<u64> = s.trackers.keys().copied().collect();
        for id in ids {
            self.invalidate(&s, id, None, None);
        }
    }

    /// Starts the feed of every ordered keyspace this node hosts, and a poller that starts
    /// the feeds of keyspaces created later (from their first change).
    async fn watch_all_keyspaces(self: &Arc<Self>) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        for ks in node.list_keyspaces() {
            if ks.spec.mode == Mode::Ordered {
                // A keyspace this node holds no replica of has no feed here.
                let _ = self.ensure_feed(&ks.name, WatchFrom::Now).await;
            }
        }
        if self.poller.swap(true, Ordering::Relaxed) {
            return;
        }
        let hub = Arc::downgrade(self);
        let mut known: HashSet<String> =
            node.list_keyspaces().into_iter().map(|k| k.name).collect();
        drop(node);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(KEYSPACE_POLL).await;
                let Some(hub) = hub.upgrade() else {
                    return;
                };
                let Some(node) = hub.node.upgrade() else {
                    return;
                };
                for ks in node.list_keyspaces() {
                    if ks.spec.mode != Mode::Ordered || known.contains(&ks.name) {
                        continue;
                    }
                    // Created since the last look: from its first change.
                    if hub.ensure_feed(&ks.name, WatchFrom::Start).await.is_ok() {
                        known.insert(ks.name);
                    }
                }
            }
        });
    }

    /// Runs the feed of `keyspace` (once per keyspace per node).
    async fn ensure_feed(
        self: &Arc<Self>,
        keyspace: &str,
        from: WatchFrom<'_>,
    ) -> Result<(), TunekvError> {
        if self.state().feeds.contains(keyspace) {
            return Ok(());
        }
        let _one = self.starting.lock().await;
        if self.state().feeds.contains(keyspace) {
            return Ok(());
        }
        let node = self
            .node
            .upgrade()
            .ok_or_else(|| TunekvError::new(Code::Unavailable, "the node is shutting down"))?;
        // Invalidations must come before a later read on this node could see the old value:
        // only an ordered keyspace's feed (changes applied here) promises that.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let ks = node.keyspace(keyspace, deadline).await?;
        if ks.spec.mode != Mode::Ordered {
            return Err(TunekvError::new(
                Code::ModeUnsupported,
                format!(
                    "client tracking and keyspace notifications follow ordered keyspaces; \
                     {keyspace:?} is {}",
                    ks.spec.mode.as_str()
                ),
            ));
        }
        let watch = node
            .watch(keyspace, Vec::new(), from)
            .await
            .map_err(|r| r.error())?;
        self.state().feeds.insert(keyspace.to_string());
        tokio::spawn(feed(Arc::downgrade(self), node, keyspace.into(), watch));
        Ok(())
    }
}

/// One keyspace's feed on this node: every change becomes notifications and invalidations.
/// A feed that ends (it fell behind, or the node installed a snapshot) resumes from its cursor;
/// when that is too old, every tracking connection is told to forget its cache.
async fn feed(hub: Weak<Hub>, node: Arc<Node>, keyspace: Arc<str>, mut watch: tunekv_node::Watch) {
    loop {
        while let Some(event) = watch.next().await {
            let Some(hub) = hub.upgrade() else {
                return;
            };
            match event {
                WatchEvent::Change {
                    position,
                    key,
                    kind,
                    ..
                } => hub.changed(&keyspace, &key, kind, (position.shard.0, position.index.0)),
                WatchEvent::Progress { .. } | WatchEvent::NodeProgress { .. } => {}
                WatchEvent::End(e) => {
                    tracing::debug!(keyspace = %keyspace, error = %e.message, "feed ended; resuming")
                }
            }
        }
        let cursor = watch.cursor();
        watch = loop {
            tokio::time::sleep(FEED_RETRY).await;
            let Some(h) = hub.upgrade() else {
                return;
            };
            match node
                .watch(&keyspace, Vec::new(), WatchFrom::Cursor(&cursor))
                .await
            {
                Ok(w) => break w,
                Err(WatchRefused::Compacted { .. } | WatchRefused::CompactedNode { .. }) => {
                    h.lost(&keyspace);
                    if let Ok(w) = node.watch(&keyspace, Vec::new(), WatchFrom::Now).await {
                        break w;
                    }
                }
                Err(WatchRefused::Error(e)) if e.code == Code::KeyspaceNotFound => {
                    h.lost(&keyspace);
                    h.state().feeds.remove(&*keyspace);
                    return;
                }
                Err(_) => {}
            }
        };
    }
}
