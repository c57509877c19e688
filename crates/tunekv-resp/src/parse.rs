//! The request parser: RESP multibulk (`*N\r\n$len\r\n…\r\n`…) and inline commands.
//!
//! It is iterative and bounded: a request is a flat array of bulk strings, so nothing nests
//! (an array inside a request is a protocol error, as in Redis); the argument count, each bulk's
//! size and an inline line's length are capped before anything is allocated for them.

/// Caps on one request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most arguments in one request.
    pub args_max: usize,
    /// Largest bulk string (one argument).
    pub bulk_bytes_max: usize,
    /// Longest inline command line.
    pub inline_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            args_max: 1024 * 1024,
            bulk_bytes_max: tunekv_core::limits::VALUE_BYTES_MAX_CEILING as usize + 1024,
            inline_bytes_max: 64 * 1024,
        }
    }
}

/// A protocol error: the connection is answered `-ERR Protocol error: …` and closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

fn protocol(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// One parsed request: its arguments, and how many bytes of the buffer it used.
pub type Parsed = (Vec<Vec<u8>>, usize);

/// Parses the request at the front of `buf`. `Ok(None)`: more bytes are needed. An empty
/// request (`*0`, `*-1`, a blank inline line) parses as zero arguments, which callers skip.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_multibulk(buf, limits),
        Some(_) => parse_inline(buf, limits),
    }
}

/// The line starting at `from` (without `\r\n`) and where the next one starts.
fn line(buf: &[u8], from: usize, max: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let window = &buf[from..buf.len().min(from.saturating_add(max + 2))];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(end) => Ok(Some((&window[..end], from + end + 2))),
        None if window.len() >= max + 2 => Err(protocol("line too long")),
        None => Ok(None),
    }
}

fn number(digits: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(digits).ok()?;
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.parse().ok()
}

fn parse_multibulk(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, ProtocolError> {
    let Some((header, mut at)) = line(buf, 1, 32)? else {
        return Ok(None);
    };
    let count = number(header).ok_or_else(|| protocol("invalid multibulk length"))?;
    if count <= 0 {
        return Ok(Some((Vec::new(), at)));
    }
    let count = usize::try_from(count).map_err(|_| protocol("invalid multibulk length"))?;
    if count > limits.args_max {
        return Err(protocol("invalid multibulk length"));
    }
    // First pass: check the whole request is here, without allocating argument storage.
    let mut spans = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => {
                return Err(protocol(format!(
                    "expected '$', got '{}'",
                    char::from(other).escape_default()
                )))
            }
        }
        let Some((len, body)) = line(buf, at + 1, 32)? else {
            return Ok(None);
        };
        let len = number(len)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| protocol("invalid bulk length"))?;
        if len > limits.bulk_bytes_max {
            return Err(protocol("invalid bulk length"));
        }
        let end = body
            .checked_add(len)
            .ok_or_else(|| protocol("invalid bulk length"))?;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(protocol("bulk string not terminated by CRLF"));
        }
        spans.push((body, end));
        at = end + 2;
    }
    let args = spans.iter().map(|&(s, e)| buf[s..e].to_vec()).collect();
    Ok(Some((args, at)))
}

fn parse_inline(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, ProtocolError> {
    let end = match buf
        .iter()
        .take(limits.inline_bytes_max + 1)
        .position(|&b| b == b'\n')
    {
        Some(e) => e,
        None if buf.len() > limits.inline_bytes_max => {
            return Err(protocol("too big inline request"))
        }
        None => return Ok(None),
    };
    let text = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    let args = split_inline(text)?;
    if args.len() > limits.args_max {
        return Err(protocol("invalid multibulk length"));
    }
    Ok(Some((args, end + 1)))
}

/// Splits an inline line on whitespace; double quotes group (with `\"`, `\\`, `\n`, `\r`,
/// `\t`, `\xHH` escapes) and single quotes group literally.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let unbalanced = || protocol("unbalanced quotes in request");
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if line[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(unbalanced()),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            let (byte, used) = match line.get(i + 1) {
                                Some(b'n') => (b'\n', 2),
                                Some(b'r') => (b'\r', 2),
                                Some(b't') => (b'\t', 2),
                                Some(b'x') => {
                                    let hex = line.get(i + 2..i + 4).ok_or_else(unbalanced)?;
                                    let v = std::str::from_utf8(hex)
                                        .ok()
                                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                                        .ok_or_else(unbalanced)?;
                                    (v, 4)
                                }
                                Some(&c) => (c, 2),
                                None => return Err(unbalanced()),
                            };
                            arg.push(byte);
                            i += used;
                        }
                        Some(&c) => {
                            arg.push(c);
                            i += 1;
                        }
                    }
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(unbalanced()),
                        Some(b'\'') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            arg.push(c);
                            i += 1;
                        }
                    }
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        if i < line.len() && !line[i].is_ascii_whitespace() {
            return Err(unbalanced());
        }
        args.push(arg);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> Result<Option<Parsed>, ProtocolError> {
        parse_request(b, &Limits::default())
    }

    #[test]
    fn multibulk_whole_and_in_pieces() {
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
        let first = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n".len();
        let (args, used) = parse(req).unwrap().unwrap();
        assert_eq!(
            args,
            vec![b"SET".to_vec(), b"k".to_vec(), b"hello".to_vec()]
        );
        assert_eq!(used, first);
        let (args, _) = parse(&req[used..]).unwrap().unwrap();
        assert_eq!(args, vec![b"PING".to_vec()]);
        for cut in 0..first {
            assert_eq!(parse(&req[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn binary_safe_bulks_and_empty_requests() {
        let (args, _) = parse(b"*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(args[1], b"a\r\nb");
        assert_eq!(parse(b"*0\r\n").unwrap(), Some((vec![], 4)));
        assert_eq!(parse(b"*-1\r\n").unwrap(), Some((vec![], 5)));
    }

    #[test]
    fn malformed_frames_are_protocol_errors() {
        for bad in [
            &b"*x\r\n"[..],
            b"*2\r\n$3\r\nGET\r\n:1\r\n",
            b"*1\r\n*1\r\n$4\r\nPING\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$abc\r\n",
            b"*1\r\n$3\r\nGETXX",
            b"*99999999999999999999999\r\n",
            b"*1\r\n$99999999999\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let small = Limits {
            args_max: 2,
            bulk_bytes_max: 4,
            inline_bytes_max: 8,
        };
        assert!(parse_request(b"*3\r\n", &small).is_err());
        assert!(parse_request(b"*1\r\n$5\r\n", &small).is_err());
        assert!(parse_request(b"PING PING PING", &small).is_err());
        assert!(parse_request(b"*1\r\n$999999999999999999999999\r\n", &small).is_err());
        // A header line without its CRLF is bounded too.
        assert!(parse(&[b'*'; 100]).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_at_the_first_level() {
        let mut deep = Vec::new();
        for _ in 0..100_000 {
            deep.extend_from_slice(b"*1\r\n");
        }
        assert!(parse(&deep).is_err());
    }

    #[test]
    fn inline_commands() {
        let (args, used) = parse(b"SET k \"a b\\x41\" 'c d'\r\nPING\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            args,
            vec![
                b"SET".to_vec(),
                b"k".to_vec(),
                b"a bA".to_vec(),
                b"c d".to_vec()
            ]
        );
        assert_eq!(used, 23);
        assert_eq!(parse(b"PING").unwrap(), None);
        assert_eq!(parse(b"\r\n").unwrap(), Some((vec![], 2)));
        assert!(parse(b"GET \"k\r\n").is_err());
        assert!(parse(b"GET \"k\"x\r\n").is_err());
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic fuzz pass (the cargo-fuzz target in fuzz/ goes further).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let alphabet = b"*$:+-\r\n0123456789-abcPING";
        for _ in 0..20_000 {
            let len = (x % 64) as usize;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                buf.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            if let Ok(Some((_, used))) = parse(&buf) {
                assert!(used <= buf.len() && used > 0);
            }
        }
    }
}
