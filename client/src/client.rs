//! The connection: one lazily connected channel per endpoint, the endpoint in use, and the
//! retry rule — on an unreachable or leaderless member, move to the next endpoint with
//! exponential backoff (backon); reads always retry, writes only when they cannot apply twice.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tonic::transport::{Channel, Endpoint};

use crate::auth::{AuthChannel, Session, Stamp};
use crate::tls::{Connector, TlsOptions};
use tonic::service::interceptor::InterceptedService;
use tonic::Status;

use crate::Error;

/// Connection settings; [`ClientOptions::default`] suits most uses.
///
/// ```
/// use std::time::Duration;
/// let opts = cairn_client::ClientOptions {
///     request_timeout: Duration::from_secs(3),
///     ..Default::default()
/// };
/// assert_eq!(opts.connect_timeout, Duration::from_secs(2));
/// ```
#[derive(Clone)]
pub struct ClientOptions {
    /// How long establishing a connection to one endpoint may take.
    pub connect_timeout: Duration,
    /// How long one attempt of a unary call may take (watches and keep-alive streams are
    /// not limited).
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive ping interval, so a dead member is noticed on idle connections.
    pub keep_alive_interval: Duration,
    /// How long a keep-alive ping may go unanswered.
    pub keep_alive_timeout: Duration,
    /// Attempts after the first before a call gives up.
    pub max_retries: usize,
    /// Certificates to trust and present. With it, endpoints given without a scheme are
    /// dialed with TLS; `https://` endpoints without it trust the system's roots.
    pub tls: Option<TlsOptions>,
    /// A user to log in as (with [`ClientOptions::password`]); see the `auth` calls.
    pub user: Option<String>,
    /// The user's password.
    pub password: Option<String>,
}

impl std::fmt::Debug for ClientOptions {
    /// Every field but the password, which is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("keep_alive_timeout", &self.keep_alive_timeout)
            .field("max_retries", &self.max_retries)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl ClientOptions {
    /// These options with a user to log in as. The client logs in when it connects, and
    /// again whenever the server no longer accepts its token.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// The login, if both a user and a password are given (as etcd's clients require).
    fn login(&self) -> Option<(String, String)> {
        match (&self.user, &self.password) {
            (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => Some((u.clone(), p.clone())),
            _ => None,
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            max_retries: 8,
            tls: None,
            user: None,
            password: None,
        }
    }
}

/// Which failures a call may be retried after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads and other calls without effect: any unavailability.
    Always,
    /// Writes: only when the request certainly was not sent, or was refused before it could
    /// apply (`no leader`).
    IfNotApplied,
}

impl Retry {
    fn allows(self, e: &Error) -> bool {
        match self {
            Retry::Always => e.is_unavailable(),
            Retry::IfNotApplied => e.not_sent() || matches!(e, Error::NoLeader),
        }
    }
}

pub(crate) struct Inner {
    pub(crate) endpoints: Vec<(String, Channel)>,
    current: AtomicUsize,
    pub(crate) options: ClientOptions,
    /// Dials every endpoint, and member URLs learnt later.
    pub(crate) connector: Connector,
}

/// A client of a Cairn (or etcd) cluster. Cheap to clone; clones share connections.
///
/// ```no_run
/// # async fn run() -> Result<(), cairn_client::Error> {
/// use cairn_client::{Client, ClientOptions};
/// let client = Client::connect(
///     ["http://127.0.0.1:2379", "http://127.0.0.1:22379"],
///     ClientOptions::default(),
/// )
/// .await?;
/// client.put("greeting", "hello", None).await?;
/// let resp = client.get("greeting", None).await?;
/// assert_eq!(resp.kvs[0].value, b"hello");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    /// The credentials calls carry (shared by clones; see `auth`).
    pub(crate) session: Arc<Session>,
}

/// `host:port` or `http(s)://host:port` → a URL; without a scheme, `https` when TLS is
/// configured (as etcdctl).
fn normalize(endpoint: &str, tls: bool) -> String {
    match (endpoint.contains("://"), tls) {
        (true, _) => endpoint.to_string(),
        (false, true) => format!("https://{endpoint}"),
        (false, false) => format!("http://{endpoint}"),
    }
}

impl ClientOptions {
    /// An endpoint for `url` with these timeouts and keep-alives.
    pub(crate) fn endpoint(&self, url: &str) -> Result<Endpoint, Error> {
        Ok(Endpoint::from_shared(url.to_string())
            .map_err(|_| Error::InvalidEndpoint(url.to_string()))?
            .connect_timeout(self.connect_timeout)
            .http2_keep_alive_interval(self.keep_alive_interval)
            .keep_alive_timeout(self.keep_alive_timeout)
            .keep_alive_while_idle(true))
    }

    /// The connector for these endpoints: TLS as configured, or with the system's roots
    /// when an `https://` endpoint comes without TLS options.
    fn connector(&self, urls: &[String]) -> Result<Connector, Error> {
        let tls = match &self.tls {
            Some(tls) => Some(tls.client_config()?),
            None if urls.iter().any(|u| u.starts_with("https://")) => {
                Some(TlsOptions::new().client_config()?)
            }
            None => None,
        };
        Ok(Connector::new(tls))
    }
}

impl Client {
    /// Connects to a cluster through `endpoints` (`http://host:port` or `host:port`). At
    /// least one must answer; the others are connected when first needed.
    pub async fn connect<E: AsRef<str>>(
        endpoints: impl IntoIterator<Item = E>,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let urls: Vec<String> = endpoints
            .into_iter()
            .map(|e| normalize(e.as_ref(), options.tls.is_some()))
            .collect();
        let connector = options.connector(&urls)?;
        let mut channels = Vec::new();
        for url in urls {
            let endpoint = options.endpoint(&url)?;
            channels.push((url, endpoint));
        }
        if channels.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let mut first_up = None;
        let mut last_error = None;
        for (i, (_, endpoint)) in channels.iter().enumerate() {
            match endpoint.connect_with_connector(connector.clone()).await {
                Ok(_) => {
                    first_up = Some(i);
                    break;
                }
                Err(e) => last_error = Some(Error::from(e)),
            }
        }
        let Some(first_up) = first_up else {
            return Err(last_error.unwrap_or(Error::NoEndpoints));
        };
        let endpoints = channels
            .into_iter()
            .map(|(url, endpoint)| {
                let channel = endpoint.connect_with_connector_lazy(connector.clone());
                (url, channel)
            })
            .collect();
        let session = Arc::new(Session::new(options.login()));
        let client = Client {
            inner: Arc::new(Inner {
                endpoints,
                current: AtomicUsize::new(first_up),
                options,
                connector,
            }),
            session,
        };
        client.login().await?;
        Ok(client)
    }

    /// A client that dials its endpoints only when first used: for checking members that may
    /// be down (`endpoint health`), where failing to connect is the answer, not an error.
    pub fn connect_lazy<E: AsRef<str>>(
        endpoints: impl IntoIterator<Item = E>,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        let urls: Vec<String> = endpoints
            .into_iter()
            .map(|e| normalize(e.as_ref(), options.tls.is_some()))
            .collect();
        if urls.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let connector = options.connector(&urls)?;
        let mut endpoints = Vec::new();
        for url in urls {
            let channel = options
                .endpoint(&url)?
                .connect_with_connector_lazy(connector.clone());
            endpoints.push((url, channel));
        }
        let session = Arc::new(Session::new(options.login()));
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints,
                current: AtomicUsize::new(0),
                options,
                connector,
            }),
            session,
        })
    }

    /// This client's connections with other credentials.
    pub(crate) fn with_session(&self, session: Session) -> Client {
        Client {
            inner: self.inner.clone(),
            session: Arc::new(session),
        }
    }

    /// `endpoint` as a URL, with the scheme this client dials it with when it has none.
    #[cfg(feature = "cli")]
    pub(crate) fn url_of(&self, endpoint: &str) -> String {
        normalize(endpoint, self.inner.options.tls.is_some())
    }

    /// The endpoint URLs, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner
            .endpoints
            .iter()
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// The endpoint calls go to now, and its channel (carrying the client's credentials).
    pub(crate) fn current(&self) -> (usize, AuthChannel) {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len();
        (i, self.stamped(self.inner.endpoints[i].1.clone()))
    }

    /// `channel` with this client's credentials on every call.
    pub(crate) fn stamped(&self, channel: Channel) -> AuthChannel {
        InterceptedService::new(channel, Stamp(self.session.clone()))
    }

    /// Moves on from endpoint `from` (unless another caller already did).
    pub(crate) fn rotate(&self, from: usize) {
        let next = (from + 1) % self.inner.endpoints.len();
        let _ =
            self.inner
                .current
                .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Backoff between attempts: 50 ms doubling to 1 s, with jitter.
    pub(crate) fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_max_times(self.inner.options.max_retries)
            .with_jitter()
            .build()
    }

    /// Runs a unary call against the current endpoint, moving to the next one and retrying
    /// as `retry` allows. A call refused for its token (expired, invalidated) logs in again
    /// and is retried once: the server refused it before doing anything.
    pub(crate) async fn call<T, F, Fut>(&self, retry: Retry, f: F) -> Result<T, Error>
    where
        F: FnMut(AuthChannel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_as(self, retry, f).await
    }

    /// [`Client::call`] without any credentials (the login itself).
    pub(crate) async fn call_plain<T, F, Fut>(&self, retry: Retry, f: F) -> Result<T, Error>
    where
        F: FnMut(AuthChannel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        self.call_as(&self.with_session(Session::default()), retry, f)
            .await
    }

    async fn call_as<T, F, Fut>(&self, who: &Client, retry: Retry, mut f: F) -> Result<T, Error>
    where
        F: FnMut(AuthChannel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let timeout = self.inner.options.request_timeout;
        let mut delays = self.backoff();
        let mut relogged = false;
        loop {
            let (i, channel) = who.current();
            let logins = who.logins();
            let err = match f(channel, timeout).await {
                Ok(v) => return Ok(v),
                Err(s) => Error::from(s),
            };
            if !relogged && err.needs_login() && who.session.can_login() {
                relogged = true;
                who.relogin(logins).await?;
                continue;
            }
            if !retry.allows(&err) {
                return Err(err);
            }
            match delays.next() {
                Some(d) => {
                    self.rotate(i);
                    tokio::time::sleep(d).await;
                }
                None => return Err(err),
            }
        }
    }
}

/// A request with the client's per-attempt deadline.
pub(crate) fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}
