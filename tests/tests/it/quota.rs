//! The storage quota and its NOSPACE alarm, and auto-compaction in both modes.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::AlarmType;
use cairn_client::{Client, ClientOptions, Compare, Error, GetOptions, Op, Txn};

use crate::harness::{etcdctl_binary, Embedded};

async fn client(m: &Embedded) -> Client {
    Client::connect([m.addr.to_string()], ClientOptions::default())
        .await
        .expect("connect")
}

fn url(m: &Embedded) -> String {
    format!("http://{}", m.addr)
}

/// Runs a tool against the member; returns (success, stdout).
fn tool(bin: &PathBuf, m: &Embedded, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin)
        .arg(format!("--endpoints={}", m.addr))
        .args(args)
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_the_quota_raises_nospace_until_space_is_freed_and_the_alarm_disarmed() {
    const QUOTA: i64 = 64 * 1024;
    let m = Embedded::start_with(|c| c.quota_backend_bytes = QUOTA).await;
    let c = client(&m).await;
    // Overwriting one key keeps every old revision until compaction.
    let mut accepted = 0;
    let err = loop {
        match c.put("big", vec![b'x'; 4096], None).await {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "the quota never bit");
    };
    assert!(matches!(err, Error::NoSpace), "{err}");
    assert!(accepted >= 10, "refused after {accepted} writes");

    // The alarm is raised for this member, listed, and shown in Status.
    let status = c.status(&url(&m)).await.expect("status");
    let member = status.header.expect("header").member_id;
    let alarms = c.alarm_list().await.expect("alarms").alarms;
    assert_eq!(alarms.len(), 1);
    assert_eq!(alarms[0].member_id, member);
    assert_eq!(alarms[0].alarm, AlarmType::Nospace as i32);
    assert_eq!(
        status.errors,
        vec![format!("memberID:{member} alarm:NOSPACE ")]
    );
    let etcdctl = etcdctl_binary().expect("etcdctl installed (apt-get install -y etcd-client)");
    let listed = format!("memberID:{member} alarm:NOSPACE \n");
    assert_eq!(
        tool(&etcdctl, &m, &["alarm", "list"]),
        (true, listed.clone())
    );
    let cairnctl = PathBuf::from(env!("CARGO_BIN_EXE_cairnctl-under-test"));
    assert_eq!(
        tool(&cairnctl, &m, &["alarm", "list"]),
        (true, listed.clone())
    );

    // Writes that add data are refused, whatever their size; reads and deletes are served.
    let small = c.put("small", "v", None).await.expect_err("put refused");
    assert!(matches!(small, Error::NoSpace), "{small}");
    let txn = Txn::new()
        .when([Compare::version("small").eq(0)])
        .and_then([Op::put("small", "v", None)]);
    assert!(matches!(c.txn(txn).await, Err(Error::NoSpace)));
    assert!(matches!(c.lease_grant(60, 0).await, Err(Error::NoSpace)));
    let got = c.get("big", None).await.expect("reads are served");
    assert_eq!(got.kvs[0].value.len(), 4096);
    c.delete("nothing-here", None)
        .await
        .expect("deletes are served");

    // Freeing space is not enough: the alarm stays until disarmed.
    let rev = got.header.expect("header").revision;
    c.compact(rev, true).await.expect("compact");
    c.defragment(&url(&m)).await.expect("defrag");
    let in_use = c.status(&url(&m)).await.expect("status").db_size_in_use;
    assert!(in_use < QUOTA / 4, "{in_use} bytes in use after compaction");
    assert!(matches!(
        c.put("small", "v", None).await,
        Err(Error::NoSpace)
    ));
    assert_eq!(tool(&etcdctl, &m, &["alarm", "disarm"]), (true, listed));
    assert!(c.alarm_list().await.expect("alarms").alarms.is_empty());
    c.put("small", "v", None)
        .await
        .expect("writes accepted again");
    assert!(c.status(&url(&m)).await.expect("status").errors.is_empty());
    // The alarm survives a restart while raised: raise it again and restart.
    let m = {
        let mut n = 0;
        while c.put("big", vec![b'y'; 4096], None).await.is_ok() {
            n += 1;
            assert!(n < 100);
        }
        m.restart().await
    };
    let c = client(&m).await;
    assert_eq!(c.alarm_list().await.expect("alarms").alarms.len(), 1);
    assert!(matches!(
        c.put("small", "v", None).await,
        Err(Error::NoSpace)
    ));
    m.stop().await;
}

/// The compacted revision, as HashKV reports it.
async fn compacted(c: &Client, m: &Embedded) -> i64 {
    c.hash_kv(&url(m), 0)
        .await
        .expect("hashkv")
        .compact_revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_auto_compaction_keeps_the_newest_revisions() {
    let m = Embedded::start_with(|c| {
        c.auto_compaction_mode = "revision".into();
        c.auto_compaction_retention = "10".into();
        c.auto_compaction_revision_interval = Duration::from_millis(100);
    })
    .await;
    let c = client(&m).await;
    let mut rev = 0;
    for i in 0..50 {
        rev = c
            .put(format!("k{}", i % 5), format!("{i}"), None)
            .await
            .expect("put")
            .header
            .expect("header")
            .revision;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while compacted(&c, &m).await != rev - 10 {
        assert!(Instant::now() < deadline, "never compacted at {}", rev - 10);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at = |r: i64| GetOptions::new().with_revision(r);
    c.get("k0", Some(at(rev - 10))).await.expect("kept");
    let gone = c
        .get("k0", Some(at(rev - 11)))
        .await
        .expect_err("compacted");
    assert!(matches!(gone, Error::Compacted { .. }), "{gone}");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_auto_compaction_keeps_about_one_retention_of_history() {
    let m = Embedded::start_with(|c| {
        c.auto_compaction_mode = "periodic".into();
        c.auto_compaction_retention = "1s".into();
    })
    .await;
    let c = client(&m).await;
    // When each revision was written.
    let mut written: Vec<(Instant, i64)> = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let rev = c
            .put("tick", "tock", None)
            .await
            .expect("put")
            .header
            .expect("header")
            .revision;
        written.push((Instant::now(), rev));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let checked = Instant::now();
    let compact_rev = compacted(&c, &m).await;
    assert!(
        compact_rev > 0,
        "nothing compacted in 4 s with a 1 s retention"
    );
    let when = written
        .iter()
        .find(|(_, r)| *r >= compact_rev)
        .map(|(t, _)| *t)
        .expect("compacted revision written");
    // Nothing younger than the retention was compacted away (the compacted revision was
    // sampled at least a retention before the compaction)...
    assert!(
        checked.duration_since(when) >= Duration::from_millis(800),
        "compacted history only {:?} old",
        checked.duration_since(when)
    );
    // ... and no more than a retention, a sampling step, a compaction interval and some
    // slack for a loaded machine is kept.
    assert!(
        checked.duration_since(when) <= Duration::from_secs(4),
        "history of {:?} kept",
        checked.duration_since(when)
    );
    m.stop().await;
}
