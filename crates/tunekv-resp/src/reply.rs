//! Replies, encoded as RESP2 or RESP3 (after `HELLO 3`).

use std::sync::Arc;
use tunekv_node::StoredValue;

/// One reply. Maps and doubles degrade to RESP2 shapes (flat arrays, bulk strings).
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    /// `-CODE message`: the first word is the code (`ERR`, `WRONGTYPE`, or a tunekv code in
    /// upper case such as `NO_QUORUM`).
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    /// A stored value, written as a bulk string straight from the copy's hot values (a GET
    /// copies no value on its way out).
    Value(Arc<StoredValue>),
    Nil,
    /// A null array: EXEC of a transaction a watched key's change aborted (`*-1` in RESP2).
    NilArray,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    /// Out-of-band data (pub/sub messages, invalidations): RESP3's `>` type, an array in RESP2.
    Push(Vec<Reply>),
    /// Several replies to one command, one after another (SUBSCRIBE a b: one per channel).
    Seq(Vec<Reply>),
}

impl Reply {
    /// The outcome label of this reply in metrics: `ok`, the tunekv code of an error, or
    /// `err` for Redis's own errors.
    pub fn outcome(&self) -> &'static str {
        match self {
            Reply::Error(e) => {
                let word = e.split(' ').next().unwrap_or("").to_ascii_lowercase();
                tunekv_core::Code::parse(&word).map_or("err", |c| c.as_str())
            }
            _ => "ok",
        }
    }

    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    pub fn bulk(b: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(b.into())
    }

    pub fn err(msg: impl Into<String>) -> Reply {
        Reply::Error(format!("ERR {}", msg.into()))
    }

    /// Writes the reply. Iterative: an explicit stack, so deep structures cannot overflow it.
    /// A reply with nothing inside (a GET's value, `+OK`) is written without one.
    pub fn encode(&self, resp3: bool, out: &mut Vec<u8>) {
        if self.encode_flat(resp3, out) {
            return;
        }
        let mut stack: Vec<&Reply> = vec![self];
        while let Some(r) = stack.pop() {
            if r.encode_flat(resp3, out) {
                continue;
            }
            match r {
                Reply::Array(items) => {
                    number(out, b'*', items.len() as i64);
                    stack.extend(items.iter().rev());
                }
                Reply::Push(items) => {
                    let kind = if resp3 { b'>' } else { b'*' };
                    number(out, kind, items.len() as i64);
                    stack.extend(items.iter().rev());
                }
                Reply::Seq(items) => stack.extend(items.iter().rev()),
                Reply::Map(pairs) => {
                    if resp3 {
                        number(out, b'%', pairs.len() as i64);
                    } else {
                        number(out, b'*', (pairs.len() * 2) as i64);
                    }
                    for (k, v) in pairs.iter().rev() {
                        stack.push(v);
                        stack.push(k);
                    }
                }
                _ => unreachable!("flat replies are written by encode_flat"),
            }
        }
    }

    /// Writes a reply that holds no others; false (nothing written) for one that does.
    fn encode_flat(&self, resp3: bool, out: &mut Vec<u8>) -> bool {
        match self {
            Reply::Simple(s) => line(out, b'+', s),
            Reply::Error(s) => line(out, b'-', s),
            Reply::Int(n) => number(out, b':', *n),
            Reply::Bulk(b) => bulk(out, b),
            Reply::Value(v) => bulk(out, &v.value),
            Reply::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(_) | Reply::Push(_) | Reply::Seq(_) | Reply::Map(_) => return false,
        }
        true
    }
}

fn bulk(out: &mut Vec<u8>, b: &[u8]) {
    number(out, b'$', b.len() as i64);
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

/// `prefix`, `n` in decimal, CRLF: formatted on the stack, not through a `String`.
fn number(out: &mut Vec<u8>, prefix: u8, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.push(prefix);
    if n < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// A simple string or error line. They may not hold CR or LF: each is written as a space.
fn line(out: &mut Vec<u8>, prefix: u8, body: &str) {
    out.push(prefix);
    let start = out.len();
    out.extend_from_slice(body.as_bytes());
    for b in &mut out[start..] {
        if *b == b'\r' || *b == b'\n' {
            *b = b' ';
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &Reply, resp3: bool) -> String {
        let mut out = Vec::new();
        r.encode(resp3, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn resp2_and_resp3_shapes() {
        let r = Reply::Array(vec![
            Reply::ok(),
            Reply::Int(-3),
            Reply::bulk("a"),
            Reply::Nil,
            Reply::Map(vec![(Reply::bulk("k"), Reply::Int(1))]),
        ]);
        assert_eq!(
            enc(&r, false),
            "*5\r\n+OK\r\n:-3\r\n$1\r\na\r\n$-1\r\n*2\r\n$1\r\nk\r\n:1\r\n"
        );
        assert_eq!(
            enc(&r, true),
            "*5\r\n+OK\r\n:-3\r\n$1\r\na\r\n_\r\n%1\r\n$1\r\nk\r\n:1\r\n"
        );
        let push = Reply::Seq(vec![
            Reply::Push(vec![Reply::bulk("a"), Reply::Int(1)]),
            Reply::Push(vec![Reply::bulk("b"), Reply::Int(2)]),
        ]);
        assert_eq!(
            enc(&push, true),
            ">2\r\n$1\r\na\r\n:1\r\n>2\r\n$1\r\nb\r\n:2\r\n"
        );
        assert_eq!(
            enc(&push, false),
            "*2\r\n$1\r\na\r\n:1\r\n*2\r\n$1\r\nb\r\n:2\r\n"
        );
        for n in [0, 7, -7, 10, 1234567890, i64::MIN, i64::MAX] {
            assert_eq!(enc(&Reply::Int(n), false), format!(":{n}\r\n"));
        }
        let stored = StoredValue {
            value: b"hot".to_vec(),
            create_index: 1,
            mod_index: 1,
            commit_ts: 0,
            expires_ms: None,
        };
        let value = Reply::Value(Arc::new(stored));
        assert_eq!(enc(&value, true), enc(&Reply::bulk("hot"), true));
        assert_eq!(
            enc(&Reply::err("bad\r\nthing"), false),
            "-ERR bad  thing\r\n"
        );
    }
}
