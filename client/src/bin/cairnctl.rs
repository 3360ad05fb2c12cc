//! The `cairnctl` binary; see `cairn_client::ctl`.

fn main() {
    std::process::exit(cairn_client::ctl::main());
}
