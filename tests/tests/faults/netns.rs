//! Members on real (virtual) hosts: each member in a network namespace of its own, joined by
//! a veth pair to a bridge in the test's namespace, where the clients run. Faults are made
//! where they happen in practice, in each member's own packet filter (`iptables`) and queue
//! discipline (`tc netem`): the leader cut off from its peers but not from clients (clients
//! stuck on the minority side), the leader cut off from clients but not from peers, a member
//! cut off from everyone, a one-way link, a bridge (two members that cannot see each other
//! but both see the third), and delay with jitter plus 30% loss. Clients talk to any member
//! and fail over as users' clients do.
//!
//! Needs root, `ip` and `iptables` (CI installs iptables); elsewhere it is skipped, except
//! under CI. Inside its namespace each member listens on the standard ports 2379 and 2380 of
//! its own address: nothing else can hold them there.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::harness::Process;

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| PathBuf::from(d).join(name))
        .find(|p| p.is_file())
}

/// Why namespaces cannot be used here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    for t in ["ip", "iptables", "tc"] {
        if tool(t).is_none() {
            return Some(format!("{t} is not installed"));
        }
    }
    None
}

fn run(program: &str, args: &[&str]) {
    let path = tool(program).unwrap_or_else(|| PathBuf::from(program));
    let out = Command::new(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge and `n` namespaces on 10.231.<id>.0/24: the host (clients) is .1, member `i`
/// is .(10 + i). Torn down on drop.
pub struct Net {
    id: u32,
    n: usize,
}

impl Net {
    pub fn create(n: usize) -> Net {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = (std::process::id() + NEXT.fetch_add(1, Ordering::Relaxed)) % 200 + 20;
        let net = Net { id, n };
        net.teardown();
        let br = net.bridge();
        run("ip", &["link", "add", &br, "type", "bridge"]);
        run(
            "ip",
            &["addr", "add", &format!("{}/24", net.host()), "dev", &br],
        );
        run("ip", &["link", "set", &br, "up"]);
        // A host that filters bridged traffic (br_netfilter with a FORWARD policy of DROP,
        // as Docker sets) must let this bridge's through.
        run(
            "iptables",
            &["-I", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"],
        );
        for i in 0..n {
            let (ns, host_end, ns_end) = (net.ns(i), net.host_end(i), net.ns_end(i));
            run("ip", &["netns", "add", &ns]);
            run(
                "ip",
                &[
                    "link", "add", &host_end, "type", "veth", "peer", "name", &ns_end,
                ],
            );
            run("ip", &["link", "set", &ns_end, "netns", &ns]);
            run("ip", &["link", "set", &host_end, "master", &br]);
            run("ip", &["link", "set", &host_end, "up"]);
            net.in_ns(
                i,
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{}/24", net.member(i)),
                    "dev",
                    &ns_end,
                ],
            );
            net.in_ns(i, "ip", &["link", "set", &ns_end, "up"]);
            net.in_ns(i, "ip", &["link", "set", "lo", "up"]);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("cbr{}", self.id)
    }

    fn ns(&self, i: usize) -> String {
        format!("cairn{}m{i}", self.id)
    }

    fn host_end(&self, i: usize) -> String {
        format!("cv{}h{i}", self.id)
    }

    fn ns_end(&self, i: usize) -> String {
        format!("cv{}n{i}", self.id)
    }

    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.id as u8, 1)
    }

    pub fn member(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, self.id as u8, 10 + i as u8)
    }

    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.member(i).into(), CLIENT_PORT)
    }

    fn in_ns(&self, i: usize, program: &str, args: &[&str]) {
        let path = tool(program).unwrap_or_else(|| PathBuf::from(program));
        let ns = self.ns(i);
        let path = path.to_string_lossy().into_owned();
        let mut all = vec!["netns", "exec", ns.as_str(), path.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Starts the cluster's members, member `i` in namespace `i`, without waiting.
    pub fn start_members(&self) -> Vec<Process> {
        let initial = (0..self.n)
            .map(|i| format!("m{i}=http://{}:{PEER_PORT}", self.member(i)))
            .collect::<Vec<_>>()
            .join(",");
        let ip = tool("ip").expect("ip");
        (0..self.n)
            .map(|i| {
                let me = self.member(i);
                let args = vec![
                    "netns".into(),
                    "exec".into(),
                    self.ns(i),
                    env!("CARGO_BIN_EXE_cairn-member").into(),
                    format!("--name=m{i}"),
                    format!("--listen-client-urls=http://{me}:{CLIENT_PORT}"),
                    format!("--advertise-client-urls=http://{me}:{CLIENT_PORT}"),
                    format!("--listen-peer-urls=http://{me}:{PEER_PORT}"),
                    format!("--initial-advertise-peer-urls=http://{me}:{PEER_PORT}"),
                    format!("--initial-cluster={initial}"),
                    "--initial-cluster-state=new".into(),
                    "--heartbeat-interval=100".into(),
                    format!("--election-timeout={}", crate::cluster_harness::ELECTION_MS),
                    "--log-level=warn".into(),
                ];
                let mut p = Process::member(ip.clone(), CLIENT_PORT, args);
                p.addr = self.client_addr(i);
                p
            })
            .collect()
    }

    /// Member `i` drops every packet to and from these addresses.
    pub fn drop_between(&self, i: usize, others: &[Ipv4Addr]) {
        for o in others {
            let o = o.to_string();
            self.in_ns(i, "iptables", &["-A", "INPUT", "-s", &o, "-j", "DROP"]);
            self.in_ns(i, "iptables", &["-A", "OUTPUT", "-d", &o, "-j", "DROP"]);
        }
    }

    /// Member `i` sends nothing to these addresses (but still hears them).
    pub fn drop_outgoing(&self, i: usize, others: &[Ipv4Addr]) {
        for o in others {
            self.in_ns(
                i,
                "iptables",
                &["-A", "OUTPUT", "-d", &o.to_string(), "-j", "DROP"],
            );
        }
    }

    /// The other members' addresses, seen from member `i`.
    pub fn peers_of(&self, i: usize) -> Vec<Ipv4Addr> {
        (0..self.n)
            .filter(|&j| j != i)
            .map(|j| self.member(j))
            .collect()
    }

    /// Member `i` loses this share of the packets it receives and of those it sends.
    pub fn lose(&self, i: usize, loss_pct: u32) {
        let p = format!("{:.2}", f64::from(loss_pct) / 100.0);
        for chain in ["INPUT", "OUTPUT"] {
            self.in_ns(
                i,
                "iptables",
                &[
                    "-A",
                    chain,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            );
        }
    }

    /// Member `i`'s link made late: 20 ms ± 10 ms with netem where the kernel has it, else
    /// a 1 Mbit/s bottleneck (tbf) whose queue delays what crosses it. Returns which.
    pub fn slow(&self, i: usize) -> &'static str {
        if self.qdisc(i, "add", &["netem", "delay", "20ms", "10ms"]) {
            return "netem delay 20ms 10ms";
        }
        assert!(
            self.qdisc(
                i,
                "add",
                &["tbf", "rate", "1mbit", "burst", "32kbit", "latency", "300ms"]
            ),
            "neither netem nor tbf can shape member {i}'s link"
        );
        "tbf 1mbit (this kernel has no netem)"
    }

    /// `tc qdisc <verb> dev <member i's link> root <args>` in its namespace; whether it worked.
    fn qdisc(&self, i: usize, verb: &str, args: &[&str]) -> bool {
        let (ns, dev) = (self.ns(i), self.ns_end(i));
        Command::new(tool("ip").expect("ip"))
            .args([
                "netns", "exec", &ns, "tc", "qdisc", verb, "dev", &dev, "root",
            ])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Every fault undone: filters flushed, queue disciplines back to the default.
    pub fn heal(&self) {
        for i in 0..self.n {
            self.in_ns(i, "iptables", &["-F"]);
            // Fails when there is no qdisc to delete: nothing to undo then.
            self.qdisc(i, "del", &[]);
        }
    }

    fn teardown(&self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new(tool("ip").unwrap_or_else(|| "ip".into()))
                .args(args)
                .output();
        };
        for i in 0..self.n {
            quiet(&["netns", "del", &self.ns(i)]);
            quiet(&["link", "del", &self.host_end(i)]);
        }
        let br = self.bridge();
        quiet(&["link", "del", &br]);
        let _ = Command::new(tool("iptables").unwrap_or_else(|| "iptables".into()))
            .args(["-D", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT"])
            .output();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A fault of the namespace nemesis, by name.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The leader hears no peer and no peer hears it; clients still reach it.
    LeaderCutFromPeers,
    /// The leader still talks to its peers; clients cannot reach it.
    LeaderCutFromClients,
    /// One member reaches nobody and nobody reaches it.
    Isolated,
    /// The leader sends nothing to its peers but still hears them.
    LeaderOneWay,
    /// Two members cannot see each other; both see the third.
    Bridge,
    /// Every link late (netem, or a bottleneck without it); one member also loses 30% of
    /// its packets.
    Lossy,
}

const FAULTS: [Fault; 6] = [
    Fault::LeaderCutFromPeers,
    Fault::LeaderCutFromClients,
    Fault::Isolated,
    Fault::LeaderOneWay,
    Fault::Bridge,
    Fault::Lossy,
];

/// Each member's Status that came within 500 ms, by member index.
async fn statuses(addrs: &[SocketAddr]) -> Vec<(usize, cairn_api::etcdserverpb::StatusResponse)> {
    use cairn_api::etcdserverpb::{maintenance_client::MaintenanceClient, StatusRequest};
    let mut out = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let mut m = MaintenanceClient::new(crate::lazy_channel(*a));
        let asked = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            m.status(StatusRequest {}),
        );
        if let Ok(Ok(s)) = asked.await {
            out.push((i, s.into_inner()));
        }
    }
    out
}

/// Which member leads now, as the members that answer say.
async fn leader(addrs: &[SocketAddr]) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let answers = statuses(addrs).await;
        let mut leaders: Vec<u64> = answers.iter().map(|(_, s)| s.leader).collect();
        leaders.dedup();
        if let [l] = leaders[..] {
            let id =
                |s: &cairn_api::etcdserverpb::StatusResponse| s.header.map_or(0, |h| h.member_id);
            if let Some((i, _)) = answers.iter().find(|(_, s)| id(s) == l) {
                return *i;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no agreed leader: {leaders:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The highest raft term any member reports.
async fn term(addrs: &[SocketAddr]) -> u64 {
    statuses(addrs)
        .await
        .iter()
        .map(|(_, s)| s.raft_term)
        .max()
        .unwrap_or(0)
}

impl Net {
    async fn inject(&self, fault: Fault, addrs: &[SocketAddr], rng: &mut impl rand::Rng) {
        let l = leader(addrs).await;
        match fault {
            Fault::LeaderCutFromPeers => self.drop_between(l, &self.peers_of(l)),
            Fault::LeaderCutFromClients => self.drop_between(l, &[self.host()]),
            Fault::Isolated => {
                let i = rng.gen_range(0..self.n);
                let mut all = self.peers_of(i);
                all.push(self.host());
                self.drop_between(i, &all);
            }
            Fault::LeaderOneWay => self.drop_outgoing(l, &self.peers_of(l)),
            Fault::Bridge => {
                // The leader is the bridge: the other two cannot see each other.
                let others: Vec<usize> = (0..self.n).filter(|&j| j != l).collect();
                self.drop_between(others[0], &[self.member(others[1])]);
                self.drop_between(others[1], &[self.member(others[0])]);
            }
            Fault::Lossy => {
                let lossy = rng.gen_range(0..self.n);
                let mut how = "";
                for i in 0..self.n {
                    how = self.slow(i);
                }
                self.lose(lossy, 30);
                eprintln!("namespace faults: links slowed by {how}; member {lossy} loses 30%");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_on_real_networks_stay_correct_under_partitions() {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    use std::sync::atomic::{AtomicBool, AtomicI64};
    use std::sync::Arc;
    use std::time::Duration;

    if let Some(why) = unavailable() {
        assert!(std::env::var_os("CI").is_none(), "namespaces: {why}");
        eprintln!("skipped: partitions on real networks need namespaces: {why} (the in-process partitions of suite.rs still run)");
        return;
    }
    let _exclusive = crate::cluster_harness::CLUSTERS.clone().lock_owned().await;
    let seed = crate::suite::seed();
    let rounds: usize = std::env::var("CAIRN_NETNS_FAULTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    eprintln!("namespace faults: {rounds} faults, CAIRN_FAULTS_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let net = Net::create(3);
    let mut members = net.start_members();
    let addrs: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
    for a in &addrs {
        crate::harness::wait_ready(*a).await;
    }
    let from = {
        use cairn_api::etcdserverpb::{kv_client::KvClient, RangeRequest};
        let r = KvClient::new(crate::lazy_channel(addrs[0]))
            .range(RangeRequest {
                key: vec![0],
                count_only: true,
                ..Default::default()
            })
            .await
            .expect("revision")
            .into_inner();
        r.header.map_or(0, |h| h.revision) + 1
    };

    let stop = Arc::new(AtomicBool::new(false));
    let until = Arc::new(AtomicI64::new(0));
    let mut watchers: Vec<_> = addrs
        .iter()
        .map(|a| crate::watchers::spawn(*a, from, until.clone(), false))
        .collect();
    watchers.push(crate::watchers::spawn(addrs[0], from, until.clone(), true));
    let registers = crate::register::spawn(&addrs, 6, seed, stop.clone());
    let appends = crate::suite::spawn_appenders(&addrs, stop.clone(), None);
    // A user's client: every member's address, failing over on its own.
    let failover = {
        let stop = stop.clone();
        let endpoints: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        tokio::spawn(async move {
            let c =
                cairn_client::Client::connect(&endpoints, cairn_client::ClientOptions::default())
                    .await
                    .expect("connect");
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("ack/failover/{n:08}");
                if c.put(key.as_str(), n.to_string(), None).await.is_ok() {
                    acked.push((key, n));
                }
            }
            acked
        })
    };

    let mut order = FAULTS.to_vec();
    let mut done = Vec::new();
    let mut elections = 0;
    for round in 0..rounds {
        let before = term(&addrs).await;
        if round % FAULTS.len() == 0 {
            order.shuffle(&mut rng);
        }
        let fault = order[round % FAULTS.len()];
        net.inject(fault, &addrs, &mut rng).await;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        net.heal();
        done.push(fault);
        // Healed: the cluster must elect and serve again before the next fault.
        leader(&addrs).await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        elections += term(&addrs).await.saturating_sub(before);
    }
    // A leader cut off from its peers must have been replaced: else the faults did nothing.
    assert!(
        elections > 0,
        "no election in {done:?}: the faults did not reach the members"
    );

    stop.store(true, Ordering::Relaxed);
    let histories = registers.await.expect("register clients");
    let mut acked = appends.await.expect("appenders");
    let failover_acked = failover.await.expect("failover client");
    acked.extend(failover_acked.iter().cloned());
    let last = crate::suite::converge(&addrs).await;
    until.store(last, Ordering::Relaxed);
    let mut seen = Vec::new();
    for w in watchers.drain(..) {
        seen.push(
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("watchers reach the last revision")
                .expect("watcher"),
        );
    }
    let mut ops = 0;
    for (key, history) in &histories {
        ops += history.len();
        let verdict = crate::linearizability::check(history, crate::suite::BUDGET);
        assert_eq!(
            verdict,
            crate::linearizability::Verdict::Linearizable,
            "register {key} (seed {seed})"
        );
    }
    let lost = crate::suite::lost_writes(&addrs, &acked).await;
    assert_eq!(lost, 0, "acknowledged writes lost (seed {seed})");
    let mut hashes = Vec::new();
    for a in &addrs {
        use cairn_api::etcdserverpb::{maintenance_client::MaintenanceClient, HashKvRequest};
        hashes.push(
            MaintenanceClient::new(crate::lazy_channel(*a))
                .hash_kv(HashKvRequest { revision: last })
                .await
                .expect("HashKV")
                .into_inner()
                .hash,
        );
    }
    assert!(
        hashes.iter().all(|h| *h == hashes[0]),
        "members disagree at {last}: {hashes:?} (seed {seed})"
    );
    crate::watchers::check(&seen, from, last).unwrap_or_else(|e| panic!("{e} (seed {seed})"));
    assert!(
        ops > 100 && failover_acked.len() > 50,
        "too little work done: {ops} register ops, {} failover writes",
        failover_acked.len()
    );
    eprintln!(
        "namespace faults result: seed={seed} faults={done:?} register_ops={ops} linearizable=all \
         elections={elections} acked_writes={} failover_writes={} lost=0 revisions={} reconnects={} \
         hashes_equal=true",
        acked.len(),
        failover_acked.len(),
        last - from + 1,
        seen.iter().map(|w| w.reconnects).sum::<usize>(),
    );
    for m in &mut members {
        m.kill9();
    }
}
