//! Integration tests: real members (embedded or processes) and real clients. One test
//! binary with modules, so the workspace builds one test executable.

mod auth;
mod backup;
mod cairnctl;
mod client;
mod cluster;
mod cluster_harness;
mod compat;
mod console;
mod dashboard;
mod differential;
mod durability;
mod errors;
mod etcdctl;
mod first_hour;
mod fuzz;
mod gateway;
mod hardening;
mod harness;
mod interop;
mod lease;
mod migration;
mod ops;
mod quota;
mod range;
mod readme;
mod recipes;
mod recipes_follow;
mod recipes_state;
mod recipes_sync;
mod tls;
mod topic;
mod txn;
mod watch;
