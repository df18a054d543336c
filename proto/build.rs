//! Compiles Isthmus's own gRPC APIs (`proto/isthmus/**`) with protox
//! (pure Rust: no `protoc` needed on the machine) and tonic-prost-build.

use std::error::Error;

const PROTOS: &[&str] = &[
    "isthmus/ca/v1/ca.proto",
    "isthmus/dns/v1/dns.proto",
    "isthmus/federation/v1/federation.proto",
];
const INCLUDES: &[&str] = &["proto"];

fn main() -> Result<(), Box<dyn Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    let descriptors = protox::compile(PROTOS, INCLUDES)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
