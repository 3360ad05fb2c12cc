//! Test harness: start Cairn members (in-process or as processes) and the reference etcd on
//! ephemeral loopback ports with temporary data directories, and connect clients to them.
//! Everything is cleaned up on drop.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_api::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, StatusRequest,
};
use tonic::transport::{Channel, Endpoint};

/// Ports handed to member processes come from below the kernel's ephemeral range
/// (32768–60999 by default): a port the OS picked and we released could be taken by any
/// outgoing connection before the member binds it, one from here cannot.
const PORTS: std::ops::Range<u32> = 12_000..32_000;

/// A loopback port nothing listens on now, for a member process to bind. Each call moves
/// on to the next port (from a per-run starting point), so parallel tests never share one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PORTS.end - PORTS.start;
    let _ = NEXT.compare_exchange(
        0,
        std::process::id().wrapping_mul(7919) % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = (PORTS.start + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS:?}")
}

/// Connects a channel to `addr`, retrying until `deadline`.
pub async fn channel(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid endpoint")
        .tcp_nodelay(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match endpoint.connect().await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Waits until the server at `addr` answers Status (it has a leader and serves).
pub async fn wait_ready(addr: SocketAddr) -> Channel {
    let ch = channel(addr).await;
    let mut m = MaintenanceClient::new(ch.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match m.status(StatusRequest {}).await {
            Ok(s) if s.get_ref().leader != 0 => return ch,
            _ if Instant::now() > deadline => panic!("{addr} never became ready"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

pub fn kv(ch: &Channel) -> KvClient<Channel> {
    KvClient::new(ch.clone())
}

/// An in-process member on an ephemeral port.
pub struct Embedded {
    pub server: Option<cairn_core::Server>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Embedded {
    pub async fn start() -> Embedded {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, |_| {}).await
    }

    /// Starts with a configuration tweak (e.g. a smaller request limit).
    pub async fn start_with(tweak: impl FnOnce(&mut cairn_core::Config)) -> Embedded {
        Self::start_in(tempfile::tempdir().expect("temp dir"), tweak).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut cairn_core::Config),
    ) -> Embedded {
        let mut cfg = cairn_core::Config::new();
        cfg.data_dir = Some(dir.path().join("data"));
        cfg.listen_client_urls = vec!["http://127.0.0.1:0".into()];
        cfg.listen_peer_urls = vec!["http://127.0.0.1:0".into()];
        tweak(&mut cfg);
        let server = cairn_core::Server::start(cfg).await.expect("start member");
        let addr = server.client_addrs()[0];
        wait_ready(addr).await;
        Embedded {
            server: Some(server),
            addr,
            dir,
        }
    }

    pub async fn kv(&self) -> KvClient<Channel> {
        kv(&channel(self.addr).await)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
    }

    /// Stops cleanly and starts again on the same data directory.
    pub async fn restart(mut self) -> Embedded {
        if let Some(s) = self.server.take() {
            s.stop().await;
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        Self::start_in(dir, |_| {}).await
    }
}

/// A member (or etcd) running as a child process; killed on drop.
pub struct Process {
    child: Option<Child>,
    program: PathBuf,
    args: Vec<String>,
    pub addr: SocketAddr,
    /// Kept so the data directory lives as long as the process.
    _dir: tempfile::TempDir,
}

impl Process {
    fn spawn(program: &Path, args: &[String]) -> Child {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // CAIRN_TEST_LOG=1 shows the members' logs when debugging a test.
            .stderr(if std::env::var_os("CAIRN_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()))
    }

    /// A Cairn member process with its own data directory.
    pub async fn cairn() -> Process {
        Self::cairn_with(&[]).await
    }

    /// The same with `extra` flags.
    pub async fn cairn_with(extra: &[&str]) -> Process {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::single(&dir.path().join("data"), extra, dir).await
    }

    /// A single Cairn member process keeping its data in `data_dir` (e.g. on a filesystem
    /// that can lose unsynced writes), serving before this returns.
    #[allow(dead_code)] // the fault suite's power cuts
    pub async fn cairn_at(data_dir: &Path, extra: &[&str]) -> Process {
        Self::single(data_dir, extra, tempfile::tempdir().expect("temp dir")).await
    }

    async fn single(data_dir: &Path, extra: &[&str], dir: tempfile::TempDir) -> Process {
        let port = free_port();
        let peer = free_port();
        let mut args = vec![
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls=http://127.0.0.1:{port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            "--log-level=warn".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Self::start(member_program(), args, port, dir).await
    }

    /// A Cairn member process started with `args` (plus its data dir and client URL),
    /// without waiting for it to serve: members of a new cluster wait for each other.
    pub fn cairn_member(port: u16, args: Vec<String>) -> Process {
        Self::member(member_program(), port, args)
    }

    /// A member of `program` (Cairn or etcd, which take the same flags) on client `port`
    /// (`http://`, unless `args` name the client URLs).
    pub fn member(program: PathBuf, port: u16, args: Vec<String>) -> Process {
        Self::member_with(program, port, args, |_| {})
    }

    /// The same, after `prepare` has been given the data directory (e.g. to restore a
    /// backup into it).
    pub fn member_with(
        program: PathBuf,
        port: u16,
        mut args: Vec<String>,
        prepare: impl FnOnce(&Path),
    ) -> Process {
        let dir = tempfile::tempdir().expect("temp dir");
        prepare(&dir.path().join("data"));
        // Data kept elsewhere (on a filesystem that can lose unsynced writes) is named in `args`.
        if !args.iter().any(|a| a.starts_with("--data-dir")) {
            args.push(format!("--data-dir={}", dir.path().join("data").display()));
        }
        if !args.iter().any(|a| a.starts_with("--listen-client-urls")) {
            args.push(format!("--listen-client-urls=http://127.0.0.1:{port}"));
            args.push(format!("--advertise-client-urls=http://127.0.0.1:{port}"));
        }
        Process {
            child: Some(Self::spawn(&program, &args)),
            program,
            args,
            addr: ([127, 0, 0, 1], port).into(),
            _dir: dir,
        }
    }

    /// The member's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// Waits up to `limit` for the process to exit on its own.
    pub async fn exits_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = &mut self.child {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The running process's id.
    #[allow(dead_code)] // the soak's resource samples
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The reference etcd, if its binary is installed (`ETCD_BIN` or `etcd` on PATH).
    pub async fn etcd() -> Option<Process> {
        Self::etcd_with(&[]).await
    }

    /// The same with `extra` flags.
    pub async fn etcd_with(extra: &[&str]) -> Option<Process> {
        let program = etcd_binary()?;
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let peer = free_port();
        let mut args = vec![
            format!("--data-dir={}", dir.path().join("data").display()),
            format!("--listen-client-urls=http://127.0.0.1:{port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
            "--log-level=error".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        Some(Self::start(program, args, port, dir).await)
    }

    async fn start(
        program: PathBuf,
        args: Vec<String>,
        port: u16,
        dir: tempfile::TempDir,
    ) -> Process {
        let child = Self::spawn(&program, &args);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        wait_ready(addr).await;
        Process {
            child: Some(child),
            program,
            args,
            addr,
            _dir: dir,
        }
    }

    pub async fn kv(&self) -> KvClient<Channel> {
        kv(&channel(self.addr).await)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the running process, as `kill -s` does.
    #[allow(dead_code)] // the fault suite's pauses; the `it` binary does not pause members
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            signal_pid(c.id(), signal);
        }
    }

    /// Starts the same program again on the same data directory and ports.
    pub async fn restart(&mut self) {
        self.respawn();
        wait_ready(self.addr).await;
    }

    /// Kills and starts the process again without waiting for it to serve: members of a
    /// cluster that lost power all come back before any can elect a leader.
    pub fn respawn(&mut self) {
        self.kill9();
        self.child = Some(Self::spawn(&self.program, &self.args));
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends `signal` to process `pid` with kill(1): the tests need no libc binding for it.
#[allow(dead_code)] // used by the fault suite only
pub fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {signal} {pid}");
}

/// The member binary the tests start; `CAIRN_MEMBER_BIN` points them at another build (a
/// copy of this one, say, that a long fault loop keeps running while the tree rebuilds).
pub fn member_program() -> PathBuf {
    std::env::var_os("CAIRN_MEMBER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cairn-member")))
}

/// The etcd binary to compare against, if any.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ETCD_BIN") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcd"))
            .find(|p| p.is_file())
    })
}

/// The etcdctl binary, if any.
/// `found` (a reference tool or server), or `None` with a note that the test is skipped.
/// Under CI (`CI` set) a missing reference fails the test: `.ci/run` installs it, and a
/// comparison that silently skips checks nothing.
pub fn reference<T>(found: Option<T>, what: &str) -> Option<T> {
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install {what} (apt-get install -y etcd-server etcd-client)"
        );
        eprintln!("{what} not installed: skipped (apt-get install -y etcd-server etcd-client)");
    }
    found
}

pub fn etcdctl_binary() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("etcdctl"))
            .find(|p| p.is_file())
    })
}

/// One watch stream to a member, for tests.
pub struct WatchConn {
    tx: tokio::sync::mpsc::Sender<cairn_api::etcdserverpb::WatchRequest>,
    pub rx: tonic::Streaming<cairn_api::etcdserverpb::WatchResponse>,
}

impl WatchConn {
    pub async fn open(addr: SocketAddr) -> WatchConn {
        let ch = channel(addr).await;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let mut client = cairn_api::etcdserverpb::watch_client::WatchClient::new(ch);
        let rx = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("open watch stream")
            .into_inner();
        WatchConn { tx, rx }
    }

    pub async fn send(&self, req: cairn_api::etcdserverpb::watch_request::RequestUnion) {
        let req = cairn_api::etcdserverpb::WatchRequest {
            request_union: Some(req),
        };
        self.tx.send(req).await.expect("watch stream open");
    }

    /// Closes the sending side of the stream (as a client that has no more requests).
    pub fn close_send(&mut self) {
        self.tx = tokio::sync::mpsc::channel(1).0;
    }

    /// Creates a watcher and returns the `created` response.
    pub async fn create(
        &mut self,
        c: cairn_api::etcdserverpb::WatchCreateRequest,
    ) -> cairn_api::etcdserverpb::WatchResponse {
        self.send(cairn_api::etcdserverpb::watch_request::RequestUnion::CreateRequest(c))
            .await;
        let r = self.next().await;
        assert!(r.created, "expected a created response, got {r:?}");
        r
    }

    /// The next response; fails the test if none comes within 20 s.
    pub async fn next(&mut self) -> cairn_api::etcdserverpb::WatchResponse {
        match tokio::time::timeout(Duration::from_secs(20), self.rx.message()).await {
            Ok(Ok(Some(r))) => r,
            other => panic!("no watch response: {other:?}"),
        }
    }
}
