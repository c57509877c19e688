//! Replies, encoded as RESP2 or RESP3 (after `HELLO 3`).

/// One reply. Maps and doubles degrade to RESP2 shapes (flat arrays, bulk strings).
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Simple(String),
    /// `-CODE message`: the first word is the code (`ERR`, `WRONGTYPE`, or a tunekv code in
    /// upper case such as `NO_QUORUM`).
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
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
    pub fn encode(&self, resp3: bool, out: &mut Vec<u8>) {
        let mut stack: Vec<&Reply> = vec![self];
        while let Some(r) = stack.pop() {
            match r {
                Reply::Simple(s) => line(out, b'+', clean(s).as_bytes()),
                Reply::Error(s) => line(out, b'-', clean(s).as_bytes()),
                Reply::Int(n) => line(out, b':', n.to_string().as_bytes()),
                Reply::Bulk(b) => {
                    line(out, b'$', b.len().to_string().as_bytes());
                    out.extend_from_slice(b);
                    out.extend_from_slice(b"\r\n");
                }
                Reply::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
                Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
                Reply::NilArray if resp3 => out.extend_from_slice(b"_\r\n"),
                Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
                Reply::Array(items) => {
                    line(out, b'*', items.len().to_string().as_bytes());
                    stack.extend(items.iter().rev());
                }
                Reply::Push(items) => {
                    let kind = if resp3 { b'>' } else { b'*' };
                    line(out, kind, items.len().to_string().as_bytes());
                    stack.extend(items.iter().rev());
                }
                Reply::Seq(items) => stack.extend(items.iter().rev()),
                Reply::Map(pairs) => {
                    if resp3 {
                        line(out, b'%', pairs.len().to_string().as_bytes());
                    } else {
                        line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
                    }
                    for (k, v) in pairs.iter().rev() {
                        stack.push(v);
                        stack.push(k);
                    }
                }
            }
        }
    }
}

fn line(out: &mut Vec<u8>, prefix: u8, body: &[u8]) {
    out.push(prefix);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// Simple strings and errors may not hold CR or LF.
fn clean(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
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
        assert_eq!(
            enc(&Reply::err("bad\r\nthing"), false),
            "-ERR bad  thing\r\n"
        );
    }
}
