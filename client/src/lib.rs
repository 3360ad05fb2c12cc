//! `cairn-client`: an async Rust client for Cairn and any etcd v3 server.
//!
//! This first version connects to one endpoint and offers the basic KV calls; the raw
//! generated clients stay reachable for everything else. Failover across endpoints,
//! watches, leases and option builders follow.
//!
//! ```no_run
//! # async fn run() -> Result<(), cairn_client::Error> {
//! let mut client = cairn_client::Client::connect("http://127.0.0.1:2379").await?;
//! client.put("greeting", "hello").await?;
//! let value = client.get("greeting").await?;
//! assert_eq!(value.as_deref(), Some(&b"hello"[..]));
//! # Ok(()) }
//! ```

use cairn_api::etcdserverpb::{
    kv_client::KvClient, maintenance_client::MaintenanceClient, DeleteRangeRequest, PutRequest,
    RangeRequest,
};
use tonic::transport::{Channel, Endpoint};

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint URL is not valid.
    #[error("invalid endpoint: {0}")]
    InvalidEndpoint(String),
    /// The connection could not be established.
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server answered with an error (etcd's code and text are kept).
    #[error("{}", .0.message())]
    Server(#[from] tonic::Status),
}

/// A connection to one member.
#[derive(Clone)]
pub struct Client {
    kv: KvClient<Channel>,
    maintenance: MaintenanceClient<Channel>,
}

impl Client {
    /// Connects to `endpoint` (`http://host:port`).
    pub async fn connect(endpoint: &str) -> Result<Client, Error> {
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| Error::InvalidEndpoint(e.to_string()))?
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(Client {
            kv: KvClient::new(channel.clone()).max_decoding_message_size(usize::MAX),
            maintenance: MaintenanceClient::new(channel),
        })
    }

    /// The value of `key`, if it exists.
    pub async fn get(&mut self, key: impl Into<Vec<u8>>) -> Result<Option<Vec<u8>>, Error> {
        let req = RangeRequest {
            key: key.into(),
            ..Default::default()
        };
        let resp = self.kv.range(req).await?.into_inner();
        Ok(resp.kvs.into_iter().next().map(|kv| kv.value))
    }

    /// Writes `key`; returns the revision of the write.
    pub async fn put(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<i64, Error> {
        let req = PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        };
        let resp = self.kv.put(req).await?.into_inner();
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    pub async fn delete(&mut self, key: impl Into<Vec<u8>>) -> Result<i64, Error> {
        let req = DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        };
        Ok(self.kv.delete_range(req).await?.into_inner().deleted)
    }

    /// The generated KV client, for requests with every option.
    pub fn kv(&mut self) -> &mut KvClient<Channel> {
        &mut self.kv
    }

    /// The generated Maintenance client.
    pub fn maintenance(&mut self) -> &mut MaintenanceClient<Channel> {
        &mut self.maintenance
    }
}
