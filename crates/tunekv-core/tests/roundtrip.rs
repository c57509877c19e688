//! Property tests: everything the cluster hands a client and takes back decodes to what it
//! encoded — session tokens, bearer tokens, sealed texts, receipt positions — and any altered
//! byte is refused (the fuzz targets in `fuzzing` cover arbitrary input; these cover every
//! valid one).

use proptest::prelude::*;
use tunekv_core::auth::{self, Claims};
use tunekv_core::ids::{GroupId, LogIndex, ShardId};
use tunekv_core::position::Position;
use tunekv_core::session::{Session, SessionKey};

fn key() -> SessionKey {
    SessionKey::new(b"property-test-cluster-secret-000").expect("secret")
}

/// What a session can record.
#[derive(Clone, Debug)]
enum Saw {
    Wrote(u64, u64),
    Read(u64, u64),
    Leaderless(u64, u64, (u64, u64), bool),
    Dots(u64, u64, u64, Vec<(u64, u64)>),
}

fn saw() -> impl Strategy<Value = Saw> {
    prop_oneof![
        (0..12u64, any::<u64>()).prop_map(|(g, i)| Saw::Wrote(g, i)),
        (0..12u64, any::<u64>()).prop_map(|(g, i)| Saw::Read(g, i)),
        (1..6u64, any::<u64>(), any::<(u64, u64)>(), any::<bool>())
            .prop_map(|(ks, k, v, s)| Saw::Leaderless(ks, k, v, s)),
        (
            1..6u64,
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((0..5u64, 1..1000u64), 0..4)
        )
            .prop_map(|(ks, k, stamp, dots)| Saw::Dots(ks, k, stamp, dots)),
    ]
}

fn session_of(events: &[Saw]) -> Session {
    let mut s = Session::new();
    for e in events {
        match e {
            Saw::Wrote(g, i) if s.admit(GroupId(*g)).is_ok() => s.wrote(GroupId(*g), LogIndex(*i)),
            Saw::Read(g, i) if s.admit(GroupId(*g)).is_ok() => s.read(GroupId(*g), LogIndex(*i)),
            Saw::Leaderless(ks, k, v, sloppy) if s.admit_leaderless(*ks).is_ok() => {
                s.saw_leaderless(*ks, *k, *v, *sloppy)
            }
            Saw::Dots(ks, k, stamp, dots) if s.admit_leaderless(*ks).is_ok() => {
                s.saw_dots(*ks, *k, *stamp, dots.iter().copied())
            }
            _ => {}
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn session_tokens_round_trip(events in proptest::collection::vec(saw(), 0..40)) {
        let key = key();
        let session = session_of(&events);
        let token = key.encode(&session);
        prop_assert_eq!(key.decode(&token).expect("decodes"), session.clone());
        // Merging a token's session into an empty one gives it back.
        let mut merged = Session::new();
        merged.merge(&key.decode_all([token.as_str()]).expect("decodes"));
        prop_assert_eq!(merged, session);
    }

    #[test]
    fn altered_session_tokens_are_refused(
        events in proptest::collection::vec(saw(), 1..10),
        at in any::<prop::sample::Index>(),
        to in 0..16u8,
    ) {
        let key = key();
        let token = key.encode(&session_of(&events));
        let i = at.index(token.len());
        let digit = char::from_digit(u32::from(to), 16).expect("hex digit");
        prop_assume!(token.as_bytes()[i] != digit as u8);
        let mut altered = token.clone().into_bytes();
        altered[i] = digit as u8;
        let altered = String::from_utf8(altered).expect("ascii");
        prop_assert!(key.decode(&altered).is_err());
    }

    #[test]
    fn bearer_tokens_round_trip(
        user in "[a-z][a-z0-9_.-]{0,40}",
        epoch in any::<u64>(),
        expires_ms in 1..u64::MAX,
    ) {
        let key = key();
        let claims = Claims { user, epoch, expires_ms };
        let token = auth::issue_token(&key, &claims);
        prop_assert_eq!(auth::open_token(&key, &token, 0).expect("opens"), claims.clone());
        // Expired at its expiry; another cluster's key never opens it.
        prop_assert!(auth::open_token(&key, &token, expires_ms).is_err());
        let other = SessionKey::new(b"another-cluster-secret-000000000").expect("secret");
        prop_assert!(auth::open_token(&other, &token, 0).is_err());
    }

    #[test]
    fn sealed_texts_round_trip_and_keep_their_domain(
        domain in proptest::collection::vec(any::<u8>(), 1..32),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let key = key();
        let text = key.seal(&domain, &body);
        prop_assert_eq!(key.open(&domain, &text, 1 << 16).expect("opens"), body);
        let mut other = domain.clone();
        other.push(0);
        prop_assert!(key.open(&other, &text, 1 << 16).is_err());
    }

    #[test]
    fn positions_round_trip(shard in any::<u32>(), index in any::<u64>(), commit_ms in any::<u64>()) {
        let p = Position { shard: ShardId(shard), index: LogIndex(index), commit_ms };
        prop_assert_eq!(Position::parse(&p.to_string()), Some(p));
    }
}
