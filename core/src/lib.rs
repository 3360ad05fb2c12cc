//! Cairn's server: a raft-replicated, multi-version key-value store that speaks etcd's v3
//! gRPC API.
//!
//! Data flow of a write: gRPC handler (`server`) → raft entry proposed through the Ready
//! loop (`raft`), persisted and synced → committed entries applied in log order by the apply
//! loop (`apply`) to the MVCC store (`mvcc`) → the waiting handler is answered. Reads pass a
//! ReadIndex barrier and read the local store.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = cairn_core::Config::new();
//! config.listen_client_urls = vec!["http://127.0.0.1:0".into()];
//! config.data_dir = Some("/tmp/example.cairn".into());
//! let server = cairn_core::Server::start(config).await?;
//! println!("serving on {:?}", server.client_addrs());
//! server.stop().await;
//! # Ok(()) }
//! ```

pub mod apply;
pub mod auth;
pub mod backup;
pub mod cli;
pub mod config;
pub mod error;
pub mod integrity;
pub mod lease;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod mvcc;
pub mod node;
pub mod raft;
pub mod server;
pub mod wait;
pub mod watch;

pub use config::Config;
pub use error::Error;
pub use server::{Server, StartError};
