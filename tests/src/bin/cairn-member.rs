//! The `cairn` server, built inside the test crate so integration tests can run members as
//! real processes (and SIGKILL them) through `CARGO_BIN_EXE_cairn-member`.

fn main() {
    std::process::exit(cairn_core::cli::main());
}
