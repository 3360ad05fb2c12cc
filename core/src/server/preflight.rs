//! What a member checks before it touches its data directory: every URL parses and every
//! port binds (a busy port or a URL without a scheme is reported before anything is
//! created), a new member is listed in `--initial-cluster`, the data directory is a
//! directory, and no other process runs on it (a lock file holding the owner's pid).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use super::StartError;
use crate::config::Config;

/// A bound listener for one URL, not yet served.
pub(super) struct Bound {
    pub url: String,
    pub listener: TcpListener,
}

impl Bound {
    pub fn local_addr(&self) -> Result<SocketAddr, StartError> {
        self.listener
            .local_addr()
            .map_err(|e| StartError::Listen(self.url.clone(), e))
    }

    /// The listener on the runtime this is called from.
    pub fn into_tokio(self) -> Result<tokio::net::TcpListener, StartError> {
        tokio::net::TcpListener::from_std(self.listener)
            .map_err(|e| StartError::Listen(self.url, e))
    }
}

/// The data directory, held for as long as this lives: another member process started on
/// it is refused with this one's pid.
pub(super) struct DirLock {
    _file: File,
}

/// Everything the checks produced, for the start to go on with.
pub(super) struct Ready {
    pub peer: Vec<Bound>,
    pub client: Vec<Bound>,
    pub lock: DirLock,
}

/// `http(s)://host:port` → a socket address (host names are resolved).
pub(super) async fn resolve(url: &str) -> Result<SocketAddr, StartError> {
    let bad = |why: &str| StartError::Url(url.to_string(), why.to_string());
    let rest = match url.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        Some((scheme, _)) => return Err(bad(&format!("unsupported scheme {scheme}"))),
        None => {
            return Err(bad(
                "expected scheme://host:port, e.g. http://127.0.0.1:2379",
            ))
        }
    };
    let hostport = rest.trim_end_matches('/');
    let mut addrs = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| bad(&e.to_string()))?;
    addrs.next().ok_or_else(|| bad("resolves to no address"))
}

async fn bind(urls: &[String]) -> Result<Vec<Bound>, StartError> {
    let mut out = Vec::new();
    for url in urls {
        let addr = resolve(url).await?;
        let listener = TcpListener::bind(addr).map_err(|e| StartError::Listen(url.clone(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| StartError::Listen(url.clone(), e))?;
        out.push(Bound {
            url: url.clone(),
            listener,
        });
    }
    Ok(out)
}

/// Runs the checks in the order the module docs give.
pub(super) async fn check(cfg: &Config) -> Result<Ready, StartError> {
    let peer = bind(&cfg.listen_peer_urls).await?;
    let client = bind(&cfg.listen_client_urls).await?;
    let data_dir = cfg.data_dir();
    let member_dir = data_dir.join("member");
    let fresh = !member_dir.exists();
    if fresh && cfg.initial_cluster_state != "existing" {
        crate::membership::initial_state(cfg)?;
    }
    let lock = lock(&data_dir, &member_dir)?;
    Ok(Ready { peer, client, lock })
}

fn dir_error(dir: &Path, why: impl Into<String>) -> StartError {
    StartError::DataDir(dir.display().to_string(), std::io::Error::other(why.into()))
}

/// Takes the data directory's lock file (`member/lock`), writing this process's pid in it.
fn lock(data_dir: &Path, member_dir: &Path) -> Result<DirLock, StartError> {
    for dir in [data_dir, member_dir] {
        if dir.exists() && !dir.is_dir() {
            return Err(dir_error(dir, "is a file, not a directory"));
        }
    }
    std::fs::create_dir_all(member_dir)
        .map_err(|e| StartError::DataDir(data_dir.display().to_string(), e))?;
    let path: PathBuf = member_dir.join("lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StartError::DataDir(path.display().to_string(), e))?;
    if let Err(e) = file.try_lock() {
        let mut owner = String::new();
        let _ = file.read_to_string(&mut owner);
        let owner = owner.trim();
        return Err(match e {
            std::fs::TryLockError::WouldBlock if !owner.is_empty() => dir_error(
                data_dir,
                format!("is in use by another cairn process (pid {owner})"),
            ),
            std::fs::TryLockError::WouldBlock => {
                dir_error(data_dir, "is in use by another cairn process")
            }
            std::fs::TryLockError::Error(e) => StartError::DataDir(path.display().to_string(), e),
        });
    }
    let write = |file: &mut File| -> std::io::Result<()> {
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_data()
    };
    write(&mut file).map_err(|e| StartError::DataDir(path.display().to_string(), e))?;
    Ok(DirLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_first_owner_and_a_file_is_not_a_directory() {
        let dir = tempfile::tempdir().expect("dir");
        let data = dir.path().join("data");
        let held = lock(&data, &data.join("member")).expect("first");
        let Err(second) = lock(&data, &data.join("member")) else {
            panic!("locked twice");
        };
        let text = second.to_string();
        assert!(
            text.contains("is in use by another cairn process")
                && text.contains(&std::process::id().to_string()),
            "{text}"
        );
        drop(held);
        lock(&data, &data.join("member")).expect("free again");
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").expect("write");
        let Err(e) = lock(&file, &file.join("member")) else {
            panic!("a file taken as a data directory");
        };
        assert!(e.to_string().contains("is a file, not a directory"), "{e}");
    }
}
