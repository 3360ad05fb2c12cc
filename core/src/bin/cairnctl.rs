//! The `cairnctl` binary: `cairn_client::ctl` with this crate's `snapshot restore`.

fn main() {
    std::process::exit(cairn_client::ctl::main_with(Some(
        cairn_core::backup::restore_command,
    )));
}
