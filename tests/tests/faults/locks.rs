//! Workload (3): lock client processes (`fault-lock-client`) take one lock over and over and
//! write their fencing token to this fenced store inside each critical section. The store
//! refuses a token lower than the highest it has accepted, as a fenced resource would.
//!
//! Checked: no token is handed to two holders; a lock taken after another was released has
//! a higher token (the lock service never hands out a stale position); and no two critical
//! sections whose writes were all accepted overlap in time: any overlap the lock let
//! through (a paused holder whose lease ran out) the tokens must catch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::now;

/// One critical section as the store saw it (run clock).
#[derive(Debug, Clone)]
pub struct Section {
    pub client: String,
    pub token: i64,
    /// When the client said it was about to ask for the lock.
    pub locking: u64,
    /// Each write: when, whether accepted.
    pub writes: Vec<(u64, bool)>,
    pub released: Option<u64>,
}

#[derive(Default)]
struct State {
    highest: i64,
    attempts: HashMap<String, u64>,
    sections: Vec<Section>,
    open: HashMap<(String, i64), usize>,
}

impl State {
    fn handle(&mut self, line: &str) -> &'static str {
        let words: Vec<&str> = line.split_whitespace().collect();
        let t = now();
        match words[..] {
            ["LOCKING", id] => {
                self.attempts.insert(id.to_string(), t);
                "ok"
            }
            ["GAVEUP", id] => {
                self.attempts.remove(id);
                "ok"
            }
            ["WRITE", id, token, _label] => {
                let token: i64 = token.parse().expect("token");
                let key = (id.to_string(), token);
                let i = match self.open.get(&key) {
                    Some(&i) => i,
                    None => {
                        self.sections.push(Section {
                            client: id.to_string(),
                            token,
                            locking: self.attempts.get(id).copied().unwrap_or(0),
                            writes: vec![],
                            released: None,
                        });
                        self.open.insert(key, self.sections.len() - 1);
                        self.sections.len() - 1
                    }
                };
                let accepted = token >= self.highest;
                self.highest = self.highest.max(token);
                self.sections[i].writes.push((t, accepted));
                if accepted {
                    "ok"
                } else {
                    "stale"
                }
            }
            ["RELEASED", id, token] => {
                let token: i64 = token.parse().expect("token");
                if let Some(i) = self.open.remove(&(id.to_string(), token)) {
                    self.sections[i].released = Some(t);
                }
                "ok"
            }
            _ => "?",
        }
    }
}

/// The fenced store and the lock client processes writing to it.
pub struct Locks {
    state: Arc<Mutex<State>>,
    clients: Vec<Child>,
}

impl Locks {
    /// Starts the store and `clients` lock client processes on `endpoints` with sessions of
    /// `ttl_secs`.
    pub async fn start(endpoints: &[SocketAddr], clients: usize, ttl_secs: u64) -> Locks {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind store");
        let store = listener.local_addr().expect("store address");
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let (read, mut write) = conn.into_split();
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let answer = state.lock().expect("lock").handle(&line);
                        if write
                            .write_all(format!("{answer}\n").as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        let endpoints = endpoints
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let clients = (0..clients)
            .map(|i| {
                Command::new(env!("CARGO_BIN_EXE_fault-lock-client"))
                    .args([
                        endpoints.clone(),
                        store.to_string(),
                        format!("c{i}"),
                        ttl_secs.to_string(),
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .expect("spawn lock client")
            })
            .collect();
        Locks { state, clients }
    }

    /// The processes of the clients inside a critical section now (begun, not ended),
    /// or of all clients if none is: pausing a holder is what tests fencing.
    pub fn holders(&self) -> impl Fn() -> Vec<u32> + Send + 'static {
        let pids: Vec<u32> = self.clients.iter().map(|c| c.id()).collect();
        let state = self.state.clone();
        move || {
            let state = state.lock().expect("lock");
            let inside: Vec<u32> = state
                .open
                .iter()
                .filter(|(_, &i)| state.sections[i].writes.len() == 1)
                .filter_map(|((id, _), _)| {
                    let n: usize = id.strip_prefix('c')?.parse().ok()?;
                    pids.get(n).copied()
                })
                .collect();
            if inside.is_empty() {
                pids.clone()
            } else {
                inside
            }
        }
    }

    /// Stops the clients and returns the sections the store saw.
    pub fn stop(&mut self) -> Vec<Section> {
        for c in &mut self.clients {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.clients.clear();
        std::mem::take(&mut self.state.lock().expect("lock").sections)
    }
}

impl Drop for Locks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the lock workload came to.
#[derive(Debug, Default)]
pub struct Summary {
    pub sections: usize,
    /// Writes the store refused as stale: unsafe sections the tokens caught.
    pub stale_writes: usize,
    /// Pairs of critical sections that overlapped in time (each caught by the tokens).
    pub overlaps: usize,
}

fn span(s: &Section) -> Option<(u64, u64)> {
    Some((s.writes.first()?.0, s.writes.last()?.0))
}

pub fn check(sections: &[Section]) -> Result<Summary, String> {
    let mut holders: HashMap<i64, &str> = HashMap::new();
    for s in sections {
        if let Some(other) = holders.insert(s.token, &s.client) {
            if other != s.client {
                return Err(format!(
                    "token {} handed to both {other} and {}",
                    s.token, s.client
                ));
            }
        }
    }
    for a in sections {
        let Some(released) = a.released else { continue };
        for b in sections {
            if b.locking > released && b.token <= a.token {
                return Err(format!(
                    "lock taken after a release got an older token: {a:?} then {b:?}"
                ));
            }
        }
    }
    let mut summary = Summary {
        sections: sections.len(),
        ..Default::default()
    };
    summary.stale_writes = sections
        .iter()
        .flat_map(|s| &s.writes)
        .filter(|(_, ok)| !ok)
        .count();
    for (i, a) in sections.iter().enumerate() {
        for b in &sections[i + 1..] {
            let (Some((a0, a1)), Some((b0, b1))) = (span(a), span(b)) else {
                continue;
            };
            if a0 <= b1 && b0 <= a1 {
                let clean = |s: &Section| s.writes.iter().all(|(_, ok)| *ok);
                if clean(a) && clean(b) {
                    return Err(format!(
                        "critical sections overlapped and the tokens did not catch it: \
                         {a:?} and {b:?}"
                    ));
                }
                summary.overlaps += 1;
            }
        }
    }
    Ok(summary)
}
