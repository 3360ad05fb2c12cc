//! The `cairn` server binary. See `cairn --help`.

fn main() {
    std::process::exit(cairn_core::cli::main());
}
