//! Fuzz targets for what clients send that the cluster signs (session tokens, bearer tokens,
//! sealed texts), and a small deterministic mutator that runs any target for a bounded number
//! of inputs in a unit test. The cargo-fuzz targets in `fuzz/` call the same functions for as
//! long as one likes (`scripts/fuzz.sh`); CI runs the bounded runs (docs/security.md).
//!
//! A target must never panic: malformed input is a typed error. Where an input decodes, the
//! target also checks it round-trips.

use crate::auth::{self, Claims};
use crate::session::{SessionKey, DOMAIN};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The key the targets sign with (any cluster secret would do).
pub fn key() -> SessionKey {
    SessionKey::new(b"fuzzing-cluster-secret-0123456789").expect("a valid secret")
}

/// Session tokens, bearer tokens and sealed texts: `data` as the text a client sends, and as
/// the body of a token this cluster signed (so the decoders behind the signature check see
/// arbitrary bytes too, which random text never reaches).
pub fn sealed(data: &[u8]) {
    let key = key();
    let text = String::from_utf8_lossy(data);
    let _ = key.decode(&text);
    let _ = key.decode_all(text.split('\n'));
    let _ = auth::open_token(&key, &text, 0);
    let _ = key.open(b"fuzz", &text, 1 << 16);
    // Signed garbage: must be refused or decode to something that round-trips.
    if let Ok(session) = key.decode(&key.seal(DOMAIN, data)) {
        let again = key
            .decode(&key.encode(&session))
            .expect("a re-encoded session decodes");
        assert_eq!(again, session, "a session round-trips");
    }
    let token = format!(
        "{}{}",
        auth::TOKEN_PREFIX,
        key.seal(auth::TOKEN_DOMAIN, data)
    );
    if let Ok(claims) = auth::open_token(&key, &token, 0) {
        let again = auth::open_token(&key, &auth::issue_token(&key, &claims), 0)
            .expect("a re-issued token opens");
        assert_eq!(again, claims, "claims round-trip");
    }
    // Any user name the cluster accepts makes a token that opens.
    if auth::check_name("user", &text).is_ok() {
        let claims = Claims {
            user: text.into_owned(),
            epoch: u64::MAX,
            expires_ms: u64::MAX,
        };
        let opened = auth::open_token(&key, &auth::issue_token(&key, &claims), 0);
        assert_eq!(opened.ok(), Some(claims), "an issued token opens");
    }
}

/// Runs `target` on each seed, then on `inputs` inputs mutated from the seeds and from each
/// other (bit flips, byte changes, insertions and removals, splices of `dictionary` words,
/// truncations), from a fixed random seed so a failure repeats. A panic names the input (hex).
pub fn run(seeds: &[&[u8]], dictionary: &[&[u8]], inputs: usize, target: impl Fn(&[u8])) {
    let mut rng = StdRng::seed_from_u64(0x7ae_c0de);
    let mut corpus: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_vec()).collect();
    if corpus.is_empty() {
        corpus.push(Vec::new());
    }
    for seed in &corpus {
        call(&target, seed);
    }
    for i in 0..inputs {
        let mut input = corpus[rng.gen_range(0..corpus.len())].clone();
        for _ in 0..rng.gen_range(1..=4) {
            mutate(&mut rng, &mut input, dictionary);
        }
        call(&target, &input);
        // Keep some inputs as parents of later ones, so mutations compound.
        if i % 16 == 0 && corpus.len() < 4096 {
            corpus.push(input);
        }
    }
}

fn call(target: &impl Fn(&[u8]), input: &[u8]) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| target(input)));
    if let Err(panic) = outcome {
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!("the fuzz target panicked on input {hex}");
        std::panic::resume_unwind(panic);
    }
}

/// Inputs stay below this many bytes.
const INPUT_BYTES_MAX: usize = 4096;

fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, dictionary: &[&[u8]]) {
    let at = |rng: &mut StdRng, len: usize| rng.gen_range(0..=len);
    match rng.gen_range(0..8) {
        0 if !input.is_empty() => {
            let i = rng.gen_range(0..input.len());
            input[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if !input.is_empty() => {
            let i = rng.gen_range(0..input.len());
            input[i] = [
                0, 0xff, b'%', b'\r', b'\n', b'/', b':', b'?', b'=', b'&', b'"',
            ][rng.gen_range(0..11)];
        }
        2 => {
            let i = at(rng, input.len());
            input.insert(i, rng.gen());
        }
        3 if !input.is_empty() => {
            let i = rng.gen_range(0..input.len());
            let n = rng.gen_range(1..=(input.len() - i).min(16));
            input.drain(i..i + n);
        }
        4 | 5 if !dictionary.is_empty() => {
            let word = dictionary[rng.gen_range(0..dictionary.len())];
            let i = at(rng, input.len());
            input.splice(i..i, word.iter().copied());
        }
        6 => input.truncate(at(rng, input.len())),
        _ => {
            // Repeat a slice: long runs of the same thing.
            if !input.is_empty() {
                let i = rng.gen_range(0..input.len());
                let n = rng.gen_range(1..=(input.len() - i).min(64));
                let piece = input[i..i + n].to_vec();
                for _ in 0..rng.gen_range(1..8) {
                    input.splice(i..i, piece.iter().copied());
                }
            }
        }
    }
    input.truncate(INPUT_BYTES_MAX);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Session;

    #[test]
    fn sealed_texts_survive_a_bounded_run() {
        let key = key();
        let session = key.encode(&Session::new());
        let token = auth::issue_token(
            &key,
            &Claims {
                user: "alice".into(),
                epoch: 3,
                expires_ms: u64::MAX,
            },
        );
        let seeds: Vec<&[u8]> = vec![session.as_bytes(), token.as_bytes(), b"tkv1.00ff", b""];
        run(&seeds, &[b"tkv1.", b"00", b"ff", b","], 20_000, sealed);
    }

    #[test]
    fn the_mutator_reaches_a_planted_bug() {
        // The bounded runs are only worth something if the mutator finds a shallow bug.
        let found = std::panic::catch_unwind(|| {
            run(&[b"GET /v1/kv/ks/k"], &[b"%"], 20_000, |d| {
                assert!(!d.windows(2).any(|w| w == b"%%"), "planted");
            })
        });
        assert!(found.is_err(), "the planted bug was not found");
    }
}
