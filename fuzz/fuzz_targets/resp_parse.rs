//! Feeds arbitrary bytes to the RESP request parser: it must never panic, never claim more
//! bytes than it was given, always make progress on a parsed request, and give the same
//! requests when the bytes arrive in pieces as when they arrive at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunekv_resp::parse::{parse_request, Limits, ProtocolError, RequestParser};

/// Every request `data` holds, fed in pieces of `piece` bytes to one parser.
fn in_pieces(
    data: &[u8],
    limits: Limits,
    piece: usize,
) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
    let mut parser = RequestParser::new(limits);
    let mut requests = Vec::new();
    for chunk in data.chunks(piece) {
        let mut rest = chunk;
        while let Some(args) = parser.parse(&mut rest)? {
            requests.push(args);
        }
        assert!(rest.is_empty());
    }
    // Each byte is looked at once.
    assert_eq!(parser.examined_bytes(), data.len() as u64);
    Ok(requests)
}

fuzz_target!(|data: &[u8]| {
    // Small limits reach the limit checks quickly.
    let small = Limits {
        args_max: 64,
        bulk_bytes_max: 1024,
        inline_bytes_max: 256,
        request_bytes_max: 2048,
    };
    for limits in [small, Limits::default()] {
        let mut rest = data;
        let mut whole = Vec::new();
        while let Ok(Some((args, used))) = parse_request(rest, &limits) {
            assert!(used > 0 && used <= rest.len());
            assert!(args.len() <= limits.args_max);
            assert!(args
                .iter()
                .all(|a| a.len() <= limits.bulk_bytes_max.max(limits.inline_bytes_max)));
            assert!(used <= limits.request_bytes_max);
            whole.push(args);
            rest = &rest[used..];
        }
        // The first byte picks the piece size, so the fuzzer explores splits too.
        let piece = data.first().map_or(1, |&b| usize::from(b % 16) + 1);
        // The same requests in order, and an error in pieces exactly when the bytes after
        // the last whole request are one.
        let tail_failed = parse_request(rest, &limits).is_err();
        match in_pieces(data, limits, piece) {
            Ok(split) => {
                assert!(!tail_failed);
                assert_eq!(split, whole);
            }
            Err(_) => assert!(tail_failed),
        }
    }
});
