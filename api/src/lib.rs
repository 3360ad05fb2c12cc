//! The wire API Cairn speaks: etcd's v3 gRPC services and messages, generated from our own
//! .proto files with the same package, service, method, message and field names and numbers
//! as etcd, so stock etcd clients interoperate. `cairnpb` holds Cairn's own raft entry and
//! peer messages.
//!
//! ```
//! use cairn_api::etcdserverpb::PutRequest;
//! let put = PutRequest { key: b"foo".to_vec(), value: b"bar".to_vec(), ..Default::default() };
//! assert_eq!(put.key, b"foo");
//! ```

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Multi-version key-value records and watch events.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// Users, roles and permissions.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The etcd v3 services: KV, Watch, Lease, Cluster, Maintenance, Auth.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// The server-side lock service.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// The server-side election service.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// Cairn's raft entry payload and peer protocol.
pub mod cairnpb {
    tonic::include_proto!("cairnpb");
}
