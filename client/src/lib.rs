//! `cairn-client`: an async Rust client for Cairn and any etcd v3 server.
//!
//! One [`Client`] talks to a cluster through several endpoints: when a member is down or
//! has no leader it moves to the next one with exponential backoff — reads always, writes
//! only when they cannot have been applied. It offers KV calls with option builders, a
//! [`Txn`] builder, [`Watch`] streams that resume on another member without a gap or a
//! duplicate, leases with a background [`LeaseKeeper`], membership and maintenance calls, and
//! a [`Namespace`] view. Errors keep etcd's kinds ([`Error`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), cairn_client::Error> {
//! use cairn_client::{Client, ClientOptions, Compare, Op, Txn};
//! let client = Client::connect(["127.0.0.1:2379"], ClientOptions::default()).await?;
//! client.put("greeting", "hello", None).await?;
//! let resp = client.get("greeting", None).await?;
//! assert_eq!(resp.kvs[0].value, b"hello");
//! // Change it only if nobody else did in between.
//! let rev = resp.kvs[0].mod_revision;
//! let done = client
//!     .txn(
//!         Txn::new()
//!             .when([Compare::mod_revision("greeting").eq(rev)])
//!             .and_then([Op::put("greeting", "hi", None)]),
//!     )
//!     .await?;
//! assert!(done.succeeded);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod auth;
/// The backup file format of `Maintenance.Snapshot`.
pub mod backup;
mod client;
mod cluster;
/// The `cairnctl` command line (feature `cli`).
#[cfg(feature = "cli")]
pub mod ctl;
mod error;
mod kv;
mod lease;
mod namespace;
/// Transport security (TLS) for clients and for members dialing each other.
pub mod tls;
mod txn;
mod watch;

pub use auth::Permission;
/// The kind of a [`Permission`]: READ, WRITE or READWRITE.
pub use cairn_api::authpb::permission::Type as PermissionType;
pub use cairn_api::etcdserverpb::range_request::{SortOrder, SortTarget};
/// What one operation of a transaction answered.
pub use cairn_api::etcdserverpb::response_op::Response as TxnOpResponse;
pub use cairn_api::etcdserverpb::{
    DeleteRangeResponse, PutResponse, RangeResponse, ResponseHeader, TxnResponse,
};
pub use cairn_api::mvccpb::{event::EventType, Event, KeyValue};
pub use client::{Client, ClientOptions};
pub use error::Error;
pub use kv::{prefix_end, DeleteOptions, GetOptions, PutOptions};
pub use lease::LeaseKeeper;
pub use namespace::Namespace;
pub use tls::TlsOptions;
pub use txn::{Compare, NumberCompare, Op, Txn, ValueCompare};
pub use watch::{Watch, WatchBatch, WatchOptions};
