//! Shared setup for the example programs: connect to the endpoints in `CAIRN_ENDPOINTS`
//! (comma-separated; default `127.0.0.1:2379`), as the user in `CAIRN_USER` (with
//! `CAIRN_PASSWORD`) when the cluster has auth on.

use cairn_client::{Client, ClientOptions, Error};

/// Connects to the cluster named by `CAIRN_ENDPOINTS`, logged in as `CAIRN_USER` if set.
pub async fn connect() -> Result<Client, Error> {
    let endpoints = std::env::var("CAIRN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let mut options = ClientOptions::default();
    if let Ok(user) = std::env::var("CAIRN_USER") {
        options = options.with_user(user, std::env::var("CAIRN_PASSWORD").unwrap_or_default());
    }
    Client::connect(endpoints.split(','), options).await
}
