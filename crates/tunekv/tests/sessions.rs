//! Session guarantees on a real 3-node cluster: tokens carry read-your-writes and monotonic
//! reads across nodes and client processes; forged and foreign tokens are refused.

mod common;

use common::{create_keyspace, eventually, leader_and_follower, start};
use std::process::Command;
use std::time::Duration;
use tunekv_client::{ClientError, Opts};
use tunekv_core::{GroupId, LogIndex, SessionKey};

fn code<T>(r: Result<T, ClientError>) -> Option<String> {
    r.err().and_then(|e| e.code().map(str::to_string))
}

/// The only group of keyspace "ks" (one shard), created first after the catalog.
fn group_of(token: &str, key: &SessionKey) -> (GroupId, tunekv_core::Mark) {
    let s = key.decode(token).expect("a valid token");
    let groups: Vec<_> = s.groups().collect();
    assert_eq!(groups.len(), 1, "one shard touched: {groups:?}");
    groups[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_a_write_on_one_node_gives_read_your_writes_on_another() {
    let c = start(3, true).await;
    create_keyspace(&c.client(0), "ks", 1).await;
    let (leader, follower) = leader_and_follower(&c, "ks/shard0").await;
    let writer_node = (0..3).find(|i| *i != follower).expect("a writer node");
    let (w, f) = (c.client(writer_node), c.client(follower));
    w.put("ks", b"x", b"old", &Opts::default())
        .await
        .expect("put");
    eventually(Duration::from_secs(5), "the follower has old", || async {
        let r = f.get("ks", b"x", &Opts::level("eventual")).await.ok()?;
        (r.value.as_deref() == Some(b"old".as_slice())).then_some(())
    })
    .await;

    // The follower is cut off; the write commits on the other two.
    f.set_isolated(true).await.expect("isolate");
    let wrote = w
        .put("ks", b"x", b"new", &Opts::default())
        .await
        .expect("put on the majority");
    let key = SessionKey::new(c.configs[0].cluster_secret.as_bytes()).expect("key");
    let (_, mark) = group_of(&wrote.session, &key);
    assert_eq!(
        mark.written,
        LogIndex(wrote.index),
        "the token holds the write"
    );

    // Without the token the follower serves its old state; with it, it refuses.
    let stale = f
        .get("ks", b"x", &Opts::level("read_your_writes"))
        .await
        .expect("a new session demands nothing");
    assert_eq!(stale.value.as_deref(), Some(b"old".as_slice()));
    for level in ["read_your_writes", "session"] {
        let r = f
            .get(
                "ks",
                b"x",
                &Opts::level(level).wait_ms(500).session(&wrote.session),
            )
            .await;
        assert_eq!(code(r).as_deref(), Some("session_unmet"), "{level}");
    }
    // Monotonic reads only cares about reads: the write alone does not hold it back.
    let mr = f
        .get(
            "ks",
            b"x",
            &Opts::level("monotonic_reads").session(&wrote.session),
        )
        .await
        .expect("monotonic_reads with a write-only token");
    assert_eq!(mr.value.as_deref(), Some(b"old".as_slice()));

    // Healed: the read waits for the follower to catch up and sees the write.
    f.set_isolated(false).await.expect("clear");
    let r = f
        .get(
            "ks",
            b"x",
            &Opts::level("read_your_writes")
                .wait_ms(10_000)
                .session(&wrote.session),
        )
        .await
        .expect("read_your_writes after healing");
    assert_eq!(r.value.as_deref(), Some(b"new".as_slice()));
    assert_eq!(r.receipt.served_by, (follower + 1).to_string());
    assert!(r.receipt.index() >= Some(wrote.index));
    let (_, mark) = group_of(&r.session, &key);
    assert_eq!(mark.written, LogIndex(wrote.index));
    assert!(mark.read.0 >= wrote.index, "the read is recorded too");
    let _ = leader;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monotonic_reads_hold_when_a_client_alternates_between_nodes() {
    let c = start(3, true).await;
    create_keyspace(&c.client(0), "ks", 1).await;
    let (leader, follower) = leader_and_follower(&c, "ks/shard0").await;
    let l = c.client(leader);
    l.put("ks", b"x", b"1", &Opts::default())
        .await
        .expect("put");
    eventually(Duration::from_secs(5), "all copies have 1", || async {
        for i in 0..3 {
            let r = c
                .client(i)
                .get("ks", b"x", &Opts::level("eventual"))
                .await
                .ok()?;
            if r.value.as_deref() != Some(b"1".as_slice()) {
                return None;
            }
        }
        Some(())
    })
    .await;
    c.client(follower)
        .set_isolated(true)
        .await
        .expect("isolate");

    // A writer moves x forward on the majority while a reader alternates over all nodes.
    let writer = tokio::spawn(async move {
        for i in 2..=20u32 {
            l.put("ks", b"x", i.to_string().as_bytes(), &Opts::default())
                .await
                .expect("put on the majority");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut token = String::new();
    let mut newest = 0u32;
    let (mut served, mut refused) = (0, 0);
    for round in 0..30 {
        let node = round % 3;
        let r = c
            .client(node)
            .get(
                "ks",
                b"x",
                &Opts::level("monotonic_reads").wait_ms(500).session(&token),
            )
            .await;
        match r {
            Ok(r) => {
                let v: u32 = String::from_utf8_lossy(r.value.as_deref().expect("x exists"))
                    .parse()
                    .expect("a number");
                assert!(
                    v >= newest,
                    "node {} served {v} after this session read {newest}",
                    node + 1
                );
                newest = v;
                token = r.session;
                served += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), Some("session_unmet"), "node {}: {e}", node + 1);
                assert_eq!(node, follower, "only the cut-off copy refuses");
                refused += 1;
            }
        }
    }
    writer.await.expect("writer");
    assert!(
        newest > 1 && served >= 20,
        "served {served}, newest {newest}"
    );
    assert!(refused > 0, "the isolated copy was asked after newer reads");
    // Without the session, the same copy goes back in time: the guarantee is not free.
    let plain = c
        .client(follower)
        .get("ks", b"x", &Opts::level("eventual"))
        .await
        .expect("eventual");
    assert_eq!(plain.value.as_deref(), Some(b"1".as_slice()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_corrupt_and_foreign_tokens_are_rejected_and_change_nothing() {
    let c = start(3, false).await;
    create_keyspace(&c.client(0), "ks", 1).await;
    let n1 = c.client(0);
    let first = n1
        .put("ks", b"x", b"kept", &Opts::default())
        .await
        .expect("put");
    let mut forged = first.session.clone().into_bytes();
    // Claim a far higher written index: flip a body byte; the signature no longer matches.
    forged[10] = if forged[10] == b'f' { b'e' } else { b'f' };
    let forged = String::from_utf8(forged).expect("ascii");
    let foreign = SessionKey::new(b"the secret of some other cluster")
        .expect("key")
        .encode(
            &SessionKey::new(c.configs[0].cluster_secret.as_bytes())
                .expect("key")
                .decode(&first.session)
                .expect("valid"),
        );
    for bad in [
        forged.as_str(),
        foreign.as_str(),
        "not-hex",
        "00",
        &first.session[..20],
    ] {
        let put = n1
            .put("ks", b"x", b"changed", &Opts::default().session(bad))
            .await;
        assert_eq!(code(put).as_deref(), Some("session_invalid"), "{bad:.24}");
        let del = n1.delete("ks", b"x", &Opts::default().session(bad)).await;
        assert_eq!(code(del).as_deref(), Some("session_invalid"));
        for node in 0..3 {
            let get = c
                .client(node)
                .get("ks", b"x", &Opts::level("session").session(bad))
                .await;
            assert_eq!(code(get).as_deref(), Some("session_invalid"));
        }
        let batch = n1
            .batch_get("ks", &["x"], &Opts::default().session(bad))
            .await;
        assert_eq!(code(batch).as_deref(), Some("session_invalid"));
    }
    let r = n1
        .get("ks", b"x", &Opts::level("strong"))
        .await
        .expect("read");
    assert_eq!(
        r.value.as_deref(),
        Some(b"kept".as_slice()),
        "nothing changed"
    );

    // Two tokens of one session (say two threads) are merged: per shard, the larger marks.
    let key = SessionKey::new(c.configs[0].cluster_secret.as_bytes()).expect("key");
    let second = c
        .client(1)
        .put("ks", b"y", b"1", &Opts::default())
        .await
        .expect("put");
    let reader = c
        .client(2)
        .get("ks", b"x", &Opts::level("strong"))
        .await
        .expect("read");
    let both = format!("{},{}", first.session, reader.session);
    let merged = c
        .client(2)
        .batch_get("ks", &["x"], &Opts::level("session").session(&both))
        .await
        .expect("merged tokens are accepted");
    let merged = merged["session"].as_str().expect("a token").to_string();
    let (_, mark) = group_of(&merged, &key);
    assert_eq!(mark.written, LogIndex(first.index));
    assert!(mark.read.0 >= reader.receipt.index().expect("index"));
    assert!(mark.read.0 >= second.index, "read a state that includes y");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_keeps_read_your_writes_across_processes_and_nodes() {
    let c = start(3, true).await;
    create_keyspace(&c.client(0), "ks", 1).await;
    let (_, follower) = leader_and_follower(&c, "ks/shard0").await;
    let writer_node = (0..3).find(|i| *i != follower).expect("a writer node");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("session");
    let exe = env!("CARGO_BIN_EXE_tunekv");
    let cli = |args: &[&str], node: usize| {
        let out = Command::new(exe)
            .args(args)
            .arg("--node")
            .arg(c.http(node))
            .arg("--session")
            .arg(&file)
            .output()
            .expect("run tunekv");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (status, _, err) = cli(&["put", "ks", "k", "one"], writer_node);
    assert_eq!(status, Some(0), "{err}");
    eventually(Duration::from_secs(5), "the follower has one", || async {
        let r = c
            .client(follower)
            .get("ks", b"k", &Opts::level("eventual"))
            .await
            .ok()?;
        (r.value.as_deref() == Some(b"one".as_slice())).then_some(())
    })
    .await;
    c.client(follower)
        .set_isolated(true)
        .await
        .expect("isolate");
    let (status, _, err) = cli(&["put", "ks", "k", "two"], writer_node);
    assert_eq!(status, Some(0), "{err}");
    let ryw = [
        "get",
        "ks",
        "k",
        "--level",
        "read_your_writes",
        "--wait-ms-max",
    ];
    let (status, out, err) = cli(&[&ryw[..], &["500"]].concat(), follower);
    assert_eq!(status, Some(2), "refused, not stale: {out} {err}");
    assert!(err.contains("session_unmet"), "{err}");
    c.client(follower).set_isolated(false).await.expect("clear");
    let (status, out, err) = cli(&[&ryw[..], &["10000"]].concat(), follower);
    assert_eq!((status, out.as_str()), (Some(0), "two"), "{err}");
    // A token this cluster did not sign is refused with a hint; --new-session starts over.
    std::fs::write(&file, "00ff\n").expect("write");
    let (status, _, err) = cli(&["get", "ks", "k"], follower);
    assert_eq!(status, Some(2));
    assert!(
        err.contains("session_invalid") && err.contains("--new-session"),
        "{err}"
    );
    let (status, out, err) = cli(&["get", "ks", "k", "--new-session"], follower);
    assert_eq!((status, out.as_str()), (Some(0), "two"), "{err}");
    let saved = std::fs::read_to_string(&file).expect("session file");
    assert_ne!(
        saved.trim(),
        "00ff",
        "the new session replaced the bad token"
    );
}
