//! Compiles proto/tern/v1/*.proto with protox (pure Rust: no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/tern/v1/raft.proto",
        "proto/tern/v1/admin.proto",
        "proto/tern/v1/agent.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
