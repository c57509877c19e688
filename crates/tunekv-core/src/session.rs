//! Session tokens (DESIGN §3): what a session has written and read, per shard group, signed with
//! the cluster secret so any node can trust a token another node issued.
//!
//! A token is the hex encoding of `postcard(Body) ‖ HMAC-SHA256(secret, DOMAIN ‖ postcard(Body))`.
//! The body lists, per shard group, the highest log index the session wrote and the highest it
//! read. Group ids embed the keyspace's creation index, so a mark never refers to a shard of an
//! older incarnation of a keyspace. For leaderless keyspaces (format 2) it lists, per keyspace,
//! the highest HLC stamp the session has seen there and the version of each key it wrote or read
//! most recently, at most [`LEADERLESS_KEYS_MAX`] keys per keyspace (see
//! [`LeaderlessMark`]); format 3 adds, for keys of conflict-free keyspaces (whose states are
//! joins of dots, not one version), the highest dot counter per replica the session made or
//! read, at most [`LEADERLESS_CLOCKS_MAX`] keys of [`CLOCK_NODES_MAX`] replicas each.
//! docs/formats.md documents the layout.

use crate::code::{Code, TunekvError};
use crate::ids::{GroupId, LogIndex};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::BTreeMap;

/// The token layout this build writes. It reads this one, format 2 (no dot clocks) and format 1
/// (no leaderless marks).
pub const TOKEN_FORMAT: u8 = 3;
const TOKEN_FORMAT_V1: u8 = 1;
const TOKEN_FORMAT_V2: u8 = 2;
/// Keys a session tracks exactly per leaderless keyspace; older ones are forgotten and the
/// keyspace's reads of untracked keys then ask every replica (see [`LeaderlessMark`]).
pub const LEADERLESS_KEYS_MAX: usize = 64;
/// Leaderless keyspaces one token tracks.
pub const LEADERLESS_KEYSPACES_MAX: usize = 8;
/// Keys of conflict-free keyspaces a session tracks by dot clock per keyspace; older ones are
/// forgotten as [`LEADERLESS_KEYS_MAX`]'s are.
pub const LEADERLESS_CLOCKS_MAX: usize = 16;
/// Replicas one key's dot clock names; a key whose dots came from more is forgotten.
pub const CLOCK_NODES_MAX: usize = 8;
/// The cluster topology tokens are issued for. Membership and sharding are static today; a
/// change that renumbers positions bumps it, and older tokens are refused as foreign.
pub const TOPOLOGY: u32 = 1;
/// Longest token text accepted (one `tunekv-session` value), and most groups in one token.
pub const TOKEN_CHARS_MAX: usize = 144 * 1024;
pub const TOKEN_GROUPS_MAX: usize = 1024;
/// The longest body `encode` can write: format, topology, count, then per group three
/// varints of at most 10 bytes each; then per leaderless keyspace its id, stamp, flag and
/// count, per key three varints, a count of clocks, and per clock its key hash, stamp, count and
/// two varints per replica.
const TOKEN_BODY_BYTES_MAX: usize = 1
    + 5
    + 5
    + TOKEN_GROUPS_MAX * 30
    + 5
    + LEADERLESS_KEYSPACES_MAX
        * (10
            + 10
            + 1
            + 5
            + LEADERLESS_KEYS_MAX * 30
            + 5
            + LEADERLESS_CLOCKS_MAX * (10 + 10 + 5 + CLOCK_NODES_MAX * 20));
// Every token `encode` writes for an admitted session is one `decode` accepts.
const _: () = assert!(2 * (TOKEN_BODY_BYTES_MAX + MAC_BYTES) <= TOKEN_CHARS_MAX);
/// Most tokens one request may carry to be merged.
pub const TOKENS_PER_REQUEST_MAX: usize = 16;
/// Shortest accepted cluster secret.
pub const SECRET_BYTES_MIN: usize = 16;

const MAC_BYTES: usize = 32;
pub(crate) const DOMAIN: &[u8] = b"tunekv session token\x00";

/// What a session has done on one shard group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mark {
    /// The highest index this session wrote (acknowledged writes only).
    pub written: LogIndex,
    /// The highest index of a state this session read.
    pub read: LogIndex,
}

/// What a session has done on one leaderless keyspace: the highest HLC stamp it has seen there
/// (its writes are stamped above it, so a later write of the session never loses to an earlier
/// one under last-writer-wins, whatever the clocks), and per key (by a 64-bit hash of it) the
/// highest version it wrote or read, which later reads of the key must return at least. When
/// more than [`LEADERLESS_KEYS_MAX`] keys were touched, the oldest marks are dropped and
/// `forgot` is set: reads of a key with no mark then ask every replica of the key and need all
/// of them to answer (a write acknowledged on any replica is seen; one acknowledged only
/// through a hint may not be, so hinted writes are dropped last).
///
/// On conflict-free keyspaces (counters, sets, maps, siblings) a key's state is a join of
/// dots, so the session keeps, per key, a **dot clock**: for each replica that issued dots of
/// the key, the highest counter the session made or read there. A replica's state meets it
/// when its causal context covers every dot up to those counters (a replica's own dots are
/// contiguous, so the replica that issued a dot always meets that entry).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderlessMark {
    pub hlc_seen: u64,
    /// key hash → (hlc, node, whether it was a write acknowledged only sloppily).
    keys: BTreeMap<u64, (u64, u64, bool)>,
    /// key hash → (stamp of the last operation that raised it, replica → counter).
    clocks: BTreeMap<u64, (u64, BTreeMap<u64, u64>)>,
    pub forgot: bool,
}

impl LeaderlessMark {
    /// The version the session requires of a key: `Some` when tracked.
    pub fn required(&self, key_hash: u64) -> Option<(u64, u64)> {
        self.keys.get(&key_hash).map(|&(h, n, _)| (h, n))
    }

    /// The dot clock the session requires of a key of a conflict-free keyspace: `Some` when
    /// tracked.
    pub fn clock(&self, key_hash: u64) -> Option<&BTreeMap<u64, u64>> {
        self.clocks.get(&key_hash).map(|(_, c)| c)
    }

    fn note_dots(&mut self, key_hash: u64, stamp: u64, dots: impl IntoIterator<Item = (u64, u64)>) {
        self.hlc_seen = self.hlc_seen.max(stamp);
        let e = self.clocks.entry(key_hash).or_default();
        e.0 = e.0.max(stamp);
        for (node, counter) in dots {
            let c = e.1.entry(node).or_insert(0);
            *c = (*c).max(counter);
        }
        self.trim_clocks();
    }

    fn note(&mut self, key_hash: u64, version: (u64, u64), sloppy: bool) {
        self.hlc_seen = self.hlc_seen.max(version.0);
        let e = self.keys.entry(key_hash).or_insert((0, 0, false));
        if (version.0, version.1) >= (e.0, e.1) {
            *e = (version.0, version.1, sloppy);
        }
        self.trim();
    }

    fn merge(&mut self, other: &LeaderlessMark) {
        self.hlc_seen = self.hlc_seen.max(other.hlc_seen);
        self.forgot |= other.forgot;
        for (&k, &(h, n, sloppy)) in &other.keys {
            let e = self.keys.entry(k).or_insert((0, 0, false));
            if (h, n) >= (e.0, e.1) {
                *e = (h, n, sloppy);
            }
        }
        self.trim();
        for (&k, (stamp, clock)) in &other.clocks {
            let e = self.clocks.entry(k).or_default();
            e.0 = e.0.max(*stamp);
            for (&node, &counter) in clock {
                let c = e.1.entry(node).or_insert(0);
                *c = (*c).max(counter);
            }
        }
        self.trim_clocks();
    }

    /// Drops clocks naming more than [`CLOCK_NODES_MAX`] replicas, then the oldest beyond
    /// [`LEADERLESS_CLOCKS_MAX`]; either way the keyspace says it forgot (reads of untracked
    /// keys then ask every replica).
    fn trim_clocks(&mut self) {
        let before = self.clocks.len();
        self.clocks.retain(|_, (_, c)| c.len() <= CLOCK_NODES_MAX);
        while self.clocks.len() > LEADERLESS_CLOCKS_MAX {
            let victim = self
                .clocks
                .iter()
                .min_by_key(|(k, (stamp, _))| (*stamp, **k))
                .map(|(k, _)| *k);
            if let Some(k) = victim {
                self.clocks.remove(&k);
            }
        }
        if self.clocks.len() < before {
            self.forgot = true;
        }
    }

    /// Drops the oldest marks beyond the limit, strictly acknowledged ones first.
    fn trim(&mut self) {
        while self.keys.len() > LEADERLESS_KEYS_MAX {
            let victim = self
                .keys
                .iter()
                .min_by_key(|(k, &(h, n, sloppy))| (sloppy, h, n, **k))
                .map(|(k, _)| *k);
            if let Some(k) = victim {
                self.keys.remove(&k);
                self.forgot = true;
            }
        }
    }
}

/// The 64-bit hash a session mark names a leaderless key by.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, 0x5e55_1011)
}

/// A session's marks, per shard group (ordered keyspaces) and per leaderless keyspace. Empty for
/// a new session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Session {
    marks: BTreeMap<GroupId, Mark>,
    leaderless: BTreeMap<u64, LeaderlessMark>,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty() && self.leaderless.is_empty()
    }

    /// The session's mark on leaderless keyspace `ks` (its id); empty where it has done nothing.
    pub fn leaderless(&self, ks: u64) -> LeaderlessMark {
        self.leaderless.get(&ks).cloned().unwrap_or_default()
    }

    /// Whether this session may record an operation on leaderless keyspace `ks`.
    pub fn admit_leaderless(&self, ks: u64) -> Result<(), TunekvError> {
        if self.leaderless.len() < LEADERLESS_KEYSPACES_MAX || self.leaderless.contains_key(&ks) {
            Ok(())
        } else {
            Err(TunekvError::new(
                Code::SessionInvalid,
                format!(
                    "this session already tracks {LEADERLESS_KEYSPACES_MAX} leaderless keyspaces, \
                     the most one token carries; use a new session for this one"
                ),
            ))
        }
    }

    /// Records that the session wrote or read `version` of key `key_hash` on leaderless
    /// keyspace `ks` (`sloppy`: a write acknowledged with a stand-in or a hint counted).
    pub fn saw_leaderless(&mut self, ks: u64, key_hash: u64, version: (u64, u64), sloppy: bool) {
        self.leaderless
            .entry(ks)
            .or_default()
            .note(key_hash, version, sloppy);
    }

    /// Records that the session made or read `dots` (replica, counter) of key `key_hash` on
    /// conflict-free leaderless keyspace `ks`, at HLC stamp `stamp`: later reads at session
    /// levels need a state covering them.
    pub fn saw_dots(
        &mut self,
        ks: u64,
        key_hash: u64,
        stamp: u64,
        dots: impl IntoIterator<Item = (u64, u64)>,
    ) {
        self.leaderless
            .entry(ks)
            .or_default()
            .note_dots(key_hash, stamp, dots);
    }

    /// The session's mark on `group`; zero where it has done nothing.
    pub fn mark(&self, group: GroupId) -> Mark {
        self.marks.get(&group).copied().unwrap_or_default()
    }

    /// Records an acknowledged write at `index` on `group`.
    pub fn wrote(&mut self, group: GroupId, index: LogIndex) {
        let m = self.marks.entry(group).or_default();
        m.written = m.written.max(index);
    }

    /// Records a read of the state at `index` on `group`.
    pub fn read(&mut self, group: GroupId, index: LogIndex) {
        let m = self.marks.entry(group).or_default();
        m.read = m.read.max(index);
    }

    /// Merges `other` into this session: per group, the larger written and the larger read
    /// index. Commutative, associative and idempotent, so two threads' tokens can be merged in
    /// any order; the merged session demands everything either one demanded.
    pub fn merge(&mut self, other: &Session) {
        for (g, m) in &other.marks {
            let e = self.marks.entry(*g).or_default();
            e.written = e.written.max(m.written);
            e.read = e.read.max(m.read);
        }
        for (ks, m) in &other.leaderless {
            self.leaderless.entry(*ks).or_default().merge(m);
        }
        // A merge may exceed the keyspace limit; the highest ids are kept, and the session then
        // refuses (`admit_leaderless`: session_invalid) any operation on a dropped keyspace,
        // rather than serving it without its marks.
        while self.leaderless.len() > LEADERLESS_KEYSPACES_MAX {
            self.leaderless.pop_first();
        }
    }

    /// Whether this session may record an operation on `group`: a token carries at most
    /// `TOKEN_GROUPS_MAX` groups, so a session that already tracks that many takes no new one
    /// (refused before the operation, never a token the cluster would then refuse).
    pub fn admit(&self, group: GroupId) -> Result<(), TunekvError> {
        if self.marks.len() < TOKEN_GROUPS_MAX || self.marks.contains_key(&group) {
            Ok(())
        } else {
            Err(TunekvError::new(
                Code::SessionInvalid,
                format!(
                    "this session already tracks {TOKEN_GROUPS_MAX} shard groups, the most one token carries; \
                     use a new session for {group}"
                ),
            ))
        }
    }

    pub fn groups(&self) -> impl Iterator<Item = (GroupId, Mark)> + '_ {
        self.marks.iter().map(|(g, m)| (*g, *m))
    }
}

#[derive(Serialize, Deserialize)]
struct Body {
    format: u8,
    topology: u32,
    /// (group, written, read), strictly increasing by group.
    marks: Vec<(u64, u64, u64)>,
    /// (keyspace id, hlc_seen, forgot, keys: (key hash, hlc, node, sloppy) by key hash,
    /// clocks: (key hash, stamp, (replica, counter) by replica) by key hash), strictly
    /// increasing by keyspace id.
    leaderless: Vec<LeaderlessBody>,
}

type LeaderlessBody = (
    u64,
    u64,
    bool,
    Vec<(u64, u64, u64, bool)>,
    Vec<(u64, u64, Vec<(u64, u64)>)>,
);

/// Format 2: leaderless marks without dot clocks.
#[derive(Serialize, Deserialize)]
struct BodyV2 {
    format: u8,
    topology: u32,
    marks: Vec<(u64, u64, u64)>,
    leaderless: Vec<LeaderlessBodyV2>,
}

type LeaderlessBodyV2 = (u64, u64, bool, Vec<(u64, u64, u64, bool)>);

/// Format 1: no leaderless marks.
#[derive(Serialize, Deserialize)]
struct BodyV1 {
    format: u8,
    topology: u32,
    marks: Vec<(u64, u64, u64)>,
}

/// Signs and checks tokens with the cluster secret.
#[derive(Clone)]
pub struct SessionKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

fn invalid(why: impl std::fmt::Display) -> TunekvError {
    TunekvError::new(
        Code::SessionInvalid,
        format!("invalid session token: {why}"),
    )
}

impl SessionKey {
    /// A key from the cluster secret, which every node of the cluster shares.
    pub fn new(secret: &[u8]) -> Result<SessionKey, String> {
        if secret.len() < SECRET_BYTES_MIN {
            return Err(format!(
                "cluster_secret must be at least {SECRET_BYTES_MIN} bytes"
            ));
        }
        let mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
        Ok(SessionKey { mac })
    }

    fn tag(&self, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        mac.update(body);
        mac
    }

    /// `body` signed for `domain` (which keeps one kind of sealed text from passing for
    /// another), as hex text: what causal contexts use.
    pub fn seal(&self, domain: &[u8], body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(domain);
        mac.update(body);
        let mut bytes = body.to_vec();
        bytes.extend_from_slice(&mac.finalize().into_bytes());
        hex_encode(&bytes)
    }

    /// The body of text [`SessionKey::seal`] made for `domain` with this key; an error says
    /// why not (not hex, too short or long, signature mismatch).
    pub fn open(&self, domain: &[u8], text: &str, chars_max: usize) -> Result<Vec<u8>, String> {
        let text = text.trim();
        if text.len() > chars_max {
            return Err(format!("longer than {chars_max} characters"));
        }
        let bytes = hex_decode(text).ok_or("not a hex string")?;
        // An empty body is sealed as the tag alone.
        if bytes.len() < MAC_BYTES {
            return Err("too short".into());
        }
        let (body, tag) = bytes.split_at(bytes.len() - MAC_BYTES);
        let mut mac = self.mac.clone();
        mac.update(domain);
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| {
            "its signature does not match this cluster's secret (forged, corrupt, or from \
             another cluster)"
                .to_string()
        })?;
        Ok(body.to_vec())
    }

    /// The token text of `session`.
    pub fn encode(&self, session: &Session) -> String {
        let body = Body {
            format: TOKEN_FORMAT,
            topology: TOPOLOGY,
            marks: session
                .marks
                .iter()
                .map(|(g, m)| (g.0, m.written.0, m.read.0))
                .collect(),
            leaderless: session
                .leaderless
                .iter()
                .map(|(ks, m)| {
                    let keys = m
                        .keys
                        .iter()
                        .map(|(k, &(h, n, sloppy))| (*k, h, n, sloppy))
                        .collect();
                    let clocks = m
                        .clocks
                        .iter()
                        .map(|(k, (stamp, c))| {
                            (*k, *stamp, c.iter().map(|(n, c)| (*n, *c)).collect())
                        })
                        .collect();
                    (*ks, m.hlc_seen, m.forgot, keys, clocks)
                })
                .collect(),
        };
        // Serializing plain integers into a Vec cannot fail.
        let mut bytes = postcard::to_stdvec(&body).unwrap_or_default();
        let tag = self.tag(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag);
        hex_encode(&bytes)
    }

    /// Checks and reads one token. Anything not signed by this cluster's secret, cut short,
    /// altered, of another format or topology is `session_invalid`.
    pub fn decode(&self, text: &str) -> Result<Session, TunekvError> {
        let text = text.trim();
        if text.len() > TOKEN_CHARS_MAX {
            return Err(invalid(format!("longer than {TOKEN_CHARS_MAX} characters")));
        }
        let bytes = hex_decode(text).ok_or_else(|| invalid("not a hex string"))?;
        if bytes.len() <= MAC_BYTES {
            return Err(invalid("too short"));
        }
        let (body, tag) = bytes.split_at(bytes.len() - MAC_BYTES);
        self.tag(body)
            .verify_slice(tag)
            .map_err(|_| invalid("its signature does not match this cluster's secret (forged, corrupt, or from another cluster)"))?;
        let body: Body = match body.first() {
            Some(&TOKEN_FORMAT_V1) => match postcard::take_from_bytes::<BodyV1>(body) {
                Ok((b, [])) => Body {
                    format: TOKEN_FORMAT,
                    topology: b.topology,
                    marks: b.marks,
                    leaderless: Vec::new(),
                },
                _ => return Err(invalid("undecodable body")),
            },
            Some(&TOKEN_FORMAT_V2) => match postcard::take_from_bytes::<BodyV2>(body) {
                Ok((b, [])) => Body {
                    format: TOKEN_FORMAT,
                    topology: b.topology,
                    marks: b.marks,
                    leaderless: b
                        .leaderless
                        .into_iter()
                        .map(|(ks, h, f, keys)| (ks, h, f, keys, Vec::new()))
                        .collect(),
                },
                _ => return Err(invalid("undecodable body")),
            },
            _ => match postcard::take_from_bytes::<Body>(body) {
                Ok((b, [])) => b,
                _ => return Err(invalid("undecodable body")),
            },
        };
        if body.format != TOKEN_FORMAT {
            return Err(invalid(format!(
                "format {} is not {TOKEN_FORMAT}",
                body.format
            )));
        }
        if body.topology != TOPOLOGY {
            return Err(invalid(format!(
                "issued for topology {}, the cluster is at {TOPOLOGY}",
                body.topology
            )));
        }
        if body.marks.len() > TOKEN_GROUPS_MAX {
            return Err(invalid(format!("more than {TOKEN_GROUPS_MAX} groups")));
        }
        let mut marks = BTreeMap::new();
        let mut last = None;
        for (g, written, read) in body.marks {
            if last.is_some_and(|l| l >= g) {
                return Err(invalid("groups out of order"));
            }
            last = Some(g);
            marks.insert(
                GroupId(g),
                Mark {
                    written: LogIndex(written),
                    read: LogIndex(read),
                },
            );
        }
        if body.leaderless.len() > LEADERLESS_KEYSPACES_MAX {
            return Err(invalid(format!(
                "more than {LEADERLESS_KEYSPACES_MAX} leaderless keyspaces"
            )));
        }
        let mut leaderless = BTreeMap::new();
        let mut last = None;
        for (ks, hlc_seen, forgot, keys, clocks) in body.leaderless {
            if last.is_some_and(|l| l >= ks) {
                return Err(invalid("leaderless keyspaces out of order"));
            }
            last = Some(ks);
            if keys.len() > LEADERLESS_KEYS_MAX {
                return Err(invalid(format!(
                    "more than {LEADERLESS_KEYS_MAX} keys of one leaderless keyspace"
                )));
            }
            if clocks.len() > LEADERLESS_CLOCKS_MAX {
                return Err(invalid(format!(
                    "more than {LEADERLESS_CLOCKS_MAX} dot clocks of one leaderless keyspace"
                )));
            }
            let mut m = LeaderlessMark {
                hlc_seen,
                keys: BTreeMap::new(),
                clocks: BTreeMap::new(),
                forgot,
            };
            let mut last_key = None;
            for (k, h, n, sloppy) in keys {
                if last_key.is_some_and(|l| l >= k) {
                    return Err(invalid("leaderless keys out of order"));
                }
                last_key = Some(k);
                m.keys.insert(k, (h, n, sloppy));
            }
            let mut last_key = None;
            for (k, stamp, entries) in clocks {
                if last_key.is_some_and(|l| l >= k) {
                    return Err(invalid("dot clocks out of order"));
                }
                last_key = Some(k);
                if entries.len() > CLOCK_NODES_MAX {
                    return Err(invalid(format!(
                        "a dot clock of more than {CLOCK_NODES_MAX} replicas"
                    )));
                }
                let mut clock = BTreeMap::new();
                for (node, counter) in entries {
                    if clock.last_key_value().is_some_and(|(&l, _)| l >= node) {
                        return Err(invalid("dot clock replicas out of order"));
                    }
                    clock.insert(node, counter);
                }
                m.clocks.insert(k, (stamp, clock));
            }
            leaderless.insert(ks, m);
        }
        Ok(Session { marks, leaderless })
    }

    /// Reads every token in `values` (each may hold several, comma-separated) and merges them.
    /// No token at all is a new session.
    pub fn decode_all<'a>(
        &self,
        values: impl IntoIterator<Item = &'a str>,
    ) -> Result<Session, TunekvError> {
        let mut session = Session::new();
        let mut count = 0;
        for value in values {
            for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                count += 1;
                if count > TOKENS_PER_REQUEST_MAX {
                    return Err(invalid(format!(
                        "a request carries at most {TOKENS_PER_REQUEST_MAX} tokens"
                    )));
                }
                session.merge(&self.decode(token)?);
            }
        }
        Ok(session)
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey::new(b"a test secret of enough length").unwrap()
    }

    fn session(marks: &[(u64, u64, u64)]) -> Session {
        let mut s = Session::new();
        for &(g, w, r) in marks {
            s.wrote(GroupId(g), LogIndex(w));
            s.read(GroupId(g), LogIndex(r));
        }
        s
    }

    #[test]
    fn a_session_at_the_group_limit_gets_a_token_the_cluster_accepts() {
        // Regression (issue 15): encode did not enforce the group limit decode checks, so a
        // session touching more groups was handed a token the cluster then refused.
        let mut s = Session::new();
        for g in 0..TOKEN_GROUPS_MAX as u64 {
            let group = GroupId(u64::MAX - g);
            assert!(s.admit(group).is_ok());
            s.wrote(group, LogIndex(u64::MAX));
            s.read(group, LogIndex(u64::MAX));
        }
        let k = key();
        assert_eq!(k.decode(&k.encode(&s)).unwrap(), s);
        assert!(s.admit(GroupId(u64::MAX)).is_ok(), "a tracked group");
        let e = s.admit(GroupId(7)).unwrap_err();
        assert_eq!(e.code, Code::SessionInvalid);
    }

    #[test]
    fn round_trip() {
        let s = session(&[(1, 5, 7), (65537, 0, 3), (131074, 9, 0)]);
        let k = key();
        assert_eq!(k.decode(&k.encode(&s)).unwrap(), s);
        assert_eq!(
            k.decode(&k.encode(&Session::new())).unwrap(),
            Session::new()
        );
    }

    #[test]
    fn marks_only_grow() {
        let mut s = Session::new();
        s.wrote(GroupId(1), LogIndex(10));
        s.wrote(GroupId(1), LogIndex(4));
        s.read(GroupId(1), LogIndex(8));
        s.read(GroupId(1), LogIndex(2));
        assert_eq!(
            s.mark(GroupId(1)),
            Mark {
                written: LogIndex(10),
                read: LogIndex(8)
            }
        );
        assert_eq!(s.mark(GroupId(2)), Mark::default());
    }

    #[test]
    fn merge_is_per_group_max_and_order_free() {
        let a = session(&[(1, 5, 2), (2, 0, 9)]);
        let b = session(&[(1, 3, 6), (3, 4, 4)]);
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab, session(&[(1, 5, 6), (2, 0, 9), (3, 4, 4)]));
        let mut again = ab.clone();
        again.merge(&a);
        assert_eq!(again, ab, "merging is idempotent");
    }

    #[test]
    fn decode_all_merges_comma_separated_and_repeated() {
        let k = key();
        let a = k.encode(&session(&[(1, 5, 2)]));
        let b = k.encode(&session(&[(1, 3, 6)]));
        let c = k.encode(&session(&[(2, 1, 1)]));
        let joined = format!("{a}, {b}");
        let merged = k.decode_all([joined.as_str(), c.as_str()]).unwrap();
        assert_eq!(merged, session(&[(1, 5, 6), (2, 1, 1)]));
        assert!(k.decode_all(std::iter::empty()).unwrap().is_empty());
        assert!(k.decode_all([""]).unwrap().is_empty());
        let many = vec![a.as_str(); TOKENS_PER_REQUEST_MAX + 1].join(",");
        assert_eq!(
            k.decode_all([many.as_str()]).unwrap_err().code,
            Code::SessionInvalid
        );
    }

    #[test]
    fn forged_corrupt_and_foreign_tokens_are_invalid() {
        let k = key();
        let good = k.encode(&session(&[(1, 5, 7)]));
        // Every single-character change is caught.
        for i in 0..good.len() {
            let mut bytes = good.clone().into_bytes();
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let forged = String::from_utf8(bytes).unwrap();
            assert_eq!(
                k.decode(&forged).unwrap_err().code,
                Code::SessionInvalid,
                "change at {i}"
            );
        }
        let other = SessionKey::new(b"another cluster's secret value").unwrap();
        assert_eq!(other.decode(&good).unwrap_err().code, Code::SessionInvalid);
        for bad in [
            "zz",
            "abc",
            "00",
            &good[..good.len() - 2],
            &"0".repeat(TOKEN_CHARS_MAX + 2),
        ] {
            assert_eq!(
                k.decode(bad).unwrap_err().code,
                Code::SessionInvalid,
                "{bad:.20}"
            );
        }
    }

    #[test]
    fn signed_but_malformed_bodies_are_invalid() {
        let k = key();
        let sign = |body: &Body| {
            let mut bytes = postcard::to_stdvec(body).unwrap();
            let tag = k.tag(&bytes).finalize().into_bytes();
            bytes.extend_from_slice(&tag);
            hex_encode(&bytes)
        };
        let wrong_format = Body {
            format: 9,
            topology: TOPOLOGY,
            marks: vec![],
            leaderless: vec![],
        };
        let wrong_topology = Body {
            format: TOKEN_FORMAT,
            topology: 7,
            marks: vec![],
            leaderless: vec![],
        };
        let unordered = Body {
            format: TOKEN_FORMAT,
            topology: TOPOLOGY,
            marks: vec![(2, 0, 0), (1, 0, 0)],
            leaderless: vec![],
        };
        let too_many_keys = Body {
            format: TOKEN_FORMAT,
            topology: TOPOLOGY,
            marks: vec![],
            leaderless: vec![(
                1,
                5,
                false,
                (0..=LEADERLESS_KEYS_MAX as u64)
                    .map(|k| (k, 1, 1, false))
                    .collect(),
                vec![],
            )],
        };
        let unordered_keys = Body {
            format: TOKEN_FORMAT,
            topology: TOPOLOGY,
            marks: vec![],
            leaderless: vec![(
                1,
                5,
                false,
                vec![(2, 1, 1, false), (1, 1, 1, false)],
                vec![],
            )],
        };
        let clock = |k: u64, entries: Vec<(u64, u64)>| Body {
            format: TOKEN_FORMAT,
            topology: TOPOLOGY,
            marks: vec![],
            leaderless: vec![(1, 5, false, vec![], vec![(k, 1, entries)])],
        };
        let wide_clock = clock(1, (0..=CLOCK_NODES_MAX as u64).map(|n| (n, 1)).collect());
        let unordered_replicas = clock(1, vec![(2, 1), (1, 1)]);
        let too_many_clocks = Body {
            format: TOKEN_FORMAT,
            topology: TOPOLOGY,
            marks: vec![],
            leaderless: vec![(
                1,
                5,
                false,
                vec![],
                (0..=LEADERLESS_CLOCKS_MAX as u64)
                    .map(|k| (k, 1, vec![(1, 1)]))
                    .collect(),
            )],
        };
        for body in [
            wrong_format,
            wrong_topology,
            unordered,
            too_many_keys,
            unordered_keys,
            wide_clock,
            unordered_replicas,
            too_many_clocks,
        ] {
            assert_eq!(
                k.decode(&sign(&body)).unwrap_err().code,
                Code::SessionInvalid
            );
        }
    }

    #[test]
    fn format_1_tokens_still_decode() {
        let k = key();
        let v1 = BodyV1 {
            format: 1,
            topology: TOPOLOGY,
            marks: vec![(3, 7, 9)],
        };
        let mut bytes = postcard::to_stdvec(&v1).unwrap();
        let tag = k.tag(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag);
        let s = k.decode(&hex_encode(&bytes)).unwrap();
        assert_eq!(s.mark(GroupId(3)).read, LogIndex(9));
    }

    #[test]
    fn leaderless_marks_round_trip_merge_and_stay_bounded() {
        let k = key();
        let mut s = Session::new();
        s.saw_leaderless(7, key_hash(b"a"), (100, 1), false);
        s.saw_leaderless(7, key_hash(b"a"), (90, 2), false);
        assert_eq!(s.leaderless(7).required(key_hash(b"a")), Some((100, 1)));
        assert_eq!(s.leaderless(7).hlc_seen, 100);
        assert_eq!(k.decode(&k.encode(&s)).unwrap(), s);
        // Bounded: the oldest strict marks go first, and the keyspace says it forgot.
        s.saw_leaderless(7, key_hash(b"hinted"), (1, 1), true);
        for i in 0..LEADERLESS_KEYS_MAX as u64 {
            s.saw_leaderless(
                7,
                key_hash(format!("k{i}").as_bytes()),
                (1000 + i, 1),
                false,
            );
        }
        let m = s.leaderless(7);
        assert!(m.forgot);
        assert_eq!(
            m.required(key_hash(b"a")),
            None,
            "the oldest strict mark went"
        );
        assert_eq!(m.required(key_hash(b"hinted")), Some((1, 1)), "hinted kept");
        let token = k.encode(&s);
        assert!(token.len() <= TOKEN_CHARS_MAX);
        assert_eq!(k.decode(&token).unwrap(), s);
        // Merging keeps the higher version per key.
        let mut other = Session::new();
        other.saw_leaderless(7, key_hash(b"hinted"), (5, 3), false);
        other.saw_leaderless(8, key_hash(b"x"), (1, 1), false);
        s.merge(&other);
        assert_eq!(s.leaderless(7).required(key_hash(b"hinted")), Some((5, 3)));
        assert_eq!(s.leaderless(8).required(key_hash(b"x")), Some((1, 1)));
        assert!(s.admit_leaderless(9).is_ok());
    }

    #[test]
    fn format_2_tokens_still_decode() {
        let k = key();
        let v2 = BodyV2 {
            format: 2,
            topology: TOPOLOGY,
            marks: vec![],
            leaderless: vec![(4, 9, true, vec![(11, 9, 2, false)])],
        };
        let mut bytes = postcard::to_stdvec(&v2).unwrap();
        let tag = k.tag(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag);
        let s = k.decode(&hex_encode(&bytes)).unwrap();
        let m = s.leaderless(4);
        assert_eq!(m.required(11), Some((9, 2)));
        assert!(m.forgot);
        assert_eq!(m.clock(11), None);
    }

    #[test]
    fn dot_clocks_round_trip_merge_and_stay_bounded() {
        let k = key();
        let mut s = Session::new();
        s.saw_dots(3, 42, 100, [(1, 4), (2, 1)]);
        s.saw_dots(3, 42, 90, [(1, 2), (3, 7)]);
        let want: BTreeMap<u64, u64> = [(1, 4), (2, 1), (3, 7)].into_iter().collect();
        assert_eq!(
            s.leaderless(3).clock(42),
            Some(&want),
            "per replica, the highest"
        );
        assert_eq!(s.leaderless(3).hlc_seen, 100);
        assert!(!s.leaderless(3).forgot);
        assert_eq!(k.decode(&k.encode(&s)).unwrap(), s);
        // Merging takes the higher counter per replica; two tokens' clocks of other keys join.
        let mut other = Session::new();
        other.saw_dots(3, 42, 120, [(2, 5)]);
        other.saw_dots(3, 43, 120, [(1, 1)]);
        s.merge(&other);
        assert_eq!(s.leaderless(3).clock(42).unwrap()[&2], 5);
        assert_eq!(s.leaderless(3).clock(43).unwrap()[&1], 1);
        // A key whose dots came from too many replicas is forgotten, and the keyspace says so.
        s.saw_dots(3, 44, 130, (0..=CLOCK_NODES_MAX as u64).map(|n| (n, 1)));
        assert_eq!(s.leaderless(3).clock(44), None);
        assert!(s.leaderless(3).forgot);
        // The oldest clocks go past the limit.
        for i in 0..LEADERLESS_CLOCKS_MAX as u64 {
            s.saw_dots(3, 1000 + i, 200 + i, [(1, 1)]);
        }
        assert_eq!(s.leaderless(3).clock(42), None, "the oldest went");
        assert!(s.leaderless(3).clock(1000).is_some());
        assert_eq!(k.decode(&k.encode(&s)).unwrap(), s);
    }

    #[test]
    fn the_largest_token_decodes() {
        let k = key();
        let mut s = Session::new();
        for g in 0..TOKEN_GROUPS_MAX as u64 {
            s.wrote(GroupId(u64::MAX - g), LogIndex(u64::MAX));
            s.read(GroupId(u64::MAX - g), LogIndex(u64::MAX));
        }
        for ks in 0..LEADERLESS_KEYSPACES_MAX as u64 {
            let ks = u64::MAX - ks;
            for key in 0..LEADERLESS_KEYS_MAX as u64 {
                s.saw_leaderless(ks, u64::MAX - key, (u64::MAX, u64::MAX), true);
            }
            for key in 0..LEADERLESS_CLOCKS_MAX as u64 {
                let dots = (0..CLOCK_NODES_MAX as u64).map(|n| (u64::MAX - n, u64::MAX));
                s.saw_dots(ks, u64::MAX - key, u64::MAX, dots);
            }
        }
        let token = k.encode(&s);
        assert!(token.len() <= TOKEN_CHARS_MAX, "{} chars", token.len());
        assert_eq!(k.decode(&token).unwrap(), s);
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(SessionKey::new(b"short").is_err());
    }
}
