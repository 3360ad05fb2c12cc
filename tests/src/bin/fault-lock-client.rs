//! A lock client for the fault suite, run as its own process so the suite can pause it
//! (SIGSTOP) as a garbage collector or an overloaded host would: it takes the suite's lock
//! with `cairn_recipes::Mutex` over and over, and inside each critical section writes its
//! fencing token to the suite's fenced store, which refuses stale tokens.
//!
//! Usage: `fault-lock-client ENDPOINTS STORE-ADDR CLIENT-ID TTL-SECONDS`

use std::time::Duration;

use cairn_client::{Client, ClientOptions};
use cairn_recipes::{Mutex, Session};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoints, store, id, ttl] = &args[..] else {
        eprintln!("usage: fault-lock-client ENDPOINTS STORE-ADDR CLIENT-ID TTL-SECONDS");
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
        let mutex = Mutex::new(s, "fault-suite-lock");
        // The store notes when the attempt began before the attempt begins.
        store.say(format!("LOCKING {id}")).await;
        let guard = match mutex.lock_timeout(Duration::from_secs(10)).await {
            Ok(g) => g,
            Err(_) => {
                store.say(format!("GAVEUP {id}")).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let token = guard.fencing_token();
        n += 1;
        // The critical section: two writes under the token, with work between them.
        store.say(format!("WRITE {id} {token} begin-{n}")).await;
        tokio::time::sleep(Duration::from_millis(20 + n % 80)).await;
        store.say(format!("WRITE {id} {token} end-{n}")).await;
        let _ = guard.unlock().await;
        store.say(format!("RELEASED {id} {token}")).await;
    }
}
