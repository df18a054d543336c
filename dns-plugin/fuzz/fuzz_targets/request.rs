//! Any bytes as a DNS request (UDP/TCP payload or CoreDNS gRPC message): the
//! server answers or stays silent, never panics; and whenever the UDP fast
//! path answers, its answer is the full handler's answer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = isthmus_dns::internal::handle_packet(data);
    if let Err(difference) = isthmus_dns::internal::fast_path_agrees(data) {
        panic!("{difference}");
    }
});
