//! Batch-get answers. Each key is fetched once however often the request names it; the answer's
//! exact size is known, and refused with `response_too_large` over the node's cap, before its
//! first byte is sent; it is then sent entry by entry, and every repeat of a key is the same
//! shared buffer, never a copy.
//!
//! The body is byte for byte what serde_json made of the whole answer before (keys in
//! alphabetical order): `{"receipts":[…],"results":[…],"session":"…"}`, results in shard order
//! and, within a shard, in request order, one per requested key, repeats included.

use crate::request::KeyEncoding;
use bytes::Bytes;
use serde::{Serialize, Serializer};
use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use tunekv_core::{Code, TunekvError};
use tunekv_node::ShardRead;

/// The keys of a batch with repeats removed (first occurrence order) and, for each requested
/// key, which of them it is.
#[derive(Debug)]
pub struct Plan {
    unique: Vec<Vec<u8>>,
    of: Vec<usize>,
}

impl Plan {
    pub fn new(keys: Vec<Vec<u8>>) -> Plan {
        let mut index: HashMap<Vec<u8>, usize> = HashMap::with_capacity(keys.len());
        let mut unique = Vec::new();
        let of = keys
            .into_iter()
            .map(|k| {
                *index.entry(k).or_insert_with_key(|k| {
                    unique.push(k.clone());
                    unique.len() - 1
                })
            })
            .collect();
        Plan { unique, of }
    }

    /// The keys to fetch, each once.
    pub fn unique(&self) -> &[Vec<u8>] {
        &self.unique
    }
}

/// One fetched key: the raw value until its entry is first encoded, then the encoded entry
/// for as long as more repeats of it are still to be sent.
struct Slot {
    key: Vec<u8>,
    /// Position of its shard in the node's answer.
    shard_pos: usize,
    shard: u32,
    value: Option<Vec<u8>>,
    found: bool,
    encoded: Option<Bytes>,
    remaining: usize,
    entry_bytes: u64,
}

#[derive(Serialize)]
struct Entry<'a> {
    found: bool,
    key: Cow<'a, str>,
    shard: u32,
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_hex: Option<Hex<'a>>,
}

/// Bytes as lower-case hex, written straight into the serializer (no intermediate String).
struct Hex<'a>(&'a [u8]);

impl Serialize for Hex<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 512];
        for chunk in self.0.chunks(buf.len() / 2) {
            for (i, b) in chunk.iter().enumerate() {
                buf[2 * i] = DIGITS[usize::from(b >> 4)];
                buf[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
            }
            // Hex digits are ASCII.
            f.write_str(std::str::from_utf8(&buf[..2 * chunk.len()]).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl Slot {
    fn entry(&self, encoding: KeyEncoding) -> Entry<'_> {
        let key = match encoding.show(&self.key) {
            Some(k) => Cow::Owned(k),
            None => String::from_utf8_lossy(&self.key),
        };
        let value = self.value.as_deref();
        let text = value.and_then(|v| std::str::from_utf8(v).ok());
        Entry {
            found: self.found,
            key,
            shard: self.shard,
            value: text,
            value_hex: match (value, text) {
                (Some(v), None) => Some(Hex(v)),
                _ => None,
            },
        }
    }

    /// The next repeat of this entry: encoded the first time, shared after.
    fn next_chunk(&mut self, encoding: KeyEncoding) -> Bytes {
        self.remaining = self.remaining.saturating_sub(1);
        let chunk = match self.encoded.take() {
            Some(b) => b,
            None => {
                let mut out = Vec::with_capacity(usize::try_from(self.entry_bytes).unwrap_or(0));
                // Writing into a Vec cannot fail, and these types always serialize.
                let _ = serde_json::to_writer(&mut out, &self.entry(encoding));
                self.value = None;
                Bytes::from(out)
            }
        };
        if self.remaining > 0 {
            self.encoded = Some(chunk.clone());
        }
        chunk
    }
}

/// Counts what would be written.
struct Count(u64);

impl std::io::Write for Count {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json_bytes<T: Serialize + ?Sized>(value: &T) -> u64 {
    let mut count = Count(0);
    // Counting cannot fail, and these types always serialize.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A batch-get's answer, ready to stream.
pub struct Answer {
    /// Exactly the number of bytes [`Answer::chunks`] yields.
    pub bytes: u64,
    chunks: Chunks,
}

impl Answer {
    /// `shards` is the node's answer for `plan.unique()`, `receipts` its receipts as JSON.
    /// Refuses with `response_too_large` when the whole answer (a key named n times counts n
    /// times) would exceed `bytes_max`.
    pub fn new(
        shards: Vec<ShardRead>,
        receipts: Vec<serde_json::Value>,
        plan: Plan,
        encoding: KeyEncoding,
        session: &str,
        bytes_max: u64,
    ) -> Result<Answer, TunekvError> {
        let index: HashMap<&[u8], usize> = plan
            .unique
            .iter()
            .enumerate()
            .map(|(u, k)| (k.as_slice(), u))
            .collect();
        let mut slots: Vec<Option<Slot>> = (0..plan.unique.len()).map(|_| None).collect();
        for (shard_pos, shard) in shards.into_iter().enumerate() {
            let number = shard.receipt.position.shard.0;
            for (key, value) in shard.values {
                let Some(&u) = index.get(key.as_slice()) else {
                    return Err(TunekvError::new(
                        Code::Internal,
                        "the node answered a key the batch did not ask for",
                    ));
                };
                slots[u] = Some(Slot {
                    key,
                    shard_pos,
                    shard: number,
                    found: value.is_some(),
                    value: value.map(|v| std::sync::Arc::unwrap_or_clone(v).value),
                    encoded: None,
                    remaining: 0,
                    entry_bytes: 0,
                });
            }
        }
        let mut slots: Vec<Slot> = slots.into_iter().collect::<Option<_>>().ok_or_else(|| {
            TunekvError::new(
                Code::Internal,
                "the node left a key of the batch unanswered",
            )
        })?;
        // Shard order, then request order within the shard, as the node groups keys.
        let shard_count = slots.iter().map(|s| s.shard_pos + 1).max().unwrap_or(0);
        let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); shard_count];
        for &u in &plan.of {
            by_shard[slots[u].shard_pos].push(u);
        }
        let order: Vec<usize> = by_shard.concat();
        for &u in &order {
            slots[u].remaining += 1;
        }
        for slot in &mut slots {
            slot.entry_bytes = json_bytes(&slot.entry(encoding));
        }
        let mut prefix = b"{\"receipts\":".to_vec();
        // Writing into a Vec cannot fail, and JSON values always serialize.
        let _ = serde_json::to_writer(&mut prefix, &receipts);
        prefix.extend_from_slice(b",\"results\":[");
        let mut suffix = b"],\"session\":".to_vec();
        let _ = serde_json::to_writer(&mut suffix, session);
        suffix.push(b'}');
        let entries: u64 = order.iter().map(|&u| slots[u].entry_bytes).sum();
        let commas = order.len().saturating_sub(1) as u64;
        let bytes = prefix.len() as u64 + entries + commas + suffix.len() as u64;
        if bytes > bytes_max {
            return Err(TunekvError::new(
                Code::ResponseTooLarge,
                format!(
                    "this batch-get's answer would be {bytes} bytes, over the node's \
                     batch_get_response_bytes_max of {bytes_max} (a key named n times counts \
                     n times); ask for fewer keys at a time"
                ),
            ));
        }
        Ok(Answer {
            bytes,
            chunks: Chunks {
                prefix: Some(Bytes::from(prefix)),
                slots,
                order: order.into_iter(),
                comma_next: false,
                suffix: Some(Bytes::from(suffix)),
                encoding,
            },
        })
    }

    /// The body, one chunk per entry (and the separators between them).
    pub fn chunks(self) -> impl Iterator<Item = Result<Bytes, Infallible>> + Send + 'static {
        self.chunks
    }
}

struct Chunks {
    prefix: Option<Bytes>,
    slots: Vec<Slot>,
    order: std::vec::IntoIter<usize>,
    comma_next: bool,
    suffix: Option<Bytes>,
    encoding: KeyEncoding,
}

impl Iterator for Chunks {
    type Item = Result<Bytes, Infallible>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(p) = self.prefix.take() {
            return Some(Ok(p));
        }
        if self.comma_next {
            self.comma_next = false;
            return Some(Ok(Bytes::from_static(b",")));
        }
        if let Some(u) = self.order.next() {
            self.comma_next = self.order.len() > 0;
            return Some(Ok(self.slots[u].next_chunk(self.encoding)));
        }
        self.suffix.take().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;
    use tunekv_core::{Level, LogIndex, NodeId, Position, Receipt, ShardId, Staleness};
    use tunekv_node::StoredValue;

    fn stored(v: &[u8]) -> StoredValue {
        StoredValue {
            value: v.to_vec(),
            create_index: 1,
            mod_index: 1,
            commit_ts: 0,
            expires_ms: None,
        }
    }

    fn receipt(shard: u32) -> Receipt {
        Receipt {
            level: Level::Strong,
            served_by: NodeId(1),
            position: Position {
                shard: ShardId(shard),
                index: LogIndex(7),
                commit_ms: 9,
            },
            staleness: Staleness { entries: 0, ms: 0 },
            quorum: None,
        }
    }

    /// What the node answers for `unique`, with shard = key length % 2.
    fn node_answer(unique: &[Vec<u8>], values: &HashMap<Vec<u8>, Vec<u8>>) -> Vec<ShardRead> {
        (0..2u32)
            .filter_map(|s| {
                let keys: Vec<_> = unique
                    .iter()
                    .filter(|k| k.len() as u32 % 2 == s)
                    .map(|k| (k.clone(), values.get(k).map(|v| Arc::new(stored(v)))))
                    .collect();
                (!keys.is_empty()).then(|| ShardRead {
                    values: keys,
                    receipt: receipt(s),
                })
            })
            .collect()
    }

    fn collect(answer: Answer) -> Vec<u8> {
        let bytes = answer.bytes;
        let body: Vec<u8> = answer
            .chunks()
            .flat_map(|c| match c {
                Ok(b) => b.to_vec(),
                Err(e) => match e {},
            })
            .collect();
        assert_eq!(body.len() as u64, bytes, "the announced length is exact");
        body
    }

    #[test]
    fn repeats_are_answered_in_place_and_the_body_is_the_old_format() {
        // Before: a key named n times was fetched, copied and encoded n times.
        let values: HashMap<Vec<u8>, Vec<u8>> = [
            (b"a".to_vec(), b"text \"quoted\" \n".to_vec()),
            (b"bb".to_vec(), b"\xff\x00bin".to_vec()),
        ]
        .into_iter()
        .collect();
        let keys: Vec<Vec<u8>> = ["a", "bb", "a", "zz", "a", "bb", "c"]
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        let plan = Plan::new(keys.clone());
        assert_eq!(plan.unique().len(), 4);
        let shards = node_answer(plan.unique(), &values);
        let receipts: Vec<_> = shards
            .iter()
            .map(|s| json!({"shard": s.receipt.position.shard.0}))
            .collect();
        let answer = Answer::new(
            shards,
            receipts.clone(),
            plan,
            KeyEncoding::Text,
            "tok",
            u64::MAX,
        )
        .expect("fits");
        let body: serde_json::Value =
            serde_json::from_slice(&collect(answer)).expect("the body is JSON");
        // The old builder: every requested key, grouped by shard, in request order.
        let mut results = Vec::new();
        for s in 0..2u32 {
            for k in keys.iter().filter(|k| k.len() as u32 % 2 == s) {
                let v = values.get(k);
                let mut item =
                    json!({"key": String::from_utf8_lossy(k), "found": v.is_some(), "shard": s});
                match v.map(|v| std::str::from_utf8(v)) {
                    Some(Ok(t)) => item["value"] = json!(t),
                    Some(Err(_)) => {
                        item["value"] = json!(null);
                        item["value_hex"] = json!(v
                            .expect("value")
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>());
                    }
                    None => item["value"] = json!(null),
                }
                results.push(item);
            }
        }
        assert_eq!(
            body,
            json!({"results": results, "receipts": receipts, "session": "tok"})
        );
    }

    #[test]
    fn an_answer_over_the_cap_is_refused_before_it_is_built() {
        // Before: 1000 repeats of a 1 MiB key built a 1 GiB answer.
        let big = vec![b'x'; 1 << 20];
        let values: HashMap<_, _> = [(b"k".to_vec(), big)].into_iter().collect();
        let plan = Plan::new(vec![b"k".to_vec(); 1000]);
        assert_eq!(plan.unique().len(), 1);
        let shards = node_answer(plan.unique(), &values);
        let err = Answer::new(shards, vec![], plan, KeyEncoding::Text, "", 64 << 20)
            .err()
            .expect("refused");
        assert_eq!(err.code, Code::ResponseTooLarge);
        assert!(err.message.contains("67108864"), "{}", err.message);
        // 60 repeats fit, and share one encoded entry.
        let plan = Plan::new(vec![b"k".to_vec(); 60]);
        let shards = node_answer(plan.unique(), &values);
        let answer =
            Answer::new(shards, vec![], plan, KeyEncoding::Text, "", 64 << 20).expect("fits");
        let chunks: Vec<Bytes> = answer.chunks().map(|c| c.unwrap_or_default()).collect();
        let entries: Vec<&Bytes> = chunks.iter().filter(|c| c.len() > 1 << 20).collect();
        assert_eq!(entries.len(), 60);
        assert!(
            entries.windows(2).all(|w| w[0].as_ptr() == w[1].as_ptr()),
            "repeats share one buffer"
        );
    }

    #[test]
    fn base64url_keys_are_echoed_in_base64url() {
        let values: HashMap<_, _> = [(b"\xfe".to_vec(), b"v".to_vec())].into_iter().collect();
        let plan = Plan::new(vec![b"\xfe".to_vec()]);
        let shards = node_answer(plan.unique(), &values);
        let answer =
            Answer::new(shards, vec![], plan, KeyEncoding::Base64Url, "", 1 << 20).expect("fits");
        let body: serde_json::Value = serde_json::from_slice(&collect(answer)).expect("json");
        assert_eq!(body["results"][0]["key"], "_g");
        assert_eq!(body["results"][0]["value"], "v");
    }
}
