//! Workload (3): lock client processes (`fault-lock-client`) take one lock, and others win
//! one election, over and over, and write their fencing token to this fenced store inside
//! each critical section. The store refuses a token lower than the highest it has accepted
//! for that resource, as a fenced resource would. The clients honour `lost()`: a section
//! whose holder learns it lost the lock ends at once (`LOST`); one lock client is careless
//! (ignores `lost()`), so that the tokens are still put to the test.
//!
//! Checked, for the lock and for the election: no token is handed to two holders; a lock
//! taken after another was released has a higher token (the lock service never hands out a
//! stale position); no two critical sections whose writes were all accepted overlap in time
//! (any overlap the lock let through, a paused holder whose lease ran out, the tokens must
//! catch); and `lost()` fires before another holder is admitted: no holder decides to write
//! after a newer holder took the lock unless its process was paused (SIGSTOP) in between,
//! since a stopped process cannot notice anything (the careless client is exempt).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::clock::monotonic_ns;
use crate::nemesis::Fault;
use crate::now;

/// One critical section as the store saw it (run clock).
#[derive(Debug, Clone)]
pub struct Section {
    pub client: String,
    pub token: i64,
    /// When the client said it was about to ask for the lock.
    pub locking: u64,
    /// When the client had the lock (its own clock, converted).
    pub admitted: u64,
    /// Each write: when the client decided to make it, when the store got it, whether
    /// accepted.
    pub writes: Vec<Write>,
    pub released: Option<u64>,
    /// When the client reported that `lost()` ended the section.
    pub lost: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
pub struct Write {
    pub decided: u64,
    pub at: u64,
    pub accepted: bool,
}

/// What a client's sections fence: the lock (`c…` clients) or the election (`e…`).
fn resource(client: &str) -> char {
    client.chars().next().unwrap_or('?')
}

struct State {
    /// The highest token accepted, per resource.
    highest: HashMap<char, i64>,
    attempts: HashMap<String, u64>,
    sections: Vec<Section>,
    open: HashMap<(String, i64), usize>,
    /// The monotonic clock minus the run clock: Instant is CLOCK_MONOTONIC on Linux.
    offset: u64,
}

impl State {
    fn new() -> State {
        let offset = monotonic_ns() - now();
        State {
            highest: HashMap::new(),
            attempts: HashMap::new(),
            sections: Vec::new(),
            open: HashMap::new(),
            offset,
        }
    }

    fn run_clock(&self, monotonic: &str) -> u64 {
        let t: u64 = monotonic.parse().expect("monotonic time");
        t.saturating_sub(self.offset)
    }

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
            ["WRITE", id, token, _label, admitted, decided] => {
                let token: i64 = token.parse().expect("token");
                let (admitted, decided) = (self.run_clock(admitted), self.run_clock(decided));
                let key = (id.to_string(), token);
                let i = match self.open.get(&key) {
                    Some(&i) => i,
                    None => {
                        self.sections.push(Section {
                            client: id.to_string(),
                            token,
                            locking: self.attempts.get(id).copied().unwrap_or(0),
                            admitted,
                            writes: vec![],
                            released: None,
                            lost: None,
                        });
                        self.open.insert(key, self.sections.len() - 1);
                        self.sections.len() - 1
                    }
                };
                let highest = self.highest.entry(resource(id)).or_default();
                let accepted = token >= *highest;
                *highest = (*highest).max(token);
                self.sections[i].writes.push(Write {
                    decided,
                    at: t,
                    accepted,
                });
                if accepted {
                    "ok"
                } else {
                    "stale"
                }
            }
            ["RELEASED" | "LOST", id, token] => {
                let token: i64 = token.parse().expect("token");
                if let Some(i) = self.open.remove(&(id.to_string(), token)) {
                    if words[0] == "LOST" {
                        self.sections[i].lost = Some(t);
                    } else {
                        self.sections[i].released = Some(t);
                    }
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
    /// Each client's id and process, kept after the processes end.
    pids: Vec<(String, u32)>,
    careless: Vec<String>,
}

/// The lock client's mode that ignores `lost()`.
const CARELESS: &str = "careless-lock";

/// What the clients did, as the store saw it.
pub struct Run {
    pub sections: Vec<Section>,
    /// When each client process was paused (from the nemesis's log).
    pub pauses: HashMap<String, Vec<(u64, u64)>>,
    /// The clients that ignore `lost()`.
    pub careless: Vec<String>,
}

impl Locks {
    /// Starts the store, `lockers` clients of the lock (the last of them careless) and
    /// `candidates` of the election on `endpoints`, with sessions of `ttl_secs`.
    pub async fn start(
        endpoints: &[SocketAddr],
        lockers: usize,
        candidates: usize,
        ttl_secs: u64,
    ) -> Locks {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind store");
        let store = listener.local_addr().expect("store address");
        let state = Arc::new(Mutex::new(State::new()));
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
        let roles = (0..lockers)
            .map(|i| {
                let careless = i + 1 == lockers && lockers > 1;
                (format!("c{i}"), if careless { CARELESS } else { "lock" })
            })
            .chain((0..candidates).map(|i| (format!("e{i}"), "election")));
        let (mut clients, mut pids, mut careless) = (Vec::new(), Vec::new(), Vec::new());
        for (id, mode) in roles {
            let child = Command::new(env!("CARGO_BIN_EXE_fault-lock-client"))
                .args([
                    endpoints.as_str(),
                    &store.to_string(),
                    &id,
                    &ttl_secs.to_string(),
                    mode,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn lock client");
            if mode == CARELESS {
                careless.push(id.clone());
            }
            pids.push((id, child.id()));
            clients.push(child);
        }
        Locks {
            state,
            clients,
            pids,
            careless,
        }
    }

    /// The processes of the clients inside a critical section now (begun, not ended),
    /// or of all clients if none is: pausing a holder is what tests fencing.
    pub fn holders(&self) -> impl Fn() -> Vec<u32> + Send + 'static {
        let pids: HashMap<String, u32> = self.pids.iter().cloned().collect();
        let all: Vec<u32> = self.pids.iter().map(|(_, p)| *p).collect();
        let state = self.state.clone();
        move || {
            let state = state.lock().expect("lock");
            let inside: Vec<u32> = state
                .open
                .iter()
                .filter(|(_, &i)| state.sections[i].writes.len() == 1)
                .filter_map(|((id, _), _)| pids.get(id).copied())
                .collect();
            if inside.is_empty() {
                all.clone()
            } else {
                inside
            }
        }
    }

    /// Stops the clients; returns the sections the store saw and, from the nemesis's log,
    /// when each client was paused.
    pub fn stop(&mut self, log: &[(u64, u64, Fault)]) -> Run {
        for c in &mut self.clients {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.clients.clear();
        let mut pauses: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
        for (began, healed, fault) in log {
            if let Fault::PauseClient(pid) = fault {
                if let Some((id, _)) = self.pids.iter().find(|(_, p)| p == pid) {
                    pauses
                        .entry(id.clone())
                        .or_default()
                        .push((*began, *healed));
                }
            }
        }
        Run {
            sections: std::mem::take(&mut self.state.lock().expect("lock").sections),
            pauses,
            careless: self.careless.clone(),
        }
    }
}

impl Drop for Locks {
    fn drop(&mut self) {
        self.stop(&[]);
    }
}

/// What the lock workload came to.
#[derive(Debug, Default)]
pub struct Summary {
    pub sections: usize,
    /// Sections of the election's leaders (the rest are the lock's).
    pub leaderships: usize,
    /// Writes the store refused as stale: unsafe sections the tokens caught.
    pub stale_writes: usize,
    /// Pairs of critical sections that overlapped in time (each caught by the tokens).
    pub overlaps: usize,
    /// Sections that `lost()` ended.
    pub lost: usize,
}

fn span(s: &Section) -> Option<(u64, u64)> {
    Some((s.writes.first()?.at, s.writes.last()?.at))
}

pub fn check(run: &Run) -> Result<Summary, String> {
    let mut summary = Summary::default();
    for r in ['c', 'e'] {
        let sections: Vec<&Section> = run
            .sections
            .iter()
            .filter(|s| resource(&s.client) == r)
            .collect();
        let s = check_resource(&sections, run)?;
        summary.sections += s.sections;
        summary.stale_writes += s.stale_writes;
        summary.overlaps += s.overlaps;
        summary.lost += s.lost;
        if r == 'e' {
            summary.leaderships = s.sections;
        }
    }
    Ok(summary)
}

fn check_resource(sections: &[&Section], run: &Run) -> Result<Summary, String> {
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
    // lost() in time: a holder that was not stopped learns of its loss before the next
    // holder is admitted, so it never decides to write after that.
    let paused_between = |client: &str, from: u64, to: u64| {
        run.pauses.get(client).is_some_and(|p| {
            p.iter()
                .any(|(began, healed)| *began <= to && *healed >= from)
        })
    };
    for a in sections {
        if run.careless.contains(&a.client) {
            continue;
        }
        for b in sections {
            if b.token <= a.token {
                continue;
            }
            let mut previous = a.admitted;
            for w in &a.writes {
                if w.decided > b.admitted && !paused_between(&a.client, previous, w.decided) {
                    return Err(format!(
                        "{} decided to write {} ms after {} was admitted, without having \
                         been paused: its lost() had not fired: {a:?} then {b:?}",
                        a.client,
                        (w.decided - b.admitted) / 1_000_000,
                        b.client
                    ));
                }
                previous = w.decided;
            }
        }
    }
    let mut summary = Summary {
        sections: sections.len(),
        lost: sections.iter().filter(|s| s.lost.is_some()).count(),
        ..Default::default()
    };
    summary.stale_writes = sections
        .iter()
        .flat_map(|s| &s.writes)
        .filter(|w| !w.accepted)
        .count();
    for (i, a) in sections.iter().enumerate() {
        for b in &sections[i + 1..] {
            let (Some((a0, a1)), Some((b0, b1))) = (span(a), span(b)) else {
                continue;
            };
            if a0 <= b1 && b0 <= a1 {
                let clean = |s: &Section| s.writes.iter().all(|w| w.accepted);
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn section(client: &str, token: i64, admitted: u64, decided: &[u64]) -> Section {
        Section {
            client: client.to_string(),
            token,
            locking: admitted.saturating_sub(MS),
            admitted,
            writes: decided
                .iter()
                .map(|&d| Write {
                    decided: d,
                    at: d + MS,
                    accepted: true,
                })
                .collect(),
            released: None,
            lost: None,
        }
    }

    #[test]
    fn a_write_decided_after_the_next_holder_came_needs_a_pause() {
        // c0 decides its second write at 150 ms, after c1 was admitted at 120 ms.
        let a = section("c0", 10, 0, &[10 * MS, 150 * MS]);
        let mut b = section("c1", 20, 120 * MS, &[125 * MS, 200 * MS]);
        b.writes[0].accepted = true;
        let mut run = Run {
            sections: vec![a, b],
            pauses: HashMap::new(),
            careless: vec![],
        };
        let err = check(&run).expect_err("lost() late without a pause");
        assert!(err.contains("lost() had not fired"), "{err}");

        // Paused from 50 to 140 ms: the process could not have noticed. The overlap must
        // then be caught by the tokens instead.
        run.pauses.insert("c0".into(), vec![(50 * MS, 140 * MS)]);
        let err = check(&run).expect_err("an overlap the tokens did not catch");
        assert!(err.contains("tokens did not catch"), "{err}");
        run.sections[0].writes[1].accepted = false;
        let summary = check(&run).expect("paused, and fenced");
        assert_eq!((summary.overlaps, summary.stale_writes), (1, 1));

        // A pause of another client, or one over before the last step, excuses nothing.
        run.pauses.insert("c0".into(), vec![(0, 5 * MS)]);
        assert!(check(&run).is_err());
        run.pauses.clear();
        run.pauses.insert("c1".into(), vec![(50 * MS, 140 * MS)]);
        assert!(check(&run).is_err());
        // A careless client (one that ignores lost()) is held to the tokens alone.
        run.careless.push("c0".into());
        assert!(check(&run).is_ok());
    }

    #[test]
    fn the_lock_and_the_election_are_fenced_apart() {
        // The same token numbers on the two resources are two holders, not one.
        let run = Run {
            sections: vec![
                section("c0", 10, 0, &[MS, 2 * MS]),
                section("e0", 10, 0, &[MS, 2 * MS]),
            ],
            pauses: HashMap::new(),
            careless: vec![],
        };
        let summary = check(&run).expect("separate resources");
        assert_eq!((summary.sections, summary.leaderships), (2, 1));
    }
}
