//! The synchronisation recipes beyond the mutex: readers-writer lock, semaphore, barriers
//! and the counter, under real concurrency on one member.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use cairn_recipes::{Barrier, Counter, DoubleBarrier, Error, RwMutex, Semaphore, Session};

use crate::harness::Embedded;
use crate::recipes::{client, keys_under};

/// Long enough for a wrongly granted lock or a wrongly opened barrier to show; the check
/// that follows can only fail if the recipe is wrong, never because the machine is slow.
const NOT_YET: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rwmutex_readers_share_and_writers_exclude_everyone() {
    let m = Embedded::start().await;
    let readers = Arc::new(AtomicI64::new(0));
    let writing = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = client(&m).await;
        let (readers, writing) = (readers.clone(), writing.clone());
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&c, 10).await.expect("session");
            let lock = RwMutex::new(&session, "locks/config");
            for _ in 0..8 {
                if i % 3 == 0 {
                    let guard = lock.write().await.expect("write");
                    assert!(!writing.swap(true, Ordering::SeqCst), "two writers");
                    assert_eq!(readers.load(Ordering::SeqCst), 0, "writer beside readers");
                    tokio::task::yield_now().await;
                    writing.store(false, Ordering::SeqCst);
                    guard.unlock().await.expect("unlock");
                } else {
                    let guard = lock.read().await.expect("read");
                    readers.fetch_add(1, Ordering::SeqCst);
                    assert!(!writing.load(Ordering::SeqCst), "reader beside a writer");
                    tokio::task::yield_now().await;
                    readers.fetch_sub(1, Ordering::SeqCst);
                    guard.unlock().await.expect("unlock");
                }
            }
            session.close().await.expect("close");
        }));
    }
    for t in tasks {
        t.await.expect("contender");
    }

    // Shared and exclusive, step by step.
    let c = client(&m).await;
    let (a, b, w) = (
        Session::new(&c, 10).await.expect("session"),
        Session::new(&c, 10).await.expect("session"),
        Session::new(&c, 10).await.expect("session"),
    );
    let read_a = RwMutex::new(&a, "locks/config").read().await.expect("read");
    let read_b = RwMutex::new(&b, "locks/config")
        .try_read()
        .await
        .expect("readers share");
    let writer = RwMutex::new(&w, "locks/config");
    assert!(matches!(writer.try_write().await, Err(Error::Locked)));
    let waiting = writer.write();
    tokio::pin!(waiting);
    assert!(tokio::time::timeout(NOT_YET, &mut waiting).await.is_err());
    read_a.unlock().await.expect("unlock");
    read_b.unlock().await.expect("unlock");
    let held = waiting
        .await
        .expect("the writer holds once the readers left");
    // A reader arriving behind a writer waits for it.
    assert!(matches!(
        RwMutex::new(&a, "locks/config").try_read().await,
        Err(Error::Locked)
    ));
    held.unlock().await.expect("unlock");
    assert_eq!(keys_under(&c, "locks/config/").await, 0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_semaphore_never_lets_more_than_n_in() {
    let m = Embedded::start().await;
    let inside = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let c = client(&m).await;
        let (inside, most) = (inside.clone(), most.clone());
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&c, 10).await.expect("session");
            let slots = Semaphore::new(&session, "semaphores/jobs", 3);
            for _ in 0..6 {
                let permit = slots.acquire().await.expect("acquire");
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                assert!(now <= 3, "{now} holders of 3 permits");
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                permit.unlock().await.expect("release");
            }
            session.close().await.expect("close");
        }));
    }
    for t in tasks {
        t.await.expect("holder");
    }
    assert!(most.load(Ordering::SeqCst) <= 3);

    // Step by step: three permits go, the fourth waits for a release; a timed-out wait
    // leaves nothing behind.
    let c = client(&m).await;
    let mut sessions = Vec::new();
    for _ in 0..5 {
        sessions.push(Session::new(&c, 10).await.expect("session"));
    }
    let sem = |i: usize| Semaphore::new(&sessions[i], "semaphores/jobs", 3);
    let mut permits = Vec::new();
    for i in 0..3 {
        permits.push(sem(i).try_acquire().await.expect("free permit"));
    }
    assert!(matches!(sem(3).try_acquire().await, Err(Error::Locked)));
    assert!(matches!(
        sem(4).acquire_timeout(NOT_YET).await,
        Err(Error::Timeout)
    ));
    let fourth = sem(3);
    let waiting = fourth.acquire();
    tokio::pin!(waiting);
    assert!(tokio::time::timeout(NOT_YET, &mut waiting).await.is_err());
    permits.remove(1).unlock().await.expect("release");
    let p = waiting.await.expect("a release frees a permit");
    // Wait until the timed-out contender's key is cleaned up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while keys_under(&c, "semaphores/jobs/").await != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "a timed-out wait left its key"
        );
        tokio::task::yield_now().await;
    }
    p.unlock().await.expect("release");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn barriers_hold_waiters_until_released_and_double_barriers_gather_everyone() {
    let m = Embedded::start().await;
    let c = client(&m).await;
    let gate = Barrier::new(c.clone(), "barriers/deploy");
    assert!(gate.hold().await.expect("hold"));
    assert!(!gate.hold().await.expect("already up"));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait().await })
        })
        .collect();
    tokio::time::sleep(NOT_YET).await;
    assert!(
        waiters.iter().all(|w| !w.is_finished()),
        "a waiter passed a raised barrier"
    );
    gate.release().await.expect("release");
    for w in waiters {
        tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .expect("waiters pass once the barrier is down")
            .expect("task")
            .expect("wait");
    }

    // Three participants: nobody is through `enter` before all three arrived, nobody through
    // `leave` before all three left; a fourth is refused.
    let arrived = Arc::new(AtomicI64::new(0));
    let left = Arc::new(AtomicI64::new(0));
    let entered = Arc::new(AtomicI64::new(0));
    let (refused_tx, refused) = tokio::sync::watch::channel(false);
    let mut sessions = Vec::new();
    for _ in 0..4 {
        sessions.push(Arc::new(Session::new(&c, 10).await.expect("session")));
    }
    let mut tasks = Vec::new();
    for s in &sessions[..3] {
        let s = s.clone();
        let (arrived, left, entered) = (arrived.clone(), left.clone(), entered.clone());
        let mut refused = refused.clone();
        tasks.push(tokio::spawn(async move {
            let stage = DoubleBarrier::new(&s, "barriers/stage", 3);
            arrived.fetch_add(1, Ordering::SeqCst);
            stage.enter().await.expect("enter");
            assert_eq!(
                arrived.load(Ordering::SeqCst),
                3,
                "entered before all arrived"
            );
            entered.fetch_add(1, Ordering::SeqCst);
            // Leave only once the fourth has found the barrier full.
            refused.wait_for(|r| *r).await.expect("refusal");
            left.fetch_add(1, Ordering::SeqCst);
            stage.leave().await.expect("leave");
            assert_eq!(left.load(Ordering::SeqCst), 3, "left before all left");
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while entered.load(Ordering::SeqCst) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "participants never got in"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let fourth = DoubleBarrier::new(&sessions[3], "barriers/stage", 3);
    assert!(matches!(
        fourth.enter().await,
        Err(Error::TooManyParticipants)
    ));
    refused_tx.send(true).expect("participants wait");
    for t in tasks {
        t.await.expect("participant");
    }
    assert_eq!(keys_under(&c, "barriers/stage/").await, 0);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_counter_loses_no_increment() {
    let m = Embedded::start().await;
    let seen = Arc::new(StdMutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let counter = Counter::new(client(&m).await, "counters/visits");
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let v = counter.add(1).await.expect("add");
                seen.lock().expect("seen").push(v);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let counter = Counter::new(client(&m).await, "counters/visits");
    assert_eq!(counter.get().await.expect("get"), 200);
    let mut seen = seen.lock().expect("seen").clone();
    seen.sort();
    assert_eq!(seen, (1..=200).collect::<Vec<_>>(), "every value seen once");
    assert_eq!(counter.add(-50).await.expect("sub"), 150);
    let c = client(&m).await;
    c.put("counters/bad", "x", None).await.expect("put");
    assert!(matches!(
        Counter::new(c, "counters/bad").add(1).await,
        Err(Error::NotACounter(_))
    ));
    m.stop().await;
}
