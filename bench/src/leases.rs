//! The client side of the lease workloads: a lease kept alive over a stream that is opened
//! again after it breaks, as etcd's clients do when the member behind it fails over.

use std::time::Duration;

use cairn_api::etcdserverpb::lease_client::LeaseClient;
use cairn_api::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::workload::Ch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Stream = (
    mpsc::Sender<LeaseKeepAliveRequest>,
    tonic::Streaming<LeaseKeepAliveResponse>,
);

/// One lease and its keep-alive stream.
pub struct KeepAlive {
    lease: LeaseClient<Ch>,
    id: i64,
    /// Out while a renewal is under way: a stream that failed, or whose renewal the client
    /// gave up on at its deadline, is not used again.
    stream: Option<Stream>,
}

impl KeepAlive {
    /// Grants a lease of `ttl` seconds and renews it once.
    pub async fn grant(ch: Ch, ttl: i64) -> Result<KeepAlive, BoxError> {
        let mut lease = LeaseClient::new(ch);
        let id = lease
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await?
            .into_inner()
            .id;
        let mut k = KeepAlive {
            lease,
            id,
            stream: None,
        };
        k.renew().await?;
        Ok(k)
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    /// One renewal, answered; on a new stream if the last one is gone.
    pub async fn renew(&mut self) -> Result<(), BoxError> {
        let request = LeaseKeepAliveRequest { id: self.id };
        let (requests, mut responses) = match self.stream.take() {
            Some((requests, responses)) => {
                requests.send(request).await?;
                (requests, responses)
            }
            None => {
                let (requests, rx) = mpsc::channel(1);
                // etcd answers the call only once the first request is in.
                requests.send(request).await?;
                let responses = self
                    .lease
                    .lease_keep_alive(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                (requests, responses)
            }
        };
        let answer = responses.next().await.ok_or("keep-alive stream ended")??;
        if answer.ttl <= 0 {
            return Err(format!("lease {:x} expired", self.id).into());
        }
        self.stream = Some((requests, responses));
        Ok(())
    }

    /// Renews every `every` in the background for as long as the task lives, as
    /// `etcdctl lock` keeps its session.
    pub fn keep_in_background(mut self, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if self.renew().await.is_err() {
                    return;
                }
            }
        })
    }
}
