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

/// Ends an example: an error is printed as a sentence (`error: etcdserver: permission
/// denied`), not in Rust's debug form, and the exit code is 1.
pub fn finish(result: Result<(), Box<dyn std::error::Error>>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub mod readme;
