//! Test support for multi-member clusters of real `cairn` (or etcd) processes: start,
//! find the leader, cut members off (transport fault injection), join new members, and the
//! client helpers the cluster tests share.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::cairnpb::{peer_client::PeerClient, FaultRequest};
use cairn_api::etcdserverpb::{
    cluster_client::ClusterClient, maintenance_client::MaintenanceClient, MemberListRequest,
    PutRequest, RangeRequest, StatusRequest, StatusResponse,
};

use crate::harness::{channel, free_port, kv, wait_ready, Process};

/// Election timeout of test clusters (etcd's default; heartbeat 100 ms).
pub(crate) const ELECTION_MS: u64 = 1000;

pub struct Member {
    pub process: Process,
    pub peer_port: u16,
}

/// A cluster of member processes on ephemeral ports; killed on drop.
pub struct Cluster {
    pub members: Vec<Member>,
    initial_cluster: String,
    /// The reference etcd instead of Cairn.
    etcd: Option<std::path::PathBuf>,
    /// One multi-member cluster at a time: their timing assertions (failover within two
    /// election timeouts) must not depend on how many other clusters share two cores.
    _exclusive: tokio::sync::OwnedMutexGuard<()>,
}

pub(crate) static CLUSTERS: std::sync::LazyLock<Arc<tokio::sync::Mutex<()>>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Mutex::new(())));

pub(crate) fn member_args(
    name: &str,
    peer: u16,
    initial_cluster: &str,
    state: &str,
    etcd: bool,
) -> Vec<String> {
    let mut args = vec![
        format!("--name={name}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster={initial_cluster}"),
        format!("--initial-cluster-state={state}"),
        "--heartbeat-interval=100".into(),
        format!("--election-timeout={ELECTION_MS}"),
    ];
    if etcd {
        args.push("--log-level=error".into());
    } else {
        args.push("--experimental-fault-injection".into());
        // CAIRN_TEST_LOG=1 also turns the members' logs up; any other value is taken as the
        // members' filter (`warn,cairn_core::raft=debug`, say).
        let level = match std::env::var("CAIRN_TEST_LOG") {
            Ok(v) if v != "1" && !v.is_empty() => v,
            Ok(_) => "info".to_string(),
            Err(_) => "warn".to_string(),
        };
        args.push(format!("--log-level={level}"));
    }
    args
}

impl Cluster {
    /// Every member's client address (`host:port`), in member order.
    pub fn client_endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| m.process.addr.to_string())
            .collect()
    }

    /// Starts `n` members (with `extra` flags each) and waits until all of them serve.
    pub async fn start(n: usize, extra: &[&str]) -> Cluster {
        Self::start_program(None, n, extra, &|_| vec![]).await
    }

    /// Starts one member per data directory (e.g. each on a filesystem that can lose
    /// unsynced writes).
    #[allow(dead_code)] // the fault suite's power cuts
    pub async fn start_at(dirs: &[std::path::PathBuf], extra: &[&str]) -> Cluster {
        let each = |i: usize| vec![format!("--data-dir={}", dirs[i].display())];
        Self::start_program(None, dirs.len(), extra, &each).await
    }

    /// The same with the reference etcd's binary.
    pub async fn start_etcd(bin: std::path::PathBuf, n: usize) -> Cluster {
        Self::start_program(Some(bin), n, &[], &|_| vec![]).await
    }

    fn spawn(&self, port: u16, args: Vec<String>) -> Process {
        match &self.etcd {
            Some(bin) => Process::member(bin.clone(), port, args),
            None => Process::cairn_member(port, args),
        }
    }

    async fn start_program(
        etcd: Option<std::path::PathBuf>,
        n: usize,
        extra: &[&str],
        each: &dyn Fn(usize) -> Vec<String>,
    ) -> Cluster {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            members: vec![],
            initial_cluster,
            etcd,
            _exclusive: CLUSTERS.clone().lock_owned().await,
        };
        for (i, &(client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let mut args = member_args(
                &name,
                peer,
                &cluster.initial_cluster,
                "new",
                cluster.etcd.is_some(),
            );
            args.extend(extra.iter().map(|s| s.to_string()));
            args.extend(each(i));
            let process = cluster.spawn(client, args);
            cluster.members.push(Member {
                process,
                peer_port: peer,
            });
        }
        for m in &cluster.members {
            wait_ready(m.process.addr).await;
        }
        cluster.wait_published().await;
        cluster
    }

    /// Waits until every member has announced its client URLs (etcdctl's `--cluster`
    /// commands reach members through them).
    pub async fn wait_published(&self) {
        let mut client = ClusterClient::new(channel(self.members[0].process.addr).await);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(list) = client.member_list(MemberListRequest::default()).await {
                let list = list.into_inner().members;
                if list.len() == self.members.len()
                    && list.iter().all(|m| !m.client_ur_ls.is_empty())
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "members never published client URLs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn status(&self, i: usize) -> Option<StatusResponse> {
        let ch = channel(self.members[i].process.addr).await;
        let mut m = MaintenanceClient::new(ch);
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_secs(2));
        m.status(req).await.ok().map(|r| r.into_inner())
    }

    pub async fn member_id(&self, i: usize) -> u64 {
        self.status(i)
            .await
            .and_then(|s| s.header)
            .map(|h| h.member_id)
            .expect("member answers Status")
    }

    /// The index of the member every running member agrees leads; waits for one.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for (i, m) in self.members.iter().enumerate() {
                if !m.process.is_running() {
                    continue;
                }
                if let Some(s) = self.status(i).await {
                    ids.push((i, s.header.map_or(0, |h| h.member_id)));
                    leaders.push(s.leader);
                }
            }
            leaders.dedup();
            if let [leader] = leaders[..] {
                if let Some((i, _)) = ids.iter().find(|(_, id)| *id == leader) {
                    return *i;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cuts (or with an empty list, heals) member `i`'s raft traffic with these members.
    pub async fn block(&self, i: usize, ids: Vec<u64>) {
        let ch = channel(([127, 0, 0, 1], self.members[i].peer_port).into()).await;
        PeerClient::new(ch)
            .fault(FaultRequest { blocked: ids })
            .await
            .expect("fault injection enabled");
    }

    /// Starts a member that was added with MemberAdd, joining with `existing`.
    pub fn join(&mut self, name: &str, peer: u16) -> usize {
        self.join_with(name, peer, &[])
    }

    /// The same with `extra` flags (e.g. a data directory on a filesystem that can lose
    /// unsynced writes).
    pub fn join_with(&mut self, name: &str, peer: u16, extra: &[String]) -> usize {
        let initial_cluster = format!("{},{name}=http://127.0.0.1:{peer}", self.initial_cluster);
        let mut args = member_args(
            name,
            peer,
            &initial_cluster,
            "existing",
            self.etcd.is_some(),
        );
        args.extend_from_slice(extra);
        let process = self.spawn(free_port(), args);
        self.members.push(Member {
            process,
            peer_port: peer,
        });
        self.members.len() - 1
    }
}

/// A put with a client deadline, so a request stuck on a dead leader fails fast.
pub(crate) async fn put(
    addr: std::net::SocketAddr,
    key: &str,
    value: &str,
    timeout: Duration,
) -> bool {
    let Ok(ch) = tokio::time::timeout(timeout, channel(addr)).await else {
        return false;
    };
    let mut req = tonic::Request::new(PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    });
    req.set_timeout(timeout);
    kv(&ch).put(req).await.is_ok()
}

pub(crate) async fn get(
    addr: std::net::SocketAddr,
    key: &str,
    serializable: bool,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, tonic::Status> {
    let ch = channel(addr).await;
    let mut req = tonic::Request::new(RangeRequest {
        key: key.into(),
        serializable,
        ..Default::default()
    });
    req.set_timeout(timeout);
    let r = kv(&ch).range(req).await?.into_inner();
    Ok(r.kvs.into_iter().next().map(|kv| kv.value))
}

/// Every key under `prefix` a member holds, read locally.
pub(crate) async fn local_keys(
    addr: std::net::SocketAddr,
    prefix: &str,
) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let ch = channel(addr).await;
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    let r = kv(&ch)
        .range(RangeRequest {
            key: prefix.into(),
            range_end: end,
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("serializable range")
        .into_inner();
    r.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect()
}

/// Waits until member `i` holds at least every acknowledged key with its value.
pub(crate) async fn wait_holds(cluster: &Cluster, i: usize, acked: &BTreeMap<Vec<u8>, Vec<u8>>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = local_keys(cluster.members[i].process.addr, "load/").await;
        let missing = acked
            .iter()
            .filter(|(k, v)| held.get(*k) != Some(v))
            .count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {i} misses {missing} of {} acknowledged writes",
            acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
