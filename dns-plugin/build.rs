//! Compiles CoreDNS's `grpc` plugin protocol (`coredns.dns.DnsService`), which we serve so a
//! cluster's CoreDNS can delegate the cross-cluster zones to us.

use std::error::Error;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto/coredns/dns.proto");
    let descriptors = protox::compile(["coredns/dns.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
