//! Feeds arbitrary bytes to the RESP request parser: it must never panic, never claim more
//! bytes than it was given, and always make progress on a parsed request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunekv_resp::parse::{parse_request, Limits};

fuzz_target!(|data: &[u8]| {
    // Small limits reach the limit checks quickly.
    let small = Limits {
        args_max: 64,
        bulk_bytes_max: 1024,
        inline_bytes_max: 256,
    };
    for limits in [small, Limits::default()] {
        let mut rest = data;
        while let Ok(Some((args, used))) = parse_request(rest, &limits) {
            assert!(used > 0 && used <= rest.len());
            assert!(args.len() <= limits.args_max);
            assert!(args.iter().all(|a| a.len() <= limits.bulk_bytes_max.max(limits.inline_bytes_max)));
            rest = &rest[used..];
        }
    }
});
