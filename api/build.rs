//! Compiles the .proto files with protox (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/leasepb/lease.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
        "proto/cairnpb/raft_internal.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    #[cfg(feature = "json")]
    {
        // etcd's gateway marshals with the .proto field names and leaves default values out;
        // it ignores fields it does not know (a newer client's), so must we.
        let mut json = pbjson_build::Builder::new();
        for file in fds.file.iter().cloned() {
            json.register_file_descriptor(file);
        }
        json.preserve_proto_field_names()
            .ignore_unknown_fields()
            .build(&[
                ".mvccpb",
                ".authpb",
                ".etcdserverpb",
                ".v3lockpb",
                ".v3electionpb",
            ])?;
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // No default stubs: a new RPC in the protos must be implemented (or refused on
        // purpose) before it compiles, never answer UNIMPLEMENTED silently.
        .generate_default_stubs(false)
        .compile_fds(fds)?;
    Ok(())
}
