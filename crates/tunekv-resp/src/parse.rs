//! The request parser: RESP multibulk (`*N\r\n$len\r\n…\r\n`…) and inline commands.
//!
//! It is iterative, bounded and incremental. A request is a flat array of bulk strings, so
//! nothing nests (an array inside a request is a protocol error, as in Redis). The argument
//! count, each bulk's size, an inline line's length and the request's total size are capped
//! before anything is allocated for them: a request whose declared sizes exceed
//! [`Limits::request_bytes_max`] is refused at the header that declares them, before its bytes
//! arrive. A [`RequestParser`] keeps its place between reads and moves every byte it is given
//! into the request being built, so each byte is consumed once however the bytes are split
//! ([`RequestParser::examined_bytes`] counts them). A request that is whole in the buffer (the
//! common case) is parsed straight from it; the bytes of one that is not are scanned at most
//! once more, by the byte-by-byte path.

/// Caps on one request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most arguments in one request.
    pub args_max: usize,
    /// Largest bulk string (one argument).
    pub bulk_bytes_max: usize,
    /// Longest inline command line.
    pub inline_bytes_max: usize,
    /// Largest request, counted as sent: every header, argument and CRLF (the node config's
    /// `resp_request_bytes_max`). A pipeline of many requests is not limited by it.
    pub request_bytes_max: usize,
}

/// Default [`Limits::request_bytes_max`]: twice the largest value a keyspace may allow, so a
/// SET of the largest value (with its key and options) fits with room to spare, while one
/// connection can hold at most 32 MiB of unfinished request.
pub const REQUEST_BYTES_MAX_DEFAULT: usize =
    2 * tunekv_core::limits::VALUE_BYTES_MAX_CEILING as usize;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            args_max: 1024 * 1024,
            bulk_bytes_max: tunekv_core::limits::VALUE_BYTES_MAX_CEILING as usize + 1024,
            inline_bytes_max: 64 * 1024,
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
        }
    }
}

// The largest value, with its key and command around it, must fit in one default request.
const _: () = assert!(
    REQUEST_BYTES_MAX_DEFAULT
        >= tunekv_core::limits::VALUE_BYTES_MAX_CEILING as usize + 2 * 1024 + 64 * 1024
);

/// Longest `*N` or `$len` line, without its CRLF.
const HEADER_LINE_BYTES_MAX: usize = 32;
/// Fewest bytes an argument takes on the wire: `$0\r\n\r\n`.
const ARG_WIRE_BYTES_MIN: usize = 6;
/// Most argument slots reserved on a `*N` header before the arguments arrive.
const ARGS_RESERVED_MAX: usize = 1024;
/// Most bytes reserved for an argument on its `$len` header, before its body arrives; the
/// buffer then doubles as bytes come, up to the declared length.
const ARG_RESERVED_BYTES_MAX: usize = 4096;
/// Capacity of the line buffer kept between requests; a larger one (after a long inline
/// line) is freed.
const LINE_KEPT_BYTES_MAX: usize = 1024;

/// A protocol error: the connection is answered `-ERR Protocol error: …` and closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

fn protocol(msg: impl Into<String>) -> ProtocolError {
    ProtocolError(msg.into())
}

/// One parsed request: its arguments, and how many bytes of the buffer it used.
pub type Parsed = (Vec<Vec<u8>>, usize);

/// Parses the request at the front of `buf` in one go (a fresh [`RequestParser`]). `Ok(None)`:
/// more bytes are needed. An empty request (`*0`, `*-1`, a blank inline line) parses as zero
/// arguments, which callers skip. A connection uses one `RequestParser` instead, so bytes
/// already seen are not parsed again when more arrive.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<Parsed>, ProtocolError> {
    let mut parser = RequestParser::new(*limits);
    let mut rest = buf;
    Ok(parser
        .parse(&mut rest)?
        .map(|args| (args, buf.len() - rest.len())))
}

/// Where a [`RequestParser`] is inside the current request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Between requests.
    Idle,
    /// An inline line; its bytes so far are in `line`.
    Inline,
    /// The count line after `*`; its bytes so far are in `line`.
    Count,
    /// Before the `$` of the next argument.
    Dollar,
    /// The length line after `$`; its bytes so far are in `line`.
    BulkLen,
    /// The current argument's body, `left` bytes to go.
    Body { left: usize },
    /// The CRLF after a body; `cr`: its `\r` was seen.
    BodyEnd { cr: bool },
}

/// A connection's request parser: it keeps the unfinished request between reads, so parsing
/// costs time linear in the bytes received however they are split.
#[derive(Debug)]
pub struct RequestParser {
    limits: Limits,
    state: State,
    /// Arguments of the current multibulk request still to come, the current one included.
    expected: usize,
    /// The current request's complete arguments.
    args: Vec<Vec<u8>>,
    /// Heap bytes of `args`' elements.
    args_heap_bytes: usize,
    /// The argument whose body is arriving.
    arg: Vec<u8>,
    /// The header or inline line being read.
    line: Vec<u8>,
    /// Bytes of the current request consumed so far.
    request_bytes: usize,
    /// Every byte ever looked at (see [`RequestParser::examined_bytes`]).
    examined_bytes: u64,
    /// The error that stopped this parser; it answers with it from then on.
    failed: Option<ProtocolError>,
}

impl RequestParser {
    pub fn new(limits: Limits) -> RequestParser {
        RequestParser {
            limits,
            state: State::Idle,
            expected: 0,
            args: Vec::new(),
            args_heap_bytes: 0,
            arg: Vec::new(),
            line: Vec::new(),
            request_bytes: 0,
            examined_bytes: 0,
            failed: None,
        }
    }

    /// Consumes bytes from the front of `buf` (advancing it) until one request is complete,
    /// and returns its arguments; `Ok(None)` when `buf` is used up first (the unfinished request
    /// is kept for the next call). An empty request (`*0`, `*-1`, a blank inline line) is zero
    /// arguments, which callers skip. After an error the connection must be closed: the parser
    /// answers every later call with the same error.
    pub fn parse(&mut self, buf: &mut &[u8]) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let parsed = self.run(buf);
        if let Err(e) = &parsed {
            *self = RequestParser {
                failed: Some(e.clone()),
                examined_bytes: self.examined_bytes,
                ..RequestParser::new(self.limits)
            };
        }
        parsed
    }

    /// Heap bytes the unfinished request holds (its arguments so far and the partial line);
    /// zero between requests. The server charges them to the budget all connections share.
    pub fn pending_bytes(&self) -> usize {
        if self.state == State::Idle {
            return 0;
        }
        self.args_heap_bytes
            + self.args.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.arg.capacity()
            + self.line.capacity()
    }

    /// Whether a request has begun and not ended: some of its bytes arrived.
    pub fn in_request(&self) -> bool {
        self.state != State::Idle
    }

    /// Bytes this parser has looked at since it was made. Each byte it is given is looked at
    /// once, so this equals the bytes consumed: a cheap check that parsing stays linear in the
    /// input however it is split.
    pub fn examined_bytes(&self) -> u64 {
        self.examined_bytes
    }

    fn run(&mut self, buf: &mut &[u8]) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        loop {
            let Some(&first) = buf.first() else {
                return Ok(None);
            };
            match self.state {
                State::Idle if first == b'*' => {
                    if let Some(args) = self.whole(buf) {
                        return Ok(Some(args));
                    }
                    self.consume(buf, 1);
                    self.state = State::Count;
                }
                State::Idle => self.state = State::Inline,
                State::Inline => {
                    if let Some(args) = self.inline(buf)? {
                        return Ok(Some(self.finish(args)));
                    }
                }
                State::Count => {
                    if !self.header_line(buf)? {
                        continue;
                    }
                    let count =
                        number(&self.line).ok_or_else(|| protocol("invalid multibulk length"))?;
                    self.line.clear();
                    if count <= 0 {
                        return Ok(Some(self.finish(Vec::new())));
                    }
                    let count = usize::try_from(count)
                        .ok()
                        .filter(|&c| c <= self.limits.args_max)
                        .ok_or_else(|| protocol("invalid multibulk length"))?;
                    let declared = self
                        .request_bytes
                        .saturating_add(count.saturating_mul(ARG_WIRE_BYTES_MIN));
                    self.check_declared(declared)?;
                    self.expected = count;
                    self.args = Vec::with_capacity(count.min(ARGS_RESERVED_MAX));
                    self.state = State::Dollar;
                }
                State::Dollar => {
                    if first != b'$' {
                        return Err(protocol(format!(
                            "expected '$', got '{}'",
                            char::from(first).escape_default()
                        )));
                    }
                    self.consume(buf, 1);
                    self.state = State::BulkLen;
                }
                State::BulkLen => {
                    if !self.header_line(buf)? {
                        continue;
                    }
                    let len = number(&self.line)
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|&n| n <= self.limits.bulk_bytes_max)
                        .ok_or_else(|| protocol("invalid bulk length"))?;
                    self.line.clear();
                    // This argument's body and CRLF, and the smallest the others can be.
                    let declared = self
                        .request_bytes
                        .saturating_add(len)
                        .saturating_add(2)
                        .saturating_add((self.expected - 1).saturating_mul(ARG_WIRE_BYTES_MIN));
                    self.check_declared(declared)?;
                    self.arg = Vec::with_capacity(len.min(ARG_RESERVED_BYTES_MAX));
                    self.state = if len == 0 {
                        State::BodyEnd { cr: false }
                    } else {
                        State::Body { left: len }
                    };
                }
                State::Body { left } => {
                    let n = left.min(buf.len());
                    let wanted = self.arg.len() + left;
                    if self.arg.len() + n > self.arg.capacity() {
                        // Double, as a Vec would, but never beyond the declared length.
                        let to = (self.arg.capacity() * 2)
                            .max(self.arg.len() + n)
                            .min(wanted);
                        self.arg.reserve_exact(to - self.arg.len());
                    }
                    self.arg.extend_from_slice(&buf[..n]);
                    self.consume(buf, n);
                    self.state = if left == n {
                        State::BodyEnd { cr: false }
                    } else {
                        State::Body { left: left - n }
                    };
                }
                State::BodyEnd { cr } => {
                    self.consume(buf, 1);
                    match (cr, first) {
                        (false, b'\r') => self.state = State::BodyEnd { cr: true },
                        (true, b'\n') => {
                            let arg = std::mem::take(&mut self.arg);
                            self.args_heap_bytes += arg.capacity();
                            self.args.push(arg);
                            self.expected -= 1;
                            if self.expected == 0 {
                                let args = std::mem::take(&mut self.args);
                                return Ok(Some(self.finish(args)));
                            }
                            self.state = State::Dollar;
                        }
                        _ => return Err(protocol("bulk string not terminated by CRLF")),
                    }
                }
            }
        }
    }

    /// The common case: a whole multibulk request at the front of `buf`, parsed straight from
    /// it (no byte goes through `line`, each argument is allocated once at its size). `None`,
    /// with nothing consumed, for anything else: an unfinished request, or one the
    /// byte-by-byte path must judge (odd syntax, a limit reached), which then parses it. It
    /// takes only requests that path would take, with the same arguments.
    fn whole(&mut self, buf: &mut &[u8]) -> Option<Vec<Vec<u8>>> {
        let b: &[u8] = buf;
        let (count, mut at) = header_number(b, 1)?;
        if count == 0 || count > self.limits.args_max || count > ARGS_RESERVED_MAX {
            return None;
        }
        let mut spans = [(0usize, 0usize); 8];
        let mut many = Vec::new();
        for i in 0..count {
            if b.get(at) != Some(&b'$') {
                return None;
            }
            let (len, body) = header_number(b, at + 1)?;
            if len > self.limits.bulk_bytes_max {
                return None;
            }
            let end = body.checked_add(len)?;
            if b.get(end..end.checked_add(2)?) != Some(b"\r\n".as_slice()) {
                return None;
            }
            at = end + 2;
            if at > self.limits.request_bytes_max {
                return None;
            }
            if count <= spans.len() {
                spans[i] = (body, end);
            } else {
                many.push((body, end));
            }
        }
        let spans = if count <= spans.len() {
            &spans[..count]
        } else {
            &many[..]
        };
        let args = spans
            .iter()
            .map(|&(from, to)| b[from..to].to_vec())
            .collect();
        self.consume(buf, at);
        Some(self.finish(args))
    }

    /// Moves `n` bytes of `buf`, already looked at, into the current request.
    fn consume(&mut self, buf: &mut &[u8], n: usize) {
        *buf = &buf[n..];
        self.examined_bytes += n as u64;
        self.request_bytes += n;
    }

    /// Reads a `*N`/`$len` line into `line` up to its CRLF (kept out); true when complete.
    fn header_line(&mut self, buf: &mut &[u8]) -> Result<bool, ProtocolError> {
        while let Some(&b) = buf.first() {
            self.consume(buf, 1);
            if b == b'\n' && self.line.last() == Some(&b'\r') {
                self.line.pop();
                self.check_received()?;
                return Ok(true);
            }
            self.line.push(b);
            // Room for the longest line and the `\r` of its CRLF.
            if self.line.len() > HEADER_LINE_BYTES_MAX + usize::from(b == b'\r') {
                return Err(protocol("line too long"));
            }
        }
        self.check_received()?;
        Ok(false)
    }

    /// Reads an inline line into `line`, searching only bytes not searched before; its
    /// arguments once its `\n` has come.
    fn inline(&mut self, buf: &mut &[u8]) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        // The line may hold `inline_bytes_max` bytes; the one after must be its `\n`.
        let room = (self.limits.inline_bytes_max + 1).saturating_sub(self.line.len());
        let window = &buf[..buf.len().min(room)];
        let newline = window.iter().position(|&b| b == b'\n');
        let taken = newline.map_or(window.len(), |at| at + 1);
        self.line
            .extend_from_slice(&window[..newline.unwrap_or(taken)]);
        self.consume(buf, taken);
        if newline.is_none() && self.line.len() > self.limits.inline_bytes_max {
            return Err(protocol("too big inline request"));
        }
        self.check_received()?;
        if newline.is_none() {
            return Ok(None);
        }
        let text = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let args = split_inline(text)?;
        if args.len() > self.limits.args_max {
            return Err(protocol("invalid multibulk length"));
        }
        Ok(Some(args))
    }

    /// Ends the current request, returning its arguments.
    fn finish(&mut self, args: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        self.state = State::Idle;
        self.expected = 0;
        self.args_heap_bytes = 0;
        self.request_bytes = 0;
        self.line.clear();
        if self.line.capacity() > LINE_KEPT_BYTES_MAX {
            self.line = Vec::new();
        }
        args
    }

    fn check_received(&self) -> Result<(), ProtocolError> {
        self.check_declared(self.request_bytes)
    }

    /// Refuses the request once what it has declared (or sent) exceeds the request cap.
    fn check_declared(&self, declared: usize) -> Result<(), ProtocolError> {
        if declared <= self.limits.request_bytes_max {
            return Ok(());
        }
        Err(protocol(format!(
            "request exceeds {} bytes (resp_request_bytes_max): {} received, at least {} declared",
            self.limits.request_bytes_max, self.request_bytes, declared
        )))
    }
}

/// Decimal digits from `b[from..]` up to a CRLF, for [`RequestParser::whole`]: the number and
/// where its line ends. `None` unless 1 to 18 plain digits are followed by CRLF.
fn header_number(b: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut n = 0usize;
    let mut i = from;
    while let Some(&d) = b.get(i).filter(|d| d.is_ascii_digit()) {
        if i - from == 18 {
            return None;
        }
        n = n * 10 + usize::from(d - b'0');
        i += 1;
    }
    if i == from || b.get(i..i + 2) != Some(b"\r\n".as_slice()) {
        return None;
    }
    Some((n, i + 2))
}

fn number(digits: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(digits).ok()?;
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.parse().ok()
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
            request_bytes_max: 1024,
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

    /// Feeds `bytes` to one parser in pieces of the given sizes (cycled), collecting every
    /// request; stops at the first error.
    fn feed(
        parser: &mut RequestParser,
        bytes: &[u8],
        pieces: &[usize],
    ) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut requests = Vec::new();
        let mut at = 0;
        for &size in pieces.iter().cycle() {
            if at == bytes.len() {
                break;
            }
            let end = (at + size).min(bytes.len());
            let mut rest = &bytes[at..end];
            while let Some(args) = parser.parse(&mut rest)? {
                requests.push(args);
            }
            at = end;
        }
        Ok(requests)
    }

    /// A multibulk request of `n` arguments of assorted sizes, some holding CRLF.
    fn big_request(n: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let args: Vec<Vec<u8>> = (0..n)
            .map(|i| match i % 4 {
                0 => b"MSET".to_vec(),
                1 => format!("key-{i}").into_bytes(),
                2 => vec![b'\r', b'\n', (i % 251) as u8],
                _ => vec![b'v'; i % 97],
            })
            .collect();
        let mut wire = format!("*{n}\r\n").into_bytes();
        for a in &args {
            wire.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            wire.extend_from_slice(a);
            wire.extend_from_slice(b"\r\n");
        }
        (wire, args)
    }

    #[test]
    fn dripping_a_large_request_gives_what_feeding_it_at_once_gives() {
        // A connection used to re-parse its whole pending request on every read.
        let (mut wire, args) = big_request(20_000);
        wire.extend_from_slice(b"*0\r\nSET k \"a b\"\r\n*-1\r\n*1\r\n$4\r\nPING\r\n");
        let expected = vec![
            args,
            vec![],
            vec![b"SET".to_vec(), b"k".to_vec(), b"a b".to_vec()],
            vec![],
            vec![b"PING".to_vec()],
        ];
        let mut whole = RequestParser::new(Limits::default());
        assert_eq!(feed(&mut whole, &wire, &[wire.len()]).unwrap(), expected);
        for pieces in [&[1][..], &[2, 3, 5, 7], &[4096, 1, 13]] {
            let mut parser = RequestParser::new(Limits::default());
            let got = feed(&mut parser, &wire, pieces).unwrap();
            assert_eq!(got, expected, "pieces {pieces:?}");
            assert_eq!(parser.pending_bytes(), 0);
            assert_eq!(parser.examined_bytes(), wire.len() as u64);
        }
    }

    #[test]
    fn whole_requests_parse_as_dripped_ones_do() {
        // The fast path (a whole request in the buffer) must take exactly what the
        // byte-by-byte path takes, with the same arguments, and leave the rest to it.
        let mut wires: Vec<Vec<u8>> = vec![
            b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n".to_vec(),
            b"*1\r\n$0\r\n\r\n".to_vec(),
            b"*2\r\n$03\r\nGET\r\n$1\r\nk\r\n".to_vec(),
            b"*+2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec(),
            b"*2\r\n$+3\r\nGET\r\n$1\r\nk\r\n".to_vec(),
            b"*02\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec(),
            b"*0\r\n".to_vec(),
            b"*-1\r\n".to_vec(),
            b"*1\r\n$3\r\nGETX\r\n".to_vec(),
            b"*1\r\n$3\r\nGET\n\n".to_vec(),
            b"*1\r\n:3\r\n".to_vec(),
            b"*1\n$3\r\nGET\r\n".to_vec(),
            b"*1\r\n$3\rGET\r\n".to_vec(),
            b"*1\r\n$\r\nGET\r\n".to_vec(),
            b"*1\r\n$0000000000000000000003\r\nGET\r\n".to_vec(),
            b"*1\r\n$99999999999999999999\r\n".to_vec(),
        ];
        for n in [1, 7, 8, 9, 30, 1024, 1025] {
            wires.push(big_request(n).0);
        }
        let tight = Limits {
            args_max: 8,
            bulk_bytes_max: 50,
            inline_bytes_max: 64,
            request_bytes_max: 400,
        };
        for limits in [Limits::default(), tight] {
            for wire in &wires {
                let mut pipelined = wire.clone();
                pipelined.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
                for bytes in [wire, &pipelined] {
                    let at_once = feed(&mut RequestParser::new(limits), bytes, &[bytes.len()]);
                    let mut dripped_parser = RequestParser::new(limits);
                    let dripped = feed(&mut dripped_parser, bytes, &[1]);
                    let what = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]);
                    match (&at_once, &dripped) {
                        (Ok(a), Ok(d)) => assert_eq!(a, d, "{what}"),
                        (Err(_), Err(_)) => {}
                        _ => panic!("{what}: at once {at_once:?}, dripped {dripped:?}"),
                    }
                }
            }
        }
        // Several whole requests in one buffer, then an unfinished one, then its end.
        let mut parser = RequestParser::new(Limits::default());
        let mut rest: &[u8] = b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n*2\r\n$3\r\nGET";
        assert_eq!(
            parser.parse(&mut rest).unwrap(),
            Some(vec![b"PING".to_vec()])
        );
        assert_eq!(
            parser.parse(&mut rest).unwrap(),
            Some(vec![b"GET".to_vec(), b"a".to_vec()])
        );
        assert_eq!(parser.parse(&mut rest).unwrap(), None);
        assert!(rest.is_empty() && parser.in_request());
        let mut rest: &[u8] = b"\r\n$1\r\nb\r\n";
        assert_eq!(
            parser.parse(&mut rest).unwrap(),
            Some(vec![b"GET".to_vec(), b"b".to_vec()])
        );
        assert_eq!(parser.examined_bytes(), 45 + 9);
    }

    #[test]
    fn dripping_costs_work_linear_in_the_bytes() {
        // With a 1M-argument request pending, each byte re-parsed all of it (a core at 100%).
        let (wire, _) = big_request(100_000);
        let mut parser = RequestParser::new(Limits::default());
        let mut done = 0;
        for i in 0..wire.len() {
            let mut rest = &wire[i..i + 1];
            if parser.parse(&mut rest).unwrap().is_some() {
                done += 1;
            }
            assert!(rest.is_empty());
            assert!(parser.examined_bytes() <= 2 * (i as u64 + 1), "at byte {i}");
        }
        assert_eq!(done, 1);
        // An inline line dripped is searched once too.
        let mut line = vec![b'x'; 60_000];
        line.extend_from_slice(b"\r\n");
        let mut parser = RequestParser::new(Limits::default());
        let got = feed(&mut parser, &line, &[1]).unwrap();
        assert_eq!(got, vec![vec![vec![b'x'; 60_000]]]);
        assert!(parser.examined_bytes() <= 2 * line.len() as u64);
        // The long line's buffer is not kept once its request is done.
        assert!(parser.line.capacity() <= LINE_KEPT_BYTES_MAX);
    }

    #[test]
    fn oversized_requests_are_refused_before_their_bytes_arrive() {
        // `*1000000` and bulks of 1 MiB were buffered until memory ran out.
        let limits = Limits {
            request_bytes_max: 4 * 1024 * 1024,
            ..Limits::default()
        };
        // Declared by the count: a million arguments take at least 6 MB.
        let mut parser = RequestParser::new(limits);
        let err = parser.parse(&mut &b"*1000000\r\n"[..]).unwrap_err();
        assert!(
            err.0
                .contains("request exceeds 4194304 bytes (resp_request_bytes_max)"),
            "{}",
            err.0
        );
        // The same error from then on.
        assert_eq!(parser.parse(&mut &b"*1\r\n"[..]).unwrap_err(), err);
        // Declared by a bulk header: refused at the header, nothing of the body held.
        let mut parser = RequestParser::new(limits);
        let mut wire = b"*10\r\n".to_vec();
        let bulk = vec![b'v'; 1024 * 1024];
        let mut refused_at = None;
        for i in 0..10 {
            wire.extend_from_slice(format!("${}\r\n", bulk.len()).as_bytes());
            let mut rest = &wire[..];
            match parser.parse(&mut rest) {
                Ok(None) => {}
                Ok(Some(_)) => panic!("a request over the cap completed"),
                Err(e) => {
                    refused_at = Some((i, e));
                    break;
                }
            }
            assert!(parser.pending_bytes() <= 2 * limits.request_bytes_max);
            wire.clear();
            wire.extend_from_slice(&bulk);
            wire.extend_from_slice(b"\r\n");
            let mut rest = &wire[..];
            assert_eq!(parser.parse(&mut rest).unwrap(), None);
            wire.clear();
        }
        let (i, err) = refused_at.expect("refused");
        assert_eq!(i, 3, "three 1 MiB bulks fit in 4 MiB, the fourth does not");
        assert!(err.0.contains("exceeds 4194304 bytes"), "{}", err.0);
        assert_eq!(
            parser.pending_bytes(),
            0,
            "the refused request's memory is freed"
        );
        // Received: long headers on small bulks run past the cap the declarations stayed under.
        let limits = Limits {
            request_bytes_max: 1000,
            ..Limits::default()
        };
        let mut parser = RequestParser::new(limits);
        let mut wire = b"*100\r\n".to_vec();
        for _ in 0..100 {
            wire.extend_from_slice(b"$00000000000000000001\r\nx\r\n");
        }
        let mut rest = &wire[..];
        let err = parser.parse(&mut rest).unwrap_err();
        assert!(err.0.contains("exceeds 1000 bytes"), "{}", err.0);
        let consumed = wire.len() - rest.len();
        assert!(
            consumed <= 1000 + HEADER_LINE_BYTES_MAX + 2,
            "consumed {consumed}"
        );
        // An inline line counts too.
        let tiny = Limits {
            request_bytes_max: 16,
            ..Limits::default()
        };
        assert!(parse_request(b"SET key a-long-value\r\n", &tiny).is_err());
        assert!(parse_request(b"GET key\r\n", &tiny).unwrap().is_some());
    }

    #[test]
    fn a_pipeline_is_not_one_request() {
        // Many requests larger together than the cap each pass alone.
        let limits = Limits {
            request_bytes_max: 64,
            ..Limits::default()
        };
        let mut wire = Vec::new();
        for i in 0..1000 {
            wire.extend_from_slice(
                format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n{i:04}\r\n").as_bytes(),
            );
        }
        let mut parser = RequestParser::new(limits);
        let got = feed(&mut parser, &wire, &[wire.len()]).unwrap();
        assert_eq!(got.len(), 1000);
        assert_eq!(got[999][2], b"0999");
    }

    #[test]
    fn pending_bytes_follow_the_unfinished_request() {
        let mut parser = RequestParser::new(Limits::default());
        assert_eq!(parser.pending_bytes(), 0);
        let mut rest = &b"*2\r\n$3\r\nGET\r\n$100000\r\n"[..];
        assert_eq!(parser.parse(&mut rest).unwrap(), None);
        let header = parser.pending_bytes();
        assert!(
            header > 0 && header < 2 * ARG_RESERVED_BYTES_MAX,
            "{header}"
        );
        let body = vec![b'v'; 50_000];
        assert_eq!(parser.parse(&mut &body[..]).unwrap(), None);
        let half = parser.pending_bytes();
        // What the request holds grows with what it received, never to the declared size
        // ahead of it, and never beyond twice what came.
        assert!(
            (50_000..=2 * 50_000 + 2 * ARG_RESERVED_BYTES_MAX).contains(&half),
            "{half}"
        );
        assert_eq!(parser.parse(&mut &body[..]).unwrap(), None);
        let got = parser.parse(&mut &b"\r\n"[..]).unwrap().unwrap();
        assert_eq!(got[1].len(), 100_000);
        assert_eq!(
            got[1].capacity(),
            100_000,
            "no slack beyond the declared length"
        );
        assert_eq!(parser.pending_bytes(), 0);
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
            // Split anyhow, the bytes give the same requests, or an error both ways.
            let small = Limits {
                args_max: 4,
                bulk_bytes_max: 8,
                inline_bytes_max: 16,
                request_bytes_max: 40,
            };
            for limits in [Limits::default(), small] {
                let whole = feed(&mut RequestParser::new(limits), &buf, &[buf.len().max(1)]);
                let pieces = [(x % 5) as usize + 1, 1];
                let split = feed(&mut RequestParser::new(limits), &buf, &pieces);
                match (whole, split) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "{:?}", String::from_utf8_lossy(&buf)),
                    (Err(_), Err(_)) => {}
                    (a, b) => panic!("{:?}: {a:?} vs {b:?}", String::from_utf8_lossy(&buf)),
                }
            }
        }
    }
}
