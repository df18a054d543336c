//! Any bytes as a DNS request (UDP/TCP payload or CoreDNS gRPC message): the
//! server answers or stays silent, never panics.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = isthmus_dns::internal::handle_packet(data);
});
