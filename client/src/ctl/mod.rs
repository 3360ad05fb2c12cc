//! `cairnctl`: the command line for Cairn (and etcd), with etcdctl's commands, flags and
//! output (`-w simple`, `json` and, for listings, `table`), built on this crate. The
//! binaries (`cairnctl` in the server crate, the tests' copy) call `ctl::main_with`.

mod auth;
mod concurrency;
mod json;
mod ops;

pub use ops::{Restore, RestoreArgs};
mod table;
mod txn;
mod watch;

use std::io::Read;
use std::time::{Duration, Instant};

use crate::{
    Client, ClientOptions, DeleteOptions, GetOptions, KeyValue, PutOptions, SortOrder, SortTarget,
};
use cairn_api::etcdserverpb::{
    response_op::Response, DeleteRangeResponse, PutResponse, RangeResponse, TxnResponse,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairnctl",
    version,
    about = "A command line client for Cairn and etcd"
)]
struct Cli {
    /// gRPC endpoints (comma-separated).
    #[arg(
        long,
        global = true,
        env = "CAIRNCTL_ENDPOINTS",
        default_value = "127.0.0.1:2379",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// Output format: simple, json, or table (table for member, endpoint and snapshot
    /// status listings, as etcdctl).
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        env = "CAIRNCTL_WRITE_OUT",
        default_value = "simple"
    )]
    write_out: String,
    /// Dial timeout for client connections (a duration such as 2s or 500ms).
    #[arg(long = "dial-timeout", global = true, env = "CAIRNCTL_DIAL_TIMEOUT", default_value = "2s", value_parser = seconds)]
    dial_timeout: Duration,
    /// Timeout of short-running commands (a duration such as 5s).
    #[arg(long = "command-timeout", global = true, env = "CAIRNCTL_COMMAND_TIMEOUT", default_value = "5s", value_parser = seconds)]
    command_timeout: Duration,
    /// Verify certificates of TLS-enabled servers using this CA bundle.
    #[arg(
        long = "cacert",
        id = "tls_cacert",
        global = true,
        env = "CAIRNCTL_CACERT"
    )]
    cacert: Option<std::path::PathBuf>,
    /// Identify secure client using this TLS certificate file.
    #[arg(long = "cert", id = "tls_cert", global = true, env = "CAIRNCTL_CERT")]
    cert: Option<std::path::PathBuf>,
    /// Identify secure client using this TLS key file.
    #[arg(long = "key", id = "tls_key", global = true, env = "CAIRNCTL_KEY")]
    key: Option<std::path::PathBuf>,
    /// Skip server certificate verification (the connection is encrypted, the server is
    /// not authenticated: for tests only).
    #[arg(
        long = "insecure-skip-tls-verify",
        global = true,
        env = "CAIRNCTL_INSECURE_SKIP_TLS_VERIFY"
    )]
    insecure_skip_tls_verify: bool,
    /// Disable transport security for client connections (`=false` dials with TLS even
    /// without certificate flags).
    #[arg(long = "insecure-transport", global = true, env = "CAIRNCTL_INSECURE_TRANSPORT", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    insecure_transport: bool,
    /// The user to log in as: `name[:password]` (asks for the password when it is not
    /// given here or with --password).
    #[arg(long, global = true, env = "CAIRNCTL_USER")]
    user: Option<String>,
    /// The password of --user.
    #[arg(long, global = true, env = "CAIRNCTL_PASSWORD")]
    password: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

impl Cli {
    /// The login `--user` and `--password` ask for, if any (etcdctl's parsing: the first
    /// `:` splits name and password; a name alone asks for the password).
    fn login(&self) -> Result<Option<(String, String)>, Fail> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        if let Some(password) = &self.password {
            return Ok(Some((user.clone(), password.clone())));
        }
        match user.split_once(':') {
            Some((name, password)) => Ok(Some((name.to_string(), password.to_string()))),
            None => {
                eprint!("Password: ");
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                Ok(Some((
                    user.clone(),
                    line.trim_end_matches(['\n', '\r']).to_string(),
                )))
            }
        }
    }

    /// The TLS options the flags ask for: none unless a certificate flag is given or
    /// `--insecure-transport=false` (etcdctl's rule); `https://` endpoints get TLS anyway,
    /// verified unless `--insecure-skip-tls-verify`.
    fn tls(&self) -> Result<Option<crate::TlsOptions>, crate::Error> {
        let any_file = self.cacert.is_some() || self.cert.is_some() || self.key.is_some();
        let https = self.endpoints.iter().any(|e| e.starts_with("https://"));
        if !any_file && self.insecure_transport && !(https && self.insecure_skip_tls_verify) {
            return Ok(None);
        }
        let mut tls = crate::TlsOptions::new();
        if let Some(ca) = &self.cacert {
            tls = tls.ca_file(ca)?;
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => tls = tls.identity_files(cert, key)?,
            (None, None) => {}
            (Some(_), None) => return Err(crate::Error::Tls("--cert given without --key".into())),
            (None, Some(_)) => return Err(crate::Error::Tls("--key given without --cert".into())),
        }
        Ok(Some(
            tls.insecure_skip_verify(self.insecure_skip_tls_verify),
        ))
    }
}

fn seconds(s: &str) -> Result<Duration, String> {
    let n = s.trim_end_matches('s');
    n.parse::<f64>()
        .map(Duration::from_secs_f64)
        .map_err(|_| format!("{s:?} is not a duration like 5s"))
}

fn hex_id(s: &str) -> Result<i64, String> {
    u64::from_str_radix(s, 16)
        .map(|v| v as i64)
        .map_err(|_| format!("bad id {s:?} (hexadecimal expected)"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Prints the version of cairnctl and the API it speaks.
    Version,
    /// User related commands.
    User {
        #[command(subcommand)]
        cmd: auth::UserCmd,
    },
    /// Role related commands.
    Role {
        #[command(subcommand)]
        cmd: auth::RoleCmd,
    },
    /// Enable, disable or show authentication.
    Auth {
        #[command(subcommand)]
        cmd: auth::AuthCmd,
    },
    /// Puts the given key into the store.
    Put {
        key: String,
        value: Option<String>,
        /// Lease ID (in hexadecimal) to attach to the key.
        #[arg(long, value_parser = hex_id)]
        lease: Option<i64>,
        #[arg(long = "prev-kv")]
        prev_kv: bool,
        #[arg(long = "ignore-value")]
        ignore_value: bool,
        #[arg(long = "ignore-lease")]
        ignore_lease: bool,
    },
    /// Gets the key or a range of keys.
    Get {
        key: String,
        range_end: Option<String>,
        #[arg(long)]
        prefix: bool,
        #[arg(long = "from-key")]
        from_key: bool,
        #[arg(long, default_value_t = 0)]
        limit: i64,
        #[arg(long, default_value_t = 0)]
        rev: i64,
        /// CREATE, KEY, MODIFY, VALUE, or VERSION.
        #[arg(long = "sort-by")]
        sort_by: Option<String>,
        /// ASCEND or DESCEND.
        #[arg(long)]
        order: Option<String>,
        #[arg(long = "keys-only")]
        keys_only: bool,
        /// Print only the number of keys.
        #[arg(long = "count-only")]
        count_only: bool,
        #[arg(long = "print-value-only")]
        print_value_only: bool,
        /// Linearizable (l) or Serializable (s).
        #[arg(long, default_value = "l")]
        consistency: String,
    },
    /// Removes the specified key or range of keys.
    Del {
        key: String,
        range_end: Option<String>,
        #[arg(long)]
        prefix: bool,
        #[arg(long = "from-key")]
        from_key: bool,
        #[arg(long = "prev-kv")]
        prev_kv: bool,
    },
    /// Txn processes all the requests in one transaction (read from standard input).
    Txn {
        #[arg(short, long)]
        interactive: bool,
    },
    /// Watches events stream on keys or prefixes.
    Watch {
        #[command(flatten)]
        args: watch::WatchArgs,
    },
    /// Compacts the event history.
    Compaction {
        revision: i64,
        #[arg(long)]
        physical: bool,
    },
    /// Lease related commands.
    Lease {
        #[command(subcommand)]
        cmd: LeaseCmd,
    },
    /// Membership related commands.
    Member {
        #[command(subcommand)]
        cmd: MemberCmd,
    },
    /// Endpoint related commands.
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// Manages backups: save one from a member, check one, restore one into a data dir.
    Snapshot {
        #[command(subcommand)]
        cmd: ops::SnapshotCmd,
    },
    /// Alarm related commands.
    Alarm {
        #[command(subcommand)]
        cmd: ops::AlarmCmd,
    },
    /// Defragments the storage of the members with given endpoints.
    Defrag {
        /// Use all endpoints from the cluster member list.
        #[arg(long)]
        cluster: bool,
    },
    /// Transfers leadership to another member.
    MoveLeader {
        #[arg(value_parser = hex_id)]
        target: i64,
    },
    /// Acquires a named lock: `lock NAME [-- COMMAND ARGS...]`.
    Lock {
        /// Seconds the session's lease lives without keep-alives.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
        /// The lock name, then an optional command to run while holding it.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Campaigns in a named election (`elect NAME PROPOSAL`) or observes it (`elect -l NAME`).
    Elect {
        /// Observe the election: print every leader.
        #[arg(short = 'l', long)]
        listen: bool,
        /// Seconds the session's lease lives without keep-alives (etcdctl's session default).
        #[arg(long, default_value_t = 60)]
        ttl: i64,
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum LeaseCmd {
    /// Creates leases.
    Grant { ttl: i64 },
    /// Revokes leases.
    Revoke {
        #[arg(value_parser = hex_id)]
        id: i64,
    },
    /// Gets lease information.
    Timetolive {
        #[arg(value_parser = hex_id)]
        id: i64,
        #[arg(long)]
        keys: bool,
    },
    /// Lists all active leases.
    List,
    /// Keeps leases alive (renews).
    KeepAlive {
        #[arg(value_parser = hex_id)]
        id: i64,
        #[arg(long)]
        once: bool,
    },
}

#[derive(Subcommand)]
enum MemberCmd {
    /// Adds a member into the cluster.
    Add {
        name: String,
        #[arg(long = "peer-urls", value_delimiter = ',')]
        peer_urls: Vec<String>,
        #[arg(long)]
        learner: bool,
    },
    /// Removes a member from the cluster.
    Remove {
        #[arg(value_parser = hex_id)]
        id: i64,
    },
    /// Updates a member in the cluster.
    Update {
        #[arg(value_parser = hex_id)]
        id: i64,
        #[arg(long = "peer-urls", value_delimiter = ',')]
        peer_urls: Vec<String>,
    },
    /// Lists all members in the cluster.
    List,
    /// Promotes a non-voting member in the cluster.
    Promote {
        #[arg(value_parser = hex_id)]
        id: i64,
    },
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Prints out the status of endpoints.
    Status {
        /// Use all endpoints from the cluster member list.
        #[arg(long)]
        cluster: bool,
    },
    /// Checks the healthiness of endpoints.
    Health {
        #[arg(long)]
        cluster: bool,
    },
    /// Prints the KV history hash of each endpoint.
    Hashkv {
        #[arg(long)]
        cluster: bool,
        /// The revision to hash at (0: the current one).
        #[arg(long, default_value_t = 0)]
        rev: i64,
    },
}

type Fail = Box<dyn std::error::Error + Send + Sync>;

/// An error with etcdctl's exit code for it (anything else exits with 1).
#[derive(Debug)]
struct Exit {
    code: i32,
    message: String,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// etcdctl's exit code when it cannot connect (or log in).
const EXIT_BAD_CONNECTION: i32 = 2;
/// etcdctl's exit code for bad arguments.
const EXIT_BAD_ARGS: i32 = 128;
/// etcdctl's exit code for an unsupported feature (an output format a command lacks).
const EXIT_BAD_FEATURE: i32 = 4;

/// A command given the wrong arguments.
fn bad_args(message: &str) -> Fail {
    Box::new(Exit {
        code: EXIT_BAD_ARGS,
        message: message.to_string(),
    })
}

/// A flag value or output format the command does not support.
fn bad_feature(message: &str) -> Fail {
    Box::new(Exit {
        code: EXIT_BAD_FEATURE,
        message: message.to_string(),
    })
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn print_kv(kv: &KeyValue, value_only: bool) {
    if !value_only {
        println!("{}", show(&kv.key));
    }
    println!("{}", show(&kv.value));
}

/// A listing: etcdctl's table, or one line of comma-separated fields per row.
fn print_rows(headers: &[&str], rows: &[Vec<String>], table: bool) {
    if table {
        println!("{}", table::render(headers, rows));
    } else {
        for r in rows {
            println!("{}", r.join(", "));
        }
    }
}

fn print_get(r: &RangeResponse, value_only: bool) {
    for kv in &r.kvs {
        print_kv(kv, value_only);
    }
}

fn print_put(r: &PutResponse) {
    println!("OK");
    if let Some(kv) = &r.prev_kv {
        print_kv(kv, false);
    }
}

fn print_del(r: &DeleteRangeResponse) {
    println!("{}", r.deleted);
    for kv in &r.prev_kvs {
        print_kv(kv, false);
    }
}

fn print_txn(r: &TxnResponse) {
    println!("{}", if r.succeeded { "SUCCESS" } else { "FAILURE" });
    for op in &r.responses {
        println!();
        match &op.response {
            Some(Response::ResponseRange(x)) => print_get(x, false),
            Some(Response::ResponsePut(x)) => print_put(x),
            Some(Response::ResponseDeleteRange(x)) => print_del(x),
            Some(Response::ResponseTxn(x)) => print_txn(x),
            None => {}
        }
    }
}

/// go-humanize's Bytes: SI units, one decimal below 10.
fn human_bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    if n < 10.0 {
        return format!("{n} B");
    }
    let units = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let e = (n.ln() / 1000f64.ln()).floor();
    let val = (n / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    let unit = units[e as usize];
    if val < 10.0 {
        format!("{val:.1} {unit}")
    } else {
        format!("{val:.0} {unit}")
    }
}

/// The endpoints of every member (`--cluster`), or the ones given.
async fn targets(client: &Client, given: &[String], cluster: bool) -> Result<Vec<String>, Fail> {
    if !cluster {
        return Ok(given.to_vec());
    }
    let mut eps: Vec<String> = client
        .member_list()
        .await?
        .members
        .into_iter()
        .flat_map(|m| m.client_ur_ls)
        .collect();
    eps.dedup();
    Ok(eps)
}

async fn run(cli: Cli, restore: Option<Restore>) -> Result<(), Fail> {
    let json = cli.write_out == "json";
    let table = cli.write_out == "table";
    // As etcdctl: only listings of members and endpoints have a table form.
    let tabular = matches!(
        cli.cmd,
        Cmd::Member {
            cmd: MemberCmd::List
        } | Cmd::Endpoint { .. }
            | Cmd::Snapshot {
                cmd: ops::SnapshotCmd::Status { .. }
            }
    );
    if table && !tabular {
        return Err(bad_feature("table not supported as output format"));
    }
    let tls = cli.tls().map_err(|e| bad_args(&e.to_string()))?;
    let login = cli.login()?;
    let opts = ClientOptions {
        connect_timeout: cli.dial_timeout,
        request_timeout: cli.command_timeout,
        tls,
        user: login.as_ref().map(|(u, _)| u.clone()),
        password: login.map(|(_, p)| p),
        ..Default::default()
    };
    if let Cmd::Snapshot { cmd } = &cli.cmd {
        if let Some(done) = ops::snapshot_local(cmd, restore, json, table) {
            return done;
        }
    }
    if let Cmd::Version = cli.cmd {
        println!("cairnctl version: {}", env!("CARGO_PKG_VERSION"));
        println!("API version: 3.4");
        return Ok(());
    }
    // A health check reports members that are down rather than failing to connect to them.
    if let Cmd::Endpoint {
        cmd: EndpointCmd::Health { .. },
    } = &cli.cmd
    {
        let client = Client::connect_lazy(&cli.endpoints, opts.clone())?;
        // A failed login shows in each endpoint's check.
        let _ = client.login().await;
        if let Cmd::Endpoint { cmd } = cli.cmd {
            return endpoint(&client, &cli.endpoints, cmd, json, table).await;
        }
    }
    let client = match Client::connect(&cli.endpoints, opts).await {
        Ok(c) => c,
        // As etcdctl: a login that fails is a failed connection (exit 2).
        Err(e @ crate::Error::Server(_)) => {
            return Err(Box::new(Exit {
                code: EXIT_BAD_CONNECTION,
                message: e.go_text(),
            }))
        }
        Err(e) => return Err(e.into()),
    };
    match cli.cmd {
        // Answered before connecting (below).
        Cmd::Version => {}
        Cmd::User { cmd } => auth::user(&client, cmd, json).await?,
        Cmd::Role { cmd } => auth::role(&client, cmd, json).await?,
        Cmd::Auth { cmd } => auth::auth(&client, cmd).await?,
        Cmd::Put {
            key,
            value,
            lease,
            prev_kv,
            ignore_value,
            ignore_lease,
        } => {
            let mut o = PutOptions::new();
            if let Some(l) = lease {
                o = o.with_lease(l);
            }
            if prev_kv {
                o = o.with_prev_kv();
            }
            if ignore_value {
                o = o.with_ignore_value();
            }
            if ignore_lease {
                o = o.with_ignore_lease();
            }
            if value.is_none() && !ignore_value {
                return Err(bad_args(
                    "put command needs 1 argument and input from stdin or 2 arguments",
                ));
            }
            let r = client.put(key, value.unwrap_or_default(), Some(o)).await?;
            if json {
                println!("{}", json::put(&r));
            } else {
                print_put(&r);
            }
        }
        Cmd::Get {
            key,
            range_end,
            prefix,
            from_key,
            limit,
            rev,
            sort_by,
            order,
            keys_only,
            count_only,
            print_value_only,
            consistency,
        } => {
            let mut o = GetOptions::new()
                .with_limit(limit)
                .with_revision(rev)
                .with_range_flags(range_end, prefix, from_key);
            if keys_only {
                o = o.with_keys_only();
            }
            if count_only {
                o = o.with_count_only();
            }
            match consistency.as_str() {
                "l" => {}
                "s" => o = o.with_serializable(),
                c => return Err(bad_feature(&format!("unknown consistency flag {c:?}"))),
            }
            let target = match sort_by.as_deref().map(str::to_ascii_uppercase).as_deref() {
                None if order.is_some() => Some(SortTarget::Key),
                None => None,
                Some("CREATE") => Some(SortTarget::Create),
                Some("KEY") => Some(SortTarget::Key),
                Some("MODIFY") => Some(SortTarget::Mod),
                Some("VALUE") => Some(SortTarget::Value),
                Some("VERSION") => Some(SortTarget::Version),
                Some(_) => {
                    let given = sort_by.as_deref().unwrap_or_default();
                    return Err(bad_feature(&format!("bad sort target {given}")));
                }
            };
            let ord = match order.as_deref().map(str::to_ascii_uppercase).as_deref() {
                None => SortOrder::None,
                Some("ASCEND") => SortOrder::Ascend,
                Some("DESCEND") => SortOrder::Descend,
                Some(_) => {
                    let given = order.as_deref().unwrap_or_default();
                    return Err(bad_feature(&format!("bad sort order {given}")));
                }
            };
            if let Some(t) = target {
                let ord = if ord == SortOrder::None {
                    SortOrder::Ascend
                } else {
                    ord
                };
                o = o.with_sort(t, ord);
            }
            let r = client.get(key, Some(o)).await?;
            if json {
                println!("{}", json::range(&r));
            } else if count_only {
                println!("{}", r.count);
            } else {
                print_get(&r, print_value_only);
            }
        }
        Cmd::Del {
            key,
            range_end,
            prefix,
            from_key,
            prev_kv,
        } => {
            let mut o = DeleteOptions::new().with_range_flags(range_end, prefix, from_key);
            if prev_kv {
                o = o.with_prev_kv();
            }
            let r = client.delete(key, Some(o)).await?;
            if json {
                println!("{}", json::delete(&r));
            } else {
                print_del(&r);
            }
        }
        Cmd::Txn { interactive } => {
            let mut text = String::new();
            if interactive {
                // etcdctl's prompts, each before its section (ended by an empty line).
                for prompt in [
                    "compares:",
                    "success requests (get, put, del):",
                    "failure requests (get, put, del):",
                ] {
                    println!("{prompt}");
                    loop {
                        let mut line = String::new();
                        if std::io::stdin().read_line(&mut line)? == 0 {
                            break;
                        }
                        text.push_str(&line);
                        if line.trim().is_empty() {
                            break;
                        }
                    }
                }
            } else {
                std::io::stdin().read_to_string(&mut text)?;
            }
            let t = txn::parse(&text)?;
            let r = client.txn(t).await?;
            if json {
                println!("{}", json::txn(&r));
            } else {
                print_txn(&r);
            }
        }
        Cmd::Watch { args } => watch::watch(&client, args, json).await?,
        Cmd::Compaction { revision, physical } => {
            client.compact(revision, physical).await?;
            println!("compacted revision {revision}");
        }
        Cmd::Lease { cmd } => lease(&client, cmd, json).await?,
        Cmd::Member { cmd } => member(&client, cmd, json, table).await?,
        Cmd::Endpoint { cmd } => endpoint(&client, &cli.endpoints, cmd, json, table).await?,
        Cmd::Lock { ttl, args } => concurrency::lock(&client, args, ttl, json).await?,
        Cmd::Elect { listen, ttl, args } => {
            concurrency::elect(&client, args, listen, ttl, json).await?
        }
        Cmd::Snapshot { cmd } => ops::snapshot_remote(&client, &cli.endpoints, cmd).await?,
        Cmd::Alarm { cmd } => ops::alarm(&client, cmd, json).await?,
        Cmd::Defrag { cluster } => {
            ops::defrag(&client, targets(&client, &cli.endpoints, cluster).await?).await?
        }
        Cmd::MoveLeader { target } => {
            let mut leader = 0;
            for ep in client.endpoints() {
                if let Ok(s) = client.status(&ep).await {
                    leader = s.leader;
                    break;
                }
            }
            client.move_leader(target as u64).await?;
            println!(
                "Leadership transferred from {leader:x} to {:x}",
                target as u64
            );
        }
    }
    Ok(())
}

async fn lease(client: &Client, cmd: LeaseCmd, json: bool) -> Result<(), Fail> {
    match cmd {
        LeaseCmd::Grant { ttl } => {
            let r = client
                .lease_grant(ttl, 0)
                .await
                .map_err(|e| format!("failed to grant lease ({e})"))?;
            if json {
                let o = json::header_fields(json::Obj::new(), &r.header.unwrap_or_default());
                println!(
                    "{}",
                    o.raw("ID", r.id.to_string())
                        .raw("TTL", r.ttl.to_string())
                        .raw("Error", format!("{:?}", r.error))
                        .done()
                );
            } else {
                println!("lease {:016x} granted with TTL({}s)", r.id, r.ttl);
            }
        }
        LeaseCmd::Revoke { id } => {
            let r = client
                .lease_revoke(id)
                .await
                .map_err(|e| format!("failed to revoke lease ({e})"))?;
            if json {
                println!(
                    "{}",
                    json::Obj::new()
                        .obj("header", r.header.as_ref().map(json::header))
                        .done()
                );
            } else {
                println!("lease {id:016x} revoked");
            }
        }
        LeaseCmd::Timetolive { id, keys } => {
            let r = client.lease_time_to_live(id, keys).await?;
            if json {
                let o = json::header_fields(json::Obj::new(), &r.header.unwrap_or_default());
                let ks: Vec<String> = r
                    .keys
                    .iter()
                    .map(|k| {
                        use base64::Engine;
                        format!(
                            "\"{}\"",
                            base64::engine::general_purpose::STANDARD.encode(k)
                        )
                    })
                    .collect();
                let keys_json = if ks.is_empty() {
                    "null".to_string()
                } else {
                    format!("[{}]", ks.join(","))
                };
                println!(
                    "{}",
                    o.raw("id", r.id.to_string())
                        .raw("ttl", r.ttl.to_string())
                        .raw("granted-ttl", r.granted_ttl.to_string())
                        .raw("keys", keys_json)
                        .done()
                );
            } else if r.ttl == -1 {
                println!("lease {id:016x} already expired");
            } else {
                let mut line = format!(
                    "lease {id:016x} granted with TTL({}s), remaining({}s)",
                    r.granted_ttl, r.ttl
                );
                if keys {
                    let names: Vec<String> = r.keys.iter().map(|k| show(k)).collect();
                    line.push_str(&format!(", attached keys([{}])", names.join(" ")));
                }
                println!("{line}");
            }
        }
        LeaseCmd::List => {
            let r = client.leases().await?;
            if json {
                let o = json::header_fields(json::Obj::new(), &r.header.unwrap_or_default());
                let items: Vec<String> = r
                    .leases
                    .iter()
                    .map(|l| format!("{{\"id\":{}}}", l.id))
                    .collect();
                println!(
                    "{}",
                    o.raw("leases", format!("[{}]", items.join(","))).done()
                );
            } else {
                println!("found {} leases", r.leases.len());
                for l in &r.leases {
                    println!("{:016x}", l.id);
                }
            }
        }
        LeaseCmd::KeepAlive { id, once } => loop {
            let ttl = client.lease_keep_alive_once(id).await?;
            if ttl <= 0 {
                println!("lease {id:016x} expired or revoked.");
                return Ok(());
            }
            println!("lease {id:016x} keepalived with TTL({ttl})");
            if once {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs((ttl as u64 / 3).max(1))) => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        },
    }
    Ok(())
}

async fn member(client: &Client, cmd: MemberCmd, json: bool, table: bool) -> Result<(), Fail> {
    let cluster_id = |h: &Option<cairn_api::etcdserverpb::ResponseHeader>| {
        h.as_ref().map_or(0, |h| h.cluster_id)
    };
    match cmd {
        MemberCmd::List => {
            let r = client.member_list().await?;
            if json {
                println!("{}", json::members(r.header.as_ref(), &r.members));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = r
                .members
                .iter()
                .map(|m| {
                    let status = if m.name.is_empty() {
                        "unstarted"
                    } else {
                        "started"
                    };
                    vec![
                        format!("{:x}", m.id),
                        status.into(),
                        m.name.clone(),
                        m.peer_ur_ls.join(","),
                        m.client_ur_ls.join(","),
                        m.is_learner.to_string(),
                    ]
                })
                .collect();
            const HEADERS: [&str; 6] = [
                "ID",
                "STATUS",
                "NAME",
                "PEER ADDRS",
                "CLIENT ADDRS",
                "IS LEARNER",
            ];
            print_rows(&HEADERS, &rows, table);
        }
        MemberCmd::Add {
            name,
            peer_urls,
            learner,
        } => {
            let r = client.member_add(peer_urls.clone(), learner).await?;
            let id = r.member.as_ref().map_or(0, |m| m.id);
            if json {
                println!(
                    "{}",
                    json::Obj::new()
                        .obj("header", r.header.as_ref().map(json::header))
                        .obj("member", r.member.as_ref().map(json::member))
                        .list("members", r.members.iter().map(json::member).collect())
                        .done()
                );
                return Ok(());
            }
            println!(
                "Member {id:16x} added to cluster {:16x}",
                cluster_id(&r.header)
            );
            let mut conf = Vec::new();
            for m in &r.members {
                let n = if m.id == id {
                    name.as_str()
                } else {
                    m.name.as_str()
                };
                for u in &m.peer_ur_ls {
                    conf.push(format!("{n}={u}"));
                }
            }
            println!();
            println!("ETCD_NAME=\"{name}\"");
            println!("ETCD_INITIAL_CLUSTER=\"{}\"", conf.join(","));
            println!(
                "ETCD_INITIAL_ADVERTISE_PEER_URLS=\"{}\"",
                peer_urls.join(",")
            );
            println!("ETCD_INITIAL_CLUSTER_STATE=\"existing\"");
        }
        MemberCmd::Remove { id } => {
            let r = client.member_remove(id as u64).await?;
            if json {
                println!("{}", json::members(r.header.as_ref(), &r.members));
            } else {
                println!(
                    "Member {:16x} removed from cluster {:16x}",
                    id as u64,
                    cluster_id(&r.header)
                );
            }
        }
        MemberCmd::Update { id, peer_urls } => {
            let r = client.member_update(id as u64, peer_urls).await?;
            if json {
                println!("{}", json::members(r.header.as_ref(), &r.members));
            } else {
                println!(
                    "Member {:16x} updated in cluster {:16x}",
                    id as u64,
                    cluster_id(&r.header)
                );
            }
        }
        MemberCmd::Promote { id } => {
            let r = client.member_promote(id as u64).await?;
            if json {
                println!("{}", json::members(r.header.as_ref(), &r.members));
            } else {
                println!(
                    "Member {:16x} promoted in cluster {:16x}",
                    id as u64,
                    cluster_id(&r.header)
                );
            }
        }
    }
    Ok(())
}

async fn endpoint(
    client: &Client,
    given: &[String],
    cmd: EndpointCmd,
    json: bool,
    table: bool,
) -> Result<(), Fail> {
    match cmd {
        EndpointCmd::Status { cluster } => {
            let mut rows = Vec::new();
            let mut items = Vec::new();
            for ep in targets(client, given, cluster).await? {
                let s = match client.status(&client.url_of(&ep)).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("Failed to get the status of endpoint {ep} ({e})");
                        continue;
                    }
                };
                let id = s.header.as_ref().map_or(0, |h| h.member_id);
                items.push(format!(
                    "{{\"Endpoint\":\"{ep}\",\"Status\":{}}}",
                    json::status(&s)
                ));
                rows.push(vec![
                    ep.clone(),
                    format!("{id:x}"),
                    s.version.clone(),
                    human_bytes(s.db_size),
                    (s.leader == id).to_string(),
                    s.is_learner.to_string(),
                    s.raft_term.to_string(),
                    s.raft_index.to_string(),
                    s.raft_applied_index.to_string(),
                    s.errors.join(", "),
                ]);
            }
            if json {
                println!("[{}]", items.join(","));
            } else {
                const HEADERS: [&str; 10] = [
                    "ENDPOINT",
                    "ID",
                    "VERSION",
                    "DB SIZE",
                    "IS LEADER",
                    "IS LEARNER",
                    "RAFT TERM",
                    "RAFT INDEX",
                    "RAFT APPLIED INDEX",
                    "ERRORS",
                ];
                print_rows(&HEADERS, &rows, table);
            }
        }
        EndpointCmd::Hashkv { cluster, rev } => {
            let eps = targets(client, given, cluster).await?;
            ops::hashkv(client, eps, rev, json, table).await?
        }
        EndpointCmd::Health { cluster } => {
            let mut items = Vec::new();
            let mut rows = Vec::new();
            let mut unhealthy = false;
            for ep in targets(client, given, cluster).await? {
                let started = Instant::now();
                let result = health(client, &ep).await;
                let took = started.elapsed();
                match result {
                    Ok(()) => {
                        items.push(format!(
                            "{{\"endpoint\":\"{ep}\",\"health\":true,\"took\":\"{took:?}\"}}"
                        ));
                        rows.push(vec![
                            ep.clone(),
                            "true".into(),
                            format!("{took:?}"),
                            "".into(),
                        ]);
                        // As etcdctl, the simple form goes to stderr, healthy or not.
                        if !json && !table {
                            eprintln!(
                                "{ep} is healthy: successfully committed proposal: took = {took:?}"
                            );
                        }
                    }
                    Err(e) => {
                        unhealthy = true;
                        items.push(format!(
                            "{{\"endpoint\":\"{ep}\",\"health\":false,\"took\":\"{took:?}\",\"error\":\"{e}\"}}"
                        ));
                        rows.push(vec![
                            ep.clone(),
                            "false".into(),
                            format!("{took:?}"),
                            e.clone(),
                        ]);
                        if !json && !table {
                            eprintln!("{ep} is unhealthy: failed to commit proposal: {e}");
                        }
                    }
                }
            }
            if json {
                println!("[{}]", items.join(","));
            } else if table {
                print_rows(&["ENDPOINT", "HEALTH", "TOOK", "ERROR"], &rows, true);
            }
            if unhealthy {
                return Err("unhealthy cluster".into());
            }
        }
    }
    Ok(())
}

/// etcdctl's health check of one endpoint: a read through it; a refusal for lack of
/// permission still shows a member that answers, and what does not answer in time is
/// etcd's `context deadline exceeded`.
async fn health(client: &Client, ep: &str) -> Result<(), String> {
    let mut options = client.inner.options.clone();
    // One try within the command's time, as etcdctl's one Get with a deadline.
    options.max_retries = 0;
    let one = Client::connect(
        [client.url_of(ep)],
        ClientOptions {
            user: None,
            password: None,
            ..options.clone()
        },
    )
    .await
    .map_err(|_| "context deadline exceeded".to_string())?;
    let one = match &client.session_token() {
        Some(token) => one.with_token(token).map_err(|e| e.to_string())?,
        None => one,
    };
    match one.get("health", None).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_permission_denied() => Ok(()),
        Err(e) if e.is_unavailable() => Err("context deadline exceeded".into()),
        Err(e) => Err(e.go_text()),
    }
}

/// Runs `cairnctl` with the process's arguments; returns the exit code. `snapshot restore`
/// is unavailable; the `cairnctl` binary uses [`main_with`].
pub fn main() -> i32 {
    main_with(None)
}

/// Runs `cairnctl` with the process's arguments and a way to restore backups into a data
/// directory (the server crate's); returns the exit code.
pub fn main_with(restore: Option<Restore>) -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ContextKind;
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                // etcdctl: an unknown command or flag, or a flag value that does not parse,
                // is a plain error; arguments a command cannot use are 128.
                ErrorKind::InvalidSubcommand
                | ErrorKind::InvalidValue
                | ErrorKind::ValueValidation => 1,
                ErrorKind::UnknownArgument => {
                    let arg = e
                        .get(ContextKind::InvalidArg)
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    if arg.starts_with('-') {
                        let flag = arg.split('=').next().unwrap_or(&arg);
                        eprintln!("Error: unknown flag: {flag}");
                        return 1;
                    }
                    EXIT_BAD_ARGS
                }
                _ => EXIT_BAD_ARGS,
            };
            let _ = e.print();
            return code;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(run(cli, restore)) {
        Ok(()) => 0,
        Err(e) => {
            // An exit without a message was reported where it happened.
            if !e
                .downcast_ref::<Exit>()
                .is_some_and(|x| x.message.is_empty())
            {
                match e.downcast_ref::<crate::Error>() {
                    Some(client) => eprintln!("Error: {}", client.go_text()),
                    None => eprintln!("Error: {e}"),
                }
            }
            e.downcast_ref::<Exit>().map_or(1, |x| x.code)
        }
    }
}
