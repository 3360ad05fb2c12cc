//! TLS on client and peer traffic, with a CA and certificates made at test time (rcgen):
//! a TLS cluster forms and serves; clients and members without a certificate of the right
//! CA are refused while everyone else is served; bad certificate files stop a member at
//! start with a message naming the file; stock etcdctl and cairnctl work with `--cacert
//! --cert --key`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_client::tls::Connector;
use cairn_client::{Client, ClientOptions, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::cluster_harness::{CLUSTERS, ELECTION_MS};
use crate::harness::{etcdctl_binary, free_port, Process};

/// A certificate authority and the files of the certificates it issued.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
}

/// A certificate and key on disk.
#[derive(Clone)]
struct Issued {
    cert: PathBuf,
    key: PathBuf,
}

impl Issued {
    fn read(&self) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(&self.cert).expect("cert"),
            std::fs::read(&self.key).expect("key"),
        )
    }
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("write");
        Ca { cert, key, dir }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for 127.0.0.1 and localhost, good for serving and for client auth
    /// (members present theirs both ways, as with etcd).
    fn issue(&self, name: &str) -> Issued {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        let issued = Issued {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}-key.pem")),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write");
        issued
    }

    /// Client options trusting this CA and presenting `who`.
    fn client(&self, who: Option<&Issued>) -> TlsOptions {
        let tls = TlsOptions::new().ca_file(self.ca_file()).expect("ca");
        match who {
            Some(i) => tls.identity_files(&i.cert, &i.key).expect("identity"),
            None => tls,
        }
    }
}

fn options(tls: TlsOptions) -> ClientOptions {
    ClientOptions {
        tls: Some(tls),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        max_retries: 1,
        ..ClientOptions::default()
    }
}

/// Client and peer TLS flags, both with certificate authentication, for a member holding
/// `server` and trusting `ca`.
fn tls_flags(ca: &Ca, server: &Issued) -> Vec<String> {
    let (cert, key, ca) = (
        server.cert.display(),
        server.key.display(),
        ca.ca_file().display().to_string(),
    );
    vec![
        format!("--cert-file={cert}"),
        format!("--key-file={key}"),
        format!("--trusted-ca-file={ca}"),
        "--client-cert-auth".into(),
        format!("--peer-cert-file={cert}"),
        format!("--peer-key-file={key}"),
        format!("--peer-trusted-ca-file={ca}"),
        "--peer-client-cert-auth".into(),
    ]
}

/// A member process with `https://` client and peer URLs.
fn tls_member(
    name: &str,
    (client, peer): (u16, u16),
    initial_cluster: &str,
    state: &str,
    flags: Vec<String>,
) -> Process {
    let mut args = vec![
        format!("--name={name}"),
        format!("--listen-client-urls=https://127.0.0.1:{client}"),
        format!("--advertise-client-urls=https://127.0.0.1:{client}"),
        format!("--listen-peer-urls=https://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=https://127.0.0.1:{peer}"),
        format!("--initial-cluster={initial_cluster}"),
        format!("--initial-cluster-state={state}"),
        "--heartbeat-interval=100".into(),
        format!("--election-timeout={ELECTION_MS}"),
        "--log-level=warn".into(),
    ];
    args.extend(flags);
    Process::cairn_member(client, args)
}

fn url(port: u16) -> String {
    format!("https://127.0.0.1:{port}")
}

/// Waits until the member at `port` answers a linearizable read over TLS.
async fn wait_serving(port: u16, tls: &TlsOptions) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = Client::connect([url(port)], options(tls.clone())).await {
            if c.get("ready?", None).await.is_ok() {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "member on {port} never served over TLS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a client with these options gets anything out of the member at `port`.
async fn is_served(port: u16, tls: Option<TlsOptions>) -> bool {
    let endpoint = match tls {
        Some(_) => url(port),
        None => format!("http://127.0.0.1:{port}"),
    };
    let opts = ClientOptions {
        tls,
        ..options(TlsOptions::new())
    };
    match Client::connect([endpoint], opts).await {
        Ok(c) => c.get("k", None).await.is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_trusted_clients_and_refuses_strangers() {
    let _exclusive = CLUSTERS.clone().lock_owned().await;
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new(dir.path(), "cluster");
    let other = Ca::new(dir.path(), "other");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}={}", url(*peer)))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for (i, &p) in ports.iter().enumerate() {
        let cert = ca.issue(&format!("m{i}"));
        members.push(tls_member(
            &format!("m{i}"),
            p,
            &initial,
            "new",
            tls_flags(&ca, &cert),
        ));
    }
    let user = ca.issue("user");
    let trusted = ca.client(Some(&user));
    // The members reach each other only over TLS: a write through one is read on another.
    let first = wait_serving(ports[0].0, &trusted).await;
    let last = wait_serving(ports[2].0, &trusted).await;
    first.put("k", "over tls", None).await.expect("put");
    let got = last.get("k", None).await.expect("get");
    assert_eq!(got.kvs[0].value, b"over tls");
    let listed = first.member_list().await.expect("members");
    assert_eq!(listed.members.len(), 3);
    assert!(listed
        .members
        .iter()
        .all(|m| m.peer_ur_ls.iter().all(|u| u.starts_with("https://"))));

    // Refused: no certificate, a certificate from another CA, plain HTTP, and a client
    // that does not trust the member's CA.
    let port = ports[1].0;
    assert!(!is_served(port, Some(ca.client(None))).await);
    let stranger = other.issue("stranger");
    assert!(!is_served(port, Some(ca.client(Some(&stranger)))).await);
    assert!(!is_served(port, None).await);
    assert!(!is_served(port, Some(other.client(Some(&stranger)))).await);
    // ... and the member still serves everyone else.
    assert!(is_served(port, Some(trusted.clone())).await);
    // The Lock service reaches the member's own TLS client URL with its own certificate.
    let second = wait_serving(port, &trusted).await;
    let lease = second.lease_grant(10, 0).await.expect("lease").id;
    let connector = Connector::new(Some(trusted.client_config().expect("tls config")));
    let channel = tonic::transport::Endpoint::from_shared(url(port))
        .expect("url")
        .connect_with_connector(connector)
        .await
        .expect("connect");
    let mut lock = cairn_api::v3lockpb::lock_client::LockClient::new(channel);
    let held = lock
        .lock(cairn_api::v3lockpb::LockRequest {
            name: b"tls-lock".to_vec(),
            lease,
        })
        .await
        .expect("lock over tls")
        .into_inner();
    assert!(held.key.starts_with(b"tls-lock/"));

    // A member holding a certificate from another CA cannot join: the cluster refuses its
    // certificate and it refuses the cluster's.
    let joiner = (free_port(), free_port());
    first
        .member_add(vec![url(joiner.1)], false)
        .await
        .expect("member add");
    let mut stranger_member = tls_member(
        "m3",
        joiner,
        &format!("{initial},m3={}", url(joiner.1)),
        "existing",
        tls_flags(&other, &other.issue("m3")),
    );
    assert!(
        stranger_member.exits_within(Duration::from_secs(30)).await,
        "a member with another CA's certificate must not start"
    );
    let listed = first.member_list().await.expect("members");
    let added = listed
        .members
        .iter()
        .find(|m| m.peer_ur_ls == [url(joiner.1)])
        .expect("added member listed");
    assert!(
        added.name.is_empty(),
        "the stranger never started: {added:?}"
    );
    // The cluster keeps serving.
    first
        .put("k", "still", None)
        .await
        .expect("put after refusal");
    drop(members);
}

/// Starts a single TLS member (client-cert auth on) and waits until it serves.
async fn single_member(dir: &Path) -> (Process, Ca, Issued, u16) {
    let ca = Ca::new(dir, "single");
    let server = ca.issue("server");
    let user = ca.issue("user");
    let ports = (free_port(), free_port());
    let initial = format!("m0={}", url(ports.1));
    let member = tls_member("m0", ports, &initial, "new", tls_flags(&ca, &server));
    wait_serving(ports.0, &ca.client(Some(&user))).await;
    (member, ca, user, ports.0)
}

fn run(bin: &Path, args: &[String]) -> (bool, String) {
    let out = Command::new(bin).args(args).output().expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_etcdctl_and_cairnctl_work_against_a_tls_member() {
    let dir = tempfile::tempdir().expect("dir");
    let (_member, ca, user, port) = single_member(dir.path()).await;
    let flags = vec![
        format!("--endpoints={}", url(port)),
        format!("--cacert={}", ca.ca_file().display()),
        format!("--cert={}", user.cert.display()),
        format!("--key={}", user.key.display()),
    ];
    let with = |rest: &[&str]| {
        let mut a = flags.clone();
        a.extend(rest.iter().map(|s| s.to_string()));
        a
    };
    let cairnctl = PathBuf::from(env!("CARGO_BIN_EXE_cairnctl-under-test"));
    let mut tools = vec![cairnctl];
    tools.extend(etcdctl_binary());
    for tool in &tools {
        let name = tool.display();
        assert_eq!(
            run(tool, &with(&["put", "greeting", "hello"])),
            (true, "OK\n".into()),
            "{name}"
        );
        assert_eq!(
            run(tool, &with(&["get", "greeting"])),
            (true, "greeting\nhello\n".into()),
            "{name}"
        );
        let health = Command::new(tool)
            .args(with(&["endpoint", "health"]))
            .output()
            .expect("run");
        // As etcdctl, health goes to stderr.
        let out = String::from_utf8_lossy(&health.stderr);
        assert!(
            health.status.success() && out.contains("is healthy"),
            "{name}: {out}"
        );
        // Without a client certificate the member refuses the connection.
        let no_cert = vec![
            flags[0].clone(),
            flags[1].clone(),
            "--dial-timeout=2s".into(),
            "--command-timeout=3s".into(),
            "get".into(),
            "greeting".into(),
        ];
        assert!(
            !run(tool, &no_cert).0,
            "{name} served without a certificate"
        );
        // Not trusting the member's CA fails, unless verification is skipped.
        let unverified = |skip: bool| {
            let mut a = vec![flags[0].clone(), flags[2].clone(), flags[3].clone()];
            a.extend(skip.then(|| "--insecure-skip-tls-verify".to_string()));
            a.extend(["--dial-timeout=2s".into(), "get".into(), "greeting".into()]);
            run(tool, &a)
        };
        assert!(!unverified(false).0, "{name} trusted an unknown CA");
        assert_eq!(
            unverified(true),
            (true, "greeting\nhello\n".into()),
            "{name}"
        );
    }
    // A certificate file that is not there is a usage error (etcdctl's exit code 128).
    let missing = Command::new(&tools[0])
        .args([&flags[0], "--cacert=/nonexistent/ca.pem", "get", "greeting"])
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(128));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/ca.pem"));
    // Keys and values written with TLS read the same with the Rust client.
    let (cert, key) = user.read();
    let tls = TlsOptions::new()
        .ca_pem(&std::fs::read(ca.ca_file()).expect("ca"))
        .and_then(|t| t.identity_pem(&cert, &key))
        .expect("tls options");
    let client = Client::connect([format!("127.0.0.1:{port}")], options(tls))
        .await
        .expect("scheme-less endpoint dials TLS when TLS is configured");
    let got = client.get("greeting", None).await.expect("get");
    assert_eq!(got.kvs[0].value, b"hello");
}

#[tokio::test]
async fn unusable_certificate_files_stop_the_member_with_a_message_naming_them() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new(dir.path(), "start");
    let a = ca.issue("a");
    let b = ca.issue("b");
    let data = dir.path().join("data");
    let start = |tweak: Box<dyn FnOnce(&mut cairn_core::Config)>| {
        let mut cfg = cairn_core::Config::new();
        cfg.data_dir = Some(data.clone());
        cfg.listen_client_urls = vec!["https://127.0.0.1:0".into()];
        cfg.listen_peer_urls = vec!["http://127.0.0.1:0".into()];
        tweak(&mut cfg);
        async move {
            match cairn_core::Server::start(cfg).await {
                Ok(s) => {
                    s.stop().await;
                    panic!("the member started");
                }
                Err(e) => e.to_string(),
            }
        }
    };
    let missing = dir.path().join("missing.pem");
    let pair = |cert: &Path, key: &Path| {
        let (cert, key) = (cert.to_path_buf(), key.to_path_buf());
        move |c: &mut cairn_core::Config| {
            c.cert_file = Some(cert);
            c.key_file = Some(key);
        }
    };
    let err = start(Box::new(pair(&missing, &a.key))).await;
    assert!(
        err.contains("--cert-file") && err.contains("missing.pem"),
        "{err}"
    );
    let err = start(Box::new(pair(&a.cert, &b.key))).await;
    assert!(err.contains("does not match"), "{err}");
    let err = start(Box::new(pair(&a.cert, &a.cert))).await;
    assert!(err.contains("--key-file") && err.contains("a.pem"), "{err}");
    let err = start(Box::new(|_| {})).await;
    assert!(err.contains("needs --cert-file"), "{err}");
    let with_auth = pair(&a.cert, &a.key);
    let err = start(Box::new(move |c| {
        with_auth(c);
        c.client_cert_auth = true;
    }))
    .await;
    assert!(err.contains("--trusted-ca-file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_ca_alone_requires_client_certificates_as_in_etcd() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new(dir.path(), "ca-only");
    let server = ca.issue("server");
    let user = ca.issue("user");
    let mut cfg = cairn_core::Config::new();
    cfg.data_dir = Some(dir.path().join("data"));
    cfg.listen_client_urls = vec!["https://127.0.0.1:0".into()];
    cfg.listen_peer_urls = vec!["http://127.0.0.1:0".into()];
    cfg.cert_file = Some(server.cert.clone());
    cfg.key_file = Some(server.key.clone());
    cfg.trusted_ca_file = Some(ca.ca_file());
    let member = cairn_core::Server::start(cfg).await.expect("start");
    let port = member.client_addrs()[0].port();
    wait_serving(port, &ca.client(Some(&user))).await;
    assert!(!is_served(port, Some(ca.client(None))).await);
    member.stop().await;
}

/// With `--client-cert-auth` and auth on, a client certificate's Common Name is the user
/// of a request without a token (a password-less user suits it); a token wins over the
/// certificate; the lock service acts as the certificate's user, not the member's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_its_user_unless_a_token_does() {
    use cairn_client::{Permission, PermissionType};
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new(dir.path(), "auth");
    let server = ca.issue("member");
    let ports = (free_port(), free_port());
    let initial = format!("solo={}", url(ports.1));
    let _m = tls_member("solo", ports, &initial, "new", tls_flags(&ca, &server));
    let root_cert = ca.issue("root");
    let carol_cert = ca.issue("carol");
    let admin = wait_serving(ports.0, &ca.client(Some(&root_cert))).await;
    admin.user_add("root", "rootpw", false).await.expect("root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("root role");
    admin.role_add("reader").await.expect("role");
    admin
        .role_grant_permission("reader", Permission::key(PermissionType::Read, "k1"))
        .await
        .expect("grant");
    admin
        .role_grant_permission("reader", Permission::readwrite_prefix("carol-lock"))
        .await
        .expect("grant");
    admin
        .user_add("carol", "", true)
        .await
        .expect("carol, certificate only");
    admin
        .user_grant_role("carol", "reader")
        .await
        .expect("grant role");
    admin.put("k1", "v", None).await.expect("put");
    admin.auth_enable().await.expect("enable");

    // The certificate named root: an administrator without a password.
    assert_eq!(admin.user_list().await.expect("admin").users.len(), 2);
    let carol = Client::connect([url(ports.0)], options(ca.client(Some(&carol_cert))))
        .await
        .expect("connect as carol");
    assert_eq!(
        carol
            .get("k1", None)
            .await
            .expect("read as carol")
            .kvs
            .len(),
        1
    );
    let refused = carol
        .put("k1", "x", None)
        .await
        .expect_err("carol reads only");
    assert!(refused.is_permission_denied(), "{refused:?}");
    // A token names its own user, whatever the certificate says.
    let as_root = Client::connect(
        [url(ports.0)],
        options(ca.client(Some(&carol_cert))).with_user("root", "rootpw"),
    )
    .await
    .expect("login");
    as_root
        .put("k1", "by root", None)
        .await
        .expect("the token's user writes");
    // The lock service runs as carol, who may lock under carol-lock only.
    let lease = carol.lease_grant(10, 0).await.expect("lease").id;
    let connector = Connector::new(Some(
        ca.client(Some(&carol_cert))
            .client_config()
            .expect("tls config"),
    ));
    let channel = tonic::transport::Endpoint::from_shared(url(ports.0))
        .expect("url")
        .connect_with_connector(connector)
        .await
        .expect("connect");
    let mut lock = cairn_api::v3lockpb::lock_client::LockClient::new(channel);
    lock.lock(cairn_api::v3lockpb::LockRequest {
        name: b"carol-lock".to_vec(),
        lease,
    })
    .await
    .expect("carol may lock here");
    let denied = lock
        .lock(cairn_api::v3lockpb::LockRequest {
            name: b"elsewhere".to_vec(),
            lease,
        })
        .await
        .expect_err("not there");
    assert_eq!(denied.message(), "etcdserver: permission denied");
}
