//! Leases: grant, revoke, time-to-live, list, and a keeper that renews a lease in the
//! background, across member failures, and tells its owner when the lease is lost.

use std::time::Duration;

use cairn_api::etcdserverpb::{
    lease_client::LeaseClient, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::sync::watch;

use crate::client::{request, Retry};
use crate::{Client, Error};

impl Client {
    /// Grants a lease of `ttl` seconds; `id` 0 lets the server choose.
    pub async fn lease_grant(&self, ttl: i64, id: i64) -> Result<LeaseGrantResponse, Error> {
        let req = LeaseGrantRequest { ttl, id };
        // A replayed grant would leak a second lease (or fail with `lease already exists`).
        self.call(Retry::IfNotApplied, |ch, t| async move {
            Ok(LeaseClient::new(ch)
                .lease_grant(request(req, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// Revokes a lease: its keys are deleted.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, Error> {
        let req = LeaseRevokeRequest { id };
        self.call(Retry::IfNotApplied, |ch, t| async move {
            Ok(LeaseClient::new(ch)
                .lease_revoke(request(req, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// A lease's remaining and granted TTL (TTL -1: no such lease), with its keys if asked.
    pub async fn lease_time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<LeaseTimeToLiveResponse, Error> {
        let req = LeaseTimeToLiveRequest { id, keys };
        self.call(Retry::Always, |ch, t| async move {
            Ok(LeaseClient::new(ch)
                .lease_time_to_live(request(req, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// Every lease.
    pub async fn leases(&self) -> Result<LeaseLeasesResponse, Error> {
        self.call(Retry::Always, |ch, t| async move {
            Ok(LeaseClient::new(ch)
                .lease_leases(request(LeaseLeasesRequest {}, t))
                .await?
                .into_inner())
        })
        .await
    }

    /// Renews a lease once; returns its new TTL (0 or less: the lease is gone).
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64, Error> {
        self.call(Retry::Always, |ch, t| async move {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx.send(LeaseKeepAliveRequest { id }).await;
            let call = async {
                let mut resps = LeaseClient::new(ch)
                    .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                match resps.message().await? {
                    Some(r) => Ok(r.ttl),
                    None => Err(tonic::Status::unavailable("keep-alive stream ended")),
                }
            };
            tokio::time::timeout(t, call)
                .await
                .map_err(|_| tonic::Status::deadline_exceeded("keep-alive timed out"))?
        })
        .await
    }

    /// Keeps lease `id` (granted with `ttl` seconds) alive in the background until the
    /// keeper is dropped or the lease is lost.
    ///
    /// ```no_run
    /// # async fn run(client: cairn_client::Client) -> Result<(), cairn_client::Error> {
    /// let lease = client.lease_grant(10, 0).await?;
    /// let mut keeper = client.keep_alive(lease.id, lease.ttl);
    /// client
    ///     .put("svc/api-1", "10.0.0.7:8080", Some(cairn_client::PutOptions::new().with_lease(lease.id)))
    ///     .await?;
    /// // ... serve; if the lease is ever lost, stop claiming the registration:
    /// let why = keeper.lost().await;
    /// eprintln!("registration lost: {why}");
    /// # Ok(()) }
    /// ```
    pub fn keep_alive(&self, id: i64, ttl: i64) -> LeaseKeeper {
        let (lost_tx, lost) = watch::channel(None);
        let client = self.clone();
        let task = tokio::spawn(async move { client.keeper_task(id, ttl, lost_tx).await });
        LeaseKeeper { id, lost, task }
    }

    async fn keeper_task(self, id: i64, ttl: i64, lost: watch::Sender<Option<Error>>) {
        let ttl = Duration::from_secs(ttl.max(1) as u64);
        // Renew at a third of the TTL, as etcd's client does, so two renewals may fail.
        let every = (ttl / 3).max(Duration::from_millis(100));
        // The lease lives at least until a TTL after the last acknowledged renewal was
        // sent (the server counts from when it received it). Declaring it lost at that
        // moment at the latest, even while a renewal hangs, tells the owner before the
        // cluster can let anyone else take what the lease held.
        let mut expires = tokio::time::Instant::now() + ttl;
        loop {
            let sent = tokio::time::Instant::now();
            match tokio::time::timeout_at(expires, self.lease_keep_alive_once(id)).await {
                Ok(Ok(t)) if t > 0 => {
                    let granted = Duration::from_secs(t as u64);
                    expires = sent + granted;
                    // The server's TTL may be shorter than the one asked for.
                    let every = every.min((granted / 3).max(Duration::from_millis(100)));
                    tokio::time::sleep_until((tokio::time::Instant::now() + every).min(expires))
                        .await;
                }
                Err(_) | Ok(Ok(_)) | Ok(Err(Error::LeaseNotFound)) => {
                    lost.send_replace(Some(Error::LeaseLost(id)));
                    return;
                }
                Ok(Err(_)) => {
                    let retry = tokio::time::Instant::now() + Duration::from_millis(200);
                    tokio::time::sleep_until(retry.min(expires)).await;
                }
            }
        }
    }
}

/// Keeps a lease alive; see [`Client::keep_alive`]. Dropping it stops the renewals (the
/// lease then expires after its TTL).
pub struct LeaseKeeper {
    id: i64,
    lost: watch::Receiver<Option<Error>>,
    task: tokio::task::JoinHandle<()>,
}

impl LeaseKeeper {
    /// The lease kept alive.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Whether the lease has been lost.
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// A future that resolves when the lease is lost, independent of the keeper (so other
    /// owners, e.g. a lock guard, can watch for the loss too).
    pub fn on_lost(&self) -> impl std::future::Future<Output = Error> + Send + 'static {
        let mut lost = self.lost.clone();
        let id = self.id;
        async move {
            match lost.wait_for(|l| l.is_some()).await {
                Ok(e) => e.clone().unwrap_or(Error::LeaseLost(id)),
                Err(_) => Error::LeaseLost(id),
            }
        }
    }

    /// Resolves when the lease is lost (expired, revoked, or unrenewable past its TTL).
    pub async fn lost(&mut self) -> Error {
        match self.lost.wait_for(|l| l.is_some()).await {
            Ok(e) => e.clone().unwrap_or(Error::LeaseLost(self.id)),
            Err(_) => Error::LeaseLost(self.id),
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
