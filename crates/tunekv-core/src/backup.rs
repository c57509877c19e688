//! The backup format of `tunekv backup` / `tunekv restore`: one stream per shard, as a node
//! sends it (`GET /v1/admin/backup/{ks}/{shard}`) and as the backup keeps it on disk.
//!
//! ```text
//! "TUNEKVB1"  u32 header length  header (postcard: keyspace, shard, index, commit_ms, node)
//! record*     u32 key length  key  u32 value length  value  u64 expiry (Unix ms, 0 = none)
//! trailer     u32 0xFFFF_FFFF  u64 records  u64 xxh3 of every byte before the trailer
//! ```
//!
//! All integers big-endian. A stream without its trailer, with a wrong count or checksum, or
//! with bytes after the trailer is refused whole: a restore writes nothing from it. A restore
//! sends records (without header and trailer) to `POST /v1/admin/restore/{ks}` in batches.
//! Pure: no I/O beyond the `Read` the caller hands in.

use crate::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX_CEILING};
use serde::{Deserialize, Serialize};
use std::io::Read;
use xxhash_rust::xxh3::Xxh3;

pub const MAGIC: &[u8; 8] = b"TUNEKVB1";
const END: u32 = u32::MAX;
const HEADER_BYTES_MAX: u32 = 64 * 1024;

/// What a shard stream says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardHeader {
    pub keyspace: String,
    pub shard: u32,
    /// The shard's applied log index the copy holds: every write acknowledged before the
    /// backup of this shard began is at or below it.
    pub index: u64,
    /// Commit time of that entry (Unix ms).
    pub commit_ms: u64,
    /// The node that read it.
    pub node: u64,
}

/// One key as backed up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// When the key expires (Unix ms), if it does.
    pub expires_ms: Option<u64>,
}

/// Why a stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("not a tunekv backup stream (it does not start with TUNEKVB1)")]
    NotBackup,
    #[error("the stream ends at byte {0} before its trailer: the backup is incomplete")]
    Truncated(u64),
    #[error("malformed at byte {at}: {what}")]
    Malformed { at: u64, what: String },
    #[error("the trailer counts {said} records but the stream holds {held}")]
    Count { said: u64, held: u64 },
    #[error("checksum mismatch (trailer {said:016x}, records {held:016x}): the backup is damaged")]
    Checksum { said: u64, held: u64 },
    #[error("cannot read the stream: {0}")]
    Io(#[from] std::io::Error),
}

/// Appends one record's encoding to `out`.
pub fn encode_record(out: &mut Vec<u8>, key: &[u8], value: &[u8], expires_ms: Option<u64>) {
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(&expires_ms.unwrap_or(0).to_be_bytes());
}

/// Writes a shard stream: the header, then records, then the trailer that seals them.
pub struct Writer {
    hasher: Xxh3,
    count: u64,
}

impl Writer {
    /// A writer and the stream's first bytes.
    pub fn start(header: &ShardHeader) -> (Writer, Vec<u8>) {
        let body = postcard::to_stdvec(header).unwrap_or_default();
        let mut out = Vec::with_capacity(12 + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        let mut hasher = Xxh3::new();
        hasher.update(&out);
        (Writer { hasher, count: 0 }, out)
    }

    /// Appends a record to `out`.
    pub fn record(&mut self, out: &mut Vec<u8>, key: &[u8], value: &[u8], expires_ms: Option<u64>) {
        let from = out.len();
        encode_record(out, key, value, expires_ms);
        self.hasher.update(&out[from..]);
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The trailer: the stream's last bytes.
    pub fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        out.extend_from_slice(&END.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.hasher.digest().to_be_bytes());
        out
    }
}

/// Reads a shard stream record by record; [`Reader::next`] returns `None` only after the
/// trailer checked out.
pub struct Reader<R: Read> {
    r: R,
    at: u64,
    hasher: Xxh3,
    count: u64,
    done: bool,
    pub header: ShardHeader,
}

impl<R: Read> Reader<R> {
    pub fn open(mut r: R) -> Result<Reader<R>, BackupError> {
        let mut magic = [0u8; 8];
        if read_exact(&mut r, &mut magic).is_err() || &magic != MAGIC {
            return Err(BackupError::NotBackup);
        }
        let mut at = 8;
        let len = u32_at(&mut r, &mut at)?;
        if len > HEADER_BYTES_MAX {
            return Err(malformed(at, format!("a header of {len} bytes")));
        }
        let mut body = vec![0u8; len as usize];
        fill(&mut r, &mut body, &mut at)?;
        let header = postcard::from_bytes(&body)
            .map_err(|e| malformed(at, format!("unreadable header: {e}")))?;
        let mut hasher = Xxh3::new();
        hasher.update(MAGIC);
        hasher.update(&len.to_be_bytes());
        hasher.update(&body);
        Ok(Reader {
            r,
            at,
            hasher,
            count: 0,
            done: false,
            header,
        })
    }

    /// Records read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.at
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Record>, BackupError> {
        if self.done {
            return Ok(None);
        }
        let klen = u32_at(&mut self.r, &mut self.at)?;
        if klen == END {
            let said = u64_at(&mut self.r, &mut self.at)?;
            let sum = u64_at(&mut self.r, &mut self.at)?;
            if said != self.count {
                return Err(BackupError::Count {
                    said,
                    held: self.count,
                });
            }
            let held = self.hasher.digest();
            if sum != held {
                return Err(BackupError::Checksum { said: sum, held });
            }
            let mut extra = [0u8; 1];
            if self.r.read(&mut extra)? != 0 {
                return Err(malformed(self.at, "bytes after the trailer".into()));
            }
            self.done = true;
            return Ok(None);
        }
        let (record, bytes) = read_record(&mut self.r, &mut self.at, klen)?;
        self.hasher.update(&bytes);
        self.count += 1;
        Ok(Some(record))
    }
}

/// Every key of a shard stream with its value.
pub type Held = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

/// A whole shard stream held in memory: its header and every key with its value, or the
/// reason it was refused (a stream cut short or damaged holds nothing).
pub fn read_whole(bytes: &[u8]) -> Result<(ShardHeader, Held), BackupError> {
    let mut reader = Reader::open(bytes)?;
    let mut held = std::collections::BTreeMap::new();
    while let Some(r) = reader.next()? {
        held.insert(r.key, r.value);
    }
    Ok((reader.header, held))
}

/// The records of a restore batch (records back to back, no header or trailer).
pub fn decode_batch(mut bytes: &[u8]) -> Result<Vec<Record>, BackupError> {
    let mut out = Vec::new();
    let mut at = 0;
    while !bytes.is_empty() {
        let klen = u32_at(&mut bytes, &mut at)?;
        if klen == END {
            return Err(malformed(at, "a trailer inside a restore batch".into()));
        }
        out.push(read_record(&mut bytes, &mut at, klen)?.0);
    }
    Ok(out)
}

/// One record after its key length; also its encoding (for the checksum).
fn read_record(
    r: &mut impl Read,
    at: &mut u64,
    klen: u32,
) -> Result<(Record, Vec<u8>), BackupError> {
    if klen as usize > KEY_BYTES_MAX {
        return Err(malformed(*at, format!("a key of {klen} bytes")));
    }
    let mut key = vec![0u8; klen as usize];
    fill(r, &mut key, at)?;
    let vlen = u32_at(r, at)?;
    if u64::from(vlen) > VALUE_BYTES_MAX_CEILING {
        return Err(malformed(*at, format!("a value of {vlen} bytes")));
    }
    let mut value = vec![0u8; vlen as usize];
    fill(r, &mut value, at)?;
    let expires = u64_at(r, at)?;
    let expires_ms = (expires != 0).then_some(expires);
    let mut bytes = Vec::with_capacity(16 + key.len() + value.len());
    encode_record(&mut bytes, &key, &value, expires_ms);
    Ok((
        Record {
            key,
            value,
            expires_ms,
        },
        bytes,
    ))
}

fn malformed(at: u64, what: String) -> BackupError {
    BackupError::Malformed { at, what }
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<()> {
    r.read_exact(buf)
}

fn fill(r: &mut impl Read, buf: &mut [u8], at: &mut u64) -> Result<(), BackupError> {
    match r.read_exact(buf) {
        Ok(()) => {
            *at += buf.len() as u64;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(BackupError::Truncated(*at)),
        Err(e) => Err(e.into()),
    }
}

fn u32_at(r: &mut impl Read, at: &mut u64) -> Result<u32, BackupError> {
    let mut b = [0u8; 4];
    fill(r, &mut b, at)?;
    Ok(u32::from_be_bytes(b))
}

fn u64_at(r: &mut impl Read, at: &mut u64) -> Result<u64, BackupError> {
    let mut b = [0u8; 8];
    fill(r, &mut b, at)?;
    Ok(u64::from_be_bytes(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ShardHeader {
        ShardHeader {
            keyspace: "orders".into(),
            shard: 2,
            index: 41,
            commit_ms: 1_700_000_000_000,
            node: 3,
        }
    }

    fn stream(records: &[(&[u8], &[u8], Option<u64>)]) -> Vec<u8> {
        let (mut w, mut out) = Writer::start(&header());
        for (k, v, e) in records {
            w.record(&mut out, k, v, *e);
        }
        out.extend(w.finish());
        out
    }

    fn read_all(bytes: &[u8]) -> Result<(ShardHeader, Vec<Record>), BackupError> {
        let mut r = Reader::open(bytes)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next()? {
            out.push(rec);
        }
        Ok((r.header, out))
    }

    #[test]
    fn a_stream_reads_back_what_was_written() {
        let bytes = stream(&[
            (b"a", b"1", None),
            (b"\x00\xff", b"", Some(5)),
            (b"", b"v", None),
        ]);
        let (h, recs) = read_all(&bytes).unwrap();
        assert_eq!(h, header());
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].key, b"\x00\xff");
        assert_eq!(recs[1].expires_ms, Some(5));
        assert_eq!(recs[2].value, b"v");
        let empty = stream(&[]);
        assert!(read_all(&empty).unwrap().1.is_empty());
        let (h, held) = read_whole(&bytes).unwrap();
        assert_eq!(h, header());
        assert_eq!(held.get(&b"a"[..]).map(Vec::as_slice), Some(&b"1"[..]));
        assert_eq!(held.len(), 3);
    }

    #[test]
    fn every_damage_is_refused() {
        let bytes = stream(&[(b"a", b"1", None), (b"b", b"2", None)]);
        // Cut anywhere before the end: incomplete.
        for cut in 0..bytes.len() {
            assert!(read_all(&bytes[..cut]).is_err(), "cut at {cut} accepted");
            assert!(read_whole(&bytes[..cut]).is_err(), "cut at {cut} held");
        }
        // Any flipped byte after the magic: refused (count, checksum, length or header).
        for i in 8..bytes.len() {
            let mut d = bytes.clone();
            d[i] ^= 0x40;
            assert!(read_all(&d).is_err(), "flip at {i} accepted");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(
            read_all(&extra),
            Err(BackupError::Malformed { .. })
        ));
        assert!(matches!(
            read_all(b"REDIS0011"),
            Err(BackupError::NotBackup)
        ));
    }

    #[test]
    fn a_batch_decodes_whole_records_only() {
        let mut b = Vec::new();
        encode_record(&mut b, b"k", b"v", Some(9));
        encode_record(&mut b, b"k2", b"v2", None);
        let recs = decode_batch(&b).unwrap();
        assert_eq!(recs.len(), 2);
        assert!(decode_batch(&b[..b.len() - 1]).is_err());
        // A length past the limits is refused before anything is allocated.
        let mut huge = Vec::new();
        huge.extend_from_slice(&2000u32.to_be_bytes());
        assert!(matches!(
            decode_batch(&huge),
            Err(BackupError::Malformed { .. })
        ));
        assert!(decode_batch(&[]).unwrap().is_empty());
    }
}
