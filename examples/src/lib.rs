//! Shared setup for the example programs: connect to the endpoints in `CAIRN_ENDPOINTS`
//! (comma-separated; default `127.0.0.1:2379`).

use cairn_client::{Client, ClientOptions, Error};

/// Connects to the cluster named by `CAIRN_ENDPOINTS`.
pub async fn connect() -> Result<Client, Error> {
    let endpoints = std::env::var("CAIRN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    Client::connect(endpoints.split(','), ClientOptions::default()).await
}
