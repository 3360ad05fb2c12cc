//! The nemesis: injects one fault at a time into a running cluster, holds it, heals it,
//! and logs when each happened. Faults never take more than a minority of the members out,
//! so the cluster as a whole stays available and every check can demand progress.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::cluster_harness::Cluster;
use crate::harness::signal_pid;
use crate::now;

#[derive(Clone, Debug)]
pub enum Fault {
    /// SIGKILL a member, restart it from its data directory at heal.
    Kill(usize),
    /// SIGSTOP a member for longer than a lease lives, SIGCONT at heal.
    Pause(usize),
    /// Cut the leader off from everyone else.
    IsolateLeader(usize),
    /// Cut these members (a minority) off from the rest.
    Split(Vec<usize>),
    /// Two halves that cannot see each other, both seeing this one member.
    Bridge(usize),
    /// SIGSTOP a lock client process (a "GC pause" longer than its session's lease).
    PauseClient(u32),
}

impl Fault {
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill",
            Fault::Pause(_) => "pause",
            Fault::IsolateLeader(_) => "isolate-leader",
            Fault::Split(_) => "minority-partition",
            Fault::Bridge(_) => "bridge",
            Fault::PauseClient(_) => "pause-lock-client",
        }
    }
}

/// How many kinds of fault there are.
const KINDS: usize = 6;

pub struct Nemesis {
    rng: StdRng,
    /// Member IDs, by index.
    ids: Vec<u64>,
    /// The lock client processes to pause: those inside a critical section, if any.
    clients: Box<dyn Fn() -> Vec<u32> + Send>,
    /// Fault kinds still to come in this round: every round injects each kind once, in a
    /// random order, so even a short run sees every kind.
    round: Vec<usize>,
    /// How long a pause lasts: longer than the leases the workloads hold.
    pause: Duration,
    /// When each fault began and was healed (run clock).
    pub log: Vec<(u64, u64, Fault)>,
    /// No SIGKILL: a soak watches long-lived members for leaks.
    no_kills: bool,
}

impl Nemesis {
    pub fn new(
        seed: u64,
        ids: Vec<u64>,
        clients: Box<dyn Fn() -> Vec<u32> + Send>,
        pause: Duration,
    ) -> Nemesis {
        Nemesis {
            rng: StdRng::seed_from_u64(seed),
            ids,
            clients,
            round: Vec::new(),
            pause,
            log: Vec::new(),
            no_kills: false,
        }
    }

    /// The same faults but SIGKILL, which would restart the members a soak watches.
    pub fn without_kills(mut self) -> Nemesis {
        self.no_kills = true;
        self
    }

    /// Faults injected, by kind.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for (_, _, f) in &self.log {
            *counts.entry(f.kind()).or_default() += 1;
        }
        counts
    }

    /// The faults as they ran: start and heal on the run clock in ms, and what.
    pub fn schedule(&self) -> Vec<(u64, u64, String)> {
        self.log
            .iter()
            .map(|(a, b, f)| (a / 1_000_000, b / 1_000_000, format!("{f:?}")))
            .collect()
    }

    /// Times (run clock) at which leadership may have moved: every fault's start and heal.
    pub fn disturbances(&self) -> Vec<u64> {
        let mut t: Vec<u64> = self.log.iter().flat_map(|(a, b, _)| [*a, *b]).collect();
        t.sort();
        t
    }

    /// Injects faults one after another until `until`, and leaves the cluster healed.
    pub async fn run(&mut self, cluster: &mut Cluster, until: Instant) {
        while Instant::now() < until {
            let fault = self.pick(cluster).await;
            let began = now();
            self.inject(cluster, &fault).await;
            let hold = match fault {
                Fault::Pause(_) | Fault::PauseClient(_) => self.pause,
                _ => Duration::from_millis(self.rng.gen_range(1000..4000)),
            };
            tokio::time::sleep(hold).await;
            self.heal(cluster, &fault).await;
            self.log.push((began, now(), fault));
            // Time between faults for the cluster to settle, as real faults are spaced.
            let settle = Duration::from_millis(self.rng.gen_range(500..2000));
            tokio::time::sleep(settle).await;
        }
    }

    async fn pick(&mut self, cluster: &Cluster) -> Fault {
        let n = cluster.members.len();
        let leader = cluster.leader().await;
        // Half the member faults hit the leader: that is where they do the most harm.
        let target = if self.rng.gen_bool(0.5) {
            leader
        } else {
            self.rng.gen_range(0..n)
        };
        if self.round.is_empty() {
            self.round = (0..KINDS).filter(|&k| !(self.no_kills && k == 0)).collect();
            self.round.shuffle(&mut self.rng);
        }
        match self.round.pop().expect("refilled") {
            0 => Fault::Kill(target),
            1 => Fault::Pause(target),
            2 => Fault::IsolateLeader(leader),
            3 => {
                let mut members: Vec<usize> = (0..n).collect();
                let minority = (n - 1) / 2;
                let mut side = Vec::new();
                for _ in 0..minority {
                    side.push(members.remove(self.rng.gen_range(0..members.len())));
                }
                Fault::Split(side)
            }
            4 => {
                let clients = (self.clients)();
                Fault::PauseClient(clients[self.rng.gen_range(0..clients.len())])
            }
            _ => Fault::Bridge(self.rng.gen_range(0..n)),
        }
    }

    async fn inject(&mut self, cluster: &mut Cluster, fault: &Fault) {
        let n = cluster.members.len();
        match fault {
            Fault::Kill(i) => cluster.members[*i].process.kill9(),
            Fault::Pause(i) => cluster.members[*i].process.signal("STOP"),
            Fault::PauseClient(pid) => signal_pid(*pid, "STOP"),
            Fault::IsolateLeader(i) => self.partition(cluster, &[*i], &[]).await,
            Fault::Split(side) => self.partition(cluster, side, &[]).await,
            Fault::Bridge(middle) => {
                let others: Vec<usize> = (0..n).filter(|i| i != middle).collect();
                let (left, _) = others.split_at(others.len() / 2);
                self.partition(cluster, left, &[*middle]).await
            }
        }
    }

    /// Cuts `side` off from everyone except `shared`, who sees both sides.
    async fn partition(&self, cluster: &Cluster, side: &[usize], shared: &[usize]) {
        let n = cluster.members.len();
        for i in 0..n {
            if shared.contains(&i) {
                continue;
            }
            let inside = side.contains(&i);
            let blocked = (0..n)
                .filter(|j| !shared.contains(j) && side.contains(j) != inside)
                .map(|j| self.ids[j])
                .collect();
            cluster.block(i, blocked).await;
        }
    }

    async fn heal(&self, cluster: &mut Cluster, fault: &Fault) {
        match fault {
            Fault::Kill(i) => cluster.members[*i].process.restart().await,
            Fault::Pause(i) => cluster.members[*i].process.signal("CONT"),
            Fault::PauseClient(pid) => signal_pid(*pid, "CONT"),
            Fault::IsolateLeader(_) | Fault::Split(_) | Fault::Bridge(_) => {
                for i in 0..cluster.members.len() {
                    cluster.block(i, vec![]).await;
                }
            }
        }
    }
}
