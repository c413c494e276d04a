//! `tern`: the coordinator server, admin CLI, development PKI and demo.

fn main() {
    std::process::exit(tern_coordinator::cli::main());
}
