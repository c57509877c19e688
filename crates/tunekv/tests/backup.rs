//! `tunekv backup` / `tunekv restore` with real processes (issue 21, part 5): a backup taken
//! while a client writes holds every write acknowledged before it began, each shard read at one
//! index; restored into a second cluster, every key reads back at `strong` with its expiry, and
//! a leaderless keyspace's versions are merged into every replica without undoing a newer
//! write; a damaged backup or a malformed restore batch is refused and changes nothing.

mod common;

use common::tunekv_async;

use common::raw::{Raw, R};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tunekv_client::Opts;
use tunekv_core::backup::Reader;

const KS: &str = "b";

/// Every key of keyspace `KS` in backup `dir`: key → (value, expiry), read through the format's
/// reader (so every file's trailer is checked too), and each shard's header index.
type Backed = BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>;

fn backed_up(dir: &std::path::Path) -> (Backed, Vec<u64>) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("manifest json");
    let ks = manifest["keyspaces"]
        .as_array()
        .expect("keyspaces")
        .iter()
        .find(|k| k["name"] == KS)
        .expect("keyspace in manifest")
        .clone();
    let mut keys = BTreeMap::new();
    let mut indexes = Vec::new();
    for s in ks["shards"].as_array().expect("shards") {
        let f =
            std::fs::File::open(dir.join(s["file"].as_str().expect("file"))).expect("shard file");
        let mut r = Reader::open(std::io::BufReader::new(f)).expect("a shard backup");
        while let Some(rec) = r.next().expect("intact") {
            keys.insert(rec.key, (rec.value, rec.expires_ms));
        }
        assert_eq!(r.count(), s["keys"].as_u64().expect("keys"), "{s}");
        indexes.push(r.header.index);
    }
    (keys, indexes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_writes_restores_every_key_with_its_expiry_into_another_cluster() {
    let c = common::start(3, false).await;
    common::put_keyspace(
        &c,
        KS,
        r#"{"mode":"ordered","shards":4,"replicas":3,"default_level":"strong"}"#,
    )
    .await;
    common::put_keyspace(&c, "lw", r#"{"mode":"leaderless","replicas":3}"#).await;
    let c1 = c.client(0);
    for i in 0..20 {
        c1.put(
            "lw",
            format!("l{i}").as_bytes(),
            format!("x{i}").as_bytes(),
            &Opts::default().w("all"),
        )
        .await
        .expect("leaderless write");
    }
    for i in 0..200 {
        c1.put(
            KS,
            format!("k{i}").as_bytes(),
            format!("v{i}").as_bytes(),
            &Opts::default(),
        )
        .await
        .expect("write");
    }
    let binary_key: &[u8] = b"\x00bin\xff/..";
    c1.put(KS, binary_key, &[0, 1, 2, 255], &Opts::default())
        .await
        .expect("binary write");
    c1.put(KS, b"gone", b"x", &Opts::default())
        .await
        .expect("write");
    c1.delete(KS, b"gone", &Opts::default())
        .await
        .expect("delete");
    // Keys with an expiry (RESP: SET … PX): one far off, one that passes before the restore.
    let mut resp = Raw::connect(c.configs[0].resp.as_deref().expect("RESP address"));
    assert_eq!(resp.cmd(&["SELECT", KS]), R::Simple("OK".into()));
    assert_eq!(
        resp.cmd(&["SET", "ttl-long", "l", "PX", "600000"]),
        R::Simple("OK".into())
    );
    assert_eq!(
        resp.cmd(&["SET", "ttl-short", "s", "PX", "4000"]),
        R::Simple("OK".into())
    );
    let short_set = std::time::Instant::now();
    let long_expiry = c1
        .get(KS, b"ttl-long", &Opts::level("strong"))
        .await
        .expect("read")
        .expires_ms
        .expect("ttl-long expires");

    // A client keeps writing while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(u64, std::time::Instant)>>> = Arc::default();
    let writer = {
        let (stop, acked, c2) = (stop.clone(), acked.clone(), c.client(1));
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 20_000 {
                let key = format!("w{i}");
                if c2
                    .put(KS, key.as_bytes(), b"w", &Opts::default())
                    .await
                    .is_ok()
                {
                    acked.lock().unwrap().push((i, std::time::Instant::now()));
                }
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let all = dir.path().join("all");
    let began = std::time::Instant::now();
    let (code, out) = tunekv_async(vec![
        "backup".into(),
        all.display().to_string(),
        "--node".into(),
        c.http(0),
    ])
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    eprintln!("{out}");
    assert_eq!(code, 0, "{out}");
    // The leaderless keyspace: one stream per node of its ring.
    assert_eq!(out.matches("lw replica on node").count(), 3, "{out}");
    let (keys, indexes) = backed_up(&all);
    assert_eq!(indexes.len(), 4);
    for i in 0..200 {
        assert_eq!(
            keys.get(format!("k{i}").as_bytes()).map(|v| v.0.as_slice()),
            Some(format!("v{i}").as_bytes()),
            "k{i}"
        );
    }
    assert_eq!(keys[binary_key].0, vec![0, 1, 2, 255]);
    assert!(!keys.contains_key(&b"gone"[..]));
    assert_eq!(keys[&b"ttl-long"[..]], (b"l".to_vec(), Some(long_expiry)));
    // Every write acknowledged before the backup began is in it.
    let acked = acked.lock().unwrap().clone();
    let before: Vec<u64> = acked
        .iter()
        .filter(|(_, at)| *at < began)
        .map(|(i, _)| *i)
        .collect();
    assert!(
        !before.is_empty(),
        "the writer wrote nothing before the backup"
    );
    for i in &before {
        assert!(
            keys.contains_key(format!("w{i}").as_bytes()),
            "w{i} was acknowledged before the backup began but is not in it"
        );
    }

    // Naming the ordered keyspace alone: a complete backup, exit 0.
    let only = dir.path().join("only");
    let (code, out) = tunekv_async(vec![
        "backup".into(),
        only.display().to_string(),
        "--node".into(),
        c.http(1),
        "--keyspace".into(),
        KS.into(),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    // Into a directory that is not empty: refused.
    let (code, out) = tunekv_async(vec![
        "backup".into(),
        only.display().to_string(),
        "--node".into(),
        c.http(1),
    ])
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("not empty"), "{out}");

    // A second cluster: restore into it once ttl-short has expired. Its leaderless keyspace
    // exists already, with a newer write of l0 that the restore must not undo.
    let d = common::start(3, false).await;
    common::put_keyspace(&d, "lw", r#"{"mode":"leaderless","replicas":3}"#).await;
    d.client(1)
        .put("lw", b"l0", b"newer", &Opts::default().w("all"))
        .await
        .expect("newer leaderless write");
    let elapsed = short_set.elapsed();
    if elapsed < Duration::from_millis(4500) {
        tokio::time::sleep(Duration::from_millis(4500) - elapsed).await;
    }
    let (code, out) = tunekv_async(vec![
        "restore".into(),
        all.display().to_string(),
        "--node".into(),
        d.http(2),
    ])
    .await;
    eprintln!("{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("b: created (ordered)"), "{out}");
    assert!(out.contains("lw: exists; merging"), "{out}");
    for i in 0..20 {
        let want = if i == 0 {
            "newer".to_string()
        } else {
            format!("x{i}")
        };
        for n in 0..3 {
            let r = d
                .client(n)
                .get("lw", format!("l{i}").as_bytes(), &Opts::default().r("all"))
                .await
                .expect("leaderless read");
            assert_eq!(
                r.value.as_deref(),
                Some(want.as_bytes()),
                "l{i} on node {n}"
            );
        }
    }
    let d1 = d.client(0);
    let info = d1.keyspace(KS).await.expect("restored keyspace");
    assert_eq!(info["shards"], 4, "{info}");
    let (restored, _) = backed_up(&all);
    for (key, (value, expires)) in &restored {
        let r = d1
            .get(KS, key, &Opts::level("strong"))
            .await
            .unwrap_or_else(|e| panic!("{key:?}: {e}"));
        if key.as_slice() == b"ttl-short" {
            assert_eq!(r.value, None, "an expired key is not restored");
            continue;
        }
        assert_eq!(r.value.as_ref(), Some(value), "{key:?}");
        assert_eq!(r.expires_ms, *expires, "{key:?}");
    }
    let written: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("restored "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("a summary line");
    assert_eq!(
        written + u64::from(restored.contains_key(&b"ttl-short"[..])),
        restored.len() as u64,
        "{out}"
    );

    // A damaged file: the restore checks every file first, refuses, writes nothing.
    d1.put(KS, b"k0", b"changed", &Opts::default())
        .await
        .expect("write");
    let damaged = dir.path().join("damaged");
    copy_dir(&only, &damaged);
    let victim = damaged.join(
        std::fs::read_dir(
            damaged.join(
                std::fs::read_dir(&damaged)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .find(|n| n.to_string_lossy().starts_with("ks-"))
                    .unwrap(),
            ),
        )
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap(),
    );
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    let (code, out) = tunekv_async(vec![
        "restore".into(),
        damaged.display().to_string(),
        "--node".into(),
        d.http(0),
    ])
    .await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("damaged"), "{out}");
    let k0 = d1.get(KS, b"k0", &Opts::level("strong")).await.unwrap();
    assert_eq!(k0.value.as_deref(), Some(&b"changed"[..]), "{out}");

    // A malformed restore batch: 400, nothing written.
    let (status, _, body) = common::call(
        "POST",
        &format!("{}/v1/admin/restore/{KS}", d.http(0)),
        "\u{0}\u{0}\u{0}\u{2}k0",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    // A leaderless record whose value is not a backed-up version: refused the same way.
    let mut batch = Vec::new();
    tunekv_core::backup::encode_record(&mut batch, b"l1", b"garbage", None);
    let (status, _, body) = common::call(
        "POST",
        &format!("{}/v1/admin/restore/lw", d.http(0)),
        std::str::from_utf8(&batch).expect("ASCII batch"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let l1 = d1
        .get("lw", b"l1", &Opts::default().r("all"))
        .await
        .expect("read");
    assert_eq!(l1.value.as_deref(), Some(&b"x1"[..]));
    let k0 = d1.get(KS, b"k0", &Opts::level("strong")).await.unwrap();
    assert_eq!(k0.value.as_deref(), Some(&b"changed"[..]));
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for e in std::fs::read_dir(from).expect("read the backup") {
        let e = e.expect("entry");
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}
