//! The level spectrum on a real 3-node cluster: what an isolated follower serves and refuses,
//! and consistent-prefix batch reads.

mod common;

use common::{create_keyspace, eventually, leader_and_follower, leader_of, own_replica, start};
use std::time::Duration;
use tunekv_client::{ClientError, Opts};

fn code<T>(r: Result<T, ClientError>) -> Option<String> {
    r.err().and_then(|e| e.code().map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_follower_serves_weak_levels_with_growing_staleness_and_refuses_the_rest() {
    let c = start(3, true).await;
    create_keyspace(&c.client(0), "ks", 1).await;
    let c0 = c.client(0);
    let leader = eventually(Duration::from_secs(10), "a leader", || {
        leader_of(&c0, "ks/shard0")
    })
    .await;
    let leader = c.client(leader as usize - 1);
    let follower_idx = (0..3)
        .find(|i| c.http(*i) != leader.base())
        .expect("a follower");
    let f = c.client(follower_idx);
    leader
        .put("ks", b"x", b"v0", &Opts::default())
        .await
        .expect("put");
    eventually(
        Duration::from_secs(5),
        "the follower applied v0",
        || async {
            let r = f.get("ks", b"x", &Opts::level("eventual")).await.ok()?;
            (r.value.as_deref() == Some(b"v0".as_slice())).then_some(())
        },
    )
    .await;

    f.set_isolated(true).await.expect("isolate");
    let mut token = String::new();
    for i in 1..=5 {
        token = leader
            .put("ks", b"x", format!("v{i}").as_bytes(), &Opts::default())
            .await
            .expect("put on the majority")
            .session;
    }
    // eventual and consistent_prefix: the older value, with staleness_ms growing with the silence.
    let first = f
        .get("ks", b"x", &Opts::level("eventual"))
        .await
        .expect("eventual");
    assert_eq!(first.value.as_deref(), Some(b"v0".as_slice()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = f
        .get("ks", b"x", &Opts::level("consistent_prefix"))
        .await
        .expect("consistent_prefix");
    assert_eq!(second.value.as_deref(), Some(b"v0".as_slice()));
    assert_eq!(second.receipt.level, "consistent_prefix");
    let (_, ms1) = first.receipt.staleness_parts().expect("staleness");
    let (_, ms2) = second.receipt.staleness_parts().expect("staleness");
    // (u64::MAX, "no freshness proof yet", stays there.)
    assert!(
        ms2 >= ms1.saturating_add(300),
        "staleness grows with the silence: {ms1} then {ms2}"
    );
    // Everything that needs proof of freshness is refused, never served stale.
    let budget = Opts::default().wait_ms(800);
    let strong = f
        .get(
            "ks",
            b"x",
            &Opts {
                level: Some("strong".into()),
                ..budget.clone()
            },
        )
        .await;
    assert!(matches!(
        code(strong).as_deref(),
        Some("no_quorum") | Some("timeout")
    ));
    for level in ["bounded(t=300ms)", "bounded(k=2)", "bounded(k=2,t=1s)"] {
        let r = f
            .get(
                "ks",
                b"x",
                &Opts {
                    level: Some(level.into()),
                    ..budget.clone()
                },
            )
            .await;
        assert_eq!(code(r).as_deref(), Some("staleness_bound_unmet"), "{level}");
    }
    // read_your_writes with the token of the newest write: refused, not served v0.
    let ryw = f
        .get(
            "ks",
            b"x",
            &Opts::level("read_your_writes").wait_ms(800).session(&token),
        )
        .await;
    assert_eq!(code(ryw).as_deref(), Some("session_unmet"));

    f.set_isolated(false).await.expect("clear");
    for level in [
        "strong",
        "bounded(t=300ms)",
        "bounded(k=2)",
        "read_your_writes",
    ] {
        let r = eventually(
            Duration::from_secs(15),
            "reads succeed after healing",
            || async {
                f.get(
                    "ks",
                    b"x",
                    &Opts::level(level).wait_ms(2000).session(&token),
                )
                .await
                .ok()
            },
        )
        .await;
        let (entries, ms) = r.receipt.staleness_parts().expect("staleness");
        match level {
            "bounded(k=2)" => assert!(entries <= 2, "{level}: {:?}", r.receipt),
            "read_your_writes" => assert_eq!(r.value.as_deref(), Some(b"v5".as_slice())),
            // Served on a watermark (pushed every heartbeat): fresh within the bound, and the
            // receipt says by how much at most.
            "bounded(t=300ms)" => {
                assert_eq!(r.value.as_deref(), Some(b"v5".as_slice()), "{level}");
                assert!(entries == 0 && ms <= 300, "{level}: {:?}", r.receipt);
            }
            _ => {
                assert_eq!(r.value.as_deref(), Some(b"v5".as_slice()), "{level}");
                assert_eq!((entries, ms), (0, 0), "{level}: {:?}", r.receipt);
            }
        }
    }
    let r = f
        .get("ks", b"x", &Opts::level("eventual"))
        .await
        .expect("eventual after healing");
    assert_eq!(r.value.as_deref(), Some(b"v5".as_slice()));
    let (entries, ms) = r.receipt.staleness_parts().expect("staleness");
    assert!(entries == 0 && ms < 1000, "fresh again: {:?}", r.receipt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_prefix_batch_reads_never_show_b_newer_than_a() {
    let c = start(3, false).await;
    create_keyspace(&c.client(0), "ks", 1).await;
    let writer = c.client(0);
    // The writer goes on until the reads are done (bounded either way), so the reads always
    // overlap writes, however slow the machine.
    const ROUNDS_MAX: u32 = 20_000;
    const READS: u32 = 40;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = stop.clone();
    let write = tokio::spawn(async move {
        for i in 1..=ROUNDS_MAX {
            if writing.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            writer
                .put("ks", b"a", i.to_string().as_bytes(), &Opts::default())
                .await
                .expect("put a");
            writer
                .put("ks", b"b", i.to_string().as_bytes(), &Opts::default())
                .await
                .expect("put b");
        }
    });
    let mut checked = 0;
    while !write.is_finished() && checked < READS {
        for node in 0..3 {
            let r = c
                .client(node)
                .batch_get("ks", &["a", "b"], &Opts::level("consistent_prefix"))
                .await
                .expect("batch-get");
            let num = |k: &str| {
                r["results"]
                    .as_array()
                    .and_then(|rs| rs.iter().find(|x| x["key"] == k))
                    .and_then(|x| x["value"].as_str())
                    .map(|v| v.parse::<u32>().expect("number"))
                    .unwrap_or(0)
            };
            let (a, b) = (num("a"), num("b"));
            assert!(
                b <= a && a <= b + 1,
                "node {}: a={a} b={b} is not a prefix of the writes",
                node + 1
            );
            assert_eq!(
                r["receipts"].as_array().map(Vec::len),
                Some(1),
                "one receipt per shard"
            );
            checked += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    write.await.expect("writer");
    assert!(checked >= READS, "checked {checked} batch reads");
    // Multi-shard batches give one receipt per shard, and bad batches are refused.
    create_keyspace(&c.client(0), "wide", 4).await;
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    for k in &keys {
        c.client(1)
            .put("wide", k.as_bytes(), b"x", &Opts::default())
            .await
            .expect("put");
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let r = c
        .client(2)
        .batch_get("wide", &refs, &Opts::level("strong"))
        .await
        .expect("strong batch-get");
    assert_eq!(r["results"].as_array().map(Vec::len), Some(20));
    assert!(r["results"]
        .as_array()
        .is_some_and(|rs| rs.iter().all(|x| x["found"] == true)));
    assert_eq!(r["receipts"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        code(c.client(0).batch_get("wide", &[], &Opts::default()).await).as_deref(),
        Some("bad_request")
    );
    assert_eq!(
        code(
            c.client(0)
                .batch_get("wide", &["k"], &Opts::level("soon"))
                .await
        )
        .as_deref(),
        Some("level_invalid")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_copies_serve_bounded_t_from_pushed_watermarks_without_probing() {
    let c = start(3, false).await;
    create_keyspace(&c.client(0), "ks", 1).await;
    let (leader, follower) = leader_and_follower(&c, "ks/shard0").await;
    c.client(leader)
        .put("ks", b"x", b"v", &Opts::default())
        .await
        .expect("put");
    for idx in [follower, leader] {
        // bounded(t=500ms) may miss a write acknowledged less than 500 ms ago: wait until this
        // copy has applied it (eventual reads never probe).
        let client = c.client(idx);
        eventually(Duration::from_secs(10), "the copy applied x", || async {
            let r = client
                .get("ks", b"x", &Opts::level("eventual"))
                .await
                .ok()?;
            (r.value.as_deref() == Some(b"v".as_slice())).then_some(())
        })
        .await;
        // No probing reads yet: the watermark can only have come from the leader's pushes.
        let fresh = eventually(Duration::from_secs(10), "a pushed watermark", || async {
            let r = own_replica(&c, idx, "ks/shard0").await?;
            let age = r["watermark_age_ms"].as_u64()?;
            (age <= 300).then_some(r)
        })
        .await;
        assert_eq!(fresh["probes"], 0, "node {}: {fresh}", idx + 1);
        for _ in 0..10 {
            let r = client
                .get("ks", b"x", &Opts::level("bounded(t=500ms)"))
                .await
                .expect("bounded(t) read");
            assert_eq!(r.value.as_deref(), Some(b"v".as_slice()));
            let (_, ms) = r.receipt.staleness_parts().expect("staleness");
            assert!(ms <= 500, "node {}: {:?}", idx + 1, r.receipt);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = own_replica(&c, idx, "ks/shard0").await.expect("status");
        assert_eq!(
            after["probes"],
            0,
            "node {} served bounded(t) without asking the leader: {after}",
            idx + 1
        );
    }
}
