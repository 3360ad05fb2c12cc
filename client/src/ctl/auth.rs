//! `cairnctl user …`, `role …` and `auth …`: etcdctl's auth commands, with its output.

use std::io::BufRead;

use cairn_api::authpb::{permission::Type, Permission as PermissionPb};
use cairn_api::etcdserverpb::ResponseHeader;
use clap::Subcommand;

use super::json::{self, Obj};
use super::{bad_args, show, Fail};
use crate::{prefix_end, Client, Permission};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Adds a new user (`name:password`, or prompts for the password).
    Add {
        /// `name` or `name:password`.
        name: Option<String>,
        /// Read the password from standard input instead of a terminal prompt.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        interactive: bool,
        /// The password (the argument is then the name, colons and all).
        #[arg(long = "new-user-password")]
        new_user_password: Option<String>,
        /// A user without a password, who can log in only by client certificate.
        #[arg(long = "no-password")]
        no_password: bool,
    },
    /// Deletes a user.
    Delete { name: Option<String> },
    /// Shows a user's roles.
    Get {
        name: Option<String>,
        /// Show the permissions of each role too.
        #[arg(long)]
        detail: bool,
    },
    /// Lists every user.
    List,
    /// Changes a user's password.
    Passwd {
        name: Option<String>,
        /// Read the password from standard input instead of a terminal prompt.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        interactive: bool,
    },
    /// Grants a role to a user.
    GrantRole {
        name: Option<String>,
        role: Option<String>,
    },
    /// Takes a role from a user.
    RevokeRole {
        name: Option<String>,
        role: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum RoleCmd {
    /// Adds a new role.
    Add { role: Option<String> },
    /// Deletes a role.
    Delete { role: Option<String> },
    /// Shows a role's permissions.
    Get { role: Option<String> },
    /// Lists every role.
    List,
    /// Grants a permission (read, write or readwrite) on a key, a range `[key, end)`, a
    /// prefix or every key from one on.
    GrantPermission {
        role: Option<String>,
        perm: Option<String>,
        key: Option<String>,
        end: Option<String>,
        #[arg(long)]
        prefix: bool,
        #[arg(long = "from-key")]
        from_key: bool,
    },
    /// Takes back the permission on exactly this key or range.
    RevokePermission {
        role: Option<String>,
        key: Option<String>,
        end: Option<String>,
        #[arg(long)]
        prefix: bool,
        #[arg(long = "from-key")]
        from_key: bool,
    },
}

#[derive(Subcommand)]
pub enum AuthCmd {
    /// Enables authentication (gives `root` the `root` role if it lacks it).
    Enable,
    /// Disables authentication.
    Disable,
    /// Shows whether authentication is on, and the auth revision (etcd 3.5's command).
    Status,
}

fn header_json(h: &Option<ResponseHeader>, rest: impl FnOnce(Obj) -> Obj) -> String {
    rest(Obj::new().obj("header", h.as_ref().map(json::header))).done()
}

/// A password from standard input: a prompt's line, or (`--interactive=false`) one word.
fn read_password(prompt: &str, interactive: bool) -> Result<String, Fail> {
    let mut line = String::new();
    if interactive {
        eprint!("{prompt}");
    }
    std::io::stdin().lock().read_line(&mut line)?;
    let word = if interactive {
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        line.split_whitespace().next().unwrap_or("").to_string()
    };
    if interactive && word.is_empty() {
        return Err(bad_args("empty password"));
    }
    Ok(word)
}

pub async fn user(client: &Client, cmd: UserCmd, json_out: bool) -> Result<(), Fail> {
    match cmd {
        UserCmd::Add {
            name: user,
            interactive,
            new_user_password,
            no_password,
        } => {
            let user = user
                .ok_or_else(|| bad_args("user add command requires user name as its argument"))?;
            let (name, password) = match (&new_user_password, no_password) {
                (_, true) => (user.clone(), String::new()),
                (Some(p), false) => (user.clone(), p.clone()),
                (None, false) => match user.split_once(':') {
                    Some((n, p)) => (n.to_string(), p.to_string()),
                    None => {
                        let p = read_password(&format!("Password of {user}: "), interactive)?;
                        (user.clone(), p)
                    }
                },
            };
            if name.is_empty() {
                return Err(bad_args("empty user name is not allowed"));
            }
            let r = client.user_add(&name, &password, no_password).await?;
            if json_out {
                println!("{}", header_json(&r.header, |o| o));
            } else {
                println!("User {name} created");
            }
        }
        UserCmd::Delete { name: user } => {
            let name = user.ok_or_else(|| {
                bad_args("user delete command requires user name as its argument")
            })?;
            let r = client.user_delete(&name).await?;
            if json_out {
                println!("{}", header_json(&r.header, |o| o));
            } else {
                println!("User {name} deleted");
            }
        }
        UserCmd::Get { name: user, detail } => {
            let name = user
                .ok_or_else(|| bad_args("user get command requires user name as its argument"))?;
            let r = client.user_get(&name).await?;
            if json_out {
                println!(
                    "{}",
                    header_json(&r.header, |o| o.strings("roles", &r.roles))
                );
                return Ok(());
            }
            println!("User: {name}");
            if !detail {
                println!(
                    "Roles:{}",
                    r.roles.iter().map(|r| format!(" {r}")).collect::<String>()
                );
                return Ok(());
            }
            for role in &r.roles {
                println!();
                let perms = client.role_get(role).await?.perm;
                print_role(role, &perms);
            }
        }
        UserCmd::List => {
            let r = client.user_list().await?;
            if json_out {
                println!(
                    "{}",
                    header_json(&r.header, |o| o.strings("users", &r.users))
                );
            } else {
                for u in r.users {
                    println!("{u}");
                }
            }
        }
        UserCmd::Passwd {
            name: user,
            interactive,
        } => {
            let name = user.ok_or_else(|| {
                bad_args("user passwd command requires user name as its argument")
            })?;
            let password = read_password(&format!("Password of {name}: "), interactive)?;
            let r = client.user_change_password(&name, &password).await?;
            if json_out {
                println!("{}", header_json(&r.header, |o| o));
            } else {
                println!("Password updated");
            }
        }
        UserCmd::GrantRole { name: user, role } => {
            let (Some(user), Some(role)) = (user, role) else {
                return Err(bad_args(
                    "user grant command requires user name and role name as its argument",
                ));
            };
            let r = client.user_grant_role(&user, &role).await?;
            if json_out {
                println!("{}", header_json(&r.header, |o| o));
            } else {
                println!("Role {role} is granted to user {user}");
            }
        }
        UserCmd::RevokeRole { name: user, role } => {
            let (Some(user), Some(role)) = (user, role) else {
                return Err(bad_args(
                    "user revoke-role requires user name and role name as its argument",
                ));
            };
            let r = client.user_revoke_role(&user, &role).await?;
            if json_out {
                println!("{}", header_json(&r.header, |o| o));
            } else {
                println!("Role {role} is revoked from user {user}");
            }
        }
    }
    Ok(())
}

/// A range as etcdctl prints it: a key, `[key, end)`, or `[key, <open ended>`, with
/// ` (prefix key)` when the end is the key's prefix end.
fn range_text(key: &[u8], end: &[u8]) -> String {
    match end {
        [] => show(key),
        [0] => format!("[{}, <open ended>", show(key)),
        _ => {
            let prefix = if end == prefix_end(key).as_slice() {
                format!(" (prefix {})", show(key))
            } else {
                String::new()
            };
            format!("[{}, {}){prefix}", show(key), show(end))
        }
    }
}

fn print_role(role: &str, perms: &[PermissionPb]) {
    println!("Role {role}");
    println!("KV Read:");
    for p in perms.iter().filter(|p| p.perm_type != Type::Write as i32) {
        println!("\t{}", range_text(&p.key, &p.range_end));
    }
    println!("KV Write:");
    for p in perms.iter().filter(|p| p.perm_type != Type::Read as i32) {
        println!("\t{}", range_text(&p.key, &p.range_end));
    }
}

fn perm_json(p: &PermissionPb) -> String {
    Obj::new()
        .num("permType", p.perm_type)
        .bytes("key", &p.key)
        .bytes("range_end", &p.range_end)
        .done()
}

/// The key range etcdctl's arguments name (the empty key meaning `"\0"`, as etcdctl).
fn key_range(
    key: &str,
    end: Option<&str>,
    prefix: bool,
    from_key: bool,
) -> Result<(Vec<u8>, Vec<u8>), Fail> {
    if prefix && from_key {
        return Err(bad_args(
            "--from-key and --prefix flags are mutually exclusive",
        ));
    }
    if end.is_some() && prefix {
        return Err(bad_args("unexpected endkey argument with --prefix flag"));
    }
    if end.is_some() && from_key {
        return Err(bad_args("unexpected endkey argument with --from-key flag"));
    }
    let k = if key.is_empty() {
        vec![0]
    } else {
        key.as_bytes().to_vec()
    };
    let e = if prefix {
        if key.is_empty() {
            vec![0]
        } else {
            prefix_end(key.as_bytes())
        }
    } else if from_key {
        vec![0]
    } else {
        end.map(|e| e.as_bytes().to_vec()).unwrap_or_default()
    };
    Ok((k, e))
}

pub async fn role(client: &Client, cmd: RoleCmd, json_out: bool) -> Result<(), Fail> {
    let header_only = |h: &Option<ResponseHeader>| println!("{}", header_json(h, |o| o));
    match cmd {
        RoleCmd::Add { role } => {
            let role = role
                .ok_or_else(|| bad_args("role add command requires role name as its argument"))?;
            let r = client.role_add(&role).await?;
            if json_out {
                header_only(&r.header);
            } else {
                println!("Role {role} created");
            }
        }
        RoleCmd::Delete { role } => {
            let role = role.ok_or_else(|| {
                bad_args("role delete command requires role name as its argument")
            })?;
            let r = client.role_delete(&role).await?;
            if json_out {
                header_only(&r.header);
            } else {
                println!("Role {role} deleted");
            }
        }
        RoleCmd::Get { role } => {
            let role = role
                .ok_or_else(|| bad_args("role get command requires role name as its argument"))?;
            let r = client.role_get(&role).await?;
            if json_out {
                let perms = r.perm.iter().map(perm_json).collect();
                println!("{}", header_json(&r.header, |o| o.list("perm", perms)));
            } else {
                print_role(&role, &r.perm);
            }
        }
        RoleCmd::List => {
            let r = client.role_list().await?;
            if json_out {
                println!(
                    "{}",
                    header_json(&r.header, |o| o.strings("roles", &r.roles))
                );
            } else {
                for role in r.roles {
                    println!("{role}");
                }
            }
        }
        RoleCmd::GrantPermission {
            role,
            perm,
            key,
            end,
            prefix,
            from_key,
        } => {
            let (Some(role), Some(perm), Some(key)) = (role, perm, key) else {
                return Err(bad_args("role grant command requires role name, permission type, and key [endkey] as its argument"));
            };
            let kind = match perm.to_ascii_uppercase().as_str() {
                "READ" => Type::Read,
                "WRITE" => Type::Write,
                "READWRITE" => Type::Readwrite,
                _ => return Err(bad_args(&format!("invalid permission type: {perm}"))),
            };
            let (k, e) = key_range(&key, end.as_deref(), prefix, from_key)?;
            let r = client
                .role_grant_permission(&role, Permission::range(kind, k, e))
                .await?;
            if json_out {
                header_only(&r.header);
            } else {
                println!("Role {role} updated");
            }
        }
        RoleCmd::RevokePermission {
            role,
            key,
            end,
            prefix,
            from_key,
        } => {
            let (Some(role), Some(key)) = (role, key) else {
                return Err(bad_args("role revoke-permission command requires role name and key [endkey] as its argument"));
            };
            let (k, e) = key_range(&key, end.as_deref(), prefix, from_key)?;
            let r = client.role_revoke_permission(&role, &k, &e).await?;
            if json_out {
                header_only(&r.header);
            } else if e.is_empty() {
                println!("Permission of key {} is revoked from role {role}", show(&k));
            } else if e == [0] {
                println!(
                    "Permission of range [{}, <open ended> is revoked from role {role}",
                    show(&k)
                );
            } else {
                println!(
                    "Permission of range [{}, {}) is revoked from role {role}",
                    show(&k),
                    show(&e)
                );
            }
        }
    }
    Ok(())
}

pub async fn auth(client: &Client, cmd: AuthCmd) -> Result<(), Fail> {
    match cmd {
        AuthCmd::Enable => {
            // As etcdctl: a root user without the root role gets it, and enabling is tried
            // again.
            loop {
                match client.auth_enable().await {
                    Ok(_) => break,
                    Err(crate::Error::Server(s))
                        if s.message() == "etcdserver: root user does not have root role" =>
                    {
                        client.role_add("root").await?;
                        client.user_grant_role("root", "root").await?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            println!("Authentication Enabled");
        }
        AuthCmd::Disable => {
            client.auth_disable().await?;
            println!("Authentication Disabled");
        }
        AuthCmd::Status => {
            let s = client.auth_status().await?;
            println!("Authentication Status: {}", s.enabled);
            println!("AuthRevision: {}", s.auth_revision);
        }
    }
    Ok(())
}
