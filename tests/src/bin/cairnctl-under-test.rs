//! `cairnctl` built inside the test package, so integration tests can find its path.

fn main() {
    std::process::exit(cairn_client::ctl::main_with(Some(
        cairn_core::backup::restore_command,
    )));
}
