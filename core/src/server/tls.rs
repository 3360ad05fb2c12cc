//! TLS on the client and peer ports (etcd's flags and meanings): the rustls server
//! configurations for `https://` listeners, the client configuration a member dials other
//! members with, and the accept loop that completes handshakes off the listener's path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::tls::{parse_certificates, parse_private_key, provider, Conn, Connector};
use cairn_client::TlsOptions;
use futures::Stream;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

use super::auth::PeerIdentity;
use super::authority::AuthorityFix;
use super::plaintext;
use super::StartError;
use crate::config::Config;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection accepted on a client or peer listener.
pub type Accepted = AuthorityFix<Conn<tokio_rustls::server::TlsStream<TcpStream>>>;

impl Connected for Accepted {
    type ConnectInfo = PeerIdentity;

    /// Once per connection: the user the client certificate names.
    fn connect_info(&self) -> PeerIdentity {
        match self.get_ref() {
            Conn::Plain(_) => PeerIdentity::default(),
            Conn::Tls(s) => PeerIdentity {
                common_name: s
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| crate::auth::common_name(leaf)),
            },
        }
    }
}

/// One side's certificate flags, with their names for error messages.
struct Files<'a> {
    cert: (&'static str, &'a Option<PathBuf>),
    key: (&'static str, &'a Option<PathBuf>),
    ca: (&'static str, &'a Option<PathBuf>),
    auth: (&'static str, bool),
}

/// The member's TLS setup, read from its flags at start.
pub struct Tls {
    /// For `https://` client URLs.
    pub client: Option<Arc<ServerConfig>>,
    /// For `https://` peer URLs.
    pub peer: Option<Arc<ServerConfig>>,
    /// Dials other members' peer URLs (presenting the peer certificate).
    pub peer_dial: Connector,
    /// How the member's Lock and Election services reach its own client URL: trusting
    /// exactly its own certificate and presenting it (etcd's members do the same).
    pub own_client: Option<TlsOptions>,
    /// How the dashboard asks other members' `https://` client URLs for their status:
    /// trusting `--trusted-ca-file` (else the system's roots) and presenting the member's
    /// certificate as a client's.
    pub members_client: Option<TlsOptions>,
}

fn tls_error(flag: &str, path: &Path, why: impl std::fmt::Display) -> StartError {
    StartError::Tls(format!("{flag} {}: {why}", path.display()))
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, StartError> {
    std::fs::read(path).map_err(|e| tls_error(flag, path, e))
}

/// The certificate and key named by `files`, when both are given (one alone is an error).
fn pair(files: &Files) -> Result<Option<(PathBuf, PathBuf)>, StartError> {
    match (files.cert.1, files.key.1) {
        (Some(c), Some(k)) => Ok(Some((c.clone(), k.clone()))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(StartError::Tls(format!(
            "{} needs {}",
            files.cert.0, files.key.0
        ))),
        (None, Some(_)) => Err(StartError::Tls(format!(
            "{} needs {}",
            files.key.0, files.cert.0
        ))),
    }
}

fn server_config(files: &Files) -> Result<Option<Arc<ServerConfig>>, StartError> {
    let Some((cert_path, key_path)) = pair(files)? else {
        if files.auth.1 {
            return Err(StartError::Tls(format!(
                "{} needs {} and {}",
                files.auth.0, files.cert.0, files.key.0
            )));
        }
        return Ok(None);
    };
    let chain = parse_certificates(&read(files.cert.0, &cert_path)?, files.cert.0)
        .map_err(|e| tls_error(files.cert.0, &cert_path, e))?;
    let key = parse_private_key(&read(files.key.0, &key_path)?, files.key.0)
        .map_err(|e| tls_error(files.key.0, &key_path, e))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?;
    // As etcd: a trusted CA alone already requires certificates signed by it.
    let builder = if files.auth.1 || files.ca.1.is_some() {
        let (flag, Some(ca_path)) = files.ca else {
            return Err(StartError::Tls(format!(
                "{} needs {}",
                files.auth.0, files.ca.0
            )));
        };
        let mut roots = RootCertStore::empty();
        let cas = parse_certificates(&read(flag, ca_path)?, flag)
            .map_err(|e| tls_error(flag, ca_path, e))?;
        for ca in cas {
            roots.add(ca).map_err(|e| tls_error(flag, ca_path, e))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| tls_error(flag, ca_path, e))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => StartError::Tls(format!(
            "{} {} does not match {} {}",
            files.key.0,
            key_path.display(),
            files.cert.0,
            cert_path.display()
        )),
        e => tls_error(files.key.0, &key_path, e),
    })?;
    // HTTP/2 for gRPC; HTTP/1.1 for the JSON gateway and /metrics over https.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

impl Tls {
    /// Reads and checks every certificate the flags name; refuses `https://` URLs that
    /// have no certificate to serve.
    pub fn load(cfg: &Config) -> Result<Tls, StartError> {
        let client_files = Files {
            cert: ("--cert-file", &cfg.cert_file),
            key: ("--key-file", &cfg.key_file),
            ca: ("--trusted-ca-file", &cfg.trusted_ca_file),
            auth: ("--client-cert-auth", cfg.client_cert_auth),
        };
        let peer_files = Files {
            cert: ("--peer-cert-file", &cfg.peer_cert_file),
            key: ("--peer-key-file", &cfg.peer_key_file),
            ca: ("--peer-trusted-ca-file", &cfg.peer_trusted_ca_file),
            auth: ("--peer-client-cert-auth", cfg.peer_client_cert_auth),
        };
        let client = server_config(&client_files)?;
        let peer = server_config(&peer_files)?;
        let https = |urls: &[String]| urls.iter().find(|u| u.starts_with("https://")).cloned();
        if let (Some(url), None) = (https(&cfg.listen_client_urls), &client) {
            return Err(StartError::Tls(format!(
                "client URL {url} needs --cert-file and --key-file"
            )));
        }
        let peer_urls = [
            cfg.listen_peer_urls.clone(),
            cfg.initial_advertise_peer_urls.clone(),
        ]
        .concat();
        if let (Some(url), None) = (https(&peer_urls), &peer) {
            return Err(StartError::Tls(format!(
                "peer URL {url} needs --peer-cert-file and --peer-key-file"
            )));
        }
        let peer_dial = match pair(&peer_files)? {
            Some((cert, key)) => {
                let mut options = TlsOptions::new()
                    .identity_files(&cert, &key)
                    .map_err(|e| StartError::Tls(e.to_string()))?;
                if let Some(ca) = &cfg.peer_trusted_ca_file {
                    options = options
                        .ca_file(ca)
                        .map_err(|e| tls_error("--peer-trusted-ca-file", ca, e))?;
                }
                let config = options
                    .client_config()
                    .map_err(|e| StartError::Tls(e.to_string()))?;
                Connector::new(Some(config))
            }
            None => Connector::new(None),
        };
        let (own_client, members_client) = match pair(&client_files)? {
            Some((cert, key)) => {
                let cert_pem = read("--cert-file", &cert)?;
                let key_pem = read("--key-file", &key)?;
                let options = TlsOptions::new()
                    .pin_pem(&cert_pem)
                    .and_then(|o| o.identity_pem(&cert_pem, &key_pem))
                    .map_err(|e| StartError::Tls(e.to_string()))?;
                let mut members = TlsOptions::new()
                    .identity_pem(&cert_pem, &key_pem)
                    .map_err(|e| StartError::Tls(e.to_string()))?;
                if let Some(ca) = &cfg.trusted_ca_file {
                    members = members
                        .ca_file(ca)
                        .map_err(|e| tls_error("--trusted-ca-file", ca, e))?;
                }
                (Some(options), Some(members))
            }
            None => (None, None),
        };
        Ok(Tls {
            client,
            peer,
            peer_dial,
            own_client,
            members_client,
        })
    }
}

/// Connections accepted on `listener`, through a TLS handshake when `tls` is given. Each
/// handshake runs in its own task, so a slow or hostile client holds up nobody else; one
/// that fails (an untrusted certificate, say) is logged and dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = std::io::Result<Accepted>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        loop {
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = super::stopped(&mut stop) => return,
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "set_nodelay");
            }
            let Some(acceptor) = acceptor.clone() else {
                if tx
                    .send(Ok(AuthorityFix::new(Conn::Plain(tcp))))
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                match handshake(&acceptor, tcp).await {
                    Ok(conn) => {
                        let _ = tx.send(Ok(AuthorityFix::new(conn))).await;
                    }
                    Err(e) => tracing::warn!(%remote, error = %e, "rejected TLS connection"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
) -> std::io::Result<Conn<tokio_rustls::server::TlsStream<TcpStream>>> {
    // One deadline for the whole handshake, the look at the first byte included.
    let handshake = async {
        if plaintext::is_plaintext(&tcp).await? {
            plaintext::refuse(tcp).await;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the client spoke plain text, not TLS",
            ));
        }
        acceptor.accept(tcp).await
    };
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timed out"))??;
    Ok(Conn::Tls(Box::new(stream)))
}
