//! The fuzz target for the sealed texts only a node opens: causal contexts (`tunekv-context`)
//! and watch cursors (`/v1/watch?from=`). As client text, and as bodies this cluster signed
//! (so the decoders behind the signature see arbitrary bytes). Bounded in a unit test here,
//! unbounded by cargo-fuzz (`fuzz/`, `scripts/fuzz.sh`).

use super::dotted::{open_context_with, CONTEXT_DOMAIN};
use super::watch::{open_cursor_body, seal_cursor, CURSOR_DOMAIN, CURSOR_LEADERLESS_DOMAIN};

const KS: u64 = 7;

pub fn contexts_and_cursors(data: &[u8]) {
    tunekv_core::fuzzing::sealed(data);
    let key = tunekv_core::fuzzing::key();
    let text = String::from_utf8_lossy(data);
    let _ = open_context_with(&key, KS, "ks", b"k", &text);
    let _ = open_cursor_body::<Vec<(u32, u64)>>(&key, KS, "ks", CURSOR_DOMAIN, &text);
    // Signed garbage: refused, or it decodes and seals back to something that decodes the same.
    let signed = key.seal(CONTEXT_DOMAIN, data);
    if let Ok(ctx) = open_context_with(&key, KS, "ks", b"k", &signed) {
        let body = (KS, tunekv_core::session::key_hash(b"k"), &ctx);
        let again = key.seal(
            CONTEXT_DOMAIN,
            &postcard::to_stdvec(&body).expect("encodes"),
        );
        let reopened = open_context_with(&key, KS, "ks", b"k", &again).expect("re-sealed opens");
        assert_eq!(reopened, ctx, "a context round-trips");
        assert!(open_context_with(&key, KS, "ks", b"other", &again).is_err());
    }
    let signed = key.seal(CURSOR_DOMAIN, data);
    if let Ok(shards) = open_cursor_body::<Vec<(u32, u64)>>(&key, KS, "ks", CURSOR_DOMAIN, &signed)
    {
        let again = seal_cursor(&key, CURSOR_DOMAIN, KS, &shards);
        let reopened: Vec<(u32, u64)> =
            open_cursor_body(&key, KS, "ks", CURSOR_DOMAIN, &again).expect("re-sealed opens");
        assert_eq!(reopened, shards, "a cursor round-trips");
        // Sealed for one kind, never accepted as another.
        assert!(open_context_with(&key, KS, "ks", b"k", &again).is_err());
    }
    let signed = key.seal(CURSOR_LEADERLESS_DOMAIN, data);
    let _ =
        open_cursor_body::<Vec<(u64, u64, u64)>>(&key, KS, "ks", CURSOR_LEADERLESS_DOMAIN, &signed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_and_cursors_survive_a_bounded_run() {
        let key = tunekv_core::fuzzing::key();
        let cursor = seal_cursor(&key, CURSOR_DOMAIN, KS, &vec![(0u32, 5u64), (1, 9)]);
        let seeds: Vec<&[u8]> = vec![
            cursor.as_bytes(),
            b"\x07\x01\x02",
            b"\x07\x00\x00\x02\x01\x05\x02\x07",
            b"",
        ];
        tunekv_core::fuzzing::run(
            &seeds,
            &[b"00", b"ff", b"\x7f", b"\x80\x80"],
            50_000,
            contexts_and_cursors,
        );
    }
}
