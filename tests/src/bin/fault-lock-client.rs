//! A lock client for the fault suite, run as its own process so the suite can pause it
//! (SIGSTOP) as a garbage collector or an overloaded host would. It takes the suite's lock
//! (`cairn_recipes::Mutex`) or wins the suite's election (`cairn_recipes::Election`) over
//! and over, and inside each critical section writes its fencing token to the suite's
//! fenced store, which refuses stale tokens.
//!
//! It honours the holder's `lost()` as an application should: before each write and while
//! it works, a lost lock or leadership ends the section at once (reported to the store as
//! `LOST`), so only a paused process can ever write after another holder was admitted. In
//! mode `careless-lock` it ignores `lost()`, as a careless application would, so that the
//! fencing tokens are what must catch its late writes.
//!
//! Usage: `fault-lock-client ENDPOINTS STORE-ADDR CLIENT-ID TTL-SECONDS MODE`, MODE one of
//! `lock`, `careless-lock`, `election`

use std::future::Future;
use std::pin::{pin, Pin};
use std::time::Duration;

use cairn_client::{Client, ClientOptions};
use cairn_recipes::{Election, Leadership, Mutex, MutexGuard, Session};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[path = "../clock.rs"]
mod clock;
use clock::monotonic_ns;

/// One line to the store and its answer.
struct Store {
    conn: BufReader<TcpStream>,
}

impl Store {
    async fn say(&mut self, line: String) -> String {
        self.conn
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("store reachable");
        let mut answer = String::new();
        self.conn
            .read_line(&mut answer)
            .await
            .expect("store answers");
        answer.trim().to_string()
    }
}

/// What a critical section holds: a lock or a leadership.
enum Holder<'s> {
    Lock(MutexGuard<'s>),
    Leader(Leadership<'s>),
}

impl Holder<'_> {
    fn token(&self) -> i64 {
        match self {
            Holder::Lock(g) => g.fencing_token(),
            Holder::Leader(l) => l.revision(),
        }
    }

    async fn lost(&self) {
        match self {
            Holder::Lock(g) => g.lost().await,
            Holder::Leader(l) => l.lost().await,
        }
    }

    async fn release(self) {
        let _ = match self {
            Holder::Lock(g) => g.unlock().await,
            Holder::Leader(l) => l.resign().await,
        };
    }
}

/// Takes the lock or wins the election within 10 s.
async fn acquire<'s>(session: &'s Session, mode: &str, id: &str) -> Option<Holder<'s>> {
    let within = Duration::from_secs(10);
    if mode == "election" {
        let election = Election::new(session, "fault-suite-election");
        match tokio::time::timeout(within, election.campaign(id.as_bytes())).await {
            Ok(Ok(l)) => Some(Holder::Leader(l)),
            _ => None,
        }
    } else {
        let mutex = Mutex::new(session, "fault-suite-lock");
        mutex.lock_timeout(within).await.ok().map(Holder::Lock)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoints, store, id, ttl, mode] = &args[..] else {
        eprintln!(
            "usage: fault-lock-client ENDPOINTS STORE-ADDR CLIENT-ID TTL-SECONDS \
             lock|careless-lock|election"
        );
        std::process::exit(2);
    };
    let ttl: i64 = ttl.parse().expect("TTL in seconds");
    let mut store = Store {
        conn: BufReader::new(TcpStream::connect(store).await.expect("connect to store")),
    };
    let options = ClientOptions {
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let client = loop {
        match Client::connect(endpoints.split(','), options.clone()).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let mut session: Option<Session> = None;
    let mut n = 0u64;
    loop {
        // A session whose lease was lost (a pause outlived it) is replaced.
        if session.as_ref().is_none_or(|s| s.is_done()) {
            session = Session::new(&client, ttl).await.ok();
            if session.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        let Some(s) = &session else { continue };
        // The store notes when the attempt began before the attempt begins.
        store.say(format!("LOCKING {id}")).await;
        let Some(holder) = acquire(s, mode, id).await else {
            store.say(format!("GAVEUP {id}")).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let token = holder.token();
        let admitted = monotonic_ns();
        n += 1;
        let section = Section {
            id,
            token,
            admitted,
            n,
            careless: mode == "careless-lock",
        };
        if section.run(&mut store, &holder).await {
            holder.release().await;
            store.say(format!("RELEASED {id} {token}")).await;
        } else {
            store.say(format!("LOST {id} {token}")).await;
            // Whatever ended it, the next section starts on a fresh lease (a fresh token),
            // and this one's keys go with its lease.
            drop(holder);
            if let Some(s) = session.take() {
                let _ = tokio::time::timeout(Duration::from_secs(2), s.close()).await;
            }
        }
    }
}

/// One critical section of this client.
struct Section<'a> {
    id: &'a str,
    token: i64,
    /// When the lock was taken, on the machine's monotonic clock (shared with the suite).
    admitted: u64,
    n: u64,
    /// Ignores `lost()`.
    careless: bool,
}

impl Section<'_> {
    /// Two writes under the token with work between them; false if the holder learnt it
    /// had lost the lock (then it writes nothing more). Each write carries the moment the
    /// client decided to make it: the suite checks that no decision came after another
    /// holder was admitted, unless this process was paused.
    async fn run(&self, store: &mut Store, holder: &Holder<'_>) -> bool {
        let work = Duration::from_millis(20 + self.n % 80);
        if self.careless {
            self.write(store, "begin", monotonic_ns()).await;
            tokio::time::sleep(work).await;
            self.write(store, "end", monotonic_ns()).await;
            return true;
        }
        let mut lost = pin!(holder.lost());
        let Some(decided) = still_held(lost.as_mut()).await else {
            return false;
        };
        self.write(store, "begin", decided).await;
        tokio::select! {
            biased;
            _ = lost.as_mut() => return false,
            _ = tokio::time::sleep(work) => {}
        }
        let Some(decided) = still_held(lost.as_mut()).await else {
            return false;
        };
        self.write(store, "end", decided).await;
        true
    }

    async fn write(&self, store: &mut Store, label: &str, decided: u64) {
        let Section {
            id,
            token,
            admitted,
            n,
            ..
        } = self;
        store
            .say(format!(
                "WRITE {id} {token} {label}-{n} {admitted} {decided}"
            ))
            .await;
    }
}

/// The moment at which the holder had not yet learnt of any loss, or None if it has. The
/// tasks woken with this one (the lease keeper's among them) run first, and the time is
/// read before the check, so a late check can only make the moment earlier.
async fn still_held(lost: Pin<&mut impl Future<Output = ()>>) -> Option<u64> {
    tokio::task::yield_now().await;
    let t = monotonic_ns();
    (!gone(lost)).then_some(t)
}

/// Whether the holder has already learnt of its loss, without waiting.
fn gone(lost: Pin<&mut impl Future<Output = ()>>) -> bool {
    futures::FutureExt::now_or_never(lost).is_some()
}
