//! Transport security: which certificates a client trusts and presents, and the connector
//! that dials `https://` endpoints with them (rustls, ring).
//!
//! ```no_run
//! # async fn run() -> Result<(), cairn_client::Error> {
//! use cairn_client::{Client, ClientOptions, TlsOptions};
//! let tls = TlsOptions::new()
//!     .ca_file("ca.pem")?
//!     .identity_files("client.pem", "client-key.pem")?;
//! let options = ClientOptions { tls: Some(tls), ..ClientOptions::default() };
//! let client = Client::connect(["https://127.0.0.1:2379"], options).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Error;

/// Which servers a client trusts and which certificate it presents (for servers that
/// require client certificates, `--client-cert-auth`).
#[derive(Clone, Default)]
pub struct TlsOptions {
    roots: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    trust: Trust,
}

#[derive(Clone, Default)]
enum Trust {
    /// The given CA certificates, or the system's when none are given.
    #[default]
    Roots,
    /// Exactly this certificate, whoever signed it.
    Pinned(CertificateDer<'static>),
    /// Anything (`--insecure-skip-tls-verify`).
    Anything,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("roots", &self.roots.len())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

/// Reads `path`, naming it in the error.
fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Tls(format!("{}: {e}", path.display())))
}

/// The certificates in a PEM file's contents; at least one.
pub fn parse_certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{what}: no PEM certificate found")));
    }
    Ok(certs)
}

/// The private key in a PEM file's contents (PKCS#8, PKCS#1 or SEC1).
pub fn parse_private_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| Error::Tls(format!("{what}: {e}")))
}

/// The crypto provider every Cairn TLS configuration uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsOptions {
    /// Trust the system's root certificates (until CA certificates are added).
    pub fn new() -> TlsOptions {
        TlsOptions::default()
    }

    /// Trusts the CA certificates in this PEM text (instead of the system's).
    pub fn ca_pem(mut self, pem: &[u8]) -> Result<TlsOptions, Error> {
        self.roots
            .extend(parse_certificates(pem, "CA certificate")?);
        Ok(self)
    }

    /// Trusts the CA certificates in this PEM file (etcdctl's `--cacert`).
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<TlsOptions, Error> {
        let path = path.as_ref();
        let pem = read(path)?;
        self.ca_pem(&pem)
            .map_err(|e| Error::Tls(format!("{}: {e}", path.display())))
    }

    /// Presents this certificate chain and key (PEM) to servers that ask for one.
    pub fn identity_pem(mut self, cert: &[u8], key: &[u8]) -> Result<TlsOptions, Error> {
        let chain = parse_certificates(cert, "certificate")?;
        let key = parse_private_key(key, "key")?;
        rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| Error::Tls(format!("key: {e}")))?;
        self.identity = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// Presents the certificate and key in these PEM files (etcdctl's `--cert`, `--key`).
    pub fn identity_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsOptions, Error> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let chain = parse_certificates(&cert_pem, &cert.display().to_string())?;
        let private = parse_private_key(&key_pem, &key.display().to_string())?;
        rustls::crypto::ring::sign::any_supported_type(&private)
            .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
        Ok(TlsOptions {
            identity: Some((chain, Arc::new(private))),
            ..self
        })
    }

    /// Trusts exactly this server certificate (PEM), whoever issued it and whatever names
    /// it carries. A member uses it to reach its own client URL.
    pub fn pin_pem(mut self, cert: &[u8]) -> Result<TlsOptions, Error> {
        let first = parse_certificates(cert, "pinned certificate")?.remove(0);
        self.trust = Trust::Pinned(first);
        Ok(self)
    }

    /// Accepts any server certificate (etcdctl's `--insecure-skip-tls-verify`): the
    /// connection is encrypted but the server is not authenticated.
    pub fn insecure_skip_verify(mut self, skip: bool) -> TlsOptions {
        if skip {
            self.trust = Trust::Anything;
        } else if matches!(self.trust, Trust::Anything) {
            self.trust = Trust::Roots;
        }
        self
    }

    /// The rustls configuration these options describe (HTTP/2 negotiated by ALPN).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, Error> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let builder = match &self.trust {
            Trust::Roots => {
                let mut roots = RootCertStore::empty();
                if self.roots.is_empty() {
                    // Certificates the system store cannot parse are skipped, as Go does.
                    let found = rustls_native_certs::load_native_certs();
                    roots.add_parsable_certificates(found.certs);
                } else {
                    for cert in &self.roots {
                        roots
                            .add(cert.clone())
                            .map_err(|e| Error::Tls(format!("CA certificate: {e}")))?;
                    }
                }
                builder.with_root_certificates(roots)
            }
            Trust::Pinned(cert) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Accept {
                    only: Some(cert.clone()),
                    provider,
                })),
            Trust::Anything => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Accept {
                    only: None,
                    provider,
                })),
        };
        let mut config = match &self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| Error::Tls(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// A verifier that accepts one pinned certificate, or any certificate when none is pinned;
/// handshake signatures are still checked, so the peer must hold the certificate's key.
#[derive(Debug)]
struct Accept {
    only: Option<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Accept {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.only {
            Some(pinned) if pinned.as_ref() != end_entity.as_ref() => {
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Dials endpoints for tonic: plain TCP for `http://`, TCP then a TLS handshake for
/// `https://` (the server name is the URL's host, so a certificate for an IP address
/// works too).
#[derive(Clone)]
pub struct Connector {
    tls: Option<Arc<ClientConfig>>,
}

impl Connector {
    /// A connector that dials `https://` URLs with `tls` (and refuses them without it).
    pub fn new(tls: Option<Arc<ClientConfig>>) -> Connector {
        Connector { tls }
    }
}

/// A TCP connection, plain or carrying TLS (`T` is the client or server side's stream):
/// what [`Connector`] dials and what a member accepts.
pub enum Conn<T = TlsStream<TcpStream>> {
    /// `http://`
    Plain(TcpStream),
    /// `https://`
    Tls(Box<T>),
}

impl<T: AsyncRead + Unpin> AsyncRead for Conn<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Conn<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<Conn>>> + Send>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let invalid =
                |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, why.to_string());
            let host = uri.host().ok_or_else(|| invalid("URL without a host"))?;
            // `[::1]` in a URL is `::1` as an address.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let https = uri.scheme_str() == Some("https");
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            if !https {
                return Ok(TokioIo::new(Conn::Plain(tcp)));
            }
            let config = tls.ok_or_else(|| invalid("https:// endpoint without TLS options"))?;
            let name =
                ServerName::try_from(host).map_err(|e| invalid(&format!("server name: {e}")))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(Conn::Tls(Box::new(stream))))
        })
    }
}
